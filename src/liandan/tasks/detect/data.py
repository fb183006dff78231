"""Detection samples for training and evaluation: images with their boxes, box-aware.

:class:`DetectionData` reads the images of a list of
:class:`~liandan.tasks.detect.boxes.ImageBoxes` (with liandan's reader, so GeoTIFFs and
any band count work) and brings each to a square ``image_size`` input with its boxes:

- **evaluation** is a *letterbox*: the image is resized so its longer side is
  ``image_size`` (aspect kept) and padded at the bottom and right. The per-axis scale is
  in the target (``scale``: ``(sx, sy)``), so predictions map back to the original
  pixels with :func:`to_original` (the boxes' top-left origin does not move);
- **training** starts from the same letterbox, then zooms by a random factor in
  ``scale``, pads to ``image_size`` at a random place when smaller, and crops
  ``image_size`` around at least one box (albumentations' ``AtLeastOneBBoxRandomCrop``);
  then flips and 90° rotations, and colour changes (:class:`ColourJitter`:
  brightness/contrast and gamma per image, hue/saturation for RGB, each with its own
  probability) on the raw values scaled to 0-1 by the dtype's maximum.

Boxes follow every geometric step (albumentations' ``bbox_params``, ``pascal_voc``
format, which is liandan's frame: absolute pixel ``x1 y1 x2 y2`` on ``[0, W] x [0, H]``);
they are clipped to the image, and the remnant of a box cut by a crop is dropped when
less than ``min_visibility`` of it is left or when it is thinner than ``min_side`` px.
Images without boxes are background samples: their targets are empty. A record that
is a window of a raster (``rec.window``, :mod:`liandan.tasks.detect.vector`) is read as
that window only (:func:`window_pixels`), then goes through the same steps.

Normalization comes last, on the raw values: a :class:`~liandan.data.transforms.
Normalizer` (its ``to_chw``), any ``(H, W, C) -> (H, W, C)`` callable, or a per-band
``(mean, std)`` pair in raw units; None divides by the dtype's maximum.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import albumentations as A
import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from liandan.data.readers import read_image, read_window
from liandan.data.transforms import AugmentPipeline, dtype_max, hue_saturation, random_gamma
from liandan.tasks.detect.boxes import ImageBoxes

Normalize = Callable[[np.ndarray], np.ndarray] | tuple[Sequence[float], Sequence[float]] | None

MIN_VISIBILITY = 0.3  # share of a cropped box's area that must remain for it to be kept
MIN_SIDE = 2.0  # px; a thinner remnant is no object to learn from
COLOUR_LIMIT = 0.2  # brightness and contrast change, fraction of full intensity

__all__ = [
    "ColourJitter",
    "DetectionData",
    "detection_collate",
    "letterbox",
    "letterbox_scale",
    "to_original",
    "window_pixels",
]


def window_pixels(
    rec: ImageBoxes, image: np.ndarray | None = None, bands: list[int] | None = None
) -> np.ndarray:
    """The ``(rec.height, rec.width, C)`` pixels of a windowed record: cut from
    ``image`` (the whole raster, decoded) or read from its file (rasterio's windowed
    read); the part of the window beyond the raster's edge is 0."""
    assert rec.window is not None, "a record with a window"
    col, row, width, height = rec.window
    if image is not None:
        part = image[row : row + height, col : col + width]
    else:
        part = read_window(rec.path, rec.window, bands)
    if part.shape[:2] == (height, width):
        return part
    out = np.zeros((height, width, part.shape[2]), part.dtype)
    out[: part.shape[0], : part.shape[1]] = part
    return out


def letterbox_scale(width: int, height: int, size: int) -> tuple[float, float]:
    """``(sx, sy)``: how much :func:`letterbox` scales each axis of a ``width x height``
    image (equal but for the rounding of the new size to whole pixels)."""
    s = size / max(width, height)
    new_w, new_h = max(1, round(width * s)), max(1, round(height * s))
    return new_w / width, new_h / height


def letterbox(image: np.ndarray, size: int) -> tuple[np.ndarray, tuple[float, float]]:
    """Resize ``(H, W, C)`` so its longer side is ``size``, pad bottom/right to a square.

    Returns:
        The ``(size, size, C)`` image (padding 0) and ``(sx, sy)``, the scale of each axis.
    """
    h, w = image.shape[:2]
    sx, sy = letterbox_scale(w, h, size)
    new_w, new_h = round(w * sx), round(h * sy)
    if (new_w, new_h) != (w, h):
        # area averaging when shrinking (no aliasing), bilinear when enlarging
        shrink = new_w < w
        interpolation = cv2.INTER_AREA if shrink else cv2.INTER_LINEAR
        image = cv2.resize(image, (new_w, new_h), interpolation=interpolation)
        if image.ndim == 2:
            image = image[:, :, None]
    out = np.zeros((size, size, image.shape[2]), image.dtype)
    out[:new_h, :new_w] = image
    return out, (sx, sy)


