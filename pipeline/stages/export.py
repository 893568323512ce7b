"""The ``export`` stage: ONNX FP32 (full + split graphs), FP16 ONNX, OpenVINO IR FP32, tokenizer, PyTorch parity.

Usage: ``python -m pipeline run --config configs/demo.yaml --stages export [--set export.opset=17]``.

Writes ``<graph>.onnx`` for ``full`` (and ``image_encoder``, ``text_encoder``, ``decoder`` with
``export.split_graphs``), ``full_fp16.onnx``, ``<graph>.xml/.bin`` and ``tokenizer/``. Every artifact carries its
description (:mod:`runtimes.base`). Parity (max |Δ| against PyTorch on ``export.parity_samples`` real evaluation
samples) is measured per artifact and recorded in the figures. For a TensorRT profile whose parser lacks
LayerNormalization (8.5), LayerNorm is decomposed into elementary ops before saving.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.layout import TOKENIZER
from pipeline.stage import CODE_TRAINING, StageContext, stage
from runtimes.export import torch_outputs
from runtimes.formats import FORMATS, SPLIT_GRAPHS

log = logging.getLogger(__name__)

PARITY_SPLIT = "val"


def describe(ctx: StageContext, model: Any, checkpoint: Path, graph: str) -> dict[str, Any]:
    """The self-description shared by every artifact of this run (I/O is added by the exporter)."""
    from foundation.io import sha256_file

    spec = model.spec
    return {
        "graph": graph,
        "variant": spec.name,
        "img_size": spec.img_size,
        "max_tokens": spec.max_tokens,
        "image_mean": list(spec.image_mean),
        "image_std": list(spec.image_std),
        "threshold": ctx.cfg.model.threshold,
        "tokenizer": TOKENIZER,  # folder beside the artifact
        "tokenizer_dir": str(ctx.layout.stage_dir(ctx.name) / TOKENIZER),  # where the runner puts the finished stage
        "token_dtype": "int32",
        "spec": spec.to_dict(),
        "config_hash": ctx.cfg.digest(["model", "export"]),
        "checkpoint_sha256": sha256_file(checkpoint),
        "run": ctx.cfg.run.name,
    }


def parity_feeds(ctx: StageContext, model: Any, n: int) -> list[dict[str, np.ndarray]]:
    """``n`` real evaluation samples as full-graph feeds (int32 tokens), from the data stage's output."""
    from pipeline.data.dataset import iter_eval, open_dataset
    from runtimes.tokenizer import TextTokenizer

    refer = open_dataset(ctx.cfg, ctx.upstream("data"))
    split = PARITY_SPLIT if PARITY_SPLIT in refer.splits else ctx.cfg.data.eval_splits[0]
    tok = TextTokenizer.from_dir(model.spec.text_dir, max_length=model.spec.max_tokens)
    feeds = []
    for inputs, _gt, _sample in iter_eval(refer, split, tok, model.spec.img_size, limit=n):
        feeds.append({k: (v.astype(np.int32) if v.dtype.kind == "i" else v) for k, v in inputs.items()})
    return feeds


def graph_feeds(graphs: dict[str, Any], full_feeds: dict[str, np.ndarray]) -> dict[str, dict[str, np.ndarray]]:
    """Feeds of every graph for one sample: split-graph inputs come from PyTorch's own encoders."""
    out = {"full": full_feeds}
    inter = dict(full_feeds)
    for name in ("image_encoder", "text_encoder"):
        if name in graphs:
            inter |= torch_outputs(graphs[name], full_feeds)
    for name, g in graphs.items():
        out[name] = {k: inter[k] for k in g.input_names}
    return out


def max_abs_diff(runtime: Any, graph: Any, feeds: list[dict[str, np.ndarray]], graphs: dict[str, Any]) -> float:
    worst = 0.0
    for full in feeds:
        sample = graph_feeds(graphs, full)[graph.name]
        ref = torch_outputs(graph, sample)
        got = runtime.infer(sample)
        worst = max(worst, *(float(np.max(np.abs(got[k].astype(np.float32) - ref[k]))) for k in ref))
    return worst


