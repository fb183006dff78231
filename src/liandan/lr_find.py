"""The learning-rate range test (Smith 2017; fastai's ``lr_find``) and ``optim.lr: auto``.

The test trains the run's own model, loss and optimizer for up to ``steps`` batches
while the learning rate grows exponentially from ``start_lr`` (1e-7) to ``end_lr``
(10), records an exponentially smoothed loss, and stops once that loss exceeds four
times its minimum (divergence) or is not finite. The suggestion is read off the
smoothed curve:

- ``valley`` (default, fastai >= 2.5): the middle-to-late part of the longest run of
  decreasing loss, robust to noisy curves;
- ``steepest``: where the loss falls fastest per decade of learning rate.

It is a plain torch loop over the training loader rather than Lightning's tuner: it
needs no Trainer, checkpoints or callbacks, and runs in a few seconds. Every state it
touches is put back afterwards: the model's weights and buffers, the optimizer (built
fresh, so nothing to restore there), and the random generators (torch, numpy, python
and the loader's), so a run with ``optim.lr: auto`` then trains exactly like a run
given the suggested learning rate.

>>> result = find_lr(model, loader, criterion, build=make_optimizer)  # doctest: +SKIP
>>> result.suggestion  # doctest: +SKIP
0.0025
"""

from __future__ import annotations

import copy
import csv
import io
import logging
import math
import random
from collections.abc import Callable, Iterable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from liandan.errors import ConfigError

log = logging.getLogger("liandan")

START_LR, END_LR = 1e-7, 10.0  # the range fastai and Smith's paper scan
STEPS = 100  # fastai's default number of iterations
SMOOTHING = 0.98  # weight of the running average of the loss (fastai)
DIVERGE = 4.0  # stop when the smoothed loss exceeds this many times its minimum
METHODS = ("valley", "steepest")


@dataclass
class LRFindResult:
    """The curve of a range test and the learning rate it suggests.

    Attributes:
        lrs: learning rate of each step.
        losses: raw training loss of each step.
        smoothed: bias-corrected exponential moving average of ``losses``.
        suggestion: the learning rate suggested by ``method``.
        method: ``valley`` or ``steepest``.
        suggestions: the suggestion of every method.
        diverged: whether the test stopped early because the loss blew up.
    """

    lrs: list[float]
    losses: list[float]
    smoothed: list[float]
    suggestion: float
    method: str
    suggestions: dict[str, float] = field(default_factory=dict)
    diverged: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------- suggestion rules
def suggest_valley(lrs: list[float], losses: list[float]) -> float:
    """fastai's valley rule: the longest decreasing stretch, 1/2 of the way into it.

    The stretch is the longest (not necessarily contiguous) decreasing subsequence of
    the smoothed loss; the point chosen lies ``1/3 + 1/6`` of its length after its start.
    """
    n = len(losses)
    if n < 3:
        return lrs[int(np.argmin(losses))]
    run = [1] * n
    start = end = 0
    for i in range(1, n):
        for j in range(i):
            if losses[i] < losses[j] and run[i] < run[j] + 1:
                run[i] = run[j] + 1
        if run[end] < run[i]:
            end = i
            start = end - run[end]
    third = (end - start) / 3
    return lrs[min(n - 1, max(0, start + int(third) + int(third / 2)))]


def suggest_steepest(lrs: list[float], losses: list[float]) -> float:
    """Where the smoothed loss falls fastest against log10(lr)."""
    if len(losses) < 3:
        return lrs[int(np.argmin(losses))]
    slope = np.gradient(np.asarray(losses), np.log10(np.asarray(lrs)))
    return lrs[int(np.argmin(slope))]


SUGGESTERS: dict[str, Callable[[list[float], list[float]], float]] = {
    "valley": suggest_valley,
    "steepest": suggest_steepest,
}


# ----------------------------------------------------------------- the test
def _cycle(loader: Iterable[Any]) -> Iterator[Any]:
    while True:
        empty = True
        for batch in loader:
            empty = False
            yield batch
        if empty:
            raise ValueError("the training loader yields no batch")


def _rng_state(loader: Any) -> dict[str, Any]:
    generator = getattr(loader, "generator", None)
    return {
        "torch": torch.get_rng_state(),
        "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else None,
        "numpy": np.random.get_state(),
        "python": random.getstate(),
        "loader": generator.get_state() if isinstance(generator, torch.Generator) else None,
    }


def _set_rng_state(loader: Any, state: dict[str, Any]) -> None:
    torch.set_rng_state(state["torch"])
    if state["cuda"] is not None:
        torch.cuda.set_rng_state_all(state["cuda"])
    np.random.set_state(state["numpy"])
    random.setstate(state["python"])
    if state["loader"] is not None:
        loader.generator.set_state(state["loader"])


