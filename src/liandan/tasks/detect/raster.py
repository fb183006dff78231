"""Sliced detection over rasters of any size: tiles streamed, boxes merged, GeoPackage out.

A raster is cut into overlapping tiles of ``predict.tile`` pixels (``predict.overlap``
shared with each neighbour, the last tile moved back inside the raster, as the
segmentation stream cuts it: :func:`liandan.tiling.tile_starts`). Tiles are read with
rasterio windows, normalized as in training (:meth:`Predictor.window_reader`), a batch at
a time with the next batch read in a thread while the detector runs, so memory holds a
couple of batches of tiles and the boxes found, whatever the raster's size. The network
sees the raster's own pixels (no resizing): train on images at the raster's scale.

Boxes of every tile are mapped to the raster's pixel frame and merged
(:func:`merge_tile_boxes`):

1. **Drop what a neighbour sees whole.** A box touching a tile edge that lies inside the
   raster may be a cut piece of an object. If the piece is narrower (along that axis)
   than the overlap with the neighbour on that side, less a margin, the object's near end
   lies inside the neighbour, which sees it uncut on that side: the piece is dropped.
2. **Stitch what no tile sees whole.** Pieces longer than the overlap are kept; two pieces
   of one class, cut on facing edges of neighbouring tiles, overlapping across the seam
   and covering the same span on the other axis (1-D IoU >= 0.5), are one object: they
   are replaced by their union (score: the higher).
3. **Class-wise NMS** over the raster at ``predict.nms_iou`` (default: the detector's
   own) removes the remaining duplicates (an object seen whole by two tiles).

Outputs: ``<stem>.gpkg`` (layer ``detections``: one rectangle polygon per box in the
raster's CRS, fields ``class``, ``class_id`` (0-based), ``score``, ``x1 y1 x2 y2`` in
pixels), ``<stem>_detections.json`` (COCO results, pixel boxes) and
``preview/<stem>.png`` (the raster decimated to at most 2048 px a side, boxes drawn). A
raster without a CRS gets no GeoPackage: its boxes are in pixels only, and predict says so.
"""

from __future__ import annotations

import logging
import math
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from itertools import pairwise
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from liandan.prediction import Predictor

log = logging.getLogger("liandan")

# rasters sliced rather than letterboxed: georeferenced, or larger than this a side
# (data.max_image_size's default: the size above which training tiles rasters too)
SLICE_ABOVE = 2048
TOUCH = 2.0  # a box edge within this many pixels of a tile edge touches it
STITCH_IOU = 0.5  # 1-D IoU, across the seam, of two pieces of one object
PREVIEW_MAX = 2048
LAYER = "detections"
SIDES = ("left", "top", "right", "bottom")

__all__ = [
    "RasterBoxes",
    "TileBoxes",
    "detect_raster",
    "merge_tile_boxes",
    "planned_raster_outputs",
    "slices",
    "write_geopackage",
]


# ------------------------------------------------------------------ which inputs
def slices(path: Path) -> bool:
    """Whether predict slices ``path``: a raster file (GeoTIFF, VRT, ...) with a CRS, or
    larger than :data:`SLICE_ABOVE` pixels a side. Other images are letterboxed whole."""
    from liandan.data.readers import RASTER_EXTS
    from liandan.predict_outputs import open_raster

    if path.suffix.lower() not in RASTER_EXTS:
        return False
    with open_raster(path) as src:
        return src.crs is not None or max(src.height, src.width) > SLICE_ABOVE


def has_crs(path: Path) -> bool:
    from liandan.predict_outputs import open_raster

    with open_raster(path) as src:
        return src.crs is not None


def planned_raster_outputs(path: Path, out_dir: Path) -> list[Path]:
    """The files predict writes for a sliced raster (no GeoPackage without a CRS)."""
    files = [out_dir / f"{path.stem}_detections.json", out_dir / "preview" / f"{path.stem}.png"]
    return [out_dir / f"{path.stem}.gpkg", *files] if has_crs(path) else files


