"""trtexec command lines and the build script: the ``trtexec`` equivalent of a Python API build, per TensorRT version.

Usage: ``write_build_script("build_engine.sh", [trtexec_command(...), sidecar_command(...)])`` works everywhere (no
TensorRT needed); after a ``trtexec`` build, the sidecar line (``python3 -m runtimes.tensorrt_build --sidecar-only
...``) records the sidecar the runtime needs.

:func:`trtexec_command` emits only the options the trtexec of the profile's TensorRT version parses, from the
per-version tables in ``runtimes/data/trtexec_<version>.json`` (:func:`trtexec_table`: the newest at or below it).
"""

from __future__ import annotations

import functools
import json
import logging
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from foundation.errors import ArtifactError, ConfigError
from runtimes.tensorrt_placement import layer_info_path
from runtimes.tensorrt_settings import BuildSettings, check_typing, version_key

log = logging.getLogger(__name__)

TRTEXEC_DATA = Path(__file__).resolve().parent / "data"


@functools.lru_cache(maxsize=None)  # noqa: UP033 (vendored into the bundle: Python 3.8 has no functools.cache)
def _trtexec_tables() -> dict[tuple[int, int], dict[str, Any]]:
    tables = {}
    for path in sorted(TRTEXEC_DATA.glob("trtexec_*.json")):
        table = json.loads(path.read_text())
        tables[version_key(table["tensorrt"])] = table
    if not tables:
        raise ArtifactError(f"no trtexec option tables (trtexec_<version>.json) in {TRTEXEC_DATA}")
    return tables


def trtexec_versions() -> list[str]:
    """The TensorRT versions that have a trtexec option table (``runtimes/data/trtexec_<version>.json``)."""
    return [table["tensorrt"] for _, table in sorted(_trtexec_tables().items())]


def trtexec_table(trt_version: str | None) -> dict[str, Any]:
    """The trtexec option table of a TensorRT version: the newest table at or below it.

    Each table lists the options trtexec parses at that release (read from NVIDIA/TensorRT's
    ``samples/common/sampleOptions.cpp``, recorded in its ``source``); trtexec stops with "Unknown option" on any other.
    None (an unknown version) takes the newest 10.x table, as
    :func:`runtimes.tensorrt_settings.default_strongly_typed` treats it as 10.x.

    Returns:
        ``{"tensorrt", "strongly_typed_only", "source", "notes", "options"}``.

    Raises:
        ConfigError: the version is older than every table.
    """
    tables = _trtexec_tables()
    key = (10, 1 << 30) if trt_version is None else version_key(trt_version)
    older = [k for k in tables if k <= key]
    if not older:
        raise ConfigError(
            f"no trtexec option table for TensorRT {trt_version}: tables exist for {', '.join(trtexec_versions())} "
            "(the oldest TensorRT this project builds for is the first)"
        )
    return tables[max(older)]


def unknown_trtexec_options(cmd: Sequence[str], trt_version: str | None) -> list[str]:
    """The arguments of a ``trtexec`` command line that the trtexec of ``trt_version`` does not parse."""
    known = set(trtexec_table(trt_version)["options"])
    return [arg for arg in cmd[1:] if arg.split("=", 1)[0] not in known]


def _layer_spec(names: Sequence[str]) -> str:
    """``--layerPrecisions`` / ``--layerOutputTypes`` value keeping ``names`` in FP32.

    trtexec splits the list at commas and each entry at its last colon; a name with a colon is quoted ('name':fp32),
    a name with a comma or a quote cannot be written and is left to the Python builder (with a warning).
    """
    entries, skipped = [], []
    for name in names:
        if "," in name or "'" in name:
            skipped.append(name)
        else:
            entries.append(f"'{name}':fp32" if ":" in name else f"{name}:fp32")
    if skipped:
        log.warning("trtexec cannot name %d FP32 layers (a comma or quote in the name): %s", len(skipped), skipped[:5])
    return ",".join(entries)


