"""`cmdiad experiment` output folders: reproducible bytes, resume, refusal, early input checks."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from cmdiad.cli import main
from cmdiad.synthetic.generator import SynthConfig, generate_dataset

METRIC_FILES = ("results.json", "results.csv", "results.md")


def _run(data: Path, out: Path, tiny_sets: list[str], *extra: str, methods: str = "xyz") -> int:
    return main(["experiment", str(data), "--out", str(out), "--methods", methods, *tiny_sets, *extra])


def test_two_runs_with_the_same_seed_give_identical_metric_files(tiny_dataset, tmp_path, tiny_sets) -> None:
    for name in ("a", "b"):
        assert _run(tiny_dataset, tmp_path / name, tiny_sets, "--seed", "3", methods="xyz,f2f_xyz") == 0
    for name in METRIC_FILES:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes(), name
    run = json.loads((tmp_path / "a" / "run.json").read_text())
    assert run["seed"] == 3 and run["samples"]["ring"] == {"train": 6, "validation": 3, "test": 13}
    assert run["synthetic"]["seed"] == 1 and run["synthetic"]["null_twins"] is False  # the generator's settings
    assert {"torch", "cmdiad_version", "cpu", "machine", "dataset", "command", "preset"} <= set(run)
    html = (tmp_path / "a" / "report.html").read_text()
    assert "<h2>Run</h2>" in html and "<svg" in html and 'alt="colour bar"' in html


def test_interrupted_run_resumes_without_recomputing(tiny_dataset, tmp_path, tiny_sets, monkeypatch, capsys) -> None:
    import cmdiad.pipeline.runs as runs

    real, calls = runs.run_row, []

    def interrupt_second(row, *args, **kwargs):
        calls.append(row)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(row, *args, **kwargs)

    monkeypatch.setattr(runs, "run_row", interrupt_second)
    out = tmp_path / "run"
    assert _run(tiny_dataset, out, tiny_sets, methods="xyz,rgb") == 130
    first_raw = out / "raw" / "xyz" / "ring.npz"
    stamp = first_raw.stat().st_mtime_ns
    calls.clear()
    capsys.readouterr()
    assert _run(tiny_dataset, out, tiny_sets, methods="xyz,rgb") == 0
    assert "resuming: 1 rows already done" in capsys.readouterr().out
    assert calls == ["rgb"] and first_raw.stat().st_mtime_ns == stamp
    assert len(json.loads((out / "results.json").read_text())) == 2


def test_other_configuration_is_refused_unless_overwrite(tiny_dataset, tmp_path, tiny_sets, capsys) -> None:
    out = tmp_path / "run"
    assert _run(tiny_dataset, out, tiny_sets) == 0
    (out / "notes.txt").write_text("mine")
    before = (out / "results.json").read_bytes()
    capsys.readouterr()
    assert _run(tiny_dataset, out, tiny_sets, "--set", "memory.coreset.ratio=0.25") == 2
    err = capsys.readouterr().err
    assert "--overwrite" in err and "memory.coreset.ratio" in err and str(out) in err and "Traceback" not in err
    assert (out / "results.json").read_bytes() == before
    assert _run(tiny_dataset, out, tiny_sets, "--set", "memory.coreset.ratio=0.25", "--overwrite") == 0
    assert json.loads((out / "config.json").read_text())["detector"]["memory"]["coreset"]["ratio"] == 0.25
    assert (out / "notes.txt").read_text() == "mine"  # only cmdiad's own files are cleared


def test_folder_with_foreign_results_is_refused(tiny_dataset, tmp_path, tiny_sets, capsys) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "results.json").write_text("[]")
    assert _run(tiny_dataset, out, tiny_sets) == 2
    assert "--overwrite" in capsys.readouterr().err
    (tmp_path / "file").write_text("x")
    assert _run(tiny_dataset, tmp_path / "file", tiny_sets) == 2
    assert "not a folder" in capsys.readouterr().err


@pytest.mark.parametrize("case", ["missing dataset", "unknown category"])
def test_bad_input_fails_before_anything_is_built_or_written(
    case, tiny_dataset, tmp_path, tiny_sets, monkeypatch, capsys
) -> None:
    import cmdiad.pipeline.runs as runs

    monkeypatch.setattr(runs, "build_encoder", lambda *a, **k: pytest.fail("encoder built before validation"))
    monkeypatch.setattr(runs, "Detector", lambda *a, **k: pytest.fail("detector built before validation"))
    data = tmp_path / "nowhere" if case == "missing dataset" else tiny_dataset
    extra = ["--categories", "ring,bagle"] if case == "unknown category" else []
    out = tmp_path / "out"
    assert _run(data, out, tiny_sets, *extra) == 2
    err = capsys.readouterr().err
    assert str(data) in err and "Traceback" not in err
    if case == "unknown category":
        assert "bagle" in err and "this dataset has: ring" in err
    assert not out.exists()


def test_rows_needing_a_missing_modality_report_their_test_count(tiny_dataset, tmp_path, tiny_sets, caplog) -> None:
    data = tmp_path / "data"
    shutil.copytree(tiny_dataset, data)
    gone = sorted((data / "ring" / "test" / "crack" / "rgb").glob("*.png"))[0]
    gone.unlink()
    with caplog.at_level(logging.WARNING, logger="cmdiad"):
        assert _run(data, tmp_path / "out", tiny_sets, methods="xyz,rgb") == 0
    records = {r["method"]: r for r in json.loads((tmp_path / "out" / "results.json").read_text())}
    assert records["xyz"]["num_test"] == 13 and records["rgb"]["num_test"] == 12
    assert records["rgb"]["num_left_out"] == 1 and records["rgb"]["per_defect"]["crack"]["num_test"] == 1
    warning = " ".join(r.getMessage() for r in caplog.records if "left out" in r.getMessage())
    assert f"ring/test/crack/{gone.stem}" in warning and "no rgb" in warning
    md = (tmp_path / "out" / "results.md").read_text()
    assert "| Single xyz bank | 13 | 13 |" in md and "| Single RGB bank | 12 | 12 |" in md


def test_a_run_on_null_twins_says_its_metrics_are_priors(tmp_path, tiny_sets, caplog) -> None:
    data = tmp_path / "twins"
    generate_dataset(data, SynthConfig(categories=("ring",), image_size=(64, 64), train=6, validation=3, test_good=3,
                                       test_per_defect=1, seed=1, null_twins=True))
    with caplog.at_level(logging.WARNING, logger="cmdiad"):
        assert _run(data, tmp_path / "out", tiny_sets) == 0
    assert any("null twins" in r.getMessage() and "prior" in r.getMessage() for r in caplog.records)
    assert json.loads((tmp_path / "out" / "run.json").read_text())["synthetic"]["null_twins"] is True
