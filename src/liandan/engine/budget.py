"""`train.budget`: fit the run to a wall-clock budget instead of guessing an epoch count.

Two parts. Before the Trainer is built, :func:`fit_budget` times a few real training
steps and validation batches (a throwaway copy of the model, random states restored)
and sets ``train.epochs`` so that training, the final evaluation and the report end
within the budget; the LR schedule is then built for that epoch count, so a cosine
decay still reaches its floor. (Measuring during the first epochs instead would leave a
schedule sized for the wrong length.) During training, :class:`BudgetCallback` stops
early if epochs turn out slower than probed, and writes ``budget.json``: the budget, the
probe, the planned and run epochs and the actual time.
"""

from __future__ import annotations

import json
import logging
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping

from liandan.config import Config, parse_duration
from liandan.engine.batch_size import MIN_STEPS
from liandan.engine.callbacks import any_rank, is_rank_zero
from liandan.runs import atomic_write_json

SAFETY = 0.9  # plan for 90% of the budget: epochs vary (data loading, checkpoint writes)
REPORT_S = 5.0  # export, plots and report after training (measured: 2-4 s on 2 CPU cores)
REFIT_EPOCHS = 2  # the run length is re-fitted after each of the first epochs ...
REFIT_SHARE = 0.25  # ... and after every epoch in the first quarter of the run
LR_FIND_SHARE = 0.1  # of a budget the lr range test (optim.lr=auto) may take
# A shortened range test is not trusted: on the demo data, tests cut to 24-40 steps by a
# 2-minute budget suggested 3e-4, 4.6e-3 and 1.6e-2 for three seeds (RESULTS.md).
LR_FIND_MIN_STEPS = 100  # the full test (fastai's 100 steps) or the usual rate
FALLBACK_LR = {"sgd": 0.01, "adagrad": 0.01, "adadelta": 1.0}  # others: 1e-3 (Adam family)
# Fewer epochs than this would leave no room for the schedule's warmup and decay, early
# stopping or the best-epoch choice: epochs are shortened instead (train.steps_per_epoch,
# a random subset of the shuffled training set, or fewer random tiles of rasters).
MIN_BUDGET_EPOCHS = 10

log = logging.getLogger("liandan")


