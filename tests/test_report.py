"""The run report: report.html sections, plots, galleries, `liandan report`, TensorBoard.

One segmentation and one classification run are trained once per module (tiny data,
tiny models) and shared by the tests.
"""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from conftest import FAST_CLS, FAST_SEG, make_imagefolder, make_pairs
from liandan.cli import main

CLASSES_YAML = "names: [ground, red, green]\ncolors: [[40, 40, 40], [250, 0, 0], [0, 250, 0]]\n"
COMMON = ["data.on_error=fail", "train.seed=0"]
SEG_SECTIONS = [
    "data",
    "config",
    "environment",
    "curves",
    "doctor",
    "metrics",
    "confusion",
    "gallery",
]
CLS_SECTIONS = [*SEG_SECTIONS[:-1], "pr-roc", "top-losses"]


@pytest.fixture(scope="module")
def seg_run(module_tmp: Path) -> Path:
    root = module_tmp / "seg"
    data = make_pairs(root / "data", n=10, classes_yaml=CLASSES_YAML)
    args = [*FAST_SEG, *COMMON, "train.epochs=1", "data.val_fraction=0.3"]
    assert main(["train", str(data), *args, "--out", str(root / "runs"), "--name", "s"]) == 0
    return root / "runs" / "s"


@pytest.fixture(scope="module")
def cls_run(module_tmp: Path) -> Path:
    root = module_tmp / "cls"
    names = ("a", "b", "c", "d", "e", "f", "g")  # more than 5 classes: top-5 accuracy
    data = make_imagefolder(root / "data", n_per_class=5, classes=names)
    args = [*FAST_CLS, *COMMON, "data.val_fraction=0.4"]
    assert main(["train", str(data), *args, "--out", str(root / "runs"), "--name", "c"]) == 0
    return root / "runs" / "c"


def sections(page: str) -> list[str]:
    return re.findall(r'<section id="([^"]+)"', page)


def embedded_images(page: str) -> list[tuple[str, np.ndarray]]:
    """(data-file, pixels) of every <img> of the page; every <img> must be embedded."""
    tags = re.findall(r"<img [^>]*>", page)
    found = []
    for tag in tags:
        src = re.search(r'src="data:image/png;base64,([^"]+)"', tag)
        assert src is not None, f"an image is not embedded: {tag[:80]}"
        name = re.search(r'data-file="([^"]+)"', tag)
        assert name is not None
        pixels = np.asarray(Image.open(io.BytesIO(base64.b64decode(src.group(1)))))
        found.append((name.group(1), pixels))
    return found


def check_images(run: Path, page: str) -> list[str]:
    """Every image exists under the run, equals its embedded copy, and is not blank."""
    files = []
    for rel, pixels in embedded_images(page):
        path = run / rel
        assert path.is_file(), rel
        assert np.array_equal(np.asarray(Image.open(path)), pixels), rel
        assert pixels.astype(np.float64).std() > 0, f"{rel} is blank"
        files.append(rel)
    return files


@pytest.mark.slow
def test_segmentation_report(seg_run: Path) -> None:
    page = (seg_run / "report.html").read_text(encoding="utf-8")
    assert sections(page) == SEG_SECTIONS
    files = check_images(seg_run, page)
    for name in ("curves", "confusion_matrix", "class_distribution_pixels"):
        assert f"plots/{name}.png" in files
    gallery = [f for f in files if f.startswith("plots/gallery/seg_")]
    assert len(gallery) == 3  # every validation image (30% of 10), at most 16
    # data summary: counts per split, pixel shares, band statistics, config, environment
    assert re.search(r"<td>train</td><td>7</td>", page) and "<td>val</td><td>3</td>" in page
    assert "labelled pixels" in page and "<th>mean</th>" in page  # band statistics
    assert "arch: unet" in page and "mobilenet_v2" in page
    assert "torch" in page and "lightning" in page and "training time" in page
    # class names and colours come from classes.yaml
    assert "rgb(250, 0, 0)" in page and ">red<" in page
    # worst image first: the captions' IoUs ascend and match metrics.json
    ious = [float(v) for v in re.findall(r"IoU: ([0-9.]+)", page)]
    assert ious == sorted(ious) and len(ious) == 3
    metrics = json.loads((seg_run / "metrics.json").read_text())
    assert metrics["image_iou"]["count"] == 3
    assert metrics["worst_images"][0]["iou"] == pytest.approx(ious[0], abs=1e-3)
    assert metrics["overall"]["image_iou_min"] == pytest.approx(ious[0], abs=1e-3)
    # the training doctor's section lists doctor.json, or says it found nothing
    doctor = page.split('<section id="doctor">')[1].split("</section>")[0]
    findings = []
    if (seg_run / "doctor.json").is_file():
        findings = json.loads((seg_run / "doctor.json").read_text())["findings"]
    assert doctor.count("<tr>") == (len(findings) + 1 if findings else 0)
    for finding in findings:
        assert f"<td>{finding['kind']}</td>" in doctor
    if not findings:
        assert "found nothing" in doctor


@pytest.mark.slow
def test_segmentation_gallery_shows_truth_in_class_colours(seg_run: Path) -> None:
    tile = np.asarray(Image.open(sorted((seg_run / "plots" / "gallery").glob("seg_*"))[0]))
    third = (tile.shape[1] - 8) // 3
    truth_panel = tile[:, third + 4 : 2 * third + 4].astype(int)
    # the red class is drawn red over the image: some pixels are strongly red
    assert ((truth_panel[..., 0] > 150) & (truth_panel[..., 1] < 100)).any()


