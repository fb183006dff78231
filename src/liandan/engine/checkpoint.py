"""Checkpoints that survive a kill, and that load without running foreign code.

Every checkpoint is written to a temporary file in the same folder, fsynced, then
renamed over the old one (a rename is atomic on POSIX filesystems), so ``best.ckpt``
and ``last.ckpt`` are always either the old complete file or the new complete one.
Before a new ``last.ckpt`` replaces the old one, the old one is kept as
``last-prev.ckpt``: one loadable checkpoint exists at every moment, even if a disk
error damages the newest. Temporary files a killed process left behind are removed
when the next training starts in that folder.

Loading uses ``torch.load(weights_only=True)``: tensors, numbers, strings and
containers only. A checkpoint that needs arbitrary unpickling (which can run any
code) is refused unless the user opts in with ``--unsafe-load`` /
``train.unsafe_load: true``.
"""

from __future__ import annotations

import io
import logging
import pickle
import time
from pathlib import Path
from typing import Any

import torch
from lightning.fabric.plugins.io.torch_io import TorchCheckpointIO
from lightning.pytorch.callbacks import Checkpoint

# checkpoints are written by the one atomic writer, re-exported here for its callers
from liandan.atomic import TMP_SUFFIX as TMP_SUFFIX
from liandan.atomic import WRITE_DELAY_ENV as WRITE_DELAY_ENV
from liandan.atomic import previous_path as previous_path
from liandan.atomic import write_atomic as write_atomic
from liandan.errors import CheckpointError

log = logging.getLogger("liandan")


def clean_temporary(folder: Path) -> list[Path]:
    """Remove the temporary files a killed writer left in ``folder``; return them."""
    removed = []
    if folder.is_dir():
        for item in folder.glob(f".*{TMP_SUFFIX}"):
            if item.is_file():
                item.unlink(missing_ok=True)
                removed.append(item)
    if removed:
        log.info("removed %d unfinished checkpoint file(s) in %s", len(removed), folder)
    return removed


def load_checkpoint_file(
    path: str | Path, *, unsafe: bool = False, map_location: Any = "cpu"
) -> Any:
    """Load a checkpoint with ``weights_only=True``, or refuse it with a clear error.

    Args:
        path: the checkpoint file.
        unsafe: allow arbitrary unpickling (only for files the user trusts).
        map_location: passed to ``torch.load``.

    Raises:
        CheckpointError: the file is missing or damaged, or needs unsafe unpickling.
    """
    path = Path(path)
    if not path.is_file():
        raise CheckpointError("checkpoint not found", where=path)
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as exc:
        if "weights only" not in str(exc).lower() and "weights_only" not in str(exc).lower():
            raise CheckpointError(
                f"the checkpoint is damaged ({type(exc).__name__}: {str(exc)[:200]})",
                where=path,
            ) from None
        if not unsafe:
            raise CheckpointError(
                "the checkpoint holds Python objects that only arbitrary unpickling can "
                "load, and unpickling can run any code",
                where=path,
                hint="if you trust this file, add --unsafe-load (config train.unsafe_load: true)",
            ) from None
    except Exception as exc:
        raise CheckpointError(
            f"the checkpoint is damaged or incomplete ({type(exc).__name__}: {str(exc)[:200]})",
            where=path,
            hint="a kill during writing cannot cause this (writes are atomic); "
            "the file was changed or the disk is failing",
        ) from None
    log.warning("loading %s with arbitrary unpickling (--unsafe-load)", path)
    return torch.load(path, map_location=map_location, weights_only=False)


class AtomicCheckpointIO(TorchCheckpointIO):
    """Lightning checkpoint IO: atomic writes, ``last-prev`` kept, safe loading.

    Args:
        unsafe_load: allow checkpoints that need arbitrary unpickling.
    """

    def __init__(self, unsafe_load: bool = False) -> None:
        super().__init__()
        self.unsafe_load = unsafe_load

    def save_checkpoint(
        self, checkpoint: dict[str, Any], path: Any, storage_options: Any | None = None
    ) -> None:
        buffer = io.BytesIO()
        torch.save(checkpoint, buffer)
        target = Path(path)
        write_atomic(target, buffer.getvalue(), keep_previous=target.stem == "last")

    def load_checkpoint(
        self, path: Any, map_location: Any | None = None, weights_only: bool | None = None
    ) -> dict[str, Any]:
        loaded = load_checkpoint_file(
            path, unsafe=self.unsafe_load, map_location=map_location or "cpu"
        )
        if not isinstance(loaded, dict):
            raise CheckpointError("not a Lightning checkpoint (no dict inside)", where=path)
        return loaded


