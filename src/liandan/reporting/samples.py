"""Per-sample evaluation: each sample of a split through a run's Predictor, once.

One pass gives the confusion matrix ``metrics.json`` is built from, plus what a single
matrix cannot hold: the class probabilities of each image (classification: top-k,
ROC/PR curves, calibration, top losses) and the IoU of each image (segmentation: the
IoU distribution and the worst images). ``liandan evaluate`` and the report share it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from liandan.config import Config
from liandan.data.datamodule import fold_of, split_samples
from liandan.data.datasets import load_image
from liandan.data.layouts import ClassSpec, Sample, find_samples
from liandan.data.scan import CheckedDataset, MaskMapper, check_dataset
from liandan.errors import ConfigError
from liandan.metrics import ConfusionMatrix
from liandan.metrics_extra import image_iou
from liandan.tasks import get_task

if TYPE_CHECKING:
    from liandan.prediction import Predictor


def classes_from_meta(meta: dict[str, Any]) -> ClassSpec:
    """The classes a run's model was trained on, from its model.json."""
    return ClassSpec(
        list(meta["classes"]),
        values=meta.get("values"),
        colors=[tuple(c) for c in meta.get("colors") or []],  # type: ignore[misc]
        ignore_index=meta.get("ignore_index"),
        color_masks=bool(meta.get("color_masks")),
    )


def rebuild_splits(
    cfg: Config, classes: ClassSpec
) -> tuple[CheckedDataset, dict[str, list[Sample]]]:
    """Index, check and split ``cfg.data.root`` exactly as training did (same seed).

    Rasters (trained on tiles) are checked and split as training did too: their
    validation is the tile grid training validated on (see :func:`evaluate_samples`).
    """
    if cfg.data.root is None:
        raise ConfigError("no dataset to evaluate on", where="data.root")
    if cfg.task is None or get_task(cfg.task).uses_raster_tiles:
        from liandan.data.rasters import raster_bundle

        bundle = raster_bundle(cfg, classes)
        if bundle is not None:
            return bundle.checked, bundle.splits
    index = find_samples(
        cfg.data.root, cfg.data.layout, cfg.task, cfg.data.ignore_index, data=cfg.data
    )
    get_task(index.task).adopt_classes(index, classes)  # the model's, or a check
    checked = check_dataset(
        index, bands=cfg.data.bands, on_error=cfg.data.on_error, lossy_masks=cfg.data.lossy_masks
    )
    return checked, split_samples(index, cfg.data.val_fraction, cfg.train.seed, fold_of(cfg))


def pick_split(splits: dict[str, list[Sample]], split: str) -> list[Sample]:
    """The samples of ``split`` (``all``: train + val + test); an error when empty."""
    if split == "all":
        samples = [s for name in ("train", "val", "test") for s in splits.get(name, [])]
    else:
        samples = splits.get(split, [])
    if not samples:
        raise ConfigError(
            f"the dataset has no {split!r} split",
            where="--split",
            hint="use --split val, test or all",
        )
    return samples


def truth_mask(checked: CheckedDataset, sample: Sample, mapper: MaskMapper) -> np.ndarray:
    """A sample's mask as class indices (-1 ignored), from the cache or the file.

    Rasters' labels (label rasters and polygons) are read as training reads them:
    polygons rasterized on the image grid, nodata ignored.
    """
    assert isinstance(sample.target, Path)
    mask = checked.masks.get(sample.target)
    if mask is None:
        reader = getattr(checked, "label_reader", None)
        if reader is not None:
            return np.asarray(reader.whole_label(sample))
        mask = mapper.read(sample.target)
    return mask


def sample_name(sample: Sample, root: Path | None) -> str:
    """The image's path relative to the dataset folder (its file name otherwise)."""
    if root is not None:
        try:
            return sample.image.resolve().relative_to(Path(root).resolve()).as_posix()
        except ValueError:
            pass
    return sample.image.name


