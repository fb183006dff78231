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
import time
from pathlib import Path
from typing import Any

import lightning as L
import torch

from liandan.config import Config, parse_duration
from liandan.runs import atomic_write_json

SAFETY = 0.9  # plan for 90% of the budget: epochs vary (data loading, checkpoint writes)
REPORT_S = 5.0  # export, plots and report after training (measured: 2-4 s on 2 CPU cores)


def epochs_for_budget(budget_s: float, epoch_s: float, overhead_s: float, max_epochs: int) -> int:
    """Epochs that fit ``SAFETY * budget_s`` after ``overhead_s``; at least 1.

    >>> epochs_for_budget(600, 10, 40, 300)
    50
    """
    usable = SAFETY * budget_s - overhead_s
    return int(max(1, min(max_epochs, usable // max(epoch_s, 1e-6))))


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


def fit_budget(
    cfg: Config,
    bundle: Any,
    class_weights: torch.Tensor | None,
    run_dir: Path,
    spent_s: float = 0.0,
) -> dict[str, Any]:
    """Set ``cfg.train.epochs`` (and patience) to fit ``cfg.train.budget``; write budget.json.

    Args:
        cfg: the run's config, with ``train.budget`` set.
        bundle: the run's DataBundle (loaders).
        class_weights: the loss's class weights, as training uses them.
        run_dir: the run folder (``budget.json`` goes there).
        spent_s: seconds already used (data checks, lr-find) since the run started.
    """
    assert cfg.train.budget is not None
    budget_s = parse_duration(cfg.train.budget)
    start = time.perf_counter()
    probe = time_probe(cfg, bundle, class_weights)
    train_steps = _steps(bundle.train_loader, cfg.train.steps_per_epoch)
    val_s = len(bundle.val_loader) * probe["val_batch_s"]
    epoch_s = train_steps * probe["step_s"] + val_s
    spent_s += time.perf_counter() - start
    overhead_s = spent_s + 2 * val_s + REPORT_S  # final evaluation (+ samples) and report
    requested = cfg.train.epochs
    epochs = epochs_for_budget(budget_s, epoch_s, overhead_s, requested)
    cfg.train.epochs = epochs
    if cfg.train.patience is None or cfg.train.patience >= epochs:
        cfg.train.patience = max(3, epochs // 4)  # early stopping on the monitored metric
    info = {
        "budget": cfg.train.budget,
        "budget_s": budget_s,
        "probe": {k: round(v, 5) for k, v in probe.items()},
        "estimated_epoch_s": round(epoch_s, 3),
        "spent_before_training_s": round(spent_s, 3),
        "epochs_requested": requested,
        "epochs_planned": epochs,
        "patience": cfg.train.patience,
    }
    atomic_write_json(run_dir / "budget.json", info)
    return info


class BudgetCallback(L.Callback):
    """Stops when the next epoch would overrun the budget; records the actual time."""

    def __init__(self, budget_s: float, path: Path, spent_s: float = 0.0) -> None:
        self.budget_s = budget_s
        self.path = path
        self.spent_s = spent_s  # used before training started
        self.start = time.perf_counter()
        self.epoch_times: list[float] = []
        self.stopped = False
        self._epoch_start = self.start

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._epoch_start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.epoch_times.append(time.perf_counter() - self._epoch_start)
        if self.should_stop(time.perf_counter() - self.start):
            trainer.should_stop = True
            self.stopped = True

    def should_stop(self, elapsed_s: float) -> bool:
        """Whether one more epoch (as slow as the slowest so far) would pass the budget."""
        if not self.epoch_times:
            return False
        left = self.budget_s - self.spent_s - REPORT_S - elapsed_s
        return max(self.epoch_times) > left

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        info: dict[str, Any] = {}
        if self.path.is_file():
            info = json.loads(self.path.read_text(encoding="utf-8"))
        info.update(
            epochs_run=len(self.epoch_times),
            train_s=round(time.perf_counter() - self.start, 3),
            mean_epoch_s=round(sum(self.epoch_times) / max(1, len(self.epoch_times)), 3),
            stopped_by_budget=self.stopped,
        )
        atomic_write_json(self.path, info)


def budget_callbacks(cfg: Config, run_dir: Path) -> list[L.Callback]:
    """``[BudgetCallback]`` when ``train.budget`` is set, else ``[]``."""
    if not cfg.train.budget:
        return []
    path = run_dir / "budget.json"
    spent = 0.0
    if path.is_file():
        spent = float(
            json.loads(path.read_text(encoding="utf-8")).get("spent_before_training_s", 0)
        )
    return [BudgetCallback(parse_duration(cfg.train.budget), path, spent)]


def record_total(run_dir: Path, total_s: float) -> None:
    """Add the run's total wall-clock time to budget.json (when there is one)."""
    path = run_dir / "budget.json"
    if path.is_file():
        info = json.loads(path.read_text(encoding="utf-8"))
        info["actual_s"] = round(total_s, 3)
        info["within_budget"] = total_s <= info.get("budget_s", float("inf"))
        atomic_write_json(path, info)