@pytest.mark.slow
def test_classification_report(cls_run: Path) -> None:
    page = (cls_run / "report.html").read_text(encoding="utf-8")
    assert sections(page) == CLS_SECTIONS
    files = check_images(cls_run, page)
    for name in ("curves", "confusion_matrix", "class_distribution_images", "pr_roc"):
        assert f"plots/{name}.png" in files
    losses = [f for f in files if f.startswith("plots/gallery/loss_")]
    assert 1 <= len(losses) <= 16
    values = [float(v) for v in re.findall(r"loss: ([0-9.]+)", page)]
    assert values == sorted(values, reverse=True)  # largest loss first
    assert "truth: " in page and "predicted: " in page and "p(predicted): " in page
    # Grad-CAM (pytorch-grad-cam) beside each image: two panels, the second a heat map
    assert "Grad-CAM of the predicted class" in page
    tile = np.asarray(Image.open(cls_run / losses[0]))
    assert tile.shape[1] > 1.8 * tile.shape[0]
    heat = tile[:, tile.shape[1] // 2 + 4 :].astype(float)
    assert heat.std() > 0
    metrics = json.loads((cls_run / "metrics.json").read_text())
    assert 0 <= metrics["overall"]["top5_accuracy"] <= 1
    assert 0 <= metrics["overall"]["ece"] <= 1
    for row in metrics["per_class"].values():
        assert row["roc_auc"] is None or 0 <= row["roc_auc"] <= 1
        assert "average_precision" in row
    assert isinstance(metrics["most_confused"], list)
    if metrics["most_confused"]:
        assert "most confused pairs" in page


@pytest.mark.slow
def test_report_command_rebuilds_the_report(cls_run: Path, tmp_path: Path) -> None:
    import liandan

    run = tmp_path / "copy"
    shutil.copytree(cls_run, run)
    (run / "report.html").unlink()
    shutil.rmtree(run / "plots")
    assert main(["report", str(run)]) == 0
    page = (run / "report.html").read_text(encoding="utf-8")
    assert sections(page) == CLS_SECTIONS
    check_images(run, page)
    assert liandan.report(run) == run / "report.html"  # the Python API


@pytest.mark.slow
def test_confusion_matrix_image_in_tensorboard(seg_run: Path) -> None:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(seg_run / "tensorboard"), size_guidance={"images": 0})
    acc.Reload()
    assert "val/confusion_matrix" in acc.Tags()["images"]


def test_report_refuses_a_folder_that_is_not_a_run(tmp_path: Path, capsys) -> None:
    assert main(["report", str(tmp_path)]) == 1
    assert "model.json" in capsys.readouterr().err


def test_display_and_overlay() -> None:
    from liandan.reporting.gallery import display_rgb, overlay, side_by_side

    rng = np.random.default_rng(0)
    sixteen = rng.integers(0, 4000, (8, 8, 5), dtype=np.uint16)
    rgb = display_rgb(sixteen)  # first three bands, stretched to 8 bits
    assert rgb.shape == (8, 8, 3) and rgb.dtype == np.uint8 and rgb.max() == 255
    grey = display_rgb(np.full((4, 4, 1), 7, np.uint8))
    assert grey.shape == (4, 4, 3) and (grey == 7).all()
    labels = np.array([[0, 1], [-1, 1]])
    out = overlay(np.zeros((2, 2, 3), np.uint8), labels, [(0, 0, 0), (200, 0, 0)])
    assert out[1, 0].tolist() == [0, 0, 0]  # ignored pixel: not coloured
    assert out[0, 1, 0] > 50 and out[0, 1, 1] == 0
    row = side_by_side([np.zeros((4, 4, 3), np.uint8), np.zeros((2, 3, 3), np.uint8)], gap=2)
    assert row.shape == (4, 9, 3)


@pytest.mark.slow
def test_runs_trained_on_polygons_get_a_report(tmp_path: Path) -> None:
    """The report read the GeoJSON labels as an image ("cannot read image"): no report."""
    from liandan.reporting.html import fmt
    from test_rasters import make_scene

    data = make_scene(tmp_path / "data", label="geojson")
    args = [*FAST_SEG, *COMMON, "train.epochs=1", "model.arch=segnet", "train.num_workers=0"]
    args += ["data.tile_size=64", "data.tiles_per_epoch=4"]
    assert main(["train", str(data), *args, "--out", str(tmp_path / "runs"), "--name", "p"]) == 0
    run = tmp_path / "runs" / "p"
    page = (run / "report.html").read_text(encoding="utf-8")
    assert sections(page) == SEG_SECTIONS
    assert "labelled pixels" in page and "field" in page and "water" in page
    check_images(run, page)
    # the gallery shows the worst validation tiles: image | truth | prediction
    assert list((run / "plots" / "gallery").glob("seg_01_*.png"))
    assert "scene.tif rows 120-" in page
    # `liandan report` alone: the rasters are checked and validated as training did
    metrics = json.loads((run / "metrics.json").read_text())
    (run / "report.html").unlink()
    (run / "metrics.json").unlink()
    assert main(["report", str(run)]) == 0
    rebuilt = (run / "report.html").read_text(encoding="utf-8")
    assert sections(rebuilt) == SEG_SECTIONS
    accuracy = fmt(metrics["overall"]["accuracy"])
    assert f"accuracy {accuracy}" in rebuilt  # the same validation tiles, the same accuracy
