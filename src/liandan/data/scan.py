"""Integrity checks before training: every file decoded once, every problem listed.

``check_dataset`` reads each image and mask, maps mask values to classes, and collects
*all* problems (unreadable files, size mismatches, unknown mask values, mixed band
counts) before failing, so a user fixes them in one go. With ``data.on_error: skip``
the bad samples are left out and listed in the run instead. Files are only read.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from liandan.data.layouts import ClassSpec, DatasetIndex, Sample
from liandan.data.masks import (
    LOSSY_HINT,
    MaskMapper,
    color_mismatch,
    lossy_format,
    lossy_reason,
    snap_lossy,
)
from liandan.data.readers import RASTER_EXTS, raster_all_nodata, read_image, read_mask

__all__ = ["CheckedDataset", "MaskMapper", "check_dataset", "infer_classes"]
from liandan.errors import DataError
from liandan.tasks import get_task

CACHE_BYTES = 2 * 1024**3  # decoded datasets below this stay in memory


def infer_classes(
    masks: dict[Path, np.ndarray], ignore_index: int | tuple[int, int, int] | None
) -> tuple[ClassSpec, str]:
    """Classes from the mask values themselves, when there is no classes.yaml."""
    if not masks:
        raise DataError("no mask could be read: the classes cannot be told from the masks")
    if any(m.ndim == 3 for m in masks.values()):
        raise DataError(
            "colour (RGB) masks need a classes.yaml that lists the colour of each class",
            where=next(p for p, m in masks.items() if m.ndim == 3),
            hint="write DATA/classes.yaml with names: [...] and colors: [[r, g, b], ...]",
        )
    values: set[int] = set()
    for m in masks.values():
        values.update(int(v) for v in np.unique(m))
    values.discard(ignore_index if isinstance(ignore_index, int) else -(10**9))
    if values and values <= {0, 255}:
        if values == {0, 255}:
            note = (
                "masks hold only the values 0 and 255: read as two classes, '0' (value 0) "
                "and '255' (value 255); add classes.yaml to name them"
            )
            return ClassSpec(["0", "255"], values=[0, 255], ignore_index=ignore_index), note
    if len(values) < 2:
        raise DataError(
            f"every mask holds the single value {sorted(values)}: nothing to learn",
            where=next(iter(masks)).parent,
            hint="check the masks, or give their values in classes.yaml",
        )
    top = max(values)
    codes = sorted(values)
    if top >= 255 or (top >= 8 and len(values) < (top + 1) / 2):
        dense = 0  # values 0..dense-1 all occur: the ones from dense up break 0..N-1
        while dense in values:
            dense += 1
        odd = [v for v in codes if v >= dense]
        files = []
        for p, m in sorted(masks.items()):
            found = [v for v in np.unique(m).tolist() if v in odd]
            if found:
                files.append(f"{p}: value(s) {', '.join(str(v) for v in found[:8])}")
        if len(files) > 50:
            files = [*files[:50], f"... and {len(files) - 50} more mask file(s)"]
        hint = (
            "if a value marks pixels to ignore, set data.ignore_index (e.g. 255); "
            f"otherwise write classes.yaml with names and values: {codes}"
        )
        raise DataError(
            f"mask values {codes} are not class indices 0..N-1",
            where=next(iter(masks)).parent,
            items=files,
            hint=hint,
        )
    names = [str(i) for i in range(top + 1)]
    note = f"no classes.yaml: classes are the mask values 0..{top}"
    return ClassSpec(names, ignore_index=ignore_index), note


@dataclass
class CheckedDataset:
    """The index after every file was read: cached arrays and what was left out."""

    index: DatasetIndex
    images: dict[Path, np.ndarray] = field(default_factory=dict)  # empty when not cached
    masks: dict[Path, np.ndarray] = field(default_factory=dict)  # mapped class indices
    in_channels: int = 0
    dtype: str = "uint8"
    to_rgb: bool = False  # mixed 8-bit grey/RGB/RGBA photos, all read as RGB


def _to_rgb(img: np.ndarray) -> np.ndarray:
    if img.shape[2] == 1:
        return np.repeat(img, 3, axis=2)
    return img[:, :, :3]


@dataclass
class TargetCheck:
    """What a task's own target checks found beyond the per-sample problems."""

    blocking: list[str] = field(default_factory=list)  # dataset problems, never skipped
    hint: str | None = None  # how to fix them (e.g. list the classes in classes.yaml)
    mismatch: str | None = None  # classes.yaml colours vs the masks', when they differ


