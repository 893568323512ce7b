"""Fixtures shared by several test modules: the tiny pipeline run (data, checkpoint, export, calibrate, quantize) is
built once and reused; the data tests' SynRef and refcoco (tests/data_sets.py) and the reliability tests' toy model
(tests/reliability_inputs.py) are built per module or per test."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest


@pytest.fixture(scope="session")
def quantized(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """The shared tiny run after the quantize stage (see tests/test_export.py for the run itself)."""
    from pipeline.stages.quantize import run_quantize

    try:
        from tests.test_export import build_tiny_run, make_ctx
    except ImportError:  # pytest's rootdir-relative import mode
        from test_export import build_tiny_run, make_ctx

    run = build_tiny_run(tmp_path_factory.getbasetemp() / "tiny_pipeline")
    marker = run["root"] / "quantize_figures.json"
    if marker.is_file():
        return {**run, "quantize": json.loads(marker.read_text())}
    figures = run_quantize(make_ctx(run["cfg"], "quantize", run["root"], ("data", "export", "calibrate")))
    marker.write_text(json.dumps(figures, default=str))
    return {**run, "quantize": figures}


@pytest.fixture(scope="module")
def one_torch_thread():
    """One intra-op thread: on a CPU shared with other jobs, two spinning OpenMP threads ran model tests ~10x slower."""
    import torch

    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="module")
def synref_root(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A small generated SynRef (12 images per split) under a fresh folder."""
    from pipeline.data.synref import generate_synref
    from tests.data_sets import SMALL, data_cfg

    root = tmp_path_factory.mktemp("synref")
    generate_synref(root, data_cfg(SMALL))
    return root


@pytest.fixture(scope="module")
def synref(synref_root: Path):
    """:func:`synref_root` read back through the REFER loader."""
    from pipeline.data.refer import load_refer

    return load_refer(synref_root, "synref")


@pytest.fixture
def refcoco_root(tmp_path: Path) -> Path:
    """A tiny hand-made refcoco in the REFER layout (tests/data_sets.py ``write_refcoco``)."""
    from tests.data_sets import write_refcoco

    return write_refcoco(tmp_path / "refer")


@pytest.fixture(scope="module")
def toy(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """The reliability tests' toy model as ONNX and as OpenVINO IR (tests/reliability_inputs.py)."""
    from tests.reliability_inputs import toy_artifacts

    return toy_artifacts(tmp_path_factory.mktemp("toy"))


@pytest.fixture(scope="module", autouse=True)
def _reliability_log(request: pytest.FixtureRequest) -> Iterator[None]:
    """After each ``test_reliability_*`` module: append its outcome rows to the reliability log (when asked)."""
    yield
    if request.module.__name__.rsplit(".", 1)[-1].startswith("test_reliability_"):
        from tests.reliability_log import write_log

        write_log()
