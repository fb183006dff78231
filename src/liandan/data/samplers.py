"""Imbalance at the sampler: class-balanced batches and rare-class-aware crops.

``data.sampler: balanced`` draws classification samples with probability inversely
proportional to their class's frequency (a ``WeightedRandomSampler`` with replacement,
one epoch = as many draws as samples), so every class is seen about equally often.
For segmentation, where one image holds many classes, it biases the random training
crop instead: half of the crops are centred (up to a random offset) on a pixel of a
class drawn by inverse pixel frequency among the classes present in the image, so
small, rare structures reach the network far more often than uniform crops allow.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence, Sized

import numpy as np
import torch
from torch.utils.data import DistributedSampler, WeightedRandomSampler

RARE_CROP_P = 0.5  # share of crops aimed at a rare class; the rest stay uniform (context)


def balanced_sampler(
    labels: Sequence[int], num_classes: int, generator: torch.Generator | None = None
) -> WeightedRandomSampler:
    """A sampler drawing each class equally often (with replacement).

    Args:
        labels: the class index of each training sample.
        num_classes: number of classes.
        generator: seeds the draws.

    Returns:
        A sampler yielding ``len(labels)`` indices per epoch.
    """
    labels_arr = np.asarray(labels, dtype=np.int64)
    counts = np.bincount(labels_arr, minlength=num_classes).astype(np.float64)
    weights = 1.0 / counts[labels_arr]
    return WeightedRandomSampler(
        weights.tolist(),
        num_samples=len(labels_arr),
        replacement=True,
        generator=generator,
    )


class RareClassCrop:
    """Crops ``size`` x ``size`` windows aimed at rare classes, before augmentation.

    Args:
        counts: training-set pixel count of each class.
        size: crop side (``data.image_size``).
        p: share of crops aimed at a class; the others are left to the uniform crop.
    """

    def __init__(self, counts: Sequence[int] | np.ndarray, size: int, p: float = RARE_CROP_P):
        counts_arr = np.asarray(counts, dtype=np.float64)
        self.class_weight = np.where(counts_arr > 0, 1.0 / np.maximum(counts_arr, 1.0), 0.0)
        self.size = size
        self.p = p

    def __call__(
        self, image: np.ndarray, mask: np.ndarray, rng: np.random.Generator
    ) -> tuple[np.ndarray, np.ndarray]:
        height, width = mask.shape[:2]
        if rng.random() >= self.p or (height <= self.size and width <= self.size):
            return image, mask
        present = np.unique(mask[mask >= 0])
        present = present[present < len(self.class_weight)]
        weights = self.class_weight[present]
        if present.size == 0 or weights.sum() <= 0:
            return image, mask
        chosen = rng.choice(present, p=weights / weights.sum())
        ys, xs = np.nonzero(mask == chosen)
        k = int(rng.integers(len(ys)))
        top = _start(int(ys[k]), height, self.size, rng)
        left = _start(int(xs[k]), width, self.size, rng)
        window = (slice(top, top + self.size), slice(left, left + self.size))
        return image[window], mask[window]


def _start(centre: int, length: int, size: int, rng: np.random.Generator) -> int:
    """A window start keeping ``centre`` inside the window and the window inside the image."""
    if length <= size:
        return 0
    start = centre - int(rng.integers(0, size))
    return min(max(start, 0), length - size)


class EvalShardSampler(DistributedSampler):
    """Validation under DDP: each rank takes every ``world``-th sample, each counted once.

    Lightning would give a validation loader a ``DistributedSampler``, which repeats
    samples so that every rank gets as many (5 samples on 2 ranks: 3 + 3, one counted
    twice in the summed confusion matrix). Ranks here get ``ceil`` or ``floor`` of
    ``n / world`` samples instead, never a repeat. Being a ``DistributedSampler``
    subclass, Lightning leaves it in place. It reads the rank when iterated, so it is
    built with the loader, before any process group exists; outside DDP it yields
    every sample in order.

    Args:
        dataset: the validation dataset (only its length is used; it must not change).
    """

    def __init__(self, dataset: Sized) -> None:  # no super(): no process group needed
        self.num_items = len(dataset)
        self.shuffle = False
        self.epoch = 0

    def _shard(self) -> range:
        dist = torch.distributed
        if dist.is_available() and dist.is_initialized():
            return range(dist.get_rank(), self.num_items, dist.get_world_size())
        return range(self.num_items)

    def __iter__(self) -> Iterator[int]:
        return iter(self._shard())

    def __len__(self) -> int:
        return len(self._shard())
