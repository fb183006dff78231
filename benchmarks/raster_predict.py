"""Streaming raster prediction: throughput and peak memory against peers, and seams.

Writes synthetic 3-band uint8 GeoTIFFs (4096 x 4096, 4096 wide x 16384 tall, and
16384 wide x 4096 tall) and predicts each, in a fresh process per measurement, with:

- liandan: ``Predictor.predict_raster`` (windowed reads, Gaussian blending in
  accumulators of ``tile + 256`` rows by one column block of about 8 tiles, streamed
  GeoTIFF writes; tiles straddling a column block boundary run twice);
- raw: the whole raster read into memory, the same model forward over the same tile
  windows, no blending and no writing (the compute floor);
- MONAI: ``monai.inferers.sliding_window_inference`` on the whole raster in memory,
  same model, tile, overlap and Gaussian blending (sigma = tile/8). MONAI is a
  benchmark-only dependency (``pip install monai``); without it the table says so.

Peak RSS is the process's VmHWM, reset (``/proc/self/clear_refs``) after the model was
built and ran one warm-up batch; "above model" subtracts the RSS at that moment. By
default the peers run on the square raster only (they hold the whole raster in memory
and are slow on CPUs); ``--peers-everywhere`` runs them on every size. It then predicts a 1024 x 1024
raster tiled (tile 256) and in one whole-image forward pass, and reports their
agreement overall and within 16 px of tile seams. Results are appended to
``benchmarks/RESULTS.md``.

    .venv/bin/python benchmarks/raster_predict.py                 # the full run
    .venv/bin/python benchmarks/raster_predict.py --quick --no-write

Models (random weights; the final bias is set so the two classes split the agreement
raster about evenly): ``unet``, smp's U-Net with a MobileNetV2 encoder (the default on
a GPU); ``tiny``, a small U-Net-like CNN (two stride-2 stages); ``conv``, two
convolutions (the default on a CPU, where a MobileNet U-Net runs at ~0.05 Mpx/s: the
table then measures the pipeline's own cost — reading, blending, writing — which is
what differs between the tools).
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
import rasterio
import torch
from machine import cpu_model, publish
from rasterio.transform import from_origin

SIZES = [(4096, 4096), (4096, 16384), (16384, 4096)]  # width x height


class TinyUNet(torch.nn.Module):
    """A small encoder-decoder: full, 1/2 and 1/4 resolution, skip connection."""

    def __init__(self, bands: int = 3, classes: int = 2) -> None:
        super().__init__()
        conv = torch.nn.Conv2d
        self.stem = torch.nn.Sequential(conv(bands, 16, 3, padding=1), torch.nn.ReLU())
        self.down = torch.nn.Sequential(
            conv(16, 32, 3, stride=2, padding=1),
            torch.nn.ReLU(),
            conv(32, 32, 3, stride=2, padding=1),
            torch.nn.ReLU(),
            conv(32, 32, 3, padding=2, dilation=2),
            torch.nn.ReLU(),
        )
        self.up = torch.nn.Upsample(scale_factor=4, mode="bilinear", align_corners=False)
        self.head = torch.nn.Sequential(conv(48, 16, 3, padding=1), torch.nn.ReLU())
        self.out = conv(16, classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skip = self.stem(x)
        return self.out(self.head(torch.cat([skip, self.up(self.down(skip))], 1)))


def build(name: str) -> tuple[torch.nn.Module, torch.nn.Conv2d]:
    """The seeded model and its last convolution (whose bias balances the classes)."""
    torch.manual_seed(0)
    if name == "unet":
        import segmentation_models_pytorch as smp

        net = smp.Unet("mobilenet_v2", encoder_weights=None, in_channels=3, classes=2)
        return net.eval(), net.segmentation_head[0]
    if name == "conv":
        conv = torch.nn.Sequential(
            torch.nn.Conv2d(3, 8, 3, padding=1), torch.nn.ReLU(), torch.nn.Conv2d(8, 2, 1)
        )
        return conv.eval(), conv[2]  # type: ignore[return-value]
    net = TinyUNet()
    return net.eval(), net.out


def meta(tile: int) -> dict[str, Any]:
    return {
        "task": "segment",
        "classes": ["a", "b"],
        "colors": [[0, 0, 0], [255, 255, 255]],
        "in_channels": 3,
        "dtype": "uint8",
        "normalization": {"preset": "unit", "scale": 255.0},
        "tile_size": tile,
    }


def write_scene(path: Path, width: int, height: int, seed: int = 0) -> Path:
    """A 3-band uint8 GeoTIFF with blob structure, written in 512-row blocks."""
    rng = np.random.default_rng(seed)
    coarse = rng.integers(0, 256, (3, height // 64 + 2, width // 64 + 2), dtype=np.uint8)
    profile = dict(
        driver="GTiff", width=width, height=height, count=3, dtype="uint8",
        crs="EPSG:32633", transform=from_origin(500000, 4000000, 10, 10),
        tiled=True, blockxsize=256, blockysize=256, compress="deflate",
    )  # fmt: skip
    with rasterio.open(path, "w", **profile) as dst:
        for top in range(0, height, 512):
            n = min(512, height - top)
            rows = np.arange(top, top + n) // 64
            block = np.repeat(coarse[:, rows], 64, axis=2)[:, :, :width]
            noise = rng.integers(0, 40, block.shape, dtype=np.uint8)
            dst.write(block // 2 + noise, window=((top, top + n), (0, width)))
    return path


def rss_mb(field: str = "VmRSS:") -> float:
    """Resident (VmRSS) or peak resident (VmHWM) memory of this process, MiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(args: argparse.Namespace) -> None:
    """One measurement in this (fresh) process; prints one JSON line."""
    from liandan.predict_outputs import RasterWriter, open_raster
    from liandan.prediction import Predictor
    from liandan.tiling import tile_starts

    torch.set_num_threads(args.threads)
    model, last = build(args.model)
    with torch.no_grad():
        last.bias[1] += args.bias
    tile, overlap = args.tile, args.overlap
    predictor = Predictor(model, meta(tile), device=args.device, tile=tile, overlap=overlap)
    predictor.forward_batch(np.zeros((args.batch, 3, tile, tile), np.float32))  # warm-up
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak (VmHWM) to the RSS now
    base = rss_mb()
    path = Path(args.raster)
    start = time.perf_counter()
    if args.child == "liandan":
        predictor.batch_size = args.batch
        with open_raster(path) as src:
            writer = RasterWriter(src, predictor, Path(args.out))
        with writer:
            predictor.predict_raster(path, writer)
        tiles = predictor.stats.tiles
        rerun = predictor.stats.recomputed
    else:
        rerun = 0
        with rasterio.open(path) as src:
            image = src.read().astype(np.float32) / 255  # (C, H, W), whole raster
        h, w = image.shape[1:]
        x = torch.from_numpy(image)[None]
        if args.child == "raw":
            step = max(1, int(tile * (1 - overlap)))
            windows = [
                (r, c) for r in tile_starts(h, tile, step) for c in tile_starts(w, tile, step)
            ]
            out = np.zeros((h, w), np.uint8)
            with torch.no_grad():
                for i in range(0, len(windows), args.batch):
                    chunk = windows[i : i + args.batch]
                    batch = torch.cat([x[:, :, r : r + tile, c : c + tile] for r, c in chunk])
                    labels = model(batch.to(args.device)).argmax(1).cpu().numpy()
                    for (r, c), lab in zip(chunk, labels, strict=True):
                        out[r : r + tile, c : c + tile] = lab
            tiles = len(windows)
        else:
            from monai.inferers import sliding_window_inference

            with torch.no_grad():
                probs = sliding_window_inference(
                    x.to(args.device), (tile, tile), args.batch,
                    lambda t: torch.softmax(model(t), 1), overlap=overlap,
                    mode="gaussian", sigma_scale=0.125,
                )  # fmt: skip
                _ = probs.argmax(1)
            tiles = -1
    seconds = time.perf_counter() - start
    with rasterio.open(path) as src:
        mpx = src.width * src.height / 1e6
    peak = rss_mb("VmHWM:")
    result = dict(
        seconds=seconds, mpx_s=mpx / seconds, base_mb=base, peak_mb=peak, tiles=tiles, rerun=rerun
    )
    print(json.dumps(result))


