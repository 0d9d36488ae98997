"""How many labelled defective parts would choose each MTFI row's pixel offset well?

``bench_mtfi_signal.py`` shows that one offset per row, chosen with the test labels, keeps an MTFI
row's P-AUROC within 0.01 of its better stream on almost every defect type, and that synthetic
anomalies in the main modality do not find that offset. This script asks what a user with a few
labelled defective parts would get: per (dataset, category, MTFI row) and per draw, ``k`` test
parts of every defect type are taken as the labelled ones; the offset among
``bench_mtfi_signal.CANDIDATES`` with the best mean P-AUROC over defect types on the validation
good parts plus those labelled parts is chosen (ties to the default); the default and the chosen
offset are then scored per defect type on the remaining test parts only, against the better of
the row's two streams on those same parts. Stream scores come from ``bench_fusion``'s cache.

    python benchmarks/bench_mtfi_labelled.py DATA [DATA ...] [--k 1 2] [--draws 5] [--stride 2] [--write]
    python benchmarks/bench_mtfi_labelled.py DATA [DATA ...] --image [--k 1 2] [--draws 5] [--write]

``--image`` asks the same of the image gate: the default and ``bench_mtfi_rules``' image rules,
chosen by mean I-AUROC on the labelled parts (which then include held-out good test parts).

``--runs FREE LABELLED`` instead compares two ``cmdiad experiment`` outputs of one dataset that
has labelled validation parts, the first with ``--set fusion.labelled_choice=false``: per MTFI
row and category, the pixel fusion the fit chose and each defect type's P-AUROC in both runs,
against the main sensor's bank of the same run.
"""

from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_fusion as bf  # noqa: E402
import bench_mtfi_rules as bmr  # noqa: E402
from _common import DOC, command_line, machine_description, publish  # noqa: E402
from bench_mtfi_signal import CANDIDATES, calibrated  # noqa: E402

from cmdiad.io.mvtec3d import list_categories  # noqa: E402
from cmdiad.metrics.classification import auroc  # noqa: E402
from cmdiad.pipeline.mtfi import best_choice, choose_pixel_fusion  # noqa: E402
from cmdiad.viz.report import load_records, row_name  # noqa: E402

log = logging.getLogger("bench_mtfi_labelled")


def _p(maps: np.ndarray, masks: np.ndarray) -> float:
    return auroc(maps.ravel(), masks.ravel(), "pixel")


def labelled_scores(z_val: np.ndarray, z: np.ndarray, masks: np.ndarray, defects: np.ndarray,
                    labelled: np.ndarray) -> dict[float, dict[str, float]]:
    """Per candidate offset, P-AUROC per defect type on the validation good parts ``z_val`` plus the
    ``labelled`` test parts (indices into ``z``) of that type."""
    zero = np.zeros(z_val.shape[:3], bool)
    out = {}
    for o in CANDIDATES:
        good = bf.fuse(z_val, o)
        out[o] = {t: _p(np.concatenate([good, bf.fuse(z[labelled[defects[labelled] == t]], o)]),
                        np.concatenate([zero, masks[labelled[defects[labelled] == t]]]))
                  for t in sorted(set(defects[labelled].tolist()))}
    return out


RULES = {"labelled (library)": "library", "labelled, margin 0.01": "margin", "labelled, worst type": "worst"}
"""Selection rules compared: the library's (``cmdiad.pipeline.mtfi.choose_pixel_fusion``: the best
mean over defect types), the same but replacing the label-free setting only for a gain of at least
``MARGIN`` (the pixel tolerance of issue #10's criterion), and the smallest worst-type shortfall
against the per-type best candidate."""
MARGIN = 0.01


def choose(per: dict[float, dict[str, float]], default: float, rule: str) -> float:
    """The offset ``rule`` picks from per-candidate, per-type P-AUROC on labelled parts."""
    if rule == "worst":
        best = {t: max(per[o][t] for o in per) for t in per[default]}
        return best_choice({o: -max(best[t] - v for t, v in r.items()) for o, r in per.items()}, default)
    if rule == "library":
        names = {str(o): o for o in per}
        return names[choose_pixel_fusion({str(o): r for o, r in per.items()}, str(default))]
    return best_choice({o: float(np.mean(list(r.values()))) for o, r in per.items()}, default, MARGIN)


