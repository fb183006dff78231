"""Sliced detection over rasters: boxes in the raster's pixels and CRS, one box per object
across tile seams, agreement with whole-image prediction, clear errors.

Most tests use a detector whose output is known (``BlobNet``: every bright blob of band 1
is one box, its class read from band 2), so what is checked is the slicing, merging and
writing, not a network's luck; one end-to-end test runs a real (untrained) FCOS through
``liandan predict``.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from rasterio.transform import from_origin
from torch import nn

from conftest import write_geotiff
from liandan.data.transforms import Normalizer
from liandan.prediction import Predictor
from liandan.tasks.detect.matching import box_iou
from liandan.tasks.detect.models import Detector
from liandan.tasks.detect.raster import (
    TileBoxes,
    detect_raster,
    merge_tile_boxes,
    write_raster_outputs,
)

CLASSES = ["dark", "light"]
ORIGIN = (500000.0, 4000000.0)
PIXEL = 10.0


class BlobNet(nn.Module):
    """A detector with a known output: each 8-connected blob of band 1 above 0.5 (unit
    normalized) is a box, class 1 where band 2 is above 0.5 in it, score 0.9."""

    def __init__(self) -> None:
        super().__init__()
        self.score_thresh, self.nms_thresh = 0.05, 0.6  # what Detector.set_postprocess sets
        self.anchor = nn.Parameter(torch.zeros(1))

    def forward(self, images: list[torch.Tensor], targets: object = None) -> list[dict]:
        from scipy import ndimage

        out = []
        for img in images:
            band = img[0].float().numpy() > 0.5
            labels, _ = ndimage.label(band, structure=np.ones((3, 3)))
            boxes, classes = [], []
            for k, sl in enumerate(ndimage.find_objects(labels), start=1):
                boxes.append([sl[1].start, sl[0].start, sl[1].stop, sl[0].stop])
                inside = labels[sl] == k
                classes.append(int(img[1].float().numpy()[sl][inside].mean() > 0.5))
            out.append(
                {
                    "boxes": torch.tensor(boxes, dtype=torch.float32).reshape(-1, 4),
                    "scores": torch.full((len(boxes),), 0.9),
                    "labels": torch.tensor(classes, dtype=torch.int64),
                }
            )
        return out


def blob_predictor(tile: int, overlap: float, *, image_size: int = 256) -> Predictor:
    meta = {
        "task": "detect",
        "classes": CLASSES,
        "normalization": Normalizer("unit", scale=255.0).to_dict(),
        "in_channels": 2,
        "image_size": image_size,
        "dtype": "uint8",
    }
    model = Detector(BlobNet(), "fcos", len(CLASSES), (8, 16, 32))
    return Predictor(model, meta, device="cpu", tile=tile, overlap=overlap)


def scene(
    tmp_path: Path, size: int, boxes: list[tuple[int, int, int, int, int]], **kwargs: object
) -> Path:
    """A 2-band uint8 raster of ``size`` px with filled boxes ``x1 y1 x2 y2 class``."""
    arr = np.zeros((2, size, size), np.uint8)
    for x1, y1, x2, y2, cls in boxes:
        arr[0, y1:y2, x1:x2] = 255
        arr[1, y1:y2, x1:x2] = 255 * cls
    return write_geotiff(tmp_path / "scene.tif", arr, **kwargs)  # type: ignore[arg-type]


def random_boxes(size: int, n: int, side: tuple[int, int], seed: int = 0) -> list[tuple[int, ...]]:
    """Up to ``n`` non-touching squares-ish boxes inside a ``size`` px raster."""
    rng = np.random.default_rng(seed)
    taken = np.zeros((size, size), bool)
    out: list[tuple[int, ...]] = []
    for _ in range(n * 20):
        w, h = (int(v) for v in rng.integers(side[0], side[1] + 1, 2))
        x, y = int(rng.integers(0, size - w)), int(rng.integers(0, size - h))
        if taken[max(0, y - 3) : y + h + 3, max(0, x - 3) : x + w + 3].any():
            continue
        taken[y : y + h, x : x + w] = True
        out.append((x, y, x + w, y + h, int(rng.integers(0, 2))))
        if len(out) == n:
            break
    return out


# ------------------------------------------------------------------ the merge itself
def tile(top: int, left: int, rows: list[list[float]], overlaps: tuple[int, ...]) -> TileBoxes:
    return TileBoxes(top, left, 64, 64, np.array(rows, np.float64).reshape(-1, 6), overlaps)  # type: ignore[arg-type]


def test_a_small_object_cut_by_a_seam_is_kept_once_from_the_tile_seeing_it_whole() -> None:
    # tiles [0, 64) and [48, 112) share 16 px; an object at x 56-66 (10 px) is cut by the
    # first tile's right edge (piece 56-64) and seen whole by the second
    left = tile(0, 0, [[56, 10, 64, 20, 0.8, 1]], (0, 0, 16, 0))
    right = tile(0, 48, [[56, 10, 66, 20, 0.7, 1]], (16, 0, 0, 0))
    merged = merge_tile_boxes([left, right], nms_iou=0.6)
    assert merged.shape == (1, 6)
    np.testing.assert_allclose(merged[0], [56, 10, 66, 20, 0.7, 1])  # the whole one
    # without the drop rule, NMS alone would keep both (IoU 0.8 > 0.6 here, but a
    # shorter piece falls under it): a 3 px piece of the same object
    piece = tile(0, 0, [[61, 10, 64, 20, 0.9, 1]], (0, 0, 16, 0))
    assert len(merge_tile_boxes([piece, right], nms_iou=0.6)) == 1


def test_pieces_of_an_object_longer_than_the_overlap_are_stitched() -> None:
    # a 40 px object at x 40-80: the first tile sees 40-64, the second 48-80; neither
    # sees it whole, and the pieces overlap by IoU 0.4 only (NMS would keep both)
    left = tile(0, 0, [[40, 10, 64, 30, 0.6, 0]], (0, 0, 16, 0))
    right = tile(0, 48, [[48, 11, 80, 30, 0.8, 0]], (16, 0, 0, 0))
    merged = merge_tile_boxes([left, right], nms_iou=0.6)
    np.testing.assert_allclose(merged, [[40, 10, 80, 30, 0.8, 0]])
    # another class, or boxes apart on the other axis, are not stitched
    other = tile(0, 48, [[48, 11, 80, 30, 0.8, 1]], (16, 0, 0, 0))
    assert len(merge_tile_boxes([left, other], nms_iou=0.6)) == 2
    apart = tile(0, 48, [[48, 40, 80, 60, 0.8, 0]], (16, 0, 0, 0))
    assert len(merge_tile_boxes([left, apart], nms_iou=0.6)) == 2


def test_raster_edges_and_untouched_boxes_are_left_alone() -> None:
    # a box touching the raster's own edge (overlap 0) stays; so do boxes inside
    only = tile(0, 0, [[0, 0, 8, 8, 0.9, 0], [20, 20, 30, 30, 0.5, 1]], (0, 0, 16, 16))
    assert len(merge_tile_boxes([only], nms_iou=0.6)) == 2
    assert merge_tile_boxes([], nms_iou=0.6).shape == (0, 6)


def test_an_object_under_four_tiles_corner_is_one_box() -> None:
    # a 40 x 40 object at 40-80 in x and y: four pieces, stitched in x then in y
    ov = 16
    pieces = [
        tile(0, 0, [[40, 40, 64, 64, 0.7, 0]], (0, 0, ov, ov)),
        tile(0, 48, [[48, 40, 80, 64, 0.6, 0]], (ov, 0, 0, ov)),
        tile(48, 0, [[40, 48, 64, 80, 0.5, 0]], (0, ov, ov, 0)),
        tile(48, 48, [[48, 48, 80, 80, 0.9, 0]], (ov, ov, 0, 0)),
    ]
    np.testing.assert_allclose(merge_tile_boxes(pieces, 0.6), [[40, 40, 80, 80, 0.9, 0]])


# ------------------------------------------------------------------ through the stream
def test_geopackage_boxes_are_at_the_right_map_coordinates(tmp_path: Path) -> None:
    import fiona
    from rasterio.crs import CRS

    truth = [(10, 20, 30, 35, 0), (100, 60, 118, 90, 1), (150, 140, 170, 170, 1)]
    path = scene(tmp_path, 192, truth, crs="EPSG:32633")
    predictor = blob_predictor(tile=64, overlap=0.5)
    found = detect_raster(predictor, path)
    assert found.tiles == 25 and found.skipped == 0
    written = write_raster_outputs(found, predictor, tmp_path / "out")
    assert [p.name for p in written] == ["scene.gpkg", "scene_detections.json", "scene.png"]
    with fiona.open(written[0], layer="detections") as layer:
        assert CRS.from_wkt(layer.crs_wkt).to_epsg() == 32633
        feats = sorted(layer, key=lambda f: f["properties"]["x1"])
    assert len(feats) == len(truth)
    for feat, (x1, y1, x2, y2, cls) in zip(feats, truth, strict=True):
        props = feat["properties"]
        assert (props["class"], props["class_id"]) == (CLASSES[cls], cls)
        assert props["score"] == pytest.approx(0.9)
        assert [props[k] for k in ("x1", "y1", "x2", "y2")] == [x1, y1, x2, y2]
        # the polygon's corners: pixel edges through the 10 m transform (north up)
        ring = np.array(feat["geometry"]["coordinates"][0])
        xs, ys = ring[:, 0], ring[:, 1]
        assert xs.min() == pytest.approx(ORIGIN[0] + PIXEL * x1)
        assert xs.max() == pytest.approx(ORIGIN[0] + PIXEL * x2)
        assert ys.max() == pytest.approx(ORIGIN[1] - PIXEL * y1)
        assert ys.min() == pytest.approx(ORIGIN[1] - PIXEL * y2)
    coco = json.loads(written[1].read_text())
    assert sorted(d["bbox"] for d in coco) == sorted(
        [x1, y1, x2 - x1, y2 - y1] for x1, y1, x2, y2, _ in truth
    )


def test_objects_straddling_seams_give_exactly_one_box_each(tmp_path: Path) -> None:
    # tile 64, overlap 0.25: starts 0, 48, 96, 136 on a 200 px raster, 16 px shared.
    # Objects across the seams, small (8 px) and larger than the overlap (40 px)
    truth = [
        (44, 10, 52, 18, 0),  # small, over the first vertical seam
        (90, 20, 130, 44, 1),  # 40 px wide: no tile sees it whole in x
        (20, 40, 36, 76, 0),  # 36 px tall, across the first horizontal seam
        (88, 88, 124, 124, 1),  # across a corner of four tiles
        (160, 170, 190, 195, 0),  # near the last (moved-back) tile
    ]
    path = scene(tmp_path, 200, truth)
    found = detect_raster(blob_predictor(tile=64, overlap=0.25), path)
    assert found.found > len(truth)  # tiles saw pieces and copies
    rows = found.rows
    assert len(rows) == len(truth), rows
    iou = box_iou(rows[:, :4].astype(np.float64), np.array(truth, np.float64)[:, :4])
    assert (iou.max(0) >= 0.99).all(), iou
    assert sorted(rows[:, 5].astype(int).tolist()) == sorted(t[4] for t in truth)


def test_tiled_prediction_agrees_with_whole_image_prediction(tmp_path: Path) -> None:
    truth = random_boxes(256, 40, (6, 28), seed=1)
    path = scene(tmp_path, 256, truth)
    # whole image: letterboxed to 256 (the raster's side: no resizing), one pass
    whole = blob_predictor(tile=256, overlap=0.0).predict_file(path).labels
    assert isinstance(whole, np.ndarray) and len(whole) == len(truth)
    tiled = detect_raster(blob_predictor(tile=96, overlap=0.34), path)
    assert tiled.tiles == 16
    iou = box_iou(tiled.rows[:, :4].astype(np.float64), whole[:, :4].astype(np.float64))
    assert len(tiled.rows) == len(whole)
    matched = (iou >= 0.9).any(0)
    assert matched.mean() >= 0.95, f"{matched.sum()} of {len(whole)} matched"


def test_nodata_tiles_are_skipped_and_scores_below_threshold_dropped(tmp_path: Path) -> None:
    arr = np.zeros((2, 128, 128), np.uint8)
    arr[:, :, 64:] = 7  # the right half is nodata
    arr[0, 10:20, 10:20] = 255
    path = write_geotiff(tmp_path / "half.tif", arr, nodata=7)
    predictor = blob_predictor(tile=64, overlap=0.0)
    found = detect_raster(predictor, path)
    assert (found.tiles, found.skipped) == (2, 2)
    assert len(found.rows) == 1
    predictor.score_threshold = 0.95  # BlobNet scores 0.9
    assert len(detect_raster(predictor, path).rows) == 0


def test_a_raster_without_crs_gets_json_and_a_note_but_no_geopackage(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    path = scene(tmp_path, 96, [(10, 10, 20, 20, 1)], crs=None, transform=from_origin(0, 0, 1, 1))
    predictor = blob_predictor(tile=64, overlap=0.25)
    found = detect_raster(predictor, path)
    with caplog.at_level("WARNING", logger="liandan"):
        written = write_raster_outputs(found, predictor, tmp_path / "out")
    assert [p.name for p in written] == ["scene_detections.json", "scene.png"]
    assert "has no CRS" in caplog.text and "scene.tif" in caplog.text
    assert not (tmp_path / "out" / "scene.gpkg").exists()


# ------------------------------------------------------------------ the command line
@pytest.fixture(scope="module")
def fcos_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A detection run folder with an untrained FCOS over a tiny encoder (no training)."""
    from liandan.config import ModelConfig
    from liandan.models import build_model
    from liandan.runs import save_model_bundle

    torch.manual_seed(0)
    cfg = ModelConfig(arch="fcos", encoder="test_resnet")
    model = build_model(cfg, task="detect", num_classes=2, in_channels=3, image_size=64)
    run = tmp_path_factory.mktemp("runs") / "run"
    meta = {
        "task": "detect",
        "classes": CLASSES,
        "normalization": Normalizer("unit", scale=255.0).to_dict(),
        "in_channels": 3,
        "image_size": 64,
        "dtype": "uint8",
        "tile_size": 64,
        "arch": "fcos",
        "encoder": "test_resnet",
        "model": cfg.model_dump(mode="json"),
    }
    save_model_bundle(run, model.state_dict(), meta)
    return run


