"""The report's detection numbers: the confidence curves and the gallery's per-image
errors agree with the metrics (checked against pycocotools elsewhere) at every
threshold, crowd boxes included."""

from __future__ import annotations

import numpy as np
import pytest

from liandan.tasks.detect.boxes import ImageBoxes
from liandan.tasks.detect.matching import Detections
from liandan.tasks.detect.metrics import evaluate_detections
from liandan.tasks.detect.report import THRESHOLDS, confidence_curves, image_matches

K = 3


def case(seed: int, images: int = 8) -> tuple[list[ImageBoxes], list[Detections]]:
    """Truth with some crowd boxes; detections: jittered hits, wrong classes, strays."""
    rng = np.random.default_rng(seed)
    truth, preds = [], []
    for i in range(images):
        n = int(rng.integers(0, 6))
        xy = rng.uniform(0, 80, (n, 2))
        wh = rng.uniform(4, 30, (n, 2))
        boxes = np.hstack([xy, xy + wh])
        classes = rng.integers(0, K, n)
        crowd = rng.random(n) < 0.15
        truth.append(ImageBoxes(f"{i}.png", 128, 128, boxes, classes, iscrowd=crowd))
        hit = rng.random(n) < 0.7
        det = boxes[hit] + rng.normal(0, 2, (int(hit.sum()), 4))
        cls = np.where(
            rng.random(int(hit.sum())) < 0.85, classes[hit], rng.integers(0, K, int(hit.sum()))
        )
        m = int(rng.integers(0, 4))
        stray_xy = rng.uniform(0, 100, (m, 2))
        det = np.vstack([det, np.hstack([stray_xy, stray_xy + 10])])
        cls = np.concatenate([cls, rng.integers(0, K, m)])
        preds.append(Detections(det, rng.random(len(det)), cls))
    return truth, preds


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_confidence_curves_agree_with_the_metrics_at_each_threshold(seed: int) -> None:
    truth, preds = case(seed)
    curves = confidence_curves(truth, preds, K)
    for t in (0.0, 0.25, 0.5, 0.8):
        found = evaluate_detections(truth, preds, K, score_threshold=t)
        j = int(np.argmin(np.abs(THRESHOLDS - t)))
        wanted = {
            "precision": [*found.class_precision, found.precision],
            "recall": [*found.class_recall, found.recall],
            "f1": [*found.class_f1, found.f1],
        }
        for key, want in wanted.items():
            got = curves[key][:, j]
            want = np.array(want, float)
            assert np.array_equal(np.isnan(got), want == -1), (t, key)  # undefined alike
            assert got[want != -1] == pytest.approx(want[want != -1]), (t, key)


@pytest.mark.parametrize("seed", [3, 4])
def test_gallery_errors_sum_to_the_metrics_false_positives_and_misses(seed: int) -> None:
    truth, preds = case(seed)
    for t in (0.1, 0.5):
        found = evaluate_detections(truth, preds, K, score_threshold=t)
        matches = [image_matches(r, p, t) for r, p in zip(truth, preds, strict=True)]
        assert sum(int(m.false.sum()) for m in matches) == int(found.fp.sum())
        assert sum(int(m.missed.sum()) for m in matches) == int(found.fn.sum())
        for r, p, m in zip(truth, preds, matches, strict=True):
            assert (p.scores[m.kept] >= t).all()
            assert not m.missed[r.iscrowd].any()  # a crowd region is never a miss
