"""SynRef: a synthetic referring-segmentation data set written in the REFER layout, read by the same loader as RefCOCO.

Usage: ``stats = generate_synref(out_dir, cfg.data)``, then ``load_refer(out_dir, "synref")``.

Each image is a drawn scene (:mod:`~pipeline.data.synref_scenes`); its referents are objects with an expression that
provably names them alone (:mod:`~pipeline.data.synref_semantics`), written as sentences of the SynRef grammar
(:mod:`~pipeline.data.synref_language`). This module picks the referents and sentences and writes the splits:
``instances.json``, ``refs(unc).p``, ``images/`` and ``info.json``. Train and val mix every kind of expression; testA
holds attribute expressions only, testB the location, relation and ordinal ones.
"""

from __future__ import annotations

import json
import logging
import pickle
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from tqdm import tqdm

from foundation.errors import DataError
from foundation.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from pipeline.config_sections import DataConfig, SynRefConfig
from pipeline.data.synref_language import KINDS, SHAPES, Expr, render_text, vocabulary
from pipeline.data.synref_scenes import Scene, make_scene, shape_vocabulary
from pipeline.data.synref_semantics import candidate_expressions

log = logging.getLogger(__name__)

GENERATOR_VERSION = "1"
SPLITS = ("train", "val", "testA", "testB")
SPLIT_KINDS = {
    "train": KINDS,
    "val": KINDS,
    "testA": ("attribute",),
    "testB": ("location", "relation", "ordinal"),
}


def _annotation(scene: Scene, k: int, ann_id: int, image_id: int) -> dict[str, Any]:
    """COCO annotation of object k: its polygon when fully visible and hole-free, else RLE of the visible pixels."""
    visible = scene.owner == k
    rle = mask_utils.encode(np.asfortranarray(visible.astype(np.uint8)))
    area = int(visible.sum())
    if area == scene.full_areas[k] and not scene.holes[k]:
        segmentation: Any = [scene.outlines[k]]
    else:
        segmentation = {"size": [scene.height, scene.width], "counts": rle["counts"].decode("ascii")}
    obj = scene.objects[k]
    return {
        "id": ann_id,
        "image_id": image_id,
        "category_id": SHAPES.index(obj.shape) + 1,
        "bbox": [float(v) for v in mask_utils.toBbox(rle)],
        "segmentation": segmentation,
        "area": float(area),
        "iscrowd": 0,
        "synref": {
            "colour": obj.colour,
            "size": obj.size,
            "center": [obj.cx, obj.cy],
            "rotation": scene.rotations[k],
            "visible_fraction": round(area / scene.full_areas[k], 4),
        },
    }


def _sentences(rng: np.random.Generator, exprs: list[Expr], count: int) -> list[Expr]:
    """Up to ``count`` distinct expressions, spread over as many kinds as the candidates allow."""
    by_kind: dict[str, list[Expr]] = {}
    for e in exprs:
        by_kind.setdefault(e.kind, []).append(e)
    kinds = [list(by_kind)[k] for k in rng.permutation(len(by_kind))]
    chosen: list[Expr] = []
    while len(chosen) < count and any(by_kind.values()):
        for kind in kinds:
            pool = by_kind[kind]
            if pool and len(chosen) < count:
                chosen.append(pool.pop(int(rng.integers(len(pool)))))
    return chosen


def _scene_refs(rng: np.random.Generator, scene: Scene, kinds: tuple[str, ...], cfg: SynRefConfig) -> list[tuple]:
    """(object index, expressions) of the referents: objects of a repeated shape first, at most ``max_refs``."""
    counts = Counter(o.shape for o in scene.objects)
    order = [int(k) for k in rng.permutation(len(scene.objects))]
    order.sort(key=lambda k: counts[scene.objects[k].shape] < 2)  # stable: repeated shapes first, random within
    refs = []
    for k in order:
        exprs = candidate_expressions(k, scene.objects, scene.width, scene.height, kinds)
        if exprs:
            refs.append((k, _sentences(rng, exprs, int(rng.integers(1, cfg.max_sentences + 1)))))
        if len(refs) == cfg.max_refs:
            break
    return refs


