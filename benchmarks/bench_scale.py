"""Real-dataset scale: one generated category at 800x800 through all nine rows, stage by stage.

MVTec 3D-AD scans are up to 800x800 with hundreds of training samples per category; the demo's
are 192-224 px with 10-24. This benchmark generates one synthetic category at native size
``--size`` (800x800 by default), runs ``cmdiad.pipeline.runs.run_experiment`` (what
``cmdiad experiment`` runs) on it with every row, and reports:

- wall time per stage (exclusive: a stage's time excludes the wrapped stages it calls), from thin
  wrappers put around library functions for the duration of the run (nothing in ``src/`` is
  changed): reading + preprocessing per modality, extraction per modality, masks, distillation,
  coreset + index per bank, bank search, hallucination, anomaly maps, fusion, metrics, reports;
- each bank's coreset (patches in -> kept, seconds);
- peak RSS of the process (psutil, polled every 20 ms);
- a second run on the same on-disk feature cache (``--cache``): its time and how many images and
  point clouds it decoded (0 expected);
- ms/sample of the rgb, xyz, dual, f2f_rgb and f2f_xyz rows at native size against the same rows
  on the same counts generated at 224x224 (goal: within 1.5x);
- the same stage table for the ``paper`` preset's shapes (dino_vitb8 + point_mae, random-init so
  nothing is downloaded), on a reduced sample count and few distillation epochs, with the
  extrapolation to 250 training scans stated.

    python benchmarks/bench_scale.py --quick     # small counts (minutes on 2 shared cores)
    python benchmarks/bench_scale.py             # 200 train / 20 validation / 60 test (long)

Writes the section "## Real-dataset scale (800x800)" of docs/benchmarks.md.
"""

from __future__ import annotations

import argparse
import shutil
import sys
import tempfile
import threading
import time
from collections import defaultdict
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402

import cmdiad.io.mvtec3d as mvtec3d  # noqa: E402
import cmdiad.pipeline.core as core_module  # noqa: E402
import cmdiad.pipeline.mtfi as mtfi_module  # noqa: E402
import cmdiad.pipeline.runs as runs_module  # noqa: E402
from cmdiad import config as C  # noqa: E402
from cmdiad.memory.bank import MemoryBank  # noqa: E402
from cmdiad.pipeline.core import DetectorCore  # noqa: E402
from cmdiad.pipeline.detector import Detector  # noqa: E402
from cmdiad.pipeline.encoder import Encoder  # noqa: E402
from cmdiad.pipeline.presets import preset  # noqa: E402
from cmdiad.pipeline.streams import ALL_ROWS, row_name  # noqa: E402
from cmdiad.synthetic.defects import DEFECT_TYPES  # noqa: E402
from cmdiad.synthetic.generator import SynthConfig, generate_dataset  # noqa: E402

SECTION = "## Real-dataset scale (800x800)"
COMPARED_ROWS = ("rgb", "xyz", "dual", "f2f_rgb", "f2f_xyz")
FULL = {"train": 200, "validation": 20, "test": 60}
QUICK = {"train": 16, "validation": 4, "test": 10}
PAPER_QUICK = {"train": 4, "validation": 2, "test": 7}
PAPER_ROWS_QUICK = ("rgb", "xyz", "dual", "f2f_xyz")
PAPER_SETS = {"detector.rgb.pretrained": False, "detector.xyz.pretrained": False}


