"""Read images and masks from disk, keeping their values.

PNG/JPEG/BMP/WebP go through Pillow (EXIF orientation applied, 16-bit kept), except
that complete 8-bit RGB or grey JPEGs are decoded by OpenCV, 1.2-1.6x faster than
Pillow on this machine (benchmarks/input_pipeline.py, RESULTS.md); TIFF and
any other GDAL-readable raster (VRT, JP2, IMG ...) through rasterio, so 16-bit,
float32 and many-band files keep their dtype and every band. Images come back as
``(H, W, C)`` arrays in their own dtype; masks as ``(H, W)`` (or ``(H, W, 3)`` for
colour masks). Any failure is a :class:`DataError` naming the file.
"""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageOps

from liandan.errors import DataError

PIL_EXTS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif"}
RASTER_EXTS = {".tif", ".tiff", ".vrt", ".jp2", ".img"}
IMAGE_EXTS = PIL_EXTS | RASTER_EXTS
# Pillow refuses images above ~179 Mpx as possible decompression bombs; we keep its
# limit and report it as a data problem rather than a crash.
MAX_PIXELS = Image.MAX_IMAGE_PIXELS


def is_image_file(path: Path) -> bool:
    """Whether the file name has an image extension we read."""
    return path.suffix.lower() in IMAGE_EXTS and not path.name.startswith(".")


def _pil_array(img: Image.Image) -> np.ndarray:
    if img.mode in ("I;16", "I;16B", "I;16L"):
        return np.array(img, dtype=np.uint16)
    if img.mode == "I":
        arr = np.array(img, dtype=np.int32)
        # 16-bit PNGs are often decoded as mode I: keep them 16-bit when they fit.
        if arr.size and arr.min() >= 0 and arr.max() <= 65535:
            return arr.astype(np.uint16)
        return arr
    if img.mode == "F":
        return np.array(img, dtype=np.float32)
    if img.mode == "1":
        return np.array(img.convert("L"))
    if img.mode in ("P", "PA"):
        img = img.convert("RGBA" if "transparency" in img.info or img.mode == "PA" else "RGB")
    elif img.mode in ("LA",):
        img = img.convert("L")
    elif img.mode in ("CMYK", "YCbCr", "HSV", "LAB"):
        img = img.convert("RGB")
    return np.array(img)


def band_indexes(
    bands: list[int] | None,
    count: int,
    path: Path | str,
    hint: str = "data.bands holds 1-based band indices, as in GDAL",
    alpha: Sequence[int] = (),
) -> list[int]:
    """The 1-based band indexes to read, checked.

    ``bands`` None: every band but the ``alpha`` ones (see :func:`alpha_bands`).
    """
    data = [b for b in range(1, count + 1) if b not in alpha]
    indexes = list(bands or data or range(1, count + 1))
    bad = [b for b in indexes if not 1 <= b <= count]
    if bad:
        raise DataError(f"band(s) {bad} requested but the file has {count}", where=path, hint=hint)
    return indexes


def alpha_bands(src: Any) -> list[int]:
    """1-based indexes of the alpha (transparency) bands of an open rasterio dataset.

    An alpha band marks which pixels have data (GDAL's dataset mask reads it); it is
    not image data, so rasters are read without it unless ``data.bands`` names it.
    """
    from rasterio.enums import ColorInterp

    try:
        return [i + 1 for i, c in enumerate(src.colorinterp) if c == ColorInterp.alpha]
    except ValueError:  # a colour interpretation rasterio does not know
        return []


def _open_pil(path: Path, decode: bool = True) -> Image.Image:
    """Open with Pillow; ``decode=False`` reads the header only (size, mode, EXIF)."""
    try:
        img = Image.open(path)
        if decode:
            img.load()
    except Image.DecompressionBombError as exc:
        raise DataError(
            f"image too large to decode safely ({exc})",
            where=path,
            hint="tile it, or convert it to a GeoTIFF and use the raster layout",
        ) from None
    except Exception as exc:  # truncated, not an image, zero bytes ...
        raise DataError(
            f"cannot read image ({type(exc).__name__}: {exc})",
            where=path,
            hint="re-export the file, or set data.on_error=skip to leave it out",
        ) from None
    return img


JPEG_EXTS = {".jpg", ".jpeg"}
JPEG_EOI = b"\xff\xd9"


