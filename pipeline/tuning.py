"""What every INT8 artifact is built and judged with: the calibration inputs and a tuning subset of the validation
split, disjoint from them, plus the three figures per artifact (mIoU drop, size ratio, speed-up).

Usage: ``tuning = load_tuning(ctx); tuning.score(rt.infer)``. The ``quantize`` stage (PTQ) and the ``qat`` stage
(quantization-aware fine-tuning) both judge their artifacts this way, on the same samples; ``validate`` leaves these
samples out of its gate (:data:`pipeline.layout.TUNING_IDS`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from foundation.errors import DataError
from pipeline.layout import CALIBRATION, TOKENIZER
from runtimes.formats import FORMATS
from runtimes.formats import MASK_OUTPUT as MASK

log = logging.getLogger(__name__)


def median_ms(fns: dict[str, Callable[[], Any]], runs: int) -> dict[str, float]:
    """p50 latency (ms) of each callable, timed interleaved after a short warm-up (benchmarks.latency)."""
    from benchmarks.latency import summarize, time_interleaved

    times, errors = time_interleaved(fns, warmup=3, runs=runs)
    if errors:
        log.warning("quantize: latency measurement failed for %s", errors)
    return {name: summarize(t).get("p50_ms", float("nan")) for name, t in times.items()}


def check_validation_disjoint(items: list[Any], calib_ids: np.ndarray) -> None:
    """The validation subset must not contain a calibration (referent, sentence)."""
    calib = {tuple(str(i).split(":")[1:]) for i in calib_ids}
    clash = [it[2] for it in items if tuple(str(it[2]).split(":")[1:]) in calib]
    if clash:
        raise DataError(f"validation samples {clash[:10]} are also calibration samples; they must be disjoint")


def artifact_figures(ref_miou: float, miou: float, fp32: Path, int8: Path, ms: dict[str, float]) -> dict[str, Any]:
    from runtimes.export import file_size

    return {
        "reference_miou": ref_miou,
        "miou": miou,
        "miou_drop_points": (ref_miou - miou) * 100.0,
        "size_mb": round(file_size(int8) / 1e6, 3),
        "size_ratio": file_size(int8) / file_size(fp32),
        "latency_p50_ms": {"fp32": ms["fp32"], "int8": ms["int8"]},
        "speedup": ms["fp32"] / ms["int8"] if ms["int8"] > 0 else None,
    }


@dataclass
class Tuning:
    """What every INT8 artifact is built and judged with: the calibration inputs, and the validation subset the
    fallback and accuracy control tune on (disjoint from calibration; validate leaves it out of its gate)."""

    calib: dict[str, np.ndarray]
    items: list[Any]
    split: str
    threshold: float
    threads: int | None
    fp32_onnx: Path
    fp32_xml: Path

    def score(self, infer: Callable[[dict[str, np.ndarray]], dict[str, np.ndarray]]) -> float:
        """mIoU of a runtime's ``infer`` on the tuning subset."""
        from quantize.calibration import score

        return score(lambda f: infer(f)[MASK], self.items, self.threshold)[0]

    def timed(self, fp32: Any, int8: Any, runs: int) -> dict[str, float]:
        """p50 ms of the FP32 and the INT8 runtime on the first tuning sample, timed interleaved."""
        sample = self.items[0].feeds
        return median_ms({"fp32": lambda: fp32.infer(sample), "int8": lambda: int8.infer(sample)}, runs)


def load_tuning(cfg: Any, upstream: Mapping[str, Path]) -> Tuning:
    """Calibration inputs (checked against the exported model's inputs) and the tuning subset, disjoint from them.

    Args:
        cfg: the resolved config.
        upstream: the finished ``data``, ``export`` and ``calibrate`` stage folders (``StageContext.upstream_dirs``).

    Raises:
        DataError: the calibration inputs do not fit the exported model, or overlap the tuning subset.
    """
    from pipeline.data.dataset import open_dataset
    from quantize.calibration import load_calibration, validation_items
    from runtimes.export import read_onnx_metadata
    from runtimes.tokenizer import TextTokenizer

    export = upstream["export"]
    fp32_onnx = export / FORMATS["onnxruntime-fp32"].file
    meta = read_onnx_metadata(fp32_onnx)
    calib = load_calibration(upstream["calibrate"] / CALIBRATION)
    want = tuple(meta["inputs"]["image"]["shape"][1:])
    if tuple(calib["image"].shape[1:]) != want or calib["input_ids"].shape[1] != meta["max_tokens"]:
        raise DataError(
            f"calibration inputs {list(calib['image'].shape[1:])} / {calib['input_ids'].shape[1]} tokens do not match "
            f"the exported model ({list(want)} / {meta['max_tokens']}); rerun calibrate with the same model config"
        )
    refer = open_dataset(cfg, upstream["data"])
    tok = TextTokenizer.from_dir(export / TOKENIZER, max_length=int(meta["max_tokens"]))
    split = cfg.train.val_split if cfg.train.val_split in refer.splits else cfg.data.eval_splits[0]
    items = validation_items(refer, [split], cfg.quant.eval_samples, tok, int(meta["img_size"]))
    check_validation_disjoint(items, calib["ids"])
    threshold = float(meta.get("threshold", cfg.model.threshold))
    fp32_xml = export / FORMATS["openvino-fp32"].file
    return Tuning(calib, items, split, threshold, cfg.timing_threads(), fp32_onnx, fp32_xml)
