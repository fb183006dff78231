"""Masks as users have them: lossy files, colour and palette masks, classes.yaml types.

Every mask problem is a :class:`DataError` naming the file (or classes.yaml key) with a
hint, in ``liandan scan`` and in training alike; nothing is silently mapped wrong.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import make_pairs, save, write_geotiff
from liandan.data.layouts import find_samples
from liandan.data.scan import check_dataset
from liandan.errors import DataError
from liandan.scan_report import scan


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIANDAN_CACHE_DIR", str(tmp_path / "cache"))


# ------------------------------------------------------------ scan never crashes
def test_scan_lists_problems_when_no_mask_pairs_with_an_image(tmp_path: Path) -> None:
    """Every image unpaired: no mask to infer the classes from (was a StopIteration)."""
    root = make_pairs(tmp_path / "data", n=3)
    for mask in sorted((root / "masks").glob("*.png")):
        mask.rename(mask.with_name(f"other_{mask.name}"))
    report = scan(root)
    assert not report.ok
    kinds = {(p.kind, Path(p.file).name) for p in report.problems}
    assert ("unpaired", "img00.png") in kinds and ("unpaired", "other_img00.png") in kinds


def test_scan_of_images_and_label_pngs_does_not_crash(tmp_path: Path) -> None:
    root = make_pairs(tmp_path / "data", n=3)
    (root / "masks").rename(root / "labels")
    report = scan(root)  # paired or named as unpaired, never a traceback
    assert report.ok or report.problems


def test_scan_of_rasters_labelled_by_polygons(tmp_path: Path) -> None:
    """The documented polygon layout: images/<stem>.tif + labels/<stem>.geojson."""
    from rasterio.transform import from_origin

    root = tmp_path / "data"
    transform = from_origin(500_000, 4_000_000, 10.0, 10.0)
    image = np.random.default_rng(0).integers(0, 200, (3, 40, 40)).astype(np.uint8)
    write_geotiff(root / "images" / "scene.tif", image, transform=transform)
    x0, y0 = transform.c, transform.f

    def box(r0: int, r1: int, c0: int, c1: int) -> dict:
        ring = [(x0 + c * 10, y0 - r * 10) for r, c in ((r0, c0), (r0, c1), (r1, c1), (r1, c0))]
        return {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}

    features = [
        {"type": "Feature", "geometry": box(5, 20, 5, 20), "properties": {"class": "field"}},
        {"type": "Feature", "geometry": box(25, 35, 5, 30), "properties": {"class": "water"}},
    ]
    crs = {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32633"}}
    (root / "labels").mkdir()
    (root / "labels" / "scene.geojson").write_text(
        json.dumps({"type": "FeatureCollection", "crs": crs, "features": features})
    )
    report = scan(root)
    assert report.ok, report.problems
    assert not [p for p in report.problems if "scene.geojson" in p.file]
    assert report.fingerprint.classes == ["background", "field", "water"]
    assert report.fingerprint.class_images == {"field": 1, "water": 1}


# ------------------------------------------------------------ colour and palette masks
COLORS = np.array([[60, 16, 152], [132, 41, 246], [110, 193, 228]], np.uint8)
COLORS_YAML = (
    "names: [building, land, road]\ncolors: [[60, 16, 152], [132, 41, 246], [110, 193, 228]]\n"
)


def colour_pairs(root: Path, n: int = 4) -> dict[str, np.ndarray]:
    """Pairs whose masks are colours (RGB PNG); returns the class indices of each mask."""
    make_pairs(root, n=n)
    truth = {}
    for path in sorted((root / "masks").glob("*.png")):
        index = np.array(Image.open(path))
        truth[path.stem] = index
        save(COLORS[index], path)
    return truth


def as_palette(path: Path, index: np.ndarray, order: list[int]) -> None:
    """Save the mask of class ``index`` as a palette PNG whose palette lists the class
    colours in ``order`` (so palette index i is class order[i], not class i)."""
    position = np.argsort(order)  # class -> its palette index
    img = Image.fromarray(position[index].astype(np.uint8), mode="P")
    img.putpalette([int(c) for k in order for c in COLORS[k]] + [0] * (253 * 3))
    img.save(path)


def checked_masks(root: Path, **kwargs) -> dict[str, np.ndarray]:
    checked = check_dataset(find_samples(root), **kwargs)
    return {p.stem: m for p, m in checked.masks.items()}


def test_palette_masks_are_read_by_their_colours_when_classes_yaml_gives_colours(
    tmp_path: Path,
) -> None:
    """Real datasets mix RGB and palette masks whose palette order differs per file."""
    root = tmp_path / "data"
    truth = colour_pairs(root)
    as_palette(root / "masks" / "img00.png", truth["img00"], [1, 0, 2])
    as_palette(root / "masks" / "img01.png", truth["img01"], [2, 1, 0])
    (root / "classes.yaml").write_text(COLORS_YAML)
    masks = checked_masks(root)
    for stem, index in truth.items():
        assert np.array_equal(masks[stem], index), stem
    report = scan(root)
    assert report.ok, report.problems
    expected = np.bincount(np.concatenate([t.ravel() for t in truth.values()]), minlength=3)
    assert list(report.fingerprint.class_pixels.values()) == expected.tolist()


def test_palette_masks_with_values_in_classes_yaml_stay_palette_indices(tmp_path: Path) -> None:
    root = tmp_path / "data"
    truth = colour_pairs(root)
    for stem, index in truth.items():
        as_palette(root / "masks" / f"{stem}.png", index, [0, 1, 2])
    (root / "classes.yaml").write_text(COLORS_YAML + "values: [0, 1, 2]\n")
    masks = checked_masks(root)
    assert all(np.array_equal(masks[s], truth[s]) for s in truth)


def test_an_ignore_colour_leaves_its_pixels_out(tmp_path: Path) -> None:
    """``ignore_index: [0, 0, 0]`` was accepted and had no effect (or crashed)."""
    root = tmp_path / "data"
    truth = colour_pairs(root)
    for stem in ("img00", "img02"):
        path = root / "masks" / f"{stem}.png"
        rgb = np.array(Image.open(path))
        rgb[:3] = 0  # an unlabelled border in black
        save(rgb, path)
    (root / "classes.yaml").write_text(COLORS_YAML + "ignore_index: [0, 0, 0]\n")
    masks = checked_masks(root)
    assert (masks["img00"][:3] == -1).all() and (masks["img02"][:3] == -1).all()
    assert np.array_equal(masks["img00"][3:], truth["img00"][3:])
    assert (masks["img01"] >= 0).all()
    report = scan(root)
    assert report.ok, report.problems
    assert report.fingerprint.ignore_index == (0, 0, 0)


def test_colours_that_do_not_match_the_masks_are_named(tmp_path: Path) -> None:
    """A classes.yaml with the colours of a dataset's classes.json, not of its masks."""
    root = tmp_path / "data"
    colour_pairs(root)
    (root / "classes.yaml").write_text(
        "names: [building, land, road]\ncolors: ['#D0021B', '#F5A623', [110, 193, 228]]\n"
    )
    with pytest.raises(DataError) as err:
        check_dataset(find_samples(root))
    hint = err.value.hint or ""
    assert "[60, 16, 152]" in hint and "[132, 41, 246]" in hint  # what the masks hold
    assert "'building' [208, 2, 27]" in hint and "'land' [245, 166, 35]" in hint
    assert "road" not in hint.split("occurs in no mask")[1].split(";")[0]
    assert any("img00.png" in item and "(60, 16, 152)" in item for item in err.value.items)
    report = scan(root)
    (mismatch,) = [p for p in report.problems if p.kind == "color-mismatch"]
    assert mismatch.severity == "error" and "[60, 16, 152]" in mismatch.reason
    assert mismatch.file.endswith("classes.yaml")


