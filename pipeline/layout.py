"""The run folder's layout: where each stage writes, and the well-known files the stages hand each other.

Usage: ``layout = RunLayout.of(cfg, per_device={"export", ...}); layout.stage_dir("validate") / RESULTS``.

::

    runs/<run>/                      run folder (run.root / run.name): config.yaml, .lock
        <stage>/                     a stage shared by every device (data, train, distill, calibrate)
        devices/<device>/<stage>/    a per-device stage (export, quantize, validate, bench, report, ...)
        .<stage>.work/, .<stage>.old/, .<stage>.adopt/   beside the stage folder: an attempt, a finalize in flight

A stage folder counts only with its ``manifest.json`` (:mod:`pipeline.runner` writes it last). The file names other
stages read are the constants below, and the artifacts' file names are the format table's
(:data:`runtimes.formats.FORMATS`); stages ask this module instead of importing each other. Which stages are per
device is each stage's own declaration (``@stage(per_device=True)``): the runner passes that set in.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

MANIFEST = "manifest.json"  # a finished stage's record: files + sha256, key, figures
KEY_FILE = ".key.json"  # an attempt's cache key, in its work folder (a resumable stage resumes only on a match)
CONFIG = "config.yaml"  # the resolved config of the last run, in the run folder
DEVICES = "devices"  # per-device stage folders live under <run>/devices/<device>/
CHECKPOINT = "best.safetensors"  # train, distill: the model export starts from (+ best.json)
CALIBRATION = "calib.npz"  # calibrate: the INT8 calibration inputs (+ ids.json)
TOKENIZER = "tokenizer"  # export: the tokenizer files every artifact's description points to
TUNING_IDS = "tuning_ids.json"  # quantize: the samples the INT8 fallback was tuned on (validate leaves them out)
RESULTS = "results.json"  # validate, bench: the per-artifact results
GALLERY = "gallery"  # validate: the mask gallery's pictures and index
DIAGNOSE = "diagnose.json"  # diagnose: per INT8 artifact, its layer-group sensitivity and first divergence
BUNDLE = "bundle"  # bundle: the unpacked deploy bundle (beside bundle.tar.gz)
RERENDERED = "report-rerendered"  # `python -m pipeline report`: a re-render beside the report stage's folder


@dataclass(frozen=True)
class RunLayout:
    """The folders of one run folder for one device profile.

    Attributes:
        run_dir: ``<run.root>/<run.name>``, resolved.
        device: The device profile's name (per-device stages write under it).
        per_device: The stages whose outputs depend on the device profile.
    """

    run_dir: Path
    device: str
    per_device: frozenset[str]

    @classmethod
    def of(cls, cfg: Any, per_device: Collection[str]) -> RunLayout:
        """The layout of ``cfg``'s run folder and device profile."""
        return cls(Path(cfg.run.root).resolve() / cfg.run.name, cfg.device.name, frozenset(per_device))

    def stage_dir(self, name: str) -> Path:
        """Output folder of a stage: ``runs/<run>/<stage>``, or ``runs/<run>/devices/<device>/<stage>``."""
        if name in self.per_device:
            return self.run_dir / DEVICES / self.device / name
        return self.run_dir / name

    def aux_dir(self, name: str, kind: str) -> Path:
        """A hidden folder beside a stage's: ``work`` (an attempt), ``old`` (the previous outputs during a
        finalize), ``adopt`` (a copy from another run being taken over)."""
        final = self.stage_dir(name)
        return final.parent / f".{final.name}.{kind}"

    def work_dir(self, name: str) -> Path:
        """Where an attempt of the stage writes before the runner renames it into place."""
        return self.aux_dir(name, "work")

    def manifest(self, name: str) -> Path:
        return self.stage_dir(name) / MANIFEST

    def relative(self, name: str) -> Path:
        """A stage folder relative to the run folder (the same in every run folder of the device)."""
        return self.stage_dir(name).relative_to(self.run_dir)


def deployed_stage(upstream: Mapping[str, Path]) -> str:
    """The stage whose checkpoint the pipeline deploys: ``distill`` when it ran (it is an upstream only while
    enabled), else ``train``."""
    return "distill" if "distill" in upstream else "train"


def deployed_checkpoint(upstream: Mapping[str, Path]) -> Path:
    """The checkpoint export, validate and bench use: the distilled student when the distill stage ran, else the
    train stage's best."""
    return upstream[deployed_stage(upstream)] / CHECKPOINT


def stage_figures(folder: Path) -> dict[str, Any]:
    """The ``figures`` of a finished stage's manifest (empty when the stage has not finished)."""
    import json

    path = folder / MANIFEST
    return json.loads(path.read_text()).get("figures", {}) if path.is_file() else {}
