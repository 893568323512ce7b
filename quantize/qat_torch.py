"""Quantization-aware training for TensorRT: torch fake quantization whose export is the PTQ path's Q/DQ ONNX.

Usage: ``info = prepare_qat(net, calib_batches)``; train (e.g. distil against the FP32 model); ``qat_summary(net)``;
``export_qat_onnx(net, "full_int8_qdq.onnx", metadata=meta, opset=17, trt_version="8.5")``.

Policy (DESIGN §6, as :mod:`quantize.qdq`): symmetric INT8 (zero points 0), per-channel weights, Q/DQ only on the
inputs of Conv / MatMul / Gemm, the mask head float. :func:`prepare_qat` turns every ``nn.Conv2d`` and ``nn.Linear``
(in place, by a subclass swap: parameter names, hooks and ``isinstance`` stay) into a fake-quant layer:

- weight: ``torch.fake_quantize_per_channel_affine`` on the output-channel axis, scale = channel absmax / 127 of the
  current weight at every forward (straight-through gradient), 1.0 for an all-zero channel (ONNX Runtime's rule).
- input: one learnable per-tensor scale ``qat_input_scale`` (LSQ: ``torch._fake_quantize_learnable_per_tensor_affine``
  with the gradient scale 1/sqrt(numel·127)), started from MinMax calibration (absmax / 127, the PTQ onnxruntime
  backend's ``CalibrationMethod.MinMax`` with ``ActivationSymmetric``, and ModelOpt's ``max``): QAT starts where PTQ
  ends. The observed absmax stays in ``qat_input_absmax``. A layer whose weight is frozen (a frozen text encoder)
  is quantized all the same, with its calibrated scale frozen too.

Both use the range [-128, 127], which both exporters write as INT8 QuantizeLinear/DequantizeLinear pairs.
:func:`export_qat_onnx` exports the full graph with :func:`runtimes.export.export_onnx`, normalises it as the PTQ graph
is written (INT8 weights stored quantized, a weight Transpose folded into the INT8 constant, its per-channel axis
moved) and checks the placement. BatchNorm after a quantized Conv stays in the graph (per-channel weight scales let
TensorRT fold it exactly); activation-by-activation MatMuls (attention) stay float, where the PTQ graph quantizes them.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from foundation.errors import ArtifactError, ConfigError, closest

log = logging.getLogger(__name__)

QMIN, QMAX = -128, 127  # INT8; symmetric scales use 127 levels per side (absmax / 127), so weights never hit -128
LEVELS = 127.0
SCALE_MIN = 1e-8  # floor of a learned scale (the fake-quant kernels divide by it)
CALIBRATION = "minmax"
Exclude = Iterable[str] | Callable[[str, nn.Module], bool] | None


# 1. fake-quant layers ----------------------------------------------------------------------------------------------
def symmetric_scale(absmax: torch.Tensor) -> torch.Tensor:
    """Symmetric INT8 scale of an absmax: absmax / 127, or 1.0 where it is 0 (ONNX Runtime's rule)."""
    return torch.where(absmax > 0, absmax / LEVELS, torch.ones_like(absmax))


def weight_scales(weight: torch.Tensor) -> torch.Tensor:
    """Per-output-channel scales of a weight: :func:`symmetric_scale` of the absmax over every axis but 0."""
    return symmetric_scale(weight.detach().abs().reshape(weight.shape[0], -1).amax(1).float())


class _FakeQuant:
    """What both fake-quant layers add: the switch, the calibration observer and the two quantizers."""

    def _qat_setup(self) -> None:
        ref = self.weight
        self.register_parameter("qat_input_scale", nn.Parameter(torch.ones((), device=ref.device)))
        self.register_buffer("qat_input_absmax", torch.zeros((), device=ref.device))
        self.qat_input_scale.requires_grad_(ref.requires_grad)  # frozen layer (text encoder): frozen PTQ scale
        self.qat_enabled, self.qat_observing = True, False

    def quant_input(self, x: torch.Tensor) -> torch.Tensor:
        """Symmetric per-tensor fake quantization of the layer input with the learned scale."""
        scale = self.qat_input_scale.clamp_min(SCALE_MIN)
        if torch.is_grad_enabled() and scale.requires_grad and not torch.compiler.is_exporting():
            grad_factor = 1.0 / math.sqrt(x.numel() * QMAX)  # LSQ's gradient scale
            zero = torch.zeros(1, device=x.device)
            return torch._fake_quantize_learnable_per_tensor_affine(x, scale.reshape(1), zero, QMIN, QMAX, grad_factor)
        zero = torch.zeros((), dtype=torch.int32, device=x.device)  # the same forward, and what the exporters know
        return torch.fake_quantize_per_tensor_affine(x, scale, zero, QMIN, QMAX)

    def quant_weight(self) -> torch.Tensor:
        """Symmetric per-channel fake quantization of the current weight (axis 0, straight-through gradient)."""
        scale = weight_scales(self.weight)
        zero = torch.zeros(scale.shape, dtype=torch.int32, device=scale.device)
        return torch.fake_quantize_per_channel_affine(self.weight, scale, zero, 0, QMIN, QMAX)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.qat_observing:
            self.qat_input_absmax.copy_(torch.maximum(self.qat_input_absmax, x.detach().abs().amax().float()))
        if not self.qat_enabled:
            return super().forward(x)  # the float layer's own forward: exactly the FP32 output
        return self._compute(self.quant_input(x), self.quant_weight())


class QATConv2d(_FakeQuant, nn.Conv2d):
    """``nn.Conv2d`` with fake-quantized input and weight (see the module docstring)."""

    def _compute(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return self._conv_forward(x, weight, self.bias)


class QATLinear(_FakeQuant, nn.Linear):
    """``nn.Linear`` with fake-quantized input and weight (see the module docstring)."""

    def _compute(self, x: torch.Tensor, weight: torch.Tensor) -> torch.Tensor:
        return F.linear(x, weight, self.bias)


QAT_CLASSES: dict[type[nn.Module], type[nn.Module]] = {nn.Conv2d: QATConv2d, nn.Linear: QATLinear}


def qat_layers(model: nn.Module) -> dict[str, _FakeQuant]:
    """The fake-quant layers of a model by module name."""
    return {n: m for n, m in model.named_modules() if isinstance(m, _FakeQuant)}


def _modes(model: nn.Module, modes: dict[nn.Module, bool] | None = None) -> dict[nn.Module, bool]:
    """Each module's train/eval flag, or (``modes`` given) set them back: a vision BatchNorm kept in eval stays so."""
    for module, training in (modes or {}).items():
        module.training = training
    return {m: m.training for m in model.modules()}


# 2. preparation ------------------------------------------------------------------------------------------------------
def mask_head_modules(model: nn.Module) -> list[str]:
    """Names of the modules that make the mask logits: the CASG decoder's 1×1 ``head`` and its
    :class:`~model.casg.TextConditionedHead` (``pixel`` conv, ``filter`` linear) when it has one. These are the layers
    :func:`quantize.qdq.head_nodes` finds in the ONNX graph (the last Conv/MatMul/Gemm on each path back from
    ``mask_logits``): QAT and PTQ keep the same head float.

    Raises:
        ConfigError: the model has no CASG decoder (name the head with ``exclude``).
    """
    from model.casg import CASGDecoder

    heads = []
    for prefix, module in ((f"{n}." if n else "", m) for n, m in model.named_modules() if isinstance(m, CASGDecoder)):
        heads += [f"{prefix}head"] + ([f"{prefix}text_head"] if module.text_head is not None else [])
    if not heads:
        raise ConfigError(f"{type(model).__name__} has no CASGDecoder, so its mask head is unknown; expected "
                          "exclude= the modules making the mask logits (exclude=() quantizes every layer)")  # fmt: skip
    return heads


def _exclusion(model: nn.Module, exclude: Exclude) -> Callable[[str, nn.Module], bool]:
    """The predicate of ``exclude``: names (a module and everything under it), a predicate, or None (the mask head);
    a name that is no module of the model raises ConfigError."""
    if callable(exclude):
        return exclude
    names = [exclude] if isinstance(exclude, str) else list(mask_head_modules(model) if exclude is None else exclude)
    known = dict(model.named_modules())
    unknown = [n for n in names if n not in known]
    if unknown:
        hint = closest(unknown[0], known)
        raise ConfigError(f"exclude names {unknown[:5]} are not modules of {type(model).__name__}{hint}; expected "
                          "names from model.named_modules(), e.g. 'decoder.head'")  # fmt: skip
    return lambda name, _module: any(name == n or name.startswith(f"{n}.") for n in names)


def prepare_qat(model: nn.Module, calibration: Any, *, exclude: Exclude = None) -> dict[str, Any]:
    """Turn the model's Conv2d/Linear layers into fake-quant layers in place and calibrate their input scales.

    Args:
        model: the FP32 model (e.g. :class:`model.ris.RISModel`); its ``state_dict`` keys all stay, each quantized
            layer adds ``qat_input_scale`` (learnable) and ``qat_input_absmax`` (the calibration record).
        calibration: the calibration batches, see :func:`calibrate_qat`.
        exclude: module names kept float (with everything under them), a predicate ``(name, module) -> bool``, or
            None for the mask head (:func:`mask_head_modules`).

    Returns:
        ``quantized`` and ``excluded`` layer names, ``skipped`` (Conv2d/Linear subclasses such as attention
        out-projections, whose weights other code reads directly), ``calibration`` and ``calibration_batches``.

    Raises:
        ConfigError: the model is prepared already, an ``exclude`` name is unknown, or the calibration ran no batch
            (the model is left float).
    """
    if qat_layers(model):
        raise ConfigError(f"{type(model).__name__} already has {len(qat_layers(model))} fake-quant layers; expected a "
                          "float model (calibrate_qat re-calibrates a prepared one)")  # fmt: skip
    excluded = _exclusion(model, exclude)
    info: dict[str, Any] = {"quantized": [], "excluded": [], "skipped": [], "calibration": CALIBRATION}
    for name, module in list(model.named_modules()):
        if not isinstance(module, tuple(QAT_CLASSES)):
            continue
        if type(module) not in QAT_CLASSES:
            info["skipped"].append(name)
        elif excluded(name, module):
            info["excluded"].append(name)
        else:
            module.__class__ = QAT_CLASSES[type(module)]
            module._qat_setup()
            info["quantized"].append(name)
    try:
        info["calibration_batches"] = calibrate_qat(model, calibration)
    except BaseException:  # leave the model as it came
        for name in info["quantized"]:
            layer = model.get_submodule(name)
            del layer._parameters["qat_input_scale"], layer._buffers["qat_input_absmax"]
            layer.__class__ = layer.__class__.__mro__[2]  # QATConv2d -> _FakeQuant -> nn.Conv2d
        raise
    model._qat_info = {k: v for k, v in info.items() if k != "quantized"}  # read by export_qat_onnx's metadata
    counts = len(info["quantized"]), len(info["excluded"]), ", ".join(info["excluded"]), info["calibration_batches"]
    log.info("QAT: %d layers fake-quantized, %d kept float (%s), %d calibration batches", *counts)
    return info


def _run_batches(model: nn.Module, calibration: Any) -> None:
    """Feed the calibration to the model: see :func:`calibrate_qat` for the accepted forms."""
    if callable(calibration) and not isinstance(calibration, nn.Module):
        calibration(model)
        return
    if isinstance(calibration, Mapping):  # the PTQ calibration set: arrays stacked on axis 0, one sample per batch
        arrays, count = calibration, len(next(iter(calibration.values())))
        calibration = ({k: v[i : i + 1] for k, v in arrays.items()} for i in range(count))
    elif not isinstance(calibration, Iterable):
        raise ConfigError(f"calibration of type {type(calibration).__name__}; expected batches, stacked arrays or a "
                          "callable (see quantize.qat_torch.calibrate_qat)")  # fmt: skip
    # numpy or torch; integer tokens become the int64 the model takes
    as_tensor = lambda v: t if (t := torch.as_tensor(v)).is_floating_point() else t.long()
    for batch in calibration:
        if isinstance(batch, Mapping):
            model(**{k: as_tensor(v) for k, v in batch.items()})
        elif isinstance(batch, (tuple, list)):
            model(*(as_tensor(v) for v in batch))
        else:
            model(as_tensor(batch))


def calibrate_qat(model: nn.Module, calibration: Any) -> int:
    """(Re)set every fake-quant layer's input scale from MinMax statistics: absmax / 127 over the calibration.

    The model runs in eval mode, without gradients and with fake quantization off (the FP32 activations, as the PTQ
    path calibrates the FP32 ONNX); modes and switches are restored afterwards. ConfigError when no batch ran.

    Args:
        model: a model after :func:`prepare_qat`.
        calibration: an iterable of batches (each a tuple of positional inputs or a dict of keyword inputs,
            tensors or numpy arrays; integer arrays become int64), a dict of arrays stacked on axis 0 (the PTQ
            calibration set: one sample per batch), or a callable ``calibration(model)`` that runs the batches itself.

    Returns:
        How many forward passes of ``model`` the calibration made.
    """
    layers = qat_layers(model)
    calls, modes, enabled = [0], _modes(model), {n: m.qat_enabled for n, m in layers.items()}
    hook = model.register_forward_pre_hook(lambda *_: calls.__setitem__(0, calls[0] + 1))
    for m in layers.values():
        m.qat_input_absmax.zero_()
        m.qat_observing, m.qat_enabled = True, False
    try:
        with torch.no_grad():
            _run_batches(model.eval(), calibration)
    finally:
        hook.remove()
        _modes(model, modes)
        for n, m in layers.items():
            m.qat_observing, m.qat_enabled = False, enabled[n]
    if calls[0] == 0:
        raise ConfigError("the calibration ran no batch through the model; expected at least one input batch")
    unseen = [n for n, m in layers.items() if float(m.qat_input_absmax) == 0.0]
    if unseen:  # a layer the calibration never reached keeps scale 1.0 (ONNX Runtime's rule for an empty range)
        log.warning("QAT calibration: %d layers saw no non-zero input (scale 1.0): %s", len(unseen), unseen[:5])
    with torch.no_grad():
        for m in layers.values():
            m.qat_input_scale.copy_(symmetric_scale(m.qat_input_absmax))
    return calls[0]


# 3. switch and summary -----------------------------------------------------------------------------------------------
def set_fake_quant(model: nn.Module, enabled: bool) -> int:
    """Switch fake quantization of every layer on (QAT) or off (exactly the FP32 model: each layer runs its float
    forward; calibration statistics and learned scales are kept). Returns how many layers were switched."""
    for m in qat_layers(model).values():
        m.qat_enabled = bool(enabled)
    return len(qat_layers(model))


def qat_summary(model: nn.Module) -> dict[str, Any]:
    """What QAT did to a model: layer counts, the float layers, and the input and weight scale ranges.

    Returns:
        ``quantized`` (count), ``enabled`` (count switched on), ``learnable_scales`` (count), ``excluded`` (the
        plain Conv2d/Linear names left float), ``input_scale`` and ``weight_scale`` (min/max over layers) and
        ``layers`` (per layer: ``input_scale``, ``input_absmax``, ``weight_scale`` min/max, ``learnable``).
    """
    layers, ranges = qat_layers(model), (("min", min), ("max", max))
    per_layer = {
        name: {
            "input_scale": float(m.qat_input_scale.detach().clamp_min(SCALE_MIN)),
            "input_absmax": float(m.qat_input_absmax),
            "weight_scale": {k: float(f(weight_scales(m.weight))) for k, f in ranges},
            "learnable": bool(m.qat_input_scale.requires_grad),
        }
        for name, m in layers.items()
    }
    return {
        "quantized": len(layers),
        "enabled": sum(m.qat_enabled for m in layers.values()),
        "learnable_scales": sum(v["learnable"] for v in per_layer.values()),
        "excluded": [n for n, m in model.named_modules() if type(m) in QAT_CLASSES],
        "input_scale": {k: f((v["input_scale"] for v in per_layer.values()), default=None) for k, f in ranges},
        "weight_scale": {k: f((v["weight_scale"][k] for v in per_layer.values()), default=None) for k, f in ranges},
        "layers": per_layer,
    }


# 4. export -----------------------------------------------------------------------------------------------------------
def _digest(array: np.ndarray) -> str:
    """Identity of a float weight (shape and values), to find a torch layer's weight in the graph."""
    array = np.ascontiguousarray(array, np.float32)
    return hashlib.sha1(repr(array.shape).encode() + array.tobytes()).hexdigest()


def _replace_nodes(proto: Any, nodes: list[Any]) -> None:
    """Set the graph's nodes, dropping DequantizeLinear nodes and initializers that nothing reads any more."""
    used = {i for n in nodes for i in n.input} | {o.name for o in proto.graph.output}
    del proto.graph.node[:]
    proto.graph.node.extend(n for n in nodes if n.op_type != "DequantizeLinear" or n.output[0] in used)
    used = {i for n in proto.graph.node for i in n.input}
    for t in [t for t in proto.graph.initializer if t.name not in used]:
        proto.graph.initializer.remove(t)


def _fold_weight_quantize(proto: Any) -> set[str]:
    """Store each quantized weight as INT8 (as the PTQ graph does): ``QuantizeLinear(float constant)`` becomes an INT8
    initializer, rounded as the torch kernel rounds (``nearbyint(w · (1/scale))``). Returns the float weights'
    :func:`_digest`."""
    from onnx import numpy_helper

    from quantize.trt_compat import _constant_values

    consts, folded, keep = _constant_values(proto), set(), []
    for node in proto.graph.node:
        if node.op_type != "QuantizeLinear" or node.input[0] not in consts or node.input[1] not in consts:
            keep.append(node)
            continue
        weight, scale = consts[node.input[0]].astype(np.float32), consts[node.input[1]].astype(np.float32)
        axis = next((a.i for a in node.attribute if a.name == "axis"), 1) % weight.ndim
        shape = [-1 if i == axis and scale.size > 1 else 1 for i in range(weight.ndim)]
        q = np.clip(np.rint(weight * (np.float32(1.0) / scale).reshape(shape)), QMIN, QMAX).astype(np.int8)
        proto.graph.initializer.append(numpy_helper.from_array(q, node.output[0]))
        folded.add(_digest(weight))
    _replace_nodes(proto, keep)
    return folded


def _fold_weight_transposes(proto: Any) -> int:
    """Replace ``Transpose(DequantizeLinear(INT8 weight))`` (the exporters transpose a Linear's weight for MatMul) by
    the DequantizeLinear of the transposed INT8 weight, its per-channel axis moved along: the weight Q/DQ feeds the
    MatMul directly, per channel on the output axis, as in the PTQ graph. Returns how many."""
    from onnx import helper, numpy_helper

    inits = {t.name: t for t in proto.graph.initializer}
    producer = {o: n for n in proto.graph.node for o in n.output}
    out, count = [], 0
    for node in proto.graph.node:
        dq = producer.get(node.input[0]) if node.op_type == "Transpose" else None
        if dq is None or dq.op_type != "DequantizeLinear" or dq.input[0] not in inits:
            out.append(node)
            continue
        weight = numpy_helper.to_array(inits[dq.input[0]])
        perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), list(range(weight.ndim))[::-1])
        axis = next((a.i for a in dq.attribute if a.name == "axis"), 1) % weight.ndim
        name = f"{dq.input[0]}_t{count}"
        proto.graph.initializer.append(numpy_helper.from_array(np.ascontiguousarray(weight.transpose(perm)), name))
        dq_inputs = [name, *dq.input[1:]]
        out.append(helper.make_node("DequantizeLinear", dq_inputs, node.output, axis=perm.index(axis), name=name))
        count += 1
    _replace_nodes(proto, out)
    return count


