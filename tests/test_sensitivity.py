"""Per-layer-group INT8 sensitivity: the graph surgery on known values, the groups, and the measurement on the tiny run.

Usage: ``pytest tests/test_sensitivity.py``. An untrained tiny model's mIoU does not move under INT8, so the tiny-run
measurement scores with a stand-in metric (the mean logit error against FP32) and checks the mechanics: every
quantized node in exactly one group, all groups in float (or none quantized) giving the FP32 outputs, the ranking,
the table and the plot.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from foundation.errors import ArtifactError, ConfigError

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning", "ignore::FutureWarning")

# ---------------------------------------------------------------------------------------------------------------------
# A two-MatMul graph, quantized by hand
# ---------------------------------------------------------------------------------------------------------------------

SX, SH = 0.05, 0.1  # activation scales of x and h
X = np.asarray([[0.31, -1.07, 0.66, 2.9]], np.float32)
MODES_BOTH = ["float", "quantized"]


def _fq(v: np.ndarray, s: np.ndarray | float) -> np.ndarray:
    return np.clip(np.round(v / s), -128, 127) * s


def _weights() -> dict[str, np.ndarray]:
    rng = np.random.default_rng(3)
    w1, w2 = rng.normal(size=(4, 4)).astype(np.float32), rng.normal(size=(4, 3)).astype(np.float32)
    s1 = np.float32(np.abs(w1).max() / 127)  # per-tensor
    s2 = (np.abs(w2).max(axis=0) / 127).astype(np.float32)  # per output channel (axis 1)
    q1 = np.round(w1 / s1).astype(np.int8)
    q2 = np.round(w2 / s2).astype(np.int8)
    return {"w1": w1, "w2": w2, "s1": s1, "s2": s2, "q1": q1, "q2": q2}


def _model(nodes: list, inits: list) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 3])],
        inits,
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 19)])


MM1, MM2 = "/enc/blocks.0/fc/MatMul", "/enc/blocks.1/fc/MatMul"


def _fp32_graph(w: dict[str, np.ndarray], with_mm2: bool = True) -> onnx.ModelProto:
    nodes = [helper.make_node("MatMul", ["x", "W1"], ["h"], name=MM1)]
    nodes.append(helper.make_node("MatMul", ["h", "W2"], ["y"], name=MM2 if with_mm2 else "renamed"))
    inits = [numpy_helper.from_array(w["w1"], "W1"), numpy_helper.from_array(w["w2"], "W2")]
    return _model(nodes, inits)


def _qdq_graph(w: dict[str, np.ndarray]) -> onnx.ModelProto:
    """x → Q/DQ → MatMul(W1: INT8 → DQ) → h → Q/DQ → MatMul(W2: INT8 → DQ, per channel) → y."""
    f = numpy_helper.from_array
    inits = [
        f(np.float32(SX), "sx"), f(np.float32(SH), "sh"), f(np.int8(0), "z"), f(np.zeros(3, np.int8), "z3"),
        f(w["q1"], "W1_q"), f(w["s1"], "s1"), f(w["q2"], "W2_q"), f(w["s2"], "s2"),
    ]  # fmt: skip
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "sx", "z"], ["xq"], name="qx"),
        helper.make_node("DequantizeLinear", ["xq", "sx", "z"], ["xd"], name="dqx"),
        helper.make_node("DequantizeLinear", ["W1_q", "s1", "z"], ["W1_d"], name="dq1"),
        helper.make_node("MatMul", ["xd", "W1_d"], ["h"], name=MM1),
        helper.make_node("QuantizeLinear", ["h", "sh", "z"], ["hq"], name="qh"),
        helper.make_node("DequantizeLinear", ["hq", "sh", "z"], ["hd"], name="dqh"),
        helper.make_node("DequantizeLinear", ["W2_q", "s2", "z3"], ["W2_d"], name="dq2", axis=1),
        helper.make_node("MatMul", ["hd", "W2_d"], ["y"], name=MM2),
    ]
    return _model(nodes, inits)


def _run(model: onnx.ModelProto) -> np.ndarray:
    import onnxruntime as ort

    session = ort.InferenceSession(model.SerializeToString(), providers=["CPUExecutionProvider"])
    return session.run(["y"], {"x": X})[0]


def test_qdq_surgery_gives_the_known_values_of_each_variant():
    from quantize.qdq_graph import quantized_nodes
    from quantize.surgery import onnx_variant

    w = _weights()
    fp32, qdq = _fp32_graph(w), _qdq_graph(w)
    dq1, dq2 = w["q1"].astype(np.float32) * w["s1"], w["q2"].astype(np.float32) * w["s2"]
    h_int8 = _fq(X, SX) @ dq1
    expected = {
        "int8": _fq(h_int8, SH) @ dq2,
        "fp32": X @ w["w1"] @ w["w2"],
        "mm1 float": _fq(X @ w["w1"], SH) @ dq2,  # the FP32 weight, the float activation x
        "mm1 alone quantized": h_int8 @ w["w2"],
    }
    assert quantized_nodes(qdq) == sorted([MM1, MM2])
    np.testing.assert_allclose(_run(qdq), expected["int8"], atol=1e-5)
    np.testing.assert_allclose(_run(fp32), expected["fp32"], atol=1e-5)
    np.testing.assert_allclose(_run(onnx_variant(qdq, fp32, [MM1])), expected["mm1 float"], atol=1e-5)
    alone = onnx_variant(qdq, fp32, [MM1], group_float=False)
    np.testing.assert_allclose(_run(alone), expected["mm1 alone quantized"], atol=1e-5)
    assert quantized_nodes(alone) == [MM1] and {n.name for n in alone.graph.node} == {"qx", "dqx", "dq1", MM1, MM2}
    every = onnx_variant(qdq, fp32, [MM1, MM2])
    np.testing.assert_allclose(_run(every), expected["fp32"], atol=1e-5)
    assert {n.op_type for n in every.graph.node} == {"MatMul"} and len(every.graph.initializer) == 2  # Q/DQ pruned
    assert {n.name for n in qdq.graph.node} >= {"qx", "dq2"}  # the input graph is left as it was
    # a node the FP32 graph lacks gets its dequantized INT8 weight: float activation, INT8-rounded weight
    other = onnx_variant(qdq, _fp32_graph(w, with_mm2=False), [MM2])
    np.testing.assert_allclose(_run(other), h_int8 @ dq2, atol=1e-5)
    with pytest.raises(ArtifactError, match="'nope'.*not quantized nodes"):
        onnx_variant(qdq, fp32, ["nope"])


def test_qdq_surgery_casts_an_activation_whose_dequantize_has_another_float_type():
    """x (FP32) → Q (FP32 scale) → DQ (FP16 scale) → MatMul in FP16: in float, x reaches the MatMul through a Cast."""
    from quantize.surgery import onnx_variant

    w = np.asarray([[0.5, -1.25], [2.0, 0.75], [-0.5, 1.0], [0.25, -2.0]], np.float16)
    f = numpy_helper.from_array
    inits = [f(np.float32(SX), "sx"), f(np.float16(SX), "sx16"), f(np.int8(0), "z"), f(w, "W")]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "sx", "z"], ["xq"], name="q"),
        helper.make_node("DequantizeLinear", ["xq", "sx16", "z"], ["xd"], name="dq"),
        helper.make_node("MatMul", ["xd", "W"], ["m"], name="mm"),
        helper.make_node("Cast", ["m"], ["y"], name="out", to=TensorProto.FLOAT),
    ]
    qdq = _model(nodes, inits)
    qdq.graph.output[0].type.tensor_type.shape.dim[1].dim_value = 2
    fp32 = _model([helper.make_node("MatMul", ["x", "W"], ["y"], name="mm")], [f(w.astype(np.float32), "W")])
    floated = onnx_variant(qdq, fp32, ["mm"])
    assert [n.op_type for n in floated.graph.node] == ["Cast", "MatMul", "Cast"]
    want = (X.astype(np.float16) @ w).astype(np.float32)
    np.testing.assert_allclose(_run(floated), want, atol=1e-2)
    assert np.abs(_run(qdq) - want).max() > 1e-2  # the INT8 graph rounds x to multiples of 0.05


def test_groups_follow_module_paths_and_fall_back_to_chunks():
    from quantize.sensitivity import group_layers

    w = _weights()
    groups = group_layers([MM1, MM2], _fp32_graph(w))
    assert [(g.name, g.nodes, g.rule) for g in groups] == [("blocks.0", [MM1], "module"), ("blocks.1", [MM2], "module")]
    names = [f"op_{i}" for i in range(30)]  # no module path anywhere: chunks of consecutive nodes
    chunks = group_layers(names, None, chunk=12)
    assert [len(g.nodes) for g in chunks] == [12, 12, 6] and {g.rule for g in chunks} == {"chunk"}
    merged = group_layers(names, None, chunk=4, max_groups=3)
    assert len(merged) == 3 and [u for g in merged for u in g.nodes] == names
    with pytest.raises(ConfigError, match="max_groups=0"):
        group_layers(names, None, max_groups=0)


# ---------------------------------------------------------------------------------------------------------------------
# The tiny run's two INT8 artifacts
# ---------------------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny(quantized: dict[str, Any]) -> dict[str, Any]:
    """Paths, the tuning subset (as ``pipeline.stages.quantize.load_tuning`` builds it) and its FP32 logits."""
    from pipeline.data.dataset import open_dataset
    from quantize.calibration import validation_items
    from quantize.surgery import open_variants
    from runtimes.export import read_onnx_metadata
    from runtimes.tokenizer import TextTokenizer

    root, cfg = quantized["root"], quantized["cfg"]
    meta = read_onnx_metadata(root / "export" / "full.onnx")
    tok = TextTokenizer.from_dir(root / "export" / "tokenizer", max_length=int(meta["max_tokens"]))
    refer = open_dataset(cfg, root / "data")
    items = validation_items(refer, [cfg.train.val_split], cfg.quant.eval_samples, tok, int(meta["img_size"]))
    paths = {
        "onnx": (root / "quantize" / "full_int8_qdq.onnx", root / "export" / "full.onnx"),
        "openvino": (root / "quantize" / "full_int8.xml", root / "export" / "full.xml"),
    }
    reference = open_variants(*paths["onnx"], threads=1).reference()
    logits = [reference(it.feeds)["mask_logits"] for it in items]
    return {"paths": paths, "items": items, "logits": logits, "fp32_onnx": paths["onnx"][1]}


def _stand_in_score(tiny: dict[str, Any]):
    """mIoU stand-in: 1 − 20 × the mean absolute logit error against FP32 (a tiny model's mIoU does not move)."""

    def score(infer) -> float:
        pairs = zip(tiny["items"], tiny["logits"], strict=True)
        errors = [np.abs(infer(it.feeds)["mask_logits"] - ref).mean() for it, ref in pairs]
        return 1.0 - 20.0 * float(np.mean(errors))

    return score


@pytest.mark.parametrize("kind", ["onnx", "openvino"])
def test_groups_cover_every_quantized_node_once_and_surgery_restores_fp32(tiny, kind):
    from quantize.qdq_graph import quantized_nodes
    from quantize.sensitivity import MAX_GROUPS, group_layers
    from quantize.surgery import fake_quantize_targets, open_variants

    variants = open_variants(*tiny["paths"][kind], threads=1)
    units = variants.units
    if kind == "onnx":
        assert sorted(units) == quantized_nodes(tiny["paths"]["onnx"][0])
    else:  # every operation a FakeQuantize feeds is a unit
        assert set().union(*fake_quantize_targets(variants.int8).values()) <= set(units) and len(units) > 10
    for cap in (MAX_GROUPS, 8):
        groups = group_layers(units, tiny["fp32_onnx"], max_groups=cap)
        assert 2 <= len(groups) <= cap
        listed = [u for g in groups for u in g.nodes]
        assert len(listed) == len(set(listed)) == len(units) and set(listed) == set(units)  # each exactly once
        assert all(g.rule == "module" and not g.name.startswith("inner.") for g in groups)
    assert len(group_layers(units, tiny["fp32_onnx"])) >= 8  # block granularity, not a handful of families
    feeds = [it.feeds for it in tiny["items"][:2]]
    reference, int8 = variants.reference(), variants.quantized()
    every_float = variants.variant(units, group_float=True)
    none_quantized = variants.variant([], group_float=False)
    for f in feeds:
        want = reference(f)["mask_logits"]
        assert np.abs(every_float(f)["mask_logits"] - want).max() <= 1e-4
        assert np.abs(none_quantized(f)["mask_logits"] - want).max() <= 1e-4
    if kind == "onnx":  # ONNX Runtime is deterministic: nothing floated is the INT8 graph itself
        nothing = variants.variant([], group_float=True)
        assert all(np.array_equal(nothing(f)["mask_logits"], int8(f)["mask_logits"]) for f in feeds)


def test_sensitivity_of_the_qdq_graph_ranks_groups_by_recovery_and_renders(tiny, tmp_path):
    from matplotlib.image import imread

    from quantize.qdq_graph import quantized_nodes
    from quantize.sensitivity import measure_sensitivity, sensitivity_markdown, write_sensitivity_plot

    median = float(np.median(np.concatenate([x.ravel() for x in tiny["logits"]])))
    result = measure_sensitivity(
        *tiny["paths"]["onnx"], _stand_in_score(tiny), max_groups=6, threads=1, threshold=1 / (1 + np.exp(-median))
    )
    assert result.runtime == "onnxruntime" and result.samples == len(tiny["items"]) and result.modes == MODES_BOTH
    assert result.reference_miou == pytest.approx(1.0) and result.int8_drop > 0 and result.noise_points == 0
    assert 0 < result.int8_agreement <= 1
    groups = result.groups
    assert 2 <= len(groups) <= 6
    for g in groups:
        assert g.recovery == pytest.approx(result.int8_drop - g.float_drop)
        assert g.quantized_drop is not None and 0 < g.float_agreement <= 1 and 0 < g.quantized_agreement <= 1
    recoveries = [g.recovery for g in groups]
    assert recoveries == sorted(recoveries, reverse=True) and recoveries[0] > 0
    assert result.ranking() == [u for g in groups for u in g.nodes]
    assert sorted(result.ranking()) == quantized_nodes(tiny["paths"]["onnx"][0])
    data = json.loads(json.dumps(result.to_dict()))
    assert [g["name"] for g in data["groups"]] == [g.name for g in groups]
    assert set(result.seconds) == {"reference", "int8", "groups", "total"} and result.seconds["total"] > 0
    table = sensitivity_markdown(result)
    rows = [line for line in table.splitlines() if line.startswith("| ") and line[2].isdigit()]
    assert len(rows) == len(groups) and all(f"`{g.name}`" in table for g in groups)
    png = write_sensitivity_plot(result, tmp_path / "sensitivity.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    image = imread(png)
    assert image.ndim == 3 and image.shape[0] > 100 and image.shape[1] > 100


def test_sensitivity_of_the_openvino_ir_alone_quantized_only_with_a_cap(tiny):
    import openvino as ov

    from quantize.calibration import score
    from quantize.sensitivity import measure_sensitivity, sensitivity_markdown
    from quantize.surgery import openvino_quantized_ops

    def miou(infer) -> float:
        return score(lambda f: infer(f)["mask_logits"], tiny["items"])[0]

    result = measure_sensitivity(*tiny["paths"]["openvino"], miou, modes=["quantized"], max_groups=3, threads=1)
    assert result.runtime == "openvino" and result.modes == ["quantized"] and len(result.groups) <= 3
    assert all(g.float_drop is None and g.recovery is None and g.quantized_drop is not None for g in result.groups)
    drops = [g.quantized_drop for g in result.groups]
    assert drops == sorted(drops, reverse=True)
    ops = openvino_quantized_ops(ov.Core().read_model(str(tiny["paths"]["openvino"][0])))
    assert sorted(result.ranking()) == sorted(ops)
    fp32_names = {n.name for n in onnx.load(str(tiny["fp32_onnx"])).graph.node}
    assert set(result.ranking(onnx_names=True)) <= fp32_names  # what quantize_openvino_int8(ignored_nodes=) takes
    assert "| – |" in sensitivity_markdown(result)  # the alone-float columns are empty


def test_sensitivity_refuses_unknown_modes_and_mismatched_artifacts(tiny):
    from quantize.sensitivity import measure_sensitivity

    qdq, fp32 = tiny["paths"]["onnx"]
    with pytest.raises(ConfigError, match="unknown sensitivity mode 'floats'.*valid: float, quantized"):
        measure_sensitivity(qdq, fp32, lambda infer: 0.0, modes=["floats"])
    with pytest.raises(ArtifactError, match="full_int8_qdq.onnx against full.xml"):
        measure_sensitivity(qdq, tiny["paths"]["openvino"][1], lambda infer: 0.0)
