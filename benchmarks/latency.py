"""Latency benchmarks: per-artifact worker processes timed in alternating blocks, percentiles, split-graph cost.

Usage::

    workers = {"onnxruntime-fp32": Worker(artifact_worker, ("onnxruntime", "full.onnx", "inputs.npz"))}
    times, errors, info = time_isolated(workers, warmup=5, runs=50, threads=2)
    summarize(times["onnxruntime-fp32"])

Why a process per artifact: ONNX Runtime's and OpenVINO's thread pools keep working (spinning) after a call returns,
so in one process holding several runtimes each call slows whichever runtime runs next, unevenly (measured on the
demo artifacts: ONNX Runtime FP32 28.6 ms alone, 42.3 ms interleaved with OpenVINO and the INT8 graph in one process).
:func:`time_isolated` loads every artifact in its own spawned worker, with the same explicit thread count and the
runtime options of :data:`BENCH_OPTIONS`, and never runs two workers at once.

Why alternating blocks: timing artifact A for 50 runs and then artifact B for 50 runs lets thermal state, frequency
scaling and other processes on a shared host bias one of them. Workers take turns (a block of ``block`` timed calls
each, in an order rotated per round), so slow phases of the machine hit every artifact alike. Warm-up calls
(first-call allocation, lazy compilation, caches) run in each worker once it has loaded and are discarded. Latency is
batch 1; throughput is ``1000 / mean_ms`` frames per second. :func:`time_interleaved` times callables that share one
process (pre- and post-processing; quick comparisons of one runtime's artifacts).

Peak RSS per artifact is :mod:`benchmarks.peak_rss`; the machine a figure belongs to is :mod:`benchmarks.machine`.
"""

from __future__ import annotations

import contextlib
import math
import multiprocessing
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import wait
from pathlib import Path
from typing import Any

import numpy as np

from benchmarks.machine import usable_cores

# Runtime options of every timed artifact (``load(..., options=...)``), recorded with the results. ONNX Runtime's
# threads spin while a call runs (its default) and stop as soon as it returns, so an idle session takes no CPU from
# the next worker; OpenVINO does not pin its threads to cores, like ONNX Runtime (explicit thread count) and torch,
# so no runtime holds threads on cores another job of a shared host is using.
BENCH_OPTIONS: dict[str, dict[str, Any]] = {
    "onnxruntime": {
        "session.intra_op.allow_spinning": "1",
        "session.inter_op.allow_spinning": "1",
        "session.force_spinning_stop": "1",
    },
    "openvino": {"ENABLE_CPU_PINNING": False},
}
BLOCK = 5  # timed calls per worker turn
ISOLATION = "process per artifact"

# ---------------------------------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------------------------------


def summarize(samples_ms: Sequence[float]) -> dict[str, Any]:
    """p50 / p90 / p99 / mean / std / min / max of latencies in ms, with throughput (frames/s at batch 1).

    Percentiles use numpy's default linear interpolation; with 50 runs p99 is close to the maximum, so read it as
    "the worst you saw", not as a tail estimate.
    """
    x = np.asarray(samples_ms, dtype=np.float64)
    if x.size == 0:
        return {"n": 0}
    p50, p90, p99 = np.percentile(x, [50, 90, 99])
    mean = float(x.mean())
    return {
        "n": int(x.size),
        "p50_ms": float(p50),
        "p90_ms": float(p90),
        "p99_ms": float(p99),
        "mean_ms": mean,
        "std_ms": float(x.std(ddof=1)) if x.size > 1 else 0.0,
        "min_ms": float(x.min()),
        "max_ms": float(x.max()),
        "throughput_fps": 1000.0 / mean if mean > 0 else None,
    }


