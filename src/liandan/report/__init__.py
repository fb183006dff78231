"""Figures for the run folder (matplotlib, Agg backend)."""

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
    fig.tight_layout()
    target = out / "curves.png"
    fig.savefig(target, dpi=100)
    plt.close(fig)
    return target


def plot_confusion(metrics: dict[str, Any], out: Path) -> Path:
    """Confusion matrix as counts and row-normalized (rows: truth, columns: prediction)."""
    plt = _plt()
    cm = np.asarray(metrics["confusion_matrix"], dtype=np.float64)
    names = metrics["classes"]
    rows = cm.sum(axis=1, keepdims=True)
    normalized = np.divide(cm, rows, out=np.zeros_like(cm), where=rows > 0)
    n = len(names)
    size = max(5.0, 0.5 * n + 3)
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
    fig.tight_layout()
    target = out / "confusion_matrix.png"
    fig.savefig(target, dpi=100)
    plt.close(fig)
    return target


def write_plots(run_dir: Path, metrics: dict[str, Any]) -> list[Path]:
    """Write ``plots/curves.png`` and ``plots/confusion_matrix.png`` for a run."""
    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    written = [plot_confusion(metrics, out)]
    curves = plot_curves(run_dir / "history.csv", out)
    if curves is not None:
        written.append(curves)
    return written
