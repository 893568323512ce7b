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
from pathlib import Path
from typing import Any

import numpy as np

from foundation.errors import DataError
from foundation.io import atomic_write_json
from pipeline.config import qdq_float_dtype
from pipeline.stage import CODE_MEASURING, StageContext, stage

log = logging.getLogger(__name__)

MASK = "mask_logits"
TUNING_IDS = "tuning_ids.json"  # the samples the INT8 fallback was tuned on (validate keeps them out of its gate)


def threads_of(cfg: Any) -> int | None:
    """Threads every runtime gets when timed (here and in bench): ``bench.threads``, else the device profile's."""
    return cfg.bench.threads or cfg.device.threads


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


@stage(
    "quantize",
    upstream=("data", "export", "calibrate"),
    sections=("data", "quant", "device", "bench"),
    version="1",
    toolchain=("onnx", "onnxruntime", "openvino", "nncf", "nvidia-modelopt", "tokenizers", "transformers"),
    code=CODE_MEASURING,
    per_device=True,  # float remainder, compatibility target and threads follow the device profile
)
def run_quantize(ctx: StageContext) -> dict[str, Any]:
    """Quantize the full graph for OpenVINO and for TensorRT; measure drop, size and speed of each."""
    from pipeline.data.dataset import open_dataset
    from quantize.calibration import load_calibration, score, validation_items
    from quantize.qdq import accuracy_fallback, head_nodes, inspect_qdq, resolve_backend
    from quantize.trt_compat import check_trt_compat, known_versions, load_op_list, resolve_version
    from runtimes import get_runtime
    from runtimes.export import read_onnx_metadata
    from runtimes.tokenizer import TextTokenizer

    cfg, q = ctx.cfg, ctx.cfg.quant
    export = ctx.upstream("export")
    fp32_onnx, fp32_xml = export / "full.onnx", export / "full.xml"
    meta = read_onnx_metadata(fp32_onnx)
    threads = threads_of(cfg)  # the same threads validate and bench time every runtime with

    # 1. data: calibration set and a validation subset of the evaluation splits, disjoint from it
    calib = load_calibration(ctx.upstream("calibrate") / "calib.npz")
    want = tuple(meta["inputs"]["image"]["shape"][1:])
    if tuple(calib["image"].shape[1:]) != want or calib["input_ids"].shape[1] != meta["max_tokens"]:
        raise DataError(
            f"calibration inputs {list(calib['image'].shape[1:])} / {calib['input_ids'].shape[1]} tokens do not match "
            f"the exported model ({list(want)} / {meta['max_tokens']}); rerun calibrate with the same model config"
        )
    refer = open_dataset(cfg, ctx.upstream("data"))
    tok = TextTokenizer.from_dir(export / "tokenizer", max_length=int(meta["max_tokens"]))
    # the fallback and accuracy control tune on the validation split; validate leaves these samples out of its gate
    tune_split = cfg.train.val_split if cfg.train.val_split in refer.splits else cfg.data.eval_splits[0]
    items = validation_items(refer, [tune_split], q.eval_samples, tok, int(meta["img_size"]))
    check_validation_disjoint(items, calib["ids"])
    atomic_write_json(ctx.out / TUNING_IDS, {"split": tune_split, "ids": [str(it[2]) for it in items]})
    threshold = float(meta.get("threshold", cfg.model.threshold))
    figures: dict[str, Any] = {
        "validation_samples": len(items),
        "validation_split": tune_split,
        "calibration_samples": int(len(calib["ids"])),
    }
    sample = items[0].feeds

    # 2. FP32 reference in ONNX Runtime (the runtime that also executes the Q/DQ graph here)
    ort_fp32 = get_runtime("onnxruntime").load(fp32_onnx, threads=threads)
    ref_miou, _ = score(lambda f: ort_fp32.infer(f)[MASK], items, threshold)
    figures["reference_miou_onnxruntime"] = ref_miou

    # 3a. OpenVINO INT8 (NNCF, transformer model type; accuracy control aiming at the target drop when asked)
    if cfg.openvino_artifacts(q.openvino):
        from quantize.openvino_int8 import quantize_openvino_int8

        ov_fp32 = get_runtime("openvino").load(fp32_xml, threads=threads)
        ov_ref, _ = score(lambda f: ov_fp32.infer(f)[MASK], items, threshold)
        validation = None
        if q.accuracy_control:

            def validation_fn(compiled: Any, data: Any) -> tuple[float, list[float]]:
                return score(lambda f: compiled(f)[0], list(data), threshold)

            validation = (items, validation_fn)
        out_xml, info = quantize_openvino_int8(
            fp32_xml,
            ctx.out / "full_int8.xml",
            calib,
            validation=validation,
            max_drop=q.target_miou / 100.0,
            ignored_nodes=head_nodes(fp32_onnx),  # the mask head stays float, as in the Q/DQ graph
        )
        ov_int8 = get_runtime("openvino").load(out_xml, threads=threads)
        miou, _ = score(lambda f: ov_int8.infer(f)[MASK], items, threshold)
        ms = median_ms({"fp32": lambda: ov_fp32.infer(sample), "int8": lambda: ov_int8.infer(sample)}, q.latency_runs)
        entry = artifact_figures(ov_ref, miou, fp32_xml, out_xml, ms)
        entry |= {
            "runtime": "openvino",
            "quantization": info,
            "within_target": entry["miou_drop_points"] <= q.target_miou,
            "within_budget": entry["miou_drop_points"] <= q.budget_miou,
        }
        figures["full_int8.xml"] = entry

    # 3b. TensorRT-bound Q/DQ INT8, evaluated in ONNX Runtime, with accuracy-targeted fallback
    if q.qdq:
        trt = cfg.device.trt_version if cfg.device.backend == "tensorrt" else None
        max_opset = load_op_list(resolve_version(trt))["opset_max"] if trt else None
        backend = resolve_backend(q.qdq_backend, max_opset)
        float_dtype = qdq_float_dtype(cfg, backend)
        ort_q = get_runtime("onnxruntime")

        def evaluate(path: Path) -> float:
            ort_q.load(path, threads=threads)
            return score(lambda f: ort_q.infer(f)[MASK], items, threshold)[0]

        heads = head_nodes(fp32_onnx)
        result = accuracy_fallback(
            fp32_onnx,
            ctx.out / "full_int8_qdq.onnx",
            calib,
            evaluate,
            ref_miou,
            budget_points=q.budget_miou,
            target_points=q.target_miou,
            max_steps=q.max_fallback_steps,
            always_exclude=heads,
            backend=backend,
            float_dtype=float_dtype,
        )
        qdq = result.path
        ort_q.load(qdq, threads=threads)
        ms = median_ms({"fp32": lambda: ort_fp32.infer(sample), "int8": lambda: ort_q.infer(sample)}, q.latency_runs)
        entry = artifact_figures(ref_miou, result.steps[-1]["miou"], fp32_onnx, qdq, ms)
        report = check_trt_compat(qdq, trt)
        entry |= {
            "runtime": "onnxruntime",
            "backend": backend,
            "float_remainder": float_dtype,
            "mask_head": heads,
            "fallback": result.to_dict(),
            "within_target": result.within_target,
            "within_budget": result.within_budget,
            "qdq": inspect_qdq(qdq),
            "trt_compat": {
                "profile": report.to_dict() | {"ops": None},
                "all_versions": {v: check_trt_compat(qdq, v).ok for v in known_versions()},
            },
        }
        if not report.ok:
            if cfg.device.backend == "tensorrt":
                report.raise_for_errors()  # the bundle's engine build would fail on the robot
            log.warning("quantize: %s", report.summary())
        figures["full_int8_qdq.onnx"] = entry
    figures["machine"] = _machine(threads)
    return figures


def _machine(threads: int | None) -> dict[str, Any]:
    try:
        from benchmarks.latency import machine_info

        return machine_info(threads)
    except Exception as exc:  # a description, never a reason to fail the stage
        return {"error": f"{type(exc).__name__}: {exc}"}
