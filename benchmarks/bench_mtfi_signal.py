"""Would one pixel setting per MTFI row suffice, and can synthetic anomalies choose it?

The former default fusion (``bench_mtfi_rules.FORMER``, the detector's until the nineteenth session)
raises a hallucinated anomaly map by a fixed offset (0.5 calibrated units when its fidelity r2 > 0)
before taking the maximum with the main sensor's map. For each (dataset, category, MTFI row) this
script tries the offsets ``CANDIDATES`` (``main only``: the hallucinated map left out) and picks
one per row in three ways:

- ``oracle``: the offset with the best mean P-AUROC over the row's test defect types. It reads the
  test labels, so no detector can do it; it bounds what any per-row choice could give.
- ``synthetic: ...``: the offset with the best P-AUROC on the validation good parts plus copies of
  them carrying synthetic anomalies in the main modality (the defect signal issue #10 suggests).
  Camera anomalies are either ``appearance`` (a patch of another validation part, colour-scaled,
  blended in under an irregular mask) or ``shading`` (the brightness gradient of a smooth bump lit
  from one side); scan anomalies displace the depth under an irregular mask by 2-5% of the part's
  extent, either way. The hallucinated stream reads the same altered input, as at inference.

Each choice is then scored per test defect type against the better stream and the main sensor,
as in ``bench_mtfi_rules.py``. Stream scores come from ``bench_fusion``'s cache; the synthetic
parts are scored by the same fits, rebuilt from its cached features and pooled distillers.

    python benchmarks/bench_mtfi_signal.py DATA [DATA ...] [--variants 3] [--stride 2] [--write]
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
from scipy.ndimage import gaussian_filter

sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_fusion as bf  # noqa: E402
import bench_mtfi_rules as bmr  # noqa: E402
from _common import DOC, command_line, machine_description, publish  # noqa: E402

from cmdiad.config import FusionConfig  # noqa: E402
from cmdiad.io.mvtec3d import list_categories  # noqa: E402
from cmdiad.metrics.classification import auroc  # noqa: E402
from cmdiad.pipeline.detector import Detector  # noqa: E402
from cmdiad.pipeline.mtfi import PIXEL_OFFSETS, best_choice  # noqa: E402
from cmdiad.pipeline.runs import category_splits  # noqa: E402
from cmdiad.pipeline.streams import parse_row  # noqa: E402
from cmdiad.scoring.fusion import calibration_constants  # noqa: E402

CANDIDATES = (bf.MAIN_ONLY, *PIXEL_OFFSETS)
"""Offsets tried for the hallucinated map (calibrated units); ``bench_fusion.MAIN_ONLY`` leaves it out (the
settings ``cmdiad.pipeline.mtfi.pixel_fusion_candidates`` gives a fit with labelled parts)."""
FAMILIES = {"appearance": ("appearance", "displacement"), "shading": ("shading", "displacement")}
"""Synthetic rule name -> (camera anomaly, scan anomaly)."""
log = logging.getLogger("bench_mtfi_signal")


def offset_name(offset: float) -> str:
    return "main only" if offset == bf.MAIN_ONLY else f"{offset:g}"


def blob_mask(fg: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """An irregular region covering 1-4% of the foreground ``fg`` (thresholded smooth noise)."""
    h, w = fg.shape
    for _ in range(20 if fg.sum() >= 20 else 0):
        noise = gaussian_filter(rng.standard_normal((h, w)), rng.uniform(0.02, 0.05) * min(h, w))
        m = (noise > np.quantile(noise[fg], 1 - rng.uniform(0.01, 0.04))) & fg
        if m.sum() >= 20:
            return m
    raise ValueError("the foreground is too small for a synthetic anomaly")


def camera_anomaly(x: torch.Tensor, fg: np.ndarray, kind: str, others: list[torch.Tensor],
                   rng: np.random.Generator) -> tuple[torch.Tensor, np.ndarray]:
    """A preprocessed camera input ``(3, H, W)`` with one anomaly of ``kind``, and its mask."""
    h, w = fg.shape
    m = blob_mask(fg, rng)
    if kind == "appearance":
        src = others[rng.integers(len(others))]
        shift = (int(rng.integers(h)), int(rng.integers(w)))
        texture = torch.roll(src, shift, (1, 2)) * torch.tensor(rng.uniform(0.6, 1.4, 3), dtype=x.dtype)[:, None, None]
        alpha, keep = float(rng.uniform(0.5, 1.0)), torch.from_numpy(m)
        out = x.clone()
        out[:, keep] = (1 - alpha) * x[:, keep] + alpha * texture[:, keep]
        return out, m
    if kind == "shading":
        cy, cx = np.argwhere(m)[rng.integers(m.sum())]
        r = rng.uniform(0.03, 0.06) * min(h, w)
        yy, xx = np.mgrid[:h, :w]
        bump = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * r * r))
        light = rng.uniform(0, 2 * np.pi)
        gradient = (np.cos(light) * (xx - cx) + np.sin(light) * (yy - cy)) / r * bump
        change = torch.from_numpy(rng.uniform(0.15, 0.4) * gradient * fg).to(x.dtype)
        return x + change[None], (bump > 0.1) & fg
    raise ValueError(f"unknown camera anomaly {kind!r}")


def scan_anomaly(x: torch.Tensor, fg: np.ndarray, rng: np.random.Generator) -> tuple[torch.Tensor, np.ndarray]:
    """An organized cloud ``(3, H, W)`` with its depth displaced under an irregular region, and its mask."""
    m = blob_mask(fg, rng)
    points = x[:2, torch.from_numpy(fg)]
    extent = float((points.max(1).values - points.min(1).values).max())
    soft = gaussian_filter(m.astype(float), 1.5)
    depth = rng.uniform(0.02, 0.05) * extent * rng.choice((-1.0, 1.0)) * soft / max(soft.max(), 1e-12)
    out = x.clone()
    out[2] += torch.from_numpy(depth * fg).to(x.dtype)
    return out, m


def synthetic_scores(root: Path, category: str, row: str, variants: int, stride: int) -> dict[str, dict[float, float]]:
    """Per synthetic rule, P-AUROC of each candidate offset on validation parts plus their
    synthetic copies (``variants`` per part), scored by the row's fit."""
    cfg = bf._config(root)
    data = cfg.detector.data
    train, val, _ = category_splits(root, category, with_validation=data.train_with_validation,
                                    skip_bad=data.skip_bad_samples)
    method, main = parse_row(row)
    dcfg = replace(cfg.detector, method=method, main=main, fusion=replace(cfg.detector.fusion, calibration_folds=0))
    encoder = bf._encoder(root, cfg)
    torch.manual_seed(dcfg.seed)
    det = Detector(dcfg, encoder, shared_banks=bf.shared_banks(root, category, cfg),
                   hallucinator=bf._pooled(root, cfg, row).hallucinator)
    det.fit(train, validation=val)
    names = [s.name for s in det.streams]
    order = [next(i for i, s in enumerate(det.streams) if not s.hallucinated),
             next(i for i, s in enumerate(det.streams) if s.hallucinated)]
    _, val_maps = bf._stack(det.stream_scores(val), names)
    val_maps = val_maps[..., order].astype(np.float64)
    centre, spread = calibration_constants(val_maps.reshape(-1, 2), "quantile", FusionConfig().calibration_quantile)
    x = encoder.inputs(val, main)
    fgs = [(c.abs().sum(0) > 0).numpy() for c in encoder.inputs(val, "xyz")]
    out = {}
    for rule, (camera, _scan) in FAMILIES.items():
        rng = np.random.default_rng(0)
        made = []
        for _ in range(variants):
            for i in range(len(val)):
                others = [x[j] for j in range(len(val)) if j != i]
                made.append(camera_anomaly(x[i], fgs[i], camera, others, rng) if main == "rgb"
                            else scan_anomaly(x[i], fgs[i], rng))
        xs = torch.stack([a for a, _ in made])
        with torch.no_grad():
            feats = {main: encoder.extractor(main).patch_features(xs)}
        per = det.core.stream_scores(feats, xs if det.design.reads_main_inputs else None)
        maps = bf._stack(per, names)[1][..., order].astype(np.float64)
        z = (np.concatenate([val_maps, maps]) - centre) / spread
        masks = np.concatenate([np.zeros(val_maps.shape[:3], bool), np.stack([m for _, m in made])])
        sub = (slice(None), slice(None, None, stride), slice(None, None, stride))
        out[rule] = {o: auroc(bf.fuse(z, o)[sub].ravel(), masks[sub].ravel(), "pixel") for o in CANDIDATES}
    return out


