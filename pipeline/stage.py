"""Stage declarations: a registry of named stages, each with its upstream stages, config sections and code version.

Usage::

    @stage("data", sections=("data",), version="1", code=("pipeline.config", "pipeline.data"))
    def run_data(ctx: StageContext) -> dict:
        ...  # write everything under ctx.out; return figures for the manifest

The runner (:mod:`pipeline.runner`) decides from these declarations whether a stage is done, stale or missing.

A stage's code version hashes its own module and the project code it declares in ``code``: dotted names of modules
(``pipeline.train`` is ``pipeline/train.py``) or folders (``model`` is every file under ``model/``: sources and package
data such as ``quantize/data/*.json``, read from disk in sorted order). ``code`` must cover every project module the
stage module imports, at module level or inside functions, and what those import in turn (``tests/test_runner.py``
checks this with ``ast``), so that editing e.g. ``quantize/qdq.py`` makes the ``quantize`` stage stale.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from foundation.errors import StageError, choice_error
from foundation.io import json_digest
from pipeline.config import Config
from pipeline.layout import RunLayout

# Toolchain packages whose versions enter a stage's cache key when the stage declares them.
TOOLCHAIN = (
    "torch",
    "timm",
    "transformers",
    "tokenizers",
    "onnx",
    "onnxslim",
    "onnxruntime",
    "openvino",
    "nncf",
    "nvidia-modelopt",
    "tensorrt",
)

# Where a stage's declared code is read from, and the top-level packages a declared name may start with.
ROOT = Path(__file__).resolve().parent.parent
PROJECT_PACKAGES = ("benchmarks", "foundation", "model", "pipeline", "quantize", "runtimes")
# Modules that schedule, record and log stages rather than compute their outputs: never part of a stage's code version.
FRAMEWORK = ("pipeline.stage", "pipeline.runner", "pipeline.cli", "pipeline.logs")


# Code groups that several stages declare (``code=CODE_TRAINING + ("quantize.calibration",)``).
CODE_BASE = ("foundation", "pipeline.config", "pipeline.config_sections", "pipeline.layout", "runtimes.formats")
# pipeline.data reads images and tokenizes with the robot's own code (runtimes.image, runtimes.tokenizer)
CODE_DATA = (*CODE_BASE, "benchmarks.sampling", "pipeline.data", "runtimes.image", "runtimes.tokenizer")
CODE_TRAINING = (
    *CODE_DATA,
    "benchmarks.metrics",
    "model",
    "pipeline.training.data",
    "pipeline.training.distributed",
    "pipeline.training.jobs",
    "pipeline.training.loop",
    "pipeline.training.objectives",
    "pipeline.training.optim",
    "pipeline.training.state",
    "runtimes.masks",
)
CODE_EVALUATION = (
    *CODE_BASE,
    "benchmarks.bootstrap",
    "benchmarks.metrics",
    "benchmarks.sampling",
    "model",
    "pipeline.data",
    "runtimes",
)
CODE_MEASURING = (
    *CODE_EVALUATION,
    "benchmarks.accuracy",
    "benchmarks.artifacts",
    "benchmarks.gallery",
    "benchmarks.latency",
    "benchmarks.machine",
    "benchmarks.peak_rss",
    "quantize",
)


CODE_REPORTING = (
    *CODE_EVALUATION,
    "benchmarks.gallery",
    "benchmarks.machine",
    "benchmarks.report",
    "benchmarks.report_assembly",
    "benchmarks.report_diagnostics",
    "benchmarks.report_html",
    "benchmarks.report_int8_debug",
    "benchmarks.report_markdown",
    "benchmarks.report_plot",
    "benchmarks.report_tables",
)
# The upstream stages of the stages that measure every artifact (validate, bench). The build stage (TensorRT engines)
# is optional: a checkout without it still validates and benchmarks.
MEASURED_UPSTREAM = ("data", "train", "distill", "export", "quantize", "qat") + (
    ("build",) if (Path(__file__).resolve().parent / "stages" / "build.py").is_file() else ()
)


def _is_code_file(path: Path, folder: Path) -> bool:
    """A source or data file of a folder; caches (``__pycache__``, ``*.pyc``) and hidden files are not code."""
    rel = path.relative_to(folder).parts
    return (
        path.is_file()
        and path.suffix not in (".pyc", ".pyo")
        and not any(part == "__pycache__" or part.startswith(".") for part in rel)
    )


def project_code_names(root: Path = ROOT) -> list[str]:
    """Every name ``code`` accepts: the modules and folders of the project packages, dotted."""
    names = []
    for package in PROJECT_PACKAGES:
        base = root / package
        if not base.is_dir():
            continue
        names.append(package)
        for path in sorted(base.rglob("*")):
            rel = path.relative_to(root)
            if any(part == "__pycache__" or part.startswith(".") for part in rel.parts):
                continue
            if path.is_dir():
                names.append(".".join(rel.parts))
            elif path.suffix == ".py" and path.name != "__init__.py":
                names.append(".".join(rel.with_suffix("").parts))
    return names


def code_files(name: str, root: Path = ROOT) -> list[Path]:
    """The files of one declared code dependency: a module's ``.py`` file, or every file under a folder, sorted.

    Raises:
        StageError: ``name`` is not a module or folder of the project packages (the message lists the valid names).
    """
    parts = name.split(".") if isinstance(name, str) else []
    if parts and parts[0] in PROJECT_PACKAGES and all(part.isidentifier() for part in parts):
        base = root.joinpath(*parts)
        if base.is_dir():
            return sorted(p for p in base.rglob("*") if _is_code_file(p, base))
        if base.with_suffix(".py").is_file():
            return [base.with_suffix(".py")]
    raise choice_error("code dependency", name, project_code_names(root), StageError)


def code_digest(name: str, root: Path = ROOT) -> str:
    """Hash of a declared code dependency: the relative path and bytes of each of its files, in sorted order."""
    h = hashlib.sha256()
    for path in code_files(name, root):
        data = path.read_bytes()
        h.update(f"{path.relative_to(root).as_posix()}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()[:16]


@dataclass
class StageContext:
    """What a stage body sees: the resolved config, its (temporary) output folder, the finished upstream folders and
    the run folder's layout (:mod:`pipeline.layout`: where any stage's outputs are)."""

    name: str
    cfg: Config
    out: Path
    run_dir: Path
    upstream_dirs: dict[str, Path]
    log: logging.Logger
    resumed: bool = False
    layout: RunLayout | None = None  # the runner's; None: a flat one (every stage in run_dir/<stage>)

    def __post_init__(self) -> None:
        if self.layout is None:  # a context made by hand (tests, tools) puts each stage in run_dir/<stage>
            self.layout = RunLayout(self.run_dir, self.cfg.device.name, frozenset())

    def upstream(self, name: str) -> Path:
        if name not in self.upstream_dirs:
            raise StageError(
                f"stage {self.name!r} did not declare upstream {name!r}; it has {sorted(self.upstream_dirs)}"
            )
        return self.upstream_dirs[name]


@dataclass
class Stage:
    name: str
    fn: Callable[[StageContext], dict[str, Any] | None]
    upstream: tuple[str, ...] = ()
    sections: tuple[str, ...] = ()
    version: str = "1"
    toolchain: tuple[str, ...] = ()
    resumable: bool = False
    per_device: bool = False
    enabled: Callable[[Config], bool] | None = None
    code: tuple[str, ...] = ()
    code_versions: dict[str, str] = field(default_factory=dict)  # stage module and each declared name -> hash
    code_hash: str = field(default="")

    def is_enabled(self, cfg: Config) -> bool:
        return self.enabled is None or bool(self.enabled(cfg))


STAGES: dict[str, Stage] = {}


def stage(
    name: str,
    *,
    upstream: tuple[str, ...] = (),
    sections: tuple[str, ...] = (),
    version: str = "1",
    toolchain: tuple[str, ...] = (),
    resumable: bool = False,
    per_device: bool = False,
    enabled: Callable[[Config], bool] | None = None,
    code: tuple[str, ...] = (),
) -> Callable[[Callable[[StageContext], dict[str, Any] | None]], Callable[[StageContext], dict[str, Any] | None]]:
    """Register a stage body.

    Args:
        name: stage name (also its output folder).
        upstream: stages whose outputs it reads.
        sections: config sections it reads (they enter its cache key).
        version: bump to invalidate caches when the output format changes.
        toolchain: packages whose versions enter its cache key.
        resumable: keep the work folder across interruptions while the key matches (training).
        per_device: outputs depend on the device profile; they go to ``runs/<run>/devices/<device>/<stage>/``.
        enabled: predicate on the config; a disabled stage is skipped.
        code: project modules and packages the stage runs besides its own module, as dotted names (a package means
            every file under it); their sources enter its cache key.

    Raises:
        ConfigError: a toolchain package is not in :data:`TOOLCHAIN`.
        StageError: a ``code`` name is not a module or folder of the project.
    """
    if isinstance(code, str):
        raise StageError(f"stage {name!r}: code must be a tuple of module names, not the string {code!r}")

    def register(
        fn: Callable[[StageContext], dict[str, Any] | None],
    ) -> Callable[[StageContext], dict[str, Any] | None]:
        for tool in toolchain:
            if tool not in TOOLCHAIN:
                raise choice_error("toolchain package", tool, TOOLCHAIN)
        try:
            declared = {dep: code_digest(dep, ROOT) for dep in sorted(set(code))}
        except StageError as exc:
            raise StageError(f"stage {name!r}: {exc}") from None
        source = inspect.getsource(inspect.getmodule(fn))  # the stage's own module, then what it declares
        versions = {fn.__module__: hashlib.sha256(source.encode()).hexdigest()[:16], **declared}
        STAGES[name] = Stage(
            name=name,
            fn=fn,
            upstream=tuple(upstream),
            sections=tuple(sections),
            version=version,
            toolchain=tuple(toolchain),
            resumable=resumable,
            per_device=per_device,
            enabled=enabled,
            code=tuple(code),
            code_versions=versions,
            code_hash=json_digest(versions)[:16],
        )
        return fn

    return register


def get_stage(name: str) -> Stage:
    load_stages()
    if name not in STAGES:
        raise choice_error("stage", name, STAGES, StageError)
    return STAGES[name]


def load_stages() -> dict[str, Stage]:
    """Import every stage module (they register themselves) and return the registry."""
    import pipeline.stages  # noqa: F401  (registration side effect)

    return STAGES


def order(names: list[str] | None) -> list[str]:
    """The requested stages plus their upstream stages, in dependency order (all stages when ``names`` is None)."""
    registry = load_stages()
    wanted = names if names else list(registry)
    result: list[str] = []

    def visit(name: str, path: tuple[str, ...]) -> None:
        if name in path:
            raise StageError(f"stage dependency cycle: {' -> '.join((*path, name))}")
        st = get_stage(name)
        for up in st.upstream:
            visit(up, (*path, name))
        if name not in result:
            result.append(name)

    for name in wanted:
        visit(name, ())
    return result
