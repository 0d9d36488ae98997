"""Does a second stream ever make a result worse? Per-stream vs fused metrics, per defect type.

For every multi-stream row (``dual`` and the six MTFI rows) of every category, fits the row
with the default preset, scores the held-out validation good samples and the test samples per
stream, and compares the fused I-AUROC / P-AUROC of each fusion rule with the better of the
row's streams alone, for each defect type (test/good against that type only).

    python benchmarks/bench_fusion.py DATA [DATA ...] [--rules sum,calibrated_max] [--write]

Stream scores are cached in ``benchmarks/.fusion_cache`` (keyed by dataset and row) so fusion
rules can be compared without refitting. ``--write`` publishes the table to docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import DOC, command_line, machine_description, publish  # noqa: E402

from cmdiad.config import ExperimentConfig, FusionConfig, from_dict, merge  # noqa: E402
from cmdiad.io.mvtec3d import list_categories  # noqa: E402
from cmdiad.metrics.classification import auroc  # noqa: E402
from cmdiad.pipeline.detector import Detector  # noqa: E402
from cmdiad.pipeline.persist import build_encoder  # noqa: E402
from cmdiad.pipeline.presets import preset  # noqa: E402
from cmdiad.pipeline.runs import category_splits  # noqa: E402
from cmdiad.pipeline.streams import parse_row  # noqa: E402
from cmdiad.scoring.fusion import build_fuser  # noqa: E402

ROWS = ("dual", "f2f_xyz", "f2i_xyz", "i2f_xyz", "f2f_rgb", "f2i_rgb", "i2f_rgb")
CACHE = Path(__file__).resolve().parent / ".fusion_cache"
log = logging.getLogger("bench_fusion")
_ENCODERS: dict = {}
_SHARED: dict = {}


def _config(root: Path) -> ExperimentConfig:
    from cmdiad.io.mvtec3d import list_records, load_sample

    first = list_records(root, list_categories(root)[0], "train")[0]
    h, w = load_sample(first, ("rgb",)).rgb.shape[:2]
    return from_dict(ExperimentConfig, merge(preset("default"), {"detector": {"data": {"image_size": [h, w]}}}))


def _stack(per: dict, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    image = torch.stack([per[n][0] for n in names], dim=1).numpy()
    maps = torch.stack([per[n][1] for n in names], dim=-1).numpy()
    return image, maps


def stream_scores(root: Path, category: str, row: str) -> dict[str, np.ndarray]:
    """Per-stream validation and test scores of one row (cached on disk)."""
    tag = hashlib.sha256(f"{root.resolve()}|{category}|{row}".encode()).hexdigest()[:16]
    path = CACHE / f"{tag}.npz"
    if path.is_file():
        return dict(np.load(path, allow_pickle=False))
    cfg = _config(root)
    method, main = parse_row(row)
    dcfg = replace(cfg.detector, method=method, main=main)
    torch.manual_seed(dcfg.seed)
    if root not in _ENCODERS:  # one encoder per dataset: features are computed once
        _ENCODERS[root] = build_encoder(dcfg, device="cpu")
    encoder = _ENCODERS[root]
    train, val, test = category_splits(root, category, with_validation=False)
    det = Detector(dcfg, encoder, shared_banks=_SHARED.setdefault((root, category), {}))
    det.fit(train, validation=val)
    names = [s.name for s in det.streams]
    v_img, v_map = _stack(det.stream_scores(val), names)
    t_img, t_map = _stack(det.stream_scores(test), names)
    out = {
        "names": np.array(names), "val_image": v_img, "val_maps": v_map.astype(np.float32),
        "test_image": t_img, "test_maps": t_map.astype(np.float32),
        "labels": np.array([r.label for r in test]), "defects": np.array([r.defect for r in test]),
        "masks": encoder.masks(test).numpy(),
    }  # fmt: skip
    CACHE.mkdir(exist_ok=True)
    np.savez_compressed(path, **out)
    return out


def _per_defect(image: np.ndarray, maps: np.ndarray, d: dict) -> dict[str, tuple[float, float]]:
    """``{defect: (I-AUROC good vs defect, P-AUROC over good + defect pixels)}``."""
    out = {}
    good = d["defects"] == "good"
    for defect in sorted(set(d["defects"].tolist()) - {"good"}):
        keep = good | (d["defects"] == defect)
        i = auroc(image[keep], d["labels"][keep], "image")
        p = auroc(maps[keep].reshape(-1), d["masks"][keep].reshape(-1), "pixel")
        out[defect] = (i, p)
    return out


def fused(d: dict, kind: str) -> tuple[np.ndarray, np.ndarray]:
    """Test image scores and maps fused by ``kind`` (a fuser, or ``fuser:pixel_calibration``) fitted on validation."""
    name, _, pixel = kind.partition(":")
    fuser = build_fuser(FusionConfig(kind=name, fit_on="validation", pixel_calibration=pixel or "quantile"))
    k = d["val_image"].shape[1]
    fuser.fit(torch.as_tensor(d["val_image"]), torch.as_tensor(d["val_maps"].reshape(-1, k)))
    image = fuser.image_scores(torch.as_tensor(d["test_image"])).numpy()
    maps = fuser.pixel_scores(torch.as_tensor(d["test_maps"].reshape(-1, k))).numpy()
    return image, maps.reshape(d["test_maps"].shape[:-1])


def compare(roots: list[Path], rules: list[str]) -> list[list]:
    """Rows ``[dataset, category, row, defect, best stream I, P, rule1 I, P, ...]``."""
    table = []
    for root in roots:
        for category in list_categories(root):
            for row in ROWS:
                log.info("%s %s %s", root.name, category, row)
                d = stream_scores(root, category, row)
                per_stream = [_per_defect(d["test_image"][:, j], d["test_maps"][..., j], d)
                              for j in range(d["test_image"].shape[1])]
                per_rule = [_per_defect(*fused(d, r), d) for r in rules]
                for defect in per_stream[0]:
                    best_i = max(s[defect][0] for s in per_stream)
                    best_p = max(s[defect][1] for s in per_stream)
                    cells = [x for r in per_rule for x in r[defect]]
                    table.append([root.name, category, row, defect, best_i, best_p, *cells])
    return table


def summary(table: list[list], rules: list[str]) -> list[str]:
    """Markdown: per rule, worst and mean shortfall against the best stream, and violations."""
    arr = np.array([r[4:] for r in table], dtype=float)
    lines = ["| rule | I: worst fused - best | I: mean | I: cases < -0.02 | P: worst | P: mean | P: cases < -0.01 |",
             "|---|---:|---:|---:|---:|---:|---:|"]
    for j, rule in enumerate(rules):
        di = arr[:, 2 + 2 * j] - arr[:, 0]
        dp = arr[:, 3 + 2 * j] - arr[:, 1]
        lines.append(f"| {rule} | {di.min():+.3f} | {di.mean():+.3f} | {(di < -0.02).sum()}/{len(di)} | "
                     f"{dp.min():+.3f} | {dp.mean():+.3f} | {(dp < -0.01).sum()}/{len(dp)} |")
    return lines


def per_row(table: list[list], rules: list[str]) -> list[str]:
    """Markdown: per row, mean fused - best stream and the number of shortfalls, for each rule."""
    head = "| row | " + " | ".join(f"{r}: I mean / cases < -0.02 | {r}: P mean / cases < -0.01" for r in rules) + " |"
    lines = [head, "|---|" + "---:|" * (2 * len(rules))]
    for row in ROWS:
        arr = np.array([r[4:] for r in table if r[2] == row], dtype=float)
        if not len(arr):
            continue
        cells = []
        for j in range(len(rules)):
            di, dp = arr[:, 2 + 2 * j] - arr[:, 0], arr[:, 3 + 2 * j] - arr[:, 1]
            cells += [f"{di.mean():+.3f} / {(di < -0.02).sum()} of {len(di)}",
                      f"{dp.mean():+.3f} / {(dp < -0.01).sum()} of {len(dp)}"]
        lines.append(f"| {row} | " + " | ".join(cells) + " |")
    return lines


def detail(table: list[list], rules: list[str]) -> list[str]:
    """Markdown: every (dataset, category, row, defect) with best stream and each rule."""
    head = "| data | category | row | defect | best I | best P | " + " | ".join(
        f"{r} I | {r} P" for r in rules) + " |"
    lines = [head, "|" + "---|" * (6 + 2 * len(rules))]
    for r in table:
        lines.append("| " + " | ".join(str(x) if isinstance(x, str) else f"{x:.3f}" for x in r) + " |")
    return lines


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", type=Path, nargs="+")
    p.add_argument("--rules", default="sum,calibrated_max", help="fusers, e.g. sum,calibrated_max:zscore")
    p.add_argument("--write", action="store_true", help="publish to docs/benchmarks.md")
    p.add_argument("--detail", action="store_true", help="print every case")
    p.add_argument("--describe", default="", help="how the datasets were made, for the published section")
    args = p.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    torch.set_num_threads(2)
    rules = args.rules.split(",")
    table = compare(args.data, rules)
    lines = [*summary(table, rules), "", *per_row(table, rules)]
    print("\n".join(lines))
    if args.detail:
        print("\n".join(detail(table, rules)))
    if args.write:
        body = ["## Fusion never hurts", "", f"Command: `{command_line()}` (default preset; datasets made with "
                f"`cmdiad synth`). {machine_description()}.", "", args.describe, "",
                "Fused minus the better stream of the row, per (dataset, category, row, defect type): "
                "I = I-AUROC of test/good against that type, P = P-AUROC over the pixels of good + that type.",
                "", *lines]
        publish("\n".join(body), DOC)


if __name__ == "__main__":
    main()
