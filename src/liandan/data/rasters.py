"""Training on rasters of any size: tiles read window by window, never the whole file.

A dataset of rasters (``images/<stem>.tif`` with a label raster ``masks/<stem>.tif`` or
polygons ``labels/<stem>.geojson|.gpkg|.shp``) is checked from the file headers only
(band counts, dtypes, CRS/transform/size of each label raster against its image), then
trained on random tiles of ``data.tile_size`` read with rasterio windowed reads. File
handles are opened lazily in each DataLoader worker. Nodata (the file's nodata value,
mask band or alpha) becomes the ignore index (-1) of the mask; tiles with more than
``data.max_nodata_fraction`` nodata are redrawn. Validation is a grid of tiles over a
spatially held-out block (the bottom ``data.val_fraction`` of each raster's rows, so
neighbouring tiles never leak between train and validation) or over separate rasters
(a ``val/`` split). Per-band statistics come from one pass over sampled windows,
nodata excluded.
"""

from __future__ import annotations

import json
import random
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from liandan.data.layouts import ClassSpec, DatasetIndex, Sample
from liandan.data.readers import RASTER_EXTS, raster_all_nodata, valid_mask
from liandan.data.scan import CheckedDataset, MaskMapper
from liandan.errors import DataError

if TYPE_CHECKING:
    from liandan.config import Config
    from liandan.data.datamodule import DataBundle
    from liandan.report.samples import SampleResults

VECTOR_EXTS = {".geojson", ".json", ".gpkg", ".shp"}
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


def pixel_size(paths: list[Path]) -> list[float] | None:
    """``[x, y]`` pixel size of the first georeferenced raster, or None."""
    for path in paths:
        if Path(path).suffix.lower() not in RASTER_EXTS:
            continue
        with _open(Path(path)) as src:
            if src.crs is not None:
                return [abs(src.transform.a), abs(src.transform.e)]
    return None


def wants_tiles(index: DatasetIndex, max_image_size: int) -> bool:
    """Rasters that are georeferenced, larger than ``max_image_size`` or labelled by polygons."""
    if index.task != "segment" or not index.samples:
        return False
    for s in index.samples:
        if isinstance(s.target, Path) and s.target.suffix.lower() in VECTOR_EXTS:
            return True
        if s.image.suffix.lower() not in RASTER_EXTS:
            return False
    with _open(index.samples[0].image) as src:
        return src.crs is not None or max(src.height, src.width) > max_image_size


# ---------------------------------------------------------------- polygons
def read_polygons(path: Path, attribute: str) -> list[tuple[dict[str, Any], Any]]:
    """``(geometry, attribute value)`` pairs from a GeoJSON (or, with fiona, GPKG/SHP)."""
    try:
        if path.suffix.lower() in (".geojson", ".json"):
            data = json.loads(path.read_text(encoding="utf-8"))
            features = data.get("features", [])
        else:
            import fiona

            with fiona.open(path) as src:
                features = [
                    {"geometry": dict(f["geometry"]), "properties": dict(f["properties"])}
                    for f in src
                ]
    except ImportError:
        raise DataError(
            "reading .gpkg/.shp labels needs the fiona package",
            where=path,
            hint="pip install fiona, or convert the labels to GeoJSON",
        ) from None
    except Exception as exc:
        raise DataError(f"cannot read polygons ({exc})", where=path) from None
    out = []
    for f in features:
        props = f.get("properties") or {}
        if attribute not in props:
            raise DataError(
                f"a feature has no attribute {attribute!r} (it has {sorted(props)})",
                where=path,
                hint="set data.label_attribute to the attribute that holds the class",
            )
        out.append((f["geometry"], props[attribute]))
    return out


def polygon_classes(polygons: list[tuple[dict[str, Any], Any]], unlabelled: str) -> ClassSpec:
    """Classes from polygon attributes: integer values, or names after a background class."""
    labels = {v for _, v in polygons}
    if all(isinstance(v, int) for v in labels):
        top = max(labels | {0})
        return ClassSpec([str(i) for i in range(top + 1)])
    names = sorted(str(v) for v in labels)
    if unlabelled == "background" and "background" not in names:
        names = ["background", *names]
    return ClassSpec(names)


def class_index(value: Any, classes: ClassSpec, where: Path) -> int:
    if isinstance(value, str) and value in classes.names:
        return classes.names.index(value)
    raw = classes.raw_values()
    if isinstance(value, int | float) and int(value) in raw:
        return raw.index(int(value))
    raise DataError(
        f"polygon class {value!r} is not one of the classes {classes.names}",
        where=where,
        hint="list it in classes.yaml, or fix the attribute",
    )


