"""Read GIS layers as detection boxes: rasters with point or polygon layers, in windows.

The layout ``vector-boxes`` (``data.layout=vector-boxes``, or ``task=detect`` on such a
folder, which liandan otherwise reads as polygon labels for segmentation)::

    DATA/images/<stem>.tif                  any raster rasterio reads, any band count
    DATA/labels/<stem>.gpkg|.geojson|.shp   its features; optionally DATA/train/ + val/

Each feature becomes one box in its raster's pixel grid, after reprojection from the
layer's CRS to the raster's (:func:`~liandan.data.raster_labels.polygons_on_grid`, the
rule of polygon labels for segmentation: a GeoJSON without a ``crs`` member is WGS84):

- a polygon or multipolygon (or a line) becomes the pixel bounding box of its vertices;
- a point becomes a box of ``data.point_box`` pixels centred on it (a multipoint: the
  points' bounding box grown by half of it on each side); a layer with points and no
  ``data.point_box`` is refused, naming the file and the key.

Boxes partly outside the raster are clipped to it. The class is the feature's
``data.label_attribute`` (default ``class``): integers are class ids (classes ``0`` to
the largest), anything else names (sorted), the same classes for every file.

Every bad file and feature is collected and named in one :class:`~liandan.errors.
DataError`: a layer with no CRS over a georeferenced raster, a layer that does not
overlap its raster, features without the attribute or without geometry, empty
geometries, boxes entirely outside the raster. The user's files are only read.

**Windows at native resolution.** A raster wider or taller than ``data.tile_size`` is
cut into windows of ``tile_size`` pixels on a grid from its top-left corner, without
overlap, so that no pixel is in two records (the split relies on it); the last windows
of a row or column reach beyond the raster's edge and read as zeros there, so that every
window has the same size, and so the same scale once letterboxed to ``data.image_size``
(1:1 when ``data.image_size`` equals ``data.tile_size``). Each window is one
:class:`~liandan.tasks.detect.boxes.ImageBoxes` with ``window`` set and its boxes in the
window's pixels; a box cut by a window edge is clipped and kept when at least
:data:`~liandan.tasks.detect.data.MIN_VISIBILITY` of its area is inside. A raster no
larger than a window is one record, as an image is. Windows without a box are
background; where they are more than half the windows of a split, a seeded sample of
them is kept so that they are half (the run's notes say how many).

**Splits.** ``train/`` and ``val/`` folders are used as they are. Otherwise the rule of
tiled rasters for segmentation (``data.split``, :mod:`liandan.data.rasters`): ``auto``
and ``spatial`` hold out spatial blocks, the bottom ``data.val_fraction`` of each
raster's rows of windows (the right columns of a raster one window tall), so that
validation is not the neighbour of every training window; rasters of one window are
dealt whole. ``files`` holds out whole rasters.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from liandan.errors import DataError
from liandan.tasks.detect.boxes import DetectionDataset, ImageBoxes, problem

__all__ = ["VectorOptions", "read_vector_boxes", "window_grid"]

SEED = 0  # background windows and rasters dealt to validation: the same in every run
POINT_TYPES = ("Point", "MultiPoint")
LISTED = 6  # feature references listed in one line before "..."


@dataclass(frozen=True)
class VectorOptions:
    """The keys of ``data`` the reader uses (see the module docstring)."""

    attribute: str = "class"
    point_box: int | None = None
    tile_size: int = 512
    image_size: int | None = None  # only for the note when windows are resized
    val_fraction: float = 0.2
    split: str = "auto"

    @classmethod
    def of(cls, data: Any) -> VectorOptions:
        """The options of a config's ``data`` section (None: the defaults)."""
        if data is None:
            from liandan.config import DataConfig

            data = DataConfig()
        return cls(
            attribute=data.label_attribute,
            point_box=data.point_box,
            tile_size=data.tile_size,
            image_size=data.image_size,
            val_fraction=data.val_fraction,
            split=data.split,
        )


