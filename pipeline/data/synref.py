"""SynRef: a synthetic referring-segmentation data set written in the REFER layout, read by the same loader as RefCOCO.

Usage: ``stats = generate_synref(out_dir, cfg.data)``, then ``load_refer(out_dir, "synref")``.

A scene holds 3-8 flat shapes (7 shapes, 7 colours, 3 sizes; ``data.synref.shapes`` / ``colours`` narrow the
vocabulary, ``min_objects`` / ``max_objects`` the counts) on a gradient or textured background. Later shapes are
drawn over earlier ones; what is annotated is the visible part, and every object keeps at least ``MIN_VISIBLE`` of its
area. Each scene repeats at least one shape, and colours come from a small per-scene palette, so neither the shape nor
the colour alone names an object: the expression is needed.

Expressions are structured (:class:`Expr`) and rendered to text by :func:`render_text`; :func:`parse_expression`
inverts it. :func:`judge` evaluates an expression over a scene's objects with three outcomes per object (yes, maybe,
no): positions near a region border, a near-tie in an ordinal or a diagonal relation are "maybe". The generator keeps
an expression only when the referent is "yes" and every other object "no", which proves the expression names exactly
one object. Kinds: ``attribute`` ("the small green triangle"), ``location`` ("the star in the top right"),
``relation`` ("the square left of the blue star") and ``ordinal`` ("the second triangle from the left").
"""

from __future__ import annotations

import json
import logging
import pickle
import re
import sys
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from tqdm import tqdm

from foundation.errors import DataError
from foundation.io import atomic_write_bytes, atomic_write_json, atomic_write_text
from pipeline.config import SYNREF_SHAPES, DataConfig, SynRefConfig

log = logging.getLogger(__name__)

GENERATOR_VERSION = "1"
SPLITS = ("train", "val", "testA", "testB")
KINDS = ("attribute", "location", "relation", "ordinal")
SPLIT_KINDS = {
    "train": KINDS,
    "val": KINDS,
    "testA": ("attribute",),
    "testB": ("location", "relation", "ordinal"),
}
SHAPES = SYNREF_SHAPES  # circle, square, triangle, star, hexagon, cross, ring
COLOURS = {  # the names are the config's SYNREF_COLOURS, in that order
    "red": (214, 40, 40),
    "green": (40, 160, 70),
    "blue": (40, 90, 220),
    "yellow": (240, 205, 40),
    "purple": (140, 60, 190),
    "orange": (245, 130, 25),
    "white": (245, 245, 240),
}
SIZES = {"small": 0.15, "medium": 0.22, "large": 0.30}  # nominal diameter / the image's shorter side
ORDINALS = ("first", "second", "third")
DIRECTIONS = ("left", "right", "top", "bottom")
RELATIONS = {"left": "left of", "right": "right of", "above": "above", "below": "below"}
_L, _M, _R = (0.0, 1 / 3), (1 / 3, 2 / 3), (2 / 3, 1.0)
REGIONS = {  # name -> (phrase, x range or None, y range or None), ranges as fractions of width / height
    "top left": ("in the top left", _L, _L),
    "top": ("at the top", None, _L),
    "top right": ("in the top right", _R, _L),
    "left": ("on the left", _L, None),
    "middle": ("in the middle", _M, _M),
    "right": ("on the right", _R, None),
    "bottom left": ("in the bottom left", _L, _R),
    "bottom": ("at the bottom", None, _R),
    "bottom right": ("in the bottom right", _R, _R),
}

MIN_VISIBLE = 0.6  # share of its own area every object keeps visible
REGION_MARGIN = 0.05  # of the image side: closer than this to a region border is "maybe"
RELATION_GAP = 0.10  # of the shorter side: a clear "left of" needs this much horizontal distance...
ORDINAL_GAP = 0.08  # of the shorter side: objects closer than this along the axis tie for a rank
NO, MAYBE, YES = 0, 1, 2


@dataclass(frozen=True)
class SceneObject:
    """What an expression can see of an object: its attributes and the centre of its full (unoccluded) shape."""

    shape: str
    colour: str
    size: str
    cx: float
    cy: float


