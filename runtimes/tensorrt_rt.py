"""TensorRT runtime: a serialized engine plus its JSON sidecar, run through the TensorRT ≥ 8.5 tensor API.

Usage: ``rt = TensorRTRuntime(); rt.load("model.engine"); out = rt.infer({"image": x, "input_ids": ids, ...})``.

An engine only runs on the TensorRT version and the GPU it was built with (pain point 3 of the anchors: Ultralytics
users hit "engine incompatible" after an upgrade). :meth:`TensorRTRuntime.load` therefore reads the sidecar written
next to the engine (``model.engine.json`` or ``model.json``; never a header inside the engine, so ``trtexec`` and
DeepStream still read the plain plan) and refuses an engine whose TensorRT version or GPU differs, naming both, unless
the sidecar says the engine was built version- or hardware-compatible. Whether an engine was built strongly typed
(runtimes.tensorrt_settings.default_strongly_typed) does not matter here: its I/O dtypes come from the engine itself,
and inputs are cast to them.

CUDA memory goes through cuda-python, else pycuda (JetPack 5 images often ship only pycuda): any failure of the first
backend (not installed, a wheel newer than the driver, no device) falls back to the second.

Imports neither torch nor timm: a robot has numpy, TensorRT and cuda-python (or pycuda).
"""

from __future__ import annotations

import contextlib
import ctypes
import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import numpy as np

from foundation.errors import ArtifactError, RuntimeUnavailable
from runtimes.base import RuntimeBase, TensorSpec, decode_metadata, prepare_feeds

log = logging.getLogger(__name__)

INSTALL_HINT = (
    "needs an NVIDIA GPU, `tensorrt` and `cuda-python` (Jetson: JetPack's python3-libnvinfer + the cuda-python pin "
    "of that JetPack, in the bundle's README: 11.8.2 on JetPack 5, 12.6.2.post1 on 6.1/6.2; x86 GPU host: pip "
    "install .[trt])"
)


def _import_tensorrt() -> Any:
    try:
        import tensorrt as trt
    except ImportError as exc:
        raise RuntimeUnavailable(f"tensorrt is not installed ({exc}); TensorRT {INSTALL_HINT}") from None
    return trt


# TensorRT DataType member -> numpy dtype, instead of trt.nptype: the TensorRT 8.5.2.2 wheel of JetPack 5.1 maps bool to
# np.bool, which numpy 1.24 removed (pip's numpy on JetPack 5's Python 3.8), so nptype raises AttributeError for every
# type there. INT64 exists from TensorRT 9; members a version lacks are skipped.
NUMPY_OF_TRT = {
    "FLOAT": "float32",
    "HALF": "float16",
    "INT8": "int8",
    "INT32": "int32",
    "INT64": "int64",
    "BOOL": "bool",
    "UINT8": "uint8",
}


def numpy_dtype(trt: Any, trt_dtype: Any, tensor: str = "") -> np.dtype:
    """The numpy dtype of a TensorRT ``DataType`` of the installed TensorRT.

    Raises:
        ArtifactError: the type has no numpy equivalent (BF16, FP8, INT4, ...).
    """
    for member, np_name in NUMPY_OF_TRT.items():
        value = getattr(trt.DataType, member, None)
        if value is not None and trt_dtype == value:
            return np.dtype(np_name)
    raise ArtifactError(
        f"engine tensor {tensor!r} has TensorRT type {trt_dtype}, which has no numpy type (valid: "
        f"{', '.join(m for m in NUMPY_OF_TRT if hasattr(trt.DataType, m))}); export that I/O tensor as float32, "
        "float16, int32 or bool"
    )


def sidecar_path(engine: str | Path) -> Path:
    """The JSON sidecar of an engine: ``<engine>.json`` if present, else ``<stem>.json`` beside it."""
    engine = Path(engine)
    first = engine.with_name(engine.name + ".json")
    return first if first.is_file() else engine.with_suffix(".json")


def read_sidecar(engine: str | Path) -> dict[str, Any]:
    """Read and check an engine's sidecar (I/O, normalization, tokenizer, build versions).

    Raises:
        ArtifactError: the sidecar is missing or not JSON.
    """
    path = sidecar_path(engine)
    if not path.is_file():
        raise ArtifactError(
            f"engine {engine} has no JSON sidecar (looked for {Path(str(engine) + '.json').name} and {path.name}); "
            "build it with build_engine.sh or build_engine.py in the deploy bundle (or the pipeline's build stage), "
            "which write one; for an engine trtexec already built here: python3 build_engine.py --sidecar-only"
        )
    try:
        raw = json.loads(path.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"engine sidecar {path} is not valid JSON: {exc}") from None
    if not isinstance(raw, dict):
        raise ArtifactError(f"engine sidecar {path} must hold a JSON object, got {type(raw).__name__}")
    if all(isinstance(v, str) for v in raw.values()):  # flat strings: runtimes.base.encode_metadata's codec
        return decode_metadata(raw)
    return raw  # plain JSON (runtimes.tensorrt_build writes this)


