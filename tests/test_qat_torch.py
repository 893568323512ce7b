"""QAT for the TensorRT path on the tiny variant: fake-quant layers, calibration, training steps, Q/DQ ONNX export.

Usage: ``pytest tests/test_qat_torch.py`` (the dynamo-exporter check is ``-m slow``). One opset-17 export (TorchScript
exporter, LayerNorm decomposed: what every listed TensorRT parser takes) is shared by the export tests.
"""

from __future__ import annotations

import copy
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from foundation.errors import ConfigError

pytestmark = [
    pytest.mark.usefixtures("one_torch_thread"),
    pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning", "ignore::FutureWarning"),
]

HEAD = ["decoder.head", "decoder.text_head.pixel", "decoder.text_head.filter"]
CALIBRATION_SEEDS = range(4)
# max |ONNX Runtime - torch QAT| on the tiny model's logits (|logits| <= 0.15), CPU, ONNX Runtime 1.32, 8 samples:
# Q/DQ pairs run as written (runtimes.onnxruntime_rt.UNFUSED_QDQ): <= 2.2e-8; ONNX Runtime's default QDQ fusions
# (x86 integer kernels) flip some INT8 roundings: <= 3.6e-4 (fake quant itself moves the logits by ~1.2e-3)
ORT_ATOL = 1e-6
ORT_FUSED_ATOL = 1e-3


def batches(model: Any, seeds: Any) -> list[tuple[torch.Tensor, ...]]:
    from model import graph_specs

    full = graph_specs(model)["full"]
    return [full.example_inputs(seed=s) for s in seeds]


def stacked(items: list[tuple[torch.Tensor, ...]]) -> tuple[torch.Tensor, ...]:
    return tuple(torch.cat(parts) for parts in zip(*items, strict=True))


@pytest.fixture(scope="module")
def fp32(one_torch_thread) -> Any:
    from model import create_model

    torch.manual_seed(0)
    return create_model("tiny", text_head=True).eval()


@pytest.fixture(scope="module")
def qat(fp32) -> tuple[Any, dict[str, Any]]:
    from quantize.qat_torch import prepare_qat

    model = copy.deepcopy(fp32)
    return model, prepare_qat(model, batches(fp32, CALIBRATION_SEEDS))


def float_layers(model: Any) -> list[str]:
    return [n for n, m in model.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))]


# ---------------------------------------------------------------------------------------------------------------------
# Preparation, calibration, the switch
# ---------------------------------------------------------------------------------------------------------------------


def test_every_conv_and_linear_but_the_mask_head_is_fake_quantized(fp32, qat):
    from quantize.qat_torch import QATConv2d, QATLinear, mask_head_modules, qat_summary

    model, info = qat
    assert mask_head_modules(fp32) == ["decoder.head", "decoder.text_head"]
    assert info["excluded"] == HEAD and not info["skipped"] and info["calibration"] == "minmax"
    assert sorted(info["quantized"]) == sorted(set(float_layers(fp32)) - set(HEAD)) and len(info["quantized"]) == 163
    assert info["calibration_batches"] == len(CALIBRATION_SEEDS)
    modules = dict(model.named_modules())
    assert all(isinstance(modules[n], (QATConv2d, QATLinear)) for n in info["quantized"])
    assert isinstance(modules["vision.body.patch_embed.proj"], torch.nn.Conv2d)  # still the layer it was
    assert all(type(modules[n]) in (torch.nn.Conv2d, torch.nn.Linear) for n in HEAD)
    summary = qat_summary(model)
    assert summary["quantized"] == summary["enabled"] == summary["learnable_scales"] == 163
    assert summary["excluded"] == HEAD
    assert 0 < summary["input_scale"]["min"] < summary["input_scale"]["max"]
    assert 0 < summary["weight_scale"]["min"] < summary["weight_scale"]["max"]
    layer = summary["layers"]["decoder.lateral.0.0"]
    assert layer["input_scale"] == pytest.approx(layer["input_absmax"] / 127, rel=1e-6)


def test_the_state_dict_keeps_every_original_key(fp32, qat):
    model, _info = qat
    before, after = fp32.state_dict(), model.state_dict()
    assert set(before) <= set(after)
    assert all(torch.equal(before[k], after[k]) for k in before)
    extra = set(after) - set(before)
    assert extra and {k.rsplit(".", 1)[1] for k in extra} == {"qat_input_scale", "qat_input_absmax"}
    fresh = copy.deepcopy(model)
    result = fresh.load_state_dict(before, strict=False)  # an FP32 checkpoint loads into the QAT model
    assert set(result.missing_keys) == extra and not result.unexpected_keys


