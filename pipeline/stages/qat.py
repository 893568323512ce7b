"""The ``qat`` stage: quantization-aware fine-tuning with distillation, for each INT8 path PTQ leaves over target.

Usage: ``python -m pipeline run --config configs/demo.yaml --stages qat --set quant.qat.mode=always``.

``quant.qat.mode``: ``auto`` fine-tunes each INT8 path whose PTQ drop, after the fallback, is over
``quant.target_miou`` on the quantize stage's tuning subset (nothing to do otherwise: the stage records why);
``always`` fine-tunes both; ``never`` disables the stage. Per path, from the deployed FP32 checkpoint:

1. the fake-quantized model, its scales calibrated like PTQ's (the starting point is the PTQ model): the torch
   fake-quant recipe (:mod:`quantize.qat_torch`: symmetric INT8, per-channel weights, Q/DQ in front of Conv /
   Linear) for the TensorRT path, and for the OpenVINO path too by default (``quant.qat.openvino_from=qdq``: OpenVINO
   reads the same Q/DQ ONNX as FakeQuantize ops, one fine-tuning for both paths); with ``openvino_from=nncf`` the
   OpenVINO path fine-tunes NNCF's PyTorch quantizer instead (:mod:`quantize.qat_openvino`; its IR, converted from
   torch, keeps ``torch.roll`` as Roll ops and ran 1.4x slower than the Q/DQ-derived IR on the demo model); the mask
   head stays float;
2. ``quant.qat.steps`` steps of fine-tuning with the FP32 model as the teacher (:mod:`pipeline.training.qat`);
3. the INT8 artifact: ``full_int8_qdq_qat.onnx`` (explicit Q/DQ, checked against every TensorRT version's parser) and
   ``full_int8_qat.xml``; each judged like the PTQ artifacts, on the same tuning subset and runtime (mIoU drop, size
   ratio, speed-up), with the PTQ figures beside it and the fine-tuning curve.

``validate`` scores the QAT artifacts on the evaluation splits beside the PTQ ones; the gate and the deploy bundle
keep judging and shipping the PTQ artifacts.
"""

from __future__ import annotations

import logging
from typing import Any

from pipeline.layout import deployed_checkpoint, stage_figures
from pipeline.stage import CODE_MEASURING, StageContext, stage
from pipeline.tuning import Tuning, artifact_figures, load_tuning
from runtimes.formats import FORMATS

log = logging.getLogger(__name__)

PATHS = {"qdq": ("onnxruntime-int8", "onnxruntime-int8-qat"), "openvino": ("openvino-int8", "openvino-int8-qat")}


def paths_to_tune(cfg: Any, ptq: dict[str, Any]) -> dict[str, str]:
    """INT8 path → why it is fine-tuned (``auto``: its PTQ drop is over target; ``always``: asked)."""
    chosen: dict[str, str] = {}
    made = {"qdq": cfg.quant.qdq, "openvino": cfg.openvino_artifacts(cfg.quant.openvino)}
    for path, (ptq_name, _) in PATHS.items():
        entry = ptq.get(FORMATS[ptq_name].file)
        if entry is None or not made[path]:
            continue  # that INT8 path is not made for this device
        if cfg.quant.qat.mode == "always":
            chosen[path] = "quant.qat.mode=always"
        elif not entry.get("within_target", True):
            chosen[path] = f"PTQ drop {entry['miou_drop_points']:.2f} > target {cfg.quant.target_miou} points"
    return chosen


@stage(
    "qat",
    upstream=("data", "train", "distill", "export", "calibrate", "quantize"),
    sections=("data", "model", "train", "quant", "device", "export"),
    version="1",
    toolchain=("torch", "timm", "transformers", "tokenizers", "onnx", "onnxruntime", "openvino", "nncf"),
    code=(
        *CODE_MEASURING,
        "pipeline.training.data",
        "pipeline.training.objectives",
        "pipeline.training.qat",
        "pipeline.training.state",
        "pipeline.tuning",
    ),
    per_device=True,  # the Q/DQ graph follows the device profile's opset and TensorRT version
    enabled=lambda cfg: cfg.quant.qat.mode != "never",
)
def run_qat(ctx: StageContext) -> dict[str, Any]:
    """Fine-tune and write the QAT INT8 artifacts of the paths that need them; measure each like PTQ."""
    from runtimes import get_runtime

    cfg = ctx.cfg
    # 1. which INT8 paths need it, from the quantize stage's figures
    ptq = stage_figures(ctx.upstream("quantize"))
    chosen = paths_to_tune(cfg, ptq)
    figures: dict[str, Any] = {"mode": cfg.quant.qat.mode, "tuned": chosen}
    if not chosen:
        log.info("qat: nothing to fine-tune (every PTQ drop is within quant.target_miou)")
        return figures
    # 2. the tuning subset PTQ was judged on, and the FP32 references
    tuning = load_tuning(cfg, ctx.upstream_dirs)
    # 3. each path: fake-quantized model, fine-tuning, artifact, figures
    from_qdq = "openvino" in chosen and cfg.quant.qat.openvino_from == "qdq"
    qdq_file, ov_file = FORMATS["onnxruntime-int8-qat"].file, FORMATS["openvino-int8-qat"].file
    if "qdq" in chosen or from_qdq:
        ort_fp32 = get_runtime("onnxruntime").load(tuning.fp32_onnx, threads=tuning.threads)
        figures[qdq_file] = qat_for_tensorrt(ctx, tuning, ort_fp32) | ptq_beside(ptq, "onnxruntime-int8")
    if "openvino" in chosen:
        entry = openvino_from_qdq(ctx, tuning, figures[qdq_file]) if from_qdq else qat_for_openvino(ctx, tuning)
        figures[ov_file] = entry | ptq_beside(ptq, "openvino-int8")
    return figures


