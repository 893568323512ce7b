"""Reliability under interruption and a full disk: the stage runner in a subprocess killed with SIGKILL at stage
boundaries, mid-stage and before every rename, and ENOSPC at each write a run makes.

Usage: ``pytest tests/test_reliability_interruption.py``; with ``S2RM_RELIABILITY_LOG=<file>`` each case appends its row
to that file (tests/reliability_log.py).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from foundation.errors import StageError
from pipeline.config import load_config
from tests.reliability_inputs import ROOT, write_file
from tests.reliability_log import record, refused

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning", "ignore::FutureWarning")


# -------------------------------------------------------------------------------------------------- interruption

TOY_RUN = '''
"""Three toy stages (a -> b -> c, c resumable) run by the real runner; SIGKILL this process at $KILL_AT."""
import logging
import os
import signal
import sys

from pipeline import runner as runner_mod
from pipeline import stage as stage_mod
from pipeline.config import load_config
from foundation.io import atomic_write_text
from pipeline.stage import stage

KILL_AT = os.environ.get("KILL_AT", "")
REPLACES = [0]
_replace = os.replace


def kill_if(point):
    if point == KILL_AT:
        os.kill(os.getpid(), signal.SIGKILL)


def counting_replace(src, dst):  # every rename of the run: atomic writes, manifests, stage folders
    REPLACES[0] += 1
    kill_if(f"replace:{REPLACES[0]}")
    _replace(src, dst)


os.replace = counting_replace
stage_mod.load_stages()
stage_mod.STAGES.clear()


@stage("a", sections=("data",))
def run_a(ctx):
    for i in range(4):
        (ctx.out / f"part{i}.txt").write_text(f"a{i} seed={ctx.cfg.data.seed}\\n" * 50)
        if i == 1:
            kill_if("a:mid")
    return {}


@stage("b", upstream=("a",), sections=("train",))
def run_b(ctx):
    text = "".join(p.read_text() for p in sorted(ctx.upstream("a").glob("*.txt")))
    (ctx.out / "sub").mkdir()
    (ctx.out / "sub" / "joined.txt").write_text(text)
    kill_if("b:mid")
    (ctx.out / "sub" / "steps.txt").write_text(str(ctx.cfg.train.steps))
    return {}


@stage("c", upstream=("b",), sections=("train",), resumable=True)
def run_c(ctx):
    steps = (ctx.upstream("b") / "sub" / "steps.txt").read_text()
    for step in range(len(list(ctx.out.glob("step*.txt"))), 4):  # a resumed attempt goes on from its last step
        atomic_write_text(ctx.out / f"step{step}.txt", f"step {step} of {steps}\\n")
        if step == 1:
            kill_if("c:mid")
    return {}


_finalize = runner_mod.Runner._finalize


def finalize(self, st, *args):
    _finalize(self, st, *args)
    kill_if(f"{st.name}:done")


runner_mod.Runner._finalize = finalize
logging.basicConfig(level=logging.INFO, format="%(message)s")
cfg = load_config(None, [f"run.root={sys.argv[1]}", "run.name=t", f"data.seed={sys.argv[2]}", "train.steps=3"])
for status in runner_mod.Runner(cfg).run(None):
    print(status.stage, status.state)
print("replaces", REPLACES[0])
'''


def toy_run(script: Path, root: Path, seed: int = 0, kill_at: str = "") -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "KILL_AT": kill_at}
    cmd = [sys.executable, str(script), str(root), str(seed)]
    return subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=60)


def manifests(run_dir: Path) -> dict[str, Any]:
    """Each stage's cache key and output files (sha256 + size): what must not depend on interruptions."""
    out = {}
    for name in ("a", "b", "c"):
        man = json.loads((run_dir / name / "manifest.json").read_text())
        out[name] = {"key": man["key"], "files": man["files"]}
    return out


def leftovers(run_dir: Path) -> list[str]:
    return sorted(p.name for p in run_dir.rglob("*") if p.name.endswith((".work", ".old", ".tmp")))


@pytest.fixture(scope="module")
def toy_script(tmp_path_factory) -> tuple[Path, dict[str, Any], int]:
    """The toy-stage script, the manifests of an uninterrupted run, and how many renames that run does."""
    folder = tmp_path_factory.mktemp("toy_run")
    script = write_file(folder / "toy_run.py", TOY_RUN.encode())
    done = toy_run(script, folder / "clean")
    assert done.returncode == 0, done.stderr
    return script, manifests(folder / "clean" / "t"), int(done.stdout.split()[-1])


