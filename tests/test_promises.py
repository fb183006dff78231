"""Tests that prove the promises: what a config says is what training does.

Every optimizer argument reaches the torch optimizer; every schedule's learning rate
inside a real Lightning Trainer run is its closed formula (``liandan.optim.lr_at``)
step by step; the exported weights are the best epoch's (the EMA ones with
``optim.ema``) or the last ones as ``train.export`` says; early stopping stops after
exactly ``train.patience`` epochs without improvement; a trained run beats chance by
a clear margin, and the same run on shuffled labels does not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import pytest
import torch
from safetensors.torch import load_file
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from conftest import FAST_CLS, FAST_SEG, learned, make_imagefolder, make_pairs
from liandan import api
from liandan import metrics as metrics_module
from liandan.config import Config, OptimConfig, ScheduleConfig
from liandan.engine.checkpoint import load_checkpoint_file
from liandan.engine.task import LiandanTask
from liandan.evaluation import evaluate
from liandan.optim import (
    build_optimizer,
    build_scheduler,
    list_optimizers,
    list_schedules,
    lr_at,
)


class Net(nn.Module):
    """Convolutions with biases, a BatchNorm and a LayerNorm: every kind of parameter."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)
        self.bn = nn.BatchNorm2d(4)
        self.norm = nn.LayerNorm(4)
        self.fc = nn.Linear(4, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.norm(self.bn(self.conv(x)).mean((2, 3))))


# ------------------------------------------------------------------ optimizer arguments
TORCH_CLASSES = {
    "sgd": torch.optim.SGD,
    "adagrad": torch.optim.Adagrad,
    "adadelta": torch.optim.Adadelta,
    "rmsprop": torch.optim.RMSprop,
    "adam": torch.optim.Adam,
    "adamw": torch.optim.AdamW,
}


@pytest.mark.parametrize("name", list_optimizers())
def test_every_optimizer_argument_reaches_the_torch_optimizer(name: str) -> None:
    assert set(TORCH_CLASSES) == set(list_optimizers())
    cfg = OptimConfig(
        name=name,  # type: ignore[arg-type]
        lr=0.05,
        weight_decay=0.03,
        momentum=0.7,
        nesterov=name == "sgd",
        betas=(0.8, 0.95),
    )
    net = Net()
    opt = build_optimizer(net, cfg)
    assert type(opt) is TORCH_CLASSES[name]
    no_decay = {id(p) for n, p in net.named_parameters() if n.endswith("bias") or p.ndim == 1}
    assert {id(net.bn.weight), id(net.norm.weight), id(net.conv.bias)} <= no_decay
    seen = set()
    for group in opt.param_groups:
        ids = {id(p) for p in group["params"]}
        seen |= ids
        assert group["lr"] == 0.05
        # biases and norm weights take no decay, every other weight the configured one
        if group["name"].endswith("_no_decay"):
            assert ids <= no_decay and group["weight_decay"] == 0.0
        else:
            assert not ids & no_decay and group["weight_decay"] == 0.03
        if name == "sgd":
            assert group["momentum"] == 0.7 and group["nesterov"] is True
        if name == "rmsprop":
            assert group["momentum"] == 0.7
        if name in ("adam", "adamw"):
            assert tuple(group["betas"]) == (0.8, 0.95)
    assert seen == {id(p) for p in net.parameters()}


@pytest.mark.parametrize("name", list_optimizers())
def test_weight_decay_acts_on_weights_only(name: str) -> None:
    """A step with zero gradients: decayed weights shrink, biases and norms stay."""
    net = Net()
    with torch.no_grad():
        for p in net.parameters():
            p.fill_(1.0)
    opt = build_optimizer(net, OptimConfig(name=name, lr=0.1, weight_decay=0.5))  # type: ignore[arg-type]
    for p in net.parameters():
        p.grad = torch.zeros_like(p)
    opt.step()
    assert bool((net.conv.weight < 1.0).all()) and bool((net.fc.weight < 1.0).all())
    for p in (net.conv.bias, net.bn.weight, net.bn.bias, net.norm.weight, net.fc.bias):
        assert torch.equal(p, torch.ones_like(p))


