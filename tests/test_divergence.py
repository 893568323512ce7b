"""First-divergence debugging of INT8 artifacts (quantize/divergence.py): a hand-made Q/DQ graph with known figures,
then the tiny run's Q/DQ ONNX and OpenVINO INT8 IR against their FP32 graphs.

Usage: ``pytest tests/test_divergence.py``.
"""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from foundation.errors import ArtifactError, DataError
from quantize.divergence import (
    DivergenceReport,
    compare_onnx,
    compare_openvino,
    divergence_markdown,
    sqnr_db,
)

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning", "ignore::FutureWarning")

X_SCALE = 0.5  # coarse activation scale: the only quantization error of the synthetic graph
W_INT8 = np.asarray([[1, -2, 3], [4, 0, -1], [-3, 2, 2], [1, 1, -4]], np.int8)
W_SCALE = 0.25  # the FP32 weight is W_INT8 * W_SCALE exactly, so the weight's Q/DQ is lossless
BIAS = np.asarray([0.5, -1.0, 0.25], np.float32)


# -------------------------------------------------------------------------------- a synthetic graph and its Q/DQ twin
def _model(nodes: list, inits: list) -> onnx.ModelProto:
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("mask_logits", TensorProto.FLOAT, [1, 3])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    return model


def _fp32_graph() -> onnx.ModelProto:
    """x @ W -> Relu -> + b (mask_logits), and three side nodes: an int Shape, a ReduceSum and an FP32-only Neg."""
    inits = [
        numpy_helper.from_array(W_INT8.astype(np.float32) * W_SCALE, "w"),
        numpy_helper.from_array(BIAS, "b"),
        numpy_helper.from_array(np.asarray([1], np.int64), "axes"),
    ]
    nodes = [
        helper.make_node("MatMul", ["x", "w"], ["h"], name="mm"),
        helper.make_node("Relu", ["h"], ["r"], name="act"),
        helper.make_node("Shape", ["r"], ["s"], name="shape"),
        helper.make_node("ReduceSum", ["r", "axes"], ["side_out"], name="side", keepdims=1),
        helper.make_node("Neg", ["r"], ["neg"], name="only_fp32"),
        helper.make_node("Add", ["r", "b"], ["mask_logits"], name="head"),
    ]
    return _model(nodes, inits)


def _qdq_graph() -> onnx.ModelProto:
    """The same graph quantized: Q/DQ on x and on the weight, the Relu's output renamed (as ONNX Runtime renames a
    quantized graph output), the ReduceSum without keepdims (another shape) and no Neg."""
    inits = [
        numpy_helper.from_array(W_INT8, "w_quantized"),
        numpy_helper.from_array(np.asarray(W_SCALE, np.float32), "w_scale"),
        numpy_helper.from_array(np.asarray(X_SCALE, np.float32), "x_scale"),
        numpy_helper.from_array(np.asarray(0, np.int8), "zp"),
        numpy_helper.from_array(BIAS, "b"),
        numpy_helper.from_array(np.asarray([1], np.int64), "axes"),
    ]
    nodes = [
        helper.make_node("QuantizeLinear", ["x", "x_scale", "zp"], ["x_q"], name="x_QuantizeLinear"),
        helper.make_node("DequantizeLinear", ["x_q", "x_scale", "zp"], ["x_dq"], name="x_DequantizeLinear"),
        helper.make_node("DequantizeLinear", ["w_quantized", "w_scale", "zp"], ["w_dq"], name="w_DequantizeLinear"),
        helper.make_node("MatMul", ["x_dq", "w_dq"], ["h"], name="mm"),
        helper.make_node("Relu", ["h"], ["r_renamed"], name="act"),
        helper.make_node("Shape", ["r_renamed"], ["s"], name="shape"),
        helper.make_node("ReduceSum", ["r_renamed", "axes"], ["side_out"], name="side", keepdims=0),
        helper.make_node("Add", ["r_renamed", "b"], ["mask_logits"], name="head"),
    ]
    return _model(nodes, inits)


