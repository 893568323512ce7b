"""The artifact-format table (runtimes/formats.py) and what is derived from it: the bundle plan, the runtime registry,
the CLI's runtime by suffix, the config's backend choices and the report rows."""

from __future__ import annotations

from pathlib import Path

import pytest

from benchmarks.artifacts import find_artifacts
from pipeline.stages.bundle import plan_from_folders
from runtimes.base import RUNTIMES
from runtimes.formats import (
    BACKENDS,
    DEVICE_BACKENDS,
    FORMATS,
    MASK_OUTPUT,
    REFERENCE,
    SPLIT_GRAPHS,
    bundle_formats,
    reported_formats,
    runtime_for_file,
)

E, Q = Path("export"), Path("quantize")
# The bundle plans as they were written out by hand per backend before the table existed: the table must give them.
HAND_WRITTEN_PLANS = {
    "tensorrt": {
        "int8": {
            "onnx": Q / "full_int8_qdq.onnx",
            "reference": {"onnx": ("onnxruntime", Q / "full_int8_qdq.onnx")},
            "engine": "engines/full_int8.engine",
        },
        "fp16": {
            "onnx": E / "full_fp16.onnx",
            "reference": {"onnx": ("onnxruntime", E / "full.onnx")},
            "engine": "engines/full_fp16.engine",
        },
    },
    "openvino": {
        "int8": {
            "openvino": Q / "full_int8.xml",
            "onnx": Q / "full_int8_qdq.onnx",
            "reference": {
                "openvino": ("openvino", Q / "full_int8.xml"),
                "onnx": ("onnxruntime", Q / "full_int8_qdq.onnx"),
            },
        },
        "fp32": {
            "openvino": E / "full.xml",
            "onnx": E / "full.onnx",
            "reference": {"openvino": ("openvino", E / "full.xml"), "onnx": ("onnxruntime", E / "full.onnx")},
        },
    },
    "onnxruntime": {
        "int8": {"onnx": Q / "full_int8_qdq.onnx", "reference": {"onnx": ("onnxruntime", Q / "full_int8_qdq.onnx")}},
        "fp32": {"onnx": E / "full.onnx", "reference": {"onnx": ("onnxruntime", E / "full.onnx")}},
    },
}


@pytest.mark.parametrize("backend", sorted(HAND_WRITTEN_PLANS))
def test_bundle_plan_of_each_backend_comes_from_the_table(backend: str) -> None:
    plan = plan_from_folders(backend, {"export": E, "quantize": Q})
    assert plan == HAND_WRITTEN_PLANS[backend]
    assert list(plan) == list(HAND_WRITTEN_PLANS[backend])  # INT8 first: the bundle's default precision
    for precision, entry in plan.items():  # the backend's own format first within an entry
        keys = [k for k in entry if k not in ("reference", "engine")]
        assert keys == [k for k in HAND_WRITTEN_PLANS[backend][precision] if k not in ("reference", "engine")]


def test_every_backend_is_in_the_registry_the_suffix_map_and_the_config_choices() -> None:
    from pipeline.config import load_config

    assert set(RUNTIMES) == {b.name for b in BACKENDS}
    assert runtime_for_file(Path("a/model.XML")) == "openvino"
    assert runtime_for_file(Path("m.plan")) == runtime_for_file(Path("m.engine")) == "tensorrt"
    assert runtime_for_file(Path("m.safetensors")) == "torch"
    assert runtime_for_file(Path("m.tflite")) is None
    for backend in DEVICE_BACKENDS:
        assert load_config(None, [f"device.backend={backend}"]).device.backend == backend
    from foundation.errors import ConfigError

    with pytest.raises(ConfigError, match="torch"):  # not a device backend: the message lists the ones that are
        load_config(None, ["device.backend=torch"])


def test_every_format_names_a_backend_and_its_references_exist() -> None:
    names = {b.name for b in BACKENDS}
    for fmt in FORMATS.values():
        assert fmt.runtime in names, fmt
        assert fmt.size_reference in (None, *FORMATS), fmt
        for backend, role in fmt.bundle:
            assert backend in DEVICE_BACKENDS and (role.reference in (None, *FORMATS)), fmt
    assert FORMATS[REFERENCE].runtime == "torch"
    with pytest.raises(ValueError, match="torch"):
        bundle_formats("torch")


def test_report_rows_follow_the_table(tmp_path: Path) -> None:
    rows = find_artifacts({"train": tmp_path, "export": tmp_path, "quantize": tmp_path})
    table = [f for f in reported_formats() if f.precision != "device" and not f.optional]  # QAT: only when made
    assert [r.name for r in rows[: len(table)]] == [f.name for f in table]
    assert rows[-1].name == "tensorrt-int8" and rows[-1].runtime == "tensorrt"
    assert {r.name for r in rows if r.gated} == {"onnxruntime-int8", "openvino-int8", "tensorrt-int8"}
    assert all(r.status and r.status.startswith("unavailable") for r in rows)  # nothing was produced in tmp_path
    assert "onnx-fp16" not in {r.name for r in rows}  # an engine source, not a row


def test_graph_names_agree_with_the_model() -> None:
    from model import create_model, graph_specs

    graphs = graph_specs(create_model("tiny", text_head=True))
    assert tuple(graphs) == ("full", *SPLIT_GRAPHS)
    assert graphs["full"].output_names == (MASK_OUTPUT,)


def test_readme_shows_the_format_table() -> None:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    for fmt in FORMATS.values():
        bundles = ", ".join(
            f"{b} ({r.precision} {r.key}{', engine' if r.engine else ''})" for b, r in fmt.bundle
        ) or "–"  # fmt: skip
        row = (
            f"| `{fmt.name}` | `{fmt.file}` ({fmt.stage}) | {fmt.runtime} | {fmt.precision} | "
            f"{'yes' if fmt.gated else 'no'} | {bundles} |"
        )
        assert row in readme, row