def supervisely_meta(colours: list[str]) -> str:
    """A class list as Supervisely exports it (meta.json; datasets ship it as
    classes.json): titles and hex colours."""
    titles = ["building", "land", "road"]
    return json.dumps(
        {
            "classes": [
                {"title": t, "shape": "polygon", "color": c, "geometry_config": {}}
                for t, c in zip(titles, colours, strict=True)
            ],
            "tags": [],
        }
    )


def test_a_class_list_json_maps_colour_masks_without_classes_yaml(tmp_path: Path) -> None:
    """Colour masks with only the dataset's classes.json were refused ("need a
    classes.yaml") while the JSON said which colour is which class."""
    root = tmp_path / "data"
    truth = colour_pairs(root)
    as_palette(root / "masks" / "img01.png", truth["img01"], [2, 1, 0])
    (root / "classes.json").write_text(supervisely_meta(["#3C1098", "#8429F6", "#6EC1E4"]))
    index = find_samples(root)
    assert index.classes.names == ["building", "land", "road"]
    assert any("classes.json" in note for note in index.notes)
    masks = checked_masks(root)
    for stem, classes in truth.items():
        assert np.array_equal(masks[stem], classes), stem
    report = scan(root)
    assert report.ok, report.problems
    assert not [p for p in report.problems if p.file.endswith("classes.json")]  # not "ignored"


