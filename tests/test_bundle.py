"""The deploy bundle, unpacked and run as on the robot, with ONNX Runtime standing in for TensorRT; `predict`."""

from __future__ import annotations

import io
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from pipeline.bundle import VENDORED, check_closure, extract_bundle
from pipeline.config import load_config
from pipeline.errors import ArtifactError

ROOT = Path(__file__).resolve().parent.parent
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
    assert "--onnx=models/full_int8_qdq.onnx" in script and "--stronglyTyped" in script
    assert "--memPoolSize=workspace:1024" in script  # the Orin Nano profile's workspace
    digest = (jetson_bundle["tar"].parent / "bundle.tar.gz.sha256").read_text().split()[0]
    assert digest == jetson_bundle["figures"]["tar_sha256"]


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
