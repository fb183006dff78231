"""Callbacks: history.csv, random states for exact resume, graceful Ctrl-C / SIGTERM."""

from __future__ import annotations

import csv
import io
import json
import logging
import math
import random
import signal
import threading
import time
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from liandan.errors import TrainingInterrupted
from liandan.runs import atomic_write_text

log = logging.getLogger("liandan")


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def any_rank(trainer: L.Trainer, flag: bool) -> bool:
    """``flag`` or'ed over every DDP process (``flag`` itself in a single process).

    Decisions that end training (a signal, a NaN, the budget) must be taken by all
    ranks at the same step: a rank going on alone waits forever in the next gradient
    all-reduce. A trainer without a strategy (a test double) is one process.
    """
    strategy = getattr(trainer, "strategy", None)
    if strategy is None:
        return flag
    return bool(strategy.reduce_boolean_decision(flag, all=False))


def is_rank_zero(trainer: L.Trainer) -> bool:
    """Whether this process writes the run's files (rank 0; a test double counts as it)."""
    return bool(getattr(trainer, "is_global_zero", True))


class HistoryCallback(L.Callback):
    """Writes ``history.csv``: epoch, step, time_s, lr per group, losses, val metrics."""

    def __init__(self, path: Path, *, log_epochs: bool = False) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = []
        self.start = time.perf_counter()
        self.log_epochs = log_epochs  # one line per epoch where no progress bar is drawn

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        m = trainer.callback_metrics
        row: dict[str, Any] = {
            "epoch": trainer.current_epoch + 1,
            "step": trainer.global_step,
            "time_s": round(time.perf_counter() - self.start, 3),
        }
        for optimizer in trainer.optimizers:
            for i, group in enumerate(optimizer.param_groups):
                row[f"lr_{group.get('name', i)}"] = group["lr"]
        row["train_loss"] = _number(m.get("train/loss_epoch", m.get("train/loss")))
        row["val_loss"] = _number(m.get("val/loss"))
        for key, value in sorted(m.items()):
            if key.startswith("val/") and key != "val/loss":
                row["val_" + key[4:]] = _number(value)
        self.rows.append(row)
        self.write()
        if self.log_epochs:
            shown = [
                f"{k} {v:.4g}"
                for k, v in row.items()
                if k in ("train_loss", "val_loss")
                or (
                    k.startswith("val_")
                    and v is not None
                    and k in ("val_mean_iou", "val_macro_f1", "val_accuracy")
                )
            ]
            log.info(
                "epoch %d/%d (%.0f s): %s",
                row["epoch"],
                trainer.max_epochs or 0,
                row["time_s"],
                ", ".join(s for s in shown if "None" not in s),
            )

    def write(self) -> None:
        fields: list[str] = []
        for row in self.rows:
            fields += [k for k in row if k not in fields]
        # the training doctor's findings of the epoch come last, empty when there are none
        fields = [k for k in fields if k != "doctor"] + ["doctor"]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=fields)
        writer.writeheader()
        for row in self.rows:
            writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in fields})
        atomic_write_text(self.path, buffer.getvalue())

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict.get("rows", []))


class RandomStateCallback(L.Callback):
    """Saves and restores every random state of training with each checkpoint.

    Lightning restores model, optimizer, scheduler and loop counters, not random
    generators. Without them a resumed run shuffles and augments differently from an
    uninterrupted one. Saved: Python, NumPy and torch global states, the train
    loader's seeded generator (shuffling, sampler) and the augmentation pipeline's
    generators (main process). Restored with the checkpoint, after model set-up and
    before Lightning creates the first loader iterator. Worker processes (``train.num_workers`` > 0) reseed
    their augmentation from the loader's generator, so their streams restart at a
    resume: exact resume needs ``num_workers: 0`` (the default for cached data).
    """

    def state_dict(self) -> dict[str, Any]:
        np_state: Any = np.random.get_state()  # ('MT19937', keys, pos, has_gauss, gauss)
        state: dict[str, Any] = {
            "python": _python_state_to_list(random.getstate()),
            "numpy": {
                "keys": torch.from_numpy(np.asarray(np_state[1], dtype=np.int64)),
                "pos": int(np_state[2]),
                "has_gauss": int(np_state[3]),
                "cached_gaussian": float(np_state[4]),
            },
            "torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
        }
        loader = self._loader
        if loader is not None:
            if isinstance(loader.generator, torch.Generator):
                state["loader"] = loader.generator.get_state()
            state["augment"] = [_generator_state(g) for g in _augment_generators(loader)]
        return state

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        # before the checkpoint is restored and before Lightning creates the first
        # loader iterator (which draws a worker base seed from the loader's generator)
        self._loader = _train_loader(trainer)

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        if not state_dict:
            return
        version, internal, gauss = state_dict["python"]
        random.setstate((version, tuple(internal), gauss))
        nps = state_dict["numpy"]
        keys = nps["keys"].numpy().astype(np.uint32)
        np.random.set_state(("MT19937", keys, nps["pos"], nps["has_gauss"], nps["cached_gaussian"]))
        torch.set_rng_state(state_dict["torch"])
        if state_dict.get("cuda") and torch.cuda.is_available():
            torch.cuda.set_rng_state_all(state_dict["cuda"])
        loader = self._loader
        if loader is None:
            log.warning("the train loader is unknown: its shuffling state was not restored")
            return
        if "loader" in state_dict and isinstance(loader.generator, torch.Generator):
            loader.generator.set_state(state_dict["loader"])
        generators = _augment_generators(loader)
        if len(generators) == len(state_dict.get("augment", [])):
            for generator, saved in zip(generators, state_dict["augment"], strict=True):
                _set_generator_state(generator, saved)
        else:
            log.warning("augmentation changed since the checkpoint: its random state is new")

    _loader: Any = None


