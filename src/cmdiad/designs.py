"""The registry of distillation designs, light enough for config validation (no torch import).

A design (:class:`cmdiad.pipeline.mtfi.Design`) registers here under its method name; the
paper's three (``f2f``, ``f2i``, ``i2f``) do so in :mod:`cmdiad.pipeline.mtfi`. A new design is
one module that registers its :class:`~cmdiad.pipeline.mtfi.Design` here and its network in
:data:`cmdiad.distill.base.DISTILLERS`; importing that module makes the method usable everywhere.
"""

from __future__ import annotations

from cmdiad.registry import Registry

DESIGNS: Registry = Registry("distillation design")
"""Design classes by method name."""

PAPER_DESIGNS = ("f2f", "f2i", "i2f")
"""The paper's designs, registered by :mod:`cmdiad.pipeline.mtfi`; the experiment's rows use them."""


def design_names() -> tuple[str, ...]:
    """Every method name that is a distillation design: the paper's, then any other registered one."""
    return (*PAPER_DESIGNS, *(n for n in DESIGNS.names() if n not in PAPER_DESIGNS))


__all__ = ["DESIGNS", "PAPER_DESIGNS", "design_names"]