def _kill_and_rerun(script: Path, root: Path, kill_at: str, seed: int = 0) -> subprocess.CompletedProcess:
    killed = toy_run(script, root, seed, kill_at)
    assert killed.returncode == -9, f"{kill_at}: not killed ({killed.returncode}) {killed.stderr[-500:]}"
    rerun = toy_run(script, root, seed)
    assert rerun.returncode == 0, rerun.stderr
    return rerun


@pytest.mark.parametrize("kill_at", ["a:mid", "a:done", "b:mid", "b:done", "c:mid", "replace:2"])
def test_sigkill_at_stage_boundaries_and_mid_stage(kill_at, toy_script, tmp_path):
    script, clean, _ = toy_script
    rerun = _kill_and_rerun(script, tmp_path, kill_at)
    assert manifests(tmp_path / "t") == clean  # the same keys and the same file hashes as an uninterrupted run
    assert leftovers(tmp_path / "t") == []
    states = dict(line.split() for line in rerun.stdout.splitlines()[:-1])
    finished_before = {"a:done": ["a"], "b:mid": ["a"], "b:done": ["a", "b"], "c:mid": ["a", "b"]}.get(kill_at, [])
    assert all(states[s] == "cached" for s in finished_before), states  # finished stages are not redone
    if kill_at == "c:mid":
        assert "resuming the interrupted attempt" in rerun.stderr
    record("interruption", f"SIGKILL at {kill_at}", f"rerun: {states}; manifests equal the uninterrupted run's")


@pytest.mark.slow
def test_sigkill_before_every_rename_of_a_fresh_and_a_stale_run(toy_script, tmp_path):
    script, clean, renames = toy_script
    for n in range(1, renames + 1):
        _kill_and_rerun(script, tmp_path / f"fresh{n}", f"replace:{n}")
        assert manifests(tmp_path / f"fresh{n}" / "t") == clean, n
        assert leftovers(tmp_path / f"fresh{n}" / "t") == [], n
    reference = tmp_path / "seed1"
    assert toy_run(script, reference, seed=1).returncode == 0
    stale = tmp_path / "stale"
    assert toy_run(script, stale, seed=0).returncode == 0
    base = stale.with_name("stale_base")
    shutil.copytree(stale, base)
    for n in range(1, renames + 10):  # a stale rerun also renames the old outputs aside: more renames
        shutil.rmtree(stale)
        shutil.copytree(base, stale)
        killed = toy_run(script, stale, 1, f"replace:{n}")
        if killed.returncode == 0:
            break
        assert toy_run(script, stale, 1).returncode == 0
        assert manifests(stale / "t") == manifests(reference / "t"), n
        assert leftovers(stale / "t") == [], n
    record(
        "interruption",
        f"SIGKILL before each of the {renames} renames (fresh run) and of a stale rerun",
        "every rerun completes; manifests equal",
    )


