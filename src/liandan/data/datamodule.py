"""From a config to data loaders: index, check, split, normalize, load."""

from __future__ import annotations

import os
import random
from dataclasses import dataclass, field

import numpy as np
import torch
from torch.utils.data import DataLoader

from liandan.config import Config
from liandan.data.datasets import load_image
from liandan.data.datasets import pad_collate as pad_collate  # raster tiles batch with it
from liandan.data.layouts import ClassSpec, DatasetIndex, Sample, find_samples
from liandan.data.samplers import EvalShardSampler
from liandan.data.scan import CheckedDataset, check_dataset
from liandan.data.transforms import Normalizer, fit_normalizer
from liandan.engine.batch_size import resolve_batch_size
from liandan.errors import ConfigError, DataError
from liandan.tasks import get_task


@dataclass
class DataBundle:
    """What training needs from the data: loaders plus everything about the classes."""

    checked: CheckedDataset
    splits: dict[str, list[Sample]]
    normalizer: Normalizer
    train_loader: DataLoader
    val_loader: DataLoader
    notes: list[str] = field(default_factory=list)

    @property
    def index(self) -> DatasetIndex:
        return self.checked.index

    @property
    def classes(self) -> ClassSpec:
        return self.checked.index.classes

    @property
    def in_channels(self) -> int:
        return self.checked.in_channels

    def class_counts(self) -> np.ndarray:
        """Training-set frequency of each class (images for classify, pixels for segment)."""
        task = get_task(self.checked.index.task)
        return task.class_counts(
            self.train_loader.dataset, self.splits["train"], self.classes.num_classes
        )


def split_samples(
    index: DatasetIndex,
    val_fraction: float,
    seed: int,
    folds: tuple[int, int] | None = None,
) -> dict[str, list[Sample]]:
    """Use the dataset's own splits, or draw a seeded validation split.

    Classification splits are stratified by class so every class is validated. With
    ``folds=(k, K)`` (k-fold cross-validation), the training and validation samples are
    pooled and dealt into ``K`` seeded folds (stratified by class for classification;
    each segmentation sample is one image, so folds group by image); fold ``k`` is
    validated, the others train. A test split stays aside.
    """
    if folds is not None:
        return _fold_split(index, seed, *folds)
    if index.has_splits:
        splits = {name: index.split(name) for name in ("train", "val", "test")}
        if not splits["train"]:
            raise DataError("the dataset has split folders but no train/ split", where=index.root)
        if splits["val"]:
            return splits
        pool = splits["train"]
    else:
        pool = list(index.samples)
        splits = {"test": []}
    rng = random.Random(seed)
    stratum = get_task(index.task).stratum  # classification: by class; else one group
    groups: dict[int, list[Sample]] = {}
    for s in pool:
        groups.setdefault(stratum(s), []).append(s)
    train: list[Sample] = []
    val: list[Sample] = []
    for members in groups.values():
        members = list(members)
        rng.shuffle(members)
        n_val = round(len(members) * val_fraction)
        if len(members) >= 2:
            n_val = min(max(n_val, 1), len(members) - 1)
        else:
            n_val = 0
        val += members[:n_val]
        train += members[n_val:]
    if not val:
        raise DataError(
            f"too few samples ({len(pool)}) to hold out a validation split",
            where=index.root,
            hint="add samples, or provide a val/ folder",
        )
    splits["train"], splits["val"] = train, val
    return splits


def cv_pool(index: DatasetIndex) -> list[Sample]:
    """The samples k-fold cross-validation deals into folds: all but the test split."""
    if index.has_splits:
        return index.split("train") + index.split("val")
    return list(index.samples)


def _fold_split(index: DatasetIndex, seed: int, k: int, n_folds: int) -> dict[str, list[Sample]]:
    pool = cv_pool(index)
    if len(pool) < n_folds:
        raise DataError(
            f"{len(pool)} samples cannot be dealt into {n_folds} folds",
            where=index.root,
            hint="use fewer folds (--folds) or add samples",
        )
    groups: dict[int, list[Sample]] = {}
    stratum = get_task(index.task).stratum  # classification: by class; else one group
    for s in pool:
        groups.setdefault(stratum(s), []).append(s)
    rng = random.Random(seed)
    dealt = 0  # continue the deal across classes, so fold sizes differ by at most one
    train: list[Sample] = []
    val: list[Sample] = []
    for key in sorted(groups):
        members = list(groups[key])
        rng.shuffle(members)
        for s in members:
            (val if dealt % n_folds == k else train).append(s)
            dealt += 1
    test = index.split("test") if index.has_splits else []
    return {"train": train, "val": val, "test": test}


def resolve_workers(setting: int | str, cached: bool) -> int:
    if setting != "auto":
        return int(setting)
    if cached:
        return 0  # decoded arrays in memory: augmenting in the main process is cheapest
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:
        cores = os.cpu_count() or 1
    return min(cores, 8)


