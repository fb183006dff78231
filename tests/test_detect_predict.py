"""predict.score_threshold and predict.nms_iou reach the detector of a Predictor, and the
threshold of metrics.json's precision, recall and F1."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from liandan.data.layouts import Sample
from liandan.data.transforms import Normalizer
from liandan.prediction import Predictor
from liandan.tasks import get_task
from liandan.tasks.detect.boxes import ImageBoxes
from liandan.tasks.detect.models import ARCHS, build_detector
from liandan.tasks.detect.predict import SCORE_THRESHOLD, detect_array

CLASSES = ["a", "b", "c"]


def predictor(arch: str = "fcos", **settings: float | None) -> Predictor:
    """A Predictor of an untrained detector (its scores sit near FCOS's prior, 0.01),
    with ``settings`` as the predict keys it was made with."""
    torch.manual_seed(0)
    model = build_detector(arch, "test_resnet", len(CLASSES), 3, 64, fpn_channels=64)
    meta = {
        "task": "detect",
        "classes": CLASSES,
        "normalization": Normalizer("unit").to_dict(),
        "in_channels": 3,
        "image_size": 64,
    }
    made = Predictor(model, meta, device="cpu")
    for key, value in settings.items():  # predict.<key> of the run
        setattr(made, key, value)
    return made


def image(height: int = 48) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 255, (height, 64, 3)).astype(np.uint8)


@pytest.mark.parametrize("arch", ARCHS)
def test_nms_iou_and_score_floor_reach_each_detector(arch: str) -> None:
    p = predictor(arch)
    floor, own_iou = p.model.built_postprocess
    assert floor == 0.05 and own_iou == (0.6 if arch == "fcos" else 0.5)
    p.model.set_postprocess(0.01, 0.3)
    assert p.model.postprocess == (0.01, 0.3)
    p.model.set_postprocess(None, None)  # back to the detector as built
    assert p.model.postprocess == (floor, own_iou)


def test_score_threshold_and_nms_iou_change_what_predict_keeps() -> None:
    default = detect_array(predictor(), image(), "x.png")
    assert len(default) == 0  # untrained: nothing scores 0.25
    low = detect_array(predictor(score_threshold=0.001), image(), "x.png")
    assert len(low) > 10 and low[:, 4].min() >= 0.001
    # RetinaNet's untrained boxes are its anchors: nine overlapping ones per location
    # (a square image: its boxes are the detector's, unchanged by the letterbox)
    low = {"score_threshold": 0.001}
    strict = detect_array(predictor("retinanet", **low, nms_iou=0.1), image(64), "x.png")
    loose = detect_array(predictor("retinanet", **low, nms_iou=0.95), image(64), "x.png")
    assert len(strict) < len(loose)
    # after NMS at 0.1, no two boxes of one class overlap by more than IoU 0.1
    from liandan.tasks.detect.matching import box_iou

    for k in np.unique(strict[:, 5]):
        boxes = strict[strict[:, 5] == k, :4].astype(np.float64)
        iou = box_iou(boxes, boxes)
        np.fill_diagonal(iou, 0.0)
        assert iou.max(initial=0.0) <= 0.1 + 1e-6


def test_score_threshold_is_metrics_jsons(tmp_path: Path) -> None:
    path = tmp_path / "x.png"
    Image.fromarray(image()).save(path)
    rec = ImageBoxes(path, 64, 48, [[8, 8, 40, 30]], [1])
    checked = SimpleNamespace(
        index=SimpleNamespace(root=tmp_path, source=SimpleNamespace(images=[rec])), images={}
    )
    task = get_task("detect")

    def evaluated(**settings: float | None) -> dict:
        p = predictor(**settings)
        results = task.evaluate_samples(p, checked, [Sample(path, 0, "val")], None)  # type: ignore[arg-type]
        return task.score_results(results, CLASSES, "val")["overall"]

    default = evaluated()
    assert default["score_threshold"] == SCORE_THRESHOLD and default["precision"] is None
    low = evaluated(score_threshold=0.001)
    assert low["score_threshold"] == 0.001
    assert low["precision"] is not None and low["precision"] < 0.5  # untrained: mostly wrong
    assert low["map"] == pytest.approx(default["map"])  # mAP reads every score anyway
