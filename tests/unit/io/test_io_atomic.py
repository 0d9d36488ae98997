"""The one atomic writer: whole replacement, nothing left behind on failure, umask permissions."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from cmdiad.io.atomic import atomic_dir, atomic_path, atomic_write_text, umask


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_atomic_write_text_uses_umask_permissions(tmp_path: Path, umask_022) -> None:
    path = tmp_path / "a" / "x.json"
    atomic_write_text(path, "{}")
    assert path.read_text() == "{}" and _mode(path) == 0o644
    atomic_write_text(path, "[1]")
    assert path.read_text() == "[1]" and [p.name for p in path.parent.iterdir()] == ["x.json"]


def test_atomic_path_keeps_suffix_and_cleans_up_on_error(tmp_path: Path) -> None:
    target = tmp_path / "t.npz"
    with pytest.raises(RuntimeError), atomic_path(target) as tmp:
        assert tmp.suffix == ".npz" and tmp.parent == tmp_path
        tmp.write_text("half")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_atomic_dir_replaces_whole_folder_with_umask_modes(tmp_path: Path, umask_022) -> None:
    out = tmp_path / "model"
    (out / "old_sub").mkdir(parents=True)
    (out / "old.txt").write_text("old")
    with atomic_dir(out) as tmp:
        (tmp / "sub").mkdir()
        (tmp / "sub" / "new.txt").write_text("new")
    assert sorted(p.name for p in out.iterdir()) == ["sub"]  # nothing of the old folder survives
    assert _mode(out) == _mode(out / "sub") == 0o755 and _mode(out / "sub" / "new.txt") == 0o644
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]  # no temp or old folder left


def test_atomic_dir_failure_leaves_the_old_folder(tmp_path: Path) -> None:
    out = tmp_path / "model"
    out.mkdir()
    (out / "keep.txt").write_text("keep")
    with pytest.raises(ValueError), atomic_dir(out) as tmp:
        (tmp / "partial.txt").write_text("x")
        raise ValueError("fails half-way")
    assert [p.name for p in out.iterdir()] == ["keep.txt"] and (out / "keep.txt").read_text() == "keep"
    assert [p.name for p in tmp_path.iterdir()] == ["model"]


def test_umask_is_read_without_changing_it() -> None:
    before = os.umask(0o027)
    try:
        assert umask() == 0o027 and umask() == 0o027
    finally:
        os.umask(before)
