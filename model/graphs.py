"""The exportable graphs of a model: the full graph and the three split graphs, with their named, static I/O.

Usage: ``specs = graph_specs(net.eval()); specs["decoder"].module(*specs["decoder"].example_inputs())``.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from model.ris import Features, RISModel

IMAGE_INPUTS = ("image",)
TEXT_INPUTS = ("input_ids", "attention_mask")
FEATURE_NAMES = ("v1", "v2", "v3", "v4")
TEXT_OUTPUTS = ("words", "sentence")
MASK_OUTPUT = ("mask_logits",)


class _Graph(nn.Module):
    """A wrapper exporting one path of the model; it takes the model's train/eval mode (an exporter that restores
    the mode of the module it was given must not flip the wrapped model to training)."""

    def __init__(self, model: RISModel) -> None:
        super().__init__()
        self.model = model
        self.train(model.training)


class FullGraph(_Graph):
    """``image, input_ids, attention_mask → mask_logits`` (the model itself, under a stable name)."""

    def forward(self, image: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> torch.Tensor:
        return self.model(image, input_ids, attention_mask)


class ImageEncoderGraph(_Graph):
    """``image → v1, v2, v3, v4``: run once per frame."""

    def forward(self, image: torch.Tensor) -> Features:
        return self.model.encode_image(image)


class TextEncoderGraph(_Graph):
    """``input_ids, attention_mask → words, sentence``: run once per expression (cacheable for fixed commands)."""

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.model.encode_text(input_ids, attention_mask)


class DecoderGraph(_Graph):
    """``v1..v4, words, sentence, attention_mask → mask_logits``: fusion + decoder, per (frame, expression)."""

    def forward(
        self,
        v1: torch.Tensor,
        v2: torch.Tensor,
        v3: torch.Tensor,
        v4: torch.Tensor,
        words: torch.Tensor,
        sentence: torch.Tensor,
        attention_mask: torch.Tensor,
    ) -> torch.Tensor:
        return self.model.decode(v1, v2, v3, v4, words, sentence, attention_mask)


@dataclass
class GraphSpec:
    """One exportable graph: the module, its named I/O with static shapes and dtypes, and example inputs."""

    name: str
    module: nn.Module
    input_names: tuple[str, ...]
    output_names: tuple[str, ...]
    input_shapes: dict[str, list[int]]
    input_dtypes: dict[str, str]
    output_shapes: dict[str, list[int]]

    def example_inputs(self, seed: int = 0, pad_from: int | None = None) -> tuple[torch.Tensor, ...]:
        """Random inputs of the right shapes; ``attention_mask`` is 1 up to ``pad_from`` (default N/2), 0 after."""
        gen = torch.Generator().manual_seed(seed)
        out = []
        for name in self.input_names:
            shape = self.input_shapes[name]
            if name == "input_ids":
                out.append(torch.randint(1000, 30000, shape, generator=gen, dtype=torch.int64))
            elif name == "attention_mask":
                mask = torch.ones(shape, dtype=torch.int64)
                mask[:, (shape[1] // 2 if pad_from is None else pad_from) :] = 0
                out.append(mask)
            else:
                out.append(torch.randn(shape, generator=gen))
        return tuple(out)


def graph_specs(model: RISModel, batch: int = 1) -> dict[str, GraphSpec]:
    """The full graph and the three split graphs (``full``, ``image_encoder``, ``text_encoder``, ``decoder``).

    Call it on a model already in eval mode: each wrapper takes the model's mode when it is built. Shapes are static
    (batch ``batch``, ``spec.max_tokens`` tokens, ``spec.img_size`` pixels), as the deployment graphs are.
    """
    spec = model.spec
    b, n, size = batch, spec.max_tokens, spec.img_size
    cl = model.text.channels
    shapes = {"image": [b, 3, size, size], "input_ids": [b, n], "attention_mask": [b, n]}
    for name, c, side in zip(FEATURE_NAMES, model.vision.channels, model.vision.feat_sizes, strict=True):
        shapes[name] = [b, c, side, side]
    shapes |= {"words": [b, n, cl], "sentence": [b, cl], "mask_logits": [b, 1, size // 4, size // 4]}
    dtypes = {k: "int64" if k in TEXT_INPUTS else "float32" for k in shapes}

    def make(name: str, module: nn.Module, inputs: tuple[str, ...], outputs: tuple[str, ...]) -> GraphSpec:
        return GraphSpec(
            name,
            module,
            inputs,
            outputs,
            {k: shapes[k] for k in inputs},
            {k: dtypes[k] for k in inputs},
            {k: shapes[k] for k in outputs},
        )

    return {
        "full": make("full", FullGraph(model), IMAGE_INPUTS + TEXT_INPUTS, MASK_OUTPUT),
        "image_encoder": make("image_encoder", ImageEncoderGraph(model), IMAGE_INPUTS, FEATURE_NAMES),
        "text_encoder": make("text_encoder", TextEncoderGraph(model), TEXT_INPUTS, TEXT_OUTPUTS),
        "decoder": make(
            "decoder", DecoderGraph(model), FEATURE_NAMES + TEXT_OUTPUTS + ("attention_mask",), MASK_OUTPUT
        ),
    }
