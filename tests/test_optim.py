"""Tests for liandan.optim: param groups, optimizers, every schedule's curve, EMA."""

from __future__ import annotations

import math
from typing import Any

import pytest
import torch
from torch import nn

from liandan.config import OptimConfig, ScheduleConfig
from liandan.errors import ConfigError
from liandan.optim import (
    ModelEMA,
    build_optimizer,
    build_scheduler,
    group_lrs,
    list_optimizers,
    list_schedules,
    lr_at,
    param_groups,
)

LR = 0.1


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.encoder = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU())
        self.head = nn.Sequential(nn.Flatten(), nn.Linear(4, 2))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.encoder(x).mean((2, 3), keepdim=True))


def _names(groups: list[dict[str, Any]]) -> dict[str, list[int]]:
    return {g["name"]: sorted(id(p) for p in g["params"]) for g in groups}


def _ids(*params: object) -> list[int]:
    return sorted(id(p) for p in params)


# ----------------------------------------------------------------- parameter groups
def test_no_weight_decay_on_biases_and_norms() -> None:
    net = Net()
    groups = param_groups(net, 0.05, lr=LR)
    conv, bn, linear = net.encoder[0], net.encoder[1], net.head[1]
    assert _names(groups) == {
        "model": _ids(conv.weight, linear.weight),
        "model_no_decay": _ids(conv.bias, bn.weight, bn.bias, linear.bias),
    }
    decay = {g["name"]: g["weight_decay"] for g in groups}
    assert decay == {"model": 0.05, "model_no_decay": 0.0}


def test_encoder_groups_get_lr_mult_and_frozen_params_are_left_out() -> None:
    net = Net()
    net.head[1].bias.requires_grad_(False)
    groups = param_groups(
        net, 0.01, encoder_params=list(net.encoder.parameters()), encoder_lr_mult=0.1, lr=LR
    )
    lrs = {g["name"]: g["lr"] for g in groups}
    assert lrs == pytest.approx({"encoder": 0.01, "encoder_no_decay": 0.01, "head": LR})
    assert _names(groups)["head"] == _ids(net.head[1].weight)  # head_no_decay empty: skipped


def test_foreign_encoder_params_and_no_trainable_params() -> None:
    with pytest.raises(ValueError):
        param_groups(Net(), 0.0, encoder_params=[nn.Parameter(torch.ones(1))], lr=LR)
    frozen = nn.Linear(2, 2).requires_grad_(False)
    with pytest.raises(ConfigError):
        param_groups(frozen, 0.0, lr=LR)


# ----------------------------------------------------------------- optimizers
@pytest.mark.parametrize("name", list_optimizers())
def test_every_optimizer_builds_and_steps(name: str) -> None:
    net = Net()
    cfg = OptimConfig(name=name, lr=0.05, nesterov=name == "sgd", encoder_lr_mult=0.5)
    opt = build_optimizer(net, cfg, encoder_params=list(net.encoder.parameters()))
    before = [p.detach().clone() for p in net.parameters()]
    net(torch.randn(2, 3, 8, 8)).pow(2).sum().backward()
    opt.step()
    assert any(not torch.equal(b, p) for b, p in zip(before, net.parameters(), strict=True))
    assert group_lrs(opt)["encoder"] == pytest.approx(0.025)
    assert group_lrs(opt)["head"] == pytest.approx(0.05)


def test_nesterov_without_momentum() -> None:
    with pytest.raises(ConfigError) as err:
        build_optimizer(Net(), OptimConfig(name="sgd", momentum=0.0, nesterov=True))
    assert err.value.where == "optim.nesterov"