def check_masks(
    index: DatasetIndex,
    problems: list[tuple[Sample, str]],
    raw_masks: dict[Path, np.ndarray],
    lossy: dict[Path, str],
    blocking: list[str],
) -> TargetCheck:
    """Masks: infer or check the classes, map every mask (``raw_masks`` in place).

    Unknown values or colours are appended to ``problems``; classes that cannot be read
    are a blocking problem (raised at once when nothing else is wrong).
    """
    found = TargetCheck()
    good_masks = {
        s.target: raw_masks[s.target]
        for s in index.samples
        if s.image not in {p.image for p, _ in problems} and isinstance(s.target, Path)
    }
    lossless = {p: m for p, m in good_masks.items() if p not in lossy}
    if not index.classes.names and good_masks:
        try:
            if not lossless:  # nothing to read the class values from
                raise DataError(
                    "every mask is in a lossy format: the class values cannot be told",
                    where=index.root,
                    hint="list the classes (names, values or colors) in classes.yaml",
                )
            snap_flag = index.classes.snap_lossy
            index.classes, note = infer_classes(lossless, index.classes.ignore_index)
            index.classes.snap_lossy = snap_flag
            index.notes.append(note)
        except DataError as exc:  # no classes: listed with every other problem
            if not (problems or blocking):
                raise
            found.blocking += exc.items or [exc.render()]
            found.hint = exc.hint
    if any(m.ndim == 3 for m in good_masks.values()):
        index.classes.color_masks = True
    if index.classes.names and (snapped := snap_lossy(good_masks, lossy, index.classes)):
        index.notes.append(snapped)
    mapper = MaskMapper(index.classes)
    unknown: Counter[tuple[int, ...]] = Counter()
    class_pixels = np.zeros(index.classes.num_classes, np.int64)
    for s in index.samples:
        if not isinstance(s.target, Path) or s.target not in good_masks or found.hint:
            continue
        mapped = mapper.map(good_masks[s.target])
        if (mapped == MaskMapper.UNKNOWN).any():
            vals = ", ".join(mapper.unknown_values(good_masks[s.target], mapped))
            what = "colour(s)" if good_masks[s.target].ndim == 3 else "value(s)"
            problems.append((s, f"{s.target}: mask {what} {vals} are not a class"))
            unknown += mapper.unknown_colors(good_masks[s.target], mapped)
        class_pixels += np.bincount(mapped[mapped >= 0], minlength=len(class_pixels))
        raw_masks[s.target] = mapped
    found.mismatch = color_mismatch(index.classes, unknown, class_pixels.tolist())
    return found


