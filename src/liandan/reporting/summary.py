"""The facts a report starts with: data per split, class distribution, bands, environment."""

from __future__ import annotations

import csv
import platform
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from liandan.data.layouts import Sample
from liandan.data.scan import CheckedDataset
from liandan.reporting.samples import truth_mask
from liandan.tasks import get_task

MAX_MASKS = 500  # masks read per split for the pixel distribution when not cached


@dataclass
class DataSummary:
    """Counts per split and class: images (both tasks) and pixels (segmentation).

    Attributes:
        images: split -> ``(K,)`` images per class (segmentation, detection: images
            containing it).
        pixels: split -> ``(K,)`` labelled pixels per class (segmentation), or the
            task's own units (detection: boxes), named by ``unit``.
        sizes: split -> number of samples.
        sampled: splits whose pixel counts come from a subset of the masks.
        unit: what ``pixels`` counts.
    """

    classes: list[str]
    images: dict[str, np.ndarray] = field(default_factory=dict)
    pixels: dict[str, np.ndarray] = field(default_factory=dict)
    sizes: dict[str, int] = field(default_factory=dict)
    sampled: list[str] = field(default_factory=list)
    unit: str = "pixels"  # what ``pixels`` counts (detection: boxes)


def data_summary(checked: CheckedDataset, splits: dict[str, list[Sample]]) -> DataSummary:
    """Count samples and classes in each non-empty split."""
    classes = checked.index.classes
    n = classes.num_classes
    summary = DataSummary(list(classes.names))
    task = get_task(checked.index.task)
    mapper = task.target_mapper(classes)  # None: image labels
    for split in ("train", "val", "test"):
        samples = splits.get(split) or []
        if not samples:
            continue
        summary.sizes[split] = len(samples)
        counted = task.split_counts(checked, samples, n)
        if counted is not None:  # the task counts its own targets (boxes)
            summary.images[split], summary.pixels[split], summary.unit = counted
            continue
        images = np.zeros(n, np.int64)
        if mapper is None:
            for s in samples:
                images[int(s.target)] += 1  # type: ignore[arg-type]
            summary.images[split] = images
            continue
        pixels = np.zeros(n, np.int64)
        chosen = samples
        if not checked.masks and len(samples) > MAX_MASKS:
            step = len(samples) / MAX_MASKS
            chosen = [samples[int(i * step)] for i in range(MAX_MASKS)]
            summary.sampled.append(split)
        for s in chosen:
            mask = truth_mask(checked, s, mapper)
            counts = np.bincount(mask[mask >= 0].ravel(), minlength=n)[:n]
            pixels += counts
            images += counts > 0
        summary.images[split] = images
        summary.pixels[split] = pixels
    return summary


def band_rows(meta: dict[str, Any]) -> list[dict[str, Any]]:
    """One row per input band: the normalization statistics model.json carries."""
    norm = meta.get("normalization") or {}
    bands = meta.get("bands") or list(range(1, int(meta.get("in_channels", 0)) + 1))
    columns = {
        "mean": norm.get("mean") or [],
        "std": norm.get("std") or [],
        "low (percentile)": norm.get("percentiles_low") or [],
        "high (percentile)": norm.get("percentiles_high") or [],
    }
    rows = []
    for i, band in enumerate(bands):
        row: dict[str, Any] = {"band": band}
        for name, values in columns.items():
            if len(values) > i:
                row[name] = float(values[i])
        rows.append(row)
    return rows


def history_rows(run: Path) -> list[dict[str, str]]:
    path = run / "history.csv"
    if not path.is_file():
        return []
    with path.open(newline="") as fh:
        return list(csv.DictReader(fh))


def doctor_findings(run: Path) -> list[dict[str, Any]]:
    """The training doctor's findings (``doctor.json``); none when the file is absent.

    The doctor writes the file at its first finding, so a run without one has none.
    """
    import json

    path = run / "doctor.json"
    if not path.is_file():
        return []
    data = json.loads(path.read_text(encoding="utf-8"))
    return [f for f in data.get("findings", []) if isinstance(f, dict)]


def _version(name: str) -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version(name)
    except PackageNotFoundError:
        return "not installed"


def environment(
    run: Path, config: dict[str, Any], duration_s: float | None = None
) -> dict[str, str]:
    """Versions, device and durations (of this report's build, unless told the run's)."""
    import torch

    import liandan

    if torch.cuda.is_available():
        device = f"cuda: {torch.cuda.get_device_name(0)} (x{torch.cuda.device_count()})"
    elif getattr(torch.backends, "mps", None) is not None and torch.backends.mps.is_available():
        device = "mps"
    else:
        device = f"cpu ({torch.get_num_threads()} threads)"
    train = config.get("train", {}) if isinstance(config, dict) else {}
    env = {
        "liandan": liandan.__version__,
        "torch": torch.__version__,
        "lightning": _version("lightning"),
        "timm": _version("timm"),
        "segmentation-models-pytorch": _version("segmentation-models-pytorch"),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "device": device,
        "accelerator / precision": f"{train.get('accelerator', '?')} / "
        f"{train.get('precision', '?')}",
    }
    rows = history_rows(run)
    if rows and rows[-1].get("time_s"):
        env["training time"] = f"{float(rows[-1]['time_s']):.1f} s ({len(rows)} epochs)"
    if duration_s is not None:
        env["run duration (train + evaluate)"] = f"{duration_s:.1f} s"
    env["report built"] = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())
    return env
