"""`liandan score` for boxes: detections (COCO results JSON, YOLO text) against a YOLO,
COCO or VOC truth, checked against pycocotools run on the same files; pairing by file
and class name; every refusal names what cannot be paired."""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from conftest import save
from liandan.cli import main
from liandan.errors import DataError
from liandan.scoring import score

W, H = 64, 48
NAMES = ["car", "ship", "tree"]


def cat_id(k: int) -> int:
    return 2 * k + 5  # neither 0- nor 1-based: pairing by position would be wrong


def case(seed: int, images: int = 5) -> tuple[list, list]:
    """Per image: truth rows (class, x1, y1, x2, y2), detections (class, x1, y1, x2, y2, score):
    jittered copies of the truth, some misses, some false alarms, one wrong class."""
    rng = np.random.default_rng(seed)
    truth, dets = [], []
    for _ in range(images):
        rows, found = [], []
        for _ in range(rng.integers(0, 5)):
            x1, y1 = rng.integers(0, W - 16), rng.integers(0, H - 16)
            w, h = rng.integers(4, 16), rng.integers(4, 16)
            c = int(rng.integers(0, len(NAMES)))
            rows.append((c, float(x1), float(y1), float(x1 + w), float(y1 + h)))
            if rng.random() < 0.8:
                j = rng.normal(0, 1.5, 4)
                c2 = c if rng.random() < 0.9 else (c + 1) % len(NAMES)
                found.append(
                    (c2, *(v + d for v, d in zip(rows[-1][1:], j, strict=True)), rng.random())
                )
        for _ in range(rng.integers(0, 3)):
            x1, y1 = rng.uniform(0, W - 10), rng.uniform(0, H - 10)
            found.append((int(rng.integers(0, 3)), x1, y1, x1 + 8, y1 + 8, rng.random() * 0.6))
        truth.append(rows)
        dets.append(found)
    return truth, dets


def write_coco_truth(path: Path, truth: list) -> Path:
    images = [
        {"id": 100 + i, "file_name": f"im{i}.png", "width": W, "height": H}
        for i in range(len(truth))
    ]
    anns = [
        {"id": len(images) * 10 + n, "image_id": 100 + i, "category_id": cat_id(c),
         "bbox": [x1, y1, x2 - x1, y2 - y1], "area": (x2 - x1) * (y2 - y1), "iscrowd": 0}
        for i, rows in enumerate(truth) for n, (c, x1, y1, x2, y2) in enumerate(rows)
    ]  # fmt: skip
    for n, a in enumerate(anns):
        a["id"] = n + 1
    cats = [{"id": cat_id(k), "name": name} for k, name in enumerate(NAMES)]
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    return path


def results(dets: list, by: str) -> list[dict]:
    """COCO results rows, images and classes named by ids or by names."""
    out = []
    for i, found in enumerate(dets):
        for c, x1, y1, x2, y2, s in found:
            row = {"bbox": [x1, y1, x2 - x1, y2 - y1], "score": s}
            if by == "ids":
                row |= {"image_id": 100 + i, "category_id": cat_id(c)}
            else:
                row |= {"file_name": f"im{i}.png", "category_name": NAMES[c]}
            out.append(row)
    return out


def write_yolo_truth(root: Path, truth: list, splits: list[str] | None = None) -> Path:
    for i, rows in enumerate(truth):
        sub = f"/{splits[i]}" if splits else ""
        save(np.zeros((H, W, 3), np.uint8), root / f"images{sub}/im{i}.png")
        lines = [
            f"{c} {(x1 + x2) / 2 / W} {(y1 + y2) / 2 / H} {(x2 - x1) / W} {(y2 - y1) / H}"
            for c, x1, y1, x2, y2 in rows
        ]
        label = root / f"labels{sub}/im{i}.txt"
        label.parent.mkdir(parents=True, exist_ok=True)
        label.write_text("\n".join(lines) + "\n")
    (root / "data.yaml").write_text("names: [car, ship, tree]\n")
    return root


