"""First divergence of an INT8 artifact from its FP32 graph: every layer's SQNR and cosine, in topological order.

Usage: ``report = compare_onnx("full.onnx", "full_int8_qdq.onnx", feeds)`` (or ``compare_openvino("full.xml",
"full_int8.xml", feeds)``), then ``report.first_divergence``, ``report.to_dict()`` and ``divergence_markdown(report)``.

Polygraphy's compare-all-outputs idea: both graphs run with their intermediate tensors exposed as outputs, one sample
at a time, and each FP32 tensor is compared with the same tensor of the INT8 graph. Tensors are matched by producer name
and output index, which the quantizers keep for the original compute nodes (ONNX Runtime's Q/DQ quantizer and NNCF add
QuantizeLinear / DequantizeLinear / FakeQuantize nodes under new names). Per layer: SQNR ``10·log10(Σx² / Σ(x − y)²)``
in dB with sums over all samples (``+inf`` when equal), and the cosine similarity averaged over the samples. The first
divergence is the first layer, in the FP32 graph's topological order, whose SQNR is below the threshold (NaN counts as
below). Tensors that are not float, or whose shapes differ between the graphs, are skipped and counted.

The instrumented runs simulate INT8 in float: ONNX Runtime with graph optimizations off (Q/DQ nodes run as they are),
OpenVINO's CPU plugin with its low-precision transformations off (``LP_TRANSFORMS_MODE``, FakeQuantize runs as float).
With them on, an extra output on a quantized convolution changed that tensor and its consumers (tiny run, OpenVINO
2026.4: a ReLU at −6 dB against the same graph simulated). ``final_deployed`` compares the output as deployed: both
files as the runtimes load them, integer kernels, no extra outputs.
"""

from __future__ import annotations

import itertools
import logging
import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from foundation.errors import ArtifactError, ConfigError, DataError

log = logging.getLogger(__name__)

DEFAULT_SAMPLES = 4
DEFAULT_THRESHOLD_DB = 20.0
FINAL_OUTPUT = "mask_logits"
WORST = 10  # layers listed under ``worst`` in the dictionary and the Markdown table
ONNX_SKIP_OPS = ("Constant",)  # weights and shapes: nothing computed from the inputs
OV_SKIP_OPS = ("Constant", "Parameter", "Result")
ORT_FLOAT_TYPES = frozenset({"tensor(float)", "tensor(float16)", "tensor(double)", "tensor(bfloat16)"})
OV_NO_LPT = "LP_TRANSFORMS_MODE"  # CPU property missing from SUPPORTED_PROPERTIES; False runs FakeQuantize in float

Feeds = Iterable[dict[str, np.ndarray]]
Runner = Callable[[dict[str, np.ndarray]], Any]  # feed -> outputs indexable by a pair's key


@dataclass
class LayerDivergence:
    """One compared tensor: its producer (position in the FP32 topological order, name, op type) and the figures."""

    index: int
    layer: str
    op_type: str
    tensor: str
    sqnr_db: float
    cosine: float

    def to_dict(self) -> dict[str, Any]:
        return {**asdict(self), "sqnr_db": _json_float(self.sqnr_db, 3), "cosine": _json_float(self.cosine, 6)}