@dataclass(frozen=True)
class Expr:
    """A referring expression as data. ``size``/``colour`` narrow the candidates of every kind.

    Attributes:
        kind: one of :data:`KINDS`.
        shape: the head noun (a category name).
        colour: optional colour word.
        size: optional size word.
        region: location only: a key of :data:`REGIONS`.
        relation: relation only: a key of :data:`RELATIONS`; the referent stands in that relation to ``anchor``.
        anchor: relation only: an attribute expression that must itself name exactly one object.
        ordinal: ordinal only: rank 1-3 counted from ``direction``.
        direction: ordinal only: one of :data:`DIRECTIONS`.
    """

    kind: str
    shape: str
    colour: str | None = None
    size: str | None = None
    region: str | None = None
    relation: str | None = None
    anchor: Expr | None = None
    ordinal: int | None = None
    direction: str | None = None


# ----------------------------------------------------------------------------------------------------------- language


def _noun(expr: Expr) -> str:
    return " ".join(w for w in (expr.size, expr.colour, expr.shape) if w)


def render_text(expr: Expr) -> str:
    """The lower-case sentence of an expression, e.g. ``"the second red star from the left"``."""
    if expr.kind == "attribute":
        return f"the {_noun(expr)}"
    if expr.kind == "location":
        return f"the {_noun(expr)} {REGIONS[expr.region][0]}"
    if expr.kind == "relation":
        return f"the {_noun(expr)} {RELATIONS[expr.relation]} the {_noun(expr.anchor)}"
    if expr.kind == "ordinal":
        return f"the {ORDINALS[expr.ordinal - 1]} {_noun(expr)} from the {expr.direction}"
    raise DataError(f"unknown expression kind {expr.kind!r}; valid: {', '.join(KINDS)}")


def _alt(words: Any) -> str:
    return "|".join(re.escape(w) for w in sorted(words, key=len, reverse=True))


def _noun_re(prefix: str) -> str:
    size, colour, shape = (
        f"(?P<{prefix}{name}>{_alt(words)})"
        for name, words in (("size", SIZES), ("colour", COLOURS), ("shape", SHAPES))
    )
    return rf"(?:{size} )?(?:{colour} )?{shape}"


_PHRASE_REGION = {phrase: name for name, (phrase, _, _) in REGIONS.items()}
_PHRASE_RELATION = {phrase: name for name, phrase in RELATIONS.items()}
_PATTERNS = {
    "attribute": re.compile(rf"the {_noun_re('')}"),
    "location": re.compile(rf"the {_noun_re('')} (?P<region>{_alt(_PHRASE_REGION)})"),
    "relation": re.compile(rf"the {_noun_re('')} (?P<relation>{_alt(_PHRASE_RELATION)}) the {_noun_re('a_')}"),
    "ordinal": re.compile(
        rf"the (?P<ordinal>{_alt(ORDINALS)}) {_noun_re('')} from the (?P<direction>{_alt(DIRECTIONS)})"
    ),
}


def parse_expression(text: str) -> Expr:
    """Invert :func:`render_text`. Raises DataError for a sentence outside the SynRef grammar."""
    for kind, pattern in _PATTERNS.items():
        m = pattern.fullmatch(text.strip().lower())
        if m is None:
            continue
        g = m.groupdict()
        expr = Expr(kind=kind, shape=g["shape"], colour=g["colour"], size=g["size"])
        if kind == "location":
            return Expr(**{**expr.__dict__, "region": _PHRASE_REGION[g["region"]]})
        if kind == "relation":
            anchor = Expr("attribute", shape=g["a_shape"], colour=g["a_colour"], size=g["a_size"])
            return Expr(**{**expr.__dict__, "relation": _PHRASE_RELATION[g["relation"]], "anchor": anchor})
        if kind == "ordinal":
            return Expr(**{**expr.__dict__, "ordinal": ORDINALS.index(g["ordinal"]) + 1, "direction": g["direction"]})
        return expr
    raise DataError(f"sentence {text!r} is not a SynRef expression; kinds: {', '.join(KINDS)}")


