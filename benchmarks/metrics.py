"""Time the confusion matrix of liandan against scikit-learn and torchmetrics.

Builds 10^8 random labelled pixels (6 classes, fixed seed), counts them with
``liandan.metrics.ConfusionMatrix``, ``sklearn.metrics.confusion_matrix`` and torchmetrics'
``MulticlassConfusionMatrix`` on the same arrays, checks that all agree, prints the
median times with ratios and appends a dated entry to ``benchmarks/RESULTS.md``.

    .venv/bin/python benchmarks/metrics.py                 # the full run (a few minutes)
    .venv/bin/python benchmarks/metrics.py --pixels 1e7 --no-write   # a quick look

scikit-learn is slow on 10^8 pixels, so it is timed on the first ``--sklearn-pixels``
(10^7 by default) and scaled linearly; the table says so.
"""

from __future__ import annotations

import argparse
import os
import shlex
import statistics
import sys
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import sklearn
import torch
from sklearn.metrics import confusion_matrix

from liandan.metrics import ConfusionMatrix

try:
    import torchmetrics
    from torchmetrics.classification import MulticlassConfusionMatrix
except ImportError:  # reported as "not available"
    torchmetrics = None

from machine import cpu_model

RESULTS = Path(__file__).with_name("RESULTS.md")
IGNORE = 255


def timed(fn: Callable[[], Any], sync: Callable[[], None]) -> tuple[float, Any]:
    """Seconds one call of ``fn`` takes, and its result."""
    sync()
    start = time.perf_counter()
    result = fn()
    sync()
    return time.perf_counter() - start, result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pixels", type=float, default=1e8)
    parser.add_argument("--sklearn-pixels", type=float, default=1e7)
    parser.add_argument("--classes", type=int, default=6)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cpu", help="torch device for liandan/torchmetrics")
    parser.add_argument("--no-write", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args()
    size, sk_size, n = (
        int(args.pixels),
        min(int(args.sklearn_pixels), int(args.pixels)),
        args.classes,
    )
    device = torch.device(args.device)
    sync = torch.cuda.synchronize if device.type == "cuda" else (lambda: None)

    rng = np.random.default_rng(args.seed)
    target8 = rng.integers(0, n, size, dtype=np.uint8)
    preds8 = rng.integers(0, n, size, dtype=np.uint8)
    ignored8 = target8.copy()
    ignored8[rng.random(size, dtype=np.float32) < 0.05] = IGNORE
    scenarios = [
        ("uint8", preds8, target8, None),
        ("int64", preds8.astype(np.int64), target8.astype(np.int64), None),
        (f"uint8, 5% ignore={IGNORE}", preds8, ignored8, IGNORE),
    ]

    def run_liandan(p: torch.Tensor, t: torch.Tensor, ignore: int | None) -> np.ndarray:
        cm = ConfusionMatrix(n, ignore_index=ignore, device=device)
        cm.update(p, t)
        return cm.numpy()

    def run_sklearn(p: np.ndarray, t: np.ndarray, ignore: int | None) -> np.ndarray:
        p, t = p[:sk_size], t[:sk_size]
        if ignore is not None:
            keep = t != ignore
            p, t = p[keep], t[keep]
        return confusion_matrix(t, p, labels=list(range(n)))

    def run_torchmetrics(
        p: torch.Tensor, t: torch.Tensor, ignore: int | None, validate: bool
    ) -> np.ndarray:
        metric = MulticlassConfusionMatrix(n, ignore_index=ignore, validate_args=validate)
        metric.update(p, t)
        return metric.compute().cpu().numpy()

    rows = []
    for name, preds_np, target_np, ignore in scenarios:
        preds, target = (
            torch.from_numpy(preds_np).to(device),
            torch.from_numpy(target_np).to(device),
        )
        tools: dict[str, Callable[[], np.ndarray]] = {
            "liandan": lambda p=preds, t=target, i=ignore: run_liandan(p, t, i),
            "sklearn": lambda p=preds_np, t=target_np, i=ignore: run_sklearn(p, t, i),
        }
        if torchmetrics is not None:
            for validate in (True, False):
                tools[f"torchmetrics{'' if validate else '_novalidate'}"] = (
                    lambda p=preds, t=target, i=ignore, v=validate: run_torchmetrics(p, t, i, v)
                )
        times: dict[str, list[float]] = {tool: [] for tool in tools}
        results: dict[str, np.ndarray] = {}
        for _ in range(args.repeats):  # interleaved, so the tools share the machine's load
            for tool, fn in tools.items():
                seconds, results[tool] = timed(fn, sync)
                times[tool].append(seconds)
        for tool, matrix in results.items():
            if tool != "sklearn" and not np.array_equal(matrix, results["liandan"]):
                raise SystemExit(f"{tool} disagrees with liandan on {name}")
        expected_sk = run_liandan(preds[:sk_size], target[:sk_size], ignore)
        if not np.array_equal(results["sklearn"], expected_sk):
            raise SystemExit(f"sklearn disagrees with liandan on {name}")
        medians = {tool: statistics.median(ts) for tool, ts in times.items()}
        medians["sklearn"] *= size / sk_size  # scaled linearly to the full size
        rows.append((name, medians))
        print(f"{name}: " + ", ".join(f"{k} {v:.3f}s" for k, v in medians.items()), flush=True)

    def cell(medians: dict[str, float], tool: str) -> tuple[str, str]:
        if tool not in medians:
            return "not available", "—"
        return f"{medians[tool]:.3f}", f"{medians[tool] / medians['liandan']:.1f}x"

    header = (
        "| input | liandan s | sklearn s | torchmetrics s | torchmetrics (validate_args=False) s "
        "| sklearn / liandan | torchmetrics / liandan | torchmetrics no-validate / liandan |"
    )
    lines = [header, "|" + "---|" * 8]
    for name, medians in rows:
        sk, sk_ratio = cell(medians, "sklearn")
        tm, tm_ratio = cell(medians, "torchmetrics")
        tmn, tmn_ratio = cell(medians, "torchmetrics_novalidate")
        lines.append(
            f"| {name} | {medians['liandan']:.3f} | {sk} | {tm} | {tmn} "
            f"| {sk_ratio} | {tm_ratio} | {tmn_ratio} |"
        )
    table = "\n".join(lines)
    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    command = shlex.join(["python", "benchmarks/metrics.py", *sys.argv[1:]])
    tm_version = torchmetrics.__version__ if torchmetrics is not None else "not available"
    entry = (
        f"\n## Confusion matrix, {size:.0e} pixels, {n} classes — "
        f"{datetime.now(UTC):%Y-%m-%d %H:%M} UTC\n\n"
        f"Machine: {cpu_model()}, {os.cpu_count()} cores (torch threads "
        f"{torch.get_num_threads()}), device {device}; load average at the end {load}. "
        f"torch {torch.__version__}, numpy {np.__version__}, scikit-learn "
        f"{sklearn.__version__}, torchmetrics {tm_version}. Seed {args.seed}; "
        f"median of {args.repeats} interleaved runs; sklearn timed on the first "
        f"{sk_size:.0e} pixels and scaled linearly to {size:.0e}; every tool's matrix "
        f"checked equal to liandan's. Command: `{command}`.\n\n"
        f"{table}\n"
    )
    print(entry)
    if not args.no_write:
        new = not RESULTS.exists()
        with RESULTS.open("a", encoding="utf-8") as out:
            if new:
                out.write("# Benchmark results\n\nAppend-only log of `benchmarks/*.py` runs.\n")
            out.write(entry)
        print(f"appended to {RESULTS}")


if __name__ == "__main__":
    main()
