"""COCO-style detection metrics, checked against pycocotools on random and adversarial
cases; precision/recall/F1 and the confusion matrix on cases worked by hand.

pycocotools is the reference: if it is not installed these tests fail (it is in the
test extra), they do not skip.
"""

from __future__ import annotations

import contextlib
import io
import json
from pathlib import Path

import numpy as np
import pytest
from pycocotools.coco import COCO
from pycocotools.cocoeval import COCOeval

from liandan.tasks.detect.boxes import ImageBoxes
from liandan.tasks.detect.coco import read_coco
from liandan.tasks.detect.metrics import Detections, evaluate_detections


def cat_id(k: int) -> int:
    return 3 * k + 7  # category ids that are neither 0-based nor contiguous


def reference(truth: list[Detections], preds: list[Detections], k: int, max_det: int = 100):
    """pycocotools' COCOeval on the same boxes (detections loaded as loadRes would)."""
    images = [
        {"id": i + 1, "file_name": f"{i}.jpg", "width": 640, "height": 480}
        for i in range(len(truth))
    ]
    cats = [{"id": cat_id(c), "name": f"c{c}"} for c in range(k)]
    gt_anns, dt_anns = [], []
    for i, t in enumerate(truth):
        for j, (box, c) in enumerate(zip(t.boxes, t.classes, strict=True)):
            x1, y1, x2, y2 = box.tolist()
            crowd = bool(t.iscrowd[j]) if t.iscrowd is not None else False
            area = float(t.areas[j]) if t.areas is not None else (x2 - x1) * (y2 - y1)
            gt_anns.append(
                {"id": len(gt_anns) + 1, "image_id": i + 1, "category_id": cat_id(int(c)),
                 "bbox": [x1, y1, x2 - x1, y2 - y1], "area": area, "iscrowd": int(crowd)}
            )  # fmt: skip
    for i, p in enumerate(preds):
        for box, c, s in zip(p.boxes, p.classes, p.scores, strict=True):
            x1, y1, x2, y2 = box.tolist()
            w, h = x2 - x1, y2 - y1
            dt_anns.append(
                {"id": len(dt_anns) + 1, "image_id": i + 1, "category_id": cat_id(int(c)),
                 "bbox": [x1, y1, w, h], "area": w * h, "iscrowd": 0, "score": float(s)}
            )  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        gt, dt = COCO(), COCO()
        gt.dataset = {"images": images, "categories": cats, "annotations": gt_anns}
        dt.dataset = {"images": images, "categories": cats, "annotations": dt_anns}
        gt.createIndex()
        dt.createIndex()
        ev = COCOeval(gt, dt, "bbox")
        ev.params.maxDets = [1, 10, max_det]
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    return ev


def reference_counts(ev: COCOeval, k: int, threshold: float) -> np.ndarray:
    """(3, K) true positives, false positives and misses at IoU .5 from pycocotools' matches."""
    out = np.zeros((3, k), np.int64)
    for e in ev.evalImgs:
        if e is None or e["aRng"] != ev.params.areaRng[0]:
            continue
        c = (e["category_id"] - 7) // 3
        keep = np.asarray(e["dtScores"]) >= threshold
        matched, ignored = e["dtMatches"][0] > 0, e["dtIgnore"][0] > 0
        tp = np.count_nonzero(keep & matched & ~ignored)
        out[0, c] += tp
        out[1, c] += np.count_nonzero(keep & ~matched & ~ignored)
        out[2, c] += np.count_nonzero(np.asarray(e["gtIgnore"]) == 0) - tp
    return out


def assert_agrees(truth, preds, k, max_det=100, threshold=0.3):
    ours = evaluate_detections(truth, preds, k, score_threshold=threshold, max_detections=max_det)
    ev = reference(truth, preds, k, max_det)
    np.testing.assert_allclose(ours.coco_precision, ev.eval["precision"], atol=1e-6, rtol=0)
    np.testing.assert_allclose(ours.coco_recall, ev.eval["recall"], atol=1e-6, rtol=0)
    expected = ev.stats.copy()
    if max_det != 100:
        # summarize() asks for maxDets=100 in its first AP whatever maxDets are, and
        # finds none (-1): the mean of the same precision array is what it means
        p = ev.eval["precision"][:, :, :, 0, -1]
        expected[0] = p[p > -1].mean() if (p > -1).any() else -1
    np.testing.assert_allclose(ours.stats, expected, atol=1e-6, rtol=0)
    counts = reference_counts(ev, k, threshold)
    np.testing.assert_array_equal(np.stack([ours.tp, ours.fp, ours.fn]), counts)
    return ours, ev


