"""Mixup and CutMix for classification batches (``augment.mixup``, ``augment.cutmix``).

Mixup (Zhang et al. 2018) blends two images, ``lam * x_i + (1 - lam) * x_j``; CutMix
(Yun et al. 2019) pastes a box of ``x_j`` into ``x_i`` and sets ``lam`` to the share
of ``x_i`` left. In both the target is the soft label ``lam * y_i + (1 - lam) * y_j``,
with ``lam ~ Beta(alpha, alpha)``. The loss is computed as
``lam * loss(logits, y_i) + (1 - lam) * loss(logits, y_j)``, which for cross-entropy is
exactly the soft-target cross-entropy and keeps the configured loss (class weights,
label smoothing, focal) working unchanged. With both enabled, each batch uses one of
the two at random (timm's ``switch_prob`` 0.5).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from liandan.config import AugmentConfig
from liandan.errors import ConfigError
from liandan.tasks import get_task


@dataclass
class MixedBatch:
    """A mixed batch: images, the two targets of each sample and the share of the first."""

    x: torch.Tensor
    y_a: torch.Tensor
    y_b: torch.Tensor
    lam: float

    def soft_targets(self, num_classes: int) -> torch.Tensor:
        """``(B, num_classes)`` soft labels ``lam * onehot(y_a) + (1 - lam) * onehot(y_b)``."""
        a = nn.functional.one_hot(self.y_a, num_classes).float()
        b = nn.functional.one_hot(self.y_b, num_classes).float()
        return self.lam * a + (1.0 - self.lam) * b

    def loss(self, criterion: nn.Module, logits: torch.Tensor) -> torch.Tensor:
        """The configured loss against the soft targets (linear in the target)."""
        return self.lam * criterion(logits, self.y_a) + (1.0 - self.lam) * criterion(
            logits, self.y_b
        )


class BatchMixer:
    """Draws mixup or cutmix for each training batch, seeded.

    Args:
        mixup: Beta alpha of mixup (0 = off).
        cutmix: Beta alpha of cutmix (0 = off).
        seed: seeds lam, the pairing and the boxes.
    """

    def __init__(self, mixup: float = 0.0, cutmix: float = 0.0, seed: int = 0) -> None:
        if mixup <= 0 and cutmix <= 0:
            raise ValueError("BatchMixer needs mixup or cutmix > 0")
        self.mixup, self.cutmix = mixup, cutmix
        self.rng = np.random.default_rng(seed)

    def __call__(self, x: torch.Tensor, y: torch.Tensor) -> MixedBatch:
        use_cutmix = self.cutmix > 0 and (self.mixup <= 0 or self.rng.random() < 0.5)
        alpha = self.cutmix if use_cutmix else self.mixup
        lam = float(self.rng.beta(alpha, alpha))
        perm = torch.from_numpy(self.rng.permutation(x.shape[0])).to(x.device)
        if use_cutmix:
            height, width = x.shape[-2:]
            cut = np.sqrt(1.0 - lam)  # box sides so its area is (1 - lam) of the image
            ch, cw = int(height * cut), int(width * cut)
            cy, cx = int(self.rng.integers(height)), int(self.rng.integers(width))
            top, bottom = np.clip([cy - ch // 2, cy + ch // 2], 0, height)
            left, right = np.clip([cx - cw // 2, cx + cw // 2], 0, width)
            x = x.clone()
            x[..., top:bottom, left:right] = x[perm][..., top:bottom, left:right]
            lam = 1.0 - float((bottom - top) * (right - left)) / (height * width)
        else:
            x = lam * x + (1.0 - lam) * x[perm]
        return MixedBatch(x, y, y[perm], lam)


def build_mixer(cfg: AugmentConfig, task: str, seed: int = 0) -> BatchMixer | None:
    """The batch mixer the config asks for, or None.

    Raises:
        ConfigError: mixup or cutmix set for segmentation.
    """
    if cfg.mixup <= 0 and cfg.cutmix <= 0:
        return None
    spec = get_task(task)
    if not spec.mixes_labels:
        raise ConfigError(
            f"mixup and cutmix mix image labels: not for {spec.title}",
            where="augment.mixup" if cfg.mixup > 0 else "augment.cutmix",
            hint=f"set augment.mixup=0 and augment.cutmix=0 for {spec.title}",
        )
    return BatchMixer(cfg.mixup, cfg.cutmix, seed)
