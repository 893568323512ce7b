"""The deploy bundle under the robot's Pythons: 3.8 (JetPack 5) and 3.10 (JetPack 6), with that JetPack's pins.

Default suite: a scan of the bundle's scripts and everything it vendors for constructs newer than Python 3.8
(tests/py38_scan.py; the scan itself is tested on snippets), a compile of those files under each robot interpreter
found and ``verify.py`` of the unpacked Orin Nano bundle under Python 3.8 in the cached robot venv (``make
robot-venvs``). ``slow`` (``make test-all``): the Orin Nano (JetPack 6.1) and Xavier NX (JetPack 5.1, opset 17) bundles
of the tiny model, unpacked, each running ``verify.py``, ``infer.py`` and ``benchmark.py --backend onnxruntime`` under
Python 3.8 and 3.10. The venvs come from ``tools/robot_venvs.py``; a missing interpreter or an unreachable package
index is a skip that says so. The README's per-JetPack pins and the power-mode parsing: tests/test_bundle_jetpack.py.
"""

from __future__ import annotations

import fnmatch
import importlib.util
import json
import logging
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomllib
from PIL import Image

from pipeline.bundle import SCRIPTS, SCRIPTS_DIR, VENDORED, extract_bundle
from pipeline.config import load_config
from pipeline.jetpack import README_MARKER, for_jetpack
from tests.py38_scan import newer_than_38

ROOT = Path(__file__).resolve().parent.parent
ROBOT_PYTHONS = ("3.8", "3.10")
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning", "ignore::FutureWarning")


def _load_tool() -> Any:
    spec = importlib.util.spec_from_file_location("robot_venvs", ROOT / "tools" / "robot_venvs.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


robot_venvs = _load_tool()


def bundle_sources() -> list[Path]:
    """Every Python file the bundle carries: its scripts and the vendored project modules."""
    return [SCRIPTS_DIR / s for s in SCRIPTS if s.endswith(".py")] + [ROOT / rel for rel in VENDORED]


# ---------------------------------------------------------------------------------------------------------------------
# The scan for what Python 3.8 lacks (tests/py38_scan.py)
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "snippet",
    [
        "for a, b in zip(x, y, strict=True): pass",
        "name = s.removeprefix('v')",
        "import functools\n@functools.cache\ndef f(): pass",
        "from functools import cache",
        "ok = isinstance(x, int | None)",
        "Alias = dict[str, int]",
        "merged = a | {'k': 1}",
        "merged = dict(a) | b",
        "match x:\n    case 1: pass",
        "from typing import TypeAlias",
        "import tomllib",
        "from dataclasses import dataclass\n@dataclass(slots=True)\nclass A: pass",
        "import numpy as np\nflags = np.zeros(3, dtype=np.bool)",
        "import numpy as np\ny = np.trapezoid(x)",
        "from collections.abc import Mapping\nM = Mapping[str, int]",
        "from pathlib import Path\nOpt = Path | None",
        "@buttons[0].on_click\ndef f(): pass",
    ],
)
def test_the_scan_finds_each_construct_python_3_8_lacks(snippet):
    assert newer_than_38(snippet), snippet


def test_the_scan_leaves_python_3_8_code_alone():
    source = (
        "from __future__ import annotations\n"
        "import re\nfrom collections.abc import Mapping\nfrom typing import Optional\n"
        "def f(x: int | None, m: Mapping[str, list[int]]) -> dict[str, int] | None:\n"
        "    y: list[int] | None = None\n"
        "    flags = re.IGNORECASE | re.MULTILINE\n"
        "    bits = 1 | 2\n"
        "    return {**m, 'k': 1} if zip(x, m) else None\n"
        "P = Optional[int]\n"
    )
    assert newer_than_38(source) == []


def test_bundle_code_has_nothing_python_3_8_lacks():
    """Review #2: ``zip(..., strict=True)`` (3.10) in verify.py, infer.py, onnxruntime_rt.py, tokenize.py and
    benchmarks/metrics.py stopped the bundle under JetPack 5's Python 3.8; nothing newer may come back."""
    problems = [p for path in bundle_sources() for p in newer_than_38(path.read_text(), str(path.relative_to(ROOT)))]
    assert not problems, "\n".join(problems)


def test_ruff_lints_the_bundle_code_as_python_3_8():
    """ruff's project target is 3.10, whose B905 asks for zip(strict=...), the very call JetPack 5 cannot run: every
    bundle file is linted as 3.8 instead (which also makes 3.9+ syntax a ruff error there)."""
    versions = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["ruff"]["per-file-target-version"]
    for path in bundle_sources():
        rel = path.relative_to(ROOT).as_posix()
        assert any(fnmatch.fnmatch(rel, glob) and v == "py38" for glob, v in versions.items()), rel