def test_input_scales_start_from_the_ptq_minmax_calibration(fp32, qat):
    """absmax / 127 of each layer's FP32 input over the calibration (onnxruntime's symmetric MinMax); the PTQ
    calibration set's stacked arrays (int32 tokens) give the same scales as the tensor batches."""
    from quantize.qat_torch import prepare_qat, qat_layers

    model, _info = qat
    names = ["vision.body.patch_embed.proj", "text.body.encoder.layer.0.attention.self.query", "decoder.lateral.0.0"]
    seen = {n: 0.0 for n in names}

    def observe(name: str) -> Any:
        def hook(_module: Any, args: tuple[torch.Tensor, ...]) -> None:
            seen[name] = max(seen[name], float(args[0].abs().max()))

        return hook

    modules = dict(fp32.named_modules())
    hooks = [modules[n].register_forward_pre_hook(observe(n)) for n in names]
    try:
        with torch.no_grad():
            for batch in batches(fp32, CALIBRATION_SEEDS):
                fp32(*batch)
    finally:
        for hook in hooks:
            hook.remove()
    layers = qat_layers(model)
    for name in names:
        assert float(layers[name].qat_input_scale) == pytest.approx(seen[name] / 127, rel=1e-6), name
    arrays = {k: v.numpy() for k, v in zip(("image", "input_ids", "attention_mask"),
                                           stacked(batches(fp32, CALIBRATION_SEEDS)), strict=True)}  # fmt: skip
    arrays["input_ids"] = arrays["input_ids"].astype(np.int32)
    other = copy.deepcopy(fp32)
    assert prepare_qat(other, arrays)["calibration_batches"] == len(CALIBRATION_SEEDS)
    for name, layer in qat_layers(other).items():
        assert torch.allclose(layer.qat_input_scale, layers[name].qat_input_scale, rtol=1e-6), name


def test_fake_quant_off_is_exactly_fp32_and_on_is_close(fp32, qat):
    from quantize.qat_torch import set_fake_quant

    model, _info = qat
    x = stacked(batches(fp32, [10, 11]))
    with torch.no_grad():
        ref = fp32(*x)
        assert set_fake_quant(model, False) == 163
        off = model(*x)
        set_fake_quant(model, True)
        on = model(*x)
    assert torch.equal(off, ref)
    err = float((on - ref).abs().max())
    assert 0 < err < 0.05 * float(ref.abs().max()), err  # measured: 1e-3 against logits up to 0.14


def test_a_few_steps_learn_the_scales_and_reduce_a_distillation_loss(fp32):
    """Distillation against the FP32 logits, text encoder frozen (still quantized, its scales kept). An untrained
    model's calibrated INT8 error is at the rounding floor, so the scales start 4x too coarse and must win it back."""
    from quantize.qat_torch import prepare_qat, qat_layers, qat_summary

    model = copy.deepcopy(fp32)
    model.text.body.requires_grad_(False)
    info = prepare_qat(model, batches(fp32, CALIBRATION_SEEDS))
    text = [n for n in info["quantized"] if n.startswith("text.body.")]
    assert len(text) == 12 and qat_summary(model)["learnable_scales"] == 163 - 12
    layers = qat_layers(model)
    with torch.no_grad():
        for layer in layers.values():
            layer.qat_input_scale.mul_(4.0)
    before = {n: layer.qat_input_scale.detach().clone() for n, layer in layers.items()}
    text_weights = {n: layers[n].weight.detach().clone() for n in text}
    x = stacked(batches(fp32, [20, 21]))
    with torch.no_grad():
        target = fp32(*x)
    scales = [p for n, p in model.named_parameters() if n.endswith("qat_input_scale") and p.requires_grad]
    weights = [p for n, p in model.named_parameters() if not n.endswith("qat_input_scale") and p.requires_grad]
    opt = torch.optim.Adam([{"params": scales, "lr": 1e-3}, {"params": weights, "lr": 1e-5}])
    losses = []
    for _ in range(10):
        loss = torch.nn.functional.mse_loss(model(*x), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss))
    with torch.no_grad():
        final = float(torch.nn.functional.mse_loss(model(*x), target))
    assert final < 0.8 * losses[0], (losses, final)  # measured: 1.5e-6 -> 0.97e-6
    changed = [n for n in layers if not torch.equal(layers[n].qat_input_scale.detach(), before[n])]
    assert len(changed) > 100 and not set(changed) & set(text)
    assert all(torch.equal(layers[n].weight, w) for n, w in text_weights.items())


