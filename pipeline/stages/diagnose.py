"""The ``diagnose`` stage: why each INT8 artifact loses accuracy, layer by layer.

Usage: ``python -m pipeline run --config configs/demo.yaml --stages diagnose [--set quant.diagnose.max_groups=20]``.

For the Q/DQ INT8 ONNX (ONNX Runtime) and the OpenVINO INT8 IR (NNCF), each against its FP32 graph:

1. sensitivity (:mod:`quantize.sensitivity`): the quantized layers in groups by model block; each group alone left
   in float (and, with ``quant.diagnose.modes`` ``quantized``, alone quantized), by graph surgery on the finished
   artifact, scored on ``quant.diagnose.samples`` samples of the quantize stage's tuning subset (disjoint from
   calibration): the mIoU drop and mask agreement per group, ranked by how much accuracy keeping it float recovers,
   with a bar chart;
2. first divergence (:mod:`quantize.divergence`): every intermediate tensor of both graphs on a few calibration
   samples, SQNR and cosine per layer, the first layer below ``quant.diagnose.sqnr_threshold_db``.

Writes ``diagnose.json`` and ``sensitivity_<artifact>.png``; the report shows both tables per artifact.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

from foundation.io import atomic_write_json
from pipeline.layout import DIAGNOSE
from pipeline.stage import CODE_MEASURING, StageContext, stage
from pipeline.tuning import Tuning, load_tuning
from runtimes.formats import FORMATS

log = logging.getLogger(__name__)

# INT8 artifact -> its FP32 graph (same format) and the comparison that exposes its tensors
TARGETS = {"onnxruntime-int8": ("onnxruntime-fp32", "onnx"), "openvino-int8": ("openvino-fp32", "openvino")}


@stage(
    "diagnose",
    upstream=("data", "export", "calibrate", "quantize"),
    sections=("data", "quant", "device"),
    version="1",
    toolchain=("onnx", "onnxruntime", "openvino", "tokenizers"),
    code=(*CODE_MEASURING, "pipeline.tuning"),
    per_device=True,
    enabled=lambda cfg: cfg.quant.diagnose.enabled,
)
def run_diagnose(ctx: StageContext) -> dict[str, Any]:
    """Sensitivity and first divergence of each INT8 artifact the quantize stage wrote; ``diagnose.json``."""
    # 1. the tuning subset the INT8 artifacts were judged on, and the artifacts there are
    tuning = load_tuning(ctx.cfg, ctx.upstream_dirs)
    folders = {"export": ctx.upstream("export"), "quantize": ctx.upstream("quantize")}
    found = {
        name: (folders["quantize"] / FORMATS[name].file, folders["export"] / FORMATS[ref].file, kind)
        for name, (ref, kind) in TARGETS.items()
        if (folders["quantize"] / FORMATS[name].file).is_file()
    }
    results: dict[str, Any] = {}
    for name, (int8, fp32, kind) in found.items():
        # 2. which layer groups cost accuracy
        sensitivity = sensitivity_of(ctx, tuning, int8, fp32, name)
        # 3. where the INT8 graph first departs from FP32
        divergence = divergence_of(ctx, tuning, int8, fp32, kind)
        results[name] = {"sensitivity": sensitivity, "divergence": divergence}
    atomic_write_json(ctx.out / DIAGNOSE, {"artifacts": results, "settings": ctx.cfg.quant.diagnose.model_dump()})
    return {
        name: {
            "first_divergence": (r["divergence"].get("first_divergence") or {}).get("layer"),
            "most_sensitive": (r["sensitivity"]["groups"] or [{}])[0].get("name"),
        }
        for name, r in results.items()
    }


def sensitivity_of(ctx: StageContext, tuning: Tuning, int8: Path, fp32: Path, name: str) -> dict[str, Any]:
    """Per-group sensitivity of one artifact on the first ``quant.diagnose.samples`` tuning samples, and its plot."""
    from quantize.calibration import score
    from quantize.sensitivity import measure_sensitivity, write_sensitivity_plot
    from runtimes.formats import MASK_OUTPUT

    d = ctx.cfg.quant.diagnose
    items = tuning.items[: d.samples]

    def scored(infer: Any) -> float:
        return score(lambda f: infer(f)[MASK_OUTPUT], items, tuning.threshold)[0]

    result = measure_sensitivity(int8, fp32, scored, modes=d.modes, max_groups=d.max_groups, threads=tuning.threads,
                                 names_from=tuning.fp32_onnx, threshold=tuning.threshold)  # fmt: skip
    picture = write_sensitivity_plot(result, ctx.out / f"sensitivity_{name}.png")
    log.info("diagnose: %s sensitivity over %d groups in %.0f s", name, len(result.groups),
             result.seconds.get("total", 0.0))  # fmt: skip
    return result.to_dict() | {"picture": picture.name}


def divergence_of(ctx: StageContext, tuning: Tuning, int8: Path, fp32: Path, kind: str) -> dict[str, Any]:
    """Per-layer SQNR and cosine of one artifact against its FP32 graph on a few calibration samples."""
    from quantize.divergence import compare_onnx, compare_openvino
    from quantize.qdq import calibration_feeds
    from quantize.qdq_graph import graph_input_names

    d = ctx.cfg.quant.diagnose
    feeds = list(calibration_feeds(tuning.calib, graph_input_names(tuning.fp32_onnx), d.divergence_samples))
    if kind == "onnx":
        report = compare_onnx(fp32, int8, feeds, samples=d.divergence_samples, threshold_db=d.sqnr_threshold_db)
    else:
        report = compare_openvino(fp32, int8, feeds, samples=d.divergence_samples, threshold_db=d.sqnr_threshold_db,
                                  threads=tuning.threads)  # fmt: skip
    return report.to_dict(max_layers=None)
