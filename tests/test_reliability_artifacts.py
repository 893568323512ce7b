"""Reliability of artifacts and the deploy bundle: damaged ONNX / OpenVINO / TensorRT / checkpoint files, inputs of
another size, and the bundle's own scripts refusing a model that is not theirs.

Usage: ``pytest tests/test_reliability_artifacts.py``; with ``S2RM_RELIABILITY_LOG=<file>`` each case appends its row
to that file (tests/reliability_log.py).
"""

from __future__ import annotations

import functools
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from foundation.errors import ArtifactError, RuntimeUnavailable
from runtimes.image import read_image
from tests.reliability_inputs import SIZE, TOKENS, Shell, encoded, png16, predict, random_jpeg, toy_onnx, write_file
from tests.reliability_log import record, refused

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning", "ignore::FutureWarning")


# ------------------------------------------------------------------------------------------------------ artifacts


def _damage(kind: str, src: bytes) -> bytes:
    return {"truncated": src[: len(src) // 2], "empty": b"", "garbage": b"\x00\xffnot a model" * 50}[kind]


@pytest.mark.parametrize("kind", ["truncated", "empty", "garbage"])
def test_damaged_onnx_is_a_clear_error(kind, toy, tmp_path):
    from runtimes import get_runtime

    path = write_file(tmp_path / f"{kind}.onnx", _damage(kind, toy["onnx"].read_bytes()))
    refused("artifact", f"{kind} .onnx", ArtifactError, lambda: get_runtime("onnxruntime").load(path), str(path))


@pytest.mark.parametrize("part", ["truncated .bin", "missing .bin", "truncated .xml"])
def test_damaged_openvino_ir_is_a_clear_error(part, toy, tmp_path):
    from runtimes import get_runtime

    xml, weights = toy["xml"].read_bytes(), toy["xml"].with_suffix(".bin").read_bytes()
    (tmp_path / "m.xml").write_bytes(xml[: len(xml) // 2] if part == "truncated .xml" else xml)
    if part != "missing .bin":
        (tmp_path / "m.bin").write_bytes(weights[: len(weights) // 2] if part == "truncated .bin" else weights)
    path = tmp_path / "m.xml"
    refused("artifact", f"OpenVINO IR, {part}", ArtifactError, lambda: get_runtime("openvino").load(path), str(path))


def test_inputs_of_another_size_are_refused(toy):
    from runtimes import get_runtime
    from runtimes.processing import Processing

    rt = get_runtime("onnxruntime").load(toy["onnx"], threads=1)
    other = Processing(img_size=SIZE * 2, max_tokens=TOKENS)  # pre-processing of another variant
    feeds = other(np.zeros((20, 20, 3), np.uint8), "the star")
    words = "must have shape [1, 3, 32, 32], got [1, 3, 64, 64]"
    refused("artifact", "64x64 input to a 32x32 artifact", ArtifactError, lambda: rt.infer(feeds), words)


def test_predict_cli_names_a_corrupt_artifact(toy, tmp_path, capsys):
    artifact = write_file(tmp_path / "cut.onnx", _damage("truncated", toy["onnx"].read_bytes()))
    image = write_file(tmp_path / "frame.png", encoded(Image.new("RGB", (8, 8)), "PNG"))
    code, err = predict(
        capsys, "--artifact", str(artifact), "--image", str(image), "--text", "x", "--out", str(tmp_path / "p")
    )
    assert code == 2 and str(artifact) in err
    record("predict CLI", "--artifact truncated .onnx", f"exit 2, {err.strip()}")


def test_engine_of_another_tensorrt_version_is_refused(tmp_path):
    from runtimes.tensorrt_rt import TensorRTRuntime, check_compatible, read_sidecar

    check = functools.partial(refused, "artifact")
    engine = write_file(tmp_path / "full_int8.engine", os.urandom(256))
    check("engine without its JSON sidecar", ArtifactError, lambda: read_sidecar(engine), "no JSON sidecar")
    sidecar = tmp_path / "full_int8.engine.json"
    sidecar.write_text('{"tensorrt_version": "10.3')
    check("engine sidecar truncated", ArtifactError, lambda: read_sidecar(engine), "not valid JSON")
    here = {"name": "Orin", "compute_capability": "8.7"}
    on_orin = lambda: check_compatible(read_sidecar(engine), "10.3.0", here)  # noqa: E731
    sidecar.write_text(json.dumps({"tensorrt_version": "8.5.2", "gpu": here}))
    check("engine built with TensorRT 8.5.2, run on 10.3.0", ArtifactError, on_orin, "8.5.2", "10.3.0", "rebuild")
    sidecar.write_text(
        json.dumps({"tensorrt_version": "10.3.0", "gpu": {"name": "Xavier", "compute_capability": "7.2"}})
    )
    check("engine built on another GPU (7.2 vs 8.7)", ArtifactError, on_orin, "7.2", "8.7")
    if TensorRTRuntime.unavailable_reason() is not None:  # here: the runtime says why before it reads the engine
        check("TensorRT engine on a host without TensorRT", RuntimeUnavailable, lambda: TensorRTRuntime().load(engine))


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory, one_torch_thread) -> Path:
    from model import create_model
    from model.weights import save_checkpoint

    weights, _ = save_checkpoint(create_model("tiny"), tmp_path_factory.mktemp("ckpt") / "best")
    return weights


def test_damaged_or_foreign_checkpoints_are_refused(tiny_checkpoint, tmp_path):
    from model import ModelError
    from model.weights import load_checkpoint
    from runtimes import get_runtime

    folder = tmp_path / "ck"
    shutil.copytree(tiny_checkpoint.parent, folder)
    weights = folder / tiny_checkpoint.name
    check = functools.partial(refused, "artifact")
    load = lambda: get_runtime("torch").load(weights)  # noqa: E731
    as_demo = lambda: load_checkpoint(weights, expected="demo")  # noqa: E731
    check("checkpoint of variant 'tiny' where 'demo' is expected", ModelError, as_demo, "'tiny'", "'demo'")
    weights.write_bytes(weights.read_bytes()[:5000])
    check("truncated .safetensors checkpoint", ArtifactError, load, str(weights), "truncated")
    weights.with_suffix(".json").write_text("{")
    check("checkpoint .json truncated", ArtifactError, load, "truncated or corrupt")


def test_torch_file_that_would_run_code_is_refused(tmp_path, one_torch_thread):
    import torch

    from model import ModelError
    from model.weights import _read_state_dict

    marker = tmp_path / "pwned"
    path = tmp_path / "swin.pth"
    torch.save({"model": Shell(marker)}, path)
    load = lambda: _read_state_dict(path)  # noqa: E731
    refused("untrusted files", ".pth checkpoint pickling os.system", ModelError, load, str(path), "not weights-only")
    assert not marker.exists()


# --------------------------------------------------------------------------------------------------- the bundle


def _bundle_description(onnx_path: Path) -> dict[str, Any]:
    from runtimes.export import read_onnx_metadata

    return read_onnx_metadata(onnx_path)


@pytest.fixture(scope="module")
def bundle(toy, tmp_path_factory) -> Path:
    """A deploy bundle around the toy model, laid out as the bundle stage lays it out."""
    from pipeline.bundle import copy_scripts, vendor_runtime, write_checksums, write_metadata
    from runtimes.export import copy_tokenizer
    from runtimes.tokenizer import default_tokenizer_dir

    out = tmp_path_factory.mktemp("bundle") / "bundle"
    shutil.copy(toy["onnx"], _mkdir(out / "models") / "full.onnx")
    copy_tokenizer(default_tokenizer_dir(), out / "tokenizer")
    vendor_runtime(out / "lib")
    copy_scripts(out)
    models = {"fp32": {"onnx": "models/full.onnx", "tolerance": {"max_abs": 1e-3, "mask_iou": 0.999}}}
    write_metadata(out, {"description": _bundle_description(toy["onnx"]), "threshold": 0.5, "models": models})
    write_checksums(out)
    return out


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


def robot(bundle_dir: Path, *args: str) -> subprocess.CompletedProcess:
    """``infer.py`` as on the robot: from the bundle folder, without the project on the path."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    cmd = [sys.executable, "infer.py", "--backend", "onnxruntime", *args]
    return subprocess.run(cmd, cwd=bundle_dir, env=env, capture_output=True, text=True, timeout=120)


def test_bundle_reads_16bit_images_like_the_host(bundle, tmp_path):
    from runtimes.visualize import overlay

    image = write_file(tmp_path / "grey16.png", png16(np.full((30, 40, 1), 40000, np.uint16)))
    done = robot(bundle, "--image", str(image), "--text", "the star", "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    mask = np.asarray(Image.open(tmp_path / "out" / "grey16_mask.png")) > 0
    expected = overlay(read_image(image), mask)  # the host's reading: 40000 -> 156, not clipped to 255
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "grey16_overlay.png")), expected)
    record("bundle infer.py", "16-bit grey PNG", "exit 0; same pixels as the host (scaled to 8 bits, not clipped)")
    bad = robot(bundle, "--image", str(write_file(tmp_path / "cut.jpg", random_jpeg()[:300])), "--text", "x")
    assert bad.returncode == 2 and "cut.jpg" in bad.stderr and "corrupt" in bad.stderr
    record("bundle infer.py", "truncated JPEG", f"exit 2, {bad.stderr.strip()}")


@pytest.mark.parametrize(
    "damage", ["truncated model", "model of another variant", "model with other normalization", "corrupt metadata.json"]
)
def test_bundle_refuses_a_model_that_is_not_its_own(damage, bundle, toy, tmp_path):
    from pipeline.bundle import write_checksums

    copy = tmp_path / "bundle"
    shutil.copytree(bundle, copy)
    model = copy / "models" / "full.onnx"
    if damage == "truncated model":
        model.write_bytes(model.read_bytes()[:-100])
    elif damage == "model of another variant":
        toy_onnx(model, variant="other", checkpoint="beef")
        write_checksums(copy)  # the swap is consistent with SHA256SUMS: only the description can tell
    elif damage == "model with other normalization":
        toy_onnx(model, std=(0.5, 0.5, 0.5))
        write_checksums(copy)
    else:
        (copy / "metadata.json").write_text('{"models": {')
    image = write_file(tmp_path / "frame.png", encoded(Image.new("RGB", (40, 30)), "PNG"))
    done = robot(copy, "--image", str(image), "--text", "the star", "--out", str(tmp_path / "out"))
    words = {
        "truncated model": "truncated or corrupt: sha256",
        "model of another variant": "variant 'other' but this bundle describes variant 'toy'",
        "model with other normalization": "does not belong to this bundle",
        "corrupt metadata.json": "metadata.json is truncated or corrupt",
    }[damage]
    assert done.returncode == 2 and words in done.stderr, done.stderr
    assert not (tmp_path / "out").exists()
    record("bundle infer.py", damage, f"exit 2, {done.stderr.strip()}")
