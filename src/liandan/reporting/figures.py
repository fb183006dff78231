"""Figures of a run, each one PNG under ``plots/`` (matplotlib, Agg backend).

Training curves from history.csv, the confusion matrix (counts and row-normalized),
precision-recall and ROC curves per class, and the class distribution per split.
"""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import numpy as np


def _plt():  # type: ignore[no-untyped-def]
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, target: Path) -> Path:
    """Lay ``fig`` out, write it to ``target`` (100 dpi PNG) and close it."""
    plt = _plt()
    fig.tight_layout()
    fig.savefig(target, dpi=100)
    plt.close(fig)
    return target


def plot_curves(history_csv: Path, out: Path) -> Path | None:
    """Losses, validation metrics and learning rate per epoch, from history.csv."""
    if not history_csv.is_file():
        return None
    with history_csv.open(newline="") as fh:
        rows = list(csv.DictReader(fh))
    if not rows:
        return None

    def column(name: str) -> list[float]:
        return [float(r[name]) if r.get(name) not in (None, "") else np.nan for r in rows]

    plt = _plt()
    epochs = column("epoch")
    fig, axes = plt.subplots(1, 3, figsize=(15, 4))
    for key in ("train_loss", "val_loss"):
        if key in rows[0]:
            axes[0].plot(epochs, column(key), marker="o", label=key)
    axes[0].set_title("loss")
    for key in rows[0]:
        if key.startswith("val_") and key != "val_loss":
            axes[1].plot(epochs, column(key), marker="o", label=key[4:])
    axes[1].set_title("validation metrics")
    axes[1].set_ylim(0, 1.02)
    for key in rows[0]:
        if key.startswith("lr_"):
            axes[2].plot(epochs, column(key), marker="o", label=key)
    axes[2].set_title("learning rate (end of epoch)")
    axes[2].set_yscale("log")
    for ax in axes:
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8)
    return save_figure(fig, out / "curves.png")


def plot_confusion(metrics: dict[str, Any], out: Path) -> Path:
    """Confusion matrix as counts and row-normalized (rows: truth, columns: prediction)."""
    plt = _plt()
    cm = np.asarray(metrics["confusion_matrix"], dtype=np.float64)
    # detection's matrix has a background row and column beyond the classes
    names = metrics.get("confusion_labels") or metrics["classes"]
    rows = cm.sum(axis=1, keepdims=True)
    normalized = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    n = len(names)
    size = min(max(5.0, 0.5 * n + 3), 20.0)  # inches; 40+ classes get smaller cells
    fig, axes = plt.subplots(1, 2, figsize=(2 * size, size))
    for ax, data, title, fmt in (
        (axes[0], cm, "counts", "{:.0f}"),
        (axes[1], normalized, "row-normalized (recall)", "{:.2f}"),
    ):
        ax.imshow(data, cmap="Blues")
        ax.set_title(title)
        ax.set_xticks(range(n), names, rotation=45, ha="right")
        ax.set_yticks(range(n), names)
        ax.set_xlabel("prediction")
        ax.set_ylabel("truth")
        if n <= 25:
            top = data.max() if data.size else 0
            for i in range(n):
                for j in range(n):
                    color = "white" if data[i, j] > top / 2 else "black"
                    ax.text(
                        j,
                        i,
                        fmt.format(data[i, j]),
                        ha="center",
                        va="center",
                        color=color,
                        fontsize=8,
                    )
    return save_figure(fig, out / "confusion_matrix.png")


MAX_CURVES = 20  # classes drawn in the PR / ROC plots (the largest by support)


def plot_pr_roc(
    probs: np.ndarray,
    targets: np.ndarray,
    classes: list[str],
    colors: list[tuple[int, int, int]],
    out: Path,
) -> Path | None:
    """One-vs-rest precision-recall and ROC curves, one line per class.

    Classes absent from the truth have neither curve and are left out; with many
    classes only the ``MAX_CURVES`` most frequent are drawn.
    """
    from sklearn.metrics import auc, average_precision_score, precision_recall_curve, roc_curve

    support = np.bincount(targets, minlength=len(classes))
    drawn = [c for c in np.argsort(-support, kind="stable") if support[c] > 0][:MAX_CURVES]
    if not drawn:
        return None
    plt = _plt()
    fig, (ax_pr, ax_roc) = plt.subplots(1, 2, figsize=(12, 5))
    for c in sorted(drawn):
        positive = targets == c
        color = np.asarray(colors[c % len(colors)]) / 255 if colors else None
        precision, recall, _ = precision_recall_curve(positive, probs[:, c])
        ap = average_precision_score(positive, probs[:, c])
        ax_pr.step(recall, precision, where="post", color=color, label=f"{classes[c]} AP {ap:.2f}")
        if positive.all():
            continue  # no negatives: no ROC curve
        fpr, tpr, _ = roc_curve(positive, probs[:, c])
        area = float(auc(fpr, tpr))
        ax_roc.plot(fpr, tpr, color=color, label=f"{classes[c]} AUC {area:.2f}")
    ax_roc.plot([0, 1], [0, 1], color="grey", linestyle=":", linewidth=1)
    for ax, title, xlabel, ylabel in (
        (ax_pr, "precision-recall (one vs rest)", "recall", "precision"),
        (ax_roc, "ROC (one vs rest)", "false positive rate", "true positive rate"),
    ):
        ax.set_title(title)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.set_xlim(-0.02, 1.02)
        ax.set_ylim(-0.02, 1.02)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=8, loc="lower left" if ax is ax_pr else "lower right")
    return save_figure(fig, out / "pr_roc.png")


def plot_class_distribution(
    counts: dict[str, np.ndarray],
    classes: list[str],
    unit: str,
    out: Path,
) -> Path | None:
    """Bars of the class frequencies (share of ``unit``) in each split."""
    splits = [s for s, c in counts.items() if c.sum() > 0]
    if not splits:
        return None
    plt = _plt()
    n = len(classes)
    width = 0.8 / len(splits)
    fig, ax = plt.subplots(figsize=(max(6.0, 0.6 * n + 3), 4))
    x = np.arange(n)
    for i, split in enumerate(splits):
        share = counts[split] / counts[split].sum()
        ax.bar(x + i * width - 0.4 + width / 2, share, width, label=f"{split} ({unit})")
    ax.set_xticks(x, classes, rotation=45 if n > 6 else 0, ha="right" if n > 6 else "center")
    ax.set_ylabel(f"share of {unit}")
    ax.set_title("class distribution")
    ax.grid(alpha=0.3, axis="y")
    ax.legend(fontsize=8)
    fig.tight_layout()
    target = out / f"class_distribution_{unit}.png"
    fig.savefig(target, dpi=100)
    plt.close(fig)
    return target
