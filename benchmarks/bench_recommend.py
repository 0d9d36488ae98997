"""How often does "Which sensors to deploy" pick the right row? Ranking rules against the exact answer.

On a generated set with null twins (``bench_twin.py``) each row's pixel skill is known exactly,
so each (category, sensor set) has an exact merit per row: the mean of its I-AUROC and of its
P-AUROC and AUPRO@30% skill over the twin run, averaged over defect types. A ranking rule sees
only what a user has (the run's records, with the transplant placebo) and picks one row; its
*regret* is the exact merit of the exact best row minus that of the row it picked. Rules:

- ``no margin``: the highest merit with skill over the transplant placebo, a tie going to the
  first candidate (the report's ranking before ``BANK_MARGIN``);
- ``raw``: the raw I-AUROC, P-AUROC and AUPRO@30% (what ranked before placebos);
- ``margin D``: :func:`cmdiad.viz.recommend.pick` with margin D: a row with a second stream
  displaces its sensors' own bank only when its merit is higher by more than D (the report uses
  ``BANK_MARGIN``; with D = 0 a tie keeps the bank).

A last table gives, per cell, the row with a second stream that the report names beside the
bank, with its estimated lead over the bank (merit over the transplant placebo) and its exact
lead (over the twins): whether an estimated lead tells a row that sees more than its bank from
one that does not.

    python benchmarks/bench_recommend.py --group TWIN_RUN RUN [RUN ...] [--group ...] [--write]
"""

from __future__ import annotations

import argparse
import functools
import math
import sys
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import DOC, command_line, publish  # noqa: E402
from bench_twin import add_groups, groups, skill  # noqa: E402

from cmdiad.viz.recommend import BANK_MARGIN, SENSOR_SETS, bank_index, challenger, merit, pick  # noqa: E402
from cmdiad.viz.report import load_records, row_label, row_name  # noqa: E402

Record = Mapping[str, Any]
MARGINS = (0.0, 0.02, 0.05, 0.1)


def exact_merit(record: Record, twin: Record) -> float:
    """Mean of I-AUROC and of P-AUROC and AUPRO@30% skill over the twin run, over defect types."""
    per, prior = record["per_defect"], twin["per_defect"]
    pixel = [float(np.mean([skill(np.float64(per[k][key]), np.float64(prior[k][key])) for k in per]))
             for key in ("p_auroc", "aupro_30")]
    return float(np.mean([record["i_auroc"], *pixel]))


RULES: dict[str, Callable[[Sequence[Record]], Record]] = {
    "no margin": lambda mine: pick(mine, margin=-math.inf),
    "raw": lambda mine: max(mine, key=lambda r: merit(r, False)),
    **{f"margin {m:g}": functools.partial(pick, margin=m) for m in MARGINS},
}


def regrets(twin_run: Path, run: Path) -> list[dict[str, Any]]:
    """Per (category, sensor set) of ``run``: the exact best row and each rule's pick and regret."""
    records = load_records(run)
    twin = {(row_name(r), r["category"]): r for r in load_records(twin_run)}
    out = []
    for category in sorted({str(r["category"]) for r in records}):
        for main in SENSOR_SETS:
            mine = [r for r in records if r["category"] == category and r["main"] == main]
            if len(mine) < 2:
                continue
            exact = {row_name(r): exact_merit(r, twin[(row_name(r), category)]) for r in mine}
            best = max(exact.values())
            picks = {name: row_name(rule(mine)) for name, rule in RULES.items()}
            out.append({"group": twin_run.name, "run": run.name, "category": category, "sensors": main,
                        "exact": [n for n, v in exact.items() if v >= best - 1e-9],
                        "picks": picks, "regret": {n: best - exact[p] for n, p in picks.items()},
                        "lead": _lead(mine, exact)})
    return out


def _lead(mine: Sequence[Record], exact: Mapping[str, float]) -> dict[str, Any] | None:
    """The row with a second stream that the report names beside the bank (:func:`challenger`), its
    estimated merit minus the bank's and its exact merit minus the bank's."""
    found = challenger(mine)
    if found is None:
        return None
    row, lead = found
    bank = row_name(mine[bank_index(mine)])
    return {"row": row_name(row), "estimated": lead, "exact": exact[row_name(row)] - exact[bank]}