def ptq_beside(ptq: dict[str, Any], name: str) -> dict[str, Any]:
    entry = ptq.get(FORMATS[name].file, {})
    return {"ptq": {k: entry.get(k) for k in ("miou", "miou_drop_points", "within_target", "within_budget")}}


def models(ctx: StageContext) -> tuple[Any, Any, Any]:
    """The deployed checkpoint twice: the student (to fake-quantize) and the frozen FP32 teacher, and its spec."""
    from model import graph_specs, load_checkpoint

    checkpoint = deployed_checkpoint(ctx.upstream_dirs)
    student, _ = load_checkpoint(checkpoint)
    teacher, _ = load_checkpoint(checkpoint)
    if ctx.cfg.train.freeze_text:
        student.text.body.requires_grad_(False)  # as trained: the pretrained text encoder stays as it is
    return graph_specs(student)["full"].module, graph_specs(teacher)["full"].module, student.spec


def calibration_inputs(tuning: Tuning, n: int) -> list[tuple[Any, ...]]:
    """The first ``n`` calibration samples as torch input tuples of batch 1 (int64 tokens, as the model takes)."""
    import torch

    calib = tuning.calib
    count = min(n, len(calib["image"]))
    return [
        (
            torch.from_numpy(calib["image"][i : i + 1]),
            torch.from_numpy(calib["input_ids"][i : i + 1].astype("int64")),
            torch.from_numpy(calib["attention_mask"][i : i + 1].astype("int64")),
        )
        for i in range(count)
    ]


def param_groups(module: Any, model_names: set[str], cfg: Any) -> list[dict[str, Any]]:
    """AdamW groups of the fake-quantized module: its model weights at ``quant.qat.lr``, the quantizer tensors the
    preparation added (every parameter whose name the model did not have) at ``quant.qat.scale_lr``. With
    ``train.freeze_text`` the text encoder's quantizers keep their calibrated scales too: training them would
    backpropagate through the whole frozen encoder, for no change of its weights."""
    q = cfg.quant.qat
    weights, scales = [], []
    for name, p in module.named_parameters():
        if name in model_names:
            if p.requires_grad:
                weights.append(p)
        elif cfg.train.freeze_text and ("text.body" in name or "text/body" in name):
            p.requires_grad_(False)
        elif p.requires_grad:
            scales.append(p)
    log.info("qat: %d weight tensors at lr %g, %d quantizer tensors at lr %g", len(weights), q.lr, len(scales),
             q.scale_lr)  # fmt: skip
    return [
        {"params": weights, "lr": q.lr, "name": "weights"},
        {"params": scales, "lr": q.scale_lr, "name": "quantizer"},
    ]