def _fast_jpeg(path: Path, img: Image.Image) -> np.ndarray | None:
    """Decode a JPEG with OpenCV when it is plain and complete, else None (use Pillow).

    ``img`` is the file opened by Pillow (header only): its size check guards against
    decompression bombs and its mode picks the files OpenCV decodes as Pillow does
    (8-bit RGB and grey). A file that does not end in the JPEG end-of-image marker may
    be truncated: OpenCV would return a partly grey image with only a warning, while
    Pillow raises, so it goes to Pillow. OpenCV applies EXIF orientation itself.
    """
    import cv2

    if img.format != "JPEG" or img.mode not in ("RGB", "L"):
        return None
    data = np.fromfile(path, dtype=np.uint8)
    if data[-2:].tobytes() != JPEG_EOI:
        return None
    arr = cv2.imdecode(data, cv2.IMREAD_ANYCOLOR)
    if arr is None or arr.shape[:2] not in (img.size[::-1], img.size):
        return None
    if arr.ndim == 3:
        arr = cv2.cvtColor(arr, cv2.COLOR_BGR2RGB)
    return arr


def _read_raster(path: Path, bands: list[int] | None = None) -> np.ndarray:
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                arr = src.read(band_indexes(bands, src.count, path, alpha=alpha_bands(src)))
    except DataError:
        raise
    except Exception as exc:
        raise DataError(
            f"cannot read raster ({type(exc).__name__}: {exc})",
            where=path,
            hint="check the file with gdalinfo, or set data.on_error=skip",
        ) from None
    return np.ascontiguousarray(np.moveaxis(arr, 0, -1))


def read_image(path: str | Path, bands: list[int] | None = None) -> np.ndarray:
    """Read an image as ``(H, W, C)`` in its own dtype.

    Args:
        path: image file.
        bands: 1-based band indices to keep (GDAL convention); None keeps all.

    >>> read_image("photo.jpg").shape  # doctest: +SKIP
    (480, 640, 3)
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("file not found", where=path)
    if path.stat().st_size == 0:
        raise DataError("empty file (0 bytes)", where=path, hint="re-export or remove it")
    if path.suffix.lower() in RASTER_EXTS:
        return _read_raster(path, bands)
    arr = None
    if path.suffix.lower() in JPEG_EXTS:
        with _open_pil(path, decode=False) as header:
            arr = _fast_jpeg(path, header)
    if arr is None:
        img = _open_pil(path)
        # Phone photos store their rotation in EXIF; apply it so pixels match the mask.
        img = ImageOps.exif_transpose(img) or img
        arr = _pil_array(img)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    if bands:
        band_indexes(bands, arr.shape[2], path)
        arr = arr[:, :, [b - 1 for b in bands]]
    return arr


Window = tuple[int, int, int, int]  # col_off, row_off, width, height in pixels


def read_window(path: str | Path, window: Window, bands: list[int] | None = None) -> np.ndarray:
    """Read one window of an image as ``(h, w, C)`` in its own dtype.

    Rasters are read with a rasterio windowed read (only that part of the file is
    decoded); other images are read whole and cut. The window is clipped to the image:
    a window reaching beyond the right or bottom edge gives the part inside.

    Args:
        path: image file.
        window: ``(col_off, row_off, width, height)`` in the image's pixels.
        bands: 1-based band indices to keep (GDAL convention); None keeps all.
    """
    path = Path(path)
    col, row, width, height = (int(v) for v in window)
    if path.suffix.lower() not in RASTER_EXTS:
        return np.ascontiguousarray(read_image(path, bands)[row : row + height, col : col + width])
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning
    from rasterio.windows import Window as RioWindow

    if not path.is_file():
        raise DataError("file not found", where=path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path) as src:
                indexes = band_indexes(bands, src.count, path, alpha=alpha_bands(src))
                w = max(0, min(width, src.width - col))
                h = max(0, min(height, src.height - row))
                arr = src.read(indexes, window=RioWindow(col, row, w, h))
    except DataError:
        raise
    except Exception as exc:
        raise DataError(
            f"cannot read window {window} of the raster ({type(exc).__name__}: {exc})",
            where=path,
            hint="check the file with gdalinfo, or set data.on_error=skip",
        ) from None
    return np.ascontiguousarray(np.moveaxis(arr, 0, -1))


def read_mask(path: str | Path, palette_colors: bool = False) -> np.ndarray:
    """Read a mask: ``(H, W)`` integer values, or ``(H, W, 3)`` for colour masks.

    Palette PNGs give their palette indices (as in Pascal VOC), or with
    ``palette_colors`` their colours (a dataset whose classes.yaml gives colours:
    real datasets mix palette and RGB masks, and the palette order differs from file
    to file). EXIF orientation is applied as for images, so an image and its mask stay
    aligned.
    """
    path = Path(path)
    if not path.is_file():
        raise DataError("mask file not found", where=path)
    if path.stat().st_size == 0:
        raise DataError("empty mask file (0 bytes)", where=path)
    if path.suffix.lower() in RASTER_EXTS:
        arr = _read_raster(path)
        return arr[:, :, 0] if arr.shape[2] == 1 else arr[:, :, :3]
    img = _open_pil(path)
    img = ImageOps.exif_transpose(img) or img
    if palette_colors and img.mode in ("P", "PA"):
        return np.array(img.convert("RGB"))
    if img.mode in ("P", "L", "I", "I;16", "1"):
        arr = np.array(img)
        if arr.dtype == bool:
            arr = arr.astype(np.uint8)
        return arr
    if img.mode in ("LA", "PA"):
        return np.array(img)[:, :, 0]
    arr = np.array(img.convert("RGB"))
    # A colour PNG whose three channels are equal is a grey mask saved as RGB.
    if (arr[:, :, 0] == arr[:, :, 1]).all() and (arr[:, :, 1] == arr[:, :, 2]).all():
        return arr[:, :, 0]
    return arr


def mask_palette(path: str | Path) -> np.ndarray | None:
    """``(256, 3)`` uint8 colours of a palette image's indices (header only), or None."""
    try:
        with Image.open(path) as img:
            if img.mode not in ("P", "PA"):
                return None
            palette = img.getpalette() or []
    except Exception:
        return None
    colors = np.zeros((256, 3), np.uint8)
    rgb = np.asarray(palette[: 256 * 3], dtype=np.uint8).reshape(-1, 3)
    colors[: len(rgb)] = rgb
    return colors


