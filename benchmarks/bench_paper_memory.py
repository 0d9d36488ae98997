"""Peak memory of a paper-preset ``dual`` fit at full training size (250 scans), measured.

The paper preset's features are 56x56 patches x 768 channels per sample and modality: at 250
training scans that is 784,000 patches per modality (2.2 GiB in float32) before the coreset. This
benchmark runs :meth:`cmdiad.pipeline.detector.Detector.fit` of the ``dual`` row (both 768-d
banks, M3DM's mixed standardisation, the exact ``greedy`` coreset at ratio 0.1) with the paper
preset's configuration on ``--train`` training and ``--validation`` validation samples, and
records the process's RSS (psutil, every 10 ms) per stage of the fit.

The two extractors are stand-ins that return seeded, clustered ``(B, 768, 56, 56)`` features
(``bench_feature_dtype.StandIn``), written into the encoder's in-memory cache before the fit as
an experiment's extraction would: the figures are the fit's own memory, without the networks
(DINO ViT-B/8 and Point-MAE hold ~0.4 GiB of weights on top). One deviation from the preset,
stated in the output: fusion is fitted on the validation samples, because the preset's
``fit_on = train`` searches all 784,000 training patches against each 78,400-row bank (~47
TFLOP per bank, hours on 2 cores) through the same batch-by-batch search whose working set the
validation search already shows.

    python benchmarks/bench_paper_memory.py --train 250          # full size (~10 min on 2 cores)
    python benchmarks/bench_paper_memory.py --train 250 --feature-dtype float16

Writes the section "## Paper preset memory" of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import _common  # benchmarks/_common.py (the script folder is on sys.path)
import torch
from bench_feature_dtype import DIM, GRID, StandIn

from cmdiad import config as C
from cmdiad.features.cache import FeatureCache
from cmdiad.pipeline.detector import Detector
from cmdiad.pipeline.encoder import Encoder
from cmdiad.pipeline.presets import preset
from cmdiad.types import SampleRecord

SECTION = "## Paper preset memory"
GIB = 2**30
LIMIT_GIB = 12.0


def child(train: int, validation: int, feature_dtype: str) -> dict:
    """One measurement in a fresh process: prefill, then ``Detector.fit`` with stage stamps."""
    data = preset("paper")
    C.set_path(data, "detector.fusion.fit_on", "validation")
    C.set_path(data, "detector.data.feature_dtype", feature_dtype)
    C.set_path(data, "detector.method", "dual")
    cfg = C.from_dict(C.ExperimentConfig, data).detector
    with tempfile.TemporaryDirectory() as tmp:
        stub = Path(tmp) / "stub"
        stub.write_bytes(b"stub")  # the encoder keys samples by record key and file identity

        def records(split: str, n: int) -> list[SampleRecord]:
            return [SampleRecord("c", split, "good", f"{i:04d}", rgb_path=stub, xyz_path=stub) for i in range(n)]

        tr, va = records("train", train), records("validation", validation)
        extractors = {"rgb": StandIn(), "xyz": StandIn(clusters=192)}
        enc = Encoder(extractors, {}, cfg.data, cache=FeatureCache(None), batch_size=8, keep_inputs=False)
        enc._keys = {"rgb": "stand-in-rgb", "xyz": "stand-in-xyz"}  # no extractor config to hash
        stamps: list[tuple[float, str]] = []

        def progress(stage: str, done: int, total: int) -> None:
            name = stage.split(" loss ")[0]
            if not stamps or stamps[-1][1] != name:
                stamps.append((time.perf_counter(), name))

        with _common.RssMonitor(interval=0.01) as mon:
            base = mon.rss()
            t0 = time.perf_counter()
            for split in (tr, va):
                for m in ("rgb", "xyz"):
                    enc.features(split, m, inputs=torch.zeros(len(split), 3, 8, 8))
            t1 = time.perf_counter()
            after_prefill = mon.rss()
            det = Detector(cfg, enc)
            stamps.append((t1, "fit: features"))
            report = det.fit(tr, validation=va, progress=progress)
            t2 = time.perf_counter()
        stages = []
        for (start, name), nxt in zip(stamps, [*stamps[1:], (t2, "")], strict=True):
            stages.append({"stage": name, "seconds": nxt[0] - start, "peak": mon.peak(start, nxt[0])})
    return {"train": train, "validation": validation, "feature_dtype": feature_dtype, "base": base,
            "prefill_s": t1 - t0, "after_prefill": after_prefill, "peak_fit": mon.peak(t1, t2), "fit_s": t2 - t1,
            "bank_sizes": report.bank_sizes, "stages": stages,
            "patches": train * GRID * GRID}


def render(args, load_before, results: list[dict]) -> str:
    r0 = results[0]
    gib = r0["patches"] * DIM * 4 / GIB
    lines = [SECTION, "", f"Command: `{_common.command_line()}`, {_common.git_revision()}.", "",
             f"`Detector.fit` of the `dual` row with the `paper` preset's configuration (M3DM standardisation, exact "
             f"`greedy` coreset at ratio 0.1, 768-d banks) on {r0['train']} training and {r0['validation']} validation "
             f"samples of {GRID}x{GRID} patches x {DIM} channels per modality: {r0['patches']:,} patches per modality "
             f"({gib:.2f} GiB in float32) before the coreset. The extractors are stand-ins returning seeded, clustered "
             "features (no network weights in the figures; DINO ViT-B/8 and Point-MAE add about 0.4 GiB); their "
             "features are put into the encoder's in-memory cache first, as an experiment's extraction does. One "
             "deviation: fusion is fitted on the validation samples (the preset fits it on the training samples, "
             "which searches every training patch against each bank through the same batch-by-batch search, hours "
             "on 2 cores but no larger working set).", "",
             f"Process RSS in GiB (absolute, including Python, torch and the interpreter's {r0['base'] / GIB:.2f} GiB "
             f"at the start); the goal is below {LIMIT_GIB:.0f} GiB.", "",
             "| feature_dtype | after the cache is filled | peak during fit | fit s | bank sizes | below goal |",
             "|---|---:|---:|---:|---|---|"]
    for r in results:
        banks = ", ".join(f"{k} {v:,}" for k, v in r["bank_sizes"].items())
        ok = "yes" if r["peak_fit"] / GIB < LIMIT_GIB else "**no**"
        lines.append(f"| {r['feature_dtype']} | {r['after_prefill'] / GIB:.2f} | {r['peak_fit'] / GIB:.2f} | "
                     f"{r['fit_s']:.0f} | {banks} | {ok} |")
    for r in results:
        lines += ["", f"Stages of the fit, `feature_dtype = {r['feature_dtype']}` (peak RSS GiB within each):", "",
                  "| stage (from its first progress report) | s | peak GiB |", "|---|---:|---:|"]
        lines += [f"| {s['stage']} | {s['seconds']:.1f} | {s['peak'] / GIB:.2f} |" for s in r["stages"]]
    lines += ["", f"Machine: {_common.machine_description(load_before)}.", ""]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--train", type=int, default=250)
    p.add_argument("--validation", type=int, default=4)
    p.add_argument("--feature-dtype", default="float32,float16", help="comma-separated, one process each")
    p.add_argument("--child", default=None, help=argparse.SUPPRESS)
    p.add_argument("--out", type=Path, default=_common.DOC)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    torch.set_num_threads(2)
    if args.child:
        print(json.dumps(child(args.train, args.validation, args.child)))
        return 0
    load_before = _common.load_average()
    results = _common.run_children(__file__, args.feature_dtype.split(","),
                                   ["--train", str(args.train), "--validation", str(args.validation)])
    _common.publish(render(args, load_before, results), args.out, write=not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
