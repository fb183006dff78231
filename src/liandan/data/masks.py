"""Mask values to classes: the mapping, lossy mask files, and colours that do not match.

:class:`MaskMapper` turns raw mask values (or colours) into class indices. JPEG and
lossy WebP change pixel values around every class edge (a 0/1/2 mask comes back with
7-9% of its pixels holding 3, 4, 37 ...), so a lossy mask file is an error, or with
``data.lossy_masks: nearest`` each pixel is snapped to the nearest class value (or
colour) and the share of changed pixels reported. :func:`color_mismatch` says which
colours of classes.yaml occur in no mask and which mask colours are no class.
"""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np

from liandan.data.layouts import ClassSpec
from liandan.data.readers import read_mask

LOSSY_MASKS = ("error", "nearest")  # data.lossy_masks
TIFF_MAGIC = (b"II*\x00", b"MM\x00*", b"II+\x00", b"MM\x00+")
TIFF_LOSSY = {6: "old-style JPEG", 7: "JPEG", 34892: "lossy JPEG"}  # TIFF compression tags
LOSSY_HINT = (
    "save the masks in a lossless format (PNG, or TIFF without JPEG compression), or set "
    "data.lossy_masks=nearest to snap each pixel to the nearest class value"
)


def lossy_format(path: str | Path) -> str | None:
    """The lossy format of an image file ("JPEG", "lossy WebP", ...), or None.

    Read from the first bytes (and a TIFF's first directory), not the file name, so a
    JPEG named ``.png`` is caught too.
    """
    path = Path(path)
    try:
        with path.open("rb") as fh:
            head = fh.read(4096)
    except OSError:
        return None
    if head[:3] == b"\xff\xd8\xff":
        return "JPEG"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        pos = 12
        while pos + 8 <= len(head):  # chunks: fourcc, little-endian size, payload
            fourcc = head[pos : pos + 4]
            if fourcc == b"VP8 ":
                return "lossy WebP"
            if fourcc == b"VP8L":
                return None
            size = int.from_bytes(head[pos + 4 : pos + 8], "little")
            pos += 8 + size + (size & 1)
        return None
    if head[:4] in TIFF_MAGIC:
        import tifffile

        try:
            with tifffile.TiffFile(path) as tif:
                code = int(tif.pages[0].compression)  # type: ignore[union-attr]
        except Exception:
            return None
        return f"{TIFF_LOSSY[code]}-compressed TIFF" if code in TIFF_LOSSY else None
    return None


def _codes(rgb: np.ndarray) -> np.ndarray:
    """``(..., 3)`` colours as one int64 code each (r << 16 | g << 8 | b)."""
    code = (rgb[..., 0].astype(np.int64) << 16) | (rgb[..., 1].astype(np.int64) << 8)
    return code | rgb[..., 2].astype(np.int64)


def _as_color(raw: np.ndarray, classes: ClassSpec) -> bool:
    return raw.ndim == 3 or classes.color_masks or classes.by_color


def snap(raw: np.ndarray, classes: ClassSpec) -> tuple[np.ndarray, int]:
    """Each pixel set to the nearest class value (or colour, or the ignore value).

    Returns the snapped mask and how many pixels changed. Colours are compared by
    Euclidean distance in RGB; values by absolute difference.
    """
    if _as_color(raw, classes):
        rgb = raw if raw.ndim == 3 else np.repeat(raw[:, :, None], 3, axis=2)
        targets = [tuple(c) for c in classes.colors]
        if classes.ignore_color is not None:
            targets.append(classes.ignore_color)
        table = np.asarray(targets, dtype=np.int64)  # (T, 3)
        found, inverse = np.unique(rgb.reshape(-1, 3), axis=0, return_inverse=True)
        dist = ((found[:, None, :].astype(np.int64) - table[None]) ** 2).sum(-1)
        nearest = table[dist.argmin(1)].astype(rgb.dtype)
        out = nearest[inverse.reshape(-1)].reshape(rgb.shape)
        changed = int((_codes(out) != _codes(rgb)).sum())
        return out, changed
    values = classes.raw_values()
    if isinstance(classes.ignore_index, int):
        values = [*values, classes.ignore_index]
    table = np.asarray(values, dtype=np.float64)
    found, inverse = np.unique(raw, return_inverse=True)
    nearest = table[np.abs(found.astype(np.float64)[:, None] - table[None]).argmin(1)]
    out = nearest[inverse.reshape(-1)].reshape(raw.shape).astype(raw.dtype)
    return out, int((out != raw).sum())


