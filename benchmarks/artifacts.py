"""The artifacts a run produced, each with the runtime that loads it: the rows of validation, benchmark and report.

Usage: ``arts = find_artifacts(upstream_dirs, cfg); rt = load_artifact(arts[0], threads=2)``.

One table says which file of which stage is which artifact (names are the export and quantize stages' file names).
A row whose file does not exist, or whose backend cannot run here, is still listed, with ``status`` saying why
(``unavailable: ...``), so reports always show every artifact the device profile asked for.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from foundation.errors import ArtifactError, RuntimeUnavailable

REFERENCE = "pytorch-fp32"
SPLIT_GRAPHS = ("image_encoder", "text_encoder", "decoder")


@dataclass
class Artifact:
    """One row: a file, the runtime that runs it, and how it is judged.

    Attributes:
        name: Stable id (``onnxruntime-int8``).
        label: Human name (``ONNX Runtime INT8 (Q/DQ)``).
        runtime: Registry name of the runtime (``runtimes.get_runtime``).
        precision: ``fp32``, ``fp16`` or ``int8``.
        path: The file the runtime loads (None when the run has none).
        gated: Must pass the mIoU budget (INT8 artifacts); a failure fails the pipeline's gate.
        size_reference: Artifact whose size the size ratio is taken against (the FP32 of the same format).
        split: Split-graph files (``image_encoder``, ``text_encoder``, ``decoder``) when the run has them.
        device: Device string for the runtime (``CPU``, ``GPU``).
        status: None when runnable, else ``unavailable: <reason>``.
    """

    name: str
    label: str
    runtime: str
    precision: str
    path: Path | None
    gated: bool = False
    size_reference: str | None = None
    split: dict[str, Path] = field(default_factory=dict)
    device: str = "CPU"
    status: str | None = None

    def describe(self) -> dict[str, Any]:
        """JSON-ready fields shared by the validate and bench results."""
        return {
            "label": self.label,
            "runtime": self.runtime,
            "precision": self.precision,
            "path": None if self.path is None else str(self.path),
            "gated": self.gated,
            "size_reference": self.size_reference,
            "size_bytes": artifact_size(self.path),
            "split_graphs": sorted(self.split),
        }


def artifact_size(path: Path | None) -> int | None:
    """Bytes on disk of an artifact with its companions (``.bin`` of an IR, external ONNX data, checkpoint JSON)."""
    if path is None or not path.is_file():
        return None
    total = path.stat().st_size
    # an IR's weights are <stem>.bin; an ONNX's external data is <name>.data (never the IR's .bin beside it)
    extras = [path.with_suffix(".bin")] if path.suffix == ".xml" else [path.with_name(path.name + ".data")]
    if path.suffix == ".safetensors":
        extras = [path.with_suffix(".json")]
    return total + sum(e.stat().st_size for e in extras if e.is_file())


def _existing(path: Path) -> Path | None:
    return path if path.is_file() else None


def _split(folder: Path | None, suffix: str) -> dict[str, Path]:
    if folder is None:
        return {}
    found = {g: folder / f"{g}{suffix}" for g in SPLIT_GRAPHS}
    return found if all(p.is_file() for p in found.values()) else {}


def _engine_row(build: Path | None, precision: str) -> Artifact:
    from runtimes.tensorrt_rt import TensorRTRuntime, read_sidecar

    engines = sorted(build.glob("*.engine")) if build is not None else []
    path = engines[0] if engines else None
    if path is not None:
        with contextlib.suppress(ArtifactError):  # an unreadable sidecar is reported when the engine loads
            precision = str(read_sidecar(path).get("precision", precision))
    row = Artifact(
        f"tensorrt-{precision}", f"TensorRT {precision.upper()}", "tensorrt", precision, path,
        gated=precision == "int8", device="GPU",
    )  # fmt: skip
    reason = TensorRTRuntime.unavailable_reason()
    if reason is not None:
        row.status = f"unavailable: {reason}"
    elif path is None:
        where = "the build stage is disabled for this device profile" if build is None else f"none in {build}"
        row.status = f"unavailable: no TensorRT engine was built ({where}); run the build stage on the target device"
    return row


def find_artifacts(
    upstream: dict[str, Path], device_precision: str = "int8", openvino_made: bool = True
) -> list[Artifact]:
    """Every artifact of a run, reference first, from the finished upstream stages' folders.

    Args:
        upstream: Stage name → output folder (``StageContext.upstream_dirs``); ``train`` (or ``distill``),
            ``export``, ``quantize`` and ``build`` are read when present.
        openvino_made: False when the config does not make OpenVINO artifacts (a TensorRT device by default): their
            rows then say so instead of "not produced".
        device_precision: The engine precision the device profile asks for (names the TensorRT row when no engine
            exists to say it).

    Returns:
        Rows in report order: PyTorch FP32, ONNX Runtime FP32 and INT8, OpenVINO FP32 and INT8, TensorRT.
    """
    # the PyTorch reference is the model export started from: the distilled student when distill ran
    train, export = upstream.get("distill") or upstream.get("train"), upstream.get("export")
    quant, build = upstream.get("quantize"), upstream.get("build")
    rows = [
        Artifact(REFERENCE, "PyTorch FP32 (eager)", "torch", "fp32",
                 _existing(train / "best.safetensors") if train else None, size_reference=REFERENCE,
                 split=dict.fromkeys(SPLIT_GRAPHS, train / "best.safetensors") if train else {}),
        Artifact("onnxruntime-fp32", "ONNX Runtime FP32", "onnxruntime", "fp32",
                 _existing(export / "full.onnx") if export else None, size_reference="onnxruntime-fp32",
                 split=_split(export, ".onnx")),
        Artifact("onnxruntime-int8", "ONNX Runtime INT8 (Q/DQ)", "onnxruntime", "int8",
                 _existing(quant / "full_int8_qdq.onnx") if quant else None, gated=True,
                 size_reference="onnxruntime-fp32"),
        Artifact("openvino-fp32", "OpenVINO FP32", "openvino", "fp32",
                 _existing(export / "full.xml") if export else None, size_reference="openvino-fp32",
                 split=_split(export, ".xml")),
        Artifact("openvino-int8", "OpenVINO INT8 (NNCF)", "openvino", "int8",
                 _existing(quant / "full_int8.xml") if quant else None, gated=True, size_reference="openvino-fp32"),
    ]  # fmt: skip
    for row in rows:
        if row.path is None and row.status is None and row.runtime == "openvino" and not openvino_made:
            row.status = (
                "unavailable: not made for this device (a TensorRT target; export.openvino=true and "
                "quant.openvino=true add OpenVINO artifacts)"
            )
        elif row.path is None and row.status is None:
            row.status = f"unavailable: not produced by this run (its stage is disabled or did not write {row.name})"
    rows.append(_engine_row(build, device_precision))
    return rows


def load_artifact(art: Artifact, threads: int | None = None, graph: str = "full") -> Any:
    """Load one artifact (or one of its split graphs) into its runtime.

    Raises:
        RuntimeUnavailable: the row is unavailable or the backend cannot run here.
        ArtifactError: the file is missing or corrupt.
    """
    from runtimes import get_runtime

    if art.status is not None:
        raise RuntimeUnavailable(art.status.removeprefix("unavailable: "))
    path = art.path if graph == "full" else art.split.get(graph)
    if path is None:
        raise ArtifactError(f"{art.label} has no {graph} graph in this run")
    rt = get_runtime(art.runtime)
    if not rt.is_available():
        raise RuntimeUnavailable(f"{art.runtime} is not installed here; {rt.install_hint}")
    if art.runtime == "torch":
        return rt.load(path, device=art.device, threads=threads, graph=graph)
    return rt.load(path, device=art.device, threads=threads)
