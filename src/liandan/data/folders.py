"""Which folder of a dataset holds what: split folders, image folders, mask folders.

The path logic behind :mod:`liandan.data.layouts`, read from folder and file names
(a few image headers at most). Names are matched in any case, singular or plural:

- split folders: ``train``/``training``, ``val``/``valid``/``validation``/``dev``,
  ``test``/``testing``;
- segmentation pairs: an image folder (``images``, ``imgs``, ``image``, ``img``) next
  to a mask folder (``masks``, ``annotations``, ``labels``, ``gt`` ... see
  :data:`MASK_DIRS`), in DATA, in each split folder, in group folders
  (``DATA/<group>/images``), or split inside them (``DATA/images/train``).

Folders whose files pair up by name (same size, one side with mask-like files) are
never taken for class folders: with names we do not know, the layout is ambiguous and
:class:`~liandan.errors.DataError` says which readings were considered and how to
choose one (``data.layout``).
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from liandan.data.readers import is_image_file
from liandan.errors import DataError

SPLITS = ("train", "val", "test")
SPLIT_NAMES = {
    "train": "train",
    "training": "train",
    "val": "val",
    "valid": "val",
    "validation": "val",
    "dev": "val",
    "test": "test",
    "testing": "test",
}
IMAGE_DIRS = ("images", "imgs", "image", "img")
MASK_DIRS = ("masks", "mask", "annotations", "annotation", "labels", "label", "gt")
VECTOR_EXTS = (".geojson", ".json", ".gpkg", ".shp")
MASK_VALUES = 64  # a file with at most this many distinct values or colours may be a mask
HOW_TO_CHOOSE = (
    "say which one you mean with data.layout (e.g. `liandan train DATA "
    "data.layout=pairs:images/masks`) or, for a detection reading, with task=detect; "
    "or move what you do not mean out of DATA; see docs/data.md"
)


def split_name(name: str) -> str | None:
    """The split (train, val, test) a folder name stands for, or None."""
    return SPLIT_NAMES.get(name.lower())


def subdirs(folder: Path) -> list[Path]:
    """The visible sub-folders of ``folder``, sorted by name."""
    with os.scandir(folder) as entries:  # no stat per file: class folders hold thousands
        names = [e.name for e in entries if e.is_dir() and not e.name.startswith(".")]
    return [folder / name for name in sorted(names)]


def child(folder: Path, name: str) -> Path | None:
    """The entry of ``folder`` called ``name`` in any case (an exact match first)."""
    if (folder / name).exists():
        return folder / name
    if not folder.is_dir():
        return None
    return next((p for p in sorted(folder.iterdir()) if p.name.lower() == name.lower()), None)


def split_dirs(root: Path) -> list[tuple[str | None, Path]]:
    """The split folders of ``root`` as (split, folder); ``[(None, root)]`` when none.

    Two folders for one split (``val/`` and ``valid/``) are an error naming both.
    """
    found: dict[str, list[Path]] = {}
    for d in subdirs(root):
        split = split_name(d.name)
        if split is not None:
            found.setdefault(split, []).append(d)
    twice = [f"{s}: {', '.join(d.name for d in ds)}" for s, ds in found.items() if len(ds) > 1]
    if twice:
        raise DataError(
            "more than one folder for the same split",
            where=root,
            items=twice,
            hint="merge them into one folder, or move one out of DATA",
        )
    return [(s, found[s][0]) for s in SPLITS if s in found] or [(None, root)]


def image_stems(folder: Path) -> set[str]:
    return {p.stem for p in folder.iterdir() if p.is_file() and is_image_file(p)}


def _has_vectors(folder: Path) -> bool:
    return any(p.suffix.lower() in VECTOR_EXTS for p in folder.iterdir() if p.is_file())


def pair_up(a: set[str], b: set[str]) -> bool:
    """Two folders pair up when most files of the smaller one have a namesake in the other."""
    common = len(a & b)
    return common > 0 and common >= min(len(a), len(b)) / 2


# ------------------------------------------------------------------ segmentation pairs
@dataclass(frozen=True)
class PairSite:
    """Where the images and masks of one split (or group) are."""

    split: str | None
    images: Path
    masks: Path  # raster masks; may not exist (then every image is unpaired)
    vectors: Path | None = None  # polygon labels of rasters (labels/<stem>.geojson ...)


def _named(folder: Path, names: tuple[str, ...]) -> list[Path]:
    return [d for d in subdirs(folder) if d.name.lower() in names]


def _ambiguous(where: Path, what: str, options: list[str]) -> DataError:
    return DataError(
        f"ambiguous dataset layout: {what}; the readings considered",
        where=where,
        items=options,
        hint=HOW_TO_CHOOSE,
    )


def _choose_masks(folder: Path, images: Path, split: str | None) -> PairSite:
    """The mask folder next to ``images``: the one named like masks that pairs with it."""
    named = _named(folder, MASK_DIRS)
    rasters = [d for d in named if image_stems(d)]
    vectors = next((d for d in named if _has_vectors(d)), None)
    if len(rasters) > 1:
        stems = image_stems(images)
        paired = [d for d in rasters if pair_up(stems, image_stems(d))]
        if len(paired) != 1:
            options = [
                f"data.layout=pairs:{images.name}/{d.name}: masks in {d}" for d in paired or rasters
            ]
            raise _ambiguous(folder, f"{len(options)} folders could hold the masks", options)
        rasters = paired
    if rasters:
        return PairSite(split, images, rasters[0], vectors)
    fallback = named[0] if named and vectors is None else folder / "masks"
    return PairSite(split, images, fallback, vectors)


def _site_in(folder: Path, split: str | None, named: tuple[str, str] | None) -> list[PairSite]:
    """The pair site(s) of one folder: images + masks, or split inside them."""
    if named is not None:
        images, masks = child(folder, named[0]), child(folder, named[1])
        if images is None or not images.is_dir():
            return []
        masks = masks if masks is not None else folder / named[1]
        return [PairSite(split, images, masks, masks if masks.is_dir() else None)]
    found = _named(folder, IMAGE_DIRS)
    if not found:
        return []
    if len(found) > 1:
        options = [f"data.layout=pairs:{d.name}/masks: images in {d}" for d in found]
        raise _ambiguous(folder, f"{len(found)} folders could hold the images", options)
    images = found[0]
    inner = [(s, d) for s, d in split_dirs(images) if s is not None]
    if split is None and inner and not image_stems(images):  # DATA/images/train ...
        sites = []
        for s, d in inner:
            site = _choose_masks(folder, d, s)
            masks = child(site.masks, d.name)
            if masks is None:
                masks = next((m for t, m in split_dirs(site.masks) if t == s), site.masks / d.name)
            sites.append(PairSite(s, d, masks, site.vectors))
        return sites
    return [_choose_masks(folder, images, split)]


def pair_sites(root: Path, named: tuple[str, str] | None = None) -> list[PairSite]:
    """Every (split, images, masks) folder triple of a segmentation dataset.

    Args:
        root: the dataset folder.
        named: the image and mask folder names (``data.layout=pairs:IMAGES/MASKS``);
            None recognises them by :data:`IMAGE_DIRS` and :data:`MASK_DIRS`.
    """
    splits = split_dirs(root)
    sites = [site for split, folder in splits for site in _site_in(folder, split, named)]
    if not sites and splits[0][0] is None:  # group folders: DATA/<group>/images + masks
        sites = [site for d in subdirs(root) for site in _site_in(d, None, named)]
    return sites


def _files(folder: Path) -> dict[str, Path]:
    return {p.stem: p for p in sorted(folder.iterdir()) if p.is_file() and is_image_file(p)}


def _mask_like(path: Path) -> tuple[bool, tuple[int, int]] | None:
    """(at most MASK_VALUES distinct values, size) of an image file; None if unreadable."""
    from PIL import Image

    try:
        with Image.open(path) as img:
            if img.width * img.height > 4096 * 4096:  # too large to decode here: its mode
                return img.mode in ("1", "L", "P", "I;16"), img.size
            return img.getcolors(MASK_VALUES) is not None, img.size
    except Exception:  # any file PIL cannot read is simply no evidence
        return None


def _as_pair(a: dict[str, Path], b: dict[str, Path]) -> tuple[bool, bool] | None:
    """Whether the files of ``a`` and ``b`` (paired by name) look like masks, or None.

    None when they look like classes with numbered files: a pair differs in size, or
    neither side has mask-like files (few distinct values, as a class mask has).
    """
    common = sorted(set(a) & set(b))[:3]
    looks = [(_mask_like(a[s]), _mask_like(b[s])) for s in common]
    if any(x is None or y is None or x[1] != y[1] for x, y in looks):
        return None
    a_mask = all(x[0] for x, _ in looks)  # type: ignore[index]
    b_mask = all(y[0] for _, y in looks)  # type: ignore[index]
    return (a_mask, b_mask) if a_mask or b_mask else None


def lookalike_pairs(root: Path) -> list[tuple[Path, Path]]:
    """Sub-folders with unknown names whose files pair up as (images, masks) do.

    Files pair up by name, each pair has one size, and one side (or both) holds masks
    (at most :data:`MASK_VALUES` distinct values); the mask side comes second.
    """
    found = []
    for _, folder in split_dirs(root):
        if not 2 <= len(subdirs(folder)) <= 4:  # more sub-folders than that are classes
            continue
        dirs = [(d, _files(d)) for d in subdirs(folder)]
        for i, (a, fa) in enumerate(dirs):
            for b, fb in dirs[i + 1 :]:
                masks = _as_pair(fa, fb) if pair_up(set(fa), set(fb)) else None
                if masks is not None:
                    found.append((b, a) if masks == (True, False) else (a, b))
    return found


# ------------------------------------------------------------------ detection
def _has_voc(root: Path) -> bool:
    return (root / "JPEGImages").is_dir() and (root / "SegmentationClass").is_dir()


def _has_voc_boxes(root: Path) -> bool:
    """Pascal VOC boxes: ``Annotations/*.xml`` beside ``JPEGImages/``."""
    ann = root / "Annotations"
    return (root / "JPEGImages").is_dir() and ann.is_dir() and any(ann.glob("*.xml"))


def _has_csv(root: Path) -> bool:
    path = child(root, "labels.csv")
    return path is not None and path.is_file()


def _has_class_dirs(root: Path) -> bool:
    return any(subdirs(folder) for _, folder in split_dirs(root))


# ------------------------------------------------------------------ detection layouts
YOLO_NAMES = ("data.yaml", "dataset.yaml", "classes.txt")  # where YOLO keeps class names
COCO_HEAD = 1 << 16  # bytes of a JSON file read to tell a COCO detection file


def yolo_label_dirs(root: Path) -> list[Path]:
    """``labels`` folders (in DATA, its split folders, or split inside) holding ``*.txt``
    files beside an ``images`` folder: the Ultralytics YOLO layout."""
    found = []
    for _, folder in split_dirs(root):
        images, labels = child(folder, "images"), child(folder, "labels")
        if images is None or labels is None or not labels.is_dir():
            continue
        inner = [labels] + [d for s, d in split_dirs(labels) if s is not None]
        if any(p.suffix == ".txt" and p.name != "classes.txt" for d in inner for p in d.iterdir()):
            found.append(labels)
    return found


def coco_files(root: Path) -> list[Path]:
    """COCO detection JSON files: in DATA, ``DATA/annotations`` or a split folder, with an
    ``images`` list and ``categories`` (read from the file's head, so large files are cheap)."""
    folders = [root, root / "annotations"] + [d for s, d in split_dirs(root) if s is not None]
    found = []
    for folder in folders:
        if not folder.is_dir():
            continue
        for path in sorted(folder.iterdir()):
            if path.suffix.lower() != ".json" or not path.is_file():
                continue
            with path.open("rb") as f:
                head = f.read(COCO_HEAD)
            if b'"images"' in head and (b'"categories"' in head or b'"annotations"' in head):
                found.append(path)
    return found


def _choice(layout: str, task: str) -> str:
    """How a user picks a reading: ``data.layout``, or ``task`` for detection layouts."""
    return f"task={task}" if layout in ("yolo", "coco", "voc-boxes") else f"data.layout={layout}"


def _no_masks(site: PairSite, coco: list[Path]) -> bool:
    """Whether a pair site's label folder holds neither masks nor polygon layers (only
    YOLO text files or COCO JSON)."""
    if site.masks.is_dir() and image_stems(site.masks):
        return False
    if site.vectors is None:
        return True
    layers = [p for p in site.vectors.iterdir() if p.suffix.lower() in VECTOR_EXTS]
    return all(p in coco for p in layers)


def _has_layers(site: PairSite, coco: list[Path]) -> bool:
    """Whether a pair site's label folder holds GIS layers (not COCO JSON) for images."""
    if site.vectors is None or not site.images.is_dir() or not image_stems(site.images):
        return False
    return any(
        p.suffix.lower() in VECTOR_EXTS and p not in coco
        for p in site.vectors.iterdir()
        if p.is_file()
    )


def detect(root: Path, task: str | None = None) -> str:
    """The layout of a dataset folder; ambiguity is an error that lists the readings.

    Unambiguous precedence: a Pascal VOC folder, ``labels.csv`` and recognised image and
    mask folders each win over class folders (their own sub-folders look like classes).
    Two of them at once, or sub-folders with unknown names whose files pair up by name,
    are ambiguous; a ``task`` settles it when only one reading fits it. Rasters with GIS
    layers (``images/`` + ``labels/*.gpkg``) are polygon labels for segmentation, and
    with ``task`` detect boxes (``vector-boxes``).
    """
    readings: list[tuple[str, str, str]] = []  # (layout value, task, description)
    asked: list[tuple[str, str, str]] = []  # readings offered only to the task they name
    if _has_voc(root):
        readings.append(("voc", "segment", "Pascal VOC: JPEGImages/ + SegmentationClass/"))
    if _has_voc_boxes(root):
        readings.append(("voc-boxes", "detect", "detection: Pascal VOC XML in Annotations/"))
    if _has_csv(root):
        readings.append(("csv", "classify", "classification listed in labels.csv"))
    yolo = yolo_label_dirs(root)
    if yolo:
        where = ", ".join(str(d.relative_to(root)) for d in yolo)
        named = [n for n in YOLO_NAMES if (root / n).is_file()]
        names = f", classes in {named[0]}" if named else ""
        readings.append(("yolo", "detect", f"detection: YOLO text labels in {where}{names}"))
    coco = coco_files(root)
    if coco:
        where = ", ".join(str(p.relative_to(root)) for p in coco)
        readings.append(("coco", "detect", f"detection: COCO JSON {where}"))
    # labels/ of YOLO text files or annotations/ of COCO JSON hold no masks
    sites = [s for s in pair_sites(root) if not ((yolo or coco) and _no_masks(s, coco))]
    layers = [s for s in sites if _has_layers(s, coco)]
    if layers:  # boxes only when the task asks: polygon labels segment, as always
        where = ", ".join(f"{s.images.relative_to(root)} + {s.vectors.relative_to(root)}"
                          for s in layers[:2] if s.vectors is not None)  # fmt: skip
        asked.append(("vector-boxes", "detect", f"detection: GIS layers in {where}"))
    if sites:
        site = sites[0]
        where = f"{site.images.relative_to(root)} + {site.masks.relative_to(root)}"
        readings.append(("pairs", "segment", f"segmentation: images and masks in {where}"))
    if not readings:
        for a, b in lookalike_pairs(root):
            readings.append(
                (
                    f"pairs:{a.name}/{b.name}",
                    "segment",
                    f"segmentation: images in {a}, masks in {b} (their files pair up by name)",
                )
            )
            classes = ", ".join(d.name for d in subdirs(a.parent))
            readings.append(("imagefolder", "classify", f"classification: classes {classes}"))
    readings += [r for r in asked if r[1] == task]
    if not readings and _has_class_dirs(root):
        return "imagefolder"
    unique = list(dict.fromkeys(readings))
    if task is not None and len({t for _, t, _ in unique}) > 1:
        unique = [r for r in unique if r[1] == task]
    if len(unique) == 1:
        return unique[0][0]
    if not unique:
        raise DataError(
            "cannot tell the dataset layout",
            where=root,
            hint="expected DATA/<class>/*.png (classify), DATA/images + DATA/masks (segment), "
            "DATA/labels.csv, a Pascal VOC folder, DATA/images + DATA/labels/*.txt (detect, "
            "YOLO) or a COCO JSON (detect); see docs/data.md and docs/detection.md",
        )
    options = [f"{_choice(value, t)}: {text}" for value, t, text in unique]
    raise _ambiguous(root, "it could be read in more than one way", options)