class StageTimer:
    """Exclusive wall time per stage name, for calls made on the main thread.

    Wrapped calls nest: entering a stage pauses the enclosing one, so the stage times add up to
    the wrapped part of the run. Calls from other threads run unwrapped (they are part of the
    main-thread stage that waits for them).
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.coresets: list[tuple[int, int, int, float]] = []
        self._stack: list[list] = []
        self._patched: list[tuple[object, str, object]] = []
        self._main = threading.main_thread()

    def _enter(self, name: str) -> None:
        now = time.perf_counter()
        if self._stack:
            self.seconds[self._stack[-1][0]] += now - self._stack[-1][1]
        self._stack.append([name, now])
        self.calls[name] += 1

    def _exit(self) -> None:
        now = time.perf_counter()
        name, start = self._stack.pop()
        self.seconds[name] += now - start
        if self._stack:
            self._stack[-1][1] = now

    def wrap(self, owner: object, attr: str, stage) -> None:
        """Time ``owner.attr`` as ``stage`` (a name, or ``stage(*args)`` giving one)."""
        fn = getattr(owner, attr)

        def wrapped(*args, **kwargs):
            if threading.current_thread() is not self._main:
                return fn(*args, **kwargs)
            self._enter(stage(*args) if callable(stage) else stage)
            try:
                return fn(*args, **kwargs)
            finally:
                self._exit()

        setattr(owner, attr, wrapped)
        self._patched.append((owner, attr, fn))

    def restore(self) -> None:
        for owner, attr, fn in reversed(self._patched):
            setattr(owner, attr, fn)
        self._patched.clear()


def instrument(timer: StageTimer) -> None:
    """Put the timing wrappers around the library's stages."""
    timer.wrap(Encoder, "inputs", lambda self, records, modality, *a: f"read + preprocess {modality}")
    timer.wrap(Encoder, "_compute", lambda self, records, modality, *a: f"extract {modality}")
    timer.wrap(Encoder, "masks", "read masks")
    timer.wrap(mtfi_module, "fit_distiller", "distill")
    timer.wrap(MemoryBank, "score", "bank search")
    timer.wrap(MemoryBank, "patch_scores", "bank search")
    timer.wrap(core_module, "anomaly_map", "anomaly maps")
    timer.wrap(DetectorCore, "hallucinate", "hallucinate")
    timer.wrap(Detector, "_fit_fusion", "fusion")
    timer.wrap(Detector, "score_features", "fusion")
    timer.wrap(Detector, "score", "scoring (other)")
    timer.wrap(Detector, "fit", "fit (other)")
    timer.wrap(runs_module, "evaluate_record", "metrics")
    for name in ("write_html_report", "write_results", "_save_raw"):
        timer.wrap(runs_module, name, "reports")
    finalize = MemoryBank.finalize

    def timed_finalize(self, *args, **kwargs):
        n_in = int(self._gather().shape[0])
        t0 = time.perf_counter()
        timer._enter(f"coreset + index ({self.dim}-d banks)")
        try:
            return finalize(self, *args, **kwargs)
        finally:
            timer._exit()
            timer.coresets.append((int(self.dim or 0), n_in, int(self.bank.shape[0]), time.perf_counter() - t0))

    MemoryBank.finalize = timed_finalize
    timer._patched.append((MemoryBank, "finalize", finalize))


class StageLog:
    """Prints each new progress stage (with the elapsed seconds) to stderr, to follow a long run."""

    def __init__(self, t0: float) -> None:
        self.t0, self.last = t0, None

    def __call__(self, stage: str, done: int, total: int) -> None:
        name = stage.split(" loss ")[0]
        if name != self.last:
            self.last = name
            print(f"[{time.perf_counter() - self.t0:7.1f} s] {name} ({total})", file=sys.stderr, flush=True)


def _log_record(record: dict, t0: float) -> None:
    print(f"[{time.perf_counter() - t0:7.1f} s] row {record.get('method')} {record.get('main')} done: fit "
          f"{record.get('fit_seconds', 0):.1f} s, I-AUROC {record.get('i_auroc', float('nan')):.3f}",
          file=sys.stderr, flush=True)


class ReadCounter:
    """Counts decoded images and point clouds (thread-safe; readers run in the encoder's threads)."""

    def __init__(self) -> None:
        self.counts = {"read_rgb": 0, "read_xyz": 0}
        self._lock = threading.Lock()
        self._orig = {n: getattr(mvtec3d, n) for n in self.counts}
        for name, fn in self._orig.items():
            setattr(mvtec3d, name, self._counted(name, fn))

    def _counted(self, name, fn):
        def counted(*args, **kwargs):
            with self._lock:
                self.counts[name] += 1
            return fn(*args, **kwargs)

        return counted

    def restore(self) -> None:
        for name, fn in self._orig.items():
            setattr(mvtec3d, name, fn)


def make_data(root: Path, size: int, counts: dict[str, int]) -> Path:
    """One category ``ring`` at ``size`` x ``size`` with the requested split sizes (generated once)."""
    per_defect = max(1, round(2 * counts["test"] / 3 / len(DEFECT_TYPES)))  # 60 -> 20 good + 8 per defect type
    good = max(1, counts["test"] - per_defect * len(DEFECT_TYPES))
    tag = f"s{size}-t{counts['train']}-v{counts['validation']}-g{good}-d{per_defect}"
    path = root / tag
    if not (path / "ring").is_dir():
        generate_dataset(path, SynthConfig(categories=("ring",), image_size=(size, size), train=counts["train"],
                                           validation=counts["validation"], test_good=good,
                                           test_per_defect=per_defect))
    return path


_SETS: list[str] = []  # --set KEY=VALUE overrides of the default preset's detector config (as cmdiad's)


