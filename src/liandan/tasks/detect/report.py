"""report.html's detection sections: how the boxes are found, missed and invented.

From one validation pass (:class:`~liandan.tasks.detect.results.DetectionResults`: the
truth records and every detection down to the detector's score floor), with the
matches of the metrics (COCO's greedy matching, IoU >= .5, class-aware, crowd boxes
not counted: :func:`~liandan.tasks.detect.matching.evaluate_image_class`):

- **precision-recall curves** per class at IoU .5, COCO's 101-point interpolated
  precision (the curve whose mean is the class's AP@.5);
- **precision, recall and F1 against the confidence threshold**, per class and all
  classes pooled, with the threshold metrics.json uses and the one where pooled F1
  peaks: the place to choose ``predict.score_threshold``;
- **box sizes**: the square root of each truth box's area per class, and of the
  detections kept, on a log axis with COCO's small / medium / large limits (32 and
  96 px) marked;
- **the gallery**: the validation images with the most errors (false positives plus
  misses at the threshold), worst first; left the truth (found green, missed red),
  right the detections (each class's colour, false positives red and labelled).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from liandan.tasks.detect.matching import AREA_RANGES, RECALL_POINTS, evaluate_image_class

if TYPE_CHECKING:
    from liandan.config import Config
    from liandan.data.scan import CheckedDataset
    from liandan.prediction import Predictor
    from liandan.tasks.detect.boxes import ImageBoxes
    from liandan.tasks.detect.matching import Detections
    from liandan.tasks.detect.results import DetectionResults

THRESHOLDS = np.linspace(0.0, 1.0, 101)  # confidence thresholds of the curves
MISSED, FOUND = (220, 30, 30), (40, 170, 60)  # truth box colours in the gallery
SMALL, LARGE = (AREA_RANGES["medium"][0] ** 0.5, AREA_RANGES["large"][0] ** 0.5)  # 32, 96 px


@dataclass
class ImageMatches:
    """One image's outcome at the score threshold, at IoU .5.

    Attributes:
        kept: positions of the detections scoring at least the threshold.
        false: per ``kept`` detection, True when it matched no truth box.
        missed: per truth box, True when counted and no kept detection took it.
    """

    kept: np.ndarray
    false: np.ndarray
    missed: np.ndarray

    @property
    def errors(self) -> int:
        return int(self.false.sum() + self.missed.sum())


def image_matches(truth: ImageBoxes, pred: Detections, threshold: float) -> ImageMatches:
    """The matches of one image as the metrics make them (see the module docstring)."""
    from liandan.tasks.detect.matching import Detections

    gt = Detections(truth.boxes, np.ones(len(truth.boxes)), truth.classes, truth.iscrowd)
    took = np.full(len(pred.scores), -1)  # detection -> truth position
    counted = np.zeros(len(truth.boxes), bool)
    for k in np.union1d(truth.classes, pred.classes).tolist():
        dt_index = np.flatnonzero(pred.classes == k)
        gt_index = np.flatnonzero(truth.classes == k)
        e = evaluate_image_class(pred, gt, dt_index, gt_index, len(dt_index))
        counted[e.gt_index] = ~e.gt_ignored[0]
        match, ignored = e.dt_gt[0, 0], e.dt_ignored[0, 0]
        hit = (match >= 0) & ~ignored
        took[e.dt_index[hit]] = e.gt_index[match[hit]]
        took[e.dt_index[ignored]] = -2  # absorbed by a crowd box: neither hit nor miss
    kept = np.flatnonzero(pred.scores >= threshold)
    kept = kept[np.argsort(-pred.scores[kept], kind="stable")]
    missed = counted.copy()
    missed[took[kept][took[kept] >= 0]] = False
    return ImageMatches(kept, took[kept] == -1, missed)


def confidence_curves(
    records: Sequence[ImageBoxes], preds: Sequence[Detections], num_classes: int
) -> dict[str, np.ndarray]:
    """Precision, recall and F1 at each of :data:`THRESHOLDS`: ``(K + 1, T)`` arrays,
    row ``K`` all classes pooled, defined as metrics.json defines them (NaN where it
    writes null)."""
    from liandan.tasks.detect.matching import Detections

    scores: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
    hits: list[list[np.ndarray]] = [[] for _ in range(num_classes)]
    truth = np.zeros(num_classes + 1)
    for rec, pred in zip(records, preds, strict=True):
        gt = Detections(rec.boxes, np.ones(len(rec.boxes)), rec.classes, rec.iscrowd, rec.areas)
        for k in np.union1d(rec.classes, pred.classes).tolist():
            dt_index = np.flatnonzero(pred.classes == k)
            gt_index = np.flatnonzero(rec.classes == k)
            e = evaluate_image_class(pred, gt, dt_index, gt_index, len(dt_index))
            counts = ~e.dt_ignored[0, 0]
            scores[k].append(e.scores[counts])
            hits[k].append(e.dt_gt[0, 0][counts] >= 0)
            truth[k] += int(e.gt_counted[0])
    truth[num_classes] = truth[:num_classes].sum()
    tp = np.zeros((num_classes + 1, len(THRESHOLDS)))
    fp = np.zeros_like(tp)
    for k in range(num_classes):
        s = np.concatenate(scores[k]) if scores[k] else np.zeros(0)
        h = np.concatenate(hits[k]) if hits[k] else np.zeros(0, bool)
        above = s[None, :] >= THRESHOLDS[:, None]
        tp[k] = (above & h[None, :]).sum(1)
        fp[k] = (above & ~h[None, :]).sum(1)
    tp[num_classes], fp[num_classes] = tp[:num_classes].sum(0), fp[:num_classes].sum(0)
    # as metrics.json: a class without truth is undefined (NaN); a class with truth and
    # no detection has precision 0; pooled precision without any detection is undefined
    n = truth[:, None]
    precision = tp / np.maximum(1, tp + fp)
    precision[num_classes] = np.where(
        tp[num_classes] + fp[num_classes] > 0, precision[num_classes], np.nan
    )
    recall = tp / np.maximum(1, n)
    f1 = 2 * tp / np.maximum(1, n + tp + fp)
    undefined = np.broadcast_to(n == 0, tp.shape)
    precision[:num_classes][undefined[:num_classes]] = np.nan
    recall[undefined] = np.nan
    f1[:num_classes][undefined[:num_classes]] = np.nan
    f1[num_classes][(n[num_classes] + fp[num_classes]) == 0] = np.nan
    return {"precision": precision, "recall": recall, "f1": f1}


def _colours(names: Sequence[str]) -> list[tuple[float, float, float]]:
    from liandan.tasks.detect.predict import PALETTE

    return [tuple(v / 255 for v in PALETTE[k % len(PALETTE)]) for k in range(len(names))]  # type: ignore[misc]


def plot_pr(found: Any, names: Sequence[str], out: Path) -> Path:
    """Per class, COCO's interpolated precision against recall at IoU .5."""
    from liandan.reporting.figures import _plt, save_figure

    plt = _plt()
    fig, ax = plt.subplots(figsize=(6, 5))
    colours = _colours(names)
    for k, name in enumerate(names):
        precision = found.coco_precision[0, :, k, 0, -1]  # IoU .5, area all, most detections
        if (precision < 0).all():
            continue  # no truth box of this class
        ap = float(np.mean(precision))
        ax.plot(RECALL_POINTS, precision, color=colours[k], label=f"{name} (AP@.5 {ap:.3f})")
    ax.set(xlabel="recall", ylabel="precision", xlim=(0, 1), ylim=(0, 1.02))
    ax.set_title("precision-recall at IoU 0.5")
    ax.legend(loc="lower left", fontsize=8)
    return save_figure(fig, out / "pr_curves.png")


