"""Vector labels in their own CRS: reprojected onto the raster's grid, or refused by name.

Polygons in EPSG:4326 over a UTM raster used to be rasterized as if their degrees were
metres: an all-background mask, and training went on.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from rasterio.transform import from_origin
from rasterio.warp import transform_geom

from conftest import FAST_SEG, write_geotiff
from liandan.config import Config
from liandan.data.datamodule import build_data
from liandan.errors import DataError

UTM = "EPSG:32633"
TRANSFORM = from_origin(500000, 4000000, 10.0, 10.0)
FIELD = (30, 90, 40, 100)  # rows r0..r1, columns c0..c1 of the labelled field


def box(r0: int, r1: int, c0: int, c1: int) -> dict:
    """A polygon over pixel rows/columns of the UTM raster, in UTM metres."""
    x0, y0 = TRANSFORM.c, TRANSFORM.f
    ring = [(x0 + c * 10, y0 - r * 10) for r, c in ((r0, c0), (r0, c1), (r1, c1), (r1, c0))]
    return {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}


def scene(root: Path, *, crs: str | None = UTM, transform=TRANSFORM) -> Path:
    """``images/scene.tif``, 3 bands uint8, 120 x 120 px, the field bright."""
    rng = np.random.default_rng(0)
    image = rng.integers(0, 60, (3, 120, 120)).astype(np.uint8)
    r0, r1, c0, c1 = FIELD
    image[:, r0:r1, c0:c1] += 150
    write_geotiff(root / "images" / "scene.tif", image, crs=crs, transform=transform)
    return root


def geojson(root: Path, geometry: dict, crs: str | None) -> Path:
    """``labels/scene.geojson`` holding one ``field`` polygon; ``crs`` as a crs member."""
    data: dict = {
        "type": "FeatureCollection",
        "features": [{"type": "Feature", "geometry": geometry, "properties": {"class": "field"}}],
    }
    if crs is not None:
        data["crs"] = {"type": "name", "properties": {"name": crs}}
    path = root / "labels" / "scene.geojson"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(data))
    return path


def bundle_for(root: Path):
    cfg = Config.load(
        None,
        [
            *FAST_SEG,
            f"data.root={root}",
            "data.tile_size=64",
            "data.tiles_per_epoch=4",
            "data.val_fraction=0.1",
            "train.num_workers=0",
        ],
    )
    return build_data(cfg)


def field_mask(bundle) -> np.ndarray:
    ds = bundle.train_loader.dataset
    region = ds.regions[0]
    return ds.read_label(region.sample, _window(0, 0, 120, region.bottom))


def _window(left: int, top: int, width: int, height: int):
    from rasterio.windows import Window

    return Window(left, top, width, height)


def assert_field(mask: np.ndarray) -> None:
    r0, r1, c0, c1 = FIELD
    inner = mask[r0 + 1 : r1 - 1, c0 + 1 : c1 - 1]
    assert (inner == 1).all(), f"field pixels labelled: {(inner == 1).mean():.0%}"
    assert (mask[: r0 - 1] == 0).all() and (mask[:, : c0 - 1] == 0).all()


def test_polygons_in_wgs84_over_a_utm_raster_are_reprojected(tmp_path: Path) -> None:
    """Both the RFC 7946 default (no crs member) and a declared EPSG:4326 are lon/lat."""
    lonlat = transform_geom(UTM, "EPSG:4326", box(*FIELD))
    for declared in (None, "EPSG:4326"):
        root = scene(tmp_path / f"data-{declared}")
        geojson(root, lonlat, declared)
        bundle = bundle_for(root)
        assert bundle.classes.names == ["background", "field"]
        assert_field(field_mask(bundle))
        assert any("reprojected from" in n and UTM in n for n in bundle.notes), bundle.notes


def test_geopackage_in_another_crs_is_reprojected(tmp_path: Path) -> None:
    import fiona

    root = scene(tmp_path / "data")
    (root / "labels").mkdir()
    mercator = transform_geom(UTM, "EPSG:3857", box(*FIELD))
    schema = {"geometry": "Polygon", "properties": {"class": "str"}}
    path = root / "labels" / "scene.gpkg"
    with fiona.open(path, "w", driver="GPKG", schema=schema, crs="EPSG:3857") as dst:
        dst.write({"geometry": mercator, "properties": {"class": "field"}})
    assert_field(field_mask(bundle_for(root)))


def test_a_layer_without_crs_over_a_georeferenced_raster_is_an_error_naming_both(
    tmp_path: Path,
) -> None:
    root = scene(tmp_path / "data")
    geojson(root, box(*FIELD), None)  # UTM metres, no crs member: not lon/lat either
    with pytest.raises(DataError) as info:
        bundle_for(root)
    text = info.value.render()
    assert "labels/scene.geojson" in text and "images/scene.tif" in text
    assert "no CRS" in text and "ogr2ogr" in text


def test_a_shapefile_without_prj_is_an_error(tmp_path: Path) -> None:
    import fiona

    root = scene(tmp_path / "data")
    (root / "labels").mkdir()
    schema = {"geometry": "Polygon", "properties": {"class": "str"}}
    path = root / "labels" / "scene.shp"
    with fiona.open(path, "w", driver="ESRI Shapefile", schema=schema) as dst:
        dst.write({"geometry": box(*FIELD), "properties": {"class": "field"}})
    path.with_suffix(".prj").unlink(missing_ok=True)
    with pytest.raises(DataError, match="no CRS") as info:
        bundle_for(root)
    assert "images/scene.tif" in info.value.render()


def test_polygons_that_miss_the_raster_are_an_error_naming_both(tmp_path: Path) -> None:
    root = scene(tmp_path / "data")
    far = {"type": "Polygon", "coordinates": [[[2, 48], [2.1, 48], [2.1, 48.1], [2, 48]]]}
    geojson(root, far, "EPSG:4326")  # Paris, over a raster in the Mediterranean
    with pytest.raises(DataError) as info:
        bundle_for(root)
    text = info.value.render()
    assert "no polygon overlaps" in text
    assert "labels/scene.geojson" in text and "images/scene.tif" in text


def test_declared_utm_polygons_are_used_as_they_are(tmp_path: Path) -> None:
    root = scene(tmp_path / "data")
    geojson(root, box(*FIELD), "urn:ogc:def:crs:EPSG::32633")
    bundle = bundle_for(root)
    assert_field(field_mask(bundle))
    assert not any("reprojected" in n for n in bundle.notes)


def test_a_raster_without_crs_takes_polygons_in_its_own_coordinates(tmp_path: Path) -> None:
    """No CRS on either side: the polygons are in the raster's pixel coordinates."""
    from rasterio.transform import Affine

    root = scene(tmp_path / "data", crs=None, transform=Affine.identity())
    r0, r1, c0, c1 = FIELD
    ring = [(c0, r0), (c1, r0), (c1, r1), (c0, r1), (c0, r0)]
    geojson(root, {"type": "Polygon", "coordinates": [ring]}, None)
    cfg_bundle = bundle_for(root)
    assert_field(field_mask(cfg_bundle))
    # the same polygons declared in a CRS cannot be placed on a raster without one
    geojson(root, {"type": "Polygon", "coordinates": [ring]}, UTM)
    with pytest.raises(DataError, match="has no CRS"):
        bundle_for(root)


def test_scan_refuses_a_label_raster_in_another_crs_as_training_does(tmp_path: Path) -> None:
    from liandan.scan_report import scan

    root = scene(tmp_path / "raster")
    truth = np.zeros((1, 120, 120), np.uint8)
    write_geotiff(root / "masks" / "scene.tif", truth, crs="EPSG:4326", transform=TRANSFORM)
    report = scan(root, use_cache=False, progress=False)
    assert not report.ok
    (problem,) = [p for p in report.problems if p.kind == "label-grid"]
    assert problem.file.endswith("masks/scene.tif") and "images/scene.tif" in problem.reason
    with pytest.raises(DataError):
        bundle_for(root)


def test_scan_refuses_polygons_without_crs_as_training_does(tmp_path: Path) -> None:
    from liandan.scan_report import scan

    root = scene(tmp_path / "polygons")
    geojson(root, box(*FIELD), None)
    report = scan(root, use_cache=False, progress=False)
    assert not report.ok
    (problem,) = [p for p in report.problems if p.kind == "polygon-labels"]
    assert problem.file.endswith("labels/scene.geojson") and "no CRS" in problem.reason
