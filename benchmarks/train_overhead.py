"""Wrapper overhead: `liandan`'s Lightning training step against a hand-written loop.

Same model (seeded), data (in memory, same order), optimizer, schedule, loss and batch
size; the only difference is the wrapper: liandan's LiandanTask + the Trainer from
`build_trainer` (checkpointing and history as in a real run, validation off) against
a plain PyTorch loop. Reports the median epoch time of each and their ratio
(target <= 1.05x for a small segmentation model), and checks that both reach the
same loss after the same steps (5 decimals), which proves they did the same work.

    python benchmarks/train_overhead.py [--epochs 6] [--threads 2]

Appends a dated entry to benchmarks/RESULTS.md.
"""

from __future__ import annotations

import argparse
import os
import platform
import statistics
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import lightning as L
import torch
from machine import cpu_model
from torch.utils.data import DataLoader, TensorDataset

from liandan.config import Config
from liandan.engine.task import LiandanTask
from liandan.engine.trainer import build_trainer

RESULTS = Path(__file__).with_name("RESULTS.md")


class EpochTimer(L.Callback):
    def __init__(self) -> None:
        self.times: list[float] = []
        self.losses: list[float] = []

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.start = time.perf_counter()

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:  # type: ignore[no-untyped-def]
        self.losses.append(float(outputs["loss"]))

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        self.times.append(time.perf_counter() - self.start)


def make_config(arch: str, encoder: str, epochs: int, batch: int) -> Config:
    return Config.load(
        None,
        [
            "task=segment",
            f"model.arch={arch}",
            f"model.encoder={encoder}",
            f"train.epochs={epochs}",
            f"train.batch_size={batch}",
            "train.progress=false",
            "loss.name=ce+dice",
        ],
    )


def data(n: int, size: int, classes: int, batch: int) -> DataLoader:
    g = torch.Generator().manual_seed(0)
    x = torch.randn(n, 3, size, size, generator=g)
    y = torch.randint(0, classes, (n, size, size), generator=g)
    return DataLoader(TensorDataset(x, y), batch_size=batch, shuffle=False)


def run_liandan(cfg: Config, loader: DataLoader, classes: int) -> tuple[list[float], list[float]]:
    torch.manual_seed(0)
    task = LiandanTask(cfg, [str(i) for i in range(classes)], 3)
    timer = EpochTimer()
    with tempfile.TemporaryDirectory() as tmp:
        trainer, _ = build_trainer(cfg, Path(tmp), extra_callbacks=[timer])
        trainer.limit_val_batches = 0
        trainer.fit(task, loader)
    return timer.times, timer.losses


def run_raw(cfg: Config, loader: DataLoader, classes: int) -> tuple[list[float], list[float]]:
    from liandan.losses import build_loss
    from liandan.models import build_model, encoder_parameters
    from liandan.optim import build_optimizer, build_scheduler

    torch.manual_seed(0)
    model = build_model(cfg.model, task="segment", num_classes=classes, in_channels=3)
    criterion = build_loss(cfg.loss, task="segment", num_classes=classes, ignore_index=-1)
    optimizer = build_optimizer(model, cfg.optim, encoder_params=encoder_parameters(model))
    scheduler, _ = build_scheduler(
        optimizer, cfg.schedule, epochs=cfg.train.epochs, steps_per_epoch=len(loader)
    )
    times, losses = [], []
    for _ in range(cfg.train.epochs):
        model.train()
        start = time.perf_counter()
        for x, y in loader:
            optimizer.zero_grad(set_to_none=True)
            loss = criterion(model(x), y)
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(float(loss))
        times.append(time.perf_counter() - start)
    return times, losses


def machine() -> str:
    cpu = cpu_model()
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    load = " / ".join(f"{v:.1f}" for v in os.getloadavg())
    return (
        f"{cpu}, {os.cpu_count()} cores (torch threads {torch.get_num_threads()}), {gpu}; "
        f"load average {load}; torch {torch.__version__}, lightning {L.__version__}, "
        f"Python {platform.python_version()}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--threads", type=int, default=None)
    parser.add_argument("--no-record", action="store_true", help="print only")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    cases = [
        # (label, arch, encoder, images, size, batch)
        ("small segmentation: U-Net/MobileNetV2, 128 px", "unet", "mobilenet_v2", 32, 128, 8),
        ("tiny model: SegNet, 32 px", "segnet", "resnet34", 64, 32, 16),
    ]
    rows = []
    for label, arch, encoder, n, size, batch in cases:
        cfg = make_config(arch, encoder, args.epochs, batch)
        loader = data(n, size, 3, batch)
        # interleave so both see the same machine load; the first epoch is warm-up
        raw_t, raw_l = run_raw(cfg, loader, 3)
        lia_t, lia_l = run_liandan(make_config(arch, encoder, args.epochs, batch), loader, 3)
        raw_med = statistics.median(raw_t[1:])
        lia_med = statistics.median(lia_t[1:])
        same = round(raw_l[-1], 5) == round(lia_l[-1], 5)
        rows.append(
            (label, len(loader), raw_med, lia_med, lia_med / raw_med, raw_l[-1], lia_l[-1], same)
        )
        print(
            f"{label}: raw {raw_med:.3f} s/epoch, liandan {lia_med:.3f} s/epoch, "
            f"ratio {lia_med / raw_med:.3f}x, final loss {raw_l[-1]:.5f} vs {lia_l[-1]:.5f}"
        )
    if args.no_record:
        return
    stamp = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [
        f"\n## Training wrapper overhead — {stamp}\n",
        f"Machine: {machine()}. Median of {args.epochs - 1} epochs after a warm-up epoch; "
        "data in memory, same order; validation off. "
        "Command: `python benchmarks/train_overhead.py`.\n",
        "| model | steps/epoch | raw loop s/epoch | liandan s/epoch | liandan / raw | "
        "final loss raw | final loss liandan | equal to 5 decimals |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for label, steps, raw_med, lia_med, ratio, lr_, ll, same in rows:
        lines.append(
            f"| {label} | {steps} | {raw_med:.3f} | {lia_med:.3f} | {ratio:.3f}x | "
            f"{lr_:.5f} | {ll:.5f} | {'yes' if same else 'no'} |"
        )
    with RESULTS.open("a", encoding="utf-8") as fh:
        fh.write("\n".join(lines) + "\n")
    print(f"appended to {RESULTS}")
    sys.exit(0)


if __name__ == "__main__":
    main()
