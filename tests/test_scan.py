"""`liandan scan`: every seeded problem found with its file and reason, nothing else."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import tifffile

from conftest import make_imagefolder, make_pairs, save, write_geotiff
from liandan import scan_report
from liandan.cli import main
from liandan.scan_report import scan


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIANDAN_CACHE_DIR", str(tmp_path / "cache"))


def seeded(root: Path) -> dict[tuple[str, str], str]:
    """A pairs dataset with one of each problem; returns {(kind, file name): reason part}."""
    make_pairs(root, n=6, splits=True, classes_yaml="names: [bg, a, b, c]\n")
    train, val = root / "train", root / "val"
    rng = np.random.default_rng(1)
    mask = np.zeros((32, 32), np.uint8)
    mask[:8] = 1

    def pair(name: str, img: np.ndarray, m: np.ndarray = mask, ext: str = "png") -> None:
        if ext == "tif":
            planes = img.transpose(2, 0, 1)  # (bands, H, W)
            tifffile.imwrite(train / "images" / f"{name}.tif", planes, planarconfig="separate")
        else:
            save(img, train / "images" / f"{name}.png")
        save(m, train / "masks" / f"{name}.png")

    noise = rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)
    pair("trunc", noise)
    data = (train / "images" / "trunc.png").read_bytes()
    (train / "images" / "trunc.png").write_bytes(data[: len(data) // 2])
    pair("zero", noise)
    (train / "images" / "zero.png").write_bytes(b"")
    pair("tiny", noise[:4, :4], mask[:4, :4])
    save(noise, train / "images" / "lonely.png")
    save(mask, train / "masks" / "orphan.png")
    pair("mism", rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), mask[:16, :16])
    bad = mask.copy()
    bad[0, 0] = 7
    pair("badval", noise, bad)
    pair("five", rng.integers(0, 255, (32, 32, 5), dtype=np.uint8), ext="tif")
    (train / "notes.docx").write_bytes(b"PK\x03\x04 not an image")
    pair("huge", rng.integers(0, 255, (64, 64, 3), dtype=np.uint8), np.zeros((64, 64), np.uint8))
    shutil.copy(train / "images" / "img00.png", train / "images" / "img00_copy.png")
    shutil.copy(train / "masks" / "img00.png", train / "masks" / "img00_copy.png")
    shutil.copy(train / "images" / "img01.png", val / "images" / "leak.png")
    shutil.copy(train / "masks" / "img01.png", val / "masks" / "leak.png")
    return {
        ("unreadable", "trunc.png"): "cannot read image",
        ("empty-file", "zero.png"): "0 bytes",
        ("too-small", "tiny.png"): "below 8 px",
        ("unpaired", "lonely.png"): "image without a mask",
        ("unpaired", "orphan.png"): "mask without an image",
        ("size-mismatch", "mism.png"): "mask is 16x16 but its image is 32x32",
        ("bad-mask-values", "badval.png"): "7",
        ("empty-class", "classes.yaml"): "'c'",
        ("mixed-bands", "five.tif"): "5 bands, most have 3",
        ("not-an-image", "notes.docx"): "not an image",
        ("bomb", "huge.png"): "decompression-bomb",
        ("duplicate", "img00_copy.png"): "img00.png",
        ("leakage", "leak.png"): "leakage from train into val",
    }


def test_scan_finds_every_seeded_problem_and_nothing_else(tmp_path, monkeypatch):
    monkeypatch.setattr(scan_report, "MAX_PIXELS", 40 * 40)
    expected = seeded(tmp_path / "data")
    before = {p: p.stat().st_mtime_ns for p in (tmp_path / "data").rglob("*")}
    report = scan(tmp_path / "data")
    found = {(p.kind, Path(p.file).name): p.reason for p in report.problems}
    assert set(found) == set(expected)
    for key, part in expected.items():
        assert part in found[key], (key, found[key])
    assert not report.ok
    # never writes into the dataset folder
    assert {p: p.stat().st_mtime_ns for p in (tmp_path / "data").rglob("*")} == before


def test_fingerprint_of_clean_pairs(tmp_path):
    root = make_pairs(tmp_path / "seg", n=6, splits=True)
    report = scan(root)
    fp = report.fingerprint
    assert report.ok and report.problems == []
    assert fp.task == "segment" and fp.splits == {"train": 6, "val": 6}
    assert fp.image_size == {"min": [32, 32], "median": [32, 32], "max": [32, 32]}
    assert fp.bands == [3] and fp.dtypes == ["uint8"]
    assert fp.classes == ["0", "1", "2"] and sum(fp.class_pixels.values()) == 12 * 32 * 32
    assert fp.imbalance_ratio is not None and fp.imbalance_ratio > 1
    # pooled statistics match numpy on the decoded pixels
    from liandan.data.readers import read_image

    pixels = np.concatenate(
        [read_image(p).reshape(-1, 3) for p in sorted(root.rglob("images/*.png"))]
    ).astype(float)
    assert np.allclose(fp.band_mean, pixels.mean(0), atol=1e-3)
    assert np.allclose(fp.band_std, pixels.std(0), atol=1e-3)
    assert np.allclose(fp.band_p995, np.percentile(pixels, 99.5, axis=0), rtol=0.05, atol=2)


def test_second_scan_reads_the_cache(tmp_path, monkeypatch):
    root = make_imagefolder(tmp_path / "cls", n_per_class=4)
    calls = []
    real = scan_report.read_image
    monkeypatch.setattr(scan_report, "read_image", lambda p: calls.append(p) or real(p))
    first = scan(root)
    assert len(calls) == 8 and first.decoded == 8
    second = scan(root)
    assert len(calls) == 8 and second.cached == 8
    assert second.fingerprint == first.fingerprint
    assert not list(root.rglob("*.json"))  # cache lives outside the dataset
    # a changed file is decoded again, alone
    save(np.zeros((32, 32, 3), np.uint8), root / "cat" / "cat_0.png")
    third = scan(root)
    assert len(calls) == 9 and third.decoded == 1


def test_empty_class_folder_blocks_training(tmp_path):
    root = make_imagefolder(tmp_path / "cls", n_per_class=3, splits=True)
    (root / "train" / "bird").mkdir()
    report = scan(root)
    assert [(p.kind, p.file, p.severity) for p in report.problems] == [
        ("empty-class", str(root / "train" / "bird"), "error")
    ]
    assert not report.ok


def test_cli_scan_json_and_exit_code(tmp_path, capsys):
    root = make_imagefolder(tmp_path / "cls", n_per_class=3)
    assert main(["scan", str(root), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["ok"] and out["fingerprint"]["class_images"] == {"cat": 3, "dog": 3}
    (root / "dog" / "broken.png").write_bytes(b"\x89PNG garbage")
    assert main(["scan", str(root)]) == 1
    assert "1 error(s)" in capsys.readouterr().out
    assert main(["scan", str(root), "--json"]) == 1
    problems = json.loads(capsys.readouterr().out)["problems"]
    assert [(Path(p["file"]).name, p["kind"]) for p in problems] == [("broken.png", "unreadable")]


def test_large_rasters_are_scanned_by_row_bands_with_the_same_summary(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A raster above STREAM_PIXELS is never read whole, and its summary matches."""
    import rasterio
    from rasterio.transform import from_origin

    import liandan.scan_report as sr

    rng = np.random.default_rng(0)
    image = rng.integers(0, 4000, (3, 70, 50)).astype(np.uint16)
    image[:, :, :5] = 0  # a nodata collar
    labels = rng.integers(0, 3, (1, 70, 50)).astype(np.uint8)
    profile = dict(
        driver="GTiff", width=50, height=70, crs="EPSG:32633", transform=from_origin(0, 0, 1, 1)
    )
    img_path, lab_path = tmp_path / "scene.tif", tmp_path / "labels.tif"
    with rasterio.open(img_path, "w", count=3, dtype="uint16", nodata=0, **profile) as dst:
        dst.write(image)
    with rasterio.open(lab_path, "w", count=1, dtype="uint8", **profile) as dst:
        dst.write(labels)
    whole, whole_mask = sr.inspect_image(img_path), sr.inspect_mask(lab_path)
    monkeypatch.setattr(sr, "STREAM_PIXELS", 100)
    monkeypatch.setattr(sr, "CHUNK_VALUES", 3 * 50 * 8)  # 8 rows a band
    monkeypatch.setattr(sr, "SAMPLE_PIXELS", 10**9)  # keep every pixel: exact quantiles

    def refuse(*args, **kwargs):
        raise AssertionError("a large raster was read whole")

    monkeypatch.setattr(sr, "read_image", refuse)
    monkeypatch.setattr(sr, "read_mask", refuse)
    streamed, streamed_mask = sr.inspect_image(img_path), sr.inspect_mask(lab_path)
    for key in ("h", "w", "c", "dtype", "hash", "nodata", "nodata_pixels"):
        assert streamed[key] == whole[key], key
    assert np.allclose(streamed["mean"], whole["mean"])
    assert np.allclose(streamed["var"], whole["var"])
    assert np.allclose(streamed["q"], whole["q"])
    assert streamed_mask["values"] == whole_mask["values"]


