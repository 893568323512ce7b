"""What a pre-flight runs: the steps in order, what each needs from the earlier ones, the files it writes, the
options of a run and the state one variant's steps share (:class:`VariantRun`)."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from foundation.errors import PipelineError

DEFAULT_VARIANTS = ("paper", "edge")
DEFAULT_OUT = Path("runs/preflight")
STEPS = ("imports", "build", "summary", "export", "quantize", "opcheck", "parity")
STEP_TITLES = {
    "imports": "import torch, timm, ONNX, ORT",
    "build": "build model (random weights)",
    "summary": "params / GFLOPs",
    "export": "export FP32 ONNX",
    "quantize": "Q/DQ INT8 ONNX",
    "opcheck": "TensorRT op check",
    "parity": "ONNX Runtime parity",
}
# what a step needs from the earlier ones; missing -> the step is a "skipped" row
NEEDS = {
    "imports": (),
    "build": (),
    "summary": ("model",),
    "export": ("model",),
    "quantize": ("fp32",),
    "opcheck": ("fp32",),
    "parity": ("model", "fp32"),
}
SETTABLE_SECTIONS = ("export", "quant", "device")  # the model is the registered variant, not a config's
FP32_ONNX, QDQ_ONNX = "full.onnx", "full_int8_qdq.onnx"
RESULT_JSON, RESULT_MD, WORKER_LOG = "preflight.json", "preflight.md", "preflight.log"
PARITY_SEED = 100  # parity inputs differ from the export's example inputs (seed 0) and the calibration's (1..n)
MAX_ERRORS_KEPT = 200


@dataclass
class PreflightOptions:
    """Knobs of a pre-flight run (the device, export and quant settings come from the config).

    Attributes:
        calib_samples: random calibration inputs of the Q/DQ quantizer.
        parity_samples: random inputs of the parity step.
        parity_rtol: FP32 parity tolerance relative to max|PyTorch output| (``export.parity_atol`` is the absolute).
        keep_onnx: keep the ONNX files beside the results.
        timeout_s: seconds per variant before its process is killed (None: no limit).
        max_rss_gb: kill a variant's process whose RSS exceeds this (None: only the kernel's OOM killer).
        isolate: each variant in a fresh process (honest per-variant memory; crash and OOM reported as rows).
    """

    calib_samples: int = 4
    parity_samples: int = 2
    parity_rtol: float = 1e-4
    keep_onnx: bool = False
    timeout_s: float | None = 3600.0
    max_rss_gb: float | None = None
    isolate: bool = True


class CheckFailed(PipelineError):
    """A step ran but its check did not hold; ``figures`` keeps what it measured."""

    def __init__(self, message: str, figures: dict[str, Any] | None = None) -> None:
        super().__init__(message)
        self.figures = figures or {}


@dataclass
class VariantRun:
    """What the steps of one variant share: its settings and what earlier steps produced (``state``)."""

    variant: str
    cfg: Any  # pipeline.config.Config
    workdir: Path
    options: PreflightOptions
    state: dict[str, Any] = dataclasses.field(default_factory=dict)

    @property
    def trt(self) -> str | None:
        """The TensorRT op list the profile is checked against (None: not a TensorRT device)."""
        return op_list_version(self.cfg)


def op_list_version(cfg: Any) -> str | None:
    """The listed TensorRT version a config's device is checked against; None for a device without TensorRT."""
    from quantize.trt_compat import resolve_version

    return resolve_version(cfg.device.trt_version) if cfg.device.backend == "tensorrt" else None
