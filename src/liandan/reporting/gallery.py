"""Galleries: validation images with truth and prediction overlays, and top losses.

Segmentation: the worst validation images by per-image IoU, each one PNG holding the
image, the truth overlay and the prediction overlay side by side (class colours from
classes.yaml / model.json). Classification: the images with the largest loss, with
their truth, prediction and probabilities. Images are drawn with NumPy and written
with Pillow (no matplotlib figure per item), under ``plots/gallery/``.
"""

from __future__ import annotations

import io
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import cv2
import numpy as np
from PIL import Image

from liandan.atomic import atomic_write_bytes
from liandan.data.datasets import load_image
from liandan.data.scan import CheckedDataset, MaskMapper
from liandan.reporting.samples import SampleResults, truth_mask

GALLERY_SIZE = 16  # items per gallery: enough to see a pattern, small enough to read
TILE = 192  # displayed side of each panel, pixels
ALPHA = 0.45  # opacity of the class colours over the image


@dataclass
class GalleryItem:
    """One gallery entry: its PNG and the facts shown beneath it."""

    path: Path
    title: str
    facts: dict[str, Any] = field(default_factory=dict)


def display_rgb(image: np.ndarray) -> np.ndarray:
    """``(H, W, C)`` of any dtype -> ``(H, W, 3)`` uint8 for display.

    8-bit grey/RGB(A) photos are shown as they are; other images (16-bit, float, many
    bands) show their first three bands, each stretched between its 2nd and 98th
    percentile.
    """
    if image.ndim == 2:
        image = image[:, :, None]
    bands = image.shape[2]
    if image.dtype == np.uint8 and bands in (1, 3, 4):
        rgb = image[:, :, :3]
    else:
        x = image[:, :, :3].astype(np.float32)
        lo = np.nanpercentile(x, 2, axis=(0, 1))
        hi = np.nanpercentile(x, 98, axis=(0, 1))
        x = np.clip((x - lo) / np.maximum(hi - lo, 1e-6), 0, 1)
        rgb = np.nan_to_num(x * 255).astype(np.uint8)
    if rgb.shape[2] == 1:
        rgb = np.repeat(rgb, 3, axis=2)
    elif rgb.shape[2] == 2:
        rgb = np.concatenate([rgb, rgb[:, :, :1]], axis=2)
    return np.ascontiguousarray(rgb)


def overlay(rgb: np.ndarray, labels: np.ndarray, colors: list[tuple[int, int, int]]) -> np.ndarray:
    """Class colours blended over the image; pixels < 0 (ignored) stay uncoloured."""
    palette = np.asarray(colors, dtype=np.float32)
    out = rgb.astype(np.float32)
    keep = labels >= 0
    tint = palette[np.clip(labels, 0, len(palette) - 1)]
    out[keep] = (1 - ALPHA) * out[keep] + ALPHA * tint[keep]
    return out.astype(np.uint8)


def fit(panel: np.ndarray, size: int = TILE) -> np.ndarray:
    """Scale a panel so its longer side is ``size`` (nearest when enlarging: crisp pixels)."""
    h, w = panel.shape[:2]
    scale = size / max(h, w)
    shape = (max(1, round(w * scale)), max(1, round(h * scale)))
    method = cv2.INTER_NEAREST if scale >= 1 else cv2.INTER_AREA
    return cv2.resize(panel, shape, interpolation=method)


def side_by_side(panels: list[np.ndarray], gap: int = 4) -> np.ndarray:
    """Panels of equal height in one row, separated by white gaps."""
    height = max(p.shape[0] for p in panels)
    parts: list[np.ndarray] = []
    for i, p in enumerate(panels):
        if p.shape[0] < height:
            p = np.pad(p, ((0, height - p.shape[0]), (0, 0), (0, 0)), constant_values=255)
        parts.append(p)
        if i < len(panels) - 1:
            parts.append(np.full((height, gap, 3), 255, np.uint8))
    return np.concatenate(parts, axis=1)


