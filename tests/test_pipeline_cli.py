"""The pipeline as a user drives it: `python -m pipeline run/status/clean` in a subprocess, caching, SIGKILL."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SMALL = [
    "data.synref.images={train: 24, val: 6, testA: 6, testB: 6}",
    "data.synref.min_side=128",
    "data.synref.max_side=160",
]


def cli(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.run([sys.executable, "-m", "pipeline", *args], cwd=ROOT, env=env, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise AssertionError(f"pipeline {' '.join(args)} failed ({proc.returncode}):\n{proc.stderr[-3000:]}")
    return proc


def sets(tmp_path: Path, *extra: str) -> list[str]:
    out = []
    for item in (f"run.root={tmp_path}", *SMALL, *extra):
        out += ["--set", item]
    return out


def test_data_stage_runs_skips_and_redoes_on_seed_change(tmp_path):
    base = ["--config", "configs/demo.yaml", *sets(tmp_path)]
    first = cli("run", "--stages", "data", *base)
    assert "stage data      running" in first.stderr
    refer_dir = tmp_path / "demo" / "data" / "synref"
    assert (refer_dir / "instances.json").is_file() and (refer_dir / "refs(unc).p").is_file()
    assert any((refer_dir / "images").iterdir())
    manifest = json.loads((tmp_path / "demo" / "data" / "manifest.json").read_text())
    assert "synref/instances.json" in manifest["files"]

    second = cli("run", "--stages", "data", *base)
    assert "stage data      cached" in second.stderr

    status = cli("status", "--config", "configs/demo.yaml", *sets(tmp_path, "data.seed=7"))
    assert "stale" in status.stdout and "data.seed: 0 -> 7" in status.stdout
    third = cli("run", "--stages", "data", "--config", "configs/demo.yaml", *sets(tmp_path, "data.seed=7"))
    assert "stage data      running (stale: data.seed: 0 -> 7)" in third.stderr
    new_manifest = json.loads((tmp_path / "demo" / "data" / "manifest.json").read_text())
    assert new_manifest["key"] != manifest["key"]


def test_user_errors_exit_2_with_a_clear_message(tmp_path):
    bad_key = cli("run", "--stages", "data", "--set", "data.sede=3", check=False)
    assert bad_key.returncode == 2 and "did you mean 'seed'" in bad_key.stderr
    bad_stage = cli("run", "--stages", "dta", *sets(tmp_path), check=False)
    assert (
        bad_stage.returncode == 2
        and "unknown stage 'dta'" in bad_stage.stderr
        and "did you mean 'data'" in bad_stage.stderr
    )


def test_sigkill_mid_write_leaves_no_manifest_and_rerun_redoes(tmp_path):
    args = [
        "run",
        "--stages",
        "data",
        "--config",
        "configs/demo.yaml",
        *sets(tmp_path, "data.synref.images={train: 400, val: 6, testA: 6, testB: 6}"),
    ]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen(
        [sys.executable, "-m", "pipeline", *args],
        cwd=ROOT,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    images = tmp_path / "demo" / ".data.work" / "synref" / "images"
    deadline = time.time() + 120
    while time.time() < deadline and proc.poll() is None:
        if images.is_dir() and sum(1 for _ in images.iterdir()) > 20:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the data stage finished before it could be killed; give it more images"
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (tmp_path / "demo" / "data" / "manifest.json").exists()
    status = cli("status", "--config", "configs/demo.yaml", *sets(tmp_path))
    assert "data       missing" in status.stdout
    rerun = cli(*args)
    assert "discarding the unfinished attempt" in rerun.stderr
    assert (tmp_path / "demo" / "data" / "manifest.json").is_file()
    assert not (tmp_path / "demo" / ".data.work").exists()


@pytest.mark.parametrize("script", ["s2rm"])
def test_console_script_entry_point_resolves(script):
    from importlib import import_module

    import tomllib

    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, func = scripts[script].split(":")
    assert callable(getattr(import_module(module), func))