# ---------------------------------------------------------------------------------------------------------------------
# The robot interpreters and their venvs
# ---------------------------------------------------------------------------------------------------------------------

_VENVS: dict[tuple[str, bool], Path | str] = {}


def robot_python(minor: str, build: bool = True) -> Path:
    """The python of the robot venv for a Python version (built when ``build``; cached for the session), or a skip
    that says why there is none. A pin without a wheel is an error, not a skip."""
    key = (minor, build)
    if key not in _VENVS:
        try:
            if build:
                _VENVS[key] = robot_venvs.ensure(minor, log=lambda msg: print(msg, file=sys.stderr))
            else:
                _VENVS[key] = robot_venvs.existing(minor) or (
                    f"the robot venv for Python {minor} is not built yet: make robot-venvs "
                    "(python3 tools/robot_venvs.py, about a minute with the package index)"
                )
        except robot_venvs.Unavailable as exc:
            _VENVS[key] = str(exc)
    found = _VENVS[key]
    if isinstance(found, str):
        pytest.skip(found)
    return found


@pytest.mark.parametrize("minor", ROBOT_PYTHONS)
def test_bundle_code_compiles_under_robot_python(minor):
    """Syntax a newer parser accepts (parenthesised context managers, ``match``) fails at once under the robot's
    Python; compiling needs only the interpreter."""
    try:
        python, _ = robot_venvs.find_interpreter(minor)
    except robot_venvs.Unavailable as exc:
        pytest.skip(str(exc))
    code = "import sys\nfor f in sys.argv[1:]:\n    compile(open(f, encoding='utf-8').read(), f, 'exec')\n"
    proc = subprocess.run([str(python), "-c", code, *map(str, bundle_sources())], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-3000:]


def test_robot_interpreters_are_found_through_pyenv_or_the_environment(tmp_path, monkeypatch):
    """A pyenv tree (newest patch first) or ``$S2RM_PYTHON38``; a missing one is an error that says where it
    looked."""
    for version in ("3.8.9", "3.8.18", "3.80.1"):
        (tmp_path / "pyenv" / "versions" / version / "bin").mkdir(parents=True)
    monkeypatch.setenv("PYENV_ROOT", str(tmp_path / "pyenv"))
    monkeypatch.setenv("S2RM_PYTHON38", "/opt/py38/bin/python3.8")
    found = robot_venvs.candidates("3.8")
    assert found[:3] == [
        Path("/opt/py38/bin/python3.8"),
        tmp_path / "pyenv/versions/3.8.18/bin/python3.8",
        tmp_path / "pyenv/versions/3.8.9/bin/python3.8",
    ]
    monkeypatch.setattr(robot_venvs, "candidates", lambda minor: [tmp_path / "none" / "python3.8"])
    with pytest.raises(robot_venvs.Unavailable, match=r"no working Python 3\.8 .*none/python3\.8.*pyenv install"):
        robot_venvs.find_interpreter("3.8")


def test_robot_venv_is_built_atomically_and_pip_failures_are_told_apart(tmp_path, monkeypatch):
    """The venv appears only once pip has finished; no network is a skip, a pin without a wheel an error."""
    calls = []

    def fake_run(cmd, **kwargs):
        calls.append(cmd)
        if cmd[1:3] == ["-m", "venv"]:
            (Path(cmd[3]) / "bin").mkdir(parents=True)
            return subprocess.CompletedProcess(cmd, 0, "", "")
        assert ".tmp-" in cmd[0] and not (tmp_path / "v").exists()  # pip runs in the temporary folder
        return subprocess.CompletedProcess(cmd, 0, "", "") if "ok==1" in cmd else fail(cmd)

    def fail(cmd):
        if "offline==1" in cmd:
            err = "WARNING: Retrying ... NewConnectionError('Failed to establish a new connection')\nERROR: No matching"
        else:
            err = "ERROR: Could not find a version that satisfies the requirement nowheel==1"
        return subprocess.CompletedProcess(cmd, 1, "", err)

    monkeypatch.setattr(robot_venvs.subprocess, "run", fake_run)
    with pytest.raises(robot_venvs.Unavailable, match="cannot reach the package index"):
        robot_venvs.build(tmp_path / "v", Path("/usr/bin/python3.8"), ["offline==1"], log=lambda m: None)
    with pytest.raises(RuntimeError, match="nowheel"):
        robot_venvs.build(tmp_path / "v", Path("/usr/bin/python3.8"), ["nowheel==1"], log=lambda m: None)
    assert not (tmp_path / "v").exists() and not list(tmp_path.glob(".v.tmp-*"))  # nothing half-built is left
    python = robot_venvs.build(tmp_path / "v", Path("/usr/bin/python3.8"), ["ok==1"], log=lambda m: None)
    assert python == tmp_path / "v" / "bin" / "python" and (tmp_path / "v" / ".complete").is_file()
    calls.clear()
    robot_venvs.build(tmp_path / "v", Path("/usr/bin/python3.8"), ["ok==1"], log=lambda m: None)
    assert calls == []  # complete: reused as is
    key = robot_venvs.venv_path("3.8", Path("/usr/bin/python3.8"), "3.8.18", ["ok==1"])
    assert key != robot_venvs.venv_path("3.8", Path("/usr/bin/python3.8"), "3.8.19", ["ok==1"])
    assert key != robot_venvs.venv_path("3.8", Path("/usr/bin/python3.8"), "3.8.18", ["ok==2"])