@dataclass
class DivergenceReport:
    """Per-layer SQNR of an INT8 artifact against its FP32 graph, in the FP32 topological order, and the final output.

    ``final`` comes from the simulated run, ``final_deployed`` from the runtimes' own; ``skipped`` counts the tensors
    left out by reason (``unmatched``, ``not_float``, ``shape_mismatch``); ``settings`` says how the graphs ran.
    """

    backend: str
    reference: str
    candidate: str
    samples: int
    threshold_db: float
    layers: list[LayerDivergence]
    final: LayerDivergence
    final_deployed: LayerDivergence | None = None
    skipped: dict[str, int] = field(default_factory=dict)
    settings: dict[str, Any] = field(default_factory=dict)

    @property
    def first_divergence(self) -> LayerDivergence | None:
        """The first layer whose SQNR is below :attr:`threshold_db` (None when every layer is at or above it)."""
        return self.first_below(self.threshold_db)

    def first_below(self, threshold_db: float) -> LayerDivergence | None:
        """The first layer, in topological order, whose SQNR is below ``threshold_db`` or NaN."""
        return next((la for la in self.layers if math.isnan(la.sqnr_db) or la.sqnr_db < threshold_db), None)

    def worst(self, n: int = WORST) -> list[LayerDivergence]:
        """The ``n`` layers of lowest SQNR (NaN first), ties broken by the lower cosine, then topological order."""
        return sorted(self.layers, key=_badness)[:n]

    def to_dict(self, max_layers: int | None = None) -> dict[str, Any]:
        """JSON-ready figures (``±inf`` as the strings ``"inf"`` / ``"-inf"``, NaN as None).

        Args:
            max_layers: keep only the first this many ``layers`` (topological order); ``worst`` always holds the
                :data:`WORST` lowest-SQNR layers.
        """
        first = self.first_divergence
        kept = self.layers if max_layers is None else self.layers[: max(0, max_layers)]
        plain = ("backend", "reference", "candidate", "samples", "threshold_db", "settings")
        return {
            **{k: getattr(self, k) for k in plain},
            "compared": len(self.layers),
            "skipped": dict(sorted(self.skipped.items())),
            "first_divergence": first.to_dict() if first else None,
            "final": self.final.to_dict(),
            "final_deployed": self.final_deployed.to_dict() if self.final_deployed else None,
            "worst": [la.to_dict() for la in self.worst()],
            "layers": [la.to_dict() for la in kept],
            "layers_left_out": len(self.layers) - len(kept),
        }


def _json_float(value: float, digits: int) -> float | str | None:
    if math.isnan(value):
        return None
    return ("inf" if value > 0 else "-inf") if math.isinf(value) else round(float(value), digits)


def _badness(layer: LayerDivergence) -> tuple[float, float, int]:
    low = lambda v: -math.inf if math.isnan(v) else v  # NaN sorts first
    return (low(layer.sqnr_db), low(layer.cosine), layer.index)


def sqnr_db(signal: float, noise: float) -> float:
    """``10·log10(signal / noise)`` of the sums ``Σx²`` and ``Σ(x − y)²``; ``+inf`` without noise."""
    if math.isnan(signal) or math.isnan(noise):
        return math.nan
    if noise == 0.0:
        return math.inf
    return -math.inf if signal == 0.0 else 10.0 * math.log10(signal / noise)


# 1. the figures of a tensor pair, accumulated sample by sample ------------------------------------------------------
@dataclass
class _Stats:
    signal: float = 0.0
    noise: float = 0.0
    cosine: float = 0.0
    count: int = 0
    mismatch: bool = False

    def add(self, x: np.ndarray, y: np.ndarray) -> None:
        """Add one sample's FP32 tensor ``x`` and INT8 tensor ``y`` (a shape mismatch marks the pair skipped)."""
        if np.shape(x) != np.shape(y):
            self.mismatch = True
            return
        a, b = np.asarray(x, np.float64).ravel(), np.asarray(y, np.float64).ravel()
        d = a - b
        aa, bb = float(a @ a), float(b @ b)
        self.signal += aa
        self.noise += float(d @ d)
        if aa == 0.0 or bb == 0.0:
            self.cosine += 1.0 if aa == bb else 0.0
        else:
            self.cosine += float(a @ b) / math.sqrt(aa * bb)
        self.count += 1

    def result(self, pair: _Pair) -> LayerDivergence:
        cosine = self.cosine / self.count if self.count else math.nan
        return LayerDivergence(*pair[:4], sqnr_db(self.signal, self.noise), cosine)  # index, layer, op_type, tensor


class _Pair(NamedTuple):
    """A tensor to compare: its producer in the FP32 graph and its key in each run's outputs."""

    index: int
    layer: str
    op_type: str
    tensor: str
    ref_key: Any
    cand_key: Any


def _take_feeds(feeds: Feeds, dtypes: dict[str, np.dtype], samples: int) -> list[dict[str, np.ndarray]]:
    """The first ``samples`` feeds, restricted to the graph's inputs and cast to their dtypes."""
    if samples < 1:
        raise ConfigError(f"divergence samples must be at least 1, got {samples}")
    taken = []
    for i, feed in enumerate(itertools.islice(feeds, samples)):
        missing = [n for n in dtypes if n not in feed]
        if missing:
            raise DataError(f"feed {i} lacks the inputs {missing}; it has {sorted(feed)}, the graph takes {[*dtypes]}")
        taken.append({n: np.asarray(feed[n], dtype) for n, dtype in dtypes.items()})
    if not taken:
        raise DataError(f"no feeds to compare on; expected up to {samples} dicts of the inputs {[*dtypes]}")
    return taken