def draw(defects: np.ndarray, k: int, rng: np.random.Generator) -> np.ndarray:
    """``k`` random test parts of every defect type (indices); a type with ``k`` parts or fewer
    keeps one for scoring."""
    out = []
    for t in sorted(set(defects.tolist()) - {"good"}):
        idx = np.flatnonzero(defects == t)
        out.extend(rng.choice(idx, min(k, len(idx) - 1), replace=False).tolist())
    return np.array(sorted(out), dtype=int)


def trials(roots: list[Path], ks: list[int], draws: int, stride: int) -> list[dict]:
    """One dict per (dataset, category, row, k, draw, defect): both streams, default and chosen P-AUROC."""
    out = []
    for root in roots:
        for category in list_categories(root):
            for row in bmr.MTFI:
                log.info("%s %s %s", root.name, category, row)
                c = calibrated(root, category, row, stride)
                z_val, z, masks, default, defects = c["z_val"], c["z"], c["masks"], c["default"], c["d"]["defects"]
                rng = np.random.default_rng(0)
                for k in ks:
                    for n in range(draws):
                        labelled = draw(defects, k, rng)
                        per = labelled_scores(z_val, z, masks, defects, labelled)
                        chosen = {"default": default, **{r: choose(per, default, how) for r, how in RULES.items()}}
                        rest = np.setdiff1d(np.arange(len(defects)), labelled)
                        good = rest[defects[rest] == "good"]
                        for t in sorted(set(defects[rest].tolist()) - {"good"}):
                            keep = np.concatenate([good, rest[defects[rest] == t]])
                            m = masks[keep]
                            p = {o: _p(bf.fuse(z[keep], o), m) for o in set(chosen.values())}
                            out.append({
                                "data": root.name, "category": category, "row": row, "k": k, "draw": n,
                                "defect": t, "n_good": len(good), "n_defect": len(keep) - len(good),
                                "main": _p(z[keep][..., 0], m), "hallucinated": _p(z[keep][..., 1], m),
                                "P": {name: p[o] for name, o in chosen.items()},
                            })  # fmt: skip
    return out


def table(rows: list[dict], draws: int, level: str = "P") -> list[str]:
    """Markdown: per dataset and k, shortfalls (P-AUROC < better stream - 0.01, or I-AUROC < better
    stream - 0.02 for ``level`` I) of the default and of the labelled choice on the same held-out
    parts, per draw on average."""
    margin = 0.01 if level == "P" else 0.02
    lines = [f"| data | labelled parts per defect type | rule | cases < better stream - {margin}, per draw "
             f"| informative ones, per draw | mean - better stream | cases < main sensor - {margin}, per draw |",
             "|---|---:|---|---:|---:|---:|---:|"]  # fmt: skip
    for data in sorted({r["data"] for r in rows}):
        for k in sorted({r["k"] for r in rows}):
            part = [r for r in rows if r["data"] == data and r["k"] == k]
            best = np.array([max(r["main"], r["hallucinated"]) for r in part])
            main = np.array([r["main"] for r in part])
            inf = np.array([bf.informative(b, r["n_defect"], r["n_good"]) for b, r in zip(best, part, strict=True)])
            n = len(part) / draws
            for rule in part[0][level]:
                v = np.array([r[level][rule] for r in part])
                lines.append(f"| {data} | {k} | {rule} | {(v < best - margin).sum() / draws:.1f}/{n:.0f} | "
                             f"{(v[inf] < best[inf] - margin).sum() / draws:.1f}/{inf.sum() / draws:.1f} | "
                             f"{(v - best).mean():+.4f} | {(v < main - margin).sum() / draws:.1f} |")
    return lines


IMAGE_CANDIDATES = {"default": bmr.DEFAULT, **bmr.IMAGE_RULES}
"""Image rules a labelled choice could pick from: the default gate and ``bench_mtfi_rules``'
alternatives (gates of 0 to 3 standard deviations not widened, the plain maximum)."""
IMAGE_MARGIN = 0.02
"""The image tolerance of issue #10's criterion, as a required gain over the default."""


def _image_auroc(scores: np.ndarray, defects: np.ndarray, parts: np.ndarray) -> dict[str, float]:
    """``{defect type: I-AUROC of the good parts among ``parts`` against that type's}``."""
    sub = defects[parts]
    return bf.per_defect_auroc(scores[parts], (sub != "good").astype(int), {"defects": sub}, "image")


