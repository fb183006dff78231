"""Optimizers, learning-rate schedules and a moving average of the weights.

``build_optimizer`` returns a plain ``torch.optim`` optimizer over named parameter
groups (no weight decay on biases and norm weights; a lower lr for a pretrained encoder);
``build_scheduler`` returns a torch scheduler stepped once per optimizer step (plateau:
once per epoch). Every step-based schedule is one closed-form factor of the step,
``lr_at`` evaluates it, so plots and tests see exactly what training does.

>>> from liandan.config import OptimConfig, ScheduleConfig
>>> model = torch.nn.Linear(4, 2)
>>> opt = build_optimizer(model, OptimConfig(name="sgd", lr=0.1))
>>> sched, interval = build_scheduler(opt, ScheduleConfig(), epochs=10, steps_per_epoch=5)
>>> interval
'step'
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn
from torch.optim.lr_scheduler import LambdaLR, LRScheduler, OneCycleLR, ReduceLROnPlateau

from liandan.config import OptimConfig, ScheduleConfig
from liandan.errors import ConfigError

ONECYCLE_PCT_START = 0.25  # share of steps rising to the max lr (fastai's fit_one_cycle)
ONECYCLE_DIV, ONECYCLE_FINAL_DIV = 25.0, 1e4  # torch OneCycleLR defaults
ONECYCLE_MAX_MOMENTUM, ONECYCLE_MOMENTUM_DIP = 0.95, 0.85 / 0.95  # torch's 0.95 -> 0.85


# ----------------------------------------------------------------- parameter groups
def param_groups(
    model: nn.Module,
    weight_decay: float,
    *,
    encoder_params: list[nn.Parameter] | None = None,
    encoder_lr_mult: float = 1.0,
    lr: float,
) -> list[dict[str, Any]]:
    """Split trainable parameters into named optimizer groups.

    Biases and 1-D parameters (norm weights and biases) get no weight decay, since
    decaying them only fights normalization. With ``encoder_params`` the groups are
    ``encoder``, ``encoder_no_decay`` (lr * ``encoder_lr_mult``), ``head``,
    ``head_no_decay``; without, ``model`` and ``model_no_decay``. Empty groups and
    frozen parameters (``requires_grad=False``) are left out.

    Args:
        model: the network.
        weight_decay: decay of the decayed groups.
        encoder_params: parameters of a pretrained encoder, if any.
        encoder_lr_mult: the encoder's lr is ``lr * encoder_lr_mult``.
        lr: base learning rate.

    Returns:
        Dicts with ``name``, ``params``, ``lr`` and ``weight_decay``, for any torch optimizer.

    Raises:
        ConfigError: the model has no trainable parameter.
    """
    encoder_ids = {id(p) for p in encoder_params or []}
    model_ids = {id(p) for p in model.parameters()}
    if not encoder_ids <= model_ids:
        raise ValueError("encoder_params holds parameters that are not in the model")
    parts = ("encoder", "head") if encoder_params is not None else ("model", "model")
    buckets: dict[str, list[nn.Parameter]] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        part = parts[0] if id(param) in encoder_ids else parts[1]
        no_decay = param.ndim <= 1 or name.endswith(".bias")
        buckets.setdefault(f"{part}_no_decay" if no_decay else part, []).append(param)
    if not buckets:
        raise ConfigError(
            "the model has no trainable parameters",
            where="model.transfer",
            hint="use transfer: partial or full",
        )
    groups = []
    for group_name in (parts[0], f"{parts[0]}_no_decay", parts[1], f"{parts[1]}_no_decay"):
        params = buckets.pop(group_name, None)
        if params:
            mult = encoder_lr_mult if group_name.startswith("encoder") else 1.0
            decay = 0.0 if group_name.endswith("_no_decay") else weight_decay
            groups.append(
                {"name": group_name, "params": params, "lr": lr * mult, "weight_decay": decay}
            )
    return groups


# ----------------------------------------------------------------- optimizers
OptimizerFactory = Callable[[list[dict[str, Any]], OptimConfig], torch.optim.Optimizer]
# Each group carries its own lr (param_groups), so the factories need no default lr.
OPTIMIZERS: dict[str, OptimizerFactory] = {
    "sgd": lambda g, c: torch.optim.SGD(g, momentum=c.momentum, nesterov=c.nesterov),
    "adagrad": lambda g, c: torch.optim.Adagrad(g),
    # Adadelta's usual lr is 1.0 (Zeiler 2012): it scales an already adaptive step.
    "adadelta": lambda g, c: torch.optim.Adadelta(g),
    "rmsprop": lambda g, c: torch.optim.RMSprop(g, momentum=c.momentum),
    "adam": lambda g, c: torch.optim.Adam(g, betas=c.betas),  # weight decay as L2 in the gradient
    "adamw": lambda g, c: torch.optim.AdamW(g, betas=c.betas),  # decoupled weight decay
}


def list_optimizers() -> list[str]:
    """Names accepted in ``optim.name``."""
    return sorted(OPTIMIZERS)


def build_optimizer(
    model: nn.Module, cfg: OptimConfig, *, encoder_params: list[nn.Parameter] | None = None
) -> torch.optim.Optimizer:
    """Build the optimizer named in ``cfg.name`` over :func:`param_groups`.

    Args:
        model: the network.
        cfg: the ``optim`` config section (lr, weight_decay, momentum, nesterov,
            betas, encoder_lr_mult).
        encoder_params: parameters of a pretrained encoder, trained at
            ``lr * cfg.encoder_lr_mult``.

    Returns:
        A ``torch.optim`` optimizer; each param group keeps its ``name``.

    Raises:
        ConfigError: nesterov without momentum.
    """
    if cfg.name == "sgd" and cfg.nesterov and cfg.momentum == 0:
        raise ConfigError(
            "nesterov needs momentum", where="optim.nesterov", hint="set optim.momentum, e.g. 0.9"
        )
    if isinstance(cfg.lr, str):
        raise ConfigError(
            "optim.lr is still auto when the optimizer is built",
            where="optim.lr",
            hint="resolve it first (liandan.lr_find.resolve_lr), or set a number",
        )
    groups = param_groups(
        model,
        cfg.weight_decay,
        encoder_params=encoder_params,
        encoder_lr_mult=cfg.encoder_lr_mult,
        lr=cfg.lr,
    )
    return OPTIMIZERS[cfg.name](groups, cfg)


# ----------------------------------------------------------------- schedules
@dataclass(frozen=True)
class Clock:
    """Where a step sits in the run: ``warmup`` steps, then the schedule proper."""

    step: int
    warmup: int
    total: int
    steps_per_epoch: int

    @property
    def t(self) -> int:
        """Steps since the warmup ended."""
        return self.step - self.warmup

    @property
    def length(self) -> int:
        """Steps of the schedule after warmup (at least 1)."""
        return max(1, self.total - self.warmup)

    @property
    def epoch(self) -> int:
        """Epoch of the run (absolute, warmup included)."""
        return self.step // self.steps_per_epoch


def _anneal(cfg: ScheduleConfig, progress: float) -> float:
    """Cosine from 1 (progress 0) to ``min_lr_ratio`` (progress 1)."""
    m = cfg.min_lr_ratio
    return m + (1.0 - m) * (1.0 + math.cos(math.pi * min(progress, 1.0))) / 2.0


def _sgdr(cfg: ScheduleConfig, c: Clock) -> float:
    # Loshchilov & Hutter 2017: cycles of t0, t0*t_mult, ... epochs, restarting at lr.
    cycle, pos = cfg.t0 * c.steps_per_epoch, c.t
    while pos >= cycle:
        pos, cycle = pos - cycle, cycle * cfg.t_mult
    return _anneal(cfg, pos / cycle)


def _onecycle(cfg: ScheduleConfig, c: Clock) -> float:
    # torch OneCycleLR, cos annealing, two phases, as a factor of the max lr.
    initial, final = 1.0 / ONECYCLE_DIV, 1.0 / ONECYCLE_DIV / ONECYCLE_FINAL_DIV
    rise_end = float(ONECYCLE_PCT_START * c.total) - 1
    if c.step <= rise_end:
        start, end, pct = initial, 1.0, c.step / rise_end
    else:
        start, end, pct = 1.0, final, (c.step - rise_end) / (c.total - 1 - rise_end)
    return end + (start - end) / 2.0 * (math.cos(math.pi * pct) + 1.0)


ScheduleFactor = Callable[[ScheduleConfig, Clock], float]
SCHEDULES: dict[str, ScheduleFactor] = {
    "constant": lambda cfg, c: 1.0,
    # step and multistep count the run's epochs, as torch's StepLR / MultiStepLR do.
    "step": lambda cfg, c: cfg.gamma ** (c.epoch // cfg.step_size),
    "multistep": lambda cfg, c: cfg.gamma ** sum(c.epoch >= m for m in cfg.milestones),
    "exponential": lambda cfg, c: cfg.gamma ** (c.t / c.steps_per_epoch),
    "cosine": lambda cfg, c: _anneal(cfg, c.t / c.length),
    "sgdr": _sgdr,
    "poly": lambda cfg, c: (
        cfg.min_lr_ratio + (1 - cfg.min_lr_ratio) * (1 - min(c.t / c.length, 1.0)) ** cfg.power
    ),
    "onecycle": _onecycle,
    "plateau": lambda cfg, c: 1.0,  # driven by the monitored metric; lr_at gives the start
}
_NO_WARMUP = ("onecycle", "plateau")


def list_schedules() -> list[str]:
    """Names accepted in ``schedule.name``."""
    return sorted(SCHEDULES)


def _clock(cfg: ScheduleConfig, step: int, epochs: int, steps_per_epoch: int) -> Clock:
    total = epochs * steps_per_epoch
    if total < 1:
        raise ValueError(f"epochs * steps_per_epoch must be >= 1, got {epochs} * {steps_per_epoch}")
    # Warmup takes at most half the run, so a short run (a 1-epoch demo) still reaches lr.
    warmup = 0 if cfg.name in _NO_WARMUP else round(cfg.warmup_epochs * steps_per_epoch)
    return Clock(step, min(warmup, total // 2), total, steps_per_epoch)


def _clock_steps(cfg: ScheduleConfig, step: int, total: int, steps_per_epoch: int) -> Clock:
    """Like :func:`_clock` for a run of ``total`` steps (epochs of any length)."""
    total = max(1, total)
    warmup = 0 if cfg.name in _NO_WARMUP else round(cfg.warmup_epochs * steps_per_epoch)
    return Clock(step, min(warmup, total // 2), total, max(1, steps_per_epoch))


def _factor(cfg: ScheduleConfig, clock: Clock) -> float:
    if clock.step < clock.warmup:
        start = cfg.warmup_start_factor
        return start + (1.0 - start) * clock.step / clock.warmup
    return SCHEDULES[cfg.name](cfg, clock)


def lr_at(
    cfg: ScheduleConfig, base_lr: float, step: int, *, epochs: int, steps_per_epoch: int
) -> float:
    """The learning rate used by optimizer step ``step`` (0-based), in closed form.

    Warmup (every schedule but onecycle and plateau): ``warmup_epochs * steps_per_epoch``
    steps (at most half the run) ramping linearly from ``base_lr * warmup_start_factor``
    (default 0.01) to ``base_lr``;
    then the named schedule. cosine, poly, exponential and sgdr run over the steps
    after warmup; step and multistep count the run's epochs. For plateau, which depends
    on the metric, this is the starting lr.

    Args:
        cfg: the ``schedule`` config section.
        base_lr: the lr of a parameter group (the max lr for onecycle).
        step: optimizer step, 0-based.
        epochs: epochs of the run.
        steps_per_epoch: optimizer steps per epoch.

    >>> lr_at(ScheduleConfig(name="cosine", warmup_epochs=0), 1.0, 5, epochs=1,
    ...       steps_per_epoch=10)
    0.505
    """
    return base_lr * _factor(cfg, _clock(cfg, step, epochs, steps_per_epoch))


def build_scheduler(
    optimizer: torch.optim.Optimizer,
    cfg: ScheduleConfig,
    *,
    epochs: int,
    steps_per_epoch: int,
    mode: str = "max",
) -> tuple[LRScheduler | ReduceLROnPlateau, str]:
    """Build the schedule named in ``cfg.name`` for ``optimizer``.

    Step-based schedules are one ``LambdaLR`` (one identical lambda per param group,
    so each group's own lr, e.g. a lower encoder lr, is scaled alike) following
    :func:`lr_at`. ``onecycle`` is torch's ``OneCycleLR`` (max lr = each group's lr,
    ``pct_start`` 0.25; the momentum, or Adam's first beta, cycled from the configured
    value down to 0.85/0.95 of it and back, when the optimizer has one); it has its own
    warmup, so ``warmup_epochs`` is ignored. ``plateau`` is ``ReduceLROnPlateau`` on
    the monitored metric (factor ``gamma``, ``patience`` epochs, floor
    ``lr * min_lr_ratio``), stepped per epoch with the metric, and has no warmup.

    Args:
        optimizer: the optimizer; its groups' current lrs are the base lrs.
        cfg: the ``schedule`` config section.
        epochs: epochs of the run.
        steps_per_epoch: optimizer steps per epoch (after gradient accumulation).
        mode: ``max`` or ``min``: whether the monitored metric should go up (plateau).

    Returns:
        ``(scheduler, interval)``: call ``scheduler.step()`` after every optimizer step
        when interval is ``step``; ``scheduler.step(metric)`` after every epoch when
        it is ``epoch``.
    """
    if cfg.name == "plateau":
        floors = [group["lr"] * cfg.min_lr_ratio for group in optimizer.param_groups]
        plateau = ReduceLROnPlateau(
            optimizer,
            mode="max" if mode == "max" else "min",
            factor=cfg.gamma,
            patience=cfg.patience,
            min_lr=floors,
        )
        return plateau, "epoch"
    if cfg.name == "onecycle":
        if ONECYCLE_PCT_START * epochs * steps_per_epoch < 2:
            raise ConfigError(
                "onecycle needs at least 8 optimizer steps",
                where="schedule.name",
                hint="train longer or use schedule.name: cosine",
            )
        # the momentum (Adam's first beta) falls while the lr rises and comes back, from
        # the configured value down to 0.85/0.95 of it (torch's and fastai's 0.95 -> 0.85)
        defaults = optimizer.defaults
        top = float(defaults["betas"][0] if "betas" in defaults else defaults.get("momentum", 0))
        onecycle = OneCycleLR(
            optimizer,
            max_lr=[g["lr"] for g in optimizer.param_groups],
            total_steps=epochs * steps_per_epoch,
            pct_start=ONECYCLE_PCT_START,
            div_factor=ONECYCLE_DIV,
            final_div_factor=ONECYCLE_FINAL_DIV,
            cycle_momentum=top > 0,
            max_momentum=top or ONECYCLE_MAX_MOMENTUM,
            base_momentum=(top or ONECYCLE_MAX_MOMENTUM) * ONECYCLE_MOMENTUM_DIP,
        )
        return onecycle, "step"
    _clock(cfg, 0, epochs, steps_per_epoch)  # validate the run length now
    length = RunLength(epochs)

    def factor(step: int) -> float:
        if length.total_steps is not None:  # train.budget: the length in steps, re-fitted
            total = length.total_steps
            done = length.progress() if length.progress is not None else 0.0
            if done > 0.05 and step > 0:  # the clock ahead of the steps: it sets the pace
                total = min(total, max(step + 1, int(step / min(done, 1.0))))
            return _factor(cfg, _clock_steps(cfg, step, total, steps_per_epoch))
        return _factor(cfg, _clock(cfg, step, length.epochs, steps_per_epoch))

    # One lambda per group: LambdaLR then scales each group's own initial lr.
    return StepSchedule(optimizer, [factor for _ in optimizer.param_groups], length), "step"


class RunLength:
    """The run's length, read by a step schedule at every step: ``epochs``, or
    ``total_steps`` when set.

    ``train.budget`` sets ``total_steps`` from the measured speed and re-fits it as
    training goes (see :class:`liandan.engine.budget.BudgetCallback`): the schedule then
    decays over the new length from the step it has reached, so the last step of the
    budget is taken at the schedule's floor. In one process ``progress`` (the share of
    the training time used) also counts: the schedule follows whichever is further.
    """

    def __init__(self, epochs: int, total_steps: int | None = None) -> None:
        self.epochs = epochs
        self.total_steps = total_steps
        # with total_steps: the share of the time for training used so far (or None);
        # when it is ahead of step / total_steps the schedule follows it, so the last
        # step before the deadline is at the floor even if the machine slowed down
        self.progress: Callable[[], float] | None = None


class StepSchedule(LambdaLR):
    """``LambdaLR`` with an adjustable :class:`RunLength` (not part of its state).

    The length is left out of ``state_dict`` so checkpoints stay loadable with
    ``weights_only``; a resumed run rebuilds it from ``train.epochs`` in config.yaml.
    """

    def __init__(
        self,
        optimizer: torch.optim.Optimizer,
        lr_lambda: list[Callable[[int], float]],
        length: RunLength,
    ) -> None:
        self.run_length = length
        super().__init__(optimizer, lr_lambda=lr_lambda)

    def state_dict(self) -> dict[str, Any]:
        state = super().state_dict()
        state.pop("run_length", None)
        return state


# ----------------------------------------------------------------- weight averaging
class ModelEMA(nn.Module):
    """Exponential moving average of a model's weights (Polyak averaging).

    After ``update(model)``, every floating-point entry of the state (parameters and
    buffers such as BatchNorm statistics) is ``decay * ema + (1 - decay) * model``;
    integer buffers are copied. The average starts as a copy of ``model``.

    A module, so that the average is part of its owner: ``.to(device)``, ``.half()``
    and channels-last move it with the model, and the owner's ``state_dict`` (hence
    every checkpoint) holds it as ``<name>.module.*`` and ``<name>.num_updates`` (the
    decay is the config's). Its parameters take no gradient; it starts in eval mode and
    follows its owner's ``train()`` / ``eval()`` (it is only run to evaluate).

    Args:
        model: the model being trained.
        decay: weight of the running average, e.g. 0.999.
    """

    num_updates: torch.Tensor

    def __init__(self, model: nn.Module, decay: float = 0.999) -> None:
        if not 0.0 < decay < 1.0:
            raise ValueError(f"decay must be in (0, 1), got {decay}")
        super().__init__()
        self.decay = decay
        self.module = copy.deepcopy(model)
        for param in self.module.parameters():
            param.requires_grad_(False)
        self.register_buffer("num_updates", torch.zeros((), dtype=torch.int64))
        self.train(False)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        """The averaged model's output."""
        return self.module(*args, **kwargs)

    @torch.no_grad()
    def update(self, model: nn.Module) -> None:
        """Fold the current weights of ``model`` into the average."""
        averaged, current = [], []
        ema_state = self.module.state_dict()
        for name, value in model.state_dict().items():
            target = ema_state[name]
            if target.is_floating_point():
                averaged.append(target)
                current.append(value.detach().to(target.dtype))
            else:
                target.copy_(value)
        if averaged:
            torch._foreach_lerp_(averaged, current, 1.0 - self.decay)
        self.num_updates += 1

    @staticmethod
    def legacy_state(state: dict[str, Any], prefix: str = "") -> dict[str, Any]:
        """The state dict entries of a checkpoint's former ``ema_state`` record.

        Checkpoints written before the average was a module kept it apart, as
        ``{"module": ..., "num_updates": int, "decay": float}``; the decay is the
        config's (``optim.ema``).
        """
        entries: dict[str, Any] = {
            f"{prefix}module.{key}": value for key, value in state["module"].items()
        }
        entries[f"{prefix}num_updates"] = torch.tensor(
            int(state.get("num_updates", 0)), dtype=torch.int64
        )
        return entries


def group_lrs(optimizer: torch.optim.Optimizer) -> dict[str, float]:
    """Current lr of each named param group, e.g. for ``lr_<group>`` history columns."""
    return {
        str(group.get("name", f"group{i}")): float(group["lr"])
        for i, group in enumerate(optimizer.param_groups)
    }