def _accumulate(
    pairs: Sequence[_Pair], final: _Pair, run_ref: Runner, run_cand: Runner, feeds: Sequence[dict[str, np.ndarray]]
) -> tuple[list[LayerDivergence], LayerDivergence, int]:
    """Run both graphs sample by sample; ``(layers, the final output, pairs skipped for a shape mismatch)``."""
    stats = [_Stats() for _ in pairs]
    final_stats = _Stats()
    for feed in feeds:
        ref, cand = run_ref(feed), run_cand(feed)
        for pair, st in zip(pairs, stats, strict=True):
            if not st.mismatch:
                st.add(ref[pair.ref_key], cand[pair.cand_key])
        final_stats.add(ref[final.ref_key], cand[final.cand_key])
        del ref, cand  # the next sample's tensors replace these
    if final_stats.mismatch:
        raise ArtifactError(f"output {final.tensor!r} has different shapes in the FP32 and INT8 graphs")
    layers = [st.result(p) for p, st in zip(pairs, stats, strict=True) if not st.mismatch]
    return layers, final_stats.result(final), sum(st.mismatch for st in stats)


def _existing(path: str | Path, what: str) -> Path:
    if not Path(path).is_file():
        raise ArtifactError(f"{what} {path} does not exist; expected the file the export / quantize stage wrote")
    return Path(path)


# 2. ONNX: the FP32 graph and its Q/DQ INT8 graph in ONNX Runtime ----------------------------------------------------
def _onnx_pairs(ref: Any, cand: Any) -> tuple[list[_Pair], int]:
    """The FP32 graph's node outputs in (topological) node order, paired with the same node's in ``cand``.

    Returns:
        ``(pairs keyed by tensor name in each graph, number of FP32 tensors with no same-named node output)``.
    """
    cand_nodes = {n.name: n for n in cand.graph.node if n.name}
    pairs, unmatched = [], 0
    for index, node in enumerate(ref.graph.node):
        if node.op_type in ONNX_SKIP_OPS:
            continue
        other = cand_nodes.get(node.name) if node.name else None
        for k, name in enumerate(node.output):
            if not name:
                continue
            if other is None or other.op_type != node.op_type or k >= len(other.output) or not other.output[k]:
                unmatched += 1
            else:
                pairs.append(_Pair(index, node.name, node.op_type, name, name, other.output[k]))
    return pairs, unmatched


def _ort_session(model: Any, path: Path, exposed: Sequence[str] = ()) -> tuple[Any, dict[str, str]]:
    """A CPU session and its output types: of ``model`` with the ``exposed`` tensors as outputs and no graph
    optimization, or of the file at ``path`` as the runtime loads it when nothing is exposed."""
    import onnx
    import onnxruntime as ort

    opts = ort.SessionOptions()
    if exposed:
        outputs = {o.name for o in model.graph.output}
        for name in dict.fromkeys(exposed):
            if name not in outputs:  # no type: ONNX Runtime takes it from the producing node
                model.graph.output.append(onnx.ValueInfoProto(name=name))
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL  # every tensor exists, Q/DQ as is
    source = model.SerializeToString() if exposed else str(path)
    try:
        session = ort.InferenceSession(source, opts, providers=["CPUExecutionProvider"])
    except Exception as exc:  # onnxruntime raises its own Fail / InvalidGraph types
        raise ArtifactError(f"ONNX Runtime cannot load {path} ({len(exposed)} tensors exposed): {exc}") from exc
    return session, {o.name: o.type for o in session.get_outputs()}


def _ort_runner(session: Any, names: Iterable[str]) -> Runner:
    fetch = list(dict.fromkeys(names))
    return lambda feed: dict(zip(fetch, session.run(fetch, feed), strict=True))


def _onnx_inputs(proto: Any) -> dict[str, np.dtype]:
    from onnx import helper

    init = {t.name for t in proto.graph.initializer}
    types = {v.name: v.type.tensor_type.elem_type for v in proto.graph.input if v.name not in init}
    return {name: np.dtype(helper.tensor_dtype_to_np_dtype(t)) for name, t in types.items()}


def _onnx_final(proto: Any, output: str, path: Path) -> _Pair:
    names = [o.name for o in proto.graph.output]
    if output not in names:
        raise ArtifactError(f"{path} has no output {output!r}; its outputs are {names}")
    index, node = next(((i, n) for i, n in enumerate(proto.graph.node) if output in n.output), (-1, None))
    return _Pair(index, output, node.op_type if node is not None else "Input", output, output, output)


