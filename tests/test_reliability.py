"""Reliability: bad images, expressions, data sets and artifacts; SIGKILL and a full disk; untrusted files.

Every case runs the real component (Pillow, the MiniLM tokenizer, ONNX Runtime, OpenVINO, the stage runner in a
subprocess killed with SIGKILL, the deploy bundle's own scripts) and checks that the input is either handled or
refused with the project's own error, naming the input. The models are a hand-written ONNX graph with the pipeline's
self-description (no export needed) and, for checkpoints, the ``tiny`` variant.

Usage: ``pytest tests/test_reliability.py``; with ``S2RM_RELIABILITY_LOG=<file>`` every case also appends
``{"area", "input", "outcome"}`` to that JSON-lines file (the source of the table in docs/reliability.md).
"""

from __future__ import annotations

import ast
import contextlib
import errno
import functools
import io
import json
import os
import pickle
import shutil
import struct
import subprocess
import sys
import tarfile
import time
import unicodedata
import zlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from foundation.errors import ArtifactError, ConfigError, DataError, RuntimeUnavailable, StageError
from pipeline.config import Config, load_config
from pipeline.data.refer import load_refer
from runtimes.image import MAX_PIXELS_ENV, MEAN, STD, preprocess_image, read_image
from runtimes.tokenizer import TextTokenizer, clean_expression

ROOT = Path(__file__).resolve().parent.parent
SIZE, TOKENS = 32, 12  # the toy artifact's input side and token length
LOG: list[dict[str, str]] = []

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning", "ignore::FutureWarning")


def record(area: str, tried: str, outcome: str) -> None:
    """Remember one "input tried -> outcome" row (written out when S2RM_RELIABILITY_LOG is set)."""
    LOG.append({"area": area, "input": tried, "outcome": " ".join(str(outcome).split())})


@pytest.fixture(scope="module", autouse=True)
def _write_log():
    yield
    target = os.environ.get("S2RM_RELIABILITY_LOG")
    if target:
        with open(target, "a") as fh:
            fh.writelines(json.dumps(row) + "\n" for row in LOG)


def refused(area: str, tried: str, error: type[Exception], fn: Callable[[], Any], *names: str) -> str:
    """Run ``fn``, expect ``error`` whose message names every string in ``names``; record and return the message."""
    with pytest.raises(error) as info:
        fn()
    message = str(info.value)
    for name in names:
        assert name in message, f"{tried}: {name!r} not in {message!r}"
    record(area, tried, f"{type(info.value).__name__}: {message}")
    return message


# ------------------------------------------------------------------------------------------------------ helpers