def plot_confidence(
    curves: dict[str, np.ndarray], names: Sequence[str], threshold: float, out: Path
) -> tuple[Path, float, float]:
    """F1, precision and recall against the confidence threshold; returns the plot, the
    threshold where pooled F1 peaks and that F1."""
    from liandan.reporting.figures import _plt, save_figure

    plt = _plt()
    pooled = curves["f1"][len(names)]
    best = int(np.nanargmax(pooled)) if np.isfinite(pooled).any() else 0
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5))
    colours = _colours(names)
    for ax, key in zip(axes, ("f1", "precision", "recall"), strict=True):
        for k, name in enumerate(names):
            ax.plot(THRESHOLDS, curves[key][k], color=colours[k], lw=1, alpha=0.8, label=name)
        ax.plot(THRESHOLDS, curves[key][len(names)], color="black", lw=2.5, label="all classes")
        ax.axvline(threshold, color="grey", ls="--", lw=1)
        ax.set(xlabel="confidence threshold", ylabel=key, xlim=(0, 1), ylim=(0, 1.02))
        ax.set_title(f"{key} against confidence (IoU 0.5)")
    axes[0].axvline(THRESHOLDS[best], color="black", ls=":", lw=1)
    axes[0].legend(loc="lower left", fontsize=8)
    target = save_figure(fig, out / "confidence_curves.png")
    return target, float(THRESHOLDS[best]), float(np.nan_to_num(pooled[best]))


