"""The training doctor: watches every run and says what is wrong, with advice.

Findings (each provoked by a test in tests/test_doctor.py):

- ``nan``: a NaN/Inf loss or gradient. Training stops before the optimizer step
  (:class:`~liandan.errors.TrainingStopped`, CLI exit 1): the checkpoints written
  before are kept and no NaN model is ever saved as ``best``.
- ``divergence``: the training loss rose ``window`` epochs in a row, or exploded
  (> 10x its lowest value): lower the learning rate.
- ``plateau``: after ``window + 1`` epochs the training loss never fell 5% below its
  first value, or one class is predicted everywhere: check the learning rate, the
  normalization and the label/class mapping.
- ``overfitting``: the training loss fell while the monitored validation metric got
  worse ``window`` epochs in a row: more augmentation, weight decay, early stopping.
- ``class_never_predicted``: at the end of training a class present in the
  validation split was never predicted.
- ``amp_skipped``: under fp16 mixed precision the gradient scaler skipped (inf/NaN
  gradients) more than half of an epoch's steps. Single skipped steps are normal
  while the scaler finds its scale; the learning-rate schedule does not advance on
  them (:func:`skip_scheduler_step`).

Findings go to the console (logging), to a ``doctor`` column of history.csv, and to
``doctor.json`` in the run folder.
"""

from __future__ import annotations

import itertools
import logging
import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import lightning as L
import torch

from liandan.engine.callbacks import HistoryCallback, any_rank, is_rank_zero
from liandan.errors import TrainingStopped
from liandan.runs import atomic_write_json

log = logging.getLogger("liandan")

EXPLODE_FACTOR = 10.0  # loss above this multiple of its lowest value: exploding
PLATEAU_GAIN = 0.05  # the loss must fall at least 5% below its first value to count


@dataclass
class Finding:
    """One diagnosis: what, when, and what to do."""

    kind: str
    epoch: int
    message: str
    advice: str

    def line(self) -> str:
        return f"{self.kind}: {self.message} -> {self.advice}"


def _series(rows: list[dict[str, Any]], key: str) -> list[float]:
    values = []
    for row in rows:
        value = row.get(key)
        if isinstance(value, int | float) and math.isfinite(value):
            values.append(float(value))
    return values


def _rising(values: list[float], n: int) -> bool:
    """The last ``n`` steps of ``values`` all went up."""
    if len(values) < n + 1:
        return False
    tail = values[-(n + 1) :]
    return all(b > a for a, b in itertools.pairwise(tail))


def check_divergence(rows: list[dict[str, Any]], lr: float, window: int = 3) -> Finding | None:
    """Training loss rising ``window`` epochs in a row, or exploding."""
    losses = _series(rows, "train_loss")
    if len(losses) < 2:
        return None
    epoch = int(rows[-1].get("epoch", len(rows)))
    advice = (
        f"lower optim.lr (now {lr:.2g}), e.g. to {lr / 10:.2g}, or run `liandan lr-find DATA` "
        "and use the value it suggests"
    )
    lowest = min(losses[:-1])
    if lowest > 0 and losses[-1] > EXPLODE_FACTOR * lowest:
        return Finding(
            "divergence",
            epoch,
            f"the training loss exploded to {losses[-1]:.4g} ({losses[-1] / lowest:.0f}x its "
            f"lowest, {lowest:.4g})",
            advice,
        )
    if _rising(losses, window):
        return Finding(
            "divergence",
            epoch,
            f"the training loss rose {window} epochs in a row "
            f"({' -> '.join(f'{v:.4g}' for v in losses[-(window + 1) :])})",
            advice,
        )
    return None


def one_class_everywhere(confusion: list[list[int]] | None) -> int | None:
    """The column index when every prediction fell in one class, else None."""
    if not confusion or len(confusion) < 2:
        return None
    columns = [sum(row[j] for row in confusion) for j in range(len(confusion))]
    used = [j for j, c in enumerate(columns) if c > 0]
    return used[0] if len(used) == 1 else None


