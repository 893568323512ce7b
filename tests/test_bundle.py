"""The deploy bundle, unpacked and run as on the robot, with ONNX Runtime standing in for TensorRT; `predict`."""

from __future__ import annotations

import importlib.util
import io
import json
import logging
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from foundation.errors import ArtifactError
from pipeline.bundle import VENDORED, check_closure, extract_bundle
from pipeline.config import load_config

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS = ROOT / "runtimes" / "bundle_files"
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning", "ignore::FutureWarning")


@pytest.fixture(scope="session")
def jetson_bundle(quantized: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The bundle stage for the Orin Nano profile over the shared tiny run, packed, then unpacked elsewhere."""
    from pipeline.stages.bundle import run_bundle

    try:
        from tests.test_export import make_ctx
    except ImportError:
        from test_export import make_ctx

    device = load_config(None, device="jetson-orin-nano").device
    cfg = quantized["cfg"].model_copy(update={"device": device})
    figures = run_bundle(make_ctx(cfg, "bundle", quantized["root"], ("data", "export", "quantize")))
    tar = quantized["root"] / "bundle" / "bundle.tar.gz"
    unpacked = extract_bundle(tar, tmp_path_factory.mktemp("robot"))
    return {"figures": figures, "tar": tar, "dir": unpacked}


def robot(bundle_dir: Path, script: str, *args: str) -> subprocess.CompletedProcess:
    """Run a bundle script as on the robot: from the bundle folder, without the project on the path."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    cmd = [sys.executable, "-X", "importtime", script, *args]
    return subprocess.run(cmd, cwd=bundle_dir, env=env, capture_output=True, text=True, timeout=300)


def test_bundle_layout_checksums_and_build_script(jetson_bundle):
    bundle = jetson_bundle["dir"]
    meta = json.loads((bundle / "metadata.json").read_text())
    assert set(meta["models"]) == {"int8", "fp16"}
    for entry in meta["models"].values():
        assert (bundle / entry["onnx"]).is_file() and entry["engine"].startswith("engines/")
    for name in ("infer.py", "verify.py", "benchmark.py", "build_engine.py", "build_engine.sh", "README.md"):
        assert (bundle / name).is_file(), name
    for rel in VENDORED:
        assert (bundle / "lib" / rel).is_file(), rel
    assert (bundle / "tokenizer" / "tokenizer.json").is_file()
    sums = subprocess.run(["sha256sum", "-c", "SHA256SUMS", "--quiet"], cwd=bundle, capture_output=True, text=True)
    assert sums.returncode == 0, sums.stdout + sums.stderr
    script = (bundle / "build_engine.sh").read_text()
    assert "--memPoolSize=workspace:1024" in script  # the Orin Nano profile's workspace
    assert subprocess.run(["bash", "-n", str(bundle / "build_engine.sh")]).returncode == 0
    # every trtexec line is followed by the sidecar step of the engine it built
    lines = [line for line in script.splitlines() if line and not line.startswith("#")]
    built = {}
    for i, line in enumerate(lines):
        if line.startswith("trtexec "):
            engine = next(a.split("=", 1)[1] for a in line.split() if a.startswith("--saveEngine="))
            precision = next(p for p, e in meta["models"].items() if e["engine"] == engine)
            assert lines[i + 1] == f'"${{PYTHON:-python3}}" build_engine.py --sidecar-only --precision {precision}'
            built[precision] = line.split()
    assert set(built) == {"int8", "fp16"}
    # ONNX Runtime's Q/DQ keeps an FP32 float remainder: weakly typed INT8 + FP16 on TensorRT 10; the FP16 ONNX
    # carries its own types: strongly typed
    assert meta["models"]["int8"]["description"]["quantization"]["float_remainder"] == "fp32"
    assert "--onnx=models/full_int8_qdq.onnx" in built["int8"] and {"--int8", "--fp16"} <= set(built["int8"])
    assert "--stronglyTyped" not in built["int8"] and "--stronglyTyped" in built["fp16"]
    assert meta["models"]["int8"]["build"]["strongly_typed"] is False
    assert meta["models"]["fp16"]["build"]["strongly_typed"] is True
    digest = (jetson_bundle["tar"].parent / "bundle.tar.gz.sha256").read_text().split()[0]
    assert digest == jetson_bundle["figures"]["tar_sha256"]


def test_each_model_carries_its_own_description(jetson_bundle):
    meta = json.loads((jetson_bundle["dir"] / "metadata.json").read_text())
    int8, fp16 = (meta["models"][p]["description"] for p in ("int8", "fp16"))
    assert int8["precision"] == "int8" and int8["quantization"]["format"] == "qdq"
    assert fp16["precision"] == "fp16" and "quantization" not in fp16
    assert meta["description"]["precision"] == "int8"  # the bundle-level description stays, for older scripts
    for desc in (int8, fp16):
        assert desc["inputs"] == meta["description"]["inputs"] and "tokenizer_dir" not in desc


def _fake_device(tmp_path: Path) -> dict[str, str]:
    """An environment with a fake ``trtexec`` (writes the --saveEngine file) and a fake ``tensorrt`` (a version)."""
    bin_dir, fake = tmp_path / "fakebin", tmp_path / "fakepy" / "tensorrt"
    bin_dir.mkdir()
    fake.mkdir(parents=True)
    (fake / "__init__.py").write_text('__version__ = "10.3.0"\n')
    trtexec = bin_dir / "trtexec"
    trtexec.write_text(
        "#!/usr/bin/env bash\n"
        'for a in "$@"; do case "$a" in --saveEngine=*) printf plan > "${a#--saveEngine=}";; esac; done\n'
        'echo "trtexec $*" >> trtexec.log\n'
    )
    trtexec.chmod(0o755)
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    return env | {"PATH": f"{bin_dir}:{env['PATH']}", "PYTHON": sys.executable, "PYTHONPATH": str(fake.parent)}


def test_build_script_writes_sidecars_the_runtime_accepts(jetson_bundle, tmp_path):
    """``./build_engine.sh && python3 verify.py``: each engine trtexec builds gets its sidecar, which the runtime's
    checks accept; a stale engine (built from another ONNX) is refused with the way out."""
    from foundation.io import sha256_file
    from runtimes.tensorrt_rt import check_compatible, read_sidecar

    bundle = extract_bundle(jetson_bundle["tar"], tmp_path / "robot")
    env = _fake_device(tmp_path)
    proc = subprocess.run(["./build_engine.sh"], cwd=bundle, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    meta = json.loads((bundle / "metadata.json").read_text())
    assert len((bundle / "trtexec.log").read_text().splitlines()) == 2
    for precision, entry in meta["models"].items():
        sidecar = read_sidecar(bundle / entry["engine"])
        check_compatible(sidecar, "10.3.0", {})
        assert sidecar["tensorrt_version"] == "10.3.0" and sidecar["builder"] == "trtexec"
        assert sidecar["build"] == entry["build"] and sidecar["source_sha256"] == sha256_file(bundle / entry["onnx"])
        assert sidecar["precision"] == precision  # the model's own description, not the bundle's first
        assert ("quantization" in sidecar) is (precision == "int8")
    # fresh engines pass the staleness check and reach the TensorRT load (not installed here)
    proc = robot(bundle, "verify.py", "--backend", "tensorrt", "--precision", "int8")
    assert proc.returncode == 2 and "stale" not in proc.stderr and "tensorrt is not installed" in proc.stderr
    # an engine whose sidecar names another source ONNX is stale
    sidecar_path = bundle / (meta["models"]["int8"]["engine"] + ".json")
    sidecar = json.loads(sidecar_path.read_text())
    sidecar_path.write_text(json.dumps(sidecar | {"source_sha256": "0" * 64}))
    proc = robot(bundle, "verify.py", "--backend", "tensorrt", "--precision", "int8")
    assert proc.returncode == 2 and "is stale" in proc.stderr and "./build_engine.sh" in proc.stderr, proc.stderr


def test_build_script_stops_before_trtexec_without_python_tensorrt(jetson_bundle, tmp_path):
    bundle = extract_bundle(jetson_bundle["tar"], tmp_path / "robot")
    env = _fake_device(tmp_path) | {"PYTHONPATH": str(tmp_path / "empty")}
    proc = subprocess.run(["./build_engine.sh"], cwd=bundle, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "cannot import tensorrt" in proc.stderr, proc.stderr
    assert not (bundle / "trtexec.log").exists() and not list((bundle / "engines").iterdir())


def test_sidecar_only_refuses_a_missing_engine(jetson_bundle, tmp_path):
    bundle = extract_bundle(jetson_bundle["tar"], tmp_path / "robot")
    env = _fake_device(tmp_path)
    cmd = [sys.executable, "build_engine.py", "--sidecar-only", "--precision", "fp16"]
    proc = subprocess.run(cmd, cwd=bundle, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 2 and "full_fp16.engine is missing or empty" in proc.stderr, proc.stderr
    assert not list((bundle / "engines").iterdir())


def _bundle_module(monkeypatch: pytest.MonkeyPatch, name: str) -> Any:
    """Import one of the bundle's scripts from the source tree (``common`` first, as the scripts do)."""
    monkeypatch.setattr(sys, "path", [str(SCRIPTS), *sys.path])  # restored after the test, with common's lib/
    module = None
    for mod in dict.fromkeys(("common", name)):
        spec = importlib.util.spec_from_file_location(mod, SCRIPTS / f"{mod}.py")
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, mod, module)
        spec.loader.exec_module(module)
    return module


def test_stale_engine_check(monkeypatch, tmp_path, caplog):
    common = _bundle_module(monkeypatch, "common")
    onnx = tmp_path / "models" / "m.onnx"
    onnx.parent.mkdir()
    onnx.write_bytes(b"onnx")
    from foundation.io import sha256_file

    digest = sha256_file(onnx)
    engine = tmp_path / "engines" / "m.engine"
    common.check_engine_source({"source_sha256": digest}, digest, engine, "models/m.onnx")
    with pytest.raises(ArtifactError, match=r"m\.engine is stale.*models/m\.onnx.*rebuild .* ./build_engine\.sh"):
        common.check_engine_source({"source_sha256": "f" * 64}, digest, engine, "models/m.onnx")
    with caplog.at_level(logging.WARNING, logger="bundle"):
        common.check_engine_source({}, digest, engine, "models/m.onnx")
    assert "records no source_sha256" in caplog.text
    # the bundle takes the ONNX's sha256 from SHA256SUMS (what the bundle says it is), else computes it
    meta = {"models": {"int8": {"onnx": "models/m.onnx", "engine": "engines/m.engine"}}, "description": {}}
    (tmp_path / "metadata.json").write_text(json.dumps(meta))
    bundle = common.Bundle(tmp_path)
    assert bundle.onnx_sha256("int8") == ("models/m.onnx", digest)
    engine.parent.mkdir()
    engine.write_bytes(b"plan")
    (tmp_path / "engines" / "m.engine.json").write_text(json.dumps({"source_sha256": digest}))
    bundle.check_engine_fresh("int8", engine)
    (tmp_path / "SHA256SUMS").write_text(f"{'a' * 64}  models/m.onnx\n")
    with pytest.raises(ArtifactError, match="is stale"):
        common.Bundle(tmp_path).check_engine_fresh("int8", engine)


def test_scripts_default_to_the_deployed_precision(monkeypatch, tmp_path):
    """infer.py / benchmark.py without --precision take the profile's precision (int8), not the first key of the
    metadata (written with sorted keys: fp16 before int8)."""
    common = _bundle_module(monkeypatch, "common")
    meta = {"models": {"fp16": {}, "int8": {}}, "device": {"precision": "int8"}, "description": {}}
    (tmp_path / "metadata.json").write_text(json.dumps(meta, sort_keys=True))
    assert common.Bundle(tmp_path).precisions == ["int8", "fp16"]
    meta["device"] = {"precision": "fp16"}
    (tmp_path / "metadata.json").write_text(json.dumps(meta, sort_keys=True))
    assert common.Bundle(tmp_path).precisions == ["fp16", "int8"]
    del meta["device"]  # an older bundle: the metadata's order
    (tmp_path / "metadata.json").write_text(json.dumps(meta, sort_keys=True))
    assert common.Bundle(tmp_path).precisions == ["fp16", "int8"]


@pytest.mark.parametrize(
    ("node", "files", "expected"),
    [
        ("sys/devices/gpu.0/devfreq/17000000.ga10b", {"min_freq": "1300500000", "max_freq": "1300500000"}, True),
        (
            "sys/devices/gpu.0/devfreq/17000000.ga10b",
            {"min_freq": "306000000", "max_freq": "1300500000", "governor": "nvhost_podgov"},
            False,
        ),
        (
            "sys/class/devfreq/17000000.gv11b",
            {"min_freq": "114750000", "max_freq": "1377000000", "governor": "performance"},
            True,
        ),
        ("sys/class/devfreq/17000000.gpu", {"min_freq": "306000000", "max_freq": "918000000"}, False),
        ("sys/class/devfreq/57000000.gp10b", {}, None),  # nothing readable: unknown
        ("sys/class/devfreq/15340000.vic", {"min_freq": "1", "max_freq": "1"}, None),  # not the GPU
        (None, {}, None),  # no devfreq at all (not a Jetson)
    ],
)
def test_benchmark_clocks_locked_reads_the_gpu_devfreq_node(monkeypatch, tmp_path, node, files, expected):
    benchmark = _bundle_module(monkeypatch, "benchmark")
    if node:
        (tmp_path / node).mkdir(parents=True)
        for name, value in files.items():
            (tmp_path / node / name).write_text(value + "\n")
    assert benchmark.clocks_locked(tmp_path) is expected
    note = benchmark.clock_note(expected, tmp_path)
    if expected is None:
        assert "clock state unknown" in note
    elif expected is False:
        assert "not locked" in note and "jetson_clocks" in note
    else:
        assert note is None


def test_verify_passes_on_golden_outputs_with_onnxruntime(jetson_bundle):
    proc = robot(jetson_bundle["dir"], "verify.py", "--backend", "onnxruntime", "--precision", "int8", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-2000:]
    assert "PASS onnxruntime int8" in proc.stdout and proc.stdout.strip().endswith("PASS")
    assert not [line for line in proc.stderr.splitlines() if "import time:" in line and " torch" in line]


def test_verify_fails_when_outputs_differ(jetson_bundle, tmp_path):
    bundle = extract_bundle(jetson_bundle["tar"], tmp_path)
    golden = bundle / "golden" / "outputs_int8_onnx.npz"
    logits = np.load(golden)["mask_logits"]
    np.savez(golden, mask_logits=-logits)  # the mask flips: a broken engine
    proc = robot(bundle, "verify.py", "--backend", "onnxruntime", "--precision", "int8")
    assert proc.returncode == 1 and "FAIL" in proc.stdout


def test_infer_matches_the_host_mask(jetson_bundle, tmp_path):
    bundle = jetson_bundle["dir"]
    meta = json.loads((bundle / "metadata.json").read_text())
    for frame in meta["golden"]["frames"]:
        out = tmp_path / Path(frame["image"]).stem
        proc = robot(
            bundle,
            "infer.py",
            "--backend",
            "onnxruntime",
            "--precision",
            frame["precision"],
            "--image",
            frame["image"],
            "--text",
            frame["text"],
            "--out",
            str(out),
        )
        assert proc.returncode == 0, proc.stderr[-2000:]
        stem = Path(frame["image"]).stem
        got = np.asarray(Image.open(out / f"{stem}_mask.png")) > 0
        host = np.asarray(Image.open(bundle / frame["mask"])) > 0
        union = np.logical_or(got, host).sum()
        iou = 1.0 if union == 0 else np.logical_and(got, host).sum() / union
        assert iou >= 0.99, (frame, iou)
        assert (out / f"{stem}_overlay.png").is_file()


def test_benchmark_script_reports_percentiles(jetson_bundle):
    proc = robot(
        jetson_bundle["dir"],
        "benchmark.py",
        "--backend",
        "onnxruntime",
        "--precision",
        "int8",
        "--runs",
        "5",
        "--warmup",
        "1",
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["p50_ms"] > 0 and result["p99_ms"] >= result["p50_ms"]
    if result["gpu_devfreq"] is None:  # not a Jetson: the clock state is unknown, and the output says so
        assert result["clocks_locked"] is None and "clock state unknown" in proc.stdout + proc.stderr


def test_tensorrt_backend_without_engine_is_a_clear_error(jetson_bundle):
    proc = robot(jetson_bundle["dir"], "verify.py", "--backend", "tensorrt", "--precision", "int8")
    assert proc.returncode == 2
    assert "tensorrt" in proc.stderr.lower() or "build_engine" in proc.stderr


def test_extraction_refuses_path_traversal_and_links(tmp_path):
    for name, kind in (("../evil.txt", tarfile.REGTYPE), ("/etc/evil", tarfile.REGTYPE), ("b/link", tarfile.SYMTYPE)):
        tar_path = tmp_path / "bad.tar.gz"
        with tarfile.open(tar_path, "w:gz") as tar:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = "/etc/passwd" if kind == tarfile.SYMTYPE else ""
            data = b"x"
            info.size = len(data) if kind == tarfile.REGTYPE else 0
            tar.addfile(info, io.BytesIO(data) if kind == tarfile.REGTYPE else None)
        with pytest.raises(ArtifactError, match="outside|link"):
            extract_bundle(tar_path, tmp_path / "dest")
    assert not (tmp_path / "evil.txt").exists()
    (tmp_path / "trunc.tar.gz").write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(ArtifactError, match="not a readable"):
        extract_bundle(tmp_path / "trunc.tar.gz", tmp_path / "dest2")


def test_vendored_runtime_is_self_contained_and_the_check_catches_leaks(tmp_path):
    check_closure()
    (tmp_path / "runtimes").mkdir()
    (tmp_path / "runtimes" / "leaky.py").write_text("import torch\nfrom model import create_model\n")
    with pytest.raises(ArtifactError, match="torch.*module level|model"):
        check_closure(("runtimes/leaky.py",), root=tmp_path)


def test_predict_cli_writes_mask_and_overlay(quantized, tmp_path):
    from PIL import Image as PILImage

    frame = np.random.default_rng(0).integers(0, 255, (90, 120, 3), dtype=np.uint8)
    image = tmp_path / "frame.png"
    PILImage.fromarray(frame).save(image)
    artifact = quantized["root"] / "quantize" / "full_int8_qdq.onnx"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "predict",
            "--artifact",
            str(artifact),
            "--image",
            str(image),
            "--text",
            "the red star",
            "--out",
            str(tmp_path / "pred"),
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    mask = np.asarray(PILImage.open(tmp_path / "pred" / "frame_mask.png"))
    assert mask.shape == (90, 120) and set(np.unique(mask)) <= {0, 255}
    bad = subprocess.run(
        [
            sys.executable,
            "-m",
            "pipeline",
            "predict",
            "--artifact",
            str(tmp_path / "m.tflite"),
            "--image",
            str(image),
            "--text",
            "x",
        ],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
    )
    assert bad.returncode == 2 and "unknown artifact type '.tflite'" in bad.stderr and ".onnx" in bad.stderr


def test_tarball_is_reproducible(tmp_path):
    from pipeline.bundle import make_tarball

    folder = tmp_path / "bundle"
    (folder / "sub").mkdir(parents=True)
    (folder / "sub" / "a.txt").write_text("a")
    (folder / "run.py").write_text("print(1)")
    first = make_tarball(folder, tmp_path / "one.tar.gz")
    (folder / "sub" / "a.txt").touch()  # a newer mtime must not change the bytes
    assert make_tarball(folder, tmp_path / "two.tar.gz") == first


def test_x86_bundle_checks_each_int8_format_against_its_own_golden_outputs(quantized, tmp_path):
    """The x86 bundle carries two INT8 models (OpenVINO IR and Q/DQ ONNX, two different quantizations): each backend
    is verified against the host's outputs of the very file it runs."""
    import logging

    from pipeline.stage import StageContext
    from pipeline.stages.bundle import run_bundle

    cfg = quantized["cfg"].model_copy(update={"device": load_config(None, device="x86-cpu").device})
    root = quantized["root"]
    upstream = {u: root / u for u in ("data", "export", "quantize")}
    run_bundle(StageContext("bundle", cfg, tmp_path / "x86", root, upstream, logging.getLogger("test.bundle")))
    bundle = extract_bundle(tmp_path / "x86" / "bundle.tar.gz", tmp_path / "robot")
    golden = json.loads((bundle / "metadata.json").read_text())["models"]["int8"]["golden_outputs"]
    assert set(golden) == {"onnx", "openvino"}
    for backend in ("onnxruntime", "openvino"):
        proc = robot(bundle, "verify.py", "--backend", backend, "--precision", "int8")
        assert proc.returncode == 0 and f"PASS {backend} int8" in proc.stdout, proc.stdout + proc.stderr[-2000:]