def _expected(xs: list[np.ndarray]) -> dict[str, tuple[float, float]]:
    """SQNR and mean cosine of h, r and mask_logits computed in numpy from the quantized input."""
    w = W_INT8.astype(np.float64) * W_SCALE
    acc = {k: [0.0, 0.0, 0.0] for k in ("mm", "act", "head")}
    for x in xs:
        xq = np.clip(np.round(x.astype(np.float64) / X_SCALE), -128, 127) * X_SCALE  # round half to even, as ONNX
        fp = {"mm": x.astype(np.float64) @ w}
        q = {"mm": xq @ w}
        for f in (fp, q):
            f["act"] = np.maximum(f["mm"], 0)
            f["head"] = f["act"] + BIAS
        for k, (sig, noise, cos) in acc.items():
            a, b = fp[k].ravel(), q[k].ravel()
            acc[k] = [sig + a @ a, noise + (a - b) @ (a - b), cos + a @ b / (np.linalg.norm(a) * np.linalg.norm(b))]
    return {k: (10 * math.log10(s / n), c / len(xs)) for k, (s, n, c) in acc.items()}


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    root = tmp_path_factory.mktemp("divergence")
    onnx.save(_fp32_graph(), str(root / "fp32.onnx"))
    onnx.save(_qdq_graph(), str(root / "qdq.onnx"))
    rng = np.random.default_rng(0)
    xs = [rng.normal(0.0, 1.5, (1, 4)).astype(np.float32) for _ in range(3)]
    return {"fp32": root / "fp32.onnx", "qdq": root / "qdq.onnx", "xs": xs, "feeds": [{"x": x} for x in xs]}


def test_sqnr_db_edge_cases():
    assert sqnr_db(100.0, 1.0) == pytest.approx(20.0)
    assert sqnr_db(1.0, 0.0) == math.inf and sqnr_db(0.0, 0.0) == math.inf  # equal tensors
    assert sqnr_db(0.0, 1.0) == -math.inf and math.isnan(sqnr_db(math.nan, 1.0))


def test_synthetic_graph_against_itself_is_infinite_everywhere(synthetic):
    report = compare_onnx(synthetic["fp32"], synthetic["fp32"], synthetic["feeds"])
    assert [la.layer for la in report.layers] == ["mm", "act", "side", "only_fp32", "head"]
    assert all(la.sqnr_db == math.inf and la.cosine == pytest.approx(1.0) for la in report.layers)
    assert report.first_divergence is None and report.final.sqnr_db == math.inf
    assert report.final_deployed is not None and report.final_deployed.sqnr_db == math.inf
    assert report.skipped == {"unmatched": 0, "not_float": 1, "shape_mismatch": 0}  # the Shape's int64


def test_synthetic_qdq_matches_tensors_by_node_and_gives_the_known_figures(synthetic):
    report = compare_onnx(synthetic["fp32"], synthetic["qdq"], synthetic["feeds"], samples=2)
    assert report.samples == 2 and report.backend == "onnxruntime"
    # Shape: int64; ReduceSum: [1, 1] vs [1]; Neg: only in the FP32 graph
    assert report.skipped == {"unmatched": 1, "not_float": 1, "shape_mismatch": 1}
    assert [(la.index, la.layer, la.op_type, la.tensor) for la in report.layers] == [
        (0, "mm", "MatMul", "h"),
        (1, "act", "Relu", "r"),  # the FP32 tensor name, though the Q/DQ graph calls it r_renamed
        (5, "head", "Add", "mask_logits"),
    ]
    expected = _expected(synthetic["xs"][:2])
    for la in report.layers:
        assert la.sqnr_db == pytest.approx(expected[la.layer][0], abs=1e-3), la.layer
        assert la.cosine == pytest.approx(expected[la.layer][1], abs=1e-6), la.layer
    assert (report.final.layer, report.final.op_type, report.final.index) == ("mask_logits", "Add", 5)
    assert report.final.sqnr_db == pytest.approx(expected["head"][0], abs=1e-3)
    assert report.final_deployed.sqnr_db == pytest.approx(expected["head"][0], abs=0.5)  # fused kernels may differ
    values = sorted(la.sqnr_db for la in report.layers)
    for threshold in (values[0] - 1.0, (values[0] + values[1]) / 2, (values[1] + values[2]) / 2, values[2] + 1.0):
        wanted = next((la.layer for la in report.layers if la.sqnr_db < threshold), None)
        found = compare_onnx(synthetic["fp32"], synthetic["qdq"], synthetic["feeds"], samples=2, threshold_db=threshold)
        assert (found.first_divergence.layer if found.first_divergence else None) == wanted, threshold


