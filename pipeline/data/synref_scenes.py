"""SynRef's scenes: flat shapes drawn over a gradient or textured background, and the mask of each.

Usage: ``scene = make_scene(np.random.default_rng(seed), cfg.data.synref)``.

A scene holds 3-8 flat shapes (7 shapes, 7 colours, 3 sizes; ``data.synref.shapes`` / ``colours`` narrow the
vocabulary, ``min_objects`` / ``max_objects`` the counts) on a gradient or textured background. Later shapes are
drawn over earlier ones; what is annotated is the visible part, and every object keeps at least ``MIN_VISIBLE`` of its
area. Each scene repeats at least one shape, and colours come from a small per-scene palette, so neither the shape nor
the colour alone names an object: the expression is needed.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils

from foundation.errors import DataError
from pipeline.config_sections import SynRefConfig
from pipeline.data.synref_language import COLOURS, SHAPES, SIZES
from pipeline.data.synref_semantics import SceneObject

MIN_VISIBLE = 0.6  # share of its own area every object keeps visible


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