def test_nodata_stays_out_of_band_statistics_and_label_values(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A scene with a nodata collar whose label raster tags the collar nodata too (as
    GIS tools write them): no problem found, statistics of the pixels with data only."""
    import liandan.scan_report as sr

    rng = np.random.default_rng(0)
    image = rng.integers(1, 250, (3, 40, 50)).astype(np.uint8)
    image[:, :, :15] = 0
    labels = rng.integers(0, 3, (1, 40, 50)).astype(np.uint8)
    labels[:, :, :15] = 255
    root = tmp_path / "data"
    write_geotiff(root / "images" / "scene.tif", image, nodata=0)
    write_geotiff(root / "masks" / "scene.tif", labels, nodata=255)
    data = image[:, :, 15:].reshape(3, -1).T.astype(float)
    for stream_pixels in (sr.STREAM_PIXELS, 100):  # read whole, then by row bands
        monkeypatch.setattr(sr, "STREAM_PIXELS", stream_pixels)
        report = scan(root, use_cache=False)
        fp = report.fingerprint
        assert report.problems == [], report.problems
        assert fp.classes == ["0", "1", "2"]
        assert sum(fp.class_pixels.values()) == 40 * 35  # the collar is no class
        assert fp.nodata_value == 0 and fp.nodata_fraction == pytest.approx(15 / 50)
        assert np.allclose(fp.band_mean, data.mean(0), atol=1e-3)
        assert np.allclose(fp.band_std, data.std(0), atol=1e-3)
        assert min(fp.band_p005) >= 1  # not the collar's zeros
