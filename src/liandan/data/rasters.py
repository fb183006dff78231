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

The tile dataset is :mod:`liandan.data.raster_tiles`, the polygon labels
:mod:`liandan.data.raster_labels`; this module checks a dataset and builds its loaders.
"""

from __future__ import annotations

import random
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch
from torch.utils.data import DataLoader

from liandan.data.layouts import ClassSpec, DatasetIndex, Sample
from liandan.data.raster_labels import (
    VECTOR_EXTS,
    Polygons,
    polygon_classes,
    polygons_on_grid,
    read_layer,
)
from liandan.data.raster_tiles import RasterTiles, Region, _open, fit_raster_normalizer
from liandan.data.readers import RASTER_EXTS, alpha_bands, band_indexes, raster_all_nodata
from liandan.data.scan import CheckedDataset
from liandan.errors import DataError
from liandan.tasks import get_task

if TYPE_CHECKING:
    from liandan.config import Config
    from liandan.data.datamodule import DataBundle


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
    if not get_task(index.task).uses_raster_tiles or not index.samples:
        return False
    for s in index.samples:
        if isinstance(s.target, Path) and s.target.suffix.lower() in VECTOR_EXTS:
            return True
        if s.image.suffix.lower() not in RASTER_EXTS:
            return False
    with _open(index.samples[0].image) as src:
        return src.crs is not None or max(src.height, src.width) > max_image_size


# ---------------------------------------------------------------- checks
def check_labels(
    index: DatasetIndex,
    *,
    align: str = "error",
    label_attribute: str = "class",
    sizes: bool = True,
    samples: list[Sample] | None = None,
) -> tuple[list[tuple[str, Path, str]], dict[Path, Polygons]]:
    """Every label of a raster dataset against its image, from headers and polygons.

    A label raster must be on its image's grid (CRS, transform and, with ``sizes``,
    size) unless ``align`` is ``warp``; polygons are reprojected to their raster's CRS
    and must overlap it (:func:`~liandan.data.raster_labels.polygons_on_grid`).
    Training and ``liandan scan`` both call this, so they agree. Samples whose image is
    not a raster file and whose label is not a vector file are not looked at;
    ``samples`` limits the check to some of the index's samples.

    Returns:
        ``(kind, label file, reason naming both files)`` per problem, and the polygons
        of each vector label file in its raster's CRS. Notes about warping and
        reprojection go to ``index.notes``.
    """
    problems: list[tuple[str, Path, str]] = []
    polygons: dict[Path, Polygons] = {}
    for s in index.samples if samples is None else samples:
        if not isinstance(s.target, Path):
            continue
        vector = s.target.suffix.lower() in VECTOR_EXTS
        if not vector and s.image.suffix.lower() not in RASTER_EXTS:
            continue
        try:
            with _open(s.image) as img:
                if vector:
                    layer = read_layer(s.target, label_attribute)
                    polygons[s.target], note = polygons_on_grid(layer, s.image, img)
                    if note:
                        index.notes.append(note)
                    continue
                with _open(s.target) as lab:
                    diff = []
                    if lab.crs != img.crs:
                        diff.append(f"CRS {lab.crs} vs {img.crs}")
                    if lab.transform != img.transform:
                        diff.append("transform (origin or pixel size) differs")
                    if sizes and (lab.width, lab.height) != (img.width, img.height):
                        diff.append(f"size {lab.width}x{lab.height} vs {img.width}x{img.height}")
        except DataError as exc:
            reason = exc.message if str(s.image) in exc.message else f"{exc.message} ({s.image})"
            kind = "polygon-labels" if vector else "unreadable"
            problems.append((kind, s.target, f"{reason}; {exc.hint}" if exc.hint else reason))
            continue
        if diff and align != "warp":
            reason = f"not on the grid of {s.image}: " + "; ".join(diff)
            problems.append(("label-grid", s.target, reason + " (or set data.align=warp)"))
        elif diff:
            index.notes.append(f"{s.target} is warped onto the grid of {s.image}")
    return problems, polygons


def check_rasters(index: DatasetIndex, cfg: Config) -> CheckedDataset:
    """Header-only checks of every raster and its labels; every problem listed at once."""
    problems = [f"{file}: {why}" for _, file, why in index.problems]  # unpaired files
    counts: set[int] = set()
    dtypes: set[str] = set()
    bands = cfg.data.bands
    for s in index.samples:
        with _open(s.image) as img:
            indexes = bands or band_indexes(None, img.count, s.image, alpha=alpha_bands(img))
            if any(not 1 <= b <= img.count for b in indexes):
                problems.append(f"{s.image}: bands {indexes} requested, the file has {img.count}")
            counts.add(len(indexes))
            dtypes.add(img.dtypes[0])
            if raster_all_nodata(s.image, cfg.data.nodata):
                problems.append(f"{s.image}: every pixel is nodata: nothing to learn")
    label_problems, polygons = check_labels(
        index, align=cfg.data.align, label_attribute=cfg.data.label_attribute
    )
    problems += [f"{file}: {reason}" for _, file, reason in label_problems]
    if len(counts) > 1:
        problems.append(f"the rasters have different band counts: {sorted(counts)}")
    if problems:
        raise DataError(
            f"{len(problems)} raster problem(s)",
            where=index.root,
            items=problems,
            hint="reproject the label rasters onto the image grid (gdalwarp) or set data.align=warp"
            if any(kind == "label-grid" for kind, _, _ in label_problems)
            else "fix each file as its line says",
        )
    values = {} if polygons else _label_values(index)
    if not index.classes.names:
        if polygons:
            index.classes = polygon_classes(
                [p for ps in polygons.values() for p in ps], cfg.data.unlabelled
            )
        else:
            index.classes = _raster_classes(index, values)
        index.notes.append(f"classes from the labels: {index.classes.names}")
    elif values:  # classes.yaml: every label value must be one of them (or ignored)
        known = set(index.classes.raw_values()) | {index.classes.ignore_index}
        bad = [
            f"{path}: value(s) {sorted(v - known)[:8]} are not classes"
            for path, v in values.items()
            if v - known
        ]
        if bad:
            raise DataError(
                f"{len(bad)} label raster(s) hold values that are not classes",
                where=index.root,
                items=bad,
                hint="add them to classes.yaml, set data.ignore_index, or declare them "
                "the label raster's nodata value (no label)",
            )
    checked = CheckedDataset(index, in_channels=counts.pop(), dtype=sorted(dtypes)[0])
    checked.polygons = polygons  # type: ignore[attr-defined]
    # the report's class counts read labels as training does (polygons, warping, nodata)
    reader = RasterTiles([], checked, cfg, None, None, train=True)
    checked.label_reader = reader  # type: ignore[attr-defined]
    return checked


def _label_values(index: DatasetIndex) -> dict[Path, set[int]]:
    """The values of each label raster but its nodata value, read block by block."""
    found: dict[Path, set[int]] = {}
    for s in index.samples:
        assert isinstance(s.target, Path)
        values = found.setdefault(s.target, set())
        with _open(s.target) as lab:
            for _, window in lab.block_windows(1):
                block = lab.read(1, window=window)
                if lab.nodata is not None:
                    block = block[block != lab.nodata]
                values.update(int(v) for v in np.unique(block))
    return found


def _raster_classes(index: DatasetIndex, found: dict[Path, set[int]]) -> ClassSpec:
    """Classes 0..max of the label rasters' values (``found`` by :func:`_label_values`)."""
    values: set[int] = set().union(*found.values()) if found else set()
    ignore = index.classes.ignore_index
    values.discard(ignore if ignore is not None else -(10**9))
    top = max(values | {1})
    return ClassSpec([str(i) for i in range(top + 1)], ignore_index=ignore)


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
            task=index.task,
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
    checked.raster_val = val_ds  # type: ignore[attr-defined]  # the report validates on it
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
