"""`train.budget`: the command ends within its budget with the schedule at its floor;
epochs sized by measured fixed costs."""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
import yaml

from conftest import FAST_CLS, make_imagefolder
from liandan.api import train
from liandan.config import ScheduleConfig
from liandan.engine.budget import FIXED_SHARE, BudgetCallback, epoch_steps, fit_budget
from liandan.engine.checkpoint import load_checkpoint_file
from liandan.optim import build_scheduler


@pytest.mark.parametrize("fixed_s", [0.5, 3.0, 40.0])
@pytest.mark.parametrize("step_s", [0.01, 0.4, 2.0])
def test_epoch_steps_keep_fixed_costs_under_a_tenth(fixed_s: float, step_s: float) -> None:
    steps = epoch_steps(fixed_s, step_s)
    assert fixed_s <= FIXED_SHARE * steps * step_s + 1e-9
    assert fixed_s > FIXED_SHARE * (steps - 1) * step_s or steps == 4  # and no longer
    # a short budget keeps a few epochs instead
    few = epoch_steps(fixed_s, step_s, train_s=60.0)
    assert few <= steps and (few == 4 or 5 * few * step_s <= 60.0)


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _fake_trainer(scheduler, max_epochs=1000, batches=50):  # type: ignore[no-untyped-def]
    return SimpleNamespace(
        global_step=0,
        world_size=1,
        max_epochs=max_epochs,
        num_training_batches=batches,
        should_stop=False,
        sanity_checking=False,
        is_global_zero=True,
        current_epoch=0,
        lr_scheduler_configs=[SimpleNamespace(scheduler=scheduler)],
    )


def simulate(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    train_s: float,
    planned: int,
    step_s: Callable[[int], float],
) -> tuple[BudgetCallback, list[float]]:
    """A cosine schedule (lr 1 to 0.01) driven by a BudgetCallback on a fake clock, each
    step taking ``step_s(step)`` seconds; returns the callback and each step's lr."""
    import liandan.engine.budget as budget_module

    clock = FakeClock()
    monkeypatch.setattr(budget_module.time, "perf_counter", clock)
    optimizer = torch.optim.SGD(torch.nn.Linear(2, 2).parameters(), lr=1.0)
    cfg = ScheduleConfig(name="cosine", warmup_epochs=0, min_lr_ratio=0.01)
    scheduler, _ = build_scheduler(optimizer, cfg, epochs=1000, steps_per_epoch=50)
    trainer = _fake_trainer(scheduler)
    callback = BudgetCallback(train_s, tmp_path / "budget.json", planned_steps=planned)
    callback.on_train_start(trainer, None)  # type: ignore[arg-type]
    lrs = []
    while not trainer.should_stop:
        clock.now += step_s(trainer.global_step)
        optimizer.step()
        scheduler.step()
        trainer.global_step += 1
        lrs.append(optimizer.param_groups[0]["lr"])
        callback.on_train_batch_end(trainer)  # type: ignore[arg-type]
        assert trainer.global_step < 2000
    return callback, lrs


def test_slow_first_steps_do_not_end_the_run(monkeypatch, tmp_path) -> None:
    """One-off costs of the first steps (a GPU's allocation and cuDNN autotuning: 15 s for
    8 steps) are left out of the pace: the run goes on to its deadline (it stopped after
    8 steps of a 60 s budget when the pace counted them)."""
    callback, lrs = simulate(
        monkeypatch, tmp_path, 20.0, 100, lambda step: 15.0 / 8 if step < 8 else 0.05
    )
    assert len(lrs) > 8 + 80  # about 100 steps of 0.05 s fit the 5 s left
    # halfway through the fast steps the cosine is still near its middle (counting the
    # slow start in the pace had it decayed to 5% there: a run of 60 steps expected)
    assert lrs[8 + 42] > 0.3
    assert callback.elapsed() <= 20.0 + 0.05
    assert lrs[-1] <= 0.05


