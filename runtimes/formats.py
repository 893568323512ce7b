"""The artifact formats and the backends that run them: one table each, read by everything that names either.

Usage: ``runtime_for_file(Path("model.xml"))`` → ``"openvino"``; ``FORMATS["openvino-int8"].file`` →
``"full_int8.xml"``; ``bundle_formats("tensorrt")`` → what a TensorRT device's deploy bundle carries.

In the spirit of an export-format table: :data:`BACKENDS` says which runtime class runs which file suffixes and which
backends a device profile may name; :data:`FORMATS` says, per artifact the pipeline makes, which stage writes which
file, which runtime and precision it has, whether the INT8 gate judges it, and what role it plays in each deploy
bundle. The runtime registry (:mod:`runtimes.base`), ``python -m pipeline predict`` (runtime by suffix), the config's
``device.backend`` choices, the bundle's model plan and its scripts' ``--backend`` choices, and the rows of
validation, benchmark and report are all read from here. Adding a backend is one runtime module plus one
:data:`BACKENDS` row (and a :data:`FORMATS` row per artifact it runs).

The graph I/O names every runtime and report use are here too (the model declares the same names for export; a test
checks they agree). This module is part of the deploy bundle: standard library only, Python 3.8.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

# The graphs of an export: the whole model, and the three a split deployment runs (encode the frame once, then
# encode each sentence and decode).
SPLIT_GRAPHS = ("image_encoder", "text_encoder", "decoder")
GRAPHS = ("full", *SPLIT_GRAPHS)
# The full graph's inputs and its one output.
IMAGE_INPUT = "image"
TOKEN_INPUTS = ("input_ids", "attention_mask")
MASK_OUTPUT = "mask_logits"


@dataclass(frozen=True)
class Backend:
    """A runtime: the class that runs it and the files it loads.

    Attributes:
        name: Registry name (``runtimes.get_runtime(name)``).
        target: ``"package.module:ClassName"``, imported on first use.
        suffixes: File suffixes it loads (the first is its artifacts' own).
        deployable: A device profile may name it as ``device.backend`` (and the deploy bundle runs it).
    """

    name: str
    target: str
    suffixes: tuple[str, ...]
    deployable: bool = True


BACKENDS: tuple[Backend, ...] = (
    Backend("tensorrt", "runtimes.tensorrt_rt:TensorRTRuntime", (".engine", ".plan")),
    Backend("onnxruntime", "runtimes.onnxruntime_rt:OnnxRuntime", (".onnx",)),
    Backend("openvino", "runtimes.openvino_rt:OpenVINORuntime", (".xml",)),
    Backend("torch", "runtimes.torch_rt:TorchRuntime", (".safetensors",), deployable=False),
)
# The backends a device profile and the deploy bundle's scripts accept.
DEVICE_BACKENDS: tuple[str, ...] = tuple(b.name for b in BACKENDS if b.deployable)
# file suffix -> the runtime that loads it
RUNTIME_BY_SUFFIX: dict[str, str] = {s: b.name for b in BACKENDS for s in b.suffixes}


@dataclass(frozen=True)
class BundleRole:
    """What one artifact is in a deploy bundle: ``models[precision][key]``, checked against a reference's output.

    Attributes:
        precision: The bundle's model entry it belongs to (``int8``, ``fp16``, ``fp32``).
        key: The entry's key for it: the format it is loaded as (``onnx``, ``openvino``).
        reference: The format whose host output is the golden output (None: this artifact's own).
        engine: Where the robot's TensorRT build writes the engine made from it (None: no engine).
    """

    precision: str
    key: str
    reference: str | None = None
    engine: str | None = None


@dataclass(frozen=True)
class Format:
    """One artifact the pipeline makes.

    Attributes:
        name: Stable id, also its row name in results and reports (``onnxruntime-int8``).
        label: Human name (``ONNX Runtime INT8 (Q/DQ)``).
        runtime: The backend that runs it (a :data:`BACKENDS` name).
        precision: ``fp32``, ``fp16`` or ``int8``; ``device`` for the engine, whose precision the profile picks.
        stage: The stage whose folder holds it (``train``: the deployed checkpoint, the distilled one when distill
            ran).
        file: Its file name in that folder (a glob for the engine, whose name follows its precision).
        gated: The INT8 gate judges it against the accuracy budget.
        size_reference: The artifact its size ratio is taken against (the FP32 of the same format).
        split: How its split graphs are stored: ``files`` (``<graph><suffix>`` beside it), ``same`` (one file holds
            every graph), or None.
        device: Device string for the runtime (``CPU``, ``GPU``).
        reported: A row of validation, benchmark and report (the FP16 ONNX is an engine source, not a row).
        optional: Listed only when its file exists (the QAT artifacts: made only when the ``qat`` stage had to).
        bundle: Device backend → its role in that backend's deploy bundle.
    """

    name: str
    label: str
    runtime: str
    precision: str
    stage: str
    file: str
    gated: bool = False
    size_reference: str | None = None
    split: str | None = None
    device: str = "CPU"
    reported: bool = True
    optional: bool = False
    bundle: tuple[tuple[str, BundleRole], ...] = ()

    @property
    def suffix(self) -> str:
        return Path(self.file).suffix

    def role(self, backend: str) -> BundleRole | None:
        """Its role in ``backend``'s deploy bundle, or None when that bundle does not carry it."""
        return dict(self.bundle).get(backend)


_INT8_ENGINE = BundleRole("int8", "onnx", engine="engines/full_int8.engine")
_FP16_ENGINE = BundleRole("fp16", "onnx", reference="onnxruntime-fp32", engine="engines/full_fp16.engine")

# Report order: the PyTorch reference, ONNX Runtime FP32 and INT8, OpenVINO FP32 and INT8, the QAT INT8 artifacts,
# TensorRT.
FORMATS: dict[str, Format] = {
    f.name: f
    for f in (
        Format("pytorch-fp32", "PyTorch FP32 (eager)", "torch", "fp32", "train", "best.safetensors",
               size_reference="pytorch-fp32", split="same"),
        Format("onnxruntime-fp32", "ONNX Runtime FP32", "onnxruntime", "fp32", "export", "full.onnx",
               size_reference="onnxruntime-fp32", split="files",
               bundle=(("openvino", BundleRole("fp32", "onnx")), ("onnxruntime", BundleRole("fp32", "onnx")))),
        Format("onnxruntime-int8", "ONNX Runtime INT8 (Q/DQ)", "onnxruntime", "int8", "quantize",
               "full_int8_qdq.onnx", gated=True, size_reference="onnxruntime-fp32",
               bundle=(("tensorrt", _INT8_ENGINE), ("openvino", BundleRole("int8", "onnx")),
                       ("onnxruntime", BundleRole("int8", "onnx")))),
        Format("openvino-fp32", "OpenVINO FP32", "openvino", "fp32", "export", "full.xml",
               size_reference="openvino-fp32", split="files",
               bundle=(("openvino", BundleRole("fp32", "openvino")),)),
        Format("openvino-int8", "OpenVINO INT8 (NNCF)", "openvino", "int8", "quantize", "full_int8.xml", gated=True,
               size_reference="openvino-fp32", bundle=(("openvino", BundleRole("int8", "openvino")),)),
        Format("onnxruntime-int8-qat", "ONNX Runtime INT8 (Q/DQ, QAT)", "onnxruntime", "int8", "qat",
               "full_int8_qdq_qat.onnx", size_reference="onnxruntime-fp32", optional=True),
        Format("openvino-int8-qat", "OpenVINO INT8 (NNCF, QAT)", "openvino", "int8", "qat", "full_int8_qat.xml",
               size_reference="openvino-fp32", optional=True),
        Format("onnx-fp16", "ONNX FP16 (TensorRT engine source)", "onnxruntime", "fp16", "export", "full_fp16.onnx",
               reported=False, bundle=(("tensorrt", _FP16_ENGINE),)),
        Format("tensorrt", "TensorRT", "tensorrt", "device", "build", "*.engine", device="GPU"),
    )
}  # fmt: skip
REFERENCE = "pytorch-fp32"
# The order of a bundle's model entries: the INT8 model first (what the robot runs), then its float companion.
BUNDLE_PRECISIONS = ("int8", "fp16", "fp32")


def runtime_for_file(path: Path) -> str | None:
    """The backend that loads a file, by its suffix (None for a suffix no backend loads)."""
    return RUNTIME_BY_SUFFIX.get(Path(path).suffix.lower())


def reported_formats() -> tuple[Format, ...]:
    """The artifacts that are rows of validation, benchmark and report, in report order."""
    return tuple(f for f in FORMATS.values() if f.reported)


def bundle_formats(backend: str) -> dict[str, dict[str, Format]]:
    """What ``backend``'s deploy bundle carries: precision → key → format, INT8 first, the backend's own format
    first within an entry (an OpenVINO bundle's INT8 entry: ``openvino`` then ``onnx``).

    Raises:
        ValueError: ``backend`` is not a device backend.
    """
    if backend not in DEVICE_BACKENDS:
        raise ValueError(f"unknown device backend {backend!r}; valid: {', '.join(DEVICE_BACKENDS)}")
    plan: dict[str, dict[str, Format]] = {}
    carried = [(f, f.role(backend)) for f in FORMATS.values() if f.role(backend) is not None]
    for precision in BUNDLE_PRECISIONS:
        entry = [(f, r) for f, r in carried if r is not None and r.precision == precision]
        entry.sort(key=lambda fr: fr[1].key != backend)  # stable: the backend's own format first
        if entry:
            plan[precision] = {r.key: f for f, r in entry if r is not None}
    return plan
