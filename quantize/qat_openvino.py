"""Quantization-aware training for the OpenVINO path: NNCF's PyTorch quantizer, then an OpenVINO INT8 IR.

Usage::

    qmodel = prepare_nncf_qat(graph.module, calibration_inputs)   # FakeQuantize ops, scales from calibration
    ...fine-tune qmodel (it is a torch module; its quantizer scales are parameters)...
    export_qat_openvino(qmodel, example_inputs, "full_int8_qat.xml", description)

:func:`prepare_nncf_qat` is NNCF's post-training quantization of the torch model (``nncf.quantize`` with the same
transformer preset as the PTQ path, :mod:`quantize.openvino_int8`) on the calibration samples, which returns a
trainable model: the fine-tuning starts from the PTQ scales. The mask head stays float, as in every INT8 artifact.
:func:`export_qat_openvino` converts the fine-tuned model with ``openvino.convert_model`` (the FakeQuantize ops
become the IR's), gives the inputs and output the names every artifact has (int32 token inputs, cast inside) and
stores the artifact's description in ``rt_info`` so the runtimes and the bundle read it like any other IR.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from foundation.errors import ArtifactError

log = logging.getLogger(__name__)

# The mask head (the 1×1 convolution and the sentence-conditioned term): NNCF's node names of its layers.
HEAD_PATTERNS = (r".*model/decoder/head/.*", r".*model/decoder/text_head/.*")


def prepare_nncf_qat(
    module: Any, calibration: Sequence[tuple[Any, ...]], head_patterns: Sequence[str] = HEAD_PATTERNS
) -> Any:
    """The torch module with NNCF FakeQuantize ops whose scales come from ``calibration`` (trainable).

    Args:
        module: the full graph (``forward(image, input_ids, attention_mask)`` with int64 tokens).
        calibration: input tuples of batch 1, in ``forward``'s order.
        head_patterns: regular expressions of NNCF node names that stay float.

    Raises:
        ArtifactError: NNCF could not trace or quantize the module.
    """
    import nncf

    started = time.perf_counter()
    try:
        quantized = nncf.quantize(
            module,
            nncf.Dataset(list(calibration)),
            subset_size=len(calibration),
            model_type=nncf.ModelType.TRANSFORMER,
            ignored_scope=nncf.IgnoredScope(patterns=list(head_patterns), validate=False),
        )
    except Exception as exc:  # NNCF's tracing errors carry many types
        raise ArtifactError(f"NNCF could not quantize the model for QAT: {type(exc).__name__}: {exc}") from exc
    log.info("qat: NNCF quantized the torch model on %d samples in %.1f s", len(calibration),
             time.perf_counter() - started)  # fmt: skip
    return quantized


def export_qat_openvino(
    module: Any, example: Sequence[Any], xml_path: str | Path, description: dict[str, Any], token_inputs: Sequence[int]
) -> Path:
    """Convert the fine-tuned NNCF model to an OpenVINO INT8 IR (``.xml`` + ``.bin``) with the artifact description.

    Args:
        module: the fine-tuned module from :func:`prepare_nncf_qat` (switched to eval mode here).
        example: one input tuple (int64 tokens), for tracing.
        xml_path: where to write.
        description: the FP32 IR's description (``runtimes.base``); ``precision`` and ``quantization`` are set here.
        token_inputs: positions of the token inputs (they become int32 inputs, cast to int64 inside).

    Raises:
        ArtifactError: the conversion failed or the IR's inputs do not match the description.
    """
    import openvino as ov
    import torch

    from runtimes.export import write_rt_info

    module.eval()
    names = list(description["inputs"])
    wrapped = _int32_tokens(module, set(token_inputs))
    example32 = tuple(x.to(torch.int32) if i in token_inputs else x for i, x in enumerate(example))
    try:
        with torch.no_grad():
            model = ov.convert_model(wrapped, example_input=example32)
    except Exception as exc:  # OpenVINO's torch front-end errors
        raise ArtifactError(f"OpenVINO could not convert the QAT model: {type(exc).__name__}: {exc}") from exc
    if len(model.inputs) != len(names) or len(model.outputs) != len(description["outputs"]):
        raise ArtifactError(
            f"the converted QAT model has {len(model.inputs)} inputs / {len(model.outputs)} outputs; the artifact "
            f"description has {names} / {list(description['outputs'])}"
        )
    for port, name in zip(model.inputs, names, strict=True):
        port.get_tensor().set_names({name})
    model.outputs[0].get_tensor().set_names(set(description["outputs"]))
    fq = sum(op.get_type_name() == "FakeQuantize" for op in model.get_ordered_ops())
    meta = {**description, "precision": "int8",
            "quantization": {"method": "qat", "tool": "nncf", "fake_quantize_ops": fq}}  # fmt: skip
    write_rt_info(model, meta)
    xml_path = Path(xml_path)
    xml_path.parent.mkdir(parents=True, exist_ok=True)
    ov.save_model(model, str(xml_path), compress_to_fp16=False)
    log.info("qat: OpenVINO INT8 IR with %d FakeQuantize ops -> %s", fq, xml_path)
    return xml_path


def _int32_tokens(module: Any, token_positions: set[int]) -> Any:
    """``module`` behind int32 token inputs (as every artifact takes them), cast to the int64 the model expects."""
    import torch

    class Int32Tokens(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.inner = module

        def forward(self, *args: Any) -> Any:
            return self.inner(*(a.long() if i in token_positions else a for i, a in enumerate(args)))

    return Int32Tokens()