def test_synthetic_report_is_strict_json_and_markdown(synthetic):
    report = compare_onnx(synthetic["fp32"], synthetic["qdq"], synthetic["feeds"], threshold_db=1000.0)
    data = json.loads(json.dumps(report.to_dict(max_layers=1), allow_nan=False))
    assert data["first_divergence"]["layer"] == "mm" and data["compared"] == 3
    assert len(data["layers"]) == 1 and data["layers_left_out"] == 2 and len(data["worst"]) == 3
    assert data["worst"][0]["sqnr_db"] == min(la["sqnr_db"] for la in data["worst"])
    same = compare_onnx(synthetic["fp32"], synthetic["fp32"], synthetic["feeds"]).to_dict()
    assert same["final"]["sqnr_db"] == "inf" and same["first_divergence"] is None
    md = divergence_markdown(report)
    assert "| first divergence | 0 | `mm` | MatMul | `h` |" in md and "| final output |" in md
    assert md.count("| worst ") == 3


def test_synthetic_errors_name_the_bad_value(synthetic, tmp_path):
    with pytest.raises(ArtifactError, match="missing.onnx"):
        compare_onnx(synthetic["fp32"], tmp_path / "missing.onnx", synthetic["feeds"])
    with pytest.raises(ArtifactError, match="no output 'logits'"):
        compare_onnx(synthetic["fp32"], synthetic["qdq"], synthetic["feeds"], output="logits")
    with pytest.raises(DataError, match=r"lacks the inputs \['x'\]"):
        compare_onnx(synthetic["fp32"], synthetic["qdq"], [{"image": np.zeros((1, 4), np.float32)}])
    with pytest.raises(DataError, match="no feeds"):
        compare_onnx(synthetic["fp32"], synthetic["qdq"], [])


# ------------------------------------------------------------------------------------------------ the tiny run's INT8
def _feeds(root: Path) -> list[dict[str, np.ndarray]]:
    from quantize.calibration import iter_feeds, load_calibration

    return list(iter_feeds(load_calibration(root / "calibrate" / "calib.npz")))


@pytest.fixture(scope="module")
def onnx_reports(quantized) -> dict[str, DivergenceReport]:
    root = quantized["root"]
    fp32, qdq = root / "export" / "full.onnx", root / "quantize" / "full_int8_qdq.onnx"
    return {"self": compare_onnx(fp32, fp32, _feeds(root)), "int8": compare_onnx(fp32, qdq, _feeds(root))}


@pytest.fixture(scope="module")
def openvino_reports(quantized) -> dict[str, DivergenceReport]:
    root = quantized["root"]
    fp32, int8 = root / "export" / "full.xml", root / "quantize" / "full_int8.xml"
    return {"self": compare_openvino(fp32, fp32, _feeds(root)), "int8": compare_openvino(fp32, int8, _feeds(root))}


