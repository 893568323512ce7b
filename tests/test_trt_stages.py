"""The build and bundle stages: the trtexec script and its sidecar step, the compatibility check, the FP32 islands
of a weakly typed build, and a bundle whose build_engine.sh runs against a trtexec that knows only its own options.

Usage: ``pytest tests/test_trt_stages.py`` (an engine is built only where TensorRT and a GPU exist).
"""

from __future__ import annotations

import json
import os
import shlex
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from onnx import TensorProto, helper, numpy_helper

from foundation.errors import ConfigError
from pipeline.config import load_config
from runtimes import tensorrt_rt
from runtimes.fp32_layers import fp32_layer_names
from runtimes.tensorrt_build import tensorrt_status
from runtimes.tensorrt_commands import unknown_trtexec_options

try:
    from tests.test_export import make_ctx
    from tests.trt_onnx import LN_ISLAND, tiny_ln_softmax, tiny_qdq
except ImportError:  # pytest's rootdir-relative import mode
    from test_export import make_ctx
    from trt_onnx import LN_ISLAND, tiny_ln_softmax, tiny_qdq

TRT_OK, TRT_REASON = tensorrt_status()
DATA = Path(__file__).resolve().parent.parent / "runtimes" / "data"


def _script_lines(script: str) -> list[str]:
    return [line for line in script.splitlines() if line and not line.startswith("#")]


@pytest.mark.parametrize(
    ("device", "remainder", "overrides", "flags", "absent"),
    [
        # ModelOpt Q/DQ (FP16 remainder) on TensorRT 10, GPU only: the graph carries every type, strongly typed
        ("jetson-orin-nano", "fp16", [], ["--stronglyTyped"], ["--int8", "--fp16", "--useDLACore"]),
        # ONNX Runtime Q/DQ (FP32 remainder): weakly typed, or every non-quantized layer would run in FP32
        ("jetson-orin-nano", "fp32", [], ["--int8", "--fp16"], ["--stronglyTyped", "--useDLACore"]),
        ("jetson-orin-nano", None, [], ["--int8", "--fp16"], ["--stronglyTyped"]),
        # AGX Orin (DLA core 0): DLA does not run explicit Q/DQ INT8, so the INT8 engine is a GPU build
        ("jetson-agx-orin", "fp16", [], ["--stronglyTyped"], ["--int8", "--fp16", "--useDLACore", "--exportLayerInfo"]),
        (
            "jetson-agx-orin",
            "fp32",
            [],
            ["--int8", "--fp16"],
            ["--stronglyTyped", "--useDLACore", "--allowGPUFallback"],
        ),
        # TensorRT 8.5 (JetPack 5): weakly typed, --buildOnly (its trtexec has no --skipInference, no --stronglyTyped)
        ("jetson-xavier-nx-jp5", "fp16", [], ["--int8", "--fp16", "--buildOnly"], ["--stronglyTyped", "--skip"]),
        # build.strongly_typed on/off is used as given
        ("jetson-orin-nano", "fp32", ["build.strongly_typed='on'"], ["--stronglyTyped"], ["--int8"]),
        ("jetson-orin-nano", "fp16", ["build.strongly_typed='off'"], ["--int8", "--fp16"], ["--stronglyTyped"]),
    ],
)
def test_build_stage_writes_script_and_reports_unavailable(tmp_path, device, remainder, overrides, flags, absent):
    from pipeline.stages.build import run_build

    cfg = load_config(None, [f"run.root={tmp_path}", *overrides], device=device)
    tiny_qdq(tmp_path / "quantize" / "full_int8_qdq.onnx", remainder)
    figures = run_build(make_ctx(cfg, "build", tmp_path, ("export", "quantize")))
    script_path = tmp_path / "build" / "build_engine.sh"
    script = script_path.read_text()
    lines = _script_lines(script)
    trtexec = [i for i, line in enumerate(lines) if line.startswith("trtexec ")]
    assert len(trtexec) == 1, script
    assert lines[trtexec[0]].startswith("trtexec --onnx=full_int8_qdq.onnx --saveEngine=full_int8_qdq.engine")
    for flag in flags:
        assert flag in lines[trtexec[0]].split(), flag
    for flag in absent:
        assert not [f for f in lines[trtexec[0]].split() if f.startswith(flag)], flag
    assert not unknown_trtexec_options(shlex.split(lines[trtexec[0]]), cfg.device.trt_version)
    # the sidecar step follows trtexec, with the same settings (the runtime refuses an engine without a sidecar)
    sidecar_line = lines[trtexec[0] + 1]
    assert sidecar_line == figures["sidecar"]
    assert "-m runtimes.tensorrt_build --sidecar-only --onnx=full_int8_qdq.onnx --engine=full_int8_qdq.engine" in (
        sidecar_line
    )
    typed = "--strongly-typed" if "--stronglyTyped" in flags else "--weakly-typed"
    assert typed in sidecar_line.split() and "--precision=int8" in sidecar_line.split()
    assert figures["float_remainder"] == remainder
    assert subprocess.run(["bash", "-n", str(script_path)], capture_output=True).returncode == 0
    assert figures["trt_compat"]["ok"], figures["trt_compat"]["errors"]
    json.dumps(figures)  # manifest-ready
    if not TRT_OK:
        assert figures["status"] == f"unavailable: {TRT_REASON}"
        assert not list((tmp_path / "build").glob("*.engine"))


