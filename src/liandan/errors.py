"""User-facing errors.

Every problem a user can cause (bad data, bad config, bad files) is raised as one of
these. Each carries *what* went wrong, *where* (a file or a config key) and a *hint*
on what to do. The CLI prints them as one clear message and exits 1; it never builds
them itself.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path


class LiandanError(Exception):
    """Base class of the errors a user can cause and fix.

    Args:
        message: what went wrong, in one sentence.
        where: the file, folder or config key concerned (optional).
        hint: what to do about it (optional).
        items: further offending entries (e.g. every bad file), listed in full.
    """

    kind = "error"

    def __init__(
        self,
        message: str,
        *,
        where: str | Path | None = None,
        hint: str | None = None,
        items: Iterable[str] | None = None,
    ) -> None:
        self.message = message
        self.where = str(where) if where is not None else None
        self.hint = hint
        self.items = list(items or [])
        super().__init__(self.render())

    def render(self) -> str:
        """The full message as printed to the user."""
        text = self.message
        if self.where:
            text = f"{self.where}: {text}"
        if self.items:
            text += "\n" + "\n".join(f"  - {item}" for item in self.items)
        if self.hint:
            text += f"\nhint: {self.hint}"
        return text


class DataError(LiandanError):
    """A problem with the user's dataset: missing files, bad images or masks."""

    kind = "data error"


class ConfigError(LiandanError):
    """A problem with the configuration: unknown key, wrong type, bad value."""

    kind = "config error"


class CheckpointError(LiandanError):
    """A run folder or checkpoint that cannot be used."""

    kind = "checkpoint error"


class OutputError(LiandanError):
    """A place to write outputs that cannot be used: a file where a folder is needed,
    no permission, a bad run name, or a file liandan would replace but did not write."""

    kind = "output error"


class TrainingStopped(LiandanError):
    """Training was stopped on purpose, e.g. by the training doctor."""

    kind = "training stopped"


class TrainingInterrupted(Exception):
    """Training was interrupted (Ctrl-C, SIGTERM) after ``last`` was written; exit 130.

    Not a LiandanError: nothing is wrong with the user's input, and the CLI exits 130.
    """
