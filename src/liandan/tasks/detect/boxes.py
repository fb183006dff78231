"""Boxes of a detection dataset in memory, their checks, and their statistics.

Every reader (:mod:`liandan.tasks.detect.formats`) turns its format into the same
representation, so the rest of liandan never sees a format's conventions:

- one :class:`ImageBoxes` per image: its path, its size in pixels (as displayed, i.e.
  after the EXIF rotation a phone photo carries), and its boxes as a ``(N, 4)`` float64
  array of **absolute pixel** corners ``x1 y1 x2 y2`` in a continuous frame where the
  image spans ``[0, width] x [0, height]``; ``classes`` is ``(N,)`` int64, an index into
  the dataset's class names; ``iscrowd`` (COCO) and ``difficult`` (VOC) are ``(N,)``
  bool flags, False for formats without them;
- an image with no box (no label file, or an empty one) is *background*: a valid
  training image, never a problem;
- ``refs`` says where each box was written (``"line 3"``, ``"annotation id 17"``,
  ``"object 2"``), so a problem names the exact line of the exact file;
- a record may be a *window* of a large raster (``window``: ``col_off, row_off, width,
  height`` in the raster's pixels; :mod:`liandan.tasks.detect.vector`): then ``width``
  and ``height`` are the window's, its boxes are in the window's pixel frame, and
  whatever reads the record's pixels reads that window only.

:func:`validate` returns every :class:`~liandan.data.problems.Problem` at once: what
the reader met (unreadable or unparseable files and lines, label files without an
image, images that do not match their declared size) and what the boxes show (outside
the image by more than ``tolerance`` pixels, zero or negative size, unknown class ids,
the same box twice). Errors stop training; ``duplicate-box`` and ``unpaired`` are
warnings (the duplicate is dropped, the lone label file is unused).

:func:`box_stats` is the detection part of a dataset fingerprint: boxes per image and
per class, and box sizes (``sqrt(area)`` in pixels, and COCO's small / medium / large
shares: area below 32², below 96², above).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from liandan.data.problems import Problem

# Problem kinds of detection datasets, and whether training stops on them.
BLOCKING = {
    "unreadable": True,  # an image or label file that cannot be opened or decoded
    "bad-label": True,  # a line, object or annotation that does not parse
    "missing-image": True,  # an image a COCO/VOC file lists but that is not there
    "size-mismatch": True,  # declared width/height differ from the image file's
    "box-outside": True,
    "empty-box": True,
    "unknown-class": True,
    "duplicate-box": False,
    "unpaired": False,  # a label file without an image: nothing to train on, unused
}
SMALL, MEDIUM = 32**2, 96**2  # COCO's area thresholds in px² (small < 32², large >= 96²)


def problem(kind: str, file: str | Path, reason: str) -> Problem:
    """A detection problem; whether it blocks training follows :data:`BLOCKING`."""
    return Problem(kind, str(file), reason, blocking=BLOCKING[kind])


@dataclass
class ImageBoxes:
    """The boxes of one image (see the module docstring for the conventions).

    Args:
        path: the image file.
        width: image width in pixels.
        height: image height in pixels.
        boxes: ``(N, 4)`` float64, absolute pixel ``x1 y1 x2 y2``.
        classes: ``(N,)`` int64 class indices.
        iscrowd: ``(N,)`` bool, COCO crowd regions (ignored by matching, see metrics).
        difficult: ``(N,)`` bool, VOC's difficult flag (kept, not used by the metrics).
        areas: ``(N,)`` the areas COCO evaluation sorts into small / medium / large: a
            COCO file's ``area`` (the mask's, for instance datasets); None: box areas.
        label_file: the file the boxes were read from; None when the image has none.
        refs: where each box was written in ``label_file``, for messages.
        split: ``train``, ``val`` or ``test`` when the layout says so, else None.
        window: ``(col_off, row_off, width, height)`` of ``path`` in its pixels when the
            record is a window of a raster (it may reach beyond the raster's right or
            bottom edge: that part reads as zeros); None: the whole image.
    """

    path: Path
    width: int
    height: int
    boxes: np.ndarray = field(default_factory=lambda: np.zeros((0, 4)))
    classes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))
    iscrowd: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))  # empty: none
    difficult: np.ndarray = field(default_factory=lambda: np.zeros(0, bool))
    areas: np.ndarray | None = None
    label_file: Path | None = None
    refs: list[str] = field(default_factory=list)
    split: str | None = None
    window: tuple[int, int, int, int] | None = None

    def __post_init__(self) -> None:
        self.boxes = np.asarray(self.boxes, dtype=np.float64).reshape(-1, 4)
        self.classes = np.asarray(self.classes, dtype=np.int64).reshape(-1)
        n = len(self.boxes)
        if len(self.classes) != n:
            raise ValueError(f"{self.path}: {n} boxes but {len(self.classes)} class ids")
        # flags not given (empty) are all False
        self.iscrowd = np.asarray(self.iscrowd, bool).reshape(-1)
        self.difficult = np.asarray(self.difficult, bool).reshape(-1)
        if n and not len(self.iscrowd):
            self.iscrowd = np.zeros(n, bool)
        if n and not len(self.difficult):
            self.difficult = np.zeros(n, bool)
        if len(self.iscrowd) != n or len(self.difficult) != n:
            raise ValueError(f"{self.path}: iscrowd/difficult flags do not match {n} boxes")
        if self.areas is not None and len(self.areas) != n:
            raise ValueError(f"{self.path}: {len(self.areas)} areas for {n} boxes")
        if not self.refs:
            self.refs = [f"box {i + 1}" for i in range(n)]
        if len(self.refs) != n:
            raise ValueError(f"{self.path}: {len(self.refs)} refs for {n} boxes")

    def box_areas(self) -> np.ndarray:
        """``(N,)`` box areas in px² (zero for inverted boxes)."""
        wh = np.clip(self.boxes[:, 2:] - self.boxes[:, :2], 0, None)
        return wh[:, 0] * wh[:, 1]


@dataclass
class DetectionDataset:
    """Everything a reader found: the images, the class names and the problems met.

    Args:
        root: the dataset folder (or the COCO JSON file).
        format: ``yolo``, ``coco``, ``voc`` or ``vector`` (GIS layers).
        class_names: in class-index order.
        images: one record per usable image, background images included.
        problems: what could not be read; :func:`validate` adds the box checks.
        side_files: files read besides the images' own label files (YOLO's
            ``data.yaml`` or ``classes.txt``, a COCO JSON).
        notes: what the reader did that the user should be told (reprojections,
            background windows left out), for the run's notes.
    """

    root: Path
    format: str
    class_names: list[str]
    images: list[ImageBoxes]
    problems: list[Problem] = field(default_factory=list)
    side_files: list[Path] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def files_read(self) -> set[Path]:
        """Every label and metadata file the reader read: ``liandan scan`` does not list
        them as stray files."""
        return {*self.side_files, *(r.label_file for r in self.images if r.label_file)}


def header_size(path: Path) -> tuple[int, int]:
    """``(width, height)`` as displayed, from the file header (no pixels decoded)."""
    from liandan.data.readers import image_shape  # rasterio for GeoTIFFs, Pillow otherwise

    height, width, _ = image_shape(path)
    return width, height


def image_size(image: Path, problems: list[Problem]) -> tuple[int, int] | None:
    """The image's ``(width, height)``, or None after adding an ``unreadable`` problem."""
    from liandan.errors import DataError

    try:
        return header_size(image)
    except DataError as exc:
        problems.append(problem("unreadable", image, f"{exc.message}: image left out"))
        return None