def robot(python: Path, bundle: Path, script: str, *args: str) -> subprocess.CompletedProcess:
    """Run a bundle script as on the robot: its python, from the bundle folder, without the project on the path."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV", "PYTHONHOME")}
    cmd = [str(python), script, *args]
    return subprocess.run(cmd, cwd=bundle, env=env, capture_output=True, text=True, timeout=600)


def import_vendored(python: Path, bundle: Path) -> subprocess.CompletedProcess:
    """Import every vendored module (the TensorRT and OpenVINO ones import their backend lazily) and common.py."""
    mods = [rel[:-3].replace("/__init__", "").replace("/", ".") for rel in VENDORED] + ["common"]
    code = f"import importlib, sys\nsys.path.insert(0, 'lib')\nfor m in {mods!r}:\n    importlib.import_module(m)\n"
    return robot(python, bundle, "-c", code)


# ---------------------------------------------------------------------------------------------------------------------
# Bundles of the tiny model: Orin Nano (JetPack 6.1, the shared tiny run) and Xavier NX (JetPack 5.1, opset 17)
# ---------------------------------------------------------------------------------------------------------------------


def _make_ctx(cfg: Any, name: str, root: Path, upstream: dict[str, Path], out: Path | None = None) -> Any:
    from pipeline.stage import StageContext

    out = out or root / name
    out.mkdir(parents=True, exist_ok=True)
    return StageContext(name, cfg, out, root, upstream, logging.getLogger(f"test.{name}"))


@pytest.fixture(scope="session")
def orin_bundle(quantized: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Orin Nano bundle of the shared tiny run, unpacked: tests/test_bundle.py's, when that module made it."""
    from pipeline.stages.bundle import run_bundle

    root = quantized["root"]
    tar, meta = root / "bundle" / "bundle.tar.gz", root / "bundle" / "bundle" / "metadata.json"
    if not (tar.is_file() and json.loads(meta.read_text())["device"]["name"] == "jetson-orin-nano"):
        cfg = quantized["cfg"].model_copy(update={"device": load_config(None, device="jetson-orin-nano").device})
        run_bundle(_make_ctx(cfg, "bundle", root, {u: root / u for u in ("data", "export", "quantize")}))
    return extract_bundle(tar, tmp_path_factory.mktemp("robot-orin"))


