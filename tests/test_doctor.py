"""The training doctor: each finding provoked by a small synthetic history."""

from __future__ import annotations

import csv
import html
import json
import logging
from pathlib import Path
from types import SimpleNamespace

import lightning as L
import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

from liandan.engine.callbacks import HistoryCallback
from liandan.engine.doctor import (
    TrainingDoctor,
    check_divergence,
    check_never_predicted,
    check_overfitting,
    check_plateau,
    check_skipped_steps,
)
from liandan.errors import TrainingStopped


def rows(train: list[float], val: list[float] | None = None) -> list[dict]:
    out = []
    for i, loss in enumerate(train):
        row = {"epoch": i + 1, "train_loss": loss}
        if val is not None:
            row["val_mean_iou"] = val[i]
        out.append(row)
    return out


def test_divergence_rising_loss_advises_lower_lr():
    finding = check_divergence(rows([1.0, 0.8, 0.9, 1.1, 1.4]), lr=0.1)
    assert finding is not None and finding.kind == "divergence"
    assert "rose 3 epochs" in finding.message and "0.01" in finding.advice


def test_divergence_exploding_loss():
    finding = check_divergence(rows([1.0, 0.5, 80.0]), lr=1e-3)
    assert finding is not None and "exploded" in finding.message


def test_healthy_history_has_no_finding():
    history = rows([1.0, 0.7, 0.5, 0.4, 0.35], [0.3, 0.4, 0.5, 0.55, 0.6])
    assert check_divergence(history, 1e-3) is None
    assert check_plateau(history) is None
    assert check_overfitting(history, "val/mean_iou", "max") is None


def test_plateau_from_the_start():
    finding = check_plateau(rows([0.69, 0.70, 0.69, 0.68]))
    assert finding is not None and finding.kind == "plateau"
    assert "normalization" in finding.advice and "class mapping" in finding.advice


def test_plateau_one_class_predicted_everywhere():
    confusion = [[5, 0, 0], [7, 0, 0], [3, 0, 0]]
    finding = check_plateau(rows([1.0, 0.8, 0.6, 0.5]), confusion, ["bg", "road", "tree"])
    assert finding is not None and "one class ('bg') everywhere" in finding.message


def test_overfitting_train_falls_while_val_worsens():
    history = rows([1.0, 0.6, 0.4, 0.3, 0.2], [0.5, 0.6, 0.55, 0.5, 0.45])
    finding = check_overfitting(history, "val/mean_iou", "max")
    assert finding is not None and finding.kind == "overfitting"
    assert "augment" in finding.advice and "weight_decay" in finding.advice
    # a loss monitor worsens upwards
    loss_rows = [
        dict(r, val_loss=v) for r, v in zip(history, [0.9, 0.8, 0.85, 0.9, 1.0], strict=True)
    ]
    assert check_overfitting(loss_rows, "val/loss", "min") is not None


def test_class_never_predicted():
    confusion = [[5, 1, 0], [2, 4, 0], [1, 3, 0]]
    finding = check_never_predicted(confusion, ["a", "b", "c"], epoch=4)
    assert finding is not None and "['c']" in finding.message
    assert check_never_predicted([[3, 0], [0, 0]], ["a", "b"], 1) is None  # no support


def _trainer(epoch: int, max_epochs: int = 10) -> SimpleNamespace:
    return SimpleNamespace(
        sanity_checking=False,
        is_global_zero=True,
        current_epoch=epoch - 1,
        max_epochs=max_epochs,
        should_stop=False,
        global_step=epoch * 2,
    )