def test_a_class_list_json_whose_colours_are_not_the_masks_is_refused(tmp_path: Path) -> None:
    """As the Dubai aerial dataset is published: classes.json's colours are not those in
    its masks. Both are named, and what to write; nothing is trained on a wrong mapping."""
    root = tmp_path / "data"
    colour_pairs(root)
    (root / "classes.json").write_text(supervisely_meta(["#D0021B", "#F5A623", "#6EC1E4"]))
    with pytest.raises(DataError) as err:
        check_dataset(find_samples(root))
    hint = err.value.hint or ""
    assert "no class in classes.json" in hint
    assert "[60, 16, 152]" in hint and "'building' [208, 2, 27]" in hint
    assert "classes.yaml beside classes.json" in hint
    report = scan(root)
    (mismatch,) = [p for p in report.problems if p.kind == "color-mismatch"]
    assert mismatch.severity == "error" and mismatch.file.endswith("classes.json")


def test_classes_yaml_wins_over_a_class_list_json(tmp_path: Path) -> None:
    root = tmp_path / "data"
    truth = colour_pairs(root)
    (root / "classes.json").write_text(supervisely_meta(["#D0021B", "#F5A623", "#6EC1E4"]))
    (root / "classes.yaml").write_text(COLORS_YAML)
    masks = checked_masks(root)
    assert all(np.array_equal(masks[s], truth[s]) for s in truth)


@pytest.mark.parametrize(
    ("text", "named"),
    [
        ("names: road\n", "'names'"),
        ("names: [a, b]\nvalues: [0, x]\n", "'values' entry 2"),
        ("names: [a, b]\nvalues: [0, 0]\n", "'values': 0 is listed twice"),
        ("names: [a, b]\ncolors: [[0, 0], [1, 1, 1]]\n", "'colors' entry 1"),
        ("names: [a, b]\ncolors: [[0, 0, 0], [0, 0, 300]]\n", "'colors' entry 2"),
        ("names: [a, b]\ncolors: [[1, 1, 1], [1, 1, 1]]\n", "'colors': [1, 1, 1] is listed twice"),
        ("names: [a, b]\nignore_index: x\n", "'ignore_index'"),
        ("names: [a, b]\nignore_index: [0, 0]\n", "'ignore_index'"),
        (
            "names: [a, b]\nignore_index: 1\n",
            "'ignore_index' 1 is also the mask value of class 'b'",
        ),
        (
            "names: [a, b]\ncolors: [[0, 0, 0], [9, 9, 9]]\nignore_index: [9, 9, 9]\n",
            "'ignore_index' [9, 9, 9] is also the colour of class 'b'",
        ),
        ("names: [a, b]\nnodata: none\n", "'nodata'"),
        ("names: [a, a]\n", "'names': 'a' is listed twice"),
    ],
)
def test_a_classes_yaml_value_of_the_wrong_type_is_an_error_naming_the_key(
    tmp_path: Path, text: str, named: str
) -> None:
    root = make_pairs(tmp_path / "data", n=2)
    (root / "classes.yaml").write_text(text)
    with pytest.raises(DataError) as err:
        find_samples(root)
    assert str(err.value.where).endswith("classes.yaml")
    assert any(named in item for item in err.value.items), err.value.items


