"""Memory-bank scaling: greedy coreset selection, nearest-neighbour search, a 1M-row bank.

On synthetic clustered features (a Gaussian mixture, N x D float32):
- one sample's patches (``--queries``, default 784) searched against banks of N rows with the
  torch back-end, FAISS flat (exact) and FAISS IVF (approximate; recall@1 vs exact reported);
- the greedy k-centre coreset (``--ratio`` of N) in the JL projection (eps 0.9), as the
  ``greedy`` sampler runs it: projection, coarse clustering, pruned compiled loop; with its
  covering radius (largest distance of any row to the coreset, in the projection) and the
  peak RSS above the input;
- exactness: at ``--exact-n`` rows the torch reference loop (``greedy_reference``) runs in full
  and its picks are compared with the pruned loop's; at the largest size the reference runs
  ``--ref-steps`` steps (compared, and its full time extrapolated) and the covering radius of
  ``approximate_greedy`` and ``random`` picks is measured in the same projection;
- a ``--bank-n`` (default 1M) x D bank collected with ``MemoryBank.add`` (identity sampler),
  finalized and searched with one sample, with RSS above the bank; and the greedy coreset of
  ``--bank-ratio`` of it.

Writes the section "## Memory bank scaling" of docs/benchmarks.md (only that section).

    python benchmarks/bench_memory.py --threads 2
"""

from __future__ import annotations

import argparse
import math
import time
from pathlib import Path

import _common  # benchmarks/_common.py (the script folder is on sys.path)
import torch

from cmdiad.config import CoresetConfig, MemoryConfig
from cmdiad.memory import kcentre
from cmdiad.memory.bank import MemoryBank
from cmdiad.memory.coreset import (
    SAMPLERS,
    _greedy_loop,
    _matvec_loop,
    approximate_greedy_coreset_indices,
    coreset_size,
    greedy_coreset_indices,
    johnson_lindenstrauss_dim,
    random_projection,
)
from cmdiad.memory.knn import KnnIndex
from cmdiad.types import PatchFeatures

SECTION = "## Memory bank scaling"
SEARCH_TARGET_S = 0.5  # 784 queries vs a 100k bank
CORESET_TARGET_S = 60.0  # 10% of 300k x 768
EPS = 0.9
GIB = 2**30


def clustered(n: int, dim: int, seed: int, clusters: int = 256) -> torch.Tensor:
    """``(n, dim)`` float32 Gaussian-mixture rows (patch features are clustered, not uniform)."""
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(clusters, dim, generator=gen) * 2.0
    out = torch.empty(n, dim)
    step = 65536
    for s in range(0, n, step):
        m = min(step, n - s)
        out[s : s + m] = centres[torch.randint(clusters, (m,), generator=gen)] + torch.randn(m, dim, generator=gen)
    return out


def timed(fn, repeat: int = 1) -> tuple[float, object]:
    best, result = float("inf"), None
    for _ in range(repeat):
        t0 = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - t0)
    return best, result


def bench_search(bank: torch.Tensor, queries: torch.Tensor) -> dict[str, float]:
    row: dict[str, float] = {}
    exact = KnnIndex(bank)
    row["torch_s"], (_, idx_exact) = timed(lambda: exact.search(queries, 1), repeat=3)
    _, flat = timed(lambda: KnnIndex(bank, backend="faiss", index="flat"))
    row["faiss_flat_s"], _ = timed(lambda: flat.search(queries, 1), repeat=3)
    row["ivf_build_s"], ivf = timed(lambda: KnnIndex(bank, backend="faiss", index="ivf", nprobe=8, seed=0))
    row["ivf_s"], (_, idx_ivf) = timed(lambda: ivf.search(queries, 1), repeat=3)
    row["ivf_recall"] = float((idx_ivf[:, 0] == idx_exact[:, 0]).float().mean())
    return row


