"""Ablation of the rgb row's localisation, one difference from anomalib's PatchCore at a time.

The numbers of docs/method.md, section "RGB patch aggregation". Stage outputs of EfficientNet-Lite0
(default preset, 224x224) are computed once per category and cached (npz) in ``--cache``; each
variant then aggregates them its way, builds a bank with the default preset's memory config and
scores the test split with the same metric code. Means over the categories, per dataset:

    python benchmarks/ablate_rgb_aggregation.py /work/data/demo /work/data/s7 [--variants ours,pool_first_pad0]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from cmdiad import config as C
from cmdiad.io.mvtec3d import list_categories
from cmdiad.memory.bank import MemoryBank
from cmdiad.metrics.segmentation import evaluate
from cmdiad.pipeline.persist import build_encoder
from cmdiad.pipeline.presets import preset
from cmdiad.pipeline.runs import category_splits
from cmdiad.scoring.patch import anomaly_map, gaussian_blur
from cmdiad.types import PatchFeatures

cfg = C.from_dict(C.ExperimentConfig, C.merge({}, preset("default")))
base = build_encoder(cfg.detector, device="cpu", modalities=("rgb",))
ext = base.extractor("rgb")
CACHE = Path(__file__).resolve().parent / ".ablation_cache"


def stage_maps(x):
    out = []
    with torch.no_grad():
        for i in range(0, len(x), 8):
            out.append(list(ext.forward(x[i:i + 8]).values()))
    return [torch.cat([o[k] for o in out]) for k in range(2)]


def load(root, cat):
    """Stage outputs of the category's train and test images, cached as npz (no pickle)."""
    f = CACHE / f"{Path(root).name}-{cat}.npz"
    if not f.exists():
        train, _, test = category_splits(Path(root), cat, with_validation=False)
        tr, te = stage_maps(base.inputs(train, "rgb")), stage_maps(base.inputs(test, "rgb"))
        CACHE.mkdir(parents=True, exist_ok=True)
        np.savez(f, train0=tr[0].numpy(), train1=tr[1].numpy(), test0=te[0].numpy(), test1=te[1].numpy(),
                 labels=np.array([r.label for r in test]), masks=base.masks(test).numpy())
    with np.load(f, allow_pickle=False) as z:
        return {"train": [torch.from_numpy(z["train0"]), torch.from_numpy(z["train1"])],
                "test": [torch.from_numpy(z["test0"]), torch.from_numpy(z["test1"])],
                "labels": z["labels"], "masks": z["masks"]}


def aggregate(maps, order, pad_inc, up_mode="bilinear", ac=False):
    grid = tuple(maps[0].shape[-2:])
    def up(m):
        if tuple(m.shape[-2:]) == grid:
            return m
        kw = {} if up_mode == "nearest" else {"align_corners": ac}
        return F.interpolate(m, size=grid, mode=up_mode, **kw)
    def pool(m):
        return F.avg_pool2d(m, 3, 1, 1, count_include_pad=pad_inc)
    if order == "up_first":
        return pool(torch.cat([up(m) for m in maps], 1))
    if order == "both":  # both aggregations side by side in one feature (one bank, squared distances add)
        return torch.cat([aggregate(maps, "up_first", False, up_mode, ac),
                          aggregate(maps, "pool_first", True, up_mode, ac)], 1)
    if order == "pool_first_coarse":  # zero padding counted on the coarse stage only
        return torch.cat([F.avg_pool2d(maps[0], 3, 1, 1, count_include_pad=False),
                          *[up(pool(m)) for m in maps[1:]]], 1)
    return torch.cat([up(pool(m)) for m in maps], 1)


def nearest_map(patch, size, sigma):
    up = F.interpolate(patch[:, None].float(), size=size)[:, 0]
    return gaussian_blur(up, sigma)


def run(d, order="up_first", pad_inc=False, up_mode="bilinear", ac=False, std=True, amap="bilinear",
        reweight=True, readout="bank"):
    tr = aggregate(d["train"], order, pad_inc, up_mode, ac)
    te = aggregate(d["test"], order, pad_inc, up_mode, ac)
    mem = cfg.detector.memory
    bank = MemoryBank(mem)
    bank.add(PatchFeatures(tr, torch.ones(tr.shape[0], *tr.shape[-2:], dtype=torch.bool)))
    torch.manual_seed(0)
    bank.finalize(*(() if std else (0.0, 1.0)))
    image, patch = [], []
    for i in range(0, len(te), 8):
        t = te[i:i + 8]
        a, b = bank.score(PatchFeatures(t, torch.ones(t.shape[0], *t.shape[-2:], dtype=torch.bool)))
        image.append(a)
        patch.append(b)
    image, patch = torch.cat(image), torch.cat(patch)
    size = tuple(d["masks"].shape[-2:])
    if amap == "bilinear":
        maps = anomaly_map(patch, size, sigma=4.0)
    else:
        maps = nearest_map(patch, size, 4.0)
    if readout == "map_max":  # image score: maximum of the blurred anomaly map instead of the re-weighted patch maximum
        image = maps.reshape(maps.shape[0], -1).amax(dim=1)
    return evaluate(image.numpy(), d["labels"], maps.numpy(), d["masks"], mode=cfg.metrics.aupro_mode)


VARIANTS = {
    "ours": {},
    "pool_first_pad0": {"order": "pool_first", "pad_inc": True},
    "pool_first_nopad": {"order": "pool_first"},
    "up_first_pad0": {"pad_inc": True},
    "up_ac_true": {"ac": True},
    "up_nearest": {"up_mode": "nearest"},
    "no_std": {"std": False},
    "map_nearest": {"amap": "nearest"},
    "anomalib_like": {"order": "pool_first", "pad_inc": True, "std": False, "amap": "nearest"},
    "pool_first_pad0_map_max": {"order": "pool_first", "pad_inc": True, "readout": "map_max"},
    "pool_first_pad0_coarse_only": {"order": "pool_first_coarse", "pad_inc": True},
    "both_concatenated": {"order": "both"},
}

def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("data", type=Path, nargs="+")
    p.add_argument("--variants", default=",".join(VARIANTS))
    args = p.parse_args()
    torch.set_num_threads(2)
    names = args.variants.split(",")
    res: dict[str, dict[str, list]] = {}
    for root in args.data:
        for cat in list_categories(root):
            d = load(root, cat)
            for n in names:
                m = run(d, **VARIANTS[n])
                res.setdefault(n, {}).setdefault(root.name, []).append(m)
                print(n, root.name, cat, {k: round(v, 4) for k, v in m.items()}, flush=True)
    print("\n| variant | " + " | ".join(f"{r.name} I-AUROC / P-AUROC / AUPRO@30%" for r in args.data) + " |")
    for n, r in res.items():
        cells = ["/".join(f"{np.mean([x[k] for x in r[root.name]]):.3f}" for k in ("i_auroc", "p_auroc", "aupro_30"))
                 for root in args.data]
        print(f"| {n} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
