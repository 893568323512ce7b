"""ONNX Runtime backend: CPU by default, CUDA / TensorRT execution providers when present. No torch here.

Usage: ``rt = get_runtime("onnxruntime").load("model.onnx", device="CPU", threads=2); rt.infer(feeds)``.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from foundation.errors import ArtifactError, RuntimeUnavailable, choice_error
from runtimes.base import RuntimeBase, TensorSpec, decode_metadata, prepare_feeds, require, tensor_specs

UNFUSED_QDQ = "session.disable_quant_qdq"  # session config entry: keep Q/DQ pairs as nodes (no QLinear* fusion)

INSTALL_HINT = "pip install onnxruntime (CPU) or onnxruntime-gpu (CUDA / TensorRT execution providers)"
# device name -> execution providers in priority order (CPU always last so unsupported nodes still run).
PROVIDERS = {
    "CPU": ["CPUExecutionProvider"],
    "CUDA": ["CUDAExecutionProvider", "CPUExecutionProvider"],
    "TENSORRT": ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"],
}
# Session config entries that decide how the thread pools wait for work; ``settings`` always reports them.
SPIN_KEYS = ("session.intra_op.allow_spinning", "session.inter_op.allow_spinning", "session.force_spinning_stop")


class OnnxRuntime(RuntimeBase):
    """Runs an exported ``.onnx`` (FP32, FP16 or Q/DQ INT8) with ONNX Runtime."""

    name = "onnxruntime"
    install_hint = INSTALL_HINT

    def __init__(self) -> None:
        super().__init__()
        self._session: Any = None
        self.settings: dict[str, Any] = {}

    def is_available(self) -> bool:
        return importlib.util.find_spec("onnxruntime") is not None

    def load(
        self,
        artifact_path: str | Path,
        device: str = "CPU",
        threads: int | None = None,
        options: dict[str, str] | None = None,
    ) -> OnnxRuntime:
        """Create the inference session and read the artifact's description.

        Args:
            artifact_path: an ``.onnx`` file written by :mod:`runtimes.export` or :mod:`quantize`.
            device: ``CPU``, ``CUDA`` or ``TENSORRT`` (execution provider family).
            threads: intra-op threads (default: ONNX Runtime's choice).
            options: extra session config entries (``SessionOptions.add_session_config_entry``), e.g.
                ``{"session.force_spinning_stop": "1"}``.

        After loading, :attr:`settings` holds the thread counts, execution mode, providers and the config entries of
        :data:`SPIN_KEYS` and ``options`` as the session got them (``"default"`` for an entry left unset).
        """
        ort = require("onnxruntime", self.name, INSTALL_HINT)
        path = Path(artifact_path)
        if not path.is_file():
            raise ArtifactError(f"ONNX artifact {path} does not exist")
        key = device.upper()
        if key not in PROVIDERS:
            raise choice_error("onnxruntime device", device, PROVIDERS)
        wanted = PROVIDERS[key]
        have = set(ort.get_available_providers())
        if wanted[0] not in have:
            raise RuntimeUnavailable(
                f"onnxruntime has no {wanted[0]} here (available: {sorted(have)}); "
                "install onnxruntime-gpu on a CUDA host"
            )
        opts = ort.SessionOptions()
        if threads:
            opts.intra_op_num_threads = int(threads)
            opts.inter_op_num_threads = 1
        for key, value in (options or {}).items():
            opts.add_session_config_entry(str(key), str(value))
        providers = [p for p in wanted if p in have]
        self._session = _session(ort, path, opts, providers)
        self.metadata = decode_metadata(dict(self._session.get_modelmeta().custom_metadata_map))
        quant = self.metadata.get("quantization")
        if isinstance(quant, dict) and quant.get("float_remainder") == "fp16" and UNFUSED_QDQ not in (options or {}):
            # a Q/DQ graph with an FP16 remainder (TensorRT 11's strongly typed INT8): ONNX Runtime's QLinear fusions
            # of FP16-scaled Q/DQ pairs measure worse than the graph is, or do not load; run the Q/DQ pairs as written
            opts.add_session_config_entry(UNFUSED_QDQ, "1")
            options = {**(options or {}), UNFUSED_QDQ: "1"}
            self._session = _session(ort, path, opts, providers)
        self.artifact = path
        self.settings = _settings(opts, self._session, options or {})
        if "inputs" in self.metadata:
            self.inputs = tensor_specs(self.metadata, "inputs", path)
            self.outputs = tensor_specs(self.metadata, "outputs", path)
        else:  # a foreign ONNX file: fall back to the graph's own I/O (static shapes only)
            self.inputs = {i.name: _spec(i) for i in self._session.get_inputs()}
            self.outputs = {o.name: _spec(o) for o in self._session.get_outputs()}
        return self

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if self._session is None:
            raise ArtifactError("onnxruntime runtime: call load() before infer()")
        prepared = prepare_feeds(feeds, self.inputs, self.artifact)
        names = list(self.outputs)
        values = self._session.run(names, prepared)
        return {
            n: np.asarray(v, dtype=np.float32) if v.dtype == np.float16 else v
            for n, v in zip(names, values)  # one value per requested name (no strict=: Python 3.8 on JetPack 5)
        }


def _session(ort: Any, path: Path, opts: Any, providers: list[str]) -> Any:
    try:
        return ort.InferenceSession(str(path), opts, providers=providers)
    except Exception as exc:  # ORT raises its own exception types (Fail, InvalidGraph, ...)
        raise ArtifactError(f"onnxruntime cannot load {path}: {exc}") from exc


_ORT_TYPES = {
    "tensor(float)": "float32",
    "tensor(float16)": "float16",
    "tensor(int32)": "int32",
    "tensor(int64)": "int64",
    "tensor(bool)": "bool",
    "tensor(uint8)": "uint8",
}


def _settings(opts: Any, session: Any, options: dict[str, str]) -> dict[str, Any]:
    config = {}
    for key in dict.fromkeys([*SPIN_KEYS, *options]):
        try:
            config[key] = opts.get_session_config_entry(key)
        except RuntimeError:  # ORT raises for an entry that was never set: the runtime's default applies
            config[key] = "default"
    return {
        "intra_op_num_threads": opts.intra_op_num_threads or "default",
        "inter_op_num_threads": opts.inter_op_num_threads or "default",
        "execution_mode": opts.execution_mode.name,
        "providers": list(session.get_providers()),
        "config": config,
    }


def _spec(arg: Any) -> TensorSpec:
    shape = tuple(d if isinstance(d, int) else -1 for d in arg.shape)
    return TensorSpec(arg.name, shape, _ORT_TYPES.get(arg.type, "float32"))