def experiment_config(name: str, rows, extra: dict):
    from cmdiad.cli import _apply_sets

    data = C.merge({}, preset(name))
    if name == "default":
        _apply_sets(data, _SETS, lambda key: "detector." + key)
    for key, value in extra.items():
        C.set_path(data, key, value)
    C.set_path(data, "rows", list(rows))
    return C.from_dict(C.ExperimentConfig, data)


_last_encoder: list[Encoder] = []


def run(data: Path, out: Path, cfg, cache: Path | None) -> dict:
    """One ``run_experiment`` with stage timers, read counter and RSS monitor."""
    timer, reads = StageTimer(), ReadCounter()
    instrument(timer)
    _last_encoder.clear()
    init = Encoder.__init__

    def remember(self, *a, **k):
        init(self, *a, **k)
        _last_encoder.append(self)

    Encoder.__init__ = remember
    timer._patched.append((Encoder, "__init__", init))
    try:
        with _common.RssMonitor(interval=0.02) as rss:
            t0 = time.perf_counter()
            records = runs_module.run_experiment(data, out, cfg, cache_dir=cache, overwrite=True,
                                                 progress=StageLog(t0), on_record=lambda r: _log_record(r, t0))
            total = time.perf_counter() - t0
        ms_extract = dict(_last_encoder[-1].ms_per_sample) if _last_encoder else {}
    finally:
        timer.restore()
        reads.restore()
    return {"records": records, "total": total, "ms_extract": ms_extract, "stages": dict(timer.seconds),
            "calls": dict(timer.calls), "coresets": timer.coresets, "reads": dict(reads.counts),
            "peak_rss": rss.peak(t0, time.perf_counter())}


def stage_table(result: dict) -> str:
    stages = sorted(result["stages"].items(), key=lambda kv: -kv[1])
    lines = ["| stage | wall s | share | calls |", "|---|---:|---:|---:|"]
    for name, s in stages:
        lines.append(f"| {name} | {s:.1f} | {100 * s / result['total']:.0f}% | {result['calls'][name]} |")
    other = result["total"] - sum(result["stages"].values())
    lines.append(f"| other (splits, config, unwrapped) | {other:.1f} | {100 * other / result['total']:.0f}% | |")
    lines.append(f"| **total** | **{result['total']:.1f}** | | |")
    return "\n".join(lines)


def coreset_table(result: dict) -> str:
    lines = ["| bank dim | patches in | kept | seconds |", "|---:|---:|---:|---:|"]
    lines += [f"| {d} | {n} | {k} | {s:.1f} |" for d, n, k, s in result["coresets"]]
    return "\n".join(lines)


def row_table(native: dict, small: dict | None, size: int) -> str:
    by = {row_name(r["method"], r["main"]): r for r in native["records"]}
    small_by = {} if small is None else {row_name(r["method"], r["main"]): r for r in small["records"]}
    lines = [f"| row | fit s | ms/sample {size}px | ms/sample 224px | ratio | I-AUROC |",
             "|---|---:|---:|---:|---:|---:|"]
    for row in [r for r in ALL_ROWS if r in by]:
        r, s = by[row], small_by.get(row)
        ref = f"{s['ms_per_sample']:.0f} | {r['ms_per_sample'] / s['ms_per_sample']:.2f}x" if s else " | "
        lines.append(f"| {row} | {r['fit_seconds']:.1f} | {r['ms_per_sample']:.0f} | {ref} | {r['i_auroc']:.3f} |")
    return "\n".join(lines)


