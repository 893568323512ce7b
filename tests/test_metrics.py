"""Tests of benchmarks.metrics on hand-made masks; every expected value is worked out by hand in the comments."""

from __future__ import annotations

import json

import numpy as np
import pytest

from benchmarks.bootstrap import BootstrapCI, bootstrap_diff, bootstrap_diff_oiou, compare
from benchmarks.metrics import MaskAgreement, SegMetrics, agreement, intersection_union, resize_mask_nearest
from foundation.errors import ConfigError, DataError
from runtimes.masks import logit_threshold, logits_to_mask, resize_bilinear


def m(rows: str) -> np.ndarray:
    """Mask from a picture: one string per row, '#' = foreground, '.' = background."""
    return np.array([[c == "#" for c in r] for r in rows.split()], dtype=bool)


# Five samples with known I, U and IoU (the core fixture).
# A: I=1, U=2 -> 0.5   B: I=3, U=5 -> 0.6   C: I=7, U=10 -> 0.7   D: both empty, U=0 -> 1.0   E: disjoint -> 0.0
A_PRED, A_GT = m("##.. .... .... ...."), m("#... .... .... ....")
B_PRED, B_GT = m("##.. ##.. .... ...."), m("#... ##.. .#.. ....")
C_PRED, C_GT = m("##### ##### ..... ..... ....."), m("##### ##... ..... ..... .....")
D_PRED, D_GT = m(".... .... .... ...."), m(".... .... .... ....")
E_PRED, E_GT = m("#... .... .... ...."), m(".... .... .... ...#")
SAMPLES = [  # pred, gt, id, split, kind
    (A_PRED, A_GT, "a", "val", "short"),
    (B_PRED, B_GT, "b", "val", "long"),
    (C_PRED, C_GT, "c", "val", "long"),
    (D_PRED, D_GT, "d", "testA", "short"),
    (E_PRED, E_GT, "e", "testA", "long"),
]


def filled(samples=SAMPLES) -> SegMetrics:
    acc = SegMetrics()
    for pred, gt, sid, split, kind in samples:
        acc.update(pred, gt, sample_id=sid, split=split, kind=kind)
    return acc


# ---- per-sample I / U ----------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pred", "gt", "expected"),
    [
        (A_PRED, A_GT, (1, 2)),
        (B_PRED, B_GT, (3, 5)),
        (C_PRED, C_GT, (7, 10)),
        (D_PRED, D_GT, (0, 0)),
        (E_PRED, E_GT, (0, 2)),
    ],
)
def test_intersection_union(pred, gt, expected):
    assert intersection_union(pred, gt) == expected


def test_int_masks_accepted_and_bad_masks_refused():
    assert intersection_union(B_PRED.astype(np.uint8), B_GT.astype(np.int64)) == (3, 5)
    with pytest.raises(DataError, match="0/255"):
        intersection_union(B_PRED.astype(np.uint8) * 255, B_GT)
    with pytest.raises(DataError, match="logits_to_mask"):
        intersection_union(B_PRED.astype(np.float32), B_GT)


def test_shape_mismatch_names_both_shapes():
    with pytest.raises(ValueError, match=r"\(4, 4\).*\(5, 5\)"):
        intersection_union(A_PRED, C_GT)
    with pytest.raises(DataError):
        SegMetrics().update(A_PRED, C_GT)


# ---- aggregate metrics ---------------------------------------------------------------------------------------------


def test_result_hand_computed():
    acc = filled()
    # I = 1+3+7+0+0 = 11, U = 2+5+10+0+2 = 19 ; mIoU = (0.5+0.6+0.7+1.0+0.0)/5 = 0.56
    # IoU ≥ 0.5: a,b,c,d -> 4/5 ; ≥ 0.6: b,c,d -> 3/5 ; ≥ 0.7: c,d -> 2/5 ; ≥ 0.8, 0.9: d -> 1/5
    r = acc.result()
    assert r["n"] == 5
    assert r["oIoU"] == pytest.approx(11 / 19)
    assert r["mIoU"] == pytest.approx(0.56)
    assert r["oIoU"] != pytest.approx(r["mIoU"])
    assert [r[f"prec@{t}"] for t in ("0.5", "0.6", "0.7", "0.8", "0.9")] == [0.8, 0.6, 0.4, 0.2, 0.2]
    np.testing.assert_allclose(acc.ious(), [0.5, 0.6, 0.7, 1.0, 0.0])
    assert acc.sample_ids == ["a", "b", "c", "d", "e"]
    assert json.loads(json.dumps(r)) == r  # JSON-ready


