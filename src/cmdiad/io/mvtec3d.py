"""Discover and load samples laid out like MVTec 3D-AD.

Layout (also produced by :mod:`cmdiad.io.eyecandies` and :mod:`cmdiad.synthetic`)::

    <root>/<category>/{train,validation}/good/{rgb/<stem>.png, xyz/<stem>.tiff}
    <root>/<category>/test/<good|defect>/{rgb/<stem>.png, xyz/<stem>.tiff, gt/<stem>.png}
    <root>/<category>/validation/<defect>/{rgb/<stem>.png, xyz/<stem>.tiff, gt/<stem>.png}  (optional)
    <root>/<category>/class_ids.json   (optional: grey value -> defect name)

Files are paired by stem, never by sorted position. A sample missing its rgb or its xyz file is
still a record (that path is ``None``): incomplete modalities are expected. Ground-truth masks of
good train/validation samples are ignored, as in the reference loaders. Labelled defective
validation parts (not in MVTec 3D-AD; a user's own) need their masks, as test parts do; they are
never trained on (see ``FusionConfig.labelled_choice``). Training parts must all be good.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np

from cmdiad.errors import DatasetError
from cmdiad.io.image import read_mask, read_rgb, rgb_file_size
from cmdiad.io.layout import categories_hint, list_categories  # noqa: F401 - re-exported here
from cmdiad.io.pointcloud import read_xyz, xyz_file_size
from cmdiad.types import MODALITIES, Sample, SampleRecord

logger = logging.getLogger(__name__)

SPLITS = ("train", "validation", "test")
_SUFFIXES = {"rgb": (".png",), "xyz": (".tiff", ".tif"), "gt": (".png",)}


def _files_by_stem(folder: Path, kind: str) -> dict[str, Path]:
    if not folder.is_dir():
        return {}
    return {
        p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and p.suffix.lower() in _SUFFIXES[kind]
    }


def list_records(
    root: Path | str, category: str, split: str, *, require: Iterable[str] | None = None
) -> list[SampleRecord]:
    """Records of one category and split, sorted by defect folder then stem.

    Args:
        root: Dataset root.
        category: Category folder name.
        split: ``"train"``, ``"validation"`` or ``"test"``. A missing validation or test folder
            gives an empty list (Eyecandies has no validation split).
        require: Modalities (``"rgb"``, ``"xyz"``) a record must have to be kept; others are
            dropped with an info log. ``None`` keeps every record.

    Raises:
        DatasetError: Missing category, a mask without rgb/xyz, a defective test or validation
            sample without its mask, a training folder other than ``good``, or no training
            samples when ``split == "train"``.
    """
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    cat_dir = Path(root) / category
    if not cat_dir.is_dir():
        raise DatasetError(cat_dir, "category folder not found" + categories_hint(root))
    split_dir = cat_dir / split
    defects = sorted(p for p in split_dir.iterdir() if p.is_dir()) if split_dir.is_dir() else []
    if split == "train" and any(d.name != "good" for d in defects):
        bad = next(d for d in defects if d.name != "good")
        raise DatasetError(bad, "training parts must be good: only train/good is read; move labelled "
                           "defective parts to validation/<defect>/ (with masks) or test/")
    records = [r for d in defects for r in _defect_records(category, split, d)]
    if split == "train" and not records:
        raise DatasetError(split_dir, f"category {category!r} has no training samples")
    return _filter_required(records, require)


def native_size(root: Path | str) -> tuple[int, int]:
    """The dataset's own ``(H, W)``: the smallest height and width over each category's first
    training part, read from file headers (the rgb image, else the point cloud).

    A run at this size never upsamples a category; on a set whose parts share one size (a
    generated one) it resamples nothing.

    Raises:
        DatasetError: ``root`` holds no category, a category has no training parts, or a
            header cannot be read.
    """
    sizes = []
    for category in list_categories(root):
        first = list_records(root, category, "train")[0]
        sizes.append(rgb_file_size(first.rgb_path) if first.rgb_path is not None else xyz_file_size(first.xyz_path))
    return min(h for h, _ in sizes), min(w for _, w in sizes)


def _defect_records(category: str, split: str, folder: Path) -> list[SampleRecord]:
    rgb = _files_by_stem(folder / "rgb", "rgb")
    xyz = _files_by_stem(folder / "xyz", "xyz")
    labelled = split == "test" or (split == "validation" and folder.name != "good")
    gt = _files_by_stem(folder / "gt", "gt") if labelled else {}
    stems = sorted(set(rgb) | set(xyz))
    for stem, path in gt.items():
        if stem not in rgb and stem not in xyz:
            raise DatasetError(path, "ground-truth mask has no rgb or xyz counterpart")
    if folder.name != "good":
        for stem in stems if labelled else []:
            if stem not in gt:
                raise DatasetError(
                    folder / "gt" / f"{stem}.png", f"defective {split} sample {stem!r} has no mask"
                )
    return [SampleRecord(category, split, folder.name, s, rgb.get(s), xyz.get(s), gt.get(s)) for s in stems]


def _filter_required(records: list[SampleRecord], require: Iterable[str] | None) -> list[SampleRecord]:
    if require is None:
        return records
    need = frozenset(require)
    unknown = need - set(MODALITIES)
    if unknown:
        raise ValueError(f"unknown modalities {sorted(unknown)}; use {MODALITIES}")
    kept = [r for r in records if need <= r.modalities]
    if len(kept) < len(records):
        logger.info("dropped %d records lacking %s", len(records) - len(kept), sorted(need))
    return kept


def class_ids(root: Path | str, category: str) -> dict[int, str]:
    """The category's ``class_ids.json`` (grey value -> defect name); empty when absent."""
    path = Path(root) / category / "class_ids.json"
    if not path.is_file():
        return {}
    try:
        raw = json.loads(path.read_text())
        return {int(k): str(v) for k, v in raw.items()}
    except (ValueError, AttributeError) as err:
        raise DatasetError(path, f"not a JSON object of grey value -> defect name ({err})") from err


