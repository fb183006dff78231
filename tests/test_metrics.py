"""Tests of liandan.metrics: the streaming confusion matrix and every metric from it."""

from __future__ import annotations

import json
import math
import warnings
from typing import Any

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from rich.console import Console
from sklearn import metrics as skm

from liandan.metrics import (
    OVERALL_KEYS,
    PER_CLASS_KEYS,
    ConfusionMatrix,
    compute_metrics,
    metrics_table,
    most_confused,
    per_class_table,
)

PROPERTY = settings(max_examples=150, deadline=None)


def _metrics(matrix: list[list[int]], **kwargs: Any) -> dict[str, Any]:
    names = [f"c{i}" for i in range(len(matrix))]
    return compute_metrics(
        np.array(matrix, dtype=np.int64), names, task="segment", split="val", **kwargs
    )


def _tensor(labels: Any) -> torch.Tensor:
    if isinstance(labels, list):
        return torch.tensor(labels, dtype=torch.long)
    return torch.as_tensor(labels)


def _count(preds: Any, target: Any, n: int, **kwargs: Any) -> np.ndarray:
    cm = ConfusionMatrix(n, **kwargs)
    cm.update(_tensor(preds), _tensor(target))
    return cm.numpy()


# ---------------------------------------------------------------- confusion matrix


def test_orientation_rows_are_truth_columns_are_predictions() -> None:
    assert _count([1, 1, 0], [0, 0, 0], 2).tolist() == [[1, 2], [0, 0]]


def test_any_shape_and_integer_dtype_give_the_same_matrix() -> None:
    rng = np.random.default_rng(0)
    target = rng.integers(0, 4, size=(3, 5, 7))
    preds = rng.integers(0, 4, size=(3, 5, 7))
    expected = skm.confusion_matrix(target.ravel(), preds.ravel(), labels=range(4))
    for dtype in (np.uint8, np.int8, np.int16, np.int32, np.int64, np.uint16):
        got = _count(preds.astype(dtype), target.astype(dtype), 4)
        assert got.dtype == np.int64
        assert got.tolist() == expected.tolist(), dtype
    assert _count(preds.astype(np.uint8), target, 4).tolist() == expected.tolist()


def test_ignore_index_pixels_are_not_counted() -> None:
    target = torch.tensor([[0, 255, 1], [1, 255, 0]], dtype=torch.uint8)
    preds = torch.tensor([[0, 1, 1], [0, 7, 0]], dtype=torch.uint8)  # 7 only under ignore
    assert _count(preds, target, 2, ignore_index=255).tolist() == [[2, 0], [1, 1]]
    assert _count([0, 1, 1], [-1, -1, 1], 2).tolist() == [[0, 0], [0, 1]]  # default -1
    assert _count([0, 1, 1, 0], [0, 1, 0, 1], 2, ignore_index=0).tolist() == [[0, 0], [1, 1]]


def test_an_all_ignored_or_empty_batch_counts_nothing() -> None:
    assert _count([0, 1], [-1, -1], 3).sum() == 0
    assert _count(torch.zeros(0, dtype=torch.long), torch.zeros(0, dtype=torch.long), 3).sum() == 0


@pytest.mark.parametrize("target", [[0, 2], [-1, -2], [0, 300], [0, 10**12]])
def test_a_target_outside_the_classes_raises(target: list[int]) -> None:
    with pytest.raises(ValueError, match="target"):
        _count([0, 0], target, 2)


@pytest.mark.parametrize("preds", [[0, 2], [-3, 0], [0, 10**12]])
def test_a_prediction_outside_the_classes_raises(preds: list[int]) -> None:
    with pytest.raises(ValueError, match="preds"):
        _count(preds, [0, 1], 2)