@dataclass
class _Raster:
    """One raster with its layer's boxes in the raster's pixels (clipped to it)."""

    image: Path
    layer: Path | None
    split: str | None
    width: int
    height: int
    boxes: list[list[float]] = field(default_factory=list)
    values: list[int | str] = field(default_factory=list)
    refs: list[str] = field(default_factory=list)


# ------------------------------------------------------------------ files
def _pairs(root: Path, dataset: DetectionDataset) -> list[tuple[Path, Path | None, str | None]]:
    """``(image, layer or None, split)`` of each raster; layers without a raster are
    ``unpaired`` warnings in ``dataset.problems``, two layers for one raster an error."""
    from liandan.data.folders import pair_sites
    from liandan.data.raster_labels import VECTOR_EXTS
    from liandan.data.readers import is_image_file

    out: list[tuple[Path, Path | None, str | None]] = []
    twice: list[str] = []
    for site in pair_sites(root):
        if site.vectors is None or not site.images.is_dir():
            continue
        files = sorted(p for p in site.images.iterdir() if p.is_file())
        images = {p.stem: p for p in files if is_image_file(p)}
        layers: dict[str, list[Path]] = {}
        for p in sorted(site.vectors.iterdir()):
            if p.is_file() and p.suffix.lower() in VECTOR_EXTS:
                layers.setdefault(p.stem, []).append(p)
        for stem, found in layers.items():
            if len(found) > 1:
                twice.append(f"{', '.join(str(p) for p in found)}: two layers for one raster")
            if stem not in images:
                reason = f"no raster {stem}.* in {site.images}: the layer is unused"
                dataset.problems += [problem("unpaired", p, reason) for p in found]
        out += [(images[s], layers.get(s, [None])[0], site.split) for s in sorted(images)]
    if twice:
        raise DataError(
            "more than one layer for the same raster",
            where=root,
            items=twice,
            hint="keep one layer per raster (labels/<stem>.gpkg, .geojson or .shp)",
        )
    if not any(layer for _, layer, _ in out):
        raise DataError(
            "no GIS layer pairs with a raster",
            where=root,
            hint="expected DATA/images/<stem>.tif with DATA/labels/<stem>.gpkg (or .geojson, "
            ".shp); see docs/detection.md",
        )
    return out


def _label(value: Any) -> int | str | None:
    """A feature's class value: an int (class id) or a name; None when it is empty."""
    if value is None or (isinstance(value, str) and not value.strip()):
        return None
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return value
    if isinstance(value, float) and value.is_integer():
        return int(value)
    return str(value)


def _listed(refs: Sequence[str]) -> str:
    shown = ", ".join(refs[:LISTED])
    return shown + (f" ... ({len(refs)} in all)" if len(refs) > LISTED else "")


