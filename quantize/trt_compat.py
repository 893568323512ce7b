"""TensorRT compatibility check of an ONNX graph, on CPU: ops, opset, Q/DQ zero points and input dtypes.

Usage: ``report = check_trt_compat("model_int8_qdq.onnx", "10.3"); report.raise_for_errors()``.

The supported-op lists are data (``quantize/data/trt_ops_<version>.json``), written from onnx-tensorrt's
``docs/operators.md`` and ``docs/Changelog.md`` for TensorRT 8.5 (JetPack 5), 8.6 (JetPack 6.0), 10.3 (JetPack
6.1/6.2), 10.16 (JetPack 7.2) and 11.4 (JetPack 7.2.2+); each file's ``source`` names the branch or release it was
read from. A requested version uses the closest listed version at or below it (10.13 → 10.3), so the check errs on the
strict side. Ops whose support could not be confirmed for a version, inputs that need only fold to a constant, and
FP32 compute layers on a strongly typed TensorRT (11+) are warnings, not failures. The check cannot replace a real
build: it catches the failures a parser would report before anyone copies the model to a Jetson.
"""

from __future__ import annotations

import json
from collections import Counter
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

from foundation.errors import ArtifactError

DATA_DIR = Path(__file__).resolve().parent / "data"
QDQ_OPS = ("QuantizeLinear", "DequantizeLinear")
# Layers whose precision a strongly typed TensorRT takes from the graph: FP32 here means FP32 on the device.
COMPUTE_OPS = ("Conv", "ConvTranspose", "MatMul", "Gemm")
STRONGLY_TYPED_ONLY_FROM = 11  # TensorRT 11 removed weak typing (the --fp16/--int8 flags and precision constraints)


def known_versions() -> list[str]:
    """TensorRT versions with a supported-op list, oldest first."""
    versions = [p.stem.removeprefix("trt_ops_") for p in DATA_DIR.glob("trt_ops_*.json")]
    return sorted(versions, key=_vkey)


def _vkey(version: str) -> tuple[int, ...]:
    try:
        return tuple(int(p) for p in str(version).split(".")[:3])
    except ValueError:
        raise ArtifactError(f"TensorRT version {version!r} is not of the form MAJOR.MINOR[.PATCH]") from None


def resolve_version(version: str | None) -> str:
    """The listed version used for ``version``: the closest one at or below it (newest list when None)."""
    versions = known_versions()
    if version is None:
        return versions[-1]
    below = [v for v in versions if _vkey(v) <= _vkey(version)]
    if not below:
        raise ArtifactError(
            f"no TensorRT op list at or below {version}; lists exist for {', '.join(versions)} (add "
            f"quantize/data/trt_ops_{version}.json from onnx-tensorrt's docs/operators.md)"
        )
    return below[-1]


@lru_cache(maxsize=8)
def load_op_list(version: str) -> dict[str, Any]:
    """The supported-op data of a listed TensorRT version."""
    path = DATA_DIR / f"trt_ops_{version}.json"
    if not path.is_file():
        raise ArtifactError(f"no TensorRT op list {path.name}; listed versions: {', '.join(known_versions())}")
    return json.loads(path.read_text())


@dataclass
class CompatReport:
    """Result of :func:`check_trt_compat`: ``ok`` when ``errors`` is empty."""

    artifact: str
    tensorrt: str
    op_list: str
    opset: int
    errors: list[dict[str, Any]] = field(default_factory=list)
    warnings: list[dict[str, Any]] = field(default_factory=list)
    ops: dict[str, int] = field(default_factory=dict)
    qdq_pairs: int = 0

    @property
    def ok(self) -> bool:
        return not self.errors

    def to_dict(self) -> dict[str, Any]:
        return {
            "artifact": self.artifact,
            "tensorrt": self.tensorrt,
            "op_list": self.op_list,
            "opset": self.opset,
            "ok": self.ok,
            "errors": self.errors,
            "warnings": self.warnings,
            "ops": self.ops,
            "qdq_nodes": self.qdq_pairs,
        }

    def summary(self) -> str:
        head = f"TensorRT {self.tensorrt} (list {self.op_list}) check of {Path(self.artifact).name}"
        if self.ok:
            return f"{head}: ok ({len(self.warnings)} warnings)"
        shown = "; ".join(f"{e['node']} ({e['op']}): {e['reason']}" for e in self.errors[:12])
        more = f" and {len(self.errors) - 12} more" if len(self.errors) > 12 else ""
        return f"{head}: {len(self.errors)} problems: {shown}{more}"

    def raise_for_errors(self) -> None:
        if not self.ok:
            raise ArtifactError(self.summary())