def test_every_bad_classes_yaml_value_is_named_at_once(tmp_path: Path) -> None:
    root = make_pairs(tmp_path / "data", n=2)
    (root / "classes.yaml").write_text("names: [a, b]\nvalues: [0]\ncolors: 3\nnodata: x\n")
    with pytest.raises(DataError) as err:
        find_samples(root)
    assert len(err.value.items) == 3


def test_colours_may_be_written_as_hex(tmp_path: Path) -> None:
    root = tmp_path / "data"
    truth = colour_pairs(root)
    (root / "classes.yaml").write_text(
        "names: [building, land, road]\ncolors: ['#3C1098', '#8429F6', '#6ec1e4']\n"
    )
    masks = checked_masks(root)
    assert all(np.array_equal(masks[s], truth[s]) for s in truth)


# ------------------------------------------------------------ lossy masks
def jpeg_masks(root: Path, quality: int = 90) -> dict[str, np.ndarray]:
    """Every mask of a pairs dataset saved again as JPEG; returns the exact masks."""
    truth = {}
    for path in sorted((root / "masks").glob("*.png")):
        mask = np.array(Image.open(path))
        truth[path.stem] = mask
        Image.fromarray(mask).save(path.with_suffix(".jpg"), quality=quality)
        path.unlink()
    return truth


SPREAD = "names: [a, b, c]\nvalues: [0, 128, 255]\n"


def test_lossy_formats_are_told_by_their_bytes(tmp_path: Path) -> None:
    import rasterio

    from liandan.data.masks import lossy_format

    arr = np.zeros((16, 16), np.uint8)
    Image.fromarray(arr).save(tmp_path / "a.jpg")
    Image.fromarray(arr).save(tmp_path / "named.png", format="JPEG")
    Image.fromarray(arr).save(tmp_path / "b.png")
    Image.fromarray(arr).convert("RGB").save(tmp_path / "lossy.webp", quality=80)
    Image.fromarray(arr).convert("RGBA").save(tmp_path / "alpha.webp", quality=80)
    Image.fromarray(arr).convert("RGB").save(tmp_path / "lossless.webp", lossless=True)
    profile = dict(driver="GTiff", width=16, height=16, count=1, dtype="uint8")
    for name, extra in (("jpeg.tif", {"compress": "jpeg"}), ("lzw.tif", {"compress": "lzw"})):
        with rasterio.open(tmp_path / name, "w", **profile, **extra) as dst:
            dst.write(arr[None])
    found = {p.name: lossy_format(p) for p in sorted(tmp_path.iterdir())}
    assert found == {
        "a.jpg": "JPEG",
        "alpha.webp": "lossy WebP",
        "b.png": None,
        "jpeg.tif": "JPEG-compressed TIFF",
        "lossless.webp": None,
        "lossy.webp": "lossy WebP",
        "lzw.tif": None,
        "named.png": "JPEG",
    }


