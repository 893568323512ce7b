"""The cached stage runner: keys, skip/redo decisions, manifests, atomic finalisation, resume."""

from __future__ import annotations

import json

import pytest

from pipeline import stage as stage_mod
from pipeline.config import load_config
from pipeline.errors import StageError
from pipeline.runner import Runner
from pipeline.stage import StageContext, stage

CALLS: list[str] = []


@pytest.fixture
def toy_stages(monkeypatch):
    """Two small real stages (a -> b) registered for the test only."""
    stage_mod.load_stages()
    monkeypatch.setattr(stage_mod, "STAGES", {})
    CALLS.clear()

    @stage("a", sections=("data",), version="1")
    def run_a(ctx: StageContext) -> dict:
        CALLS.append("a")
        (ctx.out / "numbers.txt").write_text(f"seed={ctx.cfg.data.seed}\n")
        return {"seed": ctx.cfg.data.seed}

    @stage("b", upstream=("a",), sections=("train",), version="1")
    def run_b(ctx: StageContext) -> dict:
        CALLS.append("b")
        text = (ctx.upstream("a") / "numbers.txt").read_text()
        (ctx.out / "sub").mkdir()
        (ctx.out / "sub" / "copy.txt").write_text(text * ctx.cfg.train.steps)
        return {}

    return stage_mod.STAGES


def _cfg(tmp_path, *overrides):
    return load_config(None, [f"run.root={tmp_path}", "run.name=t", "train.steps=2", *overrides])


def test_runs_then_skips_then_redoes_stale(toy_stages, tmp_path, caplog):
    runner = Runner(_cfg(tmp_path))
    assert [s.state for s in runner.run(["b"])] == ["ran", "ran"]
    assert [s.state for s in Runner(_cfg(tmp_path)).run(["b"])] == ["cached", "cached"]
    assert CALLS == ["a", "b"]

    changed = Runner(_cfg(tmp_path, "data.seed=7"))
    status = {s.stage: s for s in changed.statuses()}
    assert status["a"].state == "stale" and "data.seed: 0 -> 7" in status["a"].reason
    assert status["b"].state == "stale" and "upstream a" in status["b"].reason
    with caplog.at_level("INFO", logger="pipeline"):
        changed.run(["b"])
    assert "data.seed: 0 -> 7" in caplog.text
    assert CALLS == ["a", "b", "a", "b"]
    assert (tmp_path / "t" / "b" / "sub" / "copy.txt").read_text() == "seed=7\n" * 2

    # only train changed: a stays cached, b is redone
    Runner(_cfg(tmp_path, "data.seed=7", "train.steps=3")).run(["b"])
    assert CALLS[-1:] == ["b"] and CALLS.count("a") == 2


def test_manifest_records_files_hashes_timings_versions(toy_stages, tmp_path):
    runner = Runner(_cfg(tmp_path))
    runner.run(["b"])
    man = json.loads((tmp_path / "t" / "b" / "manifest.json").read_text())
    assert set(man["files"]) == {"sub/copy.txt"}
    assert len(man["files"]["sub/copy.txt"]["sha256"]) == 64
    assert man["seconds"] >= 0 and man["started"] <= man["finished"]
    assert "torch" in man["environment"]["packages"]
    assert man["key_parts"]["sections"]["train"]["steps"] == 2
    assert runner.figures("a") == {"seed": 0}
    assert (tmp_path / "t" / "config.yaml").is_file()


def test_failed_stage_leaves_no_manifest_and_is_redone(toy_stages, tmp_path):
    @stage("boom", upstream=("a",), sections=("train",))
    def run_boom(ctx: StageContext) -> dict:
        (ctx.out / "half.bin").write_bytes(b"x" * 10)
        if ctx.cfg.train.steps == 2:
            raise RuntimeError("disk on fire")
        return {}

    with pytest.raises(StageError, match="boom.*disk on fire"):
        Runner(_cfg(tmp_path)).run(["boom"])
    assert not (tmp_path / "t" / "boom").exists()
    assert Runner(_cfg(tmp_path)).status("boom").state == "missing"
    Runner(_cfg(tmp_path, "train.steps=5")).run(["boom"])
    assert (tmp_path / "t" / "boom" / "manifest.json").is_file()


