"""Every key of a config with its value, built-in default and field docstring (for ``cmdiad config``)."""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import textwrap
from functools import cache
from typing import Any

from cmdiad.config import to_dict


@cache
def field_docs(cls: type) -> dict[str, str]:
    """The docstring written under each field of a dataclass (the nerfstudio habit), by field name."""
    try:
        tree = ast.parse(textwrap.dedent(inspect.getsource(cls)))
    except (OSError, TypeError):
        return {}
    body = tree.body[0].body if tree.body and isinstance(tree.body[0], ast.ClassDef) else []
    docs = {}
    for node, nxt in zip(body, body[1:], strict=False):
        if isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr) \
                and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str):
            docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


def config_keys(cfg: Any, prefix: str = "") -> list[tuple[str, Any, Any, str]]:
    """``(dotted key, value, built-in default, doc)`` for every leaf field of the config ``cfg``."""
    out = []
    docs = field_docs(type(cfg))
    for f in dataclasses.fields(cfg):
        value = getattr(cfg, f.name)
        key = f"{prefix}{f.name}"
        if dataclasses.is_dataclass(value):
            out += config_keys(value, key + ".")
            continue
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)  # type: ignore[misc]
        out.append((key, to_dict(value), to_dict(default), docs.get(f.name, "")))
    return out


def describe(cfg: Any, *, keys: bool = False) -> str:
    """The resolved ``cfg`` as JSON, or with ``keys`` one ``key = value`` line per leaf with its meaning."""
    if not keys:
        return json.dumps(to_dict(cfg), indent=2)
    lines = []
    for key, value, default, doc in config_keys(cfg):
        note = "" if value == default else f" (built-in default {json.dumps(default)})"
        lines.append(f"{key} = {json.dumps(value)}{note}" + (f"\n    {doc}" if doc else ""))
    return "\n".join(lines)
