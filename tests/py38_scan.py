"""A scan for what Python 3.8 (and numpy 1.23 .. 2.x) lacks, run over the deploy bundle's code by
tests/test_bundle_pythons.py. Running the scripts under 3.8 finds what the tests reach; this finds it in the code they
do not reach (TensorRT paths, error branches).

Usage: ``problems = newer_than_38(path.read_text(), "runtimes/base.py")`` (``file:line: what`` each).
"""

from __future__ import annotations

import ast

# method names that only exist on newer builtins / pathlib (receiver type unknown: the name is distinctive enough)
NEW_METHODS = {
    "removeprefix": "3.9",
    "removesuffix": "3.9",
    "is_relative_to": "3.9",
    "with_stem": "3.9",
    "hardlink_to": "3.10",
    "bit_count": "3.10",
}
NEW_MODULE_ATTRS = {
    "functools": {"cache": "3.9"},
    "math": {"lcm": "3.9", "nextafter": "3.9", "ulp": "3.9"},
    "itertools": {"pairwise": "3.10", "batched": "3.12"},
    "ast": {"unparse": "3.9"},
    "asyncio": {"to_thread": "3.9"},
    "argparse": {"BooleanOptionalAction": "3.9"},
    "sys": {"stdlib_module_names": "3.10"},
    "os": {"waitstatus_to_exitcode": "3.9"},
    "contextlib": {"chdir": "3.11"},
    "enum": {"StrEnum": "3.11"},
    "datetime": {"UTC": "3.11"},
    "hashlib": {"file_digest": "3.11"},
    "random": {"randbytes": "3.9"},
    "typing": {
        n: v
        for v, names in {
            "3.9": ("Annotated",),
            "3.10": ("TypeAlias", "ParamSpec", "Concatenate", "TypeGuard", "is_typeddict"),
            "3.11": ("Self", "Never", "LiteralString", "assert_never", "reveal_type", "Required", "NotRequired"),
            "3.12": ("override", "TypeAliasType"),
        }.items()
        for n in names
    },
}
NEW_MODULES = {"zoneinfo": "3.9", "graphlib": "3.9", "tomllib": "3.11"}
# numpy names that are missing somewhere between the pins (1.23.5 on JetPack 5, 1.26.4 on 6, 2.x on 7)
NUMPY_GAPS = {
    "bool": "np.bool is missing in numpy 1.24-1.26 (use np.bool_)",
    "exceptions": "numpy >= 1.25",
    "dtypes": "numpy >= 1.25",
    "trapezoid": "numpy >= 2.0",
    "concat": "numpy >= 2.0",
    "isdtype": "numpy >= 2.0",
    "unstack": "numpy >= 2.1",
    "astype": "numpy >= 2.1",
    "float_": "removed in numpy 2.0",
    "complex_": "removed in numpy 2.0",
    "string_": "removed in numpy 2.0",
    "unicode_": "removed in numpy 2.0",
    "NaN": "removed in numpy 2.0",
    "Inf": "removed in numpy 2.0",
    "infty": "removed in numpy 2.0",
    "product": "removed in numpy 2.0",
    "alltrue": "removed in numpy 2.0",
    "sometrue": "removed in numpy 2.0",
    "in1d": "deprecated in numpy 2.0",
}
BUILTIN_GENERICS = {"list", "dict", "tuple", "set", "frozenset", "type"}
TYPE_NAMES = BUILTIN_GENERICS | {"int", "float", "str", "bytes", "bool", "complex", "object"}


def _is_type_like(node: ast.AST, abc_names: set[str]) -> bool:
    """An operand of ``|`` that makes it a PEP 604 union (3.10) or a dict union (3.9)."""
    if isinstance(node, ast.Constant) and node.value is None:
        return True
    if isinstance(node, (ast.Dict, ast.DictComp)):
        return True
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id == "dict":
        return True
    if isinstance(node, ast.Subscript):
        return _is_type_like(node.value, abc_names)
    name = node.id if isinstance(node, ast.Name) else node.attr if isinstance(node, ast.Attribute) else None
    if name is None:
        return False
    # CamelCase names are classes; ALL_CAPS ones are flag constants (re.I | re.M), which | combines in any version
    return name in TYPE_NAMES or name in abc_names or (name[0].isupper() and not name.isupper())