def _seed_worker(worker_id: int) -> None:
    seed = torch.initial_seed() % 2**32
    np.random.seed(seed)
    random.seed(seed)


def fold_of(cfg: Config) -> tuple[int, int] | None:
    """``(fold, folds)`` of a k-fold run, or None."""
    if cfg.data.folds is None:
        if cfg.data.fold is not None:  # a fold of no cross-validation: never ignored silently
            raise ConfigError(
                f"data.fold={cfg.data.fold} without data.folds",
                where="data.fold",
                hint="set data.folds (the number of folds), or leave data.fold out",
            )
        return None
    fold = cfg.data.fold or 0
    if fold >= cfg.data.folds:
        raise ConfigError(
            f"fold {fold} of {cfg.data.folds} folds", where="data.fold", hint="0 .. folds-1"
        )
    return fold, cfg.data.folds


def build_data(cfg: Config, *, normalizer: Normalizer | None = None) -> DataBundle:
    """Index, check, split and wrap the dataset named by ``cfg.data.root``.

    Args:
        cfg: the run's config; ``cfg.task`` is filled in from the layout when None.
        normalizer: a fitted normalizer to reuse (evaluation); fitted here otherwise.
    """
    if cfg.data.root is None:
        raise ConfigError(
            "no dataset given",
            where="data.root",
            hint="pass DATA on the command line or set data.root",
        )
    # strict=False: unpaired files are listed with every other problem by the checks below
    index = find_samples(
        cfg.data.root, cfg.data.layout, cfg.task, cfg.data.ignore_index, strict=False, data=cfg.data
    )
    if cfg.task is None:
        cfg.task = index.task  # type: ignore[assignment]
    if cfg.data.folds is not None:  # k-fold runs pool confusion matrices and average logits
        get_task(index.task).refuse("folds")
    from liandan.data.rasters import build_raster_data, wants_tiles

    if normalizer is None and wants_tiles(index, cfg.data.max_image_size):
        return build_raster_data(cfg, index)  # large/georeferenced rasters: windowed tiles
    checked = check_dataset(
        index,
        bands=cfg.data.bands,
        on_error=cfg.data.on_error,
        cache=cfg.data.cache,
        lossy_masks=cfg.data.lossy_masks,
    )
    splits = split_samples(index, cfg.data.val_fraction, cfg.train.seed, fold_of(cfg))
    if normalizer is None:
        rng = random.Random(cfg.train.seed)
        # k-fold: every fold normalizes alike (statistics of the whole pool, as nnU-Net's
        # fingerprint), so the folds' models take the same input and ensemble
        train = cv_pool(index) if cfg.data.folds else splits["train"]
        chosen = rng.sample(train, min(len(train), 256))
        arrays = [load_image(checked, s, cfg.data.bands) for s in chosen]
        normalizer = fit_normalizer(cfg.data.normalize, arrays, cfg.data.percentiles)
    size = cfg.data.image_size
    task = get_task(index.task)
    # the task's datasets: read, augment with targets kept aligned, normalize
    train_ds, val_ds = task.build_datasets(cfg, checked, splits, normalizer)
    workers = resolve_workers(cfg.train.num_workers, bool(checked.images))
    generator = torch.Generator().manual_seed(cfg.train.seed)
    wanted = resolve_batch_size(  # train.batch_size: auto -> the int written to config.yaml
        cfg,
        in_channels=checked.in_channels,
        num_classes=index.classes.num_classes,
        n_train=len(train_ds),
        size=size,
        notes=index.notes,
    )
    batch = min(wanted, len(train_ds))
    loader_args = dict(
        num_workers=workers,
        collate_fn=task.collate(),
        worker_init_fn=_seed_worker,
        persistent_workers=workers > 0,
        pin_memory=torch.cuda.is_available(),
    )
    sampler = None
    if cfg.data.sampler == "balanced":  # the task's way: sample images or aim crops
        sampler = task.balance(
            train_ds, splits["train"], index.classes.num_classes, size, generator
        )
    train_loader = DataLoader(
        train_ds,
        batch_size=batch,
        shuffle=sampler is None,
        sampler=sampler,
        drop_last=len(train_ds) > batch,
        generator=generator,
        **loader_args,  # type: ignore[arg-type]
    )
    val_source, val_batch, why = task.validation_source(val_ds, size, batch, wanted, cfg.train)
    if why is not None:
        index.notes.append(why)
    val_loader = DataLoader(
        val_source,
        batch_size=val_batch,
        sampler=EvalShardSampler(val_source),  # under DDP: each sample validated once
        **loader_args,  # type: ignore[arg-type]
    )
    return DataBundle(checked, splits, normalizer, train_loader, val_loader, list(index.notes))