def _get(d: Mapping[str, Any], *keys: str) -> Any:
    """First present key among spellings (the builder writes nested ``build`` or flat keys)."""
    for src in (d, d.get("build") or {}, d.get("tensorrt") or {}):
        for k in keys:
            if isinstance(src, Mapping) and src.get(k) is not None:
                return src[k]
    return None


def check_compatible(sidecar: Mapping[str, Any], trt_version: str, gpu: Mapping[str, Any]) -> None:
    """Refuse an engine built with another TensorRT version or on another GPU, naming both sides.

    Args:
        sidecar: The engine's sidecar.
        trt_version: ``tensorrt.__version__`` here.
        gpu: ``{"name", "compute_capability"}`` of the GPU here.

    Raises:
        ArtifactError: versions or GPUs differ and the engine was not built to tolerate it.
    """
    built = _get(sidecar, "tensorrt_version", "trt_version")
    if built is None:
        raise ArtifactError("engine sidecar does not record the TensorRT version it was built with; rebuild the engine")
    version_compatible = bool(_get(sidecar, "version_compatible"))
    same_version = str(built) == str(trt_version)
    if not same_version and not (version_compatible and str(built).split(".")[0] == str(trt_version).split(".")[0]):
        raise ArtifactError(
            f"engine was built with TensorRT {built} but this machine has TensorRT {trt_version}; engines are not "
            "portable across TensorRT versions: rebuild it here (build_engine.sh in the deploy bundle)"
        )
    built_gpu = _get(sidecar, "gpu") or {}
    if isinstance(built_gpu, str):
        built_gpu = {"name": built_gpu}
    built_cc = _get(sidecar, "compute_capability") or built_gpu.get("compute_capability")
    built_name = built_gpu.get("name") or _get(sidecar, "gpu_name")
    if _get(sidecar, "hardware_compatible"):
        return
    here_cc, here_name = gpu.get("compute_capability"), gpu.get("name")
    if built_cc is not None and here_cc is not None and str(built_cc) != str(here_cc):
        raise ArtifactError(
            f"engine was built for GPU {built_name or '?'} (compute capability {built_cc}) but this GPU is "
            f"{here_name} (compute capability {here_cc}); rebuild the engine on this device"
        )
    if built_name and here_name and str(built_name) != str(here_name):
        raise ArtifactError(
            f"engine was built on GPU {built_name!r} but this GPU is {here_name!r}; rebuild the engine on this device "
            "(or build it hardware-compatible)"
        )


# ---------------------------------------------------------------------------------------------------------------------
# CUDA memory: cuda-python first, pycuda as the fallback
# ---------------------------------------------------------------------------------------------------------------------


class _CudaPython:
    """Device memory and a stream through cuda-python's runtime bindings."""

    def __init__(self) -> None:
        try:
            from cuda.bindings import runtime as cudart  # cuda-python ≥ 12.6
        except ImportError:
            from cuda import cudart  # older cuda-python
        self.rt = cudart
        self.stream = self._ok(cudart.cudaStreamCreate())

    def _ok(self, result: Any) -> Any:
        err, *rest = result if isinstance(result, tuple) else (result,)
        if int(err) != 0:
            raise RuntimeError(f"CUDA call failed: {self.rt.cudaGetErrorString(err)[1]!r}")
        return rest[0] if len(rest) == 1 else rest

    def device(self) -> dict[str, Any]:
        dev = self._ok(self.rt.cudaGetDevice())
        prop = self._ok(self.rt.cudaGetDeviceProperties(dev))
        name = prop.name.decode(errors="replace").rstrip("\x00") if isinstance(prop.name, bytes) else str(prop.name)
        return {"name": name, "compute_capability": f"{prop.major}.{prop.minor}"}

    def malloc(self, nbytes: int) -> int:
        return int(self._ok(self.rt.cudaMalloc(max(1, nbytes))))

    def free(self, ptr: int) -> None:
        self.rt.cudaFree(ptr)

    def h2d(self, ptr: int, arr: np.ndarray) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyHostToDevice
        self._ok(self.rt.cudaMemcpyAsync(ptr, arr.ctypes.data, arr.nbytes, kind, self.stream))

    def d2h(self, arr: np.ndarray, ptr: int) -> None:
        kind = self.rt.cudaMemcpyKind.cudaMemcpyDeviceToHost
        self._ok(self.rt.cudaMemcpyAsync(arr.ctypes.data, ptr, arr.nbytes, kind, self.stream))

    def handle(self) -> int:
        return int(self.stream)

    def sync(self) -> None:
        self._ok(self.rt.cudaStreamSynchronize(self.stream))