def test_doctor_writes_console_history_and_doctor_json(tmp_path: Path, caplog):
    history = HistoryCallback(tmp_path / "history.csv")
    doctor = TrainingDoctor(tmp_path, history, "val/mean_iou", lr=0.1)
    module = SimpleNamespace(last_val_metrics=None, class_names=["a", "b"], parameters=list)
    losses = [1.0, 0.8, 0.9, 1.1, 1.4]
    with caplog.at_level(logging.WARNING, logger="liandan"):
        for epoch, loss in enumerate(losses, start=1):
            history.rows.append({"epoch": epoch, "train_loss": loss, "val_mean_iou": 0.5})
            doctor.on_train_epoch_end(_trainer(epoch), module)  # type: ignore[arg-type]
    assert "doctor: divergence" in caplog.text
    report = json.loads((tmp_path / "doctor.json").read_text())
    assert [f["kind"] for f in report["findings"]] == ["divergence"]
    text = (tmp_path / "history.csv").read_text()
    assert text.splitlines()[0].endswith(",doctor") and "divergence" in text.splitlines()[5]
    assert doctor.state_dict()["findings"][0]["epoch"] == 5


def test_doctor_stops_on_nan_loss_and_nan_gradient(tmp_path: Path):
    history = HistoryCallback(tmp_path / "history.csv")
    doctor = TrainingDoctor(tmp_path, history, "val/mean_iou", lr=1e-3)
    with pytest.raises(TrainingStopped, match="loss is nan"):
        doctor.on_before_backward(_trainer(1), None, torch.tensor(float("nan")))  # type: ignore[arg-type]
    module = torch.nn.Linear(2, 1)
    module.weight.grad = torch.tensor([[1.0, float("inf")]])
    with pytest.raises(TrainingStopped, match="gradient"):
        doctor.on_before_optimizer_step(_trainer(1), module, None)  # type: ignore[arg-type]
    assert "nan" in (tmp_path / "doctor.json").read_text()


def test_doctor_stops_before_saving_non_finite_weights(tmp_path: Path):
    history = HistoryCallback(tmp_path / "history.csv")
    doctor = TrainingDoctor(tmp_path, history, "val/mean_iou", lr=1e-3)
    module = torch.nn.Linear(2, 1)
    with torch.no_grad():
        module.weight[0, 0] = float("nan")
    with pytest.raises(TrainingStopped, match="weight became NaN"):
        doctor.on_train_epoch_end(_trainer(2), module)  # type: ignore[arg-type]


# --------------------------------------------------------------- report and history
def test_history_keeps_the_doctor_column_last(tmp_path: Path):
    history = HistoryCallback(tmp_path / "history.csv")
    doctor = TrainingDoctor(tmp_path, history, "val/mean_iou", lr=0.1)
    module = SimpleNamespace(last_val_metrics=None, class_names=["a", "b"], parameters=list)
    for epoch, loss in enumerate([1.0, 0.8, 0.9, 1.1, 1.4, 1.2], start=1):
        row = {"epoch": epoch, "train_loss": loss, "val_mean_iou": 0.5}
        if epoch >= 5:  # a column that appears after the finding's row
            row["val_kappa"] = 0.1
        history.rows.append(row)
        history.write()  # as HistoryCallback does for each epoch, before the doctor runs
        doctor.on_train_epoch_end(_trainer(epoch), module)  # type: ignore[arg-type]
    with (tmp_path / "history.csv").open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert list(rows[0])[-1] == "doctor" and "val_kappa" in rows[0]
    assert [r["doctor"].split(":")[0] for r in rows] == ["", "", "", "", "divergence", ""]


def test_report_lists_the_doctors_findings(tmp_path: Path):
    from liandan.reporting.build import _doctor_section

    empty = _doctor_section(tmp_path)  # no doctor.json: nothing was found
    assert empty.id == "doctor" and "found nothing" in empty.body and "<table>" not in empty.body
    history = HistoryCallback(tmp_path / "history.csv")
    doctor = TrainingDoctor(tmp_path, history, "val/mean_iou", lr=0.1)
    module = SimpleNamespace(last_val_metrics=None, class_names=["a", "b"], parameters=list)
    for epoch, loss in enumerate([1.0, 0.8, 0.9, 1.1, 1.4], start=1):
        history.rows.append({"epoch": epoch, "train_loss": loss})
        doctor.on_train_epoch_end(_trainer(epoch), module)  # type: ignore[arg-type]
    body = _doctor_section(tmp_path).body
    finding = doctor.findings[0]
    assert "<th>epoch</th><th>finding</th><th>message</th><th>suggestion</th>" in body
    assert "<td>5</td><td>divergence</td>" in body
    assert html.escape(finding.message) in body and html.escape(finding.advice) in body


