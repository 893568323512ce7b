"""INT8 on the tiny variant: OpenVINO/NNCF and Q/DQ ONNX mechanics, fallback loop, TensorRT compatibility check.

Usage: ``pytest tests/test_quantize.py``. An untrained tiny model's mIoU drop means nothing, so these tests check the
mechanics (Q/DQ placement, zero points, the compatibility check, exclusions under a tight budget, the figures).
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from foundation.errors import ArtifactError

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning", "ignore::FutureWarning")


def test_quantize_stage_reports_three_figures_per_artifact(quantized):
    figs = quantized["quantize"]
    for name in ("full_int8.xml", "full_int8_qdq.onnx"):
        entry = figs[name]
        assert (quantized["root"] / "quantize" / name).is_file()
        assert np.isfinite(entry["miou_drop_points"]) and entry["size_ratio"] > 0 and entry["speedup"] > 0, name
        assert set(entry["latency_p50_ms"]) == {"fp32", "int8"}
    assert figs["full_int8.xml"]["size_ratio"] < 0.6  # INT8 weights (tiny: LayerNorm/bias share is large)
    assert figs["validation_samples"] >= 3 and figs["calibration_samples"] == quantized["calibrate"]["samples"]


def test_qdq_graph_is_symmetric_int8_on_conv_matmul_gemm_only(quantized):
    from quantize.qdq import head_nodes
    from quantize.qdq_graph import QUANT_OPS, quantized_nodes
    from quantize.trt_compat import zero_points

    entry = quantized["quantize"]["full_int8_qdq.onnx"]
    path = quantized["root"] / "quantize" / "full_int8_qdq.onnx"
    qdq = entry["qdq"]
    assert qdq["quantized_nodes"] > 10 and qdq["quantize_linear"] > 0
    assert qdq["zero_points_all_zero"] and set(zero_points(path)) == {0}
    assert set(qdq["dq_consumers"]) <= set(QUANT_OPS)  # LayerNorm, Softmax, residual Add read float tensors
    head = head_nodes(quantized["root"] / "export" / "full.onnx")
    assert head and not set(head) & set(quantized_nodes(path))  # the mask head stays float
    assert entry["trt_compat"]["profile"]["ok"], entry["trt_compat"]["profile"]["errors"][:3]
    steps = entry["fallback"]["steps"]
    assert steps[0]["step"] == 0 and "drop_points" in steps[0]
    from runtimes import get_runtime

    rt = get_runtime("onnxruntime").load(path)
    assert rt.metadata["precision"] == "int8" and rt.metadata["quantization"]["scheme"].startswith("symmetric")


def test_openvino_int8_keeps_the_mask_head_float(quantized):
    import openvino as ov

    from quantize.qdq import head_nodes

    heads = head_nodes(quantized["root"] / "export" / "full.onnx")
    info = quantized["quantize"]["full_int8.xml"]["quantization"]
    assert info["ignored"] and all(name.split("/")[0] in heads for name in info["ignored"])
    model = ov.Core().read_model(str(quantized["root"] / "quantize" / "full_int8.xml"))
    head_ops = [op for op in model.get_ops() if op.get_friendly_name() in info["ignored"]]
    assert head_ops
    for op in head_ops:  # float activations and weights: no FakeQuantize, no INT8 constant feeds the head
        sources = [i.get_source_output().get_node() for i in op.inputs()]
        assert "FakeQuantize" not in [s.get_type_name() for s in sources], op.get_friendly_name()
        assert all(str(s.get_output_element_type(0)) == "<Type: 'float32'>" for s in sources), op.get_friendly_name()


def test_the_fallback_tunes_on_val_and_validate_leaves_those_samples_out(quantized):
    from benchmarks.accuracy import eval_samples
    from pipeline.data.dataset import open_dataset
    from pipeline.layout import TUNING_IDS
    from runtimes import get_runtime
    from runtimes.processing import Processing

    root = quantized["root"]
    tuning = json.loads((root / "quantize" / TUNING_IDS).read_text())
    assert quantized["quantize"]["validation_split"] == tuning["split"] == "val"
    assert len(tuning["ids"]) == quantized["quantize"]["validation_samples"]
    assert all(i.startswith("val:") for i in tuning["ids"])
    refer = open_dataset(quantized["cfg"], root / "data")
    meta = get_runtime("onnxruntime").load(root / "export" / "full.onnx").metadata
    proc = Processing.from_metadata(meta, root / "export" / "tokenizer")

    def ids(exclude: list[str]) -> list[str]:
        return [m.sample_id for _, _, m in eval_samples(refer, ["val", "testA"], proc, None, exclude=exclude)]

    every, kept = ids([]), ids(tuning["ids"])
    assert set(tuning["ids"]) < set(every) and set(kept) == set(every) - set(tuning["ids"])


def _cast_qdq_graph() -> onnx.ModelProto:
    """x -> Q -> DQ feeding a Cast -> MatMul (ModelOpt's FP16 remainder) and a residual Add."""
    inits = [
        numpy_helper.from_array(np.ones((4, 4), np.float16), "w"),
        numpy_helper.from_array(np.asarray(0.1, np.float32), "s"),
        numpy_helper.from_array(np.asarray(0, np.int8), "zp"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"], name="q"),
        helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xdq"], name="dq"),
        helper.make_node("Cast", ["xdq"], ["xh"], to=TensorProto.FLOAT16, name="cast"),
        helper.make_node("MatMul", ["xh", "w"], ["y"], name="mm"),
        helper.make_node("Add", ["xdq", "x"], ["r"], name="add"),
    ]
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [
            helper.make_tensor_value_info("y", TensorProto.FLOAT16, [1, 4]),
            helper.make_tensor_value_info("r", TensorProto.FLOAT, [1, 4]),
        ],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


def test_keep_float_consumers_rewires_float_ops_but_keeps_a_cast_into_a_matmul_quantized():
    from quantize.qdq import keep_float_consumers
    from quantize.qdq_graph import quantized_nodes

    model = _cast_qdq_graph()
    assert quantized_nodes(model) == ["mm"]
    assert keep_float_consumers(model) == 1
    inputs = {n.name: list(n.input) for n in model.graph.node}
    assert inputs["add"] == ["x", "x"]  # the residual reads the float tensor
    assert inputs["cast"] == ["xdq"]  # the MatMul's input stays INT8
    assert quantized_nodes(model) == ["mm"]


def test_fallback_returns_sensitive_nodes_to_float_under_a_tight_budget(quantized, tmp_path):
    from quantize.calibration import load_calibration
    from quantize.qdq import head_nodes
    from quantize.qdq_fallback import accuracy_fallback
    from quantize.qdq_graph import quantized_nodes

    root = quantized["root"]
    fp32 = root / "export" / "full.onnx"
    calib = load_calibration(root / "calibrate" / "calib.npz")

    def evaluate(path):  # a stand-in metric: every quantized node costs 0.1 point
        return 0.9 - 0.001 * len(quantized_nodes(path))

    result = accuracy_fallback(
        fp32,
        tmp_path / "q.onnx",
        calib,
        evaluate,
        0.9,
        budget_points=0.01,
        target_points=0.01,
        max_steps=3,
        always_exclude=head_nodes(fp32),
        backend="auto",
    )
    steps = result.steps
    assert [s["step"] for s in steps] == [0, 1, 2, 3]
    assert [len(s["newly_excluded"]) for s in steps] == [0, 1, 1, 2]  # 1, 1, 2, 4, ...
    assert steps[-1]["quantized_nodes"] == steps[0]["quantized_nodes"] - 4
    assert all(a["drop_points"] > b["drop_points"] for a, b in zip(steps, steps[1:], strict=False))
    assert not result.within_budget and result.to_dict()["final_drop_points"] == steps[-1]["drop_points"]
    remaining = set(quantized_nodes(tmp_path / "q.onnx"))
    assert not remaining & {n for s in steps for n in s["newly_excluded"]}
    assert result.ranking[0][1] >= result.ranking[-1][1]


def test_fallback_follows_the_ranking_it_is_given(quantized, tmp_path):
    """The sensitivity ranking (or any other) decides the order nodes return to float: the fallback takes its first
    nodes, not the noise ranking's."""
    from quantize.calibration import load_calibration
    from quantize.qdq import head_nodes
    from quantize.qdq_fallback import accuracy_fallback
    from quantize.qdq_graph import quantized_nodes

    root = quantized["root"]
    fp32 = root / "export" / "full.onnx"
    calib = load_calibration(root / "calibrate" / "calib.npz")
    seen: list = []

    def rank(path):  # the last quantized nodes first, the reverse of graph order
        seen.append(path)
        return [(n, float(i)) for i, n in enumerate(reversed(quantized_nodes(path)))]

    result = accuracy_fallback(fp32, tmp_path / "q.onnx", calib, lambda p: 0.9 - 0.001 * len(quantized_nodes(p)),
                               0.9, target_points=0.01, max_steps=2, always_exclude=head_nodes(fp32), rank=rank)
    order = [n for n, _ in result.ranking]
    assert len(seen) == 1 and [s["newly_excluded"] for s in result.steps[1:]] == [order[:1], order[1:2]]


def _qdq_graph(zero_point: np.ndarray, extra_op: str | None = None) -> onnx.ModelProto:
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    scale = numpy_helper.from_array(np.asarray(0.1, np.float32), "s")
    zp = numpy_helper.from_array(zero_point, "zp")
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "s", "zp"], ["xq"], name="q"),
        helper.make_node("DequantizeLinear", ["xq", "s", "zp"], ["xd"], name="dq"),
        helper.make_node("MatMul", ["xd", "w"], ["y"], name="mm"),
    ]
    if extra_op:
        nodes.append(helper.make_node(extra_op, ["y"], ["z"], name="odd"))
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("z" if extra_op else "y", TensorProto.FLOAT, [1, 4])],
        [w, scale, zp],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def test_trt_compat_names_offending_nodes():
    from quantize.trt_compat import check_trt_compat, resolve_version

    assert check_trt_compat(_qdq_graph(np.asarray(0, np.int8)), "8.5").ok
    bad_zp = check_trt_compat(_qdq_graph(np.asarray(3, np.int8)), "10.3")
    assert not bad_zp.ok and {e["node"] for e in bad_zp.errors} == {"q", "dq"}
    unsigned = check_trt_compat(_qdq_graph(np.asarray(0, np.uint8)), "10.3")
    assert any("uint8" in e["reason"] for e in unsigned.errors)
    odd = check_trt_compat(_qdq_graph(np.asarray(0, np.int8), "Col2Im"), "10.3")
    assert [e["node"] for e in odd.errors] == ["odd"]
    with pytest.raises(ArtifactError, match=r"odd \(Col2Im\): not supported"):
        odd.raise_for_errors()
    assert resolve_version("10.13") == "10.3" and resolve_version("8.6.2") == "8.6"
    with pytest.raises(ArtifactError, match="no TensorRT op list"):
        resolve_version("7.1")


