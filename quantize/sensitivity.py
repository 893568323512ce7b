"""Per-layer-group INT8 sensitivity of a finished INT8 artifact (Q/DQ ONNX or NNCF OpenVINO IR), by accuracy.

Usage: ``result = measure_sensitivity("full_int8_qdq.onnx", "full.onnx", score)`` (or ``"full_int8.xml",
"full.xml"``), with ``score(infer) -> mIoU`` over a fixed evaluation subset (``infer(feeds) -> {output: array}``, as
``pipeline.stages.quantize.Tuning.score``); then ``result.ranking()``, ``sensitivity_markdown(result)`` and
``write_sensitivity_plot(result, "sensitivity.png")``.

Groups: the quantized compute nodes are grouped by model block (:func:`group_layers`). The block comes from the module
path: the node's name when it carries one (the TorchScript exporter's ``/vision/blocks.3/attn/MatMul``), else the name
of a parameter only that node reads (``inner.model.fusion.blocks.1.balance.proj.weight``; the dynamo exporter's names,
``node_conv2d_34``, carry none, and a parameter several nodes read is a shared constant, not evidence), else the
nearest such node upstream (then downstream) in the graph. The path is cut after its first index
(``fusion.blocks.1``), or its second when that still gives at most ``max_groups`` groups. Nodes no name reaches form
chunks of :data:`CHUNK_NODES` consecutive nodes; when the groups still outnumber ``max_groups``, neighbouring groups of
the same family (``fusion.blocks``) merge, smallest first.

Each group is measured by graph surgery on the artifact (:mod:`quantize.surgery`), without recalibrating: (a) "alone
float": the group's quantization removed, everything else quantized; (b) "alone quantized": only the group quantized.
Drops are in mIoU points against the FP32 model in the same runtime; recovery = all-INT8 drop − alone-float drop
(what returning the group to float wins back). Agreement is the mean IoU between a variant's binary masks and the FP32
masks (``sigmoid ≥ threshold`` at the model's output resolution) on the same samples. ``modes`` picks (a), (b) or
both, ``max_groups`` bounds the number of groups (and so the time, about one compile and one pass over the subset per
group and mode); the seconds are recorded. An OpenVINO INT8 model compiled twice on CPU need not give identical
outputs, so the all-INT8 model is scored twice and the difference reported as the run-to-run noise.
"""

from __future__ import annotations

import logging
import math
import re
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from foundation.errors import ArtifactError, ConfigError, DataError, choice_error
from quantize.qdq_graph import load_model
from quantize.surgery import Infer, open_variants

log = logging.getLogger(__name__)

MODES = ("float", "quantized")  # (a) the group alone in float, (b) the group alone quantized
MAX_GROUPS = 30
CHUNK_NODES = 12  # nodes per group when names carry no module path
MASK_OUTPUT = "mask_logits"  # runtimes.formats.MASK_OUTPUT
# a module path segment that indexes a container: "3" (blocks.3) or "layers_1" (timm's feature wrappers)
INDEX_SEGMENT = re.compile(r"^(\d+|[A-Za-z][A-Za-z0-9]*_\d+)$")


# ---------------------------------------------------------------------------------------------------- groups


@dataclass
class LayerGroup:
    """Quantized nodes of one model block, in graph order: ONNX node names, or OpenVINO operation names whose ONNX
    nodes are ``origins``. ``rule`` is ``module`` (named by module path) or ``chunk`` (consecutive unnamed nodes)."""

    name: str
    nodes: list[str]
    origins: list[str]
    rule: str = "module"


def module_paths(model: Any, names: Sequence[str] | None = None) -> dict[str, list[str] | None]:
    """Module path segments of ONNX nodes (all by default): their own (name, or a parameter only they read), else
    the nearest node's upstream, then downstream; None when no node of the graph has one."""
    proto = load_model(model)
    inits = {t.name for t in proto.graph.initializer}
    readers = Counter(i for n in proto.graph.node for i in set(n.input) if i in inits)
    nodes = {n.name: n for n in proto.graph.node if n.name}
    own = {name: _own_path(n, inits, readers) for name, n in nodes.items()}
    producer = {o: n.name for n in proto.graph.node for o in n.output}
    consumers: dict[str, list[str]] = defaultdict(list)
    for n in proto.graph.node:
        for i in n.input:
            if i in producer:
                consumers[producer[i]].append(n.name)
    up = {name: [producer[i] for i in n.input if i in producer] for name, n in nodes.items()}
    paths = {}
    for name in names if names is not None else list(nodes):
        if name not in nodes:
            paths[name] = None
        else:
            paths[name] = own[name] or _nearest(name, own, up) or _nearest(name, own, consumers)
    return paths


