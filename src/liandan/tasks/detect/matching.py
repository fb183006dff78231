"""Greedy COCO matching of one image's detections of one class, as pycocotools does it.

:func:`evaluate_image_class` is ``COCOeval.evaluateImg`` for every area range at once:
detections sorted by score (stable) and cut at ``max_det``, then at each IoU threshold
each detection in turn takes the best free ground truth box (see
:mod:`liandan.tasks.detect.metrics` for the rules and why they are pycocotools').
:mod:`liandan.tasks.detect.metrics` accumulates the results over images.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

IOU_THRESHOLDS = np.linspace(0.5, 0.95, 10)  # .50:.05:.95, built as pycocotools builds it
RECALL_POINTS = np.linspace(0.0, 1.0, 101)
AREA_RANGES = {"all": (0.0, 1e10), "small": (0.0, 32.0**2), "medium": (32.0**2, 96.0**2)}
AREA_RANGES["large"] = (96.0**2, 1e10)


@dataclass
class Detections:
    """Boxes of one image: predictions (with scores) or ground truth.

    Args:
        boxes: ``(N, 4)`` absolute pixel ``x1 y1 x2 y2``.
        scores: ``(N,)`` confidences (ignored for ground truth).
        classes: ``(N,)`` class indices in ``0..K-1``.
        iscrowd: ``(N,)`` crowd flags of ground truth boxes; None: no crowd.
        areas: ``(N,)`` areas that sort ground truth into small/medium/large; None:
            box areas.
    """

    boxes: np.ndarray
    scores: np.ndarray
    classes: np.ndarray
    iscrowd: np.ndarray | None = None
    areas: np.ndarray | None = None


def box_iou(dt: np.ndarray, gt: np.ndarray, crowd: np.ndarray | None = None) -> np.ndarray:
    """``(D, G)`` IoU of boxes ``dt`` with boxes ``gt`` (``x1 y1 x2 y2``).

    For a crowd ``gt`` box the overlap is intersection over the ``dt`` box's area.
    """
    lt = np.maximum(dt[:, None, :2], gt[None, :, :2])
    rb = np.minimum(dt[:, None, 2:], gt[None, :, 2:])
    wh = np.clip(rb - lt, 0, None)
    inter = wh[..., 0] * wh[..., 1]  # (D, G)
    area_dt = (dt[:, 2] - dt[:, 0]) * (dt[:, 3] - dt[:, 1])
    area_gt = (gt[:, 2] - gt[:, 0]) * (gt[:, 3] - gt[:, 1])
    union = area_dt[:, None] + area_gt[None, :] - inter
    if crowd is not None:
        union = np.where(crowd[None, :], area_dt[:, None], union)
    return np.divide(inter, union, out=np.zeros_like(inter), where=inter > 0)


@dataclass
class Evaluated:
    """One image and class: detections by score, matched at every threshold and range."""

    dt_index: np.ndarray  # (D,) positions in the image's predictions, best score first
    scores: np.ndarray  # (D,)
    gt_index: np.ndarray  # (G,) positions in the image's truth
    dt_gt: np.ndarray  # (A, T, D) matched ground truth (index into gt_index), -1 none
    dt_ignored: np.ndarray  # (A, T, D) matched to an ignored box, or unmatched off-range
    gt_ignored: np.ndarray  # (A, G) crowd, or off the area range
    gt_counted: np.ndarray  # (A,) ground truth boxes that count (not ignored)


def match_greedy(ious: np.ndarray, gt_ignored: np.ndarray, crowd: np.ndarray) -> np.ndarray:
    """``(T, D)`` the ground truth each detection takes at each IoU threshold (-1 none).

    COCOeval.evaluateImg's loop, vectorised over thresholds and ground truth: the best
    free box among those that count, else among the ignored ones; the later on ties.
    """
    n_dt, n_gt = ious.shape
    thresholds = np.minimum(IOU_THRESHOLDS, 1 - 1e-10)[:, None]  # (T, 1)
    taken = np.zeros((len(IOU_THRESHOLDS), n_gt), bool)
    dt_gt = np.full((len(IOU_THRESHOLDS), n_dt), -1)
    reachable = (ious >= thresholds[0]).any(axis=1)
    for d in np.flatnonzero(reachable):
        ok = (~taken | crowd) & (ious[d] >= thresholds)  # (T, G)
        chosen = np.full(len(IOU_THRESHOLDS), -1)
        for group in (gt_ignored, ~gt_ignored):  # the counted group last: it wins
            cand = ok & group
            best = np.where(cand, ious[d], -1.0)[:, ::-1].argmax(axis=1)  # last max
            chosen = np.where(cand.any(axis=1), n_gt - 1 - best, chosen)
        hit = np.flatnonzero(chosen >= 0)
        dt_gt[hit, d] = chosen[hit]
        taken[hit, chosen[hit]] = True
    return dt_gt


def evaluate_image_class(
    dt: Detections, gt: Detections, dt_index: np.ndarray, gt_index: np.ndarray, max_det: int
) -> Evaluated:
    order = np.argsort(-dt.scores[dt_index], kind="mergesort")[:max_det]
    dt_index = dt_index[order]
    dt_boxes, gt_boxes = dt.boxes[dt_index], gt.boxes[gt_index]
    crowd = gt.iscrowd[gt_index] if gt.iscrowd is not None else np.zeros(len(gt_index), bool)
    wh = gt_boxes[:, 2:] - gt_boxes[:, :2]
    gt_area = gt.areas[gt_index] if gt.areas is not None else wh[:, 0] * wh[:, 1]
    wh = dt_boxes[:, 2:] - dt_boxes[:, :2]
    dt_area = wh[:, 0] * wh[:, 1]
    ious = box_iou(dt_boxes, gt_boxes, crowd)
    n_a, n_t, n_d = len(AREA_RANGES), len(IOU_THRESHOLDS), len(dt_index)
    dt_gt = np.full((n_a, n_t, n_d), -1)
    dt_ignored = np.zeros((n_a, n_t, n_d), bool)
    gt_ignored = np.zeros((n_a, len(gt_index)), bool)
    for a, (lo, hi) in enumerate(AREA_RANGES.values()):
        gt_ignored[a] = crowd | (gt_area < lo) | (gt_area > hi)
        if n_d and len(gt_index):
            dt_gt[a] = match_greedy(ious, gt_ignored[a], crowd)
        matched = dt_gt[a] >= 0
        ignored_gt = np.concatenate([gt_ignored[a], [False]])[dt_gt[a]]  # -1 -> False
        off_range = (dt_area < lo) | (dt_area > hi)
        dt_ignored[a] = (matched & ignored_gt) | (~matched & off_range[None, :])
    counted = (~gt_ignored).sum(axis=1)
    return Evaluated(
        dt_index, dt.scores[dt_index], gt_index, dt_gt, dt_ignored, gt_ignored, counted
    )
