"""Roofline column of the benchmark report: FLOPs per artifact from its graph, this machine's measured FP32 and INT8
GEMM peaks, and how far each runtime's p50 latency is from the time those peaks allow (the hardware floor).

Usage::

    flops = count_flops("export/full.onnx")        # or full.xml, quantize/full_int8_qdq.onnx, full_int8.xml
    flops = count_flops("train/model.pt", exported_onnx="export/full.onnx")  # PyTorch: the ONNX it was exported to
    peaks = measure_peaks(threads=2)                # the benchmark's thread count; cached per (threads, size)
    row = roofline_row(flops, p50_ms=12.3, peaks=peaks, precision="int8")
    print(roofline_markdown({"openvino-int8": row}, peaks))

FLOPs are 2 × multiply-accumulates of the compute ops: Conv (grouped and depthwise included), ConvTranspose, MatMul,
Gemm and the integer ops (ConvInteger, MatMulInteger, QLinearConv, QLinearMatMul) of an ONNX graph; Convolution,
GroupConvolution, their BackpropData (transposed) forms, MatMul and ScaledDotProductAttention (its two products) of an
OpenVINO IR. Shapes come from ``onnx.shape_inference.infer_shapes`` / the IR's own static shapes: the artifacts are
batch-1 static exports, and a compute op without a static shape is an :class:`ArtifactError`. A compute op counts as
INT8 when every data input reaches it quantized: from a DequantizeLinear (Q/DQ ONNX) or a FakeQuantize / an 8-bit
weight constant (OpenVINO IR), possibly through shape-only ops (Reshape, Transpose, Concat ...). Elementwise work
(activations, adds, normalisations, softmax; a rough per-element estimate) is reported apart as
``elementwise_gflops`` and is not part of ``total_gflops``: the floor below is a GEMM floor.

Peaks are measured here, not taken from a datasheet: a 1024³ GEMM with constant weights (as in a model) through ONNX
Runtime (``MatMul`` FP32, ``MatMulInteger`` u8×s8) and OpenVINO (FP32 ``MatMul`` compiled with ``f32`` precision;
FakeQuantize → ``MatMul`` on int8 weights, kept only when OpenVINO's compiled model runs it in u8/i8), at an explicit
thread count, best of a few calls after a warm-up; the higher of the two runtimes is the peak, with its method. A short
GEMM in a warm cache is an optimistic peak, so a model's ratio to it is a lower bound on how well it could do.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from foundation.errors import ArtifactError, RuntimeUnavailable
from runtimes.base import require

GEMM_SIZE = 1024  # M = N = K of the peak GEMM
PEAK_RUNS = 5  # timed calls per method after one warm-up; the best one counts
PEAK_BUDGET_S = 0.6  # a method stops after this many seconds of timed calls (at least two calls)

# Compute ops of an ONNX graph -> (the inputs holding data and weights, always integer); their MACs: _onnx_macs.
ONNX_MAC_OPS: dict[str, tuple[tuple[int, int], bool]] = {
    **dict.fromkeys(("Conv", "ConvTranspose", "MatMul", "Gemm"), ((0, 1), False)),
    **dict.fromkeys(("ConvInteger", "MatMulInteger"), ((0, 1), True)),
    **dict.fromkeys(("QLinearConv", "QLinearMatMul"), ((0, 3), True)),
}
# OpenVINO convolutions -> (MACs counted per input element (transposed) or per output element, first weight dim that
# multiplies): W is [C_out, C_in, k...], grouped [G, C_out / G, C_in / G, k...], BackpropData [C_in, C_out, k...].
IR_CONV_OPS = {
    **{"Convolution": (False, 1), "GroupConvolution": (False, 2)},
    **{"ConvolutionBackpropData": (True, 1), "GroupConvolutionBackpropData": (True, 2)},
}
IR_MAC_OPS = (*IR_CONV_OPS, "MatMul", "ScaledDotProductAttention")
# Elementwise work: FLOPs per output element (rough: a softmax or a normalisation is a handful of operations).
ONNX_ELEMENTWISE = {
    **dict.fromkeys(("Add", "Sub", "Mul", "Div", "Relu", "Sigmoid", "Tanh", "Erf", "Sqrt", "Pow", "Exp"), 1),
    **dict.fromkeys(("Clip", "LeakyRelu", "HardSigmoid", "HardSwish", "Gelu", "PRelu", "Neg", "Abs"), 1),
    **{"Softmax": 3, "LayerNormalization": 5, "BatchNormalization": 2, "InstanceNormalization": 5},
}
IR_ELEMENTWISE = {
    **dict.fromkeys(("Add", "Subtract", "Multiply", "Divide", "Relu", "Sigmoid", "Tanh", "Erf", "Sqrt"), 1),
    **dict.fromkeys(("Power", "Exp", "Clamp", "PRelu", "HSigmoid", "HSwish", "Gelu", "Swish", "Negative"), 1),
    **{"Abs": 1, "Softmax": 3, "SoftMax": 3, "MVN": 5, "BatchNormInference": 2},
}
# Ops that move or reshape values without computing: a quantized value stays quantized through them (op -> inputs).
ONNX_TRANSPARENT = {
    **dict.fromkeys(("Reshape", "Transpose", "Squeeze", "Unsqueeze", "Flatten", "Identity", "Slice", "Split"), (0,)),
    **{"MaxPool": (0,), "Gather": (0,), "Concat": None},  # None: every input
}
IR_TRANSPARENT = {
    **dict.fromkeys(("Reshape", "Transpose", "Squeeze", "Unsqueeze", "StridedSlice", "Slice", "Split"), (0,)),
    **{"VariadicSplit": (0,), "MaxPool": (0,), "Gather": (0,), "Concat": None},
}
IR_DECOMPRESSION = ("Convert", "Subtract", "Multiply", "Reshape", "Transpose", "Unsqueeze")  # int8 weights -> float
LOW_PRECISION = ("i8", "u8", "i4", "u4")
DEPTH = 8  # how far back through transparent ops a quantized input is looked for

_PEAKS: dict[tuple[int, int], dict[str, Any]] = {}

# ---------------------------------------------------------------------------------------------------------------------
# FLOPs from the graph
# ---------------------------------------------------------------------------------------------------------------------


def count_flops(path: str | Path, exported_onnx: str | Path | None = None) -> dict[str, Any]:
    """FLOPs of one artifact's graph (batch 1), split into INT8 and float work.

    Args:
        path: An ``.onnx`` (FP32, FP16 or Q/DQ INT8) or an OpenVINO ``.xml`` IR (FP32 or NNCF INT8); any other file (a
            PyTorch checkpoint, a TensorRT engine) needs ``exported_onnx``.
        exported_onnx: The FP32 ONNX the artifact was exported to or built from; counted in place of ``path`` when
            ``path`` is neither ONNX nor IR (the graph is the same computation).

    Returns:
        JSON-ready dict: ``total_gflops`` / ``int8_gflops`` / ``float_gflops`` (and the exact ``*_flops`` integers),
        ``int8_share`` (fraction of the total), ``elementwise_gflops`` (apart, not in the total), ``by_op_type``
        (op type -> GFLOPs), ``ops`` (op type -> count), ``format``, ``artifact`` and ``counted_from`` (the graph read).

    Raises:
        ArtifactError: the file is missing or unreadable, of another kind without ``exported_onnx``, or a compute
            op's shapes are not static.
    """
    graph = path = Path(path)
    if path.suffix not in (".onnx", ".xml"):
        if exported_onnx is None:
            raise ArtifactError(
                f"cannot count FLOPs of {path}: expected an .onnx or OpenVINO .xml file; for a PyTorch checkpoint or "
                "an engine pass the FP32 ONNX it was exported to (exported_onnx=...)"
            )
        graph = Path(exported_onnx)
    if not graph.is_file():
        raise ArtifactError(f"cannot count FLOPs: {graph} does not exist; expected an .onnx or OpenVINO .xml file")
    counts = _ir_counts(graph) if graph.suffix == ".xml" else _onnx_counts(graph)
    return {"artifact": str(path), "counted_from": str(graph), **_flops_result(*counts)}


def _flops_result(by_op: dict[str, list[int]], ops: dict[str, int], elementwise: int, fmt: str) -> dict[str, Any]:
    """The JSON-ready FLOPs dict from per-op-type ``[int8 MACs, float MACs]``."""
    int8 = 2 * sum(v[0] for v in by_op.values())
    flt = 2 * sum(v[1] for v in by_op.values())
    exact = {"total_flops": int8 + flt, "int8_flops": int8, "float_flops": flt, "elementwise_flops": elementwise}
    return {
        "format": fmt,
        **exact,
        **{name.replace("_flops", "_gflops"): value / 1e9 for name, value in exact.items()},
        "int8_share": int8 / (int8 + flt) if int8 + flt else 0.0,
        "by_op_type": {op: 2 * sum(v) / 1e9 for op, v in sorted(by_op.items())},
        "ops": dict(sorted(ops.items())),
    }


def _static(shape: Any, path: Path, where: str) -> list[int]:
    """A shape as a list of ints, or an ArtifactError naming the file and the op whose shape is not static."""
    if shape is None:
        raise ArtifactError(
            f"{path}: {where} has no static shape; expected a static-shape graph (batch-1 export) whose shapes "
            "shape inference resolves"
        )
    return shape


def _onnx_shapes(model: Any) -> dict[str, list[int] | None]:
    """Tensor name -> static shape (None where a dimension is symbolic or unknown) of an inferred ONNX graph."""
    shapes: dict[str, list[int] | None] = {}
    g = model.graph
    for info in [*g.input, *g.value_info, *g.output]:
        t = info.type.tensor_type
        if t.HasField("shape"):
            dims = [d.dim_value if d.HasField("dim_value") else None for d in t.shape.dim]
            shapes[info.name] = None if None in dims else dims
    for init in g.initializer:
        shapes[init.name] = list(init.dims)
    return shapes


def _load_onnx(path: Path) -> Any:
    """The ONNX model with inferred shapes (local functions inlined); weights stay on disk."""
    onnx = require("onnx", "roofline", "pip install onnx")
    try:
        model = onnx.load(str(path), load_external_data=False)
        if model.functions:
            from onnx import inliner

            model = inliner.inline_local_functions(model)
        return onnx.shape_inference.infer_shapes(model, data_prop=True)
    except Exception as exc:  # onnx raises DecodeError, ValidationError, InferenceError ...
        raise ArtifactError(f"cannot read {path} as an ONNX model with inferable shapes: {exc}") from exc


def _onnx_macs(node: Any, shapes: dict[str, list[int] | None], path: Path) -> int:
    """Multiply-accumulates of one ONNX compute node."""
    data = ONNX_MAC_OPS[node.op_type][0]

    def shape(i: int, out: bool = False) -> list[int]:
        name = node.output[0] if out else node.input[i]
        return _static(shapes.get(name), path, f"{node.op_type} node {node.name!r} ({name})")

    y = math.prod(shape(0, out=True))
    w = shape(data[1])
    if node.op_type in ("Conv", "ConvInteger", "QLinearConv"):  # W: [C_out, C_in / group, k...]
        return y * math.prod(w[1:])
    if node.op_type == "ConvTranspose":  # W: [C_in, C_out / group, k...]; every input element meets W[1:]
        return math.prod(shape(0)) * math.prod(w[1:])
    a = shape(data[0])
    if node.op_type == "Gemm":
        trans_a = next((attr.i for attr in node.attribute if attr.name == "transA"), 0)
        return y * a[0 if trans_a else 1]
    return y * a[-1]  # MatMul family: every output element is a K-long dot product


def _onnx_quantized(name: str, producers: dict[str, Any], depth: int = 0) -> bool:
    """Whether a tensor comes from a DequantizeLinear, directly or through shape-only ops."""
    node = producers.get(name)
    if node is None or depth > DEPTH or node.op_type not in (*ONNX_TRANSPARENT, "DequantizeLinear"):
        return False
    if node.op_type == "DequantizeLinear":
        return True
    inputs = ONNX_TRANSPARENT[node.op_type] or range(len(node.input))
    return all(_onnx_quantized(node.input[i], producers, depth + 1) for i in inputs if node.input[i])


def _onnx_counts(path: Path) -> tuple[dict[str, list[int]], dict[str, int], int, str]:
    """Per-op-type ``[int8, float]`` MACs, op counts and elementwise FLOPs of an ONNX graph."""
    model = _load_onnx(path)
    shapes = _onnx_shapes(model)
    producers = {out: node for node in model.graph.node for out in node.output}
    by_op: dict[str, list[int]] = {}  # op type -> [int8 MACs, float MACs]
    ops: dict[str, int] = {}
    elementwise = 0
    for node in model.graph.node:
        if node.op_type in ONNX_MAC_OPS:
            data, integer = ONNX_MAC_OPS[node.op_type]
            macs = _onnx_macs(node, shapes, path)
            int8 = integer or all(_onnx_quantized(node.input[i], producers) for i in data)
            by_op.setdefault(node.op_type, [0, 0])[0 if int8 else 1] += macs
            ops[node.op_type] = ops.get(node.op_type, 0) + 1
            if node.op_type in ("Conv", "Gemm") and len(node.input) > 2 and node.input[2]:  # the bias add
                elementwise += math.prod(shapes.get(node.output[0]) or [0])
        elif node.op_type in ONNX_ELEMENTWISE and shapes.get(node.output[0]) is not None:
            elementwise += ONNX_ELEMENTWISE[node.op_type] * math.prod(shapes[node.output[0]])
    return by_op, ops, elementwise, "onnx"


def _ir_macs(op: Any, path: Path) -> list[int]:
    """Multiply-accumulates of one OpenVINO compute op: one entry, or two for attention (Q·Kᵀ, then ·V)."""
    kind = op.get_type_name()

    def shape(i: int, out: bool = False) -> list[int]:
        ps = op.get_output_partial_shape(0) if out else op.get_input_partial_shape(i)
        where = f"{kind} {op.get_friendly_name()!r} ({'output' if out else f'input {i}'})"
        return _static([d.get_length() for d in ps] if ps.is_static else None, path, where)

    if kind in IR_CONV_OPS:
        per_input, first = IR_CONV_OPS[kind]
        return [math.prod(shape(0, out=not per_input)) * math.prod(shape(1)[first:])]
    if kind == "ScaledDotProductAttention":  # Q [..., L, E], K [..., S, E], V [..., S, Ev] -> [..., L, Ev]
        q, v, y = shape(0), shape(2), shape(0, out=True)
        rows = math.prod(y[:-1])  # batch dims × L
        return [rows * v[-2] * q[-1], rows * v[-2] * v[-1]]
    a = shape(0)  # MatMul
    k = a[-2] if op.get_attributes().get("transpose_a") and len(a) > 1 else a[-1]
    return [math.prod(shape(0, out=True)) * k]


def _ir_weight(out: Any, depth: int = 0) -> bool:
    """Whether an IR value is an 8-bit (or 4-bit) weight constant, possibly through its decompression to float."""
    node = out.get_node()
    if (kind := node.get_type_name()) == "Constant":
        return node.get_element_type().get_type_name() in LOW_PRECISION
    return kind in IR_DECOMPRESSION and depth <= DEPTH and _ir_weight(node.input(0).get_source_output(), depth + 1)


def _ir_quantized(out: Any, depth: int = 0) -> bool:
    """Whether an IR value reaches its consumer quantized: a FakeQuantize output or an 8-bit weight."""
    node = out.get_node()
    if (kind := node.get_type_name()) == "FakeQuantize":
        return True
    if kind in IR_TRANSPARENT and depth <= DEPTH:
        inputs = IR_TRANSPARENT[kind] or range(node.get_input_size())
        return all(_ir_quantized(node.input(i).get_source_output(), depth + 1) for i in inputs)
    return _ir_weight(out)


def _ir_counts(path: Path) -> tuple[dict[str, list[int]], dict[str, int], int, str]:
    """Per-op-type ``[int8, float]`` MACs, op counts and elementwise FLOPs of an OpenVINO IR."""
    ov = require("openvino", "roofline", "pip install openvino")
    try:
        model = ov.Core().read_model(str(path))
    except Exception as exc:  # OpenVINO raises RuntimeError subclasses with the parser's message
        raise ArtifactError(f"OpenVINO cannot read {path}: {exc}; expected an IR .xml with its .bin") from exc
    by_op: dict[str, list[int]] = {}
    ops: dict[str, int] = {}
    elementwise = 0
    for op in model.get_ordered_ops():
        kind = op.get_type_name()
        if kind in IR_MAC_OPS:
            macs = _ir_macs(op, path)
            quantized = [_ir_quantized(op.input(i).get_source_output()) for i in range(min(op.get_input_size(), 3))]
            # attention: Q·Kᵀ is INT8 when Q and K come quantized, the product with V when V does
            parts = [quantized[0] and quantized[1], quantized[2]] if len(macs) == 2 else [all(quantized[:2])]
            entry = by_op.setdefault(kind, [0, 0])
            for m, int8 in zip(macs, parts, strict=True):
                entry[0 if int8 else 1] += m
            ops[kind] = ops.get(kind, 0) + 1
        elif kind in IR_ELEMENTWISE and not _ir_weight(op.input(0).get_source_output()):
            out = op.get_output_partial_shape(0)
            if out.is_static:
                elementwise += IR_ELEMENTWISE[kind] * math.prod(d.get_length() for d in out)
    return by_op, ops, elementwise, "openvino-ir"


# ---------------------------------------------------------------------------------------------------------------------
# Peaks measured on this machine
# ---------------------------------------------------------------------------------------------------------------------


def _best_seconds(fn: Callable[[], Any], runs: int = PEAK_RUNS, budget_s: float = PEAK_BUDGET_S) -> float:
    """Fastest of up to ``runs`` timed calls after one warm-up (stops after ``budget_s``, with two calls at least)."""
    fn()
    best, spent = math.inf, 0.0
    for i in range(runs):
        start = time.perf_counter()
        fn()
        took = time.perf_counter() - start
        best, spent = min(best, took), spent + took
        if i >= 1 and spent > budget_s:
            break
    return best


def _ort_gemm(n: int, threads: int, integer: bool) -> tuple[float, str]:
    """ONNX Runtime ``MatMul`` (FP32) or ``MatMulInteger`` (u8 × s8) with constant weights: GFLOP/s and method."""
    from onnx import TensorProto, helper, numpy_helper

    from benchmarks.latency import BENCH_OPTIONS

    ort = require("onnxruntime", "onnxruntime", "pip install onnxruntime")
    rng = np.random.default_rng(0)
    if integer:
        a, b = rng.integers(0, 256, (n, n), dtype=np.uint8), rng.integers(-127, 128, (n, n), dtype=np.int8)
        op, ta, ty = "MatMulInteger", TensorProto.UINT8, TensorProto.INT32
    else:
        a, b = rng.random((n, n), dtype=np.float32), rng.random((n, n), dtype=np.float32)
        op, ta, ty = "MatMul", TensorProto.FLOAT, TensorProto.FLOAT
    a_in, y_out = helper.make_tensor_value_info("a", ta, [n, n]), helper.make_tensor_value_info("y", ty, [n, n])
    node, weights = helper.make_node(op, ["a", "b"], ["y"]), numpy_helper.from_array(b, "b")
    graph = helper.make_graph([node], "peak", [a_in], [y_out], [weights])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    opts = ort.SessionOptions()
    opts.intra_op_num_threads, opts.inter_op_num_threads = threads, 1
    for key, value in BENCH_OPTIONS["onnxruntime"].items():
        opts.add_session_config_entry(key, value)
    session = ort.InferenceSession(model.SerializeToString(), opts, providers=["CPUExecutionProvider"])
    seconds = _best_seconds(lambda: session.run(None, {"a": a}))
    kind = "u8×s8" if integer else "f32"
    return 2 * n**3 / seconds / 1e9, f"onnxruntime {ort.__version__} {op} {kind} {n}³, {threads} thread(s)"


def _ov_gemm(n: int, threads: int, integer: bool) -> tuple[float, str]:
    """OpenVINO ``MatMul`` on constant weights: FP32, or FakeQuantize → MatMul on int8 weights (GFLOP/s, method).

    Raises:
        RuntimeUnavailable: OpenVINO did not run the INT8 graph in u8/i8 (its compiled model says what it used).
    """
    ov = require("openvino", "openvino", "pip install openvino")
    from openvino import opset13 as ops

    from benchmarks.latency import BENCH_OPTIONS

    rng = np.random.default_rng(0)
    x = ops.parameter([n, n], ov.Type.f32, name="a")
    if integer:
        lo, hi = ops.constant(np.float32(0)), ops.constant(np.float32(1))
        x_in = ops.fake_quantize(x, lo, hi, lo, hi, 256)
        w = ops.constant(rng.integers(-127, 128, (n, n), dtype=np.int8))
        weights = ops.multiply(ops.convert(w, ov.Type.f32), ops.constant(np.full((1, n), 0.01, np.float32)))
    else:
        x_in, weights = x, ops.constant(rng.random((n, n), dtype=np.float32))
    model = ov.Model([ops.matmul(x_in, weights, False, False)], [x], "peak")
    config = {"PERFORMANCE_HINT": "LATENCY", "INFERENCE_PRECISION_HINT": "f32", "INFERENCE_NUM_THREADS": threads}
    compiled = ov.Core().compile_model(model, "CPU", {**config, **BENCH_OPTIONS["openvino"]})
    kernel = precision = "?"
    for node in compiled.get_runtime_model().get_ordered_ops():  # the executed graph says which kernel ran
        info = {k: v.astype(str) for k, v in node.get_rt_info().items()}
        if info.get("layerType") in ("FullyConnected", "MatMul"):
            kernel, precision = info.get("primitiveType", "?"), info.get("runtimePrecision", "?")
    if integer and precision not in ("u8", "i8"):
        raise RuntimeUnavailable(f"OpenVINO ran the INT8 peak GEMM in {precision} ({kernel}), not u8/i8, here")
    request = compiled.create_infer_request()
    feed = rng.random((n, n), dtype=np.float32)
    seconds = _best_seconds(lambda: request.infer({0: feed}))
    what = f"{'FakeQuantize→MatMul i8 weights' if integer else 'MatMul f32'} {n}³ ({kernel})"
    return 2 * n**3 / seconds / 1e9, f"openvino {ov.__version__.split('-')[0]} {what}, {threads} thread(s)"


def measure_peaks(threads: int, size: int = GEMM_SIZE, refresh: bool = False) -> dict[str, Any]:
    """This machine's FP32 GEMM GFLOP/s and INT8 GEMM GOP/s at ``threads`` threads, measured (about a second).

    Each precision is timed through ONNX Runtime and OpenVINO (see the module docstring); the higher counts, and its
    method is recorded. A runtime that is missing or fails is listed in ``candidates`` with its error. Results are
    cached in this process per ``(threads, size)``; ``refresh`` measures again.

    Args:
        threads: Threads per runtime: the benchmark's own thread count, so the floor is the one its latencies meet.
        size: M = N = K of the square GEMM.
        refresh: Ignore the cached result.

    Returns:
        ``{"threads", "size", "fp32_gflops", "fp32_method", "int8_gops", "int8_method", "candidates", "seconds"}``;
        a peak no method could measure is None (its method says why).
    """
    key = (int(threads), int(size))
    if key in _PEAKS and not refresh:
        return _PEAKS[key]
    start = time.perf_counter()
    result: dict[str, Any] = {"threads": key[0], "size": key[1], "candidates": {}}
    for precision, integer, unit in (("fp32", False, "gflops"), ("int8", True, "gops")):
        best: tuple[float, str] | None = None
        for runtime, fn in (("onnxruntime", _ort_gemm), ("openvino", _ov_gemm)):
            try:
                value, method = fn(key[1], key[0], integer)
            except Exception as exc:  # a missing or failing runtime leaves the other's figure
                result["candidates"][f"{runtime}-{precision}"] = {"error": f"{type(exc).__name__}: {exc}"}
                continue
            result["candidates"][f"{runtime}-{precision}"] = {unit: value, "method": method}
            if best is None or value > best[0]:
                best = (value, method)
        result[f"{precision}_{unit}"] = best[0] if best else None
        result[f"{precision}_method"] = best[1] if best else "not measured: every method failed (see candidates)"
    result["seconds"] = time.perf_counter() - start
    _PEAKS[key] = result
    return result


# ---------------------------------------------------------------------------------------------------------------------
# Roofline rows and their table
# ---------------------------------------------------------------------------------------------------------------------


def roofline_row(flops: dict[str, Any], p50_ms: float | None, peaks: dict[str, Any], precision: str) -> dict[str, Any]:
    """How far one artifact's p50 latency is from the hardware floor of this machine.

    The floor is the time the artifact's compute ops would take at the measured GEMM peaks: for an ``int8``
    artifact ``int8_gflops / int8_gops + float_gflops / fp32_gflops`` (its INT8 share at the INT8 peak, the rest at
    the FP32 peak), for any other precision ``total_gflops / fp32_gflops`` (no FP16/BF16 peak is measured: FP16
    artifacts are held to the FP32 one). ``floor_ratio = floor_ms / p50_ms``: 1.0 means the runtime runs the model
    as fast as a large GEMM runs here, 0.1 means ten times slower than that floor (small convolutions, memory-bound
    elementwise work, layout changes and per-op overhead make up the gap); above 1.0 the runtime beats the measured
    peak (a faster kernel path than the peak GEMM used). ``achieved_gflops = total_gflops / p50``.

    Args:
        flops: A :func:`count_flops` result.
        p50_ms: Median batch-1 latency in ms; None, zero or not finite (an artifact that did not run) leaves the
            achieved rate and the ratio None.
        peaks: A :func:`measure_peaks` result (``fp32_gflops``, ``int8_gops``).
        precision: The artifact's precision (``fp32``, ``fp16``, ``int8``).

    Returns:
        ``{"precision", "gflops", "int8_share", "p50_ms", "achieved_gflops", "floor_ms", "floor_ratio",
        "fp32_peak_gflops", "int8_peak_gops"}``; ``floor_ms`` is None when a peak it needs was not measured.
    """
    total = float(flops["total_gflops"])
    int8 = float(flops.get("int8_gflops", 0.0)) if precision == "int8" else 0.0
    fp32_peak, int8_peak = peaks.get("fp32_gflops"), peaks.get("int8_gops")
    floor_s: float | None = None
    if fp32_peak and (int8 == 0.0 or int8_peak):
        floor_s = (total - int8) / fp32_peak + (int8 / int8_peak if int8 else 0.0)
    ran = p50_ms is not None and math.isfinite(p50_ms) and p50_ms > 0
    return {
        "precision": precision,
        "gflops": total,
        "int8_share": int8 / total if total else 0.0,
        "p50_ms": p50_ms if ran else None,
        "achieved_gflops": total / (p50_ms / 1000.0) if ran else None,
        "floor_ms": None if floor_s is None else floor_s * 1000.0,
        "floor_ratio": floor_s * 1000.0 / p50_ms if ran and floor_s is not None else None,
        "fp32_peak_gflops": fp32_peak,
        "int8_peak_gops": int8_peak,
    }


def _cell(x: float | None, fmt: str) -> str:
    return "–" if x is None else f"{x:{fmt}}"


def roofline_markdown(rows: Mapping[str, dict[str, Any]], peaks: dict[str, Any] | None = None) -> str:
    """A Markdown table of :func:`roofline_row` results, one row per artifact (name -> row), in the given order.

    Columns: artifact, GFLOPs, INT8 share, p50 ms, achieved GFLOP/s, floor ms and % of floor (``floor_ratio`` in
    percent: 100% runs at the measured peak). With ``peaks``, a line under the table names them and their methods.
    """
    head = ["Artifact", "GFLOPs", "INT8 share", "p50 ms", "Achieved GFLOP/s", "Floor ms", "% of floor"]
    lines = ["| " + " | ".join(head) + " |", "|" + "|".join("---" for _ in head) + "|"]
    for name, r in rows.items():
        ratio = None if r.get("floor_ratio") is None else 100.0 * r["floor_ratio"]
        cells = [
            str(name).replace("|", "\\|"),
            _cell(r.get("gflops"), ".3f"),
            _cell(100.0 * r.get("int8_share", 0.0), ".0f") + "%",
            _cell(r.get("p50_ms"), ".2f"),
            _cell(r.get("achieved_gflops"), ".1f"),
            _cell(r.get("floor_ms"), ".3f"),
            _cell(ratio, ".1f") + ("%" if ratio is not None else ""),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    if peaks:
        lines += [
            "",
            f"Floor: GEMM peaks measured here with {peaks.get('threads')} thread(s): "
            f"FP32 {_cell(peaks.get('fp32_gflops'), '.1f')} GFLOP/s ({peaks.get('fp32_method')}), "
            f"INT8 {_cell(peaks.get('int8_gops'), '.1f')} GOP/s ({peaks.get('int8_method')}).",
        ]
    return "\n".join(lines)
