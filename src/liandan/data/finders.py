"""The finders of each folder layout: a dataset folder -> a :class:`DatasetIndex`.

One function per layout (``imagefolder``, ``csv``, ``pairs``, ``voc``; ``yolo``,
``coco`` and ``voc-boxes`` (Pascal VOC XML) for detection, read by :mod:`liandan.tasks.detect.formats`,
and ``vector-boxes``: rasters with GIS point/polygon layers, read in windows by
:mod:`liandan.tasks.detect.vector`), registered in
:data:`LAYOUTS` with its task; :func:`liandan.data.layouts.find_samples` picks one (the
folder names are read by :mod:`liandan.data.folders`). Problems a user can fix (missing
folder, image without mask, empty class) are :class:`DataError` s that list every
offending file, not just the first.
"""

from __future__ import annotations

import csv
import io
import re
from collections.abc import Callable
from pathlib import Path
from typing import Any

from liandan.data.folders import (
    VECTOR_EXTS,
    PairSite,
    child,
    coco_files,
    pair_sites,
    split_dirs,
    split_name,
    subdirs,
)
from liandan.data.layouts import ClassSpec, DatasetIndex, Sample
from liandan.data.readers import is_image_file
from liandan.errors import ConfigError, DataError


def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p))


# ------------------------------------------------------------------ classification
def _find_imagefolder(root: Path, ignore_index: int | None, strict: bool = True) -> DatasetIndex:
    splits = split_dirs(root)
    if splits[0][0] is not None:  # class folders beside split folders would be left out
        beside = [d for d in subdirs(root) if split_name(d.name) is None and _images_in(d)]
        if beside:
            raise DataError(
                "class folders beside split folders: they would be left out",
                where=root,
                items=[str(d) for d in beside],
                hint=f"move them into {splits[0][1]} (or another split folder), or out of DATA",
            )
    class_names = sorted({d.name for _, folder in splits for d in subdirs(folder)})
    if not class_names:
        raise DataError(
            "no class folders found",
            where=root,
            hint="put images in DATA/<class>/ (or DATA/train/<class>/ ...)",
        )
    index = {name: i for i, name in enumerate(class_names)}
    samples: list[Sample] = []
    empty: list[str] = []
    for split, folder in splits:
        for name in class_names:
            d = folder / name
            files = _images_in(d) if d.is_dir() else []
            if not files and (split in (None, "train")):
                empty.append(str(d))
            samples += [Sample(p, index[name], split) for p in files]
    if empty and not strict:
        found = DatasetIndex(root, "classify", "imagefolder", ClassSpec(class_names), samples)
        found.problems = [("empty-class", d, "class folder with no images") for d in empty]
        return found
    if empty:
        raise DataError(
            "class folder(s) with no images",
            where=root,
            items=empty,
            hint="add images (png, jpg, tif) or remove the empty folder",
        )
    return DatasetIndex(root, "classify", "imagefolder", ClassSpec(class_names), samples)


def _find_csv(root: Path, ignore_index: int | None) -> DatasetIndex:
    path = child(root, "labels.csv") or root / "labels.csv"
    # utf-8-sig: Excel starts its UTF-8 CSV files with a byte-order mark
    text = path.read_text(encoding="utf-8-sig")
    reader = csv.DictReader(io.StringIO(text, newline=""))
    if reader.fieldnames:  # " Image " and "Label" are the columns image and label
        reader.fieldnames = [name.strip().lower() for name in reader.fieldnames]
    rows = list(reader)
    if not rows or not {"image", "label"} <= set(rows[0]):
        raise DataError(
            "labels.csv needs the columns image,label[,split]",
            where=path,
            hint="first line: image,label",
        )
    names = sorted({r["label"] for r in rows})
    index = {n: i for i, n in enumerate(names)}
    samples: list[Sample] = []
    missing: list[str] = []
    bad_split: list[str] = []
    root_resolved = root.resolve()
    for n, row in enumerate(rows, start=2):
        image = (root / row["image"]).resolve()
        if not image.is_relative_to(root_resolved):
            raise DataError(
                f"line {n}: image path {row['image']!r} points outside the dataset folder",
                where=path,
            )
        given = (row.get("split") or "").strip() or None
        split = split_name(given) if given is not None else None
        if given is not None and split is None:
            bad_split.append(f"line {n}: split {given!r}")
        if not image.is_file():
            missing.append(f"line {n}: {row['image']}")
        samples.append(Sample(image, index[row["label"]], split))
    if bad_split:
        raise DataError(
            "unknown split name(s)",
            where=path,
            items=bad_split,
            hint="split must be train, val or test (or training, valid, validation, dev, testing)",
        )
    if missing:
        raise DataError("image file(s) listed but not found", where=path, items=missing)
    return DatasetIndex(root, "classify", "csv", ClassSpec(names), samples)


