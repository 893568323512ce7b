"""ONNX export of the full graph and the three split graphs: checker, static shapes, opset, ONNX Runtime parity.

Usage: ``python -m pytest tests/test_model_export.py`` (``-m slow`` adds ``demo`` and ``edge``).

The export helper lives here on purpose: the export stage proper is ``runtimes/export.py``; this file pins the
``torch.onnx.export`` settings that are known to work for this model (dynamo at opset 18, TorchScript at opset 17).
"""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import torch

from model.graphs import FEATURE_NAMES, GraphSpec, graph_specs
from model.ris import RISModel
from model.variants import create_model

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

GRAPHS = ("full", "image_encoder", "text_encoder", "decoder")
# (exporter, opset): dynamo is the default path (opset >= 18); TorchScript is the only way to opset 17
EXPORTERS = {"dynamo": (True, 18), "torchscript": (False, 17)}
CASES = [
    pytest.param("tiny", "dynamo", id="tiny-dynamo18"),
    pytest.param("tiny", "torchscript", id="tiny-torchscript17"),
    pytest.param("demo", "torchscript", id="demo-torchscript17", marks=pytest.mark.slow),  # ~15-40 s
    pytest.param("demo", "dynamo", id="demo-dynamo18", marks=pytest.mark.slow),
    pytest.param("edge", "dynamo", id="edge-dynamo18", marks=pytest.mark.slow),
]

