"""Dataset fingerprint, computed from per-file records.

``liandan scan`` decodes each file once into a small record (see
:mod:`liandan.scan_report`); :mod:`liandan.data.problems` turns those records into the
list of :class:`Problem` s (each a file and a reason), this module into the
:class:`Fingerprint` that ``plan`` reads: counts, sizes, bands, per-band statistics,
class frequencies.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from liandan.data.layouts import ClassSpec, DatasetIndex, Sample
from liandan.data.mask_records import class_codes, classes_for
from liandan.data.problems import (
    Problem,
    check_records,
    is_vector,
    mask_records,
    sample_split,
    usable,
)
from liandan.data.raster_labels import polygon_classes, read_polygons
from liandan.errors import DataError
from liandan.tasks import get_task

__all__ = ["LEVELS", "Fingerprint", "Problem", "build_fingerprint", "check_records"]

LEVELS = [0, 0.5, 1, 2.5, 5, 10, 25, 50, 75, 90, 95, 97.5, 99, 99.5, 100]  # stored quantiles


@dataclass
class Fingerprint:
    """What ``plan`` needs to know about a dataset (all plain, JSON-safe values)."""

    task: str
    layout: str
    num_samples: int = 0
    splits: dict[str, int] = field(default_factory=dict)  # "none" when unsplit
    classes: list[str] = field(default_factory=list)
    class_images: dict[str, int] = field(default_factory=dict)  # images holding the class
    class_pixels: dict[str, int] = field(default_factory=dict)  # segment only
    imbalance_ratio: float | None = None  # most / least frequent class (pixels or images)
    image_size: dict[str, list[int]] = field(default_factory=dict)  # min/median/max [h, w]
    bands: list[int] = field(default_factory=list)
    dtypes: list[str] = field(default_factory=list)
    band_mean: list[float] = field(default_factory=list)
    band_std: list[float] = field(default_factory=list)
    band_p005: list[float] = field(default_factory=list)  # 0.5th percentile per band
    band_p995: list[float] = field(default_factory=list)  # 99.5th percentile per band
    nodata_value: float | None = None
    nodata_fraction: float | None = None
    georeferenced: bool = False
    extensions: list[str] = field(default_factory=list)
    ignore_index: int | tuple[int, int, int] | None = None  # a value, or a colour
    # segment: total-variation distance between the class mix of the top and bottom
    # thirds (vertical) and of the left and right thirds (horizontal): 0 = same mix
    layout_shift: dict[str, float] = field(default_factory=dict)
    # detect: box statistics (tasks.detect.boxes.box_stats: counts, boxes per image,
    # sizes in px and relative to the image, aspect ratios, COCO size shares)
    boxes: dict[str, Any] = field(default_factory=dict)


# ------------------------------------------------------------------ fingerprint
def _mixture_percentile(quantiles: np.ndarray, weights: np.ndarray, p: float) -> float:
    """Percentile ``p`` of the pooled pixels, each image given by its quantiles."""
    grid = np.unique(quantiles)
    if grid.size > 4096:
        grid = grid[np.linspace(0, grid.size - 1, 4096).astype(int)]
    levels = np.asarray(LEVELS) / 100
    cdf = np.zeros_like(grid)
    for q, w in zip(quantiles, weights, strict=True):
        cdf += w * np.interp(grid, q, levels)
    cdf /= weights.sum()
    return float(np.interp(p / 100, cdf, grid))


def _band_stats(recs: list[dict[str, Any]]) -> dict[str, list[float]]:
    # pixels with data: each image's statistics leave its nodata pixels out
    n = np.array([max(1, r["h"] * r["w"] - r.get("nodata_pixels", 0)) for r in recs], float)
    mean = np.array([r["mean"] for r in recs])  # (images, bands)
    var = np.array([r["var"] for r in recs])
    total = (n[:, None] * mean).sum(0) / n.sum()
    pooled = (n[:, None] * (var + (mean - total) ** 2)).sum(0) / n.sum()
    q = np.array([r["q"] for r in recs])  # (images, bands, levels)
    low = [_mixture_percentile(q[:, b], n, 0.5) for b in range(q.shape[1])]
    high = [_mixture_percentile(q[:, b], n, 99.5) for b in range(q.shape[1])]

    def r4(x: Any) -> list[float]:
        return [round(float(v), 4) for v in x]

    return {
        "band_mean": r4(total),
        "band_std": r4(np.sqrt(pooled)),
        "band_p005": r4(low),
        "band_p995": r4(high),
    }


def build_fingerprint(
    index: DatasetIndex,
    records: dict[Path, dict[str, Any]],
    nodata: float | None,
    lossy_masks: str = "error",
) -> Fingerprint:
    """The dataset's fingerprint from the records of its usable samples."""
    good = [s for s in index.samples if usable(s, records)]
    fp = Fingerprint(task=index.task, layout=index.layout, num_samples=len(good))
    fp.splits = dict(sorted(Counter(sample_split(s) for s in good).items()))
    fp.extensions = sorted({s.image.suffix.lower() for s in index.samples})
    recs = [records[s.image] for s in good]
    if not recs:
        return fp
    hw = np.array([[r["h"], r["w"]] for r in recs])
    fp.image_size = {
        "min": hw.min(0).tolist(),
        "median": np.median(hw, 0).astype(int).tolist(),
        "max": hw.max(0).tolist(),
    }
    bands = Counter(r["c"] for r in recs)
    fp.bands, fp.dtypes = sorted(bands), sorted({r["dtype"] for r in recs})
    common = bands.most_common(1)[0][0]
    for key, value in _band_stats([r for r in recs if r["c"] == common]).items():
        setattr(fp, key, value)
    fp.georeferenced = any(r.get("geo") for r in recs)
    tags = {r.get("nodata") for r in recs} - {None}
    fp.nodata_value = nodata if nodata is not None else (tags.pop() if len(tags) == 1 else None)
    empty = sum(r.get("nodata_pixels", 0) for r in recs)
    if fp.nodata_value is not None or empty:  # a value, or a mask or alpha band
        fp.nodata_fraction = round(empty / hw.prod(1).sum(), 6)
    # the task's targets: classes, their frequencies (None: not counted) and layout
    freq = get_task(index.task).fingerprint_targets(fp, index, good, records, lossy_masks)
    if freq is None:
        return fp
    positive = [f for f in freq if f > 0]
    if positive:
        fp.imbalance_ratio = round(max(positive) / min(positive), 3)
    return fp


