"""The training doctor: each finding provoked by a small synthetic history."""

from __future__ import annotations

import json
import logging
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

from liandan.engine.callbacks import HistoryCallback
from liandan.engine.doctor import (
    TrainingDoctor,
    check_divergence,
    check_never_predicted,
    check_overfitting,
    check_plateau,
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