def _train_loader(trainer: L.Trainer) -> Any:
    """The DataLoader given to ``trainer.fit`` (known before the loop sets up its data)."""
    loader = trainer.train_dataloader
    if loader is None:  # Lightning keeps the fit() argument here until the loop starts
        source = getattr(trainer.fit_loop, "_data_source", None)
        loader = getattr(source, "instance", None)
    return loader if hasattr(loader, "generator") and hasattr(loader, "dataset") else None


def _augment_generators(loader: Any) -> list[Any]:
    """The generators of the train dataset's augmentation, in a fixed order."""
    found: list[Any] = []

    def walk(node: Any, depth: int = 0) -> None:
        if depth > 8:
            return
        for attr in ("rng", "random_generator", "py_random"):
            generator = getattr(node, attr, None)
            if isinstance(generator, np.random.Generator | random.Random):
                found.append(generator)
        for attr in ("geometric", "transforms"):
            child = getattr(node, attr, None)
            children = child if isinstance(child, list | tuple) else [child]
            for item in children:
                if item is not None and not isinstance(item, str | int | float):
                    walk(item, depth + 1)

    augment = getattr(loader.dataset, "augment", None)
    if augment is not None:
        walk(augment)
    return found


def _generator_state(generator: Any) -> str:
    # JSON text: a PCG64 state holds 128-bit integers, kept exact and weights_only-safe
    if isinstance(generator, random.Random):
        return json.dumps(_python_state_to_list(generator.getstate()))
    return json.dumps(generator.bit_generator.state)


def _set_generator_state(generator: Any, saved: str) -> None:
    state = json.loads(saved)
    if isinstance(generator, random.Random):
        version, internal, gauss = state
        generator.setstate((version, tuple(internal), gauss))
    else:
        generator.bit_generator.state = state


def _python_state_to_list(state: tuple[Any, ...]) -> list[Any]:
    version, internal, gauss = state
    return [version, list(internal), gauss]


def resume_command(run_dir: Path) -> str:
    return f"liandan train --resume {run_dir}"


class GracefulStop(L.Callback):
    """Ctrl-C (SIGINT) and SIGTERM stop training after the current step, with ``last`` saved.

    The first signal only sets a flag; at the end of the running step the callback
    writes ``checkpoints/last.ckpt`` and raises :class:`TrainingInterrupted` (the CLI
    exits 130 and prints how to resume). A second Ctrl-C stops at once.
    """

    def __init__(self, run_dir: Path) -> None:
        self.run_dir = run_dir
        self.requested: int | None = None
        self._previous: dict[int, Any] = {}

    def _handle(self, signum: int, frame: Any) -> None:
        if self.requested is not None and signum == signal.SIGINT:
            self._restore()
            # not KeyboardInterrupt: Lightning turns that into exit code 1
            raise TrainingInterrupted(
                "stopped at once (second Ctrl-C); checkpoints/last.ckpt is from the last "
                f"completed epoch. Continue with: {resume_command(self.run_dir)}"
            )
        self.requested = signum
        log.warning(
            "%s received: stopping after the current step (Ctrl-C again to stop at once)",
            signal.Signals(signum).name,
        )

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if threading.current_thread() is not threading.main_thread():
            return
        for signum in (signal.SIGINT, signal.SIGTERM):
            self._previous[signum] = signal.getsignal(signum)
            signal.signal(signum, self._handle)

    def _restore(self) -> None:
        for signum, handler in self._previous.items():
            signal.signal(signum, handler)
        self._previous.clear()

    def _stop(self, trainer: L.Trainer, save: bool) -> None:
        signum = self.requested
        assert signum is not None
        if save:
            trainer.save_checkpoint(self.run_dir / "checkpoints" / "last.ckpt")
        self._restore()
        raise TrainingInterrupted(
            f"{signal.Signals(signum).name}: training stopped at epoch "
            f"{trainer.current_epoch + 1}, step {trainer.global_step}; "
            f"checkpoints/last.ckpt written. Continue with: {resume_command(self.run_dir)}"
        )

    def _agreed(self, trainer: L.Trainer) -> bool:
        """Whether any rank got a signal: under DDP all ranks stop at the same step
        (checkpoint saving waits for every rank; a rank training on alone would hang)."""
        stop = any_rank(trainer, self.requested is not None)
        if stop and self.requested is None:  # the signal reached another rank only
            self.requested = signal.SIGTERM
        return stop

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self._agreed(trainer):
            self._stop(trainer, save=True)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if self._agreed(trainer):  # was last.ckpt written at the end of the last epoch?
            written = [getattr(cb, "saved_epoch", None) for cb in trainer.checkpoint_callbacks]
            self._stop(trainer, save=trainer.current_epoch - 1 not in written)

    def on_train_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._restore()

    def on_exception(
        self, trainer: L.Trainer, pl_module: L.LightningModule, exception: BaseException
    ) -> None:
        self._restore()
