"""Scan and plan read a folder of rasters with GIS layers as detection when the command
line names the task (``task=detect``) or the layout (``data.layout=vector-boxes``), so
that ``liandan train DATA task=detect`` plans and trains a detector; without them the
folder stays polygon labels for segmentation."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml

from liandan.cli import main
from liandan.planning import plan, planned_config
from liandan.scan_report import scan
from test_detect_vector import polygons_gpkg, raster

SIDE = 128  # one tiny raster: two windows of 64 px, or one record of 128 px


@pytest.fixture(autouse=True)
def _cache_in_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("LIANDAN_CACHE_DIR", str(tmp_path / "cache"))


@pytest.fixture
def scene(tmp_path: Path) -> Path:
    root = tmp_path / "data"
    raster(root / "images" / "scene.tif", size=SIDE)
    boxes = {"building": [(10, 12, 40, 30), (70, 80, 110, 120)], "tree": [(60, 20, 80, 40)]}
    polygons_gpkg(root / "labels" / "scene.gpkg", boxes)
    return root


def test_scan_and_plan_read_the_layers_as_boxes_only_when_asked(scene: Path) -> None:
    # unchanged without the task: polygon labels for segmentation
    assert scan(scene).fingerprint.task == "segment"
    assert plan(scene, device="cpu").config.task == "segment"
    for asked in ({"task": "detect"}, {"layout": "vector-boxes"}):
        report = scan(scene, **asked)
        assert report.fingerprint.task == "detect", asked
        assert report.fingerprint.layout == "vector-boxes"
        assert report.fingerprint.classes == ["building", "tree"]
        cfg = plan(scene, device="cpu", **asked).config
        assert cfg.task == "detect" and cfg.data.layout == "vector-boxes"
        assert cfg.model.arch == "fcos"  # the detect task's plan rule


def test_the_plan_cuts_windows_at_the_input_size(tmp_path: Path) -> None:
    root = tmp_path / "big"
    raster(root / "images" / "scene.tif", size=600)  # windows of 512 px by default
    polygons_gpkg(root / "labels" / "scene.gpkg")
    p = plan(root, device="cpu", task="detect")
    assert p.fingerprint.image_size["median"] == [512, 512]  # a sample is its window
    cfg = p.config
    assert cfg.data.image_size == 256 and cfg.data.tile_size == 256  # 1:1, not shrunk 2x
    assert "own resolution" in p.reasons["data.tile_size"]
    # windows the user sized are what the plan reads and keeps
    cfg, _ = planned_config(root, None, ["task=detect", "data.tile_size=128"], device="cpu")
    assert cfg.data.tile_size == 128 and cfg.data.image_size == 128


def test_cli_scan_and_plan_take_task_and_layout_overrides(
    scene: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["scan", str(scene), "task=detect", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["fingerprint"]["task"] == "detect"
    assert report["fingerprint"]["layout"] == "vector-boxes"
    out = tmp_path / "p" / "plan.yaml"
    assert main(["plan", str(scene), "task=detect", "-o", str(out), "--device", "cpu"]) == 0
    planned = yaml.safe_load(out.read_text())
    assert planned["task"] == "detect" and planned["model"]["arch"] == "fcos"
    assert planned["data"]["layout"] == "vector-boxes"
    assert "detect" in (tmp_path / "p" / "plan.md").read_text()
    out2 = tmp_path / "q" / "plan.yaml"
    assert main(["plan", str(scene), "data.layout=vector-boxes", "-o", str(out2)]) == 0
    assert yaml.safe_load(out2.read_text())["task"] == "detect"
    # without: segmentation, as before
    out3 = tmp_path / "s" / "plan.yaml"
    assert main(["plan", str(scene), "-o", str(out3), "--device", "cpu"]) == 0
    assert yaml.safe_load(out3.read_text())["task"] == "segment"
    # the other keys are refused: scan and plan read no training settings
    capsys.readouterr()
    assert main(["plan", str(scene), "optim.lr=0.1", "-o", str(out3)]) == 1
    assert "optim.lr: not read by liandan plan" in capsys.readouterr().err


def test_train_task_detect_plans_detection(scene: Path, tmp_path: Path) -> None:
    runs = tmp_path / "runs"
    args = ["train", str(scene), "task=detect", "data.tile_size=64", "data.image_size=64"]
    args += ["train.batch_size=2", "train.epochs=1", "train.steps_per_epoch=1"]
    args += ["optim.lr=0.001", "train.progress=false", "train.num_workers=0"]
    assert main([*args, "--out", str(runs)]) == 0  # no --no-plan: the plan comes first
    metrics = json.loads((runs / "train" / "metrics.json").read_text())
    assert metrics["task"] == "detect" and metrics["classes"] == ["building", "tree"]
    config = yaml.safe_load((runs / "train" / "config.yaml").read_text())
    assert config["task"] == "detect" and config["data"]["layout"] == "vector-boxes"
    assert config["model"]["arch"] == "fcos"  # planned by the detect task's rules