# ------------------------------------------------------------------ the merge
@dataclass
class TileBoxes:
    """The detections of one tile, in the raster's pixel frame.

    Args:
        top, left: the tile's first row and column in the raster.
        height, width: the tile's size (the raster's, where smaller than a tile).
        rows: ``(N, 6)`` ``x1 y1 x2 y2 score class`` in raster pixels.
        overlaps: pixels shared with the neighbour on each side, ``(left, top, right,
            bottom)``; 0 where the tile's edge is the raster's.
    """

    top: int
    left: int
    height: int
    width: int
    rows: np.ndarray
    overlaps: tuple[int, int, int, int]

    @property
    def edges(self) -> tuple[int, int, int, int]:
        """The tile's ``left, top, right, bottom`` in raster pixels."""
        return self.left, self.top, self.left + self.width, self.top + self.height


@dataclass
class _Kept:
    """Boxes kept by step 1, with the tile edge each is cut at (NaN: not cut)."""

    rows: list[np.ndarray] = field(default_factory=list)
    cuts: list[np.ndarray] = field(default_factory=list)  # (N, 4): left top right bottom


def drop_seen_whole(tile: TileBoxes, touch: float = TOUCH) -> tuple[np.ndarray, np.ndarray]:
    """Step 1 for one tile: the rows kept, and for each the tile edges it is cut at
    (``(N, 4)`` coordinates of the left, top, right, bottom edge it touches, NaN where
    it touches none or the edge is the raster's)."""
    rows = np.asarray(tile.rows, np.float64).reshape(-1, 6)
    cuts = np.full((len(rows), 4), np.nan)
    drop = np.zeros(len(rows), bool)
    x1, y1, x2, y2 = rows[:, 0], rows[:, 1], rows[:, 2], rows[:, 3]
    extent = (x2 - x1, y2 - y1, x2 - x1, y2 - y1)
    near = (x1, y1, x2, y2)
    for side, (edge, overlap) in enumerate(zip(tile.edges, tile.overlaps, strict=True)):
        if overlap <= 0:
            continue  # the raster's own edge: nothing beyond it
        cut = np.abs(near[side] - edge) <= touch
        cuts[cut, side] = edge
        # the piece's near end lies inside the neighbour, which sees that end uncut
        drop |= cut & (extent[side] <= overlap - 2 * touch)
    return rows[~drop], cuts[~drop]


def _stitch(
    rows: np.ndarray, cuts: np.ndarray, axis: int, touch: float
) -> tuple[np.ndarray, np.ndarray]:
    """Step 2 along one axis (0: x, seams between columns; 1: y): join pieces cut on
    facing edges of neighbouring tiles, until no two join."""
    lo, hi = axis, axis + 2  # the box coordinates along the axis
    olo, ohi = 1 - axis, 3 - axis  # and across it
    rows, cuts = rows.copy(), cuts.copy()
    alive = np.ones(len(rows), bool)
    merged = True
    while merged:
        merged = False
        ends = np.flatnonzero(alive & ~np.isnan(cuts[:, hi]))  # cut on the high side
        starts = np.flatnonzero(alive & ~np.isnan(cuts[:, lo]))  # cut on the low side
        if not len(ends) or not len(starts):
            break
        for a in ends[np.argsort(-rows[ends, 4], kind="stable")]:
            if not alive[a]:
                continue
            b = starts[alive[starts] & (starts != a)]
            b = b[rows[b, 5] == rows[a, 5]]
            # b's tile starts before a's ends (neighbours), b's piece starts inside a's
            # tile and past a's start, and the two overlap across the seam
            b = b[(cuts[b, lo] < cuts[a, hi]) & (rows[b, lo] > rows[a, lo])]
            b = b[(rows[b, lo] < rows[a, hi] - touch) & (rows[b, hi] > rows[a, hi])]
            if not len(b):
                continue
            inter = np.minimum(rows[b, ohi], rows[a, ohi]) - np.maximum(rows[b, olo], rows[a, olo])
            union = np.maximum(rows[b, ohi], rows[a, ohi]) - np.minimum(rows[b, olo], rows[a, olo])
            iou = np.clip(inter, 0, None) / np.maximum(union, 1e-9)
            if iou.max() < STITCH_IOU:
                continue
            j = int(b[int(np.argmax(iou))])
            box = rows[a].copy()
            box[lo], box[hi] = rows[a, lo], rows[j, hi]
            box[olo] = min(rows[a, olo], rows[j, olo])
            box[ohi] = max(rows[a, ohi], rows[j, ohi])
            box[4] = max(rows[a, 4], rows[j, 4])
            cut = np.where(np.isnan(cuts[a]), cuts[j], cuts[a])
            cut[lo], cut[hi] = cuts[a, lo], cuts[j, hi]
            rows[a], cuts[a] = box, cut
            alive[j] = False
            merged = True
    return rows[alive], cuts[alive]