def random_boxes(rng: np.random.Generator, n: int, integer: bool = False) -> np.ndarray:
    side = np.exp(rng.uniform(np.log(4), np.log(200), size=(n, 1)))  # small to large
    aspect = np.exp(rng.uniform(-0.7, 0.7, size=(n, 1)))
    wh = np.hstack([side * aspect, side / aspect])
    xy = rng.uniform(0, 400, size=(n, 2))
    boxes = np.hstack([xy, xy + wh])
    return np.round(boxes) + np.array([0, 0, 1, 1]) * integer if integer else boxes


def random_case(seed: int, k: int = 3, images: int = 6, crowd: bool = True):
    rng = np.random.default_rng(seed)
    truth, preds = [], []
    for _ in range(images):
        n = int(rng.integers(0, 12))
        gt = random_boxes(rng, n)
        gt_cls = rng.integers(0, k, n)
        iscrowd = rng.random(n) < (0.1 if crowd else 0)
        truth.append(Detections(gt, np.ones(n), gt_cls, iscrowd))
        # near misses of the truth (some with the wrong class) plus clutter
        jitter = gt + rng.normal(0, 0.1, size=gt.shape) * (gt[:, 2:] - gt[:, :2]).repeat(2, 1)
        keep = rng.random(n) < 0.8
        wrong = rng.random(n) < 0.15
        cls = np.where(wrong, rng.integers(0, k, n), gt_cls)[keep]
        m = int(rng.integers(0, 8))
        boxes = np.vstack([jitter[keep], random_boxes(rng, m)])
        classes = np.concatenate([cls, rng.integers(0, k, m)])
        preds.append(Detections(boxes, rng.random(len(boxes)), classes))
    return truth, preds


@pytest.mark.parametrize("seed", range(8))
def test_random_cases_agree_with_pycocotools(seed):
    truth, preds = random_case(seed)
    assert_agrees(truth, preds, 3)


def test_no_predictions_at_all_give_zero_ap():
    truth, _ = random_case(1, crowd=False)
    empty = [Detections(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int)) for _ in truth]
    ours, _ = assert_agrees(truth, empty, 3)
    assert ours.map == 0 and ours.map50 == 0
    assert ours.precision == -1  # no detection: precision undefined
    assert ours.recall == 0 and ours.f1 == 0


def test_no_ground_truth_at_all_gives_minus_one():
    _, preds = random_case(2)
    empty = [Detections(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int)) for _ in preds]
    ours, _ = assert_agrees(empty, preds, 3)
    assert ours.map == -1 and (ours.class_ap() == -1).all()
    assert ours.summary(["a", "b", "c"])["overall"]["map"] is None
    assert ours.precision == 0 and ours.recall == -1


def test_image_with_truth_and_no_predictions():
    truth, preds = random_case(3, crowd=False)
    truth[0] = Detections(
        np.array([[10.0, 10, 50, 60], [100, 100, 300, 250]]), np.ones(2), np.array([0, 1])
    )
    preds[0] = Detections(np.zeros((0, 4)), np.zeros(0), np.zeros(0, int))
    ours, _ = assert_agrees(truth, preds, 3)
    assert ours.fn.sum() >= 2


def test_crowded_image_with_more_than_max_detections():
    rng = np.random.default_rng(4)
    base = np.array([100.0, 100, 160, 180])
    gt = base + rng.normal(0, 6, size=(60, 4))  # sixty heavily overlapping boxes
    dt = np.vstack([gt + rng.normal(0, 4, size=gt.shape), base + rng.normal(0, 8, size=(120, 4))])
    truth = [Detections(gt, np.ones(60), rng.integers(0, 2, 60))]
    preds = [Detections(dt, rng.random(len(dt)), rng.integers(0, 2, len(dt)))]
    assert_agrees(truth, preds, 2)
    assert_agrees(truth, preds, 2, max_det=20)


def test_crowd_regions_absorb_detections():
    crowd = np.array([[0.0, 0, 200, 200]])
    gt = np.vstack([crowd, [[300, 300, 340, 350]]])
    truth = [Detections(gt, np.ones(2), np.array([0, 0]), np.array([True, False]))]
    inside = np.array([[10.0, 10, 40, 40], [50, 50, 90, 80], [120, 20, 180, 70], [5, 150, 60, 190]])
    dt = np.vstack([inside, [[302, 301, 341, 349]]])
    preds = [Detections(dt, np.array([0.9, 0.8, 0.7, 0.6, 0.5]), np.zeros(5, int))]
    ours, _ = assert_agrees(truth, preds, 1)
    # four detections inside the crowd region count neither way
    assert (ours.tp[0], ours.fp[0], ours.fn[0]) == (1, 0, 0)
    assert ours.map50 == pytest.approx(1.0)
    assert ours.confusion.tolist() == [[1, 0], [0, 0]]