@pytest.fixture(scope="session")
def xavier_bundle(quantized: dict[str, Any], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The Xavier NX JetPack 5 bundle: the tiny run's data, checkpoint and calibration set, exported at the profile's
    opset 17 (TorchScript exporter, LayerNorm decomposed) and quantized for TensorRT 8.5, then bundled and unpacked."""
    from pipeline.stages.bundle import run_bundle
    from pipeline.stages.export import run_export
    from pipeline.stages.quantize import run_quantize

    shared = quantized["root"]
    root = tmp_path_factory.mktemp("xavier")
    device = load_config(None, device="jetson-xavier-nx-jp5").device
    cfg = quantized["cfg"].model_copy(update={"device": device})
    up = {u: shared / u for u in ("data", "train", "calibrate")}
    run_export(_make_ctx(cfg, "export", root, {"data": up["data"], "train": up["train"]}))
    up["export"] = root / "export"
    run_quantize(_make_ctx(cfg, "quantize", root, {k: up[k] for k in ("data", "export", "calibrate")}))
    up["quantize"] = root / "quantize"
    run_bundle(_make_ctx(cfg, "bundle", root, {k: up[k] for k in ("data", "export", "quantize")}))
    return extract_bundle(root / "bundle" / "bundle.tar.gz", tmp_path_factory.mktemp("robot-xavier"))


@pytest.fixture(scope="session")
def cached_python_3_8() -> Path:
    """The Python 3.8 robot venv if it is already built (`make test` builds it), else a skip before any bundle is
    made."""
    return robot_python("3.8", build=False)


def test_orin_bundle_runs_under_python_3_8(cached_python_3_8, orin_bundle):
    """The fast smoke test of the JetPack 5 Python: the vendored lib imports and verify.py passes under 3.8 with the
    JetPack 5 pins."""
    python = cached_python_3_8
    proc = import_vendored(python, orin_bundle)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = robot(python, orin_bundle, "verify.py", "--backend", "onnxruntime")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert proc.stdout.strip().endswith("PASS") and "PASS onnxruntime int8" in proc.stdout


def test_verify_refuses_outputs_of_another_shape(orin_bundle, tmp_path):
    """verify.py checks shapes instead of zip(strict=True): golden outputs of another shape are a clear error (exit 2),
    not a numpy broadcasting traceback."""
    bundle = tmp_path / "bundle"
    shutil.copytree(orin_bundle, bundle)
    golden = bundle / "golden" / "outputs_int8_onnx.npz"
    logits = np.load(golden)["mask_logits"]
    np.savez(golden, mask_logits=logits[..., ::2, ::2])
    proc = robot(Path(sys.executable), bundle, "verify.py", "--backend", "onnxruntime", "--precision", "int8")
    assert proc.returncode == 2 and "golden outputs have shape" in proc.stderr, proc.stderr[-2000:]


def test_orin_bundle_readme_names_its_jetpack_pins(orin_bundle):
    readme = (orin_bundle / "README.md").read_text()
    jp6 = for_jetpack("6.1")
    assert README_MARKER not in readme and "JetPack 6.1 / 6.2" in readme
    assert jp6.pip_line() in readme and "cuda-python==11.8.2" not in readme and "numpy==1.23.5" not in readme


def _check_scripts(python: Path, bundle: Path, out: Path) -> None:
    """verify.py (every precision), infer.py (two sentences on a golden frame, the host's mask) and benchmark.py."""
    proc = import_vendored(python, bundle)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = robot(python, bundle, "verify.py", "--backend", "onnxruntime", "--json")
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    meta = json.loads((bundle / "metadata.json").read_text())
    for precision in meta["models"]:
        assert f"PASS onnxruntime {precision}" in proc.stdout, proc.stdout
    frame = meta["golden"]["frames"][0]
    args = ("--backend", "onnxruntime", "--precision", frame["precision"], "--image", frame["image"])
    proc = robot(
        python, bundle, "infer.py", *args, "--text", frame["text"], "--text", "the left one", "--out", str(out)
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    stem = Path(frame["image"]).stem
    got = np.asarray(Image.open(out / f"{stem}_0_mask.png")) > 0
    host = np.asarray(Image.open(bundle / frame["mask"])) > 0
    union = np.logical_or(got, host).sum()
    assert (1.0 if union == 0 else np.logical_and(got, host).sum() / union) >= 0.99
    assert (out / f"{stem}_1_overlay.png").is_file()
    proc = robot(python, bundle, "benchmark.py", "--backend", "onnxruntime", "--runs", "3", "--warmup", "1")
    assert proc.returncode == 0, proc.stderr[-3000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["p50_ms"] > 0 and set(result["power_mode"]) == {"current", "max", "at_max"}


@pytest.mark.slow
@pytest.mark.parametrize("minor", ROBOT_PYTHONS)
@pytest.mark.parametrize("which", ["orin", "xavier"])
def test_unpacked_bundle_scripts_run_under_robot_python(which, minor, request, tmp_path):
    """The acceptance matrix: the Orin Nano and Xavier JetPack 5 bundles, verify / infer / benchmark with
    ``--backend onnxruntime``, under Python 3.8 (JetPack 5 pins) and 3.10 (JetPack 6 pins)."""
    python = robot_python(minor)
    bundle = request.getfixturevalue(f"{which}_bundle")
    _check_scripts(python, bundle, tmp_path / "out")


@pytest.mark.slow
def test_xavier_bundle_is_jetpack_5_and_says_what_to_install(xavier_bundle):
    meta = json.loads((xavier_bundle / "metadata.json").read_text())
    assert meta["device"]["jetpack"] == "5.1" and meta["models"]["int8"]["description"]["opset"] == 17
    readme = (xavier_bundle / "README.md").read_text()
    jp5, jp6 = for_jetpack("5.1"), for_jetpack("6.1")
    assert jp5.pip_line() in readme and jp5.onnxruntime in readme
    for pin in (jp6.cuda_python, "numpy==1.26.4", jp6.onnxruntime, "cuda-python==12.2.1"):
        assert pin not in readme, pin
