"""COCO-style detection metrics in numpy, agreeing with pycocotools.

:func:`evaluate_detections` takes the ground truth and the predictions of each image
(absolute pixel ``x1 y1 x2 y2`` boxes, 0-based class indices, see
:mod:`liandan.tasks.detect.boxes`) and returns a :class:`DetectionMetrics`. It follows
pycocotools' ``COCOeval`` (bbox) step by step, and ``tests/test_detect_metrics.py``
checks every number against it:

- per image and class, detections sorted by score (ties keep their input order) and
  only the ``max_detections`` (100) best kept: the limit is per image *and class*, as in
  pycocotools; a detection beyond it counts nowhere;
- greedy matching at each IoU threshold .50:.05:.95: each detection in turn takes the
  best-overlapping free ground truth box (the later one on equal IoU), preferring boxes
  that count over ignored ones;
- crowd boxes (``iscrowd``) and boxes outside the area range are ignored: a detection
  matched to them is neither a true nor a false positive, a crowd box may absorb any
  number of detections, and its overlap is intersection over the *detection's* area;
- area ranges all / small (< 32² px) / medium / large (> 96²) by the truth's
  ``areas`` when given (COCO's ``area`` field: the mask's area for instance datasets),
  else the box area; both ends of a range count (as in pycocotools);
- 101-point interpolated precision per IoU threshold, class, area range and maximum
  detections (1, 10, ``max_detections``); AP is their mean;
- **a class with no (non-ignored) ground truth has AP -1**, as in pycocotools, and is
  left out of every mean: its false positives lower no AP. When no class has ground
  truth, mAP is -1 too. :meth:`DetectionMetrics.summary` writes -1 as None (JSON null).

At one ``score_threshold`` and IoU .5 (area all), the same matches give per-class
true/false positives and misses, precision, recall and F1 (-1 for a class absent from
the truth, as its AP), and a ``(K + 1) x (K + 1)`` confusion matrix (rows = truth,
columns = prediction, index ``K`` = background): a matched detection is its class's
diagonal cell; then the false positives and missed boxes left over are paired across
classes, highest IoU first (IoU >= .5), into off-diagonal cells; what is still left is
a missed box (truth row, background column) or a false alarm (background row). So row
``c`` sums to the class's ground truth boxes, column ``c`` to its detections above the
threshold, and the diagonal equals the true positives. Crowd boxes, and the detections
they absorb, are not counted.

>>> truth = [Detections(np.array([[0, 0, 10, 10]]), np.ones(1), np.array([0]))]
>>> preds = [Detections(np.array([[0, 0, 10, 9]]), np.array([0.9]), np.array([0]))]
>>> round(evaluate_detections(truth, preds, num_classes=1).map50, 6)
1.0
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from liandan.tasks.detect.matching import (
    AREA_RANGES,
    IOU_THRESHOLDS,
    RECALL_POINTS,
    Detections,
    Evaluated,
    box_iou,
    evaluate_image_class,
)

__all__ = [
    "AREA_RANGES",
    "IOU_THRESHOLDS",
    "RECALL_POINTS",
    "DetectionMetrics",
    "Detections",
    "box_iou",
    "evaluate_detections",
]

# 0.25: the confidence Ultralytics draws its confusion matrix at
DEFAULT_SCORE_THRESHOLD = 0.25


def _check(items: Sequence[Any], num_classes: int, what: str, scores: bool) -> list[Detections]:
    out, bad = [], []
    for i, item in enumerate(items):
        boxes = np.asarray(item.boxes, dtype=np.float64)
        classes = np.asarray(item.classes).astype(np.int64).reshape(-1)
        n = len(classes)
        s = np.asarray(item.scores, np.float64).reshape(-1) if scores else np.ones(n)
        crowd, areas = getattr(item, "iscrowd", None), getattr(item, "areas", None)
        crowd = None if crowd is None else np.asarray(crowd, bool).reshape(-1)
        areas = None if areas is None else np.asarray(areas, np.float64).reshape(-1)
        if boxes.size == 0:
            boxes = boxes.reshape(0, 4)
        if boxes.ndim != 2 or boxes.shape[1] != 4 or len(boxes) != n or len(s) != n:
            bad.append(f"{what}[{i}]: boxes {boxes.shape}, classes ({n},), scores ({len(s)},)")
        elif any(x is not None and len(x) != n for x in (crowd, areas)):
            bad.append(f"{what}[{i}]: iscrowd/areas do not match its {n} boxes")
        elif not (np.isfinite(boxes).all() and np.isfinite(s).all()):
            bad.append(f"{what}[{i}]: boxes or scores that are not finite numbers")
        elif n and (classes.min() < 0 or classes.max() >= num_classes):
            bad.append(
                f"{what}[{i}]: class ids {sorted(set(classes.tolist()))} not all in 0..{num_classes - 1}"
            )
        out.append(Detections(boxes, s, classes, crowd, areas))
    if bad:
        raise ValueError(f"bad {what} for detection metrics:\n  " + "\n  ".join(bad))
    return out


@dataclass
class DetectionMetrics:
    """What :func:`evaluate_detections` measured (see the module docstring).

    ``coco_precision`` is pycocotools' ``eval["precision"]`` ``(T, R, K, A, M)`` and
    ``coco_recall`` its ``eval["recall"]`` ``(T, K, A, M)`` (T IoU thresholds, R recall
    points, K classes, A area ranges all/small/medium/large, M maximum detections
    1/10/``max_detections``), -1 where a class has no ground truth. ``stats`` are
    ``COCOeval.stats``: AP, AP50, AP75, AP small/medium/large, AR1, AR10, AR100, AR
    small/medium/large.
    """

    coco_precision: np.ndarray
    coco_recall: np.ndarray
    stats: np.ndarray
    score_threshold: float
    tp: np.ndarray  # (K,) at IoU .5 and the score threshold
    fp: np.ndarray
    fn: np.ndarray
    confusion: np.ndarray  # (K + 1, K + 1), rows truth, columns prediction, K background
    max_detections: int = 100

    @property
    def map(self) -> float:
        """mAP@[.5:.95] over the classes with ground truth (-1 when none has any)."""
        return float(self.stats[0])

    @property
    def map50(self) -> float:
        """mAP at IoU .5."""
        return float(self.stats[1])

    @property
    def map75(self) -> float:
        """mAP at IoU .75."""
        return float(self.stats[2])

    @property
    def map_small(self) -> float:
        """mAP@[.5:.95] of boxes below 32² px (-1 when there are none)."""
        return float(self.stats[3])

    @property
    def map_medium(self) -> float:
        """mAP@[.5:.95] of boxes from 32² to 96² px."""
        return float(self.stats[4])

    @property
    def map_large(self) -> float:
        """mAP@[.5:.95] of boxes above 96² px."""
        return float(self.stats[5])

    def class_ap(self, iou: float | None = None) -> np.ndarray:
        """``(K,)`` AP of each class over IoU .50:.95, or at one of those thresholds;
        -1 for a class without ground truth."""
        p = self.coco_precision[..., 0, -1]  # (T, R, K), area all, most detections
        if iou is not None:
            at = np.flatnonzero(np.isclose(IOU_THRESHOLDS, iou))
            if not at.size:
                raise ValueError(f"IoU {iou} is not one of .50:.05:.95")
            p = p[at]
        return np.where((p > -1).all(axis=(0, 1)), p.mean(axis=(0, 1)), -1.0)

    def _counted(self) -> np.ndarray:
        return (self.tp + self.fn) > 0

    @property
    def class_precision(self) -> np.ndarray:
        """``(K,)`` TP / (TP + FP) at the score threshold (0 without detections)."""
        p = self.tp / np.maximum(1, self.tp + self.fp)
        return np.where(self._counted(), p, -1.0)

    @property
    def class_recall(self) -> np.ndarray:
        """``(K,)`` TP / ground truth boxes at the score threshold."""
        return np.where(self._counted(), self.tp / np.maximum(1, self.tp + self.fn), -1.0)

    @property
    def class_f1(self) -> np.ndarray:
        """``(K,)`` 2TP / (2TP + FP + FN) at the score threshold."""
        f1 = 2 * self.tp / np.maximum(1, 2 * self.tp + self.fp + self.fn)
        return np.where(self._counted(), f1, -1.0)

    @property
    def precision(self) -> float:
        """All classes pooled: TP / detections above the threshold; -1 without any."""
        tp, fp = int(self.tp.sum()), int(self.fp.sum())
        return tp / (tp + fp) if tp + fp else -1.0

    @property
    def recall(self) -> float:
        """All classes pooled: TP / ground truth boxes; -1 without any."""
        tp, fn = int(self.tp.sum()), int(self.fn.sum())
        return tp / (tp + fn) if tp + fn else -1.0

    @property
    def f1(self) -> float:
        """All classes pooled: 2TP / (2TP + FP + FN); -1 with neither boxes nor detections."""
        tp, fp, fn = int(self.tp.sum()), int(self.fp.sum()), int(self.fn.sum())
        return 2 * tp / (2 * tp + fp + fn) if tp + fp + fn else -1.0

    def summary(self, class_names: Sequence[str]) -> dict[str, Any]:
        """The metrics as plain JSON-safe values; -1 (undefined) becomes None."""

        def num(x: float) -> float | None:
            return None if x == -1 else round(float(x), 6)

        names = "map map50 map75 map_small map_medium map_large".split()
        names += "ar1 ar10 ar100 ar_small ar_medium ar_large".split()
        per_class = {}
        columns = [self.class_ap(), self.class_ap(0.5), self.class_precision]
        columns += [self.class_recall, self.class_f1]
        for k, name in enumerate(class_names):
            ap, ap50, p, r, f1 = (num(c[k]) for c in columns)
            per_class[name] = {"ap": ap, "ap50": ap50, "precision": p, "recall": r, "f1": f1}
            per_class[name] |= {"tp": int(self.tp[k]), "fp": int(self.fp[k]), "fn": int(self.fn[k])}
        return {
            "overall": {n: num(v) for n, v in zip(names, self.stats, strict=True)}
            | {"precision": num(self.precision), "recall": num(self.recall), "f1": num(self.f1)}
            | {"score_threshold": self.score_threshold, "max_detections": self.max_detections},
            "per_class": per_class,
            "confusion": self.confusion.tolist(),
        }


def _accumulate(
    evaluated: list[list[Evaluated]], max_dets: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """COCOeval.accumulate: precision ``(T, R, K, A, M)`` and recall ``(T, K, A, M)``."""
    n_t, n_r, n_k, n_a = len(IOU_THRESHOLDS), len(RECALL_POINTS), len(evaluated), len(AREA_RANGES)
    precision = -np.ones((n_t, n_r, n_k, n_a, len(max_dets)))
    recall = -np.ones((n_t, n_k, n_a, len(max_dets)))
    for k, per_image in enumerate(evaluated):
        if not per_image:
            continue
        for a in range(n_a):
            counted = sum(int(e.gt_counted[a]) for e in per_image)
            if counted == 0:
                continue
            for m, max_det in enumerate(max_dets):
                scores = np.concatenate([e.scores[:max_det] for e in per_image])
                # ties across images: earlier image first (pycocotools sorts image ids)
                order = np.argsort(-scores, kind="mergesort")
                matched = np.concatenate([e.dt_gt[a, :, :max_det] >= 0 for e in per_image], 1)
                ignored = np.concatenate([e.dt_ignored[a, :, :max_det] for e in per_image], 1)
                matched, ignored = matched[:, order], ignored[:, order]
                tp = np.cumsum(matched & ~ignored, axis=1).astype(np.float64)
                fp = np.cumsum(~matched & ~ignored, axis=1).astype(np.float64)
                n_d = tp.shape[1]
                rc = tp / counted
                pr = tp / (fp + tp + np.spacing(1))
                recall[:, k, a, m] = rc[:, -1] if n_d else 0
                pr = np.maximum.accumulate(pr[:, ::-1], axis=1)[:, ::-1]  # precision envelope
                for t in range(n_t):
                    at = np.searchsorted(rc[t], RECALL_POINTS, side="left")
                    q = np.zeros(n_r)
                    reached = at < n_d
                    q[reached] = pr[t, at[reached]]
                    precision[t, :, k, a, m] = q
    return precision, recall


def _mean(x: np.ndarray) -> float:
    valid = x[x > -1]
    return float(np.mean(valid)) if valid.size else -1.0


def _stats(precision: np.ndarray, recall: np.ndarray) -> np.ndarray:
    """COCOeval.summarize's twelve numbers (areas all/small/medium/large = 0..3)."""
    t50, t75 = 0, 5  # IOU_THRESHOLDS[0] == .5, IOU_THRESHOLDS[5] == .75
    p, r = precision, recall
    return np.array(
        [_mean(p[:, :, :, 0, -1]), _mean(p[t50, :, :, 0, -1]), _mean(p[t75, :, :, 0, -1])]
        + [_mean(p[:, :, :, a, -1]) for a in (1, 2, 3)]
        + [_mean(r[:, :, 0, m]) for m in range(3)]
        + [_mean(r[:, :, a, -1]) for a in (1, 2, 3)]
    )


