"""Find the samples of a dataset in each supported folder layout.

A layout turns a folder into a :class:`DatasetIndex`: the task, the classes, and a list
of samples (image path, label or mask path, split). Layouts are a registry: each has a
``detect`` rule (for ``layout: auto``) and a ``find`` function. Problems a user can fix
(missing folder, image without mask, empty class) are :class:`DataError`s that list
every offending file, not just the first.
"""

from __future__ import annotations

import csv
import functools
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from liandan.data.readers import is_image_file
from liandan.errors import ConfigError, DataError

SPLITS = ("train", "val", "test")

# Distinct colours for previews when classes.yaml gives none (tab10-like, then grey ramp).
DEFAULT_COLORS = [
    (31, 119, 180),
    (255, 127, 14),
    (44, 160, 44),
    (214, 39, 40),
    (148, 103, 189),
    (140, 86, 75),
    (227, 119, 194),
    (127, 127, 127),
    (188, 189, 34),
    (23, 190, 207),
]


def default_colors(n: int) -> list[tuple[int, int, int]]:
    colors = list(DEFAULT_COLORS[:n])
    for i in range(len(colors), n):
        v = int(40 + (i * 97) % 200)
        colors.append((v, (v * 7) % 256, (v * 13) % 256))
    return colors


@dataclass
class ClassSpec:
    """The classes of a dataset and how they are stored in mask files.

    Attributes:
        names: class names, in class-index order.
        values: raw mask value of each class (e.g. ``[0, 255]``); None means the mask
            values are the class indices themselves.
        colors: RGB colour of each class, for previews and colour masks.
        ignore_index: raw mask value excluded from loss and metrics, or None.
        color_masks: masks are RGB images mapped through ``colors``.
    """

    names: list[str]
    values: list[int] | None = None
    colors: list[tuple[int, int, int]] = field(default_factory=list)
    ignore_index: int | None = None
    color_masks: bool = False

    def __post_init__(self) -> None:
        if not self.colors:
            self.colors = default_colors(len(self.names))

    @property
    def num_classes(self) -> int:
        return len(self.names)

    def raw_values(self) -> list[int]:
        """The value written to mask files for each class index."""
        return list(self.values) if self.values is not None else list(range(len(self.names)))

    def to_dict(self) -> dict[str, Any]:
        return {
            "names": self.names,
            "values": self.values,
            "colors": [list(c) for c in self.colors],
            "ignore_index": self.ignore_index,
            "color_masks": self.color_masks,
        }


@dataclass(frozen=True)
class Sample:
    """One item: an image and its class index (classify) or mask file (segment)."""

    image: Path
    target: int | Path
    split: str | None = None


@dataclass
class DatasetIndex:
    """Everything found in a dataset folder."""

    root: Path
    task: str
    layout: str
    classes: ClassSpec
    samples: list[Sample]
    notes: list[str] = field(default_factory=list)  # things the user should be told
    skipped: list[str] = field(default_factory=list)  # files left out (on_error: skip)
    # (kind, file, reason) found while indexing with strict=False (for `liandan scan`)
    problems: list[tuple[str, str, str]] = field(default_factory=list)

    def split(self, name: str) -> list[Sample]:
        return [s for s in self.samples if s.split == name]

    @property
    def has_splits(self) -> bool:
        return any(s.split is not None for s in self.samples)


# ------------------------------------------------------------------ classes.yaml
def read_classes_yaml(root: Path) -> dict[str, Any] | None:
    """The dataset's classes.yaml (in DATA or its parent), or None."""
    import yaml

    for folder in (root, root.parent):
        path = folder / "classes.yaml"
        if path.is_file():
            try:
                data = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
            except yaml.YAMLError as exc:
                raise DataError(f"not valid YAML: {exc}", where=path) from None
            if not isinstance(data, dict) or "names" not in data:
                raise DataError(
                    "classes.yaml must be a mapping with a 'names' list",
                    where=path,
                    hint="e.g. names: [background, building]",
                )
            unknown = set(data) - {"names", "values", "colors", "ignore_index", "nodata"}
            if unknown:
                raise DataError(
                    f"unknown key(s) {sorted(unknown)}",
                    where=path,
                    hint="valid keys: names, values, colors, ignore_index, nodata",
                )
            data["_path"] = path
            return data
    return None


