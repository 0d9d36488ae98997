"""What each map sees of a defect beyond its exact prior: runs on generated sets against their null twins.

``cmdiad synth OUT --null-twins`` (same seed and size as a set) writes every defective test part
rendered *without* its defect, with the mask the defect would have; its training, validation and
good test parts are the same as the set's. A run on it therefore scores, per row and defect type,
what each map gives a defect it cannot see at the places where the defects really lie: the exact
placebo. The transplant placebo of :mod:`cmdiad.metrics.placebo` approximates it on data without
twins by laying each mask on the other good parts, whose pose differs. Per run, row and defect
type this prints the skill of the run's P-AUROC and AUPRO@30% over the twin run's,
``(metric - twin) / (1 - twin)`` (what the map sees of the defect beyond its prior) with, in
brackets, the transplant placebo minus the twin run's metric (the approximation's error), as
means over categories, and the skill per category. It also prints how far the twin run's scores
of the good test parts are from each run's (0: the same fitted models, as they should be) and
how much each defect type changes the image and the scan against its twin.

    cmdiad synth TWIN --null-twins [--seed S --size HxW]; cmdiad demo --data TWIN --out TWIN_RUN
    python benchmarks/bench_twin.py --group TWIN_RUN RUN [RUN ...] [--group ...] [--write]
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import DOC, command_line, publish  # noqa: E402

from cmdiad.io.image import read_mask, read_rgb  # noqa: E402
from cmdiad.io.pointcloud import read_xyz  # noqa: E402
from cmdiad.viz.report import load_records, ordered_rows, row_label, row_name  # noqa: E402

METRICS = (("p_auroc", "P-AUROC"), ("aupro_30", "AUPRO@30%"))


def per_defect(run: Path) -> tuple[list[str], dict[tuple[str, str], dict[str, dict]]]:
    """A run's rows in the paper's order and ``{(row, category): per-defect metrics}``."""
    records = load_records(run)
    if not records:
        raise SystemExit(f"{run}: no results.json records")
    return ordered_rows(records), {(row_name(r), r["category"]): r["per_defect"] for r in records}


def run_command(run: Path) -> str:
    """The command that made a run (its ``run.json``), or its folder, and the image size it ran at
    (its ``config.json``): ``cmdiad demo`` ran every set at 192x192 before the eighteenth session."""
    try:
        command = f"`{json.loads((run / 'run.json').read_text())['command']}`"
    except (OSError, KeyError, ValueError):
        command = f"`{run}`"
    try:
        h, w = json.loads((run / "config.json").read_text())["detector"]["data"]["image_size"]
        return f"{command} (at {h}x{w} px)"
    except (OSError, KeyError, ValueError, TypeError):
        return command


def dataset_of(run: Path) -> Path:
    """The dataset a run scored (its ``run.json``)."""
    try:
        return Path(json.loads((run / "run.json").read_text())["dataset"])
    except (OSError, KeyError, ValueError) as exc:
        raise SystemExit(f"{run / 'run.json'}: cannot read the run's dataset ({exc})") from None


def check_settings(twin_run: Path, run: Path) -> None:
    """Stop unless the twin run's dataset is a null-twin set with the run's seed, size and categories,
    where both runs recorded their dataset's settings (``run.json``'s ``synthetic``; older runs did not)."""
    twin, real = (json.loads((r / "run.json").read_text()).get("synthetic") for r in (twin_run, run))
    if twin is not None and not twin.get("null_twins"):
        raise SystemExit(f"{twin_run}: its dataset was not generated with --null-twins")
    if real is not None and real.get("null_twins"):
        raise SystemExit(f"{run}: its dataset holds null twins; name it first in its --group")
    keys = ("seed", "image_size", "categories", "train", "validation", "test_good", "test_per_defect")
    if twin is not None and real is not None and any(twin.get(k) != real.get(k) for k in keys):
        raise SystemExit(f"{run}: its dataset's seed, size or counts differ from the twin run's")


def good_part_difference(twin: Path, run: Path) -> float:
    """Largest difference between the two runs' image scores and maps of the good test parts."""
    worst = 0.0
    for path in sorted((run / "raw").glob("*/*.npz")):
        other = twin / "raw" / path.parent.name / path.name
        if not other.is_file():
            raise SystemExit(f"{other}: missing; run the twin set with the same rows and categories")
        a, b = np.load(path), np.load(other)
        ga, gb = a["labels"] == 0, b["labels"] == 0
        if not np.array_equal(a["paths"][ga], b["paths"][gb]):
            raise SystemExit(f"{path}: the good test parts differ from the twin run's; generate the twins "
                             "with the set's seed and size")
        for key in ("image_scores", "anomaly_maps"):
            worst = max(worst, float(np.abs(a[key][ga] - b[key][gb]).max()))
    return worst


