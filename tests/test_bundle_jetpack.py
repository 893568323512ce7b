"""The bundle's JetPack specifics: what to install per JetPack (the bundle README, the project README, the ``trt``
extra) and how ``benchmark.py`` finds the maximum power mode of each Jetson.

Usage: ``python -m pytest tests/test_bundle_jetpack.py -q``.
"""

from __future__ import annotations

import importlib.util
import shutil
import sys
from pathlib import Path
from typing import Any

import pytest
import tomllib

from pipeline.bundle import SCRIPTS_DIR
from pipeline.config import load_config
from pipeline.jetpack import JETPACKS, for_jetpack, install_section, write_bundle_readme

ROOT = Path(__file__).resolve().parent.parent


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
