"""Tests for liandan.data.layouts and liandan.data.scan: every layout, every bad input.

Datasets are written in their real folder layout under tmp_path (generators in
conftest.py, plus a few local ones for colour masks and broken files).
"""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_csv, make_imagefolder, make_pairs, make_voc, save, seg_pair
from liandan.config import Config
from liandan.data.datamodule import build_data
from liandan.data.layouts import detect_layout, find_samples
from liandan.data.scan import MaskMapper, check_dataset
from liandan.errors import ConfigError, DataError


# ------------------------------------------------------------------ helpers
def _scan(root: Path, **kwargs):
    """find_samples + check_dataset, as `liandan scan` does."""
    on_error = kwargs.pop("on_error", "fail")
    index = find_samples(root, **kwargs)
    return check_dataset(index, on_error=on_error)


def _snapshot(root: Path) -> dict[str, tuple[bytes, int]]:
    return {
        str(p.relative_to(root)): (p.read_bytes(), p.stat().st_mtime_ns)
        for p in sorted(root.rglob("*"))
        if p.is_file()
    }


def _mask_pairs(root: Path, masks: list[np.ndarray], seed: int = 0) -> Path:
    """images/ + masks/ with the given masks (any dtype/shape) and random RGB images."""
    rng = np.random.default_rng(seed)
    for i, mask in enumerate(masks):
        h, w = mask.shape[:2]
        save(rng.integers(0, 255, (h, w, 3), dtype=np.uint8), root / "images" / f"s{i}.png")
        save(mask, root / "masks" / f"s{i}.png")
    return root


def _binary_mask(seed: int, size: int = 16, high: int = 255) -> np.ndarray:
    mask = np.zeros((size, size), dtype=np.uint8)
    r, c = np.random.default_rng(seed).integers(0, size - 6, 2)
    mask[r : r + 6, c : c + 6] = high
    return mask


def _cfg(root: Path, *overrides: str) -> Config:
    return Config.load(
        None,
        [
            f"data.root={root}",
            "data.image_size=32",
            "train.batch_size=2",
            "train.num_workers=0",
            *overrides,
        ],
    )


# ------------------------------------------------------------------ each layout
def test_imagefolder_found(tmp_path: Path) -> None:
    root = make_imagefolder(tmp_path / "cls", n_per_class=4, classes=("cat", "dog", "eel"))
    index = find_samples(root)
    assert (index.task, index.layout) == ("classify", "imagefolder")
    assert index.classes.names == ["cat", "dog", "eel"]
    assert len(index.samples) == 12
    assert all(s.split is None for s in index.samples)
    for s in index.samples:
        assert s.image.parent.name == index.classes.names[s.target]  # type: ignore[index]
    checked = check_dataset(index)
    assert checked.in_channels == 3 and checked.dtype == "uint8"


def test_imagefolder_with_split_folders(tmp_path: Path) -> None:
    root = make_imagefolder(tmp_path / "cls", n_per_class=3, splits=True)
    index = find_samples(root)
    assert index.layout == "imagefolder"
    assert index.classes.names == ["cat", "dog"]
    assert len(index.split("train")) == 6 and len(index.split("val")) == 6
    assert all(s.image.parts[-3] == s.split for s in index.samples)


def test_csv_found(tmp_path: Path) -> None:
    root = make_csv(tmp_path / "csv", n_per_class=5)
    index = find_samples(root)
    assert (index.task, index.layout) == ("classify", "csv")
    assert index.classes.names == ["a", "b"]
    assert len(index.samples) == 10
    assert sum(1 for s in index.samples if s.target == 1) == 5
    check_dataset(index)


