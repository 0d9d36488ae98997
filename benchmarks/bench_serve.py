"""Load test of ``cmdiad serve``: latency, throughput, failures, where the time goes, server memory.

For an EfficientNet-Lite0 ``f2f_rgb`` model (fitted with ``cmdiad fit`` on ``--data``, category
``--category``, at 192x192; without ``--data`` on the synthetic set of ``bench_export.py``) and for
its ONNX export, starts ``cmdiad serve`` on 127.0.0.1 in a subprocess, sends ``--warmup``
requests, then ``--requests`` ``POST /score`` requests with one RGB part each (the test split's
PNGs in turn) from ``--clients`` threads, and stops by itself. Reported: client latency
p50/p95/p99, throughput, failed requests (any non-200 or transport error), the server's RSS
after warm-up, at its peak and at the end (psutil on the server's pid, polled every 0.2 s), the
mean of the server's own per-request stages (``timing_ms``: multipart parsing and upload
writing, queueing for the scoring thread, validation decode, the batch's scoring call, batch
size) and the 1-minute load average before and after each run (the machine may be shared).

``--configs`` lists server settings ``threads:batch`` to compare (e.g. ``1:1,2:1,1:4,2:4``);
the first run of each model uses the first setting from one client (the unqueued latency).

Targets: p50 <= 60 ms and p95 <= 120 ms for one RGB part, no failed request, RSS growth < 50 MB.

Writes the section "## Scoring service load test" of docs/benchmarks.md.

    python benchmarks/bench_serve.py --data /work/data/demo     # 2,000 requests from 4 threads per setting
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import _common  # noqa: E402
import bench_export  # noqa: E402

SECTION = "## Scoring service load test"
TARGETS = {"p50": 60.0, "p95": 120.0, "rss_mb": 50.0}
STAGES = ("parse", "queue", "read", "score", "batch")
FIT = ["--method", "f2f", "--main", "rgb", "--preset", "default", "--set", "data.image_size=[192,192]"]


def prepare(work: Path, data: Path | None, category: str, *, onnx: bool = True) -> tuple[Path, Path, Path]:
    """``(data, model folder, model.onnx)``: fitted on ``data`` (or ``bench_export``'s set) and exported when absent."""
    if data is None:
        return bench_export.prepare(work)
    from cmdiad.cli import main as cli

    model, onnx_path = work / f"model-{data.name}-{category}", work / f"model-{data.name}-{category}.onnx"
    if not (model / "detector.json").is_file():
        cli(["fit", str(data), "--category", category, *FIT, "--out", str(model)])
    if onnx and not onnx_path.is_file():
        cli(["export", str(model), "--format", "onnx", str(onnx_path)])
    return data, model, onnx_path


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(model: Path, threads: int, batch: int, wait_ms: float) -> tuple[subprocess.Popen, str]:
    """``cmdiad serve MODEL`` on a free port; returns the process and its base URL once healthy."""
    import httpx

    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parent.parent / "src"),
                                                       os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "cmdiad.cli", "serve", str(model), "--port", str(port),
                             "--threads", str(threads), "--batch", str(batch), "--batch-wait-ms", str(wait_ms)],
                            env=env, stdout=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 300
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"cmdiad serve exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/health", timeout=2).status_code == 200:
                return proc, url
        except httpx.HTTPError:
            pass
        time.sleep(0.5)
    proc.kill()
    raise RuntimeError("cmdiad serve did not become healthy in 300 s")


def _client(url: str, parts: list[bytes], jobs: list[int], lock: threading.Lock, out: list) -> None:
    import httpx

    with httpx.Client(base_url=url, timeout=60) as client:
        while True:
            with lock:
                if not jobs:
                    return
                i = jobs.pop()
            t0 = time.perf_counter()
            try:
                r = client.post("/score", files={"rgb": ("part.png", parts[i % len(parts)], "image/png")})
                ok = r.status_code == 200
                timing = r.json()["timing_ms"] if ok else None
            except httpx.HTTPError:
                ok, timing = False, None
            out.append((1000 * (time.perf_counter() - t0), ok, timing))