def plot_box_sizes(
    records: Sequence[ImageBoxes],
    preds: Sequence[Detections],
    names: Sequence[str],
    threshold: float,
    out: Path,
) -> Path | None:
    """Histograms of sqrt(box area), truth per class and the kept detections."""
    from liandan.reporting.figures import _plt, save_figure

    sides = [np.sqrt(np.clip(r.box_areas(), 0, None)) for r in records]
    if not any(len(s) for s in sides):
        return None
    plt = _plt()
    truth_side, truth_cls = np.concatenate(sides), np.concatenate([r.classes for r in records])
    kept = [p.boxes[p.scores >= threshold] for p in preds]
    wh = np.concatenate([b[:, 2:] - b[:, :2] for b in kept]) if kept else np.zeros((0, 2))
    pred_side = np.sqrt(np.clip(wh[:, 0] * wh[:, 1], 0, None)) if len(wh) else np.zeros(0)
    positive = np.concatenate([truth_side, pred_side])
    positive = positive[positive > 0]
    bins = np.geomspace(max(1.0, positive.min() / 1.2), positive.max() * 1.2, 30)
    fig, ax = plt.subplots(figsize=(7, 4.5))
    colours = _colours(names)
    ax.hist(
        [truth_side[truth_cls == k] for k in range(len(names))],
        bins=bins, stacked=True, color=colours, label=[f"truth: {n}" for n in names],
    )  # fmt: skip
    if len(pred_side):
        ax.hist(pred_side, bins=bins, histtype="step", color="black", lw=1.5,
                label=f"detections >= {threshold:g}")  # fmt: skip
    for edge, label in ((SMALL, "small | medium"), (LARGE, "medium | large")):
        ax.axvline(edge, color="grey", ls="--", lw=1)
        ax.text(edge, ax.get_ylim()[1] * 0.95, f" {label}", fontsize=8, color="grey", va="top")
    ax.set_xscale("log")
    ax.set(xlabel="sqrt(box area), px (original image)", ylabel="boxes")
    ax.set_title("box sizes (validation)")
    ax.legend(fontsize=8)
    return save_figure(fig, out / "box_sizes.png")


def _draw(
    canvas: np.ndarray, box: Sequence[float], colour: tuple[int, ...], text: str, thick: int
) -> None:
    import cv2

    p1, p2 = (round(box[0]), round(box[1])), (round(box[2]), round(box[3]))
    cv2.rectangle(canvas, p1, p2, colour, thick)
    if text:
        cv2.putText(canvas, text, (p1[0], max(8, p1[1] - 2)), cv2.FONT_HERSHEY_SIMPLEX,
                    0.3 * thick, colour, 1, cv2.LINE_AA)  # fmt: skip


