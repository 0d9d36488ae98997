"""benchmarks/_common.write_section and run_all.reorder keep every other section intact."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[3] / "benchmarks"))
import _common  # noqa: E402
import run_all  # noqa: E402


def test_write_section_replaces_only_its_own_section(tmp_path: Path) -> None:
    doc = tmp_path / "b.md"
    doc.write_text("# Benchmarks\n\n## A\n\nold a\n\n### sub of A\n\nx\n\n## B\n\nb stays\n",
                   encoding="utf-8")
    _common.write_section("## A\n\nnew a\n", doc)
    text = doc.read_text(encoding="utf-8")
    assert "old a" not in text and "sub of A" not in text
    assert text.index("## A") < text.index("new a") < text.index("## B")
    assert "b stays" in text


def test_write_section_appends_a_new_section_and_rejects_a_bad_heading(tmp_path: Path) -> None:
    doc = tmp_path / "b.md"
    _common.write_section("## A\n\na\n", doc)
    _common.write_section("## C\n\nc\n", doc)
    text = doc.read_text(encoding="utf-8")
    assert text.startswith("# Benchmarks\n") and text.index("## A") < text.index("## C")
    with pytest.raises(ValueError):
        _common.write_section("no heading\n", doc)


def test_reorder_puts_known_sections_first_and_keeps_unknown_ones(tmp_path: Path) -> None:
    doc = tmp_path / "b.md"
    doc.write_text("# old header\n\n## Zeta\n\nz\n\n## Memory bank scaling\n\nm\n\n"
                   "## Pipeline stages and few-modal speed-up\n\np\n", encoding="utf-8")
    run_all.reorder(doc)
    text = doc.read_text(encoding="utf-8")
    assert "old header" not in text and text.startswith("# Benchmarks")
    order = [text.index(h) for h in ("## Pipeline stages", "## Memory bank scaling", "## Zeta")]
    assert order == sorted(order)
    assert all(s in text for s in ("\nz\n", "\nm\n", "\np\n"))


def test_machine_description_names_cores_and_load() -> None:
    text = _common.machine_description((0.0, 0.0, 0.0))
    assert "logical CPUs" in text and "load average" in text and "before 0.0/0.0/0.0" in text
