"""How much of a hallucinated map's skill is the distiller's seed, and does averaging seeds help?

For MTFI rows on sets that have null twins (``cmdiad synth --null-twins``), fits the row once per
distiller seed (``distill.seed``; pooled distillers, default preset otherwise, each set at its own
image size) and scores the test parts and their twins with each fit, through ``bench_fusion``'s
stream cache. Per defect type it gives the P-AUROC *skill* over the exact prior,
``(metric - twin metric) / (1 - twin metric)`` (``bench_twin.skill``), of:

- the main sensor's own map (the same for every seed: its bank does not depend on the distiller);
- the hallucinated map of each seed: lowest, mean and highest over the seeds;
- the seeds' *ensemble*: the mean of their hallucinated maps, each calibrated on its own validation
  good pixels as the ``gated`` fuser calibrates pixels (median and 0.999 quantile), which is what
  averaging K distillers' maps would give;
- the fused map of the default preset (``gated``; its pixels do not depend on the image
  calibration folds), lowest / mean / highest over the seeds.

    python benchmarks/bench_seeds.py DATA [DATA ...] --twins TWIN [TWIN ...]
        [--rows f2f_rgb,i2f_rgb] [--seeds 3407,1,2,3] [--write]
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_fusion as bf  # noqa: E402
from _common import DOC, command_line, machine_description, publish  # noqa: E402
from bench_twin import skill  # noqa: E402

from cmdiad.io.mvtec3d import list_categories  # noqa: E402
from cmdiad.scoring.fusion import calibration_constants  # noqa: E402

log = logging.getLogger("bench_seeds")
DEFAULT_RULE = bf.preset_rule()  # the default preset's fusion (its calibration folds touch image scores only)


def calibrated(maps: np.ndarray, val: np.ndarray) -> np.ndarray:
    """``maps`` calibrated on the validation good pixels ``val`` as the default preset's fuser calibrates pixels."""
    cfg = bf.fuser_config(DEFAULT_RULE)
    centre, spread = calibration_constants(val.reshape(-1, 1).astype(np.float64), cfg.pixel_calibration,
                                           cfg.calibration_quantile)[:, 0]
    return (maps - centre) / spread


def seed_maps(root: Path, twins: Path, category: str, row: str, seed: int) -> dict[str, np.ndarray]:
    """One seed's main, hallucinated and fused test maps on the set and on its twins, plus what to score them by."""
    bf.use_sets([f"distill.seed={seed}"])
    real, twin = bf.stream_scores(root, category, row), bf.twin_scores(root, twins, category, row)
    hallucinated = bf.hallucinated_columns(root, row, real)
    h = hallucinated.index(True)
    fid = bf.fidelity_of(root, category, row)
    out = {"defects": real["defects"], "masks": real["masks"]}
    for name, d in (("real", real), ("twin", twin)):
        out[f"{name}_main"] = d["test_maps"][..., 1 - h]
        out[f"{name}_hall"] = calibrated(d["test_maps"][..., h], d["val_maps"][..., h])
        out[f"{name}_fused"] = bf.fused(d, DEFAULT_RULE, hallucinated, fid)[1]  # twins: the same validation parts
    return out


def skills(real: np.ndarray, twin: np.ndarray, d: dict) -> dict[str, float]:
    """``{defect: P-AUROC skill of a map over its twin-set map}``."""
    got, prior = (bf.per_defect_auroc(m, d["masks"], d, "pixel") for m in (real, twin))
    return {k: float(skill(got[k], prior[k])) for k in got}


def measure(root: Path, twins: Path, row: str, seeds: list[int]) -> dict[str, dict[str, list]]:
    """``{defect: {column: [per-category values]}}`` for one set."""
    table: dict[str, dict[str, list]] = {}
    for category in list_categories(root):
        per_seed = [seed_maps(root, twins, category, row, s) for s in seeds]
        d = per_seed[0]
        cols = {"main": [skills(d["real_main"], d["twin_main"], d)],
                "hall": [skills(p["real_hall"], p["twin_hall"], d) for p in per_seed],
                "fused": [skills(p["real_fused"], p["twin_fused"], d) for p in per_seed],
                "ensemble": [skills(np.mean([p["real_hall"] for p in per_seed], 0),
                                    np.mean([p["twin_hall"] for p in per_seed], 0), d)]}
        for defect in cols["main"][0]:
            for col, runs in cols.items():
                table.setdefault(defect, {}).setdefault(col, []).append([r[defect] for r in runs])
        log.info("%s %s %s: %d seeds scored", root.name, row, category, len(seeds))
    return table