def find_resume_checkpoint(run_dir: Path, *, unsafe: bool = False) -> Path:
    """The newest complete checkpoint of a run: ``last``, else ``last-prev``.

    A damaged ``last`` is never skipped silently: the fallback is logged as a warning.

    Raises:
        CheckpointError: no checkpoint of the run can be loaded.
    """
    folder = run_dir / "checkpoints"
    clean_temporary(folder)
    last = folder / "last.ckpt"
    candidates = [last, previous_path(last)]  # best.ckpt holds weights only
    problems = []
    for candidate in candidates:
        if not candidate.is_file():
            problems.append(f"{candidate.name}: missing")
            continue
        try:
            state = load_checkpoint_file(candidate, unsafe=unsafe)
        except CheckpointError as exc:
            if "unpickling" in exc.message:
                raise
            problems.append(f"{candidate.name}: {exc.message}")
            continue
        if candidate != last:
            log.warning(
                "%s cannot be used (%s); resuming from %s (epoch %s) instead",
                last,
                "; ".join(problems),
                candidate.name,
                state.get("epoch", "?") if isinstance(state, dict) else "?",
            )
        return candidate
    raise CheckpointError(
        "no complete checkpoint to resume from",
        where=folder,
        items=problems,
        hint="the run never finished an epoch; start it again with liandan train",
    )


class LastCheckpoint(Checkpoint):
    """Writes ``checkpoints/last.ckpt`` (the full state a resume needs), when it pays.

    At the end of a training epoch it writes when ``every_s`` seconds have passed since
    the last write, after the first epoch, after the run's last epoch, and when a stop
    is coming (Ctrl-C / SIGTERM, the budget, early stopping). Epochs of a few seconds
    then do not pay for a full checkpoint each (weights plus optimizer state, three
    times the weights with AdamW). Lightning's ``ModelCheckpoint(save_last=True)`` (2.6)
    only refreshes ``last`` where ``best`` improved; a resume must start from the
    newest epoch. Being a ``Checkpoint`` callback, it runs after the others
    (ModelCheckpoint, EarlyStopping), so their states in the file are this epoch's.

    When training ends normally, ``last-prev.ckpt`` (kept while training so that one
    complete checkpoint exists at every moment) is removed: a finished run keeps one
    resumable checkpoint.

    Args:
        dirpath: the run's ``checkpoints`` folder.
        every_s: seconds between writes at most (0: every epoch).
    """

    def __init__(self, dirpath: Path, every_s: float = 0.0) -> None:
        self.dirpath = dirpath
        self.every_s = every_s
        self.saved_epoch: int | None = None  # the epoch whose end last.ckpt holds
        self._saved_at = time.monotonic()

    def _stopping(self, trainer: Any) -> bool:
        if trainer.should_stop or trainer.current_epoch + 1 >= (trainer.max_epochs or 0):
            return True
        return any(getattr(cb, "requested", None) is not None for cb in trainer.callbacks)

    def on_train_epoch_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.sanity_checking:
            return
        due = time.monotonic() - self._saved_at >= self.every_s
        if due or self.saved_epoch is None or self._stopping(trainer):
            self.save(trainer)

    def save(self, trainer: Any) -> None:
        trainer.save_checkpoint(self.dirpath / "last.ckpt")
        self.saved_epoch = trainer.current_epoch
        self._saved_at = time.monotonic()

    def on_fit_end(self, trainer: Any, pl_module: Any) -> None:
        if trainer.is_global_zero and (self.dirpath / "last.ckpt").is_file():
            previous_path(self.dirpath / "last.ckpt").unlink(missing_ok=True)
