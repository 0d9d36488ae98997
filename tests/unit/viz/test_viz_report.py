"""Result tables, rounding rules and the results.{json,csv,md} files."""

from __future__ import annotations

import csv
import io
import json

import pytest

from cmdiad.errors import DatasetError
from cmdiad.viz.report import (
    ROW_ORDER,
    format_markdown,
    load_records,
    merge_records,
    metric_table,
    row_name,
    timing_table,
    write_results,
)


def _record(method: str, main: str, category: str, value: float = 0.9, **extra: float) -> dict:
    rec = {
        "method": method, "main": main, "category": category, "i_auroc": value, "p_auroc": value,
        "aupro_30": value, "aupro_1": value, "fit_seconds": 2.0, "ms_per_sample": 5.0,
    }
    rec.update(extra)
    return rec


ALL_ROWS = [
    ("i2f", "rgb"), ("xyz", "xyz"), ("f2f", "xyz"), ("dual", "both"), ("f2i", "rgb"),
    ("rgb", "rgb"), ("i2f", "xyz"), ("f2f", "rgb"), ("f2i", "xyz"),
]


def test_row_name_keeps_single_and_dual_methods_plain() -> None:
    assert row_name(_record("xyz", "xyz", "a")) == "xyz"
    assert row_name(_record("dual", "both", "a")) == "dual"
    assert row_name(_record("f2i", "rgb", "a")) == "f2i_rgb"


def test_table_shape_and_paper_order() -> None:
    records = [_record(m, main, c) for m, main in ALL_ROWS for c in ("tire", "cable_gland", "bagel")]
    header, rows = metric_table(records, "i_auroc")
    assert header == ["Method", "Bagel", "Cable_Gland", "Tire", "Mean"]
    assert len(rows) == len(ROW_ORDER) and all(len(r) == len(header) for r in rows)
    assert [r[0] for r in rows] == [
        "Single xyz bank", "Single RGB bank", "Dual bank",
        "MTFI F2F (xyz main)", "MTFI F2I (xyz main)", "MTFI I2F (xyz main)",
        "MTFI F2F (RGB main)", "MTFI F2I (RGB main)", "MTFI I2F (RGB main)",
    ]


def test_only_present_rows_are_listed_and_unknown_rows_come_last() -> None:
    records = [_record("zz", "xyz", "a"), _record("f2f", "rgb", "a"), _record("rgb", "rgb", "a")]
    _, rows = metric_table(records, "i_auroc")
    assert [r[0] for r in rows] == ["Single RGB bank", "MTFI F2F (RGB main)", "zz_xyz"]


def test_mean_is_mean_of_rounded_values() -> None:
    # Rounded per category: 0.100, 0.100, 0.101 -> mean 0.10033 -> 0.100; the raw mean 0.10053
    # would round to 0.101.
    records = [_record("xyz", "xyz", c, v) for c, v in (("a", 0.1004), ("b", 0.1004), ("c", 0.1008))]
    _, rows = metric_table(records, "i_auroc")
    assert rows[0][1:] == [0.1, 0.1, 0.101, 0.1]
    assert round(sum(r["i_auroc"] for r in records) / 3, 3) == 0.101


def test_missing_or_nan_cell_gives_no_mean() -> None:
    records = [
        _record("xyz", "xyz", "a"), _record("xyz", "xyz", "b", float("nan")), _record("rgb", "rgb", "a"),
    ]
    _, rows = metric_table(records, "p_auroc")
    assert rows[0][1:] == [0.9, None, None]
    assert rows[1][1:] == [0.9, None, None]


def test_format_markdown_parses_back() -> None:
    header, rows = metric_table([_record("xyz", "xyz", "a", 0.12345)], "i_auroc")
    lines = format_markdown(header, rows).strip().splitlines()
    assert lines[0] == "| Method | A | Mean |"
    assert lines[1] == "|:---|---:|---:|"
    assert [c.strip() for c in lines[2].strip("|").split("|")] == ["Single xyz bank", "0.123", "0.123"]


def test_timing_table_sums_and_means() -> None:
    records = [
        _record("xyz", "xyz", "a", fit_seconds=1.0, ms_per_sample=10.0),
        _record("xyz", "xyz", "b", fit_seconds=3.0, ms_per_sample=20.0),
    ]
    header, rows = timing_table(records)
    assert header[0] == "Method"
    assert rows == [["Single xyz bank", "2", 4.0, 2.0, 15.0]]