def load_sample(
    record: SampleRecord, modalities: Iterable[str] | None = None, *, skip_bad: bool = False
) -> Sample | None:
    """Read one sample's arrays, opening only the requested modality files.

    Args:
        record: Where the sample lives.
        modalities: Modalities to read; ``None`` reads every modality the record has. Few-modal
            inference passes only the main modality so the other file is never opened.
        skip_bad: Log a warning and return ``None`` instead of raising on a bad sample.

    Returns:
        The sample; ``mask`` is the ground truth, or all False at the sample's size when the
        record has no mask. ``None`` only when ``skip_bad`` and the sample is bad.

    Raises:
        DatasetError: A requested file is missing or invalid, or rgb, xyz and mask sizes differ.
    """
    wanted = set(record.modalities if modalities is None else modalities)
    if not wanted <= set(MODALITIES):
        raise ValueError(f"unknown modalities {sorted(wanted - set(MODALITIES))}; use {MODALITIES}")
    try:
        return _load(record, tuple(m for m in MODALITIES if m in wanted))
    except DatasetError as err:
        if not skip_bad:
            raise
        logger.warning("skipping sample %s: %s", record.key, err)
        return None


def iter_samples(
    records: Iterable[SampleRecord], modalities: Iterable[str] | None = None, *, skip_bad: bool = False
) -> Iterator[Sample]:
    """Load records one by one; with ``skip_bad`` bad samples are logged and left out."""
    mods = None if modalities is None else tuple(modalities)
    for record in records:
        sample = load_sample(record, mods, skip_bad=skip_bad)
        if sample is not None:
            yield sample


def _load(record: SampleRecord, modalities: tuple[str, ...]) -> Sample:
    sample = Sample(record)
    for mod in modalities:
        path = record.path_of(mod)
        if path is None:
            raise DatasetError(_expected_path(record, mod), f"sample {record.key} has no {mod} file")
        if mod == "rgb":
            sample.rgb = read_rgb(path)
        else:
            sample.xyz = read_xyz(path)
    size = _common_size(sample)
    _check_other_size(record, sample)
    if record.gt_path is not None and (size is not None or not modalities):
        sample.mask = read_mask(record.gt_path)
        if size is not None and sample.mask.shape != size:
            raise DatasetError(
                record.gt_path, f"mask size {sample.mask.shape} differs from the sample's size {size}"
            )
    elif size is not None:
        sample.mask = np.zeros(size, dtype=bool)
    return sample


def _common_size(sample: Sample) -> tuple[int, int] | None:
    rgb, xyz, rec = sample.rgb, sample.xyz, sample.record
    if rgb is not None and xyz is not None and rgb.shape[:2] != xyz.shape[:2]:
        raise _size_mismatch(rec, rgb.shape[:2], xyz.shape[:2])
    arr = rgb if rgb is not None else xyz
    return None if arr is None else (int(arr.shape[0]), int(arr.shape[1]))


def _size_mismatch(record: SampleRecord, rgb: tuple[int, int], xyz: tuple[int, int]) -> DatasetError:
    problem = f"rgb size {tuple(rgb)} differs from xyz size {tuple(xyz)} of {record.xyz_path}"
    return DatasetError(record.rgb_path, problem)


def _check_other_size(record: SampleRecord, sample: Sample) -> None:
    """When one modality of a paired sample is read alone, the other file's header must match it."""
    if record.rgb_path is None or record.xyz_path is None or (sample.rgb is None) == (sample.xyz is None):
        return
    try:
        other = xyz_file_size(record.xyz_path) if sample.rgb is not None else rgb_file_size(record.rgb_path)
    except DatasetError:
        return  # the other file's own problem is reported where it is read
    if sample.rgb is not None and sample.rgb.shape[:2] != other:
        raise _size_mismatch(record, sample.rgb.shape[:2], other)
    if sample.xyz is not None and sample.xyz.shape[:2] != other:
        raise _size_mismatch(record, other, sample.xyz.shape[:2])


def check_record(record: SampleRecord, modalities: Iterable[str] = MODALITIES) -> None:
    """Cheap checks of a sample's files (headers, structure, length), without decoding them.

    Finds missing, truncated and foreign files and an rgb/xyz size mismatch in milliseconds,
    so that ``fit`` and ``predict`` can report them before any model is loaded. Problems
    only a full read finds (NaN coordinates, an empty cloud) are still reported when read.

    Args:
        record: The sample.
        modalities: Files to check (``"rgb"``, ``"xyz"``); the others are not opened.

    Raises:
        DatasetError: Naming the bad file (both files for a size mismatch).
    """
    wanted = set(modalities)
    rgb = rgb_file_size(record.rgb_path, verify=True) if record.rgb_path is not None and "rgb" in wanted else None
    xyz = xyz_file_size(record.xyz_path, verify=True) if record.xyz_path is not None and "xyz" in wanted else None
    if rgb is not None and xyz is not None and rgb != xyz:
        raise _size_mismatch(record, rgb, xyz)


def _expected_path(record: SampleRecord, modality: str) -> Path:
    """Where the missing ``modality`` file of ``record`` would be."""
    other = record.rgb_path or record.xyz_path or record.gt_path
    suffix = _SUFFIXES[modality][0]
    if other is None:
        return Path(record.key)
    return other.parent.parent / modality / f"{record.stem}{suffix}"