def test_class_absent_from_truth_is_minus_one_and_left_out_of_the_mean():
    truth, preds = random_case(5, k=3, crowd=False)
    for t in truth:  # class 2 in no ground truth, but predicted
        t.classes[t.classes == 2] = 0
    assert any((p.classes == 2).any() for p in preds)
    ours, ev = assert_agrees(truth, preds, 3)
    assert (ev.eval["precision"][:, :, 2] == -1).all()  # pycocotools' convention too
    ap = ours.class_ap()
    assert ap[2] == -1 and (ap[:2] >= 0).all()
    assert ours.map == pytest.approx(ap[:2].mean(), abs=1e-12)
    assert ours.class_precision[2] == -1 and ours.fp[2] > 0


def test_ties_in_score_and_iou():
    rng = np.random.default_rng(6)
    truth, preds = [], []
    for _ in range(5):
        gt = random_boxes(rng, 6, integer=True)
        gt = np.vstack([gt, gt[:2]])  # two boxes twice: equal IoU to the same detection
        truth.append(Detections(gt, np.ones(8), rng.integers(0, 2, 8)))
        dt = np.vstack(
            [gt + rng.integers(-3, 4, size=gt.shape), random_boxes(rng, 4, integer=True)]
        )
        scores = rng.choice([0.25, 0.5, 0.75], size=len(dt))  # many equal scores
        preds.append(Detections(dt, scores, rng.integers(0, 2, len(dt))))
    assert_agrees(truth, preds, 2, threshold=0.5)
    preds = [Detections(p.boxes, np.full(len(p.boxes), 0.5), p.classes) for p in preds]
    assert_agrees(truth, preds, 2, threshold=0.5)


@pytest.mark.parametrize("later_first", [False, True])
def test_equal_iou_goes_to_the_later_box(later_first):
    # d overlaps g1 and g2 with IoU exactly .5; d2 fits g1 only. pycocotools gives d
    # the later of the two: with g2 later, d2 still finds g1 (two hits at IoU .5)
    g1, g2 = [0.0, 0, 10, 20], [0.0, 0, 20, 10]
    gt = np.array([g2, g1] if later_first else [g1, g2])
    truth = [Detections(gt, np.ones(2), np.zeros(2, int))]
    preds = [Detections(np.array([[0.0, 0, 10, 10], g1]), np.array([0.9, 0.8]), np.zeros(2, int))]
    ours, _ = assert_agrees(truth, preds, 1)
    assert ours.tp[0] == (1 if later_first else 2)


def test_a_counted_box_is_preferred_to_a_better_overlapping_crowd():
    crowd, person = [0.0, 0, 100, 100], [10.0, 10, 40, 40]
    truth = [
        Detections(np.array([crowd, person]), np.ones(2), np.zeros(2, int), np.array([True, False]))
    ]
    preds = [Detections(np.array([[12.0, 12, 44, 44]]), np.array([0.9]), np.zeros(1, int))]
    ours, _ = assert_agrees(truth, preds, 1)
    assert ours.tp[0] == 1  # IoU .7 with the person beats overlap 1.0 with the crowd


def test_given_areas_decide_the_size_range():
    # COCO's 'area' is the mask's: a 50x50 box with a 500 px² mask is small
    truth = [
        Detections(np.array([[0.0, 0, 50, 50]]), np.ones(1), np.array([0]), areas=np.array([500.0]))
    ]
    preds = [Detections(np.array([[1.0, 1, 50, 50]]), np.array([0.9]), np.array([0]))]
    ours, _ = assert_agrees(truth, preds, 1)
    assert ours.map_small > 0 and ours.map_medium == -1


def test_image_boxes_are_accepted_as_truth():
    rec = ImageBoxes(Path("a.jpg"), 100, 100, [[10, 10, 60, 60]], [1])
    preds = [Detections(np.array([[10.0, 10, 60, 60]]), np.array([0.9]), np.array([1]))]
    ours = evaluate_detections([rec], preds, 2)
    assert ours.class_ap()[0] == -1 and ours.class_ap()[1] == pytest.approx(1.0)
    assert ours.class_ap(0.75)[1] == pytest.approx(1.0)
    with pytest.raises(ValueError, match=r"IoU 0\.52 is not one of"):
        ours.class_ap(0.52)  # AP at a threshold never measured is refused, not zero


