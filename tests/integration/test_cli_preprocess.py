"""`cmdiad preprocess`: thresholds from --set, strict keys, out-of-place output."""

from __future__ import annotations

from pathlib import Path

from cmdiad.cli import main


def test_preprocess_cli_with_thresholds(tiny_dataset: Path, tmp_path: Path, capsys) -> None:
    out = tmp_path / "pre"
    assert main(["preprocess", str(tiny_dataset), str(out), "--workers", "1", "--set", "plane_distance=0.006"]) == 0
    assert sorted(p.name for p in (out / "ring").iterdir()) == sorted(p.name for p in (tiny_dataset / "ring").iterdir())
    assert main(["preprocess", str(tiny_dataset), str(tmp_path / "o2"), "--set", "plane_distanse=1"]) == 2
    err = capsys.readouterr().err
    assert "plane_distanse" in err and "plane_distance" in err
