"""torch Datasets over checked samples: images with labels, images with masks."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import Dataset

from liandan.data.layouts import Sample
from liandan.data.readers import read_image, read_window
from liandan.data.scan import CheckedDataset, _to_rgb
from liandan.data.transforms import Normalizer, brightness_contrast
from liandan.tasks import get_task

STRIDE = 32  # output stride of 5-stage encoders: inputs are padded to a multiple of it


def load_image(checked: CheckedDataset, sample: Sample, bands: list[int] | None) -> np.ndarray:
    """A sample's raw image: from the cache, or read (and made RGB where the data is);
    a window's pixels when the sample is a window of its image (clipped to the image)."""
    image = checked.images.get(sample.image)
    window = sample.window
    if image is not None and window is not None:
        col, row, width, height = window
        return image[row : row + height, col : col + width]
    if image is None:
        image = (
            read_image(sample.image, bands)
            if window is None
            else read_window(sample.image, window, bands)
        )
        if checked.to_rgb:
            image = _to_rgb(image)
    return image


class SampleDataset(Dataset):
    """Reads (from the cache or disk), augments and normalizes one sample.

    Items are ``(image, target)``: image ``(C, H, W)`` float32; target an int64 class
    index (classify) or an ``(H, W)`` int64 mask with -1 for ignored pixels (segment).
    """

    def __init__(
        self,
        samples: list[Sample],
        checked: CheckedDataset,
        normalizer: Normalizer,
        augment: Callable[..., dict[str, Any]],
        *,
        bands: list[int] | None = None,
        brightness_contrast_p: float = 0.0,
        seed: int = 0,
    ) -> None:
        self.samples = samples
        self.checked = checked
        self.task = get_task(checked.index.task)
        self.normalizer = normalizer
        self.augment = augment
        self.bands = bands
        self.bc_p = brightness_contrast_p
        self.mapper = self.task.target_mapper(checked.index.classes)  # None: labels
        self.seed = seed

    def __len__(self) -> int:
        return len(self.samples)

    def load_image(self, sample: Sample) -> np.ndarray:
        return load_image(self.checked, sample, self.bands)

    def load_mask(self, path: Path) -> np.ndarray:
        mask = self.checked.masks.get(path)
        if mask is None:
            assert self.mapper is not None
            mask = self.mapper.read(path)
        return mask

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        sample = self.samples[i]
        image = self.load_image(sample)
        # 8-bit images are augmented as uint8 (a quarter of the memory traffic); other
        # dtypes as float32, which albumentations handles for any value range. Crops,
        # flips and quarter turns are exact either way; interpolating warps round to
        # whole values on uint8.
        if image.dtype != np.uint8:
            image = image.astype(np.float32)
        image, target = self.task.augment_sample(self, image, sample)  # target kept aligned
        x = self.normalizer.to_chw(image)
        if self.bc_p:
            # seeded like the rest: numpy's global state is seeded per run and per loader
            # worker (seed_everything), and the sample index tells samples apart
            rng = np.random.default_rng((np.random.randint(2**31), i))
            if rng.random() < self.bc_p:
                x = brightness_contrast(x, rng)  # the same for every band
        return torch.from_numpy(x), target


def pad_to_multiple(x: torch.Tensor, multiple: int = STRIDE, value: float = 0.0) -> torch.Tensor:
    """Pad the last two dims (bottom/right) up to a multiple of ``multiple``."""
    h, w = x.shape[-2:]
    ph, pw = (-h) % multiple, (-w) % multiple
    if ph == 0 and pw == 0:
        return x
    return torch.nn.functional.pad(x, (0, pw, 0, ph), value=value)


def pad_collate(
    batch: list[tuple[torch.Tensor, torch.Tensor]],
) -> tuple[torch.Tensor, torch.Tensor]:
    """Batch samples of different sizes: pad to the largest, rounded up to the stride.

    Padded image pixels are 0 (the normalized mean) and padded mask pixels -1
    (ignored), so padding never counts in the loss or the metrics.
    """
    images, targets = zip(*batch, strict=True)
    if targets[0].ndim == 0:
        return torch.stack(images), torch.stack(targets)
    h = max(t.shape[-2] for t in images)
    w = max(t.shape[-1] for t in images)
    h, w = h + (-h) % STRIDE, w + (-w) % STRIDE
    x = torch.zeros(len(images), images[0].shape[0], h, w)
    y = torch.full((len(images), h, w), -1, dtype=torch.int64)
    for i, (img, mask) in enumerate(batch):
        x[i, :, : img.shape[1], : img.shape[2]] = img
        y[i, : mask.shape[0], : mask.shape[1]] = mask
    return x, y