def check_dataset(
    index: DatasetIndex,
    *,
    bands: list[int] | None = None,
    on_error: str = "fail",
    cache: bool = True,
    lossy_masks: str = "error",
) -> CheckedDataset:
    """Decode every sample once, map masks to classes and collect every problem.

    Masks in a lossy format (JPEG, lossy WebP) are a problem, or with ``lossy_masks``
    ``nearest`` snapped to the nearest class value (:mod:`liandan.data.masks`).

    The problems ``find_samples(strict=False)`` left in ``index.problems`` (unpaired
    files, empty class folders) are listed with the others, in the same message, and
    are never skipped: they mean the dataset is not what it looks like.
    """
    problems: list[tuple[Sample, str]] = []
    blocking = [f"{file}: {why}" for _, file, why in index.problems]  # never skipped
    classes_hint: str | None = None  # set when the classes cannot be read from the masks
    images: dict[Path, np.ndarray] = {}
    raw_masks: dict[Path, np.ndarray] = {}
    lossy: dict[Path, str] = {}  # mask file -> its lossy format
    mismatch: str | None = None  # colours of classes.yaml vs the masks', when they differ
    index.classes.snap_lossy = lossy_masks == "nearest"
    for sample in index.samples:
        try:
            images[sample.image] = read_image(sample.image, bands)
        except DataError as exc:
            problems.append((sample, exc.render()))
        else:
            if sample.image.suffix.lower() in RASTER_EXTS and raster_all_nodata(sample.image):
                reason = f"{sample.image}: every pixel is nodata: nothing to learn"
                problems.append((sample, reason))
        if isinstance(sample.target, Path):  # read even when the image is bad: list both
            try:
                raw = read_mask(sample.target, palette_colors=index.classes.palette_colors)
                raw_masks[sample.target] = raw
            except DataError as exc:
                problems.append((sample, exc.render()))
                continue
            if fmt := lossy_format(sample.target):
                lossy[sample.target] = fmt
                if lossy_masks != "nearest":
                    problems.append((sample, lossy_reason(sample.target, fmt, raw, index.classes)))
                    continue
            if sample.image not in images:
                continue
            ih, iw = images[sample.image].shape[:2]
            mh, mw = raw_masks[sample.target].shape[:2]
            if (ih, iw) != (mh, mw):
                problems.append(
                    (sample, f"{sample.target}: mask is {mw}x{mh} but its image is {iw}x{ih}")
                )

    bad_images = {s.image for s, _ in problems}
    good = [s for s in index.samples if s.image not in bad_images]
    band_counts = {images[s.image].shape[2] for s in good}
    dtypes = {images[s.image].dtype.str for s in good}
    to_rgb = False
    if len(band_counts) > 1:
        if all(d == np.dtype(np.uint8).str for d in dtypes) and band_counts <= {1, 3, 4}:
            to_rgb = True  # everyday photos: grey, RGB and RGBA mixed; read all as RGB
            index.notes.append("images mix grey/RGB/RGBA: all are read as 3-band RGB")
        else:
            counts = {c: [s for s in good if images[s.image].shape[2] == c] for c in band_counts}
            common = max(counts, key=lambda c: len(counts[c]))
            for c, members in counts.items():
                if c != common:
                    problems += [
                        (s, f"{s.image}: {c} bands, most images have {common}") for s in members
                    ]

    # the task's own checks of its targets (masks: classes read, colours mapped)
    found = get_task(index.task).check_targets(index, problems, raw_masks, lossy, blocking)
    blocking += found.blocking
    classes_hint, mismatch = found.hint, found.mismatch

    if problems or blocking:
        bad = {s.image for s, _ in problems}
        items = blocking + [reason for _, reason in problems]
        if on_error != "skip" or blocking:
            hint = "fix or remove these files, or set data.on_error=skip to leave them out"
            if any("not a class" in r for r in items):
                hint = (
                    "list the classes (names, values) and ignore_index in classes.yaml, "
                    "or set data.ignore_index; " + hint
                )
            if classes_hint:
                hint = f"{classes_hint}; {hint}"
            if mismatch:
                hint = f"{mismatch}; {hint}"
            if lossy and lossy_masks != "nearest":
                hint = f"{LOSSY_HINT}; {hint}"
            if index.problems:
                hint = (
                    "every image needs its mask (paired by file name) and every class folder "
                    "images (data.on_error=skip does not skip these); " + hint
                )
            summary = [f"{len(blocking)} dataset problem(s)"] if blocking else []
            summary += [f"{len(bad)} bad sample(s)"] if bad else []
            raise DataError(", ".join(summary), where=index.root, items=items, hint=hint)
        index.skipped = items
        index.samples = [s for s in index.samples if s.image not in bad]
        if not index.samples:
            raise DataError("every sample was bad", where=index.root, items=items)

    kept = [images[s.image] for s in index.samples]
    if to_rgb:
        for s in index.samples:
            images[s.image] = _to_rgb(images[s.image])
    checked = CheckedDataset(
        index,
        in_channels=3 if to_rgb else kept[0].shape[2],
        dtype=str(kept[0].dtype),
        to_rgb=to_rgb,
    )
    total = sum(a.nbytes for a in images.values()) + sum(m.nbytes for m in raw_masks.values())
    if cache and total <= CACHE_BYTES:
        keep = {s.image for s in index.samples}
        checked.images = {p: a for p, a in images.items() if p in keep}
        checked.masks = {
            s.target: raw_masks[s.target] for s in index.samples if isinstance(s.target, Path)
        }
    return checked
