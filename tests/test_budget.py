"""`train.budget`: epochs fitted from a timed probe, a stop when epochs run slow."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from conftest import FAST_CLS, make_imagefolder
from liandan.api import train
from liandan.engine.budget import REPORT_S, BudgetCallback, epochs_for_budget


def test_epochs_fit_the_budget():
    # 90% of 600 s, less 40 s of overhead, at 10 s an epoch: 50 epochs
    assert epochs_for_budget(600, 10, 40, 300) == 50
    assert epochs_for_budget(600, 10, 40, 20) == 20  # never more than asked
    assert epochs_for_budget(10, 60, 5, 300) == 1  # at least one epoch


def test_callback_stops_before_overrunning(tmp_path):
    cb = BudgetCallback(budget_s=100 + REPORT_S, path=tmp_path / "budget.json", spent_s=10)
    assert not cb.should_stop(5)  # no epoch measured yet
    cb.epoch_times = [20.0, 25.0]
    assert not cb.should_stop(60)  # 30 s left, the slowest epoch took 25
    assert cb.should_stop(70)  # 20 s left


class _Trainer:
    sanity_checking = False
    should_stop = False


def test_callback_records_time_and_stop(tmp_path):
    path = tmp_path / "budget.json"
    path.write_text(json.dumps({"budget_s": 1.0}))
    cb = BudgetCallback(budget_s=1.0 + REPORT_S, path=path)
    trainer = _Trainer()
    cb.on_train_start(trainer, None)  # type: ignore[arg-type]
    cb.on_train_epoch_start(trainer, None)  # type: ignore[arg-type]
    cb.epoch_times = [0.6]
    cb.start -= 0.5  # half a second used: a 0.6 s epoch no longer fits
    cb.on_validation_end(trainer, None)  # type: ignore[arg-type]
    assert trainer.should_stop and cb.stopped
    cb.on_fit_end(trainer, None)  # type: ignore[arg-type]
    info = json.loads(path.read_text())
    assert info["budget_s"] == 1.0 and info["stopped_by_budget"] and info["epochs_run"] == 2


@pytest.mark.slow
def test_train_with_budget_records_it(tmp_path: Path):
    root = make_imagefolder(tmp_path / "cls", n_per_class=6)
    overrides = [*FAST_CLS, "train.epochs=3", "train.budget=2m"]
    result = train(root, overrides=overrides, out=tmp_path / "runs")
    info = json.loads((result.run_dir / "budget.json").read_text())
    assert info["budget_s"] == 120 and info["probe"]["step_s"] > 0
    assert info["epochs_planned"] == 3  # 3 tiny epochs fit easily: the cap holds
    assert info["epochs_run"] == 3 and info["within_budget"] and info["actual_s"] < 120
    saved = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert saved["train"]["epochs"] == 3 and saved["train"]["patience"] == 3