_MODELS: dict[str, RISModel] = {}


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Every test of this module runs with one torch thread (see tests/conftest.py)."""


def model_of(name: str) -> RISModel:
    if name not in _MODELS:
        torch.manual_seed(0)
        _MODELS[name] = create_model(name).eval()
    return _MODELS[name]


def export(graph: GraphSpec, path: Path, dynamo: bool, opset: int) -> onnx.ModelProto:
    """Export one graph with named I/O and static shapes (no dynamic axes: fixed batch and token length)."""
    kwargs = {"input_names": list(graph.input_names), "output_names": list(graph.output_names), "dynamo": dynamo}
    if dynamo:
        kwargs["external_data"] = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(graph.module, graph.example_inputs(), str(path), opset_version=opset, **kwargs)
    return onnx.load(str(path))


def static_shapes(values: list) -> dict[str, list[int | str]]:
    return {
        v.name: [d.dim_value if d.HasField("dim_value") else d.dim_param for d in v.type.tensor_type.shape.dim]
        for v in values
    }


def run_ort(path: Path, feeds: dict[str, np.ndarray]) -> list[np.ndarray]:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 2
    session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    return session.run(None, feeds)


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """Cache of exported graphs: (variant, exporter) -> {graph: (GraphSpec, path, ModelProto)}."""
    return {"dir": tmp_path_factory.mktemp("onnx")}


def exported_graphs(cache: dict, name: str, exporter: str) -> dict[str, tuple[GraphSpec, Path, onnx.ModelProto]]:
    if (name, exporter) not in cache:
        dynamo, opset = EXPORTERS[exporter]
        out = {}
        for graph_name, graph in graph_specs(model_of(name)).items():
            path = cache["dir"] / f"{name}_{exporter}_{graph_name}.onnx"
            out[graph_name] = (graph, path, export(graph, path, dynamo, opset))
        cache[(name, exporter)] = out
    return cache[(name, exporter)]


@pytest.mark.parametrize(("name", "exporter"), CASES)
def test_export_checks_and_matches_pytorch(exported: dict, name: str, exporter: str) -> None:
    graphs = exported_graphs(exported, name, exporter)
    assert set(graphs) == set(GRAPHS)
    opset = EXPORTERS[exporter][1]
    for graph_name, (graph, path, proto) in graphs.items():
        onnx.checker.check_model(proto, full_check=True)
        assert {o.domain: o.version for o in proto.opset_import}.get("") == opset, graph_name
        assert static_shapes(proto.graph.input) == graph.input_shapes
        if EXPORTERS[exporter][0]:  # TorchScript leaves some output dims symbolic (sizes computed by Shape ops)
            assert static_shapes(proto.graph.output) == graph.output_shapes
        # fresh inputs (not the export example) with another padding length: nothing was baked in
        inputs = graph.example_inputs(seed=1, pad_from=3)
        feeds = {n: t.numpy() for n, t in zip(graph.input_names, inputs, strict=True)}
        with torch.inference_mode():
            ref = graph.module(*inputs)
        ref = ref if isinstance(ref, tuple) else (ref,)
        for out_name, got, want in zip(graph.output_names, run_ort(path, feeds), ref, strict=True):
            assert got.shape == tuple(want.shape), (graph_name, out_name)
            assert np.isfinite(got).all()
            err = float(np.abs(got - want.numpy()).max())
            assert err <= 1e-4, f"{graph_name}/{out_name}: max abs diff {err:.2e}"


@pytest.mark.parametrize("exporter", sorted(EXPORTERS))
def test_every_clip_has_both_bounds(exported: dict, exporter: str) -> None:
    """A Clip with only a lower bound runs as an upper bound of 0 in ONNX Runtime 1.19's float16 CPU kernel
    (microsoft/onnxruntime#21957; 1.19.2 is the last release for JetPack 5's Python 3.8): the sentence pooling's
    token-count clamp gets an explicit maximum, so the FP16 model is right there too."""
    for graph_name, (_, _, proto) in exported_graphs(exported, "tiny", exporter).items():
        for node in proto.graph.node:
            if node.op_type == "Clip":
                bounds = list(node.input[1:]) + [""] * (3 - len(node.input))
                assert all(bounds), f"{graph_name}: Clip {node.name} has inputs {list(node.input)}"


def test_onnx_split_graphs_compose_to_the_full_graph(exported: dict) -> None:
    graphs = exported_graphs(exported, "tiny", "torchscript")
    image, input_ids, attention_mask = (t.numpy() for t in graphs["full"][0].example_inputs(seed=3, pad_from=5))
    full = run_ort(graphs["full"][1], {"image": image, "input_ids": input_ids, "attention_mask": attention_mask})[0]
    feats = run_ort(graphs["image_encoder"][1], {"image": image})
    words, sentence = run_ort(graphs["text_encoder"][1], {"input_ids": input_ids, "attention_mask": attention_mask})
    feeds = dict(zip(FEATURE_NAMES, feats, strict=True))
    feeds |= {"words": words, "sentence": sentence, "attention_mask": attention_mask}
    split = run_ort(graphs["decoder"][1], feeds)[0]
    assert float(np.abs(full - split).max()) <= 1e-5


def test_text_head_exports_and_matches_pytorch(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = create_model("tiny", text_head=True).eval()
    torch.nn.init.normal_(model.decoder.text_head.filter.weight, std=0.5)  # not the silent initial head
    graph = graph_specs(model)["full"]
    export(graph, tmp_path / "head.onnx", True, 18)
    inputs = graph.example_inputs(seed=2, pad_from=4)
    with torch.inference_mode():
        want = graph.module(*inputs).numpy()
    got = run_ort(tmp_path / "head.onnx", {n: t.numpy() for n, t in zip(graph.input_names, inputs, strict=True)})[0]
    assert float(np.abs(got - want).max()) <= 1e-4


def test_onnx_graph_ignores_padded_tokens(exported: dict) -> None:
    graph, path, _ = exported_graphs(exported, "tiny", "dynamo")["full"]
    image, input_ids, attention_mask = (t.numpy() for t in graph.example_inputs(seed=4, pad_from=4))
    other = np.where(attention_mask == 1, input_ids, 999)
    a = run_ort(path, {"image": image, "input_ids": input_ids, "attention_mask": attention_mask})[0]
    b = run_ort(path, {"image": image, "input_ids": other, "attention_mask": attention_mask})[0]
    assert float(np.abs(a - b).max()) <= 1e-6
