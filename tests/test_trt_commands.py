"""Build settings and trtexec command lines per TensorRT version: typing rules, the trtexec option tables, FP32
layer names trtexec can write, and which engine goes to DLA.

Usage: ``pytest tests/test_trt_commands.py`` (no TensorRT needed).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest

from foundation.errors import ConfigError
from pipeline.config import load_config
from runtimes.tensorrt_commands import trtexec_command, trtexec_table, unknown_trtexec_options
from runtimes.tensorrt_settings import (
    PRECISIONS,
    BuildSettings,
    default_strongly_typed,
    device_settings,
    float_remainder,
)

try:
    from tests.trt_onnx import tiny_qdq
except ImportError:  # pytest's rootdir-relative import mode
    from trt_onnx import tiny_qdq


@pytest.mark.parametrize(
    ("precision", "version", "remainder", "dla", "expected"),
    [
        ("int8", "8.5", "fp16", None, False),  # before 10: weakly typed (flags)
        ("fp16", "8.5", None, None, False),
        ("int8", "10.3", "fp16", None, True),  # the graph carries the types that should run
        ("int8", "10.3", "fp32", None, False),  # FP32 remainder: --int8 --fp16 lets it run in half
        ("int8", "10.3", None, None, False),  # unrecorded remainder: taken as FP32
        ("fp16", "10.3", None, None, True),
        ("fp16", "10.3", None, 0, False),  # DLA needs the precision flags
        ("int8", "10.3", "fp16", 1, False),
        ("fp32", "10.3", None, None, False),
        ("int8", None, "fp16", None, True),  # unknown version: as 10.x
        ("int8", None, "fp32", None, False),
        ("int8", None, "fp16", 0, False),
        ("int8", "11.0", "fp32", None, True),  # 11: strong typing is the only mode
        ("fp16", "11.4", None, 0, True),
        ("fp32", "11.0", None, None, True),
    ],
)
def test_default_strongly_typed_rule(precision, version, remainder, dla, expected):
    assert default_strongly_typed(precision, version, remainder, dla) is expected


def test_float_remainder_reads_the_onnx_description(tmp_path):
    from runtimes.export import read_onnx_metadata

    assert float_remainder(read_onnx_metadata(tiny_qdq(tmp_path / "a.onnx", "fp16"))) == "fp16"
    assert float_remainder(read_onnx_metadata(tiny_qdq(tmp_path / "b.onnx", "fp32"))) == "fp32"
    assert float_remainder(read_onnx_metadata(tiny_qdq(tmp_path / "c.onnx", None))) is None
    assert float_remainder(None) is None
    with pytest.raises(ConfigError, match="'bf16'.*fp32, fp16"):
        float_remainder({"quantization": {"float_remainder": "bf16"}})
    with pytest.raises(ConfigError, match="'int4'"):
        default_strongly_typed("int8", "10.3", "int4")


def test_trtexec_command_matches_settings():
    cmd = trtexec_command(
        "m.onnx", "m.engine", BuildSettings("fp16", 1024, strongly_typed=False, timing_cache="t.cache")
    )
    assert cmd[:3] == ["trtexec", "--onnx=m.onnx", "--saveEngine=m.engine"]
    assert "--fp16" in cmd and "--memPoolSize=workspace:1024" in cmd and "--timingCacheFile=t.cache" in cmd
    from foundation.errors import ConfigError

    with pytest.raises(ConfigError, match="DLA runs FP16 or INT8 only"):
        BuildSettings("fp32", dla_core=0)


# ---- trtexec options per TensorRT version (review #1, #8) ---------------------------------------------------------

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "runtimes" / "data"
STRONGLY_TYPED_ONLY_GONE = ("--int8", "--fp16", "--best", "--precisionConstraints", "--layerPrecisions")


def _tables() -> dict[tuple[int, int], dict]:
    """The trtexec option tables, read here without the code under test."""
    tables = {}
    for path in DATA.glob("trtexec_*.json"):
        table = json.loads(path.read_text())
        assert path.name == f"trtexec_{table['tensorrt']}.json"
        tables[tuple(int(p) for p in table["tensorrt"].split(".")[:2])] = table
    return tables


def _options_for(version: str | None) -> set[str]:
    """The options of the newest table at or below ``version`` (None: the newest 10.x)."""
    tables = _tables()
    key = (10, 99) if version is None else tuple(int(p) for p in version.split(".")[:2])
    return set(tables[max(k for k in tables if k <= key)]["options"])


def _tensorrt_profiles() -> list[str]:
    return sorted(
        p.stem
        for p in (ROOT / "configs" / "devices").glob("*.yaml")
        if load_config(None, device=p.stem).device.backend == "tensorrt"
    )


def test_trtexec_tables_record_their_source_and_the_facts_the_builds_rely_on():
    tables = {t["tensorrt"]: t for t in _tables().values()}
    assert {"8.5", "8.6", "10.3", "10.16"} <= set(tables) and any(v.startswith("11.") for v in tables)
    for table in tables.values():
        src = table["source"]
        assert src["repository"] == "NVIDIA/TensorRT" and src["file"] == "samples/common/sampleOptions.cpp"
        assert len(src["commit"]) == 40 and src["ref"]
        assert table["options"] == sorted(set(table["options"])) and "--onnx" in table["options"]
        assert table["strongly_typed_only"] is table["tensorrt"].startswith("11.")
    opts = {v: set(t["options"]) for v, t in tables.items()}
    assert "--buildOnly" in opts["8.5"] and "--skipInference" not in opts["8.5"]  # review #1
    assert {"--buildOnly", "--skipInference"} <= opts["8.6"]
    assert "--buildOnly" not in opts["10.3"] and "--skipInference" in opts["10.3"]
    assert "--stronglyTyped" not in opts["8.5"] | opts["8.6"] and "--stronglyTyped" in opts["10.3"]  # review #8
    for v in (v for v in opts if v.startswith("11.")):
        assert not opts[v] & set(STRONGLY_TYPED_ONLY_GONE), v
    for v, o in opts.items():  # what every build line may use
        assert {"--memPoolSize", "--saveEngine", "--timingCacheFile", "--useDLACore", "--allowGPUFallback"} <= o, v
        assert {"--exportLayerInfo", "--profilingVerbosity"} <= o, v


@pytest.mark.parametrize(
    ("version", "table"),
    [("8.5", "8.5"), ("8.5.2.2", "8.5"), ("8.6", "8.6"), ("9.2", "8.6"), ("10.3", "10.3"), ("10.7", "10.3")]
    + [("10.16.1", "10.16"), ("11.0", "11.0"), ("11.4.1", "11.1"), (None, "10.16")],
)
def test_a_version_between_tables_takes_the_nearest_lower_one(version, table):
    assert trtexec_table(version)["tensorrt"] == table


def test_a_version_older_than_every_table_is_refused():
    with pytest.raises(ConfigError, match=r"TensorRT 8\.4: tables exist for 8\.5, 8\.6, 10\.3"):
        trtexec_table("8.4")
    with pytest.raises(ConfigError, match="'ten' is not of the form"):
        trtexec_table("ten")


def test_every_profile_and_precision_gives_a_command_its_trtexec_parses():
    """Every device profile, every precision, typing and float remainder: each trtexec line uses only options of the
    profile's trtexec (the table of its TensorRT version), or the settings are refused with the reason."""
    checked = 0
    for name in _tensorrt_profiles():
        dev = load_config(None, device=name).device
        version, m = dev.trt_version, int(str(dev.trt_version or "10").split(".")[0])
        known = _options_for(version)
        for precision in PRECISIONS:
            for typing in ("auto", "on", "off"):
                for remainder in (None, "fp32", "fp16") if precision == "int8" else (None,):
                    for fallback in (True, False):
                        kwargs = {"dla_core": dev.dla_core, "strongly_typed": typing, "remainder": remainder}
                        kwargs |= {"gpu_fallback": fallback, "timing_cache": "t.cache", "fp32_layers": ("a", "b:c")}
                        if (typing == "on" and m < 9) or (typing == "off" and m >= 11):
                            with pytest.raises(ConfigError, match=f"build.strongly_typed='{typing}'"):
                                device_settings(precision, version, **kwargs)
                            continue
                        settings = device_settings(precision, version, **kwargs)
                        cmd = trtexec_command("m.onnx", "m.engine", settings, version)
                        unknown = [a for a in cmd[1:] if a.split("=", 1)[0] not in known]
                        assert not unknown, (name, precision, typing, remainder, cmd)
                        flags = [a.split("=", 1)[0] for a in cmd]
                        assert flags.count("--skipInference") + flags.count("--buildOnly") == 1, cmd
                        if m >= 11:  # strongly typed only: no precision flags at all
                            assert not set(flags) & {*STRONGLY_TYPED_ONLY_GONE, "--stronglyTyped"}, cmd
                        if m < 9:
                            assert "--stronglyTyped" not in flags, cmd
                        if precision == "int8" or settings.dla_core is None:
                            assert "--useDLACore" not in flags, cmd  # DLA does not run explicit Q/DQ INT8
                        checked += 1
    assert checked > 50