def pycocotools_stats(truth_json: Path, dets: list[dict]) -> np.ndarray:
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(truth_json))
        dt = gt.loadRes(dets) if dets else COCO()
        ev = COCOeval(gt, dt, "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev.stats


OVERALL = "map map50 map75 map_small map_medium map_large ar1 ar10 ar100".split()


def assert_matches_reference(metrics: dict, ref: np.ndarray) -> None:
    got = [metrics["overall"][k] for k in OVERALL]
    want = [None if v == -1 else round(float(v), 6) for v in ref[: len(OVERALL)]]
    assert got == pytest.approx(want, abs=1e-6)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_coco_results_by_id_agree_with_pycocotools(tmp_path, seed):
    truth, dets = case(seed)
    gt = write_coco_truth(tmp_path / "truth.json", truth)
    pred = tmp_path / "dets.json"
    rows = results(dets, "ids")
    pred.write_text(json.dumps(rows))
    metrics = score(pred, gt)
    assert metrics["task"] == "detect"
    assert metrics["classes"] == NAMES
    assert metrics["inputs"]["detections"] == len(rows)
    assert_matches_reference(metrics, pycocotools_stats(gt, rows))


def test_names_against_a_yolo_truth_give_the_same_numbers(tmp_path):
    """liandan predict's detections.json (file_name, category_name) against the same boxes
    as a YOLO dataset: the numbers pycocotools gives on the COCO form."""
    truth, dets = case(3)
    gt = write_coco_truth(tmp_path / "truth.json", truth)
    yolo = write_yolo_truth(tmp_path / "yolo", truth)
    pred = tmp_path / "detections.json"
    pred.write_text(json.dumps(results(dets, "names")))
    metrics = score(pred, yolo)
    assert metrics["inputs"]["truth_format"] == "yolo"
    # YOLO's normalized text round-trips the pixel boxes to ~1e-6 px: same matches
    assert_matches_reference(metrics, pycocotools_stats(gt, results(dets, "ids")))


def test_yolo_text_predictions_score_like_the_json(tmp_path):
    truth, dets = case(4)
    yolo = write_yolo_truth(tmp_path / "yolo", truth)
    folder = tmp_path / "predict" / "labels"
    folder.mkdir(parents=True)
    for i, found in enumerate(dets):
        lines = [
            f"{c} {(x1 + x2) / 2 / W} {(y1 + y2) / 2 / H} {(x2 - x1) / W} {(y2 - y1) / H} {s}"
            for c, x1, y1, x2, y2, s in found
        ]
        (folder / f"im{i}.txt").write_text("\n".join(lines))
    pred = tmp_path / "detections.json"
    pred.write_text(json.dumps(results(dets, "names")))
    from_txt = score(tmp_path / "predict", yolo)
    from_json = score(pred, yolo)
    assert from_txt["inputs"]["pred_format"] == "yolo-txt"
    assert from_txt["overall"]["map"] == pytest.approx(from_json["overall"]["map"], abs=1e-6)
    assert from_txt["per_class"] == from_json["per_class"]


def test_perfect_detections_score_one_and_a_wrong_class_lands_off_the_diagonal(tmp_path):
    truth = [[(0, 2.0, 2.0, 20.0, 20.0), (1, 30.0, 10.0, 50.0, 40.0)]]
    gt = write_coco_truth(tmp_path / "truth.json", truth)
    pred = tmp_path / "dets.json"
    pred.write_text(json.dumps(results([[(0, 2.0, 2.0, 20.0, 20.0, 0.9)]], "names")))
    metrics = score(pred, gt)
    assert metrics["per_class"]["car"]["ap"] == 1.0
    assert metrics["per_class"]["ship"]["recall"] == 0.0
    cm = np.array(metrics["confusion_matrix"])
    assert cm[1, 3] == 1  # the ship is a miss: truth ship, background column
    pred.write_text(
        json.dumps(
            results([[(0, 2.0, 2.0, 20.0, 20.0, 0.9), (2, 30.0, 10.0, 50.0, 40.0, 0.8)]], "names")
        )
    )
    cm = np.array(score(pred, gt)["confusion_matrix"])
    assert cm[1, 2] == 1 and cm[1, 3] == 0  # ship detected as tree
    assert metrics["confusion_labels"] == [*NAMES, "background"]


def test_category_ids_against_a_yolo_truth_are_refused_as_ambiguous(tmp_path):
    truth, dets = case(5)
    yolo = write_yolo_truth(tmp_path / "yolo", truth)
    rows = [
        {k: v for k, v in r.items() if k != "category_name"} | {"category_id": 1}
        for r in results(dets, "names")
    ]
    pred = tmp_path / "dets.json"
    pred.write_text(json.dumps(rows))
    with pytest.raises(DataError) as err:
        score(pred, yolo)
    assert "ambiguous" in str(err.value) and "category_name" in str(err.value)


def test_every_unpairable_detection_is_named_in_one_error(tmp_path):
    truth = [[(0, 2.0, 2.0, 20.0, 20.0)], []]
    yolo = write_yolo_truth(tmp_path / "yolo", truth)
    rows = [
        {"file_name": "im0.png", "category_name": "car", "bbox": [2, 2, 18, 18], "score": 0.9},
        {"file_name": "other.png", "category_name": "car", "bbox": [2, 2, 18, 18], "score": 0.9},
        {"file_name": "im1.png", "category_name": "plane", "bbox": [2, 2, 18, 18], "score": 0.5},
        {"file_name": "im1.png", "category_name": "car", "bbox": [2, 2, 18], "score": 0.5},
        {"file_name": "im1.png", "category_name": "car", "bbox": [2, 2, 18, 18]},
        {"image_id": 3, "category_name": "car", "bbox": [2, 2, 18, 18], "score": 0.5},
    ]
    pred = tmp_path / "dets.json"
    pred.write_text(json.dumps(rows))
    with pytest.raises(DataError) as err:
        score(pred, yolo)
    items = err.value.items
    assert len(items) == 5
    assert "detection 1: no image named other.*" in items[0]
    assert "'plane' is not a truth class" in items[1]
    assert "is not [x, y, w, h]" in items[2]
    assert "score None" in items[3]
    assert "only a COCO truth has image ids" in items[4]


def test_yolo_lines_without_confidence_are_refused(tmp_path):
    truth = [[(0, 2.0, 2.0, 20.0, 20.0)]]
    yolo = write_yolo_truth(tmp_path / "yolo", truth)
    folder = tmp_path / "pred"
    folder.mkdir()
    (folder / "im0.txt").write_text("0 0.2 0.2 0.3 0.3\n7 0.2 0.2 0.3 0.3 0.9\n")
    with pytest.raises(DataError) as err:
        score(folder, yolo)
    assert "im0.txt:1: 5 values: no confidence" in err.value.items[0]
    assert "im0.txt:2: class 7 is not a truth class index (0..2)" in err.value.items[1]


def test_only_the_splits_with_detections_are_scored(tmp_path):
    """Validation predictions against a whole YOLO dataset: the training images' boxes
    are not counted as misses."""
    truth = [
        [(0, 2.0, 2.0, 20.0, 20.0)],
        [(1, 30.0, 10.0, 50.0, 40.0)],
        [(0, 5.0, 5.0, 25.0, 25.0)],
    ]
    yolo = write_yolo_truth(tmp_path / "yolo", truth, splits=["train", "train", "val"])
    pred = tmp_path / "dets.json"
    pred.write_text(json.dumps(results([[], [], [(0, 5.0, 5.0, 25.0, 25.0, 0.9)]], "names")))
    metrics = score(pred, yolo)
    assert metrics["inputs"]["splits"] == ["val"]
    assert metrics["inputs"]["images"] == 1 and metrics["inputs"]["truth_boxes"] == 1
    assert metrics["overall"]["recall"] == 1.0


def test_mask_options_are_refused_for_boxes(tmp_path):
    truth, dets = case(6)
    gt = write_coco_truth(tmp_path / "truth.json", truth)
    pred = tmp_path / "dets.json"
    pred.write_text(json.dumps(results(dets, "ids")))
    from liandan.errors import ConfigError

    with pytest.raises(ConfigError, match="ignore_index is for masks"):
        score(pred, gt, ignore_index=0)


def test_cli_scores_boxes_and_writes_metrics_and_the_confusion_plot(tmp_path, capsys):
    truth, dets = case(7)
    gt = write_coco_truth(tmp_path / "truth.json", truth)
    pred = tmp_path / "dets.json"
    rows = results(dets, "ids")
    pred.write_text(json.dumps(rows))
    out = tmp_path / "out"
    code = main(["score", str(pred), str(gt), "--out", str(out), "--score-threshold", "0.5"])
    assert code == 0
    written = json.loads((out / "metrics.json").read_text())
    assert written["overall"]["score_threshold"] == 0.5
    assert_matches_reference(written, pycocotools_stats(gt, rows))
    assert (out / "confusion_matrix.png").stat().st_size > 0
    assert "against" in capsys.readouterr().out


def test_cli_names_the_bad_detection_and_exits_1_without_traceback(tmp_path, capsys):
    truth = [[(0, 2.0, 2.0, 20.0, 20.0)]]
    yolo = write_yolo_truth(tmp_path / "yolo", truth)
    pred = tmp_path / "dets.json"
    pred.write_text(
        json.dumps(
            [{"file_name": "nope.png", "category_name": "car", "bbox": [1, 1, 5, 5], "score": 1}]
        )
    )
    assert main(["score", str(pred), str(yolo)]) == 1
    err = capsys.readouterr().err
    assert "no image named nope.*" in err and "Traceback" not in err


def test_detection_confusion_plot_labels_the_background_row(tmp_path, monkeypatch):
    import matplotlib.figure

    from liandan.reporting.figures import plot_confusion

    figures = []
    monkeypatch.setattr(
        matplotlib.figure.Figure, "savefig", lambda fig, *a, **k: figures.append(fig)
    )
    metrics = {
        "classes": ["a", "b"],
        "confusion_labels": ["a", "b", "background"],
        "confusion_matrix": [[3, 0, 1], [0, 2, 0], [1, 0, 0]],
    }
    plot_confusion(metrics, tmp_path)
    ax = figures[0].axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["a", "b", "background"]
    assert len(ax.texts) == 9  # every cell, the background row and column included