def _read_raster(
    image: Path, layer: Path, split: str | None, opts: VectorOptions, notes: list[str]
) -> tuple[_Raster | None, list[str]]:
    """The boxes of one raster's layer, and the problems found (``file: reason``)."""
    from liandan.data.raster_labels import PolygonLayer, _coords, polygons_on_grid, read_layer
    from liandan.data.raster_tiles import _open

    found: list[str] = []
    try:
        layer_read = read_layer(layer, opts.attribute, found)
    except DataError as exc:
        return None, [f"{layer}: {exc.message}" + (f" ({exc.hint})" if exc.hint else "")]
    problems = [f"{layer}: {p}" for p in found]
    # the feature's reference travels with its value through the reprojection
    features = []
    for (geom, value), ref in zip(layer_read.polygons, layer_read.refs, strict=True):
        if next(iter(_coords(geom)), None) is None:
            problems.append(f"{layer}: {ref}: empty geometry")
        else:
            features.append((geom, (ref, value)))
    tagged = PolygonLayer(layer, features, layer_read.crs, layer_read.implied)
    try:
        with _open(image) as src:
            polygons, note = polygons_on_grid(tagged, image, src)
            inverse = ~src.transform
            width, height = int(src.width), int(src.height)
    except DataError as exc:
        reason = exc.message if str(image) in exc.message else f"{exc.message} ({image})"
        return None, [*problems, f"{layer}: {reason}" + (f"; {exc.hint}" if exc.hint else "")]
    if note:
        notes.append(note)
    moved = {ref for _, (ref, _) in polygons}
    problems += [
        f"{layer}: {ref}: cannot be reprojected to the raster's CRS"
        for _, (ref, _) in features
        if ref not in moved
    ]
    raster = _Raster(image, layer, split, width, height)
    points: list[str] = []
    for geom, (ref, value) in polygons:
        label = _label(value)
        if label is None:
            problems.append(f"{layer}: {ref}: attribute {opts.attribute!r} is empty")
            continue
        xy = np.array([p[:2] for p in _coords(geom)], np.float64).reshape(-1, 2)
        if not len(xy):
            problems.append(f"{layer}: {ref}: empty geometry")
            continue
        cols = inverse.a * xy[:, 0] + inverse.b * xy[:, 1] + inverse.c
        rows = inverse.d * xy[:, 0] + inverse.e * xy[:, 1] + inverse.f
        box = [cols.min(), rows.min(), cols.max(), rows.max()]
        if geom.get("type") in POINT_TYPES:
            if opts.point_box is None:
                points.append(ref)
                continue
            half = opts.point_box / 2
            box = [box[0] - half, box[1] - half, box[2] + half, box[3] + half]
        x1, y1, x2, y2 = (float(v) for v in box)
        if x2 <= x1 or y2 <= y1:
            problems.append(
                f"{layer}: {ref}: its box is {x2 - x1:.3g} x {y2 - y1:.3g} px (a line or a "
                "polygon without area)"
            )
            continue
        clipped = [max(x1, 0.0), max(y1, 0.0), min(x2, width), min(y2, height)]
        if clipped[2] <= clipped[0] or clipped[3] <= clipped[1]:
            problems.append(
                f"{layer}: {ref}: box [{x1:.1f}, {y1:.1f}, {x2:.1f}, {y2:.1f}] px lies outside "
                f"its raster {image} ({width} x {height} px)"
            )
            continue
        raster.boxes.append(clipped)
        raster.values.append(label)
        raster.refs.append(ref)
    if points:
        problems.append(
            f"{layer}: {len(points)} point feature(s) ({_listed(points)}) but data.point_box "
            "is not set: set data.point_box to the side in pixels of the box drawn around "
            "each point (e.g. data.point_box=16)"
        )
    return raster, problems


def _classes(rasters: list[_Raster], problems: list[str]) -> list[str]:
    """Class names over every file; the rasters' values become class ids in place."""
    from liandan.data.raster_labels import polygon_classes

    values = [v for r in rasters for v in r.values]
    if not values:
        return []
    names = polygon_classes([({}, v) for v in values], "ignore").names
    ints = all(isinstance(v, int) for v in values)
    for r in rasters:
        ids: list[int | str] = []
        for v, ref in zip(r.values, r.refs, strict=True):
            if ints and int(v) < 0:
                problems.append(f"{r.layer}: {ref}: class {v} is negative")
            ids.append(int(v) if ints else names.index(str(v)))
        r.values = ids
    return names


# ------------------------------------------------------------------ windows
def window_grid(width: int, height: int, tile: int) -> list[tuple[int, int, int, int]] | None:
    """``(col_off, row_off, width, height)`` of each window of a raster, row by row, or
    None when the raster is no larger than one window.

    Windows do not overlap; along a side longer than ``tile`` they are ``tile`` px and
    the last reaches beyond the edge (reads as zeros), along a shorter side they span it.
    """
    if width <= tile and height <= tile:
        return None
    from liandan.tiling import tile_starts

    def starts(length: int) -> list[int]:
        # over the length rounded up to whole tiles, so that tile_starts does not move
        # the last window back over its neighbour: no pixel in two windows
        return tile_starts(length + (-length % tile), tile, tile)

    ww, wh = min(width, tile), min(height, tile)
    return [(c, r, ww, wh) for r in starts(height) for c in starts(width)]


