"""Faithful fakes of TensorRT's Python API (8.5, 10.3, 10.16, 11) and of cuda-python, for CPU tests.

Usage (in a test)::

    env = install(monkeypatch, "8.5", dla_cores=2)   # sys.modules["tensorrt"], ["cuda..."]; pycuda made missing
    build_engine(onnx_path, engine_path, settings)   # the project's code, unchanged, against the fake
    plan_of(engine_path.read_bytes())["layers"]      # what the build configured

Each fake carries the names and signatures its version has and none it lacks (:mod:`.api` lists them with their
sources), so a call the version lacks fails the test with AttributeError, and a wrong argument with TypeError.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from typing import Any

from .api import VERSIONS, ApiVersion
from .builder import PLAN_MAGIC, plan_of
from .cuda import FakeDevice, cuda_python_modules
from .trt import make_tensorrt

__all__ = ["VERSIONS", "ApiVersion", "FakeDevice", "FakeEnv", "PLAN_MAGIC", "install", "make_tensorrt", "plan_of"]

# The device each API version ships on (JetPack 5.1: Xavier NX; 6.2: Orin Nano; 7.2: Orin; 7.2.2: AGX Orin) and the
# cuda-python layout pip gives there (JetPack 5's CUDA 11.4 needs cuda-python 11.8, which has only ``cuda.cudart``).
DEFAULT_DEVICES: dict[str, dict[str, Any]] = {
    "8.5": {"name": "Xavier", "compute_capability": (7, 2), "dla_cores": 2, "cuda_layout": "cudart"},
    "10.3": {"name": "Orin", "compute_capability": (8, 7), "dla_cores": 0, "cuda_layout": "bindings"},
    "10.16": {"name": "Orin", "compute_capability": (8, 7), "dla_cores": 0, "cuda_layout": "bindings"},
    "11": {"name": "Orin", "compute_capability": (8, 7), "dla_cores": 2, "cuda_layout": "bindings"},
}


@dataclass
class FakeEnv:
    """What :func:`install` put in place."""

    api: ApiVersion
    trt: Any
    device: FakeDevice

    def errors(self) -> list[str]:
        """TensorRT ERROR messages logged so far."""
        return [msg for severity, msg in self.trt._messages if severity in ("ERROR", "INTERNAL_ERROR")]


def install(monkeypatch: Any, version: str, **device: Any) -> FakeEnv:
    """Put a fake ``tensorrt`` of ``version`` and cuda-python over one fake GPU into ``sys.modules``.

    Args:
        monkeypatch: pytest's fixture (everything is undone after the test).
        version: a key of :data:`VERSIONS` (``"8.5"``, ``"10.3"``, ``"10.16"``, ``"11"``).
        device: overrides of :data:`DEFAULT_DEVICES` (``name``, ``compute_capability``, ``dla_cores``,
            ``cuda_layout``, ``insufficient_driver``).
    """
    if version not in VERSIONS:
        raise KeyError(f"no fake TensorRT {version!r}; valid: {', '.join(VERSIONS)}")
    spec = {**DEFAULT_DEVICES[version], **device}
    layout = spec.pop("cuda_layout")
    gpu = FakeDevice(**spec)
    trt = make_tensorrt(VERSIONS[version], gpu)
    monkeypatch.setitem(sys.modules, "tensorrt", trt)
    for name, module in cuda_python_modules(gpu, layout).items():
        monkeypatch.setitem(sys.modules, name, module)
    for name in ("pycuda", "pycuda.driver", "pycuda.autoinit"):
        monkeypatch.setitem(sys.modules, name, None)  # the fakes are the only CUDA backend
    return FakeEnv(VERSIONS[version], trt, gpu)
