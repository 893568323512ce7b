"""SynRef: generation read back through the REFER loader, the expression grammar and its judge, and the SynRef
config (vocabulary, splits).

Usage: ``python -m pytest tests/test_synref.py -q``.
"""

from __future__ import annotations

import collections
import json

import numpy as np
import pytest
from pycocotools import mask as mask_utils

from foundation.errors import ConfigError, DataError
from pipeline.config import load_config
from pipeline.data.refer import load_refer, load_refs
from pipeline.data.synref import generate_synref
from pipeline.data.synref_language import COLOURS, KINDS, SHAPES, Expr, parse_expression, render_text, vocabulary
from pipeline.data.synref_scenes import MIN_VISIBLE
from pipeline.data.synref_semantics import MAYBE, YES, SceneObject, judge, objects_from_annotations, unique_match
from tests.data_sets import TINY, data_cfg

# pycocotools' compiled decode trips numpy 2's __array__(copy=...) deprecation; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools.*")


def _shoelace(flat: list[float]) -> float:
    x, y = np.asarray(flat[0::2]), np.asarray(flat[1::2])
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


@pytest.fixture(scope="module")
def instances(synref_root) -> dict:
    return json.loads((synref_root / "synref" / "instances.json").read_text())


# --------------------------------------------------------------------------------------------------------- SynRef


def test_synref_layout_and_counts(synref_root, synref):
    folder = synref_root / "synref"
    assert (folder / "instances.json").is_file() and (folder / "refs(unc).p").is_file()
    assert synref.splits == ["testA", "testB", "train", "val"]
    counts = synref.counts()
    assert counts["images"] == {"testA": 12, "testB": 12, "train": 12, "val": 12}
    assert len(list((folder / "images").iterdir())) == 48
    sizes = {(i["width"], i["height"]) for i in synref.images.values()}
    assert len(sizes) > 10 and all(192 <= side <= 320 for wh in sizes for side in wh)
    refs = load_refs(folder / "refs(unc).p")
    keys = {"ref_id", "ann_id", "image_id", "category_id", "split", "file_name", "sentences", "sent_ids"}
    assert all(set(r) == keys for r in refs)
    assert all(set(s) == {"sent", "raw", "tokens", "sent_id", "kind"} for r in refs for s in r["sentences"])
    assert all(1 <= len(r["sentences"]) <= 3 and r["sent_ids"] == [s["sent_id"] for s in r["sentences"]] for r in refs)


def test_synref_masks_are_the_annotated_shapes(synref, instances):
    for ann in instances["annotations"]:
        mask = synref.mask(ann["id"])
        assert mask.any(), f"empty mask for annotation {ann['id']}"
        assert mask.sum() == ann["area"]
        if isinstance(ann["segmentation"], list):  # fully visible: the polygon is the annotation
            polygon_area = _shoelace(ann["segmentation"][0])
            assert abs(mask.sum() - polygon_area) <= 0.05 * polygon_area, ann["id"]
            rle = mask_utils.merge(mask_utils.frPyObjects(ann["segmentation"], mask.shape[0], mask.shape[1]))
            assert mask_utils.area(rle) == mask.sum()
        else:  # occluded or ringed: RLE of the visible pixels, still a substantial share of the shape
            assert ann["synref"]["visible_fraction"] >= MIN_VISIBLE
    assert any(isinstance(a["segmentation"], dict) for a in instances["annotations"])
    assert any(0 < a["synref"]["visible_fraction"] < 1 for a in instances["annotations"]), "no occlusion at all"


def test_synref_every_sentence_names_exactly_its_referent(synref, instances):
    by_image = collections.defaultdict(list)
    for ann in instances["annotations"]:
        by_image[ann["image_id"]].append(ann)
    categories = {c["id"]: c["name"] for c in instances["categories"]}
    checked = 0
    for ref in synref.refs.values():
        anns = by_image[ref["image_id"]]
        objects = objects_from_annotations(anns, categories)
        index = [a["id"] for a in anns].index(ref["ann_id"])
        info = synref.images[ref["image_id"]]
        for sent in ref["sentences"]:
            expr = parse_expression(sent["sent"])
            assert render_text(expr) == sent["sent"] and expr.kind == sent["kind"]
            verdicts = judge(expr, objects, info["width"], info["height"])
            assert unique_match(verdicts) == index, (sent["sent"], ref["ref_id"], verdicts)
            checked += 1
        # the stored ref points at the drawn object: the pixels under its mask have its colour
        rgb = synref.image(ref["image_id"]).astype(np.float32)
        mean = rgb[synref.mask(ref["ann_id"])].mean(axis=0)
        nearest = min(COLOURS, key=lambda c: np.linalg.norm(mean - np.asarray(COLOURS[c])))
        assert nearest == objects[index].colour, (ref["ref_id"], mean)
        assert ref["category_id"] == anns[index]["category_id"]
    assert checked == sum(len(synref.samples(s)) for s in synref.splits)


def test_synref_splits_are_disjoint_and_kinds_follow_the_split(synref):
    images = {s: {x.image_id for x in synref.samples(s)} for s in synref.splits}
    for a in images:
        for b in images:
            assert a == b or not images[a] & images[b], (a, b)
    kinds = {s: {x.kind for x in synref.samples(s)} for s in synref.splits}
    assert kinds["train"] == set(KINDS)
    assert kinds["testA"] == {"attribute"}
    assert kinds["testB"] and "attribute" not in kinds["testB"]
    assert set().union(*kinds.values()) == set(KINDS)