def _in_window(
    boxes: np.ndarray, window: tuple[int, int, int, int], min_visibility: float
) -> np.ndarray:
    """Which boxes a window keeps, and where: ``(N, 4)`` in the window's pixels with NaN
    rows for the boxes it drops (less than ``min_visibility`` of their area inside)."""
    col, row, w, h = window
    shifted = boxes - np.array([col, row, col, row], np.float64)
    clipped = np.clip(shifted, 0, [w, h, w, h])
    inside = np.prod(np.clip(clipped[:, 2:] - clipped[:, :2], 0, None), axis=1)
    area = np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)
    keep = (inside > 0) & (inside >= min_visibility * area)
    clipped[~keep] = np.nan
    return clipped


def _records(raster: _Raster, tile: int) -> list[ImageBoxes]:
    """The raster's records: one per window, or one for the whole raster."""
    from liandan.tasks.detect.data import MIN_VISIBILITY

    boxes = np.asarray(raster.boxes, np.float64).reshape(-1, 4)
    classes = np.asarray(raster.values, np.int64)
    grid = window_grid(raster.width, raster.height, tile)
    if grid is None:
        return [
            ImageBoxes(raster.image, raster.width, raster.height, boxes, classes,
                       label_file=raster.layer, refs=list(raster.refs), split=raster.split)
        ]  # fmt: skip
    out = []
    for window in grid:
        placed = _in_window(boxes, window, MIN_VISIBILITY)
        keep = ~np.isnan(placed[:, 0])
        out.append(
            ImageBoxes(raster.image, window[2], window[3], placed[keep], classes[keep],
                       label_file=raster.layer, refs=[r for r, k in zip(raster.refs, keep,
                       strict=True) if k], split=raster.split, window=window)
        )  # fmt: skip
    return out


# ------------------------------------------------------------------ splits
def _held_out(n: int, fraction: float) -> int:
    """How many of ``n`` blocks (or rasters) validate: at least one, never all."""
    return min(max(1, round(n * fraction)), n - 1) if n >= 2 else 0


def _assign(per_raster: list[list[ImageBoxes]], opts: VectorOptions, notes: list[str]) -> None:
    """Set each record's split (module docstring: folders, else spatial blocks or files);
    where nothing can be held out (one record), the splits are left as the folders say,
    and the shared rule (:func:`~liandan.data.datamodule.split_samples`) says why."""
    if any(r.split == "val" for recs in per_raster for r in recs):
        notes.append("vector-boxes: validation on the rasters of the val/ folder")
        return
    pool = [recs for recs in per_raster if recs[0].split in (None, "train")]
    rng = random.Random(SEED)
    whole = [recs for recs in pool if len(recs) == 1]
    blocks = [recs for recs in pool if len(recs) > 1]
    if opts.split == "files":
        whole, blocks = pool, []
    given = [recs[0].split for recs in pool]
    for recs in pool:
        for r in recs:
            r.split = "train"
    order = list(range(len(whole)))
    rng.shuffle(order)
    for i in order[: _held_out(len(whole), opts.val_fraction)]:
        for r in whole[i]:
            r.split = "val"
    for recs in blocks:
        rows = sorted({r.window[1] for r in recs if r.window})
        cols = sorted({r.window[0] for r in recs if r.window})
        axis, starts = (1, rows) if len(rows) >= 2 else (0, cols)
        held = set(starts[len(starts) - _held_out(len(starts), opts.val_fraction) :])
        for r in recs:
            if r.window and r.window[axis] in held:
                r.split = "val"
    if opts.split == "files":
        how = "whole rasters"
    else:
        how = (
            f"spatial blocks (the bottom {opts.val_fraction:.0%} of each raster's rows of "
            "windows; rasters of one window dealt whole)"
        )
    if any(r.split == "val" for recs in pool for r in recs):
        notes.append(f"vector-boxes: validation on {how}")
        return
    for recs, split in zip(pool, given, strict=True):  # one record: nothing to hold out
        for r in recs:
            r.split = split