# ----------------------------------------------------------------- schedules
def _curve(cfg: ScheduleConfig, epochs: int, spe: int, mult: float = 1.0) -> list[list[float]]:
    """lr of each param group at each optimizer step of a real run."""
    net = Net()
    opt = build_optimizer(
        net,
        OptimConfig(name="sgd", lr=LR, encoder_lr_mult=mult),
        encoder_params=list(net.encoder.parameters()),
    )
    sched, interval = build_scheduler(opt, cfg, epochs=epochs, steps_per_epoch=spe)
    assert interval == "step"
    lrs = []
    for _ in range(epochs * spe):
        lrs.append([g["lr"] for g in opt.param_groups])
        opt.step()
        sched.step()
    return lrs


def _expected(cfg: ScheduleConfig, epochs: int, spe: int) -> list[float]:
    """Each schedule's formula, written out independently of liandan.optim."""
    total, warm, m = epochs * spe, int(cfg.warmup_epochs * spe), cfg.min_lr_ratio
    out = []
    for k in range(total):
        t, length = k - warm, total - warm
        if k < warm:
            out.append(LR * (0.01 + 0.99 * k / warm))
        elif cfg.name == "constant":
            out.append(LR)
        elif cfg.name == "cosine":
            out.append(LR * m + (LR - LR * m) * (1 + math.cos(math.pi * t / length)) / 2)
        elif cfg.name == "poly":
            out.append(LR * m + (LR - LR * m) * (1 - t / length) ** cfg.power)
        elif cfg.name == "step":
            out.append(LR * cfg.gamma ** ((k // spe) // cfg.step_size))
        elif cfg.name == "multistep":
            out.append(LR * cfg.gamma ** len([e for e in cfg.milestones if k // spe >= e]))
        elif cfg.name == "exponential":
            out.append(LR * cfg.gamma ** (t / spe))
        elif cfg.name == "sgdr":  # cycles of t0, t0*t_mult ... epochs after warmup
            start, cycle = 0, cfg.t0 * spe
            while t >= start + cycle:
                start, cycle = start + cycle, cycle * cfg.t_mult
            out.append(LR * m + (LR - LR * m) * (1 + math.cos(math.pi * (t - start) / cycle)) / 2)
    return out


CASES = [
    ScheduleConfig(name="constant", warmup_epochs=2),
    ScheduleConfig(name="cosine", warmup_epochs=1, min_lr_ratio=0.05),
    ScheduleConfig(name="cosine", warmup_epochs=0),
    ScheduleConfig(name="poly", warmup_epochs=1, power=0.9, min_lr_ratio=0.0),
    ScheduleConfig(name="step", warmup_epochs=1, step_size=3, gamma=0.5),
    ScheduleConfig(name="multistep", warmup_epochs=0.5, milestones=[4, 7], gamma=0.1),
    ScheduleConfig(name="exponential", warmup_epochs=1, gamma=0.8),
    ScheduleConfig(name="sgdr", warmup_epochs=1, t0=2, t_mult=2, min_lr_ratio=0.0),
]


@pytest.mark.parametrize("cfg", CASES, ids=lambda c: f"{c.name}-w{c.warmup_epochs}")
def test_schedule_curves(cfg: ScheduleConfig) -> None:
    epochs, spe = 10, 4
    curve = _curve(cfg, epochs, spe, mult=0.1)
    expected = _expected(cfg, epochs, spe)
    closed = [lr_at(cfg, LR, k, epochs=epochs, steps_per_epoch=spe) for k in range(epochs * spe)]
    head = [lrs[-1] for lrs in curve]
    assert head == pytest.approx(expected, rel=1e-9, abs=1e-12)
    assert closed == pytest.approx(expected, rel=1e-9, abs=1e-12)
    # the encoder groups follow the same shape at a tenth of the lr
    assert [lrs[0] for lrs in curve] == pytest.approx([0.1 * v for v in expected])


def test_sgdr_restarts_and_warmup_ramp() -> None:
    cfg = ScheduleConfig(name="sgdr", warmup_epochs=1, t0=2, t_mult=2, min_lr_ratio=0.0)
    spe = 4
    lrs = [lr_at(cfg, LR, k, epochs=10, steps_per_epoch=spe) for k in range(40)]
    assert lrs[0] == pytest.approx(0.01 * LR)
    assert lrs[2] == pytest.approx(LR * (0.01 + 0.99 * 0.5))
    # restarts at lr at the end of warmup and after 2 and 2 + 4 epochs of cycles
    restarts = [k for k in range(1, 40) if lrs[k] > lrs[k - 1] and k >= spe]
    assert restarts == [spe, spe + 2 * spe, spe + 6 * spe]
    assert all(lrs[k] == pytest.approx(LR) for k in restarts)


def test_warmup_is_at_most_half_a_short_run() -> None:
    cfg = ScheduleConfig(name="cosine", warmup_epochs=1)
    lrs = [lr_at(cfg, LR, k, epochs=1, steps_per_epoch=10) for k in range(10)]
    assert lrs[5] == pytest.approx(LR)  # warmup of 5 steps, then cosine from lr
    with pytest.raises(ValueError):
        lr_at(cfg, LR, 0, epochs=1, steps_per_epoch=0)


def test_onecycle_matches_lr_at_and_its_shape() -> None:
    cfg = ScheduleConfig(name="onecycle", warmup_epochs=3)  # warmup ignored
    epochs, spe = 5, 8
    curve = [lrs[-1] for lrs in _curve(cfg, epochs, spe)]
    closed = [lr_at(cfg, LR, k, epochs=epochs, steps_per_epoch=spe) for k in range(40)]
    assert curve == pytest.approx(closed, rel=1e-9)
    peak = int(0.25 * 40) - 1
    assert closed[0] == pytest.approx(LR / 25)
    assert closed[peak] == pytest.approx(LR) and max(closed) == pytest.approx(LR)
    assert closed[-1] == pytest.approx(LR / 25 / 1e4)


def test_plateau_steps_per_epoch_on_the_metric() -> None:
    opt = build_optimizer(Net(), OptimConfig(name="adam", lr=LR))
    cfg = ScheduleConfig(name="plateau", gamma=0.5)
    sched, interval = build_scheduler(opt, cfg, epochs=20, steps_per_epoch=3)
    assert interval == "epoch"
    assert isinstance(sched, torch.optim.lr_scheduler.ReduceLROnPlateau)
    for metric in [0.5, 0.6] + [0.6] * 6:  # improves, then 6 epochs without (patience 5)
        sched.step(metric)
    assert opt.param_groups[0]["lr"] == pytest.approx(LR * 0.5)
    assert lr_at(cfg, LR, 7, epochs=20, steps_per_epoch=3) == LR


def test_every_schedule_builds() -> None:
    for name in list_schedules():
        opt = build_optimizer(Net(), OptimConfig(name="sgd", lr=LR))
        build_scheduler(opt, ScheduleConfig(name=name), epochs=3, steps_per_epoch=4)


# ----------------------------------------------------------------- EMA
def test_ema_after_one_update() -> None:
    net = Net()
    net.train()(torch.randn(4, 3, 8, 8))  # fills the BatchNorm running statistics
    ema = ModelEMA(net, decay=0.9)
    old = {k: v.clone() for k, v in net.state_dict().items()}
    with torch.no_grad():
        for p in net.parameters():
            p.add_(torch.randn_like(p))
    net(torch.randn(4, 3, 8, 8))
    ema.update(net)
    new = net.state_dict()
    for key, value in ema.module.state_dict().items():
        if value.is_floating_point():
            assert torch.allclose(value, 0.9 * old[key] + 0.1 * new[key], atol=1e-6), key
        else:
            assert torch.equal(value, new[key]), key
    assert not any(p.requires_grad for p in ema.module.parameters())
    restored = ModelEMA(Net(), decay=0.5)
    restored.load_state_dict(ema.state_dict())
    assert int(restored.num_updates) == 1 and restored.decay == 0.5  # the config's decay
    assert torch.equal(restored.module.head[1].weight, ema.module.head[1].weight)
