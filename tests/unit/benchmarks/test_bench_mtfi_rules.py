"""bench_mtfi_rules: the tail surprise of a value among good ones, and how shortfalls are counted."""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
import bench_mtfi_rules as bmr  # noqa: E402


def test_tail_surprise_is_the_empirical_survival_then_an_exponential_tail() -> None:
    val = np.linspace(0.0, 1.0, 10_001)[:, None]
    test = np.array([-1.0, 0.5, 0.995, 0.9995, 1.5, 3.0])[:, None]
    s = bmr._tail_surprise(val, test)[:, 0]
    assert s[0] == 0.0  # below every good value: survival 1
    assert abs(s[1] - np.log10(2)) < 1e-3  # the median: survival 1/2
    assert np.all(np.diff(s) > 0)
    # beyond q0.99 the survival decays by 10x per (q0.999 - q0.99) = 0.009: 1.5 is 0.51 past q0.99
    assert abs(s[4] - (2 + 0.51 / 0.009)) < 0.1
    assert np.isfinite(s).all()


def _case(data: str, main: float, hal: float, fused: dict[str, float]) -> dict:
    return {"data": data, "category": "c", "row": "f2f_rgb", "defect": "bump", "n_good": 12, "n_defect": 6,
            "main": (main, main), "hallucinated": (hal, hal), "I": fused, "P": fused}  # fmt: skip


def test_table_counts_shortfalls_against_the_better_stream_and_the_main_sensor() -> None:
    cases = [
        _case("s", 1.0, 0.6, {"default": 1.0, "other": 0.95}),  # main informative: other falls 0.05 short
        _case("s", 0.55, 0.6, {"default": 0.55, "other": 0.6}),  # near chance: default 0.05 short, not informative
    ]
    lines = bmr.table(cases, "I")
    default = next(line for line in lines if line.startswith("| default |"))
    other = next(line for line in lines if line.startswith("| other |"))
    assert default.split(" | ")[2:4] == ["1/2", "0/1"]  # one case short, none of the informative ones
    assert other.split(" | ")[2:4] == ["1/2", "1/1"]
    assert default.rstrip(" |").endswith("| 0")  # never below the main sensor
    assert other.rstrip(" |").endswith("| 1")  # once below the main sensor (1.0 -> 0.95)


def test_detail_lists_the_cases_the_default_or_the_other_floor_rules_fall_short_on_with_both_streams() -> None:
    fixed = _case("s", 0.9, 0.4, {"default": 0.9, bmr.FLOORLESS: 0.8}) | {"I": {"default": 0.9}}  # pixels only
    margin = _case("s", 0.8, 0.9, {"default": 0.9, bmr.NO_MARGIN: 0.8, bmr.FLOORLESS: 0.9}) | {"I": {"default": 0.9}}
    cases = [_case("s", 1.0, 0.6, {"default": 1.0}), _case("s", 0.55, 0.9, {"default": 0.85}), fixed, margin]
    rows = bmr.detail(cases)[2:]
    assert len(rows) == 4  # the second case at image and pixel level (0.05 short), the others at pixel level
    assert rows[0] == "| s | c | f2f_rgb | bump | I | 0.550 | 0.900 | 0.850 | 0.850 | 0.850 |"
    assert rows[1].split(" | ")[4] == "P"
    assert rows[2] == "| s | c | f2f_rgb | bump | P | 0.900 | 0.400 | 0.900 | 0.900 | 0.800 |"
    assert rows[3] == "| s | c | f2f_rgb | bump | P | 0.800 | 0.900 | 0.900 | 0.800 | 0.900 |"


def test_shortfalls_are_counted_again_where_the_better_stream_sees_beyond_its_exact_prior() -> None:
    # Both cases fall 0.1 short of an informative better stream (0.95 with 12 good, 6 defective parts).
    seen = _case("s", 0.95, 0.5, {"default": 0.85}) | {"twin": ((0.5, 0.5), (0.5, 0.5))}
    prior = _case("s", 0.5, 0.95, {"default": 0.85}) | {"twin": ((0.5, 0.5), (0.95, 0.95))}  # its twin scores the same
    lines = bmr.beyond_twin_tables([seen, prior])
    image, pixel = lines[2], lines[6]
    assert image.startswith("| default | s |") and pixel.startswith("| default | s |")
    for line in (image, pixel):
        assert line.split(" | ")[2:5] == ["2/2", "1", "1 |"]  # 2 informative shortfalls, 1 beyond the prior
    assert bmr.beyond_twin_tables([seen, _case("s", 0.9, 0.5, {"default": 0.9}) | {"twin": None}]) == []


def test_skill_table_compares_what_each_rule_sees_beyond_its_exact_prior_with_the_main_sensor() -> None:
    twin = {"twin": ((0.5, 0.5), (0.9, 0.9))}  # the hallucinated stream's prior is high: it knows where parts are
    a = _case("s", 0.9, 0.95, {"default": 0.7}) | twin | {"I_twin": {"default": 0.5}, "P_twin": {"default": 0.5}}
    b = _case("s", 0.9, 0.95, {"default": 0.9}) | twin | {"I_twin": {"default": 0.5}, "P_twin": {"default": 0.5}}
    line = bmr.skill_table([a, b], "P")[2].strip("| ").split(" | ")
    # main: (0.9 - 0.5) / 0.5 = 0.8; hallucinated: (0.95 - 0.9) / 0.1 = 0.5, below the main sensor's although
    # its AUROC is higher; fused 0.4 and 0.8
    assert line[2:] == ["0.600", "0.800", "0.500", "1", "0", "0"]
    assert np.isnan(bmr.skill(0.97, 1.0))  # NaN where the prior is perfect
    assert bmr.skill_table([a | {"twin": None}, b], "I") == []


def test_skill_detail_lists_the_cases_where_the_default_sees_less_than_the_main_sensor() -> None:
    twin = {"twin": ((0.5, 0.5), (0.5, 0.5))}
    lost = _case("s", 0.9, 0.6, {"default": 0.7}) | twin | {"I_twin": {"default": 0.5}, "P_twin": {"default": 0.5}}
    kept = _case("s", 0.9, 0.6, {"default": 0.9}) | twin | {"I_twin": {"default": 0.5}, "P_twin": {"default": 0.5}}
    rows = bmr.skill_detail([lost, kept])[2:]
    cells = "0.900, 0.800 | 0.600, 0.200 | 0.700, 0.400"  # AUROC, skill: main, hallucinated, default
    assert rows == [f"| s | c | f2f_rgb | bump | {level} | {cells} |" for level in "IP"]
