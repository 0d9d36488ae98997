"""Reading a saved artefact's files (model, distiller, router), one way for all: JSON metadata and tensors.

Every reader checks the same things in the same order and raises :class:`~cmdiad.errors.ModelFileError`
naming the file: it exists, it is UTF-8 JSON holding an object, its ``format`` is the expected one,
its version is one this cmdiad reads, and the required keys are there.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path

from cmdiad.errors import ModelFileError


def read_json_object(path: Path | str, *, what: str) -> dict:
    """The JSON object in ``path``.

    Raises:
        ModelFileError: The file is missing, unreadable, not JSON, or not a JSON object.
    """
    path = Path(path)
    if not path.is_file():
        raise ModelFileError(path, f"missing: no {what} metadata file here")
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(path, f"corrupted {what} file, not readable JSON ({exc})") from exc
    if not isinstance(meta, dict):
        raise ModelFileError(path, f"not a cmdiad {what} file (it holds a JSON {type(meta).__name__})")
    return meta


def read_meta(
    path: Path | str,
    fmt: str,
    versions: int | Collection[int],
    *,
    what: str,
    version_key: str = "version",
    required: Collection[str] = (),
) -> dict:
    """A metadata object of format ``fmt`` at one of ``versions``, with the ``required`` keys.

    Args:
        path: The JSON file.
        fmt: Expected value of its ``format`` key.
        versions: The version(s) this cmdiad reads.
        what: What the file describes, for messages ("detector", "distiller").
        version_key: Name of the version key.
        required: Keys that must be present.

    Raises:
        ModelFileError: Naming ``path`` and what is wrong.
    """
    meta = read_json_object(path, what=what)
    if meta.get("format") != fmt:
        raise ModelFileError(path, f"not a cmdiad {what} (format {meta.get('format')!r}, expected {fmt!r})")
    readable = {versions} if isinstance(versions, int) else set(versions)
    if meta.get(version_key) not in readable:
        raise ModelFileError(path, f"{what} format version {meta.get(version_key)!r} is not supported (this cmdiad "
                             f"reads version {', '.join(str(v) for v in sorted(readable))})")
    missing = sorted(set(required) - set(meta))
    if missing:
        raise ModelFileError(path, f"missing key(s) {', '.join(missing)}")
    return meta


def read_tensors(path: Path | str, *, missing: str) -> dict:
    """The tensors of the safetensors file ``path`` (a dict of name -> torch.Tensor).

    Args:
        path: The file.
        missing: What to say when it does not exist.

    Raises:
        ModelFileError: It is missing or not a readable safetensors file.
    """
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    path = Path(path)
    if not path.is_file():
        raise ModelFileError(path, f"missing: {missing}")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError, RuntimeError) as exc:
        raise ModelFileError(path, f"corrupted safetensors file ({exc})") from exc


__all__ = ["read_json_object", "read_meta", "read_tensors"]