def paper_extrapolation(result: dict, counts: dict[str, int], train_target: int = 250) -> str:
    """Memory of the paper preset's feature tensors at ``train_target`` scans, from the shapes."""
    xyz_grid, rgb_grid, dim = 56, 56, 768  # point_mae at stride 4 on 224 px; dino_vitb8 28x28 upsampled x2
    per_sample = (xyz_grid * xyz_grid + rgb_grid * rgb_grid) * dim
    gib = lambda n, b: n * b / 2**30  # noqa: E731
    n = train_target
    patches = n * xyz_grid * xyz_grid
    return (f"At {n} training scans one modality's training features are {patches:,} patches x {dim} = "
            f"{gib(patches * dim, 4):.1f} GiB in float32 ({gib(patches * dim, 2):.1f} GiB in float16); both "
            f"modalities {gib(n * per_sample, 4):.1f} GiB float32. The encoder's in-memory cache holds one copy "
            f"and each `features()` call returns another (a bank needs its own standardised copy too), so "
            f"float32 throughout needs about 3 x {gib(patches * dim, 4):.1f} GiB per modality at the peak of a "
            f"bank build; `data.feature_dtype = \"float16\"` brings the encoder's resident copy to "
            f"{gib(patches * dim, 2):.1f} GiB. Measured here on {counts['train']} scans the peak RSS was "
            f"{_common.fmt_mb(result['peak_rss'])} MiB; time scales linearly in scans for extraction and "
            f"distillation (per epoch), and as patches x kept for the greedy coreset (quadratic in scans).")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--quick", action="store_true", help=f"small counts {QUICK} (minutes)")
    p.add_argument("--size", type=int, default=800, help="native image size (square)")
    p.add_argument("--counts", type=int, nargs=3, metavar=("TRAIN", "VALIDATION", "TEST"), default=None,
                   help="override the split sizes")
    p.add_argument("--data", type=Path, default=None, help="where datasets are generated (default: a temp dir)")
    p.add_argument("--no-paper", action="store_true", help="skip the paper-preset table")
    p.add_argument("--no-224", action="store_true", help="skip the 224-px comparison run")
    p.add_argument("--no-second", action="store_true", help="skip the second run on the same feature cache")
    p.add_argument("--threads", type=int, default=2, help="torch threads")
    p.add_argument("--out", type=Path, default=_common.DOC)
    p.add_argument("--no-write", action="store_true", help="print only")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="default-preset detector override (as cmdiad's --set, e.g. fusion.calibration_folds=0); "
                        "not without --no-write, which would publish it as the default")
    args = p.parse_args(argv)
    if args.set and not args.no_write:
        p.error("--set measures a switched preset; add --no-write")
    _SETS.extend(args.set)
    torch.set_num_threads(args.threads)
    load_before = _common.load_average()
    counts = QUICK if args.quick else FULL
    if args.counts:
        counts = dict(zip(("train", "validation", "test"), args.counts, strict=True))
    work = Path(tempfile.mkdtemp(prefix="cmdiad-scale-"))
    data_root = args.data or work / "data"
    try:
        parts = _report(args, counts, data_root, work)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    text = "\n\n".join([SECTION, *parts, f"Machine: {_common.machine_description(load_before)}. "
                        f"Command: `{_common.command_line()}`, {_common.git_revision()}."])
    _common.publish(text, args.out, write=not args.no_write)
    return 0


def warm_up(data: Path, cfg) -> None:
    """Run each extractor once on two samples, so no timed run pays the process's one-time costs."""
    from cmdiad.features.cache import FeatureCache
    from cmdiad.pipeline.persist import build_encoder

    encoder = build_encoder(cfg.detector, device=cfg.device, cache=FeatureCache(None))
    records = mvtec3d.list_records(data, "ring", "train")[:2]
    for modality in ("rgb", "xyz"):
        encoder.features(records, modality)


def encode_ms(datasets: dict[int, Path], cfg, repeats: int = 3) -> dict[tuple[str, int], float]:
    """Best-of-``repeats`` ms/sample to read + preprocess + extract the test split, sizes interleaved.

    A fresh in-memory cache each time; interleaving the sizes spreads the shared machine's load
    changes over both, and the minimum is the least disturbed repeat.
    """
    from cmdiad.features.cache import FeatureCache
    from cmdiad.pipeline.persist import build_encoder

    base = build_encoder(cfg.detector, device=cfg.device, cache=FeatureCache(None))
    best: dict[tuple[str, int], float] = {}
    for _ in range(repeats):
        for size, data in datasets.items():
            records = mvtec3d.list_records(data, "ring", "test")
            for modality in ("rgb", "xyz"):
                enc = _common.cold_encoder(base)
                t0 = time.perf_counter()
                enc.features(records, modality)
                ms = 1000 * (time.perf_counter() - t0) / len(records)
                best[(modality, size)] = min(ms, best.get((modality, size), float("inf")))
    return best


def ratio_table(best: dict[tuple[str, int], float], native: dict, size: int) -> str:
    """Per modality and per compared row: read + encode ms/sample at both sizes, plus the row's scoring."""
    score = {row_name(r["method"], r["main"]): r for r in native["records"]}
    uses = {"rgb": ("rgb",), "xyz": ("xyz",), "dual": ("rgb", "xyz"), "f2f_rgb": ("rgb",), "f2f_xyz": ("xyz",)}
    lines = [f"| row | read + encode {size}px | read + encode 224px | + scoring (both) | total ratio |",
             "|---|---:|---:|---:|---:|"]
    for row, mods in uses.items():
        big = sum(best[(m, size)] for m in mods)
        small = sum(best[(m, 224)] for m in mods)
        r = score.get(row)
        extract = sum(native["ms_extract"].get(m, 0.0) for m in mods)
        scoring = max(0.0, r["ms_per_sample"] - extract) if r else 0.0
        ratio = (big + scoring) / (small + scoring)
        lines.append(f"| {row} | {big:.0f} | {small:.0f} | {scoring:.0f} | {ratio:.2f}x |")
    return "\n".join(lines)


