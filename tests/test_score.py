"""`liandan score`: mask folders, rasters and CSVs; pairing errors; nodata; --out."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import rasterio
from PIL import Image
from rasterio.transform import from_origin
from sklearn.metrics import confusion_matrix

from conftest import save
from liandan.cli import main
from liandan.errors import DataError
from liandan.scoring import score


def masks(seed: int, n: int = 3, size: int = 16, values=(0, 255)) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.choice(values, (size, size)).astype(np.uint8) for _ in range(n)]


def write_folder(folder: Path, arrays: list[np.ndarray]) -> Path:
    for i, a in enumerate(arrays):
        save(a, folder / f"m{i}.png")
    return folder


def write_tif(path: Path, array: np.ndarray, nodata: float | None = None) -> Path:
    with rasterio.open(
        path,
        "w",
        driver="GTiff",
        width=array.shape[1],
        height=array.shape[0],
        count=1,
        dtype=array.dtype.name,
        nodata=nodata,
        crs="EPSG:32633",
        transform=from_origin(500000, 4000000, 1, 1),
    ) as dst:
        dst.write(array, 1)
    return path


def test_folders_paired_by_stem_match_sklearn_and_ignore_preview(tmp_path: Path) -> None:
    truth = write_folder(tmp_path / "data" / "masks", masks(0))
    (tmp_path / "data" / "classes.yaml").write_text("names: [sea, land]\nvalues: [0, 255]\n")
    pred = write_folder(tmp_path / "pred", masks(1))
    save(np.full((5, 5, 3), 7, np.uint8), pred / "preview" / "m0.png")  # ignored
    metrics = score(pred, truth)
    assert metrics["classes"] == ["sea", "land"] and metrics["inputs"]["pairs"] == 3
    t = np.concatenate([m.ravel() for m in masks(0)]) // 255
    p = np.concatenate([m.ravel() for m in masks(1)]) // 255
    assert metrics["confusion_matrix"] == confusion_matrix(t, p).tolist()
    assert metrics["overall"]["accuracy"] == pytest.approx(float((t == p).mean()))


def test_every_unpaired_or_mismatched_file_is_listed(tmp_path: Path, capsys) -> None:
    truth = write_folder(tmp_path / "truth", masks(0, n=3))
    pred = write_folder(tmp_path / "pred", masks(1, n=2))  # m2 missing
    save(masks(2, n=1)[0], pred / "extra.png")
    assert main(["score", str(pred), str(truth)]) == 1
    err = capsys.readouterr().err
    assert "m2.png" in err and "extra.png" in err and "Traceback" not in err
    # sizes and values: every bad pair is named, not only the first
    (pred / "extra.png").unlink()
    save(np.zeros((8, 8), np.uint8), pred / "m2.png")
    save(np.full((16, 16), 3, np.uint8), pred / "m1.png")
    with pytest.raises(DataError) as info:
        score(pred, truth)
    items = "\n".join(info.value.items)
    assert "m2.png: 8x8, truth is 16x16" in items and "m1.png: value(s) 3" in items


def test_raster_pairs_leave_nodata_out(tmp_path: Path) -> None:
    truth = np.array([[0, 1, 2, 9], [0, 1, 2, 9]], np.uint8)  # 9: nodata (classes.yaml)
    pred = np.array([[0, 1, 1, 0], [255, 1, 2, 1]], np.uint8)  # 255: the file's nodata
    (tmp_path / "classes.yaml").write_text("names: [a, b, c]\nnodata: 9\n")
    t = write_tif(tmp_path / "truth.tif", truth)
    p = write_tif(tmp_path / "pred.tif", pred, nodata=255)
    metrics = score(p, t)
    assert metrics["confusion_matrix"] == [[1, 0, 0], [0, 2, 0], [0, 1, 1]]
    assert metrics["inputs"]["nodata_pixels"] == 3
    # the file's nodata is a class value here: it is counted, not left out
    write_tif(tmp_path / "pred.tif", np.where(pred == 255, 0, pred).astype(np.uint8), nodata=0)
    assert sum(map(sum, score(p, t)["confusion_matrix"])) == 6


def test_without_classes_yaml_the_nodata_option_is_not_a_class(tmp_path: Path) -> None:
    truth = write_tif(tmp_path / "t.tif", np.array([[0, 1, 200]], np.uint8))
    pred = write_tif(tmp_path / "p.tif", np.array([[0, 0, 1]], np.uint8))
    metrics = score(pred, truth, nodata=200)
    assert metrics["classes"] == ["0", "1"]
    assert metrics["confusion_matrix"] == [[1, 0], [1, 0]]


def write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    with path.open("w", newline="") as fh:
        writer = csv.writer(fh)
        writer.writerow(["image", "label", "prob_x"])
        writer.writerows([(i, label, "0.5") for i, label in rows])
    return path


def test_csv_pairs_by_path_tail(tmp_path: Path) -> None:
    truth = write_csv(
        tmp_path / "labels.csv", [("cat/1.png", "cat"), ("dog/1.png", "dog"), ("dog/2.png", "dog")]
    )
    pred = write_csv(
        tmp_path / "pred.csv",
        [("/x/cat/1.png", "cat"), ("/x/dog/1.png", "cat"), ("/x/dog/2.png", "dog")],
    )
    metrics = score(pred, truth)
    assert metrics["task"] == "classify" and metrics["classes"] == ["cat", "dog"]
    assert metrics["confusion_matrix"] == [[1, 0], [1, 1]]


def test_csv_mismatches_are_all_listed(tmp_path: Path, capsys) -> None:
    truth = write_csv(tmp_path / "t.csv", [("a.png", "x"), ("b.png", "y"), ("c.png", "y")])
    pred = write_csv(tmp_path / "p.csv", [("a.png", "x"), ("d.png", "y"), ("c.png", "zebra")])
    (tmp_path / "classes.yaml").write_text("names: [x, y]\n")
    assert main(["score", str(pred), str(truth)]) == 1
    err = capsys.readouterr().err
    assert "b.png" in err and "d.png" in err and "'zebra' is not a class" in err


def test_out_writes_metrics_and_confusion_plot(tmp_path: Path, capsys) -> None:
    truth = write_folder(tmp_path / "truth", masks(0))
    pred = write_folder(tmp_path / "pred", masks(1))
    out = tmp_path / "scored"
    assert main(["score", str(pred), str(truth), "--out", str(out), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    written = json.loads((out / "metrics.json").read_text())
    assert printed == written and written["classes"] == ["0", "255"]
    plot = np.asarray(Image.open(out / "confusion_matrix.png")).astype(float)
    assert plot.std() > 0
    assert main(["score", str(pred), str(truth)]) == 0  # the table, no files
    assert "mean IoU" in capsys.readouterr().out
