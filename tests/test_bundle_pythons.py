"""The deploy bundle under the robot's Pythons: 3.8 (JetPack 5) and 3.10 (JetPack 6), with that JetPack's pins.

Default suite: a scan of the bundle's scripts and everything it vendors for constructs newer than Python 3.8 (the scan
itself is tested on snippets), a compile of those files under each robot interpreter found, ``verify.py`` of the
unpacked Orin Nano bundle under Python 3.8 in the cached robot venv (``make robot-venvs``), the README's per-JetPack
pins and the power-mode parsing. ``slow`` (``make test-all``): the Orin Nano (JetPack 6.1) and Xavier NX (JetPack 5.1,
opset 17) bundles of the tiny model, unpacked, each running ``verify.py``, ``infer.py`` and ``benchmark.py --backend
onnxruntime`` under Python 3.8 and 3.10. The venvs come from ``tools/robot_venvs.py``; a missing interpreter or an
unreachable package index is a skip that says so.
"""

from __future__ import annotations

import ast
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
from pipeline.jetpack import JETPACKS, README_MARKER, for_jetpack, install_section, write_bundle_readme

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
# A scan for what Python 3.8 (and numpy 1.23 .. 2.x) lacks. Running the scripts under 3.8 finds what the tests reach;
# this finds it in the code they do not reach (TensorRT paths, error branches).
# ---------------------------------------------------------------------------------------------------------------------

# method names that only exist on newer builtins / pathlib (receiver type unknown: the name is distinctive enough)
NEW_METHODS = {
    "removeprefix": "3.9",
    "removesuffix": "3.9",
    "is_relative_to": "3.9",
    "with_stem": "3.9",
    "hardlink_to": "3.10",
    "bit_count": "3.10",
}
NEW_MODULE_ATTRS = {
    "functools": {"cache": "3.9"},
    "math": {"lcm": "3.9", "nextafter": "3.9", "ulp": "3.9"},
    "itertools": {"pairwise": "3.10", "batched": "3.12"},
    "ast": {"unparse": "3.9"},
    "asyncio": {"to_thread": "3.9"},
    "argparse": {"BooleanOptionalAction": "3.9"},
    "sys": {"stdlib_module_names": "3.10"},
    "os": {"waitstatus_to_exitcode": "3.9"},
    "contextlib": {"chdir": "3.11"},
    "enum": {"StrEnum": "3.11"},
    "datetime": {"UTC": "3.11"},
    "hashlib": {"file_digest": "3.11"},
    "random": {"randbytes": "3.9"},
    "typing": {
        n: v
        for v, names in {
            "3.9": ("Annotated",),
            "3.10": ("TypeAlias", "ParamSpec", "Concatenate", "TypeGuard", "is_typeddict"),
            "3.11": ("Self", "Never", "LiteralString", "assert_never", "reveal_type", "Required", "NotRequired"),
            "3.12": ("override", "TypeAliasType"),
        }.items()
        for n in names
    },
}
NEW_MODULES = {"zoneinfo": "3.9", "graphlib": "3.9", "tomllib": "3.11"}
# numpy names that are missing somewhere between the pins (1.23.5 on JetPack 5, 1.26.4 on 6, 2.x on 7)
NUMPY_GAPS = {
    "bool": "np.bool is missing in numpy 1.24-1.26 (use np.bool_)",
    "exceptions": "numpy >= 1.25",
    "dtypes": "numpy >= 1.25",
    "trapezoid": "numpy >= 2.0",
    "concat": "numpy >= 2.0",
    "isdtype": "numpy >= 2.0",
    "unstack": "numpy >= 2.1",
    "astype": "numpy >= 2.1",
    "float_": "removed in numpy 2.0",
    "complex_": "removed in numpy 2.0",
    "string_": "removed in numpy 2.0",
    "unicode_": "removed in numpy 2.0",
    "NaN": "removed in numpy 2.0",
    "Inf": "removed in numpy 2.0",
    "infty": "removed in numpy 2.0",
    "product": "removed in numpy 2.0",
    "alltrue": "removed in numpy 2.0",
    "sometrue": "removed in numpy 2.0",
    "in1d": "deprecated in numpy 2.0",
}
BUILTIN_GENERICS = {"list", "dict", "tuple", "set", "frozenset", "type"}
TYPE_NAMES = BUILTIN_GENERICS | {"int", "float", "str", "bytes", "bool", "complex", "object"}


def _is_type_like(node: ast.AST, abc_names: set[str]) -> bool:
    """An operand of ``|`` that makes it a PEP 604 union (3.10) or a dict union (3.9)."""
    if isinstance(node, ast.Constant) and node.value is None:
        return True
    if isinstance(node, (ast.Dict, ast.DictComp)):
        return True
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict":
        return True
    if isinstance(node, ast.Subscript):
        return _is_type_like(node.value, abc_names)
    name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None
    if name is None:
        return False
    # CamelCase names are classes; ALL_CAPS ones are flag constants (re.I | re.M), which | combines in any version
    return name in TYPE_NAMES or name in abc_names or (name[0].isupper() and not name.isupper())


