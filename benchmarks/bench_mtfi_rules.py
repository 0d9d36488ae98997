"""Can any label-free fusion rule keep an MTFI row at its better stream on every defect type?

For the six MTFI rows of every category, compares the default fusion with other rules that use
only good validation parts, per defect type, against the better of the row's two streams (the
real main sensor and its hallucinated partner) and against the main sensor alone (what a user
had before adding the distiller). Pixel rules act on the maps calibrated as the ``gated`` fuser
calibrates them (median and 0.999 quantile of the validation parts' pixels); image rules are
``gated`` fuser settings. Stream scores come from ``bench_fusion``'s cache (the same fits).

    python benchmarks/bench_mtfi_rules.py DATA [DATA ...] [--stride 2] [--twins TWIN ...] [--detail] [--write]

P-AUROC is computed on every ``stride``-th pixel in each direction (``--stride 1``: all). The
pixel shortfalls are also counted on the cases where the better stream sees the defect type
beyond its placebo (:mod:`cmdiad.metrics.placebo`), not only beyond chance, and with ``--twins``
(a null-twin set per DATA) beyond its exact prior, at image and pixel level.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_fusion as bf  # noqa: E402
from _common import DOC, command_line, machine_description, publish  # noqa: E402
from bench_twin import skill  # noqa: E402

from cmdiad.config import FusionConfig  # noqa: E402
from cmdiad.io.mvtec3d import list_categories  # noqa: E402
from cmdiad.metrics.placebo import placebo_per_defect  # noqa: E402
from cmdiad.metrics.segmentation import evaluate  # noqa: E402
from cmdiad.scoring.fusion import calibration_constants  # noqa: E402

MTFI = tuple(r for r in bf.ROWS if r != "dual")
DEFAULT = bf.preset_rule()
FORMER = "gated:calibration_folds=5"
"""The default preset's fusion until the nineteenth session: pixels the maximum of the calibrated
maps, the hallucinated one raised by 0.5 when its fidelity r2 > 0 (``FusionConfig``'s defaults)."""
UNWEIGHTED = "gated:calibration_folds=5;pixel_combine=gated;pixel_gate=0.0;pixel_offset=0.0"
"""The default preset's fusion in the nineteenth and twentieth sessions: :data:`DEFAULT` with the
hallucinated map at weight 1 whatever its fidelity."""
UNWEIGHTED_NAME = "main + hallucinated above its median, weight 1 (default until the twentieth session)"
log = logging.getLogger("bench_mtfi_rules")


def _tail_surprise(val: np.ndarray, test: np.ndarray) -> np.ndarray:
    """``-log10`` of each test value's survival among the validation values (K columns), the
    tail beyond the 0.99 quantile extrapolated as exponential (as ``field_max_spread`` assumes)."""
    out = np.empty(test.shape)
    for k in range(val.shape[1]):
        v = np.sort(val[:, k])
        q99, q999 = np.quantile(v, [0.99, 0.999])
        b = max((q999 - q99) / np.log(10), 1e-12)
        t = test[..., k]
        sf = np.maximum((len(v) - np.searchsorted(v, t, side="right")) / len(v), 1 / len(v))
        out[..., k] = -np.log10(np.where(t > q99, 0.01 * np.exp(-(t - q99) / b), sf))
    return out


def _image_z(d: dict) -> np.ndarray:
    """Test image scores (N, 2) as z-scores of the validation parts' (for per-image rules)."""
    v = d["val_image"]
    return (d["test_image"] - v.mean(0)) / np.maximum(v.std(0), 1e-12)


def _pick(z: np.ndarray, d: dict) -> np.ndarray:
    """Per test image, the calibrated map of the stream whose image score is more surprising."""
    iz = _image_z(d)
    return np.where((iz[:, 1] > iz[:, 0])[:, None, None], z[..., 1], z[..., 0])


def _mix(z: np.ndarray, d: dict) -> np.ndarray:
    """Per test image, the calibrated maps mixed with a logistic weight of their image-score surprise."""
    iz = _image_z(d)
    w = (1 / (1 + np.exp(iz[:, 0] - iz[:, 1])))[:, None, None]
    return (1 - w) * z[..., 0] + w * z[..., 1]


FORMER_NAME = "former default (maximum, hallucinated +0.5 if r2 > 0)"
"""The pixel rule of :data:`FORMER`, with its fidelity floor."""

FLOORLESS = "former default without the fidelity floor (r2 <= -1 kept, no offset)"
"""The pixel rule the detector had before ``fusion.fidelity_floor``: every hallucinated map in the maximum."""

NO_MARGIN = "former default's floor with no margin (left out when r2 <= -1, fidelity_floor_se = 0)"
"""The pixel rule of the thirteenth session: the floor without the jackknife margin."""

# Each pixel rule: (calibrated test maps (N, H, W, 2), their tail surprise (same shape), the offset
# the former default gives the hallucinated map, the cached row) -> fused maps (N, H, W).
PixelRule = Callable[[np.ndarray, np.ndarray, float, dict], np.ndarray]
PIXEL_RULES: dict[str, PixelRule] = {
    FLOORLESS: lambda z, s, off, d: np.maximum(z[..., 0], z[..., 1] + off),
    "max, no offset": lambda z, s, off, d: z.max(-1),
    "max, hallucinated +1 (if r2 > 0)": lambda z, s, off, d: np.maximum(z[..., 0], z[..., 1] + 2 * off),
    "main + hallucinated above its median": lambda z, s, off, d: z[..., 0] + np.maximum(z[..., 1], 0),
    "main + hallucinated above its q0.999": lambda z, s, off, d: z[..., 0] + np.maximum(z[..., 1] - 1, 0),
    "hallucinated + main above its q0.999": lambda z, s, off, d: z[..., 1] + np.maximum(z[..., 0] - 1, 0),
    "sum": lambda z, s, off, d: z.sum(-1),
    "Fisher (sum of -log10 tail p)": lambda z, s, off, d: s.sum(-1),
    "per image: the map of the more surprised stream": lambda z, s, off, d: _pick(z, d),
    "per image: logistic mix by image surprise": lambda z, s, off, d: _mix(z, d),
}
"""Candidate pixel rules beside the default (the detector's own fuser)."""

IMAGE_RULES: dict[str, str] = {
    **{f"gate {g:g} (not widened)": f"{DEFAULT};image_gate={g};gate_correction=none" for g in (0.0, 1.0, 2.0, 3.0)},
    "max": f"{DEFAULT};image_combine=max",
}
"""Candidate image rules beside the default, as bench_fusion rule strings."""


def _rules(d: dict, stride: int, roles: list[bool], fid: dict | None, folds: dict | None) -> tuple[dict, dict]:
    """``({rule: test image scores}, {rule: test maps on the stride grid})`` of every image and pixel
    rule for the stream scores ``d`` (a set's or its twins', fitted alike: the validation parts,
    hence every calibration, are the same)."""
    image, maps = bf.fused(d, DEFAULT, roles, fid, folds)
    sub = (slice(None), slice(None, None, stride), slice(None, None, stride))
    val = d["val_maps"][sub].reshape(-1, 2).astype(np.float64)
    test = d["test_maps"][sub].astype(np.float64)
    centre, spread = calibration_constants(val, "quantile", FusionConfig().calibration_quantile)
    z = (test - centre) / spread
    off = bf.earned_fusion_config(bf.fuser_config(FORMER), fid).pixel_offset
    image_by = {"default": image}
    image_by.update({name: bf.fused(d, rule, roles, fid, folds)[0] for name, rule in IMAGE_RULES.items()})
    surprise = _tail_surprise(val, test)
    pixel_by = {"default": maps[sub], UNWEIGHTED_NAME: bf.fused(d, UNWEIGHTED, roles, fid, folds)[1][sub],
                FORMER_NAME: bf.fused(d, FORMER, roles, fid, folds)[1][sub]}
    pixel_by.update({name: f(z, surprise, off, d) for name, f in PIXEL_RULES.items()})
    strict = bf.earned_fusion_config(replace(bf.fuser_config(FORMER), fidelity_floor_se=0.0), fid)
    pixel_by[NO_MARGIN] = bf.fuse(z, bf.label_free_offset(strict))
    image_by["main sensor"], pixel_by["main sensor"] = d["test_image"][:, 0], test[..., 0]
    image_by["hallucinated"], pixel_by["hallucinated"] = d["test_image"][:, 1], test[..., 1]
    return image_by, pixel_by


STREAMS = ("main sensor", "hallucinated")
"""The row's two streams, carried beside the rules by :func:`_rules` and split off by :func:`compare`."""


def compare(roots: list[Path], stride: int, twins: dict[Path, Path] | None = None) -> list[dict]:
    """One dict per (dataset, category, MTFI row, defect): streams' and every rule's I and P, and
    with ``twins`` (``{dataset: its null-twin set}``) the same on the twins (``twin``: the
    streams', ``I_twin`` and ``P_twin``: the rules')."""
    cases = []
    for root in roots:
        for category in list_categories(root):
            for row in MTFI:
                log.info("%s %s %s", root.name, category, row)
                d = bf.stream_scores(root, category, row)
                roles = bf.hallucinated_columns(root, row, d)
                fid = bf.fidelity_of(root, category, row)
                folds = bf._folds(root, category, row, DEFAULT)
                masks = d["masks"][:, ::stride, ::stride]
                sets = {"": d}
                if twins and root in twins:
                    sets["_twin"] = bf.twin_scores(root, twins[root], category, row)
                per = {}
                for suffix, scores in sets.items():
                    image_by, pixel_by = _rules(scores, stride, roles, fid, folds)
                    per["I" + suffix] = {n: bf.per_defect_auroc(v, d["labels"], d, "image")
                                         for n, v in image_by.items()}
                    per["P" + suffix] = {n: bf.per_defect_auroc(v, masks, d, "pixel") for n, v in pixel_by.items()}
                streams_pl = [_placebo(d["test_maps"][:, ::stride, ::stride, j].astype(np.float64), masks, d)
                              for j in range(2)]
                for defect in per["I"]["main sensor"]:
                    case = {
                        "data": root.name, "category": category, "row": row, "defect": defect,
                        "n_good": int((d["defects"] == "good").sum()), "n_defect": int((d["defects"] == defect).sum()),
                        "placebo": (streams_pl[0][defect], streams_pl[1][defect]), "twin": None,
                    }  # fmt: skip
                    for key, rules in per.items():
                        case[key] = {n: r[defect] for n, r in rules.items() if n not in STREAMS}
                    case["main"], case["hallucinated"] = ((per["I"][s][defect], per["P"][s][defect]) for s in STREAMS)
                    if "I_twin" in per:
                        case["twin"] = tuple((per["I_twin"][s][defect], per["P_twin"][s][defect]) for s in STREAMS)
                    cases.append(case)
    return cases


def _placebo(maps: np.ndarray, masks: np.ndarray, d: dict) -> dict[str, float]:
    """``{defect: placebo P-AUROC}`` of maps (N, H, W) (:mod:`cmdiad.metrics.placebo`)."""
    return {k: v["p_auroc_placebo"] for k, v in placebo_per_defect(maps, masks, d["defects"]).items()}


def _with_twins(cases: list[dict]) -> bool:
    """Whether every case carries its streams' scores on the null twins (``--twins``)."""
    return all(c["twin"] is not None for c in cases)


def beyond_prior_table(cases: list[dict], level: str, prior: Callable[[dict, int], float], what: str) -> list[str]:
    """Markdown: per rule and dataset, the informative shortfalls of ``level`` (I by 0.02, P by
    0.01) counted again on the cases whose better stream sees the defect type beyond its prior:
    its AUROC exceeds ``prior(case, stream)`` by 1.96 Hanley-McNeil standard errors, instead of
    exceeding 0.5."""
    j, margin = (0, 0.02) if level == "I" else (1, 0.01)
    lines = [f"| {level} rule | data | informative cases < better stream - {margin} | of which the better stream "
             f"sees the defect beyond {what} | cases where it does |", "|---|---|---:|---:|---:|"]  # fmt: skip
    for rule in cases[0][level]:
        for data in sorted({c["data"] for c in cases}):
            part = [c for c in cases if c["data"] == data]
            k = [int(c["hallucinated"][j] > c["main"][j]) for c in part]
            best = np.array([(c["main"], c["hallucinated"])[s][j] for c, s in zip(part, k, strict=True)])
            sees = np.array([bf.informative(b, c["n_defect"], c["n_good"], chance=prior(c, s))
                             for b, c, s in zip(best, part, k, strict=True)])
            inf = np.array([bf.informative(b, c["n_defect"], c["n_good"]) for b, c in zip(best, part, strict=True)])
            short = np.array([c[level][rule] for c in part]) - best < -margin
            lines.append(f"| {rule} | {data} | {(short & inf).sum()}/{inf.sum()} | {(short & sees).sum()} | "
                         f"{sees.sum()} |")
    return lines


def above_placebo_table(cases: list[dict]) -> list[str]:
    """Markdown: :func:`beyond_prior_table` of the pixel rules against each stream's placebo
    (:mod:`cmdiad.metrics.placebo`: its spatial prior, approximated on the good parts)."""
    return beyond_prior_table(cases, "P", lambda c, s: c["placebo"][s], "its placebo")


def beyond_twin_tables(cases: list[dict]) -> list[str]:
    """Markdown: :func:`beyond_prior_table` of the image and the pixel rules against each stream's
    exact prior, its I-AUROC or P-AUROC on the null twins (empty without twins)."""
    if not _with_twins(cases):
        return []
    return [*beyond_prior_table(cases, "I", lambda c, s: c["twin"][s][0], "its exact prior (twins)"), "",
            *beyond_prior_table(cases, "P", lambda c, s: c["twin"][s][1], "its exact prior (twins)")]


SKILL_MARGIN = 0.05
"""A difference of skill counted in :func:`skill_table`."""


def skill_table(cases: list[dict], level: str) -> list[str]:
    """Markdown: per rule and dataset, the mean skill over the exact prior (each map's or score's
    metric on the null twins) of the fused result, of the main sensor and of the hallucinated
    stream, and the cases where the fused skill lies below or above the main sensor's by more
    than :data:`SKILL_MARGIN` (empty without twins)."""
    if not _with_twins(cases):
        return []
    j = 0 if level == "I" else 1
    m = SKILL_MARGIN
    lines = [f"| {level} rule | data | fused skill, mean | main sensor's | hallucinated stream's | cases fused < "
             f"main - {m} | cases fused > main + {m} | cases hallucinated > main + {m} |",
             "|---|---|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for rule in cases[0][level]:
        for data in sorted({c["data"] for c in cases}):
            part = [c for c in cases if c["data"] == data]
            main = skill([c["main"][j] for c in part], [c["twin"][0][j] for c in part])
            hal = skill([c["hallucinated"][j] for c in part], [c["twin"][1][j] for c in part])
            fused = skill([c[level][rule] for c in part], [c[f"{level}_twin"][rule] for c in part])
            lines.append(f"| {rule} | {data} | {np.nanmean(fused):.3f} | {np.nanmean(main):.3f} | "
                         f"{np.nanmean(hal):.3f} | {(fused < main - m).sum()} | {(fused > main + m).sum()} | "
                         f"{(hal > main + m).sum()} |")
    return lines


def skill_detail(cases: list[dict]) -> list[str]:
    """Markdown: every case where the default's skill lies more than :data:`SKILL_MARGIN` below the
    main sensor's, or the hallucinated stream's above it, with the AUROCs and skills (empty
    without twins)."""
    if not _with_twins(cases):
        return []
    m = SKILL_MARGIN
    lines = ["| data | category | row | defect | level | main sensor: AUROC, skill | hallucinated: AUROC, skill "
             "| default: AUROC, skill |", "|---|---|---|---|---|---|---|---|"]  # fmt: skip
    for c in cases:
        for j, level in enumerate("IP"):
            main, hal = (float(skill(c[s][j], c["twin"][k][j])) for k, s in enumerate(("main", "hallucinated")))
            fused = float(skill(c[level]["default"], c[f"{level}_twin"]["default"]))
            if fused < main - m or hal > main + m:
                lines.append(f"| {c['data']} | {c['category']} | {c['row']} | {c['defect']} | {level} | "
                             f"{c['main'][j]:.3f}, {main:.3f} | {c['hallucinated'][j]:.3f}, {hal:.3f} | "
                             f"{c[level]['default']:.3f}, {fused:.3f} |")
    return lines


def table(cases: list[dict], level: str) -> list[str]:
    """Markdown: per rule and dataset, shortfalls against the better stream and against the main sensor."""
    j, margin = (0, 0.02) if level == "I" else (1, 0.01)
    lines = [
        f"| {level} rule | data | cases < better stream - {margin} | informative ones | mean - better stream "
        f"| worst | mean - main sensor | cases < main sensor - {margin} |",
        "|---|---|---:|---:|---:|---:|---:|---:|",
    ]
    for rule in cases[0][level]:
        for data in sorted({c["data"] for c in cases}):
            part = [c for c in cases if c["data"] == data]
            best = np.array([max(c["main"][j], c["hallucinated"][j]) for c in part])
            main = np.array([c["main"][j] for c in part])
            fused = np.array([c[level][rule] for c in part])
            inf = np.array([bf.informative(b, c["n_defect"], c["n_good"]) for b, c in zip(best, part, strict=True)])
            short = fused - best
            lines.append(
                f"| {rule} | {data} | {(short < -margin).sum()}/{len(part)} | "
                f"{(short[inf] < -margin).sum()}/{inf.sum()} | {short.mean():+.4f} | {short.min():+.3f} | "
                f"{(fused - main).mean():+.4f} | {(fused - main < -margin).sum()} |"
            )
    return lines


def detail(cases: list[dict]) -> list[str]:
    """Markdown: every case where the default, the floor with no margin or the default without the
    fidelity floor falls short of the better stream (I by 0.02, P by 0.01), with both streams'
    values, so which stream was the better one can be read off (the floor changes pixels only)."""
    lines = ["| data | category | row | defect | level | main sensor | hallucinated | default | floor, no margin "
             "| without the floor |",
             "|---|---|---|---|---|---:|---:|---:|---:|---:|"]  # fmt: skip
    for c in cases:
        for j, level, margin in ((0, "I", 0.02), (1, "P", 0.01)):
            main, hal, fused = c["main"][j], c["hallucinated"][j], c[level]["default"]
            strict, floorless = c[level].get(NO_MARGIN, fused), c[level].get(FLOORLESS, fused)
            if min(fused, strict, floorless) < max(main, hal) - margin:
                lines.append(f"| {c['data']} | {c['category']} | {c['row']} | {c['defect']} | {level} | "
                             f"{main:.3f} | {hal:.3f} | {fused:.3f} | {strict:.3f} | {floorless:.3f} |")  # fmt: skip
    return lines


def row_views(root: Path, category: str, row: str) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], dict]:
    """``({name: (test image scores, maps)}, cached row)``: the row with the default fusion and, for
    an F2F row, its main column as that sensor's single bank (the bank alone), full resolution."""
    d = bf.stream_scores(root, category, row)
    roles = bf.hallucinated_columns(root, row, d)
    fid = bf.fidelity_of(root, category, row) if any(roles) else None
    views = {row: bf.fused(d, DEFAULT, roles, fid, bf._folds(root, category, row, DEFAULT))}
    if row in ("f2f_xyz", "f2f_rgb"):
        views[row.split("_")[1]] = (d["test_image"][:, 0], d["test_maps"][..., 0])
    return views, d


