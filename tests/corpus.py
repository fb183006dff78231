"""The bad-input corpus: tiny generated datasets, one problem each (never downloaded).

Each ``make_*`` function writes a dataset folder in a real layout with one kind of
bad or unusual input and returns ``(root, the file concerned)``. tests/test_corpus.py
runs each through ``liandan train`` / the data pipeline and checks the documented
behaviour.
"""

from __future__ import annotations

import hashlib
import struct
import zlib
from pathlib import Path

import numpy as np
import tifffile
from PIL import Image

from conftest import make_imagefolder, make_pairs, save

ORIENTATION = 0x0112  # EXIF tag


def digest(root: Path) -> dict[str, str]:
    """sha256 of every file under ``root``: the user's files must never change."""
    return {
        str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def classify_base(root: Path) -> Path:
    return make_imagefolder(root, n_per_class=4)


# ------------------------------------------------------------ broken files
def truncated_jpeg(root: Path) -> tuple[Path, Path]:
    classify_base(root)
    path = root / "cat" / "broken.jpg"
    Image.fromarray(np.full((32, 32, 3), 90, np.uint8)).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    return root, path


def zero_byte(root: Path) -> tuple[Path, Path]:
    classify_base(root)
    path = root / "dog" / "empty.png"
    path.write_bytes(b"")
    return root, path


def text_named_png(root: Path) -> tuple[Path, Path]:
    classify_base(root)
    path = root / "dog" / "notes.png"
    path.write_text("this is not an image\n")
    return root, path


def _png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def bomb_header(root: Path) -> tuple[Path, Path]:
    """A 200 kB-free PNG whose header claims 60000 x 60000 pixels (3.6 Gpx)."""
    classify_base(root)
    path = root / "cat" / "bomb.png"
    ihdr = struct.pack(">IIBBBBB", 60_000, 60_000, 8, 0, 0, 0, 0)
    idat = zlib.compress(b"\x00" * 64)
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", ihdr)
        + _png_chunk(b"IDAT", idat)
        + _png_chunk(b"IEND", b"")
    )
    return root, path


def empty_class_folder(root: Path) -> tuple[Path, Path]:
    classify_base(root)
    path = root / "emu"
    path.mkdir()
    return root, path


# ------------------------------------------------------------ segmentation
def mask_value_beyond_classes(root: Path) -> tuple[Path, Path]:
    make_pairs(root, n=6, classes_yaml="names: [background, road, tree]\n")
    path = root / "masks" / "img03.png"
    mask = np.array(Image.open(path))
    mask[:4, :4] = 7
    save(mask, path)
    return root, path


def size_mismatch(root: Path) -> tuple[Path, Path]:
    make_pairs(root, n=6)
    path = root / "masks" / "img02.png"
    save(np.zeros((20, 24), np.uint8), path)
    return root, path


def exif_rotated_jpeg(root: Path) -> tuple[Path, Path]:
    """A phone JPEG stored 24x40 with orientation 6 (displayed 40x24) and its 40x24 mask."""
    make_pairs(root, n=6)
    stored = np.zeros((24, 40, 3), np.uint8)
    stored[:, :20] = 200
    img = Image.fromarray(stored)
    exif = img.getexif()
    exif[ORIENTATION] = 6
    path = root / "images" / "phone.jpg"
    img.save(path, exif=exif, quality=95)
    mask = np.zeros((40, 24), np.uint8)
    mask[:20] = 1
    save(mask, root / "masks" / "phone.png")
    return root, path


def palette_and_colour_masks(root: Path) -> tuple[Path, Path]:
    """Palette masks (indices) next to a classes.yaml; the colours are the palette's."""
    make_pairs(root, n=6)
    path = root / "masks" / "img00.png"
    mask = np.array(Image.open(path))
    pal = Image.fromarray(mask, mode="P")
    pal.putpalette([0, 0, 0, 255, 0, 0, 0, 255, 0] + [0] * (253 * 3))
    pal.save(path)
    return root, path


def rgb_colour_masks(root: Path) -> tuple[Path, Path]:
    make_pairs(root, n=6)
    colours = np.array([[0, 0, 0], [255, 0, 0], [0, 255, 0]], np.uint8)
    for path in sorted((root / "masks").glob("*.png")):
        save(colours[np.array(Image.open(path))], path)
    (root / "classes.yaml").write_text(
        "names: [background, road, tree]\ncolors: [[0, 0, 0], [255, 0, 0], [0, 255, 0]]\n"
    )
    return root, root / "masks" / "img00.png"


# ------------------------------------------------------------ values and modes
def sixteen_bit_png(root: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(4):
            arr = rng.integers(0, 60_000, (32, 32), dtype=np.uint16)
            Image.fromarray(arr).save(root / name / f"{i}.png")
    return root, root / "a" / "0.png"


def float32_tiff(root: Path) -> tuple[Path, Path]:
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i in range(4):
            arr = (rng.standard_normal((32, 32, 3)) * 1000).astype(np.float32)
            tifffile.imwrite(root / name / f"{i}.tif", arr)
    return root, root / "a" / "0.tif"


def mixed_modes(root: Path) -> tuple[Path, Path]:
    """Grey, RGB, RGBA and palette 8-bit photos in one classification dataset."""
    rng = np.random.default_rng(0)
    modes = ["L", "RGB", "RGBA", "P"]
    for name in ("a", "b"):
        (root / name).mkdir(parents=True, exist_ok=True)
        for i, mode in enumerate(modes):
            rgb = Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8))
            rgb.convert(mode).save(root / name / f"{mode}{i}.png")
    return root, root / "a" / "P3.png"


def geotiff_all_nodata(root: Path) -> tuple[Path, Path]:
    """A georeferenced image pair whose image is nodata everywhere."""
    import rasterio
    from rasterio.transform import from_origin

    make_pairs(root, n=6)
    for old in (root / "images" / "img05.png", root / "masks" / "img05.png"):
        old.unlink()
    path = root / "images" / "img05.tif"
    profile = {
        "driver": "GTiff",
        "width": 32,
        "height": 32,
        "count": 3,
        "dtype": "uint8",
        "nodata": 0,
        "crs": "EPSG:32633",
        "transform": from_origin(500_000, 4_000_000, 10, 10),
    }
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(np.zeros((3, 32, 32), np.uint8))
    with rasterio.open(
        root / "masks" / "img05.tif", "w", **{**profile, "count": 1, "nodata": None}
    ) as dst:
        dst.write(np.zeros((1, 32, 32), np.uint8))
    return root, path