def test_precision_boundaries_use_ge():
    # One sample each with IoU exactly 0.5, 0.6, 0.7, 0.8, 0.9 (I/U = 1/2, 3/5, 7/10, 4/5, 9/10).
    acc = SegMetrics()
    for i, u in [(1, 2), (3, 5), (7, 10), (4, 5), (9, 10)]:
        acc.add(i, u)
    r = acc.result()
    # prec@t counts IoU ≥ t: 5/5, 4/5, 3/5, 2/5, 1/5 (a strict > would give 4/5, 3/5, 2/5, 1/5, 0)
    assert [r[f"prec@{t}"] for t in ("0.5", "0.6", "0.7", "0.8", "0.9")] == [1.0, 0.8, 0.6, 0.4, 0.2]


def test_oiou_and_miou_differ_big_and_small_objects():
    acc = SegMetrics()
    big_gt = np.ones((10, 10), bool)
    big_gt[9] = False  # 90 pixels
    acc.update(np.ones((10, 10), bool), big_gt, sample_id="big")
    acc.update(m("##.. .... .... ...."), m(".... .... .... ..##"), sample_id="small")
    # big: I=90, U=100 (IoU 0.9); small: I=0, U=4 (IoU 0) -> oIoU = 90/104, mIoU = 0.45
    r = acc.result()
    assert r["oIoU"] == pytest.approx(90 / 104)
    assert r["mIoU"] == pytest.approx(0.45)


def test_u_zero_counts_as_one():
    acc = SegMetrics()
    assert acc.update(D_PRED, D_GT) == 1.0
    assert acc.result() == {
        "n": 1, "oIoU": 1.0, "mIoU": 1.0, "prec@0.5": 1.0, "prec@0.6": 1.0, "prec@0.7": 1.0, "prec@0.8": 1.0,
        "prec@0.9": 1.0,
    }  # fmt: skip


def test_empty_accumulator_reports_none():
    r = SegMetrics().result()
    assert r["n"] == 0 and r["oIoU"] is None and r["mIoU"] is None and r["prec@0.5"] is None


def test_by_group_split_and_kind():
    acc = filled()
    split = acc.by_group("split")
    assert list(split) == ["testA", "val"]
    # val = a,b,c: I=11, U=17; IoUs 0.5,0.6,0.7 -> mIoU 0.6; ≥0.5: 3/3, ≥0.6: 2/3, ≥0.7: 1/3, ≥0.8: 0
    assert split["val"]["n"] == 3
    assert split["val"]["oIoU"] == pytest.approx(11 / 17)
    assert split["val"]["mIoU"] == pytest.approx(0.6)
    assert [split["val"][f"prec@{t}"] for t in ("0.5", "0.6", "0.7", "0.8")] == pytest.approx([1.0, 2 / 3, 1 / 3, 0.0])
    # testA = d,e: I=0, U=2 -> oIoU 0; IoUs 1.0, 0.0 -> mIoU 0.5, every prec 1/2
    assert split["testA"]["oIoU"] == 0.0
    assert split["testA"]["mIoU"] == 0.5
    assert split["testA"]["prec@0.9"] == 0.5
    kind = acc.by_group("kind")
    # short = a,d: I=1, U=2 -> 0.5; IoUs 0.5, 1.0 -> mIoU 0.75
    assert kind["short"]["oIoU"] == 0.5 and kind["short"]["mIoU"] == 0.75
    # long = b,c,e: I=10, U=17; IoUs 0.6, 0.7, 0.0 -> mIoU 1.3/3; ≥0.6: 2/3, ≥0.7: 1/3
    assert kind["long"]["oIoU"] == pytest.approx(10 / 17)
    assert kind["long"]["mIoU"] == pytest.approx(1.3 / 3)
    assert kind["long"]["prec@0.6"] == pytest.approx(2 / 3) and kind["long"]["prec@0.7"] == pytest.approx(1 / 3)


