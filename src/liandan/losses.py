"""Losses for classification and segmentation, built from ``loss.*`` in the config.

Every loss is a module ``loss(logits, target) -> scalar``: logits ``(B, C)`` with
integer targets ``(B,)``, or logits ``(B, C, H, W)`` with int64 masks ``(B, H, W)``.
Target values equal to ``ignore_index`` never count, in any loss. Names combine with
``+`` (``ce+dice``), each term scaled by ``loss.weights``; ``package.module:Class``
plugs in a user's own loss.

>>> from liandan.config import LossConfig
>>> loss = build_loss(LossConfig(name="ce+dice"), task="segment", num_classes=3)
>>> float(loss(torch.zeros(1, 3, 4, 4), torch.zeros(1, 4, 4, dtype=torch.long))) > 0
True
"""

from __future__ import annotations

import difflib
import importlib
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from segmentation_models_pytorch.losses import LovaszLoss as SmpLovaszLoss
from torch import nn

from liandan.config import LossConfig
from liandan.errors import ConfigError, DataError
from liandan.tasks import get_task


@dataclass(frozen=True)
class LossContext:
    """What a loss factory may use besides the config section."""

    cfg: LossConfig
    task: str
    num_classes: int
    ignore_index: int
    class_weights: torch.Tensor | None


LossFactory = Callable[[LossContext], nn.Module]
LOSSES: dict[str, LossFactory] = {}


def register_loss(name: str) -> Callable[[LossFactory], LossFactory]:
    """Register a loss factory under ``name`` (decorator)."""

    def add(factory: LossFactory) -> LossFactory:
        LOSSES[name] = factory
        return factory

    return add


def list_losses() -> list[str]:
    """Names accepted in ``loss.name`` (combine them with ``+``)."""
    return sorted(LOSSES)