def test_int64_inputs_are_refused_for_tensorrt8():
    from quantize.trt_compat import check_trt_compat

    graph = helper.make_graph(
        [helper.make_node("Cast", ["ids"], ["y"], to=TensorProto.FLOAT, name="c")],
        "g",
        [helper.make_tensor_value_info("ids", TensorProto.INT64, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    assert not check_trt_compat(model, "8.5").ok
    assert check_trt_compat(model, "10.3").ok


def test_unknown_qdq_backend_and_exclusions_are_refused(quantized, tmp_path):
    from foundation.errors import ConfigError
    from quantize.qdq import quantize_qdq_int8, resolve_backend

    with pytest.raises(ConfigError, match="unknown Q/DQ backend 'tensorrt'"):
        resolve_backend("tensorrt")
    assert resolve_backend("auto", max_opset=17) == "onnxruntime"  # ModelOpt writes opset >= 19: not for TensorRT 8.x
    with pytest.raises(ConfigError, match="opset <= 17"):
        resolve_backend("modelopt", max_opset=17)
    calib = {"image": np.zeros((1, 3, 64, 64), np.float32)}
    with pytest.raises(ArtifactError, match="not Conv/MatMul/Gemm nodes"):
        quantize_qdq_int8(quantized["root"] / "export" / "full.onnx", tmp_path / "x.onnx", calib, exclude=["nope"])


@pytest.mark.slow
def test_openvino_accuracy_control_runs_with_the_miou_validation(quantized, tmp_path):
    """nncf.quantize_with_accuracy_control with the project's mIoU as validation_fn (slow: NNCF ranks quantizers)."""
    from pipeline.data.dataset import open_dataset
    from quantize.calibration import load_calibration, score, validation_items
    from quantize.openvino_int8 import quantize_openvino_int8
    from runtimes.tokenizer import TextTokenizer

    root = quantized["root"]
    refer = open_dataset(quantized["cfg"], root / "data")
    items = validation_items(refer, ["val", "testA"], 4, TextTokenizer.from_dir(root / "export" / "tokenizer", 12), 64)

    def validation_fn(compiled, data):
        return score(lambda f: compiled(f)[0], list(data))

    calib = load_calibration(root / "calibrate" / "calib.npz")
    path, info = quantize_openvino_int8(
        root / "export" / "full.xml", tmp_path / "ac.xml", calib, validation=(items, validation_fn), max_drop=0.01
    )
    assert path.is_file() and info["accuracy_control"] and info["max_drop"] == 0.01


def _graph(nodes, inputs, outputs, inits=(), opset=19) -> onnx.ModelProto:
    """A one-purpose ONNX graph: ``inputs`` / ``outputs`` are (name, elem type, shape)."""
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info(*v) for v in inputs],
        [helper.make_tensor_value_info(*v) for v in outputs],
        list(inits),
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])