@pytest.mark.parametrize("slowdown", [1.0, 3.0, 0.3])
def test_schedule_ends_at_its_floor_at_the_deadline(monkeypatch, tmp_path, slowdown) -> None:
    """1 s per step as the probe said, then a machine 3x slower (or faster) from step 40:
    the run stops by its training deadline, at the cosine's floor."""
    callback, lrs = simulate(
        monkeypatch, tmp_path, 200.0, 200, lambda step: 1.0 if step < 40 else slowdown
    )
    elapsed = callback.elapsed()
    assert 200.0 - 2 * 8 * slowdown <= elapsed <= 200.0 + slowdown  # the deadline, +- a check
    assert lrs[-1] <= 0.05  # the floor (0.01), within the last check's step
    assert lrs[len(lrs) // 2] > 0.3  # not decayed early


@pytest.mark.parametrize("spike_at", [100, 130, 150])
def test_a_load_spike_near_the_end_does_not_end_the_run_early(
    monkeypatch, tmp_path, spike_at
) -> None:
    """1 s steps, then 24 steps of 4 s (another job took the cores), then 1 s again: the
    slow spell's pace may plan only a few more steps, but when they are done and time is
    left the run goes on to its deadline (it stopped at the stale plan, up to a minute
    early, with the schedule cut short)."""
    callback, lrs = simulate(
        monkeypatch,
        tmp_path,
        200.0,
        200,
        lambda step: 4.0 if spike_at <= step < spike_at + 24 else 1.0,
    )
    assert 200.0 - 2.0 <= callback.elapsed() <= 200.0 + 4.0  # the deadline, +- a step
    assert lrs[-1] <= 0.05  # the floor, at the last step


def test_budget_fit_sizes_epochs_and_the_schedule(tmp_path: Path) -> None:
    """2 s of validation and checkpoint per epoch, 0.5 s steps, 5 minutes: epochs of
    40 steps (fixed costs a tenth), about 500 steps in all, warmup 5% of them."""
    from liandan.config import Config

    cfg = Config.load(None, ["train.budget=5m", "train.epochs=300"])
    bundle = SimpleNamespace(train_loader=[None] * 3, val_loader=_Loader(4, SimpleNamespace()))
    probe = {"step_s": 0.5, "val_batch_s": 0.25, "ckpt_s": 1.0}
    info = fit_budget(cfg, bundle, None, tmp_path, spent_s=10.0, probe=probe)
    assert cfg.train.steps_per_epoch == info["steps_per_epoch"] == 40  # not the 3 of a pass
    assert info["fixed_epoch_s"] == 2.0
    assert info["train_s"] == pytest.approx(0.98 * 300 - 10 - info["after_training_s"], abs=0.5)
    assert abs(info["steps_planned"] - info["train_s"] / (40 * 0.5 + 2.0) * 40) <= 1
    assert cfg.schedule.warmup_epochs <= 0.05 * info["steps_planned"] / 40 + 1e-3
    assert cfg.train.patience is None  # no early stopping from the budget
    assert json.loads((tmp_path / "budget.json").read_text())["steps_per_epoch"] == 40
    # a step count you set is yours
    cfg = Config.load(None, ["train.budget=2m", "train.steps_per_epoch=7"])
    fit_budget(cfg, bundle, None, tmp_path, probe=probe)
    assert cfg.train.steps_per_epoch == 7


def test_fast_steps_get_longer_epochs_so_that_the_budget_is_used(tmp_path: Path) -> None:
    """A LeNet on digits: 7.5 ms steps, 0.02 s of validation. Epochs of the fixed-cost
    rule (22 steps) times the 300 epochs would stop the run after a fifth of its 5
    minutes (it ended at 162 s of 300): the epochs get longer instead, and the planned
    steps fill the training time."""
    from liandan.config import Config

    cfg = Config.load(None, ["train.budget=5m", "train.epochs=300"])
    bundle = SimpleNamespace(train_loader=[None] * 22, val_loader=_Loader(4, SimpleNamespace()))
    probe = {"step_s": 0.0075, "val_batch_s": 0.0028, "ckpt_s": 0.005}
    info = fit_budget(cfg, bundle, None, tmp_path, spent_s=7.0, probe=probe)
    steps = cfg.train.steps_per_epoch
    assert steps > 22 and info["steps_planned"] <= 300 * steps
    by_time = info["train_s"] / (0.0075 + info["fixed_epoch_s"] / steps)
    assert info["steps_planned"] >= 0.99 * by_time  # the time decides, not train.epochs
    # a number of steps per epoch you set is kept, and then train.epochs does cap the run
    cfg = Config.load(None, ["train.budget=5m", "train.epochs=300", "train.steps_per_epoch=22"])
    info = fit_budget(cfg, bundle, None, tmp_path, probe=probe)
    assert cfg.train.steps_per_epoch == 22 and info["steps_planned"] == 300 * 22


class _Loader(list):  # type: ignore[type-arg]
    def __init__(self, n: int, dataset: object) -> None:
        super().__init__([None] * n)
        self.dataset = dataset


@pytest.mark.slow
def test_budgeted_run_uses_its_budget_and_exports_the_last_weights(tmp_path: Path) -> None:
    root = make_imagefolder(tmp_path / "cls", n_per_class=6)
    overrides = [*FAST_CLS, "train.epochs=300", "train.budget=25s", "optim.ema=0.9"]
    result = train(root, overrides=overrides, out=tmp_path / "runs")
    info = json.loads((result.run_dir / "budget.json").read_text())
    assert info["steps_per_epoch"] > info["steps_per_pass"]  # small data: longer epochs
    assert info["within_budget"]
    assert info["train_s_used"] >= 0.7 * info["train_s"]  # no early stop: the budget is used
    assert info["epochs_run"] < 300
    last = load_checkpoint_file(result.run_dir / "checkpoints" / "last.ckpt")
    assert last["global_step"] == info["steps_run"]
    lr = last["optimizer_states"][0]["param_groups"][0]["lr"]
    saved = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    assert lr <= 0.1 * saved["optim"]["lr"]  # the schedule ended near its floor
    # train.export auto = last under a budget: the exported weights are the last EMA ones
    from safetensors.torch import load_file

    exported = load_file(result.run_dir / "model" / "weights.safetensors")
    prefix = "ema.module."  # the EMA copy is a submodule of the task
    ema = {k[len(prefix) :]: v for k, v in last["state_dict"].items() if k.startswith(prefix)}
    assert exported.keys() == ema.keys()
    assert all(torch.equal(exported[k], ema[k]) for k in exported)


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
    overrides += ["loss.class_weights=auto"]  # the checkpoint probe builds the model alone
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


@pytest.mark.parametrize(("precision", "dtype"), [("bf16-mixed", torch.bfloat16), ("32", None)])
def test_time_probe_times_steps_in_the_training_precision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, precision: str, dtype: torch.dtype | None
) -> None:
    """The probe that sizes epochs and the schedule times the steps training will take:
    under bf16 autocast when the Trainer uses it (twice as fast on a bf16 CPU)."""
    from liandan.api import _class_weights, resolve_auto
    from liandan.config import Config
    from liandan.data.datamodule import build_data
    from liandan.engine.budget import time_probe
    from liandan.tasks.classify import Classify

    root = make_imagefolder(tmp_path / "cls", n_per_class=4)
    cfg = Config.load(None, [*FAST_CLS, f"data.root={root}", f"train.precision={precision}"])
    bundle = build_data(cfg)
    resolve_auto(cfg, bundle)
    seen = []
    original = Classify.batch_loss

    def batch_loss(self, model, criterion, x, y):  # type: ignore[no-untyped-def]
        on = torch.is_autocast_enabled("cpu")
        seen.append(torch.get_autocast_dtype("cpu") if on else None)
        return original(self, model, criterion, x, y)

    monkeypatch.setattr(Classify, "batch_loss", batch_loss)
    probe = time_probe(cfg, bundle, _class_weights(cfg, bundle))
    assert probe["step_s"] > 0 and seen and set(seen) == {dtype}


def test_the_checkpoint_probe_leaves_the_seeds_random_stream_alone(tmp_path: Path) -> None:
    """The budget times a checkpoint of a throwaway model. Building it must not draw
    from the global random stream: the run's own model is built next, and it must start
    from the same weights with a budget as without one (a detection demo whose weights
    moved that way collapsed where the unbudgeted run learned)."""
    from liandan.config import Config
    from liandan.engine.budget import _probe_checkpoint

    cfg = Config.load(None, ["task=classify", "model.arch=lenet", "data.image_size=32"])
    bundle = SimpleNamespace(classes=SimpleNamespace(num_classes=3), in_channels=3)
    torch.manual_seed(0)
    before = torch.get_rng_state()
    assert _probe_checkpoint(cfg, bundle, tmp_path) > 0
    assert torch.equal(torch.get_rng_state(), before)
