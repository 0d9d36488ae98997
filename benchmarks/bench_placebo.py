"""How much of each pixel metric is the map's spatial prior? Real against placebo, per defect type.

P-AUROC and AUPRO count the background, and defects lie on the part, so a map that is only
higher on the part than around it scores well above chance at every defect type. The placebo
(:mod:`cmdiad.metrics.placebo`) lays each defect type's masks on the good test parts' maps and
scores them as if they were the defect: what the map's prior alone gives. For the single banks,
the dual bank, the six MTFI rows (default fusion) and each MTFI row's hallucinated stream alone,
on every category, prints the mean over categories of P-AUROC and AUPRO@30% per defect type
with its placebo, and what an MTFI row adds to its main sensor's bank on the defect types that
sensor cannot see, above the placebo and in raw terms. Stream scores come from
``bench_fusion``'s cache (the same fits).

    python benchmarks/bench_placebo.py DATA [DATA ...] [--write]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_fusion as bf  # noqa: E402
from _common import DOC, command_line, machine_description, publish  # noqa: E402
from bench_mtfi_rules import MTFI, row_views  # noqa: E402

from cmdiad.io.mvtec3d import list_categories  # noqa: E402
from cmdiad.metrics.per_defect import evaluate_per_defect  # noqa: E402
from cmdiad.viz.report import row_label  # noqa: E402

log = logging.getLogger("bench_placebo")
METRICS = (("p_auroc", "P-AUROC"), ("aupro_30", "AUPRO@30%"))
HALLUCINATED = " hallucinated stream"
UNSEEN = {"rgb": ("bump", "dent"), "xyz": ("stain",)}
"""The generated defect types a main sensor cannot see: by default the generator renders bumps and
dents without their shading, so the camera's image does not change; stains change appearance only,
not the surface."""


def views(root: Path, category: str, row: str) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict]:
    """:func:`bench_mtfi_rules.row_views` plus an MTFI row's hallucinated stream alone."""
    out, d = row_views(root, category, row)
    if row != "dual":
        out[row + HALLUCINATED] = (d["test_image"][:, 1], d["test_maps"][..., 1])
    return out, d


def measure(root: Path) -> dict[tuple[str, str], dict[str, dict]]:
    """``{(category, view): per-defect metrics with placebos}`` of one dataset, full resolution."""
    out = {}
    for category in list_categories(root):
        for row in bf.ROWS:
            log.info("%s %s %s", root.name, category, row)
            found, d = views(root, category, row)
            for name, (image, maps) in found.items():
                out[(category, name)] = evaluate_per_defect(image, d["labels"], maps, d["masks"], d["defects"],
                                                            where=f"{root.name} {category} {name}")
    return out


def _mean(per: dict, cats: list[str], view: str, kind: str, key: str) -> float:
    return float(np.mean([per[(c, view)][kind][key] for c in cats]))


def _label(view: str) -> str:
    row = view.partition(HALLUCINATED)[0]
    return row_label(row) + (HALLUCINATED if view != row else "")


def tables(name: str, per: dict) -> list[str]:
    """Markdown: per metric, every view's value per defect type with its placebo in brackets."""
    cats = sorted({c for c, _ in per})
    kinds = sorted(per[(cats[0], "xyz")])
    order = ["xyz", "rgb", "dual", *MTFI, *(r + HALLUCINATED for r in MTFI)]
    lines = []
    for key, label in METRICS:
        lines += [f"{name}, {label} (placebo), mean over {len(cats)} categories:", "",
                  "| view | " + " | ".join(kinds) + " |", "|---|" + "---:|" * len(kinds)]
        for view in order:
            cells = [f"{_mean(per, cats, view, k, key):.3f} ({_mean(per, cats, view, k, key + '_placebo'):.3f})"
                     for k in kinds]
            lines.append(f"| {_label(view)} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def gains(results: dict[str, dict]) -> list[str]:
    """Markdown: what each MTFI row adds to its main sensor's bank on the types that sensor cannot
    see, raw and above the placebo (metric minus placebo), and the dual bank for scale."""
    lines = ["| data | row | defect | metric | bank | row | row - bank | bank above placebo | row above placebo "
             "| dual above placebo |", "|---|---|---|---|---:|---:|---:|---:|---:|---:|"]
    for name, per in results.items():
        cats = sorted({c for c, _ in per})
        for row in MTFI:
            main = row.split("_")[1]
            for kind in UNSEEN[main]:
                for key, label in METRICS:
                    bank, fused, dual = (_mean(per, cats, v, kind, key) for v in (main, row, "dual"))
                    bank_pl, fused_pl, dual_pl = (_mean(per, cats, v, kind, key + "_placebo")
                                                  for v in (main, row, "dual"))
                    lines.append(f"| {name} | {row_label(row)} | {kind} | {label} | {bank:.3f} | {fused:.3f} | "
                                 f"{fused - bank:+.3f} | {bank - bank_pl:+.3f} | {fused - fused_pl:+.3f} | "
                                 f"{dual - dual_pl:+.3f} |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", type=Path, nargs="+")
    p.add_argument("--write", action="store_true", help="publish to docs/benchmarks.md")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(2)
    results = {root.name: measure(root) for root in args.data}
    lines = [*gains(results), ""]
    for name, per in results.items():
        lines += tables(name, per)
    print("\n".join(lines))
    if args.write:
        body = [
            "## Pixel metrics against their placebo (the map's spatial prior)",
            "",
            f"Command: `{command_line()}` (stream scores from `bench_fusion.py`'s cache; the datasets of "
            f"'Fusion never hurts'). {machine_description()}.",
            "",
            "A pixel metric's placebo is what the map scores when each mask of the defect type is laid on "
            "every good test part's map (`cmdiad.metrics.placebo`): a map that knows where the part is and "
            "nothing of the defect gets it. Every defect of the generated sets lies on the part, so the "
            "placebo is far above 0.5 for every map. First table: what each MTFI row adds to the bank of its "
            "main sensor on the defect types that sensor cannot see (bumps and dents change the camera's "
            "image not at all: the generator renders them without their shading; stains leave the surface "
            "unchanged), raw and above the placebo, beside the dual bank's margin above its placebo. Then, "
            "per dataset and metric, every view's "
            "value per defect type with its placebo in brackets (default fusion; an MTFI row's "
            "hallucinated stream alone on its own lines). Full resolution, mean over categories.",
            "",
            *lines,
        ]
        publish("\n".join(body), DOC)


if __name__ == "__main__":
    main()
