"""Tiny ONNX graphs for the TensorRT build tests (tests/test_trt_*.py), with the description the pipeline writes.

Usage: ``tiny_qdq(tmp_path / "quantize" / "full_int8_qdq.onnx", "fp16")``;
``tiny_ln_softmax(path)`` for the FP32 islands a weakly typed build keeps (:data:`LN_ISLAND` names its LayerNorm).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from onnx import TensorProto, helper, numpy_helper, save


def tiny_qdq(path: Path, remainder: str | None = "fp32") -> Path:
    """A one-MatMul Q/DQ graph with the artifact description the pipeline writes (``remainder``: the recorded
    ``quantization.float_remainder``; None records no quantization block)."""
    from runtimes.export import set_onnx_metadata

    inits = [
        numpy_helper.from_array(np.ones((4, 4), np.float32), "w"),
        numpy_helper.from_array(np.asarray(0.1, np.float32), "s"),
        numpy_helper.from_array(np.asarray(0, np.int8), "zp"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["image", "s", "zp"], ["q"], name="q"),
        helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["dq"], name="dq"),
        helper.make_node("MatMul", ["dq", "w"], ["mask_logits"], name="mm"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("mask_logits", TensorProto.FLOAT, [1, 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    meta = {"graph": "full", "precision": "int8"}
    if remainder is not None:
        meta["quantization"] = {"format": "qdq", "float_remainder": remainder}
    set_onnx_metadata(model, meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    save(model, str(path))
    return path


def tiny_ln_softmax(path: Path, remainder: str | None = "fp32", fp16: bool = False) -> Path:
    """Q/DQ MatMul, a LayerNorm decomposed as for TensorRT 8.5, then a biased softmax: the islands to keep FP32
    (``fp16``: the FP16 ONNX of it, with the converter's Casts)."""
    from quantize.trt_compat import decompose_layernorm
    from runtimes.export import export_fp16_onnx, set_onnx_metadata

    inits = [
        numpy_helper.from_array(np.full((8, 8), 0.1, np.float32), "w"),
        numpy_helper.from_array(np.asarray(0.1, np.float32), "s"),
        numpy_helper.from_array(np.asarray(0, np.int8), "zp"),
        numpy_helper.from_array(np.ones(8, np.float32), "gamma"),
        numpy_helper.from_array(np.zeros(8, np.float32), "beta"),
        numpy_helper.from_array(np.full((1, 1, 8), -1e4, np.float32), "mask_bias"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["image", "s", "zp"], ["q"], name="q"),
        helper.make_node("DequantizeLinear", ["q", "s", "zp"], ["dq"], name="dq"),
        helper.make_node("MatMul", ["dq", "w"], ["h"], name="mm"),
        helper.make_node("LayerNormalization", ["h", "gamma", "beta"], ["ln"], axis=-1, name="norm1"),
        helper.make_node("MatMul", ["ln", "w"], ["scores"], name="scores_mm"),
        helper.make_node("Add", ["scores", "mask_bias"], ["logits"], name="mask_add"),
        helper.make_node("Softmax", ["logits"], ["mask_logits"], axis=-1, name="attn_softmax"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 4, 8])],
        [helper.make_tensor_value_info("mask_logits", TensorProto.FLOAT, [1, 4, 8])],
        inits,
    )
    model, count = decompose_layernorm(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]))
    assert count == 1
    meta = {"graph": "full", "precision": "int8"}
    if remainder is not None:
        meta["quantization"] = {"format": "qdq", "float_remainder": remainder}
    set_onnx_metadata(model, meta)
    path.parent.mkdir(parents=True, exist_ok=True)
    save(model, str(path))
    if fp16:
        export_fp16_onnx(path, path)
    return path


LN_ISLAND = tuple(f"norm1_dec0_{n}" for n in ("mean_n", "sub", "sq", "var_n", "adde", "sqrt", "div"))