def _as_image(logits: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Classification ``(B, C)``/``(B,)`` -> ``(B, C, 1, 1)``/``(B, 1, 1)``; masks unchanged."""
    if logits.dim() == 2:
        return logits[:, :, None, None], target[:, None, None]
    return logits, target


class CrossEntropyLoss(nn.Module):
    """Cross-entropy as ``torch.nn.functional.cross_entropy`` computes it (class weights,
    label smoothing, ignore_index, weighted mean), except that a batch whose targets are
    all ignored gives 0 instead of NaN.
    """

    weight: torch.Tensor | None

    def __init__(
        self,
        ignore_index: int = -1,
        class_weights: torch.Tensor | None = None,
        label_smoothing: float = 0.0,
    ) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.label_smoothing = label_smoothing
        self.register_buffer("weight", class_weights)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits = logits.float()
        per_item = F.cross_entropy(
            logits,
            target,
            weight=self.weight,
            ignore_index=self.ignore_index,
            reduction="none",
            label_smoothing=self.label_smoothing,
        )
        # torch's "mean" divides by the summed weight of the non-ignored targets; done by
        # hand (with a floor) so an all-ignored batch is 0, without a device sync.
        valid = target != self.ignore_index
        per_weight = valid.float()
        if self.weight is not None:
            per_weight = per_weight * self.weight[torch.where(valid, target, 0)]
        return per_item.sum() / per_weight.sum().clamp_min(1e-12)


class FocalLoss(nn.Module):
    """Softmax focal loss, ``-w_t (1 - p_t)^gamma log p_t`` (Lin et al. 2017).

    Class weights play the role of alpha; the mean is weighted like torch's weighted
    cross-entropy, so with ``gamma=0`` this *is* (weighted) cross-entropy. smp's
    FocalLoss is one-vs-rest sigmoid focal, which is not that, hence our own.
    """

    weight: torch.Tensor | None

    def __init__(
        self,
        gamma: float = 2.0,
        ignore_index: int = -1,
        class_weights: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.gamma = gamma
        self.ignore_index = ignore_index
        self.register_buffer("weight", class_weights)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        valid = target != self.ignore_index
        safe = torch.where(valid, target, 0)
        log_p = F.log_softmax(logits.float(), dim=1)
        log_pt = log_p.gather(1, safe.unsqueeze(1)).squeeze(1)  # (B, ...) like target
        focal = (1.0 - log_pt.exp()).clamp_min(0.0) ** self.gamma
        w = valid.float()
        if self.weight is not None:
            w = w * self.weight[safe]
        return (w * focal * -log_pt).sum() / w.sum().clamp_min(1e-12)


class TverskyLoss(nn.Module):
    """Soft region loss ``(1 - TI_c)^gamma`` averaged over the classes present in the target.

    ``TI_c = TP / (TP + alpha FP + beta FN)`` with soft counts summed over the batch
    (``alpha`` weighs false positives, ``beta`` false negatives, as in smp). Dice is
    ``alpha = beta = 0.5``, Jaccard ``alpha = beta = 1``; focal Tversky (Abraham & Khan
    2019) uses ``alpha=0.3, beta=0.7, gamma=0.75``. Written here rather than taken from
    smp because smp zeroes the loss of classes absent from the batch but still divides by
    all classes, which shrinks the loss when few classes are present; here the mean is
    over present classes (class weights make it a weighted mean). For classification the
    batch plays the role of the image, which makes dice a soft macro-F1.
    """

    weight: torch.Tensor | None

    def __init__(
        self,
        alpha: float = 0.5,
        beta: float = 0.5,
        gamma: float = 1.0,
        ignore_index: int = -1,
        class_weights: torch.Tensor | None = None,
        smooth: float = 0.0,
        eps: float = 1e-7,
    ) -> None:
        super().__init__()
        self.alpha, self.beta, self.gamma = alpha, beta, gamma
        self.ignore_index = ignore_index
        self.smooth, self.eps = smooth, eps
        self.register_buffer("weight", class_weights)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, target = _as_image(logits, target)
        valid = (target != self.ignore_index).unsqueeze(1)  # (B, 1, H, W)
        safe = torch.where(valid.squeeze(1), target, 0)
        probs = logits.float().softmax(dim=1) * valid  # (B, C, H, W)
        truth = torch.zeros_like(probs).scatter_(1, safe.unsqueeze(1), 1.0) * valid
        dims = (0, 2, 3)
        tp = (probs * truth).sum(dims)  # (C,)
        fp = probs.sum(dims) - tp
        fn = truth.sum(dims) - tp
        denom = (tp + self.alpha * fp + self.beta * fn + self.smooth).clamp_min(self.eps)
        index = ((tp + self.smooth) / denom).clamp(0.0, 1.0)  # (C,); absent classes: 0
        per_class = (1.0 - index).clamp_min(self.eps) ** self.gamma
        w = (truth.sum(dims) > 0).float()
        if self.weight is not None:
            w = w * self.weight
        return (w * per_class).sum() / w.sum().clamp_min(1e-12)


class LovaszSoftmaxLoss(nn.Module):
    """Lovász-softmax (Berman et al. 2018), smp's implementation over present classes.

    The wrapper takes the classification shapes too, computes in float32 and returns
    a 0 that still has a gradient when every target is ignored (smp returns an empty
    tensor there). Class weights are not used by this loss.
    """

    def __init__(self, ignore_index: int = -1) -> None:
        super().__init__()
        self.ignore_index = ignore_index
        self.inner = SmpLovaszLoss(mode="multiclass", ignore_index=ignore_index)

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        logits, target = _as_image(logits, target)
        if not bool((target != self.ignore_index).any()):
            return logits.sum() * 0.0
        return self.inner(logits.float(), target)


class CombinedLoss(nn.Module):
    """Weighted sum of named losses; ``last_terms`` holds each term of the last call."""

    def __init__(self, terms: dict[str, nn.Module], weights: list[float]) -> None:
        super().__init__()
        self.names = list(terms)
        self.terms = nn.ModuleList(terms.values())
        self.weights = list(weights)
        self.last_terms: dict[str, torch.Tensor] = {}

    def forward(self, logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        total: torch.Tensor | None = None
        for name, term, weight in zip(self.names, self.terms, self.weights, strict=True):
            value = term(logits, target)
            self.last_terms[name] = value.detach()
            total = weight * value if total is None else total + weight * value
        assert total is not None
        return total


# Dice is Tversky with alpha = beta = 0.5, Jaccard with alpha = beta = 1. Tversky and
# focal Tversky take loss.tversky_alpha (FP) / tversky_beta (FN), default 0.3 / 0.7
# (Salehi et al. 2017); focal Tversky's exponent 1/gamma is 0.75 (Abraham & Khan 2019).
LOSSES.update(
    {
        "ce": lambda ctx: CrossEntropyLoss(
            ctx.ignore_index, ctx.class_weights, ctx.cfg.label_smoothing
        ),
        "focal": lambda ctx: FocalLoss(ctx.cfg.focal_gamma, ctx.ignore_index, ctx.class_weights),
        "dice": lambda ctx: TverskyLoss(0.5, 0.5, 1.0, ctx.ignore_index, ctx.class_weights),
        "jaccard": lambda ctx: TverskyLoss(1.0, 1.0, 1.0, ctx.ignore_index, ctx.class_weights),
        "tversky": lambda ctx: TverskyLoss(
            ctx.cfg.tversky_alpha, ctx.cfg.tversky_beta, 1.0, ctx.ignore_index, ctx.class_weights
        ),
        "focal_tversky": lambda ctx: TverskyLoss(
            ctx.cfg.tversky_alpha, ctx.cfg.tversky_beta, 0.75, ctx.ignore_index, ctx.class_weights
        ),
        "lovasz": lambda ctx: LovaszSoftmaxLoss(ctx.ignore_index),
    }
)


def _import_plugin(spec: str) -> nn.Module:
    """Instantiate ``package.module:ClassName`` with no arguments."""
    module_name, _, attr = spec.partition(":")
    hint = "write package.module:ClassName, importable from the working directory"
    try:
        obj = getattr(importlib.import_module(module_name.strip()), attr.strip())
        instance = obj()
    except (ImportError, AttributeError, TypeError, ValueError) as exc:
        raise ConfigError(
            f"cannot load the loss {spec!r}: {exc}", where="loss.name", hint=hint
        ) from None
    if not isinstance(instance, nn.Module):
        raise ConfigError(f"{spec!r} is not a torch.nn.Module", where="loss.name", hint=hint)
    return instance


def build_loss(
    cfg: LossConfig,
    *,
    task: str,
    num_classes: int,
    ignore_index: int = -1,
    class_weights: torch.Tensor | None = None,
) -> nn.Module:
    """Build the loss named in ``cfg.name``.

    Args:
        cfg: the ``loss`` config section. ``auto`` is ``ce+dice`` (segment) or ``ce``
            (classify); ``+`` combines losses, weighted by ``cfg.weights``.
        task: a registered task (``classify``, ``segment``); it gives the ``auto`` loss.
        num_classes: number of classes C.
        ignore_index: target value that never counts (liandan uses -1 internally).
        class_weights: per-class weights (C,), e.g. from :func:`compute_class_weights`;
            when None, a list in ``cfg.class_weights`` is used.

    Returns:
        A module ``loss(logits, target) -> scalar``; a :class:`CombinedLoss` when
        several names are combined. Plugins receive targets with ``ignore_index`` in them.

    Raises:
        ConfigError: an unknown loss name, a plugin that does not load, or a
            ``loss.weights`` / ``loss.class_weights`` length that does not match.
    """
    name = cfg.name.strip()
    if name == "auto":
        name = get_task(task).default_loss  # ce+dice (segment), ce (classify)
    parts = [p.strip() for p in name.split("+")]
    weights = cfg.weights if cfg.weights is not None else [1.0] * len(parts)
    if len(weights) != len(parts):
        raise ConfigError(
            f"{len(weights)} weights for {len(parts)} losses ({name})",
            where="loss.weights",
            hint="give one weight per loss combined with '+', or leave loss.weights unset",
        )
    ctx = LossContext(cfg, task, num_classes, ignore_index, _class_weights(cfg, class_weights))
    if ctx.class_weights is not None and ctx.class_weights.numel() != num_classes:
        raise ConfigError(
            f"{ctx.class_weights.numel()} class weights for {num_classes} classes",
            where="loss.class_weights",
            hint="give one weight per class, or use auto",
        )
    terms: dict[str, nn.Module] = {}
    for part in parts:
        if ":" in part:
            terms[part] = _import_plugin(part)
            continue
        factory = LOSSES.get(part.lower())
        if factory is None:
            close = difflib.get_close_matches(part.lower(), LOSSES, n=1, cutoff=0.5)
            hint = f"did you mean {close[0]!r}? " if close else ""
            raise ConfigError(
                f"unknown loss {part!r}",
                where="loss.name",
                hint=f"{hint}available: {', '.join(list_losses())}, or package.module:Class",
            )
        terms[part] = factory(ctx)
    if len(terms) == 1 and weights[0] == 1.0:
        return next(iter(terms.values()))
    return CombinedLoss(terms, list(weights))


def _class_weights(cfg: LossConfig, given: torch.Tensor | None) -> torch.Tensor | None:
    if given is not None:
        return torch.as_tensor(given, dtype=torch.float32).flatten()
    if isinstance(cfg.class_weights, list):
        return torch.tensor(cfg.class_weights, dtype=torch.float32)
    if cfg.class_weights == "auto":
        raise ValueError("loss.class_weights is auto: pass the computed class_weights")
    return None


def compute_class_weights(
    counts: np.ndarray | torch.Tensor, method: str = "inverse", *, beta: float | None = None
) -> torch.Tensor:
    """Per-class loss weights from per-class counts (pixels or images).

    Methods:

    - ``inverse``: ``1 / n_c``, scaled so the present classes' weights average 1.
    - ``median``: median-frequency balancing (Eigen & Fergus 2015), ``median(f) / f_c``
      with ``f_c = n_c / sum(n)`` (counts alone do not tell which images hold a class,
      so the frequency is over all samples): the median class weighs 1.
    - ``effective``: inverse effective number of samples (Cui et al. 2019),
      ``(1 - beta) / (1 - beta^n_c)``, scaled to average 1 like ``inverse``. ``beta``
      defaults to ``1 - 1/sum(n)``, which scales to pixel counts (the paper's 0.999
      makes every class over ~10k pixels weigh the same).

    A class with a zero count gets the largest weight of the present classes: it is the
    rarest class seen, and weight 0 would silently drop it from the loss when the counts
    come from a sample of the data.

    Args:
        counts: non-negative counts, shape (C,).
        method: ``inverse``, ``median`` or ``effective``.
        beta: for ``effective`` only; in [0, 1).

    Returns:
        float32 tensor of shape (C,).

    Raises:
        ConfigError: an unknown method.
        DataError: all counts are zero (nothing labelled to weigh).

    >>> compute_class_weights(np.array([10, 30])).tolist()
    [1.5, 0.5]
    """
    n = torch.as_tensor(np.asarray(counts), dtype=torch.float64).flatten()
    if bool((n < 0).any()):
        raise ValueError("class counts must be non-negative")
    present = n > 0
    if not bool(present.any()):
        raise DataError(
            "no labelled samples to compute class weights from",
            where="loss.class_weights",
            hint="check the masks/labels, or set loss.class_weights: none",
        )
    safe = torch.where(present, n, torch.ones_like(n))
    if method == "inverse":
        weights = 1.0 / safe
        weights = weights / weights[present].mean()
    elif method == "median":
        freq = safe / n.sum()
        # quantile, not median(): the mean of the two middle values, as numpy does
        weights = torch.quantile(freq[present], 0.5) / freq
    elif method == "effective":
        b = 1.0 - 1.0 / float(n.sum()) if beta is None else beta
        if not 0.0 <= b < 1.0:
            raise ValueError(f"beta must be in [0, 1), got {b}")
        weights = (1.0 - b) / (1.0 - torch.pow(torch.tensor(b, dtype=torch.float64), safe))
        weights = weights / weights[present].mean()
    else:
        close = difflib.get_close_matches(method, ["inverse", "median", "effective"], n=1)
        raise ConfigError(
            f"unknown class weight method {method!r}",
            where="loss.class_weights",
            hint=(f"did you mean {close[0]!r}? " if close else "")
            + "methods: inverse, median, effective",
        )
    return torch.where(present, weights, weights[present].max()).float()