def find_lr(
    model: nn.Module,
    loader: Iterable[tuple[torch.Tensor, torch.Tensor]],
    criterion: nn.Module,
    *,
    build: Callable[[nn.Module], torch.optim.Optimizer],
    start_lr: float = START_LR,
    end_lr: float = END_LR,
    steps: int = STEPS,
    method: str = "valley",
    seed: int = 0,
    device: torch.device | str | None = None,
    batch_loss: Callable[[nn.Module, nn.Module, torch.Tensor, Any], torch.Tensor] | None = None,
) -> LRFindResult:
    """Run the exponential learning-rate range test; the model comes back unchanged.

    Args:
        model: the network, as training would start it.
        loader: the training loader (cycled when shorter than ``steps``).
        criterion: ``loss(logits, target)``.
        build: returns the optimizer for ``model``; each group's lr is taken as its
            multiplier of the tested lr (e.g. 0.1 for an encoder with
            ``encoder_lr_mult: 0.1`` when built with lr 1). Its state (lrs, moments)
            is restored afterwards.
        start_lr, end_lr: the range scanned, geometrically.
        steps: the most optimizer steps (the test stops early when the loss diverges).
        method: ``valley`` or ``steepest``.
        seed: seeds torch for the test; the generators are restored afterwards.
        device: where to run; the model's own device when None.
        batch_loss: ``(model, criterion, x, y) -> loss`` (a task's
            :meth:`~liandan.tasks.base.Task.batch_loss`); ``criterion(model(x), y)``
            when None.

    Returns:
        The curve and the suggested learning rate (always one of the tested ones).

    Raises:
        ConfigError: an unknown method or an empty range.
    """
    if method not in SUGGESTERS:
        raise ConfigError(f"unknown lr-find method {method!r}", hint="valley or steepest")
    if not 0 < start_lr < end_lr or steps < 2:
        raise ConfigError(
            f"lr-find needs 0 < start_lr < end_lr and >= 2 steps "
            f"(got {start_lr}, {end_lr}, {steps})",
            hint="e.g. --start-lr 1e-7 --end-lr 10 --steps 100",
        )
    from lightning.pytorch.utilities import move_data_to_device

    rng = _rng_state(loader)
    saved = copy.deepcopy(model.state_dict())
    was_training = model.training
    original = next((p.device for p in model.parameters()), torch.device("cpu"))
    device = torch.device(device) if device is not None else original
    optimizer = build(model)  # a fresh one, or one in use: its state is put back too
    saved_optimizer = copy.deepcopy(optimizer.state_dict())
    try:
        torch.manual_seed(seed)
        model.to(device).train()
        criterion.to(device)
        mults = [float(group["lr"]) for group in optimizer.param_groups]
        ratio = end_lr / start_lr
        lrs: list[float] = []
        losses: list[float] = []
        smoothed: list[float] = []
        average, best, diverged = 0.0, math.inf, False
        batches = _cycle(loader)
        for step in range(steps):
            lr = start_lr * ratio ** (step / (steps - 1))
            for group, mult in zip(optimizer.param_groups, mults, strict=True):
                group["lr"] = lr * mult
            x, y = next(batches)
            x, y = x.to(device), move_data_to_device(y, device)
            optimizer.zero_grad(set_to_none=True)
            if batch_loss is not None:
                loss = batch_loss(model, criterion, x, y)
            else:
                loss = criterion(model(x), y)
            value = float(loss.detach())
            if not math.isfinite(value):
                diverged = True
                break
            loss.backward()
            optimizer.step()
            average = SMOOTHING * average + (1 - SMOOTHING) * value
            smooth = average / (1 - SMOOTHING ** (step + 1))  # bias-corrected
            lrs.append(lr)
            losses.append(value)
            smoothed.append(smooth)
            best = min(best, smooth)
            if step > 0 and smooth > DIVERGE * best:
                diverged = True
                break
    finally:
        model.load_state_dict(saved)
        model.to(original).train(was_training)
        optimizer.load_state_dict(saved_optimizer)
        _set_rng_state(loader, rng)
    if not lrs:
        raise ConfigError(
            "the loss was not finite at the first lr-find step",
            where="optim.lr",
            hint="check the data and the loss; set optim.lr to a number",
        )
    suggestions = {name: float(rule(lrs, smoothed)) for name, rule in SUGGESTERS.items()}
    return LRFindResult(
        lrs, losses, smoothed, suggestions[method], method, suggestions, diverged=diverged
    )