def _constant_values(model: Any) -> dict[str, Any]:
    """Tensor name → numpy value of every initializer and Constant-node output."""
    from onnx import numpy_helper

    values = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Constant" and node.attribute and node.attribute[0].name == "value":
            values[node.output[0]] = numpy_helper.to_array(node.attribute[0].t)
    return values


def check_trt_compat(model: Any, trt_version: str | None = None) -> CompatReport:
    """Check an ONNX model (path or ModelProto) against TensorRT's ONNX parser support for ``trt_version``.

    Checks: every op type is supported (and in the default domain), the opset is in range, restricted attributes
    (Resize modes, ScatterND reduction, TopK sorted), must-be-constant inputs and input ranks (TensorRT 8.5's Trilu)
    hold, Q/DQ nodes are INT8 with zero point 0 (TensorRT requires symmetric quantization; 8.5 also needs the zero
    point input), and integer graph inputs have a type the version binds as such. On a strongly typed only TensorRT
    (11+) it warns when Conv/MatMul/Gemm layers compute in FP32.

    Args:
        model: path of an ``.onnx`` file or an ``onnx.ModelProto``.
        trt_version: e.g. ``"10.3"`` or ``"8.5"``; None = the newest list.
    """
    import onnx

    name = str(model) if not isinstance(model, onnx.ModelProto) else (model.graph.name or "<model>")
    proto = onnx.load(str(model), load_external_data=False) if not isinstance(model, onnx.ModelProto) else model
    listed = resolve_version(trt_version)
    data = load_op_list(listed)
    opset = next((o.version for o in proto.opset_import if o.domain in ("", "ai.onnx")), 0)
    report = CompatReport(name, str(trt_version or listed), listed, opset)
    err, warn = report.errors.append, report.warnings.append
    if not data["opset_min"] <= opset <= data["opset_max"]:
        err(
            {
                "node": "<model>",
                "op": "opset",
                "reason": f"opset {opset} outside {data['opset_min']}..{data['opset_max']}",
            }
        )
    supported, unverified = set(data["supported"]), data.get("unverified", {})
    consts = _constant_values(proto)
    ranked_ops = data.get("input_ranks", {})
    types = _value_types(proto) if ranked_ops and any(n.op_type in ranked_ops for n in proto.graph.node) else {}
    counts: Counter[str] = Counter()
    for i, node in enumerate(proto.graph.node):
        label = node.name or f"#{i}"
        counts[node.op_type] += 1
        if node.domain not in ("", "ai.onnx"):
            err({"node": label, "op": f"{node.domain}::{node.op_type}", "reason": "custom domain (needs a plugin)"})
        elif node.op_type in unverified:
            warn({"node": label, "op": node.op_type, "reason": unverified[node.op_type]})
        elif node.op_type not in supported:
            err({"node": label, "op": node.op_type, "reason": f"not supported by the TensorRT {listed} ONNX parser"})
        for idx in data.get("constant_inputs", {}).get(node.op_type, []):
            if idx < len(node.input) and node.input[idx] and node.input[idx] not in consts:
                err({"node": label, "op": node.op_type, "reason": f"input {idx} ({node.input[idx]}) must be constant"})
        for idx in data.get("resolvable_inputs", {}).get(node.op_type, []):
            if idx < len(node.input) and node.input[idx] and node.input[idx] not in consts:
                reason = f"input {idx} ({node.input[idx]}) must fold to a constant when TensorRT builds"
                warn({"node": label, "op": node.op_type, "reason": reason})
        if node.op_type in ranked_ops and node.input:
            _check_rank(node, label, types, ranked_ops[node.op_type], err, warn)
        for attr_name, allowed in data.get("attributes", {}).get(node.op_type, {}).items():
            for attr in node.attribute:
                if attr.name == attr_name:
                    value = onnx.helper.get_attribute_value(attr)
                    value = value.decode() if isinstance(value, bytes) else value
                    if value not in allowed:
                        err({"node": label, "op": node.op_type, "reason": f"{attr_name}={value!r} not in {allowed}"})
        if node.op_type in QDQ_OPS:
            report.qdq_pairs += 1
            _check_qdq(node, label, consts, data, err)
    report.ops = dict(sorted(counts.items()))
    init = {t.name for t in proto.graph.initializer}
    for value in proto.graph.input:
        if value.name in init:
            continue
        dtype = onnx.helper.tensor_dtype_to_np_dtype(value.type.tensor_type.elem_type).name
        if dtype not in data["input_dtypes"]:
            err({"node": value.name, "op": "graph input", "reason": f"dtype {dtype} not in {data['input_dtypes']}"})
    if data.get("strongly_typed_only") or _major(trt_version or listed) >= STRONGLY_TYPED_ONLY_FROM:
        _warn_fp32_compute(proto, types or _value_types(proto), listed, warn)
    return report


