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


def test_paper_memory_benchmark_fits_dual_at_paper_shapes_and_is_part_of_make_bench() -> None:
    import bench_paper_memory

    r = bench_paper_memory.child(train=3, validation=2, feature_dtype="float16")
    assert r["patches"] == 3 * bench_paper_memory.GRID ** 2
    assert r["bank_sizes"] == {"xyz": round(0.1 * r["patches"]), "rgb": round(0.1 * r["patches"])}
    assert r["peak_fit"] >= r["after_prefill"] > r["base"] > 0
    assert [s["stage"] for s in r["stages"]][:3] == ["fit: features", "coreset xyz", "coreset rgb"]
    assert run_all.SCRIPTS["paper_memory"][0] == "bench_paper_memory.py"
    assert bench_paper_memory.SECTION in run_all.ORDER