def test_bad_inputs_raise() -> None:
    cm = ConfusionMatrix(2)
    with pytest.raises(ValueError, match="differ"):
        cm.update(torch.zeros(3, dtype=torch.long), torch.zeros(4, dtype=torch.long))
    with pytest.raises(TypeError, match="integer"):
        cm.update(torch.zeros(3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="num_classes"):
        ConfusionMatrix(0)


def test_update_never_modifies_its_inputs() -> None:
    target = torch.tensor([0, 1, -1, 1], dtype=torch.int32)
    preds = torch.tensor([1, 1, 0, 0], dtype=torch.int32)
    ConfusionMatrix(2).update(preds.clone(), target)
    assert target.tolist() == [0, 1, -1, 1]
    assert preds.tolist() == [1, 1, 0, 0]


def test_large_input_spanning_many_chunks_matches_one_bincount() -> None:
    rng = np.random.default_rng(1)
    target = rng.integers(0, 5, size=300_001).astype(np.uint8)
    preds = rng.integers(0, 5, size=300_001).astype(np.uint8)
    target[rng.random(300_001) < 0.1] = 255
    keep = target != 255
    expected = np.bincount(target[keep] * 5 + preds[keep].astype(int), minlength=25)
    assert _count(preds, target, 5, ignore_index=255).ravel().tolist() == expected.tolist()


@given(st.data())
@PROPERTY
def test_updates_across_several_batches_equal_one_update(data: st.DataObject) -> None:
    n = data.draw(st.integers(1, 6))
    size = data.draw(st.integers(0, 60))
    target = data.draw(st.lists(st.integers(-1, n - 1), min_size=size, max_size=size))
    preds = data.draw(st.lists(st.integers(0, n - 1), min_size=size, max_size=size))
    cuts = sorted(data.draw(st.lists(st.integers(0, size), max_size=4)))
    streamed = ConfusionMatrix(n)
    for lo, hi in zip([0, *cuts], [*cuts, size], strict=True):
        streamed.update(_tensor(preds[lo:hi]), _tensor(target[lo:hi]))
    once = _count(preds, target, n)
    assert streamed.numpy().tolist() == once.tolist()
    # and both equal the matrix of the non-ignored (-1) samples
    kept = [(t, p) for t, p in zip(target, preds, strict=True) if t != -1]
    expected = np.zeros((n, n), dtype=np.int64)
    for t, p in kept:
        expected[t, p] += 1
    assert once.tolist() == expected.tolist()


def test_merge_adds_counts_and_reset_clears_them() -> None:
    a, b = ConfusionMatrix(3), ConfusionMatrix(3)
    a.update(torch.tensor([0, 1]), torch.tensor([0, 2]))
    b.update(torch.tensor([2, 2, 1]), torch.tensor([2, 2, 1]))
    a.merge(b)
    assert a.numpy().tolist() == [[1, 0, 0], [0, 1, 0], [0, 1, 2]]
    assert b.numpy().tolist() == [[0, 0, 0], [0, 1, 0], [0, 0, 2]]
    empty = ConfusionMatrix(3)
    empty.merge(a)
    assert empty.numpy().tolist() == a.numpy().tolist()
    with pytest.raises(ValueError, match="merge"):
        a.merge(ConfusionMatrix(4))
    a.reset()
    assert a.numpy().sum() == 0
    assert a.matrix.dtype == torch.int64


def test_matrix_lives_on_the_requested_device() -> None:
    cm = ConfusionMatrix(2, device="cpu")
    assert cm.matrix.device.type == "cpu"
    assert ConfusionMatrix(2).matrix.shape == (2, 2)


# ---------------------------------------------------------------- metrics by hand


def test_hand_computed_two_classes() -> None:
    # truth 0: 3 right, 1 called 1; truth 1: 2 called 0, 4 right.
    m = _metrics([[3, 1], [2, 4]], beta=2.0)
    overall, c0, c1 = m["overall"], m["per_class"]["c0"], m["per_class"]["c1"]
    assert overall["accuracy"] == pytest.approx(7 / 10)
    assert c0["precision"] == pytest.approx(3 / 5) and c0["recall"] == pytest.approx(3 / 4)
    assert c1["precision"] == pytest.approx(4 / 5) and c1["recall"] == pytest.approx(4 / 6)
    assert c0["f1"] == pytest.approx(6 / 9) and c0["dice"] == c0["f1"]
    assert c1["f1"] == pytest.approx(8 / 11)
    assert c0["fbeta"] == pytest.approx(5 * 3 / (5 * 3 + 4 * 1 + 2))
    assert c0["iou"] == pytest.approx(3 / 6) and c1["iou"] == pytest.approx(4 / 7)
    assert (c0["support"], c1["support"]) == (4, 6)
    assert overall["kappa"] == pytest.approx((0.7 - 0.5) / (1 - 0.5))  # pe = (4*5 + 6*5)/100
    assert overall["balanced_accuracy"] == pytest.approx((3 / 4 + 4 / 6) / 2)
    assert overall["mean_iou"] == pytest.approx((3 / 6 + 4 / 7) / 2)
    assert overall["fw_iou"] == pytest.approx(0.4 * 3 / 6 + 0.6 * 4 / 7)
    assert overall["weighted_f1"] == pytest.approx(0.4 * 6 / 9 + 0.6 * 8 / 11)
    assert overall["num_samples"] == 10 and overall["beta"] == 2.0


def test_hand_computed_three_classes_with_absent_classes() -> None:
    # class 1 is never predicted; class 2 is predicted but never true.
    m = _metrics([[2, 0, 1], [1, 0, 1], [0, 0, 0]])
    pc, overall = m["per_class"], m["overall"]
    assert pc["c1"]["precision"] is None  # nothing predicted as c1
    assert pc["c1"]["recall"] == 0.0
    assert pc["c1"]["f1"] == 0.0 and pc["c1"]["iou"] == 0.0  # 2TP+FP+FN = 2
    assert pc["c2"]["recall"] is None and pc["c2"]["precision"] == 0.0
    assert pc["c2"]["f1"] == 0.0
    assert pc["c0"]["precision"] == pytest.approx(2 / 3) and pc["c0"]["iou"] == pytest.approx(2 / 4)
    assert overall["macro_precision"] == pytest.approx((2 / 3 + 0.0) / 2)
    assert overall["macro_recall"] == pytest.approx((2 / 3 + 0.0) / 2)
    assert overall["balanced_accuracy"] == overall["macro_recall"]
    assert overall["macro_f1"] == pytest.approx((2 / 3 + 0 + 0) / 3)
    assert overall["accuracy"] == pytest.approx(2 / 5)


def test_a_class_absent_everywhere_is_null_and_left_out_of_means() -> None:
    m = _metrics([[5, 0], [0, 0]])
    assert all(
        m["per_class"]["c1"][k] is None
        for k in ("precision", "recall", "f1", "fbeta", "iou", "dice")
    )
    assert m["overall"]["mean_iou"] == 1.0 and m["overall"]["macro_f1"] == 1.0
    assert m["overall"]["kappa"] is None  # expected agreement is 1


def test_an_empty_matrix_gives_nulls_not_zeros() -> None:
    overall = _metrics([[0, 0], [0, 0]])["overall"]
    for key in OVERALL_KEYS:
        if key not in ("beta", "num_samples"):
            assert overall[key] is None, key
    assert overall["num_samples"] == 0


def test_result_has_the_schema_and_is_plain_json() -> None:
    m = _metrics([[1, 2, 0], [0, 3, 1], [4, 0, 0]])
    assert set(m) == {"task", "split", "classes", "overall", "per_class", "confusion_matrix"}
    assert tuple(m["overall"]) == OVERALL_KEYS
    assert all(tuple(row) == PER_CLASS_KEYS for row in m["per_class"].values())
    assert m["confusion_matrix"] == [[1, 2, 0], [0, 3, 1], [4, 0, 0]]
    assert json.loads(json.dumps(m, allow_nan=False)) == m
    assert type(m["per_class"]["c0"]["support"]) is int
    with pytest.raises(ValueError, match="classes"):
        compute_metrics(np.zeros((2, 2), dtype=np.int64), ["a"], task="segment", split="val")


def test_most_confused_sorts_pairs_and_drops_zeros() -> None:
    matrix = np.array([[9, 1, 4], [0, 9, 0], [4, 2, 9]])
    assert most_confused(matrix, ["a", "b", "c"], k=5) == [
        ("a", "c", 4),
        ("c", "a", 4),
        ("c", "b", 2),
        ("a", "b", 1),
    ]
    assert most_confused(matrix, ["a", "b", "c"], k=1) == [("a", "c", 4)]
    assert most_confused(np.eye(2, dtype=int), ["a", "b"]) == []


def test_tables_render_every_value_and_a_dash_for_null() -> None:
    m = _metrics([[2, 0, 1], [1, 0, 1], [0, 0, 0]])
    console = Console(width=200, record=True)
    console.print(metrics_table(m))
    console.print(per_class_table(m))
    text = console.export_text()
    assert "mean IoU" in text and "0.3333" in text and "macro F2" in text
    assert "—" in text  # c1 precision, c2 recall
    assert all(name in text for name in m["classes"])


# ---------------------------------------------------------------- against scikit-learn


@st.composite
def label_arrays(draw: st.DrawFn) -> tuple[int, list[int], list[int]]:
    """Random labels where classes are often absent from truth, predictions or both."""
    n = draw(st.integers(1, 6))
    truth_classes = draw(st.lists(st.integers(0, n - 1), min_size=1, unique=True))
    pred_classes = draw(st.lists(st.integers(0, n - 1), min_size=1, unique=True))
    size = draw(st.integers(1, 40))
    y_true = draw(st.lists(st.sampled_from(truth_classes), min_size=size, max_size=size))
    y_pred = draw(st.lists(st.sampled_from(pred_classes), min_size=size, max_size=size))
    return n, y_true, y_pred


def _close(ours: float | None, theirs: float) -> bool:
    if ours is None:
        return bool(math.isnan(theirs))
    return not math.isnan(theirs) and ours == pytest.approx(theirs, abs=1e-12)


@given(label_arrays())
@PROPERTY
def test_every_metric_matches_scikit_learn(arrays: tuple[int, list[int], list[int]]) -> None:
    n, y_true, y_pred = arrays
    matrix = _count(y_pred, y_true, n)
    m = _metrics(matrix.tolist(), beta=2.0)
    overall, per_class = m["overall"], [m["per_class"][f"c{i}"] for i in range(n)]
    labels = list(range(n))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        cm = skm.confusion_matrix(y_true, y_pred, labels=labels)
        prfs = skm.precision_recall_fscore_support(
            y_true, y_pred, labels=labels, zero_division=np.nan, average=None
        )
        macro = skm.precision_recall_fscore_support(
            y_true, y_pred, labels=labels, zero_division=np.nan, average="macro"
        )
        weighted = skm.precision_recall_fscore_support(
            y_true, y_pred, labels=labels, zero_division=np.nan, average="weighted"
        )
        f2 = skm.fbeta_score(
            y_true, y_pred, beta=2.0, labels=labels, zero_division=np.nan, average=None
        )
        f2_macro = skm.fbeta_score(
            y_true, y_pred, beta=2.0, labels=labels, zero_division=np.nan, average="macro"
        )
        jaccard = skm.jaccard_score(y_true, y_pred, labels=labels, zero_division=0, average=None)
        kappa = skm.cohen_kappa_score(y_true, y_pred, labels=labels)
        balanced = skm.balanced_accuracy_score(y_true, y_pred)
        accuracy = skm.accuracy_score(y_true, y_pred)

    assert matrix.tolist() == cm.tolist() == m["confusion_matrix"]
    present = (cm.sum(axis=0) + cm.sum(axis=1)) > 0
    for i, row in enumerate(per_class):
        assert _close(row["precision"], prfs[0][i]), ("precision", i)
        assert _close(row["recall"], prfs[1][i]), ("recall", i)
        assert _close(row["f1"], prfs[2][i]), ("f1", i)
        assert _close(row["dice"], prfs[2][i]), ("dice", i)
        assert _close(row["fbeta"], f2[i]), ("fbeta", i)
        assert row["support"] == prfs[3][i]
        if present[i]:  # IoU is defined: the class is in truth or predictions
            assert row["iou"] == pytest.approx(jaccard[i], abs=1e-12), ("iou", i)
        else:
            assert row["iou"] is None, ("iou", i)
    assert _close(overall["macro_precision"], macro[0])
    assert _close(overall["macro_recall"], macro[1])
    assert _close(overall["macro_f1"], macro[2])
    assert _close(overall["macro_fbeta"], f2_macro)
    assert _close(overall["kappa"], kappa)
    assert _close(overall["balanced_accuracy"], balanced)
    assert _close(overall["accuracy"], accuracy)
    assert _close(overall["weighted_recall"], weighted[1])
    assert _close(overall["weighted_f1"], weighted[2])
    # sklearn falls back to an unweighted mean when every defined precision has zero
    # support; liandan reports that weighted mean as undefined instead.
    if sum(s for p, s in zip(prfs[0], prfs[3], strict=True) if not math.isnan(p)) > 0:
        assert _close(overall["weighted_precision"], weighted[0])
    else:
        assert overall["weighted_precision"] is None
    assert overall["mean_iou"] == pytest.approx(float(jaccard[present].mean()), abs=1e-12)
    expected_fw = float((prfs[3] / len(y_true) * jaccard).sum())
    assert overall["fw_iou"] == pytest.approx(expected_fw, abs=1e-12)


@given(label_arrays(), st.floats(0.25, 4.0))
@PROPERTY
def test_fbeta_matches_scikit_learn_for_any_beta(
    arrays: tuple[int, list[int], list[int]], beta: float
) -> None:
    n, y_true, y_pred = arrays
    m = _metrics(_count(y_pred, y_true, n).tolist(), beta=beta)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        expected = skm.fbeta_score(
            y_true, y_pred, beta=beta, labels=list(range(n)), zero_division=np.nan, average=None
        )
    for i in range(n):
        assert _close(m["per_class"][f"c{i}"]["fbeta"], expected[i])
    assert m["overall"]["beta"] == beta


# ---------------------------------------------------------------- extras (metrics_extra)


@st.composite
def prob_arrays(draw: Any) -> tuple[np.ndarray, np.ndarray]:
    """(probs (N, K) rows summing to 1, targets (N,)); some classes may be absent."""
    k = draw(st.integers(2, 7))
    n = draw(st.integers(1, 40))
    seed = draw(st.integers(0, 2**31 - 1))
    rng = np.random.default_rng(seed)
    logits = rng.normal(size=(n, k)) * draw(st.floats(0.1, 5.0))
    probs = np.exp(logits) / np.exp(logits).sum(1, keepdims=True)
    targets = rng.integers(0, draw(st.integers(1, k)), n)
    return probs, targets


@given(prob_arrays())
@PROPERTY
def test_probability_metrics_match_scikit_learn(arrays: tuple[np.ndarray, np.ndarray]) -> None:
    from liandan.metrics_extra import classification_extras

    probs, targets = arrays
    k = probs.shape[1]
    names = [f"c{i}" for i in range(k)]
    extras = classification_extras(probs, targets, names)
    if k > 5:
        expected = skm.top_k_accuracy_score(targets, probs, k=5, labels=list(range(k)))
        assert extras["overall"]["top5_accuracy"] == pytest.approx(expected)
    else:
        assert "top5_accuracy" not in extras["overall"]
    for c, name in enumerate(names):
        row = extras["per_class"][name]
        positive = targets == c
        if not positive.any():  # absent from truth: both undefined
            assert row["roc_auc"] is None and row["average_precision"] is None
            continue
        ap = skm.average_precision_score(positive, probs[:, c])
        assert row["average_precision"] == pytest.approx(ap)
        if positive.all():  # no negatives: no ROC curve
            assert row["roc_auc"] is None
        else:
            assert row["roc_auc"] == pytest.approx(skm.roc_auc_score(positive, probs[:, c]))
    assert 0.0 <= extras["overall"]["ece"] <= 1.0


def test_expected_calibration_error_by_hand() -> None:
    from liandan.metrics_extra import expected_calibration_error

    # bins of width 0.25: {0.6, 0.6} -> acc 0.5, conf 0.6; {0.9, 1.0} -> acc 1, conf 0.95
    probs = np.array([[0.6, 0.4], [0.4, 0.6], [0.9, 0.1], [0.0, 1.0]])
    targets = np.array([0, 0, 0, 1])
    assert expected_calibration_error(probs, targets, bins=4) == pytest.approx(
        0.5 * 0.1 + 0.5 * 0.05
    )
    assert expected_calibration_error(probs, targets, bins=2) == pytest.approx(0.775 - 0.75)
    perfect = np.eye(3)
    assert expected_calibration_error(perfect, np.arange(3)) == 0.0
    assert expected_calibration_error(np.zeros((0, 3)), np.zeros(0, np.int64)) is None


def test_image_iou_and_worst_images() -> None:
    from liandan.metrics_extra import image_iou, segmentation_extras

    assert image_iou(np.array([[3, 1, 0], [0, 2, 0], [0, 0, 0]])) == pytest.approx(
        (3 / 4 + 2 / 3) / 2
    )  # class 2 is in neither truth nor prediction: left out
    assert image_iou(np.zeros((3, 3), np.int64)) is None
    matrix = np.array([[5, 2], [1, 0]])
    extras = segmentation_extras(["a", "b", "c", "d"], [0.5, None, 0.2, 0.9], ["x", "y"], matrix)
    assert [w["image"] for w in extras["worst_images"]] == ["c", "a", "d"]
    assert extras["image_iou"]["count"] == 3
    assert extras["overall"]["image_iou_median"] == pytest.approx(0.5)
    assert extras["overall"]["image_iou_min"] == pytest.approx(0.2)
    assert extras["most_confused"][0] == {"truth": "x", "predicted": "y", "count": 2}


def test_extras_never_replace_the_required_keys() -> None:
    from liandan.metrics_extra import add_extras

    metrics = _metrics([[1, 1], [0, 2]])
    before = json.dumps(metrics, sort_keys=True)
    add_extras(
        metrics,
        {
            "overall": {"accuracy": -1, "ece": 0.1},
            "per_class": {"c0": {"iou": -1, "roc_auc": 0.5}},
            "classes": ["bogus"],
            "most_confused": [],
        },
    )
    assert metrics["overall"]["ece"] == 0.1 and metrics["per_class"]["c0"]["roc_auc"] == 0.5
    assert metrics["most_confused"] == []
    for key in ("accuracy",):
        assert metrics["overall"][key] == json.loads(before)["overall"][key]
    assert metrics["per_class"]["c0"]["iou"] == json.loads(before)["per_class"]["c0"]["iou"]
    assert metrics["classes"] == ["c0", "c1"]
    json.dumps(metrics, allow_nan=False)  # still valid metrics.json
