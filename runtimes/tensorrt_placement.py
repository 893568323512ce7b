"""Where a DLA engine's layers run: trtexec's exported layer information, summarized into the engine's sidecar.

Usage: a DLA trtexec line exports ``<engine>.layers.json`` (:func:`layer_info_path`); after it,
``record_placement(engine_path, settings)`` adds the ``placement`` summary to the sidecar and
:func:`describe_placement` gives its one-line report.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from foundation.errors import ArtifactError
from runtimes.tensorrt_settings import BuildSettings

log = logging.getLogger(__name__)

# Layers trtexec's layer information lists for the copies in and out of a DLA subgraph.
DLA_TRANSFER_SUFFIXES = (" to nvm", " from nvm", " copy finish")


def layer_info_path(engine_path: str | Path) -> Path:
    """Where the trtexec line of a DLA build exports the engine's layer information (``<engine>.layers.json``)."""
    return Path(f"{engine_path}.layers.json")


def layer_placement(layer_info: Mapping[str, Any]) -> dict[str, Any]:
    """Where an engine's layers run, from trtexec's ``--exportLayerInfo`` JSON.

    That JSON is the engine inspector's ``{"Layers": [...], "Bindings": [...]}``: with
    ``--profilingVerbosity=detailed`` each layer is an object with ``Name`` and ``LayerType``, otherwise a bare name.
    A DLA subgraph is one layer named ``{ForeignNode[first...last]}`` (the builder log calls it ``[DlaLayer]``); a
    layer counts as DLA when its type names DLA, or when it is such a foreign node that is not a Myelin (GPU) one. The
    copies in and out of DLA (``<tensor> to nvm``, ``from nvm``, ``copy finish``) are counted apart, and a layer
    without a type (not detailed) as unknown. ``layer_types`` keeps the raw type counts.

    Returns:
        ``{"layers", "dla", "gpu", "dla_transfers", "unknown", "dla_layers", "layer_types"}``.
    """
    counts = {"dla": 0, "gpu": 0, "dla_transfers": 0, "unknown": 0}
    dla_layers, types = [], {}
    layers = layer_info.get("Layers") or []
    for layer in layers:
        name = layer if isinstance(layer, str) else str(layer.get("Name", ""))
        kind = None if isinstance(layer, str) else layer.get("LayerType")
        if kind is not None:
            types[str(kind)] = types.get(str(kind), 0) + 1
        if name.endswith(DLA_TRANSFER_SUFFIXES):
            counts["dla_transfers"] += 1
        elif kind is None:
            counts["unknown"] += 1
        elif "dla" in str(kind).lower() or (name.startswith("{ForeignNode[") and "myelin" not in str(kind).lower()):
            counts["dla"] += 1
            dla_layers.append(name)
        else:
            counts["gpu"] += 1
    return {"layers": len(layers), **counts, "dla_layers": dla_layers, "layer_types": types}


def describe_placement(placement: Mapping[str, Any]) -> str:
    """One line for a :func:`layer_placement` summary."""
    core = placement.get("dla_core")
    line = (
        f"{placement['dla']} of {placement['layers']} engine layers on DLA core {core}, {placement['gpu']} on the GPU"
        f" ({placement['dla_transfers']} DLA transfers"
        + (f", {placement['unknown']} without a type" if placement["unknown"] else "")
        + ")"
    )
    if placement["unknown"] and not placement["dla"] and not placement["gpu"]:
        return line + ": the layer information has no layer types (trtexec --profilingVerbosity=detailed)"
    if not placement["dla"]:
        return line + f": nothing runs on DLA core {core}; the engine runs on the GPU"
    return line


def record_placement(engine_path: str | Path, settings: BuildSettings) -> dict[str, Any] | None:
    """Add where the layers of a DLA engine run to its sidecar (``placement``), from ``<engine>.layers.json``.

    Args:
        engine_path: the engine; its sidecar must exist (:func:`runtimes.tensorrt_build.write_sidecar`).
        settings: the settings it was built with; nothing is done without a DLA core.

    Returns:
        The placement (:func:`layer_placement` with ``dla_core`` and ``layer_info``), or None: no DLA core, or no
        layer information (then a warning says so).
    """
    from foundation.io import atomic_write_json

    if settings.dla_core is None:
        return None
    info = layer_info_path(engine_path)
    if not info.is_file():
        log.warning(
            "%s: no layer information %s (trtexec --exportLayerInfo); where its layers run is unknown",
            engine_path,
            info,
        )
        return None
    try:
        raw = json.loads(info.read_text())
    except json.JSONDecodeError as exc:
        raise ArtifactError(f"layer information {info} is not valid JSON: {exc}") from None
    placement = {**layer_placement(raw), "dla_core": settings.dla_core, "layer_info": info.name}
    sidecar_file = Path(f"{engine_path}.json")
    sidecar = json.loads(sidecar_file.read_text())
    sidecar["placement"] = placement
    atomic_write_json(sidecar_file, sidecar)
    return placement
