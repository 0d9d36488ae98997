"""readme_tables: the README's blocks come from a run's results.md, between the README's markers."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
import readme_tables  # noqa: E402

ROWS = ("Single xyz bank", "Single RGB bank", "Dual bank", "MTFI F2F (xyz main)", "MTFI F2F (RGB main)")


def _results(tmp_path: Path) -> Path:
    def overall(title: str, base: float) -> list[str]:
        return [f"## {title}", "", "| Method | Ring | Mean |", "|:---|---:|---:|",
                *(f"| {m} | {base + i / 100:.3f} | {base + i / 100:.3f} |" for i, m in enumerate(ROWS)), ""]

    per = {"Single xyz bank": (0.99, 0.70), "Single RGB bank": (0.60, 0.99), "Dual bank": (0.98, 0.99),
           "MTFI F2F (xyz main)": (0.99, 0.69), "MTFI F2F (RGB main)": (0.70, 0.99)}

    def per_defect(title: str, values: dict = per) -> list[str]:
        return [f"## {title} (good vs that type, mean over categories)", "", "| Method | bump | stain |",
                "|:---|---:|---:|", *(f"| {m} | {b:.3f} | {s:.3f} |" for m, (b, s) in values.items()), ""]

    # the hallucinated map's prior: the RGB-main MTFI row's placebo is high
    placebo = {m: (0.75, 0.75) if m == "MTFI F2F (RGB main)" else (0.6, 0.6) for m in per}
    text = ["# Results", "", *overall("I-AUROC", 0.8), *overall("P-AUROC", 0.85), *overall("AUPRO@30%", 0.7),
            *overall("AUPRO@1%", 0.2), *per_defect("I-AUROC per defect type"), *per_defect("P-AUROC per defect type"),
            *per_defect("P-AUROC placebo per defect type", placebo)]
    (tmp_path / "results.md").write_text("\n".join(text))
    return tmp_path / "results.md"


def test_blocks_and_quoted_numbers_come_from_the_results(tmp_path: Path) -> None:
    found = readme_tables.sections(_results(tmp_path))
    text = readme_tables.blocks(found, tmp_path)
    assert text.count("```") == 4 and "AUPRO@1%" not in text and "| MTFI F2F (RGB main) | 0.750 | 0.750 |" in text
    assert "| MTFI F2F (RGB main) | 0.840 | 0.840 |" in text and "| Dual bank | 0.980 | 0.990 |" in text
    quoted = "\n".join(readme_tables.quoted_numbers(found, tmp_path))
    assert "bump 0.600 -> 0.700 (26% of the gap)" in quoted  # (0.70 - 0.60) / (0.98 - 0.60)
    assert "MTFI F2F (xyz main): below the xyz bank on: stain I 0.690 < 0.700, stain P 0.690 < 0.700" in quoted
    assert "P-AUROC above its placebo: bump -0.050 (RGB bank +0.000, dual +0.380)" in quoted  # 0.70 - 0.75
    assert "stain P-AUROC above its placebo +0.090 (xyz bank +0.100)" in quoted


def test_write_replaces_only_the_marked_blocks(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    results = _results(tmp_path)
    readme = tmp_path / "README.md"
    readme.write_text(f"intro\n{readme_tables.BEGIN}\nold tables\n{readme_tables.END}\nrest\n")
    monkeypatch.setattr(readme_tables, "README", readme)
    monkeypatch.setattr(sys, "argv", ["readme_tables.py", str(results.parent), "--write"])
    readme_tables.main()
    out = readme.read_text()
    assert out.startswith("intro\n") and out.endswith(f"{readme_tables.END}\nrest\n") and "old tables" not in out
    assert readme_tables.blocks(readme_tables.sections(results), tmp_path) in out
    readme.write_text("no markers\n")
    with pytest.raises(SystemExit, match="markers"):
        readme_tables.main()


def test_the_repository_readme_has_the_markers() -> None:
    text = readme_tables.README.read_text()
    assert text.count(readme_tables.BEGIN) == 1 and text.count(readme_tables.END) == 1
