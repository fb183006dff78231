"""Export a one-stage detector (FCOS, RetinaNet) and predict from the export.

Non-maximum suppression and top-k selection depend on the data (how many boxes pass),
which exported graphs handle poorly; so, as most detection exports do, the exported
network stops before them. :class:`DenseDetector` is the detector for one input side
up to its dense outputs, one row per anchor location of every pyramid level (finest
first):

- ``boxes`` ``(batch, A, 4)``: decoded ``x1 y1 x2 y2`` in input pixels (not clipped);
- ``scores`` ``(batch, A, K)``: each class's confidence (FCOS: ``sqrt(sigmoid(class) *
  sigmoid(centerness))``; RetinaNet: ``sigmoid(class)``).

:func:`postprocess` turns them into detections with the steps of torchvision's own
``postprocess_detections``, per image: per level (``level_sizes`` rows each), the
scores above the score floor, the ``topk_candidates`` best of them, their boxes clipped
to the input, class-wise non-maximum suppression at the NMS IoU, and the
``detections_per_img`` best. model.json's ``export.postprocess`` records these
numbers, so any program can do the same; :class:`ExportedDetector` does it for
``liandan predict EXPORT_DIR``. :func:`check_export` measures the whole pipeline
against the PyTorch detector before an export is kept.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import nn

# an export is kept when its pipeline finds the PyTorch detector's boxes
MATCH_IOU = 0.9  # a box counts as found again at this IoU or more, same class
MIN_MATCHED = 0.99  # ... for at least this share of the PyTorch detector's boxes
SCORE_TOLERANCE = 1e-4  # max |score_export - score_eager| over the dense scores
OUTPUT_NAMES = ["boxes", "scores"]


class DenseDetector(nn.Module):
    """The dense outputs of a :class:`~liandan.tasks.detect.models.Detector` (see the
    module docstring) for inputs of ``height x width``."""

    def __init__(self, detector: Any, height: int, width: int, in_channels: int) -> None:
        super().__init__()
        from torchvision.models.detection.image_list import ImageList

        model = detector.model
        self.backbone, self.head, self.box_coder = model.backbone, model.head, model.box_coder
        self.fcos = detector.arch == "fcos"
        with torch.no_grad():
            dummy = torch.zeros(1, in_channels, height, width)
            features = list(model.backbone(dummy).values())
            anchors = model.anchor_generator(ImageList(dummy, [(height, width)]), features)[0]
        per_location = anchors.shape[0] // sum(f.shape[-2] * f.shape[-1] for f in features)
        self.level_sizes = [int(f.shape[-2] * f.shape[-1] * per_location) for f in features]
        self.register_buffer("anchors", anchors.float(), persistent=False)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        features = list(self.backbone(x).values())
        out = self.head(features)
        scores = torch.sigmoid(out["cls_logits"])
        if self.fcos:
            scores = torch.sqrt(scores * torch.sigmoid(out["bbox_ctrness"]))
        codes = out["bbox_regression"]
        anchors: torch.Tensor = self.anchors  # type: ignore[assignment]
        if self.fcos:  # BoxLinearCoder decodes any leading dimensions
            return self.box_coder.decode(codes, anchors), scores
        return _decode_deltas(codes, anchors, self.box_coder), scores


def _decode_deltas(codes: torch.Tensor, anchors: torch.Tensor, coder: Any) -> torch.Tensor:
    """RetinaNet's ``BoxCoder.decode_single`` over ``(N, A, 4)`` codes at once (its own
    code flattens the batch, which fixes the exported batch size): the same operations
    in the same order."""
    widths = anchors[:, 2] - anchors[:, 0]
    heights = anchors[:, 3] - anchors[:, 1]
    ctr_x = anchors[:, 0] + 0.5 * widths
    ctr_y = anchors[:, 1] + 0.5 * heights
    wx, wy, ww, wh = coder.weights
    dx, dy = codes[..., 0] / wx, codes[..., 1] / wy
    dw = torch.clamp(codes[..., 2] / ww, max=coder.bbox_xform_clip)
    dh = torch.clamp(codes[..., 3] / wh, max=coder.bbox_xform_clip)
    pred_ctr_x = dx * widths + ctr_x
    pred_ctr_y = dy * heights + ctr_y
    half_w = 0.5 * (torch.exp(dw) * widths)
    half_h = 0.5 * (torch.exp(dh) * heights)
    return torch.stack(
        (pred_ctr_x - half_w, pred_ctr_y - half_h, pred_ctr_x + half_w, pred_ctr_y + half_h), -1
    )


def postprocess(
    boxes: torch.Tensor,
    scores: torch.Tensor,
    settings: dict[str, Any],
    height: int,
    width: int,
) -> list[dict[str, torch.Tensor]]:
    """Detections of each image from dense ``boxes`` ``(N, A, 4)`` and ``scores``
    ``(N, A, K)`` (see the module docstring); ``settings``: model.json's
    ``export.postprocess`` (``level_sizes``, ``score_floor``, ``topk_candidates``,
    ``nms_iou``, ``detections_per_img``)."""
    from torchvision.ops import batched_nms, clip_boxes_to_image

    out = []
    k = scores.shape[-1]
    for image_boxes, image_scores in zip(boxes, scores, strict=True):
        kept_boxes, kept_scores, kept_labels = [], [], []
        for level_boxes, level_scores in zip(
            image_boxes.split(settings["level_sizes"]),
            image_scores.split(settings["level_sizes"]),
            strict=True,
        ):
            flat = level_scores.flatten()
            where = torch.where(flat > settings["score_floor"])[0]
            top, order = flat[where].topk(min(len(where), int(settings["topk_candidates"])))
            where = where[order]
            kept_boxes.append(clip_boxes_to_image(level_boxes[where // k], (height, width)))
            kept_scores.append(top)
            kept_labels.append(where % k)
        b, s, c = torch.cat(kept_boxes), torch.cat(kept_scores), torch.cat(kept_labels)
        keep = batched_nms(b, s, c, float(settings["nms_iou"]))[
            : int(settings["detections_per_img"])
        ]
        out.append({"boxes": b[keep], "scores": s[keep], "labels": c[keep]})
    return out


def postprocess_settings(detector: Any, dense: DenseDetector) -> dict[str, Any]:
    """model.json's ``export.postprocess`` for ``detector`` as built."""
    head = detector._postprocessor
    floor, nms_iou = detector.built_postprocess
    return {
        "level_sizes": dense.level_sizes,
        "score_floor": floor,
        "topk_candidates": int(head.topk_candidates),
        "nms_iou": nms_iou,
        "detections_per_img": int(head.detections_per_img),
        "steps": "per level: scores > score_floor, the topk_candidates best; boxes clipped "
        "to the input; class-wise NMS at nms_iou; the detections_per_img best",
    }


