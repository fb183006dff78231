"""Read Pascal VOC XML annotations.

``Annotations/*.xml`` next to ``JPEGImages/``. Corners are 1-based pixel
indices, so ``xmin``/``ymin`` lose 1 and ``xmax``/``ymax`` stay (a box over the whole
image becomes ``[0, 0, W, H]``, as Detectron2 reads VOC). ``difficult`` is kept as a
flag. Class names are the ``class_names`` given, else ``classes.txt`` / ``labels.txt``
in the root, else every name used, sorted. ``ImageSets/Main/{train,val,test}.txt`` set
the splits when present.
"""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from liandan.data.problems import Problem
from liandan.data.readers import is_image_file
from liandan.tasks.detect.boxes import DetectionDataset, ImageBoxes, image_size, problem

__all__ = ["read_voc"]


def _voc_object(obj: ET.Element, n: int) -> tuple[str, list[float], bool]:
    name = (obj.findtext("name") or "").strip()
    if not name:
        raise ValueError(f"object {n}: no <name>")
    box = obj.find("bndbox")
    if box is None:
        raise ValueError(f"object {n} ({name!r}): no <bndbox>")
    values = []
    for tag in ("xmin", "ymin", "xmax", "ymax"):
        text = box.findtext(tag)
        try:
            v = float(text or "")
        except ValueError:
            raise ValueError(f"object {n} ({name!r}): <{tag}> is {text!r}, not a number") from None
        if not math.isfinite(v):
            raise ValueError(f"object {n} ({name!r}): <{tag}> is {text!r}")
        values.append(v)
    # 1-based pixel indices -> continuous corners: the first pixel starts at 0
    corners = [values[0] - 1, values[1] - 1, values[2], values[3]]
    return name, corners, (obj.findtext("difficult") or "0").strip() not in ("0", "")


def _voc_splits(root: Path) -> dict[str, str]:
    splits: dict[str, str] = {}
    for split in ("train", "val", "test"):
        listing = root / "ImageSets" / "Main" / f"{split}.txt"
        if listing.is_file():
            for line in listing.read_text(encoding="utf-8").split():
                splits.setdefault(line.strip(), split)
    return splits


def read_voc(root: str | Path, class_names: Sequence[str] | None = None) -> DetectionDataset:
    """Read a Pascal VOC dataset: ``Annotations/*.xml`` and ``JPEGImages/``.

    Args:
        root: the folder holding ``Annotations`` and ``JPEGImages``.
        class_names: the classes in index order; default ``classes.txt`` or
            ``labels.txt`` in ``root``, else every object name found, sorted.
    """
    root = Path(root)
    if class_names is None:
        for name in ("classes.txt", "labels.txt"):
            if (root / name).is_file():
                text = (root / name).read_text(encoding="utf-8-sig")
                class_names = [ln.strip() for ln in text.splitlines() if ln.strip()]
                break
    jpeg = root / "JPEGImages"
    by_stem = (
        {p.stem: p for p in sorted(jpeg.iterdir()) if is_image_file(p)} if jpeg.is_dir() else {}
    )
    splits = _voc_splits(root)
    problems: list[Problem] = []
    parsed = []
    for xml in sorted((root / "Annotations").glob("*.xml")):
        try:
            tree = ET.parse(xml).getroot()
        except (ET.ParseError, OSError) as exc:
            problems.append(problem("unreadable", xml, f"not readable XML: {exc}"))
            continue
        filename = (tree.findtext("filename") or "").strip()
        image = (
            jpeg / filename if filename and (jpeg / filename).is_file() else by_stem.get(xml.stem)
        )
        if image is None:
            reason = (
                f"annotation without an image (no {filename or xml.stem + '.*'} in {jpeg}): unused"
            )
            problems.append(problem("unpaired", xml, reason))
            continue
        size = image_size(image, problems)
        if size is None:
            continue
        try:
            w, h = int(tree.findtext("size/width") or 0), int(tree.findtext("size/height") or 0)
        except ValueError:
            w = h = 0
        if w > 0 and h > 0 and (w, h) != size:
            reason = f"<size> says {w}x{h}, the image {image.name} is {size[0]}x{size[1]}"
            problems.append(problem("size-mismatch", xml, reason))
        objects = []
        for n, obj in enumerate(tree.findall("object"), start=1):
            try:
                objects.append((*_voc_object(obj, n), f"object {n}"))
            except ValueError as exc:
                problems.append(problem("bad-label", xml, str(exc)))
        parsed.append((xml, image, size, objects))
    if class_names is None:
        class_names = sorted({o[0] for *_, objects in parsed for o in objects})
    index = {name: i for i, name in enumerate(class_names)}
    images = []
    for xml, image, (w, h), objects in parsed:
        known = [o for o in objects if o[0] in index]
        for name, *_, ref in objects:
            if name not in index:
                reason = f"{ref}: class {name!r} is not one of {list(class_names)}"
                problems.append(problem("unknown-class", xml, reason))
        rec = ImageBoxes(
            image, w, h,
            np.array([o[1] for o in known]), np.array([index[o[0]] for o in known]),
            difficult=np.array([o[2] for o in known]), label_file=xml, refs=[o[3] for o in known],
            split=splits.get(xml.stem),
        )  # fmt: skip
        images.append(rec)
    labelled = {image for _, image, _, _ in parsed}
    for image in by_stem.values():
        if image not in labelled and not (root / "Annotations" / f"{image.stem}.xml").is_file():
            size = image_size(image, problems)  # no annotation: a background image
            if size is not None:
                images.append(ImageBoxes(image, *size, split=splits.get(image.stem)))
    return DetectionDataset(root, "voc", list(class_names), images, problems)