def test_exclude_takes_names_or_a_predicate_and_refuses_what_it_cannot_use(fp32):
    from quantize.qat_torch import calibrate_qat, prepare_qat, qat_summary

    calib = batches(fp32, [0])
    model = copy.deepcopy(fp32)
    info = prepare_qat(model, calib, exclude=["decoder"])
    assert info["excluded"] == [n for n in float_layers(fp32) if n.startswith("decoder.")]
    with pytest.raises(ConfigError, match=f"already has {len(info['quantized'])} fake-quant layers"):
        prepare_qat(model, calib)
    with pytest.raises(ConfigError, match="ran no batch"):
        calibrate_qat(model, [])
    model = copy.deepcopy(fp32)
    info = prepare_qat(model, lambda m: m(*calib[0]), exclude=lambda name, _m: name.startswith("vision."))
    assert info["calibration_batches"] == 1 and not [n for n in info["quantized"] if n.startswith("vision.")]
    model = copy.deepcopy(fp32)
    with pytest.raises(ConfigError, match=r"\['decoder.hed'\].*did you mean 'decoder.head'"):
        prepare_qat(model, calib, exclude=["decoder.hed"])
    with pytest.raises(ConfigError, match="calibration of type int"):
        prepare_qat(model, 3)
    assert qat_summary(model)["quantized"] == 0  # a failed preparation leaves the model float
    assert model.state_dict().keys() == fp32.state_dict().keys()
    with pytest.raises(ConfigError, match="no CASGDecoder"):
        prepare_qat(torch.nn.Sequential(torch.nn.Linear(2, 2)), [torch.zeros(1, 2)])


# ---------------------------------------------------------------------------------------------------------------------
# The Q/DQ ONNX
# ---------------------------------------------------------------------------------------------------------------------


def export(model: Any, path: Path, **kwargs: Any) -> Path:
    from quantize.qat_torch import export_qat_onnx

    # as the qat stage passes the FP32 ONNX's description: its precision, opset and exporter must not survive
    fp32_description = {"graph": "full", "variant": "tiny", "precision": "fp32", "opset": 20, "exporter": "dynamo"}
    return export_qat_onnx(model, path, fp32_description, **kwargs)


@pytest.fixture(scope="module")
def exported(qat, tmp_path_factory) -> Path:
    """The opset-17 export of the graph wrapper (as the qat stage holds the model), from a model in training mode
    with its vision encoder in eval (frozen BatchNorm): each module's mode comes back."""
    from model import graph_specs

    model, _info = qat
    wrapper = graph_specs(model)["full"].module
    model.train()
    model.vision.eval()
    try:
        path = export(wrapper, tmp_path_factory.mktemp("qat") / "full_qat_int8_qdq.onnx", opset=17, trt_version="8.5")
        assert model.training and model.decoder.training and not model.vision.body.training
    finally:
        model.eval()
    return path


def check_qdq_graph(path: Path) -> None:
    """Q/DQ on both inputs of the 163 quantized layers, nowhere else; symmetric INT8; weights per channel on the
    output axis, activations per tensor; the mask head float."""
    import onnx

    from quantize.qdq import head_nodes
    from quantize.qdq_graph import QUANT_OPS, inspect_qdq, qdq_inputs, quantized_nodes

    proto = onnx.load(str(path))
    inits = {t.name for t in proto.graph.initializer}
    entries = qdq_inputs(proto)
    by_node: dict[str, set[int]] = {}
    for e in entries:
        by_node.setdefault(e.node, set()).add(e.index)
    assert len(by_node) == 163 and all(v == {0, 1} for v in by_node.values())
    nodes = {n.name: n for n in proto.graph.node}
    for e in entries:
        node = nodes[e.node]
        if e.index == 1:  # the weight: stored INT8, one scale per output channel
            trans = any(a.name == "transB" and a.i for a in node.attribute)
            axis = 0 if node.op_type == "Conv" or trans else 1
            assert e.weight is not None and e.weight.dtype == np.int8 and e.axis == axis, e.node
            assert e.scale.size == e.weight.shape[axis] and np.all(e.scale > 0), e.node
        else:
            assert e.weight is None and e.scale.size == 1 and float(e.scale) > 0, e.node
        assert e.zero_point.dtype == np.int8 and not e.zero_point.any(), e.node
    info = inspect_qdq(proto)
    assert info["zero_points_all_zero"] and set(info["dq_consumers"]) <= set(QUANT_OPS)
    weighted = [n.name for n in proto.graph.node if n.op_type in QUANT_OPS and n.input[1] in inits]
    assert len(weighted) == 3  # float weights: the three head layers, and nothing else
    heads = head_nodes(proto)
    assert len(heads) == 3 and sorted(heads) == sorted(weighted) and not set(heads) & set(quantized_nodes(proto))


def test_the_export_has_qdq_in_front_of_every_quantized_layer_and_nowhere_else(exported):
    check_qdq_graph(exported)