# ------------------------------------------------------------------ segmentation
def _pair(site: PairSite) -> tuple[list[Sample], list[str]]:
    images_dir, masks_dir, split = site.images, site.masks, site.split
    images = {p.stem: p for p in _images_in(images_dir)}
    masks = {p.stem: p for p in _images_in(masks_dir)} if masks_dir.is_dir() else {}
    if site.vectors is not None:  # polygon labels of rasters (data/raster_labels.py)
        for p in sorted(site.vectors.iterdir()):
            if p.suffix.lower() in VECTOR_EXTS:
                masks.setdefault(p.stem, p)
    problems = [
        f"{images[s]}: image without a mask in {masks_dir}" for s in images if s not in masks
    ]
    problems += [
        f"{masks[s]}: mask without an image in {images_dir}" for s in masks if s not in images
    ]
    samples = [Sample(images[s], masks[s], split) for s in sorted(images) if s in masks]
    return samples, problems


def find_pairs(
    root: Path,
    ignore_index: int | None,
    strict: bool = True,
    folders: tuple[str, str] | None = None,
) -> DatasetIndex:
    samples: list[Sample] = []
    problems: list[str] = []
    for site in pair_sites(root, folders):
        found, bad = _pair(site)
        samples += found
        problems += bad
    if problems and not strict:
        lenient = DatasetIndex(root, "segment", "pairs", ClassSpec([]), samples)
        lenient.problems = [("unpaired", *p.split(": ", 1)) for p in problems]  # type: ignore[misc]
        return lenient
    if problems:
        raise DataError(
            "images and masks do not pair up (paired by file name without extension)",
            where=root,
            items=problems,
            hint="every images/<name>.* needs a masks/<name>.*: add the missing files or "
            "move the unpaired ones out of the dataset",
        )
    if not samples:
        raise DataError(
            "no image/mask pairs found",
            where=root,
            hint="expected DATA/images/*.png with DATA/masks/*.png (or imgs/ + annotations/, "
            "image/ + label/ ..., see docs/data.md); name other folders with "
            "data.layout=pairs:IMAGES/MASKS",
        )
    return DatasetIndex(root, "segment", "pairs", ClassSpec([]), samples)


def _find_voc(root: Path, ignore_index: int | None) -> DatasetIndex:
    images_dir, masks_dir = root / "JPEGImages", root / "SegmentationClass"
    lists = root / "ImageSets" / "Segmentation"
    samples: list[Sample] = []
    problems: list[str] = []
    split_files = {"train": "train.txt", "val": "val.txt", "test": "test.txt"}
    for split, fname in split_files.items():
        f = lists / fname
        if not f.is_file():
            continue
        for stem in f.read_text().split():
            if "/" in stem or ".." in stem:
                raise DataError(f"entry {stem!r} is not a plain file name", where=f)
            image = images_dir / f"{stem}.jpg"
            mask = masks_dir / f"{stem}.png"
            for listed in (image, mask):  # a symlink must not lead out of the dataset
                if listed.exists() and not listed.resolve().is_relative_to(root.resolve()):
                    raise DataError(
                        f"entry {stem!r}: {listed.name} is a link to a file outside the "
                        "dataset folder",
                        where=f,
                        hint="copy the file into the dataset instead of linking it",
                    )
            if not image.is_file():
                problems.append(f"{image}: listed in {f.name} but missing")
            if not mask.is_file():
                problems.append(f"{mask}: listed in {f.name} but missing")
            if image.is_file() and mask.is_file():
                samples.append(Sample(image, mask, split))
    if not samples and not problems:
        found, problems = _pair(PairSite(None, images_dir, masks_dir))
        # VOC without lists: every image needs a mask; extra JPEGs (detection-only) are normal
        problems = [p for p in problems if "mask without" in p]
        samples = found
    if problems:
        raise DataError("Pascal VOC files missing", where=root, items=problems)
    spec = ClassSpec(list(VOC_CLASSES), ignore_index=255 if ignore_index is None else ignore_index)
    return DatasetIndex(root, "segment", "voc", spec, samples)


VOC_CLASSES = (
    "background aeroplane bicycle bird boat bottle bus car cat chair cow diningtable dog "
    "horse motorbike person pottedplant sheep sofa train tvmonitor"
).split()