def test_merge_replaces_same_pair_and_keeps_others() -> None:
    old = [_record("xyz", "xyz", "a", 0.1), _record("xyz", "xyz", "b", 0.2), _record("rgb", "rgb", "a", 0.3)]
    new = [_record("xyz", "xyz", "b", 0.9), _record("f2f", "xyz", "a", 0.8)]
    merged = merge_records(old, new)
    assert [(row_name(r), r["category"], r["i_auroc"]) for r in merged] == [
        ("xyz", "a", 0.1), ("xyz", "b", 0.9), ("rgb", "a", 0.3), ("f2f_xyz", "a", 0.8),
    ]


def test_write_results_files_are_parseable(tmp_path) -> None:
    records = [_record(m, main, c, 0.123456789) for m, main in ALL_ROWS[:3] for c in ("bagel", "foam")]
    records[0]["aupro_1"] = float("nan")
    write_results(tmp_path, records, command="cmdiad evaluate --set x=1", config={"seed": 7})
    loaded = json.loads((tmp_path / "results.json").read_text())
    assert len(loaded) == 6 and loaded[1]["i_auroc"] == 0.123456789 and loaded[0]["aupro_1"] is None
    rows = list(csv.DictReader(io.StringIO((tmp_path / "results.csv").read_text())))
    assert len(rows) == 6 and float(rows[1]["i_auroc"]) == 0.123456789
    assert {r["row"] for r in rows} == {"i2f_rgb", "xyz", "f2f_xyz"}
    md = (tmp_path / "results.md").read_text()
    for heading in ("## I-AUROC", "## P-AUROC", "## AUPRO@30%", "## AUPRO@1%"):
        assert heading in md
    assert "Timing" not in md and "fit_seconds" not in (tmp_path / "results.json").read_text()
    timings = json.loads((tmp_path / "timings.json").read_text())
    assert len(timings) == 6 and timings[0]["fit_seconds"] == 2.0
    assert "## Timing" not in md and "| Method |" in (tmp_path / "timings.md").read_text()
    assert load_records(tmp_path)[0]["ms_per_sample"] == 5.0  # joined back on load
    assert "cmdiad evaluate --set x=1" in md and '"seed": 7' in md
    assert md.count("| Method | Bagel | Foam | Mean |") == 4
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_rerun_updates_some_rows_and_keeps_the_rest(tmp_path) -> None:
    first = [_record("xyz", "xyz", "a", 0.1), _record("rgb", "rgb", "a", 0.2)]
    write_results(tmp_path, first, command="run 1", config={})
    write_results(tmp_path, [_record("rgb", "rgb", "a", 0.7)], command="run 2", config={})
    loaded = {row_name(r): r["i_auroc"] for r in load_records(tmp_path)}
    assert loaded == {"xyz": 0.1, "rgb": 0.7}
    md = (tmp_path / "results.md").read_text()
    assert "run 2" in md and "| Single xyz bank | 0.100 |" in md and "| Single RGB bank | 0.700 |" in md


def test_merge_false_replaces_everything(tmp_path) -> None:
    write_results(tmp_path, [_record("xyz", "xyz", "a")], command="a", config={})
    write_results(tmp_path, [_record("rgb", "rgb", "a")], command="b", config={}, merge=False)
    assert [r["method"] for r in load_records(tmp_path)] == ["rgb"]


def test_corrupt_results_json_names_the_file(tmp_path) -> None:
    (tmp_path / "results.json").write_text("{not json")
    with pytest.raises(DatasetError, match="results.json"):
        write_results(tmp_path, [_record("xyz", "xyz", "a")], command="c", config={})
    assert (tmp_path / "results.json").read_text() == "{not json"


def test_record_without_category_is_rejected(tmp_path) -> None:
    bad = _record("xyz", "xyz", "a")
    del bad["category"]
    with pytest.raises(ValueError, match="category"):
        write_results(tmp_path, [bad], command="c", config={})
    assert not (tmp_path / "results.json").exists()


def test_no_nan_token_in_json(tmp_path) -> None:
    write_results(tmp_path, [_record("xyz", "xyz", "a", float("inf"))], command="c", config={})
    text = (tmp_path / "results.json").read_text()
    assert "NaN" not in text and "Infinity" not in text
    assert json.loads(text)[0]["i_auroc"] is None


def test_report_tables_do_not_depend_on_the_html_writer(tmp_path) -> None:
    # one direction only (viz.html builds on viz.report), so there is no import cycle to defer
    import subprocess
    import sys

    code = "import sys, cmdiad.viz.report; print('cmdiad.viz.html' in sys.modules)"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "False"
    from cmdiad.viz.html import write_html_report

    path = write_html_report(tmp_path, [_record("xyz", "xyz", "a")], tmp_path / "raw", title="R")
    assert path == tmp_path / "report.html" and "<h2>I-AUROC</h2>" in path.read_text()


