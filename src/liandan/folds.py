"""k-fold cross-validation: one run per fold, their metrics pooled, their models an ensemble.

``liandan train DATA --folds 5`` (``liandan.train_folds``) writes::

    runs/NAME/
      config.yaml      the shared config (without the fold)
      fold-0/ ...      one complete run per fold (its own report, checkpoints, model/)
      metrics.json     out-of-fold metrics (every sample validated once, by the fold
                       that did not train on it) + the mean and std of each metric
      folds.json       per-fold metrics, mean and std
      report.html      the fold table
      model/model.json the ensemble: `liandan predict runs/NAME ...` averages the
                       folds' probabilities

Folds are dealt from the training and validation samples (stratified by class for
classification, by image for segmentation); a test split stays aside for
``liandan evaluate runs/NAME --split test``. Every fold normalizes with the
statistics of the whole pool, so the members take the same input.
"""

from __future__ import annotations

import html
import json
import math
import statistics
import time
from pathlib import Path
from typing import Any

from liandan.config import Config, parse_duration
from liandan.errors import ConfigError
from liandan.metrics import compute_metrics
from liandan.runs import atomic_write_json, atomic_write_text, create_run_dir, read_model_json

OVERALL = ("accuracy", "balanced_accuracy", "kappa", "macro_f1", "mean_iou", "mean_dice")


def fold_budget(budget: str | None, started: float, folds_left: int) -> str | None:
    """A fold's share of what is left of ``train.budget``, as a duration string."""
    if not budget:
        return None
    left = parse_duration(budget) - (time.perf_counter() - started) - 2.0  # the summary
    return f"{max(1.0, left / folds_left):.0f}s"


def train_folds(
    data: str | Path | None,
    config: Config | str | Path | None = None,
    overrides: list[str] | None = None,
    *,
    folds: int = 5,
    out: str | Path = "runs",
    name: str = "train",
    plan: bool = False,
    started: float | None = None,
) -> Any:
    """Train one run per fold into ``out/name/fold-K``; pool their metrics; an ensemble.

    Args:
        data: the dataset folder (or ``data.root`` in the config).
        config: a Config, a YAML path, or None.
        overrides: dotted ``key=value`` strings.
        folds: the number of folds (at least 2).
        out: parent folder of runs.
        name: the parent run's name.
        plan: plan the config from the data first (as ``liandan train DATA``).
        started: ``time.perf_counter()`` of the command's start (``train.budget`` is
            shared by the folds: each gets its part of what is left).

    Returns:
        A :class:`liandan.api.RunResult` for the parent run (its metrics are the
        out-of-fold ones).

    >>> liandan.train_folds("data/", folds=5).metrics["folds"]["mean_iou"]  # doctest: +SKIP
    {'mean': 0.81, 'std': 0.02, 'values': [...]}
    """
    from liandan.api import RunResult, _as_config, train_into
    from liandan.data.datamodule import build_data

    if folds < 2:
        raise ConfigError("k-fold cross-validation needs at least 2 folds", where="--folds")
    start = time.perf_counter() if started is None else started
    planned = None
    if plan:
        from liandan.planning import planned_config

        config, planned = planned_config(data, config, overrides)
        overrides = None
    cfg = _as_config(config, overrides)
    if data is not None:
        cfg.data.root = Path(data).resolve()
    parent = create_run_dir(out, name)
    if planned is not None:
        planned.write(parent / "plan.yaml")
    cfg.save(parent / "config.yaml")
    budget = cfg.train.budget
    members: list[dict[str, Any]] = []
    notes: list[str] = []
    for k in range(folds):
        fold_cfg = cfg.model_copy(deep=True)
        fold_cfg.data.folds, fold_cfg.data.fold = folds, k
        fold_cfg.train.budget = fold_budget(budget, start, folds - k)
        bundle = build_data(fold_cfg)
        if getattr(bundle.val_loader.dataset, "evaluate_with", None) is not None:
            raise ConfigError(
                "k-fold cross-validation of tiled rasters is not supported yet",
                where="--folds",
                hint="give the rasters a val/ split, or train without --folds",
            )
        fold_dir = create_run_dir(parent, f"fold-{k}")
        result = train_into(fold_cfg, bundle, fold_dir, started=time.perf_counter())
        members.append(result.metrics)
        notes = list(result.notes)
    metrics = pool_metrics(members)
    atomic_write_json(parent / "metrics.json", metrics)
    atomic_write_json(parent / "folds.json", {"folds": metrics["folds"], "per_fold": members})
    write_ensemble(parent, folds)
    write_fold_report(parent, metrics)
    notes.append(f"{folds} folds: out-of-fold metrics in {parent / 'metrics.json'}")
    return RunResult(parent, metrics, cfg, notes, time.perf_counter() - start)


