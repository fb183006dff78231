"""Normalization presets and albumentations pipelines built from the config.

Normalization travels with the model (``model/model.json``): it is fitted once on the
training set, stored, and applied identically by predict. Geometric augmentation runs
on the image and mask together (nearest-neighbour for masks, always).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import albumentations as A
import cv2
import numpy as np

from liandan.config import AugmentConfig
from liandan.errors import ConfigError
from liandan.tasks import get_task

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

    def affine(self, bands: int) -> tuple[np.ndarray, np.ndarray, list[int]] | None:
        """Per output band: ``(a, b, source band)`` with ``out = x[source] * a + b``.

        None for the presets that are not a per-band affine map (percentile, zca).
        """
        ones = np.ones(bands, np.float32)

        def f32(values: np.ndarray | float) -> np.ndarray:
            return (np.asarray(values, dtype=np.float64) * ones).astype(np.float32)

        order = list(range(bands))
        std = np.asarray(self.std or [1.0], dtype=np.float64)
        mean = np.asarray(self.mean or [0.0], dtype=np.float64)
        if self.preset == "dataset":
            return f32(1.0 / std), f32(-mean / std), order
        if self.preset == "unit":
            return f32(1.0 / self.scale), f32(0.0), order
        if self.preset == "imagenet":
            return f32(1.0 / (self.scale * std)), f32(-mean / std), order
        if self.preset == "vgg":
            if bands == 3:
                order = [2, 1, 0]  # RGB -> BGR, as the Caffe VGG weights expect
            return f32(255.0 / self.scale), f32(-mean), order
        return None

    def __call__(self, image: np.ndarray) -> np.ndarray:
        """``(H, W, C)`` raw values -> ``(H, W, C)`` float32 network input."""
        x = image.astype(np.float32, copy=False)
        coefficients = self.affine(x.shape[-1])
        if coefficients is not None:
            a, b, order = coefficients
            if order != list(range(x.shape[-1])):
                x = x[..., order]
            return x * a + b

        def f32(values: list[float]) -> np.ndarray:
            return np.asarray(values, dtype=np.float32)

        if self.preset == "percentile":
            lo, hi = f32(self.low), f32(self.high)
            return (np.clip(x, lo, hi) - lo) / np.maximum(hi - lo, np.float32(1e-6))
        if self.preset == "zca":
            w = np.asarray(self.whiten, dtype=np.float32)
            return ((x - f32(self.mean)) @ w.T).astype(np.float32)
        raise ConfigError(f"unknown normalization {self.preset!r}", where="data.normalize")

    def to_chw(self, image: np.ndarray) -> np.ndarray:
        """``(H, W, C)`` raw values -> ``(C, H, W)`` float32, equal to ``self(image)``
        transposed.

        The affine presets write each band straight into the channel-first array: about
        4x faster than normalizing and then copying a transposed array (the copy of a
        transposed array dominated the training sample path).
        """
        coefficients = self.affine(image.shape[-1])
        if coefficients is None:
            return np.ascontiguousarray(self(image).transpose(2, 0, 1))
        a, b, order = coefficients
        out = np.empty((image.shape[-1], *image.shape[:2]), np.float32)
        for c, source in enumerate(order):
            np.multiply(image[..., source], a[c], out=out[c], dtype=np.float32)
            out[c] += b[c]
        return out

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


# Strengths of the augmentations whose config key is a probability: the usual
# albumentations defaults, kept mild so masks and small objects survive.
SHIFT_LIMIT, SCALE_LIMIT, ROTATE_LIMIT = 0.0625, 0.1, 15.0  # shift_scale_rotate
HUE_SHIFT, SATURATION_SHIFT = 0.05, 0.2  # fraction of the hue circle / of saturation
GAMMA_RANGE = (0.8, 1.25)  # per band
NOISE_STD = (0.01, 0.05)  # fraction of the value range
BLUR_SIGMA = (0.1, 1.5)  # pixels


class AugmentPipeline:
    """Geometric transforms on image and mask together, then intensity transforms.

    Geometric ones (crops, flips, rotations, affine, blur, coarse dropout) run through
    albumentations; masks use nearest-neighbour sampling and pad/fill with -1 (ignored).
    Intensity ones act on the image scaled to 0-1 by ``value_scale`` (the dtype's
    maximum): gamma and noise per band for any band count, hue/saturation for RGB only.

    The random generators are seeded, and reseeded in each DataLoader worker from the
    worker's own seed (which the loader's seeded generator draws), so augmentation is
    reproducible with any number of workers.
    """

    def __init__(
        self,
        geometric: list[Any],
        intensity: list[Callable[[np.ndarray, np.random.Generator], np.ndarray]],
        *,
        value_scale: float = 255.0,
        seed: int = 0,
    ) -> None:
        self.geometric = A.Compose(geometric, seed=seed)
        self.intensity = intensity
        self.value_scale = value_scale
        self.seed = seed
        self.rng = np.random.default_rng(seed)
        self._worker: tuple[int, int] | None = None
        # (image, mask, rng) -> (image, mask) before the rest, e.g. a rare-class crop
        self.crop: Callable[..., tuple[np.ndarray, np.ndarray]] | None = None

    def reset(self) -> None:
        """Back to the state just after construction (same seed, same draws)."""
        self.geometric.set_random_seed(self.seed)
        self.rng = np.random.default_rng(self.seed)
        self._worker = None

    def _reseed_in_worker(self) -> None:
        import torch.utils.data

        info = torch.utils.data.get_worker_info()
        if info is not None and self._worker != (info.id, info.seed):
            seed = int(info.seed) % 2**32
            self.geometric.set_random_seed(seed)
            self.rng = np.random.default_rng(seed)
            self._worker = (info.id, info.seed)

    def __call__(self, **data: Any) -> dict[str, Any]:
        self._reseed_in_worker()
        if self.crop is not None and "mask" in data:
            data["image"], data["mask"] = self.crop(data["image"], data["mask"], self.rng)
        out = dict(self.geometric(**data))
        if self.intensity:
            x = out["image"].astype(np.float32) / np.float32(self.value_scale)
            for op in self.intensity:
                x = op(x, self.rng)
            out["image"] = (x * np.float32(self.value_scale)).astype(np.float32)
        return out


def random_gamma(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``x ** gamma`` with one gamma per band, log-uniform in GAMMA_RANGE (x in 0-1)."""
    lo, hi = np.log(GAMMA_RANGE[0]), np.log(GAMMA_RANGE[1])
    gamma = np.exp(rng.uniform(lo, hi, size=x.shape[-1])).astype(np.float32)
    return np.power(np.clip(x, 0.0, None), gamma)


