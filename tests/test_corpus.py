"""The bad-input corpus, end to end: each case through `liandan train` or the data
pipeline training uses, with the documented behaviour and the user's files unchanged."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

import corpus
from conftest import FAST_CLS, FAST_SEG
from liandan.cli import main
from liandan.config import Config
from liandan.data.datamodule import build_data

# case -> (layout overrides, words the error must contain besides the file name)
FAILS: dict[str, tuple[Callable[[Path], tuple[Path, Path]], list[str], list[str]]] = {
    "truncated_jpeg": (corpus.truncated_jpeg, FAST_CLS, ["broken.jpg"]),
    "zero_byte": (corpus.zero_byte, FAST_CLS, ["empty.png", "empty"]),
    "text_named_png": (corpus.text_named_png, FAST_CLS, ["notes.png"]),
    "bomb_header": (corpus.bomb_header, FAST_CLS, ["bomb.png"]),
    "empty_class_folder": (corpus.empty_class_folder, FAST_CLS, ["emu", "no images"]),
    "mask_value_beyond_classes": (corpus.mask_value_beyond_classes, FAST_SEG, ["img03.png", "7"]),
    "size_mismatch": (corpus.size_mismatch, FAST_SEG, ["img02"]),
}


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, marks=pytest.mark.slow) if c == "bomb_header" else c for c in sorted(FAILS)],
)
def test_bad_input_fails_naming_the_file(case, tmp_path, capsys):
    make, overrides, words = FAILS[case]
    root, _ = make(tmp_path / "data")
    before = corpus.digest(root)
    out = tmp_path / "runs"
    code = main(["train", str(root), *overrides, "--out", str(out)])
    err = capsys.readouterr().err
    assert code == 1, err
    assert "data error" in err
    for word in words:
        assert word in err, (word, err)
    assert not (out / "train").exists()  # fails before a run folder is made
    assert corpus.digest(root) == before


SKIPPABLE = ["truncated_jpeg", "zero_byte", "text_named_png", "bomb_header"]


@pytest.mark.parametrize("case", SKIPPABLE)
def test_bad_file_skipped_and_listed_under_on_error_skip(case, tmp_path):
    root, bad = FAILS[case][0](tmp_path / "data")
    before = corpus.digest(root)
    cfg = Config.load(None, [*FAST_CLS, "data.on_error=skip"])
    cfg.data.root = root
    bundle = build_data(cfg)
    listed = " ".join(str(item) for item in bundle.index.skipped)
    assert bad.name in listed
    used = {s.image for split in bundle.splits.values() for s in split}
    assert bad not in used and len(used) == 8
    assert corpus.digest(root) == before


def _bundle(root: Path, overrides: list[str]):  # type: ignore[no-untyped-def]
    cfg = Config.load(None, overrides)
    cfg.data.root = root
    return build_data(cfg)


def test_sixteen_bit_png_values_kept(tmp_path):
    root, path = corpus.sixteen_bit_png(tmp_path / "data")
    before = corpus.digest(root)
    bundle = _bundle(root, FAST_CLS)
    sample = next(s for split in bundle.splits.values() for s in split if s.image == path)
    from liandan.data.datasets import load_image

    image = load_image(bundle.checked, sample, None)
    assert image.max() > 255 and bundle.checked.dtype == "uint16"
    assert corpus.digest(root) == before


def test_float32_tiff_values_kept(tmp_path):
    root, path = corpus.float32_tiff(tmp_path / "data")
    bundle = _bundle(root, FAST_CLS)
    sample = next(s for split in bundle.splits.values() for s in split if s.image == path)
    from liandan.data.datasets import load_image

    image = load_image(bundle.checked, sample, None)
    assert image.dtype == np.float32 and image.min() < -255 and image.max() > 255


def test_mixed_grey_rgb_rgba_palette_photos_read_as_rgb(tmp_path):
    root, _ = corpus.mixed_modes(tmp_path / "data")
    before = corpus.digest(root)
    bundle = _bundle(root, FAST_CLS)
    assert bundle.in_channels == 3
    assert corpus.digest(root) == before


def test_exif_rotated_jpeg_pairs_with_its_mask(tmp_path):
    root, path = corpus.exif_rotated_jpeg(tmp_path / "data")
    before = corpus.digest(root)
    bundle = _bundle(root, FAST_SEG)  # no size-mismatch error: orientation is applied
    assert any(s.image == path for split in bundle.splits.values() for s in split)
    assert corpus.digest(root) == before


@pytest.mark.parametrize("make", [corpus.palette_and_colour_masks, corpus.rgb_colour_masks])
def test_palette_and_rgb_colour_masks_map_to_classes(make, tmp_path):
    root, _ = make(tmp_path / "data")
    before = corpus.digest(root)
    bundle = _bundle(root, FAST_SEG)
    assert bundle.classes.num_classes == 3
    for mask in bundle.checked.masks.values():
        assert mask.max() <= 2
    assert corpus.digest(root) == before


def test_geotiff_all_nodata_is_named(tmp_path, capsys):
    from liandan.scan_report import scan

    root, path = corpus.geotiff_all_nodata(tmp_path / "data")
    before = corpus.digest(root)
    report = scan(root, use_cache=False, progress=False)
    assert corpus.digest(root) == before
    assert path.name in str(report.to_dict()["problems"])
    # training names it too (exit 1, no run folder), and the file is left as it was
    runs = tmp_path / "runs"
    assert main(["train", str(root), "train.epochs=1", "--out", str(runs)]) == 1
    err = capsys.readouterr().err
    assert path.name in err and "nodata" in err
    assert corpus.digest(root) == before and not (runs / "train").exists()
