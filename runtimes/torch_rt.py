"""PyTorch runtime: the project's own checkpoint run eagerly, the FP32 reference every other artifact is judged by.

Usage: ``rt = get_runtime("torch").load("runs/demo/train/best.safetensors", threads=2); rt.infer(feeds)``; split
graphs share the loaded weights: ``enc = rt.graph("image_encoder")``.

A checkpoint carries its model spec (``model.weights``), so this runtime needs no config: it rebuilds the variant,
fills the weights and describes itself like an exported artifact (I/O names and shapes from ``model.graph_specs``,
normalization, tokenizer directory, token length). It is the only runtime that imports torch.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from typing import Any

import numpy as np

from foundation.errors import ArtifactError, RuntimeUnavailable, choice_error
from runtimes.base import RuntimeBase, TensorSpec, prepare_feeds
from runtimes.formats import GRAPHS

INSTALL_HINT = "pip install torch timm transformers (see the Makefile's setup target for the pinned CPU build)"


def _checkpoint_path(artifact: str | Path) -> Path:
    path = Path(artifact)
    if path.suffix not in (".safetensors", ".json"):
        path = path.with_name(path.name + ".safetensors")
    return path


class TorchRuntime(RuntimeBase):
    """Runs a project checkpoint (``<prefix>.safetensors`` + ``<prefix>.json``) with PyTorch, eager mode."""

    name = "torch"
    install_hint = INSTALL_HINT

    def __init__(self) -> None:
        super().__init__()
        self.graph_name = "full"
        self._model: Any = None
        self._module: Any = None
        self._device: Any = None
        self.settings: dict[str, Any] = {}

    def is_available(self) -> bool:
        return all(importlib.util.find_spec(m) is not None for m in ("torch", "timm", "transformers"))

    def load(
        self, artifact_path: str | Path, device: str = "CPU", threads: int | None = None, graph: str = "full"
    ) -> TorchRuntime:
        """Rebuild the model from a checkpoint and bind one of its graphs.

        Args:
            artifact_path: Checkpoint prefix or either of its files.
            device: ``CPU`` or ``CUDA`` / ``cuda:N``.
            threads: ``torch.set_num_threads`` (process-wide: torch has one intra-op pool).
            graph: ``full`` or a split graph (``image_encoder``, ``text_encoder``, ``decoder``).

        Raises:
            RuntimeUnavailable: torch, timm or transformers is missing, or CUDA was asked for and is absent.
            ArtifactError: the checkpoint is missing or corrupt.
        """
        if not self.is_available():
            raise RuntimeUnavailable(f"runtime 'torch' needs torch, timm and transformers; {INSTALL_HINT}")
        import torch

        from model import ModelError
        from model.weights import load_checkpoint

        path = _checkpoint_path(artifact_path)
        if not path.is_file():
            raise ArtifactError(f"checkpoint {path} does not exist; train first (`make demo` runs the train stage)")
        dev = device.lower()
        if dev.startswith("cuda") and not torch.cuda.is_available():
            raise RuntimeUnavailable("runtime 'torch' on CUDA: torch sees no CUDA device here")
        if threads:
            torch.set_num_threads(int(threads))
        try:
            model, meta = load_checkpoint(path)
        except ModelError as exc:
            raise ArtifactError(str(exc)) from exc
        self._device = torch.device("cpu" if dev == "cpu" else dev)
        self._model = model.eval().to(self._device)
        self.artifact = path
        # torch's pools are process-wide: this records what every graph of this process runs with
        self.settings = {
            "num_threads": torch.get_num_threads(),
            "num_interop_threads": torch.get_num_interop_threads(),
            "device": str(self._device),
        }
        self._describe(meta)
        return self.graph(graph, _into=self)

    def _describe(self, ckpt_meta: dict[str, Any]) -> None:
        spec = self._model.spec
        self.metadata = {
            "format": "torch",
            "precision": "fp32",
            "variant": spec.name,
            "img_size": spec.img_size,
            "max_tokens": spec.max_tokens,
            "image_mean": list(spec.image_mean),
            "image_std": list(spec.image_std),
            "tokenizer_dir": spec.text_dir,
            "threshold": ckpt_meta.get("threshold", 0.5),
            "config_hash": ckpt_meta.get("config_hash"),
            "checkpoint": str(self.artifact),
        }

    def graph(self, name: str, _into: TorchRuntime | None = None) -> TorchRuntime:
        """A runtime bound to one graph of the already-loaded model (weights are shared, not copied).

        Args:
            name: ``full``, ``image_encoder``, ``text_encoder`` or ``decoder``.

        Raises:
            ConfigError: unknown graph name.
            ArtifactError: called before :meth:`load`.
        """
        if self._model is None:
            raise ArtifactError("torch runtime: call load() before graph()")
        if name not in GRAPHS:
            raise choice_error("torch graph", name, GRAPHS)
        from model.graphs import graph_specs

        gspec = graph_specs(self._model)[name]
        rt = _into if _into is not None else TorchRuntime()
        rt._model, rt._device, rt.artifact, rt.settings = self._model, self._device, self.artifact, dict(self.settings)
        rt._module, rt.graph_name = gspec.module.eval(), name
        rt.inputs = {n: TensorSpec(n, tuple(gspec.input_shapes[n]), gspec.input_dtypes[n]) for n in gspec.input_names}
        rt.outputs = {n: TensorSpec(n, tuple(gspec.output_shapes[n]), "float32") for n in gspec.output_names}
        rt.metadata = {**self.metadata, "graph": name}
        rt.metadata["inputs"] = {n: s.to_dict() for n, s in rt.inputs.items()}
        rt.metadata["outputs"] = {n: s.to_dict() for n, s in rt.outputs.items()}
        return rt

    def infer(self, feeds: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        """Run the bound graph once under ``torch.inference_mode``; outputs are float32 numpy arrays."""
        if self._module is None:
            raise ArtifactError("torch runtime: call load() before infer()")
        import torch

        prepared = prepare_feeds(feeds, self.inputs, self.artifact)
        args = [torch.from_numpy(prepared[n]).to(self._device) for n in self.inputs]
        with torch.inference_mode():
            out = self._module(*args)
        values = out if isinstance(out, (tuple, list)) else (out,)
        return {n: v.float().cpu().numpy() for n, v in zip(self.outputs, values, strict=True)}
