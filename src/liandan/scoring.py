"""``liandan score``: metrics for predictions made by anything against a ground truth.

Inputs: two folders of masks paired by file stem (PNG or GeoTIFF, any size; a
``preview/`` subfolder or any other subfolder is ignored), two mask files (e.g. two
rasters), or two CSVs with ``image`` and ``label`` columns (classification). Classes
come from a classes.yaml beside the truth (in the folder or its parent), or are
inferred from the truth masks; both sides are mapped through the same ``values``.

Not counted: truth pixels equal to ``ignore_index``; pixels where either side holds
the ``nodata`` value (classes.yaml ``nodata`` or the option); pixels where either
side holds its GeoTIFF's own nodata value, unless that value is a class value.
Every unpaired or unreadable file is listed in one error.

Detections (a COCO results JSON, a folder of YOLO text predictions) are scored by the
detection task against a YOLO, COCO or VOC truth: :mod:`liandan.tasks.detect.scoring`.
"""

from __future__ import annotations

import csv
import warnings
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import torch

from liandan.data.layouts import ClassSpec, class_spec_from_yaml, read_classes_yaml
from liandan.data.readers import RASTER_EXTS, is_image_file, read_mask
from liandan.data.scan import MaskMapper, infer_classes
from liandan.errors import ConfigError, DataError
from liandan.metrics import ConfusionMatrix, compute_metrics
from liandan.runs import atomic_write_json

if TYPE_CHECKING:
    from liandan.tasks.base import Task


def _mask_files(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and is_image_file(p)}


def _pairs(pred: Path, truth: Path) -> list[tuple[Path, Path]]:
    if pred.is_file() and truth.is_file():
        return [(pred, truth)]
    if not (pred.is_dir() and truth.is_dir()):
        raise DataError(
            "PRED and TRUTH must both be folders or both be files",
            where=f"{pred} / {truth}",
        )
    p, t = _mask_files(pred), _mask_files(truth)
    problems = [f"{p[s]}: no truth mask named {s}.* in {truth}" for s in p if s not in t]
    problems += [f"{t[s]}: no prediction named {s}.* in {pred}" for s in t if s not in p]
    if problems:
        raise DataError(
            "predictions and truth do not pair up by file name",
            items=problems,
            hint="each prediction needs a truth mask with the same stem",
        )
    if not p:
        raise DataError("no mask files found", where=pred)
    return [(p[s], t[s]) for s in sorted(p)]


def _file_nodata(path: Path) -> float | None:
    """The nodata value a raster file declares (None for PNGs and rasters without one)."""
    if path.suffix.lower() not in RASTER_EXTS:
        return None
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            return None if src.nodata is None else float(src.nodata)


def _classes_for(
    truth: Path,
    masks: dict[Path, np.ndarray],
    ignore_index: int | None,
    nodata: int | None,
) -> tuple[ClassSpec, int | None]:
    """The classes (classes.yaml or inferred from the truth) and the nodata value."""
    folder = truth if truth.is_dir() else truth.parent
    data = read_classes_yaml(folder)
    if data is not None:
        if nodata is None and data.get("nodata") is not None:
            nodata = int(data["nodata"])
        return class_spec_from_yaml(data, ignore_index), nodata
    # no classes.yaml: the classes are the truth's values, less ignored and nodata ones
    values = {}
    for path, mask in masks.items():
        drop = [v for v in (ignore_index, nodata, _file_nodata(path)) if v is not None]
        values[path] = mask[~np.isin(mask, drop)] if drop and mask.ndim == 2 else mask
    spec, _ = infer_classes(values, None)
    spec.ignore_index = ignore_index
    return spec, nodata


def _excluded(raw: np.ndarray, path: Path, nodata: int | None, values: set[int]) -> np.ndarray:
    """Pixels of a mask holding no data: the nodata value, or the file's own nodata."""
    out = np.zeros(raw.shape[:2], dtype=bool)
    if raw.ndim != 2:
        return out
    if nodata is not None:
        out |= raw == nodata
    own = _file_nodata(path)
    if own is not None and own not in values:
        out |= raw == own
    return out