def _computed(name: str, value: np.ndarray) -> tuple[Any, Any]:
    """An initializer passed through Identity: a tensor the parser cannot take as an initializer."""
    return numpy_helper.from_array(value, f"{name}_init"), helper.make_node("Identity", [f"{name}_init"], [name])


def _check_axes_inputs_by_version(x: tuple) -> None:
    """Axes that are not initializers: Pad until 10.4, Squeeze/Unsqueeze until 10.7 (then: must fold), Slice until
    10.3."""
    from quantize.trt_compat import check_trt_compat

    F = TensorProto.FLOAT
    pads, pad_axes = numpy_helper.from_array(np.asarray([1, 1], np.int64), "pads"), _computed("pax", np.asarray([2]))
    pad = _graph(
        [pad_axes[1], helper.make_node("Pad", ["x", "pads", "", "pax"], ["y"], name="pad")],
        [x],
        [("y", F, [1, 4, 6])],
        [pads, pad_axes[0]],
    )
    assert [e["node"] for e in check_trt_compat(pad, "10.3").errors] == ["pad"]
    assert check_trt_compat(pad, "10.16").ok
    sq_axes = _computed("sax", np.asarray([0]))
    squeeze = _graph(
        [sq_axes[1], helper.make_node("Squeeze", ["x", "sax"], ["y"], name="sq")], [x], [("y", F, [4, 4])], [sq_axes[0]]
    )
    assert not check_trt_compat(squeeze, "10.3").ok
    loose = check_trt_compat(squeeze, "10.16")
    assert loose.ok and [w["node"] for w in loose.warnings] == ["sq"]
    starts, ends = (numpy_helper.from_array(np.asarray([0]), n) for n in ("st", "en"))
    sl_axes = _computed("slax", np.asarray([1]))
    slice_ = [sl_axes[1], helper.make_node("Slice", ["x", "st", "en", "slax"], ["y"], name="slice")]
    inits = [starts, numpy_helper.from_array(np.asarray([2]), "en"), sl_axes[0]]
    assert check_trt_compat(_graph(slice_, [x], [("y", F, [1, 2, 4])], inits), "10.3").ok
    assert not check_trt_compat(_graph(slice_, [x], [("y", F, [1, 2, 4])], inits, opset=17), "8.5").ok