def _major(version: str) -> int:
    return _vkey(version)[0]


def _value_types(model: Any) -> dict[str, tuple[int, int | None]]:
    """Tensor name → (ONNX element type, rank or None) from shape inference (graph I/O and initializers included)."""
    import onnx

    try:
        graph = onnx.shape_inference.infer_shapes(model).graph
    except Exception:  # inference is best effort: the checks that need it warn instead
        graph = model.graph
    out: dict[str, tuple[int, int | None]] = {}
    for v in [*graph.value_info, *graph.input, *graph.output]:
        tensor = v.type.tensor_type
        out[v.name] = (tensor.elem_type, len(tensor.shape.dim) if tensor.HasField("shape") else None)
    for t in graph.initializer:
        out[t.name] = (t.data_type, len(t.dims))
    return out


def _check_rank(node: Any, label: str, types: dict, allowed: list[int], err: Any, warn: Any) -> None:
    rank = types.get(node.input[0], (0, None))[1]
    if rank is None:
        warn({"node": label, "op": node.op_type, "reason": f"input rank unknown; this TensorRT takes ranks {allowed}"})
    elif rank not in allowed:
        err({"node": label, "op": node.op_type, "reason": f"input rank {rank}; this TensorRT takes ranks {allowed}"})


def _warn_fp32_compute(model: Any, types: dict, listed: str, warn: Any) -> None:
    """One warning naming the Conv/MatMul/Gemm layers that a strongly typed TensorRT would run in FP32."""
    import onnx

    fp32 = [
        n.name or n.op_type
        for n in model.graph.node
        if n.op_type in COMPUTE_OPS and n.output and types.get(n.output[0], (0, None))[0] == onnx.TensorProto.FLOAT
    ]
    if fp32:
        warn(
            {
                "node": fp32[0],
                "op": "precision",
                "reason": f"{len(fp32)} of the Conv/MatMul/Gemm layers compute in FP32; TensorRT {listed} is strongly "
                "typed only, so they run in FP32 there (write the float remainder as FP16 in the graph)",
            }
        )


def _check_qdq(node: Any, label: str, consts: dict[str, Any], data: dict[str, Any], err: Any) -> None:
    """Q/DQ rules of every listed version: INT8, zero point 0 (absent counts as 0 but only for int8 output types;
    TensorRT 8.5's parser refuses a Q/DQ node without it)."""
    import numpy as np

    zp_name = node.input[2] if len(node.input) > 2 and node.input[2] else None
    if zp_name is None and data.get("qdq_zero_point_required"):
        err({"node": label, "op": node.op_type, "reason": "no zero point input; this TensorRT needs all 3 inputs"})
        return
    if zp_name is None:
        if node.op_type == "DequantizeLinear" and node.input[0] in consts:
            dtype = consts[node.input[0]].dtype.name
            if dtype not in data["quantized_dtypes"]:
                err({"node": label, "op": node.op_type, "reason": f"dequantizes {dtype}; TensorRT takes int8 only"})
        # QuantizeLinear without a zero point quantizes to uint8 by the ONNX default: not TensorRT's int8.
        if node.op_type == "QuantizeLinear" and not any(a.name == "output_dtype" for a in node.attribute):
            err({"node": label, "op": node.op_type, "reason": "no int8 zero point: ONNX defaults to uint8"})
        return
    if zp_name not in consts:
        err({"node": label, "op": node.op_type, "reason": f"zero point {zp_name} is not a constant"})
        return
    zp = consts[zp_name]
    if zp.dtype.name not in data["quantized_dtypes"]:
        err({"node": label, "op": node.op_type, "reason": f"zero point dtype {zp.dtype.name}; TensorRT takes int8"})
    if np.any(zp != data.get("zero_point", 0)):
        err({"node": label, "op": node.op_type, "reason": f"zero point {zp.ravel()[:4].tolist()} is not 0"})


