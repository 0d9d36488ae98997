"""Shared helpers of the benchmark scripts.

- :func:`machine_description`: CPU, cores, torch threads, Python, load average;
- :func:`write_section`: replace (or append) one ``## Section`` of ``docs/benchmarks.md``, keeping
  every other benchmark's section as it is;
- :class:`RssMonitor`: peak resident memory (RSS, via psutil) of the whole process, polled in a
  background thread, over named time windows;
- :func:`demo_data` / :func:`default_experiment_config`: the synthetic demo data and the default
  preset, shared by the pipeline and peer benchmarks.

Scripts import this module as ``_common`` (``benchmarks/`` is on ``sys.path`` when a script runs).
"""

from __future__ import annotations

import os
import platform
import re
import shlex
import sys
import threading
import time
from pathlib import Path
from typing import Any

DOC = Path(__file__).resolve().parent.parent / "docs" / "benchmarks.md"
"""The benchmark report every script writes one section of."""


def load_average() -> tuple[float, float, float]:
    """1-, 5- and 15-minute load averages (zeros where the OS has none)."""
    try:
        return os.getloadavg()
    except OSError:
        return (0.0, 0.0, 0.0)


def cpu_name() -> str:
    """The CPU model name from ``/proc/cpuinfo``, else what :mod:`platform` knows."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def machine_description(load_before: tuple[float, float, float] | None = None) -> str:
    """One sentence describing the machine, with the load before (if given) and now.

    A 1-minute load before the run above half the cores (or, without it, a load after the run above
    the cores) means other processes competed for the CPUs; the sentence then says so.
    """
    import torch

    cores = os.cpu_count() or 1
    after = load_average()
    text = (f"{cpu_name()}, {cores} logical CPUs, torch {torch.__version__} "
            f"({torch.get_num_threads()} threads), Python {platform.python_version()}, "
            f"{platform.system()} {platform.release()}, no GPU used")
    fmt = lambda x: "/".join(f"{v:.1f}" for v in x)  # noqa: E731
    text += ("; load average (1/5/15 min) " + (f"before {fmt(load_before)}, after " if load_before else "")
             + fmt(after))
    if load_before is not None:
        text += " (the 'after' figure includes this benchmark's own threads)"
    other = load_before[0] > 0.5 * cores if load_before is not None else after[0] > cores
    if other:
        text += "; other jobs were running on the machine, so times are noisy upper bounds"
    return text


def git_revision() -> str:
    """Short commit of the working tree, noting uncommitted changes under ``src/``."""
    import subprocess

    root = Path(__file__).resolve().parent.parent
    try:
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=root, capture_output=True,
                             text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "src"], cwd=root, capture_output=True,
                               text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown revision"
    return f"commit {rev}" + (" with uncommitted changes in src/" if dirty else "")


def command_line() -> str:
    """The command that ran this script, as a copy-pasteable string."""
    script = Path(sys.argv[0])
    try:
        script = script.resolve().relative_to(Path.cwd())
    except ValueError:
        pass
    return " ".join(["python", shlex.quote(str(script)), *map(shlex.quote, sys.argv[1:])])


def write_section(text: str, path: Path = DOC) -> None:
    """Replace the section whose ``## Title`` is the first line of ``text``, or append it.

    A section runs from its ``## `` heading to the next ``## `` heading (``###`` sub-headings
    stay inside) or the end of the file. Other sections are kept byte for byte.
    """
    title = text.splitlines()[0].strip()
    if not title.startswith("## "):
        raise ValueError(f"a section must start with a '## ' heading, got {title!r}")
    body = text.rstrip("\n") + "\n"
    current = path.read_text(encoding="utf-8") if path.exists() else "# Benchmarks\n"
    pattern = re.compile(rf"^{re.escape(title)}[ \t]*\n.*?(?=^## |\Z)", re.S | re.M)
    if pattern.search(current):
        new = pattern.sub(lambda _: body + "\n", current, count=1).rstrip("\n") + "\n"
    else:
        new = current.rstrip("\n") + "\n\n" + body
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".md.tmp")
    tmp.write_text(new, encoding="utf-8")
    tmp.replace(path)


def publish(text: str, out: Path, *, write: bool = True) -> None:
    """Print a finished section and, unless ``write`` is False, put it into ``out``."""
    print(text)
    if write:
        write_section(text, out)


class RssMonitor:
    """Samples the process RSS every ``interval`` seconds in a daemon thread.

    RSS covers everything the process holds (Python objects, torch CPU tensors, open3d, FAISS),
    unlike ``tracemalloc`` which sees Python allocations only. Freed memory is not always returned
    to the OS, so an increase measured over a window is a lower bound of what the window
    allocated, and the absolute peak includes everything allocated before.

    Use as a context manager; :meth:`peak` gives the peak RSS (bytes) between two
    ``time.perf_counter()`` stamps.
    """

    def __init__(self, interval: float = 0.005) -> None:
        import psutil

        self._proc = psutil.Process()
        self.interval = interval
        self.samples: list[tuple[float, int]] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def rss(self) -> int:
        """Current RSS in bytes (also recorded as a sample)."""
        value = self._proc.memory_info().rss
        self.samples.append((time.perf_counter(), value))
        return value

    def _run(self) -> None:
        while not self._stop.is_set():
            self.rss()
            self._stop.wait(self.interval)

    def __enter__(self) -> RssMonitor:
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()

    def peak(self, t0: float, t1: float) -> int:
        """Largest RSS sampled in ``[t0, t1]`` (bytes; 0 when no sample fell inside)."""
        return max((v for t, v in list(self.samples) if t0 <= t <= t1), default=0)


def demo_data(root: Path | None, categories: tuple[str, ...], sizes: dict[str, int]) -> Path:
    """The synthetic demo dataset at ``root``, generated there when a category is missing.

    Args:
        root: Dataset folder; None uses ``$TMPDIR/cmdiad-bench-<sizes>``.
        categories: Categories needed.
        sizes: ``SynthConfig`` count overrides (``train``, ``validation``, ``test_good``,
            ``test_per_defect``); empty for the demo's defaults.
    """
    from cmdiad.synthetic.generator import SynthConfig, generate_dataset

    tag = "-".join(f"{k}{v}" for k, v in sorted(sizes.items())) or "demo"
    root = Path(root) if root is not None else Path(os.environ.get("TMPDIR", "/tmp")) / f"cmdiad-bench-{tag}"
    missing = tuple(c for c in categories if not (root / c).is_dir())
    if missing:
        generate_dataset(root, SynthConfig(categories=missing, **sizes))
    return root


def default_experiment_config(**overrides: Any):
    """``ExperimentConfig`` of the ``default`` preset, with ExperimentConfig-level overrides."""
    from cmdiad import config as C
    from cmdiad.pipeline.presets import preset

    return C.from_dict(C.ExperimentConfig, C.merge(C.merge({}, preset("default")), overrides))


def cold_encoder(base):
    """A ``cmdiad`` Encoder sharing ``base``'s extractors, with an empty in-memory feature cache."""
    from cmdiad.features.cache import FeatureCache
    from cmdiad.pipeline.encoder import Encoder

    return Encoder(base.extractors, base.configs, base.data, cache=FeatureCache(None),
                   batch_size=base.batch_size)


def fmt_ms(seconds: float) -> str:
    """Seconds as milliseconds with a sensible number of digits."""
    ms = 1000.0 * seconds
    return f"{ms:.0f}" if ms >= 100 else f"{ms:.1f}"


def fmt_mb(nbytes: float) -> str:
    """Bytes as MiB, one decimal."""
    return f"{nbytes / 2**20:.0f}"


def run_children(script: str, children: list[str], args: list[str]) -> list[dict]:
    """Run ``script --child NAME *args`` in a fresh process per name; their last stdout lines as JSON.

    A fresh process per measurement keeps one's memory from weighing on the next (RSS figures).
    A failing child's stderr is shown and stops the benchmark with its name.
    """
    import json
    import subprocess

    results = []
    for name in children:
        proc = subprocess.run([sys.executable, script, "--child", name, *args], capture_output=True, text=True)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr)
            raise SystemExit(f"{Path(script).name}: the measurement {name!r} failed (exit {proc.returncode})")
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(json.dumps(results[-1]), flush=True)
    return results

