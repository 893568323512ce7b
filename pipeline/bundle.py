"""The deploy bundle: models, tokenizer, metadata, golden files, scripts and the runtime code, as a folder and a
reproducible ``.tar.gz`` with a checksum list.

Usage: the ``bundle`` stage (:mod:`pipeline.stages.bundle`) calls these; on the robot: ``tar xzf bundle.tar.gz && cd
bundle && ./build_engine.sh && python3 verify.py`` (``build_engine.sh`` runs trtexec, then writes each engine's sidecar
with ``build_engine.py --sidecar-only``).

The bundle's scripts import the project's own runtime modules, copied into ``lib/`` (:data:`VENDORED`): the same
pre-processing, post-processing and backends the host validated, and nothing that needs torch. :func:`check_closure`
proves the copied modules import only each other, the standard library and the allowed third-party packages.
"""

from __future__ import annotations

import ast
import gzip
import hashlib
import io
import shutil
import sys
import tarfile
from pathlib import Path
from typing import Any

from foundation.errors import ArtifactError
from foundation.io import atomic_path, atomic_write_json, atomic_write_text, sha256_file
from pipeline.stage import PROJECT_PACKAGES

ROOT = Path(__file__).resolve().parent.parent
SCRIPTS_DIR = ROOT / "runtimes" / "bundle_files"
SCRIPTS = ("common.py", "infer.py", "verify.py", "benchmark.py", "build_engine.py", "README.md")
# The runtime side of the project, copied into the bundle's lib/ (package __init__ files included): the bottom layer
# (foundation/) and runtimes/ only; tests/test_layering.py keeps runtimes/ free of pipeline/ and benchmarks/ imports.
VENDORED = (
    "foundation/__init__.py",
    "foundation/errors.py",
    "foundation/io.py",
    "runtimes/__init__.py",
    "runtimes/base.py",
    "runtimes/formats.py",
    "runtimes/image.py",
    "runtimes/masks.py",
    "runtimes/tokenizer.py",
    "runtimes/predict.py",
    "runtimes/processing.py",
    "runtimes/onnxruntime_rt.py",
    "runtimes/openvino_rt.py",
    "runtimes/tensorrt_rt.py",
    "runtimes/tensorrt_build.py",
    "runtimes/tensorrt_settings.py",
    "runtimes/tensorrt_placement.py",
    "runtimes/tensorrt_commands.py",
    "runtimes/fp32_layers.py",
    "runtimes/visualize.py",
)
# What the robot is expected to have besides the standard library.
ALLOWED_THIRD_PARTY = {"numpy", "PIL", "tokenizers", "tensorrt", "cuda", "pycuda", "onnxruntime", "openvino"}


# Lazy (function-level) imports of host-only code that the bundle's scripts never reach.
HOST_ONLY_LAZY = {"runtimes.export"}


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """Absolute module names a file imports: ``(module level, inside functions)``."""
    tree = ast.parse(path.read_text(), str(path))
    top: set[str] = set()
    lazy: set[str] = set()
    functions = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))]
    inner = {id(n) for f in functions for n in ast.walk(f)}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names = {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = {node.module}
        else:
            continue
        (lazy if id(node) in inner else top).update(names)
    return top, lazy


def check_closure(files: tuple[str, ...] = VENDORED, root: Path = ROOT) -> None:
    """Raise ArtifactError unless the vendored modules form a closed set the robot can import.

    Module-level imports must be vendored project modules, the standard library or :data:`ALLOWED_THIRD_PARTY`.
    Function-level imports of other third-party packages are optional fallbacks (they fail with a clear error when
    used); function-level imports of project modules must be vendored or listed in :data:`HOST_ONLY_LAZY`.
    """
    present = {f.removesuffix(".py").removesuffix("/__init__").replace("/", ".") for f in files}
    problems = []
    for rel in files:
        top, lazy = _imports(root / rel)
        for name in sorted(top | lazy):
            pkg = name.split(".")[0]
            if pkg in PROJECT_PACKAGES:
                if name not in present and not (name in lazy and name in HOST_ONLY_LAZY):
                    problems.append(f"{rel} imports {name}, which the bundle does not carry")
            elif name in top and pkg not in ALLOWED_THIRD_PARTY | set(sys.stdlib_module_names) | {"__future__"}:
                problems.append(f"{rel} imports {pkg} at module level, which a robot is not expected to have")
    if problems:
        raise ArtifactError("the bundle's runtime code is not self-contained: " + "; ".join(problems))


def copy_file(src: Path, dst: Path) -> str:
    """Copy one file into the bundle (atomically) and return its path relative to nothing (for logs)."""
    if not src.is_file():
        raise ArtifactError(f"bundle input {src} does not exist; run the stage that makes it")
    dst.parent.mkdir(parents=True, exist_ok=True)
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)
    if src.suffix == ".onnx" and src.with_suffix(".onnx.data").is_file():  # external weights travel too
        shutil.copyfile(src.with_suffix(".onnx.data"), dst.with_suffix(".onnx.data"))
    if src.suffix == ".xml":
        shutil.copyfile(src.with_suffix(".bin"), dst.with_suffix(".bin"))
    return dst.name