def cue_strength(data: Path, twin_data: Path) -> dict[str, tuple[float, float]]:
    """Per defect type, the median over test parts of the mean change that the defect makes inside its
    mask to the image (grey levels) and to the scan's z (micrometres), against its twin."""
    changes: dict[str, list[tuple[float, float]]] = {}
    for mask_file in sorted(data.glob("*/test/*/gt/*.png")):
        kind = mask_file.parent.parent.name
        if kind == "good":
            continue
        mask = read_mask(mask_file)
        sample = mask_file.parent.parent
        rgb_file, xyz_file = (sample / "rgb" / mask_file.name, sample / "xyz" / (mask_file.stem + ".tiff"))
        twin = [twin_data / f.relative_to(data) for f in (rgb_file, xyz_file)]
        grey = np.abs(read_rgb(rgb_file).astype(float) - read_rgb(twin[0]).astype(float)).mean(-1)[mask]
        z = np.abs(read_xyz(xyz_file)[..., 2].astype(float) - read_xyz(twin[1])[..., 2])[mask]
        changes.setdefault(kind, []).append((float(grey.mean()), float(z.mean()) * 1e6))
    return {k: tuple(np.median(np.array(v), axis=0).tolist()) for k, v in sorted(changes.items())}


def skill(metric: np.ndarray | float, prior: np.ndarray | float) -> np.ndarray:
    """``(metric - prior) / (1 - prior)``: 0 for a map that sees nothing of the defect, 1 for a perfect
    one, NaN where the prior is already perfect (nothing left to see)."""
    metric, prior = np.asarray(metric, dtype=float), np.asarray(prior, dtype=float)
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(prior < 1.0, (metric - prior) / (1.0 - prior), np.nan)