def _own_path(node: Any, inits: set[str], readers: Counter) -> list[str] | None:
    if "/" in node.name:  # /inner/model/vision/layers.1/blocks.0/attn/MatMul_1 -> ..., blocks, 0, attn
        segments = [s for part in node.name.split("/")[:-1] for s in part.split(".") if s]
        if segments:
            return segments
    for name in node.input:
        if name in inits and readers[name] == 1 and "." in name:  # e.g. decoder.lateral.0.0.weight
            return name.split(".")[:-1]
    return None


def _nearest(start: str, own: dict[str, list[str] | None], neighbours: dict[str, list[str]]) -> list[str] | None:
    """The path of the closest node with one (breadth first over ``neighbours``)."""
    seen, frontier = {start}, [start]
    while frontier:
        ahead = []
        for name in frontier:
            for other in neighbours.get(name, ()):
                if other in seen:
                    continue
                if own.get(other):
                    return own[other]
                seen.add(other)
                ahead.append(other)
        frontier = ahead
    return None


def _origin(name: str, onnx_names: set[str]) -> str | None:
    """The ONNX node an operation comes from: its name, or its name less ``/suffix`` parts (``x/WithoutBiases``)."""
    while name:
        if name in onnx_names:
            return name
        name = name.rpartition("/")[0]
    return None


def _key(segments: list[str], level: int) -> tuple[str, str]:
    """``(group key, family)``: the path cut after its ``level``-th index (or its last), and the part before any."""
    idx = [i for i, s in enumerate(segments) if INDEX_SEGMENT.match(s)]
    family = ".".join(segments[: idx[0]] if idx else segments[:-1] or segments)
    if not idx:
        return family, family
    return ".".join(segments[: idx[min(level, len(idx)) - 1] + 1]), family or segments[0]


def _common_prefix(paths: list[list[str]]) -> int:
    """Leading segments every path shares (``inner.model``), never ending right before an index."""
    if len({tuple(p) for p in paths}) < 2:
        return 0
    n = 0
    while all(len(p) > n + 1 and p[n] == paths[0][n] for p in paths):
        n += 1
    while n and any(INDEX_SEGMENT.match(p[n]) for p in paths):
        n -= 1
    return n


def group_layers(
    nodes: Sequence[str], fp32_onnx: Any = None, *, max_groups: int = MAX_GROUPS, chunk: int = CHUNK_NODES
) -> list[LayerGroup]:
    """Group quantized nodes (graph order) by model block; see the module docstring for the rule.

    Args:
        nodes: ONNX node names, or OpenVINO operation names (mapped to their ONNX nodes by name).
        fp32_onnx: the FP32 ONNX the names and parameters are read from; None: chunks only.
        max_groups: at most this many groups.
        chunk: nodes per chunk when no name gives a module path.

    Raises:
        ConfigError: ``max_groups`` or ``chunk`` below 1, or no node given.
    """
    nodes = list(dict.fromkeys(nodes))
    if max_groups < 1 or chunk < 1 or not nodes:
        raise ConfigError(f"max_groups={max_groups}, chunk={chunk} for {len(nodes)} nodes; expected ≥ 1 of each")
    proto = load_model(fp32_onnx) if fp32_onnx is not None else None
    onnx_names = {n.name for n in proto.graph.node} if proto is not None else set()
    origins = {u: _origin(u, onnx_names) or u for u in nodes}
    found = module_paths(proto, sorted(set(origins.values()) & onnx_names)) if proto is not None else {}
    paths = {u: found.get(origins[u]) for u in nodes}
    named = [p for p in paths.values() if p]
    cut = _common_prefix(named) if named else 0
    for level in (2, 1):
        keys = {u: _key(p[cut:], level) for u, p in paths.items() if p}
        groups = _build(nodes, keys, origins, chunk)
        if len(groups) <= max_groups:
            return groups
    family = {g.name: keys[g.nodes[0]][1] if g.rule == "module" else "" for g in groups}
    return _merge(groups, family, max_groups, {u: i for i, u in enumerate(nodes)})


