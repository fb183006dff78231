"""Tests for liandan.data.folders: segmentation folder names, split folders, ambiguity.

Each dataset is written in the layout users have (tiny PNGs under tmp_path); the
answer is checked through ``find_samples``, the way training and scan ask for it.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from conftest import make_csv, make_imagefolder, make_pairs, make_voc, save, seg_pair
from liandan.config import Config
from liandan.data.datamodule import build_data
from liandan.data.layouts import detect_layout, find_samples
from liandan.errors import ConfigError, DataError


def _pairs(base: Path, images: str, masks: str, n: int = 3, seed: int = 0) -> Path:
    """``base/<images>/sK.png`` RGB photos with ``base/<masks>/sK.png`` class masks."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        img, mask = seg_pair(rng)
        save(img, base / images / f"s{i}.png")
        save(mask, base / masks / f"s{i}.png")
    return base


def _assert_paired(root: Path, n: int) -> None:
    index = find_samples(root)
    assert (index.task, index.layout) == ("segment", "pairs")
    assert len(index.samples) == n
    for s in index.samples:
        assert isinstance(s.target, Path) and s.target.stem == s.image.stem
        assert s.target != s.image


# ------------------------------------------------------------------ item 2: names
@pytest.mark.parametrize(
    ("images", "masks"),
    [
        ("imgs", "annotations"),  # was read as classes 'annotations' and 'imgs'
        ("image", "label"),
        ("images", "labels"),  # raster masks in labels/ (not only polygons)
        ("Images", "Masks"),
        ("IMG", "GT"),
        ("img", "annotation"),
    ],
)
def test_segmentation_folder_names_are_pairs_not_classes(
    tmp_path: Path, images: str, masks: str
) -> None:
    _assert_paired(_pairs(tmp_path / "d", images, masks), 3)


def test_pairs_under_split_folders_any_name(tmp_path: Path) -> None:
    root = tmp_path / "d"
    _pairs(root / "Train", "imgs", "annotations", n=4)
    _pairs(root / "valid", "imgs", "annotations", n=2, seed=1)
    _pairs(root / "testing", "imgs", "annotations", n=1, seed=2)
    index = find_samples(root)
    assert index.layout == "pairs"
    assert [len(index.split(s)) for s in ("train", "val", "test")] == [4, 2, 1]


def test_pairs_split_inside_image_and_mask_folders(tmp_path: Path) -> None:
    root = tmp_path / "d"  # ADE20K-like: images/training + annotations/validation
    _pairs(root, "images/training", "annotations/training", n=3)
    _pairs(root, "images/validation", "annotations/validation", n=2, seed=1)
    index = find_samples(root)
    assert index.layout == "pairs"
    assert len(index.split("train")) == 3 and len(index.split("val")) == 2
    assert all(s.target.parent.parent.name == "annotations" for s in index.samples)  # type: ignore[union-attr]


def test_pairs_in_group_folders(tmp_path: Path) -> None:
    root = tmp_path / "d"  # as the Dubai aerial tiles: Tile N/images + Tile N/masks
    _pairs(root / "Tile 1", "images", "masks", n=2)
    _pairs(root / "Tile 2", "images", "masks", n=3, seed=1)
    _assert_paired(root, 5)


def test_unknown_names_that_pair_up_are_ambiguous(tmp_path: Path) -> None:
    root = _pairs(tmp_path / "d", "photos", "seg", n=4)
    with pytest.raises(DataError, match="ambiguous") as err:
        find_samples(root)
    text = str(err.value)
    assert "data.layout=pairs:photos/seg" in text  # the mask-like side second
    assert "data.layout=imagefolder" in text
    assert "data.layout" in (err.value.hint or "")
    # each way of saying which reading is meant
    assert find_samples(root, layout="pairs:photos/seg").layout == "pairs:photos/seg"
    assert len(find_samples(root, layout="pairs:photos/seg").samples) == 4
    assert find_samples(root, task="segment").layout == "pairs:photos/seg"
    assert find_samples(root, layout="imagefolder").classes.names == ["photos", "seg"]
    assert find_samples(root, task="classify").layout == "imagefolder"


def test_numbered_class_folders_are_still_classes(tmp_path: Path) -> None:
    root = tmp_path / "d"  # same file names in each class folder, photos in both
    rng = np.random.default_rng(0)
    for name in ("cat", "dog"):
        for i in range(3):
            save(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8), root / name / f"{i}.png")
    assert find_samples(root).layout == "imagefolder"