def png_bytes(width: int, height: int, bit_depth: int, color_type: int, raw_rows: bytes) -> bytes:
    """A PNG from already-filtered scanlines (Pillow cannot write 16-bit RGB, and a huge image needs no array)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, bit_depth, color_type, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw_rows)) + chunk(b"IEND", b"")


def png16(arr: np.ndarray) -> bytes:
    """16-bit PNG of a uint16 ``[H, W, C]`` array (C = 1 grey, 2 grey+alpha, 3 RGB, 4 RGBA)."""
    height, width, channels = arr.shape
    rows = b"".join(b"\x00" + arr[y].astype(">u2").tobytes() for y in range(height))
    return png_bytes(width, height, 16, {1: 0, 2: 4, 3: 2, 4: 6}[channels], rows)


def encoded(img: Image.Image, fmt: str, **kwargs: Any) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def toy_onnx(path: Path, variant: str = "toy", checkpoint: str = "c0ffee", std: tuple = STD) -> Path:
    """A small real ONNX graph with the pipeline's contract and self-description.

    ``mask_logits [1, 1, S/4, S/4]`` = the image's channel mean, 4x4-average-pooled, + 0.01 x the token count.
    """
    import onnx
    from onnx import TensorProto, helper

    from runtimes.export import set_onnx_metadata

    inputs = [
        helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 3, SIZE, SIZE]),
        helper.make_tensor_value_info("input_ids", TensorProto.INT32, [1, TOKENS]),
        helper.make_tensor_value_info("attention_mask", TensorProto.INT32, [1, TOKENS]),
    ]
    output = helper.make_tensor_value_info("mask_logits", TensorProto.FLOAT, [1, 1, SIZE // 4, SIZE // 4])
    nodes = [
        helper.make_node("ReduceMean", ["image", "channel_axis"], ["grey"], keepdims=1),
        helper.make_node("AveragePool", ["grey"], ["pooled"], kernel_shape=[4, 4], strides=[4, 4]),
        helper.make_node("Cast", ["attention_mask"], ["mask_f"], to=TensorProto.FLOAT),
        helper.make_node("ReduceSum", ["mask_f"], ["count"], keepdims=0),
        helper.make_node("Mul", ["count", "hundredth"], ["bias"]),
        helper.make_node("Add", ["pooled", "bias"], ["mask_logits"]),
    ]
    consts = [
        helper.make_tensor("channel_axis", TensorProto.INT64, [1], [1]),
        helper.make_tensor("hundredth", TensorProto.FLOAT, [], [0.01]),
    ]
    model = helper.make_model(
        helper.make_graph(nodes, "toy", inputs, [output], consts), opset_imports=[helper.make_opsetid("", 18)]
    )
    model.ir_version = 8
    meta = {
        "format": "onnx",
        "precision": "fp32",
        "variant": variant,
        "checkpoint_sha256": checkpoint,
        "img_size": SIZE,
        "max_tokens": TOKENS,
        "image_mean": list(MEAN),
        "image_std": list(std),
        "threshold": 0.5,
    }
    set_onnx_metadata(model, meta)
    onnx.checker.check_model(model)
    path.parent.mkdir(parents=True, exist_ok=True)
    onnx.save(model, str(path))
    return path


@pytest.fixture(scope="module")
def toy(tmp_path_factory) -> dict[str, Path]:
    """The toy model as ONNX and as OpenVINO IR."""
    from runtimes.export import export_openvino

    out = tmp_path_factory.mktemp("toy")
    onnx_path = toy_onnx(out / "toy.onnx")
    return {"dir": out, "onnx": onnx_path, "xml": export_openvino(onnx_path, out / "toy.xml")}


def predict(capsys, *args: str) -> tuple[int, str]:
    """``python -m pipeline predict`` in this process; returns (exit code, stderr)."""
    from pipeline.cli import main

    code = main(["predict", *args])
    return code, capsys.readouterr().err


# ------------------------------------------------------------------------------------------------------- images

HANDLED_IMAGES: dict[str, tuple[Callable[[], bytes], str, tuple[int, int], tuple[int, int, int] | None]] = {
    # name: (file bytes, suffix, (H, W), expected first pixel)
    "8-bit grey PNG": (lambda: encoded(Image.new("L", (9, 8), 7), "PNG"), ".png", (8, 9), (7, 7, 7)),
    "RGBA PNG (alpha dropped)": (
        lambda: encoded(Image.new("RGBA", (9, 8), (10, 20, 30, 0)), "PNG"),
        ".png",
        (8, 9),
        (10, 20, 30),
    ),
    "16-bit grey PNG (40000)": (lambda: png16(np.full((5, 6, 1), 40000, np.uint16)), ".png", (5, 6), (156, 156, 156)),
    "16-bit RGB PNG": (
        lambda: png16(np.broadcast_to(np.array([65535, 32768, 300], np.uint16), (4, 5, 3)).copy()),
        ".png",
        (4, 5),
        (255, 128, 1),
    ),
    "16-bit grey+alpha PNG": (lambda: png16(np.full((4, 5, 2), 40000, np.uint16)), ".png", (4, 5), (156, 156, 156)),
    "32-bit float TIFF": (lambda: encoded(Image.new("F", (5, 4), 1000.0), "TIFF"), ".tif", (4, 5), (4, 4, 4)),
    "1-bit PNG": (lambda: encoded(Image.new("1", (5, 4), 1), "PNG"), ".png", (4, 5), (255, 255, 255)),
    "palette GIF": (lambda: encoded(Image.new("P", (5, 4), 0), "GIF"), ".gif", (4, 5), None),
    "CMYK JPEG": (lambda: encoded(Image.new("CMYK", (5, 4), (0, 0, 0, 0)), "JPEG"), ".jpg", (4, 5), None),
    "1x1 PNG": (lambda: encoded(Image.new("RGB", (1, 1), (1, 2, 3)), "PNG"), ".png", (1, 1), (1, 2, 3)),
}


@pytest.mark.parametrize("name", list(HANDLED_IMAGES))
def test_image_modes_and_sizes_become_rgb_uint8(name, tmp_path):
    make, suffix, shape, first = HANDLED_IMAGES[name]
    path = tmp_path / f"image{suffix}"
    path.write_bytes(make())
    rgb = read_image(path)
    assert rgb.dtype == np.uint8 and rgb.shape == (*shape, 3)
    if first is not None:
        assert tuple(rgb[0, 0]) == first
    x = preprocess_image(rgb, 16)
    assert x.shape == (3, 16, 16) and np.isfinite(x).all()
    record("image", name, f"read as uint8 RGB {shape[0]}x{shape[1]}" + (f", first pixel {first}" if first else ""))


def _jpeg() -> bytes:
    rng = np.random.default_rng(0)
    return encoded(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), "JPEG")


BAD_IMAGES: dict[str, tuple[Callable[[Path], Path], str]] = {
    # name: (writes the input under a folder and returns its path, expected words)
    "truncated JPEG": (lambda d: _write(d / "cut.jpg", _jpeg()[:400]), "corrupt or not an image"),
    "truncated PNG": (lambda d: _write(d / "cut.png", png16(np.ones((40, 40, 3), np.uint16))[:60]), "corrupt"),
    "random bytes named .jpg": (lambda d: _write(d / "noise.jpg", os.urandom(2000)), "corrupt or not an image"),
    "empty file": (lambda d: _write(d / "empty.png", b""), "corrupt or not an image"),
    "text file named .png": (lambda d: _write(d / "notes.png", b"hello"), "corrupt or not an image"),
    "a directory": (lambda d: d, "not found"),
    "missing file": (lambda d: d / "nope.jpg", "not found"),
}


def _write(path: Path, data: bytes) -> Path:
    path.write_bytes(data)
    return path


@pytest.mark.parametrize("name", list(BAD_IMAGES))
def test_unreadable_images_are_refused_naming_the_file(name, tmp_path):
    make, words = BAD_IMAGES[name]
    path = make(tmp_path)
    refused("image", name, DataError, lambda: read_image(path), str(path), words)


def huge_png(path: Path, side: int = 12000) -> Path:
    """A 1-bit ``side x side`` PNG (12000 x 12000 = 144 MP) written row by row: a small file, a huge image."""
    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    return _write(path, png_bytes(side, side, 1, 0, row * side))


def test_huge_image_is_refused_from_its_header_with_bounded_memory(tmp_path):
    path = huge_png(tmp_path / "huge.png")
    message = refused(
        "image", "12000x12000 PNG (144 MP)", DataError, lambda: read_image(path), str(path), "12000x12000"
    )
    assert "= 144,000,000 pixels, over the limit of 40,000,000" in message and MAX_PIXELS_ENV in message
    # In a fresh process: refusing it must not decode it (144 MB as Pillow's 1-bit, 432 MB as RGB).
    code = (
        "import sys\n"
        "from runtimes.image import read_image\n"
        "from foundation.errors import DataError\n"
        "try:\n    read_image(sys.argv[1])\nexcept DataError:\n    pass\n"
        # VmHWM is the peak of this process image; ru_maxrss would carry over the forking pytest's peak across exec
        "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM')))\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code, str(path)], cwd=ROOT, capture_output=True, text=True, timeout=120, check=True
    )
    peak_mb = int(done.stdout.split()[-1]) / 1024
    assert peak_mb < 120, f"refusing the huge image peaked at {peak_mb:.0f} MB"


def test_pixel_limit_is_configurable(tmp_path, monkeypatch):
    path = _write(tmp_path / "small.png", encoded(Image.new("RGB", (20, 20)), "PNG"))
    monkeypatch.setenv(MAX_PIXELS_ENV, "100")
    refused("image", f"20x20 PNG with {MAX_PIXELS_ENV}=100", DataError, lambda: read_image(path), "over the limit")
    assert read_image(path, max_pixels=400).shape == (20, 20, 3)  # an explicit limit wins
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    refused("image", f"{MAX_PIXELS_ENV}=lots", DataError, lambda: read_image(path), MAX_PIXELS_ENV, "'lots'")


@pytest.mark.parametrize("case", ["1x1", "16-bit grey", "truncated", "huge", "missing"])
def test_predict_cli_handles_or_names_the_image(case, toy, tmp_path, capsys):
    path = {
        "1x1": lambda: _write(tmp_path / "dot.png", HANDLED_IMAGES["1x1 PNG"][0]()),
        "16-bit grey": lambda: _write(tmp_path / "grey16.png", png16(np.full((30, 40, 1), 40000, np.uint16))),
        "truncated": lambda: _write(tmp_path / "cut.jpg", _jpeg()[:400]),
        "huge": lambda: huge_png(tmp_path / "huge.png"),
        "missing": lambda: tmp_path / "nope.png",
    }[case]()
    out = tmp_path / "pred"
    code, err = predict(
        capsys, "--artifact", str(toy["onnx"]), "--image", str(path), "--text", "the star", "--out", str(out)
    )
    if case in ("1x1", "16-bit grey"):
        assert code == 0, err
        mask = np.asarray(Image.open(out / f"{path.stem}_mask.png"))
        assert mask.shape == read_image(path).shape[:2]
        record("predict CLI", f"--image {case}", f"exit 0, mask {mask.shape[0]}x{mask.shape[1]} written")
    else:
        assert code == 2 and err.startswith("error: image ") and str(path) in err, err
        assert not out.exists()  # nothing half-written
        record("predict CLI", f"--image {case}", f"exit 2, {err.strip()}")


# -------------------------------------------------------------------------------------------------- expressions


@pytest.fixture(scope="module")
def proc():
    from runtimes.processing import Processing

    return Processing(img_size=SIZE, max_tokens=TOKENS)


@pytest.mark.parametrize(
    "text",
    ["", "   \t\n  ", "\x00\x1b\u200b\ufeff", None],
    ids=["empty", "whitespace only", "control and zero-width only", "not a string"],
)
def test_empty_expressions_are_refused(text, proc):
    words = "must be a string" if text is None else "is empty once whitespace and control characters are removed"
    refused("expression", repr(text), DataError, lambda: proc.text(text), words)


def test_control_characters_and_extra_whitespace_are_stripped(proc):
    plain = proc.text("the red star")["input_ids"]
    for noisy in ("the\x00 red\x07 star\u200b", "  the   red\t\nstar \x1b", "\ufeffthe red star\u2028"):
        assert np.array_equal(proc.text(noisy)["input_ids"], plain), repr(noisy)
        assert clean_expression(noisy) == "the red star"
    record(
        "expression",
        "'the\\x00 red\\x07 star\\u200b' (control / zero-width characters)",
        "same tokens as 'the red star'",
    )


NON_ASCII = {
    "accents": "la étoile rouge à gauche du cœur",
    "emoji in a sentence": "🙂 the red star ⭐",
    "emoji only": "🙂🙂🙂",
    "CJK": "左边的红色星星",
    "one 10000-letter word": "x" * 10_000,
}


@pytest.mark.parametrize("name", list(NON_ASCII))
def test_non_ascii_and_emoji_are_tokenized(name, proc):
    out, note = proc.text_with_note(NON_ASCII[name])
    ids, mask = out["input_ids"], out["attention_mask"]
    assert ids.shape == mask.shape == (1, TOKENS) and mask[0, 0] == 1 and mask[0, :3].all()
    assert note is None or "truncated" in note
    tried = NON_ASCII[name] if len(NON_ASCII[name]) < 40 else name
    record("expression", tried, f"{int(mask.sum())} tokens" + (" (cut to the token length; noted)" if note else ""))


def test_long_expression_is_truncated_and_reported(proc, toy, tmp_path, capsys):
    words = ["the", "small", "green", "triangle", "left", "of", "the", "blue", "star"]
    text = " ".join((words * 60)[:500])
    out, note = proc.text_with_note(text)
    assert out["attention_mask"].all() and proc.tokenizer.last_truncated == [True]
    assert note is not None and f"{TOKENS} tokens" in note
    image = _write(tmp_path / "frame.png", encoded(Image.new("RGB", (40, 30), (200, 10, 10)), "PNG"))
    code, err = predict(
        capsys, "--artifact", str(toy["onnx"]), "--image", str(image), "--text", text, "--out", str(tmp_path / "p")
    )
    assert code == 0 and "note: expression 'the small green" in err and "truncated" in err
    record("expression", "500 words", f"tokenized to {TOKENS} tokens; predict prints: {err.strip().splitlines()[0]}")


def test_predict_refuses_an_empty_text_before_writing_anything(toy, tmp_path, capsys):
    image = _write(tmp_path / "frame.png", encoded(Image.new("RGB", (40, 30)), "PNG"))
    out = tmp_path / "p"
    args = [
        "--artifact",
        str(toy["onnx"]),
        "--image",
        str(image),
        "--text",
        "the star",
        "--text",
        " \t",
        "--out",
        str(out),
    ]
    code, err = predict(capsys, *args)
    assert code == 2 and "is empty" in err and not out.exists()
    record("predict CLI", "--text 'the star' --text ' \\t'", f"exit 2 before any output, {err.strip()}")


# ------------------------------------------------------------------------------------------------------ data sets


def write_refer(root: Path, edit: Callable[[dict, list], None] | None = None) -> Path:
    """A tiny refcoco in the REFER layout (two images, three refs); ``edit(instances, refs)`` breaks it."""
    images = root / "images" / "mscoco" / "images" / "train2014"
    images.mkdir(parents=True, exist_ok=True)
    (root / "refcoco").mkdir(exist_ok=True)
    Image.new("RGB", (60, 40), (120, 30, 30)).save(images / "a.jpg")
    Image.new("RGB", (30, 50), (30, 120, 30)).save(images / "b.png")
    box = lambda x, y, s: [x, y, x + s, y, x + s, y + s, x, y + s]  # noqa: E731
    instances = {
        "images": [
            {"id": 1, "file_name": "a.jpg", "height": 40, "width": 60},
            {"id": 2, "file_name": "b.png", "height": 50, "width": 30},
        ],
        "annotations": [
            {"id": 11, "image_id": 1, "category_id": 1, "segmentation": [box(0, 0, 10)], "iscrowd": 0},
            {"id": 12, "image_id": 1, "category_id": 1, "segmentation": [box(20, 10, 10)], "iscrowd": 0},
            {"id": 21, "image_id": 2, "category_id": 1, "segmentation": [box(5, 5, 10)], "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }

    def ref(ref_id: int, ann_id: int, image_id: int, split: str, sentences: list[tuple[int, str]]) -> dict:
        sents = [{"sent_id": i, "sent": s, "tokens": s.split()} for i, s in sentences]
        return {"ref_id": ref_id, "ann_id": ann_id, "image_id": image_id, "split": split, "sentences": sents}

    refs = [
        ref(0, 11, 1, "train", [(0, "left square"), (1, "top left thing")]),
        ref(1, 12, 1, "val", [(2, "middle square")]),
        ref(2, 21, 2, "testB", [(3, "the square")]),
    ]
    if edit is not None:
        edit(instances, refs)
    (root / "refcoco" / "instances.json").write_text(json.dumps(instances))
    (root / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    return root


class _Shell:
    """Unpickling this would run a shell command, if the unpickler let it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _dup(rows: list, index: int = 0) -> None:
    rows.append(dict(rows[index]))