# ------------------------------------------------------------------ detection
def _detection_index(root: Path, layout: str, dataset: Any) -> DatasetIndex:
    """The index of a read detection dataset: one sample per image, its target the
    position of its boxes in ``index.source.images`` (checked when the data is loaded)."""
    samples = [Sample(rec.path, i, rec.split, rec.window) for i, rec in enumerate(dataset.images)]
    index = DatasetIndex(root, "detect", layout, ClassSpec(list(dataset.class_names)), samples)
    index.source = dataset
    return index


def _find_yolo(root: Path, ignore_index: int | None) -> DatasetIndex:
    from liandan.tasks.detect.yolo import read_yolo

    return _detection_index(root, "yolo", read_yolo(root))


def _find_vector_boxes(root: Path, ignore_index: int | None, data: Any = None) -> DatasetIndex:
    """Rasters with GIS layers, in windows; ``data`` is the config's ``data`` section."""
    from liandan.tasks.detect.vector import read_vector_boxes

    dataset = read_vector_boxes(root, data)
    index = _detection_index(root, "vector-boxes", dataset)
    index.notes += dataset.notes
    return index


def _find_voc_boxes(root: Path, ignore_index: int | None) -> DatasetIndex:
    from liandan.tasks.detect.voc import read_voc

    return _detection_index(root, "voc-boxes", read_voc(root))


def _coco_split(path: Path, root: Path) -> str | None:
    """The split a COCO file stands for: its split folder, else a word of its name
    (``instances_val2017.json`` -> val)."""
    if path.parent != root and (split := split_name(path.parent.name)):
        return split
    words = re.split(r"[^a-z]+", path.stem.lower())
    return next((s for w in words if (s := split_name(w))), None)


def _coco_images_dir(path: Path, root: Path) -> Path:
    """Where a COCO file's ``file_name`` s are: beside it, in ``DATA/images`` (or a
    folder of it named like the file's split), or in DATA; the first that holds the
    first listed image."""
    import json

    try:
        images = json.loads(path.read_text(encoding="utf-8-sig")).get("images") or []
        first = str(images[0]["file_name"])
    except Exception:  # read_coco reports what is wrong with the file
        return path.parent
    candidates = [path.parent, root / "images", root]
    if (images_dir := root / "images").is_dir():
        candidates[2:2] = subdirs(images_dir)
    candidates += [d for d in subdirs(root) if d.name.lower() in path.stem.lower()]
    return next((d for d in candidates if (d / first).is_file()), path.parent)


def _find_coco(root: Path, ignore_index: int | None) -> DatasetIndex:
    from liandan.tasks.detect.boxes import DetectionDataset
    from liandan.tasks.detect.coco import read_coco

    files = coco_files(root)
    if not files:  # only when named: auto-detection reads COCO where it finds such a file
        raise ConfigError(
            f"data.layout=coco, but {root} holds no COCO JSON (a .json with 'images', "
            "'annotations' and 'categories')",
            where="data.layout",
            hint="put the JSON in DATA or DATA/annotations/ (its images beside it or in "
            "DATA/images), or leave data.layout=auto to detect the layout",
        )
    merged: DetectionDataset | None = None
    names: dict[Path, list[str]] = {}
    for path in files:
        found = read_coco(path, _coco_images_dir(path, root))
        names[path] = found.class_names
        split = _coco_split(path, root) if len(files) > 1 else None
        for rec in found.images:
            rec.split = split
        if merged is None:
            merged = DetectionDataset(root, "coco", found.class_names, [], [])
        merged.images += found.images
        merged.problems += found.problems
    assert merged is not None
    if len({tuple(n) for n in names.values()}) > 1:
        raise DataError(
            "the COCO files list different categories",
            where=root,
            items=[f"{p}: {', '.join(n)}" for p, n in names.items()],
            hint="every split's file needs the same categories (same ids and names)",
        )
    return _detection_index(root, "coco", merged)


# ------------------------------------------------------------------ registry
Finder = Callable[[Path, "int | None"], DatasetIndex]
LAYOUTS: dict[str, tuple[Finder, str]] = {
    # name: (find, task); detection is liandan.data.folders.detect
    "voc": (_find_voc, "segment"),
    "yolo": (_find_yolo, "detect"),
    "coco": (_find_coco, "detect"),
    "voc-boxes": (_find_voc_boxes, "detect"),
    "vector-boxes": (_find_vector_boxes, "detect"),
    "csv": (_find_csv, "classify"),
    "pairs": (find_pairs, "segment"),
    "imagefolder": (_find_imagefolder, "classify"),
}
