"""Normalization presets and albumentations pipelines built from the config.

Normalization travels with the model (``model/model.json``): it is fitted once on the
training set, stored, and applied identically by predict. Geometric augmentation runs
on the image and mask together (nearest-neighbour for masks, always).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import albumentations as A
import cv2
import numpy as np

from liandan.config import AugmentConfig
from liandan.errors import ConfigError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# VGG (Simonyan & Zisserman 2014, Caffe weights): BGR order, 0-255, mean pixel subtracted.
VGG_MEAN_BGR = (103.939, 116.779, 123.68)


def dtype_max(dtype: np.dtype | str) -> float:
    """The largest value of an integer dtype; 1.0 for floats (assumed already scaled)."""
    dt = np.dtype(dtype)
    return float(np.iinfo(dt).max) if np.issubdtype(dt, np.integer) else 1.0


@dataclass
class Normalizer:
    """Maps raw pixel values ``(H, W, C)`` to the network's input scale.

    Attributes:
        preset: dataset | imagenet | vgg | unit | percentile | zca.
        mean, std: per-band statistics in raw units (dataset, zca).
        low, high: per-band clip bounds in raw units (percentile).
        scale: divisor taking raw values to 0-1 (unit, imagenet: the dtype's maximum).
        whiten: bands x bands ZCA matrix (zca).
    """

    preset: str
    mean: list[float] = field(default_factory=list)
    std: list[float] = field(default_factory=list)
    low: list[float] = field(default_factory=list)
    high: list[float] = field(default_factory=list)
    scale: float = 1.0
    whiten: list[list[float]] | None = None

    def __call__(self, image: np.ndarray) -> np.ndarray:
        x = image.astype(np.float32, copy=False)

        def f32(values: list[float]) -> np.ndarray:
            return np.asarray(values, dtype=np.float32)

        if self.preset == "dataset":
            return (x - f32(self.mean)) / f32(self.std)
        if self.preset == "unit":
            return x / np.float32(self.scale)
        if self.preset == "imagenet":
            return (x / np.float32(self.scale) - f32(self.mean)) / f32(self.std)
        if self.preset == "vgg":
            x = x * np.float32(255.0 / self.scale)
            if x.shape[-1] == 3:
                x = x[..., ::-1]  # RGB -> BGR, as the Caffe VGG weights expect
            return x - f32(self.mean)
        if self.preset == "percentile":
            lo, hi = f32(self.low), f32(self.high)
            return (np.clip(x, lo, hi) - lo) / np.maximum(hi - lo, np.float32(1e-6))
        if self.preset == "zca":
            w = np.asarray(self.whiten, dtype=np.float32)
            return ((x - f32(self.mean)) @ w.T).astype(np.float32)
        raise ConfigError(f"unknown normalization {self.preset!r}", where="data.normalize")

    def to_dict(self) -> dict[str, Any]:
        return {
            "preset": self.preset,
            "mean": self.mean,
            "std": self.std,
            "percentiles_low": self.low,
            "percentiles_high": self.high,
            "scale": self.scale,
            "whiten": self.whiten,
        }

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Normalizer:
        return cls(
            preset=data["preset"],
            mean=list(data.get("mean") or []),
            std=list(data.get("std") or []),
            low=list(data.get("percentiles_low") or []),
            high=list(data.get("percentiles_high") or []),
            scale=float(data.get("scale", 1.0)),
            whiten=data.get("whiten"),
        )


def sample_pixels(images: Sequence[np.ndarray], max_pixels: int = 2_000_000, seed: int = 0):
    """A (N, C) float64 sample of pixels drawn evenly from the given images."""
    rng = np.random.default_rng(seed)
    per_image = max(1, max_pixels // max(1, len(images)))
    chunks = []
    for img in images:
        flat = img.reshape(-1, img.shape[-1])
        if flat.shape[0] > per_image:
            flat = flat[rng.choice(flat.shape[0], per_image, replace=False)]
        chunks.append(flat.astype(np.float64))
    return np.concatenate(chunks, axis=0)


def fit_normalizer(
    preset: str,
    images: Sequence[np.ndarray],
    percentiles: tuple[float, float] = (2.0, 98.0),
) -> Normalizer:
    """Fit a normalization preset on (a sample of) the training images."""
    dtype = images[0].dtype
    bands = images[0].shape[-1]
    scale = dtype_max(dtype)
    if preset == "unit":
        return Normalizer("unit", scale=scale)
    if preset in ("imagenet", "vgg"):
        if bands != 3:
            raise ConfigError(
                f"data.normalize={preset} needs 3-band RGB images; these have {bands} bands",
                where="data.normalize",
                hint="use dataset (per-band mean/std) or percentile for multi-band imagery",
            )
        if preset == "imagenet":
            return Normalizer("imagenet", list(IMAGENET_MEAN), list(IMAGENET_STD), scale=scale)
        return Normalizer("vgg", mean=list(VGG_MEAN_BGR), scale=scale)
    pixels = sample_pixels(images)
    mean = pixels.mean(axis=0)
    if preset == "dataset":
        std = pixels.std(axis=0)
        std = np.where(std < 1e-6, 1.0, std)  # a constant band: centre it, do not divide by 0
        return Normalizer("dataset", mean.tolist(), std.tolist())
    if preset == "percentile":
        low = np.percentile(pixels, percentiles[0], axis=0)
        high = np.percentile(pixels, percentiles[1], axis=0)
        return Normalizer("percentile", low=low.tolist(), high=high.tolist())
    if preset == "zca":
        centred = pixels - mean
        cov = centred.T @ centred / max(1, centred.shape[0] - 1)
        eigval, eigvec = np.linalg.eigh(cov)
        # epsilon keeps near-singular directions (e.g. duplicated bands) from exploding
        eps = 1e-5 * max(float(eigval.max()), 1e-12)
        w = eigvec @ np.diag(1.0 / np.sqrt(np.maximum(eigval, 0) + eps)) @ eigvec.T
        return Normalizer("zca", mean=mean.tolist(), whiten=w.tolist())
    raise ConfigError(f"unknown normalization {preset!r}", where="data.normalize")


def build_augment(
    cfg: AugmentConfig, *, task: str, image_size: int, train: bool
) -> Callable[..., dict[str, Any]]:
    """The albumentations pipeline for one split.

    Classification resizes every image to ``image_size`` (random-resized-crop when
    ``augment.scale`` is not (1, 1)). Segmentation keeps the native resolution and
    trains on random ``image_size`` crops (padded where smaller; pad pixels are
    ignored), so predict at native resolution sees the scale it was trained on.
    """
    ops: list[Any] = []
    size = (image_size, image_size)
    if task == "classify":
        if train and tuple(cfg.scale) != (1.0, 1.0):
            ops.append(A.RandomResizedCrop(size, scale=tuple(cfg.scale), p=1.0))
        else:
            ops.append(A.Resize(image_size, image_size, interpolation=cv2.INTER_AREA))
    elif train:
        ops.append(
            A.PadIfNeeded(
                image_size, image_size, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=-1
            )
        )
        if tuple(cfg.scale) != (1.0, 1.0):
            # INTER_NEAREST_EXACT: OpenCV's INTER_NEAREST samples floor(x * scale), up to
            # half a pixel off the bilinear image; the exact variant samples pixel centres
            ops.append(
                A.RandomResizedCrop(
                    size,
                    scale=tuple(cfg.scale),
                    mask_interpolation=cv2.INTER_NEAREST_EXACT,
                    p=1.0,
                )
            )
        else:
            ops.append(A.RandomCrop(image_size, image_size))
    if train:
        if cfg.hflip:
            ops.append(A.HorizontalFlip(p=cfg.hflip))
        if cfg.vflip:
            ops.append(A.VerticalFlip(p=cfg.vflip))
        if cfg.rotate90:
            ops.append(A.RandomRotate90(p=cfg.rotate90))
    return A.Compose(ops)


def brightness_contrast(x: np.ndarray, rng: np.random.Generator, limit: float = 0.2) -> np.ndarray:
    """Random contrast and brightness on a *normalized* image, the same for all bands.

    Works for any band count and dtype because it acts after normalization, where 1.0
    is about one standard deviation.
    """
    contrast = 1.0 + rng.uniform(-limit, limit)
    brightness = rng.uniform(-limit, limit)
    return (x * np.float32(contrast) + np.float32(brightness)).astype(np.float32)