class ExportedDetector(nn.Module):
    """An exported :class:`DenseDetector` (ONNX or TorchScript, see
    :func:`~liandan.exporting.load_export`) called like a
    :class:`~liandan.tasks.detect.models.Detector`: ``(B, C, H, W)`` in, per image
    ``boxes``/``scores``/``labels`` out, with the same score floor and NMS settings."""

    def __init__(self, dense: nn.Module, meta: dict[str, Any]) -> None:
        super().__init__()
        self.dense = dense
        self.settings = dict(meta["export"]["postprocess"])
        self.built_postprocess = (
            float(self.settings["score_floor"]),
            float(self.settings["nms_iou"]),
        )

    @property
    def postprocess(self) -> tuple[float, float]:
        return float(self.settings["score_floor"]), float(self.settings["nms_iou"])

    def set_postprocess(self, score_floor: float | None, nms_iou: float | None) -> None:
        floor, iou = self.built_postprocess
        self.settings["score_floor"] = floor if score_floor is None else float(score_floor)
        self.settings["nms_iou"] = iou if nms_iou is None else float(nms_iou)

    def forward(self, images: torch.Tensor) -> list[dict[str, torch.Tensor]]:
        boxes, scores = self.dense(images)
        h, w = int(images.shape[-2]), int(images.shape[-1])
        return postprocess(boxes.float(), scores.float(), self.settings, h, w)


def _matched_share(
    truth: Sequence[dict[str, torch.Tensor]], found: Sequence[dict[str, torch.Tensor]]
) -> float:
    """The share of ``truth``'s boxes that ``found`` has again (same class, IoU >= MATCH_IOU,
    each found box used once)."""
    from torchvision.ops import box_iou

    total = matched = 0
    for t, f in zip(truth, found, strict=True):
        total += len(t["boxes"])
        if not len(t["boxes"]) or not len(f["boxes"]):
            continue
        iou = box_iou(t["boxes"], f["boxes"])
        # a box of zero area (clipped at the border) has no IoU: found again where equal
        same = (t["boxes"][:, None, :] - f["boxes"][None, :, :]).abs().amax(-1) < 1e-2
        iou = torch.where(torch.isnan(iou), same.float(), iou)
        iou = iou * (t["labels"][:, None] == f["labels"][None, :])
        used = torch.zeros(len(f["boxes"]), dtype=torch.bool)
        for row in iou:
            row = row.masked_fill(used, 0)
            best = int(row.argmax())
            if row[best] >= MATCH_IOU:
                used[best] = True
                matched += 1
    return matched / total if total else 1.0


def check_export(
    detector: Any,
    dense: DenseDetector,
    runner: Callable[[torch.Tensor], list[Any]],
    meta: dict[str, Any],
    size: tuple[int, int],
    generator: torch.Generator,
) -> dict[str, float]:
    """Run the export and the PyTorch detector on the same inputs; raise unless the
    export's dense scores agree (``SCORE_TOLERANCE``) and its detections hold at least
    ``MIN_MATCHED`` of the PyTorch detector's boxes (``MATCH_IOU``, same class). The
    score floor is 0 for the check, so that even random weights give boxes to compare."""
    from liandan.errors import ConfigError

    bands = int(meta["in_channels"])
    h, w = size
    x = torch.randn(2, bands, h, w, generator=generator)
    floor, nms_iou = detector.built_postprocess
    settings = dict(meta["export"]["postprocess"], score_floor=0.0)
    try:
        detector.set_postprocess(0.0, None)
        with torch.no_grad():
            eager = detector(x)
            eager_boxes, eager_scores = dense(x)
    finally:
        detector.set_postprocess(floor, nms_iou)
    boxes, scores = (torch.as_tensor(np.asarray(v)).float() for v in runner(x)[:2])
    score_diff = float((scores - eager_scores).abs().max())
    box_diff = float((boxes - eager_boxes).abs().max())
    share = _matched_share(eager, postprocess(boxes, scores, settings, h, w))
    result = {"max_score_diff": score_diff, "max_box_diff_px": box_diff, "boxes_matched": share}
    if not (score_diff <= SCORE_TOLERANCE and share >= MIN_MATCHED):
        raise ConfigError(
            f"the exported detector differs from PyTorch at {h}x{w}: scores by "
            f"{score_diff:.2e} (tolerance {SCORE_TOLERANCE:g}), {share:.1%} of its boxes found "
            f"again (at least {MIN_MATCHED:.0%} at IoU {MATCH_IOU})",
            hint="report this model/format combination; use the other format meanwhile",
        )
    return result
