"""Read YOLO text labels (the Ultralytics layout).

Every image under a folder called ``images`` has its labels at the same place under
``labels`` with a ``.txt`` suffix (``images/train/a.jpg`` -> ``labels/train/a.txt``;
``train/images`` -> ``train/labels`` works the same). One box per line, ``class cx cy w h``, all but the class as fractions
of the image width and height; a line ``class x1 y1 x2 y2 x3 y3 ...`` is a polygon
(Ultralytics segment labels) and becomes its bounding box. No label file, or an empty
one, means a background image. Class names come from ``data.yaml`` / ``dataset.yaml``
(``names`` as a list or as ``{0: name, ...}``) or ``classes.txt`` (one per line, in the
root or in ``labels/``); without either, classes are numbered ``0..max`` and only
negative ids can be caught. A split folder name on the way (``train``, ``val``,
``valid``, ``test`` ...) sets the image's split.

Problems are collected, not raised (see :mod:`liandan.tasks.detect.formats`).
"""

from __future__ import annotations

import math
import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from liandan.data.folders import split_name
from liandan.data.problems import Problem
from liandan.data.readers import is_image_file
from liandan.errors import DataError
from liandan.tasks.detect.boxes import DetectionDataset, ImageBoxes, image_size, problem

__all__ = ["read_yolo"]


def _split_of(rel: Path) -> str | None:
    return next((s for part in rel.parts[:-1] if (s := split_name(part))), None)


def _names_file(root: Path) -> Path | None:
    """The file the class names are read from: ``data.yaml``, ``dataset.yaml`` or
    ``classes.txt`` (in DATA or DATA/labels), the first there is."""
    candidates = ("data.yaml", "dataset.yaml", "classes.txt", "labels/classes.txt")
    return next((root / c for c in candidates if (root / c).is_file()), None)


def _yolo_names(root: Path) -> list[str] | None:
    import yaml

    path = _names_file(root)
    if path is None:
        return None
    if path.suffix == ".txt":
        text = path.read_text(encoding="utf-8-sig")
        return [ln.strip() for ln in text.splitlines() if ln.strip()]
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8-sig")) or {}
    except (yaml.YAMLError, OSError, UnicodeDecodeError) as exc:
        raise DataError(f"cannot read {path.name}: {exc}", where=path) from None
    names = data.get("names") if isinstance(data, dict) else None
    if isinstance(names, dict):
        if sorted(names) != list(range(len(names))):
            raise DataError(
                f"'names' keys must be the class ids 0..{len(names) - 1}, got {sorted(names)}",
                where=path,
            )
        names = [names[i] for i in range(len(names))]
    if not isinstance(names, list):
        raise DataError("no 'names' list (or {id: name} mapping)", where=path)
    nc = data.get("nc")
    if nc is not None and nc != len(names):
        raise DataError(f"'nc' is {nc} but 'names' lists {len(names)} classes", where=path)
    return [str(n) for n in names]


def _label_path(rel: Path) -> Path | None:
    """``images/x/a.jpg`` -> ``labels/x/a.txt`` (the last ``images`` folder on the way)."""
    parts = list(rel.parts)
    at = [i for i, p in enumerate(parts[:-1]) if p == "images"]
    if not at:
        return None
    parts[at[-1]] = "labels"
    return Path(*parts).with_suffix(".txt")


