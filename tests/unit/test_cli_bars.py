"""The CLI's progress bars: stage name, counts and an ETA; a restarted stage gets a new bar."""

from __future__ import annotations

import io

from cmdiad.cli import Bars


def test_bar_shows_stage_counts_and_eta() -> None:
    out = io.StringIO()
    bars = Bars(file=out)
    bars("coreset xyz", 3, 10)
    assert "coreset xyz" in bars.bars
    bars.bars["coreset xyz"].refresh()
    text = out.getvalue()
    assert "coreset xyz" in text and "3/10" in text and "ETA" in text
    bars("coreset xyz", 10, 10)
    assert "coreset xyz" not in bars.bars  # finished bars are closed


def test_restarted_stage_and_loss_postfix() -> None:
    out = io.StringIO()
    bars = Bars(file=out)
    bars("score", 6, 8)
    first = bars.bars["score"]
    bars("score", 2, 8)  # the next row scores again
    assert bars.bars["score"] is not first and bars.bars["score"].n == 2
    bars("train f2i (xyz) loss 0.1234", 1, 5)
    bar = bars.bars["train f2i (xyz)"]
    bar.refresh()
    assert "loss 0.1234" in out.getvalue()


def test_disabled_bars_print_nothing() -> None:
    out = io.StringIO()
    bars = Bars(enabled=False, file=out)
    bars("score", 1, 2)
    assert out.getvalue() == "" and not bars.bars


def test_pixel_fusion_line_names_the_labelled_choice_or_a_left_out_map() -> None:
    from cmdiad.cli import pixel_fusion_line

    chosen = {"chosen": "maximum, offset 1", "label_free": "maximum, offset 0.5", "labelled_parts": 5}
    assert pixel_fusion_line(chosen, "maximum, offset 1", 0.4) == (
        "pixel fusion: maximum, offset 1 (label-free: maximum, offset 0.5), chosen on 5 labelled validation parts")
    assert pixel_fusion_line({}, "main sensor only", -4.217, 0.153) == (
        "pixel fusion: main sensor only (hallucination fidelity r2 -4.22, se 0.15, on validation parts)")
    assert pixel_fusion_line(None, "main sensor only", None).endswith("r2 nan, se nan, on validation parts)")
    assert pixel_fusion_line(None, "maximum, offset 0.5", 0.9) == ""
