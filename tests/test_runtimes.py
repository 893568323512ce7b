"""Runtimes on the `tiny` variant: parity with PyTorch, shared processing, no torch on the runtime side, TensorRT.

The default run exports the full graph once (ONNX + OpenVINO IR, ~20 s); split-graph parity is `slow`. TensorRT tests
are marked `trt` and skip here with the reason (no TensorRT, no GPU); its sidecar checks are plain Python and run.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from foundation.errors import ArtifactError, RuntimeUnavailable
from runtimes import get_runtime
from runtimes.processing import Processing
from runtimes.tensorrt_rt import TensorRTRuntime, check_compatible

ROOT = Path(__file__).resolve().parent.parent
PARITY_ATOL = 1e-4
FP32_RUNTIMES = {"onnxruntime": "full.onnx", "openvino": "full.xml"}


def _rgb(seed: int = 0, h: int = 50, w: int = 70) -> np.ndarray:
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, size=(h, w, 3), dtype=np.uint8)


def _export(torch_module, spec, path: Path, meta: dict, **kwargs) -> Path:
    from runtimes.export import export_onnx

    inputs = dict(zip(spec.input_names, spec.example_inputs(), strict=True))
    return export_onnx(spec.module, inputs, spec.output_names, path, metadata=meta, **kwargs)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """A random `tiny` model: checkpoint, full-graph ONNX and OpenVINO IR, and the metadata they carry."""
    torch = pytest.importorskip("torch")
    from model import create_model
    from model.graphs import graph_specs
    from model.weights import save_checkpoint
    from runtimes.export import export_openvino

    out = tmp_path_factory.mktemp("tiny_rt")
    torch.manual_seed(0)
    model = create_model("tiny").eval()
    save_checkpoint(model, out / "best")
    spec = model.spec
    meta = {
        "variant": spec.name,
        "img_size": spec.img_size,
        "max_tokens": spec.max_tokens,
        "image_mean": list(spec.image_mean),
        "image_std": list(spec.image_std),
        "tokenizer_dir": spec.text_dir,
        "threshold": 0.5,
    }
    specs = graph_specs(model)
    _export(model, specs["full"], out / "full.onnx", meta)
    export_openvino(out / "full.onnx", out / "full.xml")
    return {"dir": out, "model": model, "specs": specs, "meta": meta, "ckpt": out / "best.safetensors"}


@pytest.fixture(scope="module")
def torch_rt(tiny):
    return get_runtime("torch").load(tiny["ckpt"], threads=1)


@pytest.fixture(scope="module")
def feeds(torch_rt):
    proc = Processing.from_metadata(torch_rt.metadata)
    return proc(_rgb(), "the big red star left of the blue circle")


def test_torch_runtime_equals_the_model(tiny, torch_rt, feeds):
    import torch

    with torch.inference_mode():
        ref = tiny["model"](*(torch.from_numpy(feeds[k]) for k in ("image", "input_ids", "attention_mask")))
    out = torch_rt.infer(feeds)
    assert set(out) == {"mask_logits"} and out["mask_logits"].dtype == np.float32
    np.testing.assert_array_equal(out["mask_logits"], ref.numpy())
    assert torch_rt.metadata["img_size"] == 64 and torch_rt.metadata["max_tokens"] == 12


@pytest.mark.parametrize("name", sorted(FP32_RUNTIMES))
def test_fp32_runtime_parity_with_torch(name, tiny, torch_rt, feeds):
    rt = get_runtime(name)
    if not rt.is_available():
        pytest.skip(f"{name} is not installed here: {rt.install_hint}")
    rt.load(tiny["dir"] / FP32_RUNTIMES[name], threads=1)
    assert set(rt.inputs) == {"image", "input_ids", "attention_mask"}
    ref = torch_rt.infer(feeds)["mask_logits"]
    for seed in range(3):  # a few frames and sentences, padding lengths differ
        proc = Processing.from_metadata(rt.metadata)
        x = proc(_rgb(seed), ["a star", "the second small green hexagon from the left", "ring"][seed])
        got, want = rt.infer(x)["mask_logits"], torch_rt.infer(x)["mask_logits"]
        np.testing.assert_allclose(got, want, atol=PARITY_ATOL, rtol=0)
    np.testing.assert_allclose(rt.infer(feeds)["mask_logits"], ref, atol=PARITY_ATOL, rtol=0)
    # the artifact describes the same pre-processing as the checkpoint
    assert Processing.from_metadata(rt.metadata).signature() == Processing.from_metadata(torch_rt.metadata).signature()


@pytest.mark.slow
@pytest.mark.parametrize("graph", ["image_encoder", "text_encoder", "decoder"])
def test_split_graph_parity_onnxruntime(graph, tiny, torch_rt, feeds, tmp_path):
    spec = tiny["specs"][graph]
    path = _export(tiny["model"], spec, tmp_path / f"{graph}.onnx", tiny["meta"])
    rt = get_runtime("onnxruntime").load(path, threads=1)
    t = torch_rt.graph(graph)
    enc = torch_rt.graph("image_encoder").infer(feeds) | torch_rt.graph("text_encoder").infer(feeds)
    x = {n: (feeds | enc)[n] for n in rt.inputs}
    for name, want in t.infer(x).items():
        np.testing.assert_allclose(rt.infer(x)[name], want, atol=PARITY_ATOL, rtol=0)


def test_split_graphs_compose_to_the_full_graph(torch_rt, feeds):
    feats = torch_rt.graph("image_encoder").infer(feeds)
    text = torch_rt.graph("text_encoder").infer(feeds)
    dec = torch_rt.graph("decoder")
    out = dec.infer({n: (feeds | feats | text)[n] for n in dec.inputs})
    np.testing.assert_allclose(out["mask_logits"], torch_rt.infer(feeds)["mask_logits"], atol=1e-5, rtol=0)


def test_threads_are_configurable(tiny):
    rt = get_runtime("onnxruntime").load(tiny["dir"] / "full.onnx", threads=1)
    assert rt._session.get_session_options().intra_op_num_threads == 1


def _relu_onnx(path: Path) -> Path:
    """A one-node ONNX graph (no project metadata): the runtimes fall back to its own I/O."""
    import onnx
    from onnx import TensorProto, helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 8])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 8])
    graph = helper.make_graph([helper.make_node("Relu", ["x"], ["y"])], "relu", [x], [y])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(path))
    return path


def test_onnxruntime_records_threads_and_spinning_options(tmp_path):
    path = _relu_onnx(tmp_path / "relu.onnx")
    rt = get_runtime("onnxruntime").load(path, threads=1, options={"session.force_spinning_stop": "1"})
    s = rt.settings
    assert (s["intra_op_num_threads"], s["inter_op_num_threads"], s["providers"]) == (1, 1, ["CPUExecutionProvider"])
    assert s["config"] == {"session.intra_op.allow_spinning": "default", "session.inter_op.allow_spinning": "default",
                           "session.force_spinning_stop": "1"}  # fmt: skip
    assert rt._session.get_session_options().get_session_config_entry("session.force_spinning_stop") == "1"
    x = np.array([[-1, 2, -3, 4, 0, 1, -2, 3]], np.float32)
    np.testing.assert_array_equal(rt.infer({"x": x})["y"], np.maximum(x, 0))
    plain = get_runtime("onnxruntime").load(path).settings
    assert plain["intra_op_num_threads"] == "default" and set(plain["config"].values()) == {"default"}


def test_onnxruntime_runs_an_fp16_remainder_qdq_graph_unfused(tmp_path):
    """A Q/DQ graph whose float remainder is FP16 (metadata ``quantization.float_remainder``) runs with ONNX
    Runtime's Q/DQ fusions off; an FP32-remainder graph keeps them, and an explicit setting wins."""
    import onnx

    from runtimes.export import set_onnx_metadata

    paths = {}
    for remainder in ("fp16", "fp32"):
        model = onnx.load(str(_relu_onnx(tmp_path / f"relu_{remainder}.onnx")))
        set_onnx_metadata(model, {"quantization": {"float_remainder": remainder}})
        paths[remainder] = tmp_path / f"relu_{remainder}.onnx"
        onnx.save(model, str(paths[remainder]))
    key = "session.disable_quant_qdq"
    fp16 = get_runtime("onnxruntime").load(paths["fp16"])
    assert fp16.settings["config"][key] == "1"
    assert fp16._session.get_session_options().get_session_config_entry(key) == "1"
    assert get_runtime("onnxruntime").load(paths["fp32"]).settings["config"].get(key, "default") == "default"
    kept = get_runtime("onnxruntime").load(paths["fp16"], options={key: "0"})
    assert kept._session.get_session_options().get_session_config_entry(key) == "0"


