"""Reliability of data sets: a hand-made refcoco broken in each way the REFER loader must refuse, naming the item;
missing and corrupt files; a refs pickle that would run code.

Usage: ``pytest tests/test_reliability_data.py``; with ``S2RM_RELIABILITY_LOG=<file>`` each case appends its row
to that file (tests/reliability_log.py).
"""

from __future__ import annotations

import functools
import json
import pickle
from collections.abc import Callable
from pathlib import Path

import pytest
from PIL import Image

from foundation.errors import ConfigError, DataError
from pipeline.config import load_config
from pipeline.data.refer import load_refer
from tests.reliability_inputs import Shell
from tests.reliability_log import refused

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning", "ignore::UserWarning", "ignore::FutureWarning")


# ------------------------------------------------------------------------------------------------------ data sets


def write_refer(root: Path, edit: Callable[[dict, list], None] | None = None) -> Path:
    """A tiny refcoco in the REFER layout (two images, three refs); ``edit(instances, refs)`` breaks it."""
    images = root / "images" / "mscoco" / "images" / "train2014"
    images.mkdir(parents=True, exist_ok=True)
    (root / "refcoco").mkdir(exist_ok=True)
    Image.new("RGB", (60, 40), (120, 30, 30)).save(images / "a.jpg")
    Image.new("RGB", (30, 50), (30, 120, 30)).save(images / "b.png")
    box = lambda x, y, s: [x, y, x + s, y, x + s, y + s, x, y + s]  # noqa: E731
    instances = {
        "images": [
            {"id": 1, "file_name": "a.jpg", "height": 40, "width": 60},
            {"id": 2, "file_name": "b.png", "height": 50, "width": 30},
        ],
        "annotations": [
            {"id": 11, "image_id": 1, "category_id": 1, "segmentation": [box(0, 0, 10)], "iscrowd": 0},
            {"id": 12, "image_id": 1, "category_id": 1, "segmentation": [box(20, 10, 10)], "iscrowd": 0},
            {"id": 21, "image_id": 2, "category_id": 1, "segmentation": [box(5, 5, 10)], "iscrowd": 0},
        ],
        "categories": [{"id": 1, "name": "thing"}],
    }

    def ref(ref_id: int, ann_id: int, image_id: int, split: str, sentences: list[tuple[int, str]]) -> dict:
        sents = [{"sent_id": i, "sent": s, "tokens": s.split()} for i, s in sentences]
        return {"ref_id": ref_id, "ann_id": ann_id, "image_id": image_id, "split": split, "sentences": sents}

    refs = [
        ref(0, 11, 1, "train", [(0, "left square"), (1, "top left thing")]),
        ref(1, 12, 1, "val", [(2, "middle square")]),
        ref(2, 21, 2, "testB", [(3, "the square")]),
    ]
    if edit is not None:
        edit(instances, refs)
    (root / "refcoco" / "instances.json").write_text(json.dumps(instances))
    (root / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps(refs, protocol=2))
    return root


def _dup(rows: list, index: int = 0) -> None:
    rows.append(dict(rows[index]))


LOAD_ERRORS: dict[str, tuple[Callable[[dict, list], None], str]] = {
    # name: (edit of (instances, refs), words the DataError must hold)
    "duplicate image id": (lambda inst, refs: _dup(inst["images"]), "duplicate image id 1"),
    "duplicate annotation id": (lambda inst, refs: _dup(inst["annotations"]), "duplicate annotation id 11"),
    "duplicate ref id": (lambda inst, refs: refs[2].update(ref_id=0), "duplicate ref id 0"),
    "duplicate sentence id": (lambda inst, refs: refs[1]["sentences"][0].update(sent_id=0), "duplicate sentence id 0"),
    "ref -> missing annotation": (lambda inst, refs: refs[0].update(ann_id=99), "ref 0 points at annotation id 99"),
    "ref -> missing image": (lambda inst, refs: refs[1].update(image_id=7), "ref 1 points at image id 7"),
    "annotation on another image than its ref": (
        lambda inst, refs: inst["annotations"][2].update(image_id=1),
        "its annotation 21 is on image 1",
    ),
    "annotation -> missing image": (lambda inst, refs: inst["annotations"][0].update(image_id=9), "unknown image id 9"),
    "empty polygon list": (lambda inst, refs: inst["annotations"][0].update(segmentation=[]), "annotation 11"),
    "RLE with no foreground pixel": (
        lambda inst, refs: inst["annotations"][1].update(segmentation={"size": [40, 60], "counts": [2400]}),
        "annotation 12, whose segmentation is empty",
    ),
    "sentence of control characters only": (
        lambda inst, refs: refs[2]["sentences"][0].update(sent="\x00\x07\u200b"),
        "sentence 3 of ref 2",
    ),
    "ref without sentences key": (lambda inst, refs: refs[0].pop("sentences"), "ref #0 lacks sentences"),
}