# ------------------------------------------------------------------ checks
def validate(dataset: DetectionDataset, tolerance: float = 1.0) -> list[Problem]:
    """Every problem of the dataset: the reader's, then each box's, file by file.

    Args:
        dataset: what a reader returned.
        tolerance: how far (in pixels) a box may reach beyond the image border before
            it is a problem; exporters often round a border box one pixel out.

    Returns:
        One :class:`~liandan.data.problems.Problem` per bad file, line or box; empty
        when the dataset is clean. Background images are never a problem.
    """
    problems = list(dataset.problems)
    k = len(dataset.class_names)
    for rec in dataset.images:
        problems += check_image(rec, k, tolerance, yolo=dataset.format == "yolo")
    return problems


def check_image(rec: ImageBoxes, num_classes: int, tolerance: float, yolo: bool) -> list[Problem]:
    """The problems of one image's boxes, each naming the label file and line."""
    where = str(rec.label_file or rec.path)
    out: list[Problem] = []
    for box, cls, ref in zip(rec.boxes, rec.classes, rec.refs, strict=True):
        x1, y1, x2, y2 = (float(v) for v in box)
        if not 0 <= cls < num_classes:
            known = f"0..{num_classes - 1}" if num_classes else "none: no class names given"
            out.append(problem("unknown-class", where, f"{ref}: class id {cls} (known: {known})"))
        if x2 <= x1 or y2 <= y1:
            size = f"{x2 - x1:.4g} x {y2 - y1:.4g} px"
            out.append(problem("empty-box", where, f"{ref}: box of size {size}"))
            continue
        beyond = {
            "left": -x1,
            "top": -y1,
            "right": x2 - rec.width,
            "bottom": y2 - rec.height,
        }
        sides = [f"{side} by {d:.4g} px" for side, d in beyond.items() if d > tolerance]
        if sides:
            reason = (
                f"{ref}: box [{x1:.1f}, {y1:.1f}, {x2:.1f}, {y2:.1f}] leaves the "
                f"{rec.width}x{rec.height} image: {', '.join(sides)}"
            )
            if yolo and max(x2 / rec.width, y2 / rec.height) > 2:
                reason += " (YOLO coordinates are fractions of the image size, not pixels)"
            out.append(problem("box-outside", where, reason))
    out += _duplicates(rec, where)
    return out