def to_original(boxes: np.ndarray | torch.Tensor, scale: Sequence[float]) -> np.ndarray:
    """Map ``(N, 4)`` boxes predicted on a letterboxed input back to the original pixels.

    Args:
        boxes: ``x1 y1 x2 y2`` in input pixels.
        scale: ``(sx, sy)`` from the target's ``scale`` or :func:`letterbox_scale`.
    """
    if isinstance(boxes, torch.Tensor):
        boxes = boxes.detach().float().cpu().numpy()  # bf16 under autocast
    sx, sy = (float(v) for v in scale)
    return np.asarray(boxes, np.float64).reshape(-1, 4) / np.array([sx, sy, sx, sy])


@dataclass(frozen=True)
class ColourJitter:
    """Random colour changes of a training image, each with its own probability (0:
    never), in this order on values in 0-1: hue/saturation (RGB images only), gamma per
    band, then brightness/contrast (the same for every band).

    Each probability is ``augment.<name>`` of the config, as for the other tasks.
    """

    brightness_contrast: float = 0.0
    hue_saturation: float = 0.0
    gamma: float = 0.0

    def __post_init__(self) -> None:
        bad = [f"{k}={v}" for k, v in asdict(self).items() if not 0.0 <= v <= 1.0]
        if bad:
            raise ValueError(f"colour probabilities must be in [0, 1], not {', '.join(bad)}")

    @property
    def active(self) -> bool:
        return any(v > 0 for v in asdict(self).values())

    def __call__(self, x: np.ndarray, rng: np.random.Generator) -> np.ndarray:
        if self.hue_saturation and x.shape[-1] == 3 and rng.random() < self.hue_saturation:
            x = hue_saturation(x, rng)
        if self.gamma and rng.random() < self.gamma:
            x = random_gamma(x, rng)
        if self.brightness_contrast and rng.random() < self.brightness_contrast:
            contrast = 1.0 + rng.uniform(-COLOUR_LIMIT, COLOUR_LIMIT)
            brightness = rng.uniform(-COLOUR_LIMIT, COLOUR_LIMIT) * float(x.mean())
            x = np.clip(x * np.float32(contrast) + np.float32(brightness), 0.0, None)
        return x.astype(np.float32, copy=False)


class BoxAugment(AugmentPipeline):
    """liandan's augmentation pipeline (seeded, reseeded per DataLoader worker) with
    albumentations' box handling; called as ``pipeline(image=, bboxes=, labels=)``."""

    def __init__(
        self,
        geometric: list[Any],
        colour: ColourJitter,
        *,
        min_visibility: float,
        min_side: float,
        seed: int,
    ) -> None:
        super().__init__([], [colour] if colour.active else [], seed=seed)
        params = A.BboxParams(
            format="pascal_voc",
            label_fields=["labels"],
            min_visibility=min_visibility,
            min_width=min_side,
            min_height=min_side,
            clip=True,  # boxes a pixel beyond the border (validate's tolerance) are kept
        )
        self.geometric = A.Compose(geometric, bbox_params=params, seed=seed)