def test_build_stage_refuses_strong_typing_on_tensorrt_8(tmp_path):
    from pipeline.stages.build import run_build

    cfg = load_config(None, [f"run.root={tmp_path}", "build.strongly_typed='on'"], device="jetson-xavier-nx-jp5")
    tiny_qdq(tmp_path / "quantize" / "full_int8_qdq.onnx", "fp16")
    with pytest.raises(ConfigError, match=r"TensorRT 8\.5 has no strongly typed networks"):
        run_build(make_ctx(cfg, "build", tmp_path, ("export", "quantize")))


# ---- FP32 islands in weakly typed builds (review #6) --------------------------------------------------------------


def test_fp32_layer_names_finds_the_decomposed_layernorm_and_the_softmax_input(tmp_path):
    names = fp32_layer_names(tiny_ln_softmax(tmp_path / "m.onnx"))
    assert names == (*LN_ISLAND, "mask_add", "attn_softmax")  # not the scale/bias, not the MatMuls, not Q/DQ
    # the FP16 ONNX wraps the FP32 ops in Casts: the island keeps them too, so it stays FP32 across them
    half = fp32_layer_names(tiny_ln_softmax(tmp_path / "h.onnx", fp16=True))
    assert set(names) <= set(half) and all(n.endswith("_node") for n in set(half) - set(names)), half
    # a native LayerNormalization (TensorRT 8.6+) computes in FP32 on its own: nothing listed for it
    native = helper.make_node("LayerNormalization", ["x", "g"], ["y"], name="ln")
    graph = helper.make_graph(
        [native],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])],
        [numpy_helper.from_array(np.ones(8, np.float32), "g")],
    )
    assert fp32_layer_names(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])) == ()


def test_fp32_island_survives_in_the_tensorrt_8_5_command(tmp_path):
    from pipeline.stages.build import run_build

    cfg = load_config(None, [f"run.root={tmp_path}"], device="jetson-xavier-nx-jp5")
    tiny_ln_softmax(tmp_path / "quantize" / "full_int8_qdq.onnx", "fp32")
    figures = run_build(make_ctx(cfg, "build", tmp_path, ("export", "quantize")))
    line = next(
        x for x in _script_lines((tmp_path / "build" / "build_engine.sh").read_text()) if x.startswith("trtexec ")
    )
    argv = shlex.split(line)
    expected = ",".join(f"{n}:fp32" for n in (*LN_ISLAND, "mask_add", "attn_softmax"))
    assert {"--int8", "--fp16", "--precisionConstraints=obey", "--buildOnly"} <= set(argv)
    assert f"--layerPrecisions={expected}" in argv and f"--layerOutputTypes={expected}" in argv
    assert not unknown_trtexec_options(argv, "8.5")
    assert figures["settings"]["fp32_layers"] == (*LN_ISLAND, "mask_add", "attn_softmax")
    # the sidecar step records the same settings
    sidecar = shlex.split(figures["sidecar"])
    assert [a for a in sidecar if a.startswith("--fp32-layer=")] == [
        f"--fp32-layer={n}" for n in figures["settings"]["fp32_layers"]
    ]