def time_interleaved(
    fns: dict[str, Callable[[], Any]], warmup: int = 5, runs: int = 50
) -> tuple[dict[str, list[float]], dict[str, str]]:
    """Warm up each callable, then time ``runs`` rounds in which every callable runs once, order rotated per round.

    All callables share this process: use it for code without a thread pool of its own (pre- and post-processing)
    or for artifacts of one runtime; different runtimes go through :func:`time_isolated`.

    Args:
        fns: Name → zero-argument callable doing one batch-1 inference.
        warmup: Untimed calls per callable before timing.
        runs: Timed rounds; each callable gets ``runs`` samples.

    Returns:
        ``(times_ms, errors)``: per-name lists of latencies in ms, and per-name error messages for callables that
        raised (they are dropped from later rounds; their row gets an ``error`` status instead of a crash).
    """
    times: dict[str, list[float]] = {name: [] for name in fns}
    errors: dict[str, str] = {}
    for name, fn in fns.items():
        try:
            for _ in range(warmup):
                fn()
        except Exception as exc:  # a broken backend becomes a row with a status, never a crash
            errors[name] = f"{type(exc).__name__}: {exc}"
    names = [n for n in fns if n not in errors]
    for r in range(runs):
        shift = r % len(names) if names else 0
        for name in names[shift:] + names[:shift]:
            if name in errors:
                continue
            try:
                start = time.perf_counter()
                fns[name]()
                times[name].append((time.perf_counter() - start) * 1000.0)
            except Exception as exc:
                errors[name] = f"{type(exc).__name__}: {exc}"
    return times, errors


# ---------------------------------------------------------------------------------------------------------------------
# Timing in one worker process per artifact
# ---------------------------------------------------------------------------------------------------------------------

Fns = dict[str, Callable[[], Any]]


@dataclass(frozen=True)
class Worker:
    """How one worker process builds what it times.

    Attributes:
        factory: Module-level function (the spawned worker imports it) called there as
            ``factory(*args, threads=threads)``; returns ``(callables, info)``: name → zero-argument callable doing one
            batch-1 inference, and a JSON-ready dict the worker reports back (runtime settings, statuses). The
            callable named ``full`` is reported under the worker's own name, any other as ``<worker>/<name>``.
        args: Picklable positional arguments of ``factory``.
    """

    factory: Callable[..., tuple[Fns, dict[str, Any]]]
    args: tuple[Any, ...] = ()


class WorkerError(RuntimeError):
    """A worker process failed, died or stopped answering; the message names the worker."""


def load_timed(
    runtime: str, path: str | Path, device: str = "CPU", threads: int | None = None, graph: str = "full"
) -> Any:
    """Load one artifact the way the benchmark times it: ``threads`` and the options of :data:`BENCH_OPTIONS`.

    Raises:
        RuntimeUnavailable: the backend is not installed here.
        ArtifactError: the file is missing or corrupt.
    """
    from foundation.errors import RuntimeUnavailable
    from runtimes import get_runtime

    rt = get_runtime(runtime)
    if not rt.is_available():
        raise RuntimeUnavailable(f"{runtime} is not installed here; {rt.install_hint}")
    kwargs: dict[str, Any] = {"device": device, "threads": threads}
    if runtime == "torch":
        kwargs["graph"] = graph
    if runtime in BENCH_OPTIONS:
        kwargs["options"] = BENCH_OPTIONS[runtime]
    return rt.load(path, **kwargs)


def artifact_worker(
    runtime: str, path: str | Path, inputs: str | Path | dict[str, np.ndarray], device: str = "CPU", *, threads: int
) -> tuple[Fns, dict[str, Any]]:
    """:class:`Worker` factory timing one artifact's full graph on one batch-1 input (an ``.npz`` or a dict)."""
    rt = load_timed(runtime, path, device, threads)
    if isinstance(inputs, dict):
        feeds = inputs
    else:
        with np.load(inputs) as data:
            feeds = {k: data[k] for k in data.files}
    return {"full": lambda: rt.infer(feeds)}, {"runtime": runtime, "runtime_settings": getattr(rt, "settings", {})}


