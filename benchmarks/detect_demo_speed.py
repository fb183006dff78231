"""How far a detector gets on the embedded shapes demo in a fixed CPU time budget.

Builds the detection demo (``liandan.tasks.detect.demo``), trains a torchvision detector
over a timm encoder (``liandan.tasks.detect.models``) with AdamW and a cosine schedule
over wall-clock time (linear warm-up first), then scores the validation images with
``evaluate_detections`` and prints steps/s and mAP@.5. A smoke check of the defaults for
``liandan demo --task detect`` (target: mAP@.5 >= 0.75 within 5 minutes on 2 CPU
cores, everything included), not a test.

    python benchmarks/detect_demo_speed.py --seconds 240
    python benchmarks/detect_demo_speed.py --encoder resnet10t --fpn-channels 128
"""

from __future__ import annotations

import argparse
import math
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from liandan.tasks.detect.data import DetectionData, detection_collate, to_original
from liandan.tasks.detect.demo import make_detect_demo
from liandan.tasks.detect.formats import read_detection
from liandan.tasks.detect.metrics import Detections, evaluate_detections
from liandan.tasks.detect.models import build_detector


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--seconds", type=float, default=240, help="training wall-clock budget")
    ap.add_argument("--arch", default="fcos")
    ap.add_argument("--encoder", default="resnet18")
    ap.add_argument("--fpn-channels", type=int, default=128)
    ap.add_argument("--size", type=int, default=128, help="image side, px")
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--lr", type=float, default=2e-3)
    ap.add_argument("--weight-decay", type=float, default=0.05)
    ap.add_argument("--warmup", type=float, default=0.05, help="fraction of the budget")
    ap.add_argument("--n-train", type=int, default=400)
    ap.add_argument("--n-val", type=int, default=100)
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    start = time.perf_counter()

    # data: the demo, read back as any YOLO dataset would be
    root = Path(tempfile.mkdtemp(prefix="detect-demo-")) / "shapes"
    make_detect_demo(root, n_train=args.n_train, n_val=args.n_val, size=args.size, seed=args.seed)
    ds = read_detection(root)
    train_recs = [r for r in ds.images if r.split == "train"]
    val_recs = [r for r in ds.images if r.split == "val"]
    k = len(ds.class_names)
    train = DetectionData(
        train_recs, args.size, train=True, vflip=0.5, rotate90=0.5, seed=args.seed
    )
    val = DetectionData(val_recs, args.size, train=False)
    gen = torch.Generator().manual_seed(args.seed)
    loader = DataLoader(
        train,
        batch_size=args.batch,
        shuffle=True,
        drop_last=True,
        collate_fn=detection_collate,
        generator=gen,
    )
    data_s = time.perf_counter() - start

    # model and optimizer; the schedule follows the clock, not a step count
    model = build_detector(args.arch, args.encoder, k, 3, args.size, fpn_channels=args.fpn_channels)
    opt = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
    model.train()
    steps, losses = 0, []
    t0 = time.perf_counter()
    done = False
    while not done:
        for images, targets in loader:
            frac = (time.perf_counter() - t0) / args.seconds
            if frac >= 1:
                done = True
                break
            warm = min(1.0, frac / args.warmup) if args.warmup else 1.0
            for group in opt.param_groups:
                group["lr"] = args.lr * warm * 0.5 * (1 + math.cos(math.pi * frac))
            loss = sum(model(images, targets).values())
            opt.zero_grad(set_to_none=True)
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 10.0)
            opt.step()
            losses.append(float(loss.detach()))
            steps += 1
            if steps % 20 == 0:
                print(
                    f"step {steps:4d}  {time.perf_counter() - t0:6.1f}s  "
                    f"loss {np.mean(losses[-20:]):.3f}",
                    flush=True,
                )
    train_s = time.perf_counter() - t0

    # evaluation at the original pixels of each validation image
    t1 = time.perf_counter()
    model.eval()
    preds = []
    with torch.no_grad():
        for images, targets in DataLoader(val, batch_size=32, collate_fn=detection_collate):
            for out, target in zip(model(images), targets, strict=True):
                preds.append(
                    Detections(
                        to_original(out["boxes"], target["scale"]),
                        out["scores"].numpy(),
                        out["labels"].numpy(),
                    )
                )
    metrics = evaluate_detections(val_recs, preds, num_classes=k)
    eval_s = time.perf_counter() - t1
    total = time.perf_counter() - start
    print(
        f"\n{args.arch}/{args.encoder} fpn {args.fpn_channels}, {args.size} px, batch "
        f"{args.batch}, lr {args.lr}, wd {args.weight_decay}, {len(train_recs)} train / "
        f"{len(val_recs)} val images, {args.threads} threads"
    )
    print(
        f"data {data_s:.1f}s  train {train_s:.1f}s ({steps} steps, "
        f"{steps / train_s:.2f} steps/s, {steps * args.batch / train_s:.1f} images/s, "
        f"{steps * args.batch / max(1, len(train_recs)):.1f} epochs)  eval {eval_s:.1f}s  "
        f"total {total:.1f}s"
    )
    print(f"mAP@.5 {metrics.map50:.3f}  mAP@[.5:.95] {metrics.map:.3f}")


if __name__ == "__main__":
    main()