def test_synref_scenes_need_the_language(instances):
    by_image = collections.Counter()
    for ann in instances["annotations"]:
        by_image[(ann["image_id"], ann["category_id"])] += 1
    images = {i["id"] for i in instances["images"]}
    repeated = {image for (image, _), n in by_image.items() if n >= 2}
    assert repeated == images, "every scene repeats a shape"
    per_image = collections.Counter(a["image_id"] for a in instances["annotations"])
    assert min(per_image.values()) >= 3 and max(per_image.values()) <= 8


def test_synref_is_deterministic_per_seed(tmp_path):
    runs = {}
    for name, seed in (("a", 0), ("b", 0), ("c", 1)):
        generate_synref(tmp_path / name, data_cfg(TINY, f"data.seed={seed}"))
        folder = tmp_path / name / "synref"
        images = sorted((folder / "images").iterdir())
        runs[name] = [(folder / f).read_bytes() for f in ("instances.json", "refs(unc).p")] + [images[0].read_bytes()]
    assert runs["a"] == runs["b"]
    assert all(x != y for x, y in zip(runs["a"], runs["c"], strict=True))


def test_expression_grammar_round_trips():
    anchor = Expr("attribute", "star", colour="blue")
    exprs = [
        Expr("attribute", "triangle", colour="green", size="small"),
        Expr("location", "star", region="top right"),
        Expr("location", "ring", colour="white", region="middle"),
        Expr("relation", "square", relation="left", anchor=anchor),
        Expr("relation", "ring", relation="below", anchor=Expr("attribute", "hexagon", colour="red")),
        Expr("ordinal", "triangle", ordinal=2, direction="left"),
    ]
    texts = [render_text(e) for e in exprs]
    assert texts[0] == "the small green triangle" and texts[3] == "the square left of the blue star"
    assert texts[5] == "the second triangle from the left"
    assert [parse_expression(t) for t in texts] == exprs
    with pytest.raises(DataError, match="not a SynRef expression"):
        parse_expression("the dog on the sofa")
    assert set(" ".join(texts).split()) <= set(vocabulary())


def test_judge_says_maybe_near_borders_and_ties():
    objs = [SceneObject("star", "red", "small", 50, 50), SceneObject("star", "blue", "small", 58, 150)]
    # 8 px apart horizontally in a 200 px image: neither is clearly "first from the left"
    assert judge(Expr("ordinal", "star", ordinal=1, direction="left"), objs, 200, 200) == [MAYBE, MAYBE]
    assert unique_match(judge(Expr("ordinal", "star", ordinal=1, direction="top"), objs, 200, 200)) == 0
    # star 1 is below star 0 and only slightly right: "below" yes, "right of" at most maybe
    below = Expr("relation", "star", relation="below", anchor=Expr("attribute", "star", colour="red"))
    assert unique_match(judge(below, objs, 200, 200)) == 1
    right = Expr("relation", "star", relation="right", anchor=Expr("attribute", "star", colour="red"))
    assert judge(right, objs, 200, 200)[1] != YES


def test_synref_config_is_checked():
    with pytest.raises(ConfigError, match=r"unknown SynRef split 'tset'.*valid: train, val, testA, testB"):
        load_config(None, ["data.synref.images.tset=3"])
    with pytest.raises(ConfigError, match="split 'testA' is not generated"):
        load_config(None, ["data.synref.images.testA=0"])
    assert load_config(None, ["data.synref.images.train=5"]).data.synref.images["val"] == 120


def test_synref_vocabulary_is_configurable_and_keeps_category_ids(tmp_path):
    shapes = ["circle", "square", "star"]
    cfg = data_cfg(TINY, f"data.synref.shapes={json.dumps(shapes)}", "data.synref.colours=[red, blue, white]")
    generate_synref(tmp_path, cfg)
    inst = json.loads((tmp_path / "synref" / "instances.json").read_text())
    assert {c["name"]: c["id"] for c in inst["categories"]} == {s: SHAPES.index(s) + 1 for s in shapes}
    used = {(a["category_id"], a["synref"]["colour"]) for a in inst["annotations"]}
    assert {cat for cat, _ in used} <= {SHAPES.index(s) + 1 for s in shapes}
    assert {colour for _, colour in used} <= {"red", "blue", "white"}
    refer = load_refer(tmp_path, "synref")
    for sample in refer.samples("train"):
        expr = parse_expression(sample.text)  # still the SynRef grammar, words from the vocabulary only
        assert expr.shape in shapes and expr.colour in (None, "red", "blue", "white")


def test_config_vocabulary_is_the_generators():
    from pipeline.config_sections import SYNREF_COLOURS, SYNREF_SHAPES

    assert SHAPES == SYNREF_SHAPES and tuple(COLOURS) == SYNREF_COLOURS


def test_synref_vocabulary_is_checked():
    with pytest.raises(ConfigError, match=r"unknown SynRef shape 'sqaure'.*did you mean 'square'.*valid: circle"):
        load_config(None, ["data.synref.shapes=[circle, sqaure]"])
    with pytest.raises(ConfigError, match=r"unknown SynRef colour 'pink'.*valid: red"):
        load_config(None, ["data.synref.colours=[red, green, pink]"])
    with pytest.raises(ConfigError, match=r"SynRef shapes \['star'\]: need at least 2 distinct"):
        load_config(None, ["data.synref.shapes=[star]"])
    with pytest.raises(ConfigError, match=r"SynRef colours \['red', 'red', 'blue'\]: need at least 3 distinct"):
        load_config(None, ["data.synref.colours=[red, red, blue]"])
