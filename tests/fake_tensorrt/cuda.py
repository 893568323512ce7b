"""A fake GPU and the slice of cuda-python's runtime API that the project calls, backed by host memory.

Usage: ``device = FakeDevice("Orin", (8, 7), dla_cores=0); modules = cuda_python_modules(device, "bindings")``, then put
``modules`` into ``sys.modules`` (see :func:`tests.fake_tensorrt.install`).

Device memory is host memory that only the fake knows about: :meth:`FakeDevice.malloc` hands out the address of a
private buffer, ``cudaMemcpyAsync`` checks that the device side of every copy lies inside a live allocation (and that
the direction matches the ``cudaMemcpyKind``), and the fake TensorRT engine reads and writes tensors through
:meth:`FakeDevice.view`. A copy into a freed, unknown or too small allocation fails the way CUDA fails, with
``cudaErrorInvalidValue``, so a wrong size or a stale pointer in the runtime fails a test instead of corrupting memory.

What the fake models of cuda-python (checked against its documentation): every call returns a tuple whose first item
is a ``cudaError_t`` (``cudaSuccess`` is 0) followed by the outputs; ``cudaStream_t`` converts with ``int()``;
``cudaDeviceProp.name`` is ``bytes``; ``cudaMemcpyKind.cudaMemcpyHostToDevice`` is 1 and ``...DeviceToHost`` is 2.
Layouts: ``"bindings"`` is ``cuda.bindings.runtime`` (cuda-python 12.6 and later, 13.x); ``"cudart"`` is the older
``from cuda import cudart`` (cuda-python 11.8 for JetPack 5's CUDA 11.4), where ``cuda.bindings`` does not exist.
"""

from __future__ import annotations

import ctypes
import enum
import types
from dataclasses import dataclass, field

import numpy as np


class cudaError_t(enum.IntEnum):  # noqa: N801  (cuda-python's spelling)
    cudaSuccess = 0
    cudaErrorInvalidValue = 1
    cudaErrorMemoryAllocation = 2
    cudaErrorInsufficientDriver = 35
    cudaErrorInvalidResourceHandle = 400


class cudaMemcpyKind(enum.IntEnum):  # noqa: N801
    cudaMemcpyHostToHost = 0
    cudaMemcpyHostToDevice = 1
    cudaMemcpyDeviceToHost = 2
    cudaMemcpyDeviceToDevice = 3


_ERROR_STRINGS = {
    cudaError_t.cudaSuccess: b"no error",
    cudaError_t.cudaErrorInvalidValue: b"invalid argument",
    cudaError_t.cudaErrorMemoryAllocation: b"out of memory",
    cudaError_t.cudaErrorInsufficientDriver: b"CUDA driver version is insufficient for CUDA runtime version",
    cudaError_t.cudaErrorInvalidResourceHandle: b"invalid resource handle",
}


class cudaStream_t:  # noqa: N801
    """A stream handle; ``int(stream)`` is what TensorRT's ``execute_async_v3`` takes."""

    def __init__(self, handle: int) -> None:
        self._handle = handle

    def __int__(self) -> int:
        return self._handle

    def getPtr(self) -> int:  # noqa: N802  (cuda-python's spelling)
        return self._handle


@dataclass
class cudaDeviceProp:  # noqa: N801
    name: bytes
    major: int
    minor: int


@dataclass
class FakeDevice:
    """One GPU (plus its DLA cores) whose memory lives in host buffers.

    Attributes:
        name: what ``cudaGetDeviceProperties`` reports (``"Orin"``, ``"Xavier"``).
        compute_capability: ``(major, minor)``.
        dla_cores: DLA cores TensorRT's builder and runtime report.
        insufficient_driver: every call fails like a cuda-python wheel newer than the driver.
    """

    name: str = "Orin"
    compute_capability: tuple[int, int] = (8, 7)
    dla_cores: int = 0
    insufficient_driver: bool = False
    allocations: dict[int, np.ndarray] = field(default_factory=dict)
    streams: set[int] = field(default_factory=set)
    freed: list[int] = field(default_factory=list)
    copies: list[tuple[str, int]] = field(default_factory=list)

    @property
    def cc(self) -> str:
        return f"{self.compute_capability[0]}.{self.compute_capability[1]}"

    def malloc(self, nbytes: int) -> int:
        buf = np.zeros(max(1, int(nbytes)), np.uint8)
        ptr = int(buf.ctypes.data)
        self.allocations[ptr] = buf
        return ptr

    def free(self, ptr: int) -> bool:
        if int(ptr) not in self.allocations:
            return False
        del self.allocations[int(ptr)]
        self.freed.append(int(ptr))
        return True

    def find(self, ptr: int, nbytes: int) -> np.ndarray | None:
        """The allocation holding ``[ptr, ptr + nbytes)``, None when no live allocation does."""
        ptr = int(ptr)
        for base, buf in self.allocations.items():
            if base <= ptr and ptr + nbytes <= base + buf.nbytes:
                return buf
        return None

    def view(self, ptr: int, shape: tuple[int, ...], dtype: np.dtype) -> np.ndarray:
        """The device bytes at ``ptr`` as an array (what the fake engine reads and writes)."""
        dtype = np.dtype(dtype)
        nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        buf = self.find(ptr, nbytes)
        if buf is None:
            raise ValueError(f"address {ptr:#x} ({nbytes} bytes) is not inside a live device allocation")
        start = int(ptr) - int(buf.ctypes.data)
        return buf[start : start + nbytes].view(dtype).reshape(shape)