def test_the_export_records_the_quantization_like_the_ptq_path(exported):
    from runtimes.export import read_onnx_metadata
    from runtimes.tensorrt_settings import float_remainder

    meta = read_onnx_metadata(exported)
    quant = meta["quantization"]
    assert meta["precision"] == "int8" and meta["variant"] == "tiny"
    assert meta["opset"] == 17 and meta["exporter"] == "torchscript"
    assert float_remainder(meta) == "fp32"
    assert quant["format"] == "qdq" and quant["scheme"].startswith("symmetric") and quant["backend"] == "torch-qat"
    assert quant["excluded_modules"] == HEAD and len(quant["excluded"]) == 3
    assert quant["quantized_layers"] == quant["quantized_nodes"] == 163 and quant["calibration_samples"] == 4
    assert set(quant["op_types"]) == {"Conv", "Gemm", "MatMul"}


def test_the_export_passes_every_tensorrt_parser_check(exported):
    from quantize.trt_compat import check_trt_compat, known_versions

    for version in known_versions():
        report = check_trt_compat(exported, version)
        assert report.ok, report.summary()


def feeds_of(batch: tuple[torch.Tensor, ...]) -> dict[str, np.ndarray]:
    return {n: t.numpy().astype(np.int32) if n != "image" else t.numpy()
            for n, t in zip(("image", "input_ids", "attention_mask"), batch, strict=True)}  # fmt: skip


def test_onnxruntime_runs_the_export_like_the_torch_qat_model(fp32, qat, exported):
    from runtimes import get_runtime
    from runtimes.onnxruntime_rt import UNFUSED_QDQ

    model, _info = qat
    as_written = get_runtime("onnxruntime").load(exported, options={UNFUSED_QDQ: "1"})
    fused = get_runtime("onnxruntime").load(exported)
    worst, worst_fused, vs_fp32 = 0.0, 0.0, 0.0
    for batch in batches(fp32, [30, 35]):
        with torch.no_grad():
            ref, float_ref = model(*batch).numpy(), fp32(*batch).numpy()
        got = as_written.infer(feeds_of(batch))["mask_logits"]
        worst = max(worst, float(np.abs(got - ref).max()))
        worst_fused = max(worst_fused, float(np.abs(fused.infer(feeds_of(batch))["mask_logits"] - ref).max()))
        vs_fp32 = max(vs_fp32, float(np.abs(got - float_ref).max()))
    assert worst < ORT_ATOL and worst_fused < ORT_FUSED_ATOL, (worst, worst_fused)
    assert vs_fp32 > 100 * worst  # the graph runs the INT8 model, not the float one


def test_the_export_refuses_a_model_without_fake_quant(fp32, qat, tmp_path):
    from quantize.qat_torch import set_fake_quant

    with pytest.raises(ConfigError, match="0 fake-quant layers"):
        export(fp32, tmp_path / "float.onnx")
    with pytest.raises(ConfigError, match="expected a RISModel"):
        export(torch.nn.Sequential(qat[0].decoder), tmp_path / "decoder.onnx")
    model, _info = qat
    set_fake_quant(model, False)
    try:
        with pytest.raises(ConfigError, match="163 off"):
            export(model, tmp_path / "off.onnx")
    finally:
        set_fake_quant(model, True)
    assert not (tmp_path / "off.onnx").exists()


@pytest.mark.slow
def test_the_dynamo_export_is_the_same_qdq_graph(fp32, qat, tmp_path):
    """The default exporter (dynamo, opset 20 with torch 2.14) on the RISModel itself: ~45 s on 2 shared cores."""
    from quantize.trt_compat import check_trt_compat, known_versions, load_op_list
    from runtimes import get_runtime
    from runtimes.onnxruntime_rt import UNFUSED_QDQ

    model, _info = qat
    path = export(model, tmp_path / "full_qat_dynamo.onnx")
    check_qdq_graph(path)
    rt = get_runtime("onnxruntime").load(path)
    assert rt.metadata["exporter"] == "dynamo" and rt.metadata["opset"] >= 18
    for version in known_versions():
        if load_op_list(version)["opset_max"] >= rt.metadata["opset"]:
            assert check_trt_compat(path, version).ok, version
    batch = batches(fp32, [40])[0]
    with torch.no_grad():
        ref = model(*batch).numpy()
    unfused = get_runtime("onnxruntime").load(path, options={UNFUSED_QDQ: "1"})
    assert float(np.abs(unfused.infer(feeds_of(batch))["mask_logits"] - ref).max()) < ORT_ATOL
    assert float(np.abs(rt.infer(feeds_of(batch))["mask_logits"] - ref).max()) < ORT_FUSED_ATOL