def test_betas_and_momentum_change_the_steps() -> None:
    """The arguments are used, not only stored: other values, other weights."""

    def trained(cfg: OptimConfig) -> torch.Tensor:
        torch.manual_seed(0)
        net = Net()
        opt = build_optimizer(net, cfg)
        x = torch.randn(4, 3, 8, 8)
        for _ in range(3):
            opt.zero_grad()
            net(x).square().mean().backward()
            opt.step()
        return net.fc.weight.detach().clone()

    for base, other in [
        (OptimConfig(name="adamw", lr=0.01), OptimConfig(name="adamw", lr=0.01, betas=(0.5, 0.9))),
        (OptimConfig(name="sgd", lr=0.1), OptimConfig(name="sgd", lr=0.1, momentum=0.0)),
        (OptimConfig(name="sgd", lr=0.1), OptimConfig(name="sgd", lr=0.1, nesterov=True)),
        (OptimConfig(name="rmsprop", lr=0.01), OptimConfig(name="rmsprop", lr=0.01, momentum=0.0)),
    ]:
        assert not torch.equal(trained(base), trained(other)), other


# ------------------------------------------------------------------ schedules in a Trainer
class LrProbe(L.Callback):
    """The learning rate of every param group as each optimizer step starts."""

    def __init__(self) -> None:
        self.lrs: list[list[float]] = []

    def on_train_batch_start(self, trainer: L.Trainer, pl_module: Any, batch: Any, i: int) -> None:
        self.lrs.append([float(g["lr"]) for g in trainer.optimizers[0].param_groups])


SCHEDULE_KEYS = [
    "schedule.warmup_epochs=1",
    "schedule.step_size=1",
    "schedule.milestones=[1,3]",
    "schedule.gamma=0.5",
    "schedule.t0=1",
    "schedule.t_mult=2",
    "schedule.min_lr_ratio=0.05",
]
EPOCHS, STEPS = 4, 5  # 20 optimizer steps, 5 of them warmup


@pytest.mark.parametrize("name", [n for n in list_schedules() if n != "plateau"])
def test_every_schedule_in_a_trainer_run_follows_its_formula(name: str) -> None:
    cfg = Config.load(
        None,
        [
            *FAST_CLS,
            "task=classify",
            "optim.name=sgd",
            "optim.lr=0.2",
            f"train.epochs={EPOCHS}",
            f"schedule.name={name}",
            *SCHEDULE_KEYS,
        ],
    )
    generator = torch.Generator().manual_seed(0)
    n = STEPS * 4  # batches of 4: STEPS optimizer steps per epoch
    data = TensorDataset(torch.randn(n, 3, 32, 32, generator=generator), torch.arange(n) % 2)
    task = LiandanTask(cfg, ["a", "b"], 3)
    probe = LrProbe()
    trainer = L.Trainer(
        max_epochs=EPOCHS,
        accelerator="cpu",
        callbacks=[probe],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        limit_val_batches=0,
    )
    trainer.fit(task, DataLoader(data, batch_size=4))
    assert len(probe.lrs) == EPOCHS * STEPS
    for step, lrs in enumerate(probe.lrs):
        expected = lr_at(cfg.schedule, 0.2, step, epochs=EPOCHS, steps_per_epoch=STEPS)
        assert lrs == pytest.approx([expected] * len(lrs), rel=1e-9, abs=1e-12), (step, lrs)
    distinct = {round(lrs[0], 12) for lrs in probe.lrs}
    assert len(distinct) >= (1 if name == "constant" else 3)  # the schedule did change it


@pytest.mark.parametrize(
    ("cfg", "read"),
    [
        (OptimConfig(name="sgd", lr=0.1, momentum=0.7), lambda g: g["momentum"]),
        (OptimConfig(name="rmsprop", lr=0.1, momentum=0.5), lambda g: g["momentum"]),
        (OptimConfig(name="adamw", lr=0.1, betas=(0.8, 0.99)), lambda g: g["betas"][0]),
    ],
)
def test_onecycle_cycles_the_configured_momentum(cfg: OptimConfig, read: Any) -> None:
    """onecycle lowers the momentum while the lr rises; it starts and ends at the
    configured one (was: torch's 0.95, whatever optim.momentum or optim.betas said)."""
    opt = build_optimizer(Net(), cfg)
    sched, _ = build_scheduler(opt, ScheduleConfig(name="onecycle"), epochs=4, steps_per_epoch=5)
    momenta = []
    for _ in range(20):
        momenta.append(read(opt.param_groups[0]))
        opt.step()
        sched.step()
    top = momenta[0]
    assert top == pytest.approx(cfg.betas[0] if cfg.name == "adamw" else cfg.momentum)
    assert min(momenta) == pytest.approx(top * 0.85 / 0.95)
    assert momenta[-1] == pytest.approx(top, rel=0.01)


