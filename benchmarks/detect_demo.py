"""The detection demo against its target: ``liandan demo --task detect``, all included.

Runs the demo as a user does (a fresh process in an empty folder), measures its wall
clock and peak memory (the child's maximum resident set size), reads the validation and
scene metrics it wrote, and appends one entry to RESULTS.md. Target (docs/detection.md):
mAP@.5 >= 0.75 within 5 minutes on 2 CPU cores.

    .venv/bin/python benchmarks/detect_demo.py               # appends to RESULTS.md
    .venv/bin/python benchmarks/detect_demo.py --no-write    # prints only
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import torch
from machine import cpu_model, publish

TARGET_S, TARGET_MAP50 = 300.0, 0.75


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=1, help="demos in a row")
    parser.add_argument("--no-write", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args()
    load_start = os.getloadavg()
    rows = []
    for _ in range(args.runs):
        with tempfile.TemporaryDirectory() as tmp:
            start = time.perf_counter()
            proc = subprocess.run(
                [sys.executable, "-m", "liandan.cli", "demo", "--task", "detect"],
                cwd=tmp, capture_output=True, text=True, check=False,
            )  # fmt: skip
            wall = time.perf_counter() - start
            if proc.returncode != 0:
                print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
                rows.append({"error": proc.returncode, "wall_s": wall})
                continue
            run = Path(tmp) / "runs" / "demo"
            val = json.loads((run / "metrics.json").read_text())["overall"]
            scene = json.loads((run / "predictions" / "scene_metrics.json").read_text())["overall"]
            with (run / "history.csv").open() as fh:  # the last epoch's step
                steps = int(list(csv.DictReader(fh))[-1]["step"])
            rows.append({"wall_s": wall, "val": val, "scene": scene, "steps": steps,
                         "load": os.getloadavg()[0]})  # fmt: skip
    # ru_maxrss of the children: the largest of them, in KiB on Linux
    peak_mb = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    report(rows, peak_mb, load_start, args)


def report(rows: list[dict], peak_mb: float, load_start: tuple[float, ...], args) -> None:
    lines = [
        f"## Detection demo (`liandan demo --task detect`) — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"Machine: {cpu_model()}, {os.cpu_count()} cores, no GPU; load average at the start "
        f"{' / '.join(f'{v:.1f}' for v in load_start)}, at the end "
        f"{' / '.join(f'{v:.1f}' for v in os.getloadavg())}. torch {torch.__version__}. "
        f"The demo as a user runs it, in a fresh process and an empty folder; wall clock "
        f"all included (imports, data generation, training, evaluation, report, scene "
        f"prediction). Peak memory of the largest demo process: {peak_mb:.0f} MiB. Target: "
        f"mAP@.5 >= {TARGET_MAP50} within {TARGET_S:.0f} s. Command: "
        f"`python benchmarks/detect_demo.py{' --runs ' + str(args.runs) if args.runs > 1 else ''}`.",
        "",
        "| run | wall s | steps | val mAP@.5 | val mAP@[.5:.95] | val mAP@.75 | recall / "
        "precision at 0.25 | scene mAP@.5 | target met | load at the end |",
        "|---|---|---|---|---|---|---|---|---|---|",
    ]
    for k, row in enumerate(rows, 1):
        if "error" in row:
            lines.append(f"| {k} | {row['wall_s']:.0f} | | failed: exit {row['error']} "
                         "| | | | | no | |")  # fmt: skip
            continue
        val, scene = row["val"], row["scene"]
        met = row["wall_s"] <= TARGET_S and val["map50"] >= TARGET_MAP50
        lines.append(
            f"| {k} | {row['wall_s']:.0f} | {row['steps']} | {val['map50']:.3f} | {val['map']:.3f} "
            f"| {val['map75']:.3f} | {val['recall']:.2f} / {val['precision']:.2f} "
            f"| {scene['map50']:.3f} | {'yes' if met else 'no'} | {row['load']:.1f} |"
        )
    lines.append("")
    publish(lines, write=not args.no_write)


if __name__ == "__main__":
    main()