LOAD_ERRORS: dict[str, tuple[Callable[[dict, list], None], str]] = {
    # name: (edit of (instances, refs), words the DataError must hold)
    "duplicate image id": (lambda inst, refs: _dup(inst["images"]), "duplicate image id 1"),
    "duplicate annotation id": (lambda inst, refs: _dup(inst["annotations"]), "duplicate annotation id 11"),
    "duplicate ref id": (lambda inst, refs: refs[2].update(ref_id=0), "duplicate ref id 0"),
    "duplicate sentence id": (lambda inst, refs: refs[1]["sentences"][0].update(sent_id=0), "duplicate sentence id 0"),
    "ref -> missing annotation": (lambda inst, refs: refs[0].update(ann_id=99), "ref 0 points at annotation id 99"),
    "ref -> missing image": (lambda inst, refs: refs[1].update(image_id=7), "ref 1 points at image id 7"),
    "annotation on another image than its ref": (
        lambda inst, refs: inst["annotations"][2].update(image_id=1),
        "its annotation 21 is on image 1",
    ),
    "annotation -> missing image": (lambda inst, refs: inst["annotations"][0].update(image_id=9), "unknown image id 9"),
    "empty polygon list": (lambda inst, refs: inst["annotations"][0].update(segmentation=[]), "annotation 11"),
    "RLE with no foreground pixel": (
        lambda inst, refs: inst["annotations"][1].update(segmentation={"size": [40, 60], "counts": [2400]}),
        "annotation 12, whose segmentation is empty",
    ),
    "sentence of control characters only": (
        lambda inst, refs: refs[2]["sentences"][0].update(sent="\x00\x07\u200b"),
        "sentence 3 of ref 2",
    ),
    "ref without sentences key": (lambda inst, refs: refs[0].pop("sentences"), "ref #0 lacks sentences"),
}


