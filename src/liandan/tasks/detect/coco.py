"""Read COCO detection JSON.

One JSON with ``images`` (``id``, ``file_name``, ``width``, ``height``),
``annotations`` (``image_id``, ``category_id``, ``bbox`` as ``[x, y, w, h]`` pixels,
``iscrowd``, ``area``) and ``categories`` (``id``, ``name``). Category ids may be any
integers: they become indices in increasing id order (as pycocotools sorts them).
``iscrowd`` and ``area`` are kept for the metrics. Image files are looked up in
``images_dir`` (default: the JSON's folder) and their headers checked against the
declared size; ``check_images=False`` trusts the JSON (ground truth for metrics only).
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from liandan.data.problems import Problem
from liandan.errors import DataError
from liandan.tasks.detect.boxes import DetectionDataset, ImageBoxes, image_size, problem

__all__ = ["read_coco"]


def _number(x: Any) -> bool:
    return isinstance(x, int | float) and not isinstance(x, bool) and math.isfinite(x)


def _coco_categories(data: dict[str, Any], path: Path) -> tuple[list[str], dict[int, int]]:
    cats = data.get("categories")
    if not isinstance(cats, list) or not cats:
        raise DataError("no 'categories' list", where=path, hint="COCO needs the class list")
    bad = [f"categories[{i}]: {c!r}" for i, c in enumerate(cats) if not _category_ok(c)]
    ids = [c["id"] for c in cats if _category_ok(c)]
    bad += [f"category id {i} given twice" for i in sorted({i for i in ids if ids.count(i) > 1})]
    if bad:
        raise DataError(
            "bad categories (each needs an integer 'id' and a 'name')", where=path, items=bad
        )
    by_id = {c["id"]: str(c["name"]) for c in cats}
    order = sorted(by_id)
    return [by_id[i] for i in order], {cid: k for k, cid in enumerate(order)}


def _category_ok(c: Any) -> bool:
    return isinstance(c, dict) and isinstance(c.get("id"), int) and "name" in c


def _coco_image(
    entry: Any, images_dir: Path, check: bool, path: Path, problems: list[Problem]
) -> ImageBoxes | None:
    if not isinstance(entry, dict) or not isinstance(entry.get("id"), int):
        problems.append(problem("bad-label", path, f"image entry without an integer id: {entry!r}"))
        return None
    ref = f"image id {entry['id']}"
    name = entry.get("file_name")
    if not isinstance(name, str) or not name:
        problems.append(problem("bad-label", path, f"{ref}: no 'file_name'"))
        return None
    file = images_dir / name
    w, h = entry.get("width"), entry.get("height")
    declared = (w, h) if isinstance(w, int) and isinstance(h, int) and w > 0 and h > 0 else None
    if check:
        if not file.is_file():
            problems.append(problem("missing-image", file, f"{ref} in {path.name}: file not found"))
            return None
        size = image_size(file, problems)
        if size is None:
            return None
        if declared is not None and declared != size:
            reason = f"{ref} in {path.name} says {w}x{h}, the file is {size[0]}x{size[1]}"
            problems.append(problem("size-mismatch", file, reason))
        declared = size
    if declared is None:
        problems.append(problem("bad-label", path, f"{ref}: no positive integer width/height"))
        return None
    return ImageBoxes(file, declared[0], declared[1], label_file=path)


def read_coco(
    path: str | Path, images_dir: str | Path | None = None, check_images: bool = True
) -> DetectionDataset:
    """Read a COCO detection JSON (see the module docstring).

    Args:
        path: the JSON file.
        images_dir: where the ``file_name`` s are; default the JSON's folder.
        check_images: read each image's header to check it exists and has the
            declared size; False trusts ``width`` and ``height`` in the JSON.

    Raises:
        DataError: the file is not JSON, or has no usable ``categories``.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise DataError(
            f"cannot read COCO JSON ({type(exc).__name__}: {exc})", where=path
        ) from None
    if not isinstance(data, dict) or not isinstance(data.get("images"), list):
        raise DataError("no 'images' list: not a COCO detection file", where=path)
    names, cat_index = _coco_categories(data, path)
    folder = Path(images_dir) if images_dir is not None else path.parent
    problems: list[Problem] = []
    records: dict[int, ImageBoxes] = {}
    for entry in data["images"]:
        rec = _coco_image(entry, folder, check_images, path, problems)
        if rec is None:
            continue
        if entry["id"] in records:
            problems.append(problem("bad-label", path, f"image id {entry['id']} given twice"))
            continue
        records[entry["id"]] = rec
    ids = {e["id"] for e in data["images"] if isinstance(e, dict) and isinstance(e.get("id"), int)}
    annotations = data.get("annotations", [])
    if not isinstance(annotations, list):
        raise DataError("'annotations' is not a list", where=path)
    rows: dict[int, list[tuple[list[float], int, bool, float | None, str]]] = {}
    for i, ann in enumerate(annotations):
        row = _coco_annotation(ann, i, cat_index, ids, path, problems)
        if row is not None and row[0] in records:
            rows.setdefault(row[0], []).append(row[1:])
    images = []
    for image_id, rec in records.items():
        found = rows.get(image_id, [])
        if found:
            boxes = np.array([row[0] for row in found])
            given = np.array([np.nan if row[3] is None else row[3] for row in found])
            box_area = (boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])
            rec = ImageBoxes(
                rec.path, rec.width, rec.height, boxes,
                classes=np.array([row[1] for row in found]),
                iscrowd=np.array([row[2] for row in found]),
                areas=np.where(np.isnan(given), box_area, given),  # COCO's area, else the box's
                label_file=path, refs=[row[4] for row in found],
            )  # fmt: skip
        images.append(rec)
    return DetectionDataset(path, "coco", names, images, problems, side_files=[path])


def _coco_annotation(
    ann: Any,
    i: int,
    cat_index: dict[int, int],
    image_ids: set[int],
    path: Path,
    problems: list[Problem],
) -> tuple[int, list[float], int, bool, float | None, str] | None:
    """One annotation as (image id, box, class, crowd, area, ref), or None (a problem)."""
    ref = f"annotation id {ann.get('id')}" if isinstance(ann, dict) else f"annotations[{i}]"
    if not isinstance(ann, dict):
        problems.append(problem("bad-label", path, f"{ref}: not an object"))
        return None
    image_id, cat, bbox = ann.get("image_id"), ann.get("category_id"), ann.get("bbox")
    if image_id not in image_ids:
        problems.append(problem("bad-label", path, f"{ref}: image_id {image_id!r} is not an image"))
        return None
    ref += f" (image id {image_id})"
    if not isinstance(bbox, list) or len(bbox) != 4 or not all(_number(v) for v in bbox):
        problems.append(problem("bad-label", path, f"{ref}: bbox {bbox!r} is not [x, y, w, h]"))
        return None
    if cat not in cat_index:
        known = ", ".join(str(c) for c in sorted(cat_index))
        reason = f"{ref}: category_id {cat!r} is not in 'categories' ({known})"
        problems.append(problem("unknown-class", path, reason))
        return None
    area = ann.get("area")
    x, y, w, h = (float(v) for v in bbox)
    crowd = bool(ann.get("iscrowd", 0))
    return (
        image_id,
        [x, y, x + w, y + h],
        cat_index[cat],
        crowd,
        area if _number(area) else None,
        ref,
    )
