"""Export to deployable formats, one function per format in dependency order: ONNX FP32 → OpenVINO IR, FP16 ONNX.

Usage: ``export_onnx(graph.module, inputs, ["mask_logits"], "out/model.onnx", metadata=meta)``, then
``export_openvino("out/model.onnx", "out/model.xml")``; ``export_fp16_onnx("out/model.onnx", "out/model_fp16.onnx")``.

Each function imports its heavy dependency inside, logs time, size and path, writes the artifact's self-description
(see :mod:`runtimes.base`) into it and raises :class:`ArtifactError` with the cause on failure.

Exporter choice: opset ``None`` or ≥ 18 uses the dynamo exporter (clean graphs, opset 18+ with torch 2.14's default
20); opset ≤ 17 uses the legacy TorchScript exporter, the only way to opset 17 (JetPack 5 / TensorRT 8.5).
Integer inputs (token ids, attention mask) become int32 graph inputs cast to int64 inside (see ``TOKEN_DTYPE``).
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from foundation.errors import ArtifactError
from runtimes.base import RT_INFO_ROOT, TOKEN_DTYPE, decode_metadata, encode_metadata

log = logging.getLogger(__name__)

DYNAMO_MIN_OPSET = 18
# Ops kept in FP32 inside the FP16 ONNX: normalisations, softmax, reductions and the ops around them overflow or lose
# too much precision in half (variance sums, exp, large attention logits).
FP16_KEEP_FLOAT32 = (
    "LayerNormalization",
    "GroupNormalization",
    "InstanceNormalization",
    "Softmax",
    "LogSoftmax",
    "ReduceMean",
    "ReduceSum",
    "ReduceSumSquare",
    "ReduceL2",
    "ReduceMax",
    "ReduceProd",
    "Pow",
    "Sqrt",
    "Reciprocal",
    "Exp",
    "Erf",
    "CumSum",
)
# Files of a Hugging Face tokenizer directory worth shipping beside an artifact (no weights).
TOKENIZER_FILES = (
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
    "vocab.txt",
    "vocab.json",
    "merges.txt",
    "spiece.model",
    "sentencepiece.bpe.model",
    "config.json",
)


def file_size(path: str | Path) -> int:
    """Bytes of an artifact; an OpenVINO ``.xml`` counts its ``.bin`` too."""
    path = Path(path)
    size = path.stat().st_size
    if path.suffix == ".xml" and path.with_suffix(".bin").is_file():
        size += path.with_suffix(".bin").stat().st_size
    return size


def torch_outputs(graph: Any, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Run a ``model.GraphSpec`` in PyTorch on numpy feeds (tokens cast to int64 as the model expects)."""
    import torch

    args = [
        torch.from_numpy(feeds[n].astype(np.int64) if feeds[n].dtype.kind == "i" else feeds[n])
        for n in graph.input_names
    ]
    with torch.no_grad():
        out = graph.module(*args)
    out = out if isinstance(out, tuple) else (out,)
    return {n: o.numpy() for n, o in zip(graph.output_names, out, strict=True)}


def _log_done(kind: str, path: Path, started: float) -> None:
    log.info("%s: %s (%.2f MB) in %.1f s", kind, path, file_size(path) / 1e6, time.perf_counter() - started)


def graph_io(model: Any) -> dict[str, Any]:
    """``inputs``/``outputs`` descriptions (names, static shapes, numpy dtypes) of an ONNX ModelProto."""
    from onnx import helper

    def describe(values: Any) -> dict[str, Any]:
        out = {}
        for v in values:
            t = v.type.tensor_type
            dims = [d.dim_value if d.HasField("dim_value") else -1 for d in t.shape.dim]
            out[v.name] = {"shape": dims, "dtype": helper.tensor_dtype_to_np_dtype(t.elem_type).name}
        return out

    init = {i.name for i in model.graph.initializer}
    return {
        "inputs": describe(v for v in model.graph.input if v.name not in init),
        "outputs": describe(model.graph.output),
    }


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The decoded self-description of an ONNX file (weights are not loaded)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return decode_metadata({p.key: p.value for p in model.metadata_props})