def load_test(url: str, pid: int, parts: list[bytes], *, requests: int, clients: int, warmup: int) -> dict:
    """Run the load from ``clients`` threads; latencies, failures, server stages and RSS."""
    import psutil

    server = psutil.Process(pid)
    _run(url, parts, warmup, clients)
    rss0 = server.memory_info().rss
    peak = [rss0]
    stop = threading.Event()

    def poll() -> None:
        while not stop.wait(0.2):
            peak[0] = max(peak[0], server.memory_info().rss)

    poller = threading.Thread(target=poll, daemon=True)
    poller.start()
    load0 = _common.load_average()[0]
    t0 = time.perf_counter()
    results = _run(url, parts, requests, clients)
    wall = time.perf_counter() - t0
    stop.set()
    poller.join()
    rss1 = server.memory_info().rss
    lat = np.array([r[0] for r in results])
    stages = {k: float(np.mean([r[2][k] for r in results if r[2] is not None])) for k in STAGES}
    return {
        "requests": len(results), "failed": sum(not r[1] for r in results), "wall_s": wall,
        "p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95)),
        "p99": float(np.percentile(lat, 99)), "stages": stages, "load": (load0, _common.load_average()[0]),
        "throughput": len(results) / wall, "rss0": rss0, "rss_peak": max(peak[0], rss1), "rss1": rss1,
    }  # fmt: skip


