"""The metric tables the command line prints: the columns are the metrics the task wrote."""

from __future__ import annotations

import re
from typing import Any

from rich.console import Console

from liandan.cli_output import per_class_columns, show_metrics
from liandan.metrics import PER_CLASS_KEYS, compute_metrics

DETECTION = {
    "task": "detect",
    "split": "val",
    "classes": ["car", "ship"],
    "overall": {"map": 0.5, "map50": 0.75, "precision": 0.6, "recall": 0.7, "f1": 0.646},
    "per_class": {
        "car": {"ap": 0.625, "ap50": 0.875, "precision": 0.5, "recall": 0.75, "f1": 0.6}
        | {"tp": 3, "fp": 3, "fn": 1},
        "ship": {"ap": None, "ap50": None, "precision": None, "recall": None, "f1": None}
        | {"tp": 0, "fp": 0, "fn": 0},
    },
}


def printed(metrics: dict[str, Any]) -> list[list[str]]:
    """The per-class table's lines as printed, split into cells."""
    console = Console(record=True, width=200, color_system=None)
    show_metrics(console, metrics, "done")
    text = console.export_text()
    lines = text[text.index("per class") :].splitlines()
    rows = [re.split("[│┃]", line) for line in lines]
    return [[c.strip() for c in row[1:-1]] for row in rows if len(row) > 2]


def test_detection_prints_its_own_per_class_columns() -> None:
    header, car, ship = printed(DETECTION)
    assert header == ["class", "precision", "recall", "f1", "ap", "ap50", "tp", "fp", "fn"]
    assert car == ["car", "0.5000", "0.7500", "0.6000", "0.6250", "0.8750", "3", "3", "1"]
    assert ship == ["ship", "—", "—", "—", "—", "—", "0", "0", "0"]


def test_segmentation_keeps_its_columns_and_f_beta_label() -> None:
    metrics = compute_metrics([[5, 1], [2, 4]], ["land", "water"], task="segment", split="val")
    assert per_class_columns(metrics) == list(PER_CLASS_KEYS)
    header, land, _ = printed(metrics)
    assert header == ["class", "precision", "recall", "f1", "F2", "iou", "dice", "support"]
    assert land[0] == "land" and land[1] == f"{5 / 7:.4f}" and land[-1] == "6"


def test_class_names_print_as_written() -> None:
    metrics = {**DETECTION, "classes": ["[b]old", "ship"]}
    metrics["per_class"] = {"[b]old": DETECTION["per_class"]["car"], "ship": {}}
    _, first, second = printed(metrics)
    assert first[0] == "[b]old" and second[1:] == ["—"] * 8
