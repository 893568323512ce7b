"""SynRef's semantics: which objects of a scene an expression names, and every expression that names one object.

Usage: ``verdicts = judge(expr, objects, width, height)``; ``unique_match(verdicts)`` is the one object it names.

:func:`judge` evaluates an expression over a scene's objects with three outcomes per object (yes, maybe, no):
positions near a region border, a near-tie in an ordinal or a diagonal relation are "maybe". The generator keeps an
expression only when the referent is "yes" and every other object "no", which proves the expression names exactly one
object (:func:`candidate_expressions`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from foundation.errors import DataError
from pipeline.data.synref_language import DIRECTIONS, KINDS, ORDINALS, REGIONS, RELATIONS, Expr

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