def bench_coreset(x: torch.Tensor, ratio: float, mon: _common.RssMonitor) -> tuple[dict, dict]:
    """The ``greedy`` sampler's stages, timed; returns the row and the state reused by the comparisons."""
    n = coreset_size(ratio, x.shape[0])
    base = mon.rss()
    t0 = time.perf_counter()
    proj_s, z = timed(lambda: random_projection(x, johnson_lindenstrauss_dim(x.shape[0], EPS), seed=0))
    cluster_s, rows = timed(lambda: kcentre.ClusteredRows(z, seed=0))
    loop_s, (idx, radius) = timed(lambda: rows.run(n, start_index=0))
    peak = mon.peak(t0, time.perf_counter()) - base
    row = {"n_select": n, "proj_dim": z.shape[1], "clusters": rows.num_clusters, "proj_s": proj_s,
           "cluster_s": cluster_s, "loop_s": loop_s, "total_s": proj_s + cluster_s + loop_s,
           "radius": float(radius[-1]), "peak_gib": peak / GIB, "input_gib": x.numel() * 4 / GIB}  # fmt: skip
    return row, {"z": z, "rows": rows, "idx": idx, "n": n}


def bench_exact(x: torch.Tensor, ratio: float) -> dict:
    """Pruned vs reference loop, both in full, on the same projection."""
    n = coreset_size(ratio, x.shape[0])
    fast_s, fast = timed(lambda: greedy_coreset_indices(x, n, eps=EPS))
    ref_s, ref = timed(lambda: greedy_coreset_indices(x, n, eps=EPS, reference=True))
    z = random_projection(x, johnson_lindenstrauss_dim(x.shape[0], EPS), seed=0)
    rows = kcentre.ClusteredRows(z)
    r_fast = float(rows.run(n, forced=fast)[1][-1])
    r_ref = float(rows.run(n, forced=ref)[1][-1])
    same = int((fast == ref).cumprod(0).sum())  # picks identical up to the first difference
    return {"rows": x.shape[0], "n_select": n, "fast_s": fast_s, "ref_s": ref_s, "same_prefix": same,
            "identical": bool(torch.equal(fast, ref)), "radius_fast": r_fast, "radius_ref": r_ref}  # fmt: skip


def bench_compare(x: torch.Tensor, state: dict, ref_steps: int) -> dict:
    """At the largest size: a reference prefix, approximate greedy and random radii in the same projection."""
    z, rows, idx, n = state["z"], state["rows"], state["idx"], state["n"]
    steps = min(ref_steps, n)
    min_d2 = torch.full((z.shape[0],), float("inf"))
    ref_s, ref = timed(lambda: _greedy_loop(z, min_d2, torch.tensor(0), steps))
    min_d2 = torch.full((z.shape[0],), float("inf"))
    matvec_s, matvec = timed(lambda: _matvec_loop(z, min_d2, torch.tensor(0), steps))
    approx_s, approx = timed(lambda: approximate_greedy_coreset_indices(x, n, projection_dim=None, eps=EPS, seed=0))
    rand = SAMPLERS.get("random")(n / x.shape[0], seed=0).select(x)[:n]
    return {"ref_steps": steps, "ref_prefix_same": bool(torch.equal(ref, idx[:steps])),
            "ref_total_s": ref_s * n / steps, "approx_s": approx_s, "matvec_total_s": matvec_s * n / steps,
            "matvec_prefix_same": bool(torch.equal(matvec, idx[:steps])),
            "radius_approx": float(rows.run(n, forced=approx)[1][-1]),
            "radius_random": float(rows.run(len(rand), forced=rand)[1][-1])}  # fmt: skip


def _feature_batches(n: int, dim: int, grid: int, batch: int, seed: int):
    """PatchFeatures batches of ``batch`` samples on a ``grid x grid`` patch grid, ``n`` valid rows in all."""
    per = batch * grid * grid
    gen = torch.Generator().manual_seed(seed)
    centres = torch.randn(256, dim, generator=gen) * 2.0
    for start in range(0, n, per):
        m = min(per, n - start)
        rows = centres[torch.randint(256, (per,), generator=gen)] + torch.randn(per, dim, generator=gen)
        feats = rows.view(batch, grid, grid, dim).permute(0, 3, 1, 2)
        valid = torch.zeros(batch * grid * grid, dtype=torch.bool)
        valid[:m] = True
        yield PatchFeatures(feats, valid.view(batch, grid, grid))


