"""The cached stage runner: decides per stage whether it is done, stale or missing, and runs what is needed.

Usage: ``Runner(load_config("configs/demo.yaml")).run(["data"])``.

A stage's cache key hashes its declared config sections, its upstream stages' manifests, its code version (declared
version, plus a hash of its module and one of each project module or package it declares in ``code``, so a stale reason
names the code that changed) and the versions of the toolchain packages it declares. Outputs are written into a work
folder and renamed into ``runs/<run>/<stage>/`` only once ``manifest.json`` (files + sha256, timings, versions, key) is
written, so an interrupted stage leaves no manifest and is redone; resumable stages (training) keep their work folder
between attempts when the key still matches.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import json
import logging
import os
import platform
import shutil
import socket
import time
from collections.abc import Iterator
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path
from typing import Any

from foundation.errors import PipelineError, StageError
from foundation.io import atomic_write_json, fsync_dir, json_digest, leaf_changes, sha256_file
from pipeline.config import Config, save_config
from pipeline.layout import CONFIG, KEY_FILE, MANIFEST, RunLayout
from pipeline.stage import TOOLCHAIN, Stage, StageContext, get_stage, load_stages, order

log = logging.getLogger("pipeline")


def package_version(name: str) -> str | None:
    """Installed version of a distribution, or None (no import, so it is cheap)."""
    for candidate in (name, name.replace("-", "_")):
        with contextlib.suppress(metadata.PackageNotFoundError):
            return metadata.version(candidate)
    return None


def environment() -> dict[str, Any]:
    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "machine": platform.machine(),
        "host": socket.gethostname(),
        "packages": {name: package_version(name) for name in TOOLCHAIN},
    }


def _digest(obj: Any) -> str:
    return json_digest(obj)


def _diff(old: Any, new: Any) -> list[str]:
    """Leaf-level differences between two JSON trees, as readable ``key: old -> new`` lines."""
    return [f"{key}: {a!r} -> {b!r}" for key, a, b in leaf_changes(old, new)]


def _drop_temporaries(folder: Path) -> None:
    """Remove the ``*.tmp`` files and folders a killed attempt left: never complete, so never outputs."""
    for path in sorted(folder.rglob("*.tmp"), reverse=True):  # deepest first
        if path.is_dir() and not path.is_symlink():
            shutil.rmtree(path)
        else:
            path.unlink(missing_ok=True)
        log.info("removed %s, left unfinished by the interrupted attempt", path)


@dataclass
class Status:
    stage: str
    state: str  # done | stale | missing | disabled
    reason: str = ""


class Runner:
    """Runs stages of one run folder (``<run.root>/<run.name>``) for one resolved config."""

    def __init__(self, cfg: Config):
        self.cfg = cfg
        self.layout = RunLayout.of(cfg, {name for name, st in load_stages().items() if st.per_device})
        self.run_dir = self.layout.run_dir

    # ---- keys and manifests -------------------------------------------------------------------------------------
    def stage_dir(self, name: str) -> Path:
        """Output folder of a stage (:meth:`pipeline.layout.RunLayout.stage_dir`); raises on an unknown stage."""
        get_stage(name)
        return self.layout.stage_dir(name)

    def _aux_dir(self, name: str, kind: str) -> Path:
        return self.layout.aux_dir(name, kind)

    def manifest(self, name: str) -> dict[str, Any] | None:
        path = self.layout.manifest(name)
        if not path.is_file():
            return None
        try:
            return json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as exc:
            log.warning("stage %s: unreadable manifest %s (%s); it will be redone", name, path, exc)
            return None

    def key_parts(self, st: Stage) -> dict[str, Any]:
        upstream = {}
        for up in st.upstream:
            if not get_stage(up).is_enabled(self.cfg):
                upstream[up] = "disabled"
                continue
            man = self.manifest(up)
            upstream[up] = None if man is None else {"key": man["key"], "files": _digest(man["files"])}
        return {
            "stage": st.name,
            "version": st.version,
            "code": st.code_versions,
            "sections": {s: self.cfg.section(s) for s in st.sections},
            "upstream": upstream,
            "toolchain": {t: package_version(t) for t in st.toolchain},
        }

    def status(self, name: str, verify: bool = False) -> Status:
        st = get_stage(name)
        if not st.is_enabled(self.cfg):
            return Status(name, "disabled", "not enabled by the config")
        for up in st.upstream:
            up_status = self.status(up, verify)
            if up_status.state in ("missing", "stale"):
                return Status(
                    name, "stale" if self.manifest(name) else "missing", f"upstream {up} is {up_status.state}"
                )
        man = self.manifest(name)
        if man is None:
            return Status(name, "missing", "no manifest")
        parts = self.key_parts(st)
        if man.get("key") != _digest(parts):
            changes = [c.removeprefix("sections.") for c in _diff(man.get("key_parts", {}), parts)]
            return Status(name, "stale", "; ".join(changes[:6]) or "key changed")
        broken = self._broken_files(name, man, verify)
        if broken:
            return Status(name, "stale", f"output files changed or missing: {', '.join(broken[:5])}")
        return Status(name, "done", man.get("finished", ""))

    def _broken_files(self, name: str, man: dict[str, Any], verify: bool) -> list[str]:
        broken = []
        for rel, info in man.get("files", {}).items():
            path = self.stage_dir(name) / rel
            size_ok = path.is_file() and path.stat().st_size == info["size"]
            if not size_ok or (verify and sha256_file(path) != info["sha256"]):
                broken.append(rel)
        return broken

    # ---- running -------------------------------------------------------------------------------------------------
    @contextlib.contextmanager
    def _lock(self) -> Iterator[None]:
        self.run_dir.mkdir(parents=True, exist_ok=True)
        with open(self.run_dir / ".lock", "w") as fh:
            try:
                fcntl.flock(fh, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                raise StageError(f"run folder {self.run_dir} is in use by another pipeline process") from None
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def run(self, names: list[str] | None = None, force: bool = False) -> list[Status]:
        """Run the named stages (and the upstream stages they need) in dependency order; returns what happened."""
        plan = order(names)
        outcomes = []
        with self._lock():
            for stale in self.run_dir.glob(".*.tmp"):  # temporaries of a process killed mid-write (we hold the lock)
                stale.unlink(missing_ok=True)
            save_config(self.cfg, self.run_dir / CONFIG)
            for name in plan:
                outcomes.append(self._run_one(get_stage(name), force=force and name in (names or plan)))
        return outcomes

    def _run_one(self, st: Stage, force: bool) -> Status:
        old = self._aux_dir(st.name, "old")
        if old.exists() and self.stage_dir(st.name).exists():  # a finalize interrupted after its last rename
            shutil.rmtree(old)
        status = self.status(st.name)
        if status.state == "disabled":
            log.info("stage %-9s disabled (%s)", st.name, status.reason)
            return status
        if status.state == "done" and not force:
            log.info("stage %-9s cached (done %s)", st.name, status.reason)
            return Status(st.name, "cached", status.reason)
        why = "forced" if force else f"{status.state}: {status.reason}"
        log.info("stage %-9s running (%s)", st.name, why)
        parts = self.key_parts(st)
        key = _digest(parts)
        work = self.layout.work_dir(st.name)
        resumed = self._prepare_work(st, work, key)
        upstream_dirs = {u: self.stage_dir(u) for u in st.upstream if get_stage(u).is_enabled(self.cfg)}
        ctx = StageContext(
            st.name,
            self.cfg,
            work,
            self.run_dir,
            upstream_dirs,
            logging.getLogger(f"pipeline.{st.name}"),
            resumed=resumed,
            layout=self.layout,
        )
        started = time.time()
        try:
            figures = st.fn(ctx) or {}
        except PipelineError:
            raise
        except Exception as exc:
            raise StageError(f"stage {st.name!r} failed: {type(exc).__name__}: {exc}") from exc
        finished = time.time()
        try:
            (work / KEY_FILE).unlink(missing_ok=True)
            self._finalize(st, work, parts, key, figures, started, finished)
        except OSError as exc:  # a full disk or a lost mount: the manifest is not in place, so nothing counts as done
            raise StageError(
                f"stage {st.name!r} could not write its outputs to {self.stage_dir(st.name).parent}: {exc}; "
                "the stage is not marked done: free space (or fix the folder) and rerun"
            ) from exc
        log.info("stage %-9s done in %.1f s -> %s", st.name, finished - started, self.stage_dir(st.name))
        return Status(st.name, "ran", f"{finished - started:.1f} s")

    def _prepare_work(self, st: Stage, work: Path, key: str) -> bool:
        """Make a clean work folder, or keep an interrupted one of a resumable stage whose key still matches."""
        key_file = work / KEY_FILE
        if st.resumable and key_file.is_file():
            with contextlib.suppress(OSError, json.JSONDecodeError):
                if json.loads(key_file.read_text()).get("key") == key:
                    log.info("stage %-9s resuming the interrupted attempt in %s", st.name, work)
                    _drop_temporaries(work)
                    return True
        if work.exists():
            log.info("stage %-9s discarding the unfinished attempt in %s", st.name, work)
            shutil.rmtree(work)
        work.mkdir(parents=True)
        atomic_write_json(key_file, {"key": key})
        return False

    def _finalize(
        self,
        st: Stage,
        work: Path,
        parts: dict[str, Any],
        key: str,
        figures: dict[str, Any],
        started: float,
        finished: float,
    ) -> None:
        files = {}
        for path in sorted(p for p in work.rglob("*") if p.is_file()):
            rel = path.relative_to(work).as_posix()
            if rel == MANIFEST:
                continue
            files[rel] = {"sha256": sha256_file(path), "size": path.stat().st_size}
        manifest = {
            "stage": st.name,
            "key": key,
            "key_parts": parts,
            "files": files,
            "figures": figures,
            "started": _dt.datetime.fromtimestamp(started, _dt.timezone.utc).isoformat(),
            "finished": _dt.datetime.fromtimestamp(finished, _dt.timezone.utc).isoformat(),
            "seconds": round(finished - started, 3),
            "environment": environment(),
        }
        atomic_write_json(work / MANIFEST, manifest)
        final = self.stage_dir(st.name)
        old = self._aux_dir(st.name, "old")
        if old.exists():
            shutil.rmtree(old)
        if final.exists():
            os.replace(final, old)
        os.replace(work, final)
        fsync_dir(final.parent)
        if old.exists():
            shutil.rmtree(old)

    def adopt(self, name: str, source_run: str | Path) -> bool:
        """Take a done stage from another run folder when its cache key equals this run's key for that stage.

        The source's files are checked against their manifest hashes, then copied (not linked: each run folder stays
        independent) into a work folder that is renamed into place, so several runs that share, say, one data set
        generate it once. Returns True when the stage was adopted; False when it is already done here or the source
        does not match (the stage then runs as usual).
        """
        st = get_stage(name)
        if self.status(name).state == "done":
            return False
        source = Path(source_run).resolve() / self.layout.relative(name)
        man_path = source / MANIFEST
        if not man_path.is_file():
            return False
        man = json.loads(man_path.read_text())
        if man.get("key") != _digest(self.key_parts(st)):
            return False
        for rel, info in man.get("files", {}).items():
            if sha256_file(source / rel) != info["sha256"]:
                raise StageError(f"cannot adopt stage {name!r} from {source}: {rel} does not match its manifest hash")

        with self._lock():
            work = self._aux_dir(name, "adopt")
            if work.exists():
                shutil.rmtree(work)
            shutil.copytree(source, work)
            final = self.stage_dir(name)
            if final.exists():
                shutil.rmtree(final)
            final.parent.mkdir(parents=True, exist_ok=True)
            os.replace(work, final)
            fsync_dir(final.parent)
        log.info("stage %-9s adopted from %s", name, source)
        return True

    def clean(self, names: list[str] | None = None) -> list[Path]:
        """Remove the named stages' outputs (all stages and the run folder's leftovers when None)."""
        removed = []
        with self._lock():
            targets = names or list(load_stages())
            for name in targets:
                get_stage(name)
                for path in (self.stage_dir(name), self._aux_dir(name, "work"), self._aux_dir(name, "old")):
                    if path.exists():
                        shutil.rmtree(path)
                        removed.append(path)
        return removed

    def statuses(self, verify: bool = False) -> list[Status]:
        return [self.status(name, verify) for name in order(None)]

    def figures(self, name: str) -> dict[str, Any]:
        man = self.manifest(name)
        if man is None:
            raise StageError(f"stage {name!r} has not finished in {self.run_dir}; run it first")
        return man.get("figures", {})
