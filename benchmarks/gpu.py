"""GPU throughput: liandan's training and raster prediction against raw PyTorch, one GPU.

Sized to finish within about 5 minutes on one H100 (each part prints its elapsed time):

1. U-Net/ResNet-34 segmentation, 512 px, batch 16, 4 classes, synthetic tensors already
   on the GPU (data loading is left out; ``benchmarks/input_pipeline.py`` measures it):
   - raw PyTorch loop (AdamW, cross-entropy): bf16 autocast + channels_last; bf16 in
     the default (NCHW) layout; fp32 once for reference (cuDNN's default TF32
     convolutions); ``torch.compile`` once (bf16 + channels_last, timed after warm-up);
   - liandan: ``LiandanTask`` trained by ``build_trainer``'s Lightning Trainer
     (``train.precision=bf16-mixed``, ``loss.name=ce``), fed the same GPU tensors;
     layout ``auto``: liandan moves the model and batches to channels_last itself on a
     GPU (NCHW stays on the CPU).
   Model FLOPs utilization: FLOPs of one forward + backward counted by
   ``torch.utils.flop_counter.FlopCounterMode``, divided by the step time and by the
   chip's dense bf16 peak (by device name; the assumed peak is printed).
2. Tiled raster prediction of a 3-band 8192 x 8192 GeoTIFF (tile 512, overlap 0.25,
   batch 16): liandan's ``Predictor.predict_raster`` (windowed reads, Gaussian
   blending, GeoTIFF written), in fp32 and at its default precision (bf16 autocast +
   channels_last on a GPU), against the raw forward pass over the same tiles with the
   raster already on the GPU, in fp32 and in bf16 + channels_last. Mpx/s of raster.
3. ResNet-50 classification, 224 px, batch 128, 1000 classes, bf16: raw loop (with and
   without channels_last) against liandan's Trainer.

Training throughput is the median over 5 windows of 10 steps after 10 warm-up steps;
cuDNN autotuning is on for every runner (liandan's Trainer turns it on for the process).

    python benchmarks/gpu.py              # on a CUDA machine; appends to RESULTS.md
    python benchmarks/gpu.py --smoke      # every code path on the CPU, tiny sizes

Without a CUDA device it exits with status 1, unless ``--smoke``.
"""

from __future__ import annotations

import argparse
import gc
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
import traceback
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F

try:
    from machine import cpu_model
except ImportError:  # the script copied on its own

    def cpu_model() -> str:
        return platform.processor() or platform.machine()


RESULTS = Path(__file__).with_name("RESULTS.md")

# Dense (no sparsity) bf16 tensor-core peaks in FLOP/s, matched in this order against
# torch.cuda.get_device_name (e.g. "NVIDIA H100 80GB HBM3" is the SXM part).
PEAK_BF16 = [
    ("GH200", 989e12),
    ("H200", 989e12),
    ("H100 PCIe", 756e12),
    ("H100 NVL", 835e12),
    ("H100", 989e12),
    ("A100", 312e12),
    ("L40S", 362e12),
]


@dataclass
class Sizes:
    """Every size the benchmark uses; ``SMOKE`` shrinks them for a CPU run."""

    seg_px: int = 512
    seg_batch: int = 16
    seg_classes: int = 4
    cls_px: int = 224
    cls_batch: int = 128
    cls_classes: int = 1000
    warmup: int = 10  # steps before timing (cuDNN autotuning, allocator)
    compile_warmup: int = 5  # steps that compile (forward and backward graphs)
    window: int = 10  # steps per timed window
    windows: int = 5  # timed windows; the median is reported
    raster: int = 8192  # side of the square raster, px
    tile: int = 512
    predict_batch: int = 16
    raster_repeats: int = 3  # liandan's streamed prediction (seconds each)
    raw_repeats: int = 5  # the raw forward over the tiles (short)
    accelerator: str = "gpu"  # liandan's train.accelerator


SMOKE = Sizes(
    seg_px=32, seg_batch=2, cls_px=32, cls_batch=2, cls_classes=10, warmup=1,
    compile_warmup=1, window=1, windows=2, raster=128, tile=64, predict_batch=4,
    raster_repeats=1, raw_repeats=1, accelerator="cpu",
)  # fmt: skip