class _PyCuda:
    """The same operations through pycuda (older JetPack images ship it)."""

    def __init__(self) -> None:
        import pycuda.autoinit  # noqa: F401  (creates the context)
        import pycuda.driver as cuda

        self.cuda = cuda
        self.stream = cuda.Stream()
        self._allocs: dict[int, Any] = {}

    def device(self) -> dict[str, Any]:
        dev = self.cuda.Context.get_device()
        major, minor = dev.compute_capability()
        return {"name": dev.name(), "compute_capability": f"{major}.{minor}"}

    def malloc(self, nbytes: int) -> int:
        alloc = self.cuda.mem_alloc(max(1, nbytes))
        self._allocs[int(alloc)] = alloc
        return int(alloc)

    def free(self, ptr: int) -> None:
        alloc = self._allocs.pop(ptr, None)
        if alloc is not None:
            alloc.free()

    def h2d(self, ptr: int, arr: np.ndarray) -> None:
        self.cuda.memcpy_htod_async(ptr, arr, self.stream)

    def d2h(self, arr: np.ndarray, ptr: int) -> None:
        self.cuda.memcpy_dtoh_async(arr, ptr, self.stream)

    def handle(self) -> int:
        return int(self.stream.handle)

    def sync(self) -> None:
        self.stream.synchronize()


CUDA_BACKENDS: tuple[tuple[str, type], ...] = (("cuda-python", _CudaPython), ("pycuda", _PyCuda))


def _cuda() -> _CudaPython | _PyCuda:
    """The first CUDA backend that works: cuda-python, else pycuda, whatever made the first one fail.

    Raises:
        RuntimeUnavailable: both failed; the message names each failure.
    """
    errors: list[tuple[str, Exception]] = []
    for name, cls in CUDA_BACKENDS:
        try:
            return cls()
        except Exception as exc:  # not installed, a wheel newer than the driver, no device, ...: try the next one
            log.debug("CUDA backend %s failed: %s: %s", name, type(exc).__name__, exc)
            errors.append((name, exc))
    tried = "; ".join(f"{name}: {type(exc).__name__}: {exc}" for name, exc in errors)
    if all(isinstance(exc, ImportError) for _, exc in errors):
        raise RuntimeUnavailable(f"neither cuda-python nor pycuda is installed ({tried}); TensorRT {INSTALL_HINT}")
    raise RuntimeUnavailable(f"no usable CUDA backend ({tried}); TensorRT {INSTALL_HINT}")


def _cuda_device_present() -> bool:
    for lib in ("libcuda.so.1", "libcuda.so"):
        try:
            ctypes.CDLL(lib)
            return True
        except OSError:
            continue
    return False


# ---------------------------------------------------------------------------------------------------------------------
# The runtime
# ---------------------------------------------------------------------------------------------------------------------


