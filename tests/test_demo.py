"""The embedded demo datasets: layout, values, georeferencing, determinism, honesty."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import rasterio
import yaml
from PIL import Image

from liandan.data import demo
from liandan.data.demo import make_classify_demo, make_segment_demo, texture_rows

SMALL = {"n_train": 6, "n_val": 4, "size": 64, "scene_size": 256}


@pytest.fixture(scope="module")
def seg_root(module_tmp: Path) -> Path:
    return make_segment_demo((module_tmp / "seg") / "demo", **SMALL)


def _pngs(folder: Path) -> list[Path]:
    return sorted(folder.glob("*.png"))


def test_segment_layout(seg_root: Path) -> None:
    for split, n in (("train", SMALL["n_train"]), ("val", SMALL["n_val"])):
        images = _pngs(seg_root / split / "images")
        masks = _pngs(seg_root / split / "masks")
        assert len(images) == n
        assert [p.name for p in images] == [p.name for p in masks]
    assert (seg_root / "scene" / "scene.tif").is_file()
    assert (seg_root / "scene" / "scene_mask.tif").is_file()
    readme = (seg_root / "README.txt").read_text()
    assert "scikit-image" in readme and 3 <= len(readme.strip().splitlines()) <= 4
    classes = yaml.safe_load((seg_root / "classes.yaml").read_text())
    assert classes["names"] == ["grass", "gravel", "brick"]
    colors = [tuple(c) for c in classes["colors"]]
    assert len(colors) == 3 and len(set(colors)) == 3
    assert all(len(c) == 3 and all(0 <= v <= 255 for v in c) for c in colors)


def test_segment_images_and_masks(seg_root: Path) -> None:
    size = SMALL["size"]
    for split in ("train", "val"):
        seen: set[int] = set()
        for path in _pngs(seg_root / split / "images"):
            with Image.open(path) as img:
                assert img.mode == "RGB" and img.size == (size, size)
                assert np.asarray(img).dtype == np.uint8
            with Image.open(seg_root / split / "masks" / path.name) as m:
                assert m.mode == "L" and m.size == (size, size)
                values = set(np.unique(np.asarray(m)).tolist())
            assert values <= {0, 1, 2}
            seen |= values
        assert seen == {0, 1, 2}, split


def test_segment_scene_geotiff(seg_root: Path) -> None:
    with rasterio.open(seg_root / "scene" / "scene.tif") as src:
        assert src.count == 3 and src.dtypes == ("uint8",) * 3
        assert src.crs.to_epsg() == 32633
        assert tuple(src.transform)[:6] == (0.5, 0.0, 500_000.0, 0.0, -0.5, 5_300_000.0)
        assert src.width == src.height == SMALL["scene_size"]
        assert src.block_shapes[0] == (256, 256)
        assert src.compression is not None and src.compression.value.lower() == "deflate"
        crs, transform, shape = src.crs, src.transform, src.shape
    with rasterio.open(seg_root / "scene" / "scene_mask.tif") as msk:
        assert msk.count == 1 and msk.dtypes == ("uint8",)
        assert (msk.crs, msk.transform, msk.shape) == (crs, transform, shape)
        values = set(np.unique(msk.read(1)).tolist())
    assert values == {0, 1, 2}


def test_segment_deterministic(tmp_path: Path) -> None:
    kw = {"n_train": 2, "n_val": 1, "size": 48, "scene_size": 64}
    a = make_segment_demo(tmp_path / "a", seed=3, **kw)
    b = make_segment_demo(tmp_path / "b", seed=3, **kw)
    c = make_segment_demo(tmp_path / "c", seed=4, **kw)
    rel = Path("train/images/train_001.png")
    assert (a / rel).read_bytes() == (b / rel).read_bytes()
    assert (a / "scene/scene.tif").read_bytes() == (b / "scene/scene.tif").read_bytes()
    assert (a / rel).read_bytes() != (c / rel).read_bytes()


def test_texture_rows_split_the_photograph() -> None:
    train, val = texture_rows("train"), texture_rows("val")
    assert train[0] == 0 and train[1] == val[0] and val[1] == 512
    assert train[1] == round(0.65 * 512)
    with pytest.raises(ValueError):
        texture_rows("test")


def test_train_and_val_textures_are_disjoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Replace the photographs by ones whose grey level encodes the row's split.

    Rows that train may use are dark (10-60), rows that val may use bright (180-250); the
    per-region and per-image jitter cannot bridge the gap, so any pixel taken from the
    wrong rows (by a crop, rotation, flip or mirror padding) shows up in the output.
    """
    cut = texture_rows("train")[1]
    rows = np.arange(512, dtype=np.float64)
    col = np.where(rows < cut, 10 + 50 * rows / cut, 180 + 70 * (rows - cut) / (511 - cut))
    fake = np.repeat(col[:, None], 512, axis=1).astype(np.uint8)
    monkeypatch.setattr(demo, "_texture_bank", lambda: (fake, fake, fake))
    root = make_segment_demo(tmp_path / "d", n_train=8, n_val=8, size=64, scene_size=256)
    for path in _pngs(root / "train" / "images"):
        assert np.asarray(Image.open(path)).max() < 115, path
    for path in _pngs(root / "val" / "images"):
        assert np.asarray(Image.open(path)).min() > 115, path
    with rasterio.open(root / "scene" / "scene.tif") as src:
        assert src.read().min() > 115


def test_photographs_have_matched_histograms() -> None:
    bank = demo._texture_bank()
    assert [p.shape for p in bank] == [(512, 512)] * 3
    hists = [np.bincount(p.ravel(), minlength=256) for p in bank]
    for h in hists[1:]:
        assert np.abs(h - hists[0]).sum() <= 0.01 * bank[0].size


def test_refuses_non_empty_root(tmp_path: Path) -> None:
    (tmp_path / "x.txt").write_text("keep me")
    with pytest.raises(FileExistsError):
        make_segment_demo(tmp_path, n_train=1, n_val=1, size=32, scene_size=32)
    with pytest.raises(FileExistsError):
        make_classify_demo(tmp_path)
    assert (tmp_path / "x.txt").read_text() == "keep me"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert make_segment_demo(empty, n_train=1, n_val=1, size=32, scene_size=32) == empty


def test_classify_demo(tmp_path: Path) -> None:
    root = make_classify_demo(tmp_path / "digits", size=16)
    counts = {}
    for split in ("train", "val"):
        folders = sorted(p.name for p in (root / split).iterdir())
        assert folders == [str(d) for d in range(10)]
        counts[split] = {d: len(_pngs(root / split / d)) for d in folders}
        assert all(n > 0 for n in counts[split].values())
    total = sum(sum(c.values()) for c in counts.values())
    assert total == 1797
    assert abs(sum(counts["val"].values()) / total - 0.2) < 0.01
    train_names = {p.name for p in (root / "train").rglob("*.png")}
    val_names = {p.name for p in (root / "val").rglob("*.png")}
    assert not train_names & val_names
    sample = next((root / "val" / "3").glob("*.png"))
    with Image.open(sample) as img:
        assert img.mode == "L" and img.size == (16, 16)
        arr = np.asarray(img)
    assert arr.dtype == np.uint8 and arr.max() > 128
    assert "scikit-learn" in (root / "README.txt").read_text()
