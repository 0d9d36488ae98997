"""Cheap checks of folder layouts (datasets, model folders), importing neither torch nor numpy.

The CLI runs them before it loads models, so that a mistyped path or category fails at once.
"""

from __future__ import annotations

from pathlib import Path

from cmdiad.errors import DatasetError, ModelFileError

MODEL_ENTRIES = frozenset({"detector.json", "model.safetensors", "router.json", "banks", "distiller", "both", "xyz",
                           "rgb"})
"""Names a cmdiad model folder (one detector or a model set) may hold."""


def list_categories(root: Path | str) -> list[str]:
    """Category folder names under ``root``, sorted; a category holds ``train/`` or ``test/``.

    Raises:
        DatasetError: ``root`` is not a folder or holds no category.
    """
    root = Path(root)
    if not root.is_dir():
        raise DatasetError(root, "dataset root is not a folder")
    cats = [p.name for p in sorted(root.iterdir()) if p.is_dir() and ((p / "train").is_dir() or (p / "test").is_dir())]
    if not cats:
        raise DatasetError(root, "no category folders (with train/ or test/) found; not an MVTec-3D-style dataset")
    return cats


def categories_hint(root: Path | str) -> str:
    """``"; categories in ROOT: a, b"`` for error messages, or ``""`` when ``root`` has none."""
    try:
        return f"; categories in {root}: {', '.join(list_categories(root))}"
    except DatasetError:
        return ""


def check_category(root: Path | str, category: str) -> Path:
    """The folder of ``category`` under the dataset ``root``; the error lists the existing ones.

    Raises:
        DatasetError: ``root`` is not a dataset, or it has no such category.
    """
    cats = list_categories(root)
    if category not in cats:
        raise DatasetError(Path(root) / category, f"category folder not found; categories in {root}: {', '.join(cats)}")
    return Path(root) / category


def is_model_folder(path: Path | str) -> bool:
    """True for a folder written by ``save_detector`` or ``Router.save`` (and nothing else in it)."""
    path = Path(path)
    if not path.is_dir():
        return False
    names = {p.name for p in path.iterdir()}
    return bool(names & {"detector.json", "router.json"}) and names <= MODEL_ENTRIES


def check_model_target(path: Path | str) -> None:
    """Refuse to write a model over a file or over a folder with other content.

    Raises:
        ModelFileError: ``path`` is a file, or a non-empty folder that is not a cmdiad model.
    """
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise ModelFileError(path, "exists and is a file; give a folder path for the model")
    if path.is_dir() and any(path.iterdir()) and not is_model_folder(path):
        raise ModelFileError(path, "is a folder with other content, not a cmdiad model; refusing to overwrite it "
                             "(choose another --out or empty it)")


def check_model_folder(path: Path | str) -> None:
    """Fail fast, before loading anything, when ``path`` is not a cmdiad model folder or ``.onnx`` file.

    Raises:
        ModelFileError: ``path`` does not exist, is another file, or has no detector.json/router.json.
    """
    path = Path(path)
    if path.suffix.lower() == ".onnx" and path.is_file():
        return  # an exported model; its metadata is checked when it is loaded
    if not path.is_dir():
        raise ModelFileError(path, "not a model folder (it does not exist or is a file)")
    if not ((path / "detector.json").is_file() or (path / "router.json").is_file()):
        raise ModelFileError(path, "not a cmdiad model folder (no detector.json or router.json in it)")