@pytest.mark.parametrize("name", list(LOAD_ERRORS))
def test_inconsistent_data_sets_are_refused_naming_the_item(name, tmp_path):
    edit, words = LOAD_ERRORS[name]
    root = write_refer(tmp_path / "refer", edit)
    refused("data set", name, DataError, lambda: load_refer(root, "refcoco", "unc"), words)


def test_missing_and_corrupt_data_files_are_named(tmp_path):
    root = write_refer(tmp_path / "refer")
    folder = root / "refcoco"
    refs = (folder / "refs(unc).p").read_bytes()
    check = functools.partial(refused, "data set")
    load = lambda: load_refer(root, "refcoco", "unc")  # noqa: E731
    (folder / "refs(unc).p").write_bytes(refs[: len(refs) // 2])
    check("truncated refs(unc).p", DataError, load, str(folder / "refs(unc).p"), "not a readable pickle")
    (folder / "refs(unc).p").unlink()
    check("missing refs(unc).p", DataError, load, str(folder / "refs(unc).p"), "not found")
    (folder / "refs(unc).p").write_bytes(refs)
    (folder / "instances.json").write_text('{"images": [')
    check("instances.json not JSON", DataError, load, str(folder / "instances.json"), "not valid JSON")
    (folder / "instances.json").unlink()
    check("missing instances.json", DataError, load, str(folder / "instances.json"), "not found")


def test_refs_pickle_that_would_run_code_is_refused(tmp_path):
    root = write_refer(tmp_path / "refer")
    marker = tmp_path / "pwned"
    (root / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps([_Shell(marker)], protocol=2))
    load = lambda: load_refer(root, "refcoco", "unc")  # noqa: E731
    refused("untrusted files", "refs(unc).p pickling os.system", DataError, load, "refused")
    assert not marker.exists()


def test_images_masks_and_splits_are_checked_on_use(tmp_path):
    degenerate = lambda inst, refs: inst["annotations"][2].update(segmentation=[[5, 5, 5, 5, 5, 5]])  # noqa: E731
    root = write_refer(tmp_path / "refer", degenerate)
    ds = load_refer(root, "refcoco", "unc")
    check = functools.partial(refused, "data set")
    check("zero-area polygon (empty mask)", DataError, lambda: ds.mask(21), "annotation 21", "b.png", "empty mask")
    images = root / "images" / "mscoco" / "images" / "train2014"
    Image.new("RGB", (61, 40)).save(images / "a.jpg")
    check("image size differs from instances.json", DataError, lambda: ds.image(1), "a.jpg", "61x40")
    (images / "a.jpg").unlink()
    check("missing image file", DataError, lambda: ds.image(1), "image 1", "a.jpg", "not found")
    (images / "b.png").write_bytes(b"\x89PNG garbage")
    check("corrupt image file", DataError, lambda: ds.image(2), "image 2", "b.png", "corrupt")
    check("wrong split name 'tset'", DataError, lambda: ds.samples("tset"), "'tset'", "valid: testB, train, val")
    check("wrong split_by 'umd'", DataError, lambda: load_refer(root, "refcoco", "umd"), "'umd'", "unc, google")
    check("unknown data set 'refcco'", DataError, lambda: load_refer(root, "refcco"), "did you mean 'refcoco'")
    check(
        "data.eval_splits=[tset] (SynRef)", ConfigError, lambda: load_config(None, ["data.eval_splits=[tset]"]), "tset"
    )


# ------------------------------------------------------------------------------------------------------ artifacts


def _damage(kind: str, src: bytes) -> bytes:
    return {"truncated": src[: len(src) // 2], "empty": b"", "garbage": b"\x00\xffnot a model" * 50}[kind]


@pytest.mark.parametrize("kind", ["truncated", "empty", "garbage"])
def test_damaged_onnx_is_a_clear_error(kind, toy, tmp_path):
    from runtimes import get_runtime

    path = _write(tmp_path / f"{kind}.onnx", _damage(kind, toy["onnx"].read_bytes()))
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
    artifact = _write(tmp_path / "cut.onnx", _damage("truncated", toy["onnx"].read_bytes()))
    image = _write(tmp_path / "frame.png", encoded(Image.new("RGB", (8, 8)), "PNG"))
    code, err = predict(
        capsys, "--artifact", str(artifact), "--image", str(image), "--text", "x", "--out", str(tmp_path / "p")
    )
    assert code == 2 and str(artifact) in err
    record("predict CLI", "--artifact truncated .onnx", f"exit 2, {err.strip()}")


def test_engine_of_another_tensorrt_version_is_refused(tmp_path):
    from runtimes.tensorrt_rt import TensorRTRuntime, check_compatible, read_sidecar

    check = functools.partial(refused, "artifact")
    engine = _write(tmp_path / "full_int8.engine", os.urandom(256))
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
    torch.save({"model": _Shell(marker)}, path)
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

    image = _write(tmp_path / "grey16.png", png16(np.full((30, 40, 1), 40000, np.uint16)))
    done = robot(bundle, "--image", str(image), "--text", "the star", "--out", str(tmp_path / "out"))
    assert done.returncode == 0, done.stderr
    mask = np.asarray(Image.open(tmp_path / "out" / "grey16_mask.png")) > 0
    expected = overlay(read_image(image), mask)  # the host's reading: 40000 -> 156, not clipped to 255
    assert np.array_equal(np.asarray(Image.open(tmp_path / "out" / "grey16_overlay.png")), expected)
    record("bundle infer.py", "16-bit grey PNG", "exit 0; same pixels as the host (scaled to 8 bits, not clipped)")
    bad = robot(bundle, "--image", str(_write(tmp_path / "cut.jpg", _jpeg()[:300])), "--text", "x")
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
    image = _write(tmp_path / "frame.png", encoded(Image.new("RGB", (40, 30)), "PNG"))
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


# -------------------------------------------------------------------------------------------------- interruption

TOY_RUN = '''
"""Three toy stages (a -> b -> c, c resumable) run by the real runner; SIGKILL this process at $KILL_AT."""
import logging
import os
import signal
import sys

from pipeline import runner as runner_mod
from pipeline import stage as stage_mod
from pipeline.config import load_config
from foundation.io import atomic_write_text
from pipeline.stage import stage

KILL_AT = os.environ.get("KILL_AT", "")
REPLACES = [0]
_replace = os.replace


def kill_if(point):
    if point == KILL_AT:
        os.kill(os.getpid(), signal.SIGKILL)


def counting_replace(src, dst):  # every rename of the run: atomic writes, manifests, stage folders
    REPLACES[0] += 1
    kill_if(f"replace:{REPLACES[0]}")
    _replace(src, dst)


os.replace = counting_replace
stage_mod.load_stages()
stage_mod.STAGES.clear()


@stage("a", sections=("data",))
def run_a(ctx):
    for i in range(4):
        (ctx.out / f"part{i}.txt").write_text(f"a{i} seed={ctx.cfg.data.seed}\\n" * 50)
        if i == 1:
            kill_if("a:mid")
    return {}


@stage("b", upstream=("a",), sections=("train",))
def run_b(ctx):
    text = "".join(p.read_text() for p in sorted(ctx.upstream("a").glob("*.txt")))
    (ctx.out / "sub").mkdir()
    (ctx.out / "sub" / "joined.txt").write_text(text)
    kill_if("b:mid")
    (ctx.out / "sub" / "steps.txt").write_text(str(ctx.cfg.train.steps))
    return {}


@stage("c", upstream=("b",), sections=("train",), resumable=True)
def run_c(ctx):
    steps = (ctx.upstream("b") / "sub" / "steps.txt").read_text()
    for step in range(len(list(ctx.out.glob("step*.txt"))), 4):  # a resumed attempt goes on from its last step
        atomic_write_text(ctx.out / f"step{step}.txt", f"step {step} of {steps}\\n")
        if step == 1:
            kill_if("c:mid")
    return {}


_finalize = runner_mod.Runner._finalize


def finalize(self, st, *args):
    _finalize(self, st, *args)
    kill_if(f"{st.name}:done")


runner_mod.Runner._finalize = finalize
logging.basicConfig(level=logging.INFO, format="%(message)s")
cfg = load_config(None, [f"run.root={sys.argv[1]}", "run.name=t", f"data.seed={sys.argv[2]}", "train.steps=3"])
for status in runner_mod.Runner(cfg).run(None):
    print(status.stage, status.state)
print("replaces", REPLACES[0])
'''


def toy_run(script: Path, root: Path, seed: int = 0, kill_at: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KILL_AT": kill_at}
    cmd = [sys.executable, str(script), str(root), str(seed)]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def manifests(run_dir: Path) -> dict[str, Any]:
    """Each stage's cache key and output files (sha256 + size): what must not depend on interruptions."""
    out = {}
    for name in ("a", "b", "c"):
        man = json.loads((run_dir / name / "manifest.json").read_text())
        out[name] = {"key": man["key"], "files": man["files"]}
    return out


def leftovers(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.rglob("*") if p.name.endswith((".work", ".old", ".tmp")))


@pytest.fixture(scope="module")
def toy_script(tmp_path_factory) -> tuple[Path, dict[str, Any], int]:
    """The toy-stage script, the manifests of an uninterrupted run, and how many renames that run does."""
    folder = tmp_path_factory.mktemp("toy_run")
    script = _write(folder / "toy_run.py", TOY_RUN.encode())
    done = toy_run(script, folder / "clean")
    assert done.returncode == 0, done.stderr
    return script, manifests(folder / "clean" / "t"), int(done.stdout.split()[-1])


def _kill_and_rerun(script: Path, root: Path, kill_at: str, seed: int = 0) -> subprocess.CompletedProcess:
    killed = toy_run(script, root, seed, kill_at)
    assert killed.returncode == -9, f"{kill_at}: not killed ({killed.returncode}) {killed.stderr[-500:]}"
    rerun = toy_run(script, root, seed)
    assert rerun.returncode == 0, rerun.stderr
    return rerun


@pytest.mark.parametrize("kill_at", ["a:mid", "a:done", "b:mid", "b:done", "c:mid", "replace:2"])
def test_sigkill_at_stage_boundaries_and_mid_stage(kill_at, toy_script, tmp_path):
    script, clean, _ = toy_script
    rerun = _kill_and_rerun(script, tmp_path, kill_at)
    assert manifests(tmp_path / "t") == clean  # the same keys and the same file hashes as an uninterrupted run
    assert leftovers(tmp_path / "t") == []
    states = dict(line.split() for line in rerun.stdout.splitlines()[:-1])
    finished_before = {"a:done": ["a"], "b:mid": ["a"], "b:done": ["a", "b"], "c:mid": ["a", "b"]}.get(kill_at, [])
    assert all(states[s] == "cached" for s in finished_before), states  # finished stages are not redone
    if kill_at == "c:mid":
        assert "resuming the interrupted attempt" in rerun.stderr
    record("interruption", f"SIGKILL at {kill_at}", f"rerun: {states}; manifests equal the uninterrupted run's")


@pytest.mark.slow
def test_sigkill_before_every_rename_of_a_fresh_and_a_stale_run(toy_script, tmp_path):
    script, clean, renames = toy_script
    for n in range(1, renames + 1):
        _kill_and_rerun(script, tmp_path / f"fresh{n}", f"replace:{n}")
        assert manifests(tmp_path / f"fresh{n}" / "t") == clean, n
        assert leftovers(tmp_path / f"fresh{n}" / "t") == [], n
    reference = tmp_path / "seed1"
    assert toy_run(script, reference, seed=1).returncode == 0
    stale = tmp_path / "stale"
    assert toy_run(script, stale, seed=0).returncode == 0
    base = stale.with_name("stale_base")
    shutil.copytree(stale, base)
    for n in range(1, renames + 10):  # a stale rerun also renames the old outputs aside: more renames
        shutil.rmtree(stale)
        shutil.copytree(base, stale)
        killed = toy_run(script, stale, 1, f"replace:{n}")
        if killed.returncode == 0:
            break
        assert toy_run(script, stale, 1).returncode == 0
        assert manifests(stale / "t") == manifests(reference / "t"), n
        assert leftovers(stale / "t") == [], n
    record(
        "interruption",
        f"SIGKILL before each of the {renames} renames (fresh run) and of a stale rerun",
        "every rerun completes; manifests equal",
    )


@pytest.mark.slow
def test_sigkill_of_the_real_data_stage_gives_the_same_manifest(tmp_path):
    overrides = [
        "data.synref.images={train: 120, val: 6, testA: 6, testB: 6}",
        "data.synref.min_side=96",
        "data.synref.max_side=128",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}

    def args(root: Path) -> list[str]:
        sets = [x for o in [f"run.root={root}", *overrides] for x in ("--set", o)]
        return [sys.executable, "-m", "pipeline", "run", "--stages", "data", "--config", "configs/demo.yaml", *sets]

    subprocess.run(args(tmp_path / "clean"), cwd=ROOT, env=env, capture_output=True, check=True, timeout=600)
    proc = subprocess.Popen(
        args(tmp_path / "killed"), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    images = tmp_path / "killed" / "demo" / ".data.work" / "synref" / "images"
    while proc.poll() is None and not (images.is_dir() and sum(1 for _ in images.iterdir()) > 30):
        time.sleep(0.05)
    assert proc.poll() is None, "the data stage finished before it could be killed"
    proc.kill()
    proc.wait()
    subprocess.run(args(tmp_path / "killed"), cwd=ROOT, env=env, capture_output=True, check=True, timeout=600)
    clean, killed = (
        json.loads((tmp_path / r / "demo" / "data" / "manifest.json").read_text()) for r in ("clean", "killed")
    )
    assert (killed["key"], killed["files"]) == (clean["key"], clean["files"])
    record(
        "interruption",
        "SIGKILL of `pipeline run --stages data` mid-stage",
        "rerun completes; manifest key and file hashes equal",
    )


# ---------------------------------------------------------------------------------------------------- full disk


@pytest.fixture
def two_stages(monkeypatch, tmp_path):
    """Two real stages (a -> b) registered for the test only, and a runner factory over ``tmp_path/<name>``."""
    from foundation.io import atomic_write_text
    from pipeline import stage as stage_mod
    from pipeline.runner import Runner
    from pipeline.stage import stage

    stage_mod.load_stages()
    monkeypatch.setattr(stage_mod, "STAGES", {})

    @stage("a", sections=("data",))
    def run_a(ctx):
        atomic_write_text(ctx.out / "numbers.txt", "0123456789\n" * 1000)
        return {}

    @stage("b", upstream=("a",), sections=("train",))
    def run_b(ctx):
        atomic_write_text(ctx.out / "copy.txt", (ctx.upstream("a") / "numbers.txt").read_text() * 2)
        return {}

    return lambda name: Runner(load_config(None, [f"run.root={tmp_path / name}", "run.name=t"]))


@contextlib.contextmanager
def no_space(when: Callable[[Path], bool]) -> Iterator[None]:
    """A disk that fills up: ``os.replace`` onto a path for which ``when`` holds fails with ENOSPC."""
    real = os.replace

    def replace(src, dst):
        if when(Path(dst)):
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        real(src, dst)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "replace", replace)
        yield


@pytest.mark.parametrize(
    "where",
    ["a stage's own file", "stage b's manifest", "the rename into place"],
)
def test_full_disk_leaves_nothing_counted_as_done(where, two_stages):
    reference = two_stages("reference")
    reference.run(None)
    runner = two_stages("full")
    when = {
        "a stage's own file": lambda p: p.name == "copy.txt",
        "stage b's manifest": lambda p: p.name == "manifest.json" and p.parent.name == ".b.work",
        "the rename into place": lambda p: p.name == "b",
    }[where]
    with no_space(when):
        message = refused("full disk", f"ENOSPC on {where}", StageError, lambda: runner.run(None), "'b'", "No space")
    assert runner.status("a").state == "done" and runner.status("b").state == "missing"
    assert not (runner.stage_dir("b") / "manifest.json").exists()
    assert not [p for p in runner.run_dir.rglob("*.tmp")], "a temporary file was left behind"
    outcomes = {s.stage: s.state for s in runner.run(None)}
    assert outcomes == {"a": "cached", "b": "ran"}, message
    assert runner.manifest("b")["files"] == reference.manifest("b")["files"]


def test_full_disk_during_an_atomic_write_keeps_the_old_file(tmp_path):
    from foundation.io import atomic_write_bytes

    target = _write(tmp_path / "model.onnx", b"old, complete")
    real_write = Path.write_bytes

    def half_then_full(self, data):
        real_write(self, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.MonkeyPatch.context() as patch, pytest.raises(OSError, match="No space"):
        patch.setattr(Path, "write_bytes", half_then_full)
        atomic_write_bytes(target, b"new " * 1000)
    assert target.read_bytes() == b"old, complete" and [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
    record("full disk", "ENOSPC half-way through an atomic write", "OSError; the old file is intact, no temporary left")


# ---------------------------------------------------------------------------------------------- untrusted files

SCANNED = ("foundation", "pipeline", "model", "runtimes", "quantize", "benchmarks", "tests", "tools")
UNPICKLERS = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}
RISKY_NAMES = {"load", "loads", "Unpickler"}


def risky_calls(source: str) -> list[str]:
    """Calls that can run code from a file or a string: what the audit below forbids outside its allow-list."""
    found = []
    tree = ast.parse(source)
    aliases = {a.asname: a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names if a.asname}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in (*UNPICKLERS, "torch"):
            found += [f"from {node.module} import {a.name}" for a in node.names if a.name in RISKY_NAMES]
        if isinstance(node, ast.ClassDef):
            bases = [ast.unparse(b) for b in node.bases]
            found += [f"subclass of {b}" for b in bases if b.endswith("Unpickler")]
        if not isinstance(node, ast.Call):
            continue
        func = ast.unparse(node.func)
        head, _, rest = func.partition(".")
        func = f"{aliases.get(head, head)}.{rest}" if rest else func  # import pickle as pk: pk.load is pickle.load
        kwargs = {k.arg: k.value for k in node.keywords if k.arg}
        flags = {name for name, v in kwargs.items() if isinstance(v, ast.Constant) and v.value is True}
        if func.split(".")[0] in UNPICKLERS and func.split(".")[-1] in (*RISKY_NAMES, "open"):
            found.append(func)
        if func == "torch.load" and "weights_only" not in flags:
            found.append("torch.load without weights_only=True")
        if "shell" in kwargs and not (isinstance(kwargs["shell"], ast.Constant) and kwargs["shell"].value is False):
            found.append(f"{func}(shell=...)")
        if func.endswith(("np.load", "numpy.load")) and "allow_pickle" in flags:
            found.append("np.load(allow_pickle=True)")
        if func in ("yaml.load", "yaml.unsafe_load", "yaml.full_load", "eval", "exec", "os.system", "os.popen"):
            found.append(func)
        if func.endswith((".extractall", ".extract")):
            found.append("tar/zip extract")
    return found


ALLOWED = {
    ("pipeline/data/refer.py", "subclass of pickle.Unpickler"),  # the restricted REFER reader: refuses every global
    ("pipeline/bundle.py", "tar/zip extract"),  # extract_bundle: members checked first, then filter="data"
    ("tests/test_data.py", "pickle.loads"),  # reads back the refs file the test itself wrote
}


def test_static_audit_no_pickle_unsafe_torch_load_or_shell():
    found = set()
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for call in risky_calls(path.read_text()):
                found.add((path.relative_to(ROOT).as_posix(), call))
    assert found == ALLOWED, f"new risky calls: {sorted(found - ALLOWED)}; gone: {sorted(ALLOWED - found)}"
    bad = (
        "import pickle, torch, subprocess, yaml, numpy as np\n"
        "pickle.load(f); torch.load(p); torch.load(p, weights_only=False); subprocess.run(c, shell=True)\n"
        "np.load(p, allow_pickle=True); yaml.load(s); eval(s)\nclass U(pickle.Unpickler): pass\n"
        "import pickle as pk\npk.loads(b)\nfrom torch import load\n"
    )
    assert len(risky_calls(bad)) == 10  # the audit does see each kind
    assert risky_calls("torch.load(p, weights_only=True); subprocess.run(['ls'], check=True)") == []
    record(
        "untrusted files",
        f"static audit of {', '.join(SCANNED)}",
        "only the allow-listed calls: " + "; ".join(sorted(f"{p}: {c}" for p, c in ALLOWED)),
    )


def _tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, kind in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = "/etc/passwd" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
            data = b"x" if kind == tarfile.REGTYPE else b""
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)
    return path


@pytest.mark.parametrize(
    "members",
    [
        [("bundle/ok.txt", tarfile.REGTYPE), ("../evil.txt", tarfile.REGTYPE)],
        [("bundle/../../evil.txt", tarfile.REGTYPE)],
        [("/tmp/evil.txt", tarfile.REGTYPE)],
        [("bundle/link", tarfile.SYMTYPE)],
        [("bundle/hard", tarfile.LNKTYPE)],
        [("bundle/tty", tarfile.CHRTYPE)],
        [("bundle/a.txt", tarfile.REGTYPE), ("other/b.txt", tarfile.REGTYPE)],
    ],
    ids=["dot-dot", "nested dot-dot", "absolute", "symlink", "hard link", "device", "two top folders"],
)
def test_bundle_extraction_refuses_unsafe_members(members, tmp_path):
    from pipeline.bundle import extract_bundle

    tar = _tar(tmp_path / "bad.tar.gz", members)
    dest = tmp_path / "dest"
    names = ", ".join(name for name, _ in members)
    refused(
        "untrusted files", f"bundle .tar.gz with {names}", ArtifactError, lambda: extract_bundle(tar, dest), str(tar)
    )
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/evil.txt").exists()
    assert not dest.exists() or not any(dest.rglob("*"))


def test_config_files_and_paths_are_resolved_and_checked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    check = functools.partial(refused, "config")
    given_sets = lambda *sets: lambda: load_config(None, list(sets))  # noqa: E731
    missing = str(tmp_path / "models" / "minilm")  # a relative path is named as resolved from the working folder
    check("model.text_dir=models/minilm (missing)", ConfigError, given_sets("model.text_dir=models/minilm"), missing)
    check(
        "model.vision_checkpoint=<a directory>",
        ConfigError,
        given_sets(f"model.vision_checkpoint={tmp_path}"),
        "is not a file",
    )
    _write(tmp_path / "swin.pth", b"x")
    assert load_config(None, ["model.vision_checkpoint=swin.pth"]).model.vision_checkpoint == Path("swin.pth")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert load_config(None, ["model.vision_checkpoint=~/swin.pth"]).model.vision_checkpoint == tmp_path / "swin.pth"
    check("model.text_dir= (empty)", ConfigError, given_sets("model.text_dir="), "empty path")
    no_root = given_sets("data.dataset=refcoco", "data.root=/no/refer")
    check("data.dataset=refcoco, data.root missing", ConfigError, no_root, "'data.root'", "/no/refer")
    no_teacher = given_sets("distill.enabled=true", "distill.teacher_checkpoint=runs/x/best")
    check("distill.teacher_checkpoint missing", ConfigError, no_teacher, "best.safetensors does not exist")
    (tmp_path / "child.yaml").write_text("extends: ../nowhere/base.yaml\n")
    parent = str(tmp_path.parent / "nowhere" / "base.yaml")
    check("extends: ../nowhere/base.yaml", ConfigError, lambda: load_config(tmp_path / "child.yaml"), parent)
    (tmp_path / "evil.yaml").write_text("train: !!python/object/apply:os.system ['touch pwned']\n")
    evil = lambda: load_config(tmp_path / "evil.yaml")  # noqa: E731
    refused("untrusted files", "config YAML with !!python/object/apply", ConfigError, evil, "not valid YAML")
    assert not (tmp_path / "pwned").exists()


# ----------------------------------------------------------------------------------------------- property tests

FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


@FAST
@given(height=st.integers(1, 80), width=st.integers(1, 80), size=st.sampled_from([8, 16, 32]), seed=st.integers(0, 99))
def test_preprocess_any_image_size(height, width, size, seed):
    rgb = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    x = preprocess_image(rgb, size)
    low = (0 - np.asarray(MEAN)) / np.asarray(STD)
    high = (1 - np.asarray(MEAN)) / np.asarray(STD)
    assert x.shape == (3, size, size) and x.dtype == np.float32 and np.isfinite(x).all()
    assert (x.min(axis=(1, 2)) >= low - 1e-4).all() and (x.max(axis=(1, 2)) <= high + 1e-4).all()


_VALID = [
    encoded(Image.new("RGB", (9, 7), (1, 2, 3)), "PNG"),
    encoded(Image.new("RGB", (9, 7), (1, 2, 3)), "JPEG"),
    png16(np.full((3, 4, 1), 1234, np.uint16)),
    encoded(Image.new("P", (5, 5)), "GIF"),
    encoded(Image.new("RGB", (6, 6)), "BMP"),
    encoded(Image.new("RGB", (6, 6)), "TIFF"),
]


@st.composite
def damaged_images(draw) -> bytes:
    data = bytearray(draw(st.sampled_from(_VALID)))
    cut = draw(st.integers(0, len(data)))
    for _ in range(draw(st.integers(0, 4))):
        data[draw(st.integers(0, len(data) - 1))] = draw(st.integers(0, 255))
    return bytes(data[:cut] if draw(st.booleans()) else data)


@FAST
@given(data=st.one_of(st.binary(max_size=600), damaged_images()))
def test_any_bytes_decode_to_rgb_or_a_data_error(data):
    try:
        rgb = read_image(data, label="fuzzed image")
    except DataError as exc:
        assert str(exc).startswith("fuzzed image")
        return
    assert rgb.dtype == np.uint8 and rgb.ndim == 3 and rgb.shape[2] == 3 and min(rgb.shape[:2]) >= 1


@FAST
@given(
    mode=st.sampled_from(["1", "L", "LA", "P", "RGB", "RGBA", "I;16", "I", "F"]),
    w=st.integers(1, 40),
    h=st.integers(1, 40),
)
def test_every_mode_and_size_reads_as_its_size(mode, w, h):
    fmt = "TIFF" if mode in ("I", "F") else "PNG"
    rgb = read_image(encoded(Image.new(mode, (w, h)), fmt))
    assert rgb.shape == (h, w, 3) and rgb.dtype == np.uint8


def _visible(text: str) -> bool:
    return any(not unicodedata.category(c).startswith("C") and not c.isspace() for c in text)


@FAST
@given(text=st.text(max_size=200))
def test_clean_expression_properties(text):
    if not _visible(text):
        with pytest.raises(DataError, match="is empty"):
            clean_expression(text)
        return
    out = clean_expression(text)
    assert out == out.strip() and "  " not in out and out == clean_expression(out)
    assert not any(unicodedata.category(c).startswith("C") for c in out)
    assert [c for c in out if _visible(c)] == [c for c in text if _visible(c)]  # nothing visible lost or added


@pytest.fixture(scope="module")
def minilm() -> TextTokenizer:
    return TextTokenizer.from_dir(None, max_length=TOKENS)


@FAST
@given(text=st.text(max_size=300))
def test_tokenizer_any_text(minilm, text):
    if not _visible(text):
        with pytest.raises(DataError):
            minilm(text)
        return
    out = minilm(text)
    ids, mask = out["input_ids"][0], out["attention_mask"][0]
    n = int(mask.sum())
    assert ids.shape == mask.shape == (TOKENS,) and ids.dtype == np.int64
    assert 2 <= n <= TOKENS and mask[:n].all() and not mask[n:].any()  # real tokens first, then padding
    assert (ids[n:] == minilm.pad_id).all() and ids[0] == 101 and ids[n - 1] == 102  # [CLS] ... [SEP]
    assert minilm.last_truncated == [minilm.last_truncated[0]]


def _keys(model: type, prefix: str = "") -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{field.alias or name}"
        ann = field.annotation
        out += _keys(ann, key + ".") if isinstance(ann, type) and hasattr(ann, "model_fields") else [key]
    return out


CONFIG_KEYS = _keys(Config)
YAML_VALUES = st.one_of(
    st.text(max_size=12),
    st.integers(-(10**12), 10**12).map(str),
    st.floats(allow_nan=True).map(str),
    st.sampled_from(
        ["", "~", "null", "true", "[1, 2]", "{a: 1}", "[val, tset]", "'x' : y", "!!python/name:os.system", "1e999"]
    ),
)


@FAST
@given(key=st.one_of(st.sampled_from(CONFIG_KEYS), st.text(max_size=20)), value=YAML_VALUES)
def test_config_override_is_a_config_or_a_config_error(key, value):
    try:
        cfg = load_config(None, [f"{key}={value}"])
    except ConfigError as exc:
        assert str(exc)  # a message, never an empty one
        return
    assert isinstance(cfg, Config)


def test_full_disk_while_saving_a_checkpoint_keeps_the_old_one_and_no_temporary(tmp_path):
    from model import create_model
    from model.weights import load_checkpoint, save_checkpoint

    model = create_model("tiny")
    save_checkpoint(model, tmp_path / "best", {"step": 1})
    before = sorted(p.name for p in tmp_path.iterdir())
    with no_space(lambda p: p.suffix == ".safetensors"), pytest.raises(OSError, match="No space"):
        save_checkpoint(model, tmp_path / "best", {"step": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no best.safetensors.tmp left behind
    assert load_checkpoint(tmp_path / "best")[1]["step"] == 1
    record("full disk", "ENOSPC while saving a checkpoint", "OSError; the previous checkpoint loads, no temporary left")