def _check_tensorrt_8_5_importers(x: tuple) -> None:
    """What TensorRT 8.5's parser refuses and 8.6 takes: a computed TopK K, a two-input DequantizeLinear, N-D Trilu."""
    from quantize.trt_compat import check_trt_compat

    F = TensorProto.FLOAT
    # TopK's K: an initializer on 8.5, any tensor from 8.6 (dynamic K, 8.6 EA)
    k = _computed("k", np.asarray([2]))
    topk = _graph(
        [k[1], helper.make_node("TopK", ["x", "k"], ["v", "i"], name="topk")],
        [x],
        [("v", F, [1, 4, 2]), ("i", TensorProto.INT64, [1, 4, 2])],
        [k[0]],
        opset=17,
    )
    assert not check_trt_compat(topk, "8.5").ok and check_trt_compat(topk, "8.6").ok
    # 8.5's QuantDequantLinearHelper: "requires 3 inputs"; 8.6 takes 2
    w = numpy_helper.from_array(np.ones((4, 4), np.int8), "w")
    scale = numpy_helper.from_array(np.asarray(0.1, np.float32), "s")
    dq = _graph(
        [
            helper.make_node("DequantizeLinear", ["w", "s"], ["wd"], name="dq"),
            helper.make_node("MatMul", ["x", "wd"], ["y"], name="mm"),
        ],
        [x],
        [("y", F, [1, 4, 4])],
        [w, scale],
        opset=17,
    )
    assert [e["node"] for e in check_trt_compat(dq, "8.5").errors] == ["dq"] and check_trt_compat(dq, "8.6").ok
    # 8.5's Trilu importer takes rank 2 or 3; N-D from 8.6 GA
    for shape, ok_85 in (([1, 4, 4], True), ([1, 1, 4, 4], False)):
        trilu = _graph(
            [helper.make_node("Trilu", ["t"], ["y"], name="trilu")], [("t", F, shape)], [("y", F, shape)], opset=17
        )
        assert check_trt_compat(trilu, "8.5").ok is ok_85 and check_trt_compat(trilu, "8.6").ok