def gaussian_noise(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Additive Gaussian noise, standard deviation drawn from NOISE_STD (x in 0-1)."""
    std = rng.uniform(*NOISE_STD)
    return x + rng.normal(0.0, std, size=x.shape).astype(np.float32)


def hue_saturation(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Shift hue and scale saturation of an RGB image in 0-1 (OpenCV's HSV)."""
    hsv = cv2.cvtColor(np.clip(x, 0.0, 1.0).astype(np.float32), cv2.COLOR_RGB2HSV)
    hsv[..., 0] = (hsv[..., 0] + 360.0 * rng.uniform(-HUE_SHIFT, HUE_SHIFT)) % 360.0
    hsv[..., 1] = np.clip(
        hsv[..., 1] * (1.0 + rng.uniform(-SATURATION_SHIFT, SATURATION_SHIFT)), 0, 1
    )
    return cv2.cvtColor(hsv, cv2.COLOR_HSV2RGB)


def _sometimes(
    p: float, op: Callable[[np.ndarray, np.random.Generator], np.ndarray]
) -> Callable[[np.ndarray, np.random.Generator], np.ndarray]:
    def apply(x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        return op(x, rng) if rng.random() < p else x

    apply.__name__ = op.__name__
    return apply


def eval_resize_crop(image: np.ndarray, image_size: int, ratio: float | None) -> np.ndarray:
    """Classification evaluation: resize to ``image_size * ratio``, centre-crop ``image_size``.

    ``ratio`` None (or 1) resizes straight to ``image_size``. 224 / 256 is the classic
    ImageNet evaluation (ratio 1.143). Area interpolation, as in training.
    """
    side = round(image_size * (ratio or 1.0))
    out = cv2.resize(image.astype(np.float32), (side, side), interpolation=cv2.INTER_AREA)
    if out.ndim == 2:
        out = out[:, :, None]
    top = (side - image_size) // 2
    return out[top : top + image_size, top : top + image_size]


def resized_geometry(cfg: AugmentConfig, image_size: int, train: bool) -> list[Any]:
    """Whole images to ``image_size``: a random resized crop (``augment.scale``) in training,
    resize then centre-crop (``augment.eval_resize``) or a plain resize otherwise."""
    size = (image_size, image_size)
    if train and tuple(cfg.scale) != (1.0, 1.0):
        return [A.RandomResizedCrop(size, scale=tuple(cfg.scale), p=1.0)]
    if not train and cfg.eval_resize:
        side = round(image_size * cfg.eval_resize)
        return [
            A.Resize(side, side, interpolation=cv2.INTER_AREA),
            A.CenterCrop(image_size, image_size),
        ]
    return [A.Resize(image_size, image_size, interpolation=cv2.INTER_AREA)]


def native_crop_geometry(cfg: AugmentConfig, image_size: int, train: bool) -> list[Any]:
    """Random ``image_size`` crops at native resolution in training; nothing otherwise.

    ``augment.scale`` is the window's area relative to the training crop, so the zoom
    stays near the native resolution predict runs at (an area fraction of a 2000 px image
    would shrink it 8x); windows larger than the image are padded (mask: -1, ignored).
    """
    if not train:
        return []
    lo, hi = (max(8, round(image_size * math.sqrt(s))) for s in cfg.scale)
    side = max(image_size, hi)
    ops: list[Any] = [
        A.PadIfNeeded(side, side, border_mode=cv2.BORDER_CONSTANT, fill=0, fill_mask=-1)
    ]
    if (lo, hi) == (image_size, image_size):
        return [*ops, A.RandomCrop(image_size, image_size)]
    # INTER_NEAREST_EXACT: OpenCV's INTER_NEAREST samples floor(x * scale), up to
    # half a pixel off the bilinear image; the exact variant samples pixel centres
    crop = A.RandomSizedCrop(
        (lo, hi),
        size=(image_size, image_size),
        w2h_ratio=1.0,
        mask_interpolation=cv2.INTER_NEAREST_EXACT,
        p=1.0,
    )
    return [*ops, crop]


def build_augment(
    cfg: AugmentConfig,
    *,
    task: str,
    image_size: int,
    train: bool,
    bands: int = 3,
    value_scale: float = 255.0,
    seed: int = 0,
) -> AugmentPipeline:
    """The augmentation pipeline for one split (called as ``pipeline(image=, mask=)``).

    Classification resizes every image to ``image_size`` (random-resized-crop when
    ``augment.scale`` is not (1, 1); for evaluation resize-then-centre-crop when
    ``augment.eval_resize`` is set). Segmentation keeps the native resolution and
    trains on random ``image_size`` crops (padded where smaller; pad pixels are
    ignored), so predict at native resolution sees the scale it was trained on; there
    ``augment.scale`` is the area of a random window relative to the crop, resized to
    the crop (``(0.5, 2.0)``: windows of 0.71 to 1.41 times its side).

    Args:
        cfg: the ``augment`` config section.
        task: a registered task; it chooses the geometry (see :meth:`Task.geometry`).
        image_size: training input side.
        train: training split (random transforms) or evaluation (deterministic).
        bands: number of image bands; hue/saturation needs 3 (RGB), others skip it.
        value_scale: the raw value of full intensity (the dtype's maximum; 1 for floats).
        seed: seeds the random transforms.
    """
    # geometry first: the task's way to the input size (resize, or native-resolution crops)
    ops: list[Any] = get_task(task).geometry(cfg, image_size, train)
    intensity: list[Callable[[np.ndarray, np.random.Generator], np.ndarray]] = []
    if train:
        # warps fill outside the image with 0 and outside the mask with -1 (ignored)
        warp = dict(
            border_mode=cv2.BORDER_CONSTANT,
            fill=0,
            fill_mask=-1,
            mask_interpolation=cv2.INTER_NEAREST,
        )
        if cfg.hflip:
            ops.append(A.HorizontalFlip(p=cfg.hflip))
        if cfg.vflip:
            ops.append(A.VerticalFlip(p=cfg.vflip))
        if cfg.rotate90:
            ops.append(A.RandomRotate90(p=cfg.rotate90))
        if cfg.rotate:
            ops.append(A.Rotate(limit=cfg.rotate, p=1.0, **warp))  # type: ignore[arg-type]
        if cfg.shift_scale_rotate:
            ops.append(
                A.Affine(
                    translate_percent=(-SHIFT_LIMIT, SHIFT_LIMIT),
                    scale=(1 - SCALE_LIMIT, 1 + SCALE_LIMIT),
                    rotate=(-ROTATE_LIMIT, ROTATE_LIMIT),
                    p=cfg.shift_scale_rotate,
                    **warp,  # type: ignore[arg-type]
                )
            )
        if cfg.blur:
            ops.append(A.GaussianBlur(sigma_limit=BLUR_SIGMA, p=cfg.blur))
        if cfg.coarse_dropout:
            # erases image patches only; the mask keeps the truth under them
            ops.append(
                A.CoarseDropout(
                    num_holes_range=(1, 4),
                    hole_height_range=(0.05, 0.2),
                    hole_width_range=(0.05, 0.2),
                    fill=0,
                    p=cfg.coarse_dropout,
                )
            )
        if cfg.hue_saturation and bands == 3:
            intensity.append(_sometimes(cfg.hue_saturation, hue_saturation))
        if cfg.gamma:
            intensity.append(_sometimes(cfg.gamma, random_gamma))
        if cfg.noise:
            intensity.append(_sometimes(cfg.noise, gaussian_noise))
    return AugmentPipeline(ops, intensity, value_scale=value_scale, seed=seed)


def brightness_contrast(x: np.ndarray, rng: np.random.Generator, limit: float = 0.2) -> np.ndarray:
    """Random contrast and brightness on a *normalized* image, the same for all bands.

    Works for any band count and dtype because it acts after normalization, where 1.0
    is about one standard deviation.
    """
    contrast = 1.0 + rng.uniform(-limit, limit)
    brightness = rng.uniform(-limit, limit)
    return (x * np.float32(contrast) + np.float32(brightness)).astype(np.float32)