@pytest.mark.slow
def test_sigkill_of_the_real_data_stage_gives_the_same_manifest(tmp_path):
    overrides = [
        "data.synref.images={train: 120, val: 6, testA: 6, testB: 6}",
        "data.synref.min_side=96",
        "data.synref.max_side=128",
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}

    def args(root: Path) -> list[str]:
        sets = [x for o in [f"run.root={root}", *overrides] for x in ("--set", o)]
        return [sys.executable, "-m", "pipeline", "run", "--stages", "data", "--config", "configs/demo.yaml", *sets]

    subprocess.run(args(tmp_path / "clean"), cwd=ROOT, env=env, capture_output=True, check=True, timeout=600)
    proc = subprocess.Popen(
        args(tmp_path / "killed"), cwd=ROOT, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    images = tmp_path / "killed" / "demo" / ".data.work" / "synref" / "images"
    while proc.poll() is None and not (images.is_dir() and sum(1 for _ in images.iterdir()) > 30):
        time.sleep(0.05)
    assert proc.poll() is None, "the data stage finished before it could be killed"
    proc.kill()
    proc.wait()
    subprocess.run(args(tmp_path / "killed"), cwd=ROOT, env=env, capture_output=True, check=True, timeout=600)
    clean, killed = (
        json.loads((tmp_path / r / "demo" / "data" / "manifest.json").read_text()) for r in ("clean", "killed")
    )
    assert (killed["key"], killed["files"]) == (clean["key"], clean["files"])
    record(
        "interruption",
        "SIGKILL of `pipeline run --stages data` mid-stage",
        "rerun completes; manifest key and file hashes equal",
    )


# ---------------------------------------------------------------------------------------------------- full disk


@pytest.fixture
def two_stages(monkeypatch, tmp_path):
    """Two real stages (a -> b) registered for the test only, and a runner factory over ``tmp_path/<name>``."""
    from foundation.io import atomic_write_text
    from pipeline import stage as stage_mod
    from pipeline.runner import Runner
    from pipeline.stage import stage

    stage_mod.load_stages()
    monkeypatch.setattr(stage_mod, "STAGES", {})

    @stage("a", sections=("data",))
    def run_a(ctx):
        atomic_write_text(ctx.out / "numbers.txt", "0123456789\n" * 1000)
        return {}

    @stage("b", upstream=("a",), sections=("train",))
    def run_b(ctx):
        atomic_write_text(ctx.out / "copy.txt", (ctx.upstream("a") / "numbers.txt").read_text() * 2)
        return {}

    return lambda name: Runner(load_config(None, [f"run.root={tmp_path / name}", "run.name=t"]))


@contextlib.contextmanager
def no_space(when: Callable[[Path], bool]) -> Iterator[None]:
    """A disk that fills up: ``os.replace`` onto a path for which ``when`` holds fails with ENOSPC."""
    real = os.replace

    def replace(src, dst):
        if when(Path(dst)):
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        real(src, dst)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(os, "replace", replace)
        yield


@pytest.mark.parametrize(
    "where",
    ["a stage's own file", "stage b's manifest", "the rename into place"],
)
def test_full_disk_leaves_nothing_counted_as_done(where, two_stages):
    reference = two_stages("reference")
    reference.run(None)
    runner = two_stages("full")
    when = {
        "a stage's own file": lambda p: p.name == "copy.txt",
        "stage b's manifest": lambda p: p.name == "manifest.json" and p.parent.name == ".b.work",
        "the rename into place": lambda p: p.name == "b",
    }[where]
    with no_space(when):
        message = refused("full disk", f"ENOSPC on {where}", StageError, lambda: runner.run(None), "'b'", "No space")
    assert runner.status("a").state == "done" and runner.status("b").state == "missing"
    assert not (runner.stage_dir("b") / "manifest.json").exists()
    assert not [p for p in runner.run_dir.rglob("*.tmp")], "a temporary file was left behind"
    outcomes = {s.stage: s.state for s in runner.run(None)}
    assert outcomes == {"a": "cached", "b": "ran"}, message
    assert runner.manifest("b")["files"] == reference.manifest("b")["files"]


def test_full_disk_during_an_atomic_write_keeps_the_old_file(tmp_path):
    from foundation.io import atomic_write_bytes

    target = write_file(tmp_path / "model.onnx", b"old, complete")
    real_write = Path.write_bytes

    def half_then_full(self, data):
        real_write(self, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.MonkeyPatch.context() as patch, pytest.raises(OSError, match="No space"):
        patch.setattr(Path, "write_bytes", half_then_full)
        atomic_write_bytes(target, b"new " * 1000)
    assert target.read_bytes() == b"old, complete" and [p.name for p in tmp_path.iterdir()] == ["model.onnx"]
    record("full disk", "ENOSPC half-way through an atomic write", "OSError; the old file is intact, no temporary left")


def test_full_disk_while_saving_a_checkpoint_keeps_the_old_one_and_no_temporary(tmp_path):
    from model import create_model
    from model.weights import load_checkpoint, save_checkpoint

    model = create_model("tiny")
    save_checkpoint(model, tmp_path / "best", {"step": 1})
    before = sorted(p.name for p in tmp_path.iterdir())
    with no_space(lambda p: p.suffix == ".safetensors"), pytest.raises(OSError, match="No space"):
        save_checkpoint(model, tmp_path / "best", {"step": 2})
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # no best.safetensors.tmp left behind
    assert load_checkpoint(tmp_path / "best")[1]["step"] == 1
    record("full disk", "ENOSPC while saving a checkpoint", "OSError; the previous checkpoint loads, no temporary left")
