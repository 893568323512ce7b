"""Resumable training state (the ``last/`` folder), seeding and RNG capture, with nothing loaded through pickle.

Usage: ``seed_everything(seed, deterministic)`` before the model is built;
``save_state(out / "last", model, extra, optimizer, scheduler, scaler, meta)``; on resume
``meta = load_state(out / "last", model, extra, optimizer, scheduler, scaler, identity)``.

Layout of ``last/``:

- ``model.safetensors`` + ``model.json``: the model in the project's checkpoint format (:mod:`model.weights`);
- ``extra.safetensors``: other trainable tensors of the objective (distillation adapters), when there are any;
- ``optim.pt``: optimizer, scheduler and GradScaler state plus the python / numpy / torch RNG states, written with
  ``torch.save`` and read back with ``torch.load(weights_only=True)`` (tensors, numbers, strings and lists only);
- ``state.json``: step, best score so far, elapsed time, the identity of the run (variant, config sections) and the
  size + sha256 of every file above. It is written last.

The folder is assembled under a temporary name and swapped in with two renames, so a kill at any moment leaves either
the previous complete state or the new one (:func:`find_state` looks at both).
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from foundation.errors import CheckpointError
from foundation.io import atomic_write_json, fsync_dir, json_digest, leaf_changes, sha256_file

STATE_JSON = "state.json"
MODEL_PREFIX = "model"  # model.safetensors + model.json
EXTRA_FILE = "extra.safetensors"
OPTIM_FILE = "optim.pt"
# config keys that change how a run is watched, not what it computes: a resumed run may change them
RUNTIME_KEYS = ("num_workers", "threads", "tensorboard", "log_every", "checkpoint_every", "eval_every", "eval_samples")


# --------------------------------------------------------------------------------------------------------- RNG


def seed_everything(seed: int, deterministic: bool) -> None:
    """Seed python, numpy and torch identically on every process; optionally ask torch for deterministic kernels.

    Every rank gets the same seed: ranks then draw identical random streams (dropout masks), so rank 0's RNG state
    stands for all of them in a checkpoint.
    """
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)
    if deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
        torch.use_deterministic_algorithms(True, warn_only=True)
        torch.backends.cudnn.benchmark = False


def rng_state() -> dict[str, Any]:
    """Python, numpy and torch (CPU and CUDA) RNG states as tensors and plain lists (``weights_only``-loadable)."""
    version, mt, gauss = random.getstate()
    kind, keys, pos, has_gauss, cached = np.random.get_state(legacy=True)
    return {
        "python": [version, list(mt), gauss],
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(cached)],
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
    }


def set_rng_state(state: dict[str, Any]) -> None:
    """Restore what :func:`rng_state` captured."""
    version, mt, gauss = state["python"]
    random.setstate((int(version), tuple(int(v) for v in mt), gauss))
    kind, keys, pos, has_gauss, cached = state["numpy"]
    np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), int(pos), int(has_gauss), float(cached)))
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# --------------------------------------------------------------------------------------------------------- identity


def run_identity(cfg_sections: dict[str, Any], variant: str) -> dict[str, Any]:
    """What a checkpoint must share with the run resuming it: the variant and the config minus runtime-only keys."""
    tree = json.loads(json.dumps(cfg_sections))
    for section in tree.values():
        if isinstance(section, dict):
            for key in RUNTIME_KEYS:
                section.pop(key, None)
    return {"variant": variant, "config": tree}


def _digest(tree: Any) -> str:
    return json_digest(tree)[:12]


def _leaf_diff(old: Any, new: Any) -> list[str]:
    return [f"{key}: checkpoint {a!r} vs run {b!r}" for key, a, b in leaf_changes(old, new)]


def check_identity(path: Path, stored: dict[str, Any], expected: dict[str, Any]) -> None:
    """Refuse a checkpoint written by another variant or config, naming both and the keys that differ.

    Raises:
        CheckpointError: the variant or any non-runtime config key differs.
    """
    diffs = _leaf_diff(stored.get("config"), expected["config"])
    if stored.get("variant") != expected["variant"] or diffs:
        raise CheckpointError(
            f"checkpoint {path} belongs to another run: variant {stored.get('variant')!r} with config "
            f"{_digest(stored.get('config'))}, this run is variant {expected['variant']!r} with config "
            f"{_digest(expected['config'])}; differing keys: {'; '.join(diffs[:8]) or 'none'}. Resume with the "
            "checkpoint's config, or train into another folder"
        )


# --------------------------------------------------------------------------------------------------------- save


def _fsync(path: Path) -> None:
    with open(path, "rb+") as fh:
        os.fsync(fh.fileno())


def save_state(
    path: Path,
    model: nn.Module,
    extra: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    meta: dict[str, Any],
) -> None:
    """Write the complete training state to the folder ``path`` (replacing it only once everything is on disk).

    Args:
        path: the state folder (``<out>/last``).
        model: the model (not a DDP wrapper); saved in the :mod:`model.weights` format.
        extra: other trainable tensors to keep (e.g. distillation adapters), by name.
        optimizer: its state and param groups.
        scheduler: the lr schedule's state.
        scaler: the fp16 GradScaler's state (empty when disabled).
        meta: JSON-ready facts (step, best, identity, elapsed time); stored in ``state.json``.
    """
    from model.weights import save_checkpoint

    tmp, old = path.with_name(f".{path.name}.tmp"), path.with_name(f".{path.name}.old")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    save_checkpoint(model, tmp / MODEL_PREFIX, {"step": meta.get("step")})
    if extra:
        save_file({k: v.detach().cpu().contiguous() for k, v in extra.items()}, str(tmp / EXTRA_FILE))
    blob = {
        "optimizer": optimizer.state_dict(),
        "scheduler": scheduler.state_dict(),
        "scaler": scaler.state_dict(),
        "rng": rng_state(),
    }
    torch.save(blob, tmp / OPTIM_FILE)
    files = {}
    for file in sorted(p for p in tmp.iterdir() if p.is_file()):
        _fsync(file)
        files[file.name] = {"size": file.stat().st_size, "sha256": sha256_file(file)}
    atomic_write_json(tmp / STATE_JSON, {**meta, "files": files})
    fsync_dir(tmp)
    shutil.rmtree(old, ignore_errors=True)
    if path.exists():
        os.replace(path, old)
    os.replace(tmp, path)
    fsync_dir(path.parent)
    shutil.rmtree(old, ignore_errors=True)


# --------------------------------------------------------------------------------------------------------- load


def find_state(path: Path) -> Path | None:
    """The complete state folder at ``path``, or the previous one left by a kill between the two swap renames."""
    for candidate in (path, path.with_name(f".{path.name}.old")):
        if (candidate / STATE_JSON).is_file():
            return candidate
    return None


def read_meta(folder: Path) -> dict[str, Any]:
    """``state.json`` of a state folder, with every listed file checked for size and sha256.

    Raises:
        CheckpointError: ``state.json`` is unreadable, or a file is missing, truncated or altered.
    """
    try:
        meta = json.loads((folder / STATE_JSON).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise CheckpointError(f"training state {folder / STATE_JSON} is unreadable or truncated: {exc}") from None
    for name, info in meta.get("files", {}).items():
        file = folder / name
        if not file.is_file():
            raise CheckpointError(f"training state {folder} is missing {name}; delete the folder to start afresh")
        size = file.stat().st_size
        if size != info["size"]:
            raise CheckpointError(
                f"{file} is truncated or altered: {size} bytes, the state recorded {info['size']}; delete {folder} "
                "to start afresh"
            )
        if sha256_file(file) != info["sha256"]:
            raise CheckpointError(f"{file} does not match its recorded sha256 (corrupt); delete {folder} to restart")
    return meta


def load_state(
    folder: Path,
    model: nn.Module,
    extra: dict[str, torch.Tensor],
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    scaler: torch.amp.GradScaler,
    identity: dict[str, Any],
) -> dict[str, Any]:
    """Load a state folder written by :func:`save_state` into the given objects and restore the RNGs.

    Args:
        folder: a complete state folder (see :func:`find_state`).
        model: the freshly built model of the same spec.
        extra: the tensors saved as ``extra`` (overwritten in place).
        optimizer: built over the same parameter groups.
        scheduler: the lr schedule.
        scaler: the GradScaler.
        identity: :func:`run_identity` of the resuming run.

    Returns:
        The stored ``state.json`` content (step, best, elapsed...).

    Raises:
        CheckpointError: another variant or config, or a missing, truncated or corrupt file.
    """
    from model import ModelError
    from model.weights import load_weights_into

    meta = read_meta(folder)
    check_identity(folder, meta.get("identity", {}), identity)
    try:
        load_weights_into(model, folder / MODEL_PREFIX)
    except ModelError as exc:
        raise CheckpointError(f"cannot load the model of training state {folder}: {exc}") from None
    if extra:
        try:
            tensors = load_file(str(folder / EXTRA_FILE))
        except (OSError, SafetensorError) as exc:
            raise CheckpointError(f"{folder / EXTRA_FILE} is unreadable or truncated: {exc}") from None
        missing = sorted(set(extra) - set(tensors))
        if missing:
            raise CheckpointError(f"{folder / EXTRA_FILE} lacks {missing}; it was written by another objective")
        with torch.no_grad():
            for name, tensor in extra.items():
                tensor.copy_(tensors[name])
    try:
        blob = torch.load(folder / OPTIM_FILE, map_location="cpu", weights_only=True)
        optimizer.load_state_dict(blob["optimizer"])
        scheduler.load_state_dict(blob["scheduler"])
        scaler.load_state_dict(blob["scaler"])
        set_rng_state(blob["rng"])
    except (OSError, RuntimeError, KeyError, ValueError, TypeError) as exc:
        raise CheckpointError(f"{folder / OPTIM_FILE} cannot be restored (truncated or another run's): {exc}") from None
    return meta