def image_trials(roots: list[Path], ks: list[int], draws: int) -> list[dict]:
    """One dict per (dataset, category, row, k, draw, defect): both streams', the default's and the
    labelled choices' I-AUROC on the held-out test parts.

    The labelled parts are ``k`` test parts of every defect type plus as many test good parts as
    the category has validation good parts. The validation parts' own fused image scores cannot
    stand in for those good parts: the image calibration is fitted on them, so their scores are
    in-sample, and held-out good parts are what the library's pixel choice scores too (cross-fitted).
    """
    out = []
    for root in roots:
        for category in list_categories(root):
            for row in bmr.MTFI:
                log.info("%s %s %s", root.name, category, row)
                d = bf.stream_scores(root, category, row)
                roles = bf.hallucinated_columns(root, row, d)
                fid = bf.fidelity_of(root, category, row)
                folds = bf._folds(root, category, row, bmr.DEFAULT)
                image = {name: bf.fused(d, rule, roles, fid, folds)[0] for name, rule in IMAGE_CANDIDATES.items()}
                defects = d["defects"]
                goods = np.flatnonzero(defects == "good")
                rng = np.random.default_rng(0)
                for k in ks:
                    for n in range(draws):
                        stand_in = rng.choice(goods, min(len(d["val_image"]), len(goods) - 1), replace=False)
                        labelled = np.concatenate([draw(defects, k, rng), stand_in])
                        mean = {name: float(np.mean(list(_image_auroc(v, defects, labelled).values())))
                                for name, v in image.items()}
                        chosen = {"default": "default",
                                  "labelled": best_choice(mean, "default"),
                                  f"labelled, margin {IMAGE_MARGIN}": best_choice(mean, "default", IMAGE_MARGIN)}
                        rest = np.setdiff1d(np.arange(len(defects)), labelled)
                        streams = [_image_auroc(d["test_image"][:, j], defects, rest) for j in range(2)]
                        per = {name: _image_auroc(image[c], defects, rest) for name, c in chosen.items()}
                        n_good = int((defects[rest] == "good").sum())
                        for t in streams[0]:
                            out.append({
                                "data": root.name, "category": category, "row": row, "k": k, "draw": n,
                                "defect": t, "n_good": n_good, "n_defect": int((defects[rest] == t).sum()),
                                "main": streams[0][t], "hallucinated": streams[1][t],
                                "I": {name: v[t] for name, v in per.items()}, "choice": chosen["labelled"],
                            })  # fmt: skip
    return out


def choices(rows: list[dict]) -> list[str]:
    """Markdown: how often the labelled choice picked each image rule, per dataset and k."""
    names = list(IMAGE_CANDIDATES)
    lines = [f"| data | labelled parts per defect type | {' | '.join(names)} |", "|---|---:|" + "---:|" * len(names)]
    for data in sorted({r["data"] for r in rows}):
        for k in sorted({r["k"] for r in rows}):
            part = [r for r in rows if r["data"] == data and r["k"] == k]
            picks = {(r["category"], r["row"], r["draw"]): r["choice"] for r in part}
            counts = [sum(c == name for c in picks.values()) for name in names]
            lines.append(f"| {data} | {k} | {' | '.join(str(c) for c in counts)} |")
    return lines


def _records(run: Path) -> dict[tuple[str, str], dict]:
    """``{(row, category): record}`` of an experiment output's results."""
    return {(row_name(r), r["category"]): r for r in load_records(run)}


