"""``liandan compare RUN...``: finished runs' metrics side by side (table and plot)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from liandan.errors import CheckpointError, ConfigError, OutputError

SHOWN = ("accuracy", "balanced_accuracy", "kappa", "macro_f1", "mean_iou", "mean_dice")


def load_metrics(run: Path, split: str = "val") -> dict[str, Any]:
    """A run's metrics for ``split`` (metrics.json for val and k-fold parents)."""
    name = "metrics.json" if split == "val" else f"metrics_{split}.json"
    path = run / name
    if not path.is_file():
        hint = (
            "finish the run first" if split == "val" else f"liandan evaluate {run} --split {split}"
        )
        raise CheckpointError(f"no {name} in this run", where=run, hint=hint)
    return json.loads(path.read_text(encoding="utf-8"))


def compare(
    runs: list[str | Path], *, split: str = "val", plot: str | Path | None = None
) -> dict[str, Any]:
    """Each run's overall metrics (and, for k-fold runs, their spread across folds).

    Args:
        runs: finished run folders (a k-fold parent counts as one run).
        split: ``val`` (metrics.json; out-of-fold for k-fold parents) or ``test`` ...
        plot: a PNG path to draw the metrics side by side into, or None.

    Returns:
        ``{"metrics": [...], "runs": {run: {metric: value}}, "spread": {run: {metric: std}}}``

    >>> liandan.compare(["runs/a", "runs/b"])["runs"]["runs/a"]["mean_iou"]  # doctest: +SKIP
    0.81
    """
    if len(runs) < 1:
        raise ConfigError("name at least one run", where="compare")
    loaded = {str(r): load_metrics(Path(r), split) for r in runs}
    tasks = {m["task"] for m in loaded.values()}
    if len(tasks) > 1:
        raise ConfigError(
            f"the runs are of different tasks ({', '.join(sorted(tasks))})", where="compare"
        )
    shown = [k for k in SHOWN if any(m["overall"].get(k) is not None for m in loaded.values())]
    table = {r: {k: m["overall"].get(k) for k in shown} for r, m in loaded.items()}
    spread = {
        r: {k: m["folds"][k]["std"] for k in shown if k in m["folds"]}
        for r, m in loaded.items()
        if "folds" in m
    }
    result = {"metrics": shown, "runs": table, "spread": spread, "split": split}
    if plot is not None:
        if Path(plot).exists():  # never over a file of yours
            raise OutputError(
                "the plot file exists", where=plot, hint="give --plot a new file name"
            )
        draw(result, Path(plot))
    return result


def draw(result: dict[str, Any], path: Path) -> Path:
    """Grouped bars: one group per metric, one bar per run (error bars: fold std)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    import numpy as np

    from liandan.runs import atomic_write_bytes

    metrics, runs = result["metrics"], list(result["runs"])
    width = 0.8 / max(1, len(runs))
    fig, ax = plt.subplots(figsize=(max(6, 1.5 * len(metrics)), 4))
    x = np.arange(len(metrics))
    for i, run in enumerate(runs):
        values = [result["runs"][run][k] or 0.0 for k in metrics]
        errors = [result["spread"].get(run, {}).get(k) or 0.0 for k in metrics]
        ax.bar(x + i * width, values, width, yerr=errors, label=Path(run).name or run)
    ax.set_xticks(x + width * (len(runs) - 1) / 2, metrics, rotation=20)
    ax.set_ylim(0, 1)
    ax.set_title(f"{result['split']} metrics")
    ax.legend(fontsize="small")
    fig.tight_layout()
    import io

    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    atomic_write_bytes(path, buffer.getvalue())
    return path