def merge_tile_boxes(
    tiles: Sequence[TileBoxes] | Sequence[tuple[np.ndarray, np.ndarray]],
    nms_iou: float,
    touch: float = TOUCH,
) -> np.ndarray:
    """One set of boxes for a raster from its tiles' (see the module docstring).

    Args:
        tiles: each tile's detections, or the output of :func:`drop_seen_whole` per tile
            (``(rows, cuts)``: step 1 already done, as the stream does tile by tile).
        nms_iou: IoU of the final class-wise non-maximum suppression.
        touch: pixels within which a box edge touches a tile edge.

    Returns:
        ``(N, 6)`` float32 ``x1 y1 x2 y2 score class`` in raster pixels, best first.
    """
    import torch
    from torchvision.ops import batched_nms

    parts = [drop_seen_whole(t, touch) if isinstance(t, TileBoxes) else t for t in tiles]
    if not parts:
        return np.zeros((0, 6), np.float32)
    rows = np.concatenate([p[0] for p in parts]).reshape(-1, 6)
    cuts = np.concatenate([p[1] for p in parts]).reshape(-1, 4)
    for axis in (0, 1):
        rows, cuts = _stitch(rows, cuts, axis, touch)
    if not len(rows):
        return np.zeros((0, 6), np.float32)
    t = torch.from_numpy(rows)
    keep = batched_nms(t[:, :4], t[:, 4], t[:, 5].long(), float(nms_iou)).numpy()
    return rows[keep].astype(np.float32)  # batched_nms: by decreasing score


# ------------------------------------------------------------------ the stream
@dataclass
class RasterBoxes:
    """The merged detections of one raster and how the stream went."""

    path: Path
    rows: np.ndarray  # (N, 6) x1 y1 x2 y2 score class, raster pixels
    height: int
    width: int
    crs: Any
    transform: Any
    tiles: int = 0  # tiles run through the detector
    skipped: int = 0  # tiles entirely nodata, not run
    found: int = 0  # boxes the tiles gave before merging
    seconds: float = 0.0


def _grid(length: int, tile: int, step: int) -> tuple[list[int], list[tuple[int, int]]]:
    """Tile starts along one axis, and each tile's overlap with its low and high
    neighbour (0 at the raster's edges)."""
    from liandan.tiling import tile_starts

    win = min(tile, length)
    starts = tile_starts(length, win, step)
    shared = [a + win - b for a, b in pairwise(starts)]
    return starts, [(([0, *shared])[i], ([*shared, 0])[i]) for i in range(len(starts))]