@pytest.mark.parametrize(
    ("device", "overrides"),
    [("jetson-orin-nano", []), ("jetson-xavier-nx-jp5", []), ("jetson-orin-nano", ["build.strongly_typed='on'"])],
)
def test_nothing_is_added_for_strongly_typed_builds(tmp_path, device, overrides):
    from pipeline.stages.build import run_build

    cfg = load_config(None, [f"run.root={tmp_path}", *overrides], device=device)
    tiny_ln_softmax(tmp_path / "quantize" / "full_int8_qdq.onnx", "fp16")  # ModelOpt-style: FP16 remainder
    figures = run_build(make_ctx(cfg, "build", tmp_path, ("export", "quantize")))
    argv = shlex.split(figures["trtexec"])
    if figures["settings"]["strongly_typed"]:
        assert "--stronglyTyped" in argv and figures["settings"]["fp32_layers"] == ()
        assert not [a for a in argv if a.startswith(("--precisionConstraints", "--layer"))]
        assert "--fp32-layer" not in figures["sidecar"]
    else:  # TensorRT 8.5 has no strong typing: the islands stay
        assert device == "jetson-xavier-nx-jp5" and "--precisionConstraints=obey" in argv


# ---- the bundle: build.* settings, DLA placement, a trtexec that knows its options (review #4, #10) ---------------


def test_bundle_stage_is_stale_when_the_build_section_changes(tmp_path):
    from pipeline.runner import Runner, _digest
    from pipeline.stage import get_stage

    bundle = get_stage("bundle")
    assert "build" in bundle.sections
    keys = set()
    for overrides in ([], ["build.gpu_fallback=false"], ["build.workspace_mb=512"], ["build.strongly_typed='off'"]):
        cfg = load_config(None, [f"run.root={tmp_path}", *overrides], device="jetson-agx-orin")
        keys.add(_digest(Runner(cfg).key_parts(bundle)))
    assert len(keys) == 4


FAKE_TRTEXEC = """#!{python}
'''trtexec as far as build_engine.sh needs it: the options of one TensorRT version only (else "Unknown option" and
exit 1, as trtexec.cpp does), --saveEngine written, --exportLayerInfo written as a detailed DLA build would.'''
import json, os, sys

known = set(json.load(open(os.environ["FAKE_TRTEXEC_TABLE"]))["options"])
unknown = [a for a in sys.argv[1:] if a.split("=", 1)[0] not in known]
if unknown:
    print("[E] Unknown option: " + " ".join(unknown), file=sys.stderr)
    sys.exit(1)
args = dict(a.split("=", 1) if "=" in a else (a, "") for a in sys.argv[1:])
open(args["--saveEngine"], "w").write("plan")
if "--exportLayerInfo" in args:
    layers = [
        {{"Name": "image to nvm", "LayerType": "Reformat"}},
        {{"Name": "{{ForeignNode[/vision/stem/Conv.../vision/stem/Relu]}}", "LayerType": "DlaLayer"}},
        {{"Name": "feat from nvm", "LayerType": "Reformat"}},
        {{"Name": "{{ForeignNode[/attn/MatMul.../attn/Softmax]}}", "LayerType": "Myelin"}},
        {{"Name": "/head/Conv", "LayerType": "CaskConvolution"}},
    ]
    json.dump({{"Layers": layers, "Bindings": ["image", "mask_logits"]}}, open(args["--exportLayerInfo"], "w"))
open("trtexec.log", "a").write(" ".join(sys.argv[1:]) + "\\n")
"""