def test_jpeg_masks_are_an_error_in_scan_and_training(tmp_path: Path) -> None:
    """JPEG masks passed scan as ready while their edges held values of no class."""
    root = make_pairs(tmp_path / "data", n=4, values=(0, 128, 255), classes_yaml=SPREAD)
    jpeg_masks(root)
    report = scan(root)
    assert not report.ok
    lossy = [p for p in report.problems if p.kind == "lossy-mask"]
    assert sorted(Path(p.file).name for p in lossy) == [f"img0{i}.jpg" for i in range(4)]
    assert all(p.severity == "error" and "JPEG is a lossy format" in p.reason for p in lossy)
    assert all("of its pixels hold no class value" in p.reason for p in lossy)
    assert not [p for p in report.problems if p.kind == "bad-mask-values"]
    with pytest.raises(DataError) as err:
        check_dataset(find_samples(root))
    assert len(err.value.items) == 4 and all("lossy" in i for i in err.value.items)
    assert "data.lossy_masks=nearest" in (err.value.hint or "")


def test_jpeg_mask_hint_speaks_of_compression_not_a_long_list_of_values(tmp_path: Path) -> None:
    """0/255 JPEG masks without classes.yaml proposed a classes.yaml of 48 values."""
    root = make_pairs(tmp_path / "data", n=4, values=(0, 255))
    jpeg_masks(root, quality=75)
    with pytest.raises(DataError) as err:
        check_dataset(find_samples(root))
    text = (err.value.hint or "") + " ".join(err.value.items)
    assert "lossy" in text and "PNG" in text
    assert "values: [" not in text and "not class indices" not in text
    report = scan(root)
    assert {p.kind for p in report.problems} == {"lossy-mask"}
    assert all("different values" in p.reason for p in report.problems)


def test_lossy_masks_nearest_snaps_each_pixel_to_the_nearest_class(tmp_path: Path) -> None:
    root = make_pairs(tmp_path / "data", n=4, values=(0, 128, 255), classes_yaml=SPREAD)
    truth = jpeg_masks(root, quality=75)
    index = find_samples(root)
    checked = check_dataset(index, lossy_masks="nearest")
    for path, mapped in checked.masks.items():
        exact = np.searchsorted([0, 128, 255], truth[path.stem])
        assert (mapped == exact).mean() > 0.99
    (note,) = [n for n in index.notes if "snapped" in n]
    assert "4 lossy mask file(s) (JPEG)" in note and "% of their pixels changed" in note
    report = scan(root, lossy_masks="nearest")
    assert report.ok, report.problems
    assert any("snapped" in n for n in report.notes)
    assert sum(report.fingerprint.class_pixels.values()) == 4 * 32 * 32


def test_lossy_colour_masks_snap_to_the_nearest_colour(tmp_path: Path) -> None:
    root = tmp_path / "data"
    truth = colour_pairs(root)
    (root / "classes.yaml").write_text(COLORS_YAML)
    jpeg_masks(root)
    masks = checked_masks(root, lossy_masks="nearest")
    assert all((masks[s] == truth[s]).mean() > 0.97 for s in truth)


def test_lossy_masks_nearest_needs_the_classes(tmp_path: Path) -> None:
    root = make_pairs(tmp_path / "data", n=3)
    jpeg_masks(root)
    with pytest.raises(DataError, match="every mask is in a lossy format"):
        check_dataset(find_samples(root), lossy_masks="nearest")


def test_data_lossy_masks_reaches_training(tmp_path: Path) -> None:
    from conftest import FAST_SEG
    from liandan.config import Config
    from liandan.data.datamodule import build_data

    root = make_pairs(tmp_path / "data", n=4, values=(0, 128, 255), classes_yaml=SPREAD)
    jpeg_masks(root)
    base = [*FAST_SEG, f"data.root={root}", "train.num_workers=0", "data.cache=false"]
    with pytest.raises(DataError, match="lossy"):
        build_data(Config.load(None, base))
    bundle = build_data(Config.load(None, [*base, "data.lossy_masks=nearest"]))
    _, mask = bundle.train_loader.dataset[0]
    assert set(np.unique(mask.numpy())) <= {-1, 0, 1, 2}
