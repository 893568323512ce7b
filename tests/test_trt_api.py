"""The TensorRT Python API code (build_engine, TensorRTRuntime) run on CPU against faithful fakes of TensorRT 8.5,
10.3, 10.16 and 11 (tests/fake_tensorrt): a call a version lacks fails here.

Usage: ``pytest tests/test_trt_api.py`` (the real-TensorRT test at the end skips here with the reason).
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
from onnx import TensorProto, helper, numpy_helper, save

from foundation.errors import ArtifactError, ConfigError, RuntimeUnavailable
from runtimes import tensorrt_build, tensorrt_rt
from runtimes.tensorrt_build import build_engine, tensorrt_status
from runtimes.tensorrt_settings import BuildSettings, default_strongly_typed

try:
    from tests.trt_onnx import tiny_qdq
except ImportError:  # pytest's rootdir-relative import mode
    from trt_onnx import tiny_qdq

try:
    from tests.fake_tensorrt import PLAN_MAGIC, VERSIONS, install, plan_of
except ImportError:  # pytest's rootdir-relative import mode
    from fake_tensorrt import PLAN_MAGIC, VERSIONS, install, plan_of

LN_PINS = ("ln/Sub", "ln/Mul", "attn/Softmax")  # the decomposed LayerNorm's Sub, its square, the softmax
DESCRIPTION = {"graph": "full", "precision": "fp32"}


def _ln_model(path: Path) -> Path:
    """A decomposed LayerNorm over ``image``, token ids through a Cast and a MatMul, a softmax: float32 ``mask_logits``
    from float32 ``image`` [1, 4] and int32 ``input_ids`` [1, 3] (opset 17, as the JetPack 5 export)."""
    rng = np.random.default_rng(0)
    inits = [
        numpy_helper.from_array(np.asarray(1e-5, np.float32), "eps"),
        numpy_helper.from_array(rng.standard_normal((3, 4)).astype(np.float32), "w_tok"),
        numpy_helper.from_array(rng.standard_normal((4, 4)).astype(np.float32), "w_head"),
    ]
    node = helper.make_node
    nodes = [
        node("ReduceMean", ["image"], ["mean"], name="ln/ReduceMean", axes=[-1], keepdims=1),
        node("Sub", ["image", "mean"], ["d"], name="ln/Sub"),
        node("Mul", ["d", "d"], ["d2"], name="ln/Mul"),
        node("ReduceMean", ["d2"], ["var"], name="ln/ReduceMean_1", axes=[-1], keepdims=1),
        node("Add", ["var", "eps"], ["var_eps"], name="ln/Add"),
        node("Sqrt", ["var_eps"], ["std"], name="ln/Sqrt"),
        node("Div", ["d", "std"], ["normed"], name="ln/Div"),
        node("Cast", ["input_ids"], ["ids_f"], name="tok/Cast", to=TensorProto.FLOAT),
        node("MatMul", ["ids_f", "w_tok"], ["tok"], name="tok/MatMul"),
        node("Add", ["normed", "tok"], ["logits"], name="attn/Add"),
        node("Softmax", ["logits"], ["probs"], name="attn/Softmax", axis=-1),
        node("MatMul", ["probs", "w_head"], ["mask_logits"], name="head/MatMul"),
    ]
    graph = helper.make_graph(
        nodes,
        "ln",
        [
            helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 4]),
            helper.make_tensor_value_info("input_ids", TensorProto.INT32, [1, 3]),
        ],
        [helper.make_tensor_value_info("mask_logits", TensorProto.FLOAT, [1, 4])],
        inits,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8  # readable by the ONNX Runtime of JetPack 5 too
    path.parent.mkdir(parents=True, exist_ok=True)
    save(model, str(path))
    return path


def _feeds(qdq: bool = False) -> dict[str, np.ndarray]:
    image = np.asarray([[0.5, -1.25, 3.0, 0.125]], np.float32)
    return {"image": image} if qdq else {"image": image, "input_ids": np.asarray([[101, 7, 0]], np.int32)}


def _onnxruntime(path: Path, feeds: dict[str, np.ndarray]) -> np.ndarray:
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, feeds)[0]


def _settings(precision: str, version: str, **kwargs) -> BuildSettings:
    strongly = kwargs.pop("strongly_typed", None)
    if strongly is None:
        strongly = default_strongly_typed(precision, VERSIONS[version].version, None, kwargs.get("dla_core"))
    return BuildSettings(precision, workspace_mb=64, strongly_typed=strongly, **kwargs)


@pytest.fixture(params=list(VERSIONS))
def version(request) -> str:
    return request.param


@pytest.fixture
def env(monkeypatch, version):
    """The fake TensorRT of ``version`` on the device it ships on; no TensorRT ERROR may be logged unasked."""
    fake = install(monkeypatch, version)
    yield fake
    assert not fake.errors(), fake.errors()


def _layers(engine: Path) -> dict[str, dict]:
    return {layer["name"]: layer for layer in plan_of(engine.read_bytes())["layers"]}


# ---------------------------------------------------------------------------------------------------------------------
# The fakes themselves: what each version has and lacks
# ---------------------------------------------------------------------------------------------------------------------


def test_fakes_carry_only_what_each_version_has(env, version):
    trt = env.trt
    has = {name for name in ("EXPLICIT_BATCH", "STRONGLY_TYPED") if hasattr(trt.NetworkDefinitionCreationFlag, name)}
    expected = {"8.5": {"EXPLICIT_BATCH"}, "11": {"STRONGLY_TYPED"}}.get(version, {"EXPLICIT_BATCH", "STRONGLY_TYPED"})
    assert has == expected
    weak = version != "11"
    for flag in ("FP16", "INT8", "OBEY_PRECISION_CONSTRAINTS"):
        assert hasattr(trt.BuilderFlag, flag) is weak, flag
    assert hasattr(trt.ILayer, "precision") is weak and hasattr(trt.ILayer, "set_output_type") is weak
    assert hasattr(trt, "IInt8EntropyCalibrator2") is weak
    assert hasattr(trt.DataType, "INT64") is (version != "8.5") and hasattr(trt, "int64") is (version != "8.5")
    assert hasattr(trt.ICudaEngine, "num_bindings") is (version == "8.5")
    with pytest.raises(TypeError, match="incompatible function arguments"):
        trt.Builder(trt.Logger()).create_builder_config().set_flag(3)  # an int is not a BuilderFlag
    with pytest.raises(TypeError):
        trt.Builder(trt.Logger()).build_serialized_network(None)  # wrong signature
    if version == "8.5":  # the JetPack 5.1 wheel's nptype against numpy 1.24 (pip's numpy for Python 3.8)
        with pytest.raises(AttributeError, match="has no attribute 'bool'"):
            trt.nptype(trt.float32)
    else:
        assert trt.nptype(trt.bool) is np.bool_


# ---------------------------------------------------------------------------------------------------------------------
# Build and run end to end
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("precision", ["fp32", "fp16"])
def test_build_engine_then_runtime_infers_like_onnxruntime(tmp_path, env, version, precision):
    onnx_path = _ln_model(tmp_path / "m.onnx")
    settings = _settings(precision, version)
    sidecar = build_engine(onnx_path, tmp_path / "m.engine", settings, DESCRIPTION)
    plan = plan_of((tmp_path / "m.engine").read_bytes())
    assert plan["tensorrt_version"] == env.trt.__version__ == sidecar["tensorrt_version"]
    assert plan["memory_pools"] == {"WORKSPACE": 64 << 20}
    assert plan["strongly_typed"] is (settings.strongly_typed or version == "11")
    if version == "8.5":  # explicit batch is a flag before 10.x; the parser refuses an implicit-batch network
        assert plan["network_flags"] & 1
    if not settings.strongly_typed and precision == "fp16":
        assert "FP16" in plan["builder_flags"]
    assert sidecar["gpu"] == {"name": env.device.name, "compute_capability": env.device.cc}

    rt = tensorrt_rt.TensorRTRuntime().load(tmp_path / "m.engine")
    assert {n: s.dtype for n, s in rt.inputs.items()} == {"image": "float32", "input_ids": "int32"}
    feeds = _feeds()
    out = rt.infer({**feeds, "input_ids": feeds["input_ids"].astype(np.int64)})  # cast to the engine's int32
    np.testing.assert_allclose(out["mask_logits"], _onnxruntime(onnx_path, feeds), rtol=1e-6)
    assert rt._engine._executions == 1
    allocated = set(env.device.allocations)
    rt.close()
    assert allocated <= set(env.device.freed) and not env.device.allocations


def test_qdq_int8_engine_runs(tmp_path, env, version):
    onnx_path = tiny_qdq(tmp_path / "q.onnx")  # one Q/DQ MatMul, symmetric INT8, FP32 remainder
    settings = _settings("int8", version)  # FP32 remainder: weakly typed INT8 + FP16 before 11
    build_engine(onnx_path, tmp_path / "q.engine", settings, {"graph": "full", "precision": "int8"})
    layers = _layers(tmp_path / "q.engine")
    assert [layers[n]["type"] for n in ("q", "dq", "mm")] == ["QUANTIZE", "DEQUANTIZE", "MATRIX_MULTIPLY"]
    if version != "11":
        assert {"INT8", "FP16"} <= set(plan_of((tmp_path / "q.engine").read_bytes())["builder_flags"])
    rt = tensorrt_rt.TensorRTRuntime().load(tmp_path / "q.engine")
    np.testing.assert_allclose(
        rt.infer(_feeds(qdq=True))["mask_logits"], _onnxruntime(onnx_path, _feeds(qdq=True)), rtol=1e-6
    )


def test_runtime_names_the_cuda_failure(tmp_path, monkeypatch):
    """cuda-python newer than the driver (cudaErrorInsufficientDriver) and no pycuda: the error names both."""
    install(monkeypatch, "10.3")
    build_engine(_ln_model(tmp_path / "m.onnx"), tmp_path / "m.engine", _settings("fp16", "10.3"), DESCRIPTION)
    install(monkeypatch, "10.3", insufficient_driver=True)
    with pytest.raises(RuntimeUnavailable, match=r"no usable CUDA backend.*driver version is insufficient.*pycuda"):
        tensorrt_rt.TensorRTRuntime().load(tmp_path / "m.engine")


def test_parser_errors_name_the_node(tmp_path, monkeypatch):
    """TensorRT 8.5 has no LayerNormalization importer (onnx-tensorrt 8.5-GA operators.md): the error names it."""
    env = install(monkeypatch, "8.5")
    ln = helper.make_node("LayerNormalization", ["image", "g"], ["mask_logits"], name="blk/ln", axis=-1)
    graph = helper.make_graph(
        [ln],
        "g",
        [helper.make_tensor_value_info("image", TensorProto.FLOAT, [1, 4])],
        [helper.make_tensor_value_info("mask_logits", TensorProto.FLOAT, [1, 4])],
        [numpy_helper.from_array(np.ones(4, np.float32), "g")],
    )
    save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(tmp_path / "ln.onnx"))
    with pytest.raises(ArtifactError, match=r"cannot parse .*LayerNormalization.*blk/ln"):
        build_engine(tmp_path / "ln.onnx", tmp_path / "ln.engine", _settings("fp16", "8.5"))
    assert env.errors() and not (tmp_path / "ln.engine").exists()


# ---------------------------------------------------------------------------------------------------------------------
# Review #3: dtypes without trt.nptype
# ---------------------------------------------------------------------------------------------------------------------


def test_numpy_dtype_table_has_int64_only_where_tensorrt_has_it(env, version):
    trt = env.trt
    assert tensorrt_rt.numpy_dtype(trt, trt.float16) == np.float16
    assert tensorrt_rt.numpy_dtype(trt, trt.DataType.BOOL) == np.bool_
    if version == "8.5":
        assert not hasattr(trt.DataType, "INT64")
    else:
        assert tensorrt_rt.numpy_dtype(trt, trt.int64) == np.int64
        with pytest.raises(ArtifactError, match=r"'mask'.*BF16.*no numpy type"):
            tensorrt_rt.numpy_dtype(trt, trt.bfloat16, "mask")


# ---------------------------------------------------------------------------------------------------------------------
# Review #11: timing cache, DLA core count, runtime DLA core, typing modes the version lacks
# ---------------------------------------------------------------------------------------------------------------------


def test_timing_cache_is_written_and_reused(tmp_path, env, version):
    onnx_path = _ln_model(tmp_path / "m.onnx")
    cache = tmp_path / "timing.cache"
    settings = _settings("fp16", version, timing_cache=str(cache))
    build_engine(onnx_path, tmp_path / "a.engine", settings)
    first = json.loads(cache.read_bytes().split(b"\n", 1)[1])
    assert first["tensorrt_version"] == env.trt.__version__ and first["entries"]
    build_engine(onnx_path, tmp_path / "b.engine", settings)
    assert plan_of((tmp_path / "b.engine").read_bytes())["timing_cache"] is True


@pytest.mark.parametrize("foreign", ["other_gpu", "other_version"])
def test_foreign_timing_cache_is_reported_and_replaced(tmp_path, monkeypatch, caplog, foreign):
    """A cache from another GPU (set_timing_cache returns False) or another TensorRT (create_timing_cache fails) is
    not used: the build warns, naming the file, and writes a fresh cache for this device."""
    onnx_path = _ln_model(tmp_path / "m.onnx")
    cache = tmp_path / "timing.cache"
    settings = _settings("fp16", "10.3", timing_cache=str(cache))
    if foreign == "other_gpu":
        install(monkeypatch, "10.3", name="Xavier", compute_capability=(7, 2))
        build_engine(onnx_path, tmp_path / "x.engine", settings)
    env = install(monkeypatch, "10.3")  # the Orin
    if foreign == "other_version":
        body = {"tensorrt_version": "10.0.1", "gpu": "Orin", "cc": "8.7", "entries": ["MATRIX_MULTIPLY:HALF"]}
        cache.write_bytes(b"FAKE-TRT-TIMING-CACHE\n" + json.dumps(body).encode())
    with caplog.at_level(logging.WARNING, logger="runtimes.tensorrt_build"):
        build_engine(onnx_path, tmp_path / "m.engine", settings)
    assert f"timing cache {cache}" in caplog.text and "not used" in caplog.text
    body = json.loads(cache.read_bytes().split(b"\n", 1)[1])
    assert (body["tensorrt_version"], body["gpu"], body["cc"]) == (env.trt.__version__, "Orin", "8.7")
    assert plan_of((tmp_path / "m.engine").read_bytes())["timing_cache"] is True
    assert env.errors()  # TensorRT itself logged the refusal


@pytest.mark.parametrize(("version", "core", "cores"), [("10.3", 0, 0), ("8.5", 2, 2), ("10.16", 0, 0)])
def test_dla_core_is_checked_against_the_device(tmp_path, monkeypatch, version, core, cores):
    install(monkeypatch, version, dla_cores=cores)
    onnx_path = _ln_model(tmp_path / "m.onnx")
    with pytest.raises(ArtifactError, match=rf"DLA core {core}.* has {cores} DLA core"):
        build_engine(onnx_path, tmp_path / "m.engine", _settings("fp16", version, dla_core=core))
    assert not (tmp_path / "m.engine").exists()


def test_runtime_runs_a_dla_engine_on_the_core_it_was_built_for(tmp_path, monkeypatch):
    env = install(monkeypatch, "8.5", dla_cores=2)
    onnx_path = _ln_model(tmp_path / "m.onnx")
    build_engine(onnx_path, tmp_path / "m.engine", _settings("fp16", "8.5", dla_core=1), DESCRIPTION)
    devices = {layer["device"] for layer in _layers(tmp_path / "m.engine").values()}
    assert devices == {"DLA", "GPU"}  # elementwise layers on DLA, MatMul/Softmax/Reduce fall back to the GPU
    rt = tensorrt_rt.TensorRTRuntime().load(tmp_path / "m.engine")
    assert rt._engine._dla_core == 1
    np.testing.assert_allclose(rt.infer(_feeds())["mask_logits"], _onnxruntime(onnx_path, _feeds()), rtol=1e-6)
    rt.close()
    env.device.dla_cores = 1  # the same sidecar on a module with one DLA core
    with pytest.raises(ArtifactError, match=r"DLA core 1.* has 1 DLA core"):
        tensorrt_rt.TensorRTRuntime().load(tmp_path / "m.engine")


def test_strongly_typed_on_tensorrt_8_is_a_clear_error(tmp_path, monkeypatch):
    install(monkeypatch, "8.5")
    with pytest.raises(ArtifactError, match=r"TensorRT 8\.5\.2\.2 has no strongly typed networks.*weakly"):
        settings = _settings("fp16", "8.5", strongly_typed=True)
        build_engine(_ln_model(tmp_path / "m.onnx"), tmp_path / "m.engine", settings)


def test_weakly_typed_on_tensorrt_11_is_a_clear_error(tmp_path, monkeypatch):
    install(monkeypatch, "11")
    with pytest.raises(ArtifactError, match=r"TensorRT 11\.4\.1 builds strongly typed networks only"):
        settings = _settings("fp16", "11", strongly_typed=False)
        build_engine(_ln_model(tmp_path / "m.onnx"), tmp_path / "m.engine", settings)


# ---------------------------------------------------------------------------------------------------------------------
# Review #6: FP32 layers in a weakly typed FP16 / INT8 build
# ---------------------------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("version", ["8.5", "10.3", "10.16"])
def test_fp32_layers_stay_fp32_in_a_weakly_typed_fp16_build(tmp_path, monkeypatch, version):
    install(monkeypatch, version)
    onnx_path = _ln_model(tmp_path / "m.onnx")
    settings = _settings("fp16", version, strongly_typed=False, fp32_layers=LN_PINS)
    if version == "10.16":  # weak typing is deprecated from 10.12: TensorRT warns on every precision setter
        with pytest.warns(DeprecationWarning, match="10.12"):
            build_engine(onnx_path, tmp_path / "m.engine", settings)
    else:
        build_engine(onnx_path, tmp_path / "m.engine", settings)
    plan = plan_of((tmp_path / "m.engine").read_bytes())
    assert "OBEY_PRECISION_CONSTRAINTS" in plan["builder_flags"] and "FP16" in plan["builder_flags"]
    layers = {layer["name"]: layer for layer in plan["layers"]}
    for name in LN_PINS:
        assert (layers[name]["precision"], layers[name]["runs_in"], layers[name]["output_types"]) == (
            "FLOAT", "FLOAT", ["FLOAT"]
        ), name  # fmt: skip
    assert layers["ln/Div"]["runs_in"] == layers["head/MatMul"]["runs_in"] == "HALF"  # the rest may run in half


def test_fp32_layers_on_dla_stay_on_the_gpu(tmp_path, monkeypatch):
    install(monkeypatch, "8.5", dla_cores=2)
    settings = _settings("fp16", "8.5", dla_core=0, fp32_layers=LN_PINS)
    build_engine(_ln_model(tmp_path / "m.onnx"), tmp_path / "m.engine", settings)
    layers = _layers(tmp_path / "m.engine")
    assert {layers[n]["device"] for n in LN_PINS} == {"GPU"} and layers["ln/Div"]["device"] == "DLA"


def test_unknown_fp32_layer_is_an_error_naming_it(tmp_path, env, version):
    settings = _settings("fp16", version, fp32_layers=("ln/Sub", "ln/Mull"))
    with pytest.raises(ConfigError, match=r"'ln/Mull'.*did you mean 'ln/Mul'"):
        build_engine(_ln_model(tmp_path / "m.onnx"), tmp_path / "m.engine", settings)


@pytest.mark.parametrize("version", ["10.3", "11"])
def test_fp32_layers_are_left_to_the_graph_when_strongly_typed(tmp_path, monkeypatch, caplog, version):
    install(monkeypatch, version)
    settings = _settings("fp16", version, strongly_typed=True, fp32_layers=LN_PINS)
    with caplog.at_level(logging.WARNING, logger="runtimes.tensorrt_build"):
        build_engine(_ln_model(tmp_path / "m.onnx"), tmp_path / "m.engine", settings)
    assert "strongly typed" in caplog.text and "ln/Sub" in caplog.text
    plan = plan_of((tmp_path / "m.engine").read_bytes())
    assert "OBEY_PRECISION_CONSTRAINTS" not in plan["builder_flags"]
    assert all(layer["precision"] is None for layer in plan["layers"])


# ---------------------------------------------------------------------------------------------------------------------
# Real TensorRT (skips here)
# ---------------------------------------------------------------------------------------------------------------------

TRT_OK, TRT_REASON = tensorrt_status()


@pytest.mark.trt
@pytest.mark.skipif(not TRT_OK, reason=TRT_REASON)
def test_real_tensorrt_builds_and_runs_with_the_default_typing(tmp_path):
    import tensorrt as trt

    onnx_path = _ln_model(tmp_path / "m.onnx")
    strongly = default_strongly_typed("fp16", trt.__version__)  # weakly typed on 8.x, where STRONGLY_TYPED is missing
    settings = BuildSettings("fp16", 256, strongly_typed=strongly, timing_cache=str(tmp_path / "t.cache"))
    build_engine(onnx_path, tmp_path / "m.engine", settings, DESCRIPTION)
    assert not (tmp_path / "m.engine").read_bytes().startswith(PLAN_MAGIC)
    out = tensorrt_rt.TensorRTRuntime().load(tmp_path / "m.engine").infer(_feeds())
    np.testing.assert_allclose(out["mask_logits"], _onnxruntime(onnx_path, _feeds()), atol=2e-2)
    assert tensorrt_build.read_sidecar_json(tmp_path / "m.engine")["build"]["strongly_typed"] is strongly
