"""Export on the tiny variant: ONNX FP32 / FP16, OpenVINO IR, metadata, parity, runtimes, calibration hygiene.

Usage: ``pytest tests/test_export.py`` (the tiny pipeline is built once per session and shared with test_quantize).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from foundation.errors import ArtifactError, ConfigError, DataError
from pipeline.config import Config, load_config
from pipeline.stage import StageContext

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning", "ignore::FutureWarning")

TINY = [
    "model.variant=tiny",
    "model.max_tokens=12",
    "data.synref.images={train: 6, val: 3, testA: 2, testB: 2}",
    "data.synref.min_side=96",
    "data.synref.max_side=128",
    "export.split_graphs=false",
    "export.parity_samples=3",
    "calibrate.samples=12",
    "quant.eval_samples=6",
    "quant.latency_runs=3",
    "quant.max_fallback_steps=1",
    "device.threads=1",
]


def make_ctx(cfg: Config, name: str, root: Path, upstream: tuple[str, ...]) -> StageContext:
    """A stage context over ``root/<stage>`` folders, as the runner would give once the upstream stages are done."""
    out = root / name
    out.mkdir(parents=True, exist_ok=True)
    return StageContext(name, cfg, out, root, {u: root / u for u in upstream}, logging.getLogger(f"test.{name}"))


def build_tiny_run(root: Path, overrides: list[str] | None = None) -> dict[str, Any]:
    """Data + an untrained tiny checkpoint + the export and calibrate stages, once (idempotent through a marker)."""
    from model import create_model
    from model.weights import save_checkpoint
    from pipeline.data.synref import generate_synref
    from pipeline.stages.calibrate import run_calibrate
    from pipeline.stages.export import run_export

    cfg = load_config(None, [f"run.root={root}", "run.name=tiny", *TINY, *(overrides or [])])
    marker = root / "figures.json"
    if marker.is_file():
        return {"cfg": cfg, "root": root, **json.loads(marker.read_text())}
    generate_synref(root / "data", cfg.data)
    import torch

    torch.manual_seed(0)  # the same untrained model in every run, whatever the tests before it drew
    model = create_model("tiny", max_tokens=cfg.model.max_tokens)
    save_checkpoint(model, root / "train" / "best")
    figures = {
        "export": run_export(make_ctx(cfg, "export", root, ("data", "train"))),
        "calibrate": run_calibrate(make_ctx(cfg, "calibrate", root, ("data",))),
    }
    marker.write_text(json.dumps(figures, default=str))
    return {"cfg": cfg, "root": root, **figures}


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    return build_tiny_run(tmp_path_factory.getbasetemp() / "tiny_pipeline")


def test_export_writes_described_artifacts_matching_pytorch(tiny_run):
    out = tiny_run["root"] / "export"
    figs = tiny_run["export"]
    for name in ("full.onnx", "full.xml", "full.bin", "full_fp16.onnx", "tokenizer/tokenizer.json"):
        assert (out / name).is_file(), name
    arts = figs["artifacts"]
    assert arts["full.onnx"]["parity_max_abs"] <= 1e-4
    assert arts["full.xml"]["parity_max_abs"] <= 1e-4
    assert arts["full.onnx"]["exporter"] == "dynamo" and arts["full.onnx"]["opset"] >= 18
    assert figs["parity_samples"] == 3
    assert arts["full_fp16.onnx"]["size_mb"] < arts["full.onnx"]["size_mb"]

    from runtimes.export import read_onnx_metadata

    meta = read_onnx_metadata(out / "full.onnx")
    assert meta["inputs"]["input_ids"] == {"shape": [1, 12], "dtype": "int32"}
    assert meta["inputs"]["image"]["shape"] == [1, 3, 64, 64]
    assert meta["outputs"]["mask_logits"]["shape"] == [1, 1, 16, 16]
    for key in ("image_mean", "image_std", "tokenizer", "max_tokens", "threshold", "variant", "spec", "config_hash"):
        assert key in meta, key
    assert meta["variant"] == "tiny" and meta["graph"] == "full"
    assert figs["trt_compat"]["full.onnx"]["ok"]  # default profile: the newest TensorRT list


def test_runtimes_share_the_contract_and_cast_int64_tokens(tiny_run):
    from runtimes import get_runtime
    from runtimes.base import RUNTIMES

    out = tiny_run["root"] / "export"
    ort = get_runtime("onnxruntime").load(out / "full.onnx", threads=1)
    ov = get_runtime("openvino").load(out / "full.xml", threads=1)
    assert list(ort.inputs) == list(ov.inputs) == ["image", "input_ids", "attention_mask"]
    assert ov.metadata["precision"] == "fp32" and ov.metadata["format"] == "openvino"
    rng = np.random.default_rng(0)
    feeds = {
        "image": rng.standard_normal((1, 3, 64, 64)).astype(np.float32),
        "input_ids": rng.integers(100, 2000, (1, 12)).astype(np.int64),  # the tokenizer's dtype: cast inside
        "attention_mask": np.array([[1] * 6 + [0] * 6], np.int64),
    }
    a, b = ort.infer(feeds)["mask_logits"], ov.infer(feeds)["mask_logits"]
    assert a.shape == (1, 1, 16, 16) and float(np.abs(a - b).max()) < 1e-4
    with pytest.raises(ArtifactError, match=r"input 'image'.*\[1, 3, 64, 64\]"):
        ort.infer({**feeds, "image": feeds["image"][:, :, :32]})
    with pytest.raises(ArtifactError, match="missing"):
        ort.infer({"image": feeds["image"]})
    with pytest.raises(ConfigError, match=r"unknown runtime 'onnxruntim'.*did you mean 'onnxruntime'"):
        get_runtime("onnxruntim")
    assert {"onnxruntime", "openvino", "torch", "tensorrt"} <= set(RUNTIMES)


def test_runtime_modules_do_not_import_torch():
    import subprocess
    import sys

    code = (
        "import sys; import runtimes.onnxruntime_rt, runtimes.openvino_rt, runtimes.base, runtimes.tensorrt_build; "
        "bad = [m for m in ('torch', 'timm') if m in sys.modules]; print(bad); sys.exit(1 if bad else 0)"
    )
    done = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=Path(__file__).parent.parent
    )
    assert done.returncode == 0, done.stdout + done.stderr


@pytest.mark.slow
def test_legacy_opset17_export_for_tensorrt85_has_no_layernorm(tmp_path):
    """The JetPack 5 profile: TorchScript exporter at opset 17, LayerNorm decomposed, TensorRT 8.5 check passes."""
    import onnx

    from model import create_model, graph_specs
    from quantize.trt_compat import check_trt_compat, decompose_layernorm
    from runtimes import get_runtime
    from runtimes.export import export_onnx

    model = create_model("tiny").eval()
    g = graph_specs(model)["full"]
    inputs = dict(zip(g.input_names, g.example_inputs(), strict=True))
    path = export_onnx(g.module, inputs, g.output_names, tmp_path / "m17.onnx", opset=17, metadata={"graph": "full"})
    assert not check_trt_compat(path, "8.5").ok  # LayerNormalization has no 8.5 importer
    proto, count = decompose_layernorm(onnx.load(str(path)))
    assert count > 0 and all(n.op_type != "LayerNormalization" for n in proto.graph.node)
    onnx.save(proto, str(tmp_path / "m17_dec.onnx"))
    report = check_trt_compat(tmp_path / "m17_dec.onnx", "8.5")
    assert report.ok, report.summary()
    feeds = {k: v.numpy() for k, v in inputs.items()}
    a = get_runtime("onnxruntime").load(path).infer(feeds)["mask_logits"]
    b = get_runtime("onnxruntime").load(tmp_path / "m17_dec.onnx").infer(feeds)["mask_logits"]
    assert float(np.abs(a - b).max()) < 1e-4
    meta = get_runtime("onnxruntime").load(path).metadata
    assert meta["opset"] == 17 and meta["exporter"] == "torchscript"


def test_fp16_onnx_keeps_overflow_prone_ops_in_fp32(tiny_run):
    import onnx

    model = onnx.load(str(tiny_run["root"] / "export" / "full_fp16.onnx"))
    types = {v.name: v.type.tensor_type.elem_type for v in onnx.shape_inference.infer_shapes(model).graph.value_info}
    kept = [n for n in model.graph.node if n.op_type in ("LayerNormalization", "Softmax")]
    assert kept
    for node in kept:
        assert types.get(node.output[0], onnx.TensorProto.FLOAT) == onnx.TensorProto.FLOAT, node.name
    assert any(t.data_type == onnx.TensorProto.FLOAT16 for t in model.graph.initializer)
    assert model.graph.input[0].type.tensor_type.elem_type == onnx.TensorProto.FLOAT  # I/O stays FP32


def test_calibration_comes_from_train_and_records_ids(tiny_run):
    from quantize.calibration import load_calibration

    figs = tiny_run["calibrate"]
    arrays = load_calibration(tiny_run["root"] / "calibrate" / "calib.npz")
    assert arrays["image"].shape[1:] == (3, 64, 64) and arrays["input_ids"].dtype == np.int32
    assert len(arrays["ids"]) == figs["samples"] == len(figs["ids"]) <= 12
    assert all(i.startswith("train:") for i in figs["ids"])
    assert figs["below_recommended"] is True
    assert sum(figs["strata"]["kind"].values()) == figs["samples"]


class _S:
    """A stand-in sample with the fields calibration reads."""

    def __init__(self, ref: int, sent: int, image: int, split: str = "train", kind: str = "attribute") -> None:
        self.ref_id, self.sent_id, self.image_id, self.split, self.kind, self.ann_id = (
            ref,
            sent,
            image,
            split,
            kind,
            ref,
        )


def test_calibration_evaluation_overlap_is_refused():
    from quantize.calibration import check_disjoint

    keys = {"samples": {(7, 70)}, "images": {3}}
    check_disjoint([_S(1, 10, 1), _S(2, 20, 2)], keys)  # disjoint: fine
    with pytest.raises(DataError, match=r"2 calibration samples overlap.*train:7:70.*train:5:50 \(image 3\)"):
        check_disjoint([_S(7, 70, 9), _S(5, 50, 3), _S(1, 10, 1)], keys)


def test_select_calibration_skips_evaluation_images_and_warns_when_small(tiny_run, caplog):
    from pipeline.data.dataset import open_dataset
    from quantize.calibration import eval_keys, select_calibration

    refer = open_dataset(tiny_run["cfg"], tiny_run["root"] / "data")
    train = refer.samples("train")
    keys = eval_keys(refer, ["val"])
    keys["images"].add(train[0].image_id)  # pretend an evaluation split shares this train image
    with caplog.at_level(logging.WARNING):
        picked = select_calibration(refer, 500, keys)
    assert picked and all(s.image_id != train[0].image_id for s in picked)
    assert "below the 100 recommended" in caplog.text
    with pytest.raises(DataError, match="no sample disjoint"):
        select_calibration(refer, 5, {"samples": set(), "images": {s.image_id for s in train}})


def test_layernorm_decomposition_matches_onnx_layernorm():
    """Fast check of the TensorRT 8.5 rewrite on a one-node graph (the full opset-17 export test is slow)."""
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    from quantize.trt_compat import decompose_layernorm

    rng = np.random.default_rng(0)
    inits = [numpy_helper.from_array(rng.standard_normal(8).astype(np.float32), n) for n in ("g", "b")]
    node = helper.make_node("LayerNormalization", ["x", "g", "b"], ["y"], axis=-1, epsilon=1e-5, name="ln")
    graph = helper.make_graph(
        [node],
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [2, 3, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [2, 3, 8])],
        inits,
    )
    x = rng.standard_normal((2, 3, 8)).astype(np.float32)
    import onnxruntime as ort

    for opset in (17, 18):
        model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
        ref = ort.InferenceSession(model.SerializeToString()).run(None, {"x": x})[0]
        dec, count = decompose_layernorm(onnx.load_from_string(model.SerializeToString()))
        onnx.checker.check_model(dec)
        got = ort.InferenceSession(dec.SerializeToString()).run(None, {"x": x})[0]
        assert count == 1 and float(np.abs(got - ref).max()) < 1e-5
