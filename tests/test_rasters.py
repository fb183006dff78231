"""Training on rasters: header-only checks, windowed tiles, nodata, polygons, splits."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from rasterio.transform import from_origin
from sklearn.metrics import confusion_matrix

from conftest import FAST_SEG, write_geotiff
from liandan.config import Config
from liandan.data.datamodule import build_data
from liandan.data.raster_tiles import RasterTiles
from liandan.errors import DataError

TRANSFORM = from_origin(500000, 4000000, 10.0, 10.0)


def write(path: Path, arr: np.ndarray, *, crs="EPSG:32633", transform=TRANSFORM, nodata=None):
    return write_geotiff(path, arr, crs=crs, transform=transform, nodata=nodata)


def make_scene(root: Path, *, height: int = 150, width: int = 130, label: str = "raster") -> Path:
    """``images/scene.tif``: 7-band uint16, nodata 0 in a 20-px left collar, a
    non-tile-multiple size; labels: a class-index raster, another CRS, or GeoJSON."""
    rng = np.random.default_rng(0)
    truth = np.zeros((height, width), np.uint8)
    truth[30:90, 40:100] = 1
    truth[100:140, 10:60] = 2
    image = rng.integers(100, 1000, (7, height, width)).astype(np.uint16)
    image[:, truth == 1] += 3000
    image[0, truth == 2] += 6000
    image[:, :, :20] = 0  # nodata collar
    write(root / "images" / "scene.tif", image, nodata=0)
    if label == "raster":
        write(root / "masks" / "scene.tif", truth[None])
    elif label == "crs":
        write(root / "masks" / "scene.tif", truth[None], crs="EPSG:4326")
    else:
        x0, y0 = TRANSFORM.c, TRANSFORM.f

        def box(r0: int, r1: int, c0: int, c1: int) -> dict:
            ring = [(x0 + c * 10, y0 - r * 10) for r, c in ((r0, c0), (r0, c1), (r1, c1), (r1, c0))]
            return {"type": "Polygon", "coordinates": [[*ring, ring[0]]]}

        features = [
            {"type": "Feature", "geometry": box(30, 90, 40, 100), "properties": {"class": "field"}},
            {
                "type": "Feature",
                "geometry": box(100, 140, 10, 60),
                "properties": {"class": "water"},
            },
        ]
        (root / "labels").mkdir(parents=True)
        crs = {"type": "name", "properties": {"name": "urn:ogc:def:crs:EPSG::32633"}}
        (root / "labels" / "scene.geojson").write_text(
            json.dumps({"type": "FeatureCollection", "crs": crs, "features": features})
        )
    return root


def bundle_for(root: Path, *extra: str):
    cfg = Config.load(
        None,
        [
            *FAST_SEG,
            f"data.root={root}",
            "data.tile_size=64",
            "data.tiles_per_epoch=8",
            "train.num_workers=0",
            *extra,
        ],
    )
    return build_data(cfg)


def test_rasters_are_checked_from_headers_and_read_by_windows(tmp_path: Path, monkeypatch) -> None:
    root = make_scene(tmp_path / "data")

    def no_whole_reads(*args, **kwargs):
        raise AssertionError("a raster was decoded whole")

    monkeypatch.setattr("liandan.data.scan.read_image", no_whole_reads)
    monkeypatch.setattr("liandan.data.scan.read_mask", no_whole_reads)
    monkeypatch.setattr("liandan.data.datasets.read_image", no_whole_reads)
    bundle = bundle_for(root, "data.max_nodata_fraction=0.3")
    assert bundle.in_channels == 7 and bundle.checked.dtype == "uint16"
    assert bundle.classes.names == ["0", "1", "2"]
    train = bundle.train_loader.dataset
    assert isinstance(train, RasterTiles) and len(train) == 8
    for i in range(len(train)):
        x, y = train[i]
        assert x.shape == (7, 64, 64) and y.shape == (64, 64)
        assert (y < 0).float().mean() <= 0.3  # mostly-nodata tiles were redrawn
    # nodata (the 20-px collar) is ignored: the tile at the left edge has -1 there
    val = bundle.val_loader.dataset
    region, top, left = val.windows[0]
    _, mask = val.read(region, top, left)
    assert left == 0 and (mask[:, :20] == -1).all() and (mask[:, 20:] >= 0).all()
    # statistics exclude nodata: band means are those of the valid pixels (>= 100)
    assert min(bundle.normalizer.mean) > 100


def test_spatial_split_holds_out_a_block_of_rows(tmp_path: Path) -> None:
    bundle = bundle_for(make_scene(tmp_path / "data"), "data.val_fraction=0.3")
    train_rows = {(r.top, r.bottom) for r in bundle.train_loader.dataset.regions}
    val_rows = {(r.top, r.bottom) for r in bundle.val_loader.dataset.regions}
    assert train_rows == {(0, 105)} and val_rows == {(105, 150)}
    for _, top, _ in bundle.val_loader.dataset.windows:
        assert top >= 105  # no validation tile reaches into training rows


def test_label_raster_in_another_crs_is_an_error_naming_both_files(tmp_path: Path) -> None:
    root = make_scene(tmp_path / "data", label="crs")
    with pytest.raises(DataError) as info:
        bundle_for(root)
    text = info.value.render()
    assert "masks/scene.tif" in text and "images/scene.tif" in text and "CRS" in text


def test_geojson_polygons_are_rasterized_onto_the_image_grid(tmp_path: Path) -> None:
    root = make_scene(tmp_path / "data", label="geojson")
    bundle = bundle_for(root, "data.val_fraction=0.1")
    assert bundle.classes.names == ["background", "field", "water"]
    ds = bundle.train_loader.dataset
    region = ds.regions[0]
    _, mask = ds.read(region, 0, 0)  # tile rows 0-64, cols 0-64
    assert (mask[30:64, 40:64] == 1).all() and (mask[:30, 20:] == 0).all()
    assert (mask[:, :20] == -1).all()  # nodata collar
    ignore = bundle_for(root, "data.unlabelled=ignore", "data.val_fraction=0.1")
    assert ignore.classes.names == ["field", "water"]  # no background class needed
    _, mask = ignore.train_loader.dataset.read(region, 0, 0)
    assert (mask[:30, 20:] == -1).all() and (mask[30:64, 40:64] == 0).all()


def test_data_nodata_marks_a_value_the_file_does_not_declare(tmp_path: Path) -> None:
    root = make_scene(tmp_path / "data")
    scene = root / "images" / "scene.tif"
    with rasterio.open(scene, "r+") as dst:
        dst.nodata = None  # the collar of zeros is now undeclared
    ds = bundle_for(root, "data.val_fraction=0.1").train_loader.dataset
    _, mask = ds.read(ds.regions[0], 0, 0)
    assert (mask[:, :20] >= 0).all()  # without data.nodata the collar is data
    ds = bundle_for(root, "data.val_fraction=0.1", "data.nodata=0").train_loader.dataset
    _, mask = ds.read(ds.regions[0], 0, 0)
    assert (mask[:, :20] == -1).all() and (mask[:, 20:] >= 0).all()


def test_balanced_sampler_draws_tiles_with_the_rare_class_more_often(tmp_path: Path) -> None:
    root = make_scene(tmp_path / "data", height=260, width=260)  # class 2 is the rarest

    def share(sampler: str) -> float:
        bundle = bundle_for(root, f"data.sampler={sampler}", "data.tile_size=32")
        ds = bundle.train_loader.dataset
        rng = np.random.default_rng(0)
        draws = [ds._random_window(rng)[1] for _ in range(150)]
        return float(np.mean([(m == 2).any() for m in draws]))

    random_share, balanced_share = share("random"), share("balanced")
    print(f"tiles holding the rare class: random {random_share:.2f}, balanced {balanced_share:.2f}")
    assert balanced_share > random_share + 0.1, (random_share, balanced_share)


@pytest.mark.parametrize("driver,ext", [("GPKG", ".gpkg"), ("ESRI Shapefile", ".shp")])
def test_geopackage_and_shapefile_labels_read_like_geojson(
    tmp_path: Path, driver: str, ext: str
) -> None:
    import fiona

    root = make_scene(tmp_path / "data", label="geojson")
    source = root / "labels" / "scene.geojson"
    features = json.loads(source.read_text())["features"]
    schema = {"geometry": "Polygon", "properties": {"class": "str"}}
    with fiona.open(
        root / "labels" / f"scene{ext}", "w", driver=driver, schema=schema, crs="EPSG:32633"
    ) as dst:
        for f in features:
            dst.write({"geometry": f["geometry"], "properties": f["properties"]})
    source.unlink()
    bundle = bundle_for(root, "data.val_fraction=0.1")
    assert bundle.classes.names == ["background", "field", "water"]
    ds = bundle.train_loader.dataset
    _, mask = ds.read(ds.regions[0], 0, 0)
    assert (mask[30:64, 40:64] == 1).all() and (mask[:30, 20:] == 0).all()


@pytest.mark.slow
def test_train_on_a_raster_then_predict_the_scene(tmp_path: Path, monkeypatch) -> None:
    from liandan.api import train
    from liandan.evaluation import evaluate
    from liandan.prediction import predict

    root = make_scene(tmp_path / "data")
    result = train(
        root,
        overrides=[
            *FAST_SEG,
            "data.tile_size=64",
            "data.tiles_per_epoch=4",
            "train.epochs=1",
            "train.num_workers=0",
            "model.arch=segnet",
        ],
        out=tmp_path / "runs",
    )
    meta = json.loads((result.run_dir / "model" / "model.json").read_text())
    assert meta["pixel_size"] == [10.0, 10.0] and meta["dtype"] == "uint16"
    assert meta["in_channels"] == 7
    support = {k: v["support"] for k, v in result.metrics["per_class"].items()}
    assert support["2"] > 0 and support["1"] == 0  # validated on the held-out bottom rows only
    again = evaluate(result.run_dir)  # on its own: the same held-out tile grid
    assert again["confusion_matrix"] == result.metrics["confusion_matrix"]
    out = predict(result.run_dir, [root / "images" / "scene.tif"], out=tmp_path / "maps")
    with rasterio.open(out.files[0]) as pred:
        assert pred.transform == TRANSFORM and (pred.read(1)[:, :20] == 255).all()
        predicted = pred.read(1)

    # --split test scores whole test rasters streamed as predict does, never read whole
    split_root = tmp_path / "splits"
    for split in ("train", "val", "test"):
        for folder in ("images", "masks"):
            (split_root / split / folder).mkdir(parents=True)
            shutil.copy(root / folder / "scene.tif", split_root / split / folder / "scene.tif")

    def whole(*args, **kwargs):
        raise AssertionError("a raster was read whole")

    monkeypatch.setattr("liandan.data.datasets.read_image", whole)
    monkeypatch.setattr("liandan.data.masks.read_mask", whole)
    monkeypatch.setattr("liandan.data.scan.read_image", whole)
    monkeypatch.setattr("liandan.data.scan.read_mask", whole)
    scored = evaluate(result.run_dir, split_root, split="test")
    assert (result.run_dir / "metrics_test.json").is_file()
    with rasterio.open(root / "masks" / "scene.tif") as truth_file:
        truth = truth_file.read(1)
    counted = predicted != 255  # the nodata collar is not counted
    expected = confusion_matrix(truth[counted], predicted[counted], labels=[0, 1, 2])
    assert scored["confusion_matrix"] == expected.tolist()
    assert np.sum(scored["confusion_matrix"]) == 150 * 110
    # spatial split: train rows and validation rows, each predicted on its own, together
    # count every pixel with data once
    everything = evaluate(result.run_dir, split="all")
    assert np.sum(everything["confusion_matrix"]) == 150 * 110
    train_rows = evaluate(result.run_dir, split="train")
    assert np.sum(train_rows["confusion_matrix"]) == (150 - 30) * 110  # val_fraction 0.2


def test_label_raster_on_a_coarser_grid_is_warped_when_asked(tmp_path: Path) -> None:
    root = make_scene(tmp_path / "data")
    truth = np.zeros((75, 65), np.uint8)  # 20 m pixels over the same extent
    truth[15:45, 20:50] = 1
    write(root / "masks" / "scene.tif", truth[None], transform=from_origin(500000, 4000000, 20, 20))
    with pytest.raises(DataError, match="transform"):
        bundle_for(root)
    bundle = bundle_for(root, "data.align=warp", "data.val_fraction=0.1")
    assert any("warped" in note for note in bundle.notes)
    ds = bundle.train_loader.dataset
    _, mask = ds.read(ds.regions[0], 0, 0)
    assert (mask[30:64, 40:64] == 1).all() and (mask[:30, 20:] == 0).all()


def test_a_label_rasters_nodata_value_is_no_label(tmp_path: Path) -> None:
    """Labels 1-3 with 0 declared nodata (a usual GIS export): 0 is "no label" (-1),
    not a class, though 0 is a value the inferred classes cover."""
    root = make_scene(tmp_path / "data")
    labels = root / "masks" / "scene.tif"
    with rasterio.open(labels) as src:
        truth = src.read(1)
    coded = truth + 1
    coded[40:60, 60:90] = 0  # unlabelled inside the valid image area
    write(labels, coded[None], nodata=0)
    ds = bundle_for(root, "data.val_fraction=0.1").train_loader.dataset
    _, mask = ds.read(ds.regions[0], 0, 0)  # rows 0-64, columns 0-64
    assert (mask[40:60, 60:64] == -1).all()
    assert (mask[:40, 20:] >= 1).all()  # labelled pixels keep their class


def test_an_alpha_band_is_a_mask_in_training_and_scan(tmp_path: Path) -> None:
    """RGBA GeoTIFFs (gdalwarp -dstalpha, QGIS exports): 3 input bands, alpha-0 pixels
    ignored, the same fingerprint as the nodata-value copy of the scene."""
    from rasterio.enums import ColorInterp

    from liandan.scan_report import scan

    root = make_scene(tmp_path / "data")
    scene = root / "images" / "scene.tif"
    with rasterio.open(scene) as src:
        image, valid = src.read(), src.dataset_mask()
    reference = scan(root, use_cache=False).fingerprint
    alpha = np.where(valid > 0, 65535, 0).astype(np.uint16)[None]
    write(scene, np.concatenate([image[:3], alpha]))  # no nodata value: alpha marks it
    with rasterio.open(scene, "r+") as dst:
        dst.colorinterp = [ColorInterp.red, ColorInterp.green, ColorInterp.blue, ColorInterp.alpha]
    bundle = bundle_for(root, "data.val_fraction=0.1")
    assert bundle.in_channels == 3
    ds = bundle.train_loader.dataset
    x, mask = ds.read(ds.regions[0], 0, 0)
    assert x.shape[2] == 3 and (mask[:, :20] == -1).all() and (mask[:, 20:] >= 0).all()
    fp = scan(root, use_cache=False).fingerprint
    assert fp.bands == [3] and fp.nodata_value is None
    assert fp.nodata_fraction == pytest.approx(reference.nodata_fraction)
    assert np.allclose(fp.band_mean, reference.band_mean[:3], atol=1e-3)


def test_label_values_outside_classes_yaml_are_an_error_naming_the_raster(
    tmp_path: Path,
) -> None:
    """Not silently ignored: the label raster holds 0, 1, 2; classes.yaml names two."""
    root = make_scene(tmp_path / "data")
    (root / "classes.yaml").write_text("names: [ground, field]\n")
    with pytest.raises(DataError) as info:
        bundle_for(root)
    text = info.value.render()
    assert "masks/scene.tif: value(s) [2] are not classes" in text and "hint:" in text
    (root / "classes.yaml").write_text("names: [ground, field]\nignore_index: 2\n")
    assert bundle_for(root).classes.names == ["ground", "field"]  # 2 declared ignored