def detect_raster(predictor: Predictor, path: str | Path) -> RasterBoxes:
    """Detect objects over a raster of any size, tile by tile; merged boxes in its pixels.

    Bands, data type and georeferencing are checked as for segmentation
    (:meth:`Predictor.check_raster`: a band count unlike training's is a DataError
    naming the file). Kept are boxes scoring at least ``predict.score_threshold``.
    """
    import rasterio

    from liandan.predict_outputs import GDAL_CACHE_MB, open_raster
    from liandan.tasks.detect.predict import configure_detector, postprocess_settings
    from liandan.tiling import STRIDE, chunks

    path = Path(path)
    start = time.perf_counter()
    threshold = configure_detector(predictor)
    _, nms_iou = postprocess_settings(predictor)
    iou = float(nms_iou if nms_iou is not None else predictor.model.postprocess[1])  # type: ignore[index]
    tile = predictor.tile
    step = max(1, int(tile * (1 - predictor.overlap)))
    with rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB), open_raster(path) as src:
        indexes = predictor.check_raster(src, path)
        height, width = src.height, src.width
        win_h, win_w = min(tile, height), min(tile, width)
        pad_h, pad_w = win_h + (-win_h) % STRIDE, win_w + (-win_w) % STRIDE
        rows, row_ov = _grid(height, tile, step)
        cols, col_ov = _grid(width, tile, step)
        read = predictor.window_reader(src, path, indexes)
        cells = [(i, j) for i in range(len(rows)) for j in range(len(cols))]
        batches = list(chunks(cells, predictor.batch_size))
        result = RasterBoxes(path, np.zeros((0, 6), np.float32), height, width,
                             src.crs, src.transform)  # fmt: skip
        parts: list[tuple[np.ndarray, np.ndarray]] = []

        def load(batch: Sequence[tuple[int, int]]) -> list[tuple[np.ndarray, np.ndarray | None]]:
            return [read(rows[i], cols[j], win_h, win_w) for i, j in batch]

        with ThreadPoolExecutor(1, thread_name_prefix="liandan-read") as pool:
            pending = pool.submit(load, batches[0])
            for k, batch in enumerate(batches):
                windows = pending.result()
                if k + 1 < len(batches):  # read the next batch while the detector runs
                    pending = pool.submit(load, batches[k + 1])
                todo = [(cell, x) for cell, (x, valid) in zip(batch, windows, strict=True)
                        if valid is None or valid.any()]  # fmt: skip
                result.skipped += len(batch) - len(todo)
                outs = _detect(predictor, [_pad(x, pad_h, pad_w) for _, x in todo])
                for ((i, j), _), out in zip(todo, outs, strict=True):
                    top, left = rows[i], cols[j]
                    boxes, scores, labels = out
                    keep = scores >= threshold
                    boxes = np.clip(boxes[keep], 0, [win_w, win_h, win_w, win_h])
                    found = np.column_stack([boxes + np.array([left, top, left, top]), scores[keep],
                                             labels[keep]])  # fmt: skip
                    found = found[(found[:, 2] > found[:, 0]) & (found[:, 3] > found[:, 1])]
                    result.found += len(found)
                    overlaps = (col_ov[j][0], row_ov[i][0], col_ov[j][1], row_ov[i][1])
                    parts.append(drop_seen_whole(
                        TileBoxes(top, left, win_h, win_w, found, overlaps)))  # fmt: skip
                result.tiles += len(todo)
                if predictor.on_tiles is not None:
                    predictor.on_tiles(len(batch), len(batch) * win_h * win_w)
    result.rows = merge_tile_boxes(parts, iou)
    result.seconds = time.perf_counter() - start
    return result


