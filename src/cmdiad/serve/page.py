"""The service's status page: self-contained HTML (inline CSS, no external assets)."""

from __future__ import annotations

import html
import time
from typing import Any

from cmdiad.serve.store import Part

_CSS = """body{font-family:system-ui,sans-serif;margin:1.5em;color:#222}
table{border-collapse:collapse}td,th{border:1px solid #ccc;padding:.3em .6em;text-align:left}
.FAIL{color:#b00;font-weight:bold}.PASS{color:#070;font-weight:bold}img{display:block;max-width:256px}
.parts{display:flex;flex-wrap:wrap;gap:1em}.part{border:1px solid #ccc;padding:.5em}"""


def _card(p: Part) -> str:
    r = p.result
    score = "-" if r.get("score") is None else f"{r['score']:.4f}"
    when = time.strftime("%H:%M:%S", time.localtime(r.get("received", 0)))
    return (f'<div class="part" id="part-{html.escape(p.id)}"><img src="/heatmaps/{html.escape(p.id)}.png" '
            f'alt="heatmap of part {html.escape(p.id)}" width="192">'
            f'<div>part <code>{html.escape(p.id)}</code> at {when}</div>'
            f'<div class="{html.escape(r["decision"])}">{html.escape(r["decision"])}</div>'
            f'<div>score {score} / threshold {r.get("threshold")}</div>'
            f'<div>route {html.escape(str(r.get("route")))}, {r["timing_ms"]["total"]:.1f} ms</div></div>')


def status_page(info: dict[str, Any], parts: list[Part]) -> str:
    """The HTML of ``GET /``: model facts, counters and the last parts with their heatmaps."""
    rows = "".join(f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(str(v))}</td></tr>" for k, v in info.items())
    cards = "".join(_card(p) for p in parts) or "<p>No part scored yet.</p>"
    return ("<!doctype html><html><head><meta charset='utf-8'><title>cmdiad serve</title>"
            f"<meta http-equiv='refresh' content='10'><style>{_CSS}</style></head><body>"
            f"<h1>cmdiad scoring service</h1><table>{rows}</table>"
            f"<h2>Last {len(parts)} part(s)</h2><div class='parts'>{cards}</div></body></html>")
