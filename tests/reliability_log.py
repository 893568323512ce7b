"""The reliability tests' log: each case records the input it tried and the outcome, the source of the table in
docs/reliability.md.

Every case runs the real component (Pillow, the MiniLM tokenizer, ONNX Runtime, OpenVINO, the stage runner in a
subprocess killed with SIGKILL, the deploy bundle's own scripts) and checks that the input is either handled or
refused with the project's own error, naming the input. The models are a hand-written ONNX graph with the pipeline's
self-description (no export needed; tests/reliability_inputs.py) and, for checkpoints, the ``tiny`` variant.

Usage: ``pytest tests/test_reliability_*.py``; with ``S2RM_RELIABILITY_LOG=<file>`` every case also appends
``{"area", "input", "outcome"}`` to that JSON-lines file: each test module writes its rows when it finishes.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from typing import Any

import pytest

LOG: list[dict[str, str]] = []


def record(area: str, tried: str, outcome: str) -> None:
    """Remember one "input tried -> outcome" row (written out when S2RM_RELIABILITY_LOG is set)."""
    LOG.append({"area": area, "input": tried, "outcome": " ".join(str(outcome).split())})


def write_log() -> None:
    """Append the rows recorded so far to ``$S2RM_RELIABILITY_LOG`` (when set) and forget them."""
    target = os.environ.get("S2RM_RELIABILITY_LOG")
    if target:
        with open(target, "a") as fh:
            fh.writelines(json.dumps(row) + "\n" for row in LOG)
    LOG.clear()


def refused(area: str, tried: str, error: type[Exception], fn: Callable[[], Any], *names: str) -> str:
    """Run ``fn``, expect ``error`` whose message names every string in ``names``; record and return the message."""
    with pytest.raises(error) as info:
        fn()
    message = str(info.value)
    for name in names:
        assert name in message, f"{tried}: {name!r} not in {message!r}"
    record(area, tried, f"{type(info.value).__name__}: {message}")
    return message