def pool_metrics(members: list[dict[str, Any]]) -> dict[str, Any]:
    """Out-of-fold metrics from the folds' confusion matrices, plus mean/std per metric."""
    import numpy as np

    first = members[0]
    confusion = sum(np.asarray(m["confusion_matrix"], dtype=np.int64) for m in members)
    pooled = compute_metrics(
        np.asarray(confusion), first["classes"], task=first["task"], split="cv"
    )
    summary: dict[str, dict[str, Any]] = {}
    for key in OVERALL:
        values = [m["overall"].get(key) for m in members]
        known = [float(v) for v in values if v is not None and math.isfinite(float(v))]
        summary[key] = {
            "mean": statistics.mean(known) if known else None,
            "std": statistics.stdev(known) if len(known) > 1 else (0.0 if known else None),
            "values": values,
        }
    pooled["folds"] = summary
    pooled["split"] = "cv"  # out-of-fold: every sample validated once
    return pooled


def write_ensemble(parent: Path, folds: int) -> None:
    """``parent/model/model.json``: fold 0's description plus the members' folders."""
    _, meta = read_model_json(parent / "fold-0")
    meta = {**meta, "ensemble": [f"fold-{k}" for k in range(folds)]}
    atomic_write_json(parent / "model" / "model.json", meta)


def write_fold_report(parent: Path, metrics: dict[str, Any]) -> Path:
    """A one-page report: each metric per fold, mean ± std, and the pooled value."""
    folds = metrics["folds"]
    n = len(next(iter(folds.values()))["values"])
    head = "".join(f"<th>fold {k}</th>" for k in range(n))
    rows = []
    for key, row in folds.items():
        if row["mean"] is None:
            continue
        cells = "".join(f"<td>{_fmt(v)}</td>" for v in row["values"])
        pooled = metrics["overall"].get(key)
        rows.append(
            f"<tr><th>{html.escape(key)}</th>{cells}<td>{row['mean']:.4f} ± {row['std']:.4f}"
            f"</td><td>{_fmt(pooled)}</td></tr>"
        )
    links = " ".join(f'<a href="fold-{k}/report.html">fold {k}</a>' for k in range(n))
    page = (
        "<!doctype html><html><head><meta charset='utf-8'><title>"
        f"{html.escape(parent.name)}: {n}-fold cross-validation</title><style>"
        "body{font-family:sans-serif;margin:2em}td,th{padding:4px 10px;text-align:right}"
        "table{border-collapse:collapse}tr:nth-child(even){background:#f4f4f4}</style>"
        f"</head><body><h1>{html.escape(parent.name)}: {n}-fold cross-validation</h1>"
        f"<p>Validation metrics of each fold, their mean ± standard deviation, and the "
        "out-of-fold value (every sample validated once, by the fold that did not train "
        "on it; pooled confusion matrix). <code>liandan predict</code> on this folder "
        f"averages the {n} folds' probabilities.</p><table><tr><th>metric</th>{head}"
        f"<th>mean ± std</th><th>out-of-fold</th></tr>{''.join(rows)}</table>"
        f"<p>Fold reports: {links}</p></body></html>"
    )
    path = parent / "report.html"
    atomic_write_text(path, page)
    return path


def _fmt(value: Any) -> str:
    return "–" if value is None else f"{float(value):.4f}"


def is_fold_parent(run: Path) -> bool:
    """Whether ``run`` is a k-fold parent (its model is an ensemble of its folds)."""
    path = run / "model" / "model.json"
    try:
        return "ensemble" in json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return False