def bench_big_bank(args: argparse.Namespace, mon: _common.RssMonitor) -> dict:
    """Collect, finalize and search a ``bank_n``-row bank; RSS measured above the bank itself."""
    grid = math.isqrt(args.queries)
    cfg = MemoryConfig(coreset=CoresetConfig(ratio=1.0, sampler="identity"))
    bank = MemoryBank(cfg)
    base = mon.rss()
    t0 = time.perf_counter()
    for pf in _feature_batches(args.bank_n, args.dim, grid, 8, seed=1):
        bank.add(pf)
    t1 = time.perf_counter()
    bank.finalize()
    t2 = time.perf_counter()
    bank_bytes = bank.bank.numel() * bank.bank.element_size()
    query = next(_feature_batches(grid * grid, args.dim, grid, 1, seed=2))
    before_score = mon.rss()
    t3 = time.perf_counter()
    bank.score(query)
    t4 = time.perf_counter()
    out = {"rows": bank.bank.shape[0], "dim": bank.bank.shape[1], "bank_gib": bank_bytes / GIB, "add_s": t1 - t0,
           "finalize_s": t2 - t1,
           "build_extra_gib": (mon.peak(t0, t2) - base - bank_bytes) / GIB, "score_s": t4 - t3,
           "score_extra_gib": (mon.peak(t3, t4) - before_score) / GIB, "queries": grid * grid}  # fmt: skip
    if args.bank_ratio > 0:
        t7 = time.perf_counter()
        before = mon.rss()
        idx = greedy_coreset_indices(bank.bank, coreset_size(args.bank_ratio, bank.bank.shape[0]), eps=EPS)
        out.update(coreset_s=time.perf_counter() - t7, coreset_n=len(idx),
                   coreset_extra_gib=(mon.peak(t7, time.perf_counter()) - before) / GIB)  # fmt: skip
    half = bank.bank.half()
    index = KnnIndex(half)
    q = torch.randn(grid * grid, args.dim)
    before = mon.rss()
    t5 = time.perf_counter()
    index.search(q, 1)
    t6 = time.perf_counter()
    out.update(half_gib=half.numel() * 2 / GIB, half_search_s=t6 - t5, half_extra_gib=(mon.peak(t5, t6) - before) / GIB)
    del index, half
    return out


def _miss(value: float, target: float) -> str:
    return "met" if value <= target else f"missed by {value - target:.1f} s ({value / target:.1f}x)"