def _check_first_divergence(report: DivergenceReport) -> None:
    """The first layer below a threshold taken from the measured values, and below none before it."""
    finite = sorted(la.sqnr_db for la in report.layers if math.isfinite(la.sqnr_db))
    threshold = finite[len(finite) // 2]  # the median: some layers fall below it, some do not
    first = dataclasses.replace(report, threshold_db=threshold).first_divergence
    assert first is not None and first.sqnr_db < threshold
    position = report.layers.index(first)
    assert all(la.sqnr_db >= threshold for la in report.layers[:position])
    measured = report.first_divergence
    if measured is not None:  # at the report's own threshold (20 dB)
        assert measured.sqnr_db < report.threshold_db
        assert all(la.sqnr_db >= report.threshold_db for la in report.layers[: report.layers.index(measured)])
    md = divergence_markdown(dataclasses.replace(report, threshold_db=threshold))
    assert f"| first divergence | {first.index} | `{first.layer}` |" in md


def _check_self(report: DivergenceReport) -> None:
    assert len(report.layers) > 100 and report.skipped["unmatched"] == 0
    assert all(la.sqnr_db == math.inf for la in report.layers)
    assert report.first_divergence is None and report.final.sqnr_db == math.inf
    assert "none below 20 dB" in divergence_markdown(report)


def test_onnx_fp32_against_itself_has_no_divergence(onnx_reports):
    _check_self(onnx_reports["self"])
    assert onnx_reports["self"].final_deployed.sqnr_db > 80.0  # ONNX Runtime's fused graph: same kernels, same file


def test_qdq_onnx_divergence_is_topological_finite_and_first_below_threshold(onnx_reports, quantized):
    from quantize.qdq_graph import quantized_nodes

    report = onnx_reports["int8"]
    fp32 = onnx.load(str(quantized["root"] / "export" / "full.onnx"))
    order = {n.name: i for i, n in enumerate(fp32.graph.node)}
    assert [la.index for la in report.layers] == [order[la.layer] for la in report.layers]
    assert [la.index for la in report.layers] == sorted(la.index for la in report.layers)
    quantized_layers = set(quantized_nodes(quantized["root"] / "quantize" / "full_int8_qdq.onnx"))
    compared = [la for la in report.layers if la.layer in quantized_layers]
    assert len(compared) > 10 and all(math.isfinite(la.sqnr_db) and la.cosine < 1.0 for la in compared)
    assert report.skipped["unmatched"] == 0 and len(report.layers) >= len(order) - 5
    assert report.final.tensor == "mask_logits" and math.isfinite(report.final.sqnr_db)
    assert report.final_deployed is not None and math.isfinite(report.final_deployed.sqnr_db)
    assert report.to_dict()["final"]["tensor"] == "mask_logits"
    _check_first_divergence(report)


def test_openvino_fp32_against_itself_has_no_divergence(openvino_reports):
    _check_self(openvino_reports["self"])
    assert openvino_reports["self"].final_deployed.sqnr_db > 80.0


def test_openvino_int8_divergence_is_topological_finite_and_first_below_threshold(openvino_reports, quantized):
    import openvino as ov

    report = openvino_reports["int8"]
    fp32 = ov.Core().read_model(str(quantized["root"] / "export" / "full.xml"))
    order = {op.get_friendly_name(): i for i, op in enumerate(fp32.get_ordered_ops())}
    assert [la.index for la in report.layers] == [order[la.layer] for la in report.layers]
    assert [la.index for la in report.layers] == sorted(la.index for la in report.layers)
    int8 = ov.Core().read_model(str(quantized["root"] / "quantize" / "full_int8.xml"))
    fed_by_fq = {
        op.get_friendly_name()
        for op in int8.get_ops()
        if any(i.get_source_output().get_node().get_type_name() == "FakeQuantize" for i in op.inputs())
    }
    compared = [la for la in report.layers if la.layer in fed_by_fq]
    assert len(compared) > 10 and all(math.isfinite(la.sqnr_db) for la in compared)
    assert report.skipped["unmatched"] == 0
    assert report.settings["instrumented"].get("LP_TRANSFORMS_MODE") is False  # FakeQuantize simulated in float
    assert report.final.tensor == "mask_logits" and math.isfinite(report.final.sqnr_db)
    assert report.final_deployed is not None and math.isfinite(report.final_deployed.sqnr_db)
    _check_first_divergence(report)