def _with_defects(method: str, main: str, category: str, per: dict) -> dict:
    rec = _record(method, main, category)
    rec["num_test"] = sum(v["num_test"] for v in per.values()) + 3
    rec["per_defect"] = {k: {"num_test": v["num_test"], **dict.fromkeys(
        ("i_auroc", "p_auroc", "aupro_30", "aupro_1"), v["value"])} for k, v in per.items()}
    return rec


def test_numpy_scalars_become_plain_numbers_in_csv_and_json(tmp_path) -> None:
    import numpy as np

    rec = _record("xyz", "xyz", "a", np.float64(0.8712345))
    rec["aupro_30"], rec["num_test"] = np.float32(0.5), np.int64(12)
    write_results(tmp_path, [rec], config={})
    text = (tmp_path / "results.csv").read_text()
    assert "np." not in text and "float64" not in text
    row = next(csv.DictReader(io.StringIO(text)))
    assert float(row["i_auroc"]) == 0.8712345 and float(row["aupro_30"]) == 0.5 and row["num_test"] == "12"
    assert json.loads((tmp_path / "results.json").read_text())[0]["num_test"] == 12


def test_csv_has_one_line_per_defect_type_and_all(tmp_path) -> None:
    per = {"crack": {"num_test": 2, "value": 0.5}, "hole": {"num_test": 4, "value": float("nan")}}
    write_results(tmp_path, [_with_defects("xyz", "xyz", "a", per)], config={})
    rows = list(csv.DictReader(io.StringIO((tmp_path / "results.csv").read_text())))
    assert [(r["defect"], r["num_test"]) for r in rows] == [("all", "9"), ("crack", "2"), ("hole", "4")]
    assert rows[2]["i_auroc"] == "nan" and float(rows[1]["p_auroc"]) == 0.5
    loaded = json.loads((tmp_path / "results.json").read_text())[0]
    assert loaded["per_defect"]["hole"]["i_auroc"] is None  # strict JSON inside per_defect too


def test_defect_table_is_the_mean_over_categories_having_the_type() -> None:
    from cmdiad.viz.report import defect_count_table, defect_table

    records = [
        _with_defects("xyz", "xyz", "a", {"crack": {"num_test": 2, "value": 0.2},
                                          "hole": {"num_test": 1, "value": 0.9}}),
        _with_defects("xyz", "xyz", "b", {"crack": {"num_test": 3, "value": 0.4}}),
        _with_defects("rgb", "rgb", "a", {"hole": {"num_test": 1, "value": 0.5}}),
    ]
    header, rows = defect_table(records, "i_auroc")
    assert header == ["Method", "crack", "hole"]
    assert rows == [["Single xyz bank", 0.3, 0.9], ["Single RGB bank", None, 0.5]]
    assert defect_count_table(records)[1] == [["Single xyz bank", "5", "1"], ["Single RGB bank", None, "1"]]


def test_results_md_has_counts_and_per_defect_tables_but_no_timing(tmp_path) -> None:
    per = {"crack": {"num_test": 2, "value": 0.5}}
    write_results(tmp_path, [_with_defects("xyz", "xyz", "a", per)], config={"seed": 1})
    md = (tmp_path / "results.md").read_text()
    assert "## Test samples per row" in md and "| Single xyz bank | 5 | 5 |" in md
    assert "## AUPRO@1% per defect type" in md and "| Method | crack |" in md
    assert "fit" not in md.lower() and "ms" not in md.split("## Config")[0]


def test_placebo_columns_and_tables_are_per_defect_type_and_absent_ones_read_nan(tmp_path) -> None:
    new = _with_defects("xyz", "xyz", "a", {"crack": {"num_test": 2, "value": 0.9}})
    new["per_defect"]["crack"].update(p_auroc_placebo=0.75, aupro_30_placebo=0.3, aupro_1_placebo=0.01)
    old = _with_defects("rgb", "rgb", "a", {"crack": {"num_test": 2, "value": 0.8}})  # written before placebos
    write_results(tmp_path, [new, old], config={})
    rows = list(csv.DictReader(io.StringIO((tmp_path / "results.csv").read_text())))
    assert [(r["row"], r["defect"], r["p_auroc_placebo"]) for r in rows] == [
        ("xyz", "all", ""), ("xyz", "crack", "0.75"), ("rgb", "all", ""), ("rgb", "crack", "nan")]
    md = (tmp_path / "results.md").read_text()
    section = md.split("## P-AUROC placebo per defect type")[1].split("##")[0]
    assert "| Single xyz bank | 0.750 |" in section and "| Single RGB bank | n/a |" in section
    assert "## AUPRO@30% placebo per defect type" in md
