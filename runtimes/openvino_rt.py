"""OpenVINO backend: runs IR (``.xml`` + ``.bin``) or ONNX on CPU / GPU / NPU. No torch here.

Usage: ``rt = get_runtime("openvino").load("model.xml", device="CPU", threads=2); rt.infer(feeds)``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from foundation.errors import ArtifactError, RuntimeUnavailable
from runtimes.base import RT_INFO_ROOT, RuntimeBase, TensorSpec, decode_metadata, prepare_feeds, require, tensor_specs

INSTALL_HINT = "pip install openvino"
# Compiled-model properties that decide how inference threads are scheduled; ``settings`` always reports them.
SCHEDULING_PROPERTIES = (
    "PERFORMANCE_HINT",
    "INFERENCE_NUM_THREADS",
    "NUM_STREAMS",
    "ENABLE_CPU_PINNING",
    "SCHEDULING_CORE_TYPE",
    "ENABLE_HYPER_THREADING",
    "INFERENCE_PRECISION_HINT",
)


def read_rt_info(model: Any) -> dict[str, Any]:
    """The artifact description stored under ``rt_info/s2rm`` of an ``openvino.Model`` (empty when absent)."""
    if not model.has_rt_info([RT_INFO_ROOT]):
        return {}
    raw = model.get_rt_info([RT_INFO_ROOT]).astype(dict)
    return decode_metadata({k: v.astype(str) if hasattr(v, "astype") else str(v) for k, v in raw.items()})


class OpenVINORuntime(RuntimeBase):
    """Runs an OpenVINO IR (FP32 or NNCF INT8) compiled for latency.

    Args:
        inference_precision: OpenVINO's ``INFERENCE_PRECISION_HINT`` for the float parts. ``f32`` by default: on CPUs
            with BF16 support (AMX / AVX512-BF16) OpenVINO otherwise computes in bf16, which moved the tiny model's
            logits by ~1e-3 here; pass ``None`` for OpenVINO's own choice (faster there, not FP32 numerics).
    """

    name = "openvino"
    install_hint = INSTALL_HINT

    def __init__(self, inference_precision: str | None = "f32") -> None:
        self.inference_precision = inference_precision
        super().__init__()
        self._request: Any = None
        self.settings: dict[str, Any] = {}

    def is_available(self) -> bool:
        return importlib.util.find_spec("openvino") is not None

    def load(
        self,
        artifact_path: str | Path,
        device: str = "CPU",
        threads: int | None = None,
        options: dict[str, Any] | None = None,
    ) -> OpenVINORuntime:
        """Read and compile the model.

        Args:
            artifact_path: ``.xml`` IR (or ``.onnx``) written by this project.
            device: an OpenVINO device (``CPU``, ``GPU``, ``NPU``, ``AUTO``).
            threads: inference threads on CPU (default: OpenVINO's choice).
            options: extra compile properties, applied last (e.g. ``{"ENABLE_CPU_PINNING": False}``).

        After loading, :attr:`settings` holds the compiled model's values of :data:`SCHEDULING_PROPERTIES` and of
        ``options`` (None for a property the device does not report).

        Raises:
            ArtifactError: the file is missing or unreadable, or the device rejects it or a property.
        """
        ov = require("openvino", self.name, INSTALL_HINT)
        path = Path(artifact_path)
        if not path.is_file():
            raise ArtifactError(f"OpenVINO artifact {path} does not exist")
        core = ov.Core()
        base = device.upper().split(".")[0]
        if base not in ("AUTO", "HETERO", "MULTI") and base not in {d.split(".")[0] for d in core.available_devices}:
            raise RuntimeUnavailable(
                f"OpenVINO device {device!r} is not present here; available: {core.available_devices}"
            )
        try:
            model = core.read_model(str(path))
        except Exception as exc:  # OpenVINO raises RuntimeError subclasses with the parser's message
            raise ArtifactError(f"OpenVINO cannot read {path}: {exc}") from exc
        meta = read_rt_info(model)
        if not meta and path.suffix == ".onnx":  # an ONNX read directly: its metadata_props are not in rt_info
            meta = _onnx_metadata(path)
        config: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}
        if self.inference_precision and base in ("CPU", "GPU"):
            config["INFERENCE_PRECISION_HINT"] = self.inference_precision
        if threads and base == "CPU":
            config["INFERENCE_NUM_THREADS"] = int(threads)
        config.update(options or {})
        try:
            compiled = core.compile_model(model, device.upper(), config)
        except Exception as exc:  # an unsupported property or layer: OpenVINO's RuntimeError names it
            raise ArtifactError(f"OpenVINO cannot compile {path} for {device} with {config}: {exc}") from exc
        self.settings = {k: _property(compiled, k) for k in dict.fromkeys([*SCHEDULING_PROPERTIES, *(options or {})])}
        self._request = compiled.create_infer_request()
        self.artifact, self.metadata = path, meta
        if "inputs" in meta:
            self.inputs = tensor_specs(meta, "inputs", path)
            self.outputs = tensor_specs(meta, "outputs", path)
        else:
            self.inputs = {p.get_any_name(): _spec(p) for p in model.inputs}
            self.outputs = {p.get_any_name(): _spec(p) for p in model.outputs}
        return self

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._request is None:
            raise ArtifactError("openvino runtime: call load() before infer()")
        prepared = prepare_feeds(feeds, self.inputs, self.artifact)
        results = self._request.infer(prepared)
        by_name = {}
        for port, value in results.items():
            for name in port.get_names():
                by_name[name] = value
        return {n: np.array(by_name[n], copy=True) for n in self.outputs}


def _property(compiled: Any, key: str) -> Any:
    """A compiled model's property as a JSON-ready value (enums by name, element types as ``f32``/``bf16``)."""
    try:
        value = compiled.get_property(key)
    except RuntimeError:  # not reported by this device
        return None
    if isinstance(value, (bool, int, float, str)):
        return value
    if hasattr(value, "get_type_name"):  # openvino.Type
        return value.get_type_name()
    return getattr(value, "name", None) or str(value)


def _spec(port: Any) -> TensorSpec:
    shape = tuple(d.get_length() if d.is_static else -1 for d in port.get_partial_shape())
    return TensorSpec(port.get_any_name(), shape, port.get_element_type().to_dtype().name)


def _onnx_metadata(path: Path) -> dict[str, Any]:
    try:
        import onnx
    except ImportError:
        return {}
    model = onnx.load(str(path), load_external_data=False)
    return decode_metadata({p.key: p.value for p in model.metadata_props})
