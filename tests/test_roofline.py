"""Roofline data: FLOPs counted from ONNX and OpenVINO graphs (hand-counted synthetic graphs, the tiny run's FP32 and
INT8 artifacts), the measured GEMM peaks, the roofline row's arithmetic and its Markdown table.

Peaks are measured with 1 thread and only checked to be positive with a method: their values depend on the host.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from benchmarks.roofline import count_flops, measure_peaks, roofline_markdown, roofline_row
from foundation.errors import ArtifactError

# Hand counts (multiply-accumulates) of the synthetic graph of _float_graph.
CONV_MACS = 4 * 8 * 8 * (3 * 3 * 3)  # Y [1, 4, 8, 8], each output a 3 × 3 × 3 window
DEPTHWISE_MACS = 4 * 8 * 8 * (1 * 3 * 3)  # group = 4 channels: each output sees one channel's 3 × 3 window
MATMUL_MACS = 4 * 32 * 64  # [4, 64] @ [64, 32]
GEMM_MACS = 4 * 10 * 32  # [4, 32] @ [32, 10]ᵀ (transB)
CONV_TRANSPOSE_MACS = (4 * 8 * 8) * (2 * 2 * 2)  # every input element meets C_out × k × k weights


def _init(name: str, shape: tuple[int, ...], dtype: type = np.float32) -> TensorProto:
    rng = np.random.default_rng(0)
    return numpy_helper.from_array((rng.standard_normal(shape) * 10).astype(dtype), name)


def _save(tmp_path: Path, name: str, nodes, inputs, outputs, inits) -> Path:
    graph = helper.make_graph(nodes, name, inputs, outputs, inits)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    path = tmp_path / f"{name}.onnx"
    path.write_bytes(model.SerializeToString())
    return path


def _float_graph(tmp_path: Path) -> Path:
    """Conv → depthwise Conv → Reshape → MatMul → Gemm, batch 1, static shapes."""
    nodes = [
        helper.make_node("Conv", ["x", "w1", "b1"], ["y1"], pads=[1, 1, 1, 1]),
        helper.make_node("Conv", ["y1", "w2"], ["y2"], pads=[1, 1, 1, 1], group=4),
        helper.make_node("Reshape", ["y2", "shape"], ["y3"]),
        helper.make_node("MatMul", ["y3", "w3"], ["y4"]),
        helper.make_node("Gemm", ["y4", "w4", "b4"], ["y"], transB=1),
    ]
    inits = [_init("w1", (4, 3, 3, 3)), _init("b1", (4,)), _init("w2", (4, 1, 3, 3)), _init("w3", (64, 32))]
    inits += [_init("w4", (10, 32)), _init("b4", (10,)), numpy_helper.from_array(np.array([4, 64], np.int64), "shape")]
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    return _save(tmp_path, "float", nodes, [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)


def _conv_transpose_graph(tmp_path: Path) -> Path:
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2])
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4, 8, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, None)
    return _save(tmp_path, "deconv", [node], [x], [y], [_init("w", (4, 2, 2, 2))])


def _qdq_graph(tmp_path: Path) -> Path:
    """The first Conv of _float_graph with Q/DQ on its input and weights, then a Conv fed by a float activation."""
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
        helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
        helper.make_node("DequantizeLinear", ["w1q", "ws"], ["w1d"]),
        helper.make_node("Conv", ["xd", "w1d", "b1"], ["y1"], pads=[1, 1, 1, 1]),
        helper.make_node("DequantizeLinear", ["w2q", "ws"], ["w2d"]),
        helper.make_node("Conv", ["y1", "w2d"], ["y"], pads=[1, 1, 1, 1], group=4),  # its input is not quantized
    ]
    inits = [_init("w1q", (4, 3, 3, 3), np.int8), _init("w2q", (4, 1, 3, 3), np.int8), _init("b1", (4,))]
    inits += [numpy_helper.from_array(np.float32(v), n) for n, v in (("xs", 0.02), ("ws", 0.01))]
    inits.append(numpy_helper.from_array(np.uint8(128), "xz"))
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])
    return _save(tmp_path, "qdq", nodes, [x], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)], inits)


def _to_ir(onnx_path: Path) -> Path:
    import openvino as ov

    xml = onnx_path.with_suffix(".xml")
    ov.save_model(ov.convert_model(str(onnx_path)), str(xml), compress_to_fp16=False)
    return xml


# ---------------------------------------------------------------------------------------------------------------------
# FLOPs
# ---------------------------------------------------------------------------------------------------------------------


def test_flops_of_conv_depthwise_matmul_gemm_match_the_hand_count(tmp_path):
    f = count_flops(_float_graph(tmp_path))
    assert f["total_flops"] == 2 * (CONV_MACS + DEPTHWISE_MACS + MATMUL_MACS + GEMM_MACS)
    assert f["by_op_type"] == pytest.approx(
        {"Conv": 2 * (CONV_MACS + DEPTHWISE_MACS) / 1e9, "MatMul": 2 * MATMUL_MACS / 1e9, "Gemm": 2 * GEMM_MACS / 1e9}
    )
    assert f["ops"] == {"Conv": 2, "Gemm": 1, "MatMul": 1}
    assert f["int8_flops"] == 0 and f["float_flops"] == f["total_flops"] and f["int8_share"] == 0.0
    assert f["total_gflops"] == pytest.approx(f["total_flops"] / 1e9) and f["format"] == "onnx"
    assert f["elementwise_flops"] == 4 * 8 * 8 + 4 * 10  # the two bias adds; apart from the total


def test_conv_transpose_counts_every_input_element_against_its_weights(tmp_path):
    assert count_flops(_conv_transpose_graph(tmp_path))["total_flops"] == 2 * CONV_TRANSPOSE_MACS


def test_qdq_conv_counts_as_int8_and_a_conv_with_a_float_input_as_float(tmp_path):
    f = count_flops(_qdq_graph(tmp_path))
    assert f["int8_flops"] == 2 * CONV_MACS and f["float_flops"] == 2 * DEPTHWISE_MACS
    assert f["int8_share"] == pytest.approx(CONV_MACS / (CONV_MACS + DEPTHWISE_MACS))


@pytest.mark.parametrize("graph", [_float_graph, _conv_transpose_graph, _qdq_graph])
def test_openvino_ir_converted_from_the_onnx_gives_the_same_count(tmp_path, graph):
    onnx_path = graph(tmp_path)
    f_onnx, f_ir = count_flops(onnx_path), count_flops(_to_ir(onnx_path))
    assert f_ir["format"] == "openvino-ir"
    assert f_ir["total_flops"] == f_onnx["total_flops"]
    assert f_ir["int8_flops"] == f_onnx["int8_flops"]  # Q/DQ become FakeQuantize and int8 weight constants


def test_a_dynamic_shape_or_an_unknown_file_is_an_artifact_error_naming_the_file(tmp_path):
    node = helper.make_node("MatMul", ["a", "w"], ["y"])
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 16])
    path = _save(tmp_path, "dynamic", [node], [a], [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
                 [_init("w", (16, 4))])  # fmt: skip
    with pytest.raises(ArtifactError, match=r"dynamic\.onnx.*static"):
        count_flops(path)
    with pytest.raises(ArtifactError, match=r"model\.pt.*exported_onnx"):
        count_flops(tmp_path / "model.pt")
    with pytest.raises(ArtifactError, match=r"missing\.xml does not exist"):
        count_flops(tmp_path / "missing.xml")
    (tmp_path / "junk.onnx").write_bytes(b"not a model")
    with pytest.raises(ArtifactError, match=r"junk\.onnx"):
        count_flops(tmp_path / "junk.onnx")


def test_tiny_run_fp32_and_int8_artifacts_agree_on_flops(quantized):
    export, quant = quantized["root"] / "export", quantized["root"] / "quantize"
    paths = {
        "onnx-fp32": export / "full.onnx",
        "openvino-fp32": export / "full.xml",
        "onnx-int8": quant / "full_int8_qdq.onnx",
        "openvino-int8": quant / "full_int8.xml",
    }
    flops = {name: count_flops(p) for name, p in paths.items()}
    torch = count_flops(quantized["root"] / "train" / "model.pt", exported_onnx=paths["onnx-fp32"])
    assert torch["counted_from"] == str(paths["onnx-fp32"]) and torch["artifact"].endswith("model.pt")
    reference = flops["onnx-fp32"]["total_flops"]
    assert reference > 0 and torch["total_flops"] == reference
    for name, f in flops.items():
        assert f["total_flops"] == pytest.approx(reference, rel=0.02), name
        assert (f["int8_share"] > 0) == name.endswith("int8"), (name, f["int8_share"])


# ---------------------------------------------------------------------------------------------------------------------
# Peaks, rows, table
# ---------------------------------------------------------------------------------------------------------------------


def test_peaks_are_positive_recorded_with_their_method_and_cached():
    peaks = measure_peaks(threads=1)
    assert peaks["threads"] == 1 and peaks["fp32_gflops"] > 0 and peaks["int8_gops"] > 0
    assert "1 thread" in peaks["fp32_method"] and "1 thread" in peaks["int8_method"]
    assert {"onnxruntime-fp32", "onnxruntime-int8"} <= set(peaks["candidates"])
    assert measure_peaks(threads=1) is peaks


def test_roofline_row_weights_int8_and_float_work_by_their_peaks():
    flops = {"total_gflops": 2.0, "int8_gflops": 1.5, "float_gflops": 0.5}
    peaks = {"fp32_gflops": 100.0, "int8_gops": 500.0}
    row = roofline_row(flops, 10.0, peaks, "int8")
    assert row["achieved_gflops"] == pytest.approx(200.0)  # 2 GFLOP in 10 ms
    assert row["floor_ms"] == pytest.approx(1000 * (1.5 / 500 + 0.5 / 100))  # 3 ms + 5 ms
    assert row["floor_ratio"] == pytest.approx(0.8) and row["int8_share"] == pytest.approx(0.75)
    fp32 = roofline_row(flops, 40.0, peaks, "fp32")  # not an int8 artifact: all at the FP32 peak
    assert fp32["floor_ms"] == pytest.approx(20.0) and fp32["floor_ratio"] == pytest.approx(0.5)
    assert fp32["int8_share"] == 0.0
    failed = roofline_row(flops, None, peaks, "int8")
    assert failed["achieved_gflops"] is None and failed["floor_ratio"] is None and failed["floor_ms"] == 8.0
    assert roofline_row(flops, 10.0, {"fp32_gflops": 100.0, "int8_gops": None}, "int8")["floor_ms"] is None


def test_roofline_markdown_table():
    peaks = {"threads": 1, "fp32_gflops": 100.0, "int8_gops": 500.0, "fp32_method": "m1", "int8_method": "m2"}
    flops = {"total_gflops": 2.0, "int8_gflops": 1.5, "float_gflops": 0.5}
    rows = {
        "openvino-int8": roofline_row(flops, 10.0, peaks, "int8"),
        "torch": roofline_row(flops, None, peaks, "fp32"),
    }
    text = roofline_markdown(rows, peaks)
    lines = text.splitlines()
    assert lines[0] == "| Artifact | GFLOPs | INT8 share | p50 ms | Achieved GFLOP/s | Floor ms | % of floor |"
    assert lines[2] == "| openvino-int8 | 2.000 | 75% | 10.00 | 200.0 | 8.000 | 80.0% |"
    assert lines[3] == "| torch | 2.000 | 0% | – | – | 20.000 | – |"
    assert "FP32 100.0 GFLOP/s (m1)" in text and "INT8 500.0 GOP/s (m2)" in text
