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
    current_epoch = 0
    world_size = 1
    should_stop = False


def test_callback_records_time_and_stop(tmp_path):
    path = tmp_path / "budget.json"
    path.write_text(json.dumps({"budget_s": 1.0}))
    cb = BudgetCallback(budget_s=1.0 + REPORT_S, path=path)
    trainer = _Trainer()
    cb.on_train_start(trainer, None)  # type: ignore[arg-type]
    cb.on_train_epoch_start(trainer, None)  # type: ignore[arg-type]
    cb.epoch_times = [5.0, 0.6]  # the first epoch's one-off costs do not count
    cb.start -= 0.5  # half a second used: a 0.6 s epoch no longer fits
    cb.on_validation_end(trainer, None)  # type: ignore[arg-type]
    assert trainer.should_stop and cb.stopped
    cb.on_fit_end(trainer, None)  # type: ignore[arg-type]
    info = json.loads(path.read_text())
    assert info["budget_s"] == 1.0 and info["stopped_by_budget"] and info["epochs_run"] == 3


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


@pytest.mark.parametrize(
    ("budget", "steps"),
    [("10m", 0), ("30m", 100)],  # 10% of the budget at a (faked) 1 s per step
)
def test_lr_range_test_takes_at_most_a_tenth_of_the_budget(tmp_path, monkeypatch, budget, steps):
    import liandan.engine.budget as budget_module

    probes = []

    def probe(*args, **kwargs):
        probes.append(1)
        return {"step_s": 1.0, "val_batch_s": 0.1}

    monkeypatch.setattr(budget_module, "time_probe", probe)
    root = make_imagefolder(tmp_path / "cls", n_per_class=6)
    overrides = [*FAST_CLS, "train.epochs=1", "optim.lr=auto", f"train.budget={budget}"]
    result = train(root, overrides=overrides, out=tmp_path / "runs")
    saved = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert len(probes) == 1  # one timing serves the lr cap and the epoch fit
    if steps == 0:  # 60 affordable steps: a cut-short test is not trusted, AdamW's usual rate
        assert saved["optim"]["lr"] == 1e-3
        assert not (result.run_dir / "lr_find.json").exists()
        assert any("too short for the lr range test" in n for n in result.notes)
    else:
        rows = (result.run_dir / "lr_find.csv").read_text().strip().splitlines()
        assert 1 < len(rows) - 1 <= steps  # the curve stops at the cap (or on divergence)
        assert (
            saved["optim"]["lr"]
            == json.loads((result.run_dir / "lr_find.json").read_text())["suggestion"]
        )


@pytest.mark.slow
def test_run_length_refitted_from_the_first_epoch(tmp_path, monkeypatch):
    import liandan.engine.budget as budget_module

    # a probe far too pessimistic plans a single epoch; the first real epoch is fast,
    # so the run is re-fitted to the 6 epochs the config allows, schedule included
    slow = {"step_s": 60.0, "val_batch_s": 0.1}
    monkeypatch.setattr(budget_module, "time_probe", lambda *a, **k: slow)
    root = make_imagefolder(tmp_path / "cls", n_per_class=6)
    overrides = [*FAST_CLS, "train.epochs=6", "train.budget=2m", "schedule.warmup_epochs=0"]
    overrides += ["train.patience=50"]  # your patience is kept (no early stop here)
    result = train(root, overrides=overrides, out=tmp_path / "runs")
    info = json.loads((result.run_dir / "budget.json").read_text())
    assert info["epochs_planned"] == 1 and info["refits"] == [[1, 6]]
    assert info["epochs_run"] == 6 and info["within_budget"]
    saved = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert saved["train"]["epochs"] == 6  # a resume rebuilds the re-fitted schedule
    lrs = [
        float(r.split(",")[3])
        for r in (result.run_dir / "history.csv").read_text().splitlines()[1:]
    ]
    # the 1-epoch cosine had decayed by the end of epoch 1; re-fitted to 6 epochs, it is
    # high again in epoch 2 and reaches its floor only at the end
    assert lrs[1] > 0.5 * 1e-3 and lrs[-1] < 0.05 * 1e-3


def test_epochs_are_shortened_when_whole_ones_would_be_too_few(tmp_path: Path) -> None:
    """200 steps at 0.5 s: one whole epoch fits 2 minutes; epochs are cut to a step
    count that lets 10 of them fit, written to the config (a resume keeps it)."""
    from types import SimpleNamespace

    from liandan.config import Config
    from liandan.engine.budget import MIN_BUDGET_EPOCHS, SAFETY, fit_budget

    cfg = Config.load(None, ["train.budget=2m", "train.epochs=300"])
    bundle = SimpleNamespace(train_loader=[None] * 200, val_loader=[None] * 4)
    probe = {"step_s": 0.5, "val_batch_s": 0.25}
    info = fit_budget(cfg, bundle, None, tmp_path, probe=probe)
    steps = info["steps_per_epoch"]
    assert cfg.train.steps_per_epoch == steps and 4 <= steps < 200
    assert info["epochs_planned"] == cfg.train.epochs >= MIN_BUDGET_EPOCHS
    planned = cfg.train.epochs * (steps * 0.5 + 4 * 0.25) + info["after_training_s"]
    assert planned <= SAFETY * 120  # the shortened epochs still fit the budget
    assert json.loads((tmp_path / "budget.json").read_text())["steps_per_epoch"] == steps
    # whole epochs that fit ten times over are left alone
    cfg = Config.load(None, ["train.budget=60m", "train.epochs=300"])
    info = fit_budget(cfg, bundle, None, tmp_path, probe=probe)
    assert info["steps_per_epoch"] is None and cfg.train.steps_per_epoch is None
    assert info["epochs_planned"] >= MIN_BUDGET_EPOCHS
    # a step cap you set is yours: kept even when few epochs fit
    cfg = Config.load(None, ["train.budget=2m", "train.steps_per_epoch=150"])
    info = fit_budget(cfg, bundle, None, tmp_path, probe=probe)
    assert cfg.train.steps_per_epoch == 150 and info["steps_per_epoch"] is None