def newer_than_38(source: str, filename: str = "<src>") -> list[str]:
    """``file:line: what`` for each construct in ``source`` that Python 3.8 or one of the numpy pins lacks."""
    tree = ast.parse(source, filename)
    lazy_annotations = any(
        isinstance(n, ast.ImportFrom) and n.module == "__future__" and any(a.name == "annotations" for a in n.names)
        for n in tree.body
    )
    annotation_ids: set[int] = set()
    if lazy_annotations:  # annotations are strings: nothing in them runs
        for node in ast.walk(tree):
            parts = []
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                parts = [node.returns, *(a.annotation for a in (*node.args.args, *node.args.kwonlyargs))]
                parts += [a.annotation for a in (*node.args.posonlyargs, node.args.vararg, node.args.kwarg) if a]
            elif isinstance(node, ast.AnnAssign):
                parts = [node.annotation]
            annotation_ids |= {id(sub) for part in parts if part is not None for sub in ast.walk(part)}
    abc_names = {
        a.asname or a.name
        for n in ast.walk(tree)
        if isinstance(n, ast.ImportFrom) and n.module == "collections.abc"
        for a in n.names
    }
    found = []

    def flag(node: ast.AST, what: str) -> None:
        found.append(f"{filename}:{getattr(node, 'lineno', '?')}: {what}")

    for node in ast.walk(tree):
        if id(node) in annotation_ids:
            continue
        if type(node).__name__ in ("Match", "TryStar", "TypeAlias"):
            flag(node, f"{type(node).__name__} statement (Python >= 3.10)")
        elif isinstance(node, ast.Call):
            func = node.func
            keywords = {k.arg for k in node.keywords}
            if isinstance(func, ast.Name) and func.id == "zip" and "strict" in keywords:
                flag(node, "zip(strict=...) (Python >= 3.10)")
            if isinstance(func, (ast.Name, ast.Attribute)) and getattr(func, "id", getattr(func, "attr", "")) in (
                "dataclass",
                "field",
            ):
                for kw in keywords & {"slots", "kw_only"}:
                    flag(node, f"dataclass {kw}= (Python >= 3.10)")
            if isinstance(func, ast.Attribute) and func.attr in NEW_METHODS:
                flag(node, f".{func.attr}() (Python >= {NEW_METHODS[func.attr]})")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            module = node.value.id
            if node.attr in NEW_MODULE_ATTRS.get(module, {}):
                flag(node, f"{module}.{node.attr} (Python >= {NEW_MODULE_ATTRS[module][node.attr]})")
            if module in ("np", "numpy") and node.attr in NUMPY_GAPS:
                flag(node, f"{module}.{node.attr}: {NUMPY_GAPS[node.attr]}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                if alias.name in NEW_MODULE_ATTRS.get(node.module, {}):
                    flag(
                        node,
                        f"from {node.module} import {alias.name} (Python >= "
                        f"{NEW_MODULE_ATTRS[node.module][alias.name]})",
                    )
            if node.module.split(".")[0] in NEW_MODULES:
                flag(node, f"module {node.module} (Python >= {NEW_MODULES[node.module.split('.')[0]]})")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in NEW_MODULES:
                    flag(node, f"module {alias.name} (Python >= {NEW_MODULES[alias.name.split('.')[0]]})")
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            if _is_type_like(node.left, abc_names) or _is_type_like(node.right, abc_names):
                flag(node, "X | Y of types or dicts at run time (PEP 604: 3.10, dict union: 3.9)")
        elif isinstance(node, ast.AugAssign) and isinstance(node.op, ast.BitOr):
            if isinstance(node.value, (ast.Dict, ast.DictComp)):
                flag(node, "dict |= (Python >= 3.9)")
        elif (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Name)
            and node.value.id in BUILTIN_GENERICS | abc_names
        ):
            flag(node, f"{node.value.id}[...] at run time (Python >= 3.9)")
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            for deco in node.decorator_list:  # PEP 614 (3.9) relaxed decorators; 3.8 takes a dotted name or its call
                target = deco.func if isinstance(deco, ast.Call) else deco
                while isinstance(target, ast.Attribute):
                    target = target.value
                if not isinstance(target, ast.Name):
                    flag(deco, "decorator that is not a dotted name or its call (Python >= 3.9)")
    return found


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


# ---------------------------------------------------------------------------------------------------------------------
# What to install per JetPack (review #5)
# ---------------------------------------------------------------------------------------------------------------------


