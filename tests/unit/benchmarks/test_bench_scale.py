"""bench_scale's StageTimer: exclusive times of nested stages, originals restored."""

from __future__ import annotations

import sys
import time
import types
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
import bench_scale  # noqa: E402
import run_all  # noqa: E402


def test_nested_stages_are_exclusive_and_restored() -> None:
    ns = types.SimpleNamespace()
    ns.inner = lambda: time.sleep(0.05)

    def outer() -> None:
        time.sleep(0.02)
        ns.inner()

    ns.outer = outer
    original_inner = ns.inner
    timer = bench_scale.StageTimer()
    timer.wrap(ns, "inner", "inner")
    timer.wrap(ns, "outer", lambda *a: "outer")
    ns.outer()
    ns.outer()
    timer.restore()
    assert ns.inner is original_inner
    assert timer.calls == {"outer": 2, "inner": 2}
    assert 0.09 <= timer.seconds["inner"] < 0.09 + 0.5
    assert 0.035 <= timer.seconds["outer"] < timer.seconds["inner"]  # the inner sleeps are not counted twice


def test_scale_is_part_of_make_bench() -> None:
    assert run_all.SCRIPTS["scale"][0] == "bench_scale.py"
    assert bench_scale.SECTION in run_all.ORDER