def calibrated(root: Path, category: str, row: str, stride: int) -> dict:
    """A row's cached scores (``bench_fusion``) on a grid of ``stride``: the cache ``d``, the column
    ``order`` (main, hallucinated), the ``default`` offset, validation and test maps ``z_val`` /
    ``z`` ``(N, h, w, 2)`` calibrated as the gated fuser calibrates pixels, the test ``masks``, and
    the grid's slices ``sub``."""
    d = bf.stream_scores(root, category, row)
    roles = bf.hallucinated_columns(root, row, d)
    order = [roles.index(False), roles.index(True)]
    fid = bf.fidelity_of(root, category, row)
    default = bf.label_free_offset(bf.earned_fusion_config(bf.fuser_config(bmr.FORMER), fid))
    sub = (slice(None), slice(None, None, stride), slice(None, None, stride))
    val = d["val_maps"][sub][..., order].astype(np.float64)
    test = d["test_maps"][sub][..., order].astype(np.float64)
    centre, spread = calibration_constants(val.reshape(-1, 2), "quantile", FusionConfig().calibration_quantile)
    return {"d": d, "order": order, "default": default, "z_val": (val - centre) / spread,
            "z": (test - centre) / spread, "masks": d["masks"][sub], "sub": sub}


def compare(roots: list[Path], variants: int, stride: int) -> tuple[list[dict], list[dict]]:
    """Per-defect cases (as ``bench_mtfi_rules.compare``) with one P rule per choice, and per-row choices."""
    cases, choices = [], []
    for root in roots:
        for category in list_categories(root):
            for row in bmr.MTFI:
                log.info("%s %s %s", root.name, category, row)
                c = calibrated(root, category, row, stride)
                d, order, default, z, masks = c["d"], c["order"], c["default"], c["z"], c["masks"]
                test = d["test_maps"][c["sub"]][..., order].astype(np.float64)
                by = {o: bf.per_defect_auroc(bf.fuse(z, o), masks, d, "pixel") for o in CANDIDATES}
                streams = [bf.per_defect_auroc(test[..., j], masks, d, "pixel") for j in range(2)]
                streams_i = [bf.per_defect_auroc(d["test_image"][:, j], d["labels"], d, "image") for j in order]
                chosen = {"default": default,
                          "oracle": best_choice({o: float(np.mean(list(r.values()))) for o, r in by.items()}, default)}
                synth = synthetic_scores(root, category, row, variants, stride)
                for rule, scores in synth.items():
                    chosen[f"synthetic: {rule}"] = best_choice(scores, default)
                choices.append({"data": root.name, "category": category, "row": row, "chosen": chosen,
                                "synthetic": synth})
                for defect in streams[0]:
                    cases.append({
                        "data": root.name, "category": category, "row": row, "defect": defect,
                        "n_good": int((d["defects"] == "good").sum()), "n_defect": int((d["defects"] == defect).sum()),
                        "main": (streams_i[0][defect], streams[0][defect]),
                        "hallucinated": (streams_i[1][defect], streams[1][defect]),
                        "P": {rule: by[o][defect] for rule, o in chosen.items()},
                    })  # fmt: skip
    return cases, choices


