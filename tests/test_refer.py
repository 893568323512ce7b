"""The REFER loader on a hand-made refcoco (tests/data_sets.py): loading, image modes, the restricted unpickler and
the errors that name the broken item.

Usage: ``python -m pytest tests/test_refer.py -q``.
"""

from __future__ import annotations

import collections
import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from foundation.errors import DataError
from pipeline.data.refer import annotation_mask, load_refer

# pycocotools' compiled decode trips numpy 2's __array__(copy=...) deprecation; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools.*")


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
