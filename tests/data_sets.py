"""Small data sets for the data tests: the SynRef config overrides and a hand-made REFER-layout refcoco.

Usage: ``generate_synref(root, data_cfg(SMALL))``; ``write_refcoco(tmp_path / "refer")``. tests/conftest.py builds the
``synref_root``, ``synref`` and ``refcoco_root`` fixtures from these.
"""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from pipeline.config import load_config

SMALL = "data.synref.images={train: 12, val: 12, testA: 12, testB: 12}"
TINY = "data.synref.images={train: 3, val: 2, testA: 2, testB: 2}"


def data_cfg(*overrides: str):
    """The ``data`` section of the default config with ``overrides`` applied."""
    return load_config(None, list(overrides)).data


def _jpeg(rgb: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(rgb).save(buf, format="JPEG")
    return buf.getvalue()


def write_refcoco(root: Path) -> Path:
    """A tiny refcoco under ``root``: two images (RGB JPEG, 16-bit grey PNG), polygons, a crowd RLE, refs(unc).p as
    protocol 2."""
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