def test_typing_a_version_lacks_is_refused_with_the_valid_values():
    with pytest.raises(ConfigError, match=r"TensorRT 8\.5 has no strongly typed.*valid here: 'auto', 'off'"):
        trtexec_command("m.onnx", "m.engine", BuildSettings("fp16", strongly_typed=True), "8.5")
    with pytest.raises(ConfigError, match=r"TensorRT 11\.4\.1 builds strongly typed networks only.*'auto', 'on'"):
        trtexec_command("m.onnx", "m.engine", BuildSettings("int8", strongly_typed=False), "11.4.1")
    with pytest.raises(ConfigError, match="'maybe' is not one of auto, on, off"):
        device_settings("int8", "10.3", strongly_typed="maybe")
    # TensorRT 11: strongly typed, no --stronglyTyped (a deprecated no-op there), no precision flags
    cmd = trtexec_command("m.onnx", "m.engine", device_settings("int8", "11.4.1", remainder="fp32"), "11.4.1")
    assert cmd[-1] == "--skipInference" and not {"--stronglyTyped", "--int8", "--fp16"} & set(cmd)


def test_layer_names_trtexec_cannot_split_are_quoted_or_left_out(caplog):
    settings = BuildSettings("fp16", strongly_typed=False, fp32_layers=["a/b.c", "x:y", "p,q", "it's"])
    assert settings.fp32_layers == ("a/b.c", "x:y", "p,q", "it's")
    with caplog.at_level(logging.WARNING, logger="runtimes.tensorrt_commands"):
        cmd = trtexec_command("m.onnx", "m.engine", settings, "8.5")
    assert "--layerPrecisions=a/b.c:fp32,'x:y':fp32" in cmd and "cannot name 2 FP32 layers" in caplog.text
    with pytest.raises(ConfigError, match="not the string"):
        BuildSettings("fp16", fp32_layers="abc")


