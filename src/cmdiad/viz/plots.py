"""Small inline SVG plots for report.html: ROC curves and score histograms (numpy only, no pyplot).

Each function returns an ``<svg>`` element as text, so the report stays one self-contained file.
"""

from __future__ import annotations

from collections.abc import Mapping
from html import escape

import numpy as np

PALETTE = ("#1f77b4", "#d62728", "#2ca02c", "#ff7f0e", "#9467bd", "#8c564b", "#e377c2", "#7f7f7f", "#17becf")
_W, _H, _PAD = 260, 200, 30


def roc_points(scores: np.ndarray, labels: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """``(fpr, tpr)`` of image scores ``(N,)`` against labels ``(N,)`` (1 = defective), from (0, 0) to (1, 1).

    Thresholds sit at every distinct score (ties move together); empty when a class is missing.
    """
    scores, labels = np.asarray(scores, np.float64), np.asarray(labels).astype(bool)
    pos, neg = int(labels.sum()), int((~labels).sum())
    if pos == 0 or neg == 0:
        return np.zeros(0), np.zeros(0)
    order = np.argsort(-scores, kind="stable")
    ends = np.append(np.flatnonzero(np.diff(scores[order]) != 0), scores.size - 1)
    tp, fp = np.cumsum(labels[order])[ends], np.cumsum(~labels[order])[ends]
    return np.concatenate([[0.0], fp / neg]), np.concatenate([[0.0], tp / pos])


def _xy(x: float, y: float) -> str:
    return f"{_PAD + x * (_W - 2 * _PAD):.1f},{_H - _PAD - y * (_H - 2 * _PAD):.1f}"


def _frame(title: str, x_label: str, y_label: str) -> list[str]:
    return [
        f'<svg width="{_W}" height="{_H}" viewBox="0 0 {_W} {_H}" '
        f'role="img" aria-label="{escape(title)}">',
        f'<rect x="{_PAD}" y="{_PAD}" width="{_W - 2 * _PAD}" height="{_H - 2 * _PAD}" fill="none" stroke="#888"/>',
        f'<text x="{_W / 2}" y="14" text-anchor="middle" font-size="11">{escape(title)}</text>',
        f'<text x="{_W / 2}" y="{_H - 6}" text-anchor="middle" font-size="10">{escape(x_label)}</text>',
        f'<text x="10" y="{_H / 2}" font-size="10" transform="rotate(-90 10 {_H / 2})" '
        f'text-anchor="middle">{escape(y_label)}</text>',
    ]


def roc_svg(curves: Mapping[str, tuple[np.ndarray, np.ndarray]], title: str = "ROC") -> str:
    """ROC curves ``{label: (scores (N,), labels (N,))}`` in one SVG, one colour per label, with a legend."""
    parts = _frame(title, "false positive rate", "true positive rate")
    parts.append(f'<polyline points="{_xy(0, 0)} {_xy(1, 1)}" fill="none" stroke="#ccc" stroke-dasharray="3"/>')
    for i, (label, (scores, labels)) in enumerate(curves.items()):
        colour = PALETTE[i % len(PALETTE)]
        fpr, tpr = roc_points(scores, labels)
        if fpr.size:
            points = " ".join(_xy(x, y) for x, y in zip(fpr, tpr, strict=True))
            parts.append(f'<polyline points="{points}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
        parts.append(f'<text x="{_W - _PAD - 4}" y="{_H - _PAD - 6 - 12 * i}" text-anchor="end" font-size="9" '
                     f'fill="{colour}">{escape(label)}</text>')
    return "".join(parts) + "</svg>"


def histogram_svg(groups: Mapping[str, np.ndarray], title: str = "scores", bins: int = 20) -> str:
    """Overlaid step histograms of ``{label: values (N,)}`` on shared bins, with a legend."""
    arrays = [np.asarray(v, np.float64) for v in groups.values()]
    finite = np.concatenate([a[np.isfinite(a)] for a in arrays]) if arrays else np.zeros(0)
    parts = _frame(title, "image score", "samples")
    if finite.size:
        lo, hi = float(finite.min()), float(finite.max())
        edges = np.linspace(lo, hi if hi > lo else lo + 1.0, bins + 1)
        counts = [np.histogram(a[np.isfinite(a)], edges)[0] for a in arrays]
        top = max(1, max(int(c.max()) for c in counts))
        for i, (label, c) in enumerate(zip(groups, counts, strict=True)):
            colour = PALETTE[i % len(PALETTE)]
            points = [_xy(0, 0)]
            for j, n in enumerate(c):
                points += [_xy(j / bins, n / top), _xy((j + 1) / bins, n / top)]
            points.append(_xy(1, 0))
            parts.append(f'<polyline points="{" ".join(points)}" fill="none" stroke="{colour}" stroke-width="1.5"/>')
            parts.append(f'<text x="{_W - _PAD - 4}" y="{_PAD + 12 + 12 * i}" text-anchor="end" font-size="9" '
                         f'fill="{colour}">{escape(label)} ({len(arrays[i])})</text>')
        parts.append(f'<text x="{_PAD}" y="{_H - _PAD + 12}" font-size="9">{lo:.3g}</text>')
        parts.append(f'<text x="{_W - _PAD}" y="{_H - _PAD + 12}" font-size="9" text-anchor="end">{hi:.3g}</text>')
        parts.append(f'<text x="{_PAD - 2}" y="{_PAD + 8}" font-size="9" text-anchor="end">{top}</text>')
    return "".join(parts) + "</svg>"


def colour_bar(table: np.ndarray, width: int = 160, height: int = 10) -> np.ndarray:
    """A horizontal ``(height, width, 3)`` uint8 strip of a colormap ``table`` (L, 3), low values left."""
    idx = np.linspace(0, len(table) - 1, width).round().astype(int)
    return np.repeat(table[idx][None], height, axis=0).astype(np.uint8)