def table(name: str, rows: list[str], real: dict, twin: dict, key: str, label: str) -> list[str]:
    """Markdown: per row and defect type, the skill over the twin run (transplant placebo minus twin run)."""
    cats = sorted({c for _, c in real})
    kinds = sorted(next(iter(real.values())))
    lines = [f"{name}, {label}: skill over the twin run (transplant placebo - twin run), mean over "
             f"{len(cats)} categories:", "", "| row | " + " | ".join(kinds) + " |", "|---|" + "---:|" * len(kinds)]
    for row in rows:
        cells = []
        for kind in kinds:
            metric = np.array([real[(row, c)][kind][key] for c in cats])
            prior = np.array([twin[(row, c)][kind][key] for c in cats])
            transplant = np.array([real[(row, c)][kind][key + "_placebo"] for c in cats])
            cells.append(f"{np.mean(skill(metric, prior)):+.2f} ({np.mean(transplant - prior):+.3f})")
        lines.append(f"| {row_label(row)} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def group_lines(twin_run: Path, runs: list[Path]) -> list[str]:
    """Markdown for the runs of one null-twin set."""
    _, twin = per_defect(twin_run)
    twin_data = dataset_of(twin_run)
    lines = []
    for run in runs:
        check_settings(twin_run, run)
        rows, real = per_defect(run)
        data = dataset_of(run)
        cues = "; ".join(f"{k} {g:.1f} / {z:.0f}" for k, (g, z) in cue_strength(data, twin_data).items())
        lines += [f"{run_command(run)} against {run_command(twin_run)}: the good test parts' scores and maps "
                  f"differ from the twin run's by at most {good_part_difference(twin_run, run):.2g}. What a defect "
                  f"changes inside its mask against its twin, median over the test parts, grey levels / "
                  f"micrometres of z: {cues}.", ""]
        lines += category_table(run.name, rows, real, twin)
        for key, label in METRICS:
            lines += table(run.name, rows, real, twin, key, label)
            error, where = worst_transplant_error(real, twin, key)
            lines += [f"Largest transplant placebo error of {label} in one category: {error:+.3f} ({where}).", ""]
    return lines


def category_table(name: str, rows: list[str], real: dict, twin: dict) -> list[str]:
    """Markdown: per row and defect type, the P-AUROC skill over the twin run in each category."""
    cats = sorted({c for _, c in real})
    kinds = sorted(next(iter(real.values())))
    lines = [f"{name}, P-AUROC skill over the twin run per category ({' / '.join(cats)}):", "",
             "| row | " + " | ".join(kinds) + " |", "|---|" + "---:|" * len(kinds)]
    for row in rows:
        cells = []
        for kind in kinds:
            metric = np.array([real[(row, c)][kind]["p_auroc"] for c in cats])
            prior = np.array([twin[(row, c)][kind]["p_auroc"] for c in cats])
            cells.append(" / ".join(f"{v:.2f}" for v in skill(metric, prior)))
        lines.append(f"| {row_label(row)} | " + " | ".join(cells) + " |")
    return [*lines, ""]


def worst_transplant_error(real: dict, twin: dict, key: str) -> tuple[float, str]:
    """The transplant placebo's largest error in one (row, category, defect type), and where."""
    cases = [(real[rc][kind][key + "_placebo"] - twin[rc][kind][key], f"{row_label(rc[0])}, {rc[1]}, {kind}")
             for rc in real for kind in real[rc]]
    return max(cases, key=lambda case: abs(case[0]))


def add_groups(p: argparse.ArgumentParser) -> None:
    """The ``--group TWIN_RUN RUN [RUN ...]`` option (repeatable) and ``--write``."""
    p.add_argument("--group", nargs="+", type=Path, action="append", required=True, metavar="RUN",
                   help="a run on a null-twin set, then runs on sets with the same seed and size; repeatable")
    p.add_argument("--write", action="store_true", help="publish to docs/benchmarks.md")


def groups(p: argparse.ArgumentParser, args: argparse.Namespace) -> list[tuple[Path, list[Path]]]:
    """``(twin run, runs)`` of every ``--group``."""
    out = []
    for twin_run, *runs in args.group:
        if not runs:
            p.error(f"--group {twin_run}: name at least one run after the twin run")
        out.append((twin_run, runs))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_groups(p)
    p.add_argument("--describe", default="", help="how the sets were made, printed under the command")
    args = p.parse_args()
    lines = []
    for twin_run, runs in groups(p, args):
        lines += group_lines(twin_run, runs)
    body = [
        "## What each map sees beyond its exact prior (null twins)",
        "",
        f"Command: `{command_line()}`. The sets: `cmdiad synth D --seed S --size HxW` with "
        "`--geometry-shading W` or `--null-twins`; the runs: `cmdiad demo --data D --out R` (default preset), "
        "at the image size given after each run's command (its config.json). Until the eighteenth session "
        "`cmdiad demo` resized every set to 192x192; it now runs at the set's own size, so `--set "
        "'data.image_size=[192,192]'` redoes a run at 192x192 made from a larger set.",
        "",
        *([args.describe, ""] if args.describe else []),
        "A null twin is a defective test part rendered without its defect (same part, pose and noise) and "
        "with the defect's mask (`cmdiad synth --null-twins`). A map scores on the twins exactly its prior at "
        "the defects' true places, so the *skill* `(metric - twin metric) / (1 - twin metric)` is what the map "
        "sees of the defect: 0 when it sees nothing, 1 when it is perfect, comparable between maps whose "
        "priors differ. The bracket is the transplant placebo (`cmdiad.metrics.placebo`, every mask laid "
        "on every good part) minus the twin run's metric: how far that approximation, the one available "
        "on real data, is off. Full resolution, mean over categories.",
        "",
        *lines,
    ]
    publish("\n".join(body).rstrip() + "\n", DOC, write=args.write)


if __name__ == "__main__":
    main()