def epochs_for_budget(budget_s: float, epoch_s: float, overhead_s: float, max_epochs: int) -> int:
    """Epochs that fit ``SAFETY * budget_s`` after ``overhead_s``; at least 1.

    >>> epochs_for_budget(600, 10, 40, 300)
    50
    """
    usable = SAFETY * budget_s - overhead_s
    return int(max(1, min(max_epochs, usable // max(epoch_s, 1e-6))))


def steps_for_epochs(usable_s: float, epochs: int, step_s: float, val_s: float) -> int:
    """Training steps per epoch so that ``epochs`` epochs (each validated) fit
    ``usable_s``; at least ``MIN_STEPS``.

    >>> steps_for_epochs(100, 10, 0.5, 2)
    16
    """
    return int(max(MIN_STEPS, (usable_s / epochs - val_s) // max(step_s, 1e-6)))


def _steps(loader: Any, cap: int | None) -> int:
    return min(len(loader), cap) if cap else len(loader)


def time_probe(
    cfg: Config, bundle: Any, class_weights: torch.Tensor | None, steps: int = 3
) -> dict[str, float]:
    """Seconds per training step and per validation batch, measured on this device."""
    from liandan.engine.task import LiandanTask
    from liandan.lr_find import _rng_state, _set_rng_state

    state = _rng_state(bundle.train_loader)
    try:
        task = LiandanTask(cfg, bundle.classes.names, bundle.in_channels, class_weights)
        use_gpu = torch.cuda.is_available() and cfg.train.accelerator in ("auto", "gpu")
        device = torch.device("cuda" if use_gpu else "cpu")
        model, criterion = task.model.to(device), task.criterion.to(device)
        optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)

        def sync() -> None:
            if use_gpu:
                torch.cuda.synchronize()

        model.train()
        times = []
        batches = iter(bundle.train_loader)
        for i in range(steps + 1):  # the first step (allocation, cudnn autotune) is not timed
            try:
                x, y = next(batches)
            except StopIteration:
                batches = iter(bundle.train_loader)
                x, y = next(batches)
            start = time.perf_counter()
            loss = criterion(model(x.to(device)), y.to(device))
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            sync()
            if i:
                times.append(time.perf_counter() - start)
        model.eval()
        val_times = []
        with torch.no_grad():
            for i, (x, _) in enumerate(bundle.val_loader):
                start = time.perf_counter()
                model(x.to(device))
                sync()
                val_times.append(time.perf_counter() - start)
                if i >= 2:
                    break
    finally:
        _set_rng_state(bundle.train_loader, state)
    step_s = sorted(times)[len(times) // 2]
    return {"step_s": step_s, "val_batch_s": sum(val_times) / max(1, len(val_times))}


def lr_find_budget(
    cfg: Config, bundle: Any, class_weights: torch.Tensor | None
) -> tuple[int, dict[str, float]]:
    """Steps of the lr range test that fit ``LR_FIND_SHARE`` of the budget, and the probe.

    The range test runs 100 training steps; on a short budget that can be most of the
    run. Returns 0 steps when fewer than ``LR_FIND_MIN_STEPS`` fit: the caller then
    uses the optimizer's usual learning rate (:data:`FALLBACK_LR`) and says so.
    """
    from liandan.lr_find import STEPS

    assert cfg.train.budget is not None
    probe = time_probe(cfg, bundle, class_weights)
    fit = int(LR_FIND_SHARE * parse_duration(cfg.train.budget) / max(probe["step_s"], 1e-6))
    return (min(STEPS, fit) if fit >= LR_FIND_MIN_STEPS else 0), probe


def fit_budget(
    cfg: Config,
    bundle: Any,
    class_weights: torch.Tensor | None,
    run_dir: Path,
    spent_s: float = 0.0,
    probe: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Set ``cfg.train.epochs`` (and patience) to fit ``cfg.train.budget``; write budget.json.

    Args:
        cfg: the run's config, with ``train.budget`` set.
        bundle: the run's DataBundle (loaders).
        class_weights: the loss's class weights, as training uses them.
        run_dir: the run folder (``budget.json`` goes there).
        spent_s: seconds already used (data checks, lr-find) since the run started.
        probe: a :func:`time_probe` already measured for this run (else measured here).
    """
    assert cfg.train.budget is not None
    budget_s = parse_duration(cfg.train.budget)
    start = time.perf_counter()
    probe = probe or time_probe(cfg, bundle, class_weights)
    train_steps = _steps(bundle.train_loader, cfg.train.steps_per_epoch)
    val_s = len(bundle.val_loader) * probe["val_batch_s"]
    epoch_s = train_steps * probe["step_s"] + val_s
    spent_s += time.perf_counter() - start
    overhead_s = spent_s + 2 * val_s + REPORT_S  # final evaluation (+ samples) and report
    requested = cfg.train.epochs
    epochs = epochs_for_budget(budget_s, epoch_s, overhead_s, requested)
    shortened, whole = None, epochs
    target = min(MIN_BUDGET_EPOCHS, requested)
    if epochs < target and cfg.train.steps_per_epoch is None:
        shortened = steps_for_epochs(SAFETY * budget_s - overhead_s, target, probe["step_s"], val_s)
        if shortened < train_steps:
            cfg.train.steps_per_epoch = shortened
            epoch_s = shortened * probe["step_s"] + val_s
            epochs = epochs_for_budget(budget_s, epoch_s, overhead_s, requested)
            log.info(
                "train.budget=%s: %d whole epoch(s) of %d steps would fit; epochs cut to "
                "%d steps (train.steps_per_epoch) so %d fit, leaving room for the schedule, "
                "early stopping and the best-epoch choice",
                cfg.train.budget, whole, train_steps, shortened, epochs,
            )  # fmt: skip
        else:
            shortened = None
    cfg.train.epochs = epochs
    patience_from_budget = cfg.train.patience is None  # a patience you set is kept
    if patience_from_budget:
        cfg.train.patience = max(3, epochs // 4)  # early stopping on the monitored metric
    info = {
        "budget": cfg.train.budget,
        "after_training_s": round(2 * val_s + REPORT_S, 3),  # final evaluation and report
        "patience_from_budget": patience_from_budget,
        "budget_s": budget_s,
        "probe": {k: round(v, 5) for k, v in probe.items()},
        "estimated_epoch_s": round(epoch_s, 3),
        "spent_before_training_s": round(spent_s, 3),
        "epochs_requested": requested,
        "epochs_planned": epochs,
        "steps_per_epoch": shortened,  # set when whole epochs would be too few
        "patience": cfg.train.patience,
    }
    atomic_write_json(run_dir / "budget.json", info)
    return info


class BudgetCallback(L.Callback):
    """Re-fits the run to the first epochs' speed, stops before the budget would overrun.

    The probe before training times a few steps; an epoch also loads data, validates
    and writes checkpoints, and a shared machine's speed drifts. After each of the first
    ``REFIT_EPOCHS`` epochs, and every epoch in the first quarter of the run, the
    remaining epochs are re-fitted from the median measured epoch (the first left out
    once others exist: it carries one-off costs): ``max_epochs``, the step schedule's length (so a cosine decay still
    ends at its floor), early stopping's patience when the budget chose it, and
    ``train.epochs`` in config.yaml (a resume rebuilds the same schedule). Later, an
    epoch that would pass the budget is not started.
    """

    def __init__(
        self,
        budget_s: float,
        path: Path,
        spent_s: float = 0.0,
        *,
        after_s: float = REPORT_S,
        max_epochs: int | None = None,
        patience_from_budget: bool = False,
    ) -> None:
        self.budget_s = budget_s
        self.path = path
        self.spent_s = spent_s  # used before training started
        self.after_s = after_s  # final evaluation and report, after training
        self.max_epochs = max_epochs  # what the config allows (the budget fits below it)
        self.patience_from_budget = patience_from_budget
        self.start = time.perf_counter()
        self.epoch_times: list[float] = []
        self.refits: list[list[int]] = []  # [after epoch, new epochs]
        self.stopped = False
        self.resumed = False
        self._epoch_start = self.start

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = time.perf_counter()
        self.resumed = trainer.current_epoch > 0  # a resumed run keeps its fitted length

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.epoch_times.append(time.perf_counter() - self._epoch_start)
        stop = self.should_stop(time.perf_counter() - self.start)
        # ranks time their own epochs; under DDP all must stop after the same one
        if any_rank(trainer, stop):
            trainer.should_stop = True
            self.stopped = True
        elif not self.resumed and len(self.epoch_times) <= max(
            REFIT_EPOCHS, REFIT_SHARE * (trainer.max_epochs or 0)
        ):
            self.refit(trainer, pl_module)

    def fitted_epochs(self, done: int, elapsed_s: float) -> int:
        """Epochs in all: ``done`` plus those the median epoch's speed fits in the rest.

        >>> cb = BudgetCallback(100.0, Path("budget.json"), spent_s=10.0, after_s=5.0)
        >>> cb.epoch_times = [9.0, 4.0]
        >>> cb.fitted_epochs(2, 13.0)  # (0.9 * 100 - 10 - 5 - 13) / 4 = 15.5 more
        17
        """
        left = SAFETY * self.budget_s - self.spent_s - self.after_s - elapsed_s
        later = sorted(self.epoch_times[1:] or self.epoch_times)  # the first has one-off costs
        more = int(max(0.0, left) // max(later[len(later) // 2], 1e-6))
        total = done + more
        return min(total, self.max_epochs) if self.max_epochs else total

    def refit(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        """Set the run's length (epochs, schedule, patience) from the measured speed."""
        done = trainer.current_epoch + 1
        epochs = self.fitted_epochs(done, time.perf_counter() - self.start)
        if trainer.world_size > 1:  # every rank must agree on the length: rank 0's
            epochs = int(trainer.strategy.broadcast(epochs, src=0))
        if epochs <= done or epochs == trainer.max_epochs:
            return  # should_stop ends a run that cannot afford another epoch
        trainer.fit_loop.max_epochs = epochs
        for config in trainer.lr_scheduler_configs:
            length = getattr(config.scheduler, "run_length", None)
            if length is not None:
                length.epochs = epochs
        cfg = getattr(pl_module, "cfg", None)
        if cfg is not None:
            cfg.train.epochs = epochs
            if self.patience_from_budget:
                cfg.train.patience = max(3, epochs // 4)
        if self.patience_from_budget:
            for callback in trainer.callbacks:  # type: ignore[attr-defined]
                if isinstance(callback, EarlyStopping):
                    callback.patience = max(3, epochs // 4)
        self.refits.append([done, epochs])
        if is_rank_zero(trainer):
            config_path = self.path.with_name("config.yaml")
            if cfg is not None and config_path.is_file():
                cfg.save(config_path)  # a resume rebuilds this length

    def should_stop(self, elapsed_s: float) -> bool:
        """Whether one more epoch (as slow as the slowest after the first) would pass the budget."""
        if not self.epoch_times:
            return False
        left = self.budget_s - self.spent_s - self.after_s - elapsed_s
        # the first epoch carries one-off costs (workers, allocation, first checkpoint)
        later = self.epoch_times[1:] or self.epoch_times
        return max(later) > left

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not is_rank_zero(trainer):  # rank 0 writes the run's files
            return
        info: dict[str, Any] = {}
        if self.path.is_file():
            info = json.loads(self.path.read_text(encoding="utf-8"))
        info.update(
            epochs_run=len(self.epoch_times),
            train_s=round(time.perf_counter() - self.start, 3),
            mean_epoch_s=round(sum(self.epoch_times) / max(1, len(self.epoch_times)), 3),
            stopped_by_budget=self.stopped,
            refits=self.refits,
        )
        atomic_write_json(self.path, info)


def budget_callbacks(cfg: Config, run_dir: Path) -> list[L.Callback]:
    """``[BudgetCallback]`` when ``train.budget`` is set, else ``[]``."""
    if not cfg.train.budget:
        return []
    path = run_dir / "budget.json"
    info: dict[str, Any] = {}
    if path.is_file():
        info = json.loads(path.read_text(encoding="utf-8"))
    callback = BudgetCallback(
        parse_duration(cfg.train.budget),
        path,
        float(info.get("spent_before_training_s", 0.0)),
        after_s=float(info.get("after_training_s", REPORT_S)),
        max_epochs=info.get("epochs_requested"),
        patience_from_budget=bool(info.get("patience_from_budget", False)),
    )
    return [callback]


def record_total(run_dir: Path, total_s: float) -> None:
    """Add the run's total wall-clock time to budget.json (when there is one)."""
    path = run_dir / "budget.json"
    if path.is_file():
        info = json.loads(path.read_text(encoding="utf-8"))
        info["actual_s"] = round(total_s, 3)
        info["within_budget"] = total_s <= info.get("budget_s", float("inf"))
        atomic_write_json(path, info)
