"""An experiment's output folder: what it holds, when it may be reused, and the run metadata.

A folder belongs to one configuration (the resolved config without ``rows``/``categories``, plus
the dataset path). Running the same configuration again resumes it; another configuration is
refused unless the caller asks to overwrite, which deletes only cmdiad's own files.
"""

from __future__ import annotations

import json
import logging
import os
import platform
from collections.abc import Mapping
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import numpy as np
import torch

from cmdiad import __version__
from cmdiad.errors import ConfigError
from cmdiad.synthetic.generator import dataset_settings

logger = logging.getLogger(__name__)

OWN_FILES: tuple[str, ...] = (
    "results.json", "results.csv", "results.md", "timings.json", "timings.md", "run.json", "config.json",
    "report.html",
)
RAW = "raw"
_SCOPE_KEYS = ("rows", "categories")  # a folder may gather more rows or categories of one configuration


def _flatten(value: Any, prefix: str = "") -> dict[str, Any]:
    if isinstance(value, Mapping):
        flat: dict[str, Any] = {}
        for k, v in value.items():
            flat.update(_flatten(v, f"{prefix}{k}."))
        return flat
    return {prefix.rstrip("."): value}


def identity(config: Mapping[str, Any], dataset: Path) -> dict[str, Any]:
    """What must match for two runs to share a folder: the config less rows/categories, and the dataset."""
    return {**_flatten({k: v for k, v in config.items() if k not in _SCOPE_KEYS}),
            "dataset": str(Path(dataset).resolve())}


def _saved_identity(out: Path) -> dict[str, Any] | None:
    try:
        config = json.loads((out / "config.json").read_text(encoding="utf-8"))
        run = json.loads((out / "run.json").read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError):
        return None
    if not isinstance(config, dict) or not isinstance(run, dict) or "dataset" not in run:
        return None
    return identity(config, Path(run["dataset"]))


def own_outputs(out: Path) -> list[Path]:
    """cmdiad's files in ``out``: the result files and the ``raw/<row>/<category>.npz`` files."""
    found = [out / name for name in OWN_FILES if (out / name).is_file()]
    return found + sorted((out / RAW).glob("*/*.npz"))


def clear_outputs(out: Path) -> int:
    """Delete cmdiad's own files in ``out`` (and raw folders left empty); other files stay.

    Returns:
        How many files were deleted.
    """
    files = own_outputs(out)
    for path in files:
        path.unlink()
    raw = out / RAW
    for folder in sorted(raw.glob("*"), reverse=True) + [raw]:
        if folder.is_dir() and not any(folder.iterdir()):
            folder.rmdir()
    logger.info("--overwrite: deleted %d earlier result files in %s", len(files), out)
    return len(files)


def check_output(out: Path, config: Mapping[str, Any], dataset: Path, *, overwrite: bool) -> None:
    """Make ``out`` ready for a run of ``config`` on ``dataset`` without creating it.

    A missing folder or one without cmdiad results is fine; one with results of the same
    configuration is resumed by the caller; ``overwrite`` clears earlier results.

    Raises:
        ConfigError: ``out`` holds results of another (or an unknown) configuration.
    """
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: --out exists and is not a folder")
    if not out.exists() or not own_outputs(out):
        return
    if overwrite:
        clear_outputs(out)
        return
    saved = _saved_identity(out)
    wanted = identity(config, dataset)
    if saved == wanted:
        return
    if saved is None:
        why = "its config.json/run.json are missing or unreadable"
    else:
        keys = sorted(k for k in saved.keys() | wanted.keys() if saved.get(k) != wanted.get(k))
        why = "its configuration differs in " + ", ".join(keys[:6]) + (" ..." if len(keys) > 6 else "")
    raise ConfigError(f"{out}: holds results of another run ({why}); pass --overwrite to replace them "
                      "(only cmdiad's files are deleted) or choose another --out folder")


def run_metadata(
    dataset: Path, *, seed: int, device: str, command: str = "", extra: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """run.json content: versions, machine, dataset, seed, command and start time (UTC), and for a
    generated dataset the settings that made it (``synthetic``)."""
    return {
        "cmdiad_version": __version__,
        "command": command,
        "dataset": str(Path(dataset).resolve()),
        "seed": seed,
        "device": device,
        "machine": platform.node(),
        "platform": platform.platform(),
        "cpu": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "started": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        **({"synthetic": settings} if (settings := dataset_settings(dataset)) is not None else {}),
        **dict(extra or {}),
    }
