"""Reliability of image reading: every mode and size Pillow hands over, unreadable and huge files, the predict
command's handling of each, and property tests of decoding and pre-processing.

Usage: ``pytest tests/test_reliability_images.py``; with ``S2RM_RELIABILITY_LOG=<file>`` each case appends its row
to that file (tests/reliability_log.py).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from foundation.errors import DataError
from runtimes.image import MAX_PIXELS_ENV, MEAN, STD, preprocess_image, read_image
from tests.reliability_inputs import FAST, ROOT, encoded, png16, png_bytes, predict, random_jpeg, write_file
from tests.reliability_log import record, refused

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning", "ignore::FutureWarning")


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


BAD_IMAGES: dict[str, tuple[Callable[[Path], Path], str]] = {
    # name: (writes the input under a folder and returns its path, expected words)
    "truncated JPEG": (lambda d: write_file(d / "cut.jpg", random_jpeg()[:400]), "corrupt or not an image"),
    "truncated PNG": (lambda d: write_file(d / "cut.png", png16(np.ones((40, 40, 3), np.uint16))[:60]), "corrupt"),
    "random bytes named .jpg": (lambda d: write_file(d / "noise.jpg", os.urandom(2000)), "corrupt or not an image"),
    "empty file": (lambda d: write_file(d / "empty.png", b""), "corrupt or not an image"),
    "text file named .png": (lambda d: write_file(d / "notes.png", b"hello"), "corrupt or not an image"),
    "a directory": (lambda d: d, "not found"),
    "missing file": (lambda d: d / "nope.jpg", "not found"),
}


@pytest.mark.parametrize("name", list(BAD_IMAGES))
def test_unreadable_images_are_refused_naming_the_file(name, tmp_path):
    make, words = BAD_IMAGES[name]
    path = make(tmp_path)
    refused("image", name, DataError, lambda: read_image(path), str(path), words)


def huge_png(path: Path, side: int = 12000) -> Path:
    """A 1-bit ``side x side`` PNG (12000 x 12000 = 144 MP) written row by row: a small file, a huge image."""
    row = b"\x00" + b"\x00" * ((side + 7) // 8)
    return write_file(path, png_bytes(side, side, 1, 0, row * side))


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
    path = write_file(tmp_path / "small.png", encoded(Image.new("RGB", (20, 20)), "PNG"))
    monkeypatch.setenv(MAX_PIXELS_ENV, "100")
    refused("image", f"20x20 PNG with {MAX_PIXELS_ENV}=100", DataError, lambda: read_image(path), "over the limit")
    assert read_image(path, max_pixels=400).shape == (20, 20, 3)  # an explicit limit wins
    monkeypatch.setenv(MAX_PIXELS_ENV, "lots")
    refused("image", f"{MAX_PIXELS_ENV}=lots", DataError, lambda: read_image(path), MAX_PIXELS_ENV, "'lots'")


@pytest.mark.parametrize("case", ["1x1", "16-bit grey", "truncated", "huge", "missing"])
def test_predict_cli_handles_or_names_the_image(case, toy, tmp_path, capsys):
    path = {
        "1x1": lambda: write_file(tmp_path / "dot.png", HANDLED_IMAGES["1x1 PNG"][0]()),
        "16-bit grey": lambda: write_file(tmp_path / "grey16.png", png16(np.full((30, 40, 1), 40000, np.uint16))),
        "truncated": lambda: write_file(tmp_path / "cut.jpg", random_jpeg()[:400]),
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


# ----------------------------------------------------------------------------------------------- property tests


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
