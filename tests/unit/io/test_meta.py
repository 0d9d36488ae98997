"""The one reader of saved artefacts' JSON metadata: every failure names the file and the problem."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from cmdiad.errors import ModelFileError
from cmdiad.io.meta import read_meta


def _write(tmp_path: Path, content) -> Path:  # noqa: ANN001
    path = tmp_path / "thing.json"
    path.write_text(content if isinstance(content, str) else json.dumps(content))
    return path


@pytest.mark.parametrize(("content", "message"), [
    ("{not json", "not readable JSON"),
    ([1, 2], "holds a JSON list"),
    ({"format": "other", "version": 1}, "format 'other'"),
    ({"format": "fmt", "version": 7}, "version 7 is not supported"),
    ({"format": "fmt", "version": 1}, "missing key.*needed"),
])
def test_each_problem_is_a_model_file_error_naming_the_file(tmp_path: Path, content, message: str) -> None:
    path = _write(tmp_path, content)
    with pytest.raises(ModelFileError, match=message) as info:
        read_meta(path, "fmt", (1, 2), what="thing", required=("needed",))
    assert info.value.path == path


def test_a_good_file_and_a_missing_one(tmp_path: Path) -> None:
    path = _write(tmp_path, {"format": "fmt", "v": 2, "needed": 0})
    assert read_meta(path, "fmt", 2, what="thing", version_key="v", required=("needed",))["needed"] == 0
    with pytest.raises(ModelFileError, match="missing"):
        read_meta(tmp_path / "nope.json", "fmt", 1, what="thing")
