"""Scoring a model on whole raster splits (``evaluate --split test|train|all``), streamed.

Validation keeps the tile grid that training validated on
(:meth:`~liandan.data.raster_tiles.RasterTiles.evaluate_with`), so ``metrics.json`` matches
the run's own figures. The other splits are predicted as ``liandan predict`` does
(overlapping tiles blended, window by window) and each finished window is compared
with its labels, read through the same window of the image grid (label rasters, warped
or not, and polygons alike). A raster of any size costs the memory of a block of a few
tiles, never the whole file. With a spatial split, the ``train`` and ``val`` parts of a
raster are predicted separately, each seeing only its own rows.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from liandan.data.layouts import ClassSpec
from liandan.errors import ConfigError

if TYPE_CHECKING:
    from liandan.config import Config
    from liandan.data.raster_tiles import RasterTiles, Region
    from liandan.prediction import Predictor
    from liandan.reporting.samples import SampleResults


class LabelCounter:
    """A prediction writer that counts finished windows against their labels.

    Pixels without data (the predictor's validity mask: the file's nodata, mask or
    alpha band, and training's ``data.nodata``) and unknown label values are not counted.
    """

    def __init__(self, tiles: RasterTiles, region: Region, confusion: Any) -> None:
        self.tiles, self.region, self.confusion = tiles, region, confusion

    def write(self, top: int, probs: np.ndarray, valid: np.ndarray, left: int = 0) -> None:
        from rasterio.windows import Window

        n, m = probs.shape[1:]
        truth = self.tiles.read_label(self.region.sample, Window(left, top, m, n))
        truth[~valid] = -1
        self.confusion.update(torch.from_numpy(probs.argmax(0)), torch.from_numpy(truth))


def split_regions(cfg: Config, tiles_index: Any, split: str) -> list[Region]:
    """The raster rows of ``split``, as training split them (same seed and rules)."""
    from liandan.data.raster_tiles import Region, _open
    from liandan.data.rasters import _regions

    train, val, _ = _regions(tiles_index, cfg)
    test = []
    for s in tiles_index.split("test"):
        with _open(s.image) as src:
            test.append(Region(s, 0, src.height, src.width))
    parts = {"train": train, "val": val, "test": test, "all": [*train, *val, *test]}
    regions = [r for r in parts[split] if r.bottom > r.top]
    if not regions:
        raise ConfigError(
            f"the dataset has no {split!r} split",
            where="--split",
            hint="use --split val, test or all",
        )
    return regions


def evaluate_raster_split(
    cfg: Config, classes: ClassSpec, split: str, predictor: Predictor
) -> SampleResults | None:
    """Counts of ``split`` over whole rasters; None when ``cfg.data.root`` is not rasters.

    Args:
        cfg: the run's config, ``data.root`` pointing at the dataset.
        classes: the model's classes (the dataset's labels are mapped onto them).
        split: ``train``, ``val``, ``test`` or ``all``.
        predictor: the run's predictor (tile size, overlap, blending of ``predict``).
    """
    from liandan.data.raster_tiles import RasterTiles
    from liandan.data.rasters import check_rasters, raster_index
    from liandan.metrics import ConfusionMatrix
    from liandan.reporting.samples import SampleResults

    index = raster_index(cfg, classes)
    if index is None:
        return None
    checked = check_rasters(index, cfg)
    regions = split_regions(cfg, index, split)
    tiles = RasterTiles(regions, checked, cfg, None, None, train=False)
    total = ConfusionMatrix(classes.num_classes, ignore_index=-1)
    for region in regions:
        counter = LabelCounter(tiles, region, total)
        predictor.predict_raster(region.sample.image, counter, rows=(region.top, region.bottom))
    return SampleResults(predictor.task, list(classes.names), [], [], total.numpy())
