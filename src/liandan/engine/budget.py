"""`train.budget`: the whole command ends within its budget, the schedule at its floor.

A budget covers the command: scan and plan before training, the final evaluation and
the report after it. Before the Trainer is built, :func:`fit_budget` times a few real
training steps, validation batches and a checkpoint write (a throwaway copy of the
model, random states restored) and decides

- the seconds left for training: the budget, less what was spent before (scan, plan,
  lr range test, the probe) and the estimated final evaluation and report;
- the epoch length (:func:`epoch_steps`): long enough that an epoch's fixed costs
  (validation, checkpoints, history) stay under ``FIXED_SHARE`` of its training time,
  whatever the size of the dataset;
- the schedule's length in optimizer steps, from the probe.

During training, :class:`BudgetCallback` re-fits the schedule's length after every
epoch from the measured pace (validation and checkpoints included) and stops at the
step where it ends: the last step is taken at the schedule's floor whatever the
machine's speed or load. There is no early stopping unless you ask for it
(``train.patience``): a budgeted run uses its budget.
"""

from __future__ import annotations

import io
import json
import logging
import math
import os
import tempfile
import time
from collections import deque
from pathlib import Path
from typing import Any

import lightning as L
import torch

from liandan.config import Config, parse_duration
from liandan.engine.callbacks import any_rank, is_rank_zero
from liandan.runs import atomic_write_json

# An epoch's fixed costs (validation, checkpoint writes) at most this share of its
# training time: the rule that sizes epochs (nnU-Net's fixed 250 steps, made relative).
FIXED_SHARE = 0.1
MIN_EPOCH_STEPS = 4  # no epoch shorter: the history and the doctor need a few steps
MIN_EPOCHS = 5  # a budget too short for this many epochs of the fixed-cost rule gets
# shorter epochs instead (a few validations for the curves, the doctor and `best`)
WARMUP_SHARE = 0.05  # warmup at most this share of a budgeted run's steps
REPORT_S = 8.0  # export, plots and report after training (measured: 2-4 s on 2 idle CPU
# cores, 9 s beside an H200 with 16 cores: matplotlib and galleries, whatever the GPU)
END_MARGIN = 0.98  # plan to end at 98% of the budget: the run ends in its last 5%
CHECK_EVERY = 8  # steps between wall-clock checks inside an epoch (a DDP reduction each)
RECENT_CHECKS = 4  # the recent pace (over this many checks) counts when it is slower
LR_FIND_SHARE = 0.1  # of a budget the lr range test (optim.lr=auto) may take
# A shortened range test is not trusted: on the demo data, tests cut to 24-40 steps by a
# 2-minute budget suggested 3e-4, 4.6e-3 and 1.6e-2 for three seeds (RESULTS.md).
LR_FIND_MIN_STEPS = 100  # the full test (fastai's 100 steps) or the usual rate
FALLBACK_LR = {"sgd": 0.01, "adagrad": 0.01, "adadelta": 1.0}  # others: 1e-3 (Adam family)

log = logging.getLogger("liandan")