def test_csv_split_column(tmp_path: Path) -> None:
    root = make_csv(tmp_path / "csv", n_per_class=4)
    rows = list(csv.DictReader((root / "labels.csv").open()))
    for i, row in enumerate(rows):
        row["split"] = "val" if i % 4 == 0 else "train"
    with (root / "labels.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["image", "label", "split"])
        writer.writeheader()
        writer.writerows(rows)
    index = find_samples(root)
    assert len(index.split("val")) == 2 and len(index.split("train")) == 6


def test_pairs_found_and_classes_inferred(tmp_path: Path) -> None:
    root = make_pairs(tmp_path / "seg", n=5)
    index = find_samples(root)
    assert (index.task, index.layout) == ("segment", "pairs")
    assert len(index.samples) == 5
    assert all(s.image.stem == s.target.stem for s in index.samples)  # type: ignore[union-attr]
    checked = check_dataset(index)
    assert checked.index.classes.names == ["0", "1", "2"]
    assert checked.index.classes.values is None
    assert any("no classes.yaml" in n for n in checked.index.notes)
    mask = next(iter(checked.masks.values()))
    assert set(np.unique(mask)) <= {0, 1, 2}


def test_pairs_with_split_folders(tmp_path: Path) -> None:
    root = make_pairs(tmp_path / "seg", n=3, splits=True)
    index = find_samples(root)
    assert index.layout == "pairs"
    assert len(index.split("train")) == 3 and len(index.split("val")) == 3
    assert all(s.image.parts[-3] == s.split for s in index.samples)


def test_voc_found(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "voc", n=6)
    index = find_samples(root)
    assert (index.task, index.layout) == ("segment", "voc")
    assert index.classes.num_classes == 21
    assert index.classes.names[15] == "person"
    assert index.classes.ignore_index == 255
    assert len(index.split("train")) == 4 and len(index.split("val")) == 2
    checked = check_dataset(index)
    mask = checked.masks[index.samples[0].target]  # type: ignore[index]
    assert (mask[0] == -1).all()  # VOC's 255 boundary is ignored
    assert set(np.unique(mask[1:])) <= {0, 1, 15}


@pytest.mark.parametrize(
    ("make", "layout"),
    [
        (make_imagefolder, "imagefolder"),
        (make_csv, "csv"),
        (make_pairs, "pairs"),
        (make_voc, "voc"),
    ],
)
def test_detect_layout(tmp_path: Path, make, layout: str) -> None:
    assert detect_layout(make(tmp_path / "d")) == layout


def test_explicit_layout_and_unknown_layout(tmp_path: Path) -> None:
    root = make_pairs(tmp_path / "seg", n=2)
    assert find_samples(root, layout="pairs").layout == "pairs"
    with pytest.raises(ConfigError) as err:
        find_samples(root, layout="coco")
    assert err.value.where == "data.layout"


def test_undetectable_layout(tmp_path: Path) -> None:
    root = tmp_path / "flat"
    save(np.zeros((4, 4, 3), np.uint8), root / "a.png")
    with pytest.raises(DataError, match="layout") as err:
        find_samples(root)
    assert "docs/data.md" in (err.value.hint or "")


# ------------------------------------------------------------------ splits
def test_split_folders_used_by_build_data(tmp_path: Path) -> None:
    root = make_imagefolder(tmp_path / "cls", n_per_class=3, splits=True)
    bundle = build_data(_cfg(root))
    assert {s.image.parts[-3] for s in bundle.splits["train"]} == {"train"}
    assert {s.image.parts[-3] for s in bundle.splits["val"]} == {"val"}
    assert len(bundle.splits["val"]) == 6


def test_auto_val_split_seeded_stratified_disjoint(tmp_path: Path) -> None:
    root = make_imagefolder(tmp_path / "cls", n_per_class=10, classes=("a", "b", "c"))
    first = build_data(_cfg(root, "data.val_fraction=0.2", "train.seed=3"))
    again = build_data(_cfg(root, "data.val_fraction=0.2", "train.seed=3"))
    other = build_data(_cfg(root, "data.val_fraction=0.2", "train.seed=4"))
    train = {s.image for s in first.splits["train"]}
    val = {s.image for s in first.splits["val"]}
    assert not train & val  # disjoint
    assert len(train | val) == 30  # nothing lost
    # stratified: 20 % of each class
    assert sorted(s.target for s in first.splits["val"]) == [0, 0, 1, 1, 2, 2]
    # seeded
    assert [s.image for s in again.splits["val"]] == [s.image for s in first.splits["val"]]
    assert {s.image for s in other.splits["val"]} != val
    assert first.index.task == "classify"


def test_auto_val_split_for_pairs(tmp_path: Path) -> None:
    root = make_pairs(tmp_path / "seg", n=10)
    cfg = _cfg(root, "data.val_fraction=0.3")
    bundle = build_data(cfg)
    assert cfg.task == "segment"  # filled in from the layout
    train = {s.image for s in bundle.splits["train"]}
    val = {s.image for s in bundle.splits["val"]}
    assert len(val) == 3 and len(train) == 7 and not train & val


# ------------------------------------------------------------------ bad input
def test_missing_folder(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="folder not found") as err:
        find_samples(tmp_path / "nowhere")
    assert "nowhere" in str(err.value)


def test_empty_class_folder_is_listed(tmp_path: Path) -> None:
    root = make_imagefolder(tmp_path / "cls", n_per_class=2)
    (root / "emu").mkdir()
    (root / "yak").mkdir()
    with pytest.raises(DataError, match="no images") as err:
        find_samples(root)
    assert str(root / "emu") in err.value.items
    assert str(root / "yak") in err.value.items
    assert str(root / "cat") not in err.value.items


def test_image_without_mask_and_mask_without_image_in_one_error(tmp_path: Path) -> None:
    root = make_pairs(tmp_path / "seg", n=3)
    (root / "masks" / "img00.png").unlink()
    save(np.zeros((32, 32), np.uint8), root / "masks" / "stray.png")
    with pytest.raises(DataError) as err:
        find_samples(root)
    text = str(err.value)
    assert "img00.png: image without a mask" in text
    assert "stray.png: mask without an image" in text
    assert len(err.value.items) == 2


def test_pairs_without_masks_folder(tmp_path: Path) -> None:
    root = tmp_path / "seg"
    save(np.zeros((8, 8, 3), np.uint8), root / "images" / "a.png")
    with pytest.raises(DataError, match="image without a mask"):
        find_samples(root)


def test_mask_size_mismatch(tmp_path: Path) -> None:
    root = make_pairs(tmp_path / "seg", n=3)
    save(np.zeros((30, 32), np.uint8), root / "masks" / "img01.png")
    with pytest.raises(DataError) as err:
        _scan(root)
    assert any("img01.png" in i and "32x30" in i and "32x32" in i for i in err.value.items)


def test_mask_value_outside_classes_yaml(tmp_path: Path) -> None:
    root = make_pairs(tmp_path / "seg", n=3, classes_yaml="names: [bg, a, b]\n")
    mask = np.zeros((32, 32), np.uint8)
    mask[3, 3] = 7
    save(mask, root / "masks" / "img02.png")
    with pytest.raises(DataError) as err:
        _scan(root)
    assert len(err.value.items) == 1
    item = err.value.items[0]
    assert "img02.png" in item and "7" in item
    assert "ignore_index" in (err.value.hint or "")


def test_mask_value_outside_inferred_classes(tmp_path: Path) -> None:
    masks = [np.array([[0, 1], [2, 1]], np.uint8) for _ in range(3)]
    masks.append(np.array([[0, 1], [200, 2]], np.uint8))
    root = _mask_pairs(tmp_path / "seg", masks)
    with pytest.raises(DataError) as err:
        _scan(root)
    text = str(err.value)
    assert "200" in text
    assert "s3.png" in text  # the file holding the odd value is named
    assert "s0.png" not in text
    assert "ignore_index" in (err.value.hint or "")


def test_unreadable_and_truncated_images_all_listed(tmp_path: Path) -> None:
    root = make_pairs(tmp_path / "seg", n=5)
    (root / "images" / "img01.png").write_text("not a png")
    data = (root / "images" / "img03.png").read_bytes()
    (root / "images" / "img03.png").write_bytes(data[: len(data) // 2])
    (root / "masks" / "img04.png").write_bytes(b"")
    save(np.zeros((16, 32), np.uint8), root / "masks" / "img02.png")
    with pytest.raises(DataError, match="4 bad sample") as err:
        _scan(root)
    text = "\n".join(err.value.items)
    for name in ("img01.png", "img02.png", "img03.png", "img04.png"):
        assert name in text
    assert "img00.png" not in text
    assert len(err.value.items) == 4


def test_several_bad_class_images_all_listed(tmp_path: Path) -> None:
    root = make_imagefolder(tmp_path / "cls", n_per_class=4)
    (root / "cat" / "cat_1.png").write_bytes(b"")
    (root / "dog" / "dog_2.png").write_text("text")
    with pytest.raises(DataError) as err:
        _scan(root)
    text = "\n".join(err.value.items)
    assert "cat_1.png" in text and "dog_2.png" in text
    assert "on_error=skip" in (err.value.hint or "")


def test_on_error_skip_drops_and_lists_bad_files(tmp_path: Path) -> None:
    root = make_pairs(tmp_path / "seg", n=5)
    (root / "images" / "img01.png").write_text("not a png")
    save(np.zeros((16, 32), np.uint8), root / "masks" / "img02.png")
    checked = _scan(root, on_error="skip")
    kept = {s.image.name for s in checked.index.samples}
    assert kept == {"img00.png", "img03.png", "img04.png"}
    skipped = "\n".join(checked.index.skipped)
    assert "img01.png" in skipped and "img02.png" in skipped
    assert len(checked.index.skipped) == 2
    assert set(checked.masks) == {s.target for s in checked.index.samples}


def test_on_error_skip_with_every_sample_bad(tmp_path: Path) -> None:
    root = make_imagefolder(tmp_path / "cls", n_per_class=1)
    for p in root.rglob("*.png"):
        p.write_bytes(b"")
    with pytest.raises(DataError, match="every sample"):
        _scan(root, on_error="skip")


def test_on_error_skip_through_build_data(tmp_path: Path) -> None:
    root = make_imagefolder(tmp_path / "cls", n_per_class=5)
    (root / "cat" / "cat_0.png").write_text("broken")
    bundle = build_data(_cfg(root, "data.on_error=skip"))
    assert any("cat_0.png" in s for s in bundle.index.skipped)
    used = [s.image.name for split in bundle.splits.values() for s in split]
    assert "cat_0.png" not in used and len(used) == 9


# ------------------------------------------------------------------ mask values
def test_binary_0_255_masks_are_two_classes(tmp_path: Path) -> None:
    root = _mask_pairs(tmp_path / "seg", [_binary_mask(i) for i in range(3)])
    checked = _scan(root)
    classes = checked.index.classes
    assert classes.names == ["0", "255"]
    assert classes.values == [0, 255]
    assert classes.ignore_index is None
    assert any("0 and 255" in n and "two classes" in n for n in checked.index.notes)
    raw = _binary_mask(0)
    mapped = checked.masks[root / "masks" / "s0.png"]
    np.testing.assert_array_equal(mapped, (raw == 255).astype(np.int16))


def test_classes_yaml_values_0_255_with_names(tmp_path: Path) -> None:
    root = _mask_pairs(tmp_path / "seg", [_binary_mask(i) for i in range(3)])
    (root / "classes.yaml").write_text("names: [background, building]\nvalues: [0, 255]\n")
    checked = _scan(root)
    assert checked.index.classes.names == ["background", "building"]
    assert checked.index.classes.values == [0, 255]
    assert checked.index.classes.raw_values() == [0, 255]
    assert any("classes.yaml" in n for n in checked.index.notes)
    mapped = checked.masks[root / "masks" / "s1.png"]
    np.testing.assert_array_equal(mapped, (_binary_mask(1) == 255).astype(np.int16))


def _masks_with_255_border(n: int = 3) -> list[np.ndarray]:
    rng = np.random.default_rng(0)
    out = []
    for _ in range(n):
        mask = rng.integers(0, 3, (16, 16)).astype(np.uint8)
        mask[0, :] = 255
        out.append(mask)
    return out


def test_ignore_index_from_classes_yaml(tmp_path: Path) -> None:
    masks = _masks_with_255_border()
    root = _mask_pairs(tmp_path / "seg", masks)
    (root / "classes.yaml").write_text("names: [a, b, c]\nignore_index: 255\n")
    checked = _scan(root)
    assert checked.index.classes.ignore_index == 255
    mapped = checked.masks[root / "masks" / "s0.png"]
    assert (mapped[0] == -1).all()
    np.testing.assert_array_equal(mapped[1:], masks[0][1:])


def test_ignore_index_from_argument(tmp_path: Path) -> None:
    masks = _masks_with_255_border()
    root = _mask_pairs(tmp_path / "seg", masks)
    checked = _scan(root, ignore_index=255)
    assert checked.index.classes.names == ["0", "1", "2"]
    mapped = checked.masks[root / "masks" / "s2.png"]
    assert (mapped[0] == -1).all()
    np.testing.assert_array_equal(mapped[1:], masks[2][1:])


def test_ignore_index_argument_overrides_classes_yaml(tmp_path: Path) -> None:
    masks = _masks_with_255_border()
    for m in masks:
        m[m == 255] = 9
    root = _mask_pairs(tmp_path / "seg", masks)
    (root / "classes.yaml").write_text("names: [a, b, c]\nignore_index: 255\n")
    checked = _scan(root, ignore_index=9)
    assert checked.index.classes.ignore_index == 9
    assert (checked.masks[root / "masks" / "s0.png"][0] == -1).all()


def test_255_without_ignore_index_is_an_error_naming_files(tmp_path: Path) -> None:
    root = _mask_pairs(tmp_path / "seg", _masks_with_255_border())
    with pytest.raises(DataError) as err:
        _scan(root)
    text = str(err.value)
    assert "255" in text and "s0.png" in text
    assert "ignore_index" in (err.value.hint or "")


COLOURS = [(0, 0, 0), (255, 0, 0), (0, 0, 255)]


def _colour_masks(n: int = 3) -> tuple[list[np.ndarray], list[np.ndarray]]:
    rng = np.random.default_rng(1)
    indices, rgbs = [], []
    for _ in range(n):
        idx = rng.integers(0, 3, (12, 12))
        indices.append(idx)
        rgbs.append(np.array(COLOURS, dtype=np.uint8)[idx])
    return indices, rgbs


def test_colour_masks_through_classes_yaml(tmp_path: Path) -> None:
    indices, rgbs = _colour_masks()
    root = _mask_pairs(tmp_path / "seg", rgbs)
    (root / "classes.yaml").write_text(
        "names: [background, road, water]\ncolors: [[0, 0, 0], [255, 0, 0], [0, 0, 255]]\n"
    )
    checked = _scan(root)
    assert checked.index.classes.color_masks
    for i, idx in enumerate(indices):
        np.testing.assert_array_equal(checked.masks[root / "masks" / f"s{i}.png"], idx)


def test_colour_mask_with_only_grey_colours(tmp_path: Path) -> None:
    """A colour mask holding only black and white still maps through the colours."""
    indices, _ = _colour_masks(2)
    white = np.zeros((12, 12), dtype=np.int64)
    white[4:8, 4:8] = 1
    palette = np.array([(0, 0, 0), (255, 255, 255), (255, 0, 0)], dtype=np.uint8)
    masks = [palette[indices[0]], palette[white]]
    root = _mask_pairs(tmp_path / "seg", masks)
    (root / "classes.yaml").write_text(
        "names: [background, white, red]\ncolors: [[0, 0, 0], [255, 255, 255], [255, 0, 0]]\n"
    )
    checked = _scan(root)
    np.testing.assert_array_equal(checked.masks[root / "masks" / "s1.png"], white)
    np.testing.assert_array_equal(checked.masks[root / "masks" / "s0.png"], indices[0])


def test_colour_masks_without_classes_yaml(tmp_path: Path) -> None:
    _, rgbs = _colour_masks()
    root = _mask_pairs(tmp_path / "seg", rgbs)
    with pytest.raises(DataError, match=r"classes\.yaml") as err:
        _scan(root)
    assert "colors" in (err.value.hint or "")


def test_unknown_colour_is_named(tmp_path: Path) -> None:
    _, rgbs = _colour_masks()
    rgbs[1][0, 0] = (10, 200, 30)
    root = _mask_pairs(tmp_path / "seg", rgbs)
    (root / "classes.yaml").write_text(
        "names: [background, road, water]\ncolors: [[0, 0, 0], [255, 0, 0], [0, 0, 255]]\n"
    )
    with pytest.raises(DataError) as err:
        _scan(root)
    assert any("s1.png" in i and "(10, 200, 30)" in i for i in err.value.items)


def test_mask_mapper_ignored_and_unknown() -> None:
    from liandan.data.layouts import ClassSpec

    mapper = MaskMapper(ClassSpec(["a", "b"], values=[0, 255], ignore_index=100))
    out = mapper.map(np.array([[0, 255], [100, 7]], dtype=np.uint8))
    np.testing.assert_array_equal(out, [[0, 1], [-1, MaskMapper.UNKNOWN]])


# ------------------------------------------------------------------ classes.yaml problems
@pytest.mark.parametrize(
    ("text", "match"),
    [
        ("names: [a, b]\nvalues: [0]\n", "'values' has 1"),
        ("values: [0, 1]\n", "'names'"),
        ("names: [a, b]\ncolours: [[0,0,0],[1,1,1]]\n", "unknown key"),
        ("names: [a, b\n", "YAML"),
    ],
)
def test_bad_classes_yaml(tmp_path: Path, text: str, match: str) -> None:
    root = make_pairs(tmp_path / "seg", n=2, classes_yaml=text)
    with pytest.raises(DataError, match=match) as err:
        find_samples(root)
    assert "classes.yaml" in str(err.value)


# ------------------------------------------------------------------ csv and task
def test_labels_csv_path_escaping_root(tmp_path: Path) -> None:
    root = make_csv(tmp_path / "csv", n_per_class=2)
    save(np.zeros((4, 4, 3), np.uint8), tmp_path / "secret.png")
    with (root / "labels.csv").open("a", newline="") as fh:
        fh.write("../secret.png,a\n")
    with pytest.raises(DataError, match="outside the dataset folder") as err:
        find_samples(root)
    assert "labels.csv" in str(err.value)


def test_labels_csv_missing_file_and_bad_split(tmp_path: Path) -> None:
    root = make_csv(tmp_path / "csv", n_per_class=2)
    with (root / "labels.csv").open("a", newline="") as fh:
        fh.write("pics/gone.png,a\npics/gone2.png,b\n")
    with pytest.raises(DataError, match="not found") as err:
        find_samples(root)
    assert len(err.value.items) == 2


def test_labels_csv_without_columns(tmp_path: Path) -> None:
    root = tmp_path / "csv"
    root.mkdir()
    (root / "labels.csv").write_text("file,class\na.png,x\n")
    with pytest.raises(DataError, match="image,label"):
        find_samples(root)


def test_task_mismatch_is_config_error(tmp_path: Path) -> None:
    root = make_pairs(tmp_path / "seg", n=2)
    with pytest.raises(ConfigError) as err:
        find_samples(root, task="classify")
    assert err.value.where == "task"
    assert "pairs" in str(err.value)
    cls = make_imagefolder(tmp_path / "cls", n_per_class=2)
    with pytest.raises(ConfigError):
        find_samples(cls, task="segment")
    assert find_samples(cls, task="classify").task == "classify"


# ------------------------------------------------------------------ files only read
def test_user_files_unchanged_after_failing_check(tmp_path: Path) -> None:
    root = make_pairs(tmp_path / "seg", n=4, classes_yaml="names: [a, b, c]\n")
    img, _ = seg_pair(np.random.default_rng(5))
    save(img, root / "images" / "extra.png")  # image without a mask
    before = _snapshot(root)
    with pytest.raises(DataError):
        _scan(root)
    (root / "images" / "extra.png").unlink()
    mask = np.full((32, 32), 9, np.uint8)
    save(mask, root / "masks" / "img01.png")  # unknown value
    (root / "images" / "img02.png").write_text("broken")  # unreadable
    before = _snapshot(root)
    with pytest.raises(DataError):
        _scan(root)
    with pytest.raises(DataError):
        build_data(_cfg(root))
    assert _snapshot(root) == before


def test_user_files_unchanged_after_skip(tmp_path: Path) -> None:
    root = make_imagefolder(tmp_path / "cls", n_per_class=4)
    (root / "cat" / "cat_0.png").write_text("broken")
    before = _snapshot(root)
    build_data(_cfg(root, "data.on_error=skip"))
    assert _snapshot(root) == before


def test_check_rejects_mixed_band_counts(tmp_path: Path) -> None:
    root = make_imagefolder(tmp_path / "cls", n_per_class=3)
    save(np.zeros((32, 32), np.uint16), root / "cat" / "deep.png")
    with pytest.raises(DataError) as err:
        _scan(root)
    assert any("deep.png" in i and "bands" in i for i in err.value.items)


def test_mixed_grey_and_rgb_photos_read_as_rgb(tmp_path: Path) -> None:
    root = make_imagefolder(tmp_path / "cls", n_per_class=3)
    save(np.zeros((32, 32), np.uint8), root / "cat" / "grey.png")
    checked = _scan(root)
    assert checked.to_rgb and checked.in_channels == 3
    assert checked.images[root / "cat" / "grey.png"].shape == (32, 32, 3)
    assert any("RGB" in n for n in checked.index.notes)


def test_image_formats_read_in_a_dataset(tmp_path: Path) -> None:
    root = tmp_path / "cls"
    rng = np.random.default_rng(0)
    for name in ("a", "b"):
        for i, ext in enumerate(("png", "jpg", "tif", "bmp")):
            save(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8), root / name / f"{i}.{ext}")
    (root / "a" / "notes.txt").write_text("ignored")
    index = find_samples(root)
    assert len(index.samples) == 8
    checked = check_dataset(index)
    assert checked.in_channels == 3
    assert Image.open(root / "a" / "1.jpg").format == "JPEG"


def test_class_only_in_val_is_reported(tmp_path: Path) -> None:
    root = make_imagefolder(tmp_path / "cls", n_per_class=2, splits=True)
    save(np.zeros((8, 8, 3), np.uint8), root / "val" / "emu" / "e0.png")
    with pytest.raises(DataError, match="no images") as err:
        find_samples(root)
    assert err.value.items == [str(root / "train" / "emu")]


def test_single_value_masks_are_an_error(tmp_path: Path) -> None:
    root = _mask_pairs(tmp_path / "seg", [np.zeros((8, 8), np.uint8)] * 2)
    with pytest.raises(DataError, match="single value"):
        _scan(root)


def test_sparse_mask_codes_need_classes_yaml(tmp_path: Path) -> None:
    codes = np.array([[0, 10], [20, 30]], np.uint8)
    root = _mask_pairs(tmp_path / "seg", [codes, np.zeros((2, 2), np.uint8)])
    with pytest.raises(DataError, match="not class indices") as err:
        _scan(root)
    assert err.value.items == [f"{root / 'masks' / 's0.png'}: value(s) 10, 20, 30"]
    assert "values: [0, 10, 20, 30]" in (err.value.hint or "")
    (root / "classes.yaml").write_text("names: [a, b, c, d]\nvalues: [0, 10, 20, 30]\n")
    checked = _scan(root)
    np.testing.assert_array_equal(checked.masks[root / "masks" / "s0.png"], [[0, 1], [2, 3]])


# ------------------------------------------------------------------ classes.yaml wins
def test_classes_yaml_wins_over_voc_classes(tmp_path: Path) -> None:
    root = make_voc(tmp_path / "voc", n=4)  # masks hold 0, 1, 15 and the boundary 255
    (root / "classes.yaml").write_text("names: [background, plane, person]\nvalues: [0, 1, 15]\n")
    index = find_samples(root)
    assert index.layout == "voc"
    assert index.classes.names == ["background", "plane", "person"]  # not VOC's 21
    assert index.classes.ignore_index == 255  # VOC's boundary value stays ignored
    checked = check_dataset(index)
    assert set(np.unique(np.concatenate([m.ravel() for m in checked.masks.values()]))) == {
        -1,
        0,
        1,
        2,
    }
    assert find_samples(root, ignore_index=0).classes.ignore_index == 0  # config still wins


# ------------------------------------------------------------------ labels.csv from Excel
def test_labels_csv_saved_by_excel_with_bom(tmp_path: Path) -> None:
    root = make_csv(tmp_path / "csv", n_per_class=3)
    text = (root / "labels.csv").read_text()
    (root / "labels.csv").write_text(text.replace("\n", "\r\n"), encoding="utf-8-sig")
    assert (root / "labels.csv").read_bytes().startswith(b"\xef\xbb\xbf")
    index = find_samples(root)
    assert index.layout == "csv" and len(index.samples) == 6
    assert index.classes.names == ["a", "b"]


def test_labels_csv_header_case_and_split_names(tmp_path: Path) -> None:
    root = make_csv(tmp_path / "csv", n_per_class=2)
    rows = (root / "labels.csv").read_text().splitlines()[1:]
    splits = ["Train", "valid", "validation", "testing"]
    lines = [f"{r},{s}" for r, s in zip(rows, splits, strict=True)]
    (root / "labels.csv").write_text("\n".join([" Image ,Label,SPLIT", *lines]) + "\n")
    index = find_samples(root)
    assert [s.split for s in index.samples] == ["train", "val", "val", "test"]


# ------------------------------------------------------------------ every problem, one pass
def _three_problems(root: Path) -> dict[str, Path]:
    """A pairs dataset with an unpaired image, a size mismatch and a truncated image."""
    make_pairs(root, n=5)
    unpaired = save(np.zeros((32, 32, 3), np.uint8), root / "images" / "lonely.png")
    small = save(np.zeros((30, 32), np.uint8), root / "masks" / "img01.png")
    truncated = root / "images" / "img02.png"
    truncated.write_bytes(truncated.read_bytes()[:60])
    return {"unpaired": unpaired, "size": small, "truncated": truncated}


@pytest.mark.parametrize("on_error", ["fail", "skip"])
def test_train_names_every_problem_of_every_kind_at_once(tmp_path: Path, on_error: str) -> None:
    root = tmp_path / "seg"
    files = _three_problems(root)
    with pytest.raises(DataError) as err:
        build_data(_cfg(root, f"data.on_error={on_error}"))  # what `liandan train` runs
    text = str(err.value)
    for path in files.values():
        assert str(path) in text  # was: only the unpaired image, the rest a rerun each
    assert "image without a mask" in text and "32x30" in text


def test_scan_and_train_name_the_same_files(tmp_path: Path) -> None:
    from liandan.scan_report import scan

    root = tmp_path / "seg"
    files = _three_problems(root)
    report = scan(root, use_cache=False)
    errors = {Path(p.file) for p in report.problems if p.severity == "error"}
    assert set(files.values()) <= errors
    with pytest.raises(DataError) as err:
        build_data(_cfg(root))
    named = {Path(item.split(": ", 1)[0]) for item in err.value.items}
    assert errors <= named


def test_bad_image_and_its_bad_mask_both_named(tmp_path: Path) -> None:
    root = make_pairs(tmp_path / "seg", n=3)
    (root / "images" / "img00.png").write_bytes(b"")
    (root / "masks" / "img00.png").write_text("not a png")
    with pytest.raises(DataError) as err:
        build_data(_cfg(root))
    assert sum("img00.png" in i for i in err.value.items) == 2


def test_mask_codes_and_a_broken_file_in_one_message(tmp_path: Path) -> None:
    root = make_pairs(tmp_path / "seg", n=3, values=(0, 10, 20))  # codes, no classes.yaml
    (root / "images" / "img01.png").write_bytes(b"")
    save(np.zeros((32, 32, 3), np.uint8), root / "images" / "lonely.png")
    with pytest.raises(DataError) as err:
        build_data(_cfg(root))
    text = str(err.value)
    assert "img01.png" in text and "lonely.png" in text
    assert "img00.png: value(s) 10, 20" in text
    assert "classes.yaml" in (err.value.hint or "")


def test_empty_class_folder_and_broken_image_in_one_message(tmp_path: Path) -> None:
    root = make_imagefolder(tmp_path / "cls", n_per_class=3)
    (root / "emu").mkdir()
    (root / "cat" / "cat_1.png").write_bytes(b"")
    with pytest.raises(DataError) as err:
        build_data(_cfg(root, "data.on_error=skip"))
    text = str(err.value)
    assert str(root / "emu") in text and "cat_1.png" in text