def compare_onnx(
    reference: str | Path,
    candidate: str | Path,
    feeds: Feeds,
    *,
    samples: int = DEFAULT_SAMPLES,
    threshold_db: float = DEFAULT_THRESHOLD_DB,
    output: str = FINAL_OUTPUT,
    deployed: bool = True,
) -> DivergenceReport:
    """Compare every tensor of a Q/DQ INT8 ONNX with the FP32 ONNX it was quantized from, in ONNX Runtime on CPU.

    Args:
        reference: the FP32 ONNX (``export/full.onnx``).
        candidate: its Q/DQ INT8 graph (``quantize/full_int8_qdq.onnx``), or any graph keeping the FP32 node names.
        feeds: batch-1 input dicts (calibration or evaluation samples); keys other than the graph's inputs are ignored.
        samples: how many of ``feeds`` to run.
        threshold_db: a layer below this SQNR is a divergence.
        output: the graph output reported as :attr:`DivergenceReport.final`.
        deployed: also compare ``output`` with ONNX Runtime's default optimizations (fused integer kernels).

    Returns:
        A :class:`DivergenceReport` with backend ``onnxruntime``.

    Raises:
        ArtifactError: a file is missing or unreadable, the graphs take different inputs, or ``output`` is absent.
        DataError: ``feeds`` is empty or lacks a graph input.
    """
    import onnx

    ref_path, cand_path = _existing(reference, "FP32 ONNX"), _existing(candidate, "INT8 ONNX")
    try:
        ref, cand = onnx.load(str(ref_path)), onnx.load(str(cand_path))
    except Exception as exc:  # protobuf DecodeError and friends
        raise ArtifactError(f"cannot read ONNX {ref_path} / {cand_path}: {exc}") from exc
    dtypes = _onnx_inputs(ref)
    if set(_onnx_inputs(cand)) != set(dtypes):
        raise ArtifactError(f"{cand_path} takes the inputs {sorted(_onnx_inputs(cand))}; expected {sorted(dtypes)}")
    taken = _take_feeds(feeds, dtypes, samples)
    final = _onnx_final(ref, output, ref_path)
    _onnx_final(cand, output, cand_path)
    pairs, unmatched = _onnx_pairs(ref, cand)
    ref_session, ref_types = _ort_session(ref, ref_path, [p.ref_key for p in pairs])
    cand_session, cand_types = _ort_session(cand, cand_path, [p.cand_key for p in pairs])
    floats = [p for p in pairs if {ref_types.get(p.ref_key), cand_types.get(p.cand_key)} <= ORT_FLOAT_TYPES]
    run_ref = _ort_runner(ref_session, [*(p.ref_key for p in floats), output])
    run_cand = _ort_runner(cand_session, [*(p.cand_key for p in floats), output])
    layers, final_layer, mismatched = _accumulate(floats, final, run_ref, run_cand, taken)
    del ref_session, cand_session, run_ref, run_cand  # the exposed graphs' memory, before the deployed sessions
    report = DivergenceReport(
        "onnxruntime", str(ref_path), str(cand_path), len(taken), threshold_db, layers, final_layer
    )
    report.skipped = {"unmatched": unmatched, "not_float": len(pairs) - len(floats), "shape_mismatch": mismatched}
    report.settings = {"instrumented": "ORT_DISABLE_ALL", "deployed": "ORT_ENABLE_ALL" if deployed else None}
    if deployed:
        run_ref = _ort_runner(_ort_session(None, ref_path)[0], [output])
        run_cand = _ort_runner(_ort_session(None, cand_path)[0], [output])
        report.final_deployed = _accumulate([], final, run_ref, run_cand, taken)[1]
    return report


# 3. OpenVINO: the FP32 IR and its NNCF INT8 IR on CPU ---------------------------------------------------------------
def _ov_pairs(ref: Any, cand: Any) -> tuple[list[_Pair], int, int]:
    """Float outputs of the FP32 IR's operations in topological order, with the same-named operation's in ``cand``;
    and the numbers of unmatched and of not-float outputs."""
    cand_ops = {op.get_friendly_name(): op for op in cand.get_ops()}
    pairs, unmatched, not_float = [], 0, 0
    for index, op in enumerate(ref.get_ordered_ops()):
        if op.get_type_name() in OV_SKIP_OPS:
            continue
        name, other = op.get_friendly_name(), cand_ops.get(op.get_friendly_name())
        for k, port in enumerate(op.outputs()):
            if other is None or other.get_type_name() != op.get_type_name() or k >= other.get_output_size():
                unmatched += 1
            elif not (port.get_element_type().is_real() and other.output(k).get_element_type().is_real()):
                not_float += 1
            else:
                tensor = min(port.get_names(), default=f"{name}:{k}")  # most intermediate ports have no name
                pairs.append(_Pair(index, name, op.get_type_name(), tensor, port, other.output(k)))
    return pairs, unmatched, not_float


