"""Outputs never replace the user's files; bad output places and run names are one
message, never a traceback; piped output folds no path (tests fail on the old code)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from conftest import FAST_SEG, make_pairs, save
from inputs_guard import guarded, snapshot
from liandan.cli import main
from liandan.errors import OutputError
from liandan.runs import OUTPUTS_MANIFEST, create_run_dir, save_model_bundle

guarded_main = guarded(main)


@pytest.fixture(scope="module")
def run(module_tmp: Path) -> Path:
    """A run folder holding a built-in segmentation model (segnet, random weights)."""
    from liandan.config import ModelConfig
    from liandan.models import build_model

    model_cfg = ModelConfig(arch="segnet")
    model = build_model(model_cfg, task="segment", num_classes=3, in_channels=3)
    meta = {
        "task": "segment",
        "classes": ["0", "1", "2"],
        "values": None,
        "colors": [[0, 0, 0], [255, 0, 0], [0, 255, 0]],
        "in_channels": 3,
        "bands": None,
        "dtype": "uint8",
        "normalization": {"preset": "dataset", "mean": [80.0] * 3, "std": [60.0] * 3},
        "tile_size": 64,
        "arch": "segnet",
        "encoder": "none",
        "model": model_cfg.model_dump(mode="json"),
    }
    save_model_bundle(module_tmp / "run", model.state_dict(), meta)
    return module_tmp / "run"


def predict(*args: str | Path) -> int:
    return guarded_main(["predict", *map(str, args)])


# ------------------------------------------------------------------ item 1: predict
def test_predict_into_the_input_folder_is_refused_and_the_inputs_stay(
    run: Path, tmp_path: Path, capsys
) -> None:
    images = make_pairs(tmp_path / "data", n=3) / "images"
    before = snapshot(images)
    assert predict(run, images, "--out", images) == 1  # was 0, the images replaced by masks
    err = capsys.readouterr().err
    assert "--out is the folder of the inputs" in err and "Traceback" not in err
    assert snapshot(images) == before
    # a single file predicted beside itself: the same
    assert predict(run, images / "img00.png", "--out", images) == 1
    assert snapshot(images) == before


def test_predict_never_replaces_a_file_it_did_not_write_and_writes_nothing_then(
    run: Path, tmp_path: Path, capsys
) -> None:
    data = make_pairs(tmp_path / "data", n=3)
    masks = snapshot(data / "masks")
    # the truth masks have the names of the predicted masks
    assert predict(run, data / "images", "--out", data / "masks") == 1
    err = capsys.readouterr().err
    for i in range(3):
        assert f"{data / 'masks' / f'img0{i}.png'}: exists and liandan did not write it" in err
    assert "choose another --out" in err
    assert snapshot(data / "masks") == masks  # nothing added either: no preview/, no list
    # liandan's own outputs are replaced when predicting again into the same folder
    out = tmp_path / "pred"
    assert predict(run, data / "images", "--out", out) == 0
    assert predict(run, data / "images", "--out", out) == 0
    assert (out / OUTPUTS_MANIFEST).is_file() and (out / "preview" / "img00.png").is_file()
    # ... but not a file the user put there since
    save(np.zeros((4, 4), np.uint8), out / "mine.png")
    assert predict(run, data / "images" / "img01.png", tmp_path / "mine.png", "--out", out) == 1


def test_two_inputs_of_one_name_and_a_linked_input_are_refused(
    run: Path, tmp_path: Path, capsys
) -> None:
    a = make_pairs(tmp_path / "a", n=2, seed=1) / "images"
    b = make_pairs(tmp_path / "b", n=2, seed=2) / "images"
    out = tmp_path / "out"
    assert predict(run, a, b, "--out", out) == 1
    err = capsys.readouterr().err
    assert f"would be written for both {a / 'img00.png'} and {b / 'img00.png'}" in err
    assert not out.exists()  # a folder it created is removed again
    out.mkdir()
    os.link(a / "img01.png", out / "img01.png")  # the same file under the output name
    assert predict(run, a / "img01.png", "--out", out) == 1
    assert "img01.png: is an input" in capsys.readouterr().err


def test_score_and_export_never_replace_the_users_files(run: Path, tmp_path: Path, capsys) -> None:
    data = make_pairs(tmp_path / "data", n=2)
    (data / "metrics.json").write_text("my notes")
    assert (
        guarded_main(["score", str(data / "masks"), str(data / "masks"), "--out", str(data)]) == 1
    )
    assert "metrics.json: exists and liandan did not write it" in capsys.readouterr().err
    assert (data / "metrics.json").read_text() == "my notes"
    # export into the run's own model folder would replace its model.json
    model_json = (run / "model" / "model.json").read_text()
    args = ["export", str(run), "--format", "torchscript", "--out", str(run / "model")]
    assert main(args) == 1
    assert "model.json: exists and liandan did not write it" in capsys.readouterr().err
    assert (run / "model" / "model.json").read_text() == model_json
    assert not (run / "model" / "model.pt").exists()


# ------------------------------------------------------------------ item 11: places and names
def test_bad_out_places_are_one_message(run: Path, tmp_path: Path, capsys) -> None:
    data = make_pairs(tmp_path / "data", n=2)
    afile = tmp_path / "afile"
    afile.write_text("x")
    commands = [
        ["train", str(data), *FAST_SEG, "--out", str(afile)],
        ["train", str(data), *FAST_SEG, "--out", str(afile / "sub")],
        ["lr-find", str(data), "--out", str(afile)],
        ["tune", str(data), "--out", str(afile)],
        ["demo", "--out", str(afile)],
        ["predict", str(run), str(data / "images"), "--out", str(afile)],
        ["export", str(run), "--format", "torchscript", "--out", str(afile)],
        ["score", str(data / "masks"), str(data / "masks"), "--out", str(afile)],
    ]
    for args in commands:
        assert main(args) == 1, args
        err = capsys.readouterr().err
        assert "output error" in err and "is a file" in err and "Traceback" not in err, args
    assert afile.read_text() == "x"
    if Path("/sys").is_dir():  # refused even to root
        assert main(["predict", str(run), str(data / "images"), "--out", "/sys/liandan-x"]) == 1
        assert "output error" in capsys.readouterr().err


@pytest.mark.parametrize("name", ["a/b", "../x", "..", ".", "", "a\\b"])
def test_a_run_name_is_one_folder_name(tmp_path: Path, name: str, capsys) -> None:
    data = make_pairs(tmp_path / "data", n=2)
    out = tmp_path / "deep" / "runs"
    assert main(["train", str(data), *FAST_SEG, "--out", str(out), "--name", name]) == 1
    err = capsys.readouterr().err
    assert "is not a run name" in err and "Traceback" not in err
    assert main(["lr-find", str(data), "--out", str(out), "--name", name]) == 1
    assert sorted(p.name for p in tmp_path.iterdir()) == ["data"]  # nothing made anywhere
    with pytest.raises(OutputError, match="single folder name"):
        create_run_dir(out, name)


def test_run_names_and_places_are_checked_by_the_api_too(tmp_path: Path) -> None:
    (tmp_path / "afile").write_text("")
    with pytest.raises(OutputError, match="is a file"):
        create_run_dir(tmp_path / "afile", "train")
    assert create_run_dir(tmp_path / "runs", "train") == tmp_path / "runs" / "train"
    assert create_run_dir(tmp_path / "runs", "train") == tmp_path / "runs" / "train-2"
    from liandan.tuning import tune

    data = make_pairs(tmp_path / "data", n=4)
    with pytest.raises(OutputError, match="single folder name"):
        tune(data, trials=1, name="../x", out=tmp_path / "runs")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "data", "runs"]


# ------------------------------------------------------------------ item 15: piped output
def test_piped_output_prints_one_problem_per_line_with_whole_paths(tmp_path: Path, capsys) -> None:
    root = tmp_path / ("a-folder-name-long-enough-to-pass-eighty-columns-" * 2) / "[old]"
    data = make_pairs(root / "data", n=3)
    (data / "masks" / "img00.png").unlink()
    save(np.zeros((8, 8), np.uint8), data / "masks" / "orphan.png")
    assert main(["scan", str(data), "--no-cache"]) == 1
    out, err = capsys.readouterr()
    lines = out.splitlines()
    image, orphan = data / "images" / "img00.png", data / "masks" / "orphan.png"
    assert any(line.startswith(f"{image}: error: ") for line in lines), out
    assert any(line.startswith(f"{orphan}: error: ") for line in lines), out
    assert f"fingerprint of {data}" in out  # whole, [old] not read as markup
    assert f"data error: {data}: " in err
    # train's listing of the problems: one per line, whole paths, [old] kept
    assert main(["train", str(data), *FAST_SEG]) == 1
    err = capsys.readouterr().err
    assert any(line.startswith(f"  - {image}: ") for line in err.splitlines()), err
    assert any(line.startswith(f"  - {orphan}: ") for line in err.splitlines()), err


def test_plan_replaces_its_own_plan_but_not_a_plan_md_of_yours(tmp_path: Path, capsys) -> None:
    data = make_pairs(tmp_path / "data", n=4)
    notes = tmp_path / "notes"
    notes.mkdir()
    (notes / "plan.md").write_text("my plan for the week")
    assert guarded_main(["plan", str(data), "-o", str(notes / "plan.yaml")]) == 1
    assert "plan.md: exists and liandan did not write it" in capsys.readouterr().err
    assert sorted(p.name for p in notes.iterdir()) == ["plan.md"]
    for _ in range(2):
        assert guarded_main(["plan", str(data), "-o", str(tmp_path / "plans" / "p.yaml")]) == 0
    assert (tmp_path / "plans" / "plan.md").is_file()


# ------------------------------------------------------------------ done means
@pytest.mark.slow
def test_no_command_of_a_whole_run_changes_the_users_folders(tmp_path: Path) -> None:
    """train, evaluate, predict, report, export, scan, plan and score leave DATA, the
    images to predict and the config file byte for byte as they were, nothing added."""
    data = make_pairs(tmp_path / "data", n=8)
    new = make_pairs(tmp_path / "new", n=2, seed=5) / "images"
    config = tmp_path / "mine.yaml"
    config.write_text("train:\n  epochs: 1\n")
    runs, run = tmp_path / "runs", tmp_path / "runs" / "train"
    commands = [
        ["scan", data],
        ["plan", data, "-o", tmp_path / "plans" / "plan.yaml"],
        ["train", data, "--config", config, *FAST_SEG, "train.epochs=1", "--out", runs],
        ["evaluate", run],
        ["evaluate", run, data, "--split", "all"],
        ["predict", run, new, "--out", tmp_path / "pred-new"],
        ["predict", run, data / "images", "--out", tmp_path / "pred"],
        ["report", run],
        ["export", run, "--format", "torchscript"],
        ["predict", run / "export-torchscript", new, "--out", tmp_path / "pred-export"],
        ["score", tmp_path / "pred", data / "masks", "--out", tmp_path / "scores"],
    ]
    users = [data, new, config]
    for command in commands:
        before = [snapshot(p) for p in users]
        assert main([str(a) for a in command]) == 0, command
        assert [snapshot(p) for p in users] == before, command
