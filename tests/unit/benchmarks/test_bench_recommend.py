"""bench_recommend: the exact merit of a row from its null twin, and each rule's regret."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
import bench_recommend as br  # noqa: E402


def _rec(method: str, main: str, i_auroc: float, pixel: float, placebo: float) -> dict:
    per = {k: {"i_auroc": i_auroc, "p_auroc": pixel, "aupro_30": pixel, "aupro_1": pixel,
               "p_auroc_placebo": placebo, "aupro_30_placebo": placebo, "aupro_1_placebo": placebo}
           for k in ("bump", "stain")}
    return {"method": method, "main": main, "category": "ring", "i_auroc": i_auroc, "p_auroc": pixel,
            "aupro_30": pixel, "aupro_1": pixel, "per_defect": per}


def test_exact_merit_is_the_skill_over_the_twin() -> None:
    real, twin = _rec("rgb", "rgb", 0.8, 0.9, 0.5), _rec("rgb", "rgb", 0.5, 0.6, 0.5)
    assert br.exact_merit(real, twin) == pytest.approx((0.8 + 0.75 + 0.75) / 3)  # (0.9 - 0.6) / 0.4


def test_a_lead_made_by_the_transplant_placebo_costs_regret_and_the_margin_avoids_it(tmp_path: Path) -> None:
    # The MTFI row leads over its transplant placebo (0.4), but on the twins its prior is 0.9: it sees
    # nothing; the bank's transplant placebo matches its twin.
    run = [_rec("rgb", "rgb", 0.8, 0.9, 0.6), _rec("f2f", "rgb", 0.8, 0.9, 0.4)]
    twin = [_rec("rgb", "rgb", 0.5, 0.6, 0.6), _rec("f2f", "rgb", 0.5, 0.9, 0.9)]
    for name, records in (("run", run), ("twin", twin)):
        (tmp_path / name).mkdir()
        (tmp_path / name / "results.json").write_text(json.dumps(records))
    (case,) = br.regrets(tmp_path / "twin", tmp_path / "run")
    assert case["exact"] == ["rgb"] and case["picks"]["no margin"] == "f2f_rgb"
    assert case["regret"]["no margin"] == pytest.approx(0.75 * 2 / 3)  # the bank's skill 0.75, F2F's 0
    assert case["picks"]["margin 0.1"] == "rgb" and case["regret"]["margin 0.1"] == 0
    # The lead the report shows beside the bank: estimated from the transplant placebo, and exact.
    assert case["lead"]["row"] == "f2f_rgb"
    assert case["lead"]["estimated"] == pytest.approx(((0.8 + 5 / 6 * 2) - (0.8 + 0.75 * 2)) / 3)
    assert case["lead"]["exact"] == pytest.approx(-0.75 * 2 / 3)
    lines = br.tables([case])
    assert "| run | ring | rgb | MTFI F2F (RGB main) | +0.056 | -0.500 |" in lines
