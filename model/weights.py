"""Weight loading apart from construction: timm checkpoints, Hugging Face directories, the project's own checkpoints.

Usage: ``net = create_model("edge"); load_pretrained(net, vision_checkpoint="swin_tiny.safetensors")``.

Own checkpoints are two files: ``<prefix>.safetensors`` (weights; the spec also in its header) and ``<prefix>.json``
(spec, sha256 of the weights, caller metadata). Nothing here unpickles: ``torch.load`` runs with ``weights_only=True``
and only for timm ``.pth``/``.bin`` files. A hub download happens only with ``allow_download=True``.
"""

from __future__ import annotations

import json
import logging
import os
import pickle  # only for its exception type: nothing here unpickles
import sys
from pathlib import Path
from typing import Any

import timm
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from model import ModelError
from model.pretrained import sha256_file
from model.ris import RISModel
from model.spec import ModelSpec

log = logging.getLogger(__name__)

CHECKPOINT_FORMAT = "s2rm-edge-checkpoint"
CHECKPOINT_VERSION = 1


# ------------------------------------------------------------------------------------------------------ timm vision


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    """Read a tensor file (safetensors, or a torch file with ``weights_only=True``) with clear errors."""
    if not path.is_file():
        raise ModelError(f"weights file {str(path)!r} not found")
    try:
        if path.suffix == ".safetensors":
            return load_file(str(path))
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except (SafetensorError, RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as err:
        raise ModelError(f"weights file {str(path)!r} is truncated, corrupt or not weights-only: {err}") from err
    for key in ("model", "state_dict", "model_state"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ModelError(f"weights file {str(path)!r} holds a {type(state).__name__}, expected a state dict")
    return state


def _full_timm_model(model: RISModel, pretrained: bool = False) -> nn.Module:
    """The full (non-``features_only``) timm model of the vision encoder at the model's input size."""
    vis = model.vision
    try:
        return timm.create_model(vis.timm_name, pretrained=pretrained, img_size=vis.img_size, **vis.timm_kwargs)
    except TypeError as err:
        if "img_size" not in str(err):
            raise
        return timm.create_model(vis.timm_name, pretrained=pretrained, **vis.timm_kwargs)


def _feature_key_map(reference: nn.Module) -> dict[str, str]:
    """Prefix renames timm applies when it flattens a model's top-level ``nn.Sequential`` into a feature net."""
    renames = {}
    for name, child in reference.named_children():
        if isinstance(child, nn.Sequential):
            for sub, _ in child.named_children():
                renames[f"{name}.{sub}."] = f"{name}_{sub}."
    return renames


def _filter_for_size(state: dict[str, torch.Tensor], reference: nn.Module) -> dict[str, torch.Tensor]:
    """Apply the timm model family's own ``checkpoint_filter_fn`` (Swin: resize relative-position tables, windows)."""
    filter_fn = getattr(sys.modules[type(reference).__module__], "checkpoint_filter_fn", None)
    return filter_fn(state, reference) if filter_fn is not None else state


def _timm_vision_state(model: RISModel, path: str | os.PathLike | None, allow_download: bool) -> tuple[str, dict]:
    """(source, state dict in timm's names) of the vision weights: a file, a registry entry or the timm hub."""
    spec = model.spec
    if path is None and spec.vision_weights:
        from model.pretrained import get, read_pretrained

        entry = get(spec.vision_weights)
        if entry.timm_name != spec.vision:
            raise ModelError(
                f"vision_weights {spec.vision_weights!r} are weights of {entry.timm_name!r}, but the vision encoder is "
                f"{spec.vision!r}; set model.vision={entry.timm_name} or another vision_weights entry"
            )
        file, state = read_pretrained(spec.vision_weights)
        return f"{spec.vision_weights} ({entry.pin}: {file.name})", state
    if path is None:
        if not allow_download:
            raise ModelError(
                f"variant {spec.name!r} expects pretrained vision weights: name a packaged entry "
                f"(model.vision_weights=<name>; see model.pretrained.REGISTRY), provide a timm checkpoint file of "
                f"{spec.vision!r} (model.vision_checkpoint=<file>), or set model.allow_download=true"
            )
        try:
            return f"timm hub: {spec.vision}", _full_timm_model(model, pretrained=True).state_dict()
        except (OSError, RuntimeError, ValueError) as err:
            raise ModelError(
                f"downloading {spec.vision!r} weights failed ({err}); provide a timm checkpoint file instead "
                "(model.vision_checkpoint=<file>)"
            ) from err
    return str(path), _read_state_dict(Path(path))


def _to_body_keys(state: dict[str, torch.Tensor], body: nn.Module, reference: nn.Module) -> tuple[dict, list[str]]:
    """Map full-model keys onto the feature net's keys: kept as they are where the feature net keeps timm's names
    (EfficientNet, MobileNet: ``blocks.0.``), renamed where timm flattened a top-level Sequential (Swin, ResNet-style
    ``FeatureListNet``: ``layers.0.`` -> ``layers_0.``). Returns (mapped, ignored keys)."""
    target = body.state_dict()
    renames = _feature_key_map(reference)
    mapped, ignored = {}, []
    for key, value in state.items():
        new = key
        if new not in target:
            for old_prefix, new_prefix in renames.items():
                if new.startswith(old_prefix):
                    new = new_prefix + new[len(old_prefix) :]
                    break
        if new in target:
            mapped[new] = value
        else:
            ignored.append(key)
    return mapped, ignored


def load_vision_checkpoint(
    model: RISModel, path: str | os.PathLike | None = None, allow_download: bool = False
) -> dict[str, Any]:
    """Load timm weights into the vision encoder, resized to the model's input size and window.

    Args:
        model: the model to fill.
        path: a timm checkpoint (``.safetensors``, ``.pth`` or ``.bin``) of ``model.spec.vision``. Without it, the
            packaged weights ``model.spec.vision_weights`` names (:mod:`model.pretrained`), if any.
        allow_download: without ``path`` or ``vision_weights``, let timm fetch its default weights from the hub.

    Returns:
        A report: ``{"source", "loaded", "ignored"}`` (ignored: checkpoint keys the features-only encoder lacks,
        e.g. the classifier head).

    Raises:
        ModelError: no source, file missing/truncated/altered, or keys/shapes that do not fit (both named).
    """
    spec = model.spec
    with torch.device("meta"):  # shapes and module names only: no memory, no I/O
        reference = _full_timm_model(model)
    source, state = _timm_vision_state(model, path, allow_download)
    if not source.startswith("timm hub"):
        try:
            state = _filter_for_size(state, reference)
        except (AttributeError, KeyError, RuntimeError) as err:  # the filter met modules this model does not have
            raise ModelError(f"vision checkpoint {source!r} is not a checkpoint of {spec.vision!r}: {err}") from err
    body = model.vision.body
    target = body.state_dict()
    mapped, ignored = _to_body_keys(state, body, reference)
    # BatchNorm's step counters are bookkeeping, not weights: checkpoints from other code bases often lack them
    counters = {k: target[k] for k in target if k.endswith("num_batches_tracked") and k not in mapped}
    missing = sorted(set(target) - set(mapped) - set(counters))
    if missing:
        raise ModelError(
            f"vision checkpoint {source!r} lacks {len(missing)} of the {len(target)} weights of {spec.vision!r} "
            f"(e.g. {missing[:3]}); is it a checkpoint of that architecture?"
        )
    bad = {k: (list(v.shape), list(target[k].shape)) for k, v in mapped.items() if v.shape != target[k].shape}
    if bad:
        key = next(iter(bad))
        raise ModelError(
            f"vision checkpoint {source!r} does not fit {spec.vision!r} at img_size {spec.img_size}: {len(bad)} shape "
            f"mismatches, e.g. {key} {bad[key][0]} vs model {bad[key][1]}"
        )
    body.load_state_dict(mapped | counters, strict=True)
    log.info("vision weights: %d tensors from %s (%d ignored)", len(mapped), source, len(ignored))
    return {"source": source, "loaded": len(mapped), "ignored": ignored}


# --------------------------------------------------------------------------------------------------- HF text encoder


def load_text_weights(
    model: RISModel, text_dir: str | os.PathLike | None = None, allow_download: bool = False
) -> dict[str, Any]:
    """Load Hugging Face weights into the text encoder from a local directory (default ``model.spec.text_dir``).

    Args:
        model: the model to fill.
        text_dir: HF directory with ``config.json`` and weights (safetensors preferred).
        allow_download: without a usable directory, fetch ``spec.text_hub_id`` from the hub.

    Raises:
        ModelError: no directory, unreadable weights, or an architecture other than the model's text encoder.
    """
    from transformers import AutoModel

    spec = model.spec
    text_dir = text_dir if text_dir is not None else spec.text_dir
    if text_dir is not None and Path(text_dir).is_dir():
        source, kwargs = str(text_dir), {"local_files_only": True}
    elif allow_download and spec.text_hub_id:
        source, kwargs = spec.text_hub_id, {}
    else:
        raise ModelError(
            f"variant {spec.name!r} needs its text encoder weights: provide a local Hugging Face directory "
            f"(model.text_dir; got {None if text_dir is None else str(text_dir)!r}) with config.json and "
            f"model.safetensors of {spec.text_hub_id or 'the text encoder'}, or set model.allow_download=true"
        )
    try:
        state = AutoModel.from_pretrained(source, **kwargs).state_dict()
    except (OSError, ValueError) as err:
        raise ModelError(f"cannot load text weights from {source!r}: {err}") from err
    body = model.text.body
    target = body.state_dict()
    mapped = {k: v for k, v in state.items() if k in target}
    missing = sorted(set(target) - set(mapped))
    bad = [k for k, v in mapped.items() if v.shape != target[k].shape]
    if missing or bad:
        example = missing[:3] or [f"{k} {list(mapped[k].shape)} vs model {list(target[k].shape)}" for k in bad[:2]]
        raise ModelError(
            f"text weights in {source!r} do not fit the text encoder of variant {spec.name!r} "
            f"(hidden {body.config.hidden_size}, {body.config.num_hidden_layers} layers): {len(missing)} missing, "
            f"{len(bad)} of other shape, e.g. {example}"
        )
    body.load_state_dict(mapped, strict=True)
    log.info("text weights: %d tensors from %s", len(mapped), source)
    return {"source": source, "loaded": len(mapped), "ignored": sorted(set(state) - set(mapped))}


def load_pretrained(
    model: RISModel,
    vision_checkpoint: str | os.PathLike | None = None,
    text_dir: str | os.PathLike | None = None,
    allow_download: bool = False,
) -> dict[str, Any]:
    """Load the pretrained parts the spec asks for (``vision_pretrained``, ``text_pretrained``); returns a report."""
    report: dict[str, Any] = {}
    if model.spec.vision_pretrained:
        report["vision"] = load_vision_checkpoint(model, vision_checkpoint, allow_download)
    if model.spec.text_pretrained:
        report["text"] = load_text_weights(model, text_dir, allow_download)
    return report


# --------------------------------------------------------------------------------------------- own checkpoints


def _paths(path: str | os.PathLike) -> tuple[Path, Path]:
    """(weights, json) paths for a prefix or either file."""
    p = Path(path)
    prefix = p.with_suffix("") if p.suffix in (".safetensors", ".json") else p
    return prefix.with_name(prefix.name + ".safetensors"), prefix.with_name(prefix.name + ".json")




def save_checkpoint(
    model: RISModel, path_prefix: str | os.PathLike, extra_json: dict[str, Any] | None = None
) -> tuple[Path, Path]:
    """Write ``<prefix>.safetensors`` and ``<prefix>.json`` atomically (temp file, then rename).

    Args:
        model: the model to save; its spec goes into both files.
        path_prefix: path without suffix (a ``.safetensors``/``.json`` suffix is dropped).
        extra_json: JSON-serialisable metadata (step, metrics, config hash, ...), returned by :func:`load_checkpoint`.

    Returns:
        The (weights, json) paths.
    """
    weights_path, json_path = _paths(path_prefix)
    weights_path.parent.mkdir(parents=True, exist_ok=True)
    spec_json = json.dumps(model.spec.to_dict(), sort_keys=True)
    state = {k: v.detach().to("cpu").clone().contiguous() for k, v in model.state_dict().items()}
    tmp = weights_path.with_name(weights_path.name + ".tmp")
    try:
        save_file(state, str(tmp), metadata={"format": CHECKPOINT_FORMAT, "spec": spec_json})
        os.replace(tmp, weights_path)
    finally:
        tmp.unlink(missing_ok=True)  # a failed write (full disk) leaves no half-written file behind
    doc = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "weights": weights_path.name,
        "sha256": sha256_file(weights_path),
        "spec": json.loads(spec_json),
        "meta": extra_json or {},
    }
    tmp = json_path.with_name(json_path.name + ".tmp")
    try:
        tmp.write_text(json.dumps(doc, indent=2, sort_keys=True))
        os.replace(tmp, json_path)
    finally:
        tmp.unlink(missing_ok=True)
    return weights_path, json_path


def read_checkpoint_meta(path: str | os.PathLike) -> dict[str, Any]:
    """The JSON document of a checkpoint (spec, sha256, meta) without reading the weights."""
    _, json_path = _paths(path)
    if not json_path.is_file():
        raise ModelError(
            f"checkpoint metadata {str(json_path)!r} not found (a checkpoint is <prefix>.safetensors + .json)"
        )
    try:
        doc = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise ModelError(f"checkpoint metadata {str(json_path)!r} is truncated or corrupt: {err}") from err
    if not isinstance(doc, dict) or doc.get("format") != CHECKPOINT_FORMAT or "spec" not in doc:
        raise ModelError(f"{str(json_path)!r} is not a {CHECKPOINT_FORMAT} file")
    return doc


def _check_expected(spec: ModelSpec, expected: ModelSpec | str | None, where: str) -> None:
    if expected is None:
        return
    if isinstance(expected, str):
        if spec.name != expected:
            raise ModelError(f"checkpoint {where!r} is of variant {spec.name!r}, expected variant {expected!r}")
        return
    diff = spec.diff(expected)
    if diff:
        shown = "; ".join(f"{k}: checkpoint {a!r} vs expected {b!r}" for k, (a, b) in list(diff.items())[:5])
        raise ModelError(
            f"checkpoint {where!r} (variant {spec.name!r}) does not match the expected model (variant "
            f"{expected.name!r}): {shown}"
        )


def _read_weights(path: str | os.PathLike, doc: dict[str, Any]) -> dict[str, torch.Tensor]:
    weights_path, _ = _paths(path)
    if not weights_path.is_file():
        raise ModelError(f"checkpoint weights {str(weights_path)!r} not found")
    if doc.get("sha256") and sha256_file(weights_path) != doc["sha256"]:
        raise ModelError(
            f"checkpoint weights {str(weights_path)!r} are truncated or changed (sha256 differs from json)"
        )
    try:
        return load_file(str(weights_path))
    except (SafetensorError, OSError) as err:
        raise ModelError(f"checkpoint weights {str(weights_path)!r} are truncated or corrupt: {err}") from err


def _load_state(model: RISModel, state: dict[str, torch.Tensor], where: str) -> None:
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as err:
        raise ModelError(f"checkpoint {where!r} does not fit model {model.spec.name!r}: {err}") from err


def load_checkpoint(
    path: str | os.PathLike, expected: ModelSpec | str | None = None
) -> tuple[RISModel, dict[str, Any]]:
    """Rebuild the model a checkpoint describes and fill its weights.

    Args:
        path: the prefix, or either file.
        expected: refuse a checkpoint of another variant (a name) or another architecture (a spec).

    Returns:
        ``(model, meta)`` with ``meta`` the ``extra_json`` given to :func:`save_checkpoint`.

    Raises:
        ModelError: files missing, truncated or corrupt, or not the expected variant/config (both named).
    """
    doc = read_checkpoint_meta(path)
    spec = ModelSpec.from_dict(doc["spec"])
    _check_expected(spec, expected, str(path))
    model = RISModel(spec)
    _load_state(model, _read_weights(path, doc), str(path))
    return model, doc.get("meta", {})


def load_weights_into(model: RISModel, path: str | os.PathLike) -> dict[str, Any]:
    """Fill an existing model (e.g. to resume training) from a checkpoint of the same spec; returns its meta."""
    doc = read_checkpoint_meta(path)
    _check_expected(ModelSpec.from_dict(doc["spec"]), model.spec, str(path))
    _load_state(model, _read_weights(path, doc), str(path))
    return doc.get("meta", {})