@dataclass
class Row:
    """One line of the table."""

    workload: str
    runner: str
    precision: str
    layout: str
    unit: str  # "images/s" or "Mpx/s"
    rates: list[float] = field(default_factory=list)  # one per timed window or repeat
    step_s: float | None = None  # median seconds per training step
    flops: float | None = None  # per training step
    error: str | None = None

    @property
    def rate(self) -> float:
        return statistics.median(self.rates) if self.rates else float("nan")


class Bench:
    """Device, sizes and the synchronization every timing needs."""

    def __init__(self, device: torch.device, sizes: Sizes) -> None:
        self.device = device
        self.sizes = sizes

    def sync(self) -> None:
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)

    def free(self) -> None:
        gc.collect()
        if self.device.type == "cuda":
            torch.cuda.empty_cache()


# ---------------------------------------------------------------- models and data
def seg_config(s: Sizes, precision: str) -> Any:
    from liandan.config import Config

    return Config.load(
        None,
        [
            "task=segment",
            "model.arch=unet",
            "model.encoder=resnet34",
            "model.weights=none",
            "loss.name=ce",
            f"data.image_size={s.seg_px}",
            f"train.batch_size={s.seg_batch}",
            f"train.precision='{precision}'",  # quoted: YAML would read 32 as a number
            "train.epochs=1",
            "train.devices=1",
            f"train.accelerator={s.accelerator}",
            "train.progress=false",
        ],
    )


def cls_config(s: Sizes, precision: str) -> Any:
    from liandan.config import Config

    return Config.load(
        None,
        [
            "task=classify",
            "model.arch=resnet50",
            "model.weights=none",
            "loss.name=ce",
            f"data.image_size={s.cls_px}",
            f"train.batch_size={s.cls_batch}",
            f"train.precision='{precision}'",  # quoted: YAML would read 32 as a number
            "train.epochs=1",
            "train.devices=1",
            f"train.accelerator={s.accelerator}",
            "train.progress=false",
        ],
    )


def build(cfg: Any, classes: int) -> torch.nn.Module:
    """The model liandan's registry builds for ``cfg`` (seeded: every runner starts equal)."""
    from liandan.models import build_model

    torch.manual_seed(0)
    return build_model(
        cfg.model,
        task=cfg.task,
        num_classes=classes,
        in_channels=3,
        image_size=cfg.data.image_size,
    )


def synthetic(
    b: Bench, batch: int, px: int, classes: int, segment: bool
) -> tuple[torch.Tensor, torch.Tensor]:
    """One batch of inputs and targets, created on the device."""
    g = torch.Generator(device=b.device).manual_seed(0)
    x = torch.randn(batch, 3, px, px, device=b.device, generator=g)
    shape = (batch, px, px) if segment else (batch,)
    y = torch.randint(0, classes, shape, device=b.device, generator=g)
    return x, y