def check_plateau(
    rows: list[dict[str, Any]],
    confusion: list[list[int]] | None = None,
    class_names: list[str] | None = None,
    window: int = 3,
) -> Finding | None:
    """Not converging from the start: no real fall of the loss, or one class everywhere."""
    losses = _series(rows, "train_loss")
    if len(losses) < window + 1:
        return None
    epoch = int(rows[-1].get("epoch", len(rows)))
    advice = (
        "check the learning rate (`liandan lr-find`), the normalization (data.normalize) "
        "and the label/class mapping (classes.yaml, mask values)"
    )
    if min(losses[1:]) > losses[0] * (1 - PLATEAU_GAIN):
        return Finding(
            "plateau",
            epoch,
            f"the training loss has not fallen in {len(losses)} epochs "
            f"(first {losses[0]:.4g}, lowest since {min(losses[1:]):.4g})",
            advice,
        )
    only = one_class_everywhere(confusion)
    if only is not None:
        name = class_names[only] if class_names and only < len(class_names) else str(only)
        return Finding(
            "plateau",
            epoch,
            f"the model predicts one class ({name!r}) everywhere on validation",
            advice + "; with strong imbalance try loss.class_weights=auto",
        )
    return None


def check_overfitting(
    rows: list[dict[str, Any]], monitor: str, mode: str, window: int = 3
) -> Finding | None:
    """Training loss falling while the validation monitor worsens ``window`` epochs."""
    key = monitor.replace("/", "_", 1)
    losses = _series(rows, "train_loss")
    scores = _series(rows, key)
    if len(losses) < window + 1 or len(scores) < window + 1:
        return None
    worse = [-s for s in scores] if mode == "max" else scores
    if _rising([-v for v in losses], window) and _rising(worse, window):
        return Finding(
            "overfitting",
            int(rows[-1].get("epoch", len(rows))),
            f"the training loss fell while {monitor} got worse {window} epochs in a row "
            f"({' -> '.join(f'{v:.4g}' for v in scores[-(window + 1) :])})",
            "add augmentation (augment.*), raise optim.weight_decay, or stop early "
            "(train.patience); best.ckpt keeps the best epoch",
        )
    return None


def never_predicted(confusion: list[list[int]] | None, class_names: list[str]) -> list[str]:
    """Classes present in the truth (row sum > 0) that were never predicted (column 0)."""
    if not confusion:
        return []
    n = len(confusion)
    names = []
    for j in range(n):
        support = sum(confusion[j])
        predicted = sum(confusion[i][j] for i in range(n))
        if support > 0 and predicted == 0:
            names.append(class_names[j] if j < len(class_names) else str(j))
    return names


def check_never_predicted(
    confusion: list[list[int]] | None, class_names: list[str], epoch: int
) -> Finding | None:
    names = never_predicted(confusion, class_names)
    if not names:
        return None
    return Finding(
        "class_never_predicted",
        epoch,
        f"class(es) {names} present in the validation split were never predicted",
        "train longer, use loss.class_weights=auto or data.sampler=balanced, "
        "and check that these classes have training examples",
    )


def check_skipped_steps(skipped: int, steps: int, epoch: int, lr: float) -> Finding | None:
    """fp16: the gradient scaler skipped more than half of an epoch's steps."""
    if steps == 0 or skipped <= steps // 2:
        return None
    return Finding(
        "amp_skipped",
        epoch,
        f"the fp16 gradient scaler skipped {skipped} of {steps} steps: the gradients are "
        "NaN or infinite at every scale",
        f"use train.precision=bf16-mixed (or 32), lower optim.lr (now {lr:.2g}), and check "
        "the data for NaN/Inf values (`liandan scan DATA`)",
    )


def grad_scaler(trainer: L.Trainer) -> Any:
    """The fp16 ``GradScaler`` of the trainer's precision plugin, or None (bf16, fp32)."""
    return getattr(getattr(trainer, "precision_plugin", None), "scaler", None)


