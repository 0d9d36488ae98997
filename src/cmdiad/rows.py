"""The result rows of the paper's experiment: one place names them.

A row is a method with its main modality: ``xyz``, ``rgb`` and ``dual`` (banks only) and
``<design>_<main>`` for the MTFI designs (``f2f_xyz``, ..., ``i2f_rgb``).
"""

from __future__ import annotations

from cmdiad.config import DISTILL_KINDS
from cmdiad.designs import design_names
from cmdiad.errors import ConfigError

BANK_ROWS: tuple[str, ...] = ("xyz", "rgb", "dual")
"""Rows whose name is the method alone."""

ALL_ROWS: tuple[str, ...] = (*BANK_ROWS, *(f"{k}_{m}" for m in ("xyz", "rgb") for k in DISTILL_KINDS))
"""The nine rows in the paper's order."""


def row_name(method: str, main: str) -> str:
    """Result-row name: ``xyz``, ``rgb``, ``dual`` or ``<method>_<main>``."""
    return method if method in BANK_ROWS else f"{method}_{main}"


def parse_row(row: str) -> tuple[str, str]:
    """Inverse of :func:`row_name`: ``"f2f_xyz"`` -> ``("f2f", "xyz")``; ``"dual"`` -> ``("dual", "both")``."""
    if row in ("xyz", "rgb"):
        return row, row
    if row == "dual":
        return "dual", "both"
    method, _, main = row.partition("_")
    if method not in design_names() or main not in ("xyz", "rgb"):
        raise ConfigError(f"unknown row {row!r}; known: {', '.join(ALL_ROWS)}")
    return method, main
