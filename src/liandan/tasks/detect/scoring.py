"""``liandan score`` for boxes: detections made by any tool against a ground truth.

PRED, the detections, is one of:

- a COCO results JSON: a list of ``{"image_id" or "file_name", "category_id" or
  "category_name", "bbox": [x, y, w, h], "score"}`` in pixels (liandan predict's
  ``detections.json``, the format pycocotools' ``loadRes`` reads and most detection
  tools write); a COCO dataset JSON whose annotations carry a ``score`` works too;
- a folder of YOLO text predictions: ``<stem>.txt`` per image, one ``class cx cy w h
  conf`` line per box in fractions of the image size (the files YOLO tools write when
  asked to save confidences); a ``labels/`` subfolder is looked into.

TRUTH is any layout liandan trains detectors on: a YOLO folder, a COCO JSON, a Pascal
VOC folder (:func:`~liandan.tasks.detect.formats.read_detection`).

How the two are paired, so that nothing is guessed:

- images by file stem (``file_name``, the text file's name), or by ``image_id`` when
  the truth is a COCO file and the detections give only ids;
- classes by name (``category_name``); by the truth file's own category ids when the
  detections give only ``category_id`` and the truth is COCO; by class index for YOLO
  text predictions. ``category_id`` alone against a YOLO or VOC truth is refused: some
  tools count from 0 and some from 1, and a wrong guess would shift every class.

A truth image with no detections has none (its boxes count as misses). When the truth
holds splits (``images/train``, ``images/val`` ...), only the splits the detections
fall in are scored, and metrics.json's ``inputs.splits`` names them. Detections on an
image the truth does not have, unknown classes, malformed entries, and a truth with
errors are all listed in one error: a naming mismatch is refused, not scored as zero.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any, TypeGuard

import numpy as np

from liandan.errors import DataError
from liandan.tasks.detect.boxes import DetectionDataset, ImageBoxes
from liandan.tasks.detect.matching import Detections
from liandan.tasks.detect.metrics import DEFAULT_SCORE_THRESHOLD, evaluate_detections

__all__ = ["is_box_prediction", "score_boxes"]

MAX_LISTED = 50  # problems named in one error; the rest are counted


def _txt_folder(path: Path) -> Path | None:
    """The folder of YOLO ``.txt`` predictions at ``path`` (or its ``labels/``), if any."""
    for folder in (path, path / "labels"):
        if folder.is_dir() and any(p.suffix.lower() == ".txt" for p in folder.iterdir()):
            return folder
    return None


def is_box_prediction(pred: Path) -> bool:
    """Whether ``pred`` is detections: a ``.json`` file, or a folder of ``.txt`` files
    (directly or in ``labels/``) holding no images."""
    from liandan.data.readers import is_image_file

    if pred.is_file():
        return pred.suffix.lower() == ".json"
    if not pred.is_dir() or any(is_image_file(p) for p in pred.iterdir() if p.is_file()):
        return False
    return _txt_folder(pred) is not None


# --------------------------------------------------------------------- truth
class _Truth:
    """The truth dataset and how detections find their image and class in it."""

    def __init__(self, path: Path) -> None:
        from liandan.tasks.detect.boxes import validate
        from liandan.tasks.detect.coco import _coco_categories, read_coco
        from liandan.tasks.detect.formats import read_detection

        self.ids: dict[Any, int] = {}  # COCO image id -> position in images
        self.category_ids: dict[int, int] | None = None  # COCO category id -> class
        if path.is_file():
            if path.suffix.lower() != ".json":
                raise DataError(
                    "the truth for detections is a COCO JSON, a YOLO folder or a VOC folder",
                    where=path,
                )
            # a COCO truth is often scored without its images: trust its declared sizes
            dataset = read_coco(path, check_images=False)
            data = json.loads(path.read_text(encoding="utf-8-sig"))
            _, self.category_ids = _coco_categories(data, path)
            position = {rec.path: i for i, rec in enumerate(dataset.images)}
            for entry in data["images"]:
                if isinstance(entry, dict) and isinstance(entry.get("file_name"), str):
                    pos = position.get(path.parent / entry["file_name"])
                    if pos is not None:
                        self.ids[entry.get("id")] = pos
        else:
            dataset = read_detection(path)
        errors = [p for p in validate(dataset) if p.severity == "error"]
        if errors:
            raise DataError(
                f"the truth has {len(errors)} problem(s) that make it unusable for scoring",
                where=path,
                items=_listed(f"{p.file}: {p.reason}" for p in errors),
                hint="fix these files (liandan scan lists the same problems)",
            )
        self.dataset: DetectionDataset = dataset
        self.names = list(dataset.class_names)
        self.stems: dict[str, list[int]] = {}
        for i, rec in enumerate(dataset.images):
            self.stems.setdefault(rec.path.stem, []).append(i)

    def image(self, stem: str) -> int | str:
        """The position of the truth image named ``stem``, or why there is none."""
        found = self.stems.get(stem, [])
        if len(found) == 1:
            return found[0]
        if not found:
            return f"no image named {stem}.* in the truth"
        paths = ", ".join(str(self.dataset.images[i].path) for i in found)
        return f"{stem} names {len(found)} truth images ({paths}); score one split at a time"


def _listed(items: Iterable[str]) -> list[str]:
    items = list(items)
    if len(items) > MAX_LISTED:
        return [*items[:MAX_LISTED], f"... and {len(items) - MAX_LISTED} more"]
    return items


def _number(x: Any) -> TypeGuard[float]:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


# --------------------------------------------------------------- predictions
Row = tuple[int, list[float], float, int]  # truth image, x1 y1 x2 y2, score, class


def _coco_rows(pred: Path, truth: _Truth, problems: list[str]) -> list[Row]:
    """The detections of a COCO results JSON, each paired with its truth image and class."""
    try:
        data = json.loads(pred.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read JSON ({type(exc).__name__}: {exc})", where=pred) from None
    files: dict[Any, str] = {}  # a dataset JSON's image id -> file name
    if isinstance(data, dict) and isinstance(data.get("annotations"), list):
        for e in data.get("images") or []:
            if isinstance(e, dict) and isinstance(e.get("file_name"), str):
                files[e.get("id")] = e["file_name"]
        data = data["annotations"]
    if not isinstance(data, list):
        raise DataError(
            "not a list of detections (COCO results format)",
            where=pred,
            hint='each detection: {"file_name" or "image_id", "category_name" or '
            '"category_id", "bbox": [x, y, w, h], "score"}',
        )
    index = {name: k for k, name in enumerate(truth.names)}
    rows: list[Row] = []
    for i, det in enumerate(data):
        where = f"{pred}: detection {i}"
        if not isinstance(det, dict):
            problems.append(f"{where}: not an object")
            continue
        bbox, score = det.get("bbox"), det.get("score")
        if not isinstance(bbox, list) or len(bbox) != 4 or not all(_number(v) for v in bbox):
            problems.append(f"{where}: bbox {bbox!r} is not [x, y, w, h]")
            continue
        if not _number(score):
            problems.append(f"{where}: score {score!r} is not a number")
            continue
        image = _coco_image(det, files, truth)
        cls = _coco_class(det, index, truth)
        for found in (image, cls):
            if isinstance(found, str):
                problems.append(f"{where}: {found}")
        if isinstance(image, int) and isinstance(cls, int):
            x, y, w, h = (float(v) for v in bbox)
            rows.append((image, [x, y, x + w, y + h], float(score), cls))
    return rows


def _coco_image(det: dict[str, Any], files: dict[Any, str], truth: _Truth) -> int | str:
    name = det.get("file_name", files.get(det.get("image_id")))
    if isinstance(name, str):
        return truth.image(Path(name).stem)
    if "image_id" not in det:
        return "neither file_name nor image_id"
    if truth.dataset.format != "coco":
        return (
            f"image_id {det['image_id']!r} without a file_name: only a COCO truth has image "
            "ids (give file_name, as liandan predict writes)"
        )
    pos = truth.ids.get(det["image_id"])
    return pos if pos is not None else f"image_id {det['image_id']!r} is not a truth image"


def _coco_class(det: dict[str, Any], index: dict[str, int], truth: _Truth) -> int | str:
    name = det.get("category_name")
    if name is not None:
        k = index.get(str(name))
        return k if k is not None else f"class {name!r} is not a truth class ({', '.join(index)})"
    if "category_id" not in det:
        return "neither category_name nor category_id"
    if truth.category_ids is None:
        return (
            f"category_id {det['category_id']!r} without a category_name: against a "
            f"{truth.dataset.format.upper()} truth it is ambiguous (tools count from 0 or "
            "from 1); give category_name, or score against a COCO truth"
        )
    k = truth.category_ids.get(det["category_id"])
    return k if k is not None else f"category_id {det['category_id']!r} is not a truth category"


def _yolo_rows(folder: Path, truth: _Truth, problems: list[str]) -> list[Row]:
    """The detections of a folder of YOLO ``class cx cy w h conf`` text files."""
    k_max = len(truth.names)
    rows: list[Row] = []
    for path in sorted(p for p in folder.iterdir() if p.suffix.lower() == ".txt"):
        if path.name in ("classes.txt", "labels.txt"):
            continue
        image = truth.image(path.stem)
        if isinstance(image, str):
            problems.append(f"{path}: {image}")
            continue
        rec = truth.dataset.images[image]
        try:
            lines = path.read_text(encoding="utf-8-sig").splitlines()
        except (OSError, UnicodeDecodeError) as exc:
            problems.append(f"{path}: unreadable ({type(exc).__name__})")
            continue
        for n, line in enumerate(lines, 1):
            row = _yolo_line(line, rec, k_max)
            if isinstance(row, str):
                problems.append(f"{path}:{n}: {row}")
            elif row is not None:
                rows.append((image, *row))
    return rows


def _yolo_line(
    line: str, rec: ImageBoxes, k_max: int
) -> tuple[list[float], float, int] | str | None:
    parts = line.split()
    if not parts:
        return None
    try:
        values = [float(v) for v in parts]
    except ValueError:
        return f"not numbers: {line.strip()!r}"
    if len(values) == 5:
        return "5 values: no confidence (class cx cy w h conf; save predictions with confidences)"
    if len(values) != 6 or not all(math.isfinite(v) for v in values):
        return f"expected class cx cy w h conf, got {line.strip()!r}"
    cls, cx, cy, w, h, conf = values
    if cls != int(cls) or not 0 <= cls < k_max:
        return f"class {parts[0]} is not a truth class index (0..{k_max - 1})"
    x1, y1 = (cx - w / 2) * rec.width, (cy - h / 2) * rec.height
    return [x1, y1, x1 + w * rec.width, y1 + h * rec.height], conf, int(cls)


# -------------------------------------------------------------------- score
def score_boxes(
    pred: str | Path, truth: str | Path, score_threshold: float | None = None
) -> dict[str, Any]:
    """Detection metrics (the metrics.json schema of a detection run) of ``pred``
    against ``truth`` (see the module docstring for both).

    Args:
        pred: a COCO results JSON or a folder of YOLO ``.txt`` predictions.
        truth: a COCO JSON, a YOLO folder or a VOC folder.
        score_threshold: detections at or above it count for precision, recall, F1
            and the confusion matrix (default
            :data:`~liandan.tasks.detect.metrics.DEFAULT_SCORE_THRESHOLD`); mAP uses all.

    Raises:
        DataError: naming every detection or file that cannot be paired or read.
    """
    from liandan.tasks.detect.task import detection_metrics

    pred, truth_path = Path(pred), Path(truth)
    found = _Truth(truth_path)
    problems: list[str] = []
    if pred.is_file():
        rows, pred_format = _coco_rows(pred, found, problems), "coco-results"
    else:
        folder = _txt_folder(pred)
        assert folder is not None, "is_box_prediction(pred) holds"
        rows, pred_format = _yolo_rows(folder, found, problems), "yolo-txt"
    if problems:
        raise DataError(
            f"{len(problems)} detection(s) or file(s) cannot be scored against the truth",
            where=pred,
            items=_listed(problems),
            hint="detections name truth images by file stem and truth classes by name",
        )
    images = found.dataset.images
    # a truth with splits, detections of some: score those splits (a model predicted
    # on its validation images is not missing every training box)
    splits = sorted({s for r in rows if (s := images[r[0]].split) is not None})
    keep = [i for i, rec in enumerate(images) if not splits or rec.split in splits]
    position = {i: j for j, i in enumerate(keep)}
    per_image: list[list[Row]] = [[] for _ in keep]
    for row in rows:
        per_image[position[row[0]]].append(row)
    preds = [
        Detections(
            np.array([r[1] for r in rs], np.float64).reshape(-1, 4),
            np.array([r[2] for r in rs], np.float64),
            np.array([r[3] for r in rs], np.int64),
        )
        for rs in per_image
    ]
    threshold = DEFAULT_SCORE_THRESHOLD if score_threshold is None else float(score_threshold)
    metrics_found = evaluate_detections(
        [images[i] for i in keep], preds, len(found.names), score_threshold=threshold
    )
    metrics = detection_metrics(metrics_found, found.names, "score")
    metrics["inputs"] = {
        "pred_format": pred_format,
        "truth_format": found.dataset.format,
        "splits": splits or None,
        "images": len(keep),
        "images_with_detections": sum(1 for rs in per_image if rs),
        "detections": len(rows),
        "truth_boxes": int(sum(len(images[i].boxes) for i in keep)),
    }
    return metrics