def compare_runs(free: Path, labelled: Path) -> list[str]:
    """Markdown: per (MTFI row, category), the chosen pixel fusion and P-AUROC per defect type in
    the label-free and the labelled run (``free -> labelled``), then counts over every case."""
    a, b = _records(free), _records(labelled)
    lines = ["| row | category | pixel fusion chosen (label-free) | P-AUROC per defect type: label-free -> labelled "
             "(main sensor's bank) |", "|---|---|---|---|"]  # fmt: skip
    below = {"label-free": 0, "labelled": 0}
    moved = {"up": 0, "down": 0}
    n = 0
    for (row, category), rec in sorted(b.items()):
        if not rec.get("pixel_fusion"):
            continue
        main = a[(row.split("_")[1], category)]["per_defect"]
        cells = []
        for t, m in sorted(rec["per_defect"].items()):
            before, after, bank = a[(row, category)]["per_defect"][t]["p_auroc"], m["p_auroc"], main[t]["p_auroc"]
            cells.append(f"{t} {before:.3f} -> {after:.3f} ({bank:.3f})")
            below["label-free"] += before < bank - 0.01
            below["labelled"] += after < bank - 0.01
            moved["up"] += after > before + 0.01
            moved["down"] += after < before - 0.01
            n += 1
        choice = rec["pixel_fusion"]
        lines.append(f"| {row} | {category} | {choice['chosen']} ({choice['label_free']}) | {'; '.join(cells)} |")
    lines += ["", f"Of {n} (row, category, defect type) cases: more than 0.01 below the main sensor's bank in "
              f"{below['label-free']} label-free and {below['labelled']} labelled; the labelled choice raised "
              f"P-AUROC by more than 0.01 in {moved['up']} and lowered it by more than 0.01 in {moved['down']}."]
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", type=Path, nargs="*")
    p.add_argument("--runs", type=Path, nargs=2, metavar=("FREE", "LABELLED"),
                   help="compare two experiment outputs instead (see the module docstring)")
    p.add_argument("--k", type=int, nargs="+", default=[1, 2], help="labelled parts per defect type")
    p.add_argument("--draws", type=int, default=5, help="random draws of the labelled parts per row")
    p.add_argument("--stride", type=int, default=2, help="P-AUROC on every STRIDE-th pixel per direction")
    p.add_argument("--image", action="store_true", help="choose the image gate instead of the pixel offset")
    p.add_argument("--write", action="store_true", help="publish to docs/benchmarks.md")
    args = p.parse_args()
    if args.stride < 1 or args.draws < 1 or min(args.k) < 1:
        p.error("--stride, --draws and --k must be >= 1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.runs:
        body = ["## MTFI fusion: labelled validation parts, end to end", "",
                f"Command: `{command_line()}` (`results.json` of two `cmdiad experiment` runs of the same data, "
                f"the first with `--set fusion.labelled_choice=false`). {machine_description()}.", "",
                *compare_runs(*args.runs)]
        publish("\n".join(body), DOC, write=args.write)
        return
    if not args.data:
        p.error("give DATA folders, or --runs FREE LABELLED")
    if args.image:
        rows = image_trials(args.data, args.k, args.draws)
        body = [
            "## MTFI fusion: the image gate chosen from a few labelled defective parts (not adopted)",
            "",
            f"Command: `{command_line()}` (stream scores from `bench_fusion.py`'s cache; the datasets of "
            f"'Fusion never hurts'). {machine_description()}.",
            "",
            "Per (dataset, category, MTFI row) and per draw (seeded), `k` test parts of every defect type and "
            "as many test good parts as the category has validation good parts are taken as labelled (held-out "
            "good parts: the validation parts' own fused image scores are in-sample to the image calibration). "
            "Among the default image gate and the alternatives of 'MTFI fusion: label-free rules compared' "
            f"({', '.join(f'`{n}`' for n in bmr.IMAGE_RULES)}), `labelled` keeps the one with the best mean "
            "I-AUROC over defect types on the labelled parts (ties to 3 decimals to the default); "
            f"`labelled, margin {IMAGE_MARGIN}` replaces the default only for a gain of at least {IMAGE_MARGIN}. "
            "All are then scored per defect type on the remaining test parts, against the better of the row's "
            f"two streams and the main sensor on those parts; counts per draw, averaged over {args.draws} draws "
            "(informative as in 'Fusion never hurts', at the remaining numbers of parts). Second table: how "
            "often `labelled` picked each rule, over the (category, row, draw) choices.",
            "",
            *table(rows, args.draws, "I"),
            "",
            *choices(rows),
        ]
        publish("\n".join(body), DOC, write=args.write)
        return
    lines = table(trials(args.data, args.k, args.draws, args.stride), args.draws)
    body = [
        "## MTFI fusion: the pixel offset chosen from a few labelled defective parts",
        "",
        f"Command: `{command_line()}` (stream scores from `bench_fusion.py`'s cache; the datasets of "
        f"'Fusion never hurts'). {machine_description()}.",
        "",
        "Per (dataset, category, MTFI row) and per draw (seeded), `k` test parts of every defect type are "
        "taken as labelled; the offset among those of 'MTFI fusion: one pixel offset per row' with the best "
        "mean P-AUROC over defect types on the validation good parts plus the labelled parts is chosen "
        "(ties to the default: the former default's label-free offset, the detector's until the nineteenth "
        "session). `default` and `labelled` (the chosen offset) are then scored per defect type "
        "on the remaining test parts only, against the better of the row's two streams and the main sensor on "
        f"those parts; counts are per draw, averaged over {args.draws} draws (P-AUROC on a grid of stride "
        f"{args.stride}; informative as in 'Fusion never hurts', at the remaining numbers of parts).",
        "",
        *lines,
    ]
    publish("\n".join(body), DOC, write=args.write)


if __name__ == "__main__":
    main()