@dataclass
class SampleResults:
    """Everything one pass over a split yields.

    Attributes:
        task: ``classify`` or ``segment``.
        classes: class names, in index order.
        samples: the evaluated samples, in order.
        names: one display name per sample (path relative to the dataset).
        confusion: ``(K, K)`` int64 counts, rows = truth.
        probs: ``(N, K)`` class probabilities (classification).
        targets: ``(N,)`` true class indices (classification).
        ious: per-image IoU, ``None`` where every pixel is ignored (segmentation).
        windows: rasters: the validation tiles ``(region, top, left)`` that ``names``
            and ``ious`` describe (``samples`` is then empty), read by ``reader``.
        reader: rasters: the :class:`~liandan.data.raster_tiles.RasterTiles` to read
            a tile's image and labels with (``reader.read(*window)``).
    """

    task: str
    classes: list[str]
    samples: list[Sample]
    names: list[str]
    confusion: np.ndarray
    probs: np.ndarray | None = None
    targets: np.ndarray | None = None
    ious: list[float | None] = field(default_factory=list)
    windows: list[Any] = field(default_factory=list)
    reader: Any = None

    def extras(self) -> dict[str, Any]:
        """The extra metrics.json entries (see :mod:`liandan.metrics_extra`)."""
        return get_task(self.task).metric_extras(self)

    def losses(self) -> np.ndarray:
        """Cross-entropy of each classified sample: ``-log p(true class)``."""
        assert self.probs is not None and self.targets is not None
        p = self.probs[np.arange(len(self.targets)), self.targets]
        return -np.log(np.clip(p, 1e-12, 1.0))


def evaluate_samples(
    predictor: Predictor,
    checked: CheckedDataset,
    samples: list[Sample],
    *,
    bands: list[int] | None = None,
) -> SampleResults:
    """Predict every sample and count it; keep per-sample probabilities or IoUs.

    A raster dataset's validation split is the tile grid training validated on
    (:meth:`~liandan.data.raster_tiles.RasterTiles.evaluate_with`): no per-image IoU.
    """
    raster_val = getattr(checked, "raster_val", None)
    if raster_val is not None:
        if not {s.image for s in samples} <= {r.sample.image for r in raster_val.regions}:
            raise ConfigError(
                "rasters are evaluated per split, on the tiles training used",
                where="--split",
                hint="use liandan evaluate RUN --split val, test or all",
            )
        return raster_val.evaluate_with(predictor)  # type: ignore[no-any-return]
    return get_task(predictor.task).evaluate_samples(predictor, checked, samples, bands)


def evaluate_mask_samples(
    predictor: Predictor,
    checked: CheckedDataset,
    samples: list[Sample],
    bands: list[int] | None,
) -> SampleResults:
    """Masks: the confusion over every pixel and each image's IoU."""
    classes = checked.index.classes
    n = classes.num_classes
    mapper = MaskMapper(classes)
    total = ConfusionMatrix(n, ignore_index=-1)
    ious: list[float | None] = []
    for sample in samples:
        p = predictor.predict_array(load_image(checked, sample, bands), sample.image)
        truth = torch.from_numpy(truth_mask(checked, sample, mapper).astype(np.int64))
        one = ConfusionMatrix(n, ignore_index=-1)
        one.update(torch.from_numpy(p.argmax(0)), truth)
        ious.append(image_iou(one.numpy()))
        total.merge(one)
    names = [sample_name(s, checked.index.root) for s in samples]
    return SampleResults(
        predictor.task, list(classes.names), list(samples), names, total.numpy(), ious=ious
    )


def evaluate_label_samples(
    predictor: Predictor,
    checked: CheckedDataset,
    samples: list[Sample],
    bands: list[int] | None,
) -> SampleResults:
    """Image labels: the confusion and each sample's class probabilities."""
    classes = checked.index.classes
    n = classes.num_classes
    total = ConfusionMatrix(n, ignore_index=-1)
    probs: list[np.ndarray] = []
    targets: list[int] = []
    for sample in samples:
        p = predictor.predict_array(load_image(checked, sample, bands), sample.image)
        assert isinstance(sample.target, int)
        total.update(torch.tensor([int(p.argmax())]), torch.tensor([sample.target]))
        probs.append(p.astype(np.float32))
        targets.append(sample.target)
    names = [sample_name(s, checked.index.root) for s in samples]
    results = SampleResults(
        predictor.task, list(classes.names), list(samples), names, total.numpy()
    )
    results.probs = np.stack(probs) if probs else np.zeros((0, n), np.float32)
    results.targets = np.asarray(targets, dtype=np.int64)
    return results
