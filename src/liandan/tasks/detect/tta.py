"""Test-time augmentation for detectors: flips, boxes mapped back and fused.

:class:`FlipTTA` runs the detector on the image as it is and flipped: left-right and
upside down, or only those of the two that training augmented with (model.json's
``tta_flips``, as segmentation's ``predict.tta``), maps each pass's
boxes back to the image's frame, and fuses them per class with :func:`fuse_boxes`: boxes
of one class overlapping by more than ``iou`` are one object, whose box is the
score-weighted mean of theirs and whose score is their mean score times the share of
passes that found it (weighted boxes fusion, Solovyev et al. 2021). An object found in
one pass of three keeps a third of its score, so fusion trades the single-pass boxes
that only one view believes in for recall from the others.

It wraps the run's :class:`~liandan.tasks.detect.models.Detector` and is called the
same way (eval mode, ``(B, C, H, W)`` in, per image ``boxes``/``scores``/``labels``
out), so evaluation, image prediction and sliced raster prediction all use it.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

from liandan.tasks.detect.matching import box_iou

# as is, left-right, upside down; a model gets the flips it was trained with
FLIPS: tuple[tuple[int, ...], ...] = ((), (3,), (2,))
FUSION_IOU = 0.55  # boxes of one class overlapping more are one object (the WBF paper's)


def unflip(boxes: torch.Tensor, dims: tuple[int, ...], height: int, width: int) -> torch.Tensor:
    """Boxes ``x1 y1 x2 y2`` found on an input flipped along ``dims`` (3: left-right,
    2: upside down), in the unflipped input's frame."""
    out = boxes.clone()
    if 3 in dims:
        out[:, 0], out[:, 2] = width - boxes[:, 2], width - boxes[:, 0]
    if 2 in dims:
        out[:, 1], out[:, 3] = height - boxes[:, 3], height - boxes[:, 1]
    return out


def fuse_boxes(
    boxes: np.ndarray,
    scores: np.ndarray,
    labels: np.ndarray,
    passes: int,
    iou: float = FUSION_IOU,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Weighted boxes fusion of the detections of ``passes`` views of one image.

    Boxes are taken best first; each joins the cluster of its class whose fused box it
    overlaps most, if by more than ``iou``, else starts one. A cluster's box is the
    score-weighted mean of its members; its score their mean score times
    ``min(members, passes) / passes``. Returns the fused boxes, scores and labels, best
    first.
    """
    fused_boxes: list[np.ndarray] = []
    fused_labels: list[int] = []
    members: list[list[int]] = []
    for i in np.argsort(-scores, kind="stable").tolist():
        same = [j for j, c in enumerate(fused_labels) if c == labels[i]]
        if same:
            overlaps = box_iou(boxes[i : i + 1], np.stack([fused_boxes[j] for j in same]))[0]
            best = int(np.argmax(overlaps))
            if overlaps[best] > iou:
                j = same[best]
                members[j].append(i)
                w = scores[members[j]]
                fused_boxes[j] = (boxes[members[j]] * w[:, None]).sum(0) / max(w.sum(), 1e-12)
                continue
        fused_boxes.append(boxes[i].astype(np.float64))
        fused_labels.append(int(labels[i]))
        members.append([i])
    if not members:
        return np.zeros((0, 4)), np.zeros(0), np.zeros(0, np.int64)
    fused_scores = np.array([scores[m].mean() * min(len(m), passes) / passes for m in members])
    order = np.argsort(-fused_scores, kind="stable")
    return (
        np.stack(fused_boxes)[order],
        fused_scores[order],
        np.array(fused_labels, np.int64)[order],
    )


class FlipTTA(nn.Module):
    """A detector predicting over flips, its boxes fused (see the module docstring)."""

    def __init__(
        self,
        detector: nn.Module,
        iou: float = FUSION_IOU,
        flips: Sequence[Sequence[int]] = FLIPS[1:],
    ) -> None:
        super().__init__()
        self.detector: Any = detector  # a Detector (or any module called the same way)
        self.iou = iou
        # the image as it is, then each flip (those training used: Predictor.tta_flips)
        self.views: tuple[tuple[int, ...], ...] = ((), *(tuple(d) for d in flips))

    @property
    def postprocess(self) -> tuple[float, float]:
        return tuple(self.detector.postprocess)  # type: ignore[return-value]

    @property
    def built_postprocess(self) -> tuple[float, float]:
        return tuple(self.detector.built_postprocess)  # type: ignore[return-value]

    def forward(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        height, width = int(images.shape[-2]), int(images.shape[-1])
        views: list[list[dict[str, Any]]] = []
        for dims in self.views:
            out = self.detector(torch.flip(images, dims) if dims else images)
            views.append([{**d, "boxes": unflip(d["boxes"], dims, height, width)} for d in out])
        head = getattr(self.detector, "_postprocessor", None)
        keep = int(getattr(head, "detections_per_img", 100))
        results = []
        for per_view in zip(*views, strict=True):
            boxes, scores, labels = fuse_boxes(
                torch.cat([d["boxes"] for d in per_view]).float().cpu().numpy(),
                torch.cat([d["scores"] for d in per_view]).float().cpu().numpy(),
                torch.cat([d["labels"] for d in per_view]).cpu().numpy(),
                len(self.views),
                self.iou,
            )
            device = per_view[0]["boxes"].device
            results.append(
                {
                    "boxes": torch.from_numpy(boxes[:keep]).float().to(device),
                    "scores": torch.from_numpy(scores[:keep]).float().to(device),
                    "labels": torch.from_numpy(labels[:keep]).to(device),
                }
            )
        return results
