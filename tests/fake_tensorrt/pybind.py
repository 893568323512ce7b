"""What the fakes copy of pybind11, TensorRT's binding layer: enum members and argument type checks.

Usage: ``DataType = make_enum("DataType", {"FLOAT": 0, "HALF": 1})``;
``check_args("ILayer.get_output", index=(i, int))`` raises TypeError as a binding does when an argument has the wrong
type.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


class PyEnum:
    """A pybind11 ``py::enum_`` member: equal only to members of the same enum, ``int()`` gives its value."""

    __slots__ = ("name", "value")

    def __init__(self, name: str, value: int) -> None:
        self.name, self.value = name, value

    def __int__(self) -> int:
        return self.value

    __index__ = __int__

    def __eq__(self, other: object) -> bool:
        return type(other) is type(self) and other.value == self.value

    def __hash__(self) -> int:
        return hash((type(self).__name__, self.value))

    def __repr__(self) -> str:
        return f"<{type(self).__name__}.{self.name}: {self.value}>"

    def __str__(self) -> str:
        return f"{type(self).__name__}.{self.name}"


def make_enum(name: str, members: dict[str, int] | Iterable[str]) -> type:
    """A fresh enum class ``name`` whose members are ``members`` (a name → value table, or names numbered from 0)."""
    table = members if isinstance(members, dict) else {m: i for i, m in enumerate(members)}
    cls = type(name, (PyEnum,), {"__slots__": ()})
    cls.__members__ = {}
    for member, value in table.items():
        instance = cls(member, value)
        setattr(cls, member, instance)
        cls.__members__[member] = instance
    return cls


def check_args(fn: str, **args: tuple[Any, type | tuple[type, ...]]) -> None:
    """Raise TypeError as pybind11 does when an argument has the wrong type."""
    for arg, (value, expected) in args.items():
        if not isinstance(value, expected) or (isinstance(value, bool) and expected in (int, (int,))):
            raise TypeError(
                f"{fn}(): incompatible function arguments; argument {arg!r} must be {expected}, got {type(value)}"
            )
