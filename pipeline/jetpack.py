"""What a Jetson needs besides JetPack to run the deploy bundle: its Python, and pip pins per JetPack release.

Usage: ``from pipeline.jetpack import for_jetpack; print(for_jetpack("5.1").pip_line())``.

One table serves the bundle's README (the install lines for the profile's JetPack, written by the bundle stage) and
``tools/robot_venvs.py`` (the venvs in which the tests run the unpacked bundle under the robot's Python), so what the
README tells a user to install is what the tests ran. Standard library only: the venv tool runs it with a bare python3.

Why these pins (checked with ``pip download --platform manylinux2014_aarch64 --python-version X``, December 2026):

- **cuda-python** must match the CUDA driver of the JetPack. Unpinned, pip gives 13.4.x on Python 3.10 (CUDA 13; needs
  an R580+ driver, which no JetPack 6 has) and 12.3.0 on Python 3.8 (CUDA 12; JetPack 5 has CUDA 11.4). 11.8.2 is the
  newest 11.x with a cp38 aarch64 wheel (11.8.3-11.8.5 have none, and 11.8.6+ are wrappers over ``cuda-bindings``,
  which has no cp38 wheels); like every cuda-python before 12.8 its runtime calls go through the driver API (no
  libcudart). 12.2.1 and 12.6.2.post1 are real cp310 aarch64 wheels; a ``12.6.*`` pin would also do, a ``12.*`` one
  would pull 12.9 wrappers. 13.x only where the driver is CUDA 13 (JetPack 7).
- **numpy**: JetPack 5's TensorRT 8.5.2 Python package calls ``np.bool`` in ``trt.nptype``, which numpy 1.24 removed
  (ultralytics/ultralytics#22930; Ultralytics pins 1.23.5 on JetPack 5). JetPack 6's NVIDIA-built wheels (the Jetson
  ``onnxruntime-gpu`` index, jetson-containers on CUDA 12.6) are built against numpy 1.x
  (microsoft/onnxruntime#27562, dusty-nv/jetson-containers#1537): numpy 1.26.4 there.
- **Pillow, tokenizers, onnxruntime**: the newest releases with wheels for the JetPack's Python on aarch64
  (tokenizers 0.20.3 is the last for Python 3.8). onnxruntime is only for ``--backend onnxruntime`` (a CPU check of
  the bundle without TensorRT); on Python 3.8 it is 1.18.1, not the last 1.19.2, whose CPU Clip on FP16 with one bound
  sets the other to 0 (microsoft/onnxruntime#21957): the FP16 model's text pooling divided by 0 there. The export now
  gives that Clip both bounds (model/encoders.py), which bundles made before it lack; 1.18.1 stays the tested pin.
"""

from __future__ import annotations

import textwrap
from dataclasses import dataclass
from pathlib import Path

# TensorRT's Python bindings are a JetPack package, not a pip one (`pip install tensorrt` gives a desktop build).
APT_PACKAGES = ("python3-pip", "python3-venv", "python3-libnvinfer")


@dataclass(frozen=True)
class JetPackPython:
    """The Python side of one JetPack line: interpreter, CUDA/TensorRT it ships, and the pip pins for the bundle."""

    name: str  # "JetPack 6.1 / 6.2"
    releases: tuple[str, ...]  # version prefixes that select this entry: "6.1" matches "6.1" and "6.1.1"
    l4t: str
    ubuntu: str
    python: str  # the system python3's major.minor
    cuda: str
    tensorrt: str
    packages: tuple[str, ...]  # numpy, Pillow, tokenizers: what every backend needs
    cuda_python: str  # the TensorRT backend's CUDA memory
    onnxruntime: str  # optional: verify.py --backend onnxruntime on the robot's CPU
    tested: bool  # the bundle's scripts run under this Python with these pins in tests/test_bundle_pythons.py
    notes: tuple[str, ...] = ()
    pip_setup: str = ""  # a command to run before the pip line (an old system pip, a venv)
    pip_user: bool = True  # `pip install --user` (False inside the venv that pip_setup makes)

    def pip_install(self, *requirements: str) -> str:
        return "python3 -m pip install " + ("--user " if self.pip_user else "") + " ".join(requirements)

    def pip_line(self) -> str:
        return self.pip_install(*self.packages, self.cuda_python)

    def test_requirements(self) -> list[str]:
        """What the CPU test venv installs: the packages and onnxruntime (no cuda-python: no GPU in the tests)."""
        return [*self.packages, self.onnxruntime]