def _check_strongly_typed_precision(x: tuple) -> None:
    """Strongly typed only (11.x): a MatMul computing in FP32 runs in FP32 there."""
    from quantize.trt_compat import check_trt_compat

    F, F16 = TensorProto.FLOAT, TensorProto.FLOAT16
    wf = numpy_helper.from_array(np.ones((4, 4), np.float32), "wf")
    mm32 = _graph([helper.make_node("MatMul", ["x", "wf"], ["y"], name="mm")], [x], [("y", F, [1, 4, 4])], [wf])
    mm16 = _graph(
        [helper.make_node("MatMul", ["h", "wh"], ["y"], name="mm")],
        [("h", F16, [1, 4, 4])],
        [("y", F16, [1, 4, 4])],
        [numpy_helper.from_array(np.ones((4, 4), np.float16), "wh")],
    )
    assert [w["op"] for w in check_trt_compat(mm32, "11.4").warnings] == ["precision"]
    assert not check_trt_compat(mm32, "10.16").warnings and not check_trt_compat(mm16, "11.4").warnings


def test_trt_compat_follows_each_versions_parser_rules():
    """onnx-tensorrt operators.md / Changelog / importers per version (quantize/data/trt_ops_*.json `source`)."""
    from quantize.trt_compat import check_trt_compat, resolve_version

    F = TensorProto.FLOAT
    x = ("x", F, [1, 4, 4])
    # Gelu, Mish, CastLike: 'Y' (with importers) since onnx-tensorrt 10.0 GA, not only from 10.15
    acts = _graph(
        [
            helper.make_node("Gelu", ["x"], ["a"], name="gelu"),
            helper.make_node("Mish", ["a"], ["b"], name="mish"),
            helper.make_node("CastLike", ["b", "x"], ["y"], name="castlike"),
        ],
        [x],
        [("y", F, [1, 4, 4])],
        opset=20,
    )
    report = check_trt_compat(acts, "10.3")
    assert report.ok and not report.warnings, report.warnings
    _check_axes_inputs_by_version(x)
    _check_tensorrt_8_5_importers(x)
    _check_strongly_typed_precision(x)
    assert [resolve_version(v) for v in ("10.16.1", "11.4.1", "11.5", "11.0", "10.13")] == [
        "10.16",
        "11.4",
        "11.4",
        "10.16",
        "10.3",
    ]