def test_jetpack_5_readme_names_jetpack_5_pins_and_not_jetpack_6_ones(tmp_path):
    """The bundle stage writes the profile's JetPack into the README template (a JetPack 5 bundle: CUDA 11 pins)."""
    readme = tmp_path / "README.md"
    shutil.copyfile(SCRIPTS_DIR / "README.md", readme)
    write_bundle_readme(readme, load_config(None, device="jetson-xavier-nx-jp5").device.jetpack)
    text = readme.read_text()
    jp5, jp6_0, jp6 = for_jetpack("5.1"), for_jetpack("6.0"), for_jetpack("6.2.1")
    assert jp5.name in text and jp5.pip_line() in text and "pip>=21" in text
    assert "cuda-python==11.8.2" in text and "numpy==1.23.5" in text and jp5.onnxruntime in text
    for pin in {*jp6.packages, jp6.cuda_python, jp6.onnxruntime, jp6_0.cuda_python} - set(jp5.packages):
        assert pin not in text, pin
    with pytest.raises(ValueError, match="no install marker"):
        write_bundle_readme(readme, "5.1")  # already written: the template is what gets the steps


def test_cuda_python_is_pinned_to_the_cuda_of_each_jetpack():
    """cuda-python 13 needs a CUDA 13 driver: only JetPack 7; JetPack 6 gets the 12.x of its CUDA, JetPack 5 an 11.x
    with a Python 3.8 aarch64 wheel; every pin is exact (``==``), so pip cannot pick a newer CUDA."""
    majors = {e.name: e.cuda_python.split("==")[1].split(".")[0] for e in JETPACKS}
    cudas = {e.name: e.cuda.split(".")[0] for e in JETPACKS}
    assert majors == cudas
    assert for_jetpack("5.1.2").cuda_python == "cuda-python==11.8.2" and for_jetpack("5.1").python == "3.8"
    assert for_jetpack("6.0").cuda_python == "cuda-python==12.2.1"
    assert for_jetpack("6.1").cuda_python == for_jetpack("6.2.1").cuda_python == "cuda-python==12.6.2.post1"
    assert for_jetpack("7.2").cuda_python.startswith("cuda-python==13.") and for_jetpack("4.6") is None
    for entry in JETPACKS:
        assert all("==" in pin for pin in (*entry.packages, entry.cuda_python, entry.onnxruntime)), entry.name
    # a profile's JetPack is in the table (a new profile without its row would get only the generic table)
    for path in sorted((ROOT / "configs" / "devices").glob("jetson-*.yaml")):
        jetpack = load_config(None, device=path.stem).device.jetpack
        assert for_jetpack(jetpack) is not None, (path.name, jetpack)
    assert "| JetPack 5.1.x | 3.8 | 11.4 |" in install_section(None)


def test_trt_extra_keeps_cuda_python_below_13():
    extra = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["optional-dependencies"]["trt"]
    spec = next(s for s in extra if s.startswith("cuda-python"))
    assert "<13" in spec.replace(" ", ""), spec


