"""Tiles of rasters read window by window: the dataset that training iterates.

A :class:`Region` is a band of rows of one raster; :class:`RasterTiles` draws random
tiles from the training regions (redrawn above ``data.max_nodata_fraction`` nodata,
biased towards rare classes with ``data.sampler: balanced``) or a grid over the
validation regions. File handles are opened lazily in each DataLoader worker; label
rasters are read through the image's window (warped with ``data.align: warp``) and
polygons rasterized onto it.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import Dataset

from liandan.data.layouts import Sample
from liandan.data.raster_labels import class_index
from liandan.data.readers import alpha_bands, band_indexes, valid_mask
from liandan.data.scan import CheckedDataset, MaskMapper
from liandan.errors import DataError

if TYPE_CHECKING:
    from liandan.config import Config
    from liandan.reporting.samples import SampleResults

STATS_WINDOWS = 16  # windows per raster sampled for the band statistics
MAX_REDRAWS = 20  # attempts to find a training tile with enough valid pixels
RARE_FLOOR = 0.25  # data.sampler=balanced: tiles of common classes kept at least this often


def _open(path: Path) -> Any:
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            return rasterio.open(path)
        except Exception as exc:
            raise DataError(
                f"cannot open raster ({type(exc).__name__}: {exc})",
                where=path,
                hint="check the file with gdalinfo, or set data.on_error=skip",
            ) from None


@dataclass(frozen=True)
class Region:
    """Rows ``[top, bottom)`` of one raster that a split draws tiles from."""

    sample: Sample
    top: int
    bottom: int
    width: int


class RasterTiles(Dataset):
    """Tiles of rasters: random ones (train) or a grid (validation), read by windows.

    Items are ``(image (C, T, T) float32, mask (T, T) int64)``, -1 where ignored.
    """

    def __init__(
        self,
        regions: list[Region],
        checked: CheckedDataset,
        cfg: Config,
        normalizer: Any,
        augment: Any,
        *,
        train: bool,
    ) -> None:
        self.regions = [r for r in regions if r.bottom > r.top]
        self.classes = checked.index.classes
        self.polygons: dict[Path, list[tuple[dict[str, Any], Any]]] = getattr(
            checked, "polygons", {}
        )
        self.bands = cfg.data.bands
        self.tile = cfg.data.tile_size
        self.max_nodata = cfg.data.max_nodata_fraction
        self.nodata = cfg.data.nodata
        self.unlabelled = cfg.data.unlabelled
        self.warp = cfg.data.align == "warp"
        self.normalizer = normalizer
        self.augment = augment
        self.train = train
        self.length = cfg.data.tiles_per_epoch
        self.balanced = train and cfg.data.sampler == "balanced"
        self._rarity: np.ndarray | None = None  # per class, 1 for the rarest
        self.mapper = MaskMapper(self.classes)
        self._handles: dict[Path, Any] = {}
        self._indexes: dict[Path, list[int]] = {}  # bands read per raster (alpha left out)
        self.windows = [] if train else self._grid()
        areas = np.array([(r.bottom - r.top) * r.width for r in self.regions], float)
        self.weights = areas / max(areas.sum(), 1.0)

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_handles"] = {}  # each worker opens its own file handles
        return state

    def _src(self, path: Path) -> Any:
        if path not in self._handles:
            self._handles[path] = _open(path)
        return self._handles[path]

    def _grid(self) -> list[tuple[Region, int, int]]:
        out = []
        for r in self.regions:
            h, w = min(self.tile, r.bottom - r.top), min(self.tile, r.width)
            for top in range(r.top, r.bottom - h + 1, h):
                for left in range(0, r.width - w + 1, w):
                    out.append((r, top, left))
        return out

    def __len__(self) -> int:
        return self.length if self.train else len(self.windows)

    def read(self, region: Region, top: int, left: int) -> tuple[np.ndarray, np.ndarray]:
        """Raw ``(h, w, C)`` image window and its ``(h, w)`` mask (-1 ignored)."""
        from rasterio.windows import Window

        s = region.sample
        assert isinstance(s.target, Path)
        h, w = min(self.tile, region.bottom - top), min(self.tile, region.width - left)
        window = Window(left, top, w, h)
        src = self._src(s.image)
        if s.image not in self._indexes:
            alpha = alpha_bands(src)
            self._indexes[s.image] = self.bands or band_indexes(
                None, src.count, s.image, alpha=alpha
            )
        indexes = self._indexes[s.image]
        try:
            image = np.moveaxis(src.read(indexes, window=window), 0, -1)
            valid = valid_mask(src, window, self.nodata)
        except Exception as exc:  # a truncated or corrupt file
            raise DataError(
                f"cannot read the window at row {top}, column {left} ({exc})",
                where=s.image,
                hint="the file is damaged: check it with gdalinfo -checksum",
            ) from None
        mask = self.read_label(s, window)
        mask[~valid] = -1  # nodata is ignored in the loss and the metrics
        return image, mask

    def read_label(self, sample: Sample, window: Any) -> np.ndarray:
        """``(h, w)`` int64 class indices of a window of the image's grid (-1 unknown).

        Label rasters are read through the same window (warped onto the image grid with
        ``data.align: warp``); polygons are rasterized onto it. The label raster's own
        nodata value means "no label" (-1); the image's nodata is not applied here.
        """
        assert isinstance(sample.target, Path)
        src = self._src(sample.image)
        shape = (int(window.height), int(window.width))
        if sample.target in self.polygons:
            mask = self._rasterize(sample.target, src.window_transform(window), shape)
        else:
            lab = self._label_src(sample.target, src)
            raw = lab.read(1, window=window)
            mask = self.mapper.map(raw)
            mask[mask == MaskMapper.UNKNOWN] = -1
            if lab.nodata is not None:
                mask[raw == lab.nodata] = -1
        return mask.astype(np.int64)

    def whole_label(self, sample: Sample) -> np.ndarray:
        """``(H, W)`` class indices of a whole raster as training reads them (-1 ignored:
        no label, unknown value, or the image's nodata). It is read whole, as a mask is."""
        from rasterio.windows import Window

        src = self._src(sample.image)
        window = Window(0, 0, src.width, src.height)
        mask = self.read_label(sample, window)
        mask[~valid_mask(src, window, self.nodata)] = -1
        return mask

    def _label_src(self, path: Path, image_src: Any) -> Any:
        key = path.with_name(path.name + "#warped") if self.warp else path
        if key not in self._handles:
            lab = _open(path)
            if self.warp and (lab.crs, lab.transform, lab.shape) != (
                image_src.crs,
                image_src.transform,
                image_src.shape,
            ):
                from rasterio.enums import Resampling
                from rasterio.vrt import WarpedVRT

                lab = WarpedVRT(
                    lab,
                    crs=image_src.crs,
                    transform=image_src.transform,
                    width=image_src.width,
                    height=image_src.height,
                    resampling=Resampling.nearest,
                )
            self._handles[key] = lab
        return self._handles[key]

    def _rasterize(self, path: Path, transform: Any, shape: tuple[int, int]) -> np.ndarray:
        from rasterio.features import rasterize

        shapes = [
            (geom, class_index(value, self.classes, path)) for geom, value in self.polygons[path]
        ]
        fill = 0 if self.unlabelled == "background" else -1
        if not shapes:
            return np.full(shape, fill, np.int16)
        return rasterize(shapes, out_shape=shape, transform=transform, fill=fill, dtype="int16")

    def rarity(self) -> np.ndarray:
        """Inverse pixel frequency of each class in the training labels, max 1 (rarest)."""
        if self._rarity is None:
            n = self.classes.num_classes
            counts = np.zeros(n, np.float64)
            for path in {r.sample.target for r in self.regions}:
                assert isinstance(path, Path)
                mask = self.load_mask(path)
                counts += np.bincount(mask[mask >= 0].ravel(), minlength=n)[:n]
            inverse = np.where(counts > 0, 1.0 / np.maximum(counts, 1.0), 0.0)
            self._rarity = inverse / max(float(inverse.max()), 1e-12)
        return self._rarity

    def _random_window(self, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        for _ in range(MAX_REDRAWS):
            region = self.regions[rng.choice(len(self.regions), p=self.weights)]
            top = region.top + int(
                rng.integers(0, max(1, region.bottom - region.top - self.tile + 1))
            )
            left = int(rng.integers(0, max(1, region.width - self.tile + 1)))
            image, mask = self.read(region, top, left)
            if (mask < 0).mean() > self.max_nodata:
                continue
            if not self.balanced:
                break
            # data.sampler: balanced keeps a tile with the probability of its rarest class
            # (1 for tiles holding the rarest class), never below RARE_FLOOR: tiles with
            # rare classes are drawn up to 1/RARE_FLOOR times as often as the others.
            present = np.unique(mask[mask >= 0])
            keep = max(float(self.rarity()[present].max()) if present.size else 0.0, RARE_FLOOR)
            if rng.random() < keep:
                break
        return image, mask

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        if self.train:
            # seeded by the index too: under DDP every rank draws the same global random
            # numbers, but the distributed sampler hands each rank different indices
            seed = (np.random.randint(2**31), i)
            image, mask = self._random_window(np.random.default_rng(seed))
        else:
            image, mask = self.read(*self.windows[i])
        out = self.augment(image=image.astype(np.float32), mask=mask)
        x = self.normalizer.to_chw(out["image"])
        target = torch.from_numpy(np.ascontiguousarray(out["mask"]).astype(np.int64))
        return torch.from_numpy(x), target

    def load_mask(self, path: Path) -> np.ndarray:
        """A decimated (at most ~1024 px a side) mask of one raster, for class counts."""
        from rasterio.transform import Affine

        sample = next(r.sample for r in self.regions if r.sample.target == path)
        src = self._src(sample.image)
        f = max(1, int(np.ceil(max(src.height, src.width) / 1024)))
        shape = (src.height // f or 1, src.width // f or 1)
        if path in self.polygons:
            return self._rasterize(path, src.transform @ Affine.scale(f, f), shape)
        raw = self._label_src(path, src).read(1, out_shape=shape)
        mask = self.mapper.map(raw)
        return np.where(mask < 0, -1, mask)

    def evaluate_with(self, predictor: Any) -> SampleResults:
        """Predict every validation tile (as predict would) and count it.

        Each tile is also scored on its own (its IoU), so the report can show the worst.
        """
        from liandan.metrics import ConfusionMatrix
        from liandan.metrics_extra import image_iou
        from liandan.reporting.samples import SampleResults

        n = self.classes.num_classes
        cm = ConfusionMatrix(n, ignore_index=-1)
        names: list[str] = []
        ious: list[float | None] = []
        for region, top, left in self.windows:
            image, mask = self.read(region, top, left)
            probs = predictor.predict_array(image, region.sample.image)
            one = ConfusionMatrix(n, ignore_index=-1)
            one.update(torch.from_numpy(probs.argmax(0)), torch.from_numpy(mask))
            cm.merge(one)
            h, w = mask.shape
            name = region.sample.image.name
            names.append(f"{name} rows {top}-{top + h}, columns {left}-{left + w}")
            ious.append(image_iou(one.numpy()))
        results = SampleResults(predictor.task, list(self.classes.names), [], names, cm.numpy())
        results.ious, results.windows, results.reader = ious, list(self.windows), self
        return results


def fit_raster_normalizer(regions: list[Region], ds: RasterTiles, cfg: Config, seed: int) -> Any:
    """Per-band statistics over sampled windows of the training regions, nodata excluded."""
    from liandan.data.transforms import fit_normalizer

    rng = np.random.default_rng(seed)
    pixels = []
    for region in regions:
        for _ in range(STATS_WINDOWS):
            top = region.top + int(
                rng.integers(0, max(1, region.bottom - region.top - ds.tile + 1))
            )
            left = int(rng.integers(0, max(1, region.width - ds.tile + 1)))
            image, _ = ds.read(region, top, left)
            from rasterio.windows import Window

            src = ds._src(region.sample.image)
            window = Window(left, top, image.shape[1], image.shape[0])
            valid = valid_mask(src, window, ds.nodata)
            if valid.any():
                pixels.append(image[valid][:, None, :])
    if not pixels:
        raise DataError("no valid (non-nodata) pixels in the training rasters", where=cfg.data.root)
    return fit_normalizer(cfg.data.normalize, pixels, cfg.data.percentiles)