def choice_table(choices: list[dict]) -> list[str]:
    """Markdown: the offset each choice made per row, and the synthetic parts' P-AUROC per offset."""
    rules = list(FAMILIES)
    lines = ["| data | category | row | default | oracle | " + " | ".join(f"synthetic: {r}" for r in rules) + " | "
             + " | ".join(f"{r}: P-AUROC per offset ({', '.join(map(offset_name, CANDIDATES))})" for r in rules) + " |",
             "|---|---|---|---|---|" + "---|" * (2 * len(rules))]  # fmt: skip
    for c in choices:
        keys = ("default", "oracle", *(f"synthetic: {r}" for r in rules))
        picks = " | ".join(offset_name(c["chosen"][k]) for k in keys)
        aurocs = " | ".join(", ".join(f"{c['synthetic'][r][o]:.3f}" for o in CANDIDATES) for r in rules)
        lines.append(f"| {c['data']} | {c['category']} | {c['row']} | {picks} | {aurocs} |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", type=Path, nargs="+")
    p.add_argument("--variants", type=int, default=3, help="synthetic copies of each validation part")
    p.add_argument("--stride", type=int, default=2, help="P-AUROC on every STRIDE-th pixel per direction")
    p.add_argument("--write", action="store_true", help="publish to docs/benchmarks.md")
    args = p.parse_args()
    if args.stride < 1 or args.variants < 1:
        p.error("--stride and --variants must be >= 1")
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(2)
    cases, choices = compare(args.data, args.variants, args.stride)
    lines = [*bmr.table(cases, "P"), "", *choice_table(choices)]
    body = [
        "## MTFI fusion: one pixel offset per row, chosen by synthetic anomalies",
        "",
        f"Command: `{command_line()}` (stream scores from `bench_fusion.py`'s cache; the datasets of "
        f"'Fusion never hurts'). {machine_description()}.",
        "",
        "The former default fusion (the detector's until the nineteenth session; `default` below) raises a "
        "hallucinated map by 0.5 calibrated units (when its fidelity r2 > 0) before the maximum with the main "
        "sensor's map. Here the offset is chosen per (dataset, category, "
        f"row) among {', '.join(map(offset_name, CANDIDATES))} (`main only`: the hallucinated map left out). "
        "`oracle` takes the best mean P-AUROC over the test defect types: it reads the test labels, so it "
        "bounds what any per-row choice could give. `synthetic: ...` takes the best P-AUROC on the "
        f"validation good parts plus {args.variants} copies of each carrying a synthetic anomaly in the main "
        "modality (camera: `appearance`, a colour-scaled patch of another part under an irregular mask, "
        "or `shading`, the brightness gradient of a smooth bump; scan: depth displaced by 2-5% of the "
        "part's extent under an irregular mask), ties to the default. First table: each choice per test "
        "defect type, counted as in 'MTFI fusion: label-free rules compared' (P-AUROC on a grid of stride "
        f"{args.stride}). Second table: the offset each choice made, and the synthetic parts' P-AUROC per "
        "offset.",
        "",
        *lines,
    ]
    publish("\n".join(body), DOC, write=args.write)


if __name__ == "__main__":
    main()