def test_tampered_output_is_stale(toy_stages, tmp_path):
    runner = Runner(_cfg(tmp_path))
    runner.run(["a"])
    (tmp_path / "t" / "a" / "numbers.txt").write_text("seed=9\n")  # same size, other bytes
    assert runner.status("a").state == "done"
    assert runner.status("a", verify=True).state == "stale"
    (tmp_path / "t" / "a" / "numbers.txt").write_text("something longer\n")
    assert "numbers.txt" in runner.status("a").reason


def test_resumable_stage_keeps_its_work_folder(toy_stages, tmp_path):
    attempts = []

    @stage("resume", sections=("train",), resumable=True)
    def run_resume(ctx: StageContext) -> dict:
        attempts.append(ctx.resumed)
        marker = ctx.out / "checkpoint.txt"
        if not marker.exists():
            marker.write_text("step 1")
            raise RuntimeError("interrupted")
        return {"resumed_from": marker.read_text()}

    with pytest.raises(StageError):
        Runner(_cfg(tmp_path)).run(["resume"])
    Runner(_cfg(tmp_path)).run(["resume"])
    assert attempts == [False, True]
    assert Runner(_cfg(tmp_path)).figures("resume") == {"resumed_from": "step 1"}
    # a changed key discards the old attempt instead of resuming it
    with pytest.raises(StageError):
        Runner(_cfg(tmp_path, "train.steps=9")).run(["resume"], force=True)


def test_clean_and_unknown_stage(toy_stages, tmp_path):
    runner = Runner(_cfg(tmp_path))
    runner.run(["b"])
    removed = runner.clean(["b"])
    assert removed == [tmp_path / "t" / "b"]
    assert runner.status("b").state == "missing" and runner.status("a").state == "done"
    with pytest.raises(StageError, match="did you mean 'a'"):
        runner.run(["aa"])


def test_per_device_stages_get_their_own_folder(toy_stages, tmp_path):
    @stage("dev", upstream=("a",), sections=("device",), per_device=True)
    def run_dev(ctx: StageContext) -> dict:
        (ctx.out / "artifact.txt").write_text(ctx.cfg.device.name)
        return {}

    Runner(_cfg(tmp_path)).run(["dev"])
    jetson = load_config(None, [f"run.root={tmp_path}", "run.name=t", "train.steps=2"], device="jetson-orin-nano")
    outcomes = Runner(jetson).run(["dev"])
    assert [o.state for o in outcomes] == ["cached", "ran"]  # the shared upstream is reused
    for device in ("x86-cpu", "jetson-orin-nano"):
        assert (tmp_path / "t" / "devices" / device / "dev" / "artifact.txt").read_text() == device


def test_adopt_takes_a_matching_done_stage_from_another_run_and_refuses_others(toy_stages, tmp_path):
    Runner(_cfg(tmp_path)).run(["a"])
    source = tmp_path / "t"
    other = Runner(_cfg(tmp_path, "run.name=u"))
    assert other.adopt("a", source)
    assert other.status("a").state == "done"
    assert (other.stage_dir("a") / "numbers.txt").read_text() == "seed=0\n"
    assert [s.state for s in other.run(["b"])] == ["cached", "ran"]
    assert CALLS == ["a", "b"]  # a ran once, for the source run only
    assert not other.adopt("a", source)  # already done here

    different = Runner(_cfg(tmp_path, "run.name=v", "data.seed=3"))
    assert not different.adopt("a", source)  # another key: the stage will run itself
    assert different.status("a").state == "missing"

    (source / "a" / "numbers.txt").write_text("seed=9\n")  # the source no longer matches its manifest
    with pytest.raises(StageError, match="numbers.txt does not match"):
        Runner(_cfg(tmp_path, "run.name=w")).adopt("a", source)