def _pad(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pad a normalized ``(h, w, C)`` window bottom/right with 0 (the normalized mean)."""
    h, w = x.shape[:2]
    if (h, w) == (height, width):
        return x
    return np.pad(x, ((0, height - h), (0, width - w), (0, 0)))


def _detect(
    predictor: Predictor, tiles: list[np.ndarray]
) -> list[tuple[np.ndarray, np.ndarray, np.ndarray]]:
    """The detector's ``(boxes, scores, labels)`` of each normalized ``(h, w, C)`` tile."""
    import torch

    if not tiles:
        return []
    batch = np.stack([t.transpose(2, 0, 1) for t in tiles]).astype(np.float32, copy=False)
    x = torch.from_numpy(np.ascontiguousarray(batch)).to(predictor.device)
    dtype = predictor.autocast or torch.float32
    with (
        torch.inference_mode(),
        torch.autocast(predictor.device.type, dtype=dtype, enabled=predictor.autocast is not None),
    ):
        outs = predictor.model(x)
    return [
        (
            o["boxes"].detach().float().cpu().numpy().astype(np.float64).reshape(-1, 4),
            o["scores"].detach().float().cpu().numpy().astype(np.float64),
            o["labels"].cpu().numpy().astype(np.float64),
        )
        for o in outs
    ]


# ------------------------------------------------------------------ outputs
def box_polygons(rows: np.ndarray, transform: Any) -> Iterator[list[tuple[float, float]]]:
    """Each pixel box's corners through the raster's affine ``transform``, as a closed
    ring (x, y map coordinates; a rotated transform gives a rotated rectangle)."""
    a, b, c, d, e, f = (float(v) for v in tuple(transform)[:6])
    for x1, y1, x2, y2 in np.asarray(rows, np.float64)[:, :4].tolist():
        ring = [(x1, y1), (x2, y1), (x2, y2), (x1, y2), (x1, y1)]
        yield [(a * x + b * y + c, d * x + e * y + f) for x, y in ring]


def write_geopackage(found: RasterBoxes, classes: Sequence[str], target: Path) -> Path:
    """``target``: layer :data:`LAYER` of box polygons in the raster's CRS (see the
    module docstring), written to a temporary name first."""
    import fiona

    schema = {
        "geometry": "Polygon",
        "properties": {
            "class": "str",
            "class_id": "int",
            "score": "float",
            "x1": "float",
            "y1": "float",
            "x2": "float",
            "y2": "float",
        },
    }
    records = []
    for row, ring in zip(
        found.rows.tolist(), box_polygons(found.rows, found.transform), strict=True
    ):
        x1, y1, x2, y2, score, cls = row
        props = {"class": classes[int(cls)], "class_id": int(cls), "score": round(score, 5)}
        props |= {
            k: round(v, 2) for k, v in zip(("x1", "y1", "x2", "y2"), (x1, y1, x2, y2), strict=True)
        }
        records.append(
            {"geometry": {"type": "Polygon", "coordinates": [ring]}, "properties": props}
        )
    tmp = target.with_name(f".{target.stem}.tmp{target.suffix}")
    tmp.unlink(missing_ok=True)
    target.parent.mkdir(parents=True, exist_ok=True)
    try:
        with fiona.open(tmp, "w", driver="GPKG", layer=LAYER, schema=schema,
                        crs_wkt=found.crs.to_wkt()) as dst:  # fmt: skip
            dst.writerecords(records)
        tmp.replace(target)
    finally:
        tmp.unlink(missing_ok=True)
    return target


def write_preview(found: RasterBoxes, predictor: Predictor, target: Path) -> Path:
    """The raster read decimated (at most :data:`PREVIEW_MAX` px a side, never whole) with
    the boxes drawn."""
    from rasterio.enums import Resampling

    from liandan.atomic import atomic_write_bytes
    from liandan.predict_outputs import open_raster
    from liandan.tasks.detect.predict import _png, preview

    step = max(1, math.ceil(max(found.height, found.width) / PREVIEW_MAX))
    shape = (-(-found.height // step), -(-found.width // step))
    with open_raster(found.path) as src:
        indexes = predictor.check_raster(src, found.path)
        small = src.read(indexes, out_shape=(len(indexes), *shape), resampling=Resampling.nearest)
    rows = found.rows.copy()
    rows[:, :4] /= step
    image = predictor._bands_like_training(np.moveaxis(small, 0, -1))
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, _png(preview(image, rows, predictor.classes)))
    return target


def write_raster_outputs(found: RasterBoxes, predictor: Predictor, out_dir: Path) -> list[Path]:
    """``<stem>.gpkg`` (with a CRS), ``<stem>_detections.json`` and the preview."""
    from liandan.atomic import atomic_write_json
    from liandan.prediction import Prediction
    from liandan.tasks.detect.predict import results

    stem = found.path.stem
    written = []
    if found.crs is not None:
        written.append(write_geopackage(found, predictor.classes, out_dir / f"{stem}.gpkg"))
    else:
        log.warning(
            "%s has no CRS: its %d box(es) are in pixels only, in %s_detections.json; "
            "no GeoPackage (no map coordinates to put them at)",
            found.path,
            len(found.rows),
            stem,
        )
    target = out_dir / f"{stem}_detections.json"
    atomic_write_json(
        target, results([Prediction(found.path, None, found.rows)], predictor.classes)
    )
    written.append(target)
    written.append(write_preview(found, predictor, out_dir / "preview" / f"{stem}.png"))
    return written