def _duplicates(rec: ImageBoxes, where: str) -> list[Problem]:
    # the same class and corners to a thousandth of a pixel: written twice
    key = np.round(rec.boxes, 3)
    first: dict[tuple[Any, ...], int] = {}
    out = []
    for i, (box, cls) in enumerate(zip(key, rec.classes, strict=True)):
        k = (int(cls), *box.tolist())
        if k in first:
            reason = f"{rec.refs[i]} repeats {rec.refs[first[k]]} (same class and box)"
            out.append(problem("duplicate-box", where, reason))
        else:
            first[k] = i
    return out


# ------------------------------------------------------------------ statistics
def _quantiles(values: np.ndarray, digits: int = 2) -> dict[str, float]:
    if values.size == 0:
        return {}
    levels = {"min": 0, "p5": 5, "p25": 25, "median": 50, "p75": 75, "p95": 95, "max": 100}
    q = np.percentile(values, list(levels.values()))
    return {name: round(float(v), digits) for name, v in zip(levels, q, strict=True)}


def box_stats(images: Sequence[ImageBoxes], class_names: Sequence[str]) -> dict[str, Any]:
    """The boxes' part of a dataset fingerprint (plain, JSON-safe values).

    Args:
        images: the records of a dataset (or of one split).
        class_names: in class-index order; boxes of unknown classes count only in the
            totals.

    Returns:
        ``images``, ``background_images``, ``boxes``, ``crowd_boxes``;
        ``boxes_per_image`` (quantiles over all images, background included);
        ``class_boxes`` and ``class_images`` (boxes of each class, images holding it);
        ``box_size`` (quantiles of ``sqrt(area)`` in px), ``relative_size`` (the same
        divided by ``sqrt(width * height)`` of the image), ``aspect_ratio`` (quantiles
        of width / height); ``size_shares``: fractions of boxes that COCO calls small
        (area < 32² px), medium (< 96²) and large.

    >>> rec = ImageBoxes(Path("a.jpg"), 100, 100, [[0, 0, 10, 10], [0, 0, 50, 40]], [0, 1])
    >>> box_stats([rec], ["cat", "dog"])["size_shares"]
    {'small': 0.5, 'medium': 0.5, 'large': 0.0}
    """
    counts = np.array([len(r.boxes) for r in images], dtype=np.int64)
    k = len(class_names)
    class_boxes = np.zeros(k, np.int64)
    class_images = np.zeros(k, np.int64)
    sides, relative, aspect = [], [], []
    for r in images:
        known = r.classes[(r.classes >= 0) & (r.classes < k)]
        class_boxes += np.bincount(known, minlength=k)
        class_images += np.bincount(np.unique(known), minlength=k)
        wh = np.clip(r.boxes[:, 2:] - r.boxes[:, :2], 0, None)
        side = np.sqrt(wh[:, 0] * wh[:, 1])
        sides.append(side)
        relative.append(side / np.sqrt(max(1, r.width * r.height)))
        ok = wh[:, 1] > 0
        aspect.append(wh[ok, 0] / wh[ok, 1])
    side = np.concatenate(sides) if sides else np.zeros(0)
    area = side**2
    n = max(1, side.size)
    return {
        "images": len(images),
        "background_images": int((counts == 0).sum()),
        "boxes": int(counts.sum()),
        "crowd_boxes": int(sum(int(np.count_nonzero(r.iscrowd)) for r in images)),
        "boxes_per_image": _quantiles(counts.astype(float)),
        "class_boxes": dict(zip(class_names, class_boxes.tolist(), strict=True)),
        "class_images": dict(zip(class_names, class_images.tolist(), strict=True)),
        "box_size": _quantiles(side),
        "relative_size": _quantiles(np.concatenate(relative) if relative else side, 4),
        "aspect_ratio": _quantiles(np.concatenate(aspect) if aspect else side, 3),
        "size_shares": {
            "small": round(float((area < SMALL).sum() / n), 4),
            "medium": round(float(((area >= SMALL) & (area < MEDIUM)).sum() / n), 4),
            "large": round(float((area >= MEDIUM).sum() / n), 4),
        },
    }
