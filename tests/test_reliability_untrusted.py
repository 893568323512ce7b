"""Reliability against untrusted files and config: a static audit for unsafe loading and shell calls, bundle
archives with unsafe members, config paths and YAML, and a property test of any config override.

Usage: ``pytest tests/test_reliability_untrusted.py``; with ``S2RM_RELIABILITY_LOG=<file>`` each case appends its row
to that file (tests/reliability_log.py).
"""

from __future__ import annotations

import ast
import functools
import io
import tarfile
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from foundation.errors import ArtifactError, ConfigError
from pipeline.config import Config, load_config
from tests.reliability_inputs import FAST, ROOT, write_file
from tests.reliability_log import record, refused

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning", "ignore::FutureWarning")


# ---------------------------------------------------------------------------------------------- untrusted files

SCANNED = ("foundation", "pipeline", "model", "runtimes", "quantize", "benchmarks", "tests", "tools")
UNPICKLERS = {"pickle", "_pickle", "cPickle", "dill", "cloudpickle", "joblib", "marshal", "shelve"}
RISKY_NAMES = {"load", "loads", "Unpickler"}


def risky_calls(source: str) -> list[str]:
    """Calls that can run code from a file or a string: what the audit below forbids outside its allow-list."""
    found = []
    tree = ast.parse(source)
    aliases = {a.asname: a.name for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names if a.asname}
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.module in (*UNPICKLERS, "torch"):
            found += [f"from {node.module} import {a.name}" for a in node.names if a.name in RISKY_NAMES]
        if isinstance(node, ast.ClassDef):
            bases = [ast.unparse(b) for b in node.bases]
            found += [f"subclass of {b}" for b in bases if b.endswith("Unpickler")]
        if not isinstance(node, ast.Call):
            continue
        func = ast.unparse(node.func)
        head, _, rest = func.partition(".")
        func = f"{aliases.get(head, head)}.{rest}" if rest else func  # import pickle as pk: pk.load is pickle.load
        kwargs = {k.arg: k.value for k in node.keywords if k.arg}
        flags = {name for name, v in kwargs.items() if isinstance(v, ast.Constant) and v.value is True}
        if func.split(".")[0] in UNPICKLERS and func.split(".")[-1] in (*RISKY_NAMES, "open"):
            found.append(func)
        if func == "torch.load" and "weights_only" not in flags:
            found.append("torch.load without weights_only=True")
        if "shell" in kwargs and not (isinstance(kwargs["shell"], ast.Constant) and kwargs["shell"].value is False):
            found.append(f"{func}(shell=...)")
        if func.endswith(("np.load", "numpy.load")) and "allow_pickle" in flags:
            found.append("np.load(allow_pickle=True)")
        if func in ("yaml.load", "yaml.unsafe_load", "yaml.full_load", "eval", "exec", "os.system", "os.popen"):
            found.append(func)
        if func.endswith((".extractall", ".extract")):
            found.append("tar/zip extract")
    return found


ALLOWED = {
    ("pipeline/data/refer.py", "subclass of pickle.Unpickler"),  # the restricted REFER reader: refuses every global
    ("pipeline/bundle.py", "tar/zip extract"),  # extract_bundle: members checked first, then filter="data"
    ("tests/test_refer.py", "pickle.loads"),  # reads back the refs file the test itself wrote
}


def test_static_audit_no_pickle_unsafe_torch_load_or_shell():
    found = set()
    for folder in SCANNED:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for call in risky_calls(path.read_text()):
                found.add((path.relative_to(ROOT).as_posix(), call))
    assert found == ALLOWED, f"new risky calls: {sorted(found - ALLOWED)}; gone: {sorted(ALLOWED - found)}"
    bad = (
        "import pickle, torch, subprocess, yaml, numpy as np\n"
        "pickle.load(f); torch.load(p); torch.load(p, weights_only=False); subprocess.run(c, shell=True)\n"
        "np.load(p, allow_pickle=True); yaml.load(s); eval(s)\nclass U(pickle.Unpickler): pass\n"
        "import pickle as pk\npk.loads(b)\nfrom torch import load\n"
    )
    assert len(risky_calls(bad)) == 10  # the audit does see each kind
    assert risky_calls("torch.load(p, weights_only=True); subprocess.run(['ls'], check=True)") == []
    record(
        "untrusted files",
        f"static audit of {', '.join(SCANNED)}",
        "only the allow-listed calls: " + "; ".join(sorted(f"{p}: {c}" for p, c in ALLOWED)),
    )


def _tar(path: Path, members: list[tuple[str, bytes]]) -> Path:
    with tarfile.open(path, "w:gz") as tar:
        for name, kind in members:
            info = tarfile.TarInfo(name)
            info.type = kind
            info.linkname = "/etc/passwd" if kind in (tarfile.SYMTYPE, tarfile.LNKTYPE) else ""
            data = b"x" if kind == tarfile.REGTYPE else b""
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data else None)
    return path