# ---------------------------------------------------------------- checks
def check_rasters(index: DatasetIndex, cfg: Config) -> CheckedDataset:
    """Header-only checks of every raster and its labels; every problem listed at once."""
    problems: list[str] = []
    counts: set[int] = set()
    dtypes: set[str] = set()
    polygons: dict[Path, list[tuple[dict[str, Any], Any]]] = {}
    bands = cfg.data.bands
    for s in index.samples:
        with _open(s.image) as img:
            indexes = bands or list(range(1, img.count + 1))
            if any(not 1 <= b <= img.count for b in indexes):
                problems.append(f"{s.image}: bands {indexes} requested, the file has {img.count}")
            counts.add(len(indexes))
            dtypes.add(img.dtypes[0])
            if raster_all_nodata(s.image, cfg.data.nodata):
                problems.append(f"{s.image}: every pixel is nodata: nothing to learn")
            assert isinstance(s.target, Path)
            if s.target.suffix.lower() in VECTOR_EXTS:
                polygons[s.target] = read_polygons(s.target, cfg.data.label_attribute)
                continue
            with _open(s.target) as lab:
                diff = []
                if lab.crs != img.crs:
                    diff.append(f"CRS {lab.crs} vs {img.crs}")
                if lab.transform != img.transform:
                    diff.append("transform (origin or pixel size) differs")
                if (lab.width, lab.height) != (img.width, img.height):
                    diff.append(f"size {lab.width}x{lab.height} vs {img.width}x{img.height}")
                if diff and cfg.data.align != "warp":
                    problems.append(
                        f"label raster {s.target} is not on the grid of {s.image}: "
                        + "; ".join(diff)
                    )
                elif diff:
                    index.notes.append(f"{s.target} is warped onto the grid of {s.image}")
    if len(counts) > 1:
        problems.append(f"the rasters have different band counts: {sorted(counts)}")
    if problems:
        raise DataError(
            f"{len(problems)} raster problem(s)",
            where=index.root,
            items=problems,
            hint="reproject the labels onto the image grid (gdalwarp), or set data.align=warp",
        )
    if not index.classes.names:
        if polygons:
            index.classes = polygon_classes(
                [p for ps in polygons.values() for p in ps], cfg.data.unlabelled
            )
        else:
            index.classes = _raster_classes(index)
        index.notes.append(f"classes from the labels: {index.classes.names}")
    checked = CheckedDataset(index, in_channels=counts.pop(), dtype=sorted(dtypes)[0])
    checked.polygons = polygons  # type: ignore[attr-defined]
    return checked


def _raster_classes(index: DatasetIndex) -> ClassSpec:
    """Class values of label rasters, read block by block (bounded memory)."""
    values: set[int] = set()
    for s in index.samples:
        assert isinstance(s.target, Path)
        with _open(s.target) as lab:
            for _, window in lab.block_windows(1):
                block = lab.read(1, window=window)
                if lab.nodata is not None:
                    block = block[block != lab.nodata]
                values.update(int(v) for v in np.unique(block))
    ignore = index.classes.ignore_index
    values.discard(ignore if ignore is not None else -(10**9))
    top = max(values | {1})
    return ClassSpec([str(i) for i in range(top + 1)], ignore_index=ignore)