@pytest.mark.parametrize("name", list(LOAD_ERRORS))
def test_inconsistent_data_sets_are_refused_naming_the_item(name, tmp_path):
    edit, words = LOAD_ERRORS[name]
    root = write_refer(tmp_path / "refer", edit)
    refused("data set", name, DataError, lambda: load_refer(root, "refcoco", "unc"), words)


def test_missing_and_corrupt_data_files_are_named(tmp_path):
    root = write_refer(tmp_path / "refer")
    folder = root / "refcoco"
    refs = (folder / "refs(unc).p").read_bytes()
    check = functools.partial(refused, "data set")
    load = lambda: load_refer(root, "refcoco", "unc")  # noqa: E731
    (folder / "refs(unc).p").write_bytes(refs[: len(refs) // 2])
    check("truncated refs(unc).p", DataError, load, str(folder / "refs(unc).p"), "not a readable pickle")
    (folder / "refs(unc).p").unlink()
    check("missing refs(unc).p", DataError, load, str(folder / "refs(unc).p"), "not found")
    (folder / "refs(unc).p").write_bytes(refs)
    (folder / "instances.json").write_text('{"images": [')
    check("instances.json not JSON", DataError, load, str(folder / "instances.json"), "not valid JSON")
    (folder / "instances.json").unlink()
    check("missing instances.json", DataError, load, str(folder / "instances.json"), "not found")


def test_refs_pickle_that_would_run_code_is_refused(tmp_path):
    root = write_refer(tmp_path / "refer")
    marker = tmp_path / "pwned"
    (root / "refcoco" / "refs(unc).p").write_bytes(pickle.dumps([Shell(marker)], protocol=2))
    load = lambda: load_refer(root, "refcoco", "unc")  # noqa: E731
    refused("untrusted files", "refs(unc).p pickling os.system", DataError, load, "refused")
    assert not marker.exists()


def test_images_masks_and_splits_are_checked_on_use(tmp_path):
    degenerate = lambda inst, refs: inst["annotations"][2].update(segmentation=[[5, 5, 5, 5, 5, 5]])  # noqa: E731
    root = write_refer(tmp_path / "refer", degenerate)
    ds = load_refer(root, "refcoco", "unc")
    check = functools.partial(refused, "data set")
    check("zero-area polygon (empty mask)", DataError, lambda: ds.mask(21), "annotation 21", "b.png", "empty mask")
    images = root / "images" / "mscoco" / "images" / "train2014"
    Image.new("RGB", (61, 40)).save(images / "a.jpg")
    check("image size differs from instances.json", DataError, lambda: ds.image(1), "a.jpg", "61x40")
    (images / "a.jpg").unlink()
    check("missing image file", DataError, lambda: ds.image(1), "image 1", "a.jpg", "not found")
    (images / "b.png").write_bytes(b"\x89PNG garbage")
    check("corrupt image file", DataError, lambda: ds.image(2), "image 2", "b.png", "corrupt")
    check("wrong split name 'tset'", DataError, lambda: ds.samples("tset"), "'tset'", "valid: testB, train, val")
    check("wrong split_by 'umd'", DataError, lambda: load_refer(root, "refcoco", "umd"), "'umd'", "unc, google")
    check("unknown data set 'refcco'", DataError, lambda: load_refer(root, "refcco"), "did you mean 'refcoco'")
    check(
        "data.eval_splits=[tset] (SynRef)", ConfigError, lambda: load_config(None, ["data.eval_splits=[tset]"]), "tset"
    )