def _cap_background(records: list[ImageBoxes], notes: list[str]) -> list[ImageBoxes]:
    """Keep at most as many background records as records with boxes, per split
    (a seeded sample); the order of the records is kept."""
    dropped: set[int] = set()
    for split in sorted({str(r.split) for r in records}):
        members = [i for i, r in enumerate(records) if str(r.split) == split]
        background = [i for i in members if not len(records[i].boxes)]
        boxed = len(members) - len(background)
        if len(background) <= max(boxed, 1):
            continue
        kept = set(random.Random(f"{SEED}:{split}").sample(background, max(boxed, 1)))
        dropped |= set(background) - kept
        notes.append(
            f"vector-boxes: {len(kept)} of {len(background)} background windows kept in "
            f"{split} (a seeded sample, so that at most half of its windows are background)"
        )
    return [r for i, r in enumerate(records) if i not in dropped]


# ------------------------------------------------------------------ reader
def read_vector_boxes(root: str | Path, data: Any = None) -> DetectionDataset:
    """Read a folder of rasters with GIS layers as windows with boxes.

    Args:
        root: the dataset folder (``images/`` + ``labels/``, optionally in split folders).
        data: the config's ``data`` section (``label_attribute``, ``point_box``,
            ``tile_size``, ``image_size``, ``val_fraction``, ``split``), or
            :class:`VectorOptions`; None: the defaults.

    Returns:
        A :class:`~liandan.tasks.detect.boxes.DetectionDataset` of format ``vector``:
        one record per window (or per raster no larger than a window), every record's
        split set, and ``notes`` saying what was done.

    Raises:
        DataError: naming every bad file and feature at once.
    """
    root = Path(root)
    opts = data if isinstance(data, VectorOptions) else VectorOptions.of(data)
    dataset = DetectionDataset(root, "vector", [], [])
    notes = dataset.notes
    problems: list[str] = []
    rasters: list[_Raster] = []
    for image, layer, split in _pairs(root, dataset):
        if layer is None:  # a raster without a layer: background, as an image without labels
            from liandan.data.raster_tiles import _open

            try:
                with _open(image) as src:
                    rasters.append(_Raster(image, None, split, int(src.width), int(src.height)))
            except DataError as exc:
                problems.append(f"{image}: {exc.message}")
            continue
        raster, found = _read_raster(image, layer, split, opts, notes)
        problems += found
        if raster is not None:
            rasters.append(raster)
    dataset.class_names = _classes(rasters, problems)
    if problems:
        hint = "fix these layers (liandan only reads them)"
        if any("data.point_box" in p for p in problems):
            hint = "set data.point_box=<pixels> for the point layers; " + hint
        raise DataError(
            f"{len(problems)} problem(s) in the GIS layers",
            where=root,
            items=problems,
            hint=hint + "; see docs/detection.md",
        )
    per_raster = [_records(r, opts.tile_size) for r in rasters]
    windows = sum(len(recs) for recs in per_raster if recs[0].window is not None)
    if windows:
        cut = sum(1 for recs in per_raster if recs[0].window is not None)
        size = opts.tile_size
        note = f"vector-boxes: {cut} raster(s) cut into {windows} windows of {size} px"
        if opts.image_size is not None and opts.image_size != size:
            note += (
                f", resized to data.image_size={opts.image_size} (set data.tile_size="
                f"{opts.image_size} to train at the rasters' own resolution)"
            )
        notes.append(note)
    _assign(per_raster, opts, notes)
    dataset.images = _cap_background([r for recs in per_raster for r in recs], notes)
    return dataset