def _describe_error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _worker_main(conn: Any, spec: Worker, threads: int, warmup: int) -> None:
    """Body of a worker process: build the callables, warm them up, then time a block per ``("run", n)`` request."""
    try:
        fns, info = spec.factory(*spec.args, threads=threads)
        failed: dict[str, str] = {}
        for key, fn in fns.items():
            try:
                for _ in range(warmup):
                    fn()
            except Exception as exc:  # a broken callable becomes an error row; the others still run
                failed[key] = _describe_error(exc)
        conn.send(("ready", {"keys": list(fns), "errors": failed, "info": info, "pid": os.getpid()}))
    except BaseException as exc:  # loading failed: report it rather than die silently
        conn.send(("failed", _describe_error(exc)))
        return
    alive = [k for k in fns if k not in failed]
    turn = 0
    while True:
        request = conn.recv()
        if request[0] != "run":
            return
        times: dict[str, list[float]] = {k: [] for k in alive}
        errors: dict[str, str] = {}
        shift = turn % len(alive) if alive else 0
        for key in alive[shift:] + alive[:shift]:
            try:
                for _ in range(request[1]):
                    start = time.perf_counter()
                    fns[key]()
                    times[key].append((time.perf_counter() - start) * 1000.0)
            except Exception as exc:
                errors[key] = _describe_error(exc)
        alive = [k for k in alive if k not in errors]
        turn += 1
        conn.send(("times", {"times": times, "errors": errors}))


class _Handle:
    """The parent's end of one worker: its process and pipe."""

    def __init__(self, ctx: Any, name: str, spec: Worker, threads: int, warmup: int) -> None:
        self.name = name
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, spec, threads, warmup), name=f"bench:{name}")
        self.proc.daemon = True  # never outlives the benchmark
        try:
            self.proc.start()
        except Exception as exc:  # e.g. a factory or argument that cannot be pickled for the spawned process
            raise WorkerError(f"worker {name!r} could not be started: {_describe_error(exc)}") from exc
        finally:
            child.close()

    def ask(self, request: tuple[Any, ...] | None, timeout: float, what: str) -> tuple[str, Any]:
        ready: list[Any] = []
        try:
            if request is not None:
                self.conn.send(request)
            ready = wait([self.conn, self.proc.sentinel], timeout)
            if self.conn in ready:
                return self.conn.recv()
        except (EOFError, OSError):  # the pipe closed: the process is gone
            ready = [self.proc.sentinel]
        if not ready:
            self.kill()
            raise WorkerError(f"worker {self.name!r} did not finish {what} within {timeout:.0f} s; it was stopped")
        self.proc.join(5)
        raise WorkerError(f"worker {self.name!r} exited with code {self.proc.exitcode} during {what}")

    def stop(self) -> None:
        if self.proc.is_alive():
            with contextlib.suppress(OSError):  # the pipe is already closed
                self.conn.send(("stop",))
            self.proc.join(10)
        self.kill()
        self.conn.close()

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
            self.proc.join(5)


def _reported_name(worker: str, local: str) -> str:
    """The name a worker's callable is reported under: the worker's own for ``full``, else ``<worker>/<local>``."""
    return worker if local == "full" else f"{worker}/{local}"


@dataclass
class _Session:
    """What :func:`time_isolated` collects while its workers run: samples and error messages per reported name, each
    worker's info, the workers still running and, per worker, its callable names → reported names."""

    times: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, str] = field(default_factory=dict)
    worker_info: dict[str, Any] = field(default_factory=dict)
    live: dict[str, _Handle] = field(default_factory=dict)
    keys: dict[str, dict[str, str]] = field(default_factory=dict)  # worker → its callable names → reported names

    def fail(self, name: str, message: str) -> None:
        """Record a worker's failure for it and for each of its callables without an error of its own; stop it."""
        self.errors[name] = message
        for full in self.keys.get(name, {}).values():
            self.errors.setdefault(full, message)
        handle = self.live.pop(name, None)
        if handle is not None:
            handle.stop()

    def start(self, ctx: Any, name: str, spec: Worker, threads: int, warmup: int, timeout: float) -> None:
        """Start one worker and wait until it has loaded and warmed up; a failure is recorded (:meth:`fail`)."""
        try:
            self.live[name] = _Handle(ctx, name, spec, threads, warmup)
            status, payload = self.live[name].ask(None, timeout, "loading and warm-up")
        except WorkerError as exc:
            self.fail(name, str(exc))
            return
        if status != "ready":
            self.fail(name, f"worker {name!r} failed while loading: {payload}")
            return
        self.keys[name] = {k: _reported_name(name, k) for k in payload["keys"]}
        self.worker_info[name] = {**payload["info"], "pid": payload["pid"]}
        for local, full in self.keys[name].items():
            self.times[full] = []
            if local in payload["errors"]:
                self.errors[full] = payload["errors"][local]

    def run_round(self, r: int, n: int, rounds: int, timeout: float) -> None:
        """Round ``r``: each running worker in turn, order rotated by ``r``, times ``n`` calls of each callable."""
        order = list(self.live)
        shift = r % len(order) if order else 0
        for name in order[shift:] + order[:shift]:
            try:
                _, payload = self.live[name].ask(("run", n), timeout, f"round {r + 1} of {rounds}")
            except WorkerError as exc:
                self.fail(name, str(exc))
                continue
            for local, samples in payload["times"].items():
                self.times[self.keys[name][local]].extend(samples)
            for local, message in payload["errors"].items():
                self.errors[self.keys[name][local]] = message


