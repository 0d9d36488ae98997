"""Does the transplant placebo come closer to the exact prior when masks are laid only on the part?

The transplant placebo (:mod:`cmdiad.metrics.placebo`) lays every mask of a defect type on every
good test part, background included where the good part's pose leaves it there. One guess for its
error against the exact prior (the null-twin run's metric, ``bench_twin.py``) is that masks near a
part's edge fall on the table of another part. This benchmark restricts the transplanted pixels to
the good part itself: the pixels whose 3D point lies off the table plane
(:func:`cmdiad.preprocessing.pointcloud.remove_background_plane`, the plane fitted on the scan's
border strips). Per run it gives the mean absolute and the mean signed error of both placebos'
P-AUROC against the twin run's, over (row, category, defect type), and the largest one.

    python benchmarks/bench_placebo_part.py --group TWIN_RUN RUN [RUN ...] [--group ...] [--write]
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _common import DOC, command_line, publish  # noqa: E402
from bench_twin import add_groups, dataset_of, groups  # noqa: E402

from cmdiad.io.pointcloud import read_xyz  # noqa: E402
from cmdiad.metrics.placebo import _mid_rank_ecdf, placebo_per_defect  # noqa: E402
from cmdiad.metrics.segmentation import pixel_auroc  # noqa: E402
from cmdiad.preprocessing.organized import resize_organized  # noqa: E402
from cmdiad.preprocessing.pointcloud import remove_background_plane  # noqa: E402


def part_mask(data: Path, sample: str, size: tuple[int, int]) -> np.ndarray:
    """``(H, W)`` bool: the pixels of test part ``category/test/kind/stem`` whose point is off the table."""
    category, split, kind, stem = sample.split("/")
    xyz, _ = remove_background_plane(read_xyz(data / category / split / kind / "xyz" / f"{stem}.tiff"), None)
    if xyz.shape[:2] != size:
        xyz = resize_organized(xyz, size)[0].permute(1, 2, 0).numpy()
    return (xyz != 0).any(axis=-1)


def part_placebo(good_maps: np.ndarray, good_parts: np.ndarray, masks: np.ndarray,
                 ecdf: np.ndarray | None = None) -> float:
    """Placebo P-AUROC with each transplanted mask pixel counted only where it lies on the good part;
    ``ecdf``: :func:`_mid_rank_ecdf` of ``good_maps`` flattened, when already computed."""
    ecdf = (_mid_rank_ecdf(good_maps.reshape(-1)) if ecdf is None else ecdf).reshape(good_maps.shape)
    weight = good_parts * masks.sum(axis=0, dtype=np.float64)[None]
    return float((ecdf * weight).sum() / weight.sum())


def errors(twin_run: Path, run: Path) -> list[tuple[str, str, str, float, float]]:
    """Per (row, category, defect type): (row, category, type, transplant error, part-only error)."""
    data = dataset_of(run)
    parts: dict[str, np.ndarray] = {}
    out = []
    for path in sorted((run / "raw").glob("*/*.npz")):
        real, twin = np.load(path), np.load(twin_run / "raw" / path.parent.name / path.name)
        kinds = real["defects"].astype(str)
        good = kinds == "good"
        maps = real["anomaly_maps"]
        size = maps.shape[1:]
        for sample in real["paths"][good]:  # the same good parts under every row: one plane fit each
            if sample not in parts:
                parts[sample] = part_mask(data, sample, size)
        good_parts = np.stack([parts[sample] for sample in real["paths"][good]])
        ecdf = _mid_rank_ecdf(maps[good].reshape(-1))
        transplant = placebo_per_defect(maps, real["gt_masks"], kinds)
        for kind in sorted(set(kinds.tolist()) - {"good"}):
            keep = good | (kinds == kind)
            exact = pixel_auroc(twin["anomaly_maps"][keep], twin["gt_masks"][keep])
            mine = part_placebo(maps[good], good_parts, real["gt_masks"][kinds == kind], ecdf)
            out.append((path.parent.name, path.stem, kind, transplant[kind]["p_auroc_placebo"] - exact,
                        mine - exact))
    return out


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_groups(p)
    args = p.parse_args()
    lines = ["| run | cases | transplant: mean abs error | mean error | largest | part only: mean abs error | "
             "mean error | largest |", "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for twin_run, runs in groups(p, args):
        for run in runs:
            e = np.array([c[3:] for c in errors(twin_run, run)])
            worst = e[np.abs(e).argmax(axis=0), [0, 1]]
            lines.append(f"| {run.name} | {len(e)} | {np.abs(e[:, 0]).mean():.3f} | {e[:, 0].mean():+.3f} | "
                         f"{worst[0]:+.3f} | {np.abs(e[:, 1]).mean():.3f} | {e[:, 1].mean():+.3f} | {worst[1]:+.3f} |")
    body = [
        "## Transplant placebo laid on the part only (not adopted)",
        "",
        f"Command: `{command_line()}` (the runs and twins of 'What each map sees beyond its exact prior').",
        "",
        "Error of the placebo P-AUROC against the exact prior (the twin run's P-AUROC at the same masks), "
        "per (row, category, defect type): the transplant placebo (every mask on every good part) and the "
        "same with each transplanted pixel counted only where the good part's 3D point lies off the table "
        "plane (`remove_background_plane`).",
        "",
        *lines,
    ]
    publish("\n".join(body) + "\n", DOC, write=args.write)


if __name__ == "__main__":
    main()