@pytest.mark.parametrize(
    "members",
    [
        [("bundle/ok.txt", tarfile.REGTYPE), ("../evil.txt", tarfile.REGTYPE)],
        [("bundle/../../evil.txt", tarfile.REGTYPE)],
        [("/tmp/evil.txt", tarfile.REGTYPE)],
        [("bundle/link", tarfile.SYMTYPE)],
        [("bundle/hard", tarfile.LNKTYPE)],
        [("bundle/tty", tarfile.CHRTYPE)],
        [("bundle/a.txt", tarfile.REGTYPE), ("other/b.txt", tarfile.REGTYPE)],
    ],
    ids=["dot-dot", "nested dot-dot", "absolute", "symlink", "hard link", "device", "two top folders"],
)
def test_bundle_extraction_refuses_unsafe_members(members, tmp_path):
    from pipeline.bundle import extract_bundle

    tar = _tar(tmp_path / "bad.tar.gz", members)
    dest = tmp_path / "dest"
    names = ", ".join(name for name, _ in members)
    refused(
        "untrusted files", f"bundle .tar.gz with {names}", ArtifactError, lambda: extract_bundle(tar, dest), str(tar)
    )
    assert not (tmp_path / "evil.txt").exists() and not Path("/tmp/evil.txt").exists()
    assert not dest.exists() or not any(dest.rglob("*"))


def test_config_files_and_paths_are_resolved_and_checked(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    check = functools.partial(refused, "config")
    given_sets = lambda *sets: lambda: load_config(None, list(sets))  # noqa: E731
    missing = str(tmp_path / "models" / "minilm")  # a relative path is named as resolved from the working folder
    check("model.text_dir=models/minilm (missing)", ConfigError, given_sets("model.text_dir=models/minilm"), missing)
    check(
        "model.vision_checkpoint=<a directory>",
        ConfigError,
        given_sets(f"model.vision_checkpoint={tmp_path}"),
        "is not a file",
    )
    write_file(tmp_path / "swin.pth", b"x")
    assert load_config(None, ["model.vision_checkpoint=swin.pth"]).model.vision_checkpoint == Path("swin.pth")
    monkeypatch.setenv("HOME", str(tmp_path))
    assert load_config(None, ["model.vision_checkpoint=~/swin.pth"]).model.vision_checkpoint == tmp_path / "swin.pth"
    check("model.text_dir= (empty)", ConfigError, given_sets("model.text_dir="), "empty path")
    no_root = given_sets("data.dataset=refcoco", "data.root=/no/refer")
    check("data.dataset=refcoco, data.root missing", ConfigError, no_root, "'data.root'", "/no/refer")
    no_teacher = given_sets("distill.enabled=true", "distill.teacher_checkpoint=runs/x/best")
    check("distill.teacher_checkpoint missing", ConfigError, no_teacher, "best.safetensors does not exist")
    (tmp_path / "child.yaml").write_text("extends: ../nowhere/base.yaml\n")
    parent = str(tmp_path.parent / "nowhere" / "base.yaml")
    check("extends: ../nowhere/base.yaml", ConfigError, lambda: load_config(tmp_path / "child.yaml"), parent)
    (tmp_path / "evil.yaml").write_text("train: !!python/object/apply:os.system ['touch pwned']\n")
    evil = lambda: load_config(tmp_path / "evil.yaml")  # noqa: E731
    refused("untrusted files", "config YAML with !!python/object/apply", ConfigError, evil, "not valid YAML")
    assert not (tmp_path / "pwned").exists()


# ----------------------------------------------------------------------------------------------- property tests


def _keys(model: type, prefix: str = "") -> list[str]:
    out = []
    for name, field in model.model_fields.items():
        key = f"{prefix}{field.alias or name}"
        ann = field.annotation
        out += _keys(ann, key + ".") if isinstance(ann, type) and hasattr(ann, "model_fields") else [key]
    return out


CONFIG_KEYS = _keys(Config)
YAML_VALUES = st.one_of(
    st.text(max_size=12),
    st.integers(-(10**12), 10**12).map(str),
    st.floats(allow_nan=True).map(str),
    st.sampled_from(
        ["", "~", "null", "true", "[1, 2]", "{a: 1}", "[val, tset]", "'x' : y", "!!python/name:os.system", "1e999"]
    ),
)


@FAST
@given(key=st.one_of(st.sampled_from(CONFIG_KEYS), st.text(max_size=20)), value=YAML_VALUES)
def test_config_override_is_a_config_or_a_config_error(key, value):
    try:
        cfg = load_config(None, [f"{key}={value}"])
    except ConfigError as exc:
        assert str(exc)  # a message, never an empty one
        return
    assert isinstance(cfg, Config)
