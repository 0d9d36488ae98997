"""Approximate FAISS search (IVF, IVF-PQ) against exact search: accuracy cost and speed.

For each back-end the rows ``xyz``, ``rgb`` and ``dual`` are fitted on the synthetic demo data
with the default preset (features extracted once, shared), and the test split is scored from
the feature cache, so the timing is the nearest-neighbour search plus maps and fusion only.
Bank sizes here are small (a few thousand patches); `bench_memory.py` measures the speed of
the same indexes on 10k-300k banks.

    python benchmarks/bench_ann.py [--categories ring,tile] [--out docs/benchmarks.md]
"""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from pathlib import Path

import _common
import numpy as np

BACKENDS = (("torch exact", "torch", "flat"), ("FAISS flat", "faiss", "flat"), ("FAISS IVF", "faiss", "ivf"),
            ("FAISS IVF-PQ", "faiss", "ivfpq"))
ROWS = ("xyz", "rgb", "dual")


def run(root: Path, categories: list[str]) -> list[dict]:
    """Metrics and scoring time of every (back-end, row, category)."""
    from cmdiad.io.mvtec3d import list_records
    from cmdiad.metrics.segmentation import evaluate
    from cmdiad.pipeline.detector import Detector
    from cmdiad.pipeline.streams import parse_row

    exp = _common.default_experiment_config()
    from cmdiad.pipeline.persist import build_encoder

    encoder = build_encoder(exp.detector, device="cpu")
    out = []
    for cat in categories:
        train, val, test = (list_records(root, cat, s) for s in ("train", "validation", "test"))
        for m in ("rgb", "xyz"):
            encoder.features(train + val + test, m)
        labels, masks = np.array([r.label for r in test]), encoder.masks(test).numpy()
        for label, backend, index in BACKENDS:
            memory = replace(exp.detector.memory, knn_backend=backend, faiss_index=index)
            for row in ROWS:
                method, main = parse_row(row)
                det = Detector(replace(exp.detector, method=method, main=main, memory=memory), encoder)
                det.fit(train, validation=val)
                t0 = time.perf_counter()
                scores = det.score(test)
                ms = 1000 * (time.perf_counter() - t0) / len(test)
                m = evaluate(scores.image_score.numpy(), labels, scores.anomaly_map.numpy(), masks)
                out.append({"backend": label, "row": row, "category": cat, "ms": ms, **m})
    return out


def table(results: list[dict]) -> str:
    """Markdown: per back-end and row, mean metrics over categories and the change vs exact."""
    exact = {(r["row"], r["category"]): r for r in results if r["backend"] == "torch exact"}
    lines = ["| back-end | row | I-AUROC | change | AUPRO@30% | change | scoring ms/sample |",
             "|---|---|---:|---:|---:|---:|---:|"]
    for label, _, _ in BACKENDS:
        for row in ROWS:
            mine = [r for r in results if r["backend"] == label and r["row"] == row]
            base = [exact[(r["row"], r["category"])] for r in mine]
            i, a = np.mean([r["i_auroc"] for r in mine]), np.mean([r["aupro_30"] for r in mine])
            di = i - np.mean([b["i_auroc"] for b in base])
            da = a - np.mean([b["aupro_30"] for b in base])
            ms = np.mean([r["ms"] for r in mine])
            lines.append(f"| {label} | {row} | {i:.3f} | {di:+.3f} | {a:.3f} | {da:+.3f} | {ms:.1f} |")
    return "\n".join(lines)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--data", type=Path, default=None)
    p.add_argument("--categories", default="ring,tile")
    p.add_argument("--out", type=Path, default=_common.DOC)
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    load = _common.load_average()
    cats = args.categories.split(",")
    root = _common.demo_data(args.data, tuple(cats), {})
    t0 = time.perf_counter()
    results = run(root, cats)
    text = "\n\n".join([
        "## Approximate nearest-neighbour search: accuracy cost",
        f"Command: `{_common.command_line()}` ({(time.perf_counter() - t0) / 60:.1f} min)",
        f"Machine: {_common.machine_description(load)}",
        f"Data: synthetic demo data, categories {', '.join(cats)} (default counts); preset `default` at "
        f"{_common.git_revision()}; rows fitted per back-end (`memory.knn_backend`, `memory.faiss_index`); metric "
        "means over the categories; change = difference to torch exact search. Banks are a few thousand "
        "patches here, where approximate search saves nothing; its speed gain on large banks is in "
        "'Memory bank scaling' below.",
        table(results),
    ])
    _common.publish(text, args.out, write=not args.no_write)


if __name__ == "__main__":
    main()