def _annotation_ids(tree: ast.Module) -> set[int]:
    """Ids of the nodes inside annotations when the module has ``from __future__ import annotations``, else none."""
    lazy_annotations = any(
        isinstance(n, ast.ImportFrom) and n.module == "__future__" and any(a.name == "annotations" for a in n.names)
        for n in tree.body
    )
    annotation_ids: set[int] = set()
    if lazy_annotations:  # annotations are strings: nothing in them runs
        for node in ast.walk(tree):
            parts = []
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                parts = [node.returns, *(a.annotation for a in (*node.args.args, *node.args.kwonlyargs))]
                parts += [a.annotation for a in (*node.args.posonlyargs, node.args.vararg, node.args.kwarg) if a]
            elif isinstance(node, ast.AnnAssign):
                parts = [node.annotation]
            annotation_ids |= {id(sub) for part in parts if part is not None for sub in ast.walk(part)}
    return annotation_ids


def newer_than_38(source: str, filename: str = "<src>") -> list[str]:
    """``file:line: what`` for each construct in ``source`` that Python 3.8 or one of the numpy pins lacks."""
    tree = ast.parse(source, filename)
    annotation_ids = _annotation_ids(tree)
    abc_names = {
        a.asname or a.name
        for n in ast.walk(tree)
        if isinstance(n, ast.ImportFrom) and n.module == "collections.abc"
        for a in n.names
    }
    found = []

    def flag(node: ast.AST, what: str) -> None:
        found.append(f"{filename}:{getattr(node, 'lineno', '?')}: {what}")

    for node in ast.walk(tree):
        if id(node) in annotation_ids:
            continue
        if type(node).__name__ in ("Match", "TryStar", "TypeAlias"):
            flag(node, f"{type(node).__name__} statement (Python >= 3.10)")
        elif isinstance(node, ast.Call):
            func = node.func
            keywords = {k.arg for k in node.keywords}
            if isinstance(func, ast.Name) and func.id == "zip" and "strict" in keywords:
                flag(node, "zip(strict=...) (Python >= 3.10)")
            if isinstance(func, (ast.Name, ast.Attribute)) and getattr(func, "id", getattr(func, "attr", "")) in (
                "dataclass",
                "field",
            ):
                for kw in keywords & {"slots", "kw_only"}:
                    flag(node, f"dataclass {kw}= (Python >= 3.10)")
            if isinstance(func, ast.Attribute) and func.attr in NEW_METHODS:
                flag(node, f".{func.attr}() (Python >= {NEW_METHODS[func.attr]})")
        elif isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name):
            module = node.value.id
            if node.attr in NEW_MODULE_ATTRS.get(module, {}):
                flag(node, f"{module}.{node.attr} (Python >= {NEW_MODULE_ATTRS[module][node.attr]})")
            if module in ("np", "numpy") and node.attr in NUMPY_GAPS:
                flag(node, f"{module}.{node.attr}: {NUMPY_GAPS[node.attr]}")
        elif isinstance(node, ast.ImportFrom) and node.module:
            for alias in node.names:
                if alias.name in NEW_MODULE_ATTRS.get(node.module, {}):
                    flag(
                        node,
                        f"from {node.module} import {alias.name} (Python >= "
                        f"{NEW_MODULE_ATTRS[node.module][alias.name]})",
                    )
            if node.module.split(".")[0] in NEW_MODULES:
                flag(node, f"module {node.module} (Python >= {NEW_MODULES[node.module.split('.')[0]]})")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.split(".")[0] in NEW_MODULES:
                    flag(node, f"module {alias.name} (Python >= {NEW_MODULES[alias.name.split('.')[0]]})")
        elif isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            if _is_type_like(node.left, abc_names) or _is_type_like(node.right, abc_names):
                flag(node, "X | Y of types or dicts at run time (PEP 604: 3.10, dict union: 3.9)")
        elif isinstance(node, ast.AugAssign) and isinstance(node.op, ast.BitOr):
            if isinstance(node.value, (ast.Dict, ast.DictComp)):
                flag(node, "dict |= (Python >= 3.9)")
        elif (
            isinstance(node, ast.Subscript)
            and isinstance(node.value, ast.Name)
            and node.value.id in BUILTIN_GENERICS | abc_names
        ):
            flag(node, f"{node.value.id}[...] at run time (Python >= 3.9)")
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            for deco in node.decorator_list:  # PEP 614 (3.9) relaxed decorators; 3.8 takes a dotted name or its call
                target = deco.func if isinstance(deco, ast.Call) else deco
                while isinstance(target, ast.Attribute):
                    target = target.value
                if not isinstance(target, ast.Name):
                    flag(deco, "decorator that is not a dotted name or its call (Python >= 3.9)")
    return found