def _check_placement(proto: Any) -> list[str]:
    """How a Q/DQ graph breaks the policy (empty: it does not): a zero point that is not INT8 0, a Q/DQ pair in front
    of anything but a Conv/MatMul/Gemm, a node with one quantized input of two, a weight not per channel on its output
    axis, an activation not per tensor."""
    from quantize.qdq_graph import PASS_THROUGH_OPS, QUANT_OPS
    from quantize.trt_compat import _constant_values

    consts, problems, consumers = _constant_values(proto), [], {}
    allowed = {"QuantizeLinear": {"DequantizeLinear"}, "DequantizeLinear": {*QUANT_OPS, *PASS_THROUGH_OPS}}
    producer = {o: n for n in proto.graph.node for o in n.output}
    for node, name in ((n, i) for n in proto.graph.node for i in n.input):
        consumers.setdefault(name, []).append(node)
    for node in proto.graph.node:
        label = f"{node.op_type} {node.name or node.output[0]}"
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            zp = consts.get(node.input[2]) if len(node.input) > 2 else None
            if zp is None or zp.dtype != np.int8 or np.any(zp != 0):
                problems.append(f"{label}: zero point {None if zp is None else zp.ravel()[:3]}, expected int8 0")
            readers, seen = list(consumers.get(node.output[0], [])), set()
            while readers:  # through pass-through ops (a weight's Reshape) to the op that computes
                nxt = readers.pop()
                seen.add(nxt.op_type)
                readers.extend(c for o in nxt.output for c in consumers.get(o, []) if nxt.op_type in PASS_THROUGH_OPS)
            if not seen <= allowed[node.op_type]:
                problems.append(f"{label}: read by {sorted(seen)}, expected DequantizeLinear / Conv/MatMul/Gemm only")
        dqs = {i: producer.get(name) for i, name in enumerate(node.input[:2])} if node.op_type in QUANT_OPS else {}
        dqs = {i: d for i, d in dqs.items() if d is not None and d.op_type == "DequantizeLinear"}
        if dqs and set(dqs) != {0, 1}:
            problems.append(f"{label}: only input(s) {sorted(dqs)} come through Q/DQ, expected input and weight")
        elif dqs:
            act, weight, w_scale = (consts.get(n) for n in (dqs[0].input[1], dqs[1].input[0], dqs[1].input[1]))
            trans_b = node.op_type == "Gemm" and any(a.name == "transB" and a.i for a in node.attribute)
            axis = next((a.i for a in dqs[1].attribute if a.name == "axis"), 1)
            want = 0 if node.op_type == "Conv" or trans_b else 1  # output channels: W [Cout,..], [K,N] or B^T [N,K]
            if act is None or act.size != 1:
                problems.append(f"{label}: activation scale is not one constant (per tensor)")
            if weight is None or w_scale is None or axis % weight.ndim != want or w_scale.size != weight.shape[want]:
                problems.append(f"{label}: weight Q/DQ is not per channel on axis {want}")
    return problems