# ---------------------------------------------------------------------------------------------------------- semantics


def _band(value: float, band: tuple[float, float] | None) -> int:
    """Whether a fraction lies in a band: yes well inside, no well outside, maybe within REGION_MARGIN of a border."""
    if band is None:
        return YES
    lo, hi = band
    if (lo > 0 and value < lo - REGION_MARGIN) or (hi < 1 and value > hi + REGION_MARGIN):
        return NO
    if (lo == 0 or value >= lo + REGION_MARGIN) and (hi == 1 or value <= hi - REGION_MARGIN):
        return YES
    return MAYBE


def _relation(target: SceneObject, anchor: SceneObject, relation: str, scale: float) -> int:
    dx, dy = (target.cx - anchor.cx) / scale, (target.cy - anchor.cy) / scale
    along, across = {"left": (-dx, dy), "right": (dx, dy), "above": (-dy, dx), "below": (dy, dx)}[relation]
    if along >= RELATION_GAP and abs(across) <= along:  # clearly that way: at least a gap, within 45 degrees
        return YES
    if along > 0 and abs(across) < 2 * along:  # loosely that way: someone might still say so
        return MAYBE
    return NO


def _rank(k: int, own: float, others: list[float]) -> int:
    before = sum(c < own - ORDINAL_GAP for c in others)
    ties = sum(abs(c - own) <= ORDINAL_GAP for c in others)
    if ties == 0 and before + 1 == k:
        return YES
    return MAYBE if before + 1 <= k <= before + 1 + ties else NO


def judge(expr: Expr, objects: list[SceneObject], width: int, height: int) -> list[int]:
    """Evaluate an expression over a scene: ``YES``, ``MAYBE`` or ``NO`` for each object.

    Args:
        expr: the expression.
        objects: every object of the scene, the referent among them.
        width: image width in pixels (locations are fractions of it).
        height: image height in pixels.
    """
    base = [o.shape == expr.shape and expr.colour in (None, o.colour) and expr.size in (None, o.size) for o in objects]
    scale = float(min(width, height))
    if expr.kind == "attribute":
        return [YES if b else NO for b in base]
    if expr.kind == "location":
        _, xband, yband = REGIONS[expr.region]
        return [
            min(_band(o.cx / width, xband), _band(o.cy / height, yband)) if b else NO
            for o, b in zip(objects, base, strict=True)
        ]
    if expr.kind == "relation":
        anchor = unique_match(judge(expr.anchor, objects, width, height))
        if anchor is None:  # an ambiguous anchor proves nothing
            return [MAYBE if b else NO for b in base]
        return [
            _relation(o, objects[anchor], expr.relation, scale) if b and k != anchor else NO
            for k, (o, b) in enumerate(zip(objects, base, strict=True))
        ]
    if expr.kind == "ordinal":
        sign, axis = {"left": (1, "cx"), "right": (-1, "cx"), "top": (1, "cy"), "bottom": (-1, "cy")}[expr.direction]
        coord = [sign * getattr(o, axis) / scale for o in objects]
        members = [k for k, b in enumerate(base) if b]
        return [
            _rank(expr.ordinal, coord[k], [coord[j] for j in members if j != k]) if base[k] else NO
            for k in range(len(objects))
        ]
    raise DataError(f"unknown expression kind {expr.kind!r}; valid: {', '.join(KINDS)}")


def unique_match(verdicts: list[int]) -> int | None:
    """The index of the one ``YES`` when every other verdict is ``NO``; else None."""
    yes = [k for k, v in enumerate(verdicts) if v == YES]
    return yes[0] if len(yes) == 1 and sum(v != NO for v in verdicts) == 1 else None


