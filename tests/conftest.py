"""Session fixtures shared by several test modules: the tiny pipeline run (data, checkpoint, export, calibrate,
quantize) is built once and reused."""

from __future__ import annotations

import json
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