# ---------------------------------------------------------------- training
def count_flops(
    b: Bench, model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor, bf16: bool
) -> float:
    """FLOPs of one forward + backward (matmuls and convolutions), counted once."""
    from torch.utils.flop_counter import FlopCounterMode

    model.train()
    counter = FlopCounterMode(display=False)
    with counter:  # one block: entering the counter again would reset its counts
        with torch.autocast(b.device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(model(x), y)
        loss.backward()
    model.zero_grad(set_to_none=True)
    return float(counter.get_total_flops())


def raw_train(
    b: Bench,
    model: torch.nn.Module,
    batch: tuple[torch.Tensor, torch.Tensor],
    *,
    bf16: bool,
    channels_last: bool,
    compile: bool = False,
) -> tuple[list[float], float]:
    """A plain PyTorch loop: images/s of each timed window, and the median step time."""
    s = b.sizes
    x, y = batch
    model = model.to(b.device)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
        x = x.contiguous(memory_format=torch.channels_last)
    model.train()
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    forward = torch.compile(model) if compile else model

    def step() -> None:
        optimizer.zero_grad(set_to_none=True)
        with torch.autocast(b.device.type, dtype=torch.bfloat16, enabled=bf16):
            loss = F.cross_entropy(forward(x), y)
        loss.backward()
        optimizer.step()

    for _ in range(s.compile_warmup + s.warmup if compile else s.warmup):
        step()
    b.sync()
    times = []
    for _ in range(s.windows):
        start = time.perf_counter()
        for _ in range(s.window):
            step()
        b.sync()
        times.append(time.perf_counter() - start)
    n = int(x.shape[0]) * s.window
    return [n / t for t in times], statistics.median(times) / s.window


def liandan_train(
    b: Bench,
    cfg: Any,
    classes: int,
    batch: tuple[torch.Tensor, torch.Tensor],
) -> tuple[list[float], float]:
    """liandan's Lightning path on GPU-resident batches: images/s per window, step time."""
    import lightning as L
    from torch.utils.data import DataLoader

    from liandan.engine.task import LiandanTask
    from liandan.engine.trainer import build_trainer

    s = b.sizes
    # batch starts at which the clock is read: the windows' edges; one batch more
    # runs after the last edge, so end-of-epoch work (checkpoints) is never timed
    edges = [s.warmup + k * s.window for k in range(s.windows + 1)]

    class WindowClock(L.Callback):
        def __init__(self) -> None:
            self.marks: list[float] = []

        def on_train_batch_start(self, trainer: Any, module: Any, data: Any, idx: int) -> None:
            if idx in edges:
                b.sync()
                self.marks.append(time.perf_counter())

    torch.manual_seed(0)
    task = LiandanTask(cfg, [f"class{i}" for i in range(classes)], 3)
    clock = WindowClock()
    # a list is a map-style dataset; batch_size=None hands each prepared batch over as is
    batches = [batch] * (edges[-1] + 1)
    loader: DataLoader[Any] = DataLoader(batches, batch_size=None, shuffle=False)  # type: ignore[arg-type]
    with tempfile.TemporaryDirectory() as tmp:
        trainer, _ = build_trainer(cfg, Path(tmp), extra_callbacks=[clock])
        trainer.limit_val_batches = 0
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # no validation data, few workers: expected
            trainer.fit(task, loader)
    del trainer, task
    times = [t1 - t0 for t0, t1 in zip(clock.marks, clock.marks[1:], strict=False)]
    if len(times) != s.windows:
        raise RuntimeError(f"timed {len(times)} windows, expected {s.windows}")
    n = int(batch[0].shape[0]) * s.window
    return [n / t for t in times], statistics.median(times) / s.window


def training_rows(
    b: Bench, label: str, cfg_of: Callable[[str], Any], classes: int, segment: bool,
    variants: list[tuple[str, str, str]],
) -> list[Row]:  # fmt: skip
    """Run each (runner, precision, layout) variant of one workload; failures become rows."""
    s = b.sizes
    px, bs = (s.seg_px, s.seg_batch) if segment else (s.cls_px, s.cls_batch)
    batch = synthetic(b, bs, px, classes, segment)
    flops: float | None = None
    try:
        model = build(cfg_of("bf16-mixed"), classes).to(b.device)
        flops = count_flops(b, model, *batch, bf16=True)
        del model
        print(f"{label}: {flops / 1e12:.3f} TFLOP per training step (batch {bs})", flush=True)
    except Exception:  # MFU is left out; the throughput rows still run
        traceback.print_exc()
    b.free()
    rows = []
    for runner, precision, layout in variants:
        row = Row(label, runner, precision, layout, "images/s", flops=flops)
        start = time.perf_counter()
        try:
            cl = layout == "channels_last"
            if runner == "liandan":
                cfg = cfg_of("bf16-mixed" if precision == "bf16" else "32")
                row.rates, row.step_s = liandan_train(b, cfg, classes, batch)
            else:
                model = build(cfg_of("32"), classes)
                row.rates, row.step_s = raw_train(
                    b, model, batch, bf16=precision == "bf16", channels_last=cl,
                    compile=runner == "raw, torch.compile",
                )  # fmt: skip
                del model
        except Exception as exc:  # report and go on: one failure must not lose the rest
            traceback.print_exc()
            row.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:160]
        b.free()
        print(
            f"  {runner}, {precision}, {layout}: {row.rate:.1f} images/s "
            f"({time.perf_counter() - start:.1f}s){' FAILED ' + row.error if row.error else ''}",
            flush=True,
        )
        rows.append(row)
    return rows


# ---------------------------------------------------------------- raster prediction
def write_raster(path: Path, side: int) -> Path:
    """A 3-band uint8 GeoTIFF with blob structure and noise: raster_predict's scene."""
    sys.path.insert(0, str(Path(__file__).parent))  # the sibling benchmark script
    from raster_predict import write_scene

    return write_scene(path, side, side)