def zero_points(model: Any) -> list[int]:
    """Every Q/DQ zero-point value of a model (flattened), for the "all zero points are 0" check."""
    import onnx

    proto = onnx.load(str(model), load_external_data=False) if not isinstance(model, onnx.ModelProto) else model
    consts = _constant_values(proto)
    out: list[int] = []
    for node in proto.graph.node:
        if node.op_type in QDQ_OPS and len(node.input) > 2 and node.input[2] in consts:
            out.extend(int(v) for v in consts[node.input[2]].ravel())
    return out


def decompose_layernorm(model: Any) -> tuple[Any, int]:
    """Replace every ``LayerNormalization`` by ReduceMean/Sub/Mul/Add/Sqrt/Div (TensorRT 8.5 has no LayerNorm importer).

    Only the first output (Y) may be used. Axes are negative (``axis..-1``), so no shape inference is needed when
    ``axis`` is negative; a positive ``axis`` needs the input rank from ``value_info``.

    Returns:
        ``(model, count)``: the model (changed in place) and how many nodes were replaced.
    """
    import numpy as np
    import onnx
    from onnx import helper, numpy_helper

    opset = next((o.version for o in model.opset_import if o.domain in ("", "ai.onnx")), 0)
    ranks = {}
    for v in [*model.graph.value_info, *model.graph.input, *model.graph.output]:
        if v.type.tensor_type.HasField("shape"):
            ranks[v.name] = len(v.type.tensor_type.shape.dim)
    new_nodes, count, extra_init = [], 0, []
    for node in model.graph.node:
        if node.op_type != "LayerNormalization":
            new_nodes.append(node)
            continue
        if len([o for o in node.output if o]) > 1:
            raise ArtifactError(f"LayerNormalization {node.name} uses its mean/inv-std outputs; cannot decompose")
        attrs = {a.name: helper.get_attribute_value(a) for a in node.attribute}
        axis, eps = int(attrs.get("axis", -1)), float(attrs.get("epsilon", 1e-5))
        if axis >= 0:
            if node.input[0] not in ranks:
                model = onnx.shape_inference.infer_shapes(model)
                return decompose_layernorm(model)
            axis -= ranks[node.input[0]]
        axes = list(range(axis, 0))
        p = f"{node.name or 'ln'}_dec{count}"
        x, scale = node.input[0], node.input[1]
        bias = node.input[2] if len(node.input) > 2 and node.input[2] else None

        if opset >= 18:  # ReduceMean takes axes as an input from opset 18 on
            extra_init.append(numpy_helper.from_array(np.asarray(axes, np.int64), f"{p}_axes"))

        def reduce_mean(src: str, dst: str, p: str = p, axes: list[int] = axes) -> list[Any]:
            if opset >= 18:
                return [helper.make_node("ReduceMean", [src, f"{p}_axes"], [dst], keepdims=1, name=f"{dst}_n")]
            return [helper.make_node("ReduceMean", [src], [dst], axes=axes, keepdims=1, name=f"{dst}_n")]

        extra_init.append(numpy_helper.from_array(np.asarray(eps, np.float32), f"{p}_eps"))
        y = node.output[0]
        nodes = [
            *reduce_mean(x, f"{p}_mean"),
            helper.make_node("Sub", [x, f"{p}_mean"], [f"{p}_d"], name=f"{p}_sub"),
            helper.make_node("Mul", [f"{p}_d", f"{p}_d"], [f"{p}_sq"], name=f"{p}_sq"),
            *reduce_mean(f"{p}_sq", f"{p}_var"),
            helper.make_node("Add", [f"{p}_var", f"{p}_eps"], [f"{p}_vare"], name=f"{p}_adde"),
            helper.make_node("Sqrt", [f"{p}_vare"], [f"{p}_std"], name=f"{p}_sqrt"),
            helper.make_node("Div", [f"{p}_d", f"{p}_std"], [f"{p}_norm"], name=f"{p}_div"),
            helper.make_node("Mul", [f"{p}_norm", scale], [f"{p}_scaled" if bias else y], name=f"{p}_scale"),
        ]
        if bias:
            nodes.append(helper.make_node("Add", [f"{p}_scaled", bias], [y], name=f"{p}_bias"))
        new_nodes.extend(nodes)
        count += 1
    del model.graph.node[:]
    model.graph.node.extend(new_nodes)
    model.graph.initializer.extend(extra_init)
    return model, count
