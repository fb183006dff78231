"""AutoML acceptance: `liandan train DATA` (planned) against hand-written configs.

Issue 6 asks that `liandan train DATA` with no config reach within 0.02 mean IoU of the
best of at least six hand-written configs on the demo dataset, in the same time budget.
Every config here runs as its own `liandan train` process, one after the other, with the
same `--budget`; the budget covers everything the run does before training (the plan's
lr range test included). The hand-written configs are what a practitioner might try
first on 128 px RGB texture mosaics: the built-in defaults, the README demo's settings,
other decoders, another loss, SGD. Every run trains from random weights (no download).

    python benchmarks/automl_demo.py --budget 3m
    python benchmarks/automl_demo.py --budget 20s --only auto,defaults --no-write  # smoke
    python benchmarks/automl_demo.py --budget 3m --only "auto,demo (README)" --seed 1

The table (and, unless --no-write, a dated entry in benchmarks/RESULTS.md) lists each
config's validation mean IoU, the epochs it ran and its wall time.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from machine import cpu_model

# The hand-written configs: overrides on the built-in defaults (`--no-plan`). The
# budget decides the epochs, so each allows up to 300 as the plan does.
LONG = ["train.epochs=300"]
SQUARE = ["augment.hflip=0.5", "augment.vflip=0.5", "augment.rotate90=0.5"]
HAND: dict[str, list[str]] = {
    "defaults": [*LONG],  # U-Net/ResNet-34 at 256 px, AdamW 1e-3, CE+Dice, h-flips
    "demo (README)": [
        *LONG,
        "model.arch=unet",
        "model.encoder=resnet18",
        "data.image_size=128",
        "train.batch_size=8",
        "optim.lr=1e-3",
        *SQUARE,
    ],
    "unet-r34 128px": [*LONG, "model.encoder=resnet34", "data.image_size=128", *SQUARE],
    "fpn-r18": [*LONG, "model.arch=fpn", "model.encoder=resnet18", "data.image_size=128"],
    "deeplabv3+-r18": [
        *LONG,
        "model.arch=deeplabv3plus",
        "model.encoder=resnet18",
        "data.image_size=128",
        *SQUARE,
    ],
    "unet-mbv2 focal+dice lr3e-3": [
        *LONG,
        "model.encoder=mobilenet_v2",
        "data.image_size=128",
        "loss.name=focal+dice",
        "optim.lr=3e-3",
        *SQUARE,
    ],
    "unet-r18 sgd poly": [
        *LONG,
        "model.encoder=resnet18",
        "data.image_size=128",
        "optim.name=sgd",
        "optim.lr=0.05",
        "optim.nesterov=true",
        "schedule.name=poly",
        *SQUARE,
    ],
}


def run_one(data: Path, out: Path, name: str, args: list[str], budget: str) -> dict:
    """One `liandan train` process; its metrics, epochs and wall time."""
    exe = Path(sys.executable).with_name("liandan")
    cmd = [str(exe), "train", str(data), "--budget", budget, "--out", str(out), "--name", name]
    cmd += [*args, "train.progress=false"]
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    run = out / name
    if proc.returncode != 0:
        print(proc.stdout[-2000:], proc.stderr[-2000:], file=sys.stderr)
        return {"name": name, "failed": proc.returncode, "wall_s": wall}
    metrics = json.loads((run / "metrics.json").read_text())
    budget_info = json.loads((run / "budget.json").read_text())
    import yaml

    config = yaml.safe_load((run / "config.yaml").read_text())
    return {
        "name": name,
        "mean_iou": metrics["overall"]["mean_iou"],
        "epochs_run": budget_info.get("epochs_run", budget_info.get("epochs_planned")),
        "wall_s": wall,
        "lr": f"{float(config['optim']['lr']):.3g}",
        "run_s": budget_info.get("actual_s"),
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--budget", default="3m", help="the same budget for every config")
    parser.add_argument("--only", default="", help="comma-separated names (auto = the plan)")
    parser.add_argument("--no-write", action="store_true", help="do not append to RESULTS.md")
    parser.add_argument("--keep", type=Path, default=None, help="keep the runs in this folder")
    parser.add_argument("--seed", type=int, default=0, help="train.seed of every run")
    opts = parser.parse_args(argv)

    from liandan.data.demo import make_segment_demo

    configs: dict[str, list[str]] = {"auto": []}  # `liandan train DATA`: plan by default
    configs.update({k: ["--no-plan", *v] for k, v in HAND.items()})
    if opts.only:
        wanted = opts.only.split(",")
        configs = {k: v for k, v in configs.items() if k in wanted}
    with tempfile.TemporaryDirectory() as tmp:
        base = opts.keep or Path(tmp)
        data = base / "data"
        if not data.exists():
            make_segment_demo(data)
        env_cache = base / "cache"
        os.environ["LIANDAN_CACHE_DIR"] = str(env_cache)  # scan cache off the home folder
        rows = []
        for i, (name, args) in enumerate(configs.items()):
            folder = f"c{i}"
            while (base / "runs" / folder).exists():  # --keep: never read an older run
                folder += "-again"
            seeded = [*args, f"train.seed={opts.seed}"]
            row = run_one(data, base / "runs", folder, seeded, opts.budget)
            row["name"] = name if opts.seed == 0 else f"{name} (seed {opts.seed})"
            rows.append(row)
            print(f"{name}: {row}", flush=True)
    table = _table(rows, opts.budget)
    print(table)
    if not opts.no_write:
        _append(table, rows)
    return 0


def _table(rows: list[dict], budget: str) -> str:
    done = [r for r in rows if "mean_iou" in r]
    best_hand = max((r["mean_iou"] for r in done if not r["name"].startswith("auto")), default=None)
    lines = [
        f"| config (budget {budget}) | val mean IoU | vs best hand-written | epochs | lr "
        "| run s | process s |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        if "mean_iou" not in r:
            lines.append(
                f"| {r['name']} | failed (exit {r['failed']}) | | | | | {r['wall_s']:.0f} |"
            )
            continue
        gap = "" if best_hand is None else f"{r['mean_iou'] - best_hand:+.3f}"
        lines.append(
            f"| {r['name']} | {r['mean_iou']:.3f} | {gap} | {r['epochs_run']} | {r['lr']} | "
            f"{r['run_s'] or 0:.0f} | {r['wall_s']:.0f} |"
        )
    return "\n".join(lines)


def _append(table: str, rows: list[dict]) -> None:
    import torch

    import liandan

    load = " / ".join(f"{x:.1f}" for x in os.getloadavg())
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    entry = (
        f"\n## AutoML acceptance: planned vs hand-written configs — {stamp}\n\n"
        f"Machine: {cpu_model()}, {os.cpu_count()} cores, "
        f"{'GPU ' + torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'no GPU'}; "
        f"load average at the end {load}; liandan {liandan.__version__}, torch "
        f"{torch.__version__}. Demo segmentation data (48 train / 16 val mosaics of 128 px), "
        "random initialization, each config one `liandan train` process with the same "
        "`--budget`, run one after the other. Command: `python benchmarks/automl_demo.py`.\n\n"
        f"{table}\n"
    )
    with open(Path(__file__).with_name("RESULTS.md"), "a", encoding="utf-8") as fh:
        fh.write(entry)


if __name__ == "__main__":
    sys.exit(main())