class ScriptedMonitor(LiandanTask):
    """Validation reports ``values[epoch]`` for the monitored metric, nothing else."""

    def __init__(self, cfg: Config, values: list[float]) -> None:
        super().__init__(cfg, ["a", "b"], 3)
        self.values = values

    def validation_step(self, batch: Any, batch_idx: int) -> None:
        return None

    def on_validation_epoch_end(self) -> None:
        self.log(self.cfg.resolved_monitor(), self.values[self.current_epoch])


@pytest.mark.parametrize(
    ("monitor", "values", "cut_from"),
    [
        # macro F1 goes up, then stays: 2 epochs without improvement > patience 1
        ("val/macro_f1", [0.5, 0.6, 0.6, 0.6, 0.6], 4),
        # a loss going down improves every epoch: never cut (was cut as if it were F1)
        ("val/loss", [1.0, 0.9, 0.8, 0.7, 0.6], None),
        ("val/loss", [1.0, 0.9, 0.9, 0.9, 0.9], 4),
    ],
)
def test_plateau_in_a_trainer_run_cuts_when_the_monitor_stalls(
    monitor: str, values: list[float], cut_from: int | None
) -> None:
    cfg = Config.load(
        None,
        [
            *FAST_CLS,
            "task=classify",
            "optim.lr=0.2",
            "train.epochs=5",
            f"train.monitor={monitor}",
            "schedule.name=plateau",
            "schedule.patience=1",
            "schedule.gamma=0.5",
        ],
    )
    data = TensorDataset(torch.randn(8, 3, 32, 32), torch.arange(8) % 2)
    probe = LrProbe()
    trainer = L.Trainer(
        max_epochs=5,
        accelerator="cpu",
        callbacks=[probe],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        num_sanity_val_steps=0,
    )
    loader = DataLoader(data, batch_size=4)  # 2 steps per epoch
    trainer.fit(ScriptedMonitor(cfg, values), loader, loader)
    per_epoch = [probe.lrs[2 * e][0] for e in range(5)]
    expected = [0.2 if cut_from is None or e < cut_from else 0.1 for e in range(5)]
    assert per_epoch == pytest.approx(expected)


# ------------------------------------------------------------------ scripted validation
def script_monitor(monkeypatch: pytest.MonkeyPatch, values: list[float]) -> None:
    """The task's validation reports ``values[k]`` as macro F1 at its k-th epoch; later
    calls (the final evaluation of metrics.json reads the same function) are real."""
    real = metrics_module.compute_metrics  # the tasks' validation_metrics reads it here
    calls = iter(values)

    def scripted(*args: Any, **kwargs: Any) -> dict[str, Any]:
        metrics = real(*args, **kwargs)
        value = next(calls, None)
        if value is not None:
            metrics["overall"]["macro_f1"] = value
        return metrics

    monkeypatch.setattr(metrics_module, "compute_metrics", scripted)


def _history_epochs(run: Path) -> int:
    return len((run / "history.csv").read_text().splitlines()) - 1


@pytest.fixture(scope="module")
def cls_data(module_tmp: Path) -> Path:
    return make_imagefolder(module_tmp / "cls")


def test_early_stopping_stops_after_exactly_patience_epochs(
    cls_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # best at epoch 2, then 3 epochs without improvement (equal is no improvement)
    script_monitor(monkeypatch, [0.2, 0.6, 0.5, 0.6, 0.4, 0.9, 0.9, 0.9])
    overrides = [*FAST_CLS, "train.epochs=8", "train.patience=3"]
    result = api.train(cls_data, overrides=overrides, out=tmp_path, name="es")
    assert _history_epochs(result.run_dir) == 5
    assert load_checkpoint_file(result.run_dir / "checkpoints" / "best.ckpt")["epoch"] == 1


def _exported(run: Path) -> dict[str, torch.Tensor]:
    return load_file(str(run / "model" / "weights.safetensors"))


def _ckpt_weights(run: Path, which: str, prefix: str) -> dict[str, torch.Tensor]:
    state = load_checkpoint_file(run / "checkpoints" / f"{which}.ckpt")["state_dict"]
    return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}


