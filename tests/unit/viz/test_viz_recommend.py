"""Which sensors to deploy: the best row per category and sensor set, with per-defect numbers."""

from __future__ import annotations

from cmdiad.viz.html import _recommendation_html
from cmdiad.viz.recommend import BANK_MARGIN, merit, pick, recommendation_table


def _rec(method: str, main: str, category: str, score: float, ms: float) -> dict:
    return {"method": method, "main": main, "category": category, "i_auroc": score, "p_auroc": score,
            "aupro_30": score, "ms_per_sample": ms,
            "per_defect": {"stain": {"i_auroc": score}, "bump": {"i_auroc": 1 - score}}}


def test_best_row_per_sensor_set_with_per_defect_numbers_and_time() -> None:
    records = [_rec("rgb", "rgb", "ring", 0.80, 10.0), _rec("i2f", "rgb", "ring", 0.95, 12.0),
               _rec("f2f", "xyz", "ring", 0.70, 50.0), _rec("xyz", "xyz", "ring", 0.90, 40.0),
               _rec("dual", "both", "ring", 0.95, 60.0), _rec("rgb", "rgb", "tile", 0.60, 9.0)]
    header, rows = recommendation_table(records)
    assert header[1] == "Sensors at inference" and len(rows) == 4
    ring = {r[1]: r for r in rows if r[0] == "Ring"}
    assert ring["RGB camera only"][2] == "MTFI I2F (RGB main)" and ring["RGB camera only"][8] == "12.0"
    assert ring["RGB camera only"][7] is None  # records without placebos: the raw metrics rank
    assert ring["3D scanner only"][2] == "Single xyz bank"
    assert ring["RGB + 3D"][2] == "Dual bank" and ring["RGB + 3D"][6] == "bump 0.050, stain 0.950"
    assert [r[1] for r in rows if r[0] == "Tile"] == ["RGB camera only"]
    html = _recommendation_html(records)
    assert "Which sensors to deploy" in html and "MTFI I2F (RGB main)" in html
    assert _recommendation_html([]) == ""


def _with_placebo(method: str, score: float, pixel: float, placebo: float) -> dict:
    rec = {"method": method, "main": "rgb", "category": "ring", "i_auroc": score, "p_auroc": pixel,
           "aupro_30": pixel, "ms_per_sample": 10.0, "per_defect": {}}
    for kind in ("bump", "stain"):
        rec["per_defect"][kind] = {"i_auroc": score, "p_auroc": pixel, "aupro_30": pixel,
                                   "p_auroc_placebo": placebo, "aupro_30_placebo": placebo}
    return rec


def test_a_row_whose_pixel_gain_is_its_spatial_prior_does_not_win() -> None:
    bank = _with_placebo("rgb", 0.80, 0.75, 0.60)  # localises: 0.15 above its placebo, skill 0.375
    prior = _with_placebo("i2f", 0.80, 0.85, 0.84)  # higher raw pixel metrics, nearly all of it prior
    rows = recommendation_table([prior, bank])[1]
    assert rows[0][2] == "Single RGB bank" and rows[0][7] == "bump 0.38, stain 0.38"  # 0.15 / 0.40
    # One candidate without placebos: the raw metrics rank all of them, and the prior wins again
    # (without the margin that keeps the bank on a small lead).
    del bank["per_defect"]["bump"]["p_auroc_placebo"]
    assert pick([prior, bank], margin=0.0) is prior


def test_skill_does_not_favour_a_low_prior_among_perfect_maps() -> None:
    low = _with_placebo("rgb", 0.80, 1.0, 0.50)
    high = _with_placebo("i2f", 0.80, 1.0, 0.90)
    faster = {**high, "ms_per_sample": 5.0}
    # Both localise perfectly: skill 1 each, the same merit whatever the prior; the tie keeps the bank.
    assert merit(faster, True) == merit(low, True) == (0.80 + 1.0 + 1.0) / 3
    assert recommendation_table([faster, low])[1][0][2] == "Single RGB bank"


def test_null_metrics_as_read_back_from_results_json_do_not_break_the_table() -> None:
    bank = _with_placebo("rgb", 0.80, 0.75, 0.60)
    undefined = _with_placebo("i2f", 0.80, 0.95, 0.84)
    undefined["per_defect"]["bump"].update(i_auroc=None, p_auroc_placebo=None)  # NaN is stored as null
    rows = recommendation_table([undefined, bank])[1]
    # The record lacking a placebo makes the raw metrics rank; its null I-AUROC is left out of its cell.
    assert rows[0][2] == "MTFI I2F (RGB main)" and rows[0][6] == "stain 0.800"


def test_a_second_stream_displaces_the_sensors_own_bank_only_beyond_the_margin() -> None:
    bank, xyz_bank = _rec("rgb", "rgb", "ring", 0.80, 10.0), _rec("xyz", "xyz", "ring", 0.60, 40.0)
    near, clear = _rec("f2f", "rgb", "ring", 0.85, 30.0), _rec("i2f", "rgb", "ring", 1.00, 30.0)
    assert pick([near, bank], margin=0.1) is bank  # a lead within the margin: the simpler, faster bank
    assert pick([clear, near, bank], margin=0.1) is clear
    assert pick([near, clear], margin=0.1) is clear  # no bank among the candidates: the best row
    f2f_xyz = _rec("f2f", "xyz", "ring", 0.65, 50.0)
    assert pick([f2f_xyz, xyz_bank], margin=0.1)["method"] == "xyz"
    assert pick([f2f_xyz, xyz_bank], margin=0.0)["method"] == "f2f"
    # The report's margin: a lead within it keeps the bank.
    assert pick([_rec("i2f", "rgb", "ring", 0.80 + BANK_MARGIN / 2, 30.0), bank]) is bank


def test_the_report_names_the_best_mtfi_row_and_its_lead_beside_every_pick() -> None:
    bank, near = _rec("rgb", "rgb", "ring", 0.80, 10.0), _rec("f2f", "rgb", "ring", 0.80 + BANK_MARGIN + 0.05, 30.0)
    tie = _rec("f2i", "rgb", "ring", 0.80, 12.0)
    picked = recommendation_table([tie, near, bank])[1][0]  # a lead beyond the report's margin: the MTFI row
    assert picked[2] == "MTFI F2F (RGB main)" and picked[9] == f"MTFI F2F (RGB main): +{BANK_MARGIN + 0.05:.3f}"
    kept = recommendation_table([tie, bank])[1][0]  # a tie keeps the bank, and names the row it kept out
    assert kept[2] == "Single RGB bank" and kept[9] == "MTFI F2I (RGB main): +0.000"
    assert recommendation_table([bank])[1][0][9] is None  # nothing beside the bank