def _ov_final(model: Any, output: str, path: Path) -> Any:
    """The port producing the model output ``output`` (the input of its Result)."""
    names = [n for o in model.outputs for n in sorted(o.get_names())]
    if output not in names:
        raise ArtifactError(f"{path} has no output {output!r}; its outputs are {names}")
    return model.output(output).get_node().input_value(0)


def _ov_compile(core: Any, model: Any, config: dict[str, Any], path: Path) -> Any:
    """``core.compile_model`` on CPU; without :data:`OV_NO_LPT` (and a warning) when this OpenVINO rejects it."""
    try:
        return core.compile_model(model, "CPU", config)
    except Exception as exc:  # OpenVINO's RuntimeError names the layer or the property
        if config.pop(OV_NO_LPT, None) is None:
            raise ArtifactError(f"OpenVINO cannot compile {path} on CPU with {config}: {exc}") from exc
        log.warning("OpenVINO CPU rejects %s=False (%s); per-layer figures may be off for INT8", OV_NO_LPT, exc)
        return _ov_compile(core, model, config, path)


def _ov_runner(core: Any, model: Any, ports: Sequence[Any], config: dict[str, Any], path: Path) -> tuple[Runner, list]:
    """Compile ``model`` with ``ports`` added as outputs: ``feed -> outputs`` and each port's output position."""
    added = model.add_outputs(list(ports)) if ports else []  # an existing output comes back as its own Result
    position = {o.get_node().get_friendly_name(): i for i, o in enumerate(model.outputs)}
    request = _ov_compile(core, model, config, path).create_infer_request()
    return lambda feed: request.infer(feed).to_tuple(), [position[a.get_node().get_friendly_name()] for a in added]