def test_by_group_unlabelled_and_bad_key():
    acc = SegMetrics()
    acc.add(1, 2)
    assert list(acc.by_group("kind")) == ["unlabelled"]
    with pytest.raises(ConfigError, match="did you mean 'split'"):
        acc.by_group("splt")


def test_merge_equals_single_pass_and_refuses_duplicates():
    left, right = filled(SAMPLES[:2]), filled(SAMPLES[2:])
    assert left.merge(right).result() == filled().result()
    with pytest.raises(DataError, match="'a'"):
        left.merge(filled(SAMPLES[:1]))
    assert len(left) == 5  # a refused merge adds nothing
    with pytest.raises(DataError, match="already scored"):
        left.update(A_PRED, A_GT, sample_id="a")


def test_state_dict_round_trip_keeps_only_scalars():
    acc = filled()
    state = json.loads(json.dumps(acc.state_dict()))
    assert state["I"] == [1, 3, 7, 0, 0] and state["U"] == [2, 5, 10, 0, 2]
    again = SegMetrics.from_state_dict(state)
    assert again.result() == acc.result() and again.by_group("kind") == acc.by_group("kind")
    assert not any(isinstance(v, np.ndarray) for v in vars(acc).values())


def test_update_batch():
    acc = SegMetrics()
    ious = acc.update_batch(np.stack([A_PRED, B_PRED]), np.stack([A_GT, B_GT]), sample_ids=["a", "b"], kinds=["x", "y"])
    np.testing.assert_allclose(ious, [0.5, 0.6])
    assert acc.result()["oIoU"] == pytest.approx(4 / 7)  # (1+3)/(2+5)


# ---- logits -> mask ------------------------------------------------------------------------------------------------

# 2x2 logits [[0, 6], [-6, 9]] to 4x6 with half-pixel centres:
#   rows: src_y = (o+0.5)/2 - 0.5 = -0.25(->0), 0.25, 0.75, 1.25(->row 1)  => weight of row 1: 0, 1/4, 3/4, 1
#   cols: src_x = (o+0.5)/3 - 0.5 = -1/3(->0), 0, 1/3, 2/3, 1, 4/3(->col 1) => weight of col 1: 0, 0, 1/3, 2/3, 1, 1
#   top row 0 + 6w = [0, 0, 2, 4, 6, 6]; bottom row -6 + 15w = [-6, -6, -1, 4, 9, 9]
LOGITS_2x2 = np.array([[0.0, 6.0], [-6.0, 9.0]], dtype=np.float32)
UP_4x6 = np.array(
    [
        [0.0, 0.0, 2.0, 4.0, 6.0, 6.0],
        [-1.5, -1.5, 1.25, 4.0, 6.75, 6.75],  # 3/4 top + 1/4 bottom
        [-4.5, -4.5, -0.25, 4.0, 8.25, 8.25],  # 1/4 top + 3/4 bottom
        [-6.0, -6.0, -1.0, 4.0, 9.0, 9.0],
    ]
)


def test_resize_bilinear_hand_computed():
    np.testing.assert_allclose(resize_bilinear(LOGITS_2x2, (4, 6)), UP_4x6, atol=1e-12)


def test_logits_to_mask_hand_computed():
    # t = 0.5 -> logit ≥ 0; the two exact zeros in row 0 are foreground (sigmoid(0) = 0.5 ≥ 0.5)
    assert logits_to_mask(LOGITS_2x2[None], (4, 6)).tolist() == m("###### ..#### ...### ...###").tolist()
    # t = 0.9 -> logit ≥ log 9 = 2.197: keeps 4, 6, 6.75, 8.25, 9 ...
    assert logits_to_mask(LOGITS_2x2, (4, 6), threshold=0.9).tolist() == m("...### ...### ...### ...###").tolist()
    # t = 0.7 -> logit ≥ log(7/3) = 0.847: row 1 keeps 1.25, row 0 keeps 2
    assert logits_to_mask(LOGITS_2x2, (4, 6), threshold=0.7).tolist() == m("..#### ..#### ...### ...###").tolist()