def test_liandan_predict_slices_a_georeferenced_raster(fcos_run: Path, tmp_path: Path) -> None:
    import fiona

    from liandan.cli import main

    rng = np.random.default_rng(0)
    path = write_geotiff(
        tmp_path / "in" / "field.tif", rng.integers(0, 255, (3, 150, 130), np.uint8)
    )
    out = tmp_path / "pred"
    args = ["predict", str(fcos_run), str(path), "--out", str(out), "--tile", "64"]
    assert main([*args, "predict.score_threshold=0.001"]) == 0
    coco = json.loads((out / "field_detections.json").read_text())
    assert len(coco) > 0 and all(d["file_name"] == "field.tif" for d in coco)
    with fiona.open(out / "field.gpkg") as layer:
        assert len(layer) == len(coco)
    assert (out / "preview" / "field.png").is_file()
    assert not (out / "detections.json").exists()  # only images without a CRS go there


def test_a_raster_with_other_bands_is_one_clear_error(
    fcos_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from liandan.cli import main

    path = write_geotiff(tmp_path / "two.tif", np.zeros((2, 96, 96), np.uint8))
    out = tmp_path / "pred"
    assert main(["predict", str(fcos_run), str(path), "--out", str(out)]) == 1
    err = capsys.readouterr().err
    assert "two.tif" in err and "2 band(s)" in err and "trained on 3" in err
    assert "Traceback" not in err
    assert not out.exists() or not any(out.iterdir())


# ------------------------------------------------------------------ the demo's scene
def test_the_demo_scene_is_predicted_sliced_and_scored(
    fcos_run: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The scoring glue: boxes found at the truth's places score mAP@.5 1, boxes of the
    wrong class 0; the outputs hold the boxes at or above the run's threshold."""
    import fiona

    from liandan.tasks.detect import raster
    from liandan.tasks.detect.demo import make_detect_demo, predict_scene

    data = make_detect_demo(tmp_path / "data", n_train=1, n_val=1, size=32, scene_size=96)
    truth = json.loads((data / "scene" / "scene_boxes.json").read_text())
    boxes = np.array(truth["boxes"])
    classes = np.array(truth["classes"]) % 2  # the run has two classes
    (data / "scene" / "scene_boxes.json").write_text(
        json.dumps({**truth, "classes": classes.tolist()})
    )
    real = raster.detect_raster
    seen: list[float] = []

    def found_truth(predictor: Predictor, path: Path, flip: int = 0) -> raster.RasterBoxes:
        seen.append(predictor.score_threshold)
        result = real(predictor, path)  # the real stream (its boxes replaced)
        scores = np.linspace(0.9, 0.1, len(boxes))  # some under the 0.25 threshold
        result.rows = np.column_stack([boxes, scores, (classes + flip) % 2]).astype(np.float32)
        return result

    monkeypatch.setattr(raster, "detect_raster", found_truth)
    run = tmp_path / "run"
    shutil.copytree(fcos_run, run)
    out, metrics = predict_scene(run, data)
    assert out == run / "predictions" and metrics is not None
    assert seen == [pytest.approx(0.05)]  # validation's floor, for mAP over every box
    assert metrics["split"] == "scene" and metrics["overall"]["map50"] == pytest.approx(1.0)
    assert json.loads((out / "scene_metrics.json").read_text()) == metrics
    kept = int((np.linspace(0.9, 0.1, len(boxes)) >= 0.25).sum())
    assert 0 < kept < len(boxes)
    with fiona.open(out / "scene.gpkg") as layer:
        assert len(layer) == kept
    assert len(json.loads((out / "scene_detections.json").read_text())) == kept

    monkeypatch.setattr(raster, "detect_raster", lambda p, s: found_truth(p, s, flip=1))
    shutil.rmtree(out)
    _, wrong = predict_scene(run, data)
    assert wrong is not None and wrong["overall"]["map50"] == pytest.approx(0.0)


def test_the_benchmark_runs_and_fills_its_table() -> None:
    import subprocess
    import sys

    script = Path(__file__).resolve().parents[1] / "benchmarks" / "detect_raster_predict.py"
    results = script.with_name("RESULTS.md")
    before = results.read_bytes()
    args = ["--sizes", "256x256", "256x512", "--encoder", "test_resnet", "--tile", "128"]
    done = subprocess.run(
        [sys.executable, str(script), *args, "--threads", "1", "--no-write"],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    assert results.read_bytes() == before  # --no-write
    rows = [line for line in done.stdout.splitlines() if line.startswith("| 256 x")]
    assert len(rows) == 2 and "failed" not in done.stdout
    cells = [[c.strip() for c in row.strip("|").split("|")] for row in rows]
    assert [c[4] for c in cells] == ["9", "15"]  # tiles of 128 px at overlap 0.25
    assert all(float(c[1]) > 0 and float(c[9]) > 0 for c in cells)  # Mpx/s, MiB above model


def test_which_inputs_are_sliced(tmp_path: Path) -> None:
    from PIL import Image

    from liandan.tasks.detect.raster import slices

    small = np.zeros((1, 64, 64), np.uint8)
    assert slices(write_geotiff(tmp_path / "geo.tif", small))  # a CRS: sliced
    plain = from_origin(0, 0, 1, 1)
    assert not slices(write_geotiff(tmp_path / "plain.tif", small, crs=None, transform=plain))
    long = np.zeros((1, 4, 2049), np.uint8)  # larger than 2048 px a side, no CRS
    assert slices(write_geotiff(tmp_path / "long.tif", long, crs=None, transform=plain))
    Image.fromarray(np.zeros((64, 64), np.uint8)).save(tmp_path / "photo.png")
    assert not slices(tmp_path / "photo.png")
