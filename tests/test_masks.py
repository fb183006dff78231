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
