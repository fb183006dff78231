"""Detection from GIS layers: rasters with point or polygon layers become boxes where the
shapes are (reprojected from the layer's CRS), big rasters are cut into windows at their
own resolution, every bad feature is named in one error, and the split holds out
windows that no training window shares a pixel with."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from rasterio.warp import transform
from rasterio.windows import Window

from conftest import write_geotiff
from liandan.cli import main
from liandan.data.datamodule import split_samples
from liandan.data.datasets import load_image
from liandan.data.folders import detect
from liandan.data.layouts import find_samples
from liandan.data.scan import CheckedDataset
from liandan.errors import DataError
from liandan.tasks.detect.boxes import box_stats, validate
from liandan.tasks.detect.data import DetectionData
from liandan.tasks.detect.vector import VectorOptions, read_vector_boxes

UTM, WGS84 = "EPSG:32633", "EPSG:4326"
ORIGIN = (500000.0, 4000000.0)  # top-left corner of the rasters, 10 m pixels
PIXEL = 10.0
SIZE = 300
# boxes drawn in pixels (x1, y1, x2, y2), their class; written as lon/lat polygons
BOXES = {
    "building": [(20, 30, 60, 50), (200, 220, 260, 290)],
    "tree": [(120, 20, 150, 40)],  # 8 of its 30 columns left of x=128: cut by a window edge
}


def to_map(col: float, row: float) -> tuple[float, float]:
    """Pixel corner -> UTM metres (the raster's affine transform, by hand)."""
    return ORIGIN[0] + col * PIXEL, ORIGIN[1] - row * PIXEL


def lonlat(col: float, row: float) -> tuple[float, float]:
    """Pixel corner -> longitude, latitude (rasterio's point transform, PROJ underneath)."""
    x, y = to_map(col, row)
    (lon,), (lat,) = transform(UTM, WGS84, [x], [y])
    return lon, lat


def ring(box: tuple[float, float, float, float]) -> list[tuple[float, float]]:
    x1, y1, x2, y2 = box
    corners = [(x1, y1), (x2, y1), (x2, y2), (x1, y2), (x1, y1)]
    return [lonlat(c, r) for c, r in corners]


def raster(path: Path, size: int = SIZE, seed: int = 0) -> Path:
    """A 3-band uint8 raster whose pixels differ everywhere (so windows can be compared)."""
    rng = np.random.default_rng(seed)
    arr = rng.integers(0, 255, (3, size, size), dtype=np.uint8)
    return write_geotiff(path, arr, crs=UTM, transform=from_origin(*ORIGIN, PIXEL, PIXEL))


def polygons_gpkg(path: Path, boxes: dict[str, list[Any]] = BOXES) -> Path:
    """The boxes as WGS84 polygons in a GeoPackage; the second building as a multipolygon."""
    import fiona

    path.parent.mkdir(parents=True, exist_ok=True)
    schema = {"geometry": "Unknown", "properties": {"class": "str"}}
    with fiona.open(path, "w", driver="GPKG", schema=schema, crs=WGS84) as dst:
        for name, drawn in boxes.items():
            for i, box in enumerate(drawn):
                geom: dict[str, Any] = {"type": "Polygon", "coordinates": [ring(box)]}
                if i == 1:
                    geom = {"type": "MultiPolygon", "coordinates": [[ring(box)]]}
                dst.write({"geometry": geom, "properties": {"class": name}})
    return path


def geojson(path: Path, features: list[dict[str, Any]], crs: str | None = WGS84) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    data: dict[str, Any] = {"type": "FeatureCollection", "features": features}
    if crs is not None:
        data["crs"] = {"type": "name", "properties": {"name": crs}}
    path.write_text(json.dumps(data))
    return path


def feature(geometry: dict[str, Any] | None, **props: Any) -> dict[str, Any]:
    return {"type": "Feature", "geometry": geometry, "properties": props}


def polygon(box: tuple[float, float, float, float]) -> dict[str, Any]:
    return {"type": "Polygon", "coordinates": [ring(box)]}


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    raster(root / "images" / "scene.tif")
    polygons_gpkg(root / "labels" / "scene.gpkg")
    return root


def test_polygons_become_pixel_boxes_where_they_are_drawn(scene: Path) -> None:
    found = read_vector_boxes(scene, VectorOptions(tile_size=512))
    assert found.class_names == ["building", "tree"]
    (rec,) = found.images  # no larger than a window: one record, the whole raster
    assert rec.window is None and (rec.width, rec.height) == (SIZE, SIZE)
    expected = [(b, 0) for b in BOXES["building"]] + [(b, 1) for b in BOXES["tree"]]
    order = np.lexsort((rec.boxes[:, 1], rec.boxes[:, 0]))
    expected.sort()
    np.testing.assert_allclose(rec.boxes[order], [b for b, _ in expected], atol=0.05)
    assert rec.classes[order].tolist() == [c for _, c in expected]
    assert any("reprojected from EPSG:4326" in n for n in found.notes), found.notes
    assert validate(found) == []


def test_points_become_boxes_of_point_box_pixels(tmp_path: Path) -> None:
    root = tmp_path / "data"
    raster(root / "images" / "trees.tif")
    centres = [(50.0, 60.0), (299.0, 150.0)]  # the second is cut by the right edge
    geojson(
        root / "labels" / "trees.geojson",
        [feature({"type": "Point", "coordinates": lonlat(*c)}, class_=0) for c in centres],
    )
    layer = json.loads((root / "labels" / "trees.geojson").read_text())
    for f in layer["features"]:  # integer classes under the usual name
        f["properties"] = {"class": 3}
    (root / "labels" / "trees.geojson").write_text(json.dumps(layer))
    found = read_vector_boxes(root, VectorOptions(point_box=10, tile_size=512))
    assert found.class_names == ["0", "1", "2", "3"]  # integers are class ids
    rec = found.images[0]
    np.testing.assert_allclose(rec.boxes, [[45, 55, 55, 65], [294, 145, 300, 155]], atol=0.05)
    assert rec.classes.tolist() == [3, 3]


def test_points_without_point_box_are_refused_naming_the_file_and_the_key(
    tmp_path: Path,
) -> None:
    root = tmp_path / "data"
    raster(root / "images" / "trees.tif")
    point = {"type": "Point", "coordinates": lonlat(50, 60)}
    geojson(root / "labels" / "trees.geojson", [feature(point, **{"class": "tree"})])
    with pytest.raises(DataError) as info:
        find_samples(root, task="detect")
    text = info.value.render()
    assert "labels/trees.geojson" in text and "data.point_box" in text
    assert "set data.point_box" in text


def test_every_bad_feature_and_file_is_named_in_one_error(tmp_path: Path) -> None:
    root = tmp_path / "data"
    for stem in ("a", "b", "c"):
        raster(root / "images" / f"{stem}.tif")
    good = polygon((10, 10, 40, 40))
    outside = polygon((400, 10, 450, 40))  # beyond the 300 px raster
    geojson(
        root / "labels" / "a.geojson",
        [
            feature(good, **{"class": "car"}),
            feature(good, kind="car"),  # feature 2: no attribute "class"
            feature(None, **{"class": "car"}),  # feature 3: no geometry
            feature(outside, **{"class": "car"}),  # feature 4: entirely outside
            feature({"type": "MultiPolygon", "coordinates": []}, **{"class": "car"}),
        ],
    )
    x, y = to_map(10, 10)  # b: metres with no CRS over a georeferenced raster
    square = [[[x, y], [x + 300, y], [x + 300, y - 300], [x, y - 300], [x, y]]]
    geojson(
        root / "labels" / "b.geojson",
        [feature({"type": "Polygon", "coordinates": square}, **{"class": "car"})],
        crs=None,
    )
    far = {"type": "Polygon", "coordinates": [[[0, 0], [1, 0], [1, 1], [0, 1], [0, 0]]]}
    geojson(root / "labels" / "c.geojson", [feature(far, **{"class": "car"})])  # off Africa
    with pytest.raises(DataError) as info:
        read_vector_boxes(root)
    items = info.value.items
    text = info.value.render()
    a = str(root / "labels" / "a.geojson")
    assert any(a in i and "feature 2" in i and "'class'" in i for i in items), items
    assert any(a in i and "feature 3" in i for i in items), items
    assert any(a in i and "feature 4" in i and "outside" in i for i in items), items
    assert any(a in i and "feature 5" in i and "empty" in i for i in items), items
    assert "b.geojson" in text and "no CRS" in text
    assert "c.geojson" in text and "overlaps" in text
    assert not any("feature 1" in i for i in items)


def test_windows_read_native_pixels_and_keep_boxes_by_their_visible_share(
    scene: Path,
) -> None:
    found = read_vector_boxes(scene, VectorOptions(tile_size=128, image_size=128))
    by_window = {r.window: r for r in found.images}
    # a 3 x 3 grid of 128-px windows, without overlap (background ones may be left out)
    assert set(by_window) <= {(c, r, 128, 128) for r in (0, 128, 256) for c in (0, 128, 256)}
    assert all((r.width, r.height) == (128, 128) for r in found.images)
    # the tree [120, 150] x [20, 40]: 8 of its 30 columns in the first window (< 0.3), dropped;
    # 22 in the second, kept and clipped to the window's edge
    first, second = by_window[(0, 0, 128, 128)], by_window[(128, 0, 128, 128)]
    assert 1 not in first.classes.tolist()
    np.testing.assert_allclose(second.boxes, [[0, 20, 22, 40]], atol=0.05)
    # the second building [200, 260] x [220, 290] crosses x=256 (4 of 60 columns beyond:
    # dropped there) and y=256 (36 rows above, 34 below: kept on both sides, clipped)
    assert 0 not in by_window.get((256, 128, 128, 128), first).classes.tolist()[1:]
    np.testing.assert_allclose(by_window[(128, 128, 128, 128)].boxes, [[72, 92, 128, 128]])
    np.testing.assert_allclose(by_window[(128, 256, 128, 128)].boxes, [[72, 0, 128, 34]])
    data = DetectionData(found.images, 128, train=False)
    with rasterio.open(scene / "images" / "scene.tif") as src:
        for i, rec in enumerate(found.images):
            assert rec.window is not None
            col, row, w, h = rec.window
            direct = src.read(window=Window(col, row, min(w, SIZE - col), min(h, SIZE - row)))
            image, boxes, _, scale = data.load(i)
            expected = np.zeros((128, 128, 3), np.uint8)
            expected[: direct.shape[1], : direct.shape[2]] = np.moveaxis(direct, 0, -1)
            np.testing.assert_array_equal(image, expected)  # 1:1, beyond the edge zeros
            assert scale == (1.0, 1.0)
            np.testing.assert_allclose(boxes, rec.boxes)
    # the fingerprint's box statistics count windows
    stats = box_stats(found.images, found.class_names)
    assert stats["images"] == len(found.images)
    assert stats["boxes"] == sum(len(r.boxes) for r in found.images)


def _overlap(a: tuple[int, int, int, int], b: tuple[int, int, int, int]) -> bool:
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def test_the_split_holds_out_blocks_of_windows_that_share_no_pixel_with_training(
    scene: Path,
) -> None:
    data = VectorOptions(tile_size=64, val_fraction=0.2)
    index = find_samples(scene, "vector-boxes", data=data)
    splits = split_samples(index, 0.2, seed=0)
    train, val = splits["train"], splits["val"]
    assert train and val and not set(train) & set(val)
    for t in train:
        for v in val:
            assert t.window is not None and v.window is not None
            assert not (t.image == v.image and _overlap(t.window, v.window))
    # validation is the bottom rows of windows: a block, not scattered windows
    assert min(v.window[1] for v in val if v.window) > max(t.window[1] for t in train if t.window)
    # background windows are at most half of each split, and the notes say what was kept
    records = index.source.images
    for name in ("train", "val"):
        members = [r for r in records if r.split == name]
        assert sum(1 for r in members if not len(r.boxes)) <= max(1, len(members) // 2 + 1)
    assert any("background windows kept" in n for n in index.notes), index.notes


def test_split_folders_are_used_and_several_rasters_split_whole_with_split_files(
    tmp_path: Path,
) -> None:
    root = tmp_path / "split"
    for split, seed in (("train", 1), ("val", 2)):
        raster(root / split / "images" / "scene.tif", seed=seed)
        polygons_gpkg(root / split / "labels" / "scene.gpkg")
    found = read_vector_boxes(root, VectorOptions(tile_size=128))
    assert {r.split for r in found.images} == {"train", "val"}
    assert all(r.split == r.path.parent.parent.name for r in found.images)
    many = tmp_path / "many"
    for stem in "abcd":
        raster(many / "images" / f"{stem}.tif")
        polygons_gpkg(many / "labels" / f"{stem}.gpkg")
    opts = VectorOptions(tile_size=128, val_fraction=0.25, split="files")
    found = read_vector_boxes(many, opts)
    by_raster: dict[Path, set[str | None]] = {}
    for r in found.images:
        by_raster.setdefault(r.path, set()).add(r.split)
    assert all(len(s) == 1 for s in by_raster.values())  # whole rasters
    assert sorted(s.pop() or "" for s in by_raster.values()) == ["train", "train", "train", "val"]


def test_the_folder_stays_segmentation_unless_the_task_is_detect(
    scene: Path, tmp_path: Path
) -> None:
    assert detect(scene) == "pairs"
    assert detect(scene, "detect") == "vector-boxes"
    index = find_samples(scene, task="detect", data=VectorOptions(tile_size=128))
    assert index.layout == "vector-boxes" and index.task == "detect"
    assert all(s.window is not None for s in index.samples)
    # what reads a sample's pixels (normalization statistics, the report's gallery)
    # reads its window only, from the cache or from the file
    cached = CheckedDataset(index, images={index.samples[0].image: np.zeros((SIZE, SIZE, 3))})
    empty = CheckedDataset(index)
    with rasterio.open(scene / "images" / "scene.tif") as src:
        for s in index.samples[:3]:
            assert s.window is not None
            col, row, w, h = s.window
            direct = np.moveaxis(src.read(window=Window(col, row, w, h)), 0, -1)
            np.testing.assert_array_equal(load_image(empty, s, None), direct)
            assert load_image(cached, s, None).shape == direct.shape


def test_train_task_detect_on_a_raster_with_a_layer(scene: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    args = ["train", str(scene), "task=detect", "--no-plan", "model.encoder=resnet18"]
    args += ["data.image_size=64", "data.tile_size=128", "train.batch_size=4"]
    args += ["train.progress=false", "train.num_workers=0", "train.epochs=1"]
    assert main([*args, "--out", str(runs)]) == 0
    metrics = json.loads((runs / "train" / "metrics.json").read_text())
    assert metrics["task"] == "detect" and metrics["classes"] == ["building", "tree"]
    config = (runs / "train" / "config.yaml").read_text()
    assert "vector-boxes" in config or "task: detect" in config
