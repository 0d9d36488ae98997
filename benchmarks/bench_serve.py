"""Load test of ``cmdiad serve``: latency, throughput, failures and server memory growth.

For the EfficientNet-Lite0 ``f2f_rgb`` model of ``bench_export.py`` (fitted with ``cmdiad synth``
+ ``cmdiad fit``) and for its ONNX export, starts ``cmdiad serve`` on 127.0.0.1 in a subprocess,
sends ``--warmup`` requests, then ``--requests`` ``POST /score`` requests with one RGB part each
(the test split's PNGs in turn) from ``--clients`` threads, and stops by itself. Reported: client
latency p50/p95/p99, the server's own scoring time (p50 of ``timing_ms.score``), throughput,
failed requests (any non-200 or transport error) and the server's RSS after warm-up, at its peak
and at the end (psutil on the server's pid, polled every 0.2 s).

Targets: p50 <= 60 ms and p95 <= 120 ms for one RGB part, no failed request, RSS growth < 50 MB.

Writes the section "## Scoring service load test" of docs/benchmarks.md.

    python benchmarks/bench_serve.py                  # 2,000 requests from 4 threads per model
"""

from __future__ import annotations

import argparse
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


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_server(model: Path, threads: int) -> tuple[subprocess.Popen, str]:
    """``cmdiad serve MODEL`` on a free port; returns the process and its base URL once healthy."""
    import httpx

    port = _free_port()
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(Path(__file__).resolve().parent.parent / "src"),
                                                       os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.Popen([sys.executable, "-m", "cmdiad.cli", "serve", str(model), "--port", str(port),
                             "--threads", str(threads)], env=env, stdout=subprocess.DEVNULL)
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
                score_ms = r.json()["timing_ms"]["score"] if ok else None
            except httpx.HTTPError:
                ok, score_ms = False, None
            out.append((1000 * (time.perf_counter() - t0), ok, score_ms))


def load_test(url: str, pid: int, parts: list[bytes], *, requests: int, clients: int, warmup: int) -> dict:
    """Run the load from ``clients`` threads; latencies, failures and server RSS."""
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
    t0 = time.perf_counter()
    results = _run(url, parts, requests, clients)
    wall = time.perf_counter() - t0
    stop.set()
    poller.join()
    rss1 = server.memory_info().rss
    lat = np.array([r[0] for r in results])
    score = np.array([r[2] for r in results if r[2] is not None])
    return {
        "requests": len(results), "failed": sum(not r[1] for r in results), "wall_s": wall,
        "p50": float(np.percentile(lat, 50)), "p95": float(np.percentile(lat, 95)),
        "p99": float(np.percentile(lat, 99)), "score_p50": float(np.median(score)) if score.size else float("nan"),
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


def render(rows: dict[str, dict], args, load_before) -> str:
    mb = lambda b: b / 2**20  # noqa: E731
    lines = [SECTION, "",
             f"`cmdiad serve` on 127.0.0.1 (one scoring worker thread, `--threads {args.threads}`), "
             f"`POST /score` requests of one 192x192 RGB part each: {args.latency_requests} from one client "
             f"(the latency of one part, no queueing), then {args.requests} from {args.clients} client threads "
             "(load: requests queue for the single scoring thread, so latency is about the queue depth times "
             f"the scoring time), each after {args.warmup} warm-up requests; the RSS growth of the second "
             "run is counted from the end of its warm-up, after the first run. The model is the "
             "EfficientNet-Lite0 `f2f_rgb` detector of the ONNX section (fitted with `cmdiad synth` + "
             "`cmdiad fit`), served as its model folder (PyTorch) and as its ONNX export (onnxruntime). "
             "Latency is the client's (upload, validation, routing, scoring, JSON; the heatmap PNG is encoded when "
             "first fetched, which this test does not do); server scoring is the "
             "`timing_ms.score` the service reports. Targets: p50 <= 60 ms, p95 <= 120 ms, no failed request, "
             "server RSS growth < 50 MB.", "",
             "| model | requests | failed | p50 ms | p95 ms | p99 ms | server scoring p50 ms | requests/s "
             "| server RSS after warm-up MiB | RSS growth (end / peak) MiB | targets met |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, r in rows.items():
        met = (r["p50"] <= TARGETS["p50"] and r["p95"] <= TARGETS["p95"] and r["failed"] == 0
               and mb(r["rss_peak"] - r["rss0"]) < TARGETS["rss_mb"])
        lines.append(f"| {name} | {r['requests']} | {r['failed']} | {r['p50']:.1f} | {r['p95']:.1f} | "
                     f"{r['p99']:.1f} | {r['score_p50']:.1f} | {r['throughput']:.1f} | {mb(r['rss0']):.0f} | "
                     f"{mb(r['rss1'] - r['rss0']):+.1f} / {mb(r['rss_peak'] - r['rss0']):+.1f} | "
                     f"{'yes' if met else 'no'} |")
    lines += ["", "Command (it fits and exports the model first when absent, see the ONNX section):", "",
              "```", _common.command_line(), "```", "",
              f"Machine: {_common.machine_description(load_before)}. The clients, the server and (when the "
              f"machine was shared) other jobs compete for the same cores. {_common.git_revision()}."]
    return "\n".join(lines) + "\n"


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--work", type=Path, default=Path(os.environ.get("TMPDIR", "/tmp")) / "cmdiad-bench-serve")
    p.add_argument("--requests", type=int, default=2000)
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--latency-requests", dest="latency_requests", type=int, default=200,
                   help="requests of the one-client (unqueued latency) run")
    p.add_argument("--warmup", type=int, default=20)
    p.add_argument("--threads", type=int, default=2, help="server torch / onnxruntime threads")
    p.add_argument("--no-write", action="store_true")
    args = p.parse_args()
    load_before = _common.load_average()
    data, model, onnx_path = bench_export.prepare(args.work)
    parts = [f.read_bytes() for f in sorted((data / "ring" / "test").glob("*/rgb/*.png"))]
    rows = {}
    for name, path in (("model folder (PyTorch)", model), ("ONNX export (onnxruntime)", onnx_path)):
        proc, url = start_server(path, args.threads)
        try:
            for clients, n in ((1, args.latency_requests), (args.clients, args.requests)):
                key = f"{name}, {clients} client(s)"
                rows[key] = load_test(url, proc.pid, parts, requests=n, clients=clients, warmup=args.warmup)
                print(key, rows[key], flush=True)
        finally:
            proc.terminate()
            proc.wait(timeout=30)
    _common.publish(render(rows, args, load_before), _common.DOC, write=not args.no_write)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