def _yolo_line(tokens: list[str], n: int, width: int, height: int) -> tuple[int, list[float]]:
    """The class id and pixel box of one label line; ValueError says what is wrong."""
    if len(tokens) != 5 and (len(tokens) < 7 or len(tokens) % 2 == 0):
        raise ValueError(
            f"line {n}: {len(tokens)} values, expected 5 (class cx cy w h) "
            "or a polygon (class x1 y1 x2 y2 x3 y3 ...)"
        )
    try:
        cls = float(tokens[0])
    except ValueError:
        raise ValueError(f"line {n}: class id {tokens[0]!r} is not a number") from None
    if not cls.is_integer():
        raise ValueError(f"line {n}: class id {tokens[0]!r} is not an integer")
    values = []
    for tok in tokens[1:]:
        try:
            v = float(tok)
        except ValueError:
            raise ValueError(f"line {n}: {tok!r} is not a number") from None
        if not math.isfinite(v):
            raise ValueError(f"line {n}: {tok!r} is not a finite number")
        values.append(v)
    if len(values) == 4:
        cx, cy, w, h = values
        box = [cx - w / 2, cy - h / 2, cx + w / 2, cy + h / 2]
    else:  # polygon: its bounding box
        xs, ys = values[0::2], values[1::2]
        box = [min(xs), min(ys), max(xs), max(ys)]
    return int(cls), [box[0] * width, box[1] * height, box[2] * width, box[3] * height]


def _read_yolo_labels(
    image: Path, label: Path, size: tuple[int, int], problems: list[Problem]
) -> ImageBoxes | None:
    width, height = size
    if not label.is_file():
        return ImageBoxes(image, width, height)  # background
    try:
        text = label.read_text(encoding="utf-8-sig")
    except (OSError, UnicodeDecodeError) as exc:
        reason = f"cannot read label file ({type(exc).__name__}: {exc}): image left out"
        problems.append(problem("unreadable", label, reason))
        return None
    boxes, classes, refs = [], [], []
    for n, line in enumerate(text.splitlines(), start=1):
        tokens = line.split()
        if not tokens:
            continue
        try:
            cls, box = _yolo_line(tokens, n, width, height)
        except ValueError as exc:
            problems.append(problem("bad-label", label, str(exc)))
            continue
        boxes.append(box)
        classes.append(cls)
        refs.append(f"line {n}")
    return ImageBoxes(
        image, width, height, np.array(boxes), np.array(classes), label_file=label, refs=refs
    )


def read_yolo(root: str | Path, class_names: Sequence[str] | None = None) -> DetectionDataset:
    """Read an Ultralytics-style YOLO dataset (see the module docstring).

    Args:
        root: the dataset folder, holding ``images/`` and ``labels/`` (possibly per
            split), or split folders each holding both.
        class_names: overrides ``data.yaml`` / ``classes.txt``.

    Raises:
        DataError: no image under an ``images`` folder, or a ``data.yaml`` whose
            names contradict themselves.
    """
    root = Path(root)
    names = list(class_names) if class_names is not None else _yolo_names(root)
    pairs: dict[Path, Path] = {}  # label path -> image
    label_files: list[Path] = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith("."))
        here = Path(folder)
        for name in sorted(files):
            rel = (here / name).relative_to(root)
            if is_image_file(rel) and (label := _label_path(rel)) is not None:
                pairs.setdefault(label, rel)
            elif name.endswith(".txt") and name != "classes.txt":
                if "labels" in rel.parts[:-1]:
                    label_files.append(rel)
    if not pairs:
        raise DataError(
            "no images found under an 'images' folder",
            where=root,
            hint="the YOLO layout is images/<split>/a.jpg with labels/<split>/a.txt",
        )
    problems: list[Problem] = []
    images = []
    for label, rel in sorted(pairs.items(), key=lambda kv: kv[1]):
        size = image_size(root / rel, problems)
        if size is not None:
            rec = _read_yolo_labels(root / rel, root / label, size, problems)
            if rec is not None:
                rec.split = _split_of(rel)
                images.append(rec)
    for rel in label_files:
        if rel not in pairs:
            where = rel.parent.as_posix().replace("labels", "images", 1)
            reason = f"label file without an image (no {rel.stem}.* in {where}): unused"
            problems.append(problem("unpaired", root / rel, reason))
    if names is None:
        top = max((int(r.classes.max()) for r in images if len(r.classes)), default=-1)
        names = [str(i) for i in range(top + 1)]
    read = [f] if class_names is None and (f := _names_file(root)) is not None else []
    return DetectionDataset(root, "yolo", names, images, problems, side_files=read)