JETPACKS: tuple[JetPackPython, ...] = (
    JetPackPython(
        name="JetPack 5.1.x",
        releases=("5.1",),
        l4t="R35",
        ubuntu="20.04",
        python="3.8",
        cuda="11.4",
        tensorrt="8.5.2",
        packages=("numpy==1.23.5", "pillow==10.4.0", "tokenizers==0.20.3"),
        cuda_python="cuda-python==11.8.2",
        onnxruntime="onnxruntime==1.18.1",
        tested=True,
        pip_setup='python3 -m pip install --user --upgrade "pip>=21"   # Ubuntu 20.04\'s pip 20.0 skips manylinux_2_28',
        notes=(
            "numpy 1.23.5, not 1.24: JetPack 5's TensorRT 8.5.2 `trt.nptype` uses `np.bool`, removed in numpy 1.24.",
            "cuda-python 11.8.2: the newest CUDA 11 build with a Python 3.8 aarch64 wheel; unpinned, pip picks 12.3 "
            "(CUDA 12) and JetPack 5's driver is CUDA 11.4.",
            "onnxruntime 1.18.1, not 1.19.x (the last for Python 3.8): 1.19's CPU Clip on FP16 sets a missing min or "
            "max to 0 (microsoft/onnxruntime#21957), which turned the FP16 model's logits into inf/NaN in bundles "
            "exported before the pooling's Clip got both bounds; 1.18.1 is the version tested.",
        ),
    ),
    JetPackPython(
        name="JetPack 6.0",
        releases=("6.0",),
        l4t="R36.2 / R36.3",
        ubuntu="22.04",
        python="3.10",
        cuda="12.2",
        tensorrt="8.6.2",
        packages=("numpy==1.26.4", "pillow==12.3.0", "tokenizers==0.23.3"),
        cuda_python="cuda-python==12.2.1",
        onnxruntime="onnxruntime==1.23.2",
        tested=True,
        notes=(
            "cuda-python 12.2.1 matches the CUDA 12.2 driver; unpinned, pip picks 13.x, which needs a CUDA 13 (R580+) "
            "driver and fails with cudaErrorInsufficientDriver.",
            "numpy < 2: NVIDIA's JetPack 6 Python wheels are built against numpy 1.x.",
        ),
    ),
    JetPackPython(
        name="JetPack 6.1 / 6.2",
        releases=("6.1", "6.2"),
        l4t="R36.4 / R36.5",
        ubuntu="22.04",
        python="3.10",
        cuda="12.6",
        tensorrt="10.3",
        packages=("numpy==1.26.4", "pillow==12.3.0", "tokenizers==0.23.3"),
        cuda_python="cuda-python==12.6.2.post1",
        onnxruntime="onnxruntime==1.23.2",
        tested=True,
        notes=(
            "cuda-python 12.6.2.post1 matches the CUDA 12.6 driver; unpinned, pip picks 13.x, which needs a CUDA 13 "
            "(R580+) driver and fails with cudaErrorInsufficientDriver.",
            "numpy < 2: NVIDIA's JetPack 6 Python wheels are built against numpy 1.x.",
        ),
    ),
    JetPackPython(
        name="JetPack 7.0 / 7.1",
        releases=("7.0", "7.1"),
        l4t="R38",
        ubuntu="24.04",
        python="3.12",
        cuda="13.0",
        tensorrt="10.13",
        packages=("numpy==2.5.5", "pillow==13.0.0", "tokenizers==0.23.3"),
        cuda_python="cuda-python==13.0.3",
        onnxruntime="onnxruntime==1.32.0",
        tested=False,
        pip_setup=(
            "python3 -m venv --system-site-packages ~/bundle-venv && . ~/bundle-venv/bin/activate"
            "   # 24.04: no pip --user"
        ),
        pip_user=False,
        notes=("Jetson Thor only. Pins are pip's newest for Python 3.12.",),
    ),
    JetPackPython(
        name="JetPack 7.2",
        releases=("7.2",),
        l4t="R39.2",
        ubuntu="24.04",
        python="3.12",
        cuda="13.2",
        tensorrt="10.16 (11.4.1 from 7.2.2 on AGX Orin / Thor)",
        packages=("numpy==2.5.5", "pillow==13.0.0", "tokenizers==0.23.3"),
        cuda_python="cuda-python==13.2.0",
        onnxruntime="onnxruntime==1.32.0",
        tested=False,
        pip_setup=(
            "python3 -m venv --system-site-packages ~/bundle-venv && . ~/bundle-venv/bin/activate"
            "   # 24.04: no pip --user"
        ),
        pip_user=False,
        notes=("Pins are pip's newest for Python 3.12.",),
    ),
)