def qat_for_tensorrt(ctx: StageContext, tuning: Tuning, ort_fp32: Any) -> dict[str, Any]:
    """The TensorRT path: torch fake-quant, fine-tuning, explicit Q/DQ ONNX; judged in ONNX Runtime like PTQ's.

    Raises:
        ArtifactError: a TensorRT device profile whose parser would refuse the QAT graph.
    """
    from pipeline.training.qat import qat_finetune
    from quantize.qat_torch import export_qat_onnx, prepare_qat, qat_summary
    from quantize.qdq_graph import inspect_qdq
    from quantize.trt_compat import check_trt_compat, known_versions
    from runtimes import get_runtime
    from runtimes.export import read_onnx_metadata

    cfg = ctx.cfg
    student, teacher, spec = models(ctx)
    names = {n for n, _ in student.named_parameters()}
    prepare_qat(student, calibration_inputs(tuning, cfg.quant.qat.calibration_samples))
    curve = qat_finetune(cfg, ctx.upstream("data"), student, teacher, param_groups(student, names, cfg), spec)
    out = ctx.out / FORMATS["onnxruntime-int8-qat"].file
    description = {k: v for k, v in read_onnx_metadata(tuning.fp32_onnx).items() if k not in ("inputs", "outputs")}
    trt = cfg.device.trt_version if cfg.device.backend == "tensorrt" else None
    export_qat_onnx(student, out, description, opset=cfg.export.opset or cfg.device.opset, trt_version=trt)
    ort_q = get_runtime("onnxruntime").load(out, threads=tuning.threads)
    ref = tuning.score(ort_fp32.infer)
    entry = artifact_figures(ref, tuning.score(ort_q.infer), tuning.fp32_onnx, out,
                             tuning.timed(ort_fp32, ort_q, cfg.quant.latency_runs))  # fmt: skip
    report = check_trt_compat(out, trt)
    if not report.ok and trt is not None:
        report.raise_for_errors()  # the bundle's engine build would fail on the robot
    return entry | {
        "runtime": "onnxruntime",
        "method": "qat (torch fake-quant, distillation from FP32)",
        "fine_tuning": curve,
        "layers": qat_summary(student),
        "within_target": entry["miou_drop_points"] <= cfg.quant.target_miou,
        "within_budget": entry["miou_drop_points"] <= cfg.quant.budget_miou,
        "qdq": inspect_qdq(out),
        "trt_compat": {
            "profile": report.to_dict() | {"ops": None},
            "all_versions": {v: check_trt_compat(out, v).ok for v in known_versions()},
        },
    }


def openvino_from_qdq(ctx: StageContext, tuning: Tuning, qdq: dict[str, Any]) -> dict[str, Any]:
    """The OpenVINO path from the fine-tuned Q/DQ ONNX: OpenVINO reads its Q/DQ pairs as FakeQuantize ops (the same
    graph, the same scales); judged in OpenVINO like PTQ's."""
    from runtimes import get_runtime
    from runtimes.export import export_openvino

    cfg = ctx.cfg
    source = ctx.out / FORMATS["onnxruntime-int8-qat"].file
    meta = {"precision": "int8", "quantization": {"method": "qat", "tool": "torch fake-quant, Q/DQ ONNX read by "
                                                  "OpenVINO", "source": source.name}}  # fmt: skip
    out = export_openvino(source, ctx.out / FORMATS["openvino-int8-qat"].file, meta)
    ov_fp32 = get_runtime("openvino").load(tuning.fp32_xml, threads=tuning.threads)
    ov_q = get_runtime("openvino").load(out, threads=tuning.threads)
    entry = artifact_figures(tuning.score(ov_fp32.infer), tuning.score(ov_q.infer), tuning.fp32_xml, out,
                             tuning.timed(ov_fp32, ov_q, cfg.quant.latency_runs))  # fmt: skip
    return entry | {
        "runtime": "openvino",
        "method": "qat (torch fake-quant, distillation from FP32; the Q/DQ ONNX read by OpenVINO)",
        "fine_tuning": qdq["fine_tuning"],
        "within_target": entry["miou_drop_points"] <= cfg.quant.target_miou,
        "within_budget": entry["miou_drop_points"] <= cfg.quant.budget_miou,
    }


def qat_for_openvino(ctx: StageContext, tuning: Tuning) -> dict[str, Any]:
    """The OpenVINO path: NNCF's torch quantizer, fine-tuning, INT8 IR; judged in OpenVINO like PTQ's."""
    from pipeline.training.qat import qat_finetune
    from quantize.qat_openvino import export_qat_openvino, prepare_nncf_qat
    from runtimes import get_runtime

    cfg = ctx.cfg
    student, teacher, spec = models(ctx)
    names = {n for n, _ in student.named_parameters()}
    calibration = calibration_inputs(tuning, cfg.quant.qat.calibration_samples)
    qmodel = prepare_nncf_qat(student, calibration)  # NNCF's copy of the model, with its quantizers
    curve = qat_finetune(cfg, ctx.upstream("data"), qmodel, teacher, param_groups(qmodel, names, cfg), spec)
    ov_fp32 = get_runtime("openvino").load(tuning.fp32_xml, threads=tuning.threads)
    out = ctx.out / FORMATS["openvino-int8-qat"].file
    token_positions = [i for i, name in enumerate(ov_fp32.inputs) if name != "image"]
    export_qat_openvino(qmodel, calibration[0], out, dict(ov_fp32.metadata), token_positions)
    ov_q = get_runtime("openvino").load(out, threads=tuning.threads)
    entry = artifact_figures(tuning.score(ov_fp32.infer), tuning.score(ov_q.infer), tuning.fp32_xml, out,
                             tuning.timed(ov_fp32, ov_q, cfg.quant.latency_runs))  # fmt: skip
    return entry | {
        "runtime": "openvino",
        "method": "qat (NNCF, distillation from FP32)",
        "fine_tuning": curve,
        "within_target": entry["miou_drop_points"] <= cfg.quant.target_miou,
        "within_budget": entry["miou_drop_points"] <= cfg.quant.budget_miou,
    }