def compare_openvino(
    reference: str | Path,
    candidate: str | Path,
    feeds: Feeds,
    *,
    samples: int = DEFAULT_SAMPLES,
    threshold_db: float = DEFAULT_THRESHOLD_DB,
    output: str = FINAL_OUTPUT,
    deployed: bool = True,
    inference_precision: str | None = "f32",
    threads: int | None = 1,
) -> DivergenceReport:
    """Compare every operation output of an NNCF INT8 IR with the FP32 IR it was quantized from, on OpenVINO's CPU.

    Operations are matched by friendly name (NNCF keeps the original names and adds FakeQuantize operations); a
    tensor's name is its port's first name, or ``<operation>:<index>`` when it has none.

    Args:
        reference: the FP32 IR (``export/full.xml``).
        candidate: its INT8 IR (``quantize/full_int8.xml``).
        feeds, samples, threshold_db, output: as in :func:`compare_onnx`.
        deployed: also compare ``output`` compiled as :class:`runtimes.openvino_rt.OpenVINORuntime` does (integer
            kernels, OpenVINO's thread count, no extra outputs). One compilation's figure: on a tiny run, OpenVINO
            2026.4's INT8 CPU kernels gave another output at each compilation (23–24 dB against FP32 with 2 threads,
            5–7 dB with 1; repeatable within one compiled model), while the simulated runs were repeatable.
        inference_precision: ``INFERENCE_PRECISION_HINT`` of every compilation; ``f32`` as the runtime (bf16-capable
            CPUs would otherwise compute the float parts in bf16).
        threads: ``INFERENCE_NUM_THREADS`` of the instrumented runs; one by default, as multi-threaded kernels moved
            FP32 outputs by ~1e-6 from run to run (a ~100 dB floor under FP32 vs FP32); None for OpenVINO's choice.

    Returns:
        A :class:`DivergenceReport` with backend ``openvino``.

    Raises:
        ArtifactError: a file is missing, unreadable or does not compile, or ``output`` is absent.
        DataError: ``feeds`` is empty or lacks a model input.
    """
    import openvino as ov

    ref_path, cand_path = _existing(reference, "FP32 IR"), _existing(candidate, "INT8 IR")
    core = ov.Core()
    try:
        ref, cand = core.read_model(str(ref_path)), core.read_model(str(cand_path))
    except Exception as exc:  # OpenVINO raises RuntimeError subclasses with the parser's message
        raise ArtifactError(f"OpenVINO cannot read {ref_path} / {cand_path}: {exc}") from exc
    dtypes = {p.get_any_name(): np.dtype(p.get_element_type().to_dtype()) for p in ref.inputs}
    taken = _take_feeds(feeds, dtypes, samples)
    ref_out, cand_out = _ov_final(ref, output, ref_path), _ov_final(cand, output, cand_path)
    pairs, unmatched, not_float = _ov_pairs(ref, cand)
    base: dict[str, Any] = {"PERFORMANCE_HINT": "LATENCY"}  # as the runtime compiles
    base |= {"INFERENCE_PRECISION_HINT": inference_precision} if inference_precision else {}
    config = {**base, OV_NO_LPT: False} | ({"INFERENCE_NUM_THREADS": int(threads)} if threads else {})
    run_ref, ref_pos = _ov_runner(core, ref, [*(p.ref_key for p in pairs), ref_out], config, ref_path)
    run_cand, cand_pos = _ov_runner(core, cand, [*(p.cand_key for p in pairs), cand_out], config, cand_path)
    keyed = [p._replace(ref_key=r, cand_key=c) for p, r, c in zip(pairs, ref_pos, cand_pos, strict=False)]
    producer = ref_out.get_node().get_friendly_name()
    index = next(i for i, op in enumerate(ref.get_ordered_ops()) if op.get_friendly_name() == producer)
    final = _Pair(index, output, ref_out.get_node().get_type_name(), output, ref_pos[-1], cand_pos[-1])
    layers, final_layer, mismatched = _accumulate(keyed, final, run_ref, run_cand, taken)
    del run_ref, run_cand  # the exposed models' memory, before the deployed compilations
    report = DivergenceReport("openvino", str(ref_path), str(cand_path), len(taken), threshold_db, layers, final_layer)
    report.skipped = {"unmatched": unmatched, "not_float": not_float, "shape_mismatch": mismatched}
    report.settings = {"instrumented": config, "deployed": base if deployed else None}
    if deployed:
        runs = []
        for path in (ref_path, cand_path):
            model = core.read_model(str(path))
            runs.append(_ov_runner(core, model, [_ov_final(model, output, path)], dict(base), path))
        at = final._replace(ref_key=runs[0][1][0], cand_key=runs[1][1][0])
        report.final_deployed = _accumulate([], at, runs[0][0], runs[1][0], taken)[1]
    return report


# 4. the Markdown table ----------------------------------------------------------------------------------------------
def _figure(value: float, digits: int) -> str:
    if math.isnan(value):
        return "NaN"
    return ("+inf" if value > 0 else "-inf") if math.isinf(value) else f"{value:.{digits}f}"


def _row(label: str, la: LayerDivergence) -> str:
    cells = [label, str(la.index), f"`{la.layer}`", la.op_type, f"`{la.tensor}`"]
    cells += [_figure(la.sqnr_db, 1), _figure(la.cosine, 4)]
    return "| " + " | ".join(c.replace("|", "\\|") for c in cells) + " |"


def divergence_markdown(report: DivergenceReport, worst: int = WORST) -> str:
    """A compact Markdown table: the first divergence, the final output and the ``worst`` lowest-SQNR layers."""
    skipped = ", ".join(f"{k} {v}" for k, v in sorted(report.skipped.items())) or "none"
    lines = [
        f"**INT8 divergence ({report.backend})**: `{Path(report.candidate).name}` vs `{Path(report.reference).name}`, "
        f"{report.samples} samples, threshold {report.threshold_db:g} dB; {len(report.layers)} tensors compared, "
        f"skipped: {skipped}",
        "",
        "| | # | layer | op | tensor | SQNR (dB) | cosine |",
        "|---|---:|---|---|---|---:|---:|",
    ]
    first, none = report.first_divergence, f"| first divergence | | none below {report.threshold_db:g} dB | | | | |"
    lines.append(_row("first divergence", first) if first else none)
    lines.append(_row("final output", report.final))
    if report.final_deployed is not None:
        lines.append(_row("final output, deployed", report.final_deployed))
    lines.extend(_row(f"worst {i}", la) for i, la in enumerate(report.worst(worst), 1))
    return "\n".join(lines) + "\n"
