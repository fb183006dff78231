"""Dataset problems from the per-file records of ``liandan scan``.

Each :class:`Problem` is a file, a kind and a reason in words; its severity says
whether training would stop on it (the same checks ``check_dataset`` runs while
training). Mask records are first read as training reads the files
(:mod:`liandan.data.mask_records`).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from liandan.data.layouts import DatasetIndex, Sample
from liandan.data.mask_records import (
    by_palette_colors,
    class_codes,
    classes_for,
    lossy_record_reason,
    snap_record,
    unknown_colors,
)
from liandan.data.masks import MaskMapper, color_mismatch, lossy_format
from liandan.data.raster_labels import VECTOR_EXTS
from liandan.errors import DataError
from liandan.tasks import get_task

MIN_SIDE = 8  # below this an image carries too little to learn from (and breaks pooling)
# problem kinds that break training (check_dataset or find_samples would stop on them)
ERRORS = {"unreadable", "empty-file", "bomb", "unpaired", "size-mismatch", "bad-mask-values"}
ERRORS |= {"mixed-bands", "lossy-mask"}
SPLIT_ORDER = {"train": 0, "val": 1, "test": 2, "none": 3}


@dataclass
class Problem:
    """One thing wrong with the dataset: the file, the kind and a reason in words."""

    kind: str
    file: str
    reason: str
    blocking: bool | None = None  # None: decided by the kind (ERRORS)

    @property
    def severity(self) -> str:
        blocking = self.kind in ERRORS if self.blocking is None else self.blocking
        return "error" if blocking else "warning"


def sample_split(sample: Sample) -> str:
    return sample.split or "none"


def is_vector(path: int | Path) -> bool:
    """A polygon label file (GeoJSON, GeoPackage, shapefile), not a mask image."""
    return isinstance(path, Path) and path.suffix.lower() in VECTOR_EXTS


def usable(sample: Sample, records: dict[Path, dict[str, Any]]) -> bool:
    if "error" in records[sample.image]:
        return False
    target = sample.target
    return not isinstance(target, Path) or is_vector(target) or "error" not in records[target]


def mask_records(
    index: DatasetIndex,
    good: list[Sample],
    records: dict[Path, dict[str, Any]],
    lossy_masks: str = "error",
) -> tuple[dict[Path, dict[str, Any]], list[Problem], list[str]]:
    """The mask records of ``good`` samples read as training reads the files.

    Palette PNGs count by colour when the classes are colours; lossy files (JPEG, lossy
    WebP) are problems and left out, or with ``lossy_masks`` ``nearest`` snapped to the
    classes. Polygon labels are not masks. Returns the records, problems and notes.
    """
    masks = {}
    for s in good:
        if isinstance(s.target, Path) and not is_vector(s.target):
            rec = records[s.target]
            masks[s.target] = by_palette_colors(rec, s.target) if index.classes.by_color else rec
    lossy = {p: fmt for p in masks if (fmt := lossy_format(p))}
    if not lossy:
        return masks, [], []
    lossless = {p: r for p, r in masks.items() if p not in lossy}
    if lossy_masks != "nearest":
        known = index.classes if index.classes.names else None
        problems = [
            Problem("lossy-mask", str(p), lossy_record_reason(fmt, masks[p], known))
            for p, fmt in lossy.items()
        ]
        return lossless, problems, []
    try:
        spec, _ = classes_for(index, lossless)
    except DataError:  # named by the checks of the lossless masks
        return lossless, [], []
    if not spec.names:
        reason = "every mask is in a lossy format: list the classes in classes.yaml"
        return lossless, [Problem("lossy-mask", str(index.root), reason, blocking=True)], []
    changed = total = 0
    for p in lossy:
        total += sum(masks[p]["values"].values())
        masks[p], n = snap_record(masks[p], spec)
        changed += n
    formats = ", ".join(sorted(set(lossy.values())))
    note = (
        f"{len(lossy)} lossy mask file(s) ({formats}) snapped to the nearest class value "
        f"(data.lossy_masks=nearest): {changed / max(1, total):.2%} of their pixels changed"
    )
    return masks, [], [note]


def check_records(
    index: DatasetIndex,
    records: dict[Path, dict[str, Any]],
    notes: list[str],
    lossy_masks: str = "error",
) -> list[Problem]:
    """Every problem the records show, each with its file and a reason."""
    problems: list[Problem] = []
    for sample in index.samples:
        for path in (sample.image, sample.target):
            if isinstance(path, Path) and not is_vector(path) and "error" in records[path]:
                problems.append(Problem(records[path]["error"], str(path), records[path]["reason"]))
    good = [s for s in index.samples if usable(s, records)]
    for s in good:
        img = records[s.image]
        if img.get("nodata") is not None and img.get("nodata_pixels") == img["h"] * img["w"]:
            reason = f"every pixel is nodata (value {img['nodata']}): nothing to learn"
            problems.append(Problem("all-nodata", str(s.image), reason, blocking=True))
        if min(img["h"], img["w"]) < MIN_SIDE:
            reason = f"{img['w']}x{img['h']} px: below {MIN_SIDE} px on a side"
            problems.append(Problem("too-small", str(s.image), reason))
        if isinstance(s.target, Path) and not is_vector(s.target):
            m = records[s.target]
            if (m["h"], m["w"]) != (img["h"], img["w"]):
                reason = f"mask is {m['w']}x{m['h']} but its image is {img['w']}x{img['h']}"
                problems.append(Problem("size-mismatch", str(s.target), reason))
    problems += _band_problems(good, records, notes)
    # the task's own target checks (masks: lossy formats, unknown values, classes)
    problems += get_task(index.task).target_problems(index, good, records, lossy_masks, notes)
    problems += _duplicates(good, records)
    return problems


def mask_problems(
    index: DatasetIndex,
    good: list[Sample],
    records: dict[Path, dict[str, Any]],
    lossy_masks: str,
    notes: list[str],
) -> list[Problem]:
    """The problems of the masks' records: lossy formats, values that are not a class."""
    masks, lossy, lossy_notes = mask_records(index, good, records, lossy_masks)
    notes += lossy_notes
    return lossy + _mask_problems(index, masks)