def generate_synref(out_dir: str | Path, data_cfg: DataConfig) -> dict[str, Any]:
    """Generate SynRef into ``<out_dir>/synref`` in the REFER layout and return its statistics.

    Writes ``instances.json`` (COCO), ``refs(unc).p`` (pickled list of ref dicts), ``images/`` and ``info.json``
    (generator version, seed, vocabulary, statistics). Every image is drawn from its own generator seeded by
    ``(data.seed, split, index)``, so a split's first images do not change when the split grows.

    Args:
        out_dir: folder to write into (``synref/`` is created under it).
        data_cfg: the ``data`` config section; ``data.seed`` and ``data.synref`` are used.

    Returns:
        Counts per split (images, refs, sentences, sentences per kind), objects, occlusion and timing.
    """
    cfg = data_cfg.synref
    root = Path(out_dir) / "synref"
    (root / "images").mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    images: list[dict[str, Any]] = []
    anns: list[dict[str, Any]] = []
    refs: list[dict[str, Any]] = []
    todo = [(index, split, i) for index, split in enumerate(SPLITS) for i in range(cfg.images.get(split, 0))]
    for split_index, split, i in tqdm(todo, desc="synref", unit="img", disable=not sys.stderr.isatty()):
        rng = np.random.default_rng([data_cfg.seed, split_index, i])
        image_id = (split_index + 1) * 1_000_000 + i
        scene, chosen = _draw_with_refs(rng, split, cfg, image_id)
        file_name = f"synref_{image_id:08d}.{cfg.image_format}"
        Image.fromarray(scene.image).save(root / "images" / file_name, quality=90)
        images.append({"id": image_id, "file_name": file_name, "height": scene.height, "width": scene.width})
        anns += [_annotation(scene, k, image_id * 100 + k, image_id) for k in range(len(scene.objects))]
        for k, exprs in chosen:
            first = refs[-1]["sent_ids"][-1] + 1 if refs else 0
            sentences = [_sentence(e, first + n) for n, e in enumerate(exprs)]
            refs.append(
                {
                    "ref_id": len(refs),
                    "ann_id": image_id * 100 + k,
                    "image_id": image_id,
                    "category_id": SHAPES.index(scene.objects[k].shape) + 1,
                    "split": split,
                    "file_name": f"synref_{image_id:08d}_{k}.{cfg.image_format}",
                    "sentences": sentences,
                    "sent_ids": [s["sent_id"] for s in sentences],
                }
            )
    # category ids are fixed by SHAPES, so a shape keeps its id in every vocabulary
    categories = [{"id": SHAPES.index(s) + 1, "name": s, "supercategory": "shape"} for s in shape_vocabulary(cfg)]
    instances = {
        "info": {"description": "SynRef", "version": GENERATOR_VERSION, "seed": data_cfg.seed},
        "images": images,
        "annotations": anns,
        "categories": categories,
    }
    atomic_write_text(root / "instances.json", json.dumps(instances, separators=(",", ":")))
    atomic_write_bytes(root / "refs(unc).p", pickle.dumps(refs, protocol=4))
    stats = _stats(images, anns, refs, time.perf_counter() - start)
    info = {
        "generator_version": GENERATOR_VERSION,
        "seed": data_cfg.seed,
        "config": cfg.model_dump(mode="json"),
        "vocabulary": vocabulary(),
        "split_kinds": {s: list(k) for s, k in SPLIT_KINDS.items()},
        "stats": {k: v for k, v in stats.items() if k != "seconds"},  # a timing would make equal data sets differ
    }
    atomic_write_json(root / "info.json", info)
    log.info(
        "SynRef: %d images, %d refs, %d sentences in %.1f s -> %s",
        len(images),
        len(refs),
        sum(stats["sentences"].values()),
        stats["seconds"],
        root,
    )
    return stats


def _draw_with_refs(rng: np.random.Generator, split: str, cfg: SynRefConfig, image_id: int) -> tuple[Scene, list]:
    for _ in range(20):  # a scene with no provable expression of the split's kinds is redrawn
        scene = make_scene(rng, cfg)
        chosen = _scene_refs(rng, scene, SPLIT_KINDS[split], cfg)
        if chosen:
            return scene, chosen
    raise DataError(
        f"no SynRef scene with a {split} expression ({', '.join(SPLIT_KINDS[split])}) in 20 draws "
        f"for image {image_id}; check data.synref object counts and sizes"
    )


def _sentence(expr: Expr, sent_id: int) -> dict[str, Any]:
    text = render_text(expr)
    return {
        "sent": text,
        "raw": text[0].upper() + text[1:],
        "tokens": text.split(),
        "sent_id": sent_id,
        "kind": expr.kind,
    }


def _stats(images: list, anns: list, refs: list, seconds: float) -> dict[str, Any]:
    split_of = {r["image_id"]: r["split"] for r in refs}
    splits = [s for s in SPLITS if s in split_of.values()]
    return {
        "dataset": "synref",
        "images": {s: sum(split_of[i["id"]] == s for i in images) for s in splits},
        "refs": {s: sum(r["split"] == s for r in refs) for s in splits},
        "sentences": {s: sum(len(r["sentences"]) for r in refs if r["split"] == s) for s in splits},
        "kinds": {
            s: dict(sorted(Counter(t["kind"] for r in refs if r["split"] == s for t in r["sentences"]).items()))
            for s in splits
        },
        "objects": len(anns),
        "occluded_objects": sum(a["synref"]["visible_fraction"] < 1 for a in anns),
        "rle_annotations": sum(isinstance(a["segmentation"], dict) for a in anns),
        "seconds": round(seconds, 2),
    }
