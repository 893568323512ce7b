"""Stage declarations: a registry of named stages, each with its upstream stages, config sections and code version.

Usage::

    @stage("data", sections=("data",), version="1")
    def run_data(ctx: StageContext) -> dict:
        ...  # write everything under ctx.out; return figures for the manifest

The runner (:mod:`pipeline.runner`) decides from these declarations whether a stage is done, stale or missing.
"""

from __future__ import annotations

import hashlib
import inspect
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pipeline.config import Config
from pipeline.errors import StageError, choice_error

# Toolchain packages whose versions enter a stage's cache key when the stage declares them.
TOOLCHAIN = ("torch", "timm", "transformers", "onnx", "onnxruntime", "openvino", "nncf", "nvidia-modelopt", "tensorrt")


@dataclass
class StageContext:
    """What a stage body sees: the resolved config, its (temporary) output folder and finished upstream folders."""

    name: str
    cfg: Config
    out: Path
    run_dir: Path
    upstream_dirs: dict[str, Path]
    log: logging.Logger
    resumed: bool = False

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
    """

    def register(
        fn: Callable[[StageContext], dict[str, Any] | None],
    ) -> Callable[[StageContext], dict[str, Any] | None]:
        for tool in toolchain:
            if tool not in TOOLCHAIN:
                raise choice_error("toolchain package", tool, TOOLCHAIN)
        source = inspect.getsource(inspect.getmodule(fn))  # the stage's module is its code version
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
            code_hash=hashlib.sha256(source.encode()).hexdigest()[:16],
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
