"""Check the keys of a dataset's classes.yaml: every wrong type named, all at once.

A classes.yaml is small but easy to get subtly wrong (``names: road``, a colour with two
numbers, ``ignore_index: [0, 0, 0]`` for grey masks, two classes with the same
colour). Each such mistake used to be accepted and silently change what was learned;
here every one is a :class:`DataError` naming the key, the entry and what it should be.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from liandan.errors import DataError

KEYS = ("names", "values", "colors", "ignore_index", "nodata")
Color = tuple[int, int, int]


def _is_int(x: Any) -> bool:
    return isinstance(x, int) and not isinstance(x, bool)


def parse_color(x: Any) -> Color | None:
    """``[r, g, b]`` (0..255 each) or ``"#rrggbb"`` as a tuple; None when it is neither."""
    if isinstance(x, str):
        text = x.strip().lstrip("#")
        if len(text) == 6:
            try:
                return int(text[0:2], 16), int(text[2:4], 16), int(text[4:6], 16)
            except ValueError:
                return None
        return None
    if isinstance(x, list | tuple) and len(x) == 3 and all(_is_int(c) for c in x):
        if all(0 <= c <= 255 for c in x):
            return int(x[0]), int(x[1]), int(x[2])
    return None


def _duplicates(seq: list[Any]) -> list[Any]:
    seen: list[Any] = []
    repeated: list[Any] = []
    for item in seq:
        if item in seen and item not in repeated:
            repeated.append(item)
        seen.append(item)
    return repeated


def check_classes_yaml(data: Any, path: Path) -> dict[str, Any]:
    """The classes.yaml mapping with its values checked and normalised.

    ``names`` become strings, ``colors`` and a colour ``ignore_index`` tuples.

    Raises:
        DataError: naming every key (and entry) of the wrong type or inconsistent.
    """
    if not isinstance(data, dict) or "names" not in data:
        raise DataError(
            "classes.yaml must be a mapping with a 'names' list",
            where=path,
            hint="e.g. names: [background, building]",
        )
    unknown = sorted(str(k) for k in set(data) - set(KEYS))
    if unknown:
        raise DataError(
            f"unknown key(s) {unknown}",
            where=path,
            hint=f"valid keys: {', '.join(KEYS)}",
        )
    bad: list[str] = []
    names = data["names"]
    if not isinstance(names, list) or not names:
        bad.append(f"'names' is {names!r}: a list of class names, e.g. [background, road]")
        names = []
    else:
        for i, n in enumerate(names):
            if not isinstance(n, str | int) or isinstance(n, bool):
                bad.append(f"'names' entry {i + 1} is {n!r}: a class name (text)")
        names = [str(n) for n in names]
        bad += [f"'names': {n!r} is listed twice" for n in _duplicates(names)]
    out: dict[str, Any] = {"names": names}

    values = data.get("values")
    if values is not None:
        if not isinstance(values, list):
            bad.append(f"'values' is {values!r}: a list with the mask value of each class")
        else:
            for i, v in enumerate(values):
                if not _is_int(v) or v < 0:
                    bad.append(f"'values' entry {i + 1} is {v!r}: a mask value (integer >= 0)")
            bad += [f"'values': {v!r} is listed twice" for v in _duplicates(values)]
            if names and len(values) != len(names):
                bad.append(f"'values' has {len(values)} entries but 'names' has {len(names)}")
            out["values"] = values

    colors = data.get("colors")
    if colors is not None:
        if not isinstance(colors, list):
            bad.append(f"'colors' is {colors!r}: a list with an [r, g, b] colour per class")
        else:
            parsed = [parse_color(c) for c in colors]
            for i, (c, p) in enumerate(zip(colors, parsed, strict=True)):
                if p is None:
                    bad.append(
                        f"'colors' entry {i + 1} is {c!r}: an [r, g, b] colour "
                        "(three integers 0..255) or '#rrggbb'"
                    )
            found = [p for p in parsed if p is not None]
            bad += [f"'colors': {list(c)} is listed twice" for c in _duplicates(found)]
            if names and len(colors) != len(names):
                bad.append(f"'colors' has {len(colors)} entries but 'names' has {len(names)}")
            out["colors"] = parsed

    ignore = data.get("ignore_index")
    if ignore is not None:
        color = parse_color(ignore) if not _is_int(ignore) else None
        if _is_int(ignore) and ignore >= 0:
            raw = values if isinstance(values, list) else list(range(len(names)))
            if ignore in raw and raw.index(ignore) < len(names):
                name = names[raw.index(ignore)]
                bad.append(f"'ignore_index' {ignore} is also the mask value of class {name!r}")
            out["ignore_index"] = ignore
        elif color is not None:
            if isinstance(colors, list) and color in out.get("colors", []):
                name = names[out["colors"].index(color)]
                bad.append(f"'ignore_index' {list(color)} is also the colour of class {name!r}")
            out["ignore_index"] = color
        else:
            bad.append(
                f"'ignore_index' is {ignore!r}: a mask value (integer >= 0), or for colour "
                "masks an [r, g, b] colour"
            )

    nodata = data.get("nodata")
    if nodata is not None:
        if isinstance(nodata, bool) or not isinstance(nodata, int | float):
            bad.append(f"'nodata' is {nodata!r}: a number")
        out["nodata"] = nodata
    if bad:
        raise DataError(
            f"{len(bad)} bad value(s) in classes.yaml",
            where=path,
            items=bad,
            hint="names: [a, b, c]; values: [0, 1, 2] (optional); colors: [[r, g, b], ...] "
            "(optional); ignore_index: 255 or [r, g, b]; see docs/data.md",
        )
    return out
