"""What an epoch is: its length in steps, and what it validates.

An epoch is the unit between validations and checkpoints, not a pass over the data
(nnU-Net: 250 iterations whatever the dataset). Its length is decided from measured
costs (:mod:`liandan.engine.budget`), so here are the two data-side pieces:

- :func:`with_epoch_length`: a train loader of exactly ``steps`` batches per epoch. A
  small dataset is drawn several times within one epoch (every draw a fresh random
  crop and augmentation); a large one gives a random subset per epoch (Lightning's
  ``limit_train_batches`` over the shuffled loader).
- :class:`ValPatches`: in-training validation of segmentation on a fixed, seeded set
  of crops when the validation images are much larger than the training crop. Whole
  2000 px images cost more to validate than the steps between validations; the final
  evaluation (metrics.json) still predicts every whole image.
"""

from __future__ import annotations

import math
import random

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset, RandomSampler

from liandan.data.datasets import SampleDataset
from liandan.data.readers import image_shape

# Validation images this many times the crop's area or more are validated on crops.
PATCH_AREA_RATIO = 4.0
# Crops are drawn to cover the validation area about once, at most this many: enough for
# a stable mean IoU between epochs, a few seconds of forward passes on a CPU.
MAX_VAL_PATCHES = 64


def with_epoch_length(loader: DataLoader, steps: int) -> DataLoader:
    """``loader`` with ``steps`` batches per epoch where one pass has fewer.

    Only a shuffled loader is redrawn (a sampler of its own, e.g. class-balanced, is
    kept); the draws come from the loader's generator, so runs stay reproducible and
    resumable. Longer loaders are returned as they are (the Trainer caps them).
    """
    if len(loader) >= steps or not isinstance(loader.sampler, RandomSampler):
        return loader
    batch = loader.batch_size or 1
    sampler = RandomSampler(
        loader.dataset,  # type: ignore[arg-type]
        replacement=False,  # whole permutations, one after the other
        num_samples=steps * batch,
        generator=loader.generator,
    )
    return DataLoader(
        loader.dataset,
        batch_size=batch,
        sampler=sampler,
        drop_last=True,
        num_workers=loader.num_workers,
        collate_fn=loader.collate_fn,
        worker_init_fn=loader.worker_init_fn,
        persistent_workers=loader.persistent_workers,
        pin_memory=loader.pin_memory,
        generator=loader.generator,
    )


def patch_windows(
    shapes: list[tuple[int, int]], size: int, n: int, seed: int
) -> list[tuple[int, int, int]]:
    """``n`` seeded ``(image, top, left)`` crops of side ``size``, spread by area.

    Every image gets at least one crop; the rest go to images by their share of the
    pixels (largest remainder). Images smaller than ``size`` get one crop at (0, 0).

    >>> patch_windows([(512, 512), (256, 256)], 256, 5, 0)[:1]
    [(0, 175, 46)]
    """
    areas = [h * w for h, w in shapes]
    total = sum(areas)
    n = max(n, len(shapes))
    extra = n - len(shapes)
    quotas = [extra * a / total for a in areas]
    counts = [1 + int(q) for q in quotas]
    order = sorted(range(len(shapes)), key=lambda i: int(quotas[i]) - quotas[i])
    for i in order[: n - sum(counts)]:
        counts[i] += 1
    rng = random.Random(seed)
    windows = []
    for i, ((h, w), count) in enumerate(zip(shapes, counts, strict=True)):
        for _ in range(count):
            windows.append((i, rng.randint(0, max(0, h - size)), rng.randint(0, max(0, w - size))))
    return windows


class ValPatches(Dataset):
    """A fixed set of crops of the validation images (same crops every epoch).

    Items are ``(image (C, s, s), mask (s, s))`` exactly as the whole-image validation
    would give them for that window (validation applies no augmentation).
    """

    def __init__(
        self,
        base: SampleDataset,
        windows: list[tuple[int, int, int]],
        size: int,
        shapes: list[tuple[int, int]],
    ) -> None:
        self.base = base
        self.windows = windows
        self.size = size
        self.shapes = shapes  # (height, width) of each whole validation image

    def __len__(self) -> int:
        return len(self.windows)

    def __getitem__(self, j: int) -> tuple[torch.Tensor, torch.Tensor]:
        i, top, left = self.windows[j]
        sample = self.base.samples[i]
        window = (slice(top, top + self.size), slice(left, left + self.size))
        image = self.base.load_image(sample)[window]
        if image.dtype != np.uint8:
            image = image.astype(np.float32)
        mask = self.base.load_mask(sample.target)[window]  # type: ignore[arg-type]
        x = self.base.normalizer.to_chw(np.ascontiguousarray(image))
        return torch.from_numpy(x), torch.from_numpy(np.ascontiguousarray(mask).astype(np.int64))


def val_patches(
    val_ds: SampleDataset, size: int, setting: int | str, seed: int
) -> tuple[ValPatches | None, str | None]:
    """The crops to validate on during training, or None for whole images; and why.

    Args:
        val_ds: the whole-image validation dataset (segmentation).
        size: the training crop (``data.image_size``).
        setting: ``train.val_patches``: ``auto``, 0 (whole images) or a crop count.
        seed: the run's seed (the same crops for every epoch and every resume).
    """
    if setting == 0 or not len(val_ds):
        return None, None
    shapes = []
    for sample in val_ds.samples:
        cached = val_ds.checked.images.get(sample.image)
        h, w = cached.shape[:2] if cached is not None else image_shape(sample.image)[:2]
        shapes.append((int(h), int(w)))
    mean_area = sum(h * w for h, w in shapes) / len(shapes)
    if setting == "auto":
        if mean_area < PATCH_AREA_RATIO * size * size:
            return None, None
        n = min(MAX_VAL_PATCHES, math.ceil(len(shapes) * mean_area / size**2))
    else:
        n = int(setting)
    windows = patch_windows(shapes, size, n, seed)
    side = int(math.sqrt(mean_area))
    why = (
        f"validation during training on {len(windows)} fixed {size} px crops of the "
        f"{len(shapes)} validation images (about {side} px): whole images cost more than "
        "the steps between validations; metrics.json is computed on the whole images "
        "(train.val_patches=0 validates whole images every epoch)"
    )
    return ValPatches(val_ds, windows, size, shapes), why