class TensorRTRuntime(RuntimeBase):
    """Runs a TensorRT engine (``.engine`` / ``.plan`` + JSON sidecar) on one NVIDIA GPU, batch as built."""

    name = "tensorrt"
    install_hint = INSTALL_HINT
    extensions = (".engine", ".plan")

    def __init__(self) -> None:
        super().__init__()
        self._ptrs: dict[str, int] = {}
        self._host_out: dict[str, np.ndarray] = {}
        self._engine: Any = None
        self._context: Any = None
        self._cuda: Any = None

    @staticmethod
    def unavailable_reason() -> str | None:
        """Why TensorRT cannot run here (None when it can): a missing package or no NVIDIA driver."""
        try:
            _import_tensorrt()
        except RuntimeUnavailable as exc:
            return str(exc)
        if not _cuda_device_present():
            return f"no NVIDIA driver (libcuda) on this machine; TensorRT {INSTALL_HINT}"
        return None

    def is_available(self) -> bool:
        """True when tensorrt imports and an NVIDIA driver is present."""
        return self.unavailable_reason() is None

    def load(self, artifact: str | Path, device: str = "GPU", threads: int | None = None) -> TensorRTRuntime:
        """Deserialize an engine after checking its sidecar against this machine.

        Args:
            artifact: The ``.engine`` file (its sidecar sits beside it).
            device: Ignored beyond "GPU"/"cuda:N" (the current CUDA device is used); a DLA engine runs on the DLA core
                its sidecar records (``build.dla_core``).
            threads: Ignored (GPU execution); accepted for the common runtime signature.

        Raises:
            RuntimeUnavailable: TensorRT, CUDA bindings or a GPU are missing.
            ArtifactError: the engine is missing, corrupt, or was built for another TensorRT version, GPU or a DLA
                core this device lacks.
        """
        del threads
        path = Path(artifact)
        trt = _import_tensorrt()
        if not path.is_file():
            raise ArtifactError(f"TensorRT engine {path} does not exist; build it with `make build` on this device")
        sidecar = read_sidecar(path)
        self._cuda = _cuda()
        check_compatible(sidecar, trt.__version__, self._cuda.device())
        logger = trt.Logger(trt.Logger.WARNING)
        trt.init_libnvinfer_plugins(logger, "")
        runtime = trt.Runtime(logger)
        dla_core = _get(sidecar, "dla_core")
        if dla_core is not None:  # unset, TensorRT runs a DLA engine on core 0 whatever core it was built for
            cores = runtime.num_DLA_cores
            if not 0 <= int(dla_core) < cores:
                raise ArtifactError(
                    f"engine {path} was built for DLA core {dla_core}, but this device has {cores} DLA core(s)"
                    f"{f' (valid: 0..{cores - 1})' if cores else ''}; rebuild it here (build_engine.sh)"
                )
            runtime.DLA_core = int(dla_core)
        engine = runtime.deserialize_cuda_engine(path.read_bytes())
        if engine is None:
            raise ArtifactError(f"TensorRT {trt.__version__} could not deserialize {path}; see the log above")
        self._engine, self._context = engine, engine.create_execution_context()
        self.metadata, self.artifact = sidecar, path
        described = {**(sidecar.get("inputs") or {}), **(sidecar.get("outputs") or {})}
        names = [engine.get_tensor_name(i) for i in range(engine.num_io_tensors)]
        for name in names:
            shape = tuple(int(d) for d in engine.get_tensor_shape(name))
            if any(d < 0 for d in shape):  # a dynamic dim: bind the static shape the sidecar describes
                shape = tuple(int(d) for d in (described.get(name) or {}).get("shape", shape))
            spec = TensorSpec(name, shape, numpy_dtype(trt, engine.get_tensor_dtype(name), name).name)
            if engine.get_tensor_mode(name) == trt.TensorIOMode.INPUT:
                self.inputs[name] = spec
                self._context.set_input_shape(name, shape)
        for name in names:
            if name not in self.inputs:
                shape = tuple(int(d) for d in self._context.get_tensor_shape(name))
                self.outputs[name] = TensorSpec(name, shape, numpy_dtype(trt, engine.get_tensor_dtype(name), name).name)
                self._host_out[name] = np.empty(shape, dtype=self.outputs[name].dtype)
        for spec in (*self.inputs.values(), *self.outputs.values()):
            self._ptrs[spec.name] = self._cuda.malloc(int(np.prod(spec.shape)) * np.dtype(spec.dtype).itemsize)
            self._context.set_tensor_address(spec.name, self._ptrs[spec.name])
        return self

    def infer(self, feeds: Mapping[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the engine once; inputs are checked against the engine's shapes and cast to its dtypes.

        Raises:
            ArtifactError: an input is missing or has another shape, or execution failed.
        """
        if self._context is None:
            raise ArtifactError("tensorrt runtime: call load() before infer()")
        prepared = prepare_feeds(dict(feeds), self.inputs, self.artifact)
        for name, arr in prepared.items():
            self._cuda.h2d(self._ptrs[name], arr)
        if not self._context.execute_async_v3(self._cuda.handle()):
            raise ArtifactError("TensorRT execute_async_v3 failed; see the TensorRT log above")
        for name in self.outputs:
            self._cuda.d2h(self._host_out[name], self._ptrs[name])
        self._cuda.sync()  # also keeps the prepared host inputs alive until their copies are done
        out = {name: self._host_out[name].copy() for name in self.outputs}
        return {n: v.astype(np.float32) if v.dtype == np.float16 else v for n, v in out.items()}

    def close(self) -> None:
        """Free device buffers (also done when the process exits)."""
        if self._cuda is not None:
            for ptr in self._ptrs.values():
                self._cuda.free(ptr)
        self._ptrs.clear()
        self._context = self._engine = None

    def __del__(self) -> None:
        with contextlib.suppress(Exception):  # interpreter shutdown: CUDA may already be gone
            self.close()