def image_shape(path: str | Path) -> tuple[int, int, int]:
    """``(height, width, bands)`` from the file header, without decoding pixels."""
    path = Path(path)
    try:
        if path.suffix.lower() in RASTER_EXTS:
            import rasterio
            from rasterio.errors import NotGeoreferencedWarning

            with warnings.catch_warnings():
                warnings.simplefilter("ignore", NotGeoreferencedWarning)
                with rasterio.open(path) as src:
                    return src.height, src.width, src.count - len(alpha_bands(src)) or src.count
        with Image.open(path) as img:
            width, height = img.size
            if img.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # EXIF: rotated 90 degrees
                width, height = height, width
            # as read_image decodes them: palette -> RGB(A), LA -> grey, CMYK etc. -> RGB
            converted = {
                "P": 3,
                "PA": 4,
                "LA": 1,
                "1": 1,
                "CMYK": 3,
                "YCbCr": 3,
                "HSV": 3,
                "LAB": 3,
            }
            bands = converted.get(img.mode, len(img.getbands()))
            if img.mode == "P" and "transparency" in img.info:
                bands = 4
            return height, width, bands
    except Exception as exc:
        raise DataError(f"cannot read image header ({exc})", where=path) from None


def raster_all_nodata(path: str | Path, nodata: float | None = None) -> bool:
    """Whether a raster has no valid pixel (nodata value, mask band or alpha everywhere).

    Reads the validity mask block by block and stops at the first valid pixel, so a
    normal raster costs one block and memory never exceeds one block.
    """
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            if nodata is None and all(
                f == [rasterio.enums.MaskFlags.all_valid] for f in src.mask_flag_enums
            ):
                return False
            for _, window in src.block_windows(1):
                if valid_mask(src, window, nodata).any():
                    return False
    return True


def valid_mask(src: Any, window: Any = None, nodata: float | None = None) -> np.ndarray:
    """``(H, W)`` bool: pixels with data in an open rasterio dataset (or one window).

    The file's own nodata value, mask band or alpha band decide; ``nodata`` (from
    ``data.nodata``) adds a value the file does not declare: a pixel whose every band
    holds it has no data.
    """
    valid = src.dataset_mask(window=window) > 0
    if nodata is not None:
        bands = src.read(window=window)
        valid &= ~np.all(bands == np.asarray(nodata, dtype=bands.dtype), axis=0)
    return valid
