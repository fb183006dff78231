"""``liandan score``: metrics for predictions made by anything against a ground truth.

Inputs: two folders of masks paired by file stem (PNG or GeoTIFF; a ``preview/``
subfolder is ignored), two mask files, or two CSVs with ``image`` and ``label``
columns (classification). Classes come from a classes.yaml beside the truth (in the
folder or its parent); both sides are mapped through the same values.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np
import torch

from liandan.data.layouts import ClassSpec, class_spec_from_yaml, read_classes_yaml
from liandan.data.readers import is_image_file, read_mask
from liandan.data.scan import MaskMapper, infer_classes
from liandan.errors import DataError
from liandan.metrics import ConfusionMatrix, compute_metrics


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


def _classes_for(truth: Path, masks: dict[Path, np.ndarray], ignore_index: int | None) -> ClassSpec:
    folder = truth if truth.is_dir() else truth.parent
    data = read_classes_yaml(folder)
    if data is not None:
        return class_spec_from_yaml(data, ignore_index)
    spec, _ = infer_classes(masks, ignore_index)
    return spec


def score_masks(pred: Path, truth: Path, *, ignore_index: int | None = None) -> dict[str, Any]:
    pairs = _pairs(pred, truth)
    truths = {t: read_mask(t) for _, t in pairs}
    classes = _classes_for(truth, truths, ignore_index)
    mapper = MaskMapper(classes)
    # predictions never hold the ignore value as a class: map them without it
    pred_mapper = MaskMapper(ClassSpec(classes.names, classes.values, classes.colors))
    cm = ConfusionMatrix(classes.num_classes, ignore_index=-1)
    problems: list[str] = []
    for p, t in pairs:
        pm = read_mask(p)
        tm = truths[t]
        if pm.shape[:2] != tm.shape[:2]:
            problems.append(
                f"{p}: {pm.shape[1]}x{pm.shape[0]}, truth is {tm.shape[1]}x{tm.shape[0]}"
            )
            continue
        mp, mt = pred_mapper.map(pm), mapper.map(tm)
        for name, arr, raw, m in (("prediction", mp, pm, pred_mapper), ("truth", mt, tm, mapper)):
            if (arr == MaskMapper.UNKNOWN).any():
                vals = ", ".join(m.unknown_values(raw, arr))
                problems.append(
                    f"{p if name == 'prediction' else t}: value(s) {vals} are not a class"
                )
        if problems:
            continue
        mt = mt.astype(np.int64)
        mp = mp.astype(np.int64)
        mp[mt < 0] = 0  # ignored truth pixels are dropped by the matrix anyway
        mp[mp < 0] = 0
        cm.update(torch.from_numpy(mp), torch.from_numpy(mt))
    if problems:
        raise DataError(
            "cannot score these files",
            items=problems,
            hint="masks must have the same size and use the classes' values",
        )
    return compute_metrics(cm.numpy(), classes.names, task="segment", split="score")


def _read_labels(path: Path) -> dict[str, str]:
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    if not rows or not {"image", "label"} <= set(rows[0]):
        raise DataError("a CSV needs the columns image and label", where=path)
    return {Path(r["image"]).name: r["label"] for r in rows}


def score_labels(pred: Path, truth: Path) -> dict[str, Any]:
    p, t = _read_labels(pred), _read_labels(truth)
    missing = [f"{name}: in {truth.name} but not in {pred.name}" for name in t if name not in p]
    if missing:
        raise DataError("predictions missing for some images", items=missing)
    names = sorted(set(t.values()) | set(p.values()))
    index = {n: i for i, n in enumerate(names)}
    cm = ConfusionMatrix(len(names), ignore_index=None)
    keys = sorted(t)
    cm.update(torch.tensor([index[p[k]] for k in keys]), torch.tensor([index[t[k]] for k in keys]))
    return compute_metrics(cm.numpy(), names, task="classify", split="score")


def score(
    pred: str | Path, truth: str | Path, *, ignore_index: int | None = None
) -> dict[str, Any]:
    """Metrics (the metrics.json schema) of predictions against ground truth.

    >>> liandan.score("maps/", "data/val/masks/")["overall"]["mean_iou"]  # doctest: +SKIP
    0.78
    """
    pred, truth = Path(pred), Path(truth)
    for p in (pred, truth):
        if not p.exists():
            raise DataError("not found", where=p)
    if pred.suffix.lower() == ".csv" or truth.suffix.lower() == ".csv":
        return score_labels(pred, truth)
    return score_masks(pred, truth, ignore_index=ignore_index)
