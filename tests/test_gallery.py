"""The report's mask gallery: which samples it picks, what each row shows, and the report sections it feeds."""

from __future__ import annotations

import base64
import json

import numpy as np

from benchmarks.gallery import PANEL, gallery_rows, pick_samples, write_gallery
from benchmarks.report import write_report
from benchmarks.report_assembly import assemble
from benchmarks.report_html import render_html
from benchmarks.report_markdown import render_markdown


class Fixed:
    """A runtime whose logits depend on the sample (keyed by the image's first value)."""

    def __init__(self, logits_by_key):
        self.logits = logits_by_key

    def infer(self, feeds):
        return {"mask_logits": self.logits[float(feeds["image"].flat[0])]}


class Meta:
    def __init__(self, sample_id, sentence):
        self.sample_id, self.sentence = sample_id, sentence


def _samples(n=5):
    items, ref, int8, ov = [], {}, {}, {}
    for i in range(n):
        gt = np.zeros((16, 16), bool)
        gt[:, : 8] = True
        base = np.where(gt, 3.0, -3.0)[None, None].astype(np.float32)  # [1, 1, 16, 16]
        ref[float(i)] = base
        worse = base.copy()
        worse[..., : i + 1] = -3.0  # sample i loses i + 1 columns: sample 4 disagrees most
        int8[float(i)] = worse
        ov[float(i)] = base
        rgb = np.full((16, 16, 3), 40 * i, np.uint8)
        items.append(({"image": np.full((1, 3, 4, 4), float(i), np.float32)}, gt, rgb, Meta(f"val:{i}:{i}", f"s{i}")))
    return items, {"pytorch-fp32": Fixed(ref), "onnxruntime-int8": Fixed(int8), "openvino-int8": Fixed(ov)}


def test_pick_samples_puts_the_worst_disagreement_first_then_spreads():
    agreements = {"a": {"s0": 1.0, "s1": 0.5, "s2": 1.0, "s3": 0.9, "s4": 1.0}, "b": {"s0": 0.95, "s1": 1.0,
                  "s2": 1.0, "s3": 1.0, "s4": 1.0}}  # fmt: skip
    assert pick_samples(agreements, 2) == ["s1", "s3"]  # the lowest of any artifact decides
    assert pick_samples(agreements, 5) == ["s1", "s3", "s0", "s2", "s4"]
    assert pick_samples({"a": {f"s{i}": 1.0 for i in range(9)}}, 3) == ["s0", "s4", "s8"]  # all agree: spread
    assert pick_samples({}, 4) == []
    # an artifact scored on a subset: the samples only the other scored still count
    assert pick_samples({"fp16": {"s0": 0.9}, "int8": {"s0": 1.0, "s1": 0.2}}, 2) == ["s1", "s0"]


def test_rows_have_a_panel_per_artifact_and_the_figures_of_each(tmp_path):
    items, rts = _samples()
    rows = gallery_rows(rts, "pytorch-fp32", items, 0.5)
    assert len(rows) == 5
    for k, row in enumerate(rows):
        titles = [p.title for p in row.panels]
        assert titles == ["ground truth", "pytorch-fp32", "onnxruntime-int8", "openvino-int8"]
        assert row.picture.shape[1] == (1 + len(titles)) * PANEL  # the image + one panel per mask
        ref, int8, ov = row.panels[1:]
        assert ref.iou_gt == 1.0 and ref.agreement is None and ov.agreement == 1.0
        assert int8.agreement == (8 - (k + 1)) / 8 and row.min_agreement == int8.agreement
    # the picture shows the masks: the INT8 panel of the worst sample has fewer red pixels than the FP32 panel
    last = rows[-1].picture
    top = last.shape[0] - PANEL
    red = lambda tile: int(((tile[..., 0] > 150) & (tile[..., 1] < 120)).sum())  # noqa: E731
    fp32_tile, int8_tile = (last[top:, (c + 0) * PANEL : (c + 1) * PANEL] for c in (2, 3))
    assert red(int8_tile) < red(fp32_tile)


def test_gallery_files_and_report_sections_worst_first(tmp_path):
    items, rts = _samples()
    agreements = {"onnxruntime-int8": {m.sample_id: (7 - k) / 8 for k, (_, _, _, m) in enumerate(items)}}
    picks = pick_samples(agreements, 3)
    assert picks == ["val:4:4", "val:3:3", "val:2:2"]
    chosen = [it for sid in picks for it in items if it[3].sample_id == sid]
    doc = write_gallery(gallery_rows(rts, "pytorch-fp32", chosen, 0.5), tmp_path / "g")
    assert [r["sample_id"] for r in doc["rows"]] == picks
    assert [r["file"] for r in doc["rows"]] == ["00.png", "01.png", "02.png"]
    assert json.loads((tmp_path / "g" / "gallery.json").read_text()) == doc
    assert (tmp_path / "g" / "gallery.png").is_file()
    rep = assemble(None, None) | {"gallery": doc}
    md = render_markdown(rep)
    assert "## Mask gallery" in md and md.index("val:4:4") < md.index("val:3:3") and "(gallery/00.png)" in md
    assert "IoU 0.38, agr 0.38" in md  # onnxruntime-int8 on val:4:4 lost 5 of 8 columns
    pictures = {r["file"]: (tmp_path / "g" / r["file"]).read_bytes() for r in doc["rows"]}
    page = render_html(rep, gallery=pictures)
    assert page.count("data:image/png;base64,") == 3
    assert base64.b64encode(pictures["00.png"]).decode() in page
    paths = write_report(rep, tmp_path / "report", tmp_path / "g")
    assert (tmp_path / "report" / "gallery" / "02.png").read_bytes() == pictures["02.png"]
    assert paths["gallery/00.png"].is_file()