def export_qat_onnx(
    model: nn.Module,
    path: str | Path,
    metadata: dict[str, Any] | None = None,
    opset: int | None = None,
    *,
    trt_version: str | None = None,
) -> Path:
    """Export a QAT model's full graph as an explicit Q/DQ INT8 ONNX for TensorRT (the PTQ path's kind of graph).

    Args:
        model: a :class:`~model.ris.RISModel`, or a module holding one (its ``graph_specs`` wrapper), after
            :func:`prepare_qat`, fake quantization on; its train/eval mode is restored.
        path: the ``.onnx`` file to write.
        metadata: description entries (``pipeline.stages.export.describe``); precision and ``quantization`` are added.
        opset: as :func:`runtimes.export.export_onnx` (≤ 17: the TorchScript exporter); None = the dynamo default,
            or the highest opset ``trt_version``'s parser takes when that is below the dynamo exporter's 18.
        trt_version: the target TensorRT: LayerNorm is decomposed where its parser lacks it (8.5), and the file must
            pass :func:`quantize.trt_compat.check_trt_compat` for it.

    Raises:
        ConfigError: the model has no fake-quant layer, or some are switched off.
        ArtifactError: the export failed, a quantized layer has no Q/DQ in the graph, the placement breaks the policy
            (:func:`_check_placement`), or ``trt_version``'s parser would refuse the graph.
    """
    import onnx

    from model.graphs import graph_specs
    from model.ris import RISModel
    from quantize.trt_compat import check_trt_compat, decompose_layernorm, load_op_list, resolve_version
    from runtimes.export import DYNAMO_MIN_OPSET, export_onnx

    layers, ris = qat_layers(model), next((m for m in model.modules() if isinstance(m, RISModel)), None)
    off = [n for n, m in layers.items() if not m.qat_enabled]
    if not layers or off or ris is None:
        raise ConfigError(f"{type(model).__name__}: {len(layers)} fake-quant layers, {len(off)} off ({off[:3]}); "
                          "expected a RISModel (or its graph wrapper) after prepare_qat, fake quant on")  # fmt: skip
    ops, modes = (load_op_list(resolve_version(trt_version)) if trt_version else None), _modes(model)
    if opset is None and ops is not None and ops["opset_max"] < DYNAMO_MIN_OPSET:
        opset = ops["opset_max"]
    try:  # the graph wrappers take the model's mode when built: eval (BatchNorm running statistics)
        graph = graph_specs(ris.eval())["full"]
        example = dict(zip(graph.input_names, graph.example_inputs(), strict=True))
        path = export_onnx(graph.module, example, graph.output_names, path, opset=opset, metadata=metadata)
    finally:
        _modes(model, modes)
    proto = onnx.load(str(path))
    folded, moved = _fold_weight_quantize(proto), _fold_weight_transposes(proto)
    if ops is not None and "LayerNormalization" not in ops["supported"]:
        proto, _count = decompose_layernorm(proto)
    missing = [n for n, m in layers.items() if _digest(m.weight.detach().cpu().numpy()) not in folded]
    problems = _check_placement(proto) + [f"layer {n}: no weight Q/DQ in the graph" for n in missing]
    if problems:
        Path(path).unlink()  # leave no graph that breaks the policy where a build step would pick it up
        raise ArtifactError(f"QAT export {path}: {len(problems)} placement problems: {'; '.join(problems[:8])}")
    _write_metadata(proto, path, model, moved)
    if trt_version:
        check_trt_compat(path, trt_version).raise_for_errors()
    return Path(path)