def _search_lines(args, search: dict) -> list[str]:
    lines = [f"### Nearest-neighbour search: {args.queries} queries (one sample's patches), k = 1", "",
             "| bank rows | torch exact (s) | FAISS flat (s) | FAISS IVF nprobe 8 (s) | IVF build (s) "
             "| IVF recall@1 |", "|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for n, r in sorted(search.items()):
        lines.append(f"| {n:,} | {r['torch_s']:.3f} | {r['faiss_flat_s']:.3f} | {r['ivf_s']:.3f} | "
                     f"{r['ivf_build_s']:.1f} | {r['ivf_recall']:.3f} |")  # fmt: skip
    return lines + [""]


def _coreset_lines(args, coreset: dict) -> list[str]:
    lines = [f"### Greedy coreset, ratio {args.ratio} (sampler `greedy`: exact k-centre, JL projection eps {EPS})",
             "", "| rows | selected | proj. dim | clusters | projection (s) | clustering (s) | pruned loop (s) "
             "| total (s) | covering radius | peak RSS above input (GiB) |",
             "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|"]  # fmt: skip
    for n, r in sorted(coreset.items()):
        lines.append(f"| {n:,} | {r['n_select']:,} | {r['proj_dim']} | {r['clusters']} | {r['proj_s']:.2f} | "
                     f"{r['cluster_s']:.2f} | {r['loop_s']:.2f} | {r['total_s']:.1f} | {r['radius']:.3f} | "
                     f"{r['peak_gib']:.2f} (input {r['input_gib']:.2f}) |")  # fmt: skip
    return lines + [""]


def _exact_lines(exact: dict | None, compare: dict | None, largest: int) -> list[str]:
    lines = ["### Exactness of the pruned loop (same projection)", ""]
    if exact:
        e = exact
        verdict = "identical" if e["identical"] else f"identical for the first {e['same_prefix']:,}"
        lines.append(f"- {e['rows']:,} rows, {e['n_select']:,} picks: pruned loop {e['fast_s']:.1f} s, torch "
                     f"reference loop (`greedy_reference`) {e['ref_s']:.1f} s; picks {verdict}; covering radius "
                     f"{e['radius_fast']:.4f} vs {e['radius_ref']:.4f} "
                     f"({100 * (e['radius_fast'] / e['radius_ref'] - 1):+.2f} %).")  # fmt: skip
    if compare:
        c = compare
        lines.append(f"- {largest:,} rows: the reference loop's first {c['ref_steps']} picks "
                     f"{'equal' if c['ref_prefix_same'] else 'DIFFER from'} the pruned loop's (reference in full, "
                     f"extrapolated: {c['ref_total_s']:.0f} s; the float32 matrix-vector loop that GPU tensors and a "
                     f"missing numba use, the former CPU loop: {c['matvec_total_s']:.0f} s, first picks "
                     f"{'equal' if c['matvec_prefix_same'] else 'differ'}). Covering radius in the same projection: "
                     f"`approximate_greedy` {c['radius_approx']:.3f} ({c['approx_s']:.1f} s), `random` "
                     f"{c['radius_random']:.3f}; `greedy` in the table above.")  # fmt: skip
    return lines + [""]


def _bank_lines(b: dict | None) -> list[str]:
    if not b:
        return []
    lines = [f"### A {b['rows']:,}-row bank (float32, {b['bank_gib']:.2f} GiB)", "",
             "- collect with `MemoryBank.add` (8-sample batches copied into 64 MiB blocks, each block freed once "
             f"copied into the bank): {b['add_s']:.1f} s; "
             f"finalize (identity sampler, standardise in place, index): {b['finalize_s']:.1f} s; peak RSS above "
             f"the bank while building: {b['build_extra_gib']:.2f} GiB.",
             f"- score one sample ({b['queries']} patch queries, exact torch search, query chunk 4096 x bank "
             f"chunk 16384): {b['score_s']:.1f} s, peak RSS above the built bank: {b['score_extra_gib']:.3f} GiB.",
             f"- the same bank in float16 ({b['half_gib']:.2f} GiB, converted per bank chunk): search "
             f"{b['half_search_s']:.1f} s, peak RSS above: {b['half_extra_gib']:.3f} GiB."]  # fmt: skip
    if "coreset_s" in b:
        lines.append(f"- greedy coreset of {b['coreset_n']:,} rows from it: {b['coreset_s']:.1f} s, peak RSS above "
                     f"the bank {b['coreset_extra_gib']:.2f} GiB (projection + cluster-sorted copy).")  # fmt: skip
    block_mib = min(b["queries"], 4096) * 16384 * 4 / 2**20
    chunk_mib = 16384 * b["dim"] * 4 / 2**20
    lines.append(f"- RSS figures are the growth of the process RSS (psutil, polled every 5 ms) over the stage's start: "
                 "lower bounds, since freed memory is reused. By construction the search's working set is one "
                 f"distance block ({block_mib:.0f} MiB here) plus one float32 bank chunk ({chunk_mib:.0f} MiB), "
                 "whatever the bank size.")  # fmt: skip
    return lines + [""]


def render(args, load_before, search, coreset, exact, compare, big) -> str:
    lines = [SECTION, "", f"Command: `{_common.command_line()}`", "",
             f"Machine: {_common.machine_description(load_before)}; numba {kcentre.numba.__version__}, the pruned "
             "loop is single-threaded. Timings were taken on a machine shared with other jobs.", "",
             f"Data: Gaussian mixture (256 clusters), D = {args.dim}, float32.", ""]  # fmt: skip
    lines += _search_lines(args, search) + _coreset_lines(args, coreset) + _exact_lines(exact, compare, max(coreset))
    lines += _bank_lines(big) + ["Targets:"]
    if 100_000 in search and args.dim == 768:
        lines.append(f"- search, {args.queries} queries vs 100k x 768 <= {SEARCH_TARGET_S} s: torch "
                     f"{_miss(search[100_000]['torch_s'], SEARCH_TARGET_S)}, FAISS flat "
                     f"{_miss(search[100_000]['faiss_flat_s'], SEARCH_TARGET_S)}.")  # fmt: skip
    if 300_000 in coreset and args.dim == 768:
        lines.append(f"- coreset 10% of 300k x 768 <= {CORESET_TARGET_S:.0f} s: "
                     f"{_miss(coreset[300_000]['total_s'], CORESET_TARGET_S)}.")  # fmt: skip
    lines += ["", "How the coreset is fast: rows are grouped into about 4·sqrt(N) coarse clusters (two-level "
              "k-means on a subsample); a new centre skips every cluster whose triangle-inequality lower bound "
              "(|q - centroid| - radius)² is not below the cluster's largest current min distance, and inside a "
              "visited cluster every row whose bound (|q - centroid| - |row - centroid|)² is not below its own "
              "min distance; the loop is compiled with numba. The bounds carry a 1e-4 relative slack, so only "
              "provably unaffected rows are skipped and the picks are the brute-force ones. Without numba, or for "
              "a GPU tensor, the float32 matrix-vector torch loop runs (one pass over the projected bank per "
              "step). The compiled loop runs in about 50 calls of n/50 picks each (the loop state carries over, so "
              "the picks are those of one call; tested) and `MemoryBank.finalize(progress=...)` reports between "
              "them, so a long coreset shows a progress bar with an ETA.", "",
              "What bounds the search: exact search of one sample is 2 x queries x rows x D flops (compute bound; "
              "the working set is one query chunk x bank chunk distance block whatever the bank size). For large "
              "banks use `memory.knn_backend = \"faiss\"` with `memory.faiss_index = \"ivf\"` (accuracy cost in "
              "the next section) or the GPU (every piece follows the device of its tensors)."]  # fmt: skip
    return "\n".join(lines) + "\n"


def parse() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dim", type=int, default=768)
    p.add_argument("--sizes", type=int, nargs="+", default=[10_000, 30_000, 100_000, 300_000])
    p.add_argument("--coreset-max-n", type=int, default=300_000)
    p.add_argument("--queries", type=int, default=784)
    p.add_argument("--ratio", type=float, default=0.1)
    p.add_argument("--exact-n", type=int, default=50_000, help="rows where the reference loop runs in full (0: skip)")
    p.add_argument("--ref-steps", type=int, default=300, help="reference steps at the largest coreset size")
    p.add_argument("--bank-n", type=int, default=1_000_000, help="rows of the big bank (0: skip)")
    p.add_argument("--bank-ratio", type=float, default=0.01, help="greedy coreset ratio on the big bank (0: skip)")
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--out", type=Path, default=Path("docs/benchmarks.md"))
    p.add_argument("--no-write", action="store_true")
    return p.parse_args()


def main() -> int:
    args = parse()
    if args.threads:
        torch.set_num_threads(args.threads)
    kcentre.ClusteredRows(torch.randn(64, 4)).run(8)  # compile (or load the cached) loop outside the timings
    load_before = _common.load_average()
    search, coreset, exact, compare, big = {}, {}, None, None, None
    with _common.RssMonitor() as mon:
        for n in sorted(args.sizes):
            data = clustered(n + args.queries, args.dim, seed=0)  # queries from the same mixture
            bank, queries = data[:n], data[n:].clone()
            if n <= args.coreset_max_n:  # first, so that its RSS baseline is just the data
                coreset[n], state = bench_coreset(bank, args.ratio, mon)
                print(f"coreset n={n}: {coreset[n]}", flush=True)
                if n == max(s for s in args.sizes if s <= args.coreset_max_n):
                    compare = bench_compare(bank, state, args.ref_steps)
                    print(f"compare n={n}: {compare}", flush=True)
                del state
            search[n] = bench_search(bank, queries)
            print(f"search n={n}: {search[n]}", flush=True)
            del bank, data
        if args.exact_n:
            exact = bench_exact(clustered(args.exact_n, args.dim, seed=3), args.ratio)
            print(f"exact: {exact}", flush=True)
        if args.bank_n:
            big = bench_big_bank(args, mon)
            print(f"bank: {big}", flush=True)
    _common.publish(render(args, load_before, search, coreset, exact, compare, big), args.out,
                    write=not args.no_write)  # fmt: skip
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
