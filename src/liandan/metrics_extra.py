"""Metrics beyond one confusion matrix: those that need probabilities or per-image counts.

Classification: top-k accuracy, one-vs-rest ROC-AUC and average precision per class,
expected calibration error. Segmentation: the per-image IoU distribution and the worst
images. Both: the most confused class pairs. :func:`classification_extras` and
:func:`segmentation_extras` return the extra ``metrics.json`` entries, which
:func:`add_extras` merges into a ``compute_metrics`` dictionary without touching its
required keys. As in :mod:`liandan.metrics`, an undefined value is ``None``.

>>> import numpy as np
>>> probs = np.array([[0.9, 0.1], [0.2, 0.8], [0.6, 0.4]])
>>> round(classification_extras(probs, np.array([0, 1, 1]), ["a", "b"])["overall"]["ece"], 6)
0.3
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np

from liandan.metrics import most_confused

__all__ = [
    "add_extras",
    "classification_extras",
    "expected_calibration_error",
    "image_iou",
    "segmentation_extras",
    "top_k_accuracy",
]

ECE_BINS = 15  # equal-width confidence bins, as in Guo et al. 2017 ("On Calibration ...")
WORST_IMAGES = 10  # names of the worst images kept in metrics.json


def top_k_accuracy(probs: np.ndarray, targets: np.ndarray, k: int) -> float | None:
    """Fraction of samples whose true class is among the ``k`` most probable ones.

    Ties are broken by class index (the lower index ranks first), deterministically.
    """
    if len(targets) == 0:
        return None
    order = np.argsort(-probs, axis=1, kind="stable")[:, :k]
    return float((order == targets[:, None]).any(axis=1).mean())


def expected_calibration_error(
    probs: np.ndarray, targets: np.ndarray, bins: int = ECE_BINS
) -> float | None:
    """ECE: sum over confidence bins of |accuracy - mean confidence| x bin share.

    Confidence is the top probability; bins are ``(i/bins, (i+1)/bins]``.
    """
    if len(targets) == 0:
        return None
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == targets
    which = np.clip(np.ceil(confidence * bins).astype(np.int64) - 1, 0, bins - 1)
    ece = 0.0
    for b in range(bins):
        members = which == b
        if members.any():
            gap = abs(float(correct[members].mean()) - float(confidence[members].mean()))
            ece += gap * float(members.mean())
    return ece


def _one_vs_rest(probs: np.ndarray, targets: np.ndarray, c: int) -> tuple[Any, Any]:
    """(ROC-AUC, average precision) of class ``c`` against the rest; ``None`` if undefined."""
    from sklearn.metrics import average_precision_score, roc_auc_score

    positive = targets == c
    n_pos = int(positive.sum())
    if n_pos == 0:
        return None, None  # no positives: neither recall nor a ROC curve exists
    ap = float(average_precision_score(positive, probs[:, c]))
    if n_pos == len(targets):
        return None, ap  # no negatives: no false-positive rate
    return float(roc_auc_score(positive, probs[:, c])), ap


def _confused(matrix: np.ndarray, classes: Sequence[str], k: int = 10) -> list[dict[str, Any]]:
    return [
        {"truth": t, "predicted": p, "count": n} for t, p, n in most_confused(matrix, classes, k)
    ]


def _mean(values: Sequence[float | None]) -> float | None:
    defined = [v for v in values if v is not None]
    return sum(defined) / len(defined) if defined else None


def classification_extras(
    probs: np.ndarray,
    targets: np.ndarray,
    classes: Sequence[str],
    *,
    matrix: np.ndarray | None = None,
) -> dict[str, Any]:
    """Extra metrics of a classifier from its class probabilities.

    Args:
        probs: ``(N, K)`` class probabilities (rows sum to 1).
        targets: ``(N,)`` true class indices.
        classes: the ``K`` class names.
        matrix: the confusion matrix, for the most confused pairs (from argmax if None).

    Returns:
        ``{"overall": {...}, "per_class": {name: {...}}, "most_confused": [...]}``:
        ``top5_accuracy`` (only with more than 5 classes), ``ece``, ``macro_roc_auc``,
        ``macro_average_precision``; per class ``roc_auc`` and ``average_precision``.
    """
    probs = np.asarray(probs, dtype=np.float64).reshape(len(targets), len(classes))
    targets = np.asarray(targets, dtype=np.int64)
    if matrix is None:
        n = len(classes)
        index = targets * n + probs.argmax(axis=1)
        matrix = np.bincount(index, minlength=n * n).reshape(n, n)
    overall: dict[str, Any] = {}
    if len(classes) > 5:
        overall["top5_accuracy"] = top_k_accuracy(probs, targets, 5)
    overall["ece"] = expected_calibration_error(probs, targets)
    per_class: dict[str, dict[str, Any]] = {}
    for c, name in enumerate(classes):
        auc, ap = _one_vs_rest(probs, targets, c)
        per_class[name] = {"roc_auc": auc, "average_precision": ap}
    overall["macro_roc_auc"] = _mean([v["roc_auc"] for v in per_class.values()])
    overall["macro_average_precision"] = _mean([v["average_precision"] for v in per_class.values()])
    return {"overall": overall, "per_class": per_class, "most_confused": _confused(matrix, classes)}


def image_iou(matrix: np.ndarray) -> float | None:
    """Mean IoU of one image: over the classes present in its truth or its prediction.

    ``None`` when nothing was counted (every pixel ignored).
    """
    m = np.asarray(matrix, dtype=np.int64)
    tp = np.diag(m)
    union = m.sum(axis=0) + m.sum(axis=1) - tp
    present = union > 0
    if not present.any():
        return None
    return float((tp[present] / union[present]).mean())


def segmentation_extras(
    names: Sequence[str],
    ious: Sequence[float | None],
    classes: Sequence[str],
    matrix: np.ndarray,
    *,
    worst: int = WORST_IMAGES,
) -> dict[str, Any]:
    """The per-image IoU distribution, the worst images and the most confused pairs.

    Args:
        names: one name per image (e.g. its file name).
        ious: the per-image IoU (:func:`image_iou`) of each image; ``None`` is skipped.
        classes: the class names.
        matrix: the total pixel confusion matrix.
        worst: how many of the worst images to name.

    Returns:
        ``{"overall": {"image_iou_mean", "image_iou_median", "image_iou_min"},
        "image_iou": {"mean", "median", "min", "max", "count"}, "worst_images":
        [{"image", "iou"}, ...], "most_confused": [...]}``.
    """
    scored = [(n, v) for n, v in zip(names, ious, strict=True) if v is not None]
    values = np.array([v for _, v in scored], dtype=np.float64)
    stats: dict[str, Any] = {"mean": None, "median": None, "min": None, "max": None}
    if values.size:
        stats = {
            "mean": float(values.mean()),
            "median": float(np.median(values)),
            "min": float(values.min()),
            "max": float(values.max()),
        }
    stats["count"] = int(values.size)
    ranked = sorted(scored, key=lambda item: (item[1], item[0]))[: max(worst, 0)]
    return {
        "overall": {f"image_iou_{k}": stats[k] for k in ("mean", "median", "min")},
        "image_iou": stats,
        "worst_images": [{"image": n, "iou": v} for n, v in ranked],
        "most_confused": _confused(matrix, classes),
    }


def add_extras(metrics: dict[str, Any], extras: dict[str, Any]) -> dict[str, Any]:
    """Merge extras into a ``compute_metrics`` dictionary (in place, and return it).

    ``overall`` and ``per_class`` entries are added beside the required keys (which are
    never replaced); other entries become top-level keys.
    """
    for key, value in extras.items():
        if key == "overall":
            for name, v in value.items():
                metrics["overall"].setdefault(name, v)
        elif key == "per_class":
            for cls, row in value.items():
                for name, v in row.items():
                    metrics["per_class"].setdefault(cls, {}).setdefault(name, v)
        else:
            metrics.setdefault(key, value)
    return metrics