def label_frequencies(fp: Fingerprint, index: DatasetIndex, good: list[Sample]) -> list[int]:
    """Image labels: the classes and how many images hold each (classification)."""
    fp.classes = list(index.classes.names)
    counts = Counter(int(s.target) for s in good)  # type: ignore[arg-type]
    fp.class_images = {n: counts.get(i, 0) for i, n in enumerate(fp.classes)}
    return list(fp.class_images.values())


def mask_frequencies(
    fp: Fingerprint,
    index: DatasetIndex,
    good: list[Sample],
    records: dict[Path, dict[str, Any]],
    lossy_masks: str,
) -> list[int] | None:
    """Masks: classes, pixels and images per class, layout shift (None: not counted)."""
    masks, _, _ = mask_records(index, good, records, lossy_masks)
    if any(is_vector(s.target) for s in good):
        _polygon_fingerprint(fp, index, good)
        return None
    try:
        spec, _ = classes_for(index, masks)
    except DataError:
        return None
    fp.classes, fp.ignore_index = list(spec.names), spec.ignore_index
    pixels, images = np.zeros(spec.num_classes, np.int64), np.zeros(spec.num_classes, np.int64)
    for rec in masks.values():
        for code, n in class_codes(spec, rec).items():
            if code >= 0 and n:
                pixels[code] += n
                images[code] += 1
    fp.layout_shift = _layout_shift(spec, list(masks.values()))
    fp.class_pixels = dict(zip(fp.classes, pixels.tolist(), strict=True))
    fp.class_images = dict(zip(fp.classes, images.tolist(), strict=True))
    return list(pixels.tolist())


def _polygon_fingerprint(fp: Fingerprint, index: DatasetIndex, good: list[Sample]) -> Fingerprint:
    """Classes and the label files holding each, for rasters labelled by polygons.

    Pixel counts would need every polygon rasterized: left out. A layer that cannot be
    read is left out here; the label checks name it (``data.rasters.check_labels``).
    """
    found: dict[Path, set[Any]] = {}
    for s in good:
        if isinstance(s.target, Path) and is_vector(s.target):
            try:
                found[s.target] = {v for _, v in read_polygons(s.target, "class")}
            except DataError:
                continue
    spec = index.classes
    if not spec.names:
        spec = polygon_classes([({}, v) for vs in found.values() for v in vs], "background")
    fp.classes, fp.ignore_index = list(spec.names), spec.ignore_index
    raw = spec.raw_values()
    images: dict[str, int] = {}  # unlabelled pixels (background) are in no polygon
    for values in found.values():
        for v in values:
            name = str(v) if str(v) in spec.names else None
            if name is None and isinstance(v, int | float) and int(v) in raw:
                name = spec.names[raw.index(int(v))]
            if name is not None:
                images[name] = images.get(name, 0) + 1
    fp.class_images = {n: images[n] for n in spec.names if n in images}
    return fp


def _layout_shift(spec: ClassSpec, recs: list[dict[str, Any]]) -> dict[str, float]:
    """How much the class mix differs between opposite thirds of the masks (pooled).

    Upright scenes have an up direction (sky above, road below): their top and bottom
    thirds hold different classes. Overhead and texture images look the same from any
    side, so both distances stay near the sampling noise.
    """
    pooled = {side: np.zeros(spec.num_classes, np.float64) for side in THIRDS}
    for rec in recs:
        thirds = rec.get("thirds")
        if not thirds:  # streamed label rasters: not recorded
            continue
        for side in THIRDS:
            for code, n in class_codes(spec, {**rec, "values": thirds[side]}).items():
                if code >= 0:
                    pooled[side][code] += n

    def distance(a: np.ndarray, b: np.ndarray) -> float | None:
        if a.sum() == 0 or b.sum() == 0:
            return None
        return round(0.5 * float(np.abs(a / a.sum() - b / b.sum()).sum()), 4)

    out = {
        "vertical": distance(pooled["top"], pooled["bottom"]),
        "horizontal": distance(pooled["left"], pooled["right"]),
    }
    return {k: v for k, v in out.items() if v is not None}


THIRDS = ("top", "bottom", "left", "right")