def trtexec_command(
    onnx_path: str | Path, engine_path: str | Path, settings: BuildSettings, trt_version: str | None = None
) -> list[str]:
    """The ``trtexec`` invocation equivalent to :func:`runtimes.tensorrt_build.build_engine` with ``settings``, for
    TensorRT ``trt_version``.

    Only options the trtexec of that version parses (:func:`trtexec_table`): ``--buildOnly`` before 8.6 and
    ``--skipInference`` after, ``--stronglyTyped`` from 9.x and none from 11 (the only mode there, the flag a no-op),
    no ``--int8/--fp16`` from 11. A weakly typed build keeps ``settings.fp32_layers`` in FP32 with
    ``--precisionConstraints=obey`` and both their precision and output type. A DLA build exports the engine's layer
    information (``<engine>.layers.json``, detailed) so that the sidecar step can say which layers run on DLA.

    Args:
        onnx_path: the ONNX, as the script sees it.
        engine_path: the engine to write, as the script sees it.
        settings: the build settings.
        trt_version: the TensorRT version of the trtexec that runs it (a profile's floor); None: as 10.x.

    Raises:
        ConfigError: the settings need what that trtexec lacks (strong typing before 9.x, weak typing from 11).
    """
    table = trtexec_table(trt_version)
    options = set(table["options"])
    if table["strongly_typed_only"] and not settings.strongly_typed:
        check_typing(False, trt_version or table["tensorrt"])
    if settings.strongly_typed and not table["strongly_typed_only"] and "--stronglyTyped" not in options:
        check_typing(True, trt_version or table["tensorrt"])
    workspace = f"--memPoolSize=workspace:{settings.workspace_mb}"  # MiB in TensorRT 8.4+, 10 and 11
    cmd = ["trtexec", f"--onnx={onnx_path}", f"--saveEngine={engine_path}", workspace]
    if settings.strongly_typed:
        if not table["strongly_typed_only"]:
            cmd.append("--stronglyTyped")
    elif settings.precision in ("fp16", "int8"):
        # explicit Q/DQ scales for INT8 (no calibrator); FP16 allowed for the float remainder
        cmd += ["--int8", "--fp16"] if settings.precision == "int8" else ["--fp16"]
        spec = _layer_spec(settings.fp32_layers)
        if spec:
            cmd += ["--precisionConstraints=obey", f"--layerPrecisions={spec}", f"--layerOutputTypes={spec}"]
    if settings.dla_core is not None:
        cmd.append(f"--useDLACore={settings.dla_core}")
        if settings.gpu_fallback:
            cmd.append("--allowGPUFallback")
        cmd += [f"--exportLayerInfo={layer_info_path(engine_path)}", "--profilingVerbosity=detailed"]
    if settings.timing_cache:
        cmd.append(f"--timingCacheFile={settings.timing_cache}")
    cmd.append("--skipInference" if "--skipInference" in options else "--buildOnly")
    unknown = [arg for arg in cmd[1:] if arg.split("=", 1)[0] not in options]
    if unknown:  # a rule above out of step with the tables
        raise ConfigError(f"trtexec {table['tensorrt']} does not parse {unknown} (its options: runtimes/data)")
    return cmd


def settings_args(settings: BuildSettings) -> list[str]:
    """Command-line options of :func:`runtimes.tensorrt_build.main` that reproduce ``settings``."""
    args = [f"--precision={settings.precision}", f"--workspace-mb={settings.workspace_mb}"]
    args.append("--strongly-typed" if settings.strongly_typed else "--weakly-typed")
    if settings.dla_core is not None:
        args.append(f"--dla-core={settings.dla_core}")
        if not settings.gpu_fallback:
            args.append("--no-gpu-fallback")
    if settings.timing_cache:
        args.append(f"--timing-cache={settings.timing_cache}")
    args += [f"--fp32-layer={name}" for name in settings.fp32_layers]
    return args


def sidecar_command(onnx_path: str | Path, engine_path: str | Path, settings: BuildSettings) -> str:
    """The shell line that records the sidecar of an engine ``trtexec`` built with ``settings`` (needs the project
    importable: ``PYTHONPATH`` with the checkout)."""
    args = ["-m", "runtimes.tensorrt_build", "--sidecar-only", f"--onnx={onnx_path}", f"--engine={engine_path}"]
    return '"${PYTHON:-python3}" ' + shlex.join([*args, *settings_args(settings)])


def python_check(modules: Sequence[str], why: str) -> str:
    """A shell line that stops the script early, with a clear message, when ``$PYTHON`` (default ``python3``) cannot
    import ``modules`` (checked before the long trtexec builds, not after)."""
    code = "import " + ", ".join(modules)
    message = f"error: ${{PYTHON:-python3}} cannot import {', '.join(modules)}, which {why}"
    return f'"${{PYTHON:-python3}}" -c {shlex.quote(code)} || {{ echo "{message}" >&2; exit 2; }}'


def write_build_script(
    path: str | Path, commands: Sequence[list[str] | str], note: str = "", preamble: Sequence[str] = ()
) -> Path:
    """A bash script running each command from the script's own folder.

    Args:
        path: the script to write (made executable).
        commands: argument lists (quoted here) or ready shell lines (written as they are), run in order.
        note: comment lines under the header.
        preamble: shell lines run before the commands (environment, fail-fast checks).
    """
    from foundation.io import atomic_write_text

    path = Path(path)
    lines = [
        "#!/usr/bin/env bash",
        "# Build the TensorRT engines on the target device (engines are tied to its TensorRT version and GPU).",
        *(f"# {line}" for line in note.splitlines() if line),
        "set -euo pipefail",
        'cd "$(dirname "$0")"',
        'command -v trtexec >/dev/null || PATH="$PATH:/usr/src/tensorrt/bin"  # JetPack puts trtexec there',
        *preamble,
        *(cmd if isinstance(cmd, str) else shlex.join(cmd) for cmd in commands),
    ]
    atomic_write_text(path, "\n".join(lines) + "\n")
    path.chmod(0o755)