def error_gallery(
    results: DetectionResults,
    records: Sequence[ImageBoxes],
    checked: CheckedDataset,
    threshold: float,
    out: Path,
    bands: list[int] | None,
    size: int | None = None,
) -> list[Any]:
    """The validation images with the most errors at ``threshold``, worst first."""
    from liandan.data.datasets import load_image
    from liandan.reporting.gallery import (
        GALLERY_SIZE,
        GalleryItem,
        _slug,
        display_rgb,
        fit,
        save_png,
        side_by_side,
    )
    from liandan.tasks.detect.predict import PALETTE

    matches = [
        image_matches(r, p, threshold) for r, p in zip(records, results.predictions, strict=True)
    ]
    order = sorted(range(len(records)), key=lambda i: (-matches[i].errors, results.names[i]))
    order = [i for i in order if matches[i].errors][: size or GALLERY_SIZE]
    items = []
    for rank, i in enumerate(order, start=1):
        rec, pred, m = records[i], results.predictions[i], matches[i]
        rgb = np.ascontiguousarray(display_rgb(load_image(checked, results.samples[i], bands)))
        thick = max(1, round(max(rgb.shape[:2]) / 300))
        truth_panel, pred_panel = rgb.copy(), rgb.copy()
        for box, cls, missed in zip(rec.boxes, rec.classes, m.missed, strict=True):
            label = f"missed {results.classes[int(cls)]}" if missed else ""
            _draw(truth_panel, box, MISSED if missed else FOUND, label, thick)
        for d, false in zip(m.kept, m.false, strict=True):
            cls = int(pred.classes[d])
            colour = MISSED if false else PALETTE[cls % len(PALETTE)]
            text = f"{'FP ' if false else ''}{results.classes[cls]} {pred.scores[d]:.2f}"
            _draw(pred_panel, pred.boxes[d], colour, text, thick)
        path = out / "gallery" / f"det_{rank:02d}_{_slug(results.names[i])}.png"
        save_png(side_by_side([fit(truth_panel), fit(pred_panel)]), path)
        facts = {
            "false positives": int(m.false.sum()),
            "missed": int(m.missed.sum()),
            "truth boxes": len(rec.boxes),
            "detections kept": len(m.kept),
        }
        items.append(GalleryItem(path, results.names[i], facts))
    return items


def detection_sections(
    run: Path,
    results: DetectionResults,
    predictor: Predictor,
    checked: CheckedDataset,
    cfg: Config,
    out: Path,
) -> list[Any]:
    """The report's detection sections (see the module docstring)."""
    from liandan.reporting import html as H
    from liandan.tasks.detect.predict import postprocess_settings
    from liandan.tasks.detect.task import records_of

    threshold, _ = postprocess_settings(predictor)
    records = records_of(checked.index, results.samples)
    names = results.classes
    pr = plot_pr(results.found, names, out)
    curves = confidence_curves(records, results.predictions, len(names))
    conf_plot, best, best_f1 = plot_confidence(curves, names, threshold, out)
    at = int(np.argmin(np.abs(THRESHOLDS - threshold)))
    f1_now = float(np.nan_to_num(curves["f1"][len(names)][at]))
    advice = (
        f"pooled F1 peaks at confidence {best:.2f} (F1 {best_f1:.3f}); at the threshold in "
        f"use, {threshold:g}, it is {f1_now:.3f}"
    )
    if best_f1 - f1_now > 0.02:
        advice += f": predict.score_threshold={best:.2f} would keep fewer errors"
    sizes = plot_box_sizes(records, results.predictions, names, threshold, out)
    items = error_gallery(results, records, checked, threshold, out, cfg.data.bands)
    gallery = (
        H.note(
            f"most false positives + misses first, at confidence {threshold:g} and IoU 0.5; "
            "left: truth (green found, red missed), right: detections (red: false positive)"
        )
        + '<div class="gallery">'
        + "".join(H.figure(i.path, i.title, i.facts, run=run) for i in items)
        + "</div>"
        if items
        else H.note(f"no false positive and no miss at confidence {threshold:g}")
    )
    sections = [
        H.Section(
            "pr-curves",
            "precision-recall",
            H.image(pr, "precision-recall per class", run=run)
            + H.note("COCO's 101-point interpolated precision at IoU 0.5; its mean is AP@.5"),
        ),
        H.Section(
            "confidence",
            "confidence threshold",
            H.image(conf_plot, "F1, precision and recall against confidence", run=run)
            + H.note(advice + "; dashed: the threshold in use, dotted: the F1 peak"),
        ),
    ]
    if sizes is not None:
        sections.append(
            H.Section(
                "box-sizes",
                "box sizes",
                H.image(sizes, "box sizes", run=run)
                + H.note("COCO's small < 32 px < medium < 96 px < large (sqrt of the area)"),
            )
        )
    sections.append(H.Section("gallery", "errors gallery", gallery))
    return sections