def test_agx_bundle_uses_the_build_section_and_reports_dla_placement(quantized, tmp_path):
    """The AGX Orin bundle: the build.* settings reach every trtexec line; the INT8 engine is a GPU build and the FP16
    one a DLA build that exports its layer information; build_engine.sh runs with a trtexec that fails on any option
    TensorRT 10.3 lacks, and the sidecar step records and prints where the DLA engine's layers ran."""
    import logging as logging_

    from pipeline.bundle import extract_bundle
    from pipeline.stage import StageContext
    from pipeline.stages.bundle import run_bundle

    overrides = ["build.workspace_mb=512", "build.gpu_fallback=false", "build.timing_cache=false"]
    agx = load_config(None, overrides, device="jetson-agx-orin")
    cfg = quantized["cfg"].model_copy(update={"device": agx.device, "build": agx.build})
    upstream = {u: quantized["root"] / u for u in ("data", "export", "quantize")}
    ctx = StageContext("bundle", cfg, tmp_path / "stage", tmp_path, upstream, logging_.getLogger("test.bundle"))
    ctx.out.mkdir()
    run_bundle(ctx)
    bundle = extract_bundle(ctx.out / "bundle.tar.gz", tmp_path / "robot")
    meta = json.loads((bundle / "metadata.json").read_text())
    lines = {}
    for line in _script_lines((bundle / "build_engine.sh").read_text()):
        if line.startswith("trtexec "):
            argv = shlex.split(line)
            lines[next(p for p, e in meta["models"].items() if f"--saveEngine={e['engine']}" in argv)] = argv
    for argv in lines.values():
        assert "--memPoolSize=workspace:512" in argv and "--allowGPUFallback" not in argv, argv
        assert not [a for a in argv if a.startswith("--timingCacheFile")], argv
        assert not unknown_trtexec_options(argv, "10.3"), argv
    assert not [a for a in lines["int8"] if a.startswith(("--useDLACore", "--exportLayerInfo"))]
    fp16 = meta["models"]["fp16"]
    assert {"--fp16", "--useDLACore=0", "--profilingVerbosity=detailed"} <= set(lines["fp16"])
    assert f"--exportLayerInfo={fp16['engine']}.layers.json" in lines["fp16"]
    assert fp16["build"]["dla_core"] == 0 and meta["models"]["int8"]["build"]["dla_core"] is None
    assert fp16["build"]["fp32_layers"] == fp16["fp32_layers"] and fp16["fp32_layers"]  # weakly typed: islands kept
    assert meta["tensorrt"] | {"version_floor": None} == {
        "version_floor": None,
        "workspace_mb": 512,
        "dla_core": 0,
        "strongly_typed": "auto",
        "gpu_fallback": False,
        "timing_cache": False,
    }
    # build_engine.sh on the "robot": a trtexec with TensorRT 10.3's options, a tensorrt module with its version
    fake_bin, fake_py = tmp_path / "bin", tmp_path / "py" / "tensorrt"
    fake_bin.mkdir()
    fake_py.mkdir(parents=True)
    (fake_py / "__init__.py").write_text('__version__ = "10.3.0"\n')
    (fake_bin / "trtexec").write_text(FAKE_TRTEXEC.format(python=sys.executable))
    (fake_bin / "trtexec").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env |= {"PATH": f"{fake_bin}:{env['PATH']}", "PYTHON": sys.executable, "PYTHONPATH": str(fake_py.parent)}
    env["FAKE_TRTEXEC_TABLE"] = str(DATA / "trtexec_10.3.json")
    proc = subprocess.run(["./build_engine.sh"], cwd=bundle, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert "1 of 5 engine layers on DLA core 0, 2 on the GPU (2 DLA transfers)" in proc.stdout, proc.stdout
    sidecar = tensorrt_rt.read_sidecar(bundle / fp16["engine"])
    assert sidecar["placement"]["dla"] == 1 and sidecar["build"] == fp16["build"]
    assert "placement" not in tensorrt_rt.read_sidecar(bundle / meta["models"]["int8"]["engine"])
    # the same script under TensorRT 8.5's trtexec stops at the first option it lacks
    env["FAKE_TRTEXEC_TABLE"] = str(DATA / "trtexec_8.5.json")
    proc = subprocess.run(["./build_engine.sh"], cwd=bundle, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 1 and "Unknown option: " in proc.stderr