def candidate_expressions(
    index: int, objects: list[SceneObject], width: int, height: int, kinds: tuple[str, ...] = KINDS
) -> list[Expr]:
    """Every expression of the given kinds that provably names ``objects[index]`` and nothing else.

    A bare shape ("the star") is only used as a relation anchor, so the referent's own phrase always carries more
    than its category.
    """
    o = objects[index]
    found: list[Expr] = []

    def keep(expr: Expr) -> None:
        if unique_match(judge(expr, objects, width, height)) == index:
            found.append(expr)

    if "attribute" in kinds:
        for colour, size in ((o.colour, None), (None, o.size), (o.colour, o.size)):
            keep(Expr("attribute", o.shape, colour=colour, size=size))
    if "location" in kinds:
        # a colour joins the location only when it narrows the choice without settling it, so the location counts
        colour_settles = unique_match(judge(Expr("attribute", o.shape, o.colour), objects, width, height)) is not None
        for region in REGIONS:
            keep(Expr("location", o.shape, region=region))
            if not colour_settles:
                keep(Expr("location", o.shape, colour=o.colour, region=region))
    if "relation" in kinds:
        for j in range(len(objects)):
            anchor = _anchor_phrase(j, objects, width, height) if j != index else None
            for relation in RELATIONS if anchor else ():
                keep(Expr("relation", o.shape, relation=relation, anchor=anchor))
    if "ordinal" in kinds and sum(p.shape == o.shape for p in objects) >= 2:
        for direction in DIRECTIONS:
            for rank in range(1, len(ORDINALS) + 1):
                keep(Expr("ordinal", o.shape, ordinal=rank, direction=direction))
    return found


def _anchor_phrase(j: int, objects: list[SceneObject], width: int, height: int) -> Expr | None:
    a = objects[j]
    for colour, size in ((a.colour, None), (None, None), (a.colour, a.size), (None, a.size)):
        expr = Expr("attribute", a.shape, colour=colour, size=size)
        if unique_match(judge(expr, objects, width, height)) == j:
            return expr
    return None


def objects_from_annotations(anns: list[dict[str, Any]], categories: dict[int, str]) -> list[SceneObject]:
    """Rebuild the scene objects of one image from its SynRef annotations (the ``synref`` field of each)."""
    return [
        SceneObject(
            shape=categories[a["category_id"]],
            colour=a["synref"]["colour"],
            size=a["synref"]["size"],
            cx=a["synref"]["center"][0],
            cy=a["synref"]["center"][1],
        )
        for a in anns
    ]


# ----------------------------------------------------------------------------------------------------------- drawing


def _ring_points(n: int, radii: np.ndarray | float, phase: float) -> np.ndarray:
    angles = phase + 2 * np.pi * np.arange(n) / n
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)  # n, 2


def shape_outline(shape: str, radius: float, rotation: float) -> tuple[np.ndarray, np.ndarray | None]:
    """Outline (and hole, for the ring) of a shape centred at the origin, as ``[n, 2]`` points.

    Radii are tuned so the shapes of one size class look about equally big; none reaches past ``1.25 * radius``.
    """
    circle = max(24, int(radius))  # points on a circle: enough that the polygon is round at this size
    if shape == "circle":
        return _ring_points(circle, radius, 0.0), None
    if shape == "ring":
        return _ring_points(circle, radius, 0.0), _ring_points(circle, 0.55 * radius, 0.0)
    if shape == "square":
        pts = _ring_points(4, 1.15 * radius, np.pi / 4)
    elif shape == "triangle":
        pts = _ring_points(3, 1.25 * radius, -np.pi / 2)
    elif shape == "hexagon":
        pts = _ring_points(6, 1.08 * radius, 0.0)
    elif shape == "star":
        pts = _ring_points(10, np.tile([1.25 * radius, 0.5 * radius], 5), -np.pi / 2)
    elif shape == "cross":
        a, r = 0.36 * radius, 1.1 * radius
        pts = np.array(
            [(a, -r), (a, -a), (r, -a), (r, a), (a, a), (a, r), (-a, r), (-a, a), (-r, a), (-r, -a), (-a, -a), (-a, -r)]
        )
    else:
        raise DataError(f"unknown shape {shape!r}; valid: {', '.join(SHAPES)}")
    c, s = np.cos(rotation), np.sin(rotation)
    return pts @ np.array([[c, s], [-s, c]]), None


def _polygon(points: np.ndarray, cx: float, cy: float) -> list[float]:
    return [round(float(v), 2) for v in (points + (cx, cy)).ravel()]


