"""The pre-flight steps, run inside the variant's process in the order of :data:`~pipeline.preflight.plan.STEPS`.

Each takes the :class:`~pipeline.preflight.plan.VariantRun` and returns ``(figures, detail)``: JSON-ready figures and
a one-line detail for the table. A check that does not hold raises :class:`~pipeline.preflight.plan.CheckFailed`
with what it measured; anything else a step raises becomes a ``failed`` row with the reason.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from pipeline.preflight.plan import FP32_ONNX, MAX_ERRORS_KEPT, PARITY_SEED, QDQ_ONNX, CheckFailed, VariantRun


def _random_feeds(graph: Any, seeds: range) -> list[dict[str, np.ndarray]]:
    """Batch-1 numpy feeds of the full graph (int32 tokens, as the artifacts take them), one per seed."""
    feeds = []
    for seed in seeds:
        tensors = graph.example_inputs(seed=seed)
        feeds.append(
            {
                name: t.numpy().astype(np.int32) if not t.is_floating_point() else t.numpy()
                for name, t in zip(graph.input_names, tensors, strict=True)
            }
        )
    return feeds


def step_imports(run: VariantRun) -> tuple[dict[str, Any], str]:
    """The libraries every later step needs, so that their import cost is not counted in the model build."""
    import importlib

    versions = {}
    for name in ("torch", "timm", "transformers", "onnx", "onnxruntime", "onnxscript", "onnxslim", "model"):
        versions[name] = getattr(importlib.import_module(name), "__version__", None)
    versions = {k: v for k, v in versions.items() if v}
    return {"versions": versions}, ", ".join(f"{k} {v}" for k, v in versions.items())


def step_build(run: VariantRun) -> tuple[dict[str, Any], str]:
    from model import create_model, graph_specs

    overrides = {"img_size": run.cfg.device.img_size} if run.cfg.device.img_size else {}
    model = create_model(run.variant, **overrides).eval()
    run.state["model"] = model
    run.state["graph"] = graph_specs(model)["full"]
    spec = model.spec
    params = sum(p.numel() for p in model.parameters()) / 1e6
    figures = {"img_size": spec.img_size, "max_tokens": spec.max_tokens, "vision": spec.vision, "params_m": params}
    return figures, f"{spec.vision} @{spec.img_size}, {spec.max_tokens} tokens, {params:.1f} M params"


def step_summary(run: VariantRun) -> tuple[dict[str, Any], str]:
    from model.summary import summarize

    parts = summarize(run.state["model"])
    total = parts["total"]
    split = ", ".join(f"{p} {v['gflops']:.2f}" for p, v in parts.items() if p != "total")
    return {"parts": parts, **total}, f"{total['params_m']:.1f} M params, {total['gflops']:.2f} GFLOPs ({split})"


def step_export(run: VariantRun) -> tuple[dict[str, Any], str]:
    import onnx

    from quantize.trt_compat import decompose_layernorm, load_op_list
    from runtimes.export import export_onnx, file_size

    model, graph = run.state["model"], run.state["graph"]
    spec = model.spec
    opset = run.cfg.export.opset or run.cfg.device.opset
    example = dict(zip(graph.input_names, graph.example_inputs(), strict=True))
    meta = {
        "graph": "full",
        "variant": spec.name,
        "img_size": spec.img_size,
        "max_tokens": spec.max_tokens,
        "image_mean": list(spec.image_mean),
        "image_std": list(spec.image_std),
        "token_dtype": "int32",
        "spec": spec.to_dict(),
        "weights": "random (preflight: not a trained model)",
    }
    path = export_onnx(graph.module, example, graph.output_names, run.workdir / FP32_ONNX, opset=opset, metadata=meta)
    decomposed = 0
    if run.trt is not None and "LayerNormalization" not in load_op_list(run.trt)["supported"]:
        proto, decomposed = decompose_layernorm(onnx.load(str(path)))  # as the export stage does for TensorRT 8.5
        onnx.save(proto, str(path))
        del proto
    proto = onnx.load(str(path), load_external_data=False)
    got = next(o.version for o in proto.opset_import if o.domain in ("", "ai.onnx"))
    figures = {
        "opset_requested": opset,
        "opset": got,
        "nodes": len(proto.graph.node),
        "size_mb": round(file_size(path) / 1e6, 2),
        "layernorm_decomposed": decomposed,
    }
    del proto
    run.state["fp32"] = path
    ln = f", {decomposed} LayerNorm decomposed" if decomposed else ""
    return figures, f"opset {got}, {figures['nodes']} nodes, {figures['size_mb']:.1f} MB{ln}"


def qdq_settings(cfg: Any, trt: str | None) -> tuple[str, str]:
    """Q/DQ backend and float remainder the quantize stage picks for this config (its step 3b)."""
    from pipeline.config import qdq_float_dtype
    from quantize.qdq import resolve_backend
    from quantize.trt_compat import load_op_list

    max_opset = load_op_list(trt)["opset_max"] if trt else None
    backend = resolve_backend(cfg.quant.qdq_backend, max_opset)
    return backend, qdq_float_dtype(cfg, backend)


def step_quantize(run: VariantRun) -> tuple[dict[str, Any], str]:
    from quantize.qdq import head_nodes, quantize_qdq_int8
    from quantize.qdq_graph import inspect_qdq
    from runtimes.export import file_size

    fp32 = run.state["fp32"]
    feeds = _random_feeds(run.state["graph"], range(1, 1 + run.options.calib_samples))
    calib = {name: np.concatenate([f[name] for f in feeds]) for name in feeds[0]}  # N, ... per input
    backend, float_dtype = qdq_settings(run.cfg, run.trt)
    heads = head_nodes(fp32)
    path = quantize_qdq_int8(
        fp32,
        run.workdir / QDQ_ONNX,
        calib,
        exclude=heads,
        backend=backend,
        float_dtype=float_dtype,
        metadata={"calibration": f"{len(feeds)} random inputs (preflight: scales are not meaningful)"},
    )
    qdq = inspect_qdq(path)
    figures = {
        "backend": backend,
        "float_remainder": float_dtype,
        "calibration_samples": len(feeds),
        "mask_head": heads,
        "size_mb": round(file_size(path) / 1e6, 2),
        "size_ratio": round(file_size(path) / file_size(fp32), 3),
        "qdq": qdq,
    }
    run.state["qdq"] = path
    return figures, (
        f"{backend}, {qdq['quantized_nodes']} nodes INT8, float {float_dtype}, "
        f"{figures['size_mb']:.1f} MB ({figures['size_ratio']:.0%} of FP32)"
    )


def describe_problems(reports: list[Any]) -> str:
    """The failed checks of several files, grouped by (op, reason): node counts per file and the first node names."""
    groups: dict[tuple[str, str], dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for report in reports:
        for e in report.errors:
            groups[(e["op"], e["reason"])][Path(report.artifact).name].append(e["node"])
    parts = []
    for (op, reason), per_file in groups.items():
        counts = ", ".join(f"{len(nodes)} in {name}" for name, nodes in per_file.items())
        first = next(iter(per_file.values()))
        more = f" and {len(first) - 3} more" if len(first) > 3 else ""
        parts.append(f"{op} ({reason}): {counts}; nodes {', '.join(first[:3])}{more}")
    return " | ".join(parts)


def step_opcheck(run: VariantRun) -> tuple[dict[str, Any], str]:
    from quantize.trt_compat import check_trt_compat

    dev = run.cfg.device
    if run.trt is None:
        return {"skipped": True}, f"device backend {dev.backend}: no TensorRT parser to check against"
    files = [run.state["fp32"], *([run.state["qdq"]] if "qdq" in run.state else [])]
    figures: dict[str, Any] = {"tensorrt": dev.trt_version, "op_list": run.trt}
    failed, notes = [], []
    for path in files:
        report = check_trt_compat(path, dev.trt_version)
        entry = report.to_dict()
        entry["errors"] = entry["errors"][:MAX_ERRORS_KEPT]
        entry["error_count"] = len(report.errors)
        figures[path.name] = entry
        warned = len(report.warnings)
        notes.append(f"{path.name} {'ok' if report.ok else 'FAILED'} ({warned} warning{'' if warned == 1 else 's'})")
        if not report.ok:
            failed.append(report)
    if "qdq" not in run.state:
        notes.append(f"{QDQ_ONNX} not checked (quantize failed)")
    if failed:
        raise CheckFailed(
            f"the engine will not build on {dev.name}: the TensorRT {dev.trt_version} ONNX parser (op list "
            f"{run.trt}) rejects {describe_problems(failed)}",
            figures,
        )
    return figures, f"TensorRT {dev.trt_version} (list {run.trt}): " + ", ".join(notes)


def step_parity(run: VariantRun) -> tuple[dict[str, Any], str]:
    from runtimes import get_runtime
    from runtimes.export import torch_outputs

    graph = run.state["graph"]
    feeds = _random_feeds(graph, range(PARITY_SEED, PARITY_SEED + run.options.parity_samples))
    refs = [torch_outputs(graph, f) for f in feeds]
    scale = max(float(np.max(np.abs(r[k]))) for r in refs for k in r)
    atol = run.cfg.export.parity_atol + run.options.parity_rtol * scale
    threads = run.cfg.device.threads

    def worst(path: Path) -> tuple[float, bool]:
        rt = get_runtime("onnxruntime").load(path, threads=threads)
        diff, finite = 0.0, True
        for feed, ref in zip(feeds, refs, strict=True):
            got = rt.infer(feed)
            for k in ref:
                out = got[k].astype(np.float32)
                finite = finite and bool(np.all(np.isfinite(out)))
                diff = max(diff, float(np.max(np.abs(out - ref[k]))))
        return diff, finite

    fp32_diff, fp32_finite = worst(run.state["fp32"])
    figures: dict[str, Any] = {
        "samples": len(feeds),
        "max_abs_ref": scale,
        "tolerance": atol,
        "fp32_max_abs_diff": fp32_diff,
        "fp32_finite": fp32_finite,
    }
    failures = []
    if not fp32_finite or fp32_diff > atol:
        failures.append(f"FP32 ONNX differs from PyTorch by {fp32_diff:.2e} (tol {atol:.2e}, max|ref| {scale:.2f})")
    detail = f"FP32 max|diff| {fp32_diff:.1e} (tol {atol:.0e}, max|out| {scale:.2g})"
    if "qdq" in run.state:
        qdq_diff, qdq_finite = worst(run.state["qdq"])
        figures |= {"qdq_max_abs_diff": qdq_diff, "qdq_finite": qdq_finite}
        detail += f"; Q/DQ runs, {'finite' if qdq_finite else 'NOT finite'}, max|diff| {qdq_diff:.2e} (not judged)"
        if not qdq_finite:
            failures.append("the Q/DQ ONNX gives non-finite outputs in ONNX Runtime")
    else:
        detail += f"; {QDQ_ONNX} not run (quantize failed)"
    if failures:
        raise CheckFailed("; ".join(failures), figures)
    return figures, detail


STEP_FUNCS: dict[str, Callable[[VariantRun], tuple[dict[str, Any], str]]] = {
    "imports": step_imports,
    "build": step_build,
    "summary": step_summary,
    "export": step_export,
    "quantize": step_quantize,
    "opcheck": step_opcheck,
    "parity": step_parity,
}
