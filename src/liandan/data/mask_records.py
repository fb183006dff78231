"""Mask records of ``liandan scan`` read as training reads the files.

A scan record counts the raw values of a mask (``{"3": 120, ...}``, or
``{"r,g,b": n}`` for colour masks). Training reads some files differently, so the
records are translated the same way before any check: palette PNGs of a dataset whose
classes are colours count by colour, not palette index; lossy files (JPEG, lossy WebP)
are refused, or snapped to the nearest class value with ``data.lossy_masks: nearest``.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np

from liandan.data.layouts import ClassSpec, DatasetIndex
from liandan.data.masks import MaskMapper, snap
from liandan.data.readers import mask_palette
from liandan.data.scan import infer_classes

Record = dict[str, Any]


def _raw(keys: list[str], color: bool) -> np.ndarray:
    """Record keys as a mask array: ``(N, 1, 3)`` colours or ``(N,)`` values."""
    if color:
        return np.array([[int(x) for x in k.split(",")] for k in keys], np.int64).reshape(-1, 1, 3)
    return np.array([int(k) for k in keys], np.int64)


def _key(raw: np.ndarray) -> str:
    return ",".join(str(int(x)) for x in raw.reshape(-1)) if raw.size > 1 else str(int(raw))


def _translate(rec: Record, table: dict[str, str], color: bool) -> Record:
    """The record with every key renamed through ``table`` (counts of equal keys summed)."""

    def counts(values: dict[str, int]) -> dict[str, int]:
        out: Counter[str] = Counter()
        for k, n in values.items():
            out[table.get(k, k)] += n
        return dict(out)

    thirds = {side: counts(v) for side, v in rec.get("thirds", {}).items()}
    return {**rec, "values": counts(rec["values"]), "thirds": thirds, "color": color}


def by_palette_colors(rec: Record, path: Path) -> Record:
    """A palette PNG's record counted by colour (``"r,g,b"``), as training reads it."""
    palette = mask_palette(path)
    if palette is None or rec.get("color"):
        return rec
    table = {k: ",".join(str(int(c)) for c in palette[int(k) % 256]) for k in rec["values"]}
    return _translate(rec, table, color=True)


def unknown_share(rec: Record, classes: ClassSpec) -> float:
    """The share of the record's pixels whose value (or colour) is no class."""
    keys = list(rec["values"])
    mapped = MaskMapper(classes).map(_raw(keys, bool(rec.get("color")))).reshape(-1)
    counts = np.array([rec["values"][k] for k in keys], np.int64)
    return float(counts[mapped == MaskMapper.UNKNOWN].sum() / max(1, counts.sum()))


def lossy_record_reason(fmt: str, rec: Record, classes: ClassSpec | None) -> str:
    """Why a lossy mask is refused, with how much its compression changed."""
    if classes is not None and classes.names:
        what = f"{unknown_share(rec, classes):.1%} of its pixels hold no class value"
    else:
        what = f"it holds {len(rec['values'])} different values"
    return (
        f"{fmt} is a lossy format: its compression changed the mask values around class "
        f"edges ({what}); save the masks as PNG, or set data.lossy_masks=nearest"
    )


def snap_record(rec: Record, classes: ClassSpec) -> tuple[Record, int]:
    """The record with each value snapped to the nearest class value (or colour)."""
    keys = list(rec["values"])
    color = bool(rec.get("color")) or classes.color_masks or classes.by_color
    raw = _raw(keys, bool(rec.get("color")))
    if color and raw.ndim == 1:
        raw = np.repeat(raw[:, None, None], 3, axis=2)
    snapped, _ = snap(raw, classes)
    table = {k: _key(snapped[i]) for i, k in enumerate(keys)}
    changed = sum(n for k, n in rec["values"].items() if table[k] != k)
    return _translate(rec, table, color=color), changed


def unknown_colors(rec: Record, classes: ClassSpec) -> Counter[tuple[int, ...]]:
    """Pixel count of each colour of a colour mask record that is no class."""
    if not rec.get("color"):
        return Counter()
    keys = list(rec["values"])
    mapped = MaskMapper(classes).map(_raw(keys, True)).reshape(-1)
    return Counter(
        {
            tuple(int(x) for x in k.split(",")): int(rec["values"][k])
            for k, m in zip(keys, mapped.tolist(), strict=True)
            if m == MaskMapper.UNKNOWN
        }
    )


def classes_for(index: DatasetIndex, masks: dict[Path, Record]) -> tuple[ClassSpec, str]:
    """The dataset's classes: classes.yaml, or inferred from the mask values.

    No classes (an empty :class:`ClassSpec`) when no mask could be read: every sample
    already has a problem of its own, so there is nothing to infer from.
    """
    if index.classes.names:
        return index.classes, ""
    if not masks:
        return ClassSpec([], ignore_index=index.classes.ignore_index), ""
    arrays = {
        p: np.zeros((1, 1, 3)) if r.get("color") else np.array([int(v) for v in r["values"]])
        for p, r in masks.items()
    }
    return infer_classes(arrays, index.classes.ignore_index)


def class_codes(spec: ClassSpec, rec: Record) -> dict[int, int]:
    """Class index (-1 ignored, -2 unknown) -> pixel count, for one mask record."""
    keys = list(rec["values"])
    counts = np.array([rec["values"][k] for k in keys], dtype=np.int64)
    if rec.get("color"):
        raw = np.array([[int(x) for x in k.split(",")] for k in keys]).reshape(-1, 1, 3)
    else:
        raw = np.array([int(k) for k in keys])
    mapped = MaskMapper(spec).map(raw).reshape(-1)
    out: Counter[int] = Counter()
    for code, n in zip(mapped.tolist(), counts.tolist(), strict=True):
        out[int(code)] += int(n)
    return dict(out)