# ---- DLA on AGX Orin (review #4) ----------------------------------------------------------------------------------


def test_only_the_fp16_engine_goes_to_dla_and_reports_its_layers():
    int8 = device_settings("int8", "10.3", dla_core=0, remainder="fp16")
    assert int8.dla_core is None and int8.strongly_typed  # Q/DQ INT8 on the GPU: strongly typed there
    fp16 = device_settings("fp16", "10.3", dla_core=0, gpu_fallback=False, fp32_layers=("n",))
    assert fp16.dla_core == 0 and not fp16.strongly_typed and fp16.fp32_layers == ("n",)
    cmd = trtexec_command("models/m.onnx", "engines/m.engine", fp16, "10.3")
    assert {"--fp16", "--useDLACore=0", "--profilingVerbosity=detailed"} <= set(cmd)
    assert "--exportLayerInfo=engines/m.engine.layers.json" in cmd and "--allowGPUFallback" not in cmd
    assert "--useDLACore" not in " ".join(trtexec_command("m.onnx", "m.engine", int8, "10.3"))
    # TensorRT 11.4.1 (JetPack 7.2.2+, AGX Orin) has DLA again, strongly typed: no --fp16
    cmd = trtexec_command("m.onnx", "m.engine", device_settings("fp16", "11.4.1", dla_core=0), "11.4.1")
    assert "--useDLACore=0" in cmd and "--fp16" not in cmd and not unknown_trtexec_options(cmd, "11.4.1")
    with pytest.raises(ConfigError, match=r"TensorRT 10\.16 has no DLA.*device\.dla_core to null"):
        device_settings("fp16", "10.16", dla_core=0)