def _same(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> bool:
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


@pytest.mark.parametrize("ema", [False, True])
def test_exported_weights_are_the_best_epochs(
    cls_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ema: bool
) -> None:
    script_monitor(monkeypatch, [0.1, 0.9, 0.2])  # best: epoch 2 of 3
    overrides = [*FAST_CLS, "train.epochs=3", *(["optim.ema=0.5"] if ema else [])]
    run = api.train(cls_data, overrides=overrides, out=tmp_path, name="best").run_dir
    assert load_checkpoint_file(run / "checkpoints" / "best.ckpt")["epoch"] == 1
    prefix = "ema.module." if ema else "model."
    best, last = _ckpt_weights(run, "best", prefix), _ckpt_weights(run, "last", prefix)
    exported = _exported(run)
    assert _same(exported, best)
    assert not _same(exported, last)
    if ema:  # the average, not the raw weights
        assert not _same(exported, _ckpt_weights(run, "best", "model."))


@pytest.mark.parametrize("ema", [False, True])
def test_export_last_exports_the_last_epochs_weights(
    cls_data: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, ema: bool
) -> None:
    script_monitor(monkeypatch, [0.1, 0.9, 0.2])
    overrides = [*FAST_CLS, "train.epochs=3", "train.export=last"]
    overrides += ["optim.ema=0.5"] if ema else []
    run = api.train(cls_data, overrides=overrides, out=tmp_path, name="last").run_dir
    prefix = "ema.module." if ema else "model."
    assert _same(_exported(run), _ckpt_weights(run, "last", prefix))
    assert not _same(_exported(run), _ckpt_weights(run, "best", prefix))


def test_export_auto_is_last_under_a_budget_else_best() -> None:
    assert Config.load(None, []).resolved_export() == "best"
    assert Config.load(None, ["train.budget=10m"]).resolved_export() == "last"
    assert Config.load(None, ["train.budget=10m", "train.export=best"]).resolved_export() == "best"
    assert Config.load(None, ["train.export=last"]).resolved_export() == "last"


# ------------------------------------------------------------------ quality
def shuffle_class_folders(root: Path, seed: int = 0) -> Path:
    """Deal the images of a class folder dataset out to the classes at random, as many
    per class as before: the labels no longer follow the images (a wrong mapping)."""
    files = sorted(root.rglob("*.png"))
    classes = [f.parent.name for f in files]
    targets = np.random.default_rng(seed).permutation(classes)
    for i, (f, cls) in enumerate(zip(files, targets, strict=True)):
        f.rename(root / str(cls) / f"x{i}.png")
    return root


@pytest.fixture(scope="module")
def fresh_cls(module_tmp: Path) -> Path:
    """New images of the same classes, never trained on."""
    return make_imagefolder(module_tmp / "cls-fresh", n_per_class=10, seed=99)


def test_a_trained_classifier_beats_chance_on_new_images(
    cls_data: Path, fresh_cls: Path, tmp_path: Path
) -> None:
    # the built-in defaults (the plan's lr range test picks a rate too low for 2 epochs)
    run = api.train(cls_data, overrides=FAST_CLS, out=tmp_path, name="q", plan=False).run_dir
    metrics = evaluate(run, fresh_cls, split="all", write=False)
    assert sum(c["support"] for c in metrics["per_class"].values()) == 20
    assert learned(metrics), metrics["overall"]


def test_shuffled_labels_do_not_pass_the_quality_bar(fresh_cls: Path, tmp_path: Path) -> None:
    """The assertion has teeth: the same run on shuffled labels fails it."""
    data = shuffle_class_folders(make_imagefolder(tmp_path / "cls"))
    run = api.train(data, overrides=FAST_CLS, out=tmp_path, name="q", plan=False).run_dir
    metrics = evaluate(run, fresh_cls, split="all", write=False)
    assert not learned(metrics), metrics["overall"]
    assert (metrics["overall"]["kappa"] or 0.0) < 0.4


@pytest.mark.slow
def test_a_trained_segmenter_beats_chance_on_new_images(tmp_path: Path) -> None:
    """Background is about 72% of the pixels: a constant or shuffled model gets that
    accuracy with kappa near 0 and a mean IoU near 0.24; this one finds the squares."""
    data = make_pairs(tmp_path / "seg", n=8)
    fresh = make_pairs(tmp_path / "seg-fresh", n=8, seed=99)
    overrides = [*FAST_SEG, "train.epochs=4", "train.steps_per_epoch=8", "optim.lr=0.01"]
    run = api.train(data, overrides=overrides, out=tmp_path, name="q").run_dir
    metrics = evaluate(run, fresh, split="all", write=False)
    assert learned(metrics, accuracy=0.85, kappa=0.5), metrics["overall"]
    assert metrics["overall"]["mean_iou"] >= 0.5
