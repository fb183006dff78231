"""Callbacks: history.csv, one row per epoch, written atomically."""

from __future__ import annotations

import csv
import io
import math
import time
from pathlib import Path
from typing import Any

import lightning as L

from liandan.runs import atomic_write_text


def _number(value: Any) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


class HistoryCallback(L.Callback):
    """Writes ``history.csv``: epoch, step, time_s, lr per group, losses, val metrics."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.rows: list[dict[str, Any]] = []
        self.start = time.perf_counter()

    def on_train_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking or not trainer.is_global_zero:
            return
        m = trainer.callback_metrics
        row: dict[str, Any] = {
            "epoch": trainer.current_epoch + 1,
            "step": trainer.global_step,
            "time_s": round(time.perf_counter() - self.start, 3),
        }
        for optimizer in trainer.optimizers:
            for i, group in enumerate(optimizer.param_groups):
                row[f"lr_{group.get('name', i)}"] = group["lr"]
        row["train_loss"] = _number(m.get("train/loss_epoch"))
        row["val_loss"] = _number(m.get("val/loss"))
        for key, value in sorted(m.items()):
            if key.startswith("val/") and key != "val/loss":
                row["val_" + key[4:]] = _number(value)
        self.rows.append(row)
        self.write()

    def write(self) -> None:
        fields: list[str] = []
        for row in self.rows:
            fields += [k for k in row if k not in fields]
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=fields)
        writer.writeheader()
        for row in self.rows:
            writer.writerow({k: "" if row.get(k) is None else row.get(k) for k in fields})
        atomic_write_text(self.path, buffer.getvalue())

    def state_dict(self) -> dict[str, Any]:
        return {"rows": self.rows}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        self.rows = list(state_dict.get("rows", []))