def set_onnx_metadata(model: Any, meta: dict[str, Any]) -> None:
    """Replace the model's metadata_props by ``meta`` plus its own I/O description."""
    full = {**meta, **graph_io(model)}
    del model.metadata_props[:]
    for key, value in encode_metadata(full).items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value


def _token_wrapper(module: Any, int_inputs: Sequence[str], names: Sequence[str]) -> Any:
    """Wrap ``module`` so integer inputs arrive as int32 and are cast to the int64 the model expects."""
    import torch

    class Int32Tokens(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = module

        def forward(self, *args: torch.Tensor) -> Any:
            cast = [a.long() if n in int_inputs else a for n, a in zip(names, args, strict=True)]
            return self.inner(*cast)

    return Int32Tokens()


def export_onnx(
    module: Any,
    inputs: dict[str, Any],
    output_names: Sequence[str],
    path: str | Path,
    *,
    opset: int | None = None,
    metadata: dict[str, Any] | None = None,
    simplify: bool = True,
) -> Path:
    """Export a torch module to a static-shape ONNX file with its self-description inside.

    Args:
        module: the torch module (put in eval mode here).
        inputs: example inputs by name, in the module's argument order; integer tensors become int32 inputs.
        output_names: names of the graph outputs, in the module's return order.
        path: the ``.onnx`` file to write.
        opset: ONNX opset; ``None`` = the dynamo exporter's default, ≤ 17 = the legacy TorchScript exporter.
        metadata: description stored in ``metadata_props`` (I/O names and shapes are added automatically).
        simplify: fold constants and fuse with onnxslim.

    Returns:
        ``path``.
    """
    import onnx
    import torch

    started = time.perf_counter()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    names = list(inputs)
    int_names = [n for n, t in inputs.items() if not torch.is_floating_point(t)]
    args = tuple(inputs[n].to(getattr(torch, TOKEN_DTYPE)) if n in int_names else inputs[n] for n in names)
    wrapped = _token_wrapper(module.eval(), int_names, names).eval()
    dynamo = opset is None or opset >= DYNAMO_MIN_OPSET
    kwargs: dict[str, Any] = {"input_names": names, "output_names": list(output_names), "dynamo": dynamo}
    if opset is not None:
        kwargs["opset_version"] = opset
    if dynamo:
        kwargs["optimize"] = True
    raw = path.with_name(f".{path.stem}.raw.onnx")
    try:
        with torch.no_grad():
            torch.onnx.export(wrapped, args, str(raw), **kwargs)
        model = onnx.load(str(raw))
    except Exception as exc:  # the exporters raise many types; the message is what the user needs
        hint = "; try export.opset=17 (legacy exporter)" if dynamo else ""
        raise ArtifactError(f"ONNX export to {path} failed ({type(exc).__name__}: {exc}){hint}") from exc
    finally:
        for leftover in (raw, raw.with_name(raw.name + ".data")):
            leftover.unlink(missing_ok=True)
    if simplify:
        model = _simplify(model)
    got_opset = next(o.version for o in model.opset_import if o.domain in ("", "ai.onnx"))
    meta = {
        **(metadata or {}),
        "format": "onnx",
        "precision": "fp32",
        "opset": got_opset,
        "exporter": "dynamo" if dynamo else "torchscript",
    }
    set_onnx_metadata(model, meta)
    onnx.save(model, str(path))
    try:
        onnx.checker.check_model(str(path))
    except onnx.checker.ValidationError as exc:
        raise ArtifactError(f"exported ONNX {path} does not pass onnx.checker: {exc}") from exc
    _log_done(f"ONNX opset {got_opset} ({meta['exporter']})", path, started)
    return path


def _simplify(model: Any) -> Any:
    """onnxslim (constant folding, dead-code removal, fusions); the unsimplified graph is kept if it fails."""
    try:
        import onnxslim

        return onnxslim.slim(model)
    except Exception as exc:  # onnxslim is an optimisation: never lose the export because of it
        log.warning("onnxslim failed (%s: %s); keeping the unsimplified graph", type(exc).__name__, exc)
        return model


def export_openvino(onnx_path: str | Path, xml_path: str | Path, metadata: dict[str, Any] | None = None) -> Path:
    """Convert an exported ONNX to OpenVINO IR FP32 (``.xml`` + ``.bin``), description copied into ``rt_info``.

    Converting from ONNX (not from the torch module) keeps every input name (DESIGN §8).

    Args:
        onnx_path: an ONNX written by :func:`export_onnx`.
        xml_path: the ``.xml`` to write; the ``.bin`` goes beside it.
        metadata: entries added to (or replacing) the ONNX description.
    """
    import openvino as ov

    started = time.perf_counter()
    xml_path = Path(xml_path)
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    meta = {**read_onnx_metadata(onnx_path), "format": "openvino", "precision": "fp32", **(metadata or {})}
    try:
        model = ov.convert_model(str(onnx_path))
    except Exception as exc:  # OpenVINO front-end errors
        raise ArtifactError(f"OpenVINO conversion of {onnx_path} failed: {exc}") from exc
    write_rt_info(model, meta)
    ov.save_model(model, str(xml_path), compress_to_fp16=False)
    _log_done("OpenVINO IR FP32", xml_path, started)
    return xml_path


def write_rt_info(model: Any, meta: dict[str, Any]) -> None:
    """Store a description under ``rt_info/s2rm`` of an ``openvino.Model``."""
    for key, value in encode_metadata(meta).items():
        model.set_rt_info(value, [RT_INFO_ROOT, key])


def export_fp16_onnx(
    onnx_path: str | Path, out_path: str | Path, keep_float32: Sequence[str] = FP16_KEEP_FLOAT32
) -> Path:
    """Convert an FP32 ONNX to FP16 for TensorRT, keeping overflow-prone ops and the graph I/O in FP32.

    Uses ``onnxruntime.transformers.float16.convert_float_to_float16`` (ships inside onnxruntime) with an op block
    list; Cast nodes are inserted around the blocked ops.

    Args:
        onnx_path: the FP32 ONNX.
        out_path: the FP16 ONNX to write.
        keep_float32: op types left in FP32.
    """
    import onnx
    from onnxruntime.transformers.float16 import convert_float_to_float16

    started = time.perf_counter()
    out_path = Path(out_path)
    model = onnx.load(str(onnx_path))
    meta = decode_metadata({p.key: p.value for p in model.metadata_props})
    try:
        half = convert_float_to_float16(model, keep_io_types=True, op_block_list=list(keep_float32))
    except Exception as exc:  # converter failures come as assorted types
        raise ArtifactError(f"FP16 conversion of {onnx_path} failed: {exc}") from exc
    set_onnx_metadata(half, {**meta, "precision": "fp16", "fp32_ops": list(keep_float32)})
    onnx.save(half, str(out_path))
    _log_done("ONNX FP16", out_path, started)
    return out_path


def copy_tokenizer(src: str | Path, dst: str | Path) -> list[str]:
    """Copy a Hugging Face tokenizer's files (no weights) into ``dst``; returns the copied names."""
    src, dst = Path(src), Path(dst)
    if not src.is_dir():
        raise ArtifactError(f"tokenizer directory {src} does not exist")
    dst.mkdir(parents=True, exist_ok=True)
    copied = [n for n in TOKENIZER_FILES if (src / n).is_file()]
    if not any(n in copied for n in ("tokenizer.json", "vocab.txt", "vocab.json", "spiece.model")):
        raise ArtifactError(f"{src} holds no tokenizer files; expected one of tokenizer.json, vocab.txt, vocab.json")
    for name in copied:
        shutil.copy2(src / name, dst / name)
    return copied