# ----------------------------------------------------------------- outputs
def write_lr_find(folder: Path, result: LRFindResult) -> None:
    """Write ``lr_find.csv`` (lr, loss, smoothed_loss), ``lr_find.json`` and ``lr_find.png``."""
    from liandan.runs import atomic_write_json, atomic_write_text

    folder.mkdir(parents=True, exist_ok=True)
    buffer = io.StringIO()
    writer = csv.writer(buffer)
    writer.writerow(["lr", "loss", "smoothed_loss"])
    writer.writerows(zip(result.lrs, result.losses, result.smoothed, strict=True))
    atomic_write_text(folder / "lr_find.csv", buffer.getvalue())
    summary = {k: v for k, v in result.to_dict().items() if k not in ("lrs", "losses", "smoothed")}
    summary["range"] = [result.lrs[0], result.lrs[-1]]
    summary["steps"] = len(result.lrs)
    atomic_write_json(folder / "lr_find.json", summary)
    try:
        plot_lr_find(result, folder / "lr_find.png")
    except Exception as exc:  # a plot must never cost the user the numbers
        log.warning("lr_find.png was not written: %s", exc)


def plot_lr_find(result: LRFindResult, path: Path) -> None:
    """Loss against learning rate (log scale), with each rule's suggestion marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    ax.plot(result.lrs, result.losses, color="0.75", lw=0.8, label="loss")
    ax.plot(result.lrs, result.smoothed, color="C0", label="smoothed loss")
    for i, (name, lr) in enumerate(sorted(result.suggestions.items())):
        style = "-" if name == result.method else ":"
        ax.axvline(lr, color=f"C{i + 1}", ls=style, label=f"{name}: {lr:.2e}")
    ax.set_xscale("log")
    # the diverging tail would squash the curve: show from the minimum to 1.25x the start
    low, first = min(result.smoothed), result.smoothed[0]
    top = max(1.25 * first, low + 1e-6)
    ax.set_ylim(low - 0.1 * (top - low), top)
    ax.set_xlabel("learning rate")
    ax.set_ylabel("training loss")
    ax.set_title(f"lr range test: suggested {result.suggestion:.2e} ({result.method})")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


# ----------------------------------------------------------------- for a config
def lr_find_for_config(
    cfg: Any,
    bundle: Any,
    class_weights: torch.Tensor | None,
    *,
    steps: int = STEPS,
    start_lr: float = START_LR,
    end_lr: float = END_LR,
    method: str = "valley",
) -> LRFindResult:
    """The range test with the model, loss and optimizer the config would train.

    Args:
        cfg: a resolved :class:`liandan.config.Config` (arch and loss not ``auto``).
        bundle: the :class:`liandan.data.datamodule.DataBundle` of the run.
        class_weights: the loss's class weights, as training computes them.
        steps, start_lr, end_lr, method: see :func:`find_lr`.
    """
    from liandan.engine.task import LiandanTask
    from liandan.engine.trainer import resolve_precision, training_autocast
    from liandan.models import encoder_parameters
    from liandan.optim import build_optimizer

    rng = _rng_state(bundle.train_loader)  # building the model draws random numbers too
    try:
        task = LiandanTask(cfg, bundle.classes.names, bundle.in_channels, class_weights)
        unit = cfg.optim.model_copy(update={"lr": 1.0})  # groups' lr = their multiplier

        def build(model: nn.Module) -> torch.optim.Optimizer:
            return build_optimizer(model, unit, encoder_params=encoder_parameters(model))

        use_gpu = torch.cuda.is_available() and cfg.train.accelerator in ("auto", "gpu")
        device = torch.device("cuda" if use_gpu else "cpu")
        bf16 = resolve_precision(cfg) == "bf16-mixed"  # fp16 would need the run's scaler

        def batch_loss(model: nn.Module, criterion: nn.Module, x: torch.Tensor, y: Any) -> Any:
            if not bf16:
                return task.spec.batch_loss(model, criterion, x, y)
            with training_autocast(cfg, device):  # the losses of the precision training uses
                return task.spec.batch_loss(model, criterion, x, y)

        return find_lr(
            task.model,
            bundle.train_loader,
            task.criterion,
            build=build,
            start_lr=start_lr,
            end_lr=end_lr,
            steps=steps,
            method=method,
            seed=cfg.train.seed,
            device=device,
            batch_loss=batch_loss,
        )
    finally:
        _set_rng_state(bundle.train_loader, rng)
        # the augmentation has its own seeded generators: back to their first draw
        reset = getattr(getattr(bundle.train_loader.dataset, "augment", None), "reset", None)
        if callable(reset):
            reset()