class DetectionData(Dataset):
    """Images and boxes of ``records`` as ``(image, target)`` pairs (module docstring).

    Args:
        records: one :class:`ImageBoxes` per image, background images included.
        image_size: side of the square inputs.
        train: random augmentation (True) or the deterministic letterbox.
        normalize: a ``Normalizer`` or ``(H, W, C)`` callable, or ``(mean, std)`` per
            band in raw units; None: raw values divided by the dtype's maximum.
        bands: 1-based band indices to read (None: all).
        scale: training zoom range, as a factor on the letterboxed side.
        hflip, vflip, rotate90: probabilities of a horizontal flip, a vertical flip and
            a random multiple of 90° (training).
        brightness_contrast, hue_saturation, gamma: probabilities of a random
            brightness/contrast change, a hue/saturation shift (RGB images only) and a
            gamma curve per band (training; :class:`ColourJitter`).
        min_visibility: a box cut by a crop is dropped when less of its area is left.
        min_side: ... or when it is thinner than this, in input pixels.
        seed: seeds the random transforms.
        images: decoded images by path (a checked dataset's cache); others are read.

    Each item is ``(image, target)``: ``image`` a ``(C, image_size, image_size)`` float32
    tensor; ``target`` a dict of ``boxes`` ``(N, 4)`` float32 input pixels, ``labels``
    ``(N,)`` int64 class ids and ``scale`` ``(2,)`` float64, the letterbox's ``(sx, sy)``
    (in training, where crops move boxes, only the letterbox's part of the scale).
    """

    def __init__(
        self,
        records: Sequence[ImageBoxes],
        image_size: int,
        *,
        train: bool,
        normalize: Normalize = None,
        bands: list[int] | None = None,
        scale: tuple[float, float] = (0.75, 1.25),
        hflip: float = 0.5,
        vflip: float = 0.0,
        rotate90: float = 0.0,
        brightness_contrast: float = 0.5,
        hue_saturation: float = 0.5,
        gamma: float = 0.5,
        min_visibility: float = MIN_VISIBILITY,
        min_side: float = MIN_SIDE,
        seed: int = 0,
        images: dict[Any, np.ndarray] | None = None,
    ) -> None:
        self.records = list(records)
        self.images = images or {}
        self.image_size = image_size
        self.train = train
        self.normalize = normalize
        self.bands = bands
        self.augment: BoxAugment | None = None
        if train:
            ops: list[Any] = [
                A.RandomScale(scale_limit=(scale[0] - 1, scale[1] - 1), p=1.0),
                A.PadIfNeeded(
                    image_size,
                    image_size,
                    position="random",
                    border_mode=cv2.BORDER_CONSTANT,
                    fill=0,
                ),
                # a crop holding (part of) a box when there is one: fewer empty samples
                A.AtLeastOneBBoxRandomCrop(image_size, image_size),
            ]
            if hflip:
                ops.append(A.HorizontalFlip(p=hflip))
            if vflip:
                ops.append(A.VerticalFlip(p=vflip))
            if rotate90:
                ops.append(A.RandomRotate90(p=rotate90))
            colour = ColourJitter(brightness_contrast, hue_saturation, gamma)
            self.augment = BoxAugment(
                ops, colour, min_visibility=min_visibility, min_side=min_side, seed=seed
            )

    def __len__(self) -> int:
        return len(self.records)

    def _to_chw(self, image: np.ndarray, value_scale: float) -> np.ndarray:
        norm = self.normalize
        if norm is None:
            return np.ascontiguousarray(image.transpose(2, 0, 1), np.float32) / np.float32(
                value_scale
            )
        if hasattr(norm, "to_chw"):
            return norm.to_chw(image)  # type: ignore[union-attr,no-any-return]
        if callable(norm):
            return np.ascontiguousarray(norm(image).transpose(2, 0, 1), np.float32)
        mean, std = (np.asarray(v, np.float32) for v in norm)
        return np.ascontiguousarray(((image - mean) / std).transpose(2, 0, 1), np.float32)

    def load(self, index: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, tuple[float, float]]:
        """The letterboxed ``(H, W, C)`` image (raw values), its boxes in its pixels, their
        classes, and the letterbox's ``(sx, sy)``."""
        rec = self.records[index]
        image = self.images.get(rec.path)
        if rec.window is not None:
            image = window_pixels(rec, image, self.bands)
        elif image is None:
            image = read_image(rec.path, self.bands)
        image, (sx, sy) = letterbox(image, self.image_size)
        boxes = rec.boxes * np.array([sx, sy, sx, sy])
        side = self.image_size
        boxes = np.clip(boxes, 0, [min(side, rec.width * sx), min(side, rec.height * sy)] * 2)
        keep = (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        return image, boxes[keep], rec.classes[keep], (sx, sy)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        image, boxes, classes, scale = self.load(index)
        value_scale = dtype_max(image.dtype)
        if self.augment is not None:
            if image.dtype != np.uint8:
                image = image.astype(np.float32)  # albumentations: uint8 or float32
            self.augment.value_scale = value_scale  # colour acts on values in 0-1
            out = self.augment(image=image, bboxes=boxes.reshape(-1, 4), labels=classes)
            image = out["image"]
            boxes = np.asarray(out["bboxes"], np.float64).reshape(-1, 4)
            classes = np.asarray(out["labels"], np.int64).reshape(-1)
        target = {
            "boxes": torch.as_tensor(boxes, dtype=torch.float32).reshape(-1, 4),
            "labels": torch.as_tensor(classes, dtype=torch.int64).reshape(-1),
            "scale": torch.tensor(scale, dtype=torch.float64),
        }
        return torch.from_numpy(self._to_chw(image, value_scale)), target


def detection_collate(
    batch: Sequence[tuple[torch.Tensor, dict[str, torch.Tensor]]],
) -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    """Stack the images ``(B, C, H, W)``; keep one target dict per image (boxes differ
    in number, background images have none)."""
    images = torch.stack([image for image, _ in batch])
    return images, [target for _, target in batch]