def measure(tool: str, raster: Path, out: Path, args: argparse.Namespace, bias: float) -> dict:
    cmd = [
        sys.executable, __file__, "--child", tool, "--raster", str(raster), "--out", str(out),
        "--tile", str(args.tile), "--overlap", str(args.overlap), "--model", args.model,
        "--threads", str(args.threads), "--batch", str(args.batch), "--device", args.device,
        "--bias", str(bias),
    ]  # fmt: skip
    done = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        return {"error": (done.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(done.stdout.strip().splitlines()[-1])


def agreement(tmp: Path, args: argparse.Namespace) -> tuple[dict[str, float], float]:
    """Tiled (tile 256) vs whole-image prediction on 1024 x 1024; returns the bias used."""
    from liandan.predict_outputs import RasterWriter, open_raster
    from liandan.prediction import Predictor
    from liandan.tiling import tile_starts

    size, tile = 1024, 256
    path = write_scene(tmp / "agree.tif", size, size, seed=1)
    model, last = build(args.model)
    with rasterio.open(path) as src:
        x = torch.from_numpy(src.read().astype(np.float32) / 255)[None]
    with torch.no_grad():
        logits = model(x)[0]
        bias = -float((logits[1] - logits[0]).median())
        last.bias[1] += bias
        whole = model(x)[0].argmax(0).numpy()
    predictor = Predictor(model, meta(tile), device="cpu", tile=tile, overlap=args.overlap)
    with open_raster(path) as src:
        writer = RasterWriter(src, predictor, tmp / "agree_pred.tif")
    with writer:
        predictor.predict_raster(path, writer)
    with rasterio.open(tmp / "agree_pred.tif") as out:
        tiled = out.read(1)
    step = max(1, int(tile * (1 - args.overlap)))
    near = np.zeros(size, bool)
    for s in tile_starts(size, tile, step):
        for edge in (s, s + tile):
            if 0 < edge < size:
                near[max(0, edge - 16) : edge + 16] = True
    seams = near[:, None] | near[None, :]
    same = tiled == whole
    stats = {
        "overall": float(same.mean()),
        "seams": float(same[seams].mean()),
        "class_b": float((whole == 1).mean()),
    }
    return stats, bias


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tile", type=int, default=512)
    parser.add_argument("--overlap", type=float, default=0.25)
    parser.add_argument("--model", choices=["conv", "tiny", "unet"], default=None)
    parser.add_argument("--threads", type=int, default=min(os.cpu_count() or 1, 16))
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--quick", action="store_true", help="1024-px rasters, a smoke test")
    parser.add_argument("--no-write", action="store_true", help="do not append to RESULTS.md")
    parser.add_argument(
        "--peers-everywhere", action="store_true", help="raw and MONAI on every size too"
    )
    parser.add_argument("--child", choices=["liandan", "raw", "monai"], help=argparse.SUPPRESS)
    parser.add_argument("--raster", help=argparse.SUPPRESS)
    parser.add_argument("--out", help=argparse.SUPPRESS)
    parser.add_argument("--bias", type=float, default=0.0, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.model is None:  # CPUs run a U-Net at ~0.05 Mpx/s: time the pipeline there
        args.model = "unet" if args.device.startswith("cuda") else "conv"
    if args.child:
        child(args)
        return
    try:
        import monai  # noqa: F401

        have_monai = True
    except ImportError:
        have_monai = False
        print("MONAI is not installed (pip install monai): its rows are left out")
    scale = 4 if args.quick else 1
    sizes = [(w // scale, h // scale) for w, h in SIZES]
    rows = []
    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        agree, bias = agreement(tmp, args)
        print(f"agreement tiled vs whole: {agree}")
        for w, h in sizes:
            raster = write_scene(tmp / f"scene_{w}x{h}.tif", w, h)
            tools = ["liandan"]
            if args.peers_everywhere or (w, h) == sizes[0]:
                tools += ["raw", "monai"] if have_monai else ["raw"]
            for tool in tools:
                res = measure(tool, raster, tmp / f"pred_{w}x{h}.tif", args, bias)
                print(f"{w}x{h} {tool}: {res}")
                rows.append(((w, h), tool, res))
            raster.unlink()
    report(rows, agree, args, have_monai)


def report(rows: list, agree: dict[str, float], args: argparse.Namespace, monai: bool) -> None:
    def by(tool: str, size: tuple[int, int]) -> dict:
        return next((r for s, t, r in rows if t == tool and s == size), {})

    square = by("liandan", rows[0][0])
    lines = [
        f"## Streaming raster prediction — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
        "",
        f"Machine: {cpu_model()}, {os.cpu_count()} cores "
        f"(torch threads {args.threads}), device {args.device}; load average at the end "
        f"{' / '.join(f'{v:.1f}' for v in os.getloadavg())} (shared machine: times are "
        f"indicative). torch {torch.__version__}, rasterio {rasterio.__version__}"
        f"{', MONAI ' + __import__('monai').__version__ if monai else ', MONAI not installed'}."
        f" Model: {args.model} (random weights), tile {args.tile}, overlap {args.overlap}, "
        f"batch {args.batch}, Gaussian blending. Each row is one fresh process; peak RSS "
        f"is VmHWM reset after a warm-up batch. "
        f"Command: `{shlex.join(['python', 'benchmarks/raster_predict.py', *sys.argv[1:]])}`.",
        "",
        "| raster (W x H) | tool | Mpx/s | s | tiles (run twice) | RSS after model MiB "
        "| peak RSS MiB | peak above model MiB | vs liandan square |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for (w, h), tool, res in rows:
        if "error" in res:
            lines.append(f"| {w} x {h} | {tool} | failed: {res['error']} | | | | | | |")
            continue
        above = res["peak_mb"] - res["base_mb"]
        ratio = ""
        if tool == "liandan" and square:
            ratio = f"{above / (square['peak_mb'] - square['base_mb']):.2f}x"
        tiles = "" if res["tiles"] < 0 else f"{res['tiles']}"
        if tool == "liandan":
            tiles += f" ({res.get('rerun', 0)})"
        lines.append(
            f"| {w} x {h} | {tool} | {res['mpx_s']:.2f} | {res['seconds']:.1f} | {tiles} "
            f"| {res['base_mb']:.0f} | {res['peak_mb']:.0f} | {above:.0f} | {ratio} |"
        )
    lines += [
        "",
        f"Agreement of tiled (tile 256, overlap {args.overlap}) and whole-image prediction "
        f"on 1024 x 1024 (class b covers {agree['class_b']:.1%}): {agree['overall']:.4%} of "
        f"pixels overall, {agree['seams']:.4%} within 16 px of tile seams.",
        "",
    ]
    publish(lines, write=not args.no_write)


if __name__ == "__main__":
    main()
