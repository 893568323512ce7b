"""The artifacts a run produced, each with the runtime that loads it: the rows of validation, benchmark and report.

Usage: ``arts = find_artifacts(upstream_dirs, cfg); rt = load_artifact(arts[0], threads=2)``.

The format table (:data:`runtimes.formats.FORMATS`) says which file of which stage is which artifact.
A row whose file does not exist, or whose backend cannot run here, is still listed, with ``status`` saying why
(``unavailable: ...``), so reports always show every artifact the device profile asked for.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from foundation.errors import ArtifactError, PipelineError, RuntimeUnavailable
from runtimes.formats import SPLIT_GRAPHS, Format, reported_formats


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


def _split(folder: Path, fmt: Format, path: Path | None) -> dict[str, Path]:
    """The split-graph files of a format in its stage folder (all three, or none)."""
    if fmt.split == "same":  # one file holds every graph (the PyTorch checkpoint)
        return dict.fromkeys(SPLIT_GRAPHS, folder / fmt.file)
    if fmt.split != "files":
        return {}
    found = {g: folder / f"{g}{fmt.suffix}" for g in SPLIT_GRAPHS}
    return found if all(p.is_file() for p in found.values()) else {}


def _file_row(fmt: Format, upstream: dict[str, Path]) -> Artifact:
    # the PyTorch reference is the model export started from: the distilled student when distill ran
    folder = (upstream.get("distill") or upstream.get("train")) if fmt.stage == "train" else upstream.get(fmt.stage)
    path = folder / fmt.file if folder is not None else None
    return Artifact(
        fmt.name, fmt.label, fmt.runtime, fmt.precision, path if path is not None and path.is_file() else None,
        gated=fmt.gated, size_reference=fmt.size_reference, device=fmt.device,
        split=_split(folder, fmt, path) if folder is not None else {},
    )  # fmt: skip


def _engine_row(fmt: Format, build: Path | None, precision: str) -> Artifact:
    from runtimes.tensorrt_rt import TensorRTRuntime, read_sidecar

    engines = sorted(build.glob(fmt.file)) if build is not None else []
    path = engines[0] if engines else None
    if path is not None:
        with contextlib.suppress(ArtifactError):  # an unreadable sidecar is reported when the engine loads
            precision = str(read_sidecar(path).get("precision", precision))
    row = Artifact(
        f"{fmt.name}-{precision}", f"{fmt.label} {precision.upper()}", fmt.runtime, precision, path,
        gated=precision == "int8", device=fmt.device,
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

    The rows are the reported formats of :data:`runtimes.formats.FORMATS`, in its order.

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
    rows = []
    for fmt in reported_formats():
        if fmt.precision == "device":  # the engine: its precision is the profile's (or its sidecar's)
            rows.append(_engine_row(fmt, upstream.get(fmt.stage), device_precision))
            continue
        row = _file_row(fmt, upstream)
        if row.path is None and fmt.optional:
            continue
        if row.path is None and row.runtime == "openvino" and not openvino_made:
            row.status = (
                "unavailable: not made for this device (a TensorRT target; export.openvino=true and "
                "quant.openvino=true add OpenVINO artifacts)"
            )
        elif row.path is None:
            row.status = f"unavailable: not produced by this run (its stage is disabled or did not write {row.name})"
        rows.append(row)
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


def load_runnable(arts: list[Artifact], threads: int | None) -> tuple[dict[str, Any], dict[str, str]]:
    """Load every artifact that can run here; the others get a status (``unavailable: ...`` or ``error: ...``).

    Returns:
        ``(loaded, statuses)``: name → loaded runtime, and name → why it is not loaded.
    """
    statuses: dict[str, str] = {a.name: a.status for a in arts if a.status}
    loaded: dict[str, Any] = {}
    for art in arts:
        if art.name in statuses:
            continue
        try:
            loaded[art.name] = load_artifact(art, threads=threads)
        except RuntimeUnavailable as exc:
            statuses[art.name] = f"unavailable: {exc}"
        except PipelineError as exc:  # ArtifactError included: a missing or corrupt file
            statuses[art.name] = f"error: {exc}"
    return loaded, statuses