def _build(nodes: Sequence[str], keys: dict[str, tuple[str, str]], origins: dict[str, str], chunk: int) -> list:
    by_key: dict[str, list[str]] = {}
    for u in nodes:
        if u in keys:
            by_key.setdefault(keys[u][0], []).append(u)
    groups = [LayerGroup(k, v, list(dict.fromkeys(origins[u] for u in v))) for k, v in by_key.items()]
    loose = [u for u in nodes if u not in keys]
    for i in range(0, len(loose), chunk):
        part = loose[i : i + chunk]
        name = f"nodes {part[0]} … {part[-1]}" if len(part) > 1 else f"node {part[0]}"
        groups.append(LayerGroup(name, part, list(dict.fromkeys(origins[u] for u in part)), "chunk"))
    position = {u: i for i, u in enumerate(nodes)}
    return sorted(groups, key=lambda g: position[g.nodes[0]])


def _merge(groups: list[LayerGroup], family: dict[str, str], max_groups: int, position: dict[str, int]) -> list:
    """Merge neighbouring groups (a family's groups neighbour each other) until at most ``max_groups`` remain."""
    first = {}
    for i, g in enumerate(groups):
        first.setdefault(family[g.name], i)
    order = sorted(range(len(groups)), key=lambda i: (first[family[groups[i].name]], i))
    runs = [[groups[i]] for i in order]
    fams = [family[groups[i].name] for i in order]
    while len(runs) > max_groups:
        pairs = range(len(runs) - 1)
        size = [sum(len(g.nodes) for g in run) for run in runs]
        j = min(pairs, key=lambda i: (fams[i] != fams[i + 1], size[i] + size[i + 1], i))
        runs[j : j + 2] = [runs[j] + runs[j + 1]]
        fams[j : j + 2] = [fams[j]]
    merged = []
    for run in runs:
        name = run[0].name if len(run) == 1 else f"{run[0].name} … {run[-1].name}"
        nodes = [u for g in run for u in g.nodes]
        rule = "module" if all(g.rule == "module" for g in run) else "chunk"
        merged.append(LayerGroup(name, nodes, list(dict.fromkeys(o for g in run for o in g.origins)), rule))
    return sorted(merged, key=lambda g: min(position[u] for u in g.nodes))


# ---------------------------------------------------------------------------------------------------- measuring


