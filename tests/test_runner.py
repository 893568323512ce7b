"""The cached stage runner: keys, skip/redo decisions, manifests, atomic finalisation, resume."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
from pathlib import Path

import pytest

from foundation.errors import StageError
from pipeline import runner as runner_mod
from pipeline import stage as stage_mod
from pipeline.config import load_config
from pipeline.runner import Runner, _digest
from pipeline.stage import FRAMEWORK, PROJECT_PACKAGES, ROOT, Stage, StageContext, code_files, get_stage, stage

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


# ---- code versions: what a stage runs is part of its key ------------------------------------------------------------


def _module_exists(name: str) -> bool:
    try:
        code_files(name)
    except StageError:
        return False
    return True


def _project_imports(path: Path) -> set[str]:
    """Project modules a file imports, at module level or inside functions, as dotted names.

    ``from pkg import sub`` imports the submodule ``pkg.sub``; ``from pkg import name`` needs ``pkg`` itself (for
    ``model`` and ``runtimes`` that is the whole package: their ``__init__`` resolves names lazily).
    """
    tree = ast.parse(path.read_text(), str(path))
    package = path.resolve().relative_to(ROOT).parts[:-1] if path.resolve().is_relative_to(ROOT) else ()
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:  # relative: resolved against the file's own package
                parent = package[: len(package) - (node.level - 1)]
                base = ".".join([*parent, *([node.module] if node.module else [])])
            found = [f"{base}.{a.name}" if _module_exists(f"{base}.{a.name}") else base for a in node.names]
        else:
            continue
        names |= {n for n in found if n.split(".")[0] in PROJECT_PACKAGES}
    return names


def _undeclared(st: Stage) -> dict[str, str]:
    """Project modules reachable from a stage's module that its ``code`` does not cover: ``{module: imported by}``.

    Every Python file of the declared code is followed too, so the check is transitive: declaring ``runtimes`` makes
    ``runtimes.torch_rt``'s imports (``model``) part of what must be declared.
    """
    stage_file = Path(inspect.getsourcefile(st.fn)).resolve()
    declared = {p.resolve() for dep in st.code for p in code_files(dep)} | {stage_file}
    missing: dict[str, str] = {}
    for path in sorted(p for p in declared if p.suffix == ".py"):
        for module in sorted(_project_imports(path)):
            if module in FRAMEWORK or module in missing:
                continue
            if not {p.resolve() for p in code_files(module)} <= declared:
                missing[module] = str(path.relative_to(ROOT))
    return missing


@pytest.mark.parametrize("name", sorted(stage_mod.load_stages()))
def test_every_stage_declares_the_project_code_it_runs(name):
    st = get_stage(name)
    missing = _undeclared(st)
    assert not missing, (
        f"stage {name!r} runs project code its @stage(code=...) does not declare, so editing it would not make the "
        f"stage stale: " + "; ".join(f"{m} (imported by {by})" for m, by in missing.items())
    )


def test_the_code_check_finds_a_dropped_dependency():
    train = get_stage("train")
    assert "pipeline.training.optim" in train.code
    dropped = dataclasses.replace(train, code=tuple(c for c in train.code if c != "pipeline.training.optim"))
    assert set(_undeclared(dropped)) == {"pipeline.training.optim"}
    validate = get_stage("validate")
    no_model = dataclasses.replace(validate, code=tuple(c for c in validate.code if c != "model"))
    assert "model" in _undeclared(no_model)  # reached through runtimes.torch_rt, the PyTorch reference


def _write_tree(root: Path) -> None:
    files = {
        "model/__init__.py": "",
        "model/net.py": "WIDTH = 8\n",
        "pipeline/__init__.py": "",
        "pipeline/train.py": "STEPS = 2\n",
        "quantize/data/ops.json": '{"ops": ["Conv"]}\n',
        "runtimes/other.py": "X = 1\n",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    (root / "model" / "__pycache__").mkdir()
    (root / "model" / "__pycache__" / "net.cpython-310.pyc").write_bytes(b"compiled")


def test_a_change_in_declared_code_makes_the_stage_stale(toy_stages, tmp_path, monkeypatch):
    src = tmp_path / "src"
    _write_tree(src)
    monkeypatch.setattr(stage_mod, "ROOT", src)

    def register() -> Stage:
        @stage("t", upstream=("a",), sections=("train",), code=("model", "pipeline.train", "quantize.data"))
        def run_t(ctx: StageContext) -> dict:
            (ctx.out / "out.txt").write_text("x")
            return {}

        return stage_mod.STAGES["t"]

    cfg = _cfg(tmp_path)
    first = register()
    assert set(first.code_versions) == {__name__, "model", "pipeline.train", "quantize.data"}  # this module too
    assert [s.state for s in Runner(cfg).run(["t"])] == ["ran", "ran"]
    key = _digest(Runner(cfg).key_parts(first))

    # an unchanged tree (or the same tree elsewhere, as in another clone) gives the same key
    assert _digest(Runner(cfg).key_parts(register())) == key and Runner(cfg).status("t").state == "done"
    clone = tmp_path / "clone"
    _write_tree(clone)
    monkeypatch.setattr(stage_mod, "ROOT", clone)
    assert register().code_versions == first.code_versions
    monkeypatch.setattr(stage_mod, "ROOT", src)

    # undeclared code and caches do not count
    (src / "runtimes" / "other.py").write_text("X = 2\n")
    (src / "model" / "__pycache__" / "net.cpython-310.pyc").write_bytes(b"recompiled")
    register()
    assert Runner(cfg).status("t").state == "done"

    # a module inside a declared package, a declared module, a data file, a new file: each makes the stage stale
    edits = [
        ("model/net.py", "WIDTH = 16\n", "code.model"),
        ("pipeline/train.py", "STEPS = 3\n", "code.pipeline.train"),
        ("quantize/data/ops.json", '{"ops": ["Conv", "Gemm"]}\n', "code.quantize.data"),
        ("model/extra.py", "", "code.model"),
    ]
    for rel, text, changed in edits:
        (src / rel).write_text(text)
        register()
        status = Runner(cfg).status("t")
        assert status.state == "stale" and changed in status.reason, (rel, status)
        assert _digest(Runner(cfg).key_parts(stage_mod.STAGES["t"])) != key
        assert [s.state for s in Runner(cfg).run(["t"])] == ["cached", "ran"]
        key = _digest(Runner(cfg).key_parts(stage_mod.STAGES["t"]))


def test_unknown_code_dependency_is_refused_at_registration(toy_stages):
    def body(ctx: StageContext) -> dict:
        return {}

    with pytest.raises(StageError, match=r"stage 'x': unknown code dependency 'pipeline.trainings' \(did you mean"):
        stage("x", code=("pipeline.trainings",))(body)
    with pytest.raises(StageError, match=r"unknown code dependency 'numpy'.*valid: .*pipeline\.training\.loop"):
        stage("x", code=("numpy",))(body)
    with pytest.raises(StageError, match=r"code must be a tuple of module names, not the string 'model'"):
        stage("x", code="model")(body)
    assert "x" not in stage_mod.STAGES


@pytest.mark.parametrize(
    ("name", "package"),
    [("export", "onnxslim"), ("export", "tokenizers"), ("data", "tokenizers"), ("train", "tokenizers")],
)
def test_toolchain_versions_enter_the_key(name, package, tmp_path, monkeypatch):
    assert package in stage_mod.TOOLCHAIN
    runner = Runner(_cfg(tmp_path))
    st = get_stage(name)
    before = _digest(runner.key_parts(st))
    real = runner_mod.package_version
    monkeypatch.setattr(runner_mod, "package_version", lambda n: "0.0.0-other" if n == package else real(n))
    assert _digest(runner.key_parts(st)) != before