def rasterise(polygon: list[float], height: int, width: int) -> np.ndarray:
    """A flat COCO polygon as a bool mask, rasterised by pycocotools.

    The image is painted from these same masks (not with PIL's own rasteriser), so a polygon annotation matches the
    pixels exactly and the loader's mask is the drawn shape.
    """
    return mask_utils.decode(mask_utils.frPyObjects([polygon], height, width)[0]).astype(bool)


def _background(rng: np.random.Generator, height: int, width: int) -> np.ndarray:
    """A muted two-colour gradient plus one texture (blotches, stripes or checks) and grain; float32 [H, W, 3]."""
    grey = rng.uniform(70, 165, size=(2, 1))
    c0, c1 = grey + rng.uniform(-25, 25, size=(2, 3))
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    angle = rng.uniform(0, 2 * np.pi)
    t = xs * np.cos(angle) + ys * np.sin(angle)
    t = (t - t.min()) / max(float(np.ptp(t)), 1.0)
    img = c0 * (1 - t[..., None]) + c1 * t[..., None]
    texture = rng.integers(4)
    if texture == 1:  # blotches: coarse noise, upsampled
        coarse = rng.uniform(0, 255, size=(int(rng.integers(3, 9)), int(rng.integers(3, 9)))).astype(np.uint8)
        blotch = np.asarray(Image.fromarray(coarse).resize((width, height), Image.BILINEAR), np.float32)
        img += (blotch[..., None] - 127.5) * rng.uniform(0.1, 0.2)
    elif texture == 2:  # stripes
        period, phi = rng.uniform(8, 40), rng.uniform(0, np.pi)
        img += (10 * np.sin(2 * np.pi * (xs * np.cos(phi) + ys * np.sin(phi)) / period))[..., None]
    elif texture == 3:  # low-contrast checks
        cell = int(rng.integers(10, 32))
        img += (12 * (((xs // cell + ys // cell) % 2) - 0.5))[..., None]
    return img


@dataclass
class Scene:
    """A drawn scene: the image, the objects in drawing order and their masks."""

    image: np.ndarray  # H, W, 3 uint8
    objects: list[SceneObject]
    outlines: list[list[float]]  # flat polygon of each object's full outline
    holes: list[bool]  # whether an object's shape has a hole (ring): its mask cannot be one COCO polygon
    owner: np.ndarray  # H, W int16: index of the object seen at each pixel, -1 for background
    full_areas: list[int]
    rotations: list[float]

    @property
    def height(self) -> int:
        return self.image.shape[0]

    @property
    def width(self) -> int:
        return self.image.shape[1]


def shape_vocabulary(cfg: SynRefConfig) -> list[str]:
    """The shapes a data set draws from (``data.synref.shapes``; all of :data:`SHAPES` by default), in SHAPES order."""
    return [s for s in SHAPES if cfg.shapes is None or s in cfg.shapes]


def colour_vocabulary(cfg: SynRefConfig) -> list[str]:
    """The colours a data set draws from (``data.synref.colours``; all of :data:`COLOURS` by default)."""
    return [c for c in COLOURS if cfg.colours is None or c in cfg.colours]


def _scene_specs(rng: np.random.Generator, cfg: SynRefConfig) -> list[tuple[str, str, str]]:
    """Shapes, colours and sizes of a scene: a few shapes (one at least twice) in colours from a small palette."""
    vocab_shapes, vocab_colours = shape_vocabulary(cfg), colour_vocabulary(cfg)
    n = int(rng.integers(cfg.min_objects, cfg.max_objects + 1))
    n_shapes = int(rng.integers(min(2, n - 1), min(4, n - 1, len(vocab_shapes)) + 1))
    shapes = [str(s) for s in rng.choice(vocab_shapes, n_shapes, replace=False)]
    names = [shapes[0], shapes[0]] + [shapes[int(rng.integers(n_shapes))] for _ in range(n - 2)]
    n_colours = int(rng.integers(3, min(5, len(vocab_colours)) + 1))
    palette = [str(c) for c in rng.choice(vocab_colours, n_colours, replace=False)]
    specs = []
    for shape in shapes:
        count = names.count(shape)
        distinct = count <= len(palette) and rng.random() < 0.8  # same-shape objects mostly differ in colour
        colours = rng.choice(palette, count, replace=not distinct)
        specs += [(shape, str(c), str(rng.choice(list(SIZES)))) for c in colours]
    return [specs[k] for k in rng.permutation(len(specs))]


def make_scene(rng: np.random.Generator, cfg: SynRefConfig) -> Scene:
    """Draw one scene. Objects that cannot be placed without hiding too much of another are left out.

    Raises:
        DataError: no scene with a repeated shape could be placed in 20 attempts (image too small for the counts).
    """
    for _ in range(20):
        width, height = (int(v) for v in rng.integers(cfg.min_side, cfg.max_side + 1, size=2))
        scene = _place(rng, _scene_specs(rng, cfg), height, width)
        shape_counts = Counter(o.shape for o in scene.objects)
        if len(scene.objects) >= cfg.min_objects and max(shape_counts.values()) >= 2:
            return scene
    raise DataError(
        f"could not place {cfg.min_objects}+ objects in {cfg.min_side}-{cfg.max_side} px images; "
        "raise data.synref.min_side or lower data.synref.min_objects"
    )


def _place(rng: np.random.Generator, specs: list[tuple[str, str, str]], height: int, width: int) -> Scene:
    img = _background(rng, height, width)
    owner = np.full((height, width), -1, np.int16)
    ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
    objects: list[SceneObject] = []
    outlines, holes, full_areas, visible, rotations = [], [], [], [], []
    scale = min(width, height)
    for shape, colour, size in specs:
        for _ in range(40):
            radius = SIZES[size] * scale / 2 * rng.uniform(0.92, 1.08)
            reach = 1.25 * radius + 1
            if 2 * reach >= min(width, height):
                continue
            cx, cy = round(rng.uniform(reach, width - reach), 2), round(rng.uniform(reach, height - reach), 2)
            rotation = 0.0 if shape in ("circle", "ring") else float(rng.uniform(-0.2, 0.2))
            outer, hole = shape_outline(shape, radius, rotation)
            polygon = _polygon(outer, cx, cy)
            full = rasterise(polygon, height, width)
            if hole is not None:
                full &= ~rasterise(_polygon(hole, cx, cy), height, width)
            covered = np.bincount(owner[full] + 1, minlength=len(objects) + 1)[1:]
            if all(visible[j] - covered[j] >= MIN_VISIBLE * full_areas[j] for j in range(len(objects))):
                break
        else:
            continue  # no room for this object
        index = len(objects)
        owner[full] = index
        visible = [v - int(c) for v, c in zip(visible, covered, strict=True)] + [int(full.sum())]
        objects.append(SceneObject(shape, colour, size, cx, cy))
        outlines.append(polygon)
        holes.append(hole is not None)
        full_areas.append(int(full.sum()))
        rotations.append(round(rotation, 4))
        # flat colour with jitter and a soft lighting gradient, so objects are not single RGB values
        base = np.array(COLOURS[colour], np.float32) + rng.uniform(-12, 12, size=3).astype(np.float32)
        light = rng.uniform(0, 2 * np.pi)
        shade = 1 + 0.12 * ((xs[full] - cx) * np.cos(light) + (ys[full] - cy) * np.sin(light)) / radius
        img[full] = base * shade[:, None]
    img += rng.standard_normal(img.shape, dtype=np.float32) * 3.0  # grain
    image = np.clip(img, 0, 255).astype(np.uint8)
    return Scene(image, objects, outlines, holes, owner, full_areas, rotations)


# -------------------------------------------------------------------------------------------------------- generation


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


def vocabulary() -> list[str]:
    """Every word a SynRef sentence can use."""
    words = {"the", "from", "of", *SHAPES, *COLOURS, *SIZES, *ORDINALS, *DIRECTIONS}
    for phrase, *_ in REGIONS.values():
        words.update(phrase.split())
    for phrase in RELATIONS.values():
        words.update(phrase.split())
    return sorted(words)