def _report(args, counts: dict[str, int], data_root: Path, work: Path) -> list[str]:
    native = make_data(data_root, args.size, counts)
    cfg = experiment_config("default", ALL_ROWS, {})
    warm_up(native, cfg)
    first = run(native, work / "run1", cfg, work / "cache")
    print(f"first run: {first['total']:.1f} s, peak RSS {_common.fmt_mb(first['peak_rss'])} MiB\n"
          f"{stage_table(first)}\n{coreset_table(first)}\n{row_table(first, None, args.size)}", flush=True)
    second = None if args.no_second else run(native, work / "run2", cfg, work / "cache")
    sizes = {args.size: native, 224: make_data(data_root, 224, counts)}
    small = None if args.no_224 else run(sizes[224], work / "run224", experiment_config("default", COMPARED_ROWS, {}),
                                        None)
    n_test = first["records"][0]["num_test"]
    parts = [
        f"One generated category (`ring`) at {args.size}x{args.size}: {counts['train']} train / "
        f"{counts['validation']} validation / {n_test} test samples"
        + (" (`--quick`; the full size is 200 / 20 / 60)" if args.quick else "")
        + ", all nine rows, `default` preset (model input 224x224), run through `run_experiment` as "
        "`cmdiad experiment --cache DIR` does. Stage times are exclusive (nested wrapped stages are "
        "subtracted); reading runs in the encoder's threads inside \"read + preprocess\". Each extractor "
        "ran once on two samples before the timed runs (one-time costs of a fresh process are not counted).",
        f"### Default preset, first run (cold cache)\n\n{stage_table(first)}\n\n"
        f"Peak RSS {_common.fmt_mb(first['peak_rss'])} MiB. Files decoded: {first['reads']}.",
        f"### Coreset per bank (first run)\n\n{coreset_table(first)}",
        ("### Second run on the same cache\n\nSkipped (`--no-second`); the `--quick` run and "
         "tests/unit/features/test_cache*.py show a second run decodes no file." if second is None else
         f"### Second run on the same cache\n\n{stage_table(second)}\n\nFiles decoded: {second['reads']} "
         f"(features, inputs and extraction timings all come from the cache; masks read mask files only). "
         f"Peak RSS {_common.fmt_mb(second['peak_rss'])} MiB."),
        "### Rows: native size vs 224 px\n\nms/sample as the experiment reports it (scoring + reading and "
        "extraction per modality used)"
        + ("; the 224-px run has the same counts." if small else ".")
        + f"\n\n{row_table(first, small, args.size)}\n\nThese single-pass figures move with the shared "
        "machine's load from one run to the next; the table below is the careful comparison: read + "
        "preprocess + extract of the test split with a cold cache, best of 3, the two sizes interleaved, "
        "plus the row's scoring time per sample (the same work at both sizes: maps are at the 224-px model "
        f"size).\n\n{ratio_table(encode_ms(sizes, cfg), first, args.size)}",
    ]
    if not args.no_paper:
        pc = PAPER_QUICK
        pdata = make_data(data_root, args.size, pc)
        pcfg = experiment_config("paper", PAPER_ROWS_QUICK, {**PAPER_SETS, "detector.distill.epochs": 1})
        warm_up(pdata, pcfg)
        paper = run(pdata, work / "paper", pcfg, None)
        print(f"paper run: {paper['total']:.1f} s\n{stage_table(paper)}", flush=True)
        parts.append(
            f"### Paper preset shapes (dino_vitb8 + point_mae, random init, 1 distillation epoch)\n\n"
            f"{pc['train']} train / {pc['validation']} validation / {paper['records'][0]['num_test']} test at "
            f"{args.size}x{args.size}, rows {', '.join(PAPER_ROWS_QUICK)}; `--set rgb.pretrained=false --set "
            f"xyz.pretrained=false --set distill.epochs=1`.\n\n{stage_table(paper)}\n\n"
            f"{coreset_table(paper)}\n\n{paper_extrapolation(paper, pc)}")
    return parts


if __name__ == "__main__":
    raise SystemExit(main())
