"""Preprocess a whole MVTec-3D-style dataset into a new folder (never in place).

Every sample gets plane removal, padding to a square and largest-cluster filtering
(:func:`cmdiad.preprocessing.pointcloud.preprocess_arrays`). Sample ``i`` (in sorted order over
categories, splits, defects and stems) uses RANSAC seed ``seed + i``, so the output does not
depend on the number of workers. A failing sample is reported and the others go on.
"""

from __future__ import annotations

import logging
import multiprocessing
import shutil
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from pathlib import Path

from cmdiad.config import PreprocessConfig
from cmdiad.errors import DatasetError
from cmdiad.io.image import read_mask_values, read_rgb, write_mask, write_rgb
from cmdiad.io.mvtec3d import SPLITS, list_categories, list_records
from cmdiad.io.pointcloud import read_xyz, write_xyz
from cmdiad.preprocessing.pointcloud import pad_to_square, preprocess_arrays
from cmdiad.types import SampleRecord

logger = logging.getLogger(__name__)

_COPIED = ("class_ids.json", "calibration")


@dataclass
class PreprocessReport:
    """What :func:`preprocess_dataset` did.

    Attributes:
        processed: Sample keys (``category/split/defect/stem``) written to the output.
        failures: ``(path, error message)`` of each sample or folder that could not be processed.
    """

    processed: list[str] = field(default_factory=list)
    failures: list[tuple[Path, str]] = field(default_factory=list)


@dataclass(frozen=True)
class _Task:
    index: int
    record: SampleRecord
    src: Path
    out: Path

    def target(self, path: Path | None) -> Path | None:
        return None if path is None else self.out / path.relative_to(self.src)


def _check_roots(src: Path, out: Path, overwrite: bool) -> None:
    if out == src or src in out.parents:
        raise DatasetError(out, f"output folder must be outside the source dataset {src} (no in-place runs)")
    if out in src.parents:
        raise DatasetError(out, f"output folder must not contain the source dataset {src}")
    if out.exists() and any(out.iterdir()) and not overwrite:
        raise DatasetError(out, "output folder is not empty; choose a new folder or pass overwrite=True")


def _plan(src: Path, out: Path, report: PreprocessReport) -> list[_Task]:
    """Tasks in a stable order; copies per-category metadata; folder problems go to ``report``."""
    records: list[SampleRecord] = []
    for cat in list_categories(src):
        _copy_metadata(src / cat, out / cat)
        for split in SPLITS:
            try:
                records += list_records(src, cat, split)
            except DatasetError as err:
                report.failures.append((err.path, str(err)))
    return [_Task(i, r, src, out) for i, r in enumerate(records)]


def _copy_metadata(src_cat: Path, out_cat: Path) -> None:
    out_cat.mkdir(parents=True, exist_ok=True)
    for name in _COPIED:
        path = src_cat / name
        if path.is_dir():
            shutil.copytree(path, out_cat / name, dirs_exist_ok=True)
        elif path.is_file():
            shutil.copy2(path, out_cat / name)


def _process_sample(task: _Task, cfg: PreprocessConfig, seed: int) -> None:
    """Preprocess one sample and write it under the output root.

    A sample without xyz only gets its rgb and mask padded; one without rgb is processed alone.
    """
    rec = task.record
    rgb = None if rec.rgb_path is None else read_rgb(rec.rgb_path)
    mask = None if rec.gt_path is None else read_mask_values(rec.gt_path)
    if rec.xyz_path is None:
        rgb = None if rgb is None else pad_to_square(rgb, cfg.pad_multiple)
        mask = None if mask is None else pad_to_square(mask, cfg.pad_multiple)
    else:
        xyz = read_xyz(rec.xyz_path, nan_to_zero=True)
        size = xyz.shape[:2]
        for path, arr in ((rec.rgb_path, rgb), (rec.gt_path, mask)):
            if arr is not None and arr.shape[:2] != size:
                raise DatasetError(path, f"size {arr.shape[:2]} differs from {size} of {rec.xyz_path}")
        xyz, rgb, mask = preprocess_arrays(xyz, rgb, mask, cfg, seed=seed + task.index)
        write_xyz(task.target(rec.xyz_path), xyz)
    if rgb is not None:
        write_rgb(task.target(rec.rgb_path), rgb)
    if mask is not None:
        write_mask(task.target(rec.gt_path), mask.astype("uint8"))


def _run_task(task: _Task, cfg: PreprocessConfig, seed: int) -> tuple[str, Path | None, str | None]:
    """Process one task; returns ``(key, failed path or None, message or None)``."""
    rec = task.record
    try:
        _process_sample(task, cfg, seed)
    except DatasetError as err:
        return rec.key, err.path, str(err)
    except Exception as err:  # report any other failure without aborting the others
        path = rec.xyz_path or rec.rgb_path
        return rec.key, path, f"{path}: {type(err).__name__}: {err}"
    return rec.key, None, None


def preprocess_dataset(
    src: Path | str,
    out: Path | str,
    *,
    config: PreprocessConfig | None = None,
    workers: int = 2,
    seed: int = 0,
    progress: Callable[[int, int], None] | None = None,
    overwrite: bool = False,
) -> PreprocessReport:
    """Preprocess every sample of ``src`` into a new dataset tree at ``out``.

    ``class_ids.json`` and ``calibration/`` are copied; ``src`` is never modified.

    Args:
        src: Source dataset root (MVTec 3D-AD layout).
        out: New dataset root; must not be ``src``, inside it, or contain it.
        config: Thresholds; ``None`` uses the reference defaults.
        workers: Processes; ``<= 1`` runs in this process.
        seed: Base RANSAC seed (sample ``i`` uses ``seed + i``).
        progress: Called as ``progress(done, total)`` after each sample.
        overwrite: Allow a non-empty ``out``.

    Returns:
        The processed sample keys and the failures.

    Raises:
        DatasetError: ``src`` is not a dataset, or ``out`` is not a valid output folder.
    """
    src, out = Path(src).resolve(), Path(out).resolve()
    cfg = config or PreprocessConfig()
    list_categories(src)  # fail early, naming src, if it is not a dataset
    _check_roots(src, out, overwrite)
    report = PreprocessReport()
    tasks = _plan(src, out, report)
    for done, (key, path, message) in enumerate(_execute(tasks, cfg, seed, workers), start=1):
        if message is None:
            report.processed.append(key)
        else:
            logger.warning("preprocessing failed: %s", message)
            report.failures.append((path, message))
        if progress is not None:
            progress(done, len(tasks))
    report.processed.sort()
    return report


def _execute(tasks: list[_Task], cfg: PreprocessConfig, seed: int, workers: int):
    """Yield task results, in completion order."""
    if workers <= 1 or len(tasks) <= 1:
        yield from (_run_task(t, cfg, seed) for t in tasks)
        return
    # spawn: forking a process that already runs OpenMP (open3d, torch) can deadlock
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=workers, mp_context=ctx) as pool:
        futures = [pool.submit(_run_task, t, cfg, seed) for t in tasks]
        yield from (f.result() for f in as_completed(futures))