def process_start() -> float:
    """The ``time.perf_counter()`` value at which this process started (Linux; elsewhere
    now): a command's budget includes Python's start-up and imports.
    """
    now = time.perf_counter()
    try:
        stat = Path("/proc/self/stat").read_text().rsplit(")", 1)[1].split()
        started = int(stat[19]) / os.sysconf("SC_CLK_TCK")  # field 22: start, in ticks
        uptime = float(Path("/proc/uptime").read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return now
    return now - min(max(0.0, uptime - started), 3600.0)


def load_factor() -> float:
    """How much slower than idle this machine runs a fixed piece of work, about:
    the 1-minute load average per core, at least 1."""
    try:
        return max(1.0, os.getloadavg()[0] / (os.cpu_count() or 1))
    except OSError:
        return 1.0


def epoch_steps(fixed_s: float, step_s: float, train_s: float | None = None) -> int:
    """Optimizer steps per epoch that keep ``fixed_s`` under ``FIXED_SHARE`` of it.

    With ``train_s`` (the seconds training may take), epochs are kept short enough for
    ``MIN_EPOCHS`` of them. At least ``MIN_EPOCH_STEPS``.

    >>> epoch_steps(2.0, 0.5)  # 2 s of validation: 40 steps of 0.5 s
    40
    >>> epoch_steps(2.0, 0.5, train_s=60.0)  # but 5 epochs in a minute
    21
    """
    steps = math.ceil(fixed_s / (FIXED_SHARE * max(step_s, 1e-6)))
    if train_s is not None:
        fit = int(train_s / (MIN_EPOCHS * max(step_s, 1e-6) * (1 + FIXED_SHARE)))
        steps = min(steps, fit)
    return max(MIN_EPOCH_STEPS, steps)


def time_probe(
    cfg: Config,
    bundle: Any,
    class_weights: torch.Tensor | None,
    steps: int = 3,
    scratch: Path | None = None,
) -> dict[str, float]:
    """Seconds per training step, per validation batch and per checkpoint, on this device.

    Args:
        cfg: the run's config.
        bundle: the run's DataBundle (its loaders are read, their random states kept).
        class_weights: the loss's class weights.
        steps: training steps timed (after one untimed first step).
        scratch: a folder where a checkpoint of the model's size is written and timed
            (``ckpt_s``: weights, AdamW's two moments, fsync); not timed when None.
    """
    from lightning.pytorch.utilities import move_data_to_device

    from liandan.engine.task import LiandanTask
    from liandan.engine.trainer import training_autocast
    from liandan.lr_find import _rng_state, _set_rng_state

    state = _rng_state(bundle.train_loader)
    try:
        task = LiandanTask(cfg, bundle.classes.names, bundle.in_channels, class_weights)
        use_gpu = torch.cuda.is_available() and cfg.train.accelerator in ("auto", "gpu")
        device = torch.device("cuda" if use_gpu else "cpu")
        model, criterion = task.model.to(device), task.criterion.to(device)
        spec = task.spec
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
            with training_autocast(cfg, device):  # the Trainer's precision: bf16 is faster
                loss = spec.batch_loss(
                    model, criterion, x.to(device), move_data_to_device(y, device)
                )
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
                with training_autocast(cfg, device):
                    model(x.to(device))
                sync()
                val_times.append(time.perf_counter() - start)
                if i >= 2:
                    break
        ckpt_s = _time_checkpoint(model, optimizer, scratch) if scratch is not None else 0.0
    finally:
        _set_rng_state(bundle.train_loader, state)
    step_s = sorted(times)[len(times) // 2]
    val_batch_s = sum(val_times) / max(1, len(val_times))
    return {"step_s": step_s, "val_batch_s": val_batch_s, "ckpt_s": ckpt_s}


def _time_checkpoint(model: torch.nn.Module, optimizer: Any, folder: Path) -> float:
    """Seconds to serialize and durably write the weights and optimizer state once."""
    folder.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optim": optimizer.state_dict()}, buffer)
    fd, name = tempfile.mkstemp(dir=folder, prefix=".probe.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(buffer.getbuffer())
            fh.flush()
            os.fsync(fh.fileno())
    finally:
        Path(name).unlink(missing_ok=True)
    return time.perf_counter() - start


def fixed_epoch_s(bundle: Any, probe: dict[str, float]) -> float:
    """An epoch's fixed cost: one validation pass and (at most) one checkpoint write."""
    return len(bundle.val_loader) * probe["val_batch_s"] + probe.get("ckpt_s", 0.0)


def final_eval_s(bundle: Any, probe: dict[str, float], cfg: Config) -> float:
    """Estimated seconds of the final evaluation (whole validation images) and report."""
    dataset = bundle.val_loader.dataset
    val_s = len(bundle.val_loader) * probe["val_batch_s"]
    base = getattr(dataset, "base", None)  # in-training validation on crops (data.epochs)
    if base is not None:  # whole images: the crops' cost per pixel, times the tile overlap
        crop_px = len(dataset) * dataset.size**2
        whole_px = sum(h * w for h, w in getattr(dataset, "shapes", [])) or crop_px
        overlap = 1.0 / (1.0 - cfg.predict.overlap) ** 2
        val_s *= whole_px / crop_px * overlap
    # the report's figures are fixed work: slower on a machine busy with other jobs
    return val_s + REPORT_S * load_factor()


def fit_budget(
    cfg: Config,
    bundle: Any,
    class_weights: torch.Tensor | None,
    run_dir: Path,
    spent_s: float = 0.0,
    probe: dict[str, float] | None = None,
) -> dict[str, Any]:
    """Fit the run to ``cfg.train.budget``: epoch length, schedule length; budget.json.

    Sets ``train.steps_per_epoch`` (unless you set a number) and caps the warmup at
    ``WARMUP_SHARE`` of the run. ``train.epochs`` stays an upper bound.

    Args:
        cfg: the run's config, with ``train.budget`` set.
        bundle: the run's DataBundle (loaders).
        class_weights: the loss's class weights, as training uses them.
        run_dir: the run folder (``budget.json`` goes there).
        spent_s: seconds of the command already used (scan, plan, data checks, lr-find).
        probe: a :func:`time_probe` already measured for this run (else measured here).
    """
    assert cfg.train.budget is not None
    budget_s = parse_duration(cfg.train.budget)
    start = time.perf_counter()
    probe = dict(probe or time_probe(cfg, bundle, class_weights))
    if "ckpt_s" not in probe or not probe["ckpt_s"]:
        probe["ckpt_s"] = _probe_checkpoint(cfg, bundle, run_dir)
    spent_s += time.perf_counter() - start
    after_s = final_eval_s(bundle, probe, cfg)
    train_s = max(0.0, END_MARGIN * budget_s - spent_s - after_s)
    fixed_s = fixed_epoch_s(bundle, probe)
    per_pass = len(bundle.train_loader)
    given = cfg.train.steps_per_epoch
    auto = not isinstance(given, int)  # None or auto: sized by the fixed-cost rule
    steps: int = epoch_steps(fixed_s, probe["step_s"], train_s) if auto else int(given)  # type: ignore[arg-type]
    epoch_s = steps * probe["step_s"] + fixed_s
    planned = max(1, int(train_s / epoch_s * steps))
    if auto and planned > cfg.train.epochs * steps:
        # train.epochs bounds the number of epochs (validations), not the budget: fast
        # steps (a small network) get longer epochs, so that the budget is used
        steps = math.ceil(train_s / max(probe["step_s"], 1e-6) / cfg.train.epochs)
        epoch_s = steps * probe["step_s"] + fixed_s
        planned = max(1, int(train_s / epoch_s * steps))
    if auto:
        cfg.train.steps_per_epoch = steps
    planned = min(planned, cfg.train.epochs * steps)  # train.epochs is an upper bound
    warmup = cfg.schedule.warmup_epochs
    cfg.schedule.warmup_epochs = round(min(warmup, WARMUP_SHARE * planned / steps), 3)
    info = {
        "budget": cfg.train.budget,
        "budget_s": budget_s,
        "spent_before_training_s": round(spent_s, 3),
        "after_training_s": round(after_s, 3),  # final evaluation and report (estimated)
        "train_s": round(train_s, 3),
        "probe": {k: round(v, 5) for k, v in probe.items()},
        "fixed_epoch_s": round(fixed_s, 3),
        "steps_per_epoch": steps,
        "steps_per_pass": per_pass,  # one pass over the training set
        "estimated_epoch_s": round(epoch_s, 3),
        "steps_planned": planned,
        "epochs_planned": math.ceil(planned / steps),
        "epochs_max": cfg.train.epochs,
    }
    atomic_write_json(run_dir / "budget.json", info)
    log.info(
        "train.budget=%s: %.0f s for training after %.0f s spent and %.0f s kept for the final "
        "evaluation; epochs of %d steps (validation and checkpoint %.1f s, under %d%% of an "
        "epoch), about %d steps",
        cfg.train.budget, train_s, spent_s, after_s, steps, fixed_s, 100 * FIXED_SHARE, planned,
    )  # fmt: skip
    return info


def _probe_checkpoint(cfg: Config, bundle: Any, run_dir: Path) -> float:
    from liandan.models import build_model

    # a throwaway model: its initialisation must not move the seed's random stream, or a
    # budgeted run would start from other weights than the same run without a budget
    with torch.random.fork_rng(devices=[]):
        model = build_model(
            cfg.model,
            task=str(cfg.task),
            num_classes=bundle.classes.num_classes,
            in_channels=bundle.in_channels,
            image_size=cfg.data.image_size,
        )
    optimizer = torch.optim.AdamW(model.parameters())
    for p in model.parameters():  # AdamW's moments exist after the first step
        optimizer.state[p] = {"exp_avg": torch.zeros_like(p), "exp_avg_sq": torch.zeros_like(p)}
    return _time_checkpoint(model, optimizer, run_dir / "checkpoints")


def fit_epoch_length(cfg: Config, bundle: Any, probe: dict[str, float]) -> dict[str, Any]:
    """``train.steps_per_epoch: auto`` without a budget: epochs sized by the fixed-cost
    rule, ``train.epochs`` rescaled so that the run takes as many optimizer steps."""
    per_pass = len(bundle.train_loader)
    fixed_s = fixed_epoch_s(bundle, probe)
    steps = epoch_steps(fixed_s, probe["step_s"])
    total = cfg.train.epochs * per_pass
    cfg.train.steps_per_epoch = steps
    cfg.train.epochs = max(1, round(total / steps))
    if cfg.train.patience:  # the same number of steps without improvement
        cfg.train.patience = max(3, round(cfg.train.patience * per_pass / steps))
    if cfg.schedule.warmup_epochs:
        cfg.schedule.warmup_epochs = round(cfg.schedule.warmup_epochs * per_pass / steps, 3)
    return {"steps_per_epoch": steps, "epochs": cfg.train.epochs, "fixed_epoch_s": fixed_s}


class BudgetCallback(L.Callback):
    """Re-fits the schedule's length to the measured pace; stops where it ends.

    After every epoch, the steps still affordable are the training seconds left (less
    one validation pass, which follows the last step) times the pace so far, in steps
    per second with validation and checkpoints included. The step schedule's length
    (``RunLength.total_steps``) is set to that, so a cosine decay ends at its floor at
    the last step; rank 0's figure is broadcast so that every DDP rank agrees. Every
    ``CHECK_EVERY`` steps the clock is also read: a machine that slowed down within an
    epoch still stops by the deadline. In one process the clock is read at every step
    (the next step must fit before the deadline), and the planned end is re-fitted
    before the run stops there (a slow spell that shortened the plan may be over). The training time used so far is saved with
    the checkpoints: a resumed run goes on with the rest of its budget.

    Args:
        train_s: seconds the training loop may take, validation included.
        path: ``budget.json`` (updated at the end).
        planned_steps: the first estimate of the run's length (from the probe).
    """

    def __init__(self, train_s: float, path: Path, planned_steps: int) -> None:
        self.train_s = train_s
        self.path = path
        self.total_steps = planned_steps
        self.planned_steps = planned_steps
        self.done_s = 0.0  # training seconds of earlier sessions (resume)
        self.start = time.perf_counter()
        self.val_s = 0.0
        self.epoch_times: list[float] = []
        self.refits: list[list[int]] = []
        self.stopped_by_clock = False
        self._epoch_start = self._val_start = self._step_end = self.start
        self._marks: deque[tuple[float, int]] = deque(maxlen=RECENT_CHECKS + 1)
        self._first: tuple[float, int] | None = None

    def elapsed(self) -> float:
        """Training seconds used, earlier sessions included."""
        return self.done_s + time.perf_counter() - self.start

    def progress(self) -> float:
        """The share used of the time training may take before its last validation,
        counted from the first check (the first steps' one-off costs left out)."""
        if self._first is None:
            return 0.0
        since = time.perf_counter() - self._first[0]
        start = self.done_s + self._first[0] - self.start  # elapsed at the first check
        return since / max(self.train_s - self.val_s - start, 1e-6)

    def _set_length(self, trainer: L.Trainer) -> None:
        for config in trainer.lr_scheduler_configs:
            length = getattr(config.scheduler, "run_length", None)
            if length is not None:
                length.total_steps = self.total_steps
                # one process: the clock may lead the schedule (DDP ranks' clocks differ
                # and their learning rates must not: there the steps alone count)
                length.progress = self.progress if trainer.world_size == 1 else None

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = self._step_end = time.perf_counter()
        self._marks.clear()
        self._first = None
        self._set_length(trainer)

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after the last epoch's validation and checkpoints: not part of the next step
        self._epoch_start = self._step_end = time.perf_counter()

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        step, now = trainer.global_step, time.perf_counter()
        last_step_s, self._step_end = now - self._step_end, now
        if trainer.world_size > 1:  # DDP: the planned length, the clock every few steps
            if step >= self.total_steps:
                trainer.should_stop = True
            elif step % CHECK_EVERY == 0 and any_rank(
                trainer, self.elapsed() + self.val_s > self.train_s
            ):
                self.stopped_by_clock = trainer.should_stop = True
            return
        # one process: reading the clock is free. At the planned end, re-fit before
        # stopping (a slow spell that shortened the plan may be over, time left); between
        # re-fits, stop when the next step, as long as the last one, would miss the deadline
        if step >= self.total_steps or step % CHECK_EVERY == 0:
            self._refit(trainer)
        elif self.elapsed() + self.val_s + last_step_s > self.train_s:
            self.stopped_by_clock = trainer.should_stop = True

    def on_validation_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._val_start = time.perf_counter()

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.val_s = time.perf_counter() - self._val_start

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # after this epoch's validation, before the checkpoints (which save this state)
        now = time.perf_counter()
        self.epoch_times.append(now - self._epoch_start)
        if not trainer.should_stop:
            self._refit(trainer)

    def _refit(self, trainer: L.Trainer) -> None:
        """Set the run's length from the pace so far; stop when no step is left."""
        now, step = time.perf_counter(), trainer.global_step
        left = self.train_s - self.elapsed() - self.val_s
        self._marks.append((now, step))
        if self._first is None:  # the pace is measured from here: the first steps' one-off
            self._first = (now, step)  # costs (allocation, cuDNN autotuning, workers) left out
        first_time, first_step = self._first
        if step > first_step:  # steps/s since the first check, validation included
            pace = (step - first_step) / max(now - first_time, 1e-6)
            then, step_then = self._marks[0]
            if len(self._marks) > RECENT_CHECKS and now > then:  # slower lately: that pace
                pace = min(pace, (step - step_then) / (now - then))
            total = step + int(max(0.0, left) * pace)
        else:  # no pace yet: the probe's estimate stands, unless the time is up
            total = self.total_steps if left > 0 else step
        most = (trainer.max_epochs or 1) * max(1, int(trainer.num_training_batches))
        total = min(total, most)
        if trainer.world_size > 1:  # every rank must agree on the length: rank 0's
            total = int(trainer.strategy.broadcast(total, src=0))
        if abs(total - self.total_steps) > 0.01 * self.total_steps:  # recorded when it moves
            self.refits.append([trainer.global_step, total])
        if total != self.total_steps:
            self.total_steps = total
            self._set_length(trainer)
        if total <= trainer.global_step:
            self.stopped_by_clock = left <= 0
            trainer.should_stop = True

    def state_dict(self) -> dict[str, Any]:
        return {"done_s": self.elapsed(), "total_steps": self.total_steps, "refits": self.refits}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.done_s = float(state_dict.get("done_s", 0.0))
        self.total_steps = int(state_dict.get("total_steps", self.total_steps))
        self.refits = [list(r) for r in state_dict.get("refits", [])]

    def on_fit_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not is_rank_zero(trainer):  # rank 0 writes the run's files
            return
        info: dict[str, Any] = {}
        if self.path.is_file():
            info = json.loads(self.path.read_text(encoding="utf-8"))
        info.update(
            epochs_run=trainer.current_epoch,  # completed epochs (resumed ones included)
            steps_run=trainer.global_step,
            train_s_used=round(self.elapsed(), 3),
            mean_epoch_s=round(sum(self.epoch_times) / max(1, len(self.epoch_times)), 3),
            stopped_by_clock=self.stopped_by_clock,
            refits=self.refits,
        )
        atomic_write_json(self.path, info)


def budget_callbacks(cfg: Config, run_dir: Path) -> list[L.Callback]:
    """``[BudgetCallback]`` when ``train.budget`` is set and fitted, else ``[]``."""
    path = run_dir / "budget.json"
    if not cfg.train.budget or not path.is_file():
        return []
    info = json.loads(path.read_text(encoding="utf-8"))
    if "train_s" not in info:  # a budget.json of an older version: no time-fitted schedule
        return []
    return [BudgetCallback(float(info["train_s"]), path, int(info["steps_planned"]))]


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


def record_total(run_dir: Path, total_s: float) -> None:
    """Add the run's total wall-clock time to budget.json (when there is one)."""
    path = run_dir / "budget.json"
    if path.is_file():
        info = json.loads(path.read_text(encoding="utf-8"))
        info["actual_s"] = round(total_s, 3)
        if "train_s_used" in info:  # what the final evaluation and report really took
            before = info.get("spent_before_training_s", 0.0)
            info["after_training_actual_s"] = round(total_s - before - info["train_s_used"], 3)
        info["within_budget"] = total_s <= info.get("budget_s", float("inf"))
        atomic_write_json(path, info)
