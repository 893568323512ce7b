"""Inputs the reliability tests build: PNGs written byte by byte, encoded images, a toy ONNX model with the pipeline's
self-description, the ``predict`` command run in-process, and a pickle payload that would run a shell command.

Usage: ``path = write_file(tmp_path / "cut.jpg", random_jpeg()[:400])``; ``toy_onnx(path, variant="other")``.
"""

from __future__ import annotations

import io
import os
import struct
import zlib
from pathlib import Path
from typing import Any

import numpy as np
from hypothesis import HealthCheck, settings
from PIL import Image

from runtimes.image import MEAN, STD

ROOT = Path(__file__).resolve().parent.parent
SIZE, TOKENS = 32, 12  # the toy artifact's input side and token length
FAST = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


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


def toy_artifacts(out: Path) -> dict[str, Path]:
    """The toy model as ONNX and as OpenVINO IR under ``out``."""
    from runtimes.export import export_openvino

    onnx_path = toy_onnx(out / "toy.onnx")
    return {"dir": out, "onnx": onnx_path, "xml": export_openvino(onnx_path, out / "toy.xml")}


def predict(capsys, *args: str) -> tuple[int, str]:
    """``python -m pipeline predict`` in this process; returns (exit code, stderr)."""
    from pipeline.cli import main

    code = main(["predict", *args])
    return code, capsys.readouterr().err


def write_file(path: Path, data: bytes) -> Path:
    """Write ``data`` to ``path`` and return the path."""
    path.write_bytes(data)
    return path


def random_jpeg() -> bytes:
    """A 64x64 JPEG of random pixels (seeded)."""
    rng = np.random.default_rng(0)
    return encoded(Image.fromarray(rng.integers(0, 256, (64, 64, 3), dtype=np.uint8)), "JPEG")


class Shell:
    """Unpickling this would run a shell command, if the unpickler let it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)
