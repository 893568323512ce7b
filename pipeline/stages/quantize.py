"""The ``quantize`` stage: OpenVINO INT8 (NNCF) and TensorRT-bound Q/DQ INT8 ONNX with accuracy-targeted fallback.

Usage: ``python -m pipeline run --config configs/demo.yaml --stages quantize [--set quant.accuracy_control=true]``.

Follows NNCF's example layout: 1. data (calibration set, validation subset disjoint from it), 2. FP32 references,
3. each INT8 artifact, 4. the three figures per artifact (mIoU drop in points, size ratio, speed-up on this machine
as the ratio of median latencies, same runtime and threads), plus the TensorRT compatibility check of the Q/DQ graph.
Writes ``full_int8.xml/.bin`` and ``full_int8_qdq.onnx``.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

from foundation.io import atomic_write_json
from pipeline.config import qdq_float_dtype
from pipeline.layout import TUNING_IDS
from pipeline.stage import CODE_MEASURING, StageContext, stage
from pipeline.tuning import Tuning, artifact_figures, load_tuning
from runtimes.formats import FORMATS
from runtimes.formats import MASK_OUTPUT as MASK

log = logging.getLogger(__name__)


@stage(
    "quantize",
    upstream=("data", "export", "calibrate"),
    sections=("data", "quant", "device", "bench"),
    version="1",
    toolchain=("onnx", "onnxruntime", "openvino", "nncf", "nvidia-modelopt", "tokenizers", "transformers"),
    code=(*CODE_MEASURING, "pipeline.tuning"),
    per_device=True,  # float remainder, compatibility target and threads follow the device profile
)
def run_quantize(ctx: StageContext) -> dict[str, Any]:
    """Quantize the full graph for OpenVINO and for TensorRT; measure drop, size and speed of each."""
    from runtimes import get_runtime

    cfg, q = ctx.cfg, ctx.cfg.quant
    # 1. data: calibration set and a validation subset of the evaluation splits, disjoint from it
    tuning = load_tuning(ctx.cfg, ctx.upstream_dirs)
    atomic_write_json(ctx.out / TUNING_IDS, {"split": tuning.split, "ids": [str(it[2]) for it in tuning.items]})
    figures: dict[str, Any] = {
        "validation_samples": len(tuning.items),
        "validation_split": tuning.split,
        "calibration_samples": int(len(tuning.calib["ids"])),
    }
    # 2. FP32 reference in ONNX Runtime (the runtime that also executes the Q/DQ graph here)
    ort_fp32 = get_runtime("onnxruntime").load(tuning.fp32_onnx, threads=tuning.threads)
    figures["reference_miou_onnxruntime"] = tuning.score(ort_fp32.infer)
    # 3a. OpenVINO INT8 (NNCF, transformer model type; accuracy control aiming at the target drop when asked)
    if cfg.openvino_artifacts(q.openvino):
        figures[FORMATS["openvino-int8"].file] = quantize_for_openvino(ctx, tuning)
    # 3b. TensorRT-bound Q/DQ INT8, evaluated in ONNX Runtime, with accuracy-targeted fallback
    if q.qdq:
        qdq = quantize_for_tensorrt(ctx, tuning, ort_fp32, figures["reference_miou_onnxruntime"])
        figures[FORMATS["onnxruntime-int8"].file] = qdq
    figures["machine"] = _machine(tuning.threads)
    return figures


def quantize_for_openvino(ctx: StageContext, tuning: Tuning) -> dict[str, Any]:
    """The OpenVINO INT8 IR (NNCF), with its drop against the OpenVINO FP32 IR, size and speed-up."""
    from quantize.openvino_int8 import quantize_openvino_int8
    from quantize.qdq import head_nodes
    from runtimes import get_runtime

    q = ctx.cfg.quant
    ov_fp32 = get_runtime("openvino").load(tuning.fp32_xml, threads=tuning.threads)
    validation = None
    if q.accuracy_control:

        def validation_fn(compiled: Any, data: Any) -> tuple[float, list[float]]:
            from quantize.calibration import score

            return score(lambda f: compiled(f)[0], list(data), tuning.threshold)

        validation = (tuning.items, validation_fn)
    out_xml, info = quantize_openvino_int8(
        tuning.fp32_xml,
        ctx.out / FORMATS["openvino-int8"].file,
        tuning.calib,
        validation=validation,
        max_drop=q.target_miou / 100.0,
        ignored_nodes=head_nodes(tuning.fp32_onnx),  # the mask head stays float, as in the Q/DQ graph
    )
    ov_int8 = get_runtime("openvino").load(out_xml, threads=tuning.threads)
    ms = tuning.timed(ov_fp32, ov_int8, q.latency_runs)
    entry = artifact_figures(tuning.score(ov_fp32.infer), tuning.score(ov_int8.infer), tuning.fp32_xml, out_xml, ms)
    return entry | {
        "runtime": "openvino",
        "quantization": info,
        "within_target": entry["miou_drop_points"] <= q.target_miou,
        "within_budget": entry["miou_drop_points"] <= q.budget_miou,
    }


def sensitivity_ranking(ctx: StageContext, tuning: Tuning, qdq: Path) -> list[tuple[str, float]]:
    """The fallback order of a Q/DQ graph over target: its layer groups by the accuracy that keeping each one float
    recovers on the tuning subset (:mod:`quantize.sensitivity`), most first; each node scored with its group's."""
    from quantize.calibration import score
    from quantize.sensitivity import measure_sensitivity

    d = ctx.cfg.quant.diagnose
    items = tuning.items[: d.samples]

    def scored(infer: Callable[[Any], Any]) -> float:
        return score(lambda f: infer(f)[MASK], items, tuning.threshold)[0]

    result = measure_sensitivity(qdq, tuning.fp32_onnx, scored, modes=["float"], max_groups=d.max_groups,
                                 threads=tuning.threads, threshold=tuning.threshold)  # fmt: skip
    log.info("quantize: fallback order from the sensitivity of %d layer groups", len(result.groups))
    return [(node, group.recovery or 0.0) for group in result.ranked() for node in group.nodes]


