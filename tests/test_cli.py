"""End-to-end: every command of the CLI on each data layout, through `main()`."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.transform import from_origin

import liandan.cli
from conftest import FAST_CLS, FAST_SEG, make_csv, make_imagefolder, make_pairs, make_voc, save
from inputs_guard import guarded
from liandan.cli import main

SCHEMA_OVERALL = {
    "accuracy",
    "balanced_accuracy",
    "kappa",
    "macro_precision",
    "macro_recall",
    "macro_f1",
    "mean_iou",
    "mean_dice",
    "fw_iou",
}
SCHEMA_CLASS = {"precision", "recall", "f1", "iou", "dice", "support"}


@pytest.fixture(autouse=True)
def _inputs_stay_as_they_were(monkeypatch: pytest.MonkeyPatch) -> None:
    """Every command below leaves its DATA, input files and folders byte for byte as they
    were, with no file added or removed (tests/inputs_guard.py hashes them around it)."""
    monkeypatch.setitem(globals(), "main", guarded(liandan.cli.main))


def check_run(run: Path, task: str, epochs: int = 2) -> dict:
    for rel in (
        "config.yaml",
        "history.csv",
        "metrics.json",
        "checkpoints/best.ckpt",
        "checkpoints/last.ckpt",
        "model/weights.safetensors",
        "model/model.json",
        "plots/confusion_matrix.png",
        "plots/curves.png",
    ):
        assert (run / rel).is_file(), rel
    assert any((run / "tensorboard").rglob("events.out.tfevents*"))
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["task"] == task and metrics["split"] == "val"
    assert SCHEMA_OVERALL <= set(metrics["overall"])
    for stats in metrics["per_class"].values():
        assert SCHEMA_CLASS <= set(stats)
    cm = np.array(metrics["confusion_matrix"])
    assert cm.shape == (len(metrics["classes"]),) * 2
    with (run / "history.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["epoch"]) for r in rows] == list(range(1, epochs + 1))
    assert {"epoch", "step", "time_s", "train_loss", "val_loss"} <= set(rows[0])
    assert any(k.startswith("lr_") for k in rows[0])
    return metrics


@pytest.mark.slow
def test_segment_pairs_train_evaluate_predict_score(tmp_path: Path) -> None:
    data = make_pairs(tmp_path / "data", n=8)
    runs = tmp_path / "runs"
    assert main(["train", str(data), *FAST_SEG, "--out", str(runs)]) == 0
    run = runs / "train"
    metrics = check_run(run, "segment")
    assert metrics["classes"] == ["0", "1", "2"]
    # a second run never overwrites the first
    assert main(["train", str(data), *FAST_SEG, "train.epochs=1", "--out", str(runs)]) == 0
    assert (runs / "train-2" / "model" / "model.json").is_file()
    # evaluate: all split, --json printed, file written beside metrics.json
    assert main(["evaluate", str(run), "--split", "all", "--json"]) == 0
    assert (run / "metrics_all.json").is_file()
    assert json.loads((run / "metrics.json").read_text())["split"] == "val"
    # predict a folder: a mask in value space + a colour preview per input
    out = tmp_path / "pred"
    assert main(["predict", str(run), str(data / "images"), "--out", str(out)]) == 0
    masks = sorted(out.glob("*.png"))
    assert len(masks) == 8 and len(list((out / "preview").glob("*.png"))) == 8
    pred = np.array(Image.open(masks[0]))
    assert pred.shape == (32, 32) and set(np.unique(pred)) <= {0, 1, 2}
    preview = np.array(Image.open(out / "preview" / masks[0].name))
    assert preview.shape == (32, 32, 3)
    # score the predictions against the truth folder
    assert main(["score", str(out), str(data / "masks"), "--json"]) == 0


@pytest.mark.slow
def test_binary_0_255_masks_predicted_in_the_same_value_space(tmp_path: Path) -> None:
    data = make_pairs(tmp_path / "data", n=8, values=(0, 255))
    runs = tmp_path / "runs"
    assert main(["train", str(data), *FAST_SEG, "--out", str(runs)]) == 0
    meta = json.loads((runs / "train" / "model" / "model.json").read_text())
    assert meta["classes"] == ["0", "255"] and meta["values"] == [0, 255]
    out = tmp_path / "pred"
    assert main(["predict", str(runs / "train"), str(data / "images"), "--out", str(out)]) == 0
    values = set()
    for f in out.glob("*.png"):
        values |= set(np.unique(np.array(Image.open(f))).tolist())
    assert values <= {0, 255}


@pytest.mark.slow
@pytest.mark.parametrize("layout", ["imagefolder", "imagefolder-splits", "csv"])
def test_classify_layouts_train_and_predict(tmp_path: Path, layout: str) -> None:
    if layout == "csv":
        data = make_csv(tmp_path / "data")
    else:
        data = make_imagefolder(tmp_path / "data", splits=layout.endswith("splits"))
    runs = tmp_path / "runs"
    # 10 epochs of 2-3 steps: enough to learn the fixture (your epochs are passes)
    args = ["train", str(data), *FAST_CLS, "train.epochs=10", "--out", str(runs), "--name", "c"]
    assert main(args) == 0
    check_run(runs / "c", "classify", epochs=10)
    out = tmp_path / "pred"
    images = next(p for p in data.rglob("*.png")).parent
    # every class of one split: the predictions must follow the labels, not one class
    inputs = [images] if layout == "csv" else sorted(images.parent.iterdir())
    assert main(["predict", str(runs / "c"), *map(str, inputs), "--out", str(out)]) == 0
    with (out / "predictions.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 12 and rows[0].keys() >= {"image", "label"}
    probs = [float(v) for k, v in rows[0].items() if k.startswith("prob_")]
    assert len(probs) == 2 and abs(sum(probs) - 1) < 1e-4
    # quality: the learnable fixture is learned (a wrong class mapping gets about half)
    truth = [
        Path(r["image"]).name[0] if layout == "csv" else Path(r["image"]).parent.name for r in rows
    ]
    right = sum(r["label"] == t for r, t in zip(rows, truth, strict=True))
    assert right >= 11, [(r["image"], r["label"]) for r in rows]


@pytest.mark.slow
def test_voc_layout_ignores_255(tmp_path: Path) -> None:
    data = make_voc(tmp_path / "voc")
    runs = tmp_path / "runs"
    assert main(["train", str(data), *FAST_SEG, "train.epochs=1", "--out", str(runs)]) == 0
    metrics = json.loads((runs / "train" / "metrics.json").read_text())
    assert len(metrics["classes"]) == 21
    # the 255 boundary row is excluded: supports add up to the labelled pixels only
    total = sum(c["support"] for c in metrics["per_class"].values())
    assert total == 2 * (32 * 32 - 32)


@pytest.mark.slow
def test_predict_geotiff_keeps_georeferencing(tmp_path: Path) -> None:
    data = make_pairs(tmp_path / "data", n=8)
    runs = tmp_path / "runs"
    assert main(["train", str(data), *FAST_SEG, "train.epochs=1", "--out", str(runs)]) == 0
    scene = tmp_path / "scene.tif"
    rng = np.random.default_rng(0)
    arr = rng.integers(0, 255, (3, 100, 90), dtype=np.uint8)
    transform = from_origin(500000, 4000000, 0.5, 0.5)
    with rasterio.open(
        scene,
        "w",
        driver="GTiff",
        width=90,
        height=100,
        count=3,
        dtype="uint8",
        crs="EPSG:32633",
        transform=transform,
        nodata=0,
    ) as dst:
        arr[:, :10, :] = 0  # nodata rows
        dst.write(arr)
    out = tmp_path / "pred"
    assert main(["predict", str(runs / "train"), str(scene), "--out", str(out)]) == 0
    with rasterio.open(out / "scene.tif") as src:
        assert src.crs.to_epsg() == 32633 and src.transform == transform
        assert (src.width, src.height) == (90, 100)
        values = src.read(1)
        assert (values[:10] == src.nodata).all() and (values[10:] != src.nodata).all()


def test_bad_inputs_exit_1_with_a_message_and_no_traceback(tmp_path: Path, capsys) -> None:
    assert main(["train", str(tmp_path / "missing")]) == 1
    err = capsys.readouterr().err
    assert "folder not found" in err and "Traceback" not in err
    data = make_pairs(tmp_path / "seg", n=4)
    (data / "masks" / "img00.png").unlink()
    save(np.zeros((8, 8), np.uint8), data / "masks" / "orphan.png")
    assert main(["train", str(data), "train.epochs=1"]) == 1
    err = capsys.readouterr().err
    assert "img00.png" in err and "orphan.png" in err
    assert main(["train", str(data), "optim.lrr=1"]) == 1
    assert "did you mean 'lr'" in capsys.readouterr().err
    assert main(["train", str(data), "train.epochs=many"]) == 1
    assert "train.epochs" in capsys.readouterr().err


def test_debug_flag_shows_the_traceback(tmp_path: Path) -> None:
    from liandan.errors import DataError

    with pytest.raises(DataError):
        main(["train", str(tmp_path / "missing"), "--debug"])


def test_usage_errors_exit_2(tmp_path: Path) -> None:
    assert main(["train", "a", "b"]) == 2
    assert main(["no-such-command"]) == 2
    assert main(["evaluate", str(tmp_path), "--split", "bogus"]) == 2


def test_predict_refuses_a_folder_that_is_not_a_run(tmp_path: Path, capsys) -> None:
    assert main(["predict", str(tmp_path), str(tmp_path)]) == 1
    assert "model.json" in capsys.readouterr().err


@pytest.mark.slow
@pytest.mark.parametrize("task", ["segment", "classify"])
def test_demo_runs_end_to_end_with_short_overrides(tmp_path: Path, task: str) -> None:
    runs = tmp_path / "runs"
    quick = ["train.epochs=1", "train.steps_per_epoch=2", "train.progress=false"]
    assert main(["demo", "--task", task, "--out", str(runs), *quick]) == 0
    run = runs / "demo"
    check_run_files = json.loads((run / "metrics.json").read_text())
    assert check_run_files["task"] == task
    assert (run / "data" / "README.txt").is_file()
    if task == "segment":
        with rasterio.open(run / "predictions" / "scene.tif") as pred:
            with rasterio.open(run / "data" / "scene" / "scene.tif") as scene:
                assert pred.crs == scene.crs and pred.transform == scene.transform
    # a second demo never overwrites the first (the first's checkpoints go: disk is scarce)
    shutil.rmtree(run / "checkpoints")
    assert main(["demo", "--task", task, "--out", str(runs), *quick]) == 0
    assert (runs / "demo-2" / "model" / "model.json").is_file()


@pytest.mark.slow
def test_config_yaml_of_a_run_reproduces_it(tmp_path: Path) -> None:
    data = make_imagefolder(tmp_path / "data")
    runs = tmp_path / "runs"
    assert main(["train", str(data), *FAST_CLS, "--out", str(runs), "--name", "a"]) == 0
    config = runs / "a" / "config.yaml"
    assert main(["train", "--config", str(config), "--out", str(runs), "--name", "b"]) == 0
    first = json.loads((runs / "a" / "metrics.json").read_text())
    second = json.loads((runs / "b" / "metrics.json").read_text())
    assert first["confusion_matrix"] == second["confusion_matrix"]
    from safetensors.torch import load_file

    wa = load_file(str(runs / "a" / "model" / "weights.safetensors"))
    wb = load_file(str(runs / "b" / "model" / "weights.safetensors"))
    assert all((wa[k] == wb[k]).all() for k in wa)