def skip_scheduler_step(trainer: L.Trainer, scheduler: Any) -> bool:
    """Whether ``scheduler`` must not advance now: a per-step schedule, and the fp16
    gradient scaler skipped the optimizer step (non-finite gradients) it would follow.

    Lightning steps per-step schedulers after every optimizer step, taken or not;
    :meth:`LiandanTask.lr_scheduler_step` asks this first.
    """
    callbacks = trainer.callbacks  # type: ignore[attr-defined]
    doctor = next((c for c in callbacks if isinstance(c, TrainingDoctor)), None)
    if doctor is None:
        return False
    config = next((c for c in trainer.lr_scheduler_configs if c.scheduler is scheduler), None)
    return config is not None and config.interval == "step" and doctor.step_skipped(trainer)


class TrainingDoctor(L.Callback):
    """Runs the checks above during training; see the module docstring.

    Args:
        run_dir: where ``doctor.json`` is written.
        history: the history callback whose rows the doctor reads and annotates.
        monitor: the monitored metric (e.g. ``val/mean_iou``).
        lr: the configured learning rate (for advice).
        check_gradients: stop on non-finite gradients (off under fp16 AMP, whose
            scaler skips such steps by itself).
        window: epochs a trend must last before it is reported.
    """

    def __init__(
        self,
        run_dir: Path,
        history: HistoryCallback,
        monitor: str,
        lr: float,
        *,
        check_gradients: bool = True,
        window: int = 3,
        sync_every: int = 1,
    ) -> None:
        self.run_dir = run_dir
        self.history = history
        self.monitor = monitor
        self.mode = "min" if monitor.endswith("loss") else "max"
        self.lr = lr
        self.check_gradients = check_gradients
        self.window = window
        self.findings: list[Finding] = []
        self._reported: set[str] = set()
        self._scale_before: float | None = None  # fp16 scaler's scale before the step
        self._steps = 0  # optimizer steps this epoch (fp16 only)
        # Non-finite loss/gradient checks are read from the device every `sync_every`
        # steps: 1 on a CPU (reading costs nothing; the stop comes before the optimizer
        # step), more on a GPU, which would otherwise wait for every check
        self.sync_every = max(1, sync_every)
        self._pending: dict[str, torch.Tensor] = {}  # what -> "was it ever bad" on device
        self._skipped = 0  # ... of which the scaler skipped

    # ------------------------------------------------------------- per step
    def _stop(self, trainer: L.Trainer, what: str, *, before_step: bool = True) -> None:
        epoch = trainer.current_epoch + 1
        when = "before the optimizer step" if before_step else "(checkpoints hold no NaN)"
        finding = Finding(
            "nan",
            epoch,
            f"{what} at epoch {epoch}, step {trainer.global_step + 1}; training stopped {when}",
            f"lower optim.lr (now {self.lr:.2g}), check the data for NaN/Inf values "
            "(`liandan scan DATA`), or use train.precision=32; the checkpoints written "
            "before this step are intact",
        )
        if is_rank_zero(trainer):  # every rank stops; rank 0 writes the run's files
            self._record(finding)
            self.history.rows.append(
                {"epoch": epoch, "step": trainer.global_step, "doctor": finding.line()}
            )
            self.history.write()
        raise TrainingStopped(
            finding.message, where=self.run_dir, hint=finding.advice + " (doctor.json)"
        )

    def _fold(self, what: str, bad: torch.Tensor) -> None:
        """Keep ``bad`` (a device bool) in the pending flag of ``what``, unread."""
        pending = self._pending.get(what)
        self._pending[what] = bad if pending is None else pending | bad

    def _read_pending(self, trainer: L.Trainer) -> None:
        """Read the folded flags (one device read); stop when one was set."""
        pending, self._pending = self._pending, {}
        flags = torch.stack(list(pending.values())).tolist()  # one read for all flags
        for what, flag in zip(pending, flags, strict=True):
            if any_rank(trainer, flag):
                within = f"within the last {self.sync_every} steps"
                what = f"{what} ({within})" if flag else f"{what} on another device"
                self._stop(trainer, what, before_step=False)

    def on_before_backward(
        self, trainer: L.Trainer, pl_module: L.LightningModule, loss: torch.Tensor
    ) -> None:
        bad = ~torch.isfinite(loss.detach()).all()
        if self.sync_every > 1:
            self._fold("a training loss was not finite", bad)
            return
        flag = bool(bad)
        # under DDP the loss differs per rank: all stop together (backward would hang)
        if any_rank(trainer, flag):
            what = "a training loss on another device is not finite"
            if flag:
                what = f"the training loss is {float(loss.detach()):g}"
            self._stop(trainer, what)

    def on_before_optimizer_step(
        self, trainer: L.Trainer, pl_module: L.LightningModule, optimizer: Any
    ) -> None:
        scaler = grad_scaler(trainer)
        # fp16: the scaler lowers its scale exactly when it skips the step it is about to
        # take, so the scale now tells afterwards whether the step happened
        self._scale_before = scaler.get_scale() if scaler is not None else None
        if not self.check_gradients:
            return
        grads = [p.grad for p in pl_module.parameters() if p.grad is not None]
        if not grads:
            return
        bad = ~torch.isfinite(torch.stack(torch._foreach_norm(grads))).all()
        if self.sync_every > 1:
            self._fold("a gradient was NaN or infinite", bad)
        elif bool(bad):
            self._stop(trainer, "a gradient is NaN or infinite")

    def step_skipped(self, trainer: L.Trainer) -> bool:
        """Whether the fp16 gradient scaler skipped the optimizer step just taken."""
        scaler = grad_scaler(trainer)
        if scaler is None or self._scale_before is None:
            return False
        return scaler.get_scale() < self._scale_before

    def on_train_batch_end(self, trainer: L.Trainer, *args: Any) -> None:
        if self._pending and trainer.global_step % self.sync_every == 0:
            self._read_pending(trainer)
        if self._scale_before is None:
            return
        self._steps += 1
        if self.step_skipped(trainer):
            self._skipped += 1
        self._scale_before = None

    # ------------------------------------------------------------ per epoch
    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self._steps = self._skipped = 0

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        # runs after HistoryCallback (registered before it) appended this epoch's row,
        # and before the checkpoint callbacks: non-finite weights never reach best/last
        if trainer.sanity_checking:
            return
        if self._pending:
            self._read_pending(trainer)
        if self._skipped:
            # a few skips while the scaler finds its scale are normal; most steps skipped
            # means the gradients stay non-finite and nothing is learned
            log.info(
                "fp16: the gradient scaler skipped %d of %d steps (inf/NaN gradients); "
                "the learning-rate schedule did not advance on them",
                self._skipped,
                self._steps,
            )
        weights = [p.detach() for p in pl_module.parameters() if p.is_floating_point()]
        if weights and not bool(torch.isfinite(torch.stack(torch._foreach_norm(weights))).all()):
            self._stop(trainer, "a weight became NaN or infinite")
        if not trainer.is_global_zero or not self.history.rows:
            return
        rows = self.history.rows
        metrics = getattr(pl_module, "last_val_metrics", None) or {}
        confusion = metrics.get("confusion_matrix")
        names = list(metrics.get("classes") or getattr(pl_module, "class_names", []))
        epoch = int(rows[-1].get("epoch", trainer.current_epoch + 1))
        new = [
            check_skipped_steps(self._skipped, self._steps, epoch, self.lr),
            check_divergence(rows, self.lr, self.window),
            check_plateau(rows, confusion, names, self.window),
            check_overfitting(rows, self.monitor, self.mode, self.window),
        ]
        last_epoch = trainer.current_epoch + 1 >= (trainer.max_epochs or 0) or trainer.should_stop
        if last_epoch:
            new.append(check_never_predicted(confusion, names, epoch))
        found = [f for f in new if f is not None and self._record(f)]
        if found:
            rows[-1]["doctor"] = "; ".join(f.line() for f in found)
            self.history.write()

    def _record(self, finding: Finding) -> bool:
        """Keep and report a finding once per kind; False when already reported."""
        if finding.kind in self._reported:
            return False
        self._reported.add(finding.kind)
        self.findings.append(finding)
        log.warning("doctor: %s", finding.line())
        atomic_write_json(
            self.run_dir / "doctor.json", {"findings": [asdict(f) for f in self.findings]}
        )
        return True

    def state_dict(self) -> dict[str, Any]:
        return {"findings": [asdict(f) for f in self.findings]}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.findings = [Finding(**f) for f in state_dict.get("findings", [])]
        self._reported = {f.kind for f in self.findings}