@stage(
    "export",
    upstream=("data", "train", "distill"),  # distill only while enabled: then its student is exported
    sections=("data", "model", "export", "device"),
    version="1",
    toolchain=("torch", "timm", "transformers", "tokenizers", "onnx", "onnxslim", "onnxruntime", "openvino"),
    code=(*CODE_TRAINING, "quantize.data", "quantize.trt_compat", "runtimes"),
    per_device=True,  # opset and LayerNorm handling follow the device profile's TensorRT version
)
def run_export(ctx: StageContext) -> dict[str, Any]:
    """Export, check against PyTorch, and describe every artifact."""
    from model import graph_specs, load_checkpoint
    from pipeline.layout import deployed_checkpoint
    from runtimes.export import copy_tokenizer

    cfg = ctx.cfg
    # 1. the trained model (the distilled student when distill ran) and the graphs to export
    checkpoint = deployed_checkpoint(ctx.upstream_dirs)
    model, _meta = load_checkpoint(checkpoint)
    model.eval()
    graphs = graph_specs(model)
    graphs = {n: graphs[n] for n in ["full", *(SPLIT_GRAPHS if cfg.export.split_graphs else ())]}
    feeds = parity_feeds(ctx, model, cfg.export.parity_samples)
    figures: dict[str, Any] = {"opset_requested": cfg.export.opset or cfg.device.opset, "artifacts": {},
                               "trt_compat": {}, "parity_samples": len(feeds)}  # fmt: skip
    # 2. ONNX FP32 per graph (+ LayerNorm decomposition for old TensorRT parsers)
    for name, graph in graphs.items():
        meta = describe(ctx, model, checkpoint, name)
        figures["artifacts"][f"{name}.onnx"], figures["trt_compat"][f"{name}.onnx"] = export_graph(
            ctx, graph, graphs, feeds, meta
        )
    # 3. OpenVINO IR FP32 from the ONNX (keeps input names); compiled with f32 precision for the parity check
    if cfg.openvino_artifacts(cfg.export.openvino):
        for name, graph in graphs.items():
            figures["artifacts"][f"{name}.xml"] = export_ir(ctx, name, graph, graphs, feeds)
    # 4. FP16 ONNX for TensorRT (overflow-prone ops kept FP32); parity is informative (FP16 is not FP32)
    if cfg.export.fp16:
        figures["artifacts"][FORMATS["onnx-fp16"].file] = export_half(ctx, graphs, feeds)
    # 5. tokenizer files beside the artifacts
    figures["tokenizer_files"] = copy_tokenizer(model.spec.text_dir, ctx.out / TOKENIZER)
    fp32 = [a["parity_max_abs"] for a in figures["artifacts"].values() if a["precision"] == "fp32"]
    figures["parity_max_abs_fp32"] = worst = max((p for p in fp32 if p is not None), default=0.0)
    if worst > cfg.export.parity_atol:
        log.warning("export: FP32 parity %.2e exceeds export.parity_atol %.1e", worst, cfg.export.parity_atol)
    return figures


def export_graph(
    ctx: StageContext, graph: Any, graphs: dict[str, Any], feeds: list[dict[str, np.ndarray]], meta: dict[str, Any]
) -> tuple[dict[str, Any], dict[str, Any]]:
    """One graph as ONNX FP32 (LayerNorm decomposed where the profile's TensorRT parser lacks it), its parity
    against PyTorch and its TensorRT compatibility.

    Raises:
        ArtifactError: a TensorRT device profile whose parser would refuse the graph (fail here, not on the robot).
    """
    import onnx

    from quantize.trt_compat import check_trt_compat, decompose_layernorm, load_op_list, resolve_version
    from runtimes import get_runtime
    from runtimes.export import export_onnx, file_size

    cfg = ctx.cfg
    trt = resolve_version(cfg.device.trt_version) if cfg.device.backend == "tensorrt" else None
    example = dict(zip(graph.input_names, graph.example_inputs(), strict=True))
    path = export_onnx(graph.module, example, graph.output_names, ctx.out / f"{graph.name}.onnx",
                       opset=cfg.export.opset or cfg.device.opset, metadata=meta)  # fmt: skip
    if trt is not None and "LayerNormalization" not in load_op_list(trt)["supported"]:
        proto, count = decompose_layernorm(onnx.load(str(path)))
        onnx.save(proto, str(path))
        log.info("export: %d LayerNormalization nodes decomposed for TensorRT %s", count, trt)
    ort_rt = get_runtime("onnxruntime").load(path, threads=cfg.device.threads)
    entry = {
        "format": "onnx",
        "precision": "fp32",
        "opset": int(ort_rt.metadata["opset"]),
        "exporter": ort_rt.metadata["exporter"],
        "size_mb": round(file_size(path) / 1e6, 3),
        "parity_max_abs": max_abs_diff(ort_rt, graph, feeds, graphs),
    }
    report = check_trt_compat(path, trt)
    if trt is not None:
        report.raise_for_errors()
    compat = {"ok": report.ok, "tensorrt": report.tensorrt, "errors": report.errors[:20],
              "warnings": len(report.warnings)}  # fmt: skip
    return entry, compat


def export_ir(
    ctx: StageContext, name: str, graph: Any, graphs: dict[str, Any], feeds: list[dict[str, np.ndarray]]
) -> dict[str, Any]:
    """One graph's OpenVINO IR FP32, converted from its ONNX, with its parity against PyTorch."""
    from runtimes import get_runtime
    from runtimes.export import export_openvino, file_size

    xml = export_openvino(ctx.out / f"{name}.onnx", ctx.out / f"{name}.xml")
    ov_rt = get_runtime("openvino").load(xml, threads=ctx.cfg.device.threads)
    return {
        "format": "openvino",
        "precision": "fp32",
        "size_mb": round(file_size(xml) / 1e6, 3),
        "parity_max_abs": max_abs_diff(ov_rt, graph, feeds, graphs),
    }


def export_half(ctx: StageContext, graphs: dict[str, Any], feeds: list[dict[str, np.ndarray]]) -> dict[str, Any]:
    """The FP16 ONNX (the TensorRT FP16 engine's source) and, where ONNX Runtime CPU runs it, its parity."""
    from runtimes import get_runtime
    from runtimes.export import export_fp16_onnx, file_size

    full = ctx.out / FORMATS["onnxruntime-fp32"].file
    half = export_fp16_onnx(full, ctx.out / FORMATS["onnx-fp16"].file)
    entry: dict[str, Any] = {"format": "onnx", "precision": "fp16", "size_mb": round(file_size(half) / 1e6, 3)}
    try:
        rt = get_runtime("onnxruntime").load(half)
        entry["parity_max_abs"] = max_abs_diff(rt, graphs["full"], feeds, graphs)
    except Exception as exc:  # ONNX Runtime CPU lacks some FP16 kernels; TensorRT is the target anyway
        entry["parity_max_abs"] = None
        entry["parity_note"] = f"not runnable on ONNX Runtime CPU: {type(exc).__name__}"
    return entry