def score_masks(
    pred: Path,
    truth: Path,
    *,
    ignore_index: int | None = None,
    nodata: int | None = None,
) -> dict[str, Any]:
    """Metrics of prediction masks against truth masks (files or folders paired by stem)."""
    pairs = _pairs(pred, truth)
    truths = {t: read_mask(t) for _, t in pairs}
    classes, nodata = _classes_for(truth, truths, ignore_index, nodata)
    if classes.by_color:  # classes by colour: palette truths are read by their colours
        truths = {t: read_mask(t, palette_colors=True) for t in truths}
    mapper = MaskMapper(classes)
    # predictions never hold the ignore value as a class: map them without it
    pred_mapper = MaskMapper(ClassSpec(classes.names, classes.values, classes.colors))
    values = set(classes.raw_values())
    cm = ConfusionMatrix(classes.num_classes, ignore_index=-1)
    problems: list[str] = []
    skipped = 0
    for p, t in pairs:
        pm = read_mask(p)
        tm = truths[t]
        if pm.shape[:2] != tm.shape[:2]:
            problems.append(
                f"{p}: {pm.shape[1]}x{pm.shape[0]}, truth is {tm.shape[1]}x{tm.shape[0]}"
            )
            continue
        off = _excluded(pm, p, nodata, values) | _excluded(tm, t, nodata, values)
        mp, mt = pred_mapper.map(pm), mapper.map(tm)
        for path, arr, raw, m in ((p, mp, pm, pred_mapper), (t, mt, tm, mapper)):
            unknown = (arr == MaskMapper.UNKNOWN) & ~off
            if unknown.any():
                vals = ", ".join(m.unknown_values(raw, np.where(unknown, arr, 0)))
                problems.append(f"{path}: value(s) {vals} are not a class")
        if problems:
            continue
        mt = mt.astype(np.int64)
        mt[off] = -1
        skipped += int(off.sum())
        mp = mp.astype(np.int64)
        mp[mt < 0] = 0  # ignored truth pixels are dropped by the matrix anyway
        cm.update(torch.from_numpy(mp), torch.from_numpy(mt))
    if problems:
        raise DataError(
            "cannot score these files",
            items=problems,
            hint="masks must have the same size and use the classes' values "
            "(give classes.yaml beside the truth, or --ignore-index / --nodata)",
        )
    metrics = compute_metrics(cm.numpy(), classes.names, task="segment", split="score")
    metrics["inputs"] = {"pairs": len(pairs), "nodata": nodata, "nodata_pixels": skipped}
    return metrics