def test_fp16_remainder_keeps_qdq_int8_and_fp32_islands(quantized, tmp_path):
    """TensorRT 11 is strongly typed only: the ONNX Runtime backend writes the float remainder as FP16 in the graph."""
    import onnxruntime as ort

    from foundation.errors import ConfigError
    from quantize.calibration import load_calibration
    from quantize.qdq import head_nodes, quantize_qdq_int8
    from quantize.qdq_fp16 import fp16_remainder
    from quantize.qdq_graph import quantized_nodes
    from quantize.trt_compat import check_trt_compat
    from runtimes.export import FP16_KEEP_FLOAT32, read_onnx_metadata

    root = quantized["root"]
    fp32, calib = root / "export" / "full.onnx", load_calibration(root / "calibrate" / "calib.npz")
    q32 = root / "quantize" / "full_int8_qdq.onnx"
    heads = head_nodes(fp32)
    q16 = quantize_qdq_int8(
        fp32, tmp_path / "q16.onnx", calib, exclude=heads, backend="onnxruntime", float_dtype="fp16"
    )
    model = onnx.load(str(q16))
    graph = onnx.shape_inference.infer_shapes(model).graph
    types = {v.name: v.type.tensor_type.elem_type for v in [*graph.value_info, *graph.input, *graph.output]}
    out_type = {n.name: types.get(n.output[0]) for n in model.graph.node}
    F, F16 = TensorProto.FLOAT, TensorProto.FLOAT16
    compute = [n for n in model.graph.node if n.op_type in ("Conv", "MatMul", "Gemm")]
    assert compute and all(out_type[n.name] == F16 for n in compute)  # the remainder, head included, in FP16
    kept = [n for n in model.graph.node if n.op_type in FP16_KEEP_FLOAT32]
    assert kept and all(out_type[n.name] == F for n in kept)  # Softmax, LayerNorm, reductions stay FP32
    dqs = [n for n in model.graph.node if n.op_type == "DequantizeLinear"]
    assert dqs and all(out_type[n.name] == F16 for n in dqs)  # FP16 scales: DQ feeds its FP16 layer directly
    assert [(v.name, v.type.tensor_type.elem_type) for v in model.graph.input] == [
        (v.name, v.type.tensor_type.elem_type) for v in onnx.load(str(fp32), load_external_data=False).graph.input
    ]
    assert model.graph.output[0].type.tensor_type.elem_type == F
    assert quantized_nodes(q16) == quantized_nodes(q32)  # the same INT8 layers as the FP32-remainder graph
    quant = read_onnx_metadata(q16)["quantization"]
    assert quant["float_remainder"] == "fp16" and quant["op_types"] == ["Conv", "Gemm", "MatMul"]
    report = check_trt_compat(q16, "11.4")
    assert report.ok and not [w for w in report.warnings if w["op"] == "precision"], report.warnings
    assert [w["op"] for w in check_trt_compat(q32, "11.4").warnings] == ["precision"]
    feeds = {k: calib[k][:1] for k in ("image", "input_ids", "attention_mask")}
    run = {p: ort.InferenceSession(str(p), providers=["CPUExecutionProvider"]).run(None, feeds)[0] for p in (q16, q32)}
    assert np.abs(run[q16] - run[q32]).max() <= 0.05 * max(np.abs(run[q32]).max(), 1e-3)
    old = _qdq_graph(np.asarray(0, np.int8))  # opset 17: no FP16 Q/DQ scales
    with pytest.raises(ConfigError, match="opset >= 19"):
        fp16_remainder(old)