def quantize_for_tensorrt(ctx: StageContext, tuning: Tuning, ort_fp32: Any, ref_miou: float) -> dict[str, Any]:
    """The explicit Q/DQ INT8 ONNX for TensorRT (accuracy-targeted fallback, scored in ONNX Runtime), with its
    drop, size, speed-up and TensorRT compatibility for the profile and every known version.

    Raises:
        ArtifactError: a TensorRT device profile whose parser would refuse the graph.
    """
    from quantize.qdq import head_nodes, resolve_backend
    from quantize.qdq_fallback import accuracy_fallback
    from quantize.qdq_graph import inspect_qdq
    from quantize.trt_compat import check_trt_compat, known_versions, load_op_list, resolve_version
    from runtimes import get_runtime

    cfg, q = ctx.cfg, ctx.cfg.quant
    trt = cfg.device.trt_version if cfg.device.backend == "tensorrt" else None
    backend = resolve_backend(q.qdq_backend, load_op_list(resolve_version(trt))["opset_max"] if trt else None)
    float_dtype = qdq_float_dtype(cfg, backend)
    ort_q = get_runtime("onnxruntime")
    heads = head_nodes(tuning.fp32_onnx)
    result = accuracy_fallback(
        tuning.fp32_onnx,
        ctx.out / FORMATS["onnxruntime-int8"].file,
        tuning.calib,
        lambda path: tuning.score(ort_q.load(path, threads=tuning.threads).infer),
        ref_miou,
        budget_points=q.budget_miou,
        target_points=q.target_miou,
        max_steps=q.max_fallback_steps,
        always_exclude=heads,
        backend=backend,
        float_dtype=float_dtype,
        rank=partial(sensitivity_ranking, ctx, tuning) if q.fallback_order == "sensitivity" else None,
    )
    ort_q.load(result.path, threads=tuning.threads)
    ms = tuning.timed(ort_fp32, ort_q, q.latency_runs)
    entry = artifact_figures(ref_miou, result.steps[-1]["miou"], tuning.fp32_onnx, result.path, ms)
    report = check_trt_compat(result.path, trt)
    if not report.ok:
        if cfg.device.backend == "tensorrt":
            report.raise_for_errors()  # the bundle's engine build would fail on the robot
        log.warning("quantize: %s", report.summary())
    return entry | {
        "runtime": "onnxruntime",
        "backend": backend,
        "float_remainder": float_dtype,
        "mask_head": heads,
        "fallback": result.to_dict(),
        "within_target": result.within_target,
        "within_budget": result.within_budget,
        "qdq": inspect_qdq(result.path),
        "trt_compat": {
            "profile": report.to_dict() | {"ops": None},
            "all_versions": {v: check_trt_compat(result.path, v).ok for v in known_versions()},
        },
    }


def _machine(threads: int | None) -> dict[str, Any]:
    try:
        from benchmarks.machine import machine_info

        return machine_info(threads)
    except Exception as exc:  # a description, never a reason to fail the stage
        return {"error": f"{type(exc).__name__}: {exc}"}
