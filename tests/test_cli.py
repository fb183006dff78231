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
    upright = ["augment.hflip=0.5", "augment.vflip=0", "augment.rotate90=0"]
    assert main(["train", str(data), *FAST_SEG, *upright, "--out", str(runs)]) == 0
    meta = json.loads((runs / "train" / "model" / "model.json").read_text())
    assert meta["classes"] == ["0", "255"] and meta["values"] == [0, 255]
    # the flips training used: predict.tta averages over these only
    assert meta["tta_flips"] == [[3]]
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
    assert "did you mean optim.lr?" in capsys.readouterr().err
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


# ---------------------------------------------------------- one command-line grammar
class FakePredict:
    """Stands in for liandan.prediction.predict: records its arguments, and lists the
    inputs as the real one does (so a missing input fails as it would)."""

    def __init__(self, monkeypatch: pytest.MonkeyPatch) -> None:
        self.calls: list[tuple[list[Path], dict]] = []
        monkeypatch.setattr("liandan.prediction.predict", self)

    def __call__(self, run: Path, inputs: list[Path], **kwargs: object) -> object:
        from types import SimpleNamespace

        from liandan.predict_outputs import list_inputs

        self.calls.append((list_inputs(inputs), kwargs))
        return SimpleNamespace(predictions=[], out_dir=kwargs["out"])


def test_predict_takes_predict_keys_as_key_value(tmp_path: Path, monkeypatch) -> None:
    fake = FakePredict(monkeypatch)
    image = save(np.zeros((8, 8, 3), np.uint8), tmp_path / "a.png")
    args = ["predict", str(tmp_path), str(image), "predict.tile=256", "predict.tta=true"]
    assert main([*args, "predict.precision=32", "--overlap", "0.5"]) == 0
    (inputs, kwargs), *_ = fake.calls
    assert inputs == [image]
    assert kwargs["tile"] == 256 and kwargs["tta"] is True and kwargs["precision"] == "32"
    assert kwargs["overlap"] == 0.5 and kwargs["blend"] is None  # None: the run's own


def test_predict_a_key_and_its_flag_together_is_a_usage_error(tmp_path: Path, monkeypatch) -> None:
    FakePredict(monkeypatch)
    image = save(np.zeros((8, 8, 3), np.uint8), tmp_path / "a.png")
    args = ["predict", str(tmp_path), str(image), "predict.tile=256", "--tile", "128"]
    assert main(args) == 2


def test_predict_refuses_keys_it_does_not_read_all_at_once(
    tmp_path: Path, monkeypatch, capsys
) -> None:
    fake = FakePredict(monkeypatch)
    image = save(np.zeros((8, 8, 3), np.uint8), tmp_path / "a.png")
    args = ["predict", str(tmp_path), str(image), "train.epochs=3", "tile=256", "predict.tile=9"]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "train.epochs: not read by liandan predict; it reads predict.*" in err
    assert "tile: unknown config key; did you mean predict.tile?" in err
    assert main(["predict", str(tmp_path), str(image), "predict.tile=9"]) == 1  # below 16
    assert "predict.tile" in capsys.readouterr().err
    assert fake.calls == []


def test_an_existing_file_named_key_value_is_an_input(tmp_path: Path, monkeypatch, capsys) -> None:
    fake = FakePredict(monkeypatch)
    image = tmp_path / "predict.tile=256"  # a PNG file named like a key
    Image.fromarray(np.zeros((8, 8, 3), np.uint8)).save(image, format="PNG")
    assert main(["predict", str(tmp_path), str(image)]) == 0
    (inputs, kwargs), *_ = fake.calls
    assert inputs == [image] and kwargs["tile"] is None
    # a path that does not exist and is no key: the input is not found, as before
    assert main(["predict", str(tmp_path), str(tmp_path / "old" / "x=1.png")]) == 1
    assert "input not found" in capsys.readouterr().err
    # a word that reads as a key but names a missing file: both are said
    monkeypatch.chdir(tmp_path)
    assert main(["predict", str(tmp_path), "scan=2.png"]) == 1
    err = capsys.readouterr().err
    assert "scan: unknown config key" in err and "no file named scan=2.png" in err


