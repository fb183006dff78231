"""Tests for liandan.data.readers: every format keeps its values, dtype and bands."""

from __future__ import annotations

import warnings
from pathlib import Path

import numpy as np
import pytest
import rasterio
import tifffile
from PIL import Image, ImageOps
from rasterio.errors import NotGeoreferencedWarning

from liandan.data import readers
from liandan.data.readers import image_shape, is_image_file, read_image, read_mask
from liandan.errors import DataError

ORIENTATION = 0x0112


def _rgb(h: int = 12, w: int = 20, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def _write_raster(path: Path, arr: np.ndarray) -> Path:
    """Write (C, H, W) with rasterio as a plain (not georeferenced) GeoTIFF."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(
            path,
            "w",
            driver="GTiff",
            width=arr.shape[2],
            height=arr.shape[1],
            count=arr.shape[0],
            dtype=arr.dtype,
        ) as dst:
            dst.write(arr)
    return path


def _jpeg_with_orientation(path: Path, arr: np.ndarray, orientation: int) -> Path:
    img = Image.fromarray(arr)
    exif = img.getexif()
    exif[ORIENTATION] = orientation
    img.save(path, exif=exif, quality=95)
    return path


# ------------------------------------------------------------------ PNG, 8 bit
def test_png_rgb_keeps_values(tmp_path: Path) -> None:
    arr = _rgb()
    Image.fromarray(arr).save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.dtype == np.uint8
    np.testing.assert_array_equal(out, arr)


def test_png_grey_is_one_band(tmp_path: Path) -> None:
    arr = _rgb()[..., 0]
    Image.fromarray(arr).save(tmp_path / "g.png")
    out = read_image(tmp_path / "g.png")
    assert out.shape == (*arr.shape, 1)
    np.testing.assert_array_equal(out[..., 0], arr)


def test_png_rgba_keeps_alpha(tmp_path: Path) -> None:
    arr = np.random.default_rng(1).integers(0, 256, (8, 9, 4), dtype=np.uint8)
    Image.fromarray(arr, mode="RGBA").save(tmp_path / "a.png")
    out = read_image(tmp_path / "a.png")
    assert out.shape == (8, 9, 4)
    np.testing.assert_array_equal(out, arr)


def test_png_palette_image_gives_colours(tmp_path: Path) -> None:
    idx = np.array([[0, 1], [2, 1]], dtype=np.uint8)
    img = Image.fromarray(idx, mode="P")
    img.putpalette([10, 20, 30, 40, 50, 60, 70, 80, 90] + [0] * (253 * 3))
    img.save(tmp_path / "p.png")
    out = read_image(tmp_path / "p.png")
    assert out.shape == (2, 2, 3)
    np.testing.assert_array_equal(out[0, 0], [10, 20, 30])
    np.testing.assert_array_equal(out[1, 0], [70, 80, 90])


# ------------------------------------------------------------------ 16 bit, float, bands
def test_png_16bit_values_kept(tmp_path: Path) -> None:
    arr = np.array([[40000, 1, 65535], [0, 1234, 300]], dtype=np.uint16)
    Image.fromarray(arr).save(tmp_path / "d.png")
    out = read_image(tmp_path / "d.png")
    assert out.dtype == np.uint16
    assert out[0, 0, 0] == 40000
    np.testing.assert_array_equal(out[..., 0], arr)
    mask = read_mask(tmp_path / "d.png")
    assert mask.dtype == np.uint16
    np.testing.assert_array_equal(mask, arr)


def test_tiff_float32_values_kept(tmp_path: Path) -> None:
    arr = np.array([[-1.5, 0.25], [3.0e6, np.float32(1e-7)]], dtype=np.float32)
    tifffile.imwrite(tmp_path / "f.tif", arr)
    out = read_image(tmp_path / "f.tif")
    assert out.dtype == np.float32
    assert out.shape == (2, 2, 1)
    np.testing.assert_array_equal(out[..., 0], arr)


def test_tiff_uint16_through_rasterio(tmp_path: Path) -> None:
    arr = np.array([[[40000, 7], [65535, 0]]], dtype=np.uint16)
    out = read_image(_write_raster(tmp_path / "u.tif", arr))
    assert out.dtype == np.uint16
    assert out[0, 0, 0] == 40000


@pytest.fixture
def seven_band(tmp_path: Path) -> tuple[Path, np.ndarray]:
    arr = np.stack([np.full((5, 6), 100 * (b + 1), dtype=np.uint16) for b in range(7)])
    arr[:, 0, 0] = np.arange(7)  # a pixel that tells the bands apart
    return _write_raster(tmp_path / "ms.tif", arr), arr


def test_seven_band_tiff_all_bands(seven_band: tuple[Path, np.ndarray]) -> None:
    path, arr = seven_band
    out = read_image(path)
    assert out.shape == (5, 6, 7)
    assert out.dtype == np.uint16
    np.testing.assert_array_equal(out, np.moveaxis(arr, 0, -1))
    assert image_shape(path) == (5, 6, 7)


def test_seven_band_tiff_band_selection_is_one_based(seven_band: tuple[Path, np.ndarray]) -> None:
    path, _ = seven_band
    out = read_image(path, bands=[7, 1, 4])
    assert out.shape == (5, 6, 3)
    np.testing.assert_array_equal(out[1, 1], [700, 100, 400])
    np.testing.assert_array_equal(out[0, 0], [6, 0, 3])


@pytest.mark.parametrize("bands", [[8], [0], [1, 9]])
def test_out_of_range_band_is_data_error(
    seven_band: tuple[Path, np.ndarray], bands: list[int]
) -> None:
    path, _ = seven_band
    with pytest.raises(DataError) as err:
        read_image(path, bands=bands)
    assert "ms.tif" in str(err.value)
    assert "7" in str(err.value)
    assert "1-based" in (err.value.hint or "")


def test_band_selection_on_png(tmp_path: Path) -> None:
    arr = _rgb()
    Image.fromarray(arr).save(tmp_path / "a.png")
    np.testing.assert_array_equal(read_image(tmp_path / "a.png", bands=[3])[..., 0], arr[..., 2])
    with pytest.raises(DataError, match=r"a\.png"):
        read_image(tmp_path / "a.png", bands=[4])


# ------------------------------------------------------------------ JPEG and EXIF
def test_jpeg_exif_orientation_6_is_applied(tmp_path: Path) -> None:
    arr = np.zeros((20, 40, 3), dtype=np.uint8)
    arr[:10, :10] = 255  # a white square in the top-left corner of the stored pixels
    path = _jpeg_with_orientation(tmp_path / "phone.jpg", arr, 6)
    out = read_image(path)
    # orientation 6: the camera was turned; displaying it means rotating 90° clockwise
    expected = np.rot90(arr, k=-1)
    assert out.shape == expected.shape == (40, 20, 3)
    assert np.abs(out.astype(int) - expected.astype(int)).max() < 40  # JPEG is lossy
    assert out[:10, -10:].mean() > 200  # the square moved to the top-right
    assert out[:10, :10].mean() < 50
    assert image_shape(path) == (40, 20, 3)


def test_jpeg_without_orientation_unchanged_shape(tmp_path: Path) -> None:
    Image.fromarray(_rgb(20, 40)).save(tmp_path / "a.jpg")
    assert read_image(tmp_path / "a.jpg").shape == (20, 40, 3)
    assert image_shape(tmp_path / "a.jpg") == (20, 40, 3)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_jpeg_decoded_by_opencv_equals_pillow_in_every_orientation(
    tmp_path: Path, orientation: int
) -> None:
    arr = _rgb(24, 40)
    path = _jpeg_with_orientation(tmp_path / "a.jpg", arr, orientation)
    with Image.open(path) as header:
        fast = readers._fast_jpeg(path, header)
    assert fast is not None  # a plain, complete RGB JPEG takes the OpenCV path
    with Image.open(path) as img:
        pillow = np.array(ImageOps.exif_transpose(img))
    assert fast.shape == pillow.shape
    # both decode with libjpeg(-turbo); rounding in colour conversion may differ by 1
    assert np.abs(fast.astype(int) - pillow.astype(int)).max() <= 1
    np.testing.assert_array_equal(read_image(path), fast)


def test_grey_jpeg_keeps_one_band(tmp_path: Path) -> None:
    grey = _rgb(16, 24)[..., 0]
    Image.fromarray(grey).save(tmp_path / "g.jpg", quality=95)
    out = read_image(tmp_path / "g.jpg")
    assert out.shape == (16, 24, 1) and out.dtype == np.uint8
    assert np.abs(out[..., 0].astype(int) - np.array(Image.open(tmp_path / "g.jpg"))).max() <= 1


def test_cmyk_jpeg_goes_to_pillow_and_comes_back_rgb(tmp_path: Path) -> None:
    Image.fromarray(_rgb(16, 16)).convert("CMYK").save(tmp_path / "c.jpg")
    with Image.open(tmp_path / "c.jpg") as header:
        assert readers._fast_jpeg(tmp_path / "c.jpg", header) is None
    assert read_image(tmp_path / "c.jpg").shape == (16, 16, 3)


def test_jpeg_cut_just_before_its_end_marker_is_still_an_error(tmp_path: Path) -> None:
    # OpenCV decodes this with a warning and grey-fills what is missing: it must not.
    path = tmp_path / "cut.jpg"
    Image.fromarray(_rgb(64, 64)).save(path, quality=95)
    path.write_bytes(path.read_bytes()[:-40])
    with pytest.raises(DataError, match=r"cut\.jpg"):
        read_image(path)


def test_truncated_jpeg_is_data_error_naming_file(tmp_path: Path) -> None:
    path = tmp_path / "cut.jpg"
    Image.fromarray(_rgb(64, 64)).save(path, quality=95)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError) as err:
        read_image(path)
    assert str(path) in str(err.value)
    assert err.value.hint


def test_zero_byte_file_is_data_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.png"
    path.write_bytes(b"")
    with pytest.raises(DataError, match="0 bytes") as err:
        read_image(path)
    assert "empty.png" in str(err.value)
    with pytest.raises(DataError, match=r"empty\.png"):
        read_mask(path)


def test_text_file_named_png_is_data_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.png"
    path.write_text("this is not an image\n")
    with pytest.raises(DataError, match=r"notes\.png"):
        read_image(path)
    with pytest.raises(DataError, match=r"notes\.png"):
        read_mask(path)
    with pytest.raises(DataError, match=r"notes\.png"):
        image_shape(path)


def test_text_file_named_tif_is_data_error(tmp_path: Path) -> None:
    path = tmp_path / "notes.tif"
    path.write_text("this is not a raster\n")
    with pytest.raises(DataError, match=r"notes\.tif"):
        read_image(path)


def test_missing_file_is_data_error(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        read_image(tmp_path / "nope.png")


# ------------------------------------------------------------------ masks
def test_palette_mask_returns_indices(tmp_path: Path) -> None:
    idx = np.array([[0, 1, 15], [255, 2, 0]], dtype=np.uint8)
    img = Image.fromarray(idx, mode="P")
    img.putpalette([v for c in range(256) for v in (c, 255 - c, (c * 7) % 256)])
    img.save(tmp_path / "m.png")
    out = read_mask(tmp_path / "m.png")
    assert out.shape == (2, 3)
    np.testing.assert_array_equal(out, idx)


def test_palette_mask_by_its_colours_on_request(tmp_path: Path) -> None:
    from liandan.data.readers import mask_palette

    idx = np.array([[0, 1, 2], [2, 1, 0]], dtype=np.uint8)
    palette = [60, 16, 152, 132, 41, 246, 110, 193, 228]
    img = Image.fromarray(idx, mode="P")
    img.putpalette(palette)
    img.save(tmp_path / "m.png")
    out = read_mask(tmp_path / "m.png", palette_colors=True)
    colours = np.array(palette, np.uint8).reshape(3, 3)
    np.testing.assert_array_equal(out, colours[idx])
    np.testing.assert_array_equal(mask_palette(tmp_path / "m.png")[:3], colours)
    Image.fromarray(idx).save(tmp_path / "grey.png")
    assert mask_palette(tmp_path / "grey.png") is None
    np.testing.assert_array_equal(read_mask(tmp_path / "grey.png", palette_colors=True), idx)


def test_colour_mask_returns_rgb(tmp_path: Path) -> None:
    arr = np.zeros((4, 5, 3), dtype=np.uint8)
    arr[:2] = (255, 0, 0)
    arr[2:, :2] = (0, 128, 0)
    Image.fromarray(arr).save(tmp_path / "c.png")
    out = read_mask(tmp_path / "c.png")
    assert out.shape == (4, 5, 3)
    np.testing.assert_array_equal(out, arr)


def test_grey_mask_saved_as_rgb_returns_2d(tmp_path: Path) -> None:
    grey = np.array([[0, 1, 2], [2, 1, 0]], dtype=np.uint8)
    Image.fromarray(np.repeat(grey[..., None], 3, axis=2)).save(tmp_path / "g.png")
    out = read_mask(tmp_path / "g.png")
    assert out.shape == (2, 3)
    np.testing.assert_array_equal(out, grey)


def test_grey_mask_and_tiff_mask(tmp_path: Path) -> None:
    grey = np.array([[0, 3], [7, 1]], dtype=np.uint8)
    Image.fromarray(grey).save(tmp_path / "g.png")
    np.testing.assert_array_equal(read_mask(tmp_path / "g.png"), grey)
    tif = _write_raster(tmp_path / "m.tif", grey[None].astype(np.uint16))
    out = read_mask(tif)
    assert out.shape == (2, 2)
    np.testing.assert_array_equal(out, grey)


# ------------------------------------------------------------------ headers
def test_image_shape_from_headers(tmp_path: Path) -> None:
    Image.fromarray(_rgb(7, 9)).save(tmp_path / "rgb.png")
    Image.fromarray(_rgb(7, 9)[..., 0]).save(tmp_path / "g.png")
    Image.fromarray(np.zeros((7, 9), np.uint16)).save(tmp_path / "d.png")
    Image.fromarray(np.zeros((7, 9, 4), np.uint8), mode="RGBA").save(tmp_path / "a.png")
    Image.fromarray(np.zeros((7, 9), np.uint8), mode="P").save(tmp_path / "p.png")
    assert image_shape(tmp_path / "rgb.png") == (7, 9, 3)
    assert image_shape(tmp_path / "g.png") == (7, 9, 1)
    assert image_shape(tmp_path / "d.png") == (7, 9, 1)
    assert image_shape(tmp_path / "a.png") == (7, 9, 4)
    assert image_shape(tmp_path / "p.png") == (7, 9, 3)


@pytest.mark.parametrize("name", ["rgb.png", "g.png", "d.png", "a.png", "p.png", "c.jpg"])
def test_image_shape_agrees_with_read_image(tmp_path: Path, name: str) -> None:
    rgb = _rgb(7, 9)
    images = {
        "rgb.png": Image.fromarray(rgb),
        "g.png": Image.fromarray(rgb[..., 0]),
        "d.png": Image.fromarray(rgb[..., 0].astype(np.uint16) * 200),
        "a.png": Image.fromarray(np.dstack([rgb, rgb[..., :1]]), mode="RGBA"),
        "p.png": Image.fromarray(rgb).convert("P"),
        "c.jpg": Image.fromarray(rgb).convert("CMYK"),
    }
    images[name].save(tmp_path / name)
    assert image_shape(tmp_path / name) == read_image(tmp_path / name).shape


def test_is_image_file() -> None:
    assert is_image_file(Path("a.PNG"))
    assert is_image_file(Path("x/b.tif"))
    assert not is_image_file(Path("notes.txt"))
    assert not is_image_file(Path(".hidden.png"))