def test_modelopt_is_called_without_op_types_so_its_tensorrt_placement_runs(quantized, tmp_path, monkeypatch):
    """modelopt int8.quantize skips _find_nodes_to_quantize when op_types_to_quantize is given (ModelOpt fake here)."""
    import importlib.machinery
    import shutil
    import sys
    import types

    import quantize.qdq as qdq

    calls: list[dict[str, Any]] = []

    def fake_quantize(onnx_path: str, op_types_to_exclude_fp16: list[str] | None = None, **kwargs: Any) -> None:
        calls.append({**kwargs, "op_types_to_exclude_fp16": op_types_to_exclude_fp16})  # a parameter since 0.47
        shutil.copy(onnx_path, kwargs["output_path"])

    def fake_module(name: str, **attrs: Any) -> types.ModuleType:
        module = types.ModuleType(name)
        module.__spec__ = importlib.machinery.ModuleSpec(name, None)
        module.__dict__.update(attrs)
        return module

    monkeypatch.setattr(qdq, "_MODELOPT_RAN", False)  # restored after: the fake must not block ONNX Runtime
    monkeypatch.setitem(sys.modules, "modelopt", fake_module("modelopt"))
    monkeypatch.setitem(sys.modules, "modelopt.onnx", fake_module("modelopt.onnx"))
    monkeypatch.setitem(
        sys.modules, "modelopt.onnx.quantization", fake_module("modelopt.onnx.quantization", quantize=fake_quantize)
    )
    from quantize.calibration import load_calibration

    root = quantized["root"]
    fp32, calib = root / "export" / "full.onnx", load_calibration(root / "calibrate" / "calib.npz")
    heads = qdq.head_nodes(fp32)
    for dtype in ("fp32", "fp16"):
        qdq.quantize_qdq_int8(
            fp32, tmp_path / f"mo_{dtype}.onnx", calib, exclude=heads, backend="modelopt", float_dtype=dtype
        )
    assert len(calls) == 2
    for kwargs, dtype in zip(calls, ("fp32", "fp16"), strict=True):
        assert kwargs.get("op_types_to_quantize") is None  # passing it bypasses NVIDIA's placement
        assert kwargs["nodes_to_exclude"] == [f"^{re.escape(n)}$" for n in heads]
        assert kwargs["high_precision_dtype"] == dtype and kwargs["quantize_mode"] == "int8"
    assert calls[0]["op_types_to_exclude_fp16"] is None and "Softmax" in calls[1]["op_types_to_exclude_fp16"]
    from runtimes.export import read_onnx_metadata

    meta = read_onnx_metadata(tmp_path / "mo_fp16.onnx")["quantization"]
    assert meta["backend"] == "modelopt" and meta["placement"].startswith("modelopt")
    assert meta["float_consumers_rewired"] == 0  # ModelOpt's placement is not rewired afterwards
