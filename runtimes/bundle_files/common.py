"""Shared by the deploy bundle's scripts: bundle metadata, backends, image I/O, pre- and post-processing.

Usage (from a script in the bundle): ``from common import Bundle; b = Bundle.here(); rt = b.runtime("tensorrt")``.

The bundle carries the project's runtime modules under ``lib/`` (numpy, Pillow, tokenizers and the chosen backend:
TensorRT + cuda-python on the robot, ONNX Runtime or OpenVINO elsewhere); nothing here needs torch.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "lib"))

from pipeline.errors import ArtifactError, PipelineError  # noqa: E402
from runtimes.base import get_runtime  # noqa: E402
from runtimes.processing import Processing  # noqa: E402
from runtimes.visualize import save_mask_and_overlay  # noqa: E402

BACKENDS = ("tensorrt", "onnxruntime", "openvino")


class Bundle:
    """A deploy bundle folder: ``metadata.json``, models, tokenizer, golden files and these scripts."""

    def __init__(self, root: Path):
        self.root = Path(root)
        path = self.root / "metadata.json"
        if not path.is_file():
            raise ArtifactError(f"{path} is missing: is {self.root} an unpacked deploy bundle?")
        self.meta: dict[str, Any] = json.loads(path.read_text())

    @classmethod
    def here(cls) -> Bundle:
        return cls(HERE)

    @property
    def precisions(self) -> list[str]:
        return list(self.meta["models"])

    def model_entry(self, precision: str) -> dict[str, Any]:
        models = self.meta["models"]
        if precision not in models:
            raise ArtifactError(f"precision {precision!r} is not in this bundle; it has {', '.join(models)}")
        return models[precision]

    def artifact(self, backend: str, precision: str) -> Path:
        """The file a backend loads for a precision: the engine for TensorRT, the ONNX/IR otherwise."""
        if backend not in BACKENDS:
            raise ArtifactError(f"unknown backend {backend!r}; valid: {', '.join(BACKENDS)}")
        entry = self.model_entry(precision)
        key = {"tensorrt": "engine", "onnxruntime": "onnx", "openvino": "openvino"}[backend]
        if not entry.get(key):
            raise ArtifactError(f"the {precision} model has no {backend} artifact in this bundle (it has {entry})")
        path = self.root / entry[key]
        if backend == "tensorrt" and not path.is_file():
            raise ArtifactError(f"engine {path} is not built yet: run ./build_engine.sh (or build_engine.py) first")
        return path

    def runtime(self, backend: str, precision: str, threads: int | None = None) -> Any:
        device = "GPU" if backend == "tensorrt" else "CPU"
        return get_runtime(backend).load(self.artifact(backend, precision), device=device, threads=threads)

    def processing(self) -> Processing:
        return Processing.from_metadata(self.meta["description"], tokenizer_dir=self.root / "tokenizer")


def read_image(path: str | Path) -> np.ndarray:
    """uint8 RGB [H, W, 3] from an image file (grayscale, palette and RGBA are converted)."""
    from PIL import Image, UnidentifiedImageError

    try:
        with Image.open(path) as img:
            return np.asarray(img.convert("RGB"))
    except (OSError, UnidentifiedImageError) as exc:
        raise ArtifactError(f"cannot read image {path}: {exc}") from exc


def fail(exc: Exception) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return 2


__all__ = ["BACKENDS", "Bundle", "PipelineError", "fail", "read_image", "save_mask_and_overlay"]
