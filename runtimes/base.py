"""The ``Runtime`` protocol, the runtime registry and the self-description every artifact carries.

Usage: ``rt = get_runtime("onnxruntime").load("model.onnx", threads=2); out = rt.infer({"image": x, ...})``.

Every exported artifact stores its description (I/O names, shapes and dtypes, normalization, tokenizer, threshold,
variant, config hash) as flat string key/values: ONNX ``metadata_props``, OpenVINO ``rt_info`` under ``s2rm`` and the
JSON sidecar of a TensorRT engine. Values are JSON. :func:`encode_metadata` / :func:`decode_metadata` are the only
codec, so a runtime on a robot needs numpy and its backend, never torch or the training code.
"""

from __future__ import annotations

import importlib
import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, runtime_checkable

import numpy as np

from foundation.errors import ArtifactError, RuntimeUnavailable, choice_error
from runtimes.formats import BACKENDS

# Key of the metadata namespace inside OpenVINO rt_info, and the format version of the description.
RT_INFO_ROOT = "s2rm"
METADATA_VERSION = "1"
# Token inputs are int32 in every artifact: TensorRT 8.x binds INT64 I/O as INT32 and 9+ needs INT64 bindings for
# INT64 I/O, so int32 is the one type that means the same everywhere. The graph casts to int64 inside.
TOKEN_DTYPE = "int32"


@dataclass(frozen=True)
class TensorSpec:
    """One named graph input or output: static shape and numpy dtype name."""

    name: str
    shape: tuple[int, ...]
    dtype: str

    def to_dict(self) -> dict[str, Any]:
        return {"shape": list(self.shape), "dtype": self.dtype}


def encode_metadata(meta: dict[str, Any]) -> dict[str, str]:
    """Flatten a description into string values (JSON) for ONNX metadata_props / rt_info / sidecars."""
    return {str(k): json.dumps(v, default=str) for k, v in meta.items()}  # key order kept: I/O order matters


def decode_metadata(props: dict[str, str]) -> dict[str, Any]:
    """Inverse of :func:`encode_metadata`; values that are not JSON (written by other tools) stay strings."""
    out: dict[str, Any] = {}
    for key, value in props.items():
        try:
            out[key] = json.loads(value)
        except (TypeError, json.JSONDecodeError):
            out[key] = value
    return out


def tensor_specs(meta: dict[str, Any], key: str, artifact: str | Path) -> dict[str, TensorSpec]:
    """The ordered ``inputs`` or ``outputs`` of a decoded description."""
    entries = meta.get(key)
    if not isinstance(entries, dict) or not entries:
        raise ArtifactError(
            f"artifact {artifact} has no {key!r} description in its metadata; re-export it with runtimes.export "
            f"(keys present: {sorted(meta) or 'none'})"
        )
    return {name: TensorSpec(name, tuple(int(d) for d in e["shape"]), str(e["dtype"])) for name, e in entries.items()}


def prepare_feeds(feeds: dict[str, np.ndarray], inputs: dict[str, TensorSpec], artifact: str | Path) -> dict[str, Any]:
    """Check names and shapes against the artifact and cast dtypes (int64 token ids become int32, etc.)."""
    missing = [n for n in inputs if n not in feeds]
    if missing:
        raise ArtifactError(
            f"inputs {missing} missing for {artifact}; it takes {[f'{s.name}{list(s.shape)}' for s in inputs.values()]}"
        )
    out = {}
    for name, spec in inputs.items():
        arr = np.asarray(feeds[name])
        if tuple(arr.shape) != spec.shape:
            raise ArtifactError(
                f"input {name!r} of {artifact} must have shape {list(spec.shape)}, got {list(arr.shape)}"
            )
        out[name] = np.ascontiguousarray(arr, dtype=np.dtype(spec.dtype))
    return out


class RuntimeBase:
    """The state every runtime keeps once :meth:`Runtime.load` has bound it to an artifact (empty until then)."""

    def __init__(self) -> None:
        self.inputs: dict[str, TensorSpec] = {}
        self.outputs: dict[str, TensorSpec] = {}
        self.metadata: dict[str, Any] = {}
        self.artifact: Path | None = None


@runtime_checkable
class Runtime(Protocol):
    """An inference backend bound to one artifact after :meth:`load`.

    Attributes:
        name: registry name.
        install_hint: what to install when :meth:`is_available` is False.
        inputs: ordered input specs read from the artifact's metadata (set by :meth:`load`).
        outputs: ordered output specs.
        metadata: the artifact's decoded description.
    """

    name: str
    install_hint: str
    inputs: dict[str, TensorSpec]
    outputs: dict[str, TensorSpec]
    metadata: dict[str, Any]

    def is_available(self) -> bool:
        """True when the backend package imports here (no device check)."""
        ...

    def load(self, artifact_path: str | Path, device: str = "CPU", threads: int | None = None) -> Runtime:
        """Load and compile the artifact; returns ``self``. Raises RuntimeUnavailable or ArtifactError."""
        ...

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run one batch: named inputs in, named outputs out."""
        ...


# name -> "module:Class", from the backend table (runtimes.formats). Modules are imported on first use, so listing
# runtimes never imports torch or a backend.
RUNTIMES: dict[str, str] = {b.name: b.target for b in BACKENDS}


def register_runtime(name: str, target: str) -> None:
    """Register (or replace) a runtime as ``"package.module:ClassName"``."""
    if ":" not in target:
        raise ValueError(f"runtime target {target!r} must look like 'package.module:ClassName'")
    RUNTIMES[name] = target


def get_runtime(name: str) -> Runtime:
    """A fresh, unloaded runtime instance by registry name.

    Raises:
        ConfigError: unknown name (the message lists the valid ones).
        RuntimeUnavailable: the runtime's module is not part of this checkout.
    """
    if name not in RUNTIMES:
        raise choice_error("runtime", name, RUNTIMES)
    module_name, cls_name = RUNTIMES[name].split(":")
    if importlib.util.find_spec(module_name) is None:
        raise RuntimeUnavailable(f"runtime {name!r}: module {module_name} is not part of this installation")
    return getattr(importlib.import_module(module_name), cls_name)()


def available_runtimes() -> dict[str, bool]:
    """Every registered runtime and whether its backend imports here."""
    status = {}
    for name in RUNTIMES:
        try:
            status[name] = get_runtime(name).is_available()
        except RuntimeUnavailable:
            status[name] = False
    return status


def require(module: str, runtime: str, hint: str) -> Any:
    """Import a backend module or raise RuntimeUnavailable with the install hint."""
    try:
        return importlib.import_module(module)
    except ImportError as exc:
        raise RuntimeUnavailable(f"runtime {runtime!r} needs {module} ({exc}); install it: {hint}") from exc
