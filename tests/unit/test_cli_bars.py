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
