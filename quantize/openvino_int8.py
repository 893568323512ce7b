"""OpenVINO INT8 with NNCF post-training quantization (transformer model type), optionally accuracy-controlled.

Usage: ``quantize_openvino_int8("model.xml", "model_int8.xml", calib)``; with a budget:
``quantize_openvino_int8("model.xml", "model_int8.xml", calib, validation=(items, validation_fn), max_drop=0.01)``.

``nncf.quantize(model_type=TRANSFORMER)`` keeps LayerNorm internals, residual adds and other sensitive metatypes
un-quantized (SmoothQuant on MatMuls, MIXED preset). With ``validation`` given, ``nncf.quantize_with_accuracy_control``
reverts the quantizers that cost the most until the metric drop is within ``max_drop`` (absolute, same unit as the
metric: mIoU as a fraction, so 1 point = 0.01).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from foundation.errors import ArtifactError

log = logging.getLogger(__name__)

INPUT_NAMES = ("image", "input_ids", "attention_mask")
# NNCF ranks every quantizer group on this many validation samples (its default, 300, took > 20 min for the demo
# model's 213 quantized ops on 2 busy cores); the drop itself is still measured on the whole validation set.
RANKING_SUBSET = 64


def _calibration_items(calibration: dict[str, np.ndarray], names: Sequence[str]) -> list[dict[str, np.ndarray]]:
    n = len(calibration[names[0]])
    return [{k: calibration[k][i : i + 1] for k in names} for i in range(n)]


def ignored_ops(model: Any, nodes: Sequence[str]) -> list[str]:
    """Names of the IR operations that come from the ONNX ``nodes`` (the node's name, or ``<node>/<suffix>``)."""
    wanted = set(nodes)
    return sorted(name for op in model.get_ops() if (name := op.get_friendly_name()).split("/", 1)[0] in wanted)


def _run_nncf(
    model: Any,
    dataset: Any,
    kwargs: dict[str, Any],
    validation: tuple[Sequence[Any], Callable[[Any, Any], tuple[float, list[float]]]] | None,
    max_drop: float,
) -> tuple[Any, dict[str, Any]]:
    """Run ``nncf.quantize``, or ``nncf.quantize_with_accuracy_control`` when ``validation`` is given.

    Returns:
        ``(quantized model, settings)``: the accuracy control's settings to record, empty without it.
    """
    import nncf

    if validation is None:
        return nncf.quantize(model, dataset, **kwargs), {}
    from nncf.quantization.advanced_parameters import AdvancedAccuracyRestorerParameters

    val_items, validation_fn = validation
    restorer = AdvancedAccuracyRestorerParameters(ranking_subset_size=min(RANKING_SUBSET, len(val_items)))
    quantized = nncf.quantize_with_accuracy_control(
        model,
        dataset,
        nncf.Dataset(list(val_items), lambda item: item[0]),
        validation_fn,
        max_drop=max_drop,
        drop_type=nncf.DropType.ABSOLUTE,
        advanced_accuracy_restorer_parameters=restorer,
        **kwargs,
    )
    return quantized, {"max_drop": max_drop, "ranking_subset_size": restorer.ranking_subset_size}


def quantize_openvino_int8(
    xml_path: str | Path,
    out_path: str | Path,
    calibration: dict[str, np.ndarray],
    *,
    validation: tuple[Sequence[Any], Callable[[Any, Any], tuple[float, list[float]]]] | None = None,
    max_drop: float = 0.01,
    ignored_nodes: Sequence[str] = (),
    metadata: dict[str, Any] | None = None,
) -> tuple[Path, dict[str, Any]]:
    """Quantize an OpenVINO FP32 IR to INT8 and save it with its description (``rt_info``).

    Args:
        xml_path: FP32 IR from :func:`runtimes.export.export_openvino`.
        out_path: the INT8 ``.xml`` to write (``.bin`` beside it).
        calibration: stacked model inputs (``quantize.calibration.load_calibration``).
        validation: ``(items, validation_fn)`` to run ``quantize_with_accuracy_control``; ``validation_fn(compiled,
            items) -> (metric, per-item values)``.
        max_drop: allowed absolute metric drop with accuracy control.
        ignored_nodes: ONNX node names NNCF must leave in float, with the IR operations OpenVINO derived from them
            (named ``<node>/...``, e.g. a Conv's ``<node>/WithoutBiases``).
        metadata: entries added to the FP32 model's description.

    Returns:
        ``(out_path, info)``: info holds the NNCF settings used.
    """
    import nncf
    import openvino as ov

    from runtimes.export import file_size, write_rt_info
    from runtimes.openvino_rt import read_rt_info

    started = time.perf_counter()
    out_path = Path(out_path)
    core = ov.Core()
    model = core.read_model(str(xml_path))
    meta = read_rt_info(model)
    names = [p.get_any_name() for p in model.inputs]
    items = _calibration_items(calibration, names)
    dataset = nncf.Dataset(items)
    kwargs: dict[str, Any] = {"model_type": nncf.ModelType.TRANSFORMER, "subset_size": len(items)}
    ignored = ignored_ops(model, ignored_nodes)
    if ignored_nodes and not ignored:
        raise ArtifactError(f"{xml_path} has no operation from the nodes to keep in float {list(ignored_nodes)}")
    if ignored:
        kwargs["ignored_scope"] = nncf.IgnoredScope(names=ignored)
    info: dict[str, Any] = {
        "tool": "nncf",
        "nncf": nncf.__version__,
        "model_type": "TRANSFORMER",
        "calibration_samples": len(items),
        "accuracy_control": validation is not None,
        "ignored": ignored,
    }
    try:
        quantized, control = _run_nncf(model, dataset, kwargs, validation, max_drop)
        info |= control
    except Exception as exc:  # NNCF wraps backend errors in many types
        raise ArtifactError(f"NNCF INT8 quantization of {xml_path} failed: {type(exc).__name__}: {exc}") from exc
    write_rt_info(quantized, {**meta, **(metadata or {}), "precision": "int8", "quantization": info})
    # float constants stay float32, as in the FP32 IR: the size ratio compares INT8 with FP32 and nothing else
    ov.save_model(quantized, str(out_path), compress_to_fp16=False)
    log.info(
        "OpenVINO INT8 (NNCF%s): %s (%.2f MB) in %.1f s",
        ", accuracy control" if validation else "",
        out_path,
        file_size(out_path) / 1e6,
        time.perf_counter() - started,
    )
    return out_path, info