# ---------------------------------------------------------------- tiles
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
        indexes = self.bands or list(range(1, src.count + 1))
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
        ``data.align: warp``); polygons are rasterized onto it. Nodata is not applied.
        """
        assert isinstance(sample.target, Path)
        src = self._src(sample.image)
        shape = (int(window.height), int(window.width))
        if sample.target in self.polygons:
            mask = self._rasterize(sample.target, src.window_transform(window), shape)
        else:
            mask = self.mapper.map(self._label_src(sample.target, src).read(1, window=window))
            mask[mask == MaskMapper.UNKNOWN] = -1
        return mask.astype(np.int64)

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
            return self._rasterize(path, src.transform * Affine.scale(f, f), shape)
        raw = self._label_src(path, src).read(1, out_shape=shape)
        mask = self.mapper.map(raw)
        return np.where(mask < 0, -1, mask)

    def evaluate_with(self, predictor: Any) -> SampleResults:
        """Predict every validation tile (as predict would) and count it."""
        from liandan.metrics import ConfusionMatrix
        from liandan.report.samples import SampleResults

        cm = ConfusionMatrix(self.classes.num_classes, ignore_index=-1)
        for region, top, left in self.windows:
            image, mask = self.read(region, top, left)
            probs = predictor.predict_array(image, region.sample.image)
            cm.update(torch.from_numpy(probs.argmax(0)), torch.from_numpy(mask))
        return SampleResults("segment", list(self.classes.names), [], [], cm.numpy())


# ---------------------------------------------------------------- bundle
def _regions(index: DatasetIndex, cfg: Config) -> tuple[list[Region], list[Region], str]:
    """Training and validation regions: separate rasters (val/) or a held-out block."""
    shapes = {}
    for s in index.samples:
        with _open(s.image) as src:
            shapes[s] = (src.height, src.width)
    split = cfg.data.split
    if split == "auto":
        split = "files" if index.has_splits else "spatial"
    if split == "files":
        from liandan.data.datamodule import split_samples

        splits = split_samples(index, cfg.data.val_fraction, cfg.train.seed)
        train = [Region(s, 0, shapes[s][0], shapes[s][1]) for s in splits["train"]]
        val = [Region(s, 0, shapes[s][0], shapes[s][1]) for s in splits["val"]]
        return train, val, "validation on separate rasters"
    train, val = [], []
    pool = [s for s in index.samples if s.split in (None, "train")]
    for s in pool:
        h, w = shapes[s]
        cut = h - max(1, round(h * cfg.data.val_fraction))
        train.append(Region(s, 0, cut, w))
        val.append(Region(s, cut, h, w))
    note = f"validation on the bottom {cfg.data.val_fraction:.0%} of each raster's rows"
    return train, val, note


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


def build_raster_data(cfg: Config, index: DatasetIndex) -> DataBundle:
    """The DataBundle of a raster dataset: checked headers, tile datasets and loaders."""
    from liandan.data.datamodule import DataBundle, _seed_worker, pad_collate, resolve_workers
    from liandan.data.samplers import EvalShardSampler
    from liandan.data.transforms import build_augment, dtype_max
    from liandan.engine.batch_size import resolve_batch_size

    checked = check_rasters(index, cfg)
    train_regions, val_regions, note = _regions(index, cfg)
    index.notes.append(f"rasters trained on {cfg.data.tile_size}-px tiles; {note}")
    probe = RasterTiles(train_regions, checked, cfg, None, None, train=True)
    normalizer = fit_raster_normalizer(probe.regions, probe, cfg, cfg.train.seed)

    def augment(train: bool) -> Any:
        return build_augment(
            cfg.augment,
            task="segment",
            image_size=cfg.data.tile_size,
            train=train,
            bands=checked.in_channels,
            value_scale=dtype_max(checked.dtype),
            seed=cfg.train.seed,
        )

    train_ds = RasterTiles(train_regions, checked, cfg, normalizer, augment(True), train=True)
    val_ds = RasterTiles(val_regions, checked, cfg, normalizer, augment(False), train=False)
    if not val_ds.windows:
        raise DataError("no validation tiles", where=cfg.data.root, hint="lower data.tile_size")
    workers = resolve_workers(cfg.train.num_workers, False)
    args: dict[str, Any] = dict(
        num_workers=workers,
        collate_fn=pad_collate,
        worker_init_fn=_seed_worker,
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),  # as the image loader: async host-to-GPU copies
    )
    generator = torch.Generator().manual_seed(cfg.train.seed)
    random.seed(cfg.train.seed)
    wanted = resolve_batch_size(  # train.batch_size: auto -> the int written to config.yaml
        cfg,
        in_channels=checked.in_channels,
        num_classes=index.classes.num_classes,
        n_train=len(train_ds),
        size=cfg.data.tile_size,
        notes=index.notes,
    )
    batch = min(wanted, len(train_ds))
    train_loader = DataLoader(train_ds, batch_size=batch, generator=generator, **args)
    val_loader = DataLoader(
        val_ds, batch_size=max(1, batch // 2), sampler=EvalShardSampler(val_ds), **args
    )  # under DDP: each validation tile counted once
    splits = {
        "train": sorted({r.sample for r in train_regions}, key=lambda s: s.image),
        "val": sorted({r.sample for r in val_regions}, key=lambda s: s.image),
        "test": index.split("test"),
    }
    return DataBundle(checked, splits, normalizer, train_loader, val_loader, list(index.notes))


def raster_index(cfg: Config, classes: ClassSpec) -> DatasetIndex | None:
    """The index of ``cfg.data.root`` with the model's classes, or None if not rasters."""
    from liandan.data.layouts import find_samples

    if cfg.data.root is None:
        return None
    index = find_samples(cfg.data.root, cfg.data.layout, cfg.task, cfg.data.ignore_index)
    if not wants_tiles(index, cfg.data.max_image_size):
        return None
    index.classes = classes
    return index


def raster_bundle(cfg: Config, classes: ClassSpec) -> DataBundle | None:
    """The tile bundle of ``cfg.data.root`` for evaluation, or None if it is not rasters."""
    index = raster_index(cfg, classes)
    return None if index is None else build_raster_data(cfg, index)