def _band_problems(
    good: list[Sample], records: dict[Path, dict[str, Any]], notes: list[str]
) -> list[Problem]:
    counts = Counter(records[s.image]["c"] for s in good)
    dtypes = {records[s.image]["dtype"] for s in good}
    if len(counts) <= 1:
        return []
    if dtypes == {"uint8"} and set(counts) <= {1, 3, 4}:
        notes.append("images mix grey/RGB/RGBA: all are read as 3-band RGB")
        return []
    common = counts.most_common(1)[0][0]
    return [
        Problem("mixed-bands", str(s.image), f"{records[s.image]['c']} bands, most have {common}")
        for s in good
        if records[s.image]["c"] != common
    ]


def _mask_problems(index: DatasetIndex, masks: dict[Path, dict[str, Any]]) -> list[Problem]:
    try:
        spec, _ = classes_for(index, masks)
    except DataError as exc:
        items = [i.split(": ", 1) for i in exc.items if ": " in i]
        if items:
            return [Problem("bad-mask-values", f, reason) for f, reason in items]
        return [Problem("bad-mask-values", str(exc.where), exc.message)]
    problems = []
    pixels = np.zeros(spec.num_classes, dtype=np.int64)
    unknown: Counter[tuple[int, ...]] = Counter()
    for path, rec in masks.items():
        codes = class_codes(spec, rec)
        if codes.get(MaskMapper.UNKNOWN):
            raw = np.array(list(rec["values"]))
            mapped = [class_codes(spec, {**rec, "values": {v: 1}}) for v in raw]
            bad = [str(v) for v, m in zip(raw, mapped, strict=True) if MaskMapper.UNKNOWN in m]
            if rec.get("color"):
                bad = [f"({v.replace(',', ', ')})" for v in bad]
                unknown += unknown_colors(rec, spec)
            what = "colour(s)" if rec.get("color") else "value(s)"
            reason = f"mask {what} {', '.join(bad[:8])} are not a class nor the ignore index"
            problems.append(Problem("bad-mask-values", str(path), reason))
        for code, n in codes.items():
            if code >= 0:
                pixels[code] += n
    yaml_file = index.root / spec.source
    where = str(yaml_file if yaml_file.is_file() else index.root)
    mismatch = color_mismatch(spec, unknown, pixels.tolist())
    if mismatch:
        problems.append(Problem("color-mismatch", where, mismatch, blocking=True))
    raw_values = spec.raw_values()
    for i, name in enumerate(spec.names):
        if pixels[i] == 0:
            stored = (
                f"colour {list(spec.colors[i])}"
                if spec.palette_colors or unknown
                else f"mask value {raw_values[i]}"
            )
            reason = f"class {name!r} ({stored}) occurs in no mask"
            problems.append(Problem("empty-class", where, reason))
    return problems


def _duplicates(good: list[Sample], records: dict[Path, dict[str, Any]]) -> list[Problem]:
    groups: dict[str, list[Sample]] = {}
    for s in good:
        groups.setdefault(records[s.image]["hash"], []).append(s)
    problems = []
    for members in groups.values():
        if len(members) < 2:
            continue
        members.sort(key=lambda s: (SPLIT_ORDER[sample_split(s)], str(s.image)))
        first = members[0]
        for s in members[1:]:
            a, b = sample_split(first), sample_split(s)
            if a != b and "none" not in (a, b):
                reason = f"same pixels as {first.image} ({a}): leakage from {a} into {b}"
                problems.append(Problem("leakage", str(s.image), reason))
            else:
                problems.append(Problem("duplicate", str(s.image), f"same pixels as {first.image}"))
    return problems