def tables(cases: list[dict[str, Any]]) -> list[str]:
    """Markdown: per group of runs (their twin run) and rule, right picks and regret; then every cell."""
    lines = ["| runs against twins of | rule | cells | right picks | mean regret | largest regret |",
             "|---|---|---:|---:|---:|---:|"]
    for group in [*dict.fromkeys(c["group"] for c in cases), "all"]:
        mine = [c for c in cases if group in ("all", c["group"])]
        for name in RULES:
            r = np.array([c["regret"][name] for c in mine])
            right = sum(c["picks"][name] in c["exact"] or c["regret"][name] < 1e-3 for c in mine)
            lines.append(f"| {group} | {name} | {len(mine)} | {right} | {r.mean():.4f} | {r.max():.3f} |")
    lines += ["", "| run | category | sensors | exact best | " + " | ".join(RULES) + " |",
              "|---|---|---|---|" + "---|" * len(RULES)]
    for c in cases:
        picks = [f"{row_label(c['picks'][n])} ({c['regret'][n]:.3f})" for n in RULES]
        lines.append(f"| {c['run']} | {c['category']} | {c['sensors']} | "
                     f"{', '.join(row_label(n) for n in c['exact'])} | " + " | ".join(picks) + " |")
    leads = [c for c in cases if c["lead"] is not None]
    real = [c["lead"]["estimated"] for c in leads if c["lead"]["exact"] > 1e-3]
    false = [c["lead"]["estimated"] for c in leads if c["lead"]["exact"] <= 1e-3]
    lines += ["", "| run | category | sensors | best row with a second stream | estimated lead | exact lead |",
              "|---|---|---|---|---:|---:|"]
    lines += [f"| {c['run']} | {c['category']} | {c['sensors']} | {row_label(c['lead']['row'])} | "
              f"{c['lead']['estimated']:+.3f} | {c['lead']['exact']:+.3f} |" for c in leads]
    if real and false:
        lines += ["", f"Estimated leads of rows that see more than their bank (exact lead above 0.001): "
                      f"{min(real):+.3f} to {max(real):+.3f} ({len(real)} cells); of rows that do not: "
                      f"{min(false):+.3f} to {max(false):+.3f} ({len(false)} cells); largest exact loss of "
                      f"the latter against the bank: {-min(c['lead']['exact'] for c in leads):.3f}."]
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_groups(p)
    args = p.parse_args()
    cases = [case for twin_run, runs in groups(p, args) for run in runs for case in regrets(twin_run, run)]
    body = [
        "## Which sensors to deploy: ranking rules against the exact answer",
        "",
        f"Command: `{command_line()}` (the runs and twins of 'What each map sees beyond its exact prior').",
        "",
        "Per (run, category, sensor set with more than one row), the exact merit of a row is the mean of "
        "its I-AUROC and of its P-AUROC and AUPRO@30% skill over the twin run, averaged over defect types. "
        "Each rule picks a row from what a user has (the run's records, with the transplant placebo); its "
        "regret is the exact best merit minus the merit of its pick. `no margin` ranks by merit with skill "
        "over the transplant placebo (a tie to the first row), `raw` by the raw metrics, `margin D` as `no "
        "margin` but a row with a second stream must beat its sensors' own bank by more than D, a tie keeping "
        f"the bank (the report: D = {BANK_MARGIN:g}). A pick is right when it is an exact best row or its "
        "regret is below 0.001. First table: per group of runs (named by their twin run), then all of them; "
        "the margin was chosen on the demo and s7 groups, s11's being a held-out check. Second table: each "
        "cell's exact best rows and each rule's pick (regret). Third table: per cell, the row with a second "
        "stream that the report names beside the bank (the highest merit over the transplant placebo), its "
        "merit minus the bank's as estimated and as exact (over the twins).",
        "",
        *tables(cases),
    ]
    publish("\n".join(body).rstrip() + "\n", DOC, write=args.write)


if __name__ == "__main__":
    main()