def raster_rows(b: Bench, tmp: Path) -> list[Row]:
    """liandan's streamed raster prediction against the raw forward over the same tiles."""
    import rasterio

    from liandan.predict_outputs import RasterWriter, open_raster
    from liandan.prediction import Predictor
    from liandan.tiling import tile_starts

    s = b.sizes
    label = f"raster {s.raster} x {s.raster}, U-Net/ResNet-34, tile {s.tile}"
    start = time.perf_counter()
    path = write_raster(tmp / "scene.tif", s.raster)
    print(f"{label}: raster written in {time.perf_counter() - start:.1f}s", flush=True)
    mpx = s.raster * s.raster / 1e6
    classes = s.seg_classes
    meta = {
        "task": "segment",
        "classes": [f"class{i}" for i in range(classes)],
        "colors": [[40 * i, 40 * i, 40 * i] for i in range(classes)],
        "in_channels": 3,
        "dtype": "uint8",
        "normalization": {"preset": "unit", "scale": 255.0},
        "tile_size": s.tile,
    }
    model = build(seg_config(s, "32"), classes).eval()
    rows = []

    # fp32, then the default: bf16 autocast on a GPU (bf16 asked for explicitly, so
    # --smoke exercises the autocast path on the CPU too)
    for precision in ("32", "auto" if b.device.type == "cuda" else "bf16"):
        try:
            predictor = Predictor(
                model, meta, device=str(b.device), tile=s.tile, overlap=0.25,
                batch_size=s.predict_batch, precision=precision,
            )  # fmt: skip
            dtype = {None: "fp32", torch.bfloat16: "bf16", torch.float16: "fp16"}
            row = Row(
                label, "liandan Predictor", dtype[predictor.autocast],
                "channels_last" if predictor.channels_last else "NCHW", "Mpx/s",
            )  # fmt: skip
            predictor.forward_batch(np.zeros((s.predict_batch, 3, s.tile, s.tile), np.float32))
            for i in range(s.raster_repeats):
                if i and time.perf_counter() - start > 90:  # slower than sized for: stop
                    break
                with open_raster(path) as src:
                    writer = RasterWriter(src, predictor, tmp / f"pred{i}.tif")
                b.sync()
                t0 = time.perf_counter()
                with writer:
                    predictor.predict_raster(path, writer)
                b.sync()
                row.rates.append(mpx / (time.perf_counter() - t0))
            tiles = predictor.stats.tiles
        except Exception as exc:
            traceback.print_exc()
            row = Row(label, "liandan Predictor", precision, "?", "Mpx/s")
            row.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:160]
            tiles = 0
        print(f"  liandan {row.precision}: {row.rate:.2f} Mpx/s, {tiles} tiles", flush=True)
        rows.append(row)
        start = time.perf_counter()
    model = model.to(memory_format=torch.contiguous_format)  # the Predictor moved it to NHWC

    with rasterio.open(path) as src:
        image = torch.from_numpy(src.read()).to(b.device)  # (3, H, W) uint8, on the device
    x = (image.float() / 255)[None]
    del image
    step = max(1, int(s.tile * (1 - 0.25)))
    windows = [
        (r, c)
        for r in tile_starts(s.raster, s.tile, step)
        for c in tile_starts(s.raster, s.tile, step)
    ]
    for precision, layout in (("fp32", "NCHW"), ("bf16", "channels_last")):
        row = Row(label, "raw forward, raster in GPU memory", precision, layout, "Mpx/s")
        try:
            net = model.to(b.device)
            if layout == "channels_last":
                net = net.to(memory_format=torch.channels_last)

            def run(
                net: torch.nn.Module = net,
                bf16: bool = precision == "bf16",
                cl: bool = layout == "channels_last",
            ) -> None:
                with torch.no_grad(), torch.autocast(b.device.type, torch.bfloat16, enabled=bf16):
                    for i in range(0, len(windows), s.predict_batch):
                        chunk = windows[i : i + s.predict_batch]
                        tiles_ = torch.cat(
                            [x[:, :, r : r + s.tile, c : c + s.tile] for r, c in chunk]
                        )
                        if cl:
                            tiles_ = tiles_.contiguous(memory_format=torch.channels_last)
                        torch.softmax(net(tiles_).float(), dim=1)

            run()  # warm-up (cuDNN autotuning for these shapes)
            for _ in range(s.raw_repeats):
                b.sync()
                t0 = time.perf_counter()
                run()
                b.sync()
                row.rates.append(mpx / (time.perf_counter() - t0))
            model = model.to(memory_format=torch.contiguous_format)
        except Exception as exc:
            traceback.print_exc()
            row.error = f"{type(exc).__name__}: {exc}".splitlines()[0][:160]
        print(f"  raw forward {precision} {layout}: {row.rate:.2f} Mpx/s", flush=True)
        rows.append(row)
    return rows


