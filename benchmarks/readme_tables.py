"""The README's result tables, from a run of ``cmdiad demo`` (or ``cmdiad experiment``).

    python benchmarks/readme_tables.py runs/demo [--write]

Prints the README's two table blocks, taken from ``RUN/results.md`` (overall I-AUROC and
AUPRO@30%; I-AUROC, P-AUROC and its placebo per defect type), and the numbers its prose quotes
about them: per RGB-main MTFI row, the mean P-AUROC, the share of the RGB-to-dual gap in pixel
AUROC it closes on bumps and dents, and P-AUROC above its placebo there (the RGB bank's and
the dual bank's beside it); per xyz-main row, the defect types where it is below the xyz bank
and its P-AUROC above the placebo on stains. ``--write`` replaces the blocks between the
README's ``<!-- demo-tables -->`` markers.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path

README = Path(__file__).resolve().parent.parent / "README.md"
BEGIN, END = "<!-- demo-tables:begin -->", "<!-- demo-tables:end -->"
OVERALL = (("I-AUROC", "I-AUROC"), ("AUPRO@30%", "AUPRO@30%"))
PER_DEFECT = (("I-AUROC per defect type", "I-AUROC per defect type"),
              ("P-AUROC per defect type", "P-AUROC per defect type"),
              ("P-AUROC placebo per defect type",
               "P-AUROC placebo per defect type (the good parts' maps under that type's masks: the map's prior)"))


def sections(results_md: Path) -> dict[str, list[str]]:
    """``{heading: table lines}`` of every ``## heading`` of a results.md that holds a table."""
    out: dict[str, list[str]] = {}
    heading = None
    for line in results_md.read_text().splitlines():
        if line.startswith("## "):
            heading = line[3:].strip()
        elif heading is not None and line.startswith("|"):
            out.setdefault(heading, []).append(line)
    return out


def _section(found: dict[str, list[str]], prefix: str, where: Path) -> list[str]:
    for heading, lines in found.items():
        if heading == prefix or heading.startswith(prefix + " ("):
            return lines
    raise SystemExit(f"{where}: no '## {prefix}' table")


def table(lines: list[str]) -> dict[str, dict[str, float]]:
    """``{method: {column: value}}`` of a markdown table."""
    head = [c.strip() for c in lines[0].strip("|").split("|")]
    rows = {}
    for line in lines[2:]:
        cells = [c.strip() for c in line.strip("|").split("|")]
        rows[cells[0]] = {h: float(c) for h, c in zip(head[1:], cells[1:], strict=True)}
    return rows


def blocks(found: dict[str, list[str]], where: Path) -> str:
    """The README's text between the markers."""
    def block(parts) -> list[str]:
        lines = ["```"]
        for i, (prefix, title) in enumerate(parts):
            lines += ([""] if i else []) + [title, *_section(found, prefix, where)]
        return [*lines, "```"]

    return "\n".join([*block(OVERALL), "", "Per defect type (test/good against that type only, mean over the "
                      "categories; the paper's", "own question: which sensor sees which defect). A pixel "
                      "metric sees a defect type only as far", "as it exceeds its placebo, the last table "
                      "(docs/method.md, \"What a pixel metric owes to the", "map's spatial prior\"):", "",
                      *block(PER_DEFECT)])


def quoted_numbers(found: dict[str, list[str]], where: Path) -> list[str]:
    """The figures the README's prose quotes."""
    pix = table(_section(found, "P-AUROC per defect type", where))
    placebo = table(_section(found, "P-AUROC placebo per defect type", where))
    img = table(_section(found, "I-AUROC per defect type", where))
    overall = {m: table(_section(found, m, where)) for m in ("I-AUROC", "P-AUROC", "AUPRO@30%")}
    rgb, dual, xyz = "Single RGB bank", "Dual bank", "Single xyz bank"
    out = []  # a run of a subset of the rows (--set rows=...) gets what its banks allow
    for name in ([m for m in pix if m.endswith("(RGB main)")] + [rgb]) if {rgb, dual} <= set(pix) else []:
        gaps = []
        for d in ("bump", "dent"):
            if name != rgb and d in pix[name] and dual in pix and pix[dual][d] > pix[rgb][d]:
                gaps.append(f"{d} {pix[rgb][d]:.3f} -> {pix[name][d]:.3f} "
                            f"({(pix[name][d] - pix[rgb][d]) / (pix[dual][d] - pix[rgb][d]):.0%} of the gap)")
        means = " / ".join(f"{overall[m][name]['Mean']:.3f}" for m in overall)
        below = [d for d in img[name] if img[name][d] < img[rgb][d]]
        above = ", ".join(f"{d} {pix[name][d] - placebo[name][d]:+.3f} (RGB bank {pix[rgb][d] - placebo[rgb][d]:+.3f}, "
                          f"dual {pix[dual][d] - placebo[dual][d]:+.3f})" for d in ("bump", "dent") if d in pix[name])
        out.append(f"{name}: mean I-AUROC / P-AUROC / AUPRO@30% {means}; pixel {', '.join(gaps) or '-'}; "
                   f"P-AUROC above its placebo: {above}; I-AUROC below the RGB bank on: {', '.join(below) or 'none'}")
    for name in [m for m in pix if m.endswith("(xyz main)")] if xyz in pix else []:
        below = [f"{d} {lvl} {t[name][d]:.3f} < {t[xyz][d]:.3f}" for lvl, t in (("I", img), ("P", pix))
                 for d in t[name] if t[name][d] < t[xyz][d]]
        stain = (f"; stain P-AUROC above its placebo {pix[name]['stain'] - placebo[name]['stain']:+.3f} "
                 f"(xyz bank {pix[xyz]['stain'] - placebo[xyz]['stain']:+.3f})") if "stain" in pix[name] else ""
        out.append(f"{name}: below the xyz bank on: {', '.join(below) or 'none'}{stain}")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("run", type=Path, help="an experiment's output folder (results.md)")
    p.add_argument("--write", action="store_true", help=f"replace the tables in {README.name}")
    args = p.parse_args()
    where = args.run / "results.md"
    if not where.is_file():
        raise SystemExit(f"{where}: not found (run `cmdiad demo --out {args.run}` first)")
    found = sections(where)
    text = blocks(found, where)
    print(text, "", *quoted_numbers(found, where), sep="\n")
    if args.write:
        readme = README.read_text()
        pattern = re.compile(re.escape(BEGIN) + r".*?" + re.escape(END), re.S)
        if not pattern.search(readme):
            raise SystemExit(f"{README}: no {BEGIN} ... {END} markers")
        README.write_text(pattern.sub(lambda _: f"{BEGIN}\n{text}\n{END}", readme, count=1))


if __name__ == "__main__":
    main()