def test_train_reports_every_bad_key_at_once_with_suggestions(tmp_path: Path, capsys) -> None:
    data = make_pairs(tmp_path / "seg", n=4)
    assert main(["train", str(data), "epochs=3", "imgsz=64", "batch=4", "lr0=0.01"]) == 1
    err = capsys.readouterr().err
    assert "4 bad overrides" in err
    for wrong, right in [
        ("epochs", "train.epochs"),
        ("imgsz", "data.image_size"),
        ("batch", "train.batch_size"),
        ("lr0", "optim.lr"),
    ]:
        assert f"{wrong}: unknown config key; did you mean {right}?" in err
    assert not (tmp_path / "runs").exists()


def test_export_and_evaluate_refuse_keys_they_do_not_read(tmp_path: Path, capsys) -> None:
    assert main(["export", str(tmp_path), "predict.tile=256"]) == 1
    err = capsys.readouterr().err
    assert "predict.tile: not read by liandan export" in err
    assert main(["evaluate", str(tmp_path), "train.epochs=3"]) == 1
    assert "train.epochs: not read by liandan evaluate" in capsys.readouterr().err


def test_score_takes_its_data_keys_as_key_value(tmp_path: Path, capsys) -> None:
    truth = np.zeros((8, 8), np.uint8)
    truth[:, 4:] = 1
    truth[0, :] = 7  # a row the ignore value covers
    pred = truth.copy()
    pred[0, :] = 0  # wrong only where the truth is 7
    for folder, mask in (("truth", truth), ("pred", pred)):
        save(mask, tmp_path / folder / "a.png")
    words = [str(tmp_path / "pred"), str(tmp_path / "truth"), "--json"]
    assert main(["score", *words, "data.ignore_index=7"]) == 0
    by_key = json.loads(capsys.readouterr().out)
    assert main(["score", *words, "--ignore-index", "7"]) == 0
    assert json.loads(capsys.readouterr().out) == by_key
    assert by_key["overall"]["accuracy"] == 1.0
    assert main(["score", *words, "data.image_size=64"]) == 1
    assert "it reads data.ignore_index, data.nodata" in capsys.readouterr().err


def test_print_config_prints_what_training_would_use(tmp_path: Path, monkeypatch, capsys) -> None:
    import yaml

    from liandan import api

    data = make_imagefolder(tmp_path / "data")
    monkeypatch.chdir(tmp_path)
    assert main(["train", str(data), "train.epochs=3", "--print-config"]) == 0
    printed = yaml.safe_load(capsys.readouterr().out)
    cfg, planned = api.train_config(str(data), overrides=["train.epochs=3"])
    assert planned is not None  # planned from the data, as `liandan train DATA` trains
    assert printed == cfg.to_dict()
    assert printed["train"]["epochs"] == 3 and printed["data"]["root"] == str(data.resolve())
    assert printed["model"]["arch"] != "auto" and printed["loss"]["name"] != "auto"
    assert not (tmp_path / "runs").exists()  # nothing trained, nothing written


def test_the_python_api_resolves_the_config_the_cli_does(tmp_path: Path, monkeypatch) -> None:
    import liandan
    from liandan import api
    from liandan.config import Config

    seen: list[dict] = []

    def no_training(cfg: Config, bundle: object, run_dir: Path, **kwargs: object):
        seen.append(cfg.to_dict())
        return api.RunResult(run_dir, {}, cfg)  # no metrics: the CLI prints nothing

    monkeypatch.setattr(api, "train_into", no_training)
    data = make_imagefolder(tmp_path / "data")
    liandan.train(data, overrides=["train.epochs=3"], out=tmp_path / "api")
    assert main(["train", str(data), "train.epochs=3", "--out", str(tmp_path / "cli")]) == 0
    from_api, from_cli = seen
    assert from_api == from_cli
    defaults = Config.load(None, ["train.epochs=3", f"data.root={data.resolve()}"])
    assert from_api != defaults.to_dict()  # the plan, not the built-in defaults
    assert (tmp_path / "api" / "train" / "plan.yaml").is_file()


def test_export_defaults_to_the_exporters_opset_and_debug_shows_its_warnings(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The CLI asked for opset 17 (converted down from 18, which fails for some models)
    and never passed --debug on to the exporter."""
    import liandan.exporting as exporting

    seen: list[dict] = []

    def fake(run, format, **kwargs):  # type: ignore[no-untyped-def]
        seen.append(kwargs)
        raise RuntimeError("stop")

    monkeypatch.setattr(exporting, "export", fake)
    for argv in (["export", str(tmp_path)], ["export", str(tmp_path), "--debug"]):
        with pytest.raises(RuntimeError, match="stop"):
            main(argv)
    assert seen[0]["opset"] is None and seen[0]["verbose"] is False
    assert seen[1]["verbose"] is True