def time_isolated(
    workers: dict[str, Worker],
    warmup: int = 5,
    runs: int = 50,
    threads: int | None = None,
    block: int = BLOCK,
    timeout: float = 600.0,
) -> tuple[dict[str, list[float]], dict[str, str], dict[str, Any]]:
    """Time each worker's callables in its own spawned process, workers taking turns in blocks of ``block`` calls.

    Workers start one after the other (each loads and warms up while the others wait), then ``ceil(runs / block)``
    rounds follow; in each, every worker in turn (order rotated per round) times ``block`` calls of each of its
    callables. Only one worker computes at a time and no two runtimes share a process.

    Args:
        workers: Worker name (an artifact) → :class:`Worker`.
        warmup: Untimed calls per callable after loading.
        runs: Timed calls per callable.
        threads: Thread count given to every factory (default: :func:`usable_cores`).
        block: Timed calls per callable per turn.
        timeout: Seconds one step of a worker (loading and warm-up, or one block) may take before it is stopped.

    Returns:
        ``(times_ms, errors, info)``: per-name latencies in ms (names as in :class:`Worker`), per-name error messages
        (a worker that fails to load, dies or hangs gives ``errors[worker]``, naming it; its rows get no further
        samples), and ``{"isolation", "start_method", "threads", "warmup", "runs", "block", "rounds", "workers"}``
        where ``workers[name]`` is that worker's own info plus its ``pid``.
    """
    if runs < 1 or block < 1 or warmup < 0:
        raise ValueError(f"time_isolated needs runs >= 1, block >= 1, warmup >= 0; got {runs}, {block}, {warmup}")
    threads = int(threads or usable_cores())
    ctx = multiprocessing.get_context("spawn")
    session = _Session()
    rounds = math.ceil(runs / block)
    try:
        for name, spec in workers.items():
            session.start(ctx, name, spec, threads, warmup, timeout)
        for r in range(rounds):
            session.run_round(r, min(block, runs - r * block), rounds, timeout)
    finally:
        for handle in session.live.values():
            handle.stop()
    info = {
        "isolation": ISOLATION,
        "start_method": "spawn",
        "threads": threads,
        "warmup": warmup,
        "runs": runs,
        "block": block,
        "rounds": rounds,
        "workers": session.worker_info,
    }
    return session.times, session.errors, info


def expression_cost(k_p50_ms: dict[int, float], full_p50_ms: float) -> dict[str, Any]:
    """Cost of each extra expression on an encoded frame: least-squares slope of p50 latency over k.

    Args:
        k_p50_ms: k (expressions answered on one encoded frame) → p50 ms of "encode image once + k × (encode text +
            decode)".
        full_p50_ms: p50 ms of one full-graph forward (image + one expression), the baseline.

    Returns:
        ``{"per_extra_ms", "fixed_ms", "ratio_to_full"}``: slope and intercept of the fit, and slope / full forward.
    """
    ks = sorted(k_p50_ms)
    if len(ks) < 2:
        return {"per_extra_ms": None, "fixed_ms": None, "ratio_to_full": None}
    slope, intercept = np.polyfit(np.array(ks, dtype=np.float64), np.array([k_p50_ms[k] for k in ks]), 1)
    return {
        "per_extra_ms": float(slope),
        "fixed_ms": float(intercept),
        "ratio_to_full": float(slope / full_p50_ms) if full_p50_ms > 0 else None,
    }
