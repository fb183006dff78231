"""Sliced detection over rasters: throughput and peak memory as the raster grows.

Writes synthetic 3-band uint8 GeoTIFFs (2048 x 2048, 4096 x 4096 and 4096 wide x 16384
tall; ``--quick``: 1024 wide, 1024 to 4096 tall) and predicts each, in a fresh process per
raster, with ``liandan.tasks.detect.raster.detect_raster`` (tiles read with rasterio
windows a batch at a time, the detector per batch, boxes merged over the raster) and
then writes its outputs (GeoPackage, COCO JSON, decimated preview).

The detector is an FCOS over a ResNet-18 (``--encoder``) with random weights; its scores
sit near the focal prior (0.01), so the score threshold is set low (``--score-threshold``,
default 0.005) to keep many boxes per tile (up to the detector's 100): the merge and the
GeoPackage then carry a realistic load.

Peak RSS is the process's VmHWM, reset (``/proc/self/clear_refs``) after the detector was
built and ran one warm-up batch; "above model" subtracts the RSS at that moment. Memory
flat in the raster's size means that column about equal for every raster.

    .venv/bin/python benchmarks/detect_raster_predict.py               # appends to RESULTS.md
    .venv/bin/python benchmarks/detect_raster_predict.py --quick --no-write
"""

from __future__ import annotations

import argparse
import json
import os
import shlex
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
from machine import cpu_model, publish
from raster_predict import rss_mb, write_scene

SIZES = [(2048, 2048), (4096, 4096), (4096, 16384)]  # width x height
# --quick: each raster holds at least one full batch of 512 px tiles (9, 17 and 33
# tiles), so peak memory compares like with like
QUICK_SIZES = [(1024, 1024), (1024, 2048), (1024, 4096)]
CLASSES = ["a", "b", "c"]


def predictor(args: argparse.Namespace) -> Any:
    from liandan.prediction import Predictor
    from liandan.tasks.detect.models import build_detector

    torch.manual_seed(0)
    model = build_detector(args.arch, args.encoder, len(CLASSES), 3, args.tile)
    meta = {
        "task": "detect",
        "classes": CLASSES,
        "in_channels": 3,
        "dtype": "uint8",
        "normalization": {"preset": "unit", "scale": 255.0},
        "image_size": args.tile,
        "tile_size": args.tile,
    }
    return Predictor(
        model,
        meta,
        device=args.device,
        tile=args.tile,
        overlap=args.overlap,
        batch_size=args.batch,
        score_threshold=args.score_threshold,
    )


def child(args: argparse.Namespace) -> None:
    """One raster in this (fresh) process; prints one JSON line."""
    import rasterio

    from liandan.tasks.detect.raster import _detect, detect_raster, write_raster_outputs

    torch.set_num_threads(args.threads)
    made = predictor(args)
    from liandan.tasks.detect.predict import configure_detector

    configure_detector(made)
    _detect(made, [np.zeros((args.tile, args.tile, 3), np.float32)] * args.batch)  # warm-up
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the RSS now
    base = rss_mb()
    path = Path(args.raster)
    start = time.perf_counter()
    found = detect_raster(made, path)
    seconds = time.perf_counter() - start
    detect_peak = rss_mb("VmHWM:")
    start = time.perf_counter()
    write_raster_outputs(found, made, Path(args.out))
    write_s = time.perf_counter() - start
    with rasterio.open(path) as src:
        mpx = src.width * src.height / 1e6
    result = dict(
        seconds=seconds,
        mpx_s=mpx / seconds,
        write_s=write_s,
        base_mb=base,
        detect_peak_mb=detect_peak,
        peak_mb=rss_mb("VmHWM:"),
        tiles=found.tiles,
        found=found.found,
        kept=len(found.rows),
    )
    print(json.dumps(result))


def measure(raster: Path, out: Path, args: argparse.Namespace) -> dict[str, Any]:
    cmd = [
        sys.executable, __file__, "--child", "--raster", str(raster), "--out", str(out),
        "--tile", str(args.tile), "--overlap", str(args.overlap), "--arch", args.arch,
        "--encoder", args.encoder, "--threads", str(args.threads), "--batch", str(args.batch),
        "--device", args.device, "--score-threshold", str(args.score_threshold),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    result: dict[str, Any] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--arch", default="fcos")
    parser.add_argument("--encoder", default="resnet18")
    parser.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 16))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--score-threshold", type=float, default=0.005)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="1024 px wide rasters, a smoke test")
    parser.add_argument(
        "--sizes", nargs="+", metavar="WxH", help="these raster sizes instead (e.g. 512x1024)"
    )
    parser.add_argument("--no-write", action="store_true", help="do not append to RESULTS.md")
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--raster", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(args)
        return
    sizes = QUICK_SIZES if args.quick else SIZES
    if args.sizes:
        sizes = [(int(w), int(h)) for w, h in (item.lower().split("x") for item in args.sizes)]
    rows = []
    load_start = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        for w, h in sizes:
            raster = write_scene(tmp / f"scene_{w}x{h}.tif", w, h)
            res = measure(raster, tmp / f"out_{w}x{h}", args)
            print(f"{w}x{h}: {res}", flush=True)
            rows.append(((w, h), res))
            raster.unlink()
    report(rows, args, load_start)


def report(rows: list[Any], args: argparse.Namespace, load_start: tuple[float, ...]) -> None:
    import rasterio

    first = next((r for _, r in rows if "error" not in r), None)
    lines = [
        f"## Sliced detection over rasters — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"Machine: {cpu_model()}, {os.cpu_count()} cores (torch threads {args.threads}), "
        f"device {args.device}; load average at the start "
        f"{' / '.join(f'{v:.1f}' for v in load_start)}, at the end "
        f"{' / '.join(f'{v:.1f}' for v in os.getloadavg())} (shared machine: times are "
        f"indicative). torch {torch.__version__}, rasterio {rasterio.__version__}. "
        f"Detector: {args.arch} / {args.encoder}, random weights, score threshold "
        f"{args.score_threshold}; tile {args.tile}, overlap {args.overlap}, batch "
        f"{args.batch}. One fresh process per raster; peak RSS is VmHWM reset after a "
        f"warm-up batch. Command: "
        f"`{shlex.join(['python', 'benchmarks/detect_raster_predict.py', *sys.argv[1:]])}`.",
        "",
        "| raster (W x H) | Mpx/s | detect s | write s | tiles | boxes from tiles | kept "
        "| RSS after model MiB | peak RSS MiB | peak above model MiB | vs smallest |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for (w, h), res in rows:
        if "error" in res:
            lines.append(f"| {w} x {h} | failed: {res['error']} | | | | | | | | | |")
            continue
        above = res["peak_mb"] - res["base_mb"]
        ratio = ""
        if first is not None:
            ratio = f"{above / max(first['peak_mb'] - first['base_mb'], 1e-9):.2f}x"
        lines.append(
            f"| {w} x {h} | {res['mpx_s']:.2f} | {res['seconds']:.1f} | {res['write_s']:.1f} "
            f"| {res['tiles']} | {res['found']} | {res['kept']} | {res['base_mb']:.0f} "
            f"| {res['peak_mb']:.0f} | {above:.0f} | {ratio} |"
        )
    lines.append("")
    publish(lines, write=not args.no_write)


if __name__ == "__main__":
    main()