def test_openvino_records_scheduling_properties_and_names_a_bad_one(tmp_path):
    rt = get_runtime("openvino")
    if not rt.is_available():
        pytest.skip(f"openvino is not installed here: {rt.install_hint}")
    path = _relu_onnx(tmp_path / "relu.onnx")
    rt.load(path, threads=1, options={"ENABLE_CPU_PINNING": False})
    s = rt.settings
    assert s["INFERENCE_NUM_THREADS"] == 1 and s["ENABLE_CPU_PINNING"] is False and s["NUM_STREAMS"] == 1
    assert s["PERFORMANCE_HINT"] == "LATENCY" and s["INFERENCE_PRECISION_HINT"] == "f32"
    assert isinstance(s["SCHEDULING_CORE_TYPE"], str)
    json.dumps(s)  # recorded in results.json as is
    with pytest.raises(ArtifactError, match="NOT_A_PROPERTY"):
        get_runtime("openvino").load(path, options={"NOT_A_PROPERTY": 1})


def test_torch_runtime_records_its_threads(torch_rt):
    assert torch_rt.settings["num_threads"] == 1 and torch_rt.settings["device"] == "cpu"
    assert torch_rt.graph("decoder").settings == torch_rt.settings


def test_runtime_side_imports_neither_torch_nor_timm(tiny):
    """A robot has numpy, tokenizers and its backend: loading and running ORT / OpenVINO must not import torch."""
    code = f"""
import sys, json
import numpy as np
from runtimes import get_runtime
from runtimes.processing import Processing
import runtimes.tensorrt_rt
import benchmarks.metrics
for name, art in (("onnxruntime", "full.onnx"), ("openvino", "full.xml")):
    rt = get_runtime(name).load({str(tiny["dir"])!r} + "/" + art, threads=1)
    proc = Processing.from_metadata(rt.metadata)
    rgb = np.zeros((40, 30, 3), np.uint8)
    mask = proc.postprocess(rt.infer(proc(rgb, "the red star"))["mask_logits"], rgb.shape[:2])
    assert mask.shape == (40, 30)
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("torch", "timm", "transformers"))))
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []


# ---------------------------------------------------------------------------------------------------------------------
# Processing: one definition, equal to the torch path
# ---------------------------------------------------------------------------------------------------------------------


def test_postprocess_matches_torch_interpolate_and_sigmoid():
    import torch
    import torch.nn.functional as F

    from runtimes.masks import resize_bilinear

    rng = np.random.default_rng(1)
    logits = (rng.standard_normal((1, 1, 16, 16)) * 3).astype(np.float32)
    for hw in ((50, 70), (64, 64), (13, 200)):
        # same algorithm: float64 torch agrees to 1e-5 absolute; float32 torch only to its own rounding (~1e-6 rel.)
        up64 = F.interpolate(torch.from_numpy(logits).double(), size=hw, mode="bilinear", align_corners=False)[0, 0]
        np.testing.assert_allclose(resize_bilinear(logits[0, 0], hw), up64.numpy(), atol=1e-5, rtol=0)
        up_torch = F.interpolate(torch.from_numpy(logits), size=hw, mode="bilinear", align_corners=False)[0, 0]
        np.testing.assert_allclose(resize_bilinear(logits[0, 0], hw), up_torch.numpy(), atol=1e-5, rtol=1e-5)
        prob = torch.sigmoid(up_torch).numpy()
        mask = Processing(64, 12).postprocess(logits, hw)
        decided = np.abs(prob - 0.5) > 1e-5  # pixels within rounding of the threshold may go either way
        np.testing.assert_array_equal(mask[decided], (prob >= 0.5)[decided])


def test_preprocess_matches_torch_normalize_and_eval_iterator():
    import torch
    from PIL import Image

    from runtimes.image import preprocess_image

    rgb = _rgb(3, 50, 70)
    proc = Processing(64, 12)
    x = proc.image(rgb)["image"]
    assert x.shape == (1, 3, 64, 64) and x.dtype == np.float32
    np.testing.assert_array_equal(x[0], preprocess_image(rgb, 64))  # the training / eval transform, reused
    resized = torch.from_numpy(np.asarray(Image.fromarray(rgb).resize((64, 64), Image.BILINEAR), np.float32))
    t = resized.permute(2, 0, 1) / 255.0
    mean, std = torch.tensor(proc.mean)[:, None, None], torch.tensor(proc.std)[:, None, None]
    np.testing.assert_allclose(x[0], ((t - mean) / std).numpy(), atol=1e-5, rtol=0)


def test_preprocess_other_normalization():
    rgb = _rgb(4)
    x = Processing(32, 8, mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)).image(rgb)["image"]
    assert x.min() >= -1.0 - 1e-5 and x.max() <= 1.0 + 1e-5


def test_processing_from_metadata_json_strings_and_errors():
    meta = {"inputs": json.dumps({"image": {"shape": [1, 3, 96, 96]}, "input_ids": {"shape": [1, 20]}}),
            "threshold": "0.4"}  # fmt: skip
    proc = Processing.from_metadata(meta)
    assert (proc.img_size, proc.max_tokens, proc.threshold) == (96, 20, 0.4)
    with pytest.raises(ArtifactError, match="input size or token length"):
        Processing.from_metadata({"variant": "x"})


def test_tokenizer_fixed_length(torch_rt):
    proc = Processing.from_metadata(torch_rt.metadata)
    t = proc.text(["a", "a very long sentence " * 10])
    assert t["input_ids"].shape == (2, 12) and t["attention_mask"][0].sum() < t["attention_mask"][1].sum() == 12


# ---------------------------------------------------------------------------------------------------------------------
# TensorRT
# ---------------------------------------------------------------------------------------------------------------------

TRT_REASON = TensorRTRuntime.unavailable_reason()


def test_tensorrt_unavailable_says_why():
    if TRT_REASON is None:
        pytest.skip("TensorRT is available here; the unavailable path is not reachable")
    assert not get_runtime("tensorrt").is_available()
    with pytest.raises(RuntimeUnavailable, match="(?i)tensorrt|nvidia"):
        get_runtime("tensorrt").load("missing.engine")


@pytest.mark.parametrize(
    ("sidecar", "trt", "gpu", "match"),
    [
        ({"tensorrt_version": "10.3.0", "gpu": {"name": "Orin", "compute_capability": "8.7"}}, "10.7.0",
         {"name": "Orin", "compute_capability": "8.7"}, r"built with TensorRT 10\.3\.0 .* has TensorRT 10\.7\.0"),
        ({"tensorrt_version": "10.3.0", "gpu": {"name": "Orin", "compute_capability": "8.7"}}, "10.3.0",
         {"name": "NVIDIA A100", "compute_capability": "8.0"}, r"Orin .*8\.7.* NVIDIA A100 .*8\.0"),
        ({"tensorrt_version": "10.3.0", "gpu": {"name": "Orin (nvgpu)", "compute_capability": "8.7"}}, "10.3.0",
         {"name": "Orin", "compute_capability": "8.7"}, r"'Orin \(nvgpu\)' but this GPU is 'Orin'"),
        ({"gpu": {"name": "Orin"}}, "10.3.0", {"name": "Orin"}, "does not record the TensorRT version"),
    ],
)  # fmt: skip
def test_tensorrt_sidecar_mismatch_names_both(sidecar, trt, gpu, match):
    with pytest.raises(ArtifactError, match=match):
        check_compatible(sidecar, trt, gpu)


def test_tensorrt_sidecar_compatible_builds_pass():
    gpu = {"name": "Orin", "compute_capability": "8.7"}
    check_compatible({"tensorrt_version": "10.3.0", "gpu": gpu}, "10.3.0", gpu)
    check_compatible({"tensorrt_version": "10.3.0", "version_compatible": True, "gpu": gpu}, "10.7.0", gpu)
    check_compatible({"build": {"trt_version": "10.3.0", "hardware_compatible": True}}, "10.3.0", {"name": "A100"})


@pytest.mark.trt
@pytest.mark.skipif(TRT_REASON is not None, reason=f"TensorRT unavailable: {TRT_REASON}")
def test_tensorrt_engine_parity(tiny, torch_rt, feeds, tmp_path):
    from runtimes import tensorrt_build

    engine = tensorrt_build.build_tensorrt_engine(tiny["dir"] / "full.onnx", tmp_path / "full.engine")
    rt = get_runtime("tensorrt").load(engine)
    np.testing.assert_allclose(rt.infer(feeds)["mask_logits"], torch_rt.infer(feeds)["mask_logits"], atol=1e-3)