def _at_threshold(
    evaluated: list[list[tuple[int, Evaluated]]],
    truth: list[Detections],
    preds: list[Detections],
    threshold: float,
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """TP, FP, FN per class and the confusion matrix, at IoU .5 over area all."""
    n_k = len(evaluated)
    tp, fp, fn = (np.zeros(n_k, np.int64) for _ in range(3))
    cm = np.zeros((n_k + 1, n_k + 1), np.int64)
    left_dt: dict[int, list[int]] = {}  # image -> false positives (prediction positions)
    left_gt: dict[int, list[int]] = {}  # image -> missed boxes (truth positions)
    for k, per_image in enumerate(evaluated):
        for i, e in per_image:
            keep = e.scores >= threshold
            match, ignored = e.dt_gt[0, 0], e.dt_ignored[0, 0]
            hits = keep & (match >= 0) & ~ignored
            misses = keep & (match < 0) & ~ignored
            tp[k] += np.count_nonzero(hits)
            fp[k] += np.count_nonzero(misses)
            left_dt.setdefault(i, []).extend(e.dt_index[misses].tolist())
            # counted boxes no detection above the threshold took (crowd ones never count)
            missed = ~e.gt_ignored[0]
            missed[match[hits]] = False
            fn[k] += np.count_nonzero(missed)
            left_gt.setdefault(i, []).extend(e.gt_index[missed].tolist())
    cm[np.arange(n_k), np.arange(n_k)] = tp
    for i in sorted(set(left_dt) | set(left_gt)):
        dts, gts = np.array(left_dt.get(i, []), int), np.array(left_gt.get(i, []), int)
        dt_cls, gt_cls = preds[i].classes[dts], truth[i].classes[gts]
        ious = box_iou(preds[i].boxes[dts], truth[i].boxes[gts])
        pairs = np.argwhere(ious >= 0.5)
        pairs = pairs[np.argsort(-ious[pairs[:, 0], pairs[:, 1]], kind="mergesort")]
        used_dt, used_gt = set(), set()
        for d, g in pairs.tolist():
            if d not in used_dt and g not in used_gt:
                used_dt.add(d)
                used_gt.add(g)
                cm[gt_cls[g], dt_cls[d]] += 1
        for d in set(range(len(dts))) - used_dt:
            cm[n_k, dt_cls[d]] += 1
        for g in set(range(len(gts))) - used_gt:
            cm[gt_cls[g], n_k] += 1
    return tp, fp, fn, cm


def evaluate_detections(
    truth: Sequence[Any],
    predictions: Sequence[Any],
    num_classes: int,
    score_threshold: float = DEFAULT_SCORE_THRESHOLD,
    max_detections: int = 100,
) -> DetectionMetrics:
    """COCO mAP, precision/recall/F1 and the confusion matrix of a set of images.

    Args:
        truth: per image, an object with ``boxes`` ``(N, 4)`` and ``classes`` ``(N,)``,
            and optionally ``iscrowd`` and ``areas`` (an
            :class:`~liandan.tasks.detect.boxes.ImageBoxes` or a :class:`Detections`).
        predictions: per image, in the same order, ``boxes``, ``scores`` and ``classes``.
        num_classes: K; class ids are ``0..K-1``.
        score_threshold: detections at or above it count for precision, recall, F1
            and the confusion matrix (mAP uses every score).
        max_detections: per image and class, as pycocotools' largest ``maxDets``.

    Raises:
        ValueError: naming every image whose boxes, classes or scores are malformed,
            or when ``truth`` and ``predictions`` differ in length.
    """
    if len(truth) != len(predictions):
        raise ValueError(
            f"{len(truth)} images of ground truth but {len(predictions)} of predictions"
        )
    gts = _check(truth, num_classes, "truth", scores=False)
    dts = _check(predictions, num_classes, "predictions", scores=True)
    by_class: list[list[tuple[int, Evaluated]]] = [[] for _ in range(num_classes)]
    for i, (gt, dt) in enumerate(zip(gts, dts, strict=True)):
        for k in np.union1d(gt.classes, dt.classes).tolist():
            dt_index = np.flatnonzero(dt.classes == k)
            gt_index = np.flatnonzero(gt.classes == k)
            by_class[k].append(
                (i, evaluate_image_class(dt, gt, dt_index, gt_index, max_detections))
            )
    max_dets = [1, 10, max_detections]
    precision, recall = _accumulate([[e for _, e in per] for per in by_class], max_dets)
    tp, fp, fn, cm = _at_threshold(by_class, gts, dts, score_threshold)
    return DetectionMetrics(
        precision,
        recall,
        _stats(precision, recall),
        score_threshold,
        tp,
        fp,
        fn,
        cm,
        max_detections,
    )