def _run(url: str, parts: list[bytes], n: int, clients: int) -> list:
    jobs, lock, out = list(range(n)), threading.Lock(), []
    threads = [threading.Thread(target=_client, args=(url, parts, jobs, lock, out)) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return out


def _met(r: dict) -> bool:
    return (r["p50"] <= TARGETS["p50"] and r["p95"] <= TARGETS["p95"] and r["failed"] == 0
            and (r["rss_peak"] - r["rss0"]) / 2**20 < TARGETS["rss_mb"])


def _row(name: str, r: dict) -> str:
    mb = lambda b: b / 2**20  # noqa: E731
    st = r["stages"]
    return (f"| {name} | {r['requests']} | {r['failed']} | {r['p50']:.1f} | {r['p95']:.1f} | {r['p99']:.1f} | "
            f"{r['throughput']:.1f} | {st['parse']:.1f} / {st['queue']:.1f} / {st['read']:.1f} / "
            f"{st['score']:.1f} / {st['batch']:.2f} | {mb(r['rss0']):.0f} | "
            f"{mb(r['rss1'] - r['rss0']):+.1f} / {mb(r['rss_peak'] - r['rss0']):+.1f} | "
            f"{r['load'][0]:.1f} / {r['load'][1]:.1f} | {'yes' if _met(r) else 'no'} |")


def render(rows: dict[str, dict], args, load_before) -> str:
    lines = [SECTION, "",
             "`cmdiad serve` on 127.0.0.1, `POST /score` requests of one 192x192 RGB part each (the test "
             "split of the data the model was fitted on, named in its row): for each model first from one "
             "client (the latency of one part, no queueing), then from several client threads per server "
             "setting (the request count of each row is in the table), each after "
             f"{args.warmup} warm-up requests. The server has one scoring thread; a setting `threads t, "
             "batch b` is `--threads t --batch b` (torch / onnxruntime intra-op threads; at most b queued parts "
             f"scored in one forward pass, waiting at most `--batch-wait-ms {args.batch_wait_ms}` for a batch to "
             "fill). The model is an EfficientNet-Lite0 `f2f_rgb` detector (`cmdiad fit ... --method f2f --main "
             "rgb --preset default` at 192x192), served as its model folder (PyTorch) and as its ONNX export "
             "(onnxruntime). Latency is the client's (upload, multipart parsing, validation, routing, scoring, "
             "JSON; the heatmap PNG is encoded when first fetched, which this test does not do). Server stages are "
             "means of the `timing_ms` the service returns: parse (multipart parsing, upload written to a "
             "temporary file), queue (waiting for the scoring thread), read (decoding and validating the "
             "upload), score (the whole batch's scoring call, which re-reads the file) and the batch size. "
             "Targets: p50 <= 60 ms, p95 <= 120 ms, no failed request, server RSS growth < 50 MB.", "",
             f"Reading the table: {args.clients} clients that each send their next part as soon as the last is "
             "answered keep the scoring thread's queue full, so latency is about the clients times the time per "
             f"part of the slowest serial stage (Little's law): p50 <= 60 ms with {args.clients} clients needs "
             f"{args.clients / 0.060:.0f} parts/s or more, i.e. at most {60 / args.clients:.0f} ms per part for "
             "queue-free work (read + score per part), on cores that also run the clients. Micro-batching "
             "scores the parts that queued during one batch in the next forward pass; it pays where a batch "
             "of b costs less than b single passes.", "",
             "| model, clients, setting | requests | failed | p50 ms | p95 ms | p99 ms | requests/s "
             "| server parse / queue / read / score ms / batch | server RSS after warm-up MiB "
             "| RSS growth (end / peak) MiB | load 1 min (before / after) | targets met |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    lines += [_row(name, r) for name, r in sorted(rows.items())]
    loads = [x for r in rows.values() for x in r["load"]]
    cores = os.cpu_count() or 1
    if loads and max(loads) > cores:
        lines += ["", f"These rows were measured with a 1-minute load average of {min(loads):.0f} to "
                      f"{max(loads):.0f} on {cores} logical CPUs, i.e. the machine was about "
                      f"{sum(loads) / len(loads) / cores:.0f} times oversubscribed by other jobs: every figure is "
                      "an upper bound, a missed target here does not show it would be missed on free cores, and rows "
                      "measured at different loads (last but one column) do not compare with each other."]
    commands = list(dict.fromkeys(r["command"] for r in rows.values() if "command" in r)) or [_common.command_line()]
    lines += ["", "Commands (they fit and export the model first when absent):", "",
              "```", *commands, "```", "",
              f"Machine: {_common.machine_description(load_before)}. The clients, the server and (when the "
              f"machine was shared) other jobs compete for the same cores. {_common.git_revision()}."]
    return "\n".join(lines) + "\n"


def _settings(text: str) -> list[tuple[int, int]]:
    out = []
    for item in text.split(","):
        threads, _, batch = item.partition(":")
        out.append((int(threads), int(batch or 1)))
    return out


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "cmdiad-bench-serve")
    p.add_argument("--data", type=Path, default=None, help="dataset root to fit on (default: a synthetic set)")
    p.add_argument("--category", default="ring")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--latency-requests", dest="latency_requests", type=int, default=200,
                   help="requests of the one-client (unqueued latency) run")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--configs", default="1:1,1:4", help="server settings threads:batch, comma-separated")
    p.add_argument("--batch-wait-ms", dest="batch_wait_ms", type=float, default=2.0)
    p.add_argument("--models", default="folder,onnx", help="which of folder,onnx to serve")
    p.add_argument("--rows", type=Path, default=None,
                   help="JSON file the measured rows are added to; the section shows every row in it "
                        "(to measure the two models in separate runs)")
    p.add_argument("--report-only", dest="report_only", action="store_true",
                   help="measure nothing: write the section from the rows in --rows")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    load_before = _common.load_average()
    if args.report_only:
        if args.rows is None or not args.rows.is_file():
            p.error("--report-only needs an existing --rows file")
        rows = json.loads(args.rows.read_text())
        _common.publish(render(rows, args, None), _common.DOC, write=not args.no_write)
        return 0
    data, model, onnx_path = prepare(args.work, args.data, args.category, onnx="onnx" in args.models)
    parts = [f.read_bytes() for f in sorted((data / args.category / "test").glob("*/rgb/*.png"))]
    models = {"folder": ("model folder (PyTorch)", model), "onnx": ("ONNX export (onnxruntime)", onnx_path)}
    rows = {}
    for key in args.models.split(","):
        name, path = models[key]
        for k, (threads, batch) in enumerate(_settings(args.configs)):
            proc, url = start_server(path, threads, batch, args.batch_wait_ms)
            runs = ((1, args.latency_requests), (args.clients, args.requests)) if k == 0 else ((args.clients,
                                                                                                args.requests),)
            try:
                for clients, n in runs:
                    label = (f"{name} fitted on {data.name}/{args.category}, {clients} client(s), "
                             f"threads {threads}, batch {batch}")
                    rows[label] = load_test(url, proc.pid, parts, requests=n, clients=clients, warmup=args.warmup)
                    rows[label]["command"] = _common.command_line()
                    print(_row(label, rows[label]), flush=True)
            finally:
                proc.terminate()
                proc.wait(timeout=30)
    if args.rows is not None:
        kept = json.loads(args.rows.read_text()) if args.rows.is_file() else {}
        rows = {**kept, **rows}
        args.rows.write_text(json.dumps(rows, indent=1))
    _common.publish(render(rows, args, load_before), _common.DOC, write=not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
