"""Turning user-given files and folders into sample records for prediction."""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path

from cmdiad.errors import DatasetError
from cmdiad.types import SampleRecord

RGB_SUFFIXES = (".png", ".jpg", ".jpeg")
XYZ_SUFFIXES = (".tiff", ".tif")


def _kind(path: Path) -> str:
    suffix = path.suffix.lower()
    if suffix in RGB_SUFFIXES:
        return "rgb"
    if suffix in XYZ_SUFFIXES:
        return "xyz"
    raise DatasetError(path, f"unsupported file type {suffix!r}: expected an RGB image "
                             f"({', '.join(RGB_SUFFIXES)}) or an organized point cloud ({', '.join(XYZ_SUFFIXES)})")


def _records_from_files(files: Iterable[Path], group: str) -> list[SampleRecord]:
    """Pair files by stem: ``a.png`` + ``a.tiff`` form one sample."""
    by_stem: dict[str, dict[str, Path]] = {}
    for f in files:
        slot = by_stem.setdefault(f.stem, {})
        kind = _kind(f)
        if kind in slot:
            raise DatasetError(f, f"two {kind} files share the stem {f.stem!r} ({slot[kind]})")
        slot[kind] = f
    return [
        SampleRecord(category=group, split="predict", defect="unknown", stem=stem,
                     rgb_path=paths.get("rgb"), xyz_path=paths.get("xyz"))
        for stem, paths in sorted(by_stem.items())
    ]


def _sample_folder(folder: Path) -> list[SampleRecord]:
    files = [p for sub in ("rgb", "xyz") if (folder / sub).is_dir() for p in sorted((folder / sub).iterdir())
             if p.suffix.lower() in RGB_SUFFIXES + XYZ_SUFFIXES]
    return _records_from_files(files, str(folder))


def records_from_inputs(inputs: Iterable[Path]) -> list[SampleRecord]:
    """Records for files, sample folders (with ``rgb/`` and/or ``xyz/``) or dataset folders.

    A dataset folder is searched recursively for sample folders. Files given directly are
    paired by stem.

    Raises:
        DatasetError: A path does not exist, has an unsupported type, or holds no samples.
    """
    records: list[SampleRecord] = []
    loose: list[Path] = []
    for raw in inputs:
        path = Path(raw)
        if path.is_file():
            loose.append(path)
        elif path.is_dir():
            folders = sorted({p.parent for p in path.rglob("*") if p.is_dir() and p.name in ("rgb", "xyz")})
            found = [r for f in folders for r in _sample_folder(f)]
            if not found:
                raise DatasetError(path, "no samples found (expected rgb/ or xyz/ folders with .png/.tiff files)")
            records.extend(found)
        else:
            raise DatasetError(path, "does not exist")
    if loose:
        records.extend(_records_from_files(loose, "files"))
    return records