def _read_labels(path: Path) -> dict[tuple[str, ...], str]:
    """``{path parts: label}`` from a CSV with ``image`` and ``label`` columns."""
    try:
        with path.open(newline="", encoding="utf-8") as fh:
            rows = list(csv.DictReader(fh))
    except (OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read the CSV ({exc})", where=path) from None
    if not rows or not {"image", "label"} <= set(rows[0]):
        raise DataError("a CSV needs the columns image and label", where=path)
    return {Path(r["image"].replace("\\", "/")).parts: r["label"] for r in rows}


def _match_keys(*tables: dict[tuple[str, ...], str]) -> list[dict[str, str]]:
    """Key each table by the shortest path tail (file name, then parent/name ...) that
    is unique in every table, so ``a/1.png`` and ``b/1.png`` stay apart."""
    depth = max((len(k) for t in tables for k in t), default=1)
    for d in range(1, depth + 1):
        keyed = [{"/".join(k[-d:]): v for k, v in t.items()} for t in tables]
        if all(len(k) == len(t) for k, t in zip(keyed, tables, strict=True)):
            return keyed
    return [{"/".join(k): v for k, v in t.items()} for t in tables]


def score_labels(pred: Path, truth: Path) -> dict[str, Any]:
    """Metrics of predicted labels against true labels (two CSVs: image, label)."""
    p, t = _match_keys(_read_labels(pred), _read_labels(truth))
    problems = [f"{name}: in {truth} but not in {pred}" for name in t if name not in p]
    problems += [f"{name}: in {pred} but not in {truth}" for name in p if name not in t]
    yaml_data = read_classes_yaml(truth.parent)
    if yaml_data is not None:
        names = [str(n) for n in yaml_data["names"]]
    else:
        names = sorted(set(t.values()) | set(p.values()))
    known = set(names)
    for side, table in ((pred, p), (truth, t)):
        problems += [
            f"{side}: {name}: label {label!r} is not a class"
            for name, label in table.items()
            if label not in known
        ]
    if problems:
        raise DataError(
            "predictions and truth do not pair up",
            items=problems,
            hint="both CSVs need one row per image (column image) with a class name (label)",
        )
    index = {n: i for i, n in enumerate(names)}
    cm = ConfusionMatrix(len(names), ignore_index=None)
    keys = sorted(t)
    cm.update(torch.tensor([index[p[k]] for k in keys]), torch.tensor([index[t[k]] for k in keys]))
    metrics = compute_metrics(cm.numpy(), names, task="classify", split="score")
    metrics["inputs"] = {"pairs": len(keys)}
    return metrics


def _task_scoring(pred: Path, truth: Path) -> Task | None:
    """The task whose own prediction files ``pred`` is (detections), or None."""
    from liandan.tasks.registry import get_task, task_names

    return next((t for n in task_names() if (t := get_task(n)).scores(pred, truth)), None)


def score(
    pred: str | Path,
    truth: str | Path,
    *,
    ignore_index: int | None = None,
    nodata: int | None = None,
    out: str | Path | None = None,
    score_threshold: float | None = None,
) -> dict[str, Any]:
    """Metrics (the metrics.json schema) of predictions against ground truth.

    Args:
        pred: a folder of masks, a mask file, a CSV (image, label), or detections
            (a COCO results JSON or a folder of YOLO text predictions, see
            :mod:`liandan.tasks.detect.scoring`).
        truth: the same kind of input holding the truth (for detections: a YOLO or
            VOC folder or a COCO JSON).
        ignore_index: truth value not counted (default: classes.yaml's).
        nodata: value meaning "no data" on either side (default: classes.yaml's).
        out: a folder to write ``metrics.json`` and ``confusion_matrix.png`` into.
        score_threshold: detections only: the confidence at or above which a box
            counts for precision, recall, F1 and the confusion matrix.

    >>> liandan.score("maps/", "data/val/masks/")["overall"]["mean_iou"]  # doctest: +SKIP
    0.78
    """
    pred, truth = Path(pred), Path(truth)
    for p in (pred, truth):
        if not p.exists():
            raise DataError("not found", where=p)
    task = _task_scoring(pred, truth)
    if task is not None:
        given = {"ignore_index": ignore_index, "nodata": nodata}
        for key in (k for k, v in given.items() if v is not None):
            raise ConfigError(f"{key} is for masks, not {task.targets}", where=key)
        metrics = task.score_files(pred, truth, score_threshold=score_threshold)
    elif score_threshold is not None:
        raise ConfigError(
            "score_threshold is for detections (boxes with scores)",
            where="score_threshold",
            hint="PRED is read as masks or labels here",
        )
    elif pred.suffix.lower() == ".csv" or truth.suffix.lower() == ".csv":
        metrics = score_labels(pred, truth)
    else:
        metrics = score_masks(pred, truth, ignore_index=ignore_index, nodata=nodata)
    metrics["inputs"] = {"pred": str(pred), "truth": str(truth), **metrics.get("inputs", {})}
    if out is not None:
        from liandan.reporting.figures import plot_confusion
        from liandan.runs import output_files

        out = Path(out)
        targets = [out / "metrics.json", out / "confusion_matrix.png"]
        with output_files(out, targets, inputs=[pred, truth]):  # never replaces your files
            atomic_write_json(out / "metrics.json", metrics)
            plot_confusion(metrics, out)
    return metrics