class CudaRuntimeApi:
    """The cuda-python runtime calls over one :class:`FakeDevice`; each bound method is one function of the module."""

    FUNCTIONS = (
        "cudaGetErrorString",
        "cudaStreamCreate",
        "cudaStreamSynchronize",
        "cudaGetDevice",
        "cudaGetDeviceProperties",
        "cudaMalloc",
        "cudaFree",
        "cudaMemcpyAsync",
    )

    def __init__(self, device: FakeDevice) -> None:
        self.device = device

    def _old_driver(self) -> cudaError_t | None:
        return cudaError_t.cudaErrorInsufficientDriver if self.device.insufficient_driver else None

    def cudaGetErrorString(self, error):  # noqa: N802
        return cudaError_t.cudaSuccess, _ERROR_STRINGS.get(cudaError_t(int(error)), b"unknown error")

    def cudaStreamCreate(self):  # noqa: N802
        err = self._old_driver()
        if err is not None:
            return err, None
        handle = 0x5000 + len(self.device.streams) + 1
        self.device.streams.add(handle)
        return cudaError_t.cudaSuccess, cudaStream_t(handle)

    def cudaStreamSynchronize(self, stream):  # noqa: N802
        if int(stream) in self.device.streams:
            return (cudaError_t.cudaSuccess,)
        return (cudaError_t.cudaErrorInvalidResourceHandle,)

    def cudaGetDevice(self):  # noqa: N802
        err = self._old_driver()
        return (err, 0) if err is not None else (cudaError_t.cudaSuccess, 0)

    def cudaGetDeviceProperties(self, device_id):  # noqa: N802
        err = self._old_driver()
        if err is not None:
            return err, None
        if int(device_id) != 0:
            return cudaError_t.cudaErrorInvalidValue, None
        device = self.device
        return cudaError_t.cudaSuccess, cudaDeviceProp(device.name.encode() + b"\x00" * 4, *device.compute_capability)

    def cudaMalloc(self, size):  # noqa: N802
        return cudaError_t.cudaSuccess, self.device.malloc(int(size))

    def cudaFree(self, devPtr):  # noqa: N802, N803
        return (cudaError_t.cudaSuccess,) if self.device.free(int(devPtr)) else (cudaError_t.cudaErrorInvalidValue,)

    def cudaMemcpyAsync(self, dst, src, count, kind, stream):  # noqa: N802
        device = self.device
        kind = cudaMemcpyKind(int(kind))
        if int(stream) not in device.streams:
            return (cudaError_t.cudaErrorInvalidResourceHandle,)
        if kind == cudaMemcpyKind.cudaMemcpyHostToDevice:
            device_side, host_side = int(dst), int(src)
        elif kind == cudaMemcpyKind.cudaMemcpyDeviceToHost:
            device_side, host_side = int(src), int(dst)
        else:
            return (cudaError_t.cudaErrorInvalidValue,)
        if device.find(device_side, int(count)) is None or device.find(host_side, 1) is not None:
            return (cudaError_t.cudaErrorInvalidValue,)  # device side not allocated, or host side is device memory
        ctypes.memmove(int(dst), int(src), int(count))
        device.copies.append((kind.name, int(count)))
        return (cudaError_t.cudaSuccess,)


def cuda_python_modules(device: FakeDevice, layout: str = "bindings") -> dict[str, types.ModuleType | None]:
    """``sys.modules`` entries for cuda-python over ``device`` (None entries make that import fail).

    Args:
        device: the fake GPU.
        layout: ``"bindings"`` (``cuda.bindings.runtime``) or ``"cudart"`` (``from cuda import cudart`` only).
    """
    rt = types.ModuleType("cuda.bindings.runtime" if layout == "bindings" else "cuda.cudart")
    api = CudaRuntimeApi(device)
    for name in CudaRuntimeApi.FUNCTIONS:
        setattr(rt, name, getattr(api, name))
    rt.cudaError_t, rt.cudaMemcpyKind, rt.cudaStream_t = cudaError_t, cudaMemcpyKind, cudaStream_t

    cuda = types.ModuleType("cuda")
    if layout == "bindings":
        bindings = types.ModuleType("cuda.bindings")
        bindings.runtime, cuda.bindings = rt, bindings
        return {"cuda": cuda, "cuda.bindings": bindings, "cuda.bindings.runtime": rt, "cuda.cudart": None}
    if layout == "cudart":
        cuda.cudart = rt
        return {"cuda": cuda, "cuda.bindings": None, "cuda.bindings.runtime": None, "cuda.cudart": rt}
    raise ValueError(f"unknown cuda-python layout {layout!r}; valid: bindings, cudart")