def vendor_runtime(lib_dir: Path) -> list[str]:
    check_closure()
    for rel in VENDORED:
        copy_file(ROOT / rel, lib_dir / rel)
    return list(VENDORED)


def copy_scripts(bundle_dir: Path) -> None:
    for name in SCRIPTS:
        copy_file(SCRIPTS_DIR / name, bundle_dir / name)
        if name.endswith(".py") and name != "common.py":
            (bundle_dir / name).chmod(0o755)


def write_checksums(bundle_dir: Path) -> Path:
    """``SHA256SUMS`` (``sha256sum -c`` format) over every file of the bundle."""
    lines = [
        f"{sha256_file(p)}  {p.relative_to(bundle_dir).as_posix()}"
        for p in sorted(bundle_dir.rglob("*"))
        if p.is_file() and p.name != "SHA256SUMS"
    ]
    path = bundle_dir / "SHA256SUMS"
    atomic_write_text(path, "\n".join(lines) + "\n")
    return path


def make_tarball(bundle_dir: Path, tar_path: Path) -> str:
    """A reproducible ``.tar.gz`` of the folder (sorted, zeroed times and owners); returns its sha256."""

    def normalize(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.mtime, info.uid, info.gid, info.uname, info.gname = 0, 0, 0, "", ""
        info.mode = 0o755 if info.isdir() or info.mode & 0o100 else 0o644
        return info

    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(bundle_dir, arcname=bundle_dir.name, recursive=False, filter=normalize)
        for path in sorted(bundle_dir.rglob("*")):
            tar.add(
                path,
                arcname=f"{bundle_dir.name}/{path.relative_to(bundle_dir).as_posix()}",
                recursive=False,
                filter=normalize,
            )
    # no file name and a zero time in the gzip header: the same bundle gives the same bytes. Level 1: float weights
    # barely compress (a 335 MB x86 bundle: 301.6 MB at level 1 in 17.5 s, 299.9 MB at level 9 in 24 s)
    packed = gzip.compress(raw.getvalue(), compresslevel=1, mtime=0)
    with atomic_path(tar_path) as tmp:
        tmp.write_bytes(packed)
    digest = hashlib.sha256(tar_path.read_bytes()).hexdigest()
    atomic_write_text(tar_path.with_name(tar_path.name + ".sha256"), f"{digest}  {tar_path.name}\n")
    return digest


def extract_bundle(tar_path: str | Path, dest: str | Path) -> Path:
    """Unpack a bundle safely: members must stay inside ``dest`` (no absolute paths, ``..``, links or devices).

    Returns:
        The bundle folder inside ``dest``.
    """
    tar_path, dest = Path(tar_path), Path(dest).resolve()
    try:
        with tarfile.open(tar_path, "r:gz") as tar:
            members = tar.getmembers()
            for m in members:
                target = (dest / m.name).resolve()
                if m.name.startswith("/") or not target.is_relative_to(dest):
                    raise ArtifactError(f"bundle {tar_path} member {m.name!r} would be written outside {dest}")
                if not (m.isfile() or m.isdir()):
                    raise ArtifactError(f"bundle {tar_path} member {m.name!r} is a link or device; refused")
            tops = {m.name.split("/")[0] for m in members}
            if len(tops) != 1:
                raise ArtifactError(f"bundle {tar_path} must hold one top folder, found {sorted(tops)}")
            tar.extractall(dest, filter="data")
    except (tarfile.TarError, EOFError, OSError) as exc:
        raise ArtifactError(f"bundle {tar_path} is not a readable .tar.gz: {exc}") from exc
    return dest / tops.pop()


def write_metadata(bundle_dir: Path, meta: dict[str, Any]) -> None:
    atomic_write_json(bundle_dir / "metadata.json", meta)