def _records(root: Path) -> dict[tuple[str, str], tuple[dict, dict]]:
    """``{(category, row): (overall metrics, {defect: (I, P)})}`` with the default fusion, every row
    and the two single banks (:func:`row_views`), full resolution."""
    out = {}
    for category in list_categories(root):
        for row in bf.ROWS:
            views, d = row_views(root, category, row)
            for name, (image, maps) in views.items():
                out[(category, name)] = (evaluate(image, d["labels"], maps, d["masks"]), bf._per_defect(image, maps, d))
    return out


def _category_means(rec: dict, cats: list[str]) -> tuple[dict, dict]:
    """Means over categories: ``{row: {metric: value}}`` and ``{row: {defect: (I, P)}}``."""
    rows = sorted({row for _, row in rec})
    overall = {r: {k: float(np.mean([rec[(c, r)][0][k] for c in cats])) for k in rec[(cats[0], r)][0]} for r in rows}
    per = {r: {t: tuple(float(np.mean([rec[(c, r)][1][t][j] for c in cats])) for j in (0, 1))
               for t in rec[(cats[0], r)][1]} for r in rows}  # fmt: skip
    return overall, per


def criteria(roots: list[Path]) -> list[str]:
    """Markdown: issue #10's second criterion per dataset (default fusion, full resolution)."""
    lines = ["| data | row | I-AUROC | P-AUROC | AUPRO@30% | >= its single bank on all three | P-AUROC gap to dual "
             "closed: bump, dent | defect types below its single bank (I or P, 3 decimals) |",
             "|---|---|---:|---:|---:|---|---|---|"]  # fmt: skip
    keys = ("i_auroc", "p_auroc", "aupro_30")
    for root in roots:
        mean, per = _category_means(_records(root), list_categories(root))
        for row in ("xyz", "rgb", "dual", *MTFI):
            cells = " | ".join(f"{mean[row][k]:.3f}" for k in keys)
            if row not in MTFI:
                lines.append(f"| {root.name} | {row} | {cells} | | | |")
                continue
            single = row.split("_")[-1]
            above = "yes" if all(mean[row][k] >= mean[single][k] for k in keys) else "no"
            gap = ", ".join(f"{(per[row][t][1] - per[single][t][1]) / (per['dual'][t][1] - per[single][t][1]):.0%}"
                            for t in ("bump", "dent")) if single == "rgb" else ""  # fmt: skip
            below = [f"{t} {'IP'[j]} {per[row][t][j]:.3f} < {per[single][t][j]:.3f}" for t in sorted(per[row])
                     for j in (0, 1) if round(per[row][t][j], 3) < round(per[single][t][j], 3)]  # fmt: skip
            lines.append(f"| {root.name} | {row} | {cells} | {above} | {gap} | {'; '.join(below) or 'none'} |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", type=Path, nargs="+")
    p.add_argument("--stride", type=int, default=2, help="P-AUROC on every STRIDE-th pixel per direction")
    p.add_argument("--write", action="store_true", help="publish to docs/benchmarks.md")
    p.add_argument("--detail", action="store_true", help="also print every case the default falls short on")
    p.add_argument("--section", default="", help="published under the section title plus ' (SECTION)', beside the "
                   "main one: for sets other than 'Fusion never hurts''s")
    bf.add_twins(p)
    args = p.parse_args()
    if args.stride < 1:
        p.error("--stride must be >= 1")
    twins = bf.twins_of(p, args)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(2)
    cases = compare(args.data, args.stride, twins)
    exact = beyond_twin_tables(cases)
    if exact:
        exact += ["", *skill_table(cases, "I"), "", *skill_table(cases, "P")]
    lines = [*table(cases, "I"), "", *table(cases, "P"), "", *above_placebo_table(cases), "",
             *([*exact, ""] if exact else []), *criteria(args.data)]  # fmt: skip
    print("\n".join(lines))
    if args.detail:
        print("\n".join(["", *detail(cases), "", *skill_detail(cases)]))
    if args.write:
        body = [
            "## MTFI fusion: label-free rules compared" + (f" ({args.section})" if args.section else ""),
            "",
            f"Command: `{command_line()}` (stream scores from `bench_fusion.py`'s cache"
            + ("" if args.section else "; the datasets of 'Fusion never hurts'") + f"). {machine_description()}.",
            "",
            "Per (dataset, category, MTFI row, defect type), each rule's fused I-AUROC or P-AUROC minus the "
            "better of the row's two streams (informative: as in 'Fusion never hurts') and minus the main "
            "sensor alone. `default` is the detector's own fusion (`gated`, 5 calibration folds; pixels: "
            "the main sensor's calibrated map plus the hallucinated one's part above its good-pixel median, "
            "no offset, times the hallucinated map's fidelity r2 on the validation parts clipped to [0, 1], "
            "so left out when r2 <= 0, and left out too when r2 lies below -1 by more than 2 jackknife "
            "standard errors over the 6 validation parts). The same at weight 1 was the default in the "
            "nineteenth and twentieth sessions. The `former default`, the detector's "
            "until the nineteenth session, took the maximum of the calibrated maps, the hallucinated one "
            "raised by 0.5 when r2 > 0, with the same floor. "
            f"P-AUROC on the pixels of a grid of stride {args.stride} in each direction. "
            "The third table counts the second one's informative shortfalls again on the cases where the "
            "better stream sees the defect type beyond its spatial prior: its P-AUROC exceeds its placebo "
            "(`cmdiad.metrics.placebo`: what it scores at the type's masks laid on the good parts) by 1.96 "
            "Hanley-McNeil standard errors, rather than exceeding 0.5. "
            + ("The next two tables count the image and pixel shortfalls again against each stream's exact "
               "prior instead: its I-AUROC or P-AUROC on the set's null twins (`--twins`: every defective test "
               "part rendered without its defect, `cmdiad synth --null-twins`), scored by the same fit; the "
               "benchmark checks that the twins' good parts score exactly as the set's. The two after them give "
               "each rule's *skill*, `(AUROC - its AUROC on the twins) / (1 - its AUROC on the twins)`, what it "
               "sees beyond its exact prior, as a mean over the cases, against the main sensor's and the "
               "hallucinated stream's, with the cases where it differs from the main sensor's by more than "
               f"{SKILL_MARGIN}. " if exact else "")
            + "The last table is issue #10's "
            "second criterion with the default fusion, at full resolution: the mean over categories of each "
            "row, whether an MTFI row is at least the bank of its main sensor on all three metrics, the share "
            "of the RGB bank's P-AUROC gap to the dual bank that an RGB-main row closes on bumps and dents, "
            "and the defect types where it falls below that bank.",
            "",
            *lines,
        ]
        publish("\n".join(body), DOC)


if __name__ == "__main__":
    main()
