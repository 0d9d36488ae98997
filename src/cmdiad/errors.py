"""Exceptions with messages meant for users."""

from __future__ import annotations

from pathlib import Path


class CmdiadError(Exception):
    """Base class of every error cmdiad raises on purpose."""


class DatasetError(CmdiadError):
    """A dataset file or folder is missing, unreadable or malformed.

    Args:
        path: The offending file or folder.
        problem: What is wrong, in plain words.
    """

    def __init__(self, path: Path | str, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")


class ConfigError(CmdiadError):
    """A configuration value or file is invalid."""


class ModelFileError(CmdiadError):
    """A saved model or weights file is missing, foreign, corrupted or of the wrong format.

    Args:
        path: The offending file or directory.
        problem: What is wrong.
    """

    def __init__(self, path: Path | str, problem: str) -> None:
        self.path = Path(path)
        self.problem = problem
        super().__init__(f"{self.path}: {problem}")
