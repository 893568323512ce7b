"""SynRef's language: the vocabulary, referring expressions as data (:class:`Expr`) and their one sentence each.

Usage: ``text = render_text(Expr("ordinal", "star", colour="red", ordinal=2, direction="left"))`` gives
``"the second red star from the left"``; ``parse_expression(text)`` gives the expression back.

Kinds: ``attribute`` ("the small green triangle"), ``location`` ("the star in the top right"), ``relation`` ("the
square left of the blue star") and ``ordinal`` ("the second triangle from the left"). The names of the vocabulary are
the config's (``SYNREF_SHAPES``, ``SYNREF_COLOURS``); :mod:`~pipeline.data.synref_semantics` says which object an
expression names.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from foundation.errors import DataError
from pipeline.config_sections import SYNREF_SHAPES

KINDS = ("attribute", "location", "relation", "ordinal")
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


def vocabulary() -> list[str]:
    """Every word a SynRef sentence can use."""
    words = {"the", "from", "of", *SHAPES, *COLOURS, *SIZES, *ORDINALS, *DIRECTIONS}
    for phrase, *_ in REGIONS.values():
        words.update(phrase.split())
    for phrase in RELATIONS.values():
        words.update(phrase.split())
    return sorted(words)