class MaskMapper:
    """Raw mask values (or colours) -> class indices; ignored pixels become -1."""

    UNKNOWN = -2

    def __init__(self, classes: ClassSpec) -> None:
        self.classes = classes
        self.values = classes.raw_values()
        self._lut_cache: np.ndarray | None = None

    def read(self, path: str | Path) -> np.ndarray:
        """A mask file as class indices: palette PNGs by colour when the classes are
        colours, lossy files snapped when ``classes.snap_lossy``."""
        raw = read_mask(path, palette_colors=self.classes.palette_colors)
        if self.classes.snap_lossy and lossy_format(path):
            raw, _ = snap(raw, self.classes)
        return self.map(raw)

    def _lut(self, size: int) -> np.ndarray:
        if self._lut_cache is None or self._lut_cache.shape[0] < size:
            lut = np.full(max(size, 256), self.UNKNOWN, dtype=np.int16)
            for index, value in enumerate(self.values):
                if 0 <= value < lut.shape[0]:
                    lut[value] = index
            ignore = self.classes.ignore_index
            if isinstance(ignore, int) and 0 <= ignore < lut.shape[0]:
                lut[ignore] = -1
            self._lut_cache = lut
        return self._lut_cache

    def map(self, raw: np.ndarray) -> np.ndarray:
        """Class indices ``(H, W)`` int16: -1 ignored, -2 a value that is not a class."""
        if raw.ndim == 2 and self.classes.color_masks:
            # a colour mask whose pixels are all grey (e.g. black and white only) was
            # read as single-band: map it through the colours like the others
            raw = np.repeat(raw[:, :, None], 3, axis=2)
        if raw.ndim == 3:
            return self._map_colors(raw)
        if np.issubdtype(raw.dtype, np.floating):
            if not np.all(np.mod(raw, 1) == 0):
                return np.full(raw.shape, self.UNKNOWN, dtype=np.int16)
            raw = raw.astype(np.int64)
        if raw.size and raw.min() < 0:
            raw = np.where(raw < 0, 0x7FFFFFFF, raw)
        top = int(raw.max()) if raw.size else 0
        if top >= 1 << 20:  # larger than any sensible class code: unknown
            out = self._lut(256)[np.clip(raw, 0, 255)]
            out[raw > 255] = self.UNKNOWN
            return out
        return self._lut(top + 1)[raw]

    def _map_colors(self, rgb: np.ndarray) -> np.ndarray:
        code = _codes(rgb[..., :3])
        out = np.full(code.shape, self.UNKNOWN, dtype=np.int16)
        for index, color in enumerate(self.classes.colors):
            out[code == _codes(np.asarray(color))] = index
        if self.classes.ignore_color is not None:
            out[code == _codes(np.asarray(self.classes.ignore_color))] = -1
        return out

    def unknown_values(self, raw: np.ndarray, mapped: np.ndarray) -> list[str]:
        bad = raw[mapped == self.UNKNOWN]
        if raw.ndim == 3:
            return [str(tuple(int(x) for x in c)) for c in np.unique(bad, axis=0)[:8]]
        return [str(v) for v in np.unique(bad)[:8].tolist()]

    def unknown_colors(self, raw: np.ndarray, mapped: np.ndarray) -> Counter[tuple[int, ...]]:
        """Pixel count of each colour of ``raw`` that is no class (nor ignored)."""
        bad = raw[mapped == self.UNKNOWN]
        if raw.ndim != 3 or not bad.size:
            return Counter()
        found, counts = np.unique(bad.reshape(-1, raw.shape[2])[:, :3], axis=0, return_counts=True)
        return Counter(
            {tuple(int(x) for x in c): int(n) for c, n in zip(found, counts, strict=True)}
        )


def color_mismatch(
    classes: ClassSpec, unknown: Counter[tuple[int, ...]], class_pixels: list[int]
) -> str | None:
    """What differs between the colours of classes.yaml and those in the masks, or None.

    Args:
        classes: the classes, with their colours.
        unknown: pixel count of each mask colour that is no class, over all masks.
        class_pixels: pixel count of each class over all masks.
    """
    if not unknown:
        return None
    top = ", ".join(f"{list(c)} ({n} px)" for c, n in unknown.most_common(8))
    more = f" and {len(unknown) - 8} more" if len(unknown) > 8 else ""
    text = f"the masks hold colour(s) that are no class in {classes.source}: {top}{more}"
    missing = [
        f"{name!r} {list(color)}"
        for name, color, n in zip(classes.names, classes.colors, class_pixels, strict=False)
        if n == 0
    ]
    if missing:
        text += f"; classes whose colour occurs in no mask: {', '.join(missing)}"
        text += "; write in 'colors' the colours the masks really hold"
        if classes.source != "classes.yaml":
            text += f" (in a classes.yaml beside {classes.source}: it takes precedence)"
    text += "; a colour to leave out of training can be set as ignore_index: [r, g, b]"
    return text


def lossy_reason(path: Path, fmt: str, raw: np.ndarray, classes: ClassSpec) -> str:
    """Why a lossy mask file is refused, with how much compression changed it."""
    if classes.names:
        mapped = MaskMapper(classes).map(raw)
        what = f"{(mapped == MaskMapper.UNKNOWN).mean():.1%} of its pixels hold no class value"
    else:
        flat = raw.reshape(-1, raw.shape[2]) if raw.ndim == 3 else raw.reshape(-1)
        what = f"it holds {len(np.unique(flat, axis=0))} different values"
    return (
        f"{path}: {fmt} is a lossy format: its compression changed the mask values "
        f"around class edges ({what})"
    )


def snap_lossy(
    masks: dict[Path, np.ndarray], lossy: dict[Path, str], classes: ClassSpec
) -> str | None:
    """Snap the lossy masks in ``masks`` (in place) to the classes; a note, or None."""
    changed = total = 0
    worst: tuple[float, Path | None] = (0.0, None)
    for path in [p for p in masks if p in lossy]:
        masks[path], n = snap(masks[path], classes)
        size = masks[path].shape[0] * masks[path].shape[1]
        changed, total = changed + n, total + size
        worst = max(worst, (n / max(1, size), path), key=lambda w: w[0])
    if not total:
        return None
    formats = ", ".join(sorted({lossy[p] for p in masks if p in lossy}))
    note = (
        f"{len([p for p in masks if p in lossy])} lossy mask file(s) ({formats}) snapped to "
        f"the nearest class value (data.lossy_masks=nearest): {changed / total:.2%} of their "
        "pixels changed"
    )
    if worst[1] is not None:
        note += f", most in {worst[1]} ({worst[0]:.2%})"
    return note
