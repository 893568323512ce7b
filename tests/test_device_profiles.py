"""Every device profile in configs/devices/: it loads, its TensorRT has its own op list, and the tiny model's Q/DQ ONNX,
written at the profile's opset with the profile's settings, passes that list.

Usage: ``pytest tests/test_device_profiles.py`` (``-m slow`` for the per-profile export). The fast check reuses the
shared tiny run's Q/DQ ONNX (opset 20, in range of every TensorRT 10 and 11 list); the slow one exports the untrained
tiny variant once per opset the profiles use (17 and 19, LayerNorm decomposed for 8.5) and quantizes it with a few
random inputs and the profile's float remainder: scales mean nothing, the ops and types are real.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx
import pytest

from foundation.errors import ConfigError
from pipeline.config import device_names, load_config, qdq_float_dtype

ROOT = Path(__file__).resolve().parent.parent
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning", "ignore::FutureWarning")

# The TensorRT each JetPack ships (anchors_update_2026-12 §1.2): a profile's jetpack and trt_version must agree.
JETPACK_TENSORRT = {"5.1": "8.5", "6.1": "10.3", "6.2": "10.3", "7.2": "10.16", "7.2.2": "11.4"}
TENSORRT_PROFILES = [n for n in device_names() if load_config(None, device=n).device.backend == "tensorrt"]


def test_every_profile_loads_with_its_own_op_list_and_a_matching_jetpack():
    from quantize.trt_compat import load_op_list, resolve_version

    assert {"jetson-orin-jp72", "jetson-agx-orin-jp722", "jetson-thor-jp722"} <= set(TENSORRT_PROFILES)
    for name in device_names():
        cfg = load_config(ROOT / "configs" / "demo.yaml", device=name)
        dev = cfg.device
        assert dev.name == name and dev.description
        if dev.backend != "tensorrt":
            continue
        assert resolve_version(dev.trt_version) == dev.trt_version, f"{name}: no op list of its own"
        ops = load_op_list(dev.trt_version)
        assert ops["opset_min"] <= dev.opset <= ops["opset_max"], name
        assert JETPACK_TENSORRT[dev.jetpack] == dev.trt_version, (
            f"{name}: JetPack {dev.jetpack} vs TRT {dev.trt_version}"
        )
        assert "6.x" not in dev.description, f"{name}: JetPack 6.0 ships TensorRT 8.6.2; say 6.1+"
        if dev.strongly_typed_only:
            assert cfg.quant.qdq_float == "fp16" and dev.opset >= 19, name


def test_a_strongly_typed_profile_refuses_an_fp32_float_remainder():
    name = "jetson-agx-orin-jp722"
    assert load_config(None, device=name).device.strongly_typed_only
    with pytest.raises(ConfigError, match=r"strongly typed only.*quant.qdq_float = 'fp32'.*valid here: auto, fp16"):
        load_config(None, ["quant.qdq_float=fp32"], device=name)
    # auto gives FP16 there, whatever the backend; FP32 on a weakly typed profile with ONNX Runtime's quantizer
    cfg = load_config(None, ["quant.qdq_float=auto"], device=name)
    assert qdq_float_dtype(cfg, "onnxruntime") == qdq_float_dtype(cfg, "modelopt") == "fp16"
    cfg = load_config(None, ["quant.qdq_float=auto"], device="jetson-orin-nano")
    assert (qdq_float_dtype(cfg, "onnxruntime"), qdq_float_dtype(cfg, "modelopt")) == ("fp32", "fp16")
    assert qdq_float_dtype(load_config(None, ["quant.qdq_float=fp32"], device="jetson-orin-nano"), "modelopt") == "fp32"
    with pytest.raises(ConfigError, match="opset >= 19"):
        load_config(None, ["device.opset=17"], device=name)
    # an FP16 engine (no Q/DQ graph) or a TensorRT 10 profile may keep FP32
    load_config(None, ["quant.qdq_float=fp32", "build.precision=fp16"], device=name)
    assert not load_config(None, ["quant.qdq_float=fp32"], device="jetson-orin-jp72").device.strongly_typed_only


def test_the_shared_tiny_qdq_onnx_passes_every_tensorrt_10_and_11_op_list(quantized):
    from quantize.trt_compat import check_trt_compat

    path = quantized["root"] / "quantize" / "full_int8_qdq.onnx"
    for name in TENSORRT_PROFILES:
        dev = load_config(None, device=name).device
        if int(dev.trt_version.split(".")[0]) >= 10:
            report = check_trt_compat(path, dev.trt_version)
            assert report.ok, f"{name}: {report.summary()}"


@pytest.fixture(scope="module")
def tiny_qdq(tmp_path_factory: pytest.TempPathFactory) -> dict[tuple[int, bool, str], Path]:
    """Q/DQ ONNX of the tiny variant per (opset, LayerNorm decomposed, float remainder) the profiles ask for."""
    import torch

    from model import create_model, graph_specs
    from quantize.qdq import head_nodes, quantize_qdq_int8
    from quantize.trt_compat import decompose_layernorm, load_op_list
    from runtimes.export import export_onnx

    torch.manual_seed(0)
    graph = graph_specs(create_model("tiny", max_tokens=8).eval())["full"]
    feeds = []
    for seed in range(4):
        tensors = graph.example_inputs(seed=seed)
        feeds.append(
            {
                n: t.numpy() if t.is_floating_point() else t.numpy().astype(np.int32)
                for n, t in zip(graph.input_names, tensors, strict=True)
            }
        )
    calib = {k: np.concatenate([f[k] for f in feeds]) for k in feeds[0]}  # N, ... per input
    out: dict[tuple[int, bool, str], Path] = {}
    folder = tmp_path_factory.mktemp("profiles")
    for name in TENSORRT_PROFILES:
        cfg = load_config(None, device=name)
        split = "LayerNormalization" not in load_op_list(cfg.device.trt_version)["supported"]
        remainder = "fp16" if cfg.quant.qdq_float == "fp16" else "fp32"
        key = (cfg.device.opset, split, remainder)
        if key in out:
            continue
        fp32 = folder / f"full_{key[0]}_{int(split)}.onnx"
        if not fp32.is_file():
            example = dict(zip(graph.input_names, graph.example_inputs(), strict=True))
            export_onnx(graph.module, example, graph.output_names, fp32, opset=cfg.device.opset, metadata={})
            if split:
                proto, _ = decompose_layernorm(onnx.load(str(fp32)))
                onnx.save(proto, str(fp32))
        out[key] = quantize_qdq_int8(
            fp32,
            folder / f"qdq_{key[0]}_{int(split)}_{remainder}.onnx",
            calib,
            exclude=head_nodes(fp32),
            backend="onnxruntime",
            float_dtype=remainder,
        )
    return out


@pytest.mark.slow
@pytest.mark.parametrize("name", TENSORRT_PROFILES)
def test_the_tiny_qdq_onnx_passes_the_op_check_of_each_profile(name: str, tiny_qdq: dict[Any, Path]):
    from quantize.trt_compat import check_trt_compat, load_op_list

    dev = load_config(None, device=name).device
    split = "LayerNormalization" not in load_op_list(dev.trt_version)["supported"]
    remainder = "fp16" if load_config(None, device=name).quant.qdq_float == "fp16" else "fp32"
    path = tiny_qdq[(dev.opset, split, remainder)]
    report = check_trt_compat(path, dev.trt_version)
    assert report.ok, report.summary()
    assert report.opset == dev.opset and report.qdq_pairs > 0
    if dev.strongly_typed_only:  # no Conv/MatMul/Gemm left computing in FP32
        assert not [w for w in report.warnings if w["op"] == "precision"], report.warnings
