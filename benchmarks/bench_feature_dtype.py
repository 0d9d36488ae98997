"""Resident memory of patch features kept in float32 vs float16 (``data.feature_dtype``).

The paper preset's features are 56x56 patches x 768 channels per sample and modality (784k
patches at 250 training scans). This benchmark runs, in a fresh process per dtype, what a
detector's fit does with one modality's training features: ``Encoder.features`` of ``--samples``
samples (an extractor stand-in returns seeded Gaussian-mixture 768 x 56 x 56 features, so no network runs
and the figures are the feature path's alone), then a ``MemoryBank`` built from them (the
``greedy`` sampler at ``--ratio``) while the returned features stay alive (the detector scores
the training samples against the bank next). Reported: RSS growth over the process's start
after ``features()`` (the encoder's in-memory cache + the returned float32 tensor), its peak
during ``features()`` and during the bank build (psutil, polled every 5 ms).

Writes the section "## Feature memory: float32 vs float16" of docs/benchmarks.md.

    python benchmarks/bench_feature_dtype.py --samples 100
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import _common  # benchmarks/_common.py (the script folder is on sys.path)
import torch

from cmdiad.config import CoresetConfig, DataConfig, MemoryConfig
from cmdiad.features.cache import FeatureCache
from cmdiad.memory.bank import MemoryBank
from cmdiad.pipeline.encoder import Encoder
from cmdiad.types import PatchFeatures, SampleRecord

SECTION = "## Feature memory: float32 vs float16"
DIM, GRID = 768, 56
GIB = 2**30


class StandIn:
    """An extractor stand-in: seeded Gaussian-mixture ``(B, 768, 56, 56)`` features, every patch valid.

    Clustered like real patch features (i.i.d. noise in 768 dimensions would defeat the greedy
    coreset's triangle-inequality pruning and time a case no extractor produces).
    """

    device = torch.device("cpu")
    score_split = None  # one view (FeatureExtractor.score_split)

    def __init__(self, clusters: int = 256) -> None:
        self.calls = 0
        self.centres = torch.randn(clusters, DIM, generator=torch.Generator().manual_seed(0)) * 2.0

    def patch_features(self, x: torch.Tensor) -> PatchFeatures:
        gen = torch.Generator().manual_seed(1 + self.calls)
        self.calls += 1
        n = x.shape[0] * GRID * GRID
        rows = self.centres[torch.randint(len(self.centres), (n,), generator=gen)]
        rows += torch.randn(n, DIM, generator=gen) * 0.5
        feats = rows.view(x.shape[0], GRID, GRID, DIM).permute(0, 3, 1, 2)
        return PatchFeatures(feats, torch.ones(x.shape[0], GRID, GRID, dtype=torch.bool))


def child(dtype: str, samples: int, ratio: float) -> dict:
    """One dtype's measurement (run in its own process)."""
    with tempfile.TemporaryDirectory() as tmp:
        stub = Path(tmp) / "x.png"
        stub.write_bytes(b"stub")  # the encoder keys samples by their file's identity only
        records = [SampleRecord("c", "train", "good", f"{i:04d}", rgb_path=stub) for i in range(samples)]
        enc = Encoder({"rgb": StandIn()}, {}, DataConfig(feature_dtype=dtype), cache=FeatureCache(None),
                      batch_size=8, keep_inputs=False)
        enc._keys = {"rgb": "stand-in"}  # no config to hash
        inputs = torch.zeros(samples, 3, 8, 8)
        with _common.RssMonitor() as mon:
            base = mon.rss()
            t0 = time.perf_counter()
            feats = enc.features(records, "rgb", inputs=inputs)
            t1 = time.perf_counter()
            after = mon.rss()
            bank = MemoryBank(MemoryConfig(coreset=CoresetConfig(ratio=ratio)))
            bank.add(feats)
            bank.finalize()
            t2 = time.perf_counter()
            peak_feat, peak_bank = mon.peak(t0, t1), mon.peak(t1, t2)
    return {"dtype": dtype, "rows": int(feats.features.shape[0] * GRID * GRID), "kept": int(bank.bank.shape[0]),
            "after_features": after - base, "peak_features": peak_feat - base, "peak_bank": peak_bank - base,
            "features_s": t1 - t0, "bank_s": t2 - t1}


def render(args, load_before, results: list[dict]) -> str:
    rows = results[0]["rows"]
    gib = rows * DIM * 4 / GIB
    lines = [SECTION, "", f"Command: `{_common.command_line()}`", "",
             f"{args.samples} samples x {GRID}x{GRID} patches x {DIM} channels ({rows:,} rows, {gib:.2f} GiB in "
             f"float32): `Encoder.features` (in-memory cache) then a bank (`greedy`, ratio {args.ratio}) with the "
             "returned features alive. RSS growth over the start of the measurement (GiB):", "",
             "| feature_dtype | after features() | peak in features() | peak in bank build | features s | bank s |",
             "|---|---:|---:|---:|---:|---:|"]
    for r in results:
        lines.append(f"| {r['dtype']} | {r['after_features'] / GIB:.2f} | {r['peak_features'] / GIB:.2f} | "
                     f"{r['peak_bank'] / GIB:.2f} | {r['features_s']:.1f} | {r['bank_s']:.1f} |")
    f32, f16 = results
    scale = 784_000 / rows
    lines += ["", f"Linear in samples: at 250 scans (784,000 rows) the bank-build peak of this path is about "
              f"{f32['peak_bank'] * scale / GIB:.1f} GiB (float32) and {f16['peak_bank'] * scale / GIB:.1f} GiB "
              f"(float16) per modality.", "",
              "What the rows hold: after `features()` the encoder's in-memory cache (float32 or float16) plus the "
              "float32 tensor it returns (the detector's distillers, standardisation and hallucination take "
              "float32); the bank build adds the bank's own float32 copy of the valid rows and the greedy "
              "coreset's projection and cluster-sorted copy. `feature_dtype = \"float16\"` halves the cache copy "
              "(and the `--cache` files), not the others; handing float16 on to the bank (which converts per "
              "batch) would save one more half copy but needs the detector to accept float16 features.", "",
              f"Machine: {_common.machine_description(load_before)}.", ""]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--samples", type=int, default=100)
    p.add_argument("--ratio", type=float, default=0.01, help="greedy coreset ratio of the bank")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(2)
    if args.child:
        print(json.dumps(child(args.child, args.samples, args.ratio)))
        return 0
    load_before = _common.load_average()
    results = _common.run_children(__file__, ["float32", "float16"],
                                   ["--samples", str(args.samples), "--ratio", str(args.ratio)])
    _common.publish(render(args, load_before, results), args.out, write=not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
