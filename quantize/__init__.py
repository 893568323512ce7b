"""INT8 for deployment: calibration set, OpenVINO/NNCF INT8, TensorRT-bound Q/DQ ONNX with fallback, TensorRT checks.

Usage: ``from quantize.qdq import quantize_qdq_int8``; ``from quantize.openvino_int8 import quantize_openvino_int8``;
``from quantize.trt_compat import check_trt_compat``; ``from quantize.calibration import select_calibration``.

Modules import their heavy dependencies (onnx, onnxruntime, nncf, openvino, modelopt) inside functions, so importing
this package costs nothing. Models are seen only through files and :mod:`runtimes` (DESIGN §2).
"""