def save_png(array: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    buf = io.BytesIO()
    Image.fromarray(array).save(buf, format="PNG")
    atomic_write_bytes(path, buf.getvalue())
    return path


def _slug(name: str) -> str:
    """A file-name-safe form of a sample name, without its extension."""
    return re.sub(r"[^A-Za-z0-9_.-]+", "_", str(Path(name).with_suffix("")))[:80]


def _fmt(value: float | None) -> str:
    return "—" if value is None else f"{value:.3f}"


def segmentation_gallery(
    results: SampleResults,
    predictor: Any,
    checked: CheckedDataset,
    out: Path,
    *,
    bands: list[int] | None = None,
    size: int = GALLERY_SIZE,
) -> list[GalleryItem]:
    """The ``size`` validation images (rasters: tiles) with the lowest IoU, worst first.

    Each PNG shows the image, the truth and the prediction (class colours over the
    image); ``predictor`` is the run's :class:`~liandan.prediction.Predictor` (only these
    images are predicted again).
    """
    colors = [tuple(c) for c in predictor.colors] or [(255, 0, 0)] * len(results.classes)
    mapper = MaskMapper(checked.index.classes)
    scored = [i for i, v in enumerate(results.ious) if v is not None]
    order = sorted(scored, key=lambda i: (results.ious[i], results.names[i]))[:size]
    items: list[GalleryItem] = []
    for rank, i in enumerate(order, start=1):
        if results.reader is not None:  # rasters: a validation tile
            region, top, left = results.windows[i]
            image, truth = results.reader.read(region, top, left)
            source = region.sample.image
        else:
            sample = results.samples[i]
            image, source = load_image(checked, sample, bands), sample.image
            truth = truth_mask(checked, sample, mapper)
        pred = predictor.predict_array(image, source).argmax(0)
        truth = truth.astype(np.int64)
        rgb = display_rgb(image)
        panels = [fit(rgb), fit(overlay(rgb, truth, colors)), fit(overlay(rgb, pred, colors))]
        path = out / "gallery" / f"seg_{rank:02d}_{_slug(results.names[i])}.png"
        save_png(side_by_side(panels), path)
        present = sorted({int(v) for v in np.unique(truth) if v >= 0})
        items.append(
            GalleryItem(
                path,
                results.names[i],
                {
                    "IoU": _fmt(results.ious[i]),
                    "classes in truth": ", ".join(results.classes[c] for c in present) or "—",
                },
            )
        )
    return items


def top_losses(
    results: SampleResults,
    checked: CheckedDataset,
    out: Path,
    *,
    bands: list[int] | None = None,
    size: int = GALLERY_SIZE,
    heatmaps: dict[int, np.ndarray] | None = None,
) -> list[GalleryItem]:
    """The ``size`` validation images with the largest loss, largest first.

    ``heatmaps`` (sample index -> ``(H, W)`` in [0, 1], e.g. Grad-CAM) adds a second
    panel with the heat map over the image.
    """
    assert results.probs is not None and results.targets is not None
    losses = results.losses()
    order = np.argsort(-losses, kind="stable")[:size].tolist()
    items: list[GalleryItem] = []
    for rank, i in enumerate(order, start=1):
        sample = results.samples[i]
        rgb = display_rgb(load_image(checked, sample, bands))
        panels = [fit(rgb, TILE // 2 * 2)]
        if heatmaps is not None and i in heatmaps:
            panels.append(fit(heat_overlay(rgb, heatmaps[i]), TILE // 2 * 2))
        path = out / "gallery" / f"loss_{rank:02d}_{_slug(results.names[i])}.png"
        save_png(side_by_side(panels), path)
        truth, pred = int(results.targets[i]), int(results.probs[i].argmax())
        items.append(
            GalleryItem(
                path,
                results.names[i],
                {
                    "truth": results.classes[truth],
                    "predicted": results.classes[pred],
                    "p(predicted)": _fmt(float(results.probs[i, pred])),
                    "p(truth)": _fmt(float(results.probs[i, truth])),
                    "loss": _fmt(float(losses[i])),
                },
            )
        )
    return items


def heat_overlay(rgb: np.ndarray, heat: np.ndarray) -> np.ndarray:
    """A ``[0, 1]`` heat map (any size) as a jet colour map blended over the image."""
    h, w = rgb.shape[:2]
    heat = cv2.resize(heat.astype(np.float32), (w, h), interpolation=cv2.INTER_LINEAR)
    colored = cv2.applyColorMap((255 * np.clip(heat, 0, 1)).astype(np.uint8), cv2.COLORMAP_JET)
    colored = cv2.cvtColor(colored, cv2.COLOR_BGR2RGB)
    return (0.5 * rgb + 0.5 * colored).astype(np.uint8)