def for_jetpack(version: str | None) -> JetPackPython | None:
    """The table entry of a JetPack release (``"5.1"``, ``"6.2.1"``), None when the version is None or not listed."""
    if not version:
        return None
    parts = str(version).split(".")
    for entry in JETPACKS:
        for release in entry.releases:
            if parts[: len(release.split("."))] == release.split("."):
                return entry
    return None


def _wrap(text: str, bullet: bool = False) -> str:
    """Markdown prose at the project's 120 columns (a list item indented under its dash)."""
    return textwrap.fill(text, 120, initial_indent="- " if bullet else "", subsequent_indent="  " if bullet else "")


def install_section(version: str | None, backend: str = "tensorrt") -> str:
    """Markdown install steps for the bundle's README: that JetPack's lines, else a table of every listed one (a
    bundle for a CPU backend gets the pip line of that backend)."""
    if backend != "tensorrt":
        return _wrap(
            f"A bundle for the {backend} backend on a CPU host: `python3 -m pip install numpy pillow tokenizers "
            "onnxruntime openvino`. What a Jetson needs per JetPack is in the project README."
        )
    entry = for_jetpack(version)
    if entry is None:
        shown = f"JetPack {version} is not in the table below" if version else "This bundle names no JetPack release"
        rows = "\n".join(
            f"| {e.name} | {e.python} | {e.cuda} | {e.tensorrt} | `{' '.join((*e.packages, e.cuda_python))}` |"
            for e in JETPACKS
        )
        return (
            _wrap(f"{shown}; pick your release's row (`cat /etc/nv_tegra_release` gives the L4T release).")
            + "\n\n| JetPack | Python | CUDA | TensorRT | `python3 -m pip install` |\n|---|---|---|---|---|\n"
            + f"{rows}\n\n"
            + _wrap(f"TensorRT's Python bindings come with JetPack: `sudo apt install {' '.join(APT_PACKAGES)}`.")
        )
    tested = (
        f"The tests ran these scripts under Python {entry.python} with these numpy, Pillow and tokenizers pins and "
        f"{entry.onnxruntime} (on a CPU: cuda-python is not run there)."
        if entry.tested
        else "These pins were not run by the project's tests."
    )
    commands = [
        f"sudo apt install {' '.join(APT_PACKAGES)}   # TensorRT's bindings: from JetPack, not pip",
        *([entry.pip_setup] if entry.pip_setup else []),
        entry.pip_line(),
        f"{entry.pip_install(entry.onnxruntime)}   # optional: verify.py --backend onnxruntime (CPU)",
    ]
    head = (
        f"This bundle targets **{entry.name}** (L4T {entry.l4t}, Ubuntu {entry.ubuntu}, Python {entry.python}, "
        f"CUDA {entry.cuda}, TensorRT {entry.tensorrt}). Install exactly:"
    )
    venv = "A virtual environment needs `--system-site-packages` so that JetPack's `tensorrt` stays visible. "
    notes = "\n".join(_wrap(note, bullet=True) for note in entry.notes)
    return "\n\n".join([_wrap(head), "```bash\n" + "\n".join(commands) + "\n```", _wrap(venv + tested), notes])


README_MARKER = "<!-- install: written by the bundle stage from the profile's JetPack (pipeline/jetpack.py) -->"


def write_bundle_readme(path: Path, version: str | None, backend: str = "tensorrt") -> None:
    """Put the install steps of a JetPack release into a bundle's README (a copy of runtimes/bundle_files/README.md).

    Raises:
        ValueError: the README has no :data:`README_MARKER` line to replace.
    """
    text = path.read_text()
    if README_MARKER not in text:
        raise ValueError(f"{path} has no install marker line {README_MARKER!r}; is it the bundle README template?")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text.replace(README_MARKER, install_section(version, backend)))
    tmp.replace(path)