def _spread(values: list[list[float]]) -> str:
    """Lowest / mean / highest over seeds of the mean over categories."""
    per_seed = np.nanmean(np.array(values), axis=0)
    return f"{per_seed.min():.2f} / {per_seed.mean():.2f} / {per_seed.max():.2f}"


def lines(name: str, row: str, table: dict[str, dict[str, list]], seeds: list[int]) -> list[str]:
    """Markdown rows of one set and row: per defect type, means over categories."""
    out = []
    for defect, cols in sorted(table.items()):
        main = np.nanmean(np.array(cols["main"]))
        ens = np.nanmean(np.array(cols["ensemble"]))
        per_seed = np.nanmean(np.array(cols["hall"]), axis=0)
        beats = int((per_seed > main).sum())
        out.append(f"| {name} | {row} | {defect} | {main:.2f} | {_spread(cols['hall'])} | {beats} of {len(seeds)} | "
                   f"{ens:.2f} | {_spread(cols['fused'])} |")
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", type=Path, nargs="+")
    p.add_argument("--twins", type=Path, nargs="+", required=True, help="each DATA's null-twin set, in order")
    p.add_argument("--rows", default="f2f_rgb,i2f_rgb", help="MTFI rows, comma-separated (default: f2f_rgb,i2f_rgb)")
    p.add_argument("--seeds", default="3407,1,2,3", help="distiller seeds, comma-separated (3407: the preset's)")
    p.add_argument("--write", action="store_true", help="publish to docs/benchmarks.md")
    args = p.parse_args()
    if len(args.twins) != len(args.data):
        p.error("give one --twins set per DATA")
    try:
        seeds = [int(s) for s in args.seeds.split(",")]
    except ValueError:
        p.error(f"--seeds {args.seeds!r}: expected integers separated by commas")
    if len(seeds) < 2:
        p.error("--seeds: give at least two seeds")
    mtfi_rows = args.rows.split(",")
    if not set(mtfi_rows) <= set(bf.ROWS[1:]):
        p.error(f"--rows {args.rows!r}: expected MTFI rows among {', '.join(bf.ROWS[1:])}")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    rows = []
    for root, twins in zip(args.data, args.twins, strict=True):
        for row in mtfi_rows:
            rows += lines(root.name, row, measure(root, twins, row, seeds), seeds)
    body = [
        "## Distiller seeds: spread and ensemble of a hallucinated map",
        "",
        f"Command: `{command_line()}` (stream scores through `bench_fusion.py`'s cache; each set at its own "
        f"image size). {machine_description()}.",
        "",
        f"Per set and defect type, P-AUROC skill over the exact prior (the set's null twins scored by the same "
        f"fit), mean over categories, for distiller seeds {', '.join(map(str, seeds))} (`distill.seed`; 3407 is "
        "the preset's). The main sensor's map does not depend on the seed. `lowest / mean / highest` are over "
        "the seeds; `beats main` counts the seeds whose hallucinated map has the higher skill. The ensemble "
        "is the mean of the seeds' hallucinated maps, each calibrated on its validation good pixels as the "
        "fuser calibrates pixels (median and 0.999 quantile). The fused "
        f"map is the default preset's (`{DEFAULT_RULE}`).",
        "",
        "| data | row | defect | main sensor | hallucinated: lowest / mean / highest | beats main | ensemble "
        "| fused: lowest / mean / highest |",
        "|---|---|---|---:|---:|---:|---:|---:|",
        *rows,
    ]
    publish("\n".join(body), DOC, write=args.write)


if __name__ == "__main__":
    main()