def test_threshold_convention():
    assert logit_threshold(0.5) == 0.0
    assert logits_to_mask(np.zeros((1, 2, 2), np.float32), (3, 3)).all()
    assert not logits_to_mask(np.full((2, 2), -1e-6, np.float32), (3, 3)).any()
    with pytest.raises(ConfigError):
        logits_to_mask(np.zeros((2, 2)), (3, 3), threshold=1.0)


def test_logits_to_mask_bad_input():
    with pytest.raises(DataError, match=r"\(2, 2, 2\)"):
        logits_to_mask(np.zeros((2, 2, 2)), (4, 4))
    with pytest.raises(DataError, match="non-finite"):
        logits_to_mask(np.array([[0.0, np.nan]]), (4, 4))
    with pytest.raises(ConfigError):
        logits_to_mask(np.zeros((2, 2)), (0, 4))


@pytest.mark.parametrize(
    ("in_hw", "out_hw"),
    [((2, 2), (4, 6)), ((7, 5), (13, 11)), ((30, 40), (17, 9)), ((1, 1), (3, 2)), ((12, 12), (48, 64))],
)
def test_resize_bilinear_matches_torch(in_hw, out_hw):
    torch = pytest.importorskip("torch", reason="torch not installed; the hand-computed case still covers resizing")
    interpolate = torch.nn.functional.interpolate
    x = np.random.default_rng(0).normal(size=(1, 1, *in_hw))
    # float64 on both sides checks the formula itself
    ref = interpolate(torch.from_numpy(x), size=out_hw, mode="bilinear", align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(resize_bilinear(x[0, 0], out_hw), ref, rtol=0, atol=1e-10)
    # torch in float32 differs only by float32 rounding of the source coordinate
    x32 = torch.from_numpy(x).float()
    ref32 = interpolate(x32, size=out_hw, mode="bilinear", align_corners=False)[0, 0].numpy()
    np.testing.assert_allclose(resize_bilinear(x32[0, 0].numpy(), out_hw), ref32, rtol=0, atol=1e-5)


def test_resize_mask_nearest():
    # 2x2 -> 4x4 replicates each pixel into a 2x2 block; 4x4 -> 2x2 takes rows/cols floor((o+0.5)*2) = 1, 3
    assert resize_mask_nearest(m("#. .#"), (4, 4)).tolist() == m("##.. ##.. ..## ..##").tolist()
    assert resize_mask_nearest(m("...# .#.. .... .#.#"), (2, 2)).tolist() == m("#. ##").tolist()


@pytest.mark.parametrize(
    ("in_hw", "out_hw"), [((427, 640), (48, 48)), ((37, 23), (64, 50)), ((5, 7), (3, 2)), ((480, 640), (480, 480))]
)
def test_resize_mask_nearest_matches_pil(in_hw, out_hw):
    pil = pytest.importorskip("PIL.Image", reason="Pillow not installed; the hand-computed case still covers it")
    mask = (np.random.default_rng(1).random(in_hw) > 0.5).astype(np.uint8)
    ref = np.asarray(pil.fromarray(mask).resize(out_hw[::-1], pil.NEAREST))
    assert (resize_mask_nearest(mask, out_hw) == ref).all()


# ---- bootstrap -----------------------------------------------------------------------------------------------------


def test_bootstrap_point_estimate_and_bounds():
    # a - b per sample = [0.5, 0, -0.25, 0.25]; mean(a) = 0.5, mean(b) = 0.375 -> diff 0.125
    ci = bootstrap_diff([1.0, 0.5, 0.25, 0.25], [0.5, 0.5, 0.5, 0.0], n_boot=500)
    assert isinstance(ci, BootstrapCI)
    assert ci.diff == pytest.approx(0.125)
    assert -0.25 <= ci.lower <= 0.125 <= ci.upper <= 0.5


def test_bootstrap_contains_true_difference_and_is_deterministic():
    rng = np.random.default_rng(123)
    b = rng.random(2000)
    a = b + 0.05 + rng.normal(scale=0.1, size=b.size)  # true mean difference 0.05
    ci = bootstrap_diff(a, b, n_boot=400, seed=7)
    assert ci.lower < 0.05 < ci.upper
    assert ci.upper - ci.lower < 0.02  # ±1.96·0.1/√2000 ≈ ±0.0044
    assert bootstrap_diff(a, b, n_boot=400, seed=7) == ci
    assert bootstrap_diff(a, b, n_boot=400, seed=8) != ci


def test_bootstrap_zero_width_when_equal():
    ious = np.random.default_rng(0).random(300)
    assert bootstrap_diff(ious, ious, n_boot=200) == (0.0, 0.0, 0.0)
    i = np.arange(300)
    assert bootstrap_diff_oiou(i, i + 5, i, i + 5, n_boot=200) == (0.0, 0.0, 0.0)


def test_bootstrap_oiou_hand_computed():
    # oIoU a = (9+1)/(10+2) = 10/12, oIoU b = (8+0)/(10+2) = 8/12 -> diff 1/6; every resample has a ≥ b
    ci = bootstrap_diff_oiou([9, 1], [10, 2], [8, 0], [10, 2], n_boot=300)
    assert ci.diff == pytest.approx(1 / 6)
    assert 0.0 < ci.lower <= ci.diff <= ci.upper


def test_bootstrap_10k_samples_vectorised():
    rng = np.random.default_rng(0)
    u = rng.integers(1, 5000, 10_000)
    ia, ib = (u * rng.random(10_000)).astype(int), (u * rng.random(10_000)).astype(int)
    ci = bootstrap_diff_oiou(ia, u, ib, u, n_boot=1000)
    assert ci.lower <= ci.diff <= ci.upper


def test_bootstrap_bad_input():
    with pytest.raises(DataError, match="equal length"):
        bootstrap_diff([0.1, 0.2], [0.1])
    with pytest.raises(ConfigError):
        bootstrap_diff([0.1], [0.1], ci=95)


def test_compare_pairs_by_id():
    fp32 = filled()
    int8 = SegMetrics()  # same samples in another order; sample b now has IoU 2/5 instead of 3/5
    for pred, gt, sid, split, kind in reversed(SAMPLES):
        int8.update(m("#... #... .... ....") if sid == "b" else pred, gt, sample_id=sid, split=split, kind=kind)
    # b: pred 2 px, gt 4 px, I=2, U=4 -> 0.5; drop in mIoU = (0.5 - 0.6)/5 = -0.02; oIoU 10/18 vs 11/19
    r = compare(int8, fp32, n_boot=200)
    assert r["n"] == 5
    assert r["mIoU"]["diff"] == pytest.approx(-0.02)
    assert r["oIoU"]["diff"] == pytest.approx(10 / 18 - 11 / 19)
    assert r["mIoU"]["lower"] <= -0.02 <= r["mIoU"]["upper"]
    json.dumps(r)
    with pytest.raises(DataError, match="different samples"):
        compare(filled(SAMPLES[:2]), fp32)


# ---- agreement -----------------------------------------------------------------------------------------------------


def test_agreement_hand_computed():
    x, y = m("##.. .... .... ...."), m("#... #... #... ....")
    # identical: IoU 1, 16/16 equal; x vs y: I=1, U=4 -> 0.25, 16-3 = 13 equal; both empty: IoU 1, 16/16 equal
    # mean IoU = (1 + 0.25 + 1)/3 = 0.75; pixel agreement = (16+13+16)/48 = 0.9375
    r = agreement([B_PRED, x, D_PRED], [B_PRED, y, D_GT])
    assert r == {"n": 3, "mean_iou": 0.75, "min_iou": 0.25, "pixel_agreement": 0.9375}


def test_agreement_streaming_merge_worst_and_errors():
    acc, other = MaskAgreement(), MaskAgreement()
    acc.update(A_PRED, A_GT, sample_id="a")  # 0.5
    other.update(E_PRED, E_GT, sample_id="e")  # 0.0
    acc.merge(other)
    assert acc.worst(1) == [("e", 0.0)]
    assert acc.result()["mean_iou"] == 0.25
    with pytest.raises(DataError, match="different lengths"):
        agreement([A_PRED, A_PRED], [A_PRED])
    with pytest.raises(DataError, match=r"\(4, 4\).*\(5, 5\)"):
        agreement([A_PRED], [C_PRED])
