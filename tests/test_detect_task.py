"""Detection through the command line: YOLO and COCO folders train, evaluate, and
refuse clearly what is not there yet; bad label files are named in one error."""

from __future__ import annotations

import csv
import json
import shutil
from pathlib import Path

import pytest
from PIL import Image

from liandan.cli import main
from liandan.tasks.detect.demo import CLASS_NAMES, make_detect_demo
from liandan.tasks.detect.formats import read_detection

# a few small steps: seconds on a CPU
QUICK = [
    "--no-plan",
    "model.encoder=resnet18",
    "data.image_size=64",
    "train.batch_size=8",
    "train.progress=false",
    "train.num_workers=0",
]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The demo's shapes, tiny: 24 training and 8 validation images of 64 px."""
    root = tmp_path_factory.mktemp("shapes") / "data"
    return make_detect_demo(root, n_train=24, n_val=8, size=64, scene_size=64)


@pytest.fixture(scope="module")
def trained(shapes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    runs = tmp_path_factory.mktemp("runs")
    assert main(["train", str(shapes), *QUICK, "train.epochs=3", "--out", str(runs)]) == 0
    return runs / "train"


def test_a_yolo_folder_trains_with_coco_metrics(trained: Path, shapes: Path) -> None:
    metrics = json.loads((trained / "metrics.json").read_text())
    assert metrics["task"] == "detect" and metrics["split"] == "val"
    assert metrics["classes"] == list(CLASS_NAMES)
    overall = metrics["overall"]
    for key in ("map", "map50", "map75", "recall", "f1"):
        assert 0.0 <= overall[key] <= 1.0, key
    # precision is undefined (None), not 0, when no box scores above the threshold
    predicted = sum(row[c] for row in metrics["confusion_matrix"] for c in range(3))
    assert (overall["precision"] is None) == (predicted == 0), overall
    assert overall["precision"] is None or 0.0 <= overall["precision"] <= 1.0
    assert overall["map50"] >= overall["map"] >= 0.0
    assert set(metrics["per_class"]) == set(CLASS_NAMES)
    k = len(CLASS_NAMES)
    matrix = metrics["confusion_matrix"]
    assert len(matrix) == k + 1 and all(len(row) == k + 1 for row in matrix)
    assert metrics["confusion_labels"][-1] == "background"
    # every truth box is in one row of the matrix: matched, confused, or missed
    truth = read_detection(shapes)
    val_boxes = sum(len(r.boxes) for r in truth.images if r.split == "val")
    assert sum(sum(row) for row in matrix[:k]) == val_boxes
    # training lowered the loss
    rows = list(csv.DictReader((trained / "history.csv").open()))
    assert len(rows) == 3
    assert float(rows[-1]["train_loss"]) < float(rows[0]["train_loss"])
    assert (trained / "model" / "model.json").is_file()


def test_evaluate_reproduces_the_runs_metrics(trained: Path, tmp_path: Path) -> None:
    written = json.loads((trained / "metrics.json").read_text())
    run = tmp_path / "copy"
    shutil.copytree(trained, run)
    (run / "metrics.json").unlink()
    assert main(["evaluate", str(run)]) == 0
    again = json.loads((run / "metrics.json").read_text())
    assert again["overall"]["map"] == pytest.approx(written["overall"]["map"], abs=1e-6)
    assert again["confusion_matrix"] == written["confusion_matrix"]


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_the_export_predicts_the_runs_boxes(
    trained: Path, shapes: Path, tmp_path: Path, fmt: str
) -> None:
    """`liandan export` writes the detector's dense outputs and the postprocess steps;
    predicting from the bundle finds the run's own boxes (>= 99% at IoU 0.9, same class)."""
    from liandan.tasks.detect.export import MATCH_IOU, MIN_MATCHED

    bundle = tmp_path / fmt
    assert main(["export", str(trained), "--format", fmt, "--out", str(bundle)]) == 0
    info = json.loads((bundle / "model.json").read_text())["export"]
    assert info["output"]["names"] == ["boxes", "scores"]
    assert info["max_abs_diff"]["boxes_matched"] >= MIN_MATCHED
    assert sum(info["postprocess"]["level_sizes"]) > 0
    images = sorted((shapes / "images" / "val").glob("*.png"))[:4]
    found = {}
    for name, source in (("run", trained), ("bundle", bundle)):
        out = tmp_path / f"pred-{fmt}-{name}"
        keys = ["predict.score_threshold=0.05"]
        assert main(["predict", str(source), *map(str, images), "--out", str(out), *keys]) == 0
        found[name] = json.loads((out / "detections.json").read_text())
    assert found["run"], "the trained detector finds something above 0.05"
    matched = 0
    for det in found["run"]:
        x, y, w, h = det["bbox"]
        for other in found["bundle"]:
            if other["image_id"] != det["image_id"] or other["category_id"] != det["category_id"]:
                continue
            ox, oy, ow, oh = other["bbox"]
            iw = max(0.0, min(x + w, ox + ow) - max(x, ox))
            ih = max(0.0, min(y + h, oy + oh) - max(y, oy))
            union = w * h + ow * oh - iw * ih
            if (iw * ih / union if union > 0 else float(det["bbox"] == other["bbox"])) >= MATCH_IOU:
                matched += 1
                break
    assert matched / len(found["run"]) >= MIN_MATCHED
    assert abs(len(found["bundle"]) - len(found["run"])) <= max(1, len(found["run"]) // 100)


def test_a_two_stage_detector_is_not_exported(tmp_path: Path) -> None:
    from liandan.errors import ConfigError
    from liandan.tasks import get_task
    from liandan.tasks.detect.models import build_detector

    model = build_detector("fasterrcnn", "resnet18", 3, 3, 64).eval()
    meta = {"in_channels": 3, "classes": ["a", "b", "c"], "arch": "fasterrcnn"}
    with pytest.raises(ConfigError, match="not yet available for the two-stage fasterrcnn"):
        get_task("detect").export_module(model, meta, (64, 64))


def test_the_report_shows_boxes_curves_sizes_and_errors(trained: Path, tmp_path: Path) -> None:
    """Training writes report.html for a detector, and `liandan report` rebuilds it:
    the data counted in boxes, the detection sections and their plots."""
    assert (trained / "report.html").is_file()  # written at the end of training
    run = tmp_path / "copy"
    shutil.copytree(trained, run)
    (run / "report.html").unlink()
    assert main(["report", str(run)]) == 0
    html = (run / "report.html").read_text()
    for section in ("precision-recall", "confidence threshold", "box sizes", "errors gallery"):
        assert f">{section}<" in html, section
    assert "split (boxes)" in html and "labelled boxes" in html
    for plot in ("pr_curves", "confidence_curves", "box_sizes", "confusion_matrix"):
        assert (run / "plots" / f"{plot}.png").stat().st_size > 1000, plot


def test_k_fold_training_is_refused_before_a_fold_trains(
    shapes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    runs = tmp_path / "runs"
    assert main(["train", str(shapes), *QUICK, "--folds", "2", "--out", str(runs)]) == 1
    err = capsys.readouterr().err
    assert "k-fold training (--folds, data.folds) is not yet available for detection" in err
    assert not list(runs.rglob("*.ckpt")) and not list(runs.rglob("metrics.json"))


def test_predict_writes_coco_results_and_previews(
    trained: Path, shapes: Path, tmp_path: Path
) -> None:
    images = sorted((shapes / "images" / "val").glob("*.png"))[:3]
    out = tmp_path / "pred"
    assert main(["predict", str(trained), *map(str, images), "--out", str(out)]) == 0
    found = json.loads((out / "detections.json").read_text())
    assert isinstance(found, list)
    for det in found:
        assert 1 <= det["image_id"] <= len(images)
        assert det["file_name"] == images[det["image_id"] - 1].name
        assert det["category_name"] == CLASS_NAMES[det["category_id"] - 1]
        x, y, w, h = det["bbox"]
        assert 0 <= x and 0 <= y and w >= 0 and h >= 0 and x + w <= 64.01 and y + h <= 64.01
        assert 0.25 <= det["score"] <= 1.0
    for image in images:
        preview = Image.open(out / "preview" / f"{image.stem}.png")
        assert preview.size == Image.open(image).size and preview.mode == "RGB"


def test_score_threshold_and_nms_iou_keys_reach_predict_and_evaluate(
    trained: Path, shapes: Path, tmp_path: Path
) -> None:
    images = sorted((shapes / "images" / "val").glob("*.png"))[:3]

    def predicted(*keys: str) -> list[dict]:
        out = tmp_path / "-".join(keys or ("default",))
        assert main(["predict", str(trained), *map(str, images), "--out", str(out), *keys]) == 0
        return json.loads((out / "detections.json").read_text())  # type: ignore[no-any-return]

    low = predicted("predict.score_threshold=0.01")
    assert len(low) > len(predicted()) and min(d["score"] for d in low) >= 0.01
    assert len(predicted("predict.score_threshold=0.01", "predict.nms_iou=0.1")) < len(low)
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    assert main(["evaluate", str(run), "predict.score_threshold=0.05"]) == 0
    overall = json.loads((run / "metrics.json").read_text())["overall"]
    written = json.loads((trained / "metrics.json").read_text())["overall"]
    assert overall["score_threshold"] == 0.05 and written["score_threshold"] == 0.25
    assert overall["map"] == pytest.approx(written["map"], abs=1e-6)  # mAP reads every score


def test_tta_reaches_predict_and_evaluate(trained: Path, shapes: Path, tmp_path: Path) -> None:
    """--tta (predict.tta) runs the detector over flips and fuses the boxes: predictions
    stay in the image, and evaluation under TTA is a different, valid measurement."""
    images = sorted((shapes / "images" / "val").glob("*.png"))[:3]
    out = tmp_path / "pred"
    keys = ["--tta", "predict.score_threshold=0.01"]
    assert main(["predict", str(trained), *map(str, images), "--out", str(out), *keys]) == 0
    found = json.loads((out / "detections.json").read_text())
    assert found and all(0.01 <= d["score"] <= 1.0 for d in found)
    for d in found:
        x, y, w, h = d["bbox"]
        assert -0.01 <= x and -0.01 <= y and x + w <= 64.01 and y + h <= 64.01
    run = tmp_path / "run"
    shutil.copytree(trained, run)
    assert main(["evaluate", str(run), "predict.tta=true"]) == 0
    tta = json.loads((run / "metrics.json").read_text())
    plain = json.loads((trained / "metrics.json").read_text())
    assert 0.0 <= tta["overall"]["map"] <= 1.0
    # a different measurement: the fused boxes are not the plain ones (after 9 steps the
    # maps can both be 0; the boxes, matched or not, are counted in the confusion matrix)
    assert tta["confusion_matrix"] != plain["confusion_matrix"]


def test_a_coco_json_folder_trains(shapes: Path, tmp_path: Path) -> None:
    """images/ + annotations/instances_{train,val}.json, as COCO ships."""
    root = tmp_path / "coco"
    source = read_detection(shapes)
    for split in ("train", "val"):
        images, annotations = [], []
        for i, rec in enumerate(r for r in source.images if r.split == split):
            target = root / "images" / rec.path.name
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(rec.path, target)
            images.append({"id": i + 1, "file_name": rec.path.name, "width": rec.width,
                           "height": rec.height})  # fmt: skip
            for box, cls in zip(rec.boxes.tolist(), rec.classes.tolist(), strict=True):
                x1, y1, x2, y2 = box
                annotations.append({"id": len(annotations) + 1, "image_id": i + 1,
                                    "category_id": cls + 1, "bbox": [x1, y1, x2 - x1, y2 - y1],
                                    "area": (x2 - x1) * (y2 - y1), "iscrowd": 0})  # fmt: skip
        coco = {
            "images": images,
            "annotations": annotations,
            "categories": [{"id": i + 1, "name": n} for i, n in enumerate(CLASS_NAMES)],
        }
        (root / "annotations").mkdir(exist_ok=True)
        (root / "annotations" / f"instances_{split}.json").write_text(json.dumps(coco))
    runs = tmp_path / "runs"
    assert main(["train", str(root), *QUICK, "train.epochs=1", "--out", str(runs)]) == 0
    metrics = json.loads((runs / "train" / "metrics.json").read_text())
    assert metrics["task"] == "detect" and metrics["classes"] == list(CLASS_NAMES)
    val_boxes = sum(len(r.boxes) for r in source.images if r.split == "val")
    assert sum(sum(row) for row in metrics["confusion_matrix"][:-1]) == val_boxes


def test_bad_label_files_are_named_in_one_error(
    shapes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    root = tmp_path / "bad"
    shutil.copytree(shapes, root)
    labels = sorted((root / "labels" / "train").glob("*.txt"))
    unknown, outside = labels[0], labels[1]
    unknown.write_text("7 0.5 0.5 0.2 0.2\n")  # class 7 of 3
    outside.write_text("0 0.95 0.5 0.4 0.2\n")  # reaches 1.15 of the width
    Image.new("RGB", (8, 8)).save(root / "images" / "train" / "extra.png")  # background
    runs = tmp_path / "runs"
    assert main(["train", str(root), *QUICK, "train.epochs=1", "--out", str(runs)]) == 1
    err = capsys.readouterr().err
    assert unknown.name in err and outside.name in err
    assert "extra" not in err  # an image without labels is background, not an error
    assert not (runs / "train" / "metrics.json").exists()
    # liandan scan names them the same way, with the line and what is wrong
    assert main(["scan", str(root)]) == 1
    captured = capsys.readouterr()
    err = captured.err + captured.out
    assert f"{unknown.name}: error: line 1: class id 7" in err
    assert f"{outside.name}: error: line 1: box" in err and "leaves the 64x64 image" in err


@pytest.mark.slow
def test_a_short_training_finds_objects_far_better_than_chance(tmp_path: Path) -> None:
    """One class (any shape), 100 steps at 64 px (about 30 s on 2 CPU cores): mAP@.5
    well above that of random boxes, which is what an untrained detector gives."""
    import numpy as np

    from liandan.tasks.detect.metrics import Detections, evaluate_detections

    root = make_detect_demo(tmp_path / "one", n_train=32, n_val=8, size=64, scene_size=64)
    for path in (root / "labels").rglob("*.txt"):
        lines = path.read_text().splitlines()
        path.write_text("".join(f"0{line[1:]}\n" for line in lines))
    (root / "data.yaml").write_text("names: [shape]\n")
    runs = tmp_path / "runs"
    steps = ["train.epochs=5", "train.steps_per_epoch=20", "optim.lr=2e-3"]
    assert main(["train", str(root), *QUICK, *steps, "--out", str(runs)]) == 0
    trained = json.loads((runs / "train" / "metrics.json").read_text())["overall"]["map50"]

    val = [r for r in read_detection(root).images if r.split == "val"]
    rng = np.random.default_rng(0)
    guesses = []
    for _ in val:  # 20 boxes of the shapes' sizes (6-19 px) anywhere in each image
        xy = rng.uniform(0, 64 - 19, (20, 2))
        boxes = np.hstack([xy, xy + rng.uniform(6, 19, (20, 2))])
        guesses.append(Detections(boxes, rng.random(20), np.zeros(20, int)))
    chance = evaluate_detections(val, guesses, 1).summary(["shape"])["overall"]["map50"]
    assert trained > 0.15 and trained > 5 * chance, (trained, chance)


def test_a_yolo_folder_is_planned_and_the_plan_names_its_layout(
    shapes: Path, tmp_path: Path
) -> None:
    """``liandan plan`` writes the layout it found; the config must accept it (it refused
    ``data.layout: yolo``, so ``liandan train DATA`` failed without ``--no-plan``)."""
    import yaml

    from liandan.config import Config

    out = tmp_path / "plan.yaml"
    assert main(["plan", str(shapes), "--output", str(out)]) == 0
    plan = yaml.safe_load(out.read_text())
    assert plan["task"] == "detect" and plan["data"]["layout"] == "yolo"
    cfg = Config.load(out, [])
    assert cfg.data.layout == "yolo"
    # on a CPU (as here) the narrower pyramid: more steps in the same time
    assert cfg.model.fpn_channels == 128
    assert "model.fpn_channels" in (tmp_path / "plan.md").read_text()


def test_several_devices_are_refused_before_anything_is_written(
    shapes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from liandan.api import train_config
    from liandan.data.datamodule import build_data
    from liandan.errors import ConfigError

    several = [*QUICK, "train.accelerator=cpu", "train.devices=2"]
    cfg, _ = train_config(shapes, None, several[1:], plan=False)
    with pytest.raises(ConfigError) as err:
        build_data(cfg)  # the data is built before a run folder is made
    assert err.value.where == "train.devices"
    runs = tmp_path / "runs"
    assert main(["train", str(shapes), *several, "--out", str(runs)]) == 1
    out = capsys.readouterr().err
    assert "training on several devices or machines is not yet available for detection" in out
    assert "train.devices" in out
    assert not runs.exists() or not any(runs.iterdir())


def _tiny_boxes(root: Path, side: int, box: float) -> Path:
    """A YOLO folder of 12 gray ``side`` px images, each with two ``box`` px squares."""
    import numpy as np

    for i in range(12):
        split = "val" if i >= 9 else "train"
        image = root / "images" / split / f"{i}.png"
        image.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(np.full((side, side, 3), 90, np.uint8)).save(image)
        label = root / "labels" / split / f"{i}.txt"
        label.parent.mkdir(parents=True, exist_ok=True)
        w = box / side
        label.write_text(f"0 0.3 0.3 {w} {w}\n1 0.7 0.6 {w} {w}\n")
    (root / "data.yaml").write_text("names: [car, boat]\n")
    return root


@pytest.mark.parametrize(
    ("side", "box", "size", "warned"),
    [(96, 4.0, 192, False), (128, 1.5, 256, True), (128, 20.0, 128, False)],
)
def test_the_plan_enlarges_the_input_so_that_small_boxes_survive(
    tmp_path: Path, side: int, box: float, size: int, warned: bool
) -> None:
    """The fingerprint carries the box statistics and plan_input reads them: small boxes
    get a larger input (up to the CPU cap), and boxes still too small are said to be."""
    from liandan.planning import plan

    planned = plan(_tiny_boxes(tmp_path / "data", side, box), device="cpu", use_cache=False)
    assert planned.fingerprint.boxes["boxes"] == 24
    assert planned.fingerprint.boxes["relative_size"]["p5"] == pytest.approx(box / side, abs=1e-3)
    assert planned.config.data.image_size == size
    reason = planned.reasons["data.image_size"]
    assert ("smallest boxes" in reason) == (size != side or warned)
    assert ("may be missed" in reason) == warned


def test_tune_searches_detectors_on_map(shapes: Path, tmp_path: Path) -> None:
    """`liandan tune` runs detection trials, maximizing val/map, over the default space
    (the shared keys and the detector family)."""
    import optuna
    import yaml

    from liandan.tuning import load_space

    assert load_space(None, "detect")["model.arch"] == ["fcos", "retinanet"]
    space = tmp_path / "space.yaml"
    space.write_text("model.arch: [fcos, retinanet]\n")
    args = ["tune", str(shapes), "--space", str(space), "--name", "d", "--trials", "2"]
    tiny = [*QUICK[1:], "train.epochs=1", "train.steps_per_epoch=2"]  # tune takes no --no-plan
    assert main([*args, *tiny, "--out", str(tmp_path / "runs")]) == 0
    folder = tmp_path / "runs" / "tune-d"
    study = optuna.load_study(study_name="d", storage=f"sqlite:///{folder / 'study.db'}")
    assert study.direction == optuna.study.StudyDirection.MAXIMIZE
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    assert len(done) == 2 and all(0.0 <= t.value <= 1.0 for t in done)
    best = yaml.safe_load((folder / "best.yaml").read_text())
    assert best["task"] == "detect" and best["model"]["arch"] in ("fcos", "retinanet")


def _as_voc(shapes: Path, root: Path) -> Path:
    """The shapes dataset rewritten as Pascal VOC: Annotations/*.xml (1-based corners),
    JPEGImages/, ImageSets/Main/{train,val}.txt."""
    truth = read_detection(shapes)
    lists: dict[str, list[str]] = {}
    for rec in truth.images:
        (root / "JPEGImages").mkdir(parents=True, exist_ok=True)
        shutil.copy(rec.path, root / "JPEGImages" / rec.path.name)
        objects = "".join(
            f"<object><name>{truth.class_names[int(c)]}</name><difficult>0</difficult><bndbox>"
            f"<xmin>{x1 + 1:.2f}</xmin><ymin>{y1 + 1:.2f}</ymin><xmax>{x2:.2f}</xmax>"
            f"<ymax>{y2:.2f}</ymax></bndbox></object>"
            for (x1, y1, x2, y2), c in zip(rec.boxes.tolist(), rec.classes, strict=True)
        )
        xml = (
            f"<annotation><filename>{rec.path.name}</filename><size><width>{rec.width}</width>"
            f"<height>{rec.height}</height><depth>3</depth></size>{objects}</annotation>"
        )
        (root / "Annotations").mkdir(exist_ok=True)
        (root / "Annotations" / f"{rec.path.stem}.xml").write_text(xml)
        lists.setdefault(str(rec.split), []).append(rec.path.stem)
    (root / "ImageSets" / "Main").mkdir(parents=True)
    for split, stems in lists.items():
        (root / "ImageSets" / "Main" / f"{split}.txt").write_text("\n".join(stems) + "\n")
    (root / "classes.txt").write_text("\n".join(truth.class_names) + "\n")
    return root


def test_a_pascal_voc_folder_trains_and_a_voc_with_masks_too_is_ambiguous(
    shapes: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from liandan.data.layouts import find_samples

    voc = _as_voc(shapes, tmp_path / "voc")
    index = find_samples(voc)
    assert (index.layout, index.task) == ("voc-boxes", "detect")
    yolo = read_detection(shapes)
    assert sum(len(r.boxes) for r in index.source.images) == sum(len(r.boxes) for r in yolo.images)
    runs = tmp_path / "runs"
    assert main(["train", str(voc), *QUICK, "train.epochs=1", "--out", str(runs)]) == 0
    metrics = json.loads((runs / "train" / "metrics.json").read_text())
    val_boxes = sum(len(r.boxes) for r in yolo.images if r.split == "val")
    assert sum(sum(row) for row in metrics["confusion_matrix"][:-1]) == val_boxes
    # VOC 2012 holds boxes and masks: without a task the folder reads two ways
    (voc / "SegmentationClass").mkdir()
    assert main(["scan", str(voc)]) == 1
    err = capsys.readouterr().err
    assert "task=detect" in err and "data.layout=voc" in err
    assert find_samples(voc, task="detect").layout == "voc-boxes"