# ---------------------------------------------------------------- report
def peak_flops(device: torch.device) -> tuple[float | None, str]:
    if device.type != "cuda":
        return None, "no GPU: MFU not computed"
    name = torch.cuda.get_device_name(device)
    for key, peak in PEAK_BF16:
        if key in name:
            return peak, f"{name}: assumed dense bf16 peak {peak / 1e12:.0f} TFLOP/s ({key})"
    return None, f"{name}: unknown peak, MFU not computed"


def number(value: float) -> str:
    """Three significant figures or more: 1234, 56.7, 0.0123."""
    if value >= 100:
        return f"{value:.0f}"
    return f"{value:.1f}" if value >= 1 else f"{value:.3g}"


def table(rows: list[Row], peak: float | None) -> list[str]:
    lines = [
        "| workload | runner | precision | layout | throughput | ms/step | MFU of bf16 peak "
        "| vs raw bf16 channels_last / raw fp32 forward |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        if row.error:
            lines.append(
                f"| {row.workload} | {row.runner} | {row.precision} | {row.layout} "
                f"| failed: {row.error} | | | |"
            )
            continue
        ref = next(
            (
                r
                for r in rows
                if r.workload == row.workload
                and not r.error
                and (
                    (r.runner == "raw" and r.precision == "bf16" and r.layout == "channels_last")
                    or (r.runner.startswith("raw forward") and r.precision == "fp32")
                )
            ),
            None,
        )
        step = f"{row.step_s * 1000:.1f}" if row.step_s else ""
        mfu = ""
        if peak and row.flops and row.step_s:
            mfu = f"{row.flops / row.step_s / peak:.1%}"
        vs = f"{row.rate / ref.rate:.2f}x" if ref is not None else ""
        lines.append(
            f"| {row.workload} | {row.runner} | {row.precision} | {row.layout} "
            f"| {number(row.rate)} {row.unit} | {step} | {mfu} | {vs} |"
        )
    return lines


def notes(rows: list[Row], elapsed: dict[str, float]) -> str:
    def find(workload: str, runner: str, precision: str, layout: str) -> Row | None:
        return next(
            (
                r
                for r in rows
                if r.workload.startswith(workload)
                and r.runner == runner
                and r.precision == precision
                and r.layout == layout
                and not r.error
            ),
            None,
        )

    out = []
    for w in ("U-Net", "ResNet-50"):
        raw, ours = find(w, "raw", "bf16", "channels_last"), find(w, "liandan", "bf16", "auto")
        if raw and ours:
            out.append(
                f"{w}: liandan as it runs (bf16; channels_last set by liandan on a GPU) reaches "
                f"{ours.rate / raw.rate:.2f}x the raw bf16 channels_last loop."
            )
    fmt = ", ".join(f"{k} {v:.0f} s" for k, v in elapsed.items())
    out.append(f"Elapsed: {fmt}.")
    return " ".join(out)


def machine(device: torch.device, peak_note: str) -> str:
    import lightning

    gpu = torch.cuda.get_device_name(device) if device.type == "cuda" else "no GPU"
    cuda = f"CUDA {torch.version.cuda}, cuDNN {torch.backends.cudnn.version()}, "
    return (
        f"{cpu_model()}, {os.cpu_count()} cores, {gpu}; load average "
        f"{' / '.join(f'{v:.1f}' for v in os.getloadavg())}. torch {torch.__version__}, "
        f"{cuda if device.type == 'cuda' else ''}lightning {lightning.__version__}, "
        f"Python {platform.python_version()}. {peak_note}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--smoke", action="store_true", help="tiny sizes on the CPU (no GPU)")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile row")
    parser.add_argument("--no-write", action="store_true", help="do not append to RESULTS.md")
    args = parser.parse_args()
    if args.smoke:
        device, sizes = torch.device("cpu"), replace(SMOKE)
        args.no_write = True  # a code-path check, not a measurement
        print("--smoke: tiny sizes on the CPU; torch.compile skipped (minutes on a CPU)")
    elif torch.cuda.is_available():
        device, sizes = torch.device("cuda", 0), Sizes()
    else:
        print(
            "gpu.py needs a CUDA device and none was found. Run it on a GPU machine, or "
            "with --smoke to exercise every code path on the CPU with tiny sizes.",
            file=sys.stderr,
        )
        sys.exit(1)
    torch.backends.cudnn.benchmark = True  # as liandan's Trainer sets it on GPUs
    b = Bench(device, sizes)
    peak, peak_note = peak_flops(device)
    print(peak_note, flush=True)
    compile_ok = not (args.smoke or args.no_compile)
    seg_variants = [
        ("raw", "bf16", "channels_last"),
        ("raw", "bf16", "NCHW"),
        ("raw", "fp32", "NCHW"),
        *([("raw, torch.compile", "bf16", "channels_last")] if compile_ok else []),
        ("liandan", "bf16", "auto"),
    ]
    cls_variants = [
        ("raw", "bf16", "channels_last"),
        ("raw", "bf16", "NCHW"),
        ("liandan", "bf16", "auto"),
    ]
    elapsed: dict[str, float] = {}
    rows: list[Row] = []
    total = time.perf_counter()
    s = sizes
    seg_label = f"U-Net/ResNet-34, {s.seg_px} px, batch {s.seg_batch}"
    cls_label = f"ResNet-50, {s.cls_px} px, batch {s.cls_batch}"
    parts: list[tuple[str, str, Callable[[Path], list[Row]]]] = [
        (
            "segmentation training",
            seg_label,
            lambda _: training_rows(
                b, seg_label, lambda p: seg_config(s, p), s.seg_classes, True, seg_variants
            ),
        ),
        ("raster prediction", f"raster {s.raster} x {s.raster}", lambda tmp: raster_rows(b, tmp)),
        (
            "classification training",
            cls_label,
            lambda _: training_rows(
                b, cls_label, lambda p: cls_config(s, p), s.cls_classes, False, cls_variants
            ),
        ),
    ]
    for part, label, run in parts:
        start = time.perf_counter()
        try:
            with tempfile.TemporaryDirectory() as tmp:
                rows += run(Path(tmp))
        except Exception as exc:  # keep the other parts and still print the table
            traceback.print_exc()
            error = f"{type(exc).__name__}: {exc}".splitlines()[0][:160]
            rows.append(Row(label, "(whole part)", "", "", "", error=error))
        b.free()  # models, batches and the raster held on the device
        elapsed[part] = time.perf_counter() - start
    elapsed["total"] = time.perf_counter() - total
    for part, secs in elapsed.items():
        print(f"elapsed, {part}: {secs:.1f}s")
    command = shlex.join(["python", "benchmarks/gpu.py", *sys.argv[1:]])
    text = "\n".join(
        [
            f"## GPU throughput: liandan vs raw PyTorch — {datetime.now(UTC):%Y-%m-%d %H:%M} UTC",
            "",
            f"Machine: {machine(device, peak_note)}. Synthetic data already on the device; "
            f"training: median images/s over {s.windows} windows of {s.window} steps after "
            f"{s.warmup} warm-up steps (torch.compile: {s.compile_warmup} more); raster: "
            f"median of {s.raster_repeats} runs (raw: of {s.raw_repeats}) after a warm-up batch, liandan "
            "reading the GeoTIFF and writing its prediction, raw only computing. MFU: FLOPs "
            "of one training step (FlopCounterMode) / step time / the peak above. "
            f"Command: `{command}`.",
            "",
            *table(rows, peak),
            "",
            notes(rows, elapsed),
            "",
        ]
    )
    print(text)
    if not args.no_write:
        with RESULTS.open("a", encoding="utf-8") as fh:
            fh.write("\n" + text)
        print(f"appended to {RESULTS}")
    failed = [r for r in rows if r.error]
    if failed:
        print(f"{len(failed)} row(s) failed; see the tracebacks above", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