def _write_metadata(proto: Any, path: Path, model: nn.Module, moved: int) -> None:
    """Save the Q/DQ graph with the PTQ path's description (``quantization``, ``float_remainder`` fp32 included) added
    to the one :func:`~runtimes.export.export_onnx` wrote (the caller's entries, its own opset and exporter)."""
    import onnx

    from quantize.qdq_graph import QUANT_OPS, quantized_nodes, quantized_op_types
    from runtimes.export import read_onnx_metadata, set_onnx_metadata

    quantized, inits = set(quantized_nodes(proto)), {t.name for t in proto.graph.initializer}
    float_layers = [n.name for n in proto.graph.node if n.op_type in QUANT_OPS and n.input[1] in inits]
    prepared = next((m._qat_info for m in model.modules() if hasattr(m, "_qat_info")), {})
    quantization = {  # the keys of quantize.qdq's description; float_remainder: runtimes.tensorrt_settings reads it
        "format": "qdq", "backend": "torch-qat", "scheme": "symmetric int8, per-channel weights",
        "placement": "Conv/MatMul/Gemm inputs", "op_types": quantized_op_types(proto), "float_remainder": "fp32",
        "excluded": float_layers, "excluded_modules": prepared.get("excluded", []), "calibration": CALIBRATION,
        "calibration_samples": prepared.get("calibration_batches"), "quantized_layers": len(qat_layers(model)),
        "quantized_nodes": len(quantized), "weight_transposes_folded": moved,
    }  # fmt: skip
    set_onnx_metadata(proto, {**read_onnx_metadata(path), "precision": "int8", "quantization": quantization})
    onnx.save(proto, str(path))
    log.info("QAT Q/DQ INT8: %s (%d quantized nodes, %d float layers)", path, len(quantized), len(float_layers))