def test_two_mask_folders_are_ambiguous(tmp_path: Path) -> None:
    root = _pairs(tmp_path / "d", "images", "masks")
    _pairs(root, "images", "annotations")
    with pytest.raises(DataError, match="could hold the masks") as err:
        find_samples(root)
    assert any("pairs:images/annotations" in i for i in err.value.items)
    assert any("pairs:images/masks" in i for i in err.value.items)
    index = find_samples(root, layout="pairs:images/annotations")
    assert {s.target.parent.name for s in index.samples} == {"annotations"}  # type: ignore[union-attr]


def test_two_image_folders_are_ambiguous(tmp_path: Path) -> None:
    root = _pairs(tmp_path / "d", "images", "masks")
    _pairs(root, "imgs", "masks")
    with pytest.raises(DataError, match="could hold the images"):
        find_samples(root)


@pytest.mark.parametrize("other", ["voc", "csv"])
def test_two_layouts_in_one_folder_are_ambiguous(tmp_path: Path, other: str) -> None:
    root = make_pairs(tmp_path / "d", n=2)
    (make_voc if other == "voc" else make_csv)(root)
    with pytest.raises(DataError, match="ambiguous") as err:
        detect_layout(root)
    assert any(i.startswith(f"data.layout={other}:") for i in err.value.items)
    assert any(i.startswith("data.layout=pairs:") for i in err.value.items)
    assert find_samples(root, layout="pairs").layout == "pairs"


def test_named_folders_that_do_not_exist(tmp_path: Path) -> None:
    root = make_pairs(tmp_path / "d", n=2)
    with pytest.raises(DataError, match="no image/mask pairs"):
        find_samples(root, layout="pairs:photos/gt")
    for bad in ("pairs:images", "pairs:a/b/c", "imagefolder:x/y"):
        with pytest.raises(ConfigError) as err:
            find_samples(root, layout=bad)
        assert err.value.where == "data.layout"


def test_layout_with_folder_names_is_a_valid_config_value(tmp_path: Path) -> None:
    cfg = Config.load(None, ["data.layout=pairs:imgs/annotations"])
    assert cfg.data.layout == "pairs:imgs/annotations"
    with pytest.raises(ConfigError):
        Config.load(None, ["data.layout=nonsense"])


# ------------------------------------------------------------------ item 5: split names
@pytest.mark.parametrize("name", ["valid", "validation", "val", "dev", "Valid"])
def test_classification_validation_folder_names(tmp_path: Path, name: str) -> None:
    root = make_imagefolder(tmp_path / "d", n_per_class=3, splits=True)
    if name != "val":
        (root / "val").rename(root / name)
    cfg = Config.load(None, [f"data.root={root}", "data.image_size=32", "train.num_workers=0"])
    bundle = build_data(cfg)
    assert {s.image.parts[-3] for s in bundle.splits["val"]} == {name}
    assert len(bundle.splits["val"]) == 6  # the folder, not 20 % held out of train/
    assert len(bundle.splits["train"]) == 6


@pytest.mark.parametrize("name", ["test", "testing"])
def test_classification_test_folder_names(tmp_path: Path, name: str) -> None:
    root = make_imagefolder(tmp_path / "d", n_per_class=3, splits=True)
    make_imagefolder(root / name, n_per_class=2, seed=1)
    index = find_samples(root)
    assert len(index.split("test")) == 4 and len(index.split("val")) == 6


def test_two_folders_for_one_split(tmp_path: Path) -> None:
    root = make_imagefolder(tmp_path / "d", n_per_class=2, splits=True)
    make_imagefolder(root / "valid", n_per_class=2, seed=1)
    with pytest.raises(DataError, match="same split") as err:
        find_samples(root)
    assert "val: val, valid" in err.value.items


def test_class_folders_beside_split_folders(tmp_path: Path) -> None:
    root = make_imagefolder(tmp_path / "d", n_per_class=2, splits=True)
    make_imagefolder(root, n_per_class=2, classes=("emu",), seed=1)
    with pytest.raises(DataError, match="beside split folders") as err:
        find_samples(root)
    assert err.value.items == [str(root / "emu")]


def test_many_numbered_grey_class_folders_are_classes(tmp_path: Path) -> None:
    root = tmp_path / "d"  # digits: the same file names, few grey levels, in 5 folders
    for digit in range(5):
        for i in range(2):
            save(np.full((8, 8), 40 * digit, np.uint8), root / str(digit) / f"{i}.png")
    index = find_samples(root)
    assert index.layout == "imagefolder" and index.classes.names == ["0", "1", "2", "3", "4"]
