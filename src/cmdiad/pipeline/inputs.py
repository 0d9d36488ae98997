"""Turning user-given files and folders into named sample records for prediction.

Accepted inputs: a dataset root (categories), a category folder (``train/``, ``test/``...), a
sample folder (``rgb/`` and/or ``xyz/``), a plain folder of image/point-cloud files, or files.
Dataset and category folders give their ``test`` split unless other splits are asked for.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from cmdiad.errors import ConfigError, DatasetError
from cmdiad.types import SampleRecord

RGB_SUFFIXES = (".png", ".jpg", ".jpeg")
XYZ_SUFFIXES = (".tiff", ".tif")
SPLITS = ("train", "validation", "test")


@dataclass(frozen=True)
class Item:
    """One sample to predict: its record and a name unique within the run (relative source path)."""

    record: SampleRecord
    name: str


def _kind(path: Path) -> str | None:
    suffix = path.suffix.lower()
    return "rgb" if suffix in RGB_SUFFIXES else "xyz" if suffix in XYZ_SUFFIXES else None


def _check_kind(path: Path) -> str:
    kind = _kind(path)
    if kind is None:
        raise DatasetError(path, f"unsupported file type {path.suffix.lower()!r}: expected an RGB image "
                                 f"({', '.join(RGB_SUFFIXES)}) or an organized point cloud ({', '.join(XYZ_SUFFIXES)})")
    return kind


def _pair(files: Iterable[Path], *, category: str, split: str, defect: str, prefix: str) -> list[Item]:
    """Pair files by stem: ``a.png`` + ``a.tiff`` form one sample named ``prefix/a``."""
    by_stem: dict[str, dict[str, Path]] = {}
    for f in files:
        slot = by_stem.setdefault(f.stem, {})
        kind = _check_kind(f)
        if kind in slot:
            raise DatasetError(f, f"two {kind} files share the stem {f.stem!r} ({slot[kind]})")
        slot[kind] = f
    return [
        Item(SampleRecord(category=category, split=split, defect=defect, stem=stem,
                          rgb_path=paths.get("rgb"), xyz_path=paths.get("xyz")),
             f"{prefix}/{stem}" if prefix else stem)
        for stem, paths in sorted(by_stem.items())
    ]


def _media(folder: Path) -> list[Path]:
    return [p for p in sorted(folder.iterdir()) if p.is_file() and _kind(p) is not None] if folder.is_dir() else []


def _sample_folder(folder: Path, *, category: str = "", split: str = "", prefix: str | None = None) -> list[Item]:
    """A folder with ``rgb/`` and/or ``xyz/`` (and maybe ``gt/``): its name is the defect type."""
    files = [p for sub in ("rgb", "xyz") for p in _media(folder / sub)]
    return _pair(files, category=category, split=split, defect=folder.name,
                 prefix=folder.name if prefix is None else prefix)


def _is_sample_folder(path: Path) -> bool:
    return (path / "rgb").is_dir() or (path / "xyz").is_dir()


def _is_category(path: Path) -> bool:
    return any((path / s).is_dir() for s in SPLITS)


def _category(folder: Path, splits: Sequence[str], prefix: str) -> list[Item]:
    items = []
    for split in splits:
        split_dir = folder / split
        for defect in sorted(p for p in split_dir.iterdir() if p.is_dir()) if split_dir.is_dir() else []:
            items += _sample_folder(defect, category=folder.name, split=split,
                                    prefix="/".join(x for x in (prefix, split, defect.name) if x))
    return items


def _folder(path: Path, splits: Sequence[str]) -> list[Item]:
    if _is_sample_folder(path):
        return _sample_folder(path)
    if _is_category(path):
        return _category(path, splits, "")
    cats = [p for p in sorted(path.iterdir()) if p.is_dir() and _is_category(p)]
    if cats:
        return [i for c in cats for i in _category(c, splits, c.name)]
    media = _media(path)
    if media:  # a plain folder of files, e.g. test/stain/rgb: named after the folder above rgb/ or xyz/
        group = path.parent.name if path.name in ("rgb", "xyz") else path.name
        return _pair(media, category="", split="", defect=group, prefix=group)
    folders = sorted({p.parent for p in path.rglob("*") if p.is_dir() and p.name in ("rgb", "xyz")})
    return [i for f in folders for i in _sample_folder(f, prefix=str(f.relative_to(path)))]


def items_from_inputs(inputs: Iterable[Path], *, splits: Sequence[str] = ("test",)) -> list[Item]:
    """Named records for files and folders (see the module docstring).

    Args:
        inputs: Paths given by the user.
        splits: Splits read from dataset roots and category folders.

    Raises:
        DatasetError: A path does not exist, has an unsupported type, or holds no samples.
    """
    unknown = sorted(set(splits) - set(SPLITS))
    if unknown:
        raise ConfigError(f"unknown split(s) {', '.join(unknown)}; use some of {', '.join(SPLITS)}")
    items: list[Item] = []
    loose: list[Path] = []
    for raw in inputs:
        path = Path(raw)
        if path.is_file():
            loose.append(path)
        elif path.is_dir():
            found = _folder(path, splits)
            if not found:
                raise DatasetError(path, f"no samples found (no .png/.tiff files, and no {'/'.join(splits)} split "
                                   "or rgb/ and xyz/ folders with such files)")
            items.extend(found)
        else:
            raise DatasetError(path, "does not exist")
    if loose:
        items.extend(_pair(loose, category="", split="", defect="", prefix=""))
    return _unique(items)


def _unique(items: list[Item]) -> list[Item]:
    """Give repeated names (the same stems from two inputs) a ``~2``, ``~3`` suffix."""
    seen: dict[str, int] = {}
    out = []
    for item in items:
        n = seen.get(item.name, 0) + 1
        seen[item.name] = n
        out.append(item if n == 1 else Item(item.record, f"{item.name}~{n}"))
    return out


def records_from_inputs(inputs: Iterable[Path], *, splits: Sequence[str] = ("test",)) -> list[SampleRecord]:
    """The records of :func:`items_from_inputs`."""
    return [i.record for i in items_from_inputs(inputs, splits=splits)]