def test_project_readme_lists_each_jetpack_pin():
    """The README's Jetson section shows the same pins as the bundles' READMEs."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Deploying to a Jetson") :]
    section = section[: section.index("\n## ", 5)]
    for entry in JETPACKS:
        assert " ".join((*entry.packages, entry.cuda_python)) in section, entry.name
    assert "sudo nvpmodel -m 0" not in section and "benchmark.py --power-modes" in section


# ---------------------------------------------------------------------------------------------------------------------
# The maximum power mode (review #12). The nvpmodel.conf and `nvpmodel -q` texts below are constructed in the formats
# public Jetson material shows (`< POWER_MODEL ID=n NAME=... >` lines; "NV Power Mode: <name>" then the id), with the
# mode lists reported for each module; they are not copied from a device.
# ---------------------------------------------------------------------------------------------------------------------

ORIN_NANO_JP62 = """
# nvpmodel.conf (constructed sample, Orin Nano 8 GB on JetPack 6.2)
< PARAM TYPE=FILE NAME=CPU_ONLINE >
CORE_0 /sys/devices/system/cpu/cpu0/online
< POWER_MODEL ID=0 NAME=15W >
CPU_ONLINE CORE_0 1
< POWER_MODEL ID=1 NAME=25W >
CPU_ONLINE CORE_0 1
< POWER_MODEL ID=2 NAME=MAXN_SUPER >
CPU_ONLINE CORE_0 1
< PM_CONFIG DEFAULT=2 >
"""
XAVIER_NX = "\n".join(
    f"< POWER_MODEL ID={i} NAME={name} >"
    for i, name in enumerate(
        [f"MODE_{w}W_{c}CORE" for w, c in ((15, 2), (15, 4), (15, 6), (10, 2), (10, 4))]
        + ["MODE_10W_DESKTOP"]
        + [f"MODE_20W_{c}CORE" for c in (2, 4, 6)]
    )
)
AGX_ORIN = "< POWER_MODEL ID=0 NAME=MAXN >\n< POWER_MODEL ID=1 NAME=MODE_15W >\n< POWER_MODEL ID=2 NAME=MODE_30W >\n"
VERBOSE_QUERY = (
    "NVPM VERB: Config file: /etc/nvpmodel.conf\nNVPM VERB: parsing done for /etc/nvpmodel.conf\n"
    "NVPM VERB: Current mode: NV Power Mode: 25W\n1\nNVPM VERB: PARAM CPU_ONLINE: ARG CORE_0: REAL_VAL: 1 CONF_VAL: 1\n"
)


def _bundle_module(monkeypatch: pytest.MonkeyPatch, name: str) -> Any:
    """Import one of the bundle's scripts from the source tree (``common`` first, as the scripts do)."""
    monkeypatch.setattr(sys, "path", [str(SCRIPTS_DIR), *sys.path])
    module = None
    for mod in dict.fromkeys(("common", name)):
        spec = importlib.util.spec_from_file_location(mod, SCRIPTS_DIR / f"{mod}.py")
        module = importlib.util.module_from_spec(spec)
        monkeypatch.setitem(sys.modules, mod, module)
        spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    ("conf", "query", "status", "best", "current", "at_max"),
    [
        (ORIN_NANO_JP62, "NV Power Mode: 15W\n0\n", None, (2, "MAXN_SUPER"), (0, "15W"), False),
        (ORIN_NANO_JP62, VERBOSE_QUERY, None, (2, "MAXN_SUPER"), (1, "25W"), False),
        (ORIN_NANO_JP62, "", "pmode:0002 fmode:quiet\n", (2, "MAXN_SUPER"), (2, "MAXN_SUPER"), True),
        (XAVIER_NX, "NV Power Mode: MODE_15W_2CORE\n0\n", None, (8, "MODE_20W_6CORE"), (0, "MODE_15W_2CORE"), False),
        (AGX_ORIN, "NV Power Mode: MAXN\n0\n", None, (0, "MAXN"), (0, "MAXN"), True),
        ("< POWER_MODEL NAME=MAXN ID=3 >\n< POWER_MODEL ID=0 NAME=MODE_15W >", "", None, (3, "MAXN"), None, None),
        ("< POWER_MODEL ID=0 NAME=QUIET >\n< POWER_MODEL ID=1 NAME=LOUD >", "", None, None, None, None),
        (None, "", None, None, None, None),  # not a Jetson
    ],
    ids=["nano-15w", "nano-verbose-25w", "nano-status-super", "xavier-nx", "agx", "attr-order", "no-watts", "none"],
)
def test_benchmark_finds_the_maximum_power_mode(monkeypatch, tmp_path, conf, query, status, best, current, at_max):
    benchmark = _bundle_module(monkeypatch, "benchmark")
    if conf is not None:
        (tmp_path / "etc").mkdir()
        (tmp_path / "etc" / "nvpmodel.conf").write_text(conf)
    if status is not None:
        (tmp_path / "var/lib/nvpmodel").mkdir(parents=True)
        (tmp_path / "var/lib/nvpmodel/status").write_text(status)
    state = benchmark.power_mode_state(tmp_path, query=query)
    assert (state["max"], state["current"], state["at_max"]) == (best, current, at_max)
    command = benchmark.power_mode_command(state)
    note = benchmark.power_mode_note(state)
    if best is None:
        assert "nvpmodel -m <id>" in command and "mode 0 is not the maximum" in command and note is None
    else:
        assert command.startswith(f"sudo nvpmodel -m {best[0]} && sudo jetson_clocks")
    if at_max is False:
        assert f"sudo nvpmodel -m {best[0]}" in note and f"(id {current[0]})" in note
    else:
        assert note is None
    clocks = benchmark.clock_note(False, tmp_path, state)
    assert f"sudo nvpmodel -m {best[0] if best else '<id>'} && sudo jetson_clocks" in clocks  # not always mode 0


def test_benchmark_prints_the_power_modes(monkeypatch, tmp_path, capsys):
    benchmark = _bundle_module(monkeypatch, "benchmark")
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc" / "nvpmodel.conf").write_text(XAVIER_NX)
    assert benchmark.print_power_modes(benchmark.power_mode_state(tmp_path, query="")) == 0
    out = capsys.readouterr().out
    assert "8: MODE_20W_6CORE" in out and "fastest: sudo nvpmodel -m 8 && sudo jetson_clocks" in out
    assert benchmark.print_power_modes(benchmark.power_mode_state(tmp_path / "none", query="")) == 1
