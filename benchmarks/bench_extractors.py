"""Feature-extractor speed on CPU: milliseconds per sample of every registered extractor.

Each extractor gets one rendered synthetic sample (``cmdiad.synthetic.generator``, category
``ring``) at ``--image-size``, preprocessed by its own ``preprocess``; ``patch_features`` is
run once to warm up, then ``--repeats`` times on a batch of ``--batch`` copies, and the median
time per sample is reported. EfficientNet-Lite uses its shipped ImageNet weights; DINO ViTs
and Point-MAE are random-init (their weights are not shipped), which does not change their
speed.

Writes the section "## Feature extractors" of docs/benchmarks.md (only that section).

    python benchmarks/bench_extractors.py --image-size 224 224 --batch 4 --repeats 3
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import _common  # benchmarks/_common.py (the script folder is on sys.path)
import numpy as np
import timm
import torch

from cmdiad.config import PointFeatureConfig, RGBFeatureConfig
from cmdiad.features import EXTRACTORS, FeatureExtractor, build_extractor
from cmdiad.synthetic.generator import SynthConfig, render_sample

SECTION = "## Feature extractors"
POINT_NAMES = {"fpfh", "point_mae"}
SHIPPED = {"efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"}


def build(name: str) -> tuple[FeatureExtractor, str]:
    """The extractor and a note on its weights."""
    if name in POINT_NAMES:
        pretrained = name != "point_mae"
        cfg = PointFeatureConfig(name=name, pretrained=pretrained)
        return build_extractor(cfg), "n/a" if name == "fpfh" else "random init (not shipped)"
    if name in SHIPPED:
        return build_extractor(RGBFeatureConfig(name=name)), "shipped ImageNet"
    return build_extractor(RGBFeatureConfig(name=name, pretrained=False)), "random init (not shipped)"


def bench(name: str, sample: dict[str, np.ndarray], size: tuple[int, int], batch: int, repeats: int) -> dict:
    t0 = time.perf_counter()
    ext, weights = build(name)
    build_s = time.perf_counter() - t0
    x = ext.preprocess(sample[ext.modality], size).unsqueeze(0).repeat(batch, 1, 1, 1)
    pf = ext.patch_features(x)  # warm-up
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        ext.patch_features(x)
        times.append(time.perf_counter() - t0)
    return {"name": name, "modality": ext.modality, "weights": weights, "channels": ext.out_channels,
            "stride": ext.patch_stride, "grid": pf.grid, "build_s": build_s,
            "ms": 1000 * statistics.median(times) / batch, "ms_min": 1000 * min(times) / batch}


def machine() -> str:
    return (f"{_common.cpu_name()}, {os.cpu_count()} logical CPUs, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), timm {timm.__version__}, "
            f"Python {platform.python_version()}, no GPU; 1-min load average at the end "
            f"{os.getloadavg()[0]:.1f} (other jobs may have shared the machine)")


def render(rows: list[dict], args: argparse.Namespace, fg_points: int) -> str:
    lines = [SECTION, "", f"Command: `python benchmarks/bench_extractors.py {' '.join(sys.argv[1:])}`", "",
             f"Machine: {machine()}.", "",
             f"Input: one synthetic `ring` sample at {args.image_size[0]}x{args.image_size[1]} "
             f"({fg_points:,} valid xyz points), batch {args.batch}, median of {args.repeats} runs "
             "after one warm-up; time is `patch_features` only (preprocessing excluded).", "",
             "| extractor | modality | weights | channels | stride | grid | ms / sample (median) "
             "| ms / sample (best) | build (s) |", "|---|---|---|---:|---:|---|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| `{r['name']}` | {r['modality']} | {r['weights']} | {r['channels']} | {r['stride']} "
                     f"| {r['grid'][0]}x{r['grid'][1]} | {r['ms']:.1f} | {r['ms_min']:.1f} "
                     f"| {r['build_s']:.1f} |")
    return "\n".join(lines) + "\n"



def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--image-size", type=int, nargs=2, default=[224, 224], metavar=("H", "W"))
    p.add_argument("--batch", type=int, default=4)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--names", nargs="+", default=EXTRACTORS.names())
    p.add_argument("--out", type=Path, default=Path(__file__).resolve().parents[1] / "docs" / "benchmarks.md")
    args = p.parse_args()
    size = (args.image_size[0], args.image_size[1])
    torch.manual_seed(0)
    rgb, xyz, _ = render_sample("ring", SynthConfig(image_size=size), index_seed=0)
    sample = {"rgb": rgb, "xyz": xyz}
    rows = []
    for name in args.names:
        rows.append(bench(name, sample, size, args.batch, args.repeats))
        print(f"{name}: {rows[-1]['ms']:.1f} ms/sample", flush=True)
    _common.write_section(render(rows, args, int((np.abs(xyz).sum(-1) > 0).sum())), args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