# ------------------------------------------------------------ fp16: skipped steps
class InjectInf(L.Callback):
    """Makes one gradient infinite after the backward pass of the given steps."""

    def __init__(self, steps: set[int]) -> None:
        self.steps = steps
        self.lrs: list[float] = []  # the lr after each batch (after the scheduler)

    def on_after_backward(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.global_step in self.steps:
            next(p for p in pl_module.parameters() if p.grad is not None).grad[0] = float("inf")

    def on_train_batch_end(self, trainer: L.Trainer, *args) -> None:
        self.lrs.append(trainer.optimizers[0].param_groups[0]["lr"])


def test_fp16_skipped_step_does_not_advance_the_schedule(tmp_path: Path, caplog):
    """The real fp16 path: autocast to float16 and a GradScaler, on the CPU.

    Lightning turns ``precision="16-mixed"`` into bf16 on a CPU (no scaler), so the test
    hands the Trainer the same MixedPrecision plugin a GPU gets, with a CPU scaler.
    """
    from lightning.pytorch.plugins.precision import MixedPrecision

    from conftest import FAST_CLS
    from liandan.config import Config
    from liandan.engine.task import LiandanTask
    from liandan.optim import lr_at

    cfg = Config.load(
        None, [*FAST_CLS, "task=classify", "optim.lr=0.01", "schedule.warmup_epochs=0"]
    )
    cfg.train.epochs = 1
    generator = torch.Generator().manual_seed(0)
    data = TensorDataset(torch.randn(24, 3, 32, 32, generator=generator), torch.arange(24) % 2)
    loader = DataLoader(data, batch_size=4)  # 6 steps
    task = LiandanTask(cfg, ["a", "b"], 3)
    history = HistoryCallback(tmp_path / "history.csv")
    doctor = TrainingDoctor(tmp_path, history, "val/macro_f1", 0.01, check_gradients=False)
    inject = InjectInf({2})
    # a modest initial scale: no overflow of its own, so step 2 is the only skip
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**8)
    trainer = L.Trainer(
        max_epochs=1,
        accelerator="cpu",
        plugins=[MixedPrecision("16-mixed", "cpu", scaler=scaler)],
        callbacks=[history, doctor, inject],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    with caplog.at_level(logging.INFO, logger="liandan"):
        trainer.fit(task, loader)
    scheduler = trainer.lr_scheduler_configs[0].scheduler
    assert scaler.get_scale() == 2.0**7  # the scaler saw the inf once and backed off
    assert scheduler.last_epoch == 5  # 6 batches, 1 skipped
    # the schedule advanced on every step but the skipped one (batch 3 keeps batch 2's lr)
    expected = [
        lr_at(cfg.schedule, 0.01, k, epochs=1, steps_per_epoch=6) for k in (1, 2, 2, 3, 4, 5)
    ]
    assert inject.lrs == pytest.approx(expected)
    assert "skipped 1 of 6 steps" in caplog.text
    assert not doctor.findings  # one skip is normal, not a finding


def test_most_steps_skipped_is_a_finding():
    finding = check_skipped_steps(5, 6, epoch=2, lr=1e-3)
    assert finding is not None and finding.kind == "amp_skipped" and "5 of 6" in finding.message
    assert "bf16-mixed" in finding.advice
    assert check_skipped_steps(3, 6, epoch=2, lr=1e-3) is None