def class_spec_from_yaml(data: dict[str, Any], ignore_index: int | None) -> ClassSpec:
    path = data["_path"]
    names = [str(n) for n in data["names"]]
    values = data.get("values")
    colors = data.get("colors")
    for key, seq in (("values", values), ("colors", colors)):
        if seq is not None and len(seq) != len(names):
            raise DataError(
                f"'{key}' has {len(seq)} entries but 'names' has {len(names)}", where=path
            )
    if ignore_index is None:
        ignore_index = data.get("ignore_index")
    return ClassSpec(
        names=names,
        values=[int(v) for v in values] if values is not None else None,
        colors=[tuple(int(x) for x in c) for c in colors] if colors else [],  # type: ignore[misc]
        ignore_index=ignore_index,
    )


# ------------------------------------------------------------------ helpers
def _images_in(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_file() and is_image_file(p))


def _require_dir(path: Path) -> None:
    if not path.exists():
        raise DataError("folder not found", where=path, hint="check the DATA path")
    if not path.is_dir():
        raise DataError("not a folder", where=path, hint="DATA must be a dataset folder")


def _split_dirs(root: Path) -> list[tuple[str | None, Path]]:
    present: list[tuple[str | None, Path]] = [(s, root / s) for s in SPLITS if (root / s).is_dir()]
    return present if present else [(None, root)]