def test_precision_recall_f1_and_confusion_by_hand():
    # truth: cat at A, dog at B, cat at C; predictions: cat on A (right), cat on B
    # (a dog called cat), dog far from everything (false alarm), cat on C below threshold
    a, b, c = [0.0, 0, 50, 50], [100.0, 100, 150, 150], [200.0, 0, 250, 50]
    truth = [Detections(np.array([a, b, c]), np.ones(3), np.array([0, 1, 0]))]
    far = [300.0, 300, 350, 350]
    preds = [
        Detections(np.array([a, b, far, c]), np.array([0.9, 0.8, 0.7, 0.1]), np.array([0, 0, 1, 0]))
    ]
    m = evaluate_detections(truth, preds, 2, score_threshold=0.5)
    assert m.tp.tolist() == [1, 0] and m.fp.tolist() == [1, 1] and m.fn.tolist() == [1, 1]
    assert m.class_precision.tolist() == [0.5, 0.0]
    assert m.class_recall.tolist() == [0.5, 0.0]
    assert m.class_f1.tolist() == [0.5, 0.0]
    assert (m.precision, m.recall) == (1 / 3, 1 / 3)
    # rows truth (cat, dog, background), columns prediction
    assert m.confusion.tolist() == [[1, 0, 1], [1, 0, 0], [0, 1, 0]]
    summary = m.summary(["cat", "dog"])
    assert summary["per_class"]["cat"]["tp"] == 1 and summary["confusion"][1][0] == 1


@pytest.mark.parametrize("seed", range(4))
def test_confusion_rows_columns_and_diagonal_add_up(seed):
    truth, preds = random_case(seed + 10)
    m = evaluate_detections(truth, preds, 3, score_threshold=0.4)
    k = 3
    assert (np.diag(m.confusion)[:k] == m.tp).all()
    assert (m.confusion[:k].sum(axis=1) == m.tp + m.fn).all()
    assert (m.confusion[:, :k].sum(axis=0) == m.tp + m.fp).all()
    assert m.confusion[k, k] == 0


def test_malformed_input_names_every_bad_image():
    good = Detections(np.array([[0.0, 0, 10, 10]]), np.ones(1), np.array([0]))
    bad_class = Detections(np.array([[0.0, 0, 10, 10]]), np.ones(1), np.array([5]))
    bad_shape = Detections(np.zeros((2, 3)), np.ones(2), np.array([0, 0]))
    nan = Detections(np.array([[0.0, np.nan, 10, 10]]), np.ones(1), np.array([0]))
    with pytest.raises(ValueError) as err:
        evaluate_detections([good] * 4, [good, bad_class, bad_shape, nan], 2)
    text = str(err.value)
    assert "predictions[1]" in text and "predictions[2]" in text and "predictions[3]" in text
    assert "predictions[0]" not in text
    with pytest.raises(ValueError, match="2 images of ground truth but 1"):
        evaluate_detections([good, good], [good], 2)


def test_a_coco_file_read_by_liandan_scores_as_pycocotools_scores_it(tmp_path):
    # the reader's category order, crowd flags and given areas feed the metrics
    truth, preds = random_case(21)
    images = [
        {"id": i + 1, "file_name": f"{i}.jpg", "width": 640, "height": 480}
        for i in range(len(truth))
    ]
    anns = []
    for i, t in enumerate(truth):
        for box, c, crowd in zip(
            t.boxes.tolist(), t.classes.tolist(), t.iscrowd.tolist(), strict=True
        ):
            x1, y1, x2, y2 = box
            area = (x2 - x1) * (y2 - y1) * 0.6  # a mask's area, smaller than its box
            anns.append(
                {"id": len(anns) + 1, "image_id": i + 1, "category_id": cat_id(c),
                 "bbox": [x1, y1, x2 - x1, y2 - y1], "area": area, "iscrowd": int(crowd)}
            )  # fmt: skip
    cats = [{"id": cat_id(c), "name": f"c{c}"} for c in (2, 0, 1)]  # listed out of order
    path = tmp_path / "gt.json"
    path.write_text(json.dumps({"images": images, "annotations": anns, "categories": cats}))
    results = [
        {"image_id": i + 1, "category_id": cat_id(int(c)), "score": float(s),
         "bbox": [b[0], b[1], b[2] - b[0], b[3] - b[1]]}
        for i, p in enumerate(preds)
        for b, c, s in zip(p.boxes.tolist(), p.classes, p.scores, strict=True)
    ]  # fmt: skip
    with contextlib.redirect_stdout(io.StringIO()):
        gt = COCO(str(path))
        ev = COCOeval(gt, gt.loadRes(results), "bbox")
        ev.evaluate()
        ev.accumulate()
        ev.summarize()
    ds = read_coco(path, check_images=False)
    assert ds.class_names == ["c0", "c1", "c2"]
    ours = evaluate_detections(ds.images, preds, 3)
    np.testing.assert_allclose(ours.stats, ev.stats, atol=1e-6, rtol=0)
