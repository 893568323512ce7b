"""Shared by the deploy bundle's scripts: bundle metadata, backends, image I/O, pre- and post-processing.

Usage (from a script in the bundle): ``from common import Bundle; b = Bundle.here(); rt = b.runtime("tensorrt")``.

The bundle carries the project's runtime modules under ``lib/`` (numpy, Pillow, tokenizers and the chosen backend:
TensorRT + cuda-python on the robot, ONNX Runtime or OpenVINO elsewhere); nothing here needs torch.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE / "lib"))

from foundation.errors import ArtifactError, PipelineError  # noqa: E402
from foundation.io import sha256_file  # noqa: E402
from runtimes.base import get_runtime  # noqa: E402
from runtimes.formats import DEVICE_BACKENDS, MASK_OUTPUT  # noqa: E402
from runtimes.image import read_image as _read_image  # noqa: E402
from runtimes.predict import segment_to_files  # noqa: E402
from runtimes.processing import Processing  # noqa: E402

BACKENDS = DEVICE_BACKENDS  # the --backend choices of the scripts
log = logging.getLogger("bundle")


def check_engine_source(sidecar: Mapping[str, Any], onnx_sha256: str, engine: Path, onnx_rel: str) -> None:
    """Refuse a stale engine: one whose sidecar says it was built from another ONNX than the bundle's.

    Args:
        sidecar: the engine's sidecar (``source_sha256``: the sha256 of the ONNX it was built from).
        onnx_sha256: the sha256 of the bundle's ONNX for that precision.
        engine: the engine (for the message).
        onnx_rel: the ONNX's path in the bundle (for the message).

    Raises:
        ArtifactError: the sidecar names another source ONNX.
    """
    built_from = sidecar.get("source_sha256")
    if not built_from:
        log.warning(
            "engine %s: its sidecar records no source_sha256; cannot check it was built from %s", engine, onnx_rel
        )
        return
    if str(built_from) != onnx_sha256:
        raise ArtifactError(
            f"engine {engine} is stale: it was built from an ONNX with sha256 {str(built_from)[:16]}... but this "
            f"bundle's {onnx_rel} has sha256 {onnx_sha256[:16]}...; rebuild the engines with ./build_engine.sh"
        )


class Bundle:
    """A deploy bundle folder: ``metadata.json``, models, tokenizer, golden files and these scripts."""

    def __init__(self, root: Path):
        self.root = Path(root)
        path = self.root / "metadata.json"
        if not path.is_file():
            raise ArtifactError(f"{path} is missing: is {self.root} an unpacked deploy bundle?")
        try:
            self.meta: dict[str, Any] = json.loads(path.read_text())
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise ArtifactError(f"{path} is truncated or corrupt ({exc}); re-copy the bundle") from exc
        self._sums: dict[str, str] | None = None

    @classmethod
    def here(cls) -> Bundle:
        return cls(HERE)

    @property
    def precisions(self) -> list[str]:
        """The bundle's precisions, the device profile's deployed one first (the scripts' default)."""
        deployed = (self.meta.get("device") or {}).get("precision")
        return sorted(self.meta["models"], key=lambda p: p != deployed)  # stable: the others keep their order

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

    def golden_outputs(self, backend: str, precision: str) -> Path:
        """The host's golden outputs a backend is compared with: those of the same model file (a TensorRT engine is
        built from the ONNX, so it is compared with ONNX Runtime's outputs of that ONNX)."""
        golden = self.model_entry(precision)["golden_outputs"]
        key = "openvino" if backend == "openvino" else "onnx"
        if key not in golden:
            raise ArtifactError(f"the {precision} model has no golden outputs for {backend} (it has {sorted(golden)})")
        return Path(golden[key])

    def runtime(self, backend: str, precision: str, threads: int | None = None) -> Any:
        """Load a model after checking its files against ``SHA256SUMS`` and its description against the bundle's.

        Raises:
            ArtifactError: a model file is truncated or changed, or the model is not the one this bundle describes.
        """
        path = self.artifact(backend, precision)
        companion = {".xml": path.with_suffix(".bin"), ".onnx": path.with_name(path.name + ".data")}.get(path.suffix)
        for part in (path, companion):
            if part is not None:
                self.check_file(part)
        if backend == "tensorrt":
            self.check_engine_fresh(precision, path)
        device = "GPU" if backend == "tensorrt" else "CPU"
        rt = get_runtime(backend).load(path, device=device, threads=threads)
        self.check_same_model(rt.metadata, path)
        return rt

    def checksums(self) -> dict[str, str]:
        """``SHA256SUMS`` as ``{relative path: sha256}`` (empty when the bundle has no list)."""
        if self._sums is None:
            sums = self.root / "SHA256SUMS"
            lines = sums.read_text().splitlines() if sums.is_file() else []
            self._sums = {rel: digest for digest, _, rel in (line.partition("  ") for line in lines) if rel}
        return self._sums

    def check_file(self, path: Path) -> None:
        """Refuse a file whose sha256 differs from its ``SHA256SUMS`` line (files the list lacks are not checked)."""
        sums = self.checksums()
        try:
            rel = path.relative_to(self.root).as_posix()
        except ValueError:  # not inside the bundle: nothing to check against
            return
        if rel not in sums:
            return
        if not path.is_file():
            raise ArtifactError(f"{path} is missing from the bundle (SHA256SUMS lists it); re-copy the bundle")
        digest = sha256_file(path)
        if digest != sums[rel]:
            raise ArtifactError(
                f"{path} is truncated or corrupt: sha256 {digest[:16]}... but SHA256SUMS says "
                f"{sums[rel][:16]}...; re-copy the bundle (sha256sum -c SHA256SUMS shows every bad file)"
            )

    def onnx_sha256(self, precision: str) -> tuple[str, str]:
        """``(path in the bundle, sha256)`` of a precision's ONNX: its ``SHA256SUMS`` entry, else computed.

        Raises:
            ArtifactError: the model has no ONNX, or the ONNX is missing.
        """
        entry = self.model_entry(precision)
        rel = entry.get("onnx")
        if not rel:
            raise ArtifactError(f"the {precision} model has no ONNX in this bundle (it has {entry})")
        listed = self.checksums().get(rel)
        if listed:
            return rel, listed
        path = self.root / rel
        if not path.is_file():
            raise ArtifactError(f"{path} is missing from the bundle; re-copy the bundle")
        return rel, sha256_file(path)

    def check_engine_fresh(self, precision: str, engine: Path) -> None:
        """Refuse an engine built from another ONNX than this bundle's for ``precision`` (see
        :func:`check_engine_source`); the sidecar must exist (``runtimes.tensorrt_rt.read_sidecar``)."""
        from runtimes.tensorrt_rt import read_sidecar

        rel, digest = self.onnx_sha256(precision)
        check_engine_source(read_sidecar(engine), digest, engine, rel)

    def check_same_model(self, metadata: dict[str, Any], path: Path) -> None:
        """Refuse a model of another variant or checkpoint, or one that needs other pre-processing than the bundle."""
        mine = self.meta["description"]
        for key in ("variant", "checkpoint_sha256"):
            if mine.get(key) is not None and metadata.get(key) is not None and mine[key] != metadata[key]:
                raise ArtifactError(
                    f"{path} is a model of {key} {metadata[key]!r} but this bundle describes {key} {mine[key]!r}; "
                    "it does not belong to this bundle (rebuild the bundle with the pipeline)"
                )
        theirs = Processing.from_metadata(metadata).signature()
        if theirs != self.processing().signature():
            raise ArtifactError(
                f"{path} expects inputs {theirs} (size, tokens, mean, std, threshold) but this bundle prepares "
                f"{self.processing().signature()}; it does not belong to this bundle"
            )

    def processing(self) -> Processing:
        return Processing.from_metadata(self.meta["description"], tokenizer_dir=self.root / "tokenizer")


def read_image(path: str | Path) -> np.ndarray:
    """uint8 RGB [H, W, 3] from an image file, exactly as the host reads it (grey, 16-bit, palette, RGBA converted).

    Raises:
        DataError: the file is missing, not a readable image, or over the pixel limit (``S2RM_MAX_IMAGE_PIXELS``).
    """
    return _read_image(path)


def fail(exc: Exception) -> int:
    print(f"error: {exc}", file=sys.stderr)
    return 2


__all__ = [
    "BACKENDS",
    "ArtifactError",
    "MASK_OUTPUT",
    "Bundle",
    "PipelineError",
    "check_engine_source",
    "fail",
    "read_image",
    "segment_to_files",
]