# ------------------------------------------------------------------ classification
def _find_imagefolder(root: Path, ignore_index: int | None, strict: bool = True) -> DatasetIndex:
    splits = _split_dirs(root)
    class_names: list[str] = []
    for _, folder in splits:
        for d in sorted(folder.iterdir()):
            if d.is_dir() and not d.name.startswith(".") and d.name not in class_names:
                class_names.append(d.name)
    class_names.sort()
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
    path = root / "labels.csv"
    with path.open(newline="", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
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
        split = (row.get("split") or "").strip() or None
        if split is not None and split not in SPLITS:
            bad_split.append(f"line {n}: split {split!r}")
        if not image.is_file():
            missing.append(f"line {n}: {row['image']}")
        samples.append(Sample(image, index[row["label"]], split))
    if bad_split:
        raise DataError(
            "unknown split name(s)",
            where=path,
            items=bad_split,
            hint="split must be train, val or test",
        )
    if missing:
        raise DataError("image file(s) listed but not found", where=path, items=missing)
    return DatasetIndex(root, "classify", "csv", ClassSpec(names), samples)


# ------------------------------------------------------------------ segmentation
def _pair(images_dir: Path, masks_dir: Path, split: str | None) -> tuple[list[Sample], list[str]]:
    images = {p.stem: p for p in _images_in(images_dir)}
    masks = {p.stem: p for p in _images_in(masks_dir)} if masks_dir.is_dir() else {}
    labels_dir = masks_dir.parent / "labels"  # polygon labels of rasters (data/raster_labels.py)
    if labels_dir.is_dir():
        for p in sorted(labels_dir.iterdir()):
            if p.suffix.lower() in (".geojson", ".json", ".gpkg", ".shp"):
                masks.setdefault(p.stem, p)
    problems = [
        f"{images[s]}: image without a mask in {masks_dir}" for s in images if s not in masks
    ]
    problems += [
        f"{masks[s]}: mask without an image in {images_dir}" for s in masks if s not in images
    ]
    samples = [Sample(images[s], masks[s], split) for s in sorted(images) if s in masks]
    return samples, problems


def _find_pairs(root: Path, ignore_index: int | None, strict: bool = True) -> DatasetIndex:
    samples: list[Sample] = []
    problems: list[str] = []
    for split, folder in _split_dirs(root):
        if not (folder / "images").is_dir():
            continue
        found, bad = _pair(folder / "images", folder / "masks", split)
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
            hint="expected DATA/images/*.png with DATA/masks/*.png",
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
        found, problems = _pair(images_dir, masks_dir, None)
        # VOC without lists: every image needs a mask; extra JPEGs (detection-only) are normal
        problems = [p for p in problems if "mask without" in p]
        samples = found
    if problems:
        raise DataError("Pascal VOC files missing", where=root, items=problems)
    names = VOC_CLASSES
    spec = ClassSpec(names, ignore_index=255 if ignore_index is None else ignore_index)
    return DatasetIndex(root, "segment", "voc", spec, samples)


VOC_CLASSES = [
    "background",
    "aeroplane",
    "bicycle",
    "bird",
    "boat",
    "bottle",
    "bus",
    "car",
    "cat",
    "chair",
    "cow",
    "diningtable",
    "dog",
    "horse",
    "motorbike",
    "person",
    "pottedplant",
    "sheep",
    "sofa",
    "train",
    "tvmonitor",
]


# ------------------------------------------------------------------ registry
def _detect_voc(root: Path) -> bool:
    return (root / "JPEGImages").is_dir() and (root / "SegmentationClass").is_dir()


def _detect_csv(root: Path) -> bool:
    return (root / "labels.csv").is_file()


def _detect_pairs(root: Path) -> bool:
    return any((folder / "images").is_dir() for _, folder in _split_dirs(root))


def _detect_imagefolder(root: Path) -> bool:
    return any(
        d.is_dir() and not d.name.startswith(".")
        for _, folder in _split_dirs(root)
        for d in folder.iterdir()
    )


Finder = Callable[[Path, "int | None"], DatasetIndex]
LAYOUTS: dict[str, tuple[Callable[[Path], bool], Finder, str]] = {
    # name: (detect, find, task) -- detection tries them in this order
    "voc": (_detect_voc, _find_voc, "segment"),
    "csv": (_detect_csv, _find_csv, "classify"),
    "pairs": (_detect_pairs, _find_pairs, "segment"),
    "imagefolder": (_detect_imagefolder, _find_imagefolder, "classify"),
}


def detect_layout(root: Path) -> str:
    """The layout name of a dataset folder (the first registry rule that matches)."""
    _require_dir(root)
    for name, (detect, _, _) in LAYOUTS.items():
        if detect(root):
            return name
    raise DataError(
        "cannot tell the dataset layout",
        where=root,
        hint="expected DATA/<class>/*.png (classify), DATA/images + DATA/masks (segment), "
        "DATA/labels.csv or a Pascal VOC folder; see docs/data.md",
    )


def find_samples(
    root: str | Path,
    layout: str = "auto",
    task: str | None = None,
    ignore_index: int | None = None,
    strict: bool = True,
) -> DatasetIndex:
    """Index a dataset folder.

    Args:
        root: the dataset folder.
        layout: a layout name, or ``auto`` to detect it.
        task: expected task; an explicit mismatch with the layout is an error.
        ignore_index: raw mask value to ignore (overrides classes.yaml).
        strict: False collects unpaired images/masks and empty class folders into
            ``index.problems`` instead of raising (``liandan scan`` reports them).

    >>> index = find_samples("data/")  # doctest: +SKIP
    >>> index.task, index.layout, len(index.samples)  # doctest: +SKIP
    ('segment', 'pairs', 120)
    """
    root = Path(root)
    _require_dir(root)
    name = detect_layout(root) if layout == "auto" else layout
    if name not in LAYOUTS:
        raise ConfigError(
            f"unknown layout {name!r}",
            where="data.layout",
            hint=f"one of: auto, {', '.join(LAYOUTS)}",
        )
    _, find, layout_task = LAYOUTS[name]
    if task is not None and task != layout_task:
        raise ConfigError(
            f"task is {task!r} but {root} has the {name} layout, which is for {layout_task}",
            where="task",
            hint=f"set task={layout_task}, or arrange the data in a {task} layout",
        )
    if not strict and name in ("pairs", "imagefolder"):
        find = functools.partial(find, strict=False)  # type: ignore[call-arg]
    index = find(root, ignore_index)
    if index.task == "segment" and name != "voc":
        yaml_data = read_classes_yaml(root)
        if yaml_data is not None:
            index.classes = class_spec_from_yaml(yaml_data, ignore_index)
            index.notes.append(f"classes from {yaml_data['_path']}")
        else:
            index.classes = ClassSpec([], ignore_index=ignore_index)  # inferred from masks
    return index