def _evaluate(
    score: Callable[[Infer], float], infer: Infer, output: str, cut: float, reference: list[np.ndarray] | None = None
) -> tuple[float, list[np.ndarray], float | None, float]:
    """``(mIoU, binary masks, agreement with reference masks, seconds)`` of one model over the caller's subset."""
    masks: list[np.ndarray] = []

    def recording(feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        out = infer(feeds)
        if output not in out:
            raise ArtifactError(f"output {output!r} is not among the model's outputs {sorted(out)}")
        masks.append(np.asarray(out[output]) >= cut)
        return out

    started = time.perf_counter()
    miou = float(score(recording))
    seconds = time.perf_counter() - started
    if reference is None:
        return miou, masks, None, seconds
    if len(masks) != len(reference):
        raise DataError(
            f"score ran {len(masks)} samples for this model and {len(reference)} for the FP32 reference; it must "
            "score the same fixed subset every time"
        )
    ious = []
    for a, b in zip(masks, reference, strict=True):
        union = np.logical_or(a, b).sum()
        ious.append(1.0 if union == 0 else float(np.logical_and(a, b).sum() / union))
    return miou, masks, float(np.mean(ious)) if ious else None, seconds


@dataclass
class GroupSensitivity:
    """One group's figures: mIoU drops in points against FP32, recovery (points), agreement with the FP32 masks."""

    name: str
    nodes: list[str]
    origins: list[str]
    rule: str = "module"
    float_drop: float | None = None  # (a) the group alone in float
    float_agreement: float | None = None
    recovery: float | None = None  # all-INT8 drop − float_drop
    quantized_drop: float | None = None  # (b) the group alone quantized
    quantized_agreement: float | None = None
    seconds: float = 0.0


@dataclass
class SensitivityResult:
    """Per-group sensitivity of one INT8 artifact; ``groups`` ranked, most sensitive first (:meth:`ranked`)."""

    artifact: str
    runtime: str
    reference_miou: float
    int8_miou: float
    int8_agreement: float | None
    int8_repeat_miou: float
    samples: int
    modes: list[str]
    groups: list[GroupSensitivity] = field(default_factory=list)
    seconds: dict[str, float] = field(default_factory=dict)

    @property
    def int8_drop(self) -> float:
        """The all-INT8 drop, in mIoU points."""
        return (self.reference_miou - self.int8_miou) * 100.0

    @property
    def noise_points(self) -> float:
        """Run-to-run difference of the all-INT8 mIoU between two compiles, in points (0 in ONNX Runtime)."""
        return abs(self.int8_miou - self.int8_repeat_miou) * 100.0

    def ranked(self) -> list[GroupSensitivity]:
        """Groups by recovery, largest first (by alone-quantized drop when only "quantized" ran); unmeasured last."""
        key = "recovery" if "float" in self.modes else "quantized_drop"
        measured = [g for g in self.groups if getattr(g, key) is not None]
        rest = [g for g in self.groups if getattr(g, key) is None]
        return sorted(measured, key=lambda g: -getattr(g, key)) + rest

    def ranking(self, onnx_names: bool = False) -> list[str]:
        """Nodes of the most sensitive groups first: a fallback order (``accuracy_fallback``'s exclusions for a Q/DQ
        graph; for an OpenVINO IR the operation names, or with ``onnx_names`` the ONNX nodes they come from, which
        ``quantize_openvino_int8(ignored_nodes=...)`` takes)."""
        names = [n for g in self.ranked() for n in (g.origins if onnx_names else g.nodes)]
        return list(dict.fromkeys(names))

    def to_dict(self) -> dict[str, Any]:
        return {
            "artifact": self.artifact,
            "runtime": self.runtime,
            "reference_miou": self.reference_miou,
            "int8_miou": self.int8_miou,
            "int8_drop_points": self.int8_drop,
            "int8_agreement": self.int8_agreement,
            "noise_points": self.noise_points,
            "samples": self.samples,
            "modes": self.modes,
            "seconds": self.seconds,
            "groups": [asdict(g) for g in self.ranked()],
        }


def _check_modes(modes: Sequence[str]) -> list[str]:
    modes = list(dict.fromkeys(modes))
    for mode in modes:
        if mode not in MODES:
            raise choice_error("sensitivity mode", mode, MODES)
    if not modes:
        raise ConfigError(f"no sensitivity mode given; expected one or both of {', '.join(MODES)}")
    return modes


def measure_sensitivity(
    int8: str | Path,
    fp32: str | Path,
    score: Callable[[Infer], float],
    *,
    modes: Sequence[str] = MODES,
    max_groups: int = MAX_GROUPS,
    names_from: str | Path | None = None,
    threads: int | None = None,
    output: str = MASK_OUTPUT,
    threshold: float = 0.5,
) -> SensitivityResult:
    """Measure each layer group's INT8 sensitivity by graph surgery on the artifact (see the module docstring).

    Args:
        int8: the INT8 artifact: a Q/DQ ``.onnx`` (ONNX Runtime) or an NNCF ``.xml`` (OpenVINO), on CPU.
        fp32: the FP32 artifact it was quantized from, same format: the reference and the float weights.
        score: ``score(infer) -> mIoU`` (a fraction) over a fixed subset, ``infer(feeds) -> {output: array}``.
        modes: ``float`` (each group alone in float), ``quantized`` (each group alone quantized), or both.
        max_groups: at most this many groups (bounds the time).
        names_from: the FP32 ONNX the groups are named from (default: ``fp32``, or the ``.onnx`` beside an IR).
        threads: intra-op threads (default: the runtime's choice).
        output: the mask logits output.
        threshold: sigmoid threshold of the masks compared for agreement.

    Returns:
        A :class:`SensitivityResult`, groups ranked by recovery.
    """
    from runtimes.masks import logit_threshold

    started = time.perf_counter()
    modes = _check_modes(modes)
    side = open_variants(int8, fp32, threads)
    groups = group_layers(side.units, names_from if names_from is not None else side.names, max_groups=max_groups)
    cut = logit_threshold(threshold)
    ref_miou, ref_masks, _, ref_s = _evaluate(score, side.reference(), output, cut)
    int8_miou, _, int8_agreement, int8_s = _evaluate(score, side.quantized(), output, cut, ref_masks)
    repeat_miou = _evaluate(score, side.quantized(), output, cut)[0]
    result = SensitivityResult(
        str(int8), side.runtime, ref_miou, int8_miou, int8_agreement, repeat_miou, len(ref_masks), modes
    )
    for i, group in enumerate(groups, 1):
        row = GroupSensitivity(group.name, group.nodes, group.origins, group.rule)
        begun = time.perf_counter()
        for mode in modes:
            infer = side.variant(group.nodes, group_float=mode == "float")
            miou, _, agreement, _ = _evaluate(score, infer, output, cut, ref_masks)
            drop = (ref_miou - miou) * 100.0
            if mode == "float":
                row.float_drop, row.float_agreement, row.recovery = drop, agreement, result.int8_drop - drop
            else:
                row.quantized_drop, row.quantized_agreement = drop, agreement
        row.seconds = time.perf_counter() - begun
        result.groups.append(row)
        log.info("sensitivity %d/%d %s (%d nodes): %.1f s", i, len(groups), group.name, len(group.nodes), row.seconds)
    result.groups = result.ranked()
    total = time.perf_counter() - started
    result.seconds = {"reference": ref_s, "int8": int8_s, "groups": sum(g.seconds for g in result.groups)}
    result.seconds["total"] = total
    return result


# ---------------------------------------------------------------------------------------------------- rendering


def _fmt(value: float | None, digits: int = 2) -> str:
    return "–" if value is None or not math.isfinite(value) else f"{value:.{digits}f}"


def sensitivity_markdown(result: SensitivityResult) -> str:
    """A Markdown paragraph and table: one row per group, most sensitive first."""
    lines = [
        f"INT8 sensitivity of `{Path(result.artifact).name}` ({result.runtime}): FP32 mIoU "
        f"{result.reference_miou * 100:.2f}, all INT8 drop {result.int8_drop:.2f} points (agreement "
        f"{_fmt(result.int8_agreement, 3)}, run-to-run noise {result.noise_points:.2f} points), {result.samples} "
        f"samples, {len(result.groups)} groups, {result.seconds.get('total', 0.0):.1f} s. Drops are mIoU points "
        "against FP32; recovery = all-INT8 drop − alone-float drop; agreement = mean IoU with the FP32 masks.",
        "",
        "| # | group | nodes | alone float: drop | recovery | agreement | alone quantized: drop | agreement | s |",
        "|---:|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for i, g in enumerate(result.ranked(), 1):
        name = g.name.replace("|", "\\|") + (" (chunk)" if g.rule == "chunk" else "")
        lines.append(
            f"| {i} | `{name}` | {len(g.nodes)} | {_fmt(g.float_drop)} | {_fmt(g.recovery)} | "
            f"{_fmt(g.float_agreement, 3)} | {_fmt(g.quantized_drop)} | {_fmt(g.quantized_agreement, 3)} | "
            f"{g.seconds:.1f} |"
        )
    return "\n".join(lines) + "\n"


def write_sensitivity_plot(result: SensitivityResult, path: str | Path) -> Path:
    """A PNG horizontal bar chart of recovery per group (of the alone-quantized drop when only that ran)."""
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from foundation.io import atomic_write_bytes

    key, label = ("recovery", "recovery (mIoU points)") if "float" in result.modes else ("quantized_drop", "drop")
    if key == "quantized_drop":
        label = "alone-quantized drop (mIoU points)"
    rows = [g for g in result.ranked() if getattr(g, key) is not None][::-1]  # the largest at the top
    fig = Figure(figsize=(7.5, 1.4 + 0.28 * max(len(rows), 1)), dpi=120)
    FigureCanvasAgg(fig)
    ax = fig.add_subplot()
    values = [getattr(g, key) for g in rows]
    ax.barh(range(len(rows)), values, color=["#0969da" if v > 0 else "#8c959f" for v in values])
    ax.set_yticks(range(len(rows)), [g.name if len(g.name) <= 40 else g.name[:37] + "..." for g in rows], fontsize=7)
    ax.axvline(0.0, color="#333333", linewidth=0.8)
    ax.set_xlabel(label)
    ax.set_title(f"INT8 sensitivity per layer group: {Path(result.artifact).name} ({result.runtime})", fontsize=9)
    ax.grid(True, axis="x", alpha=0.3)
    if not rows:
        ax.text(0.5, 0.5, "no group measured", ha="center", transform=ax.transAxes)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", metadata={"Software": None})
    path = Path(path)
    atomic_write_bytes(path, buf.getvalue())
    return path
