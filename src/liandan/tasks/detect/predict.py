"""``liandan predict`` for a detector: boxes of each image, as COCO results and previews.

Each image is letterboxed to the model's input side as in validation, normalized, and
its detections mapped back to the image's own pixels. Kept are the detections scoring
at least ``predict.score_threshold`` (default :data:`SCORE_THRESHOLD`, also the score
threshold of metrics.json's precision and recall); the detector's own per-class
non-maximum suppression, at ``predict.nms_iou`` (default: the architecture's own), has
already merged overlapping boxes of one class.

Outputs in the ``--out`` folder:

- ``detections.json``: COCO's results format, a list of
  ``{"image_id", "file_name", "category_id", "category_name", "bbox": [x, y, w, h],
  "score"}`` (``image_id`` numbers the inputs from 1 in the order given,
  ``category_id`` is the class index from 1, as the categories of a COCO file
  written from the class list);
- ``preview/<stem>.png``: the image with each box drawn in its class colour, labelled
  with its class and score.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from liandan.tasks.detect.metrics import DEFAULT_SCORE_THRESHOLD

if TYPE_CHECKING:
    from liandan.prediction import Prediction, Predictor

SCORE_THRESHOLD = DEFAULT_SCORE_THRESHOLD
RESULTS = "detections.json"
# distinct colours for the classes' boxes (repeated beyond ten classes)
PALETTE = (
    (230, 25, 75), (60, 180, 75), (0, 130, 200), (245, 130, 48), (145, 30, 180),
    (70, 240, 240), (240, 50, 230), (210, 245, 60), (250, 190, 212), (255, 225, 25),
)  # fmt: skip


def postprocess_settings(predictor: Predictor) -> tuple[float, float | None]:
    """The predictor's ``predict.score_threshold`` and ``predict.nms_iou`` (None: the
    detector's own NMS IoU); a predictor without them keeps the defaults."""
    threshold = getattr(predictor, "score_threshold", None)
    nms_iou = getattr(predictor, "nms_iou", None)
    return SCORE_THRESHOLD if threshold is None else float(threshold), nms_iou


def configure_detector(predictor: Predictor) -> float:
    """Set the predictor's detector to its NMS IoU, and its score floor low enough for
    the score threshold; with ``predict.tta``, wrap it in
    :class:`~liandan.tasks.detect.tta.FlipTTA` (once). Returns the threshold
    (detections kept, and P/R/F1's)."""
    from liandan.tasks.detect.export import ExportedDetector
    from liandan.tasks.detect.models import Detector
    from liandan.tasks.detect.tta import FlipTTA

    threshold, nms_iou = postprocess_settings(predictor)
    wrapped = predictor.model
    model = wrapped.detector if isinstance(wrapped, FlipTTA) else wrapped
    assert isinstance(model, Detector | ExportedDetector), "a detector or its export"
    floor, _ = model.built_postprocess
    model.set_postprocess(min(floor, threshold), nms_iou)
    if predictor.tta and predictor.tta_flips and not isinstance(wrapped, FlipTTA):
        predictor.model = FlipTTA(model, flips=predictor.tta_flips)
    return threshold


def detect_array(predictor: Predictor, image: np.ndarray, path: Path | str) -> np.ndarray:
    """The detections of one raw ``(H, W, C)`` image: ``(N, 6)`` float32 rows of
    ``x1 y1 x2 y2 score class`` in the image's pixels, best first, score >= the
    threshold (``predict.score_threshold``), after non-maximum suppression at
    ``predict.nms_iou``."""
    import torch

    from liandan.tasks.detect.data import letterbox, to_original

    threshold = configure_detector(predictor)
    boxed, scale = letterbox(image, predictor.image_size)
    x = predictor.prepare(boxed, path).transpose(2, 0, 1)[None]
    batch = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32)).to(predictor.device)
    with torch.inference_mode():
        out = predictor.model(batch)[0]
    scores = out["scores"].float().cpu().numpy()
    keep = scores >= threshold
    boxes = to_original(out["boxes"][torch.from_numpy(keep)], scale)
    h, w = image.shape[:2]
    boxes = np.clip(boxes, 0, [w, h, w, h])
    labels = out["labels"].cpu().numpy()[keep]
    rows = np.column_stack([boxes, scores[keep], labels]).astype(np.float32)
    return rows[np.argsort(-rows[:, 4], kind="stable")] if len(rows) else rows.reshape(0, 6)


def planned_outputs(files: Sequence[Path], out_dir: Path) -> tuple[list[Path], list[Path]]:
    """The files predict writes and the input each comes from (the results file: all)."""
    if not files:
        return [], []
    targets = [out_dir / RESULTS] + [out_dir / "preview" / f"{f.stem}.png" for f in files]
    return targets, [files[0], *files]


def preview(image: np.ndarray, rows: np.ndarray, classes: Sequence[str]) -> np.ndarray:
    """An 8-bit RGB copy of ``image`` with the boxes of ``rows`` drawn and labelled."""
    import cv2

    from liandan.reporting.gallery import display_rgb  # the report's 8-bit display

    canvas = np.ascontiguousarray(display_rgb(image))
    thick = max(1, round(max(canvas.shape[:2]) / 300))
    for x1, y1, x2, y2, score, cls in rows.tolist():
        colour = PALETTE[int(cls) % len(PALETTE)]
        p1, p2 = (round(x1), round(y1)), (round(x2), round(y2))
        cv2.rectangle(canvas, p1, p2, colour, thick)
        text = f"{classes[int(cls)]} {score:.2f}"
        cv2.putText(canvas, text, (p1[0], max(8, p1[1] - 2)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.3 * thick, colour, 1, cv2.LINE_AA)  # fmt: skip
    return canvas


def write_preview(pred: Prediction, predictor: Predictor, out_dir: Path) -> list[Path]:
    from liandan.atomic import atomic_write_bytes
    from liandan.data.readers import read_image

    assert isinstance(pred.labels, np.ndarray)
    image = read_image(pred.path, predictor.bands)
    target = out_dir / "preview" / f"{pred.path.stem}.png"
    target.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_bytes(target, _png(preview(image, pred.labels, predictor.classes)))
    return [target]


def _png(rgb: np.ndarray) -> bytes:
    import io

    from PIL import Image

    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    return buffer.getvalue()


def results(preds: Sequence[Prediction], classes: Sequence[str]) -> list[dict[str, Any]]:
    """COCO results of ``preds`` (see the module docstring)."""
    out = []
    for image_id, pred in enumerate(preds, start=1):
        assert isinstance(pred.labels, np.ndarray)
        for x1, y1, x2, y2, score, cls in pred.labels.tolist():
            out.append(
                {
                    "image_id": image_id,
                    "file_name": pred.path.name,
                    "category_id": int(cls) + 1,
                    "category_name": classes[int(cls)],
                    "bbox": [round(v, 2) for v in (x1, y1, x2 - x1, y2 - y1)],
                    "score": round(score, 5),
                }
            )
    return out


def write_results(preds: Sequence[Prediction], predictor: Predictor, out_dir: Path) -> list[Path]:
    from liandan.atomic import atomic_write_json

    if not preds:
        return []
    target = out_dir / RESULTS
    atomic_write_json(target, results(preds, predictor.classes))
    return [target]
