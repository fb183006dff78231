"""Input pipeline: liandan's real loader against synthetic tensors, augmentation, decoding.

Three measurements, all on the same generated images (512 x 512 RGB with smooth
structure and noise, 4-class PNG masks, in the ``pairs`` layout: images/ + masks/),
written once per image format (PNG and JPEG through Pillow, deflate TIFF through
rasterio) in a temporary folder:

1. Training epoch time with the loader ``liandan.data.datamodule.build_data`` builds
   (``data.cache=false``: every epoch reads, decodes, augments and collates from disk;
   ``train.num_workers=auto``) against the same loop fed by in-memory synthetic tensors
   of the same shapes. The loop is a plain PyTorch step of U-Net/ResNet-18 (AdamW,
   cross-entropy), the same for both, so the ratio is what the loader costs the model
   (target <= 1.10x). Epochs run in rounds (synthetic, then each format), so all see
   the same machine load; the first round is warm-up, the table gives the median of
   the rest. Then loader-only images/s (no model) per format.
2. Augmentation images/s, single process, one thread (as in one loader worker), on the
   decoded images in memory: liandan's training sample path (``SampleDataset`` with
   the recipe below, normalization and brightness/contrast included) against a plain
   albumentations ``Compose`` on uint8 and ``torchvision.transforms.v2`` on tensors,
   each doing the same crop, flips, rotation, brightness/contrast and normalization.
3. JPEG decoding images/s, one thread: liandan's reader (OpenCV for complete 8-bit
   RGB/grey JPEGs after a Pillow header check, Pillow otherwise) against Pillow from
   bytes, ``torchvision.io.decode_jpeg``, OpenCV and simplejpeg (when installed); with
   liandan's reader on the PNG and TIFF files for comparison.

Recipe: hflip 0.5, vflip 0.5, rotate90 0.5, brightness_contrast 0.5, scale (0.5, 1).

    .venv/bin/python benchmarks/input_pipeline.py                  # the full run
    .venv/bin/python benchmarks/input_pipeline.py --quick --no-write

Appends a dated entry to ``benchmarks/RESULTS.md`` unless ``--no-write``.
"""

from __future__ import annotations

import argparse
import io
import os
import platform
import shlex
import statistics
import sys
import tempfile
import time
import warnings
from collections.abc import Callable, Iterable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import albumentations as A
import cv2
import numpy as np
import PIL
import rasterio
import torch
import torchvision
from machine import cpu_model
from PIL import Image, features
from rasterio.errors import NotGeoreferencedWarning

from liandan.config import Config
from liandan.data.datamodule import build_data
from liandan.data.readers import read_image
from liandan.models import build_model

RESULTS = Path(__file__).with_name("RESULTS.md")
FORMATS = {"png": ".png", "jpeg": ".jpg", "tiff": ".tif"}
CLASSES = 4
TARGET = 1.10  # real loader / synthetic tensors, at the default worker count
RECIPE = [
    "augment.hflip=0.5",
    "augment.vflip=0.5",
    "augment.rotate90=0.5",
    "augment.brightness_contrast=0.5",
    "augment.scale=[0.5, 1.0]",
]
JPEG_QUALITY = 90


# ---------------------------------------------------------------- data
def synth_pair(rng: np.random.Generator, side: int) -> tuple[np.ndarray, np.ndarray]:
    """A photo-like ``(side, side, 3)`` uint8 image and its ``(side, side)`` 4-class mask.

    Smooth fields (coarse noise upsampled) plus fine noise: compresses like real imagery
    rather than like white noise (which would make PNG files several times larger).
    """
    coarse = rng.random((side // 32 + 2, side // 32 + 2, 3 + CLASSES), dtype=np.float32)
    fields = cv2.resize(coarse, (side, side), interpolation=cv2.INTER_CUBIC)
    image = fields[:, :, :3] * 200 + rng.normal(0, 8, (side, side, 3)).astype(np.float32)
    mask = fields[:, :, 3:].argmax(axis=2).astype(np.uint8)
    image += mask[:, :, None].astype(np.float32) * 10  # classes are (weakly) visible
    return np.clip(image, 0, 255).astype(np.uint8), mask


def write_image(image: np.ndarray, path: Path) -> None:
    if path.suffix == ".tif":
        profile = dict(
            driver="GTiff", width=image.shape[1], height=image.shape[0], count=3,
            dtype="uint8", compress="deflate",
        )  # fmt: skip
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", NotGeoreferencedWarning)
            with rasterio.open(path, "w", **profile) as dst:
                dst.write(np.moveaxis(image, -1, 0))
    elif path.suffix == ".jpg":
        Image.fromarray(image).save(path, quality=JPEG_QUALITY)
    else:
        Image.fromarray(image).save(path)


def write_datasets(root: Path, formats: list[str], n: int, side: int) -> dict[str, Path]:
    """One ``pairs`` dataset per format, the same pixels in each; masks are PNG."""
    rng = np.random.default_rng(0)
    pairs = [synth_pair(rng, side) for _ in range(n)]
    roots = {}
    for fmt in formats:
        base = root / fmt
        (base / "images").mkdir(parents=True)
        (base / "masks").mkdir()
        for i, (image, mask) in enumerate(pairs):
            write_image(image, base / "images" / f"im{i:04d}{FORMATS[fmt]}")
            Image.fromarray(mask).save(base / "masks" / f"im{i:04d}.png")
        roots[fmt] = base
    return roots


def make_config(root: Path, args: argparse.Namespace, cache: bool = False) -> Config:
    return Config.load(
        None,
        [
            "task=segment",
            f"data.root={root}",
            "data.layout=pairs",
            f"data.cache={str(cache).lower()}",
            f"data.image_size={args.size}",
            "data.val_fraction=0.2",
            f"train.batch_size={args.batch}",
            f"train.num_workers={args.workers}",
            "model.arch=unet",
            f"model.encoder={args.encoder}",
            *RECIPE,
        ],
    )


# ---------------------------------------------------------------- timing
def train_epoch(
    model: torch.nn.Module,
    optimizer: torch.optim.Optimizer,
    batches: Iterable[tuple[torch.Tensor, torch.Tensor]],
) -> float:
    """Seconds for one epoch of plain training steps over ``batches`` (loading included)."""
    model.train()
    start = time.perf_counter()
    for x, y in batches:
        optimizer.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(model(x), y, ignore_index=-1)
        loss.backward()
        optimizer.step()
    return time.perf_counter() - start


def loader_epoch(loader: Iterable[tuple[torch.Tensor, torch.Tensor]]) -> tuple[float, int]:
    """Seconds to draw every batch of one epoch, and the number of images drawn."""
    start = time.perf_counter()
    count = sum(int(x.shape[0]) for x, _ in loader)
    return time.perf_counter() - start, count


def rate(fn: Callable[[], int], repeats: int) -> float:
    """Median items/s of ``fn`` (which returns how many items it processed), after a warm-up."""
    fn()
    rates = []
    for _ in range(repeats):
        start = time.perf_counter()
        n = fn()
        rates.append(n / (time.perf_counter() - start))
    return statistics.median(rates)


class OneThread:
    """torch and OpenCV on one thread inside the block, as in a DataLoader worker."""

    def __enter__(self) -> None:
        self.torch_threads, self.cv_threads = torch.get_num_threads(), cv2.getNumThreads()
        torch.set_num_threads(1)
        cv2.setNumThreads(1)

    def __exit__(self, *exc: object) -> None:
        torch.set_num_threads(self.torch_threads)
        cv2.setNumThreads(self.cv_threads)


# ---------------------------------------------------------------- 1. the loader
def time_pipeline(roots: dict[str, Path], args: argparse.Namespace) -> dict[str, Any]:
    bundles = {fmt: build_data(make_config(root, args)) for fmt, root in roots.items()}
    first = next(iter(bundles.values()))
    loader = first.train_loader
    steps, batch = len(loader), int(loader.batch_size or 1)
    torch.manual_seed(0)
    cfg = make_config(roots[next(iter(roots))], args)
    model = build_model(
        cfg.model, task="segment", num_classes=first.classes.num_classes, in_channels=3
    )
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-4)
    g = torch.Generator().manual_seed(0)
    synthetic = [
        (
            torch.randn(batch, 3, args.size, args.size, generator=g),
            torch.randint(0, first.classes.num_classes, (batch, args.size, args.size), generator=g),
        )
        for _ in range(steps)
    ]
    epochs: dict[str, list[float]] = {"synthetic": [], **{fmt: [] for fmt in bundles}}
    for r in range(args.epochs):  # round r: every source once, under the same load
        epochs["synthetic"].append(train_epoch(model, optimizer, synthetic))
        for fmt, bundle in bundles.items():
            epochs[fmt].append(train_epoch(model, optimizer, bundle.train_loader))
        row = ", ".join(f"{k} {v[-1]:.2f}s" for k, v in epochs.items())
        print(f"round {r}{' (warm-up)' if r == 0 else ''}: {row}", flush=True)
    loader_rates: dict[str, float] = {}
    for fmt, bundle in bundles.items():
        runs = [loader_epoch(bundle.train_loader) for _ in range(args.epochs)]
        loader_rates[fmt] = statistics.median(n / t for t, n in runs[1:])
        print(f"loader only, {fmt}: {loader_rates[fmt]:.1f} images/s", flush=True)
    sizes = {
        fmt: statistics.mean(p.stat().st_size for p in (root / "images").iterdir()) / 1024
        for fmt, root in roots.items()
    }
    med = {k: statistics.median(v[1:]) for k, v in epochs.items()}
    return {
        "median": med,
        "loader_rates": loader_rates,
        "sizes_kib": sizes,
        "workers": loader.num_workers,
        "steps": steps,
        "batch": batch,
        "images": len(loader.dataset),  # type: ignore[arg-type]
        "bundle": first,
    }


# ---------------------------------------------------------------- 2. augmentation
def time_augment(png_root: Path, args: argparse.Namespace) -> list[tuple[str, float]]:
    """Images/s of liandan's sample path, plain albumentations and torchvision v2."""
    from albumentations.pytorch import ToTensorV2
    from torchvision import tv_tensors
    from torchvision.transforms import v2

    # liandan's own training dataset over decoded, cached images: no decoding is timed
    bundle = build_data(make_config(png_root, args, cache=True))
    dataset = bundle.train_loader.dataset
    samples = dataset.samples  # type: ignore[attr-defined]
    images = [bundle.checked.images[s.image] for s in samples]
    masks = [dataset.load_mask(s.target) for s in samples]  # type: ignore[attr-defined]
    norm = bundle.normalizer
    mean, std = np.asarray(norm.mean), np.asarray(norm.std)  # raw (0-255) units
    size = args.size
    plain = A.Compose(
        [
            A.RandomResizedCrop((size, size), scale=(0.5, 1.0), p=1.0),
            A.HorizontalFlip(p=0.5),
            A.VerticalFlip(p=0.5),
            A.RandomRotate90(p=0.5),
            A.RandomBrightnessContrast(0.2, 0.2, p=0.5),
            A.Normalize(mean=mean.tolist(), std=std.tolist(), max_pixel_value=1.0),
            ToTensorV2(),
        ],
        seed=0,
    )
    tv = v2.Compose(
        [
            v2.RandomResizedCrop((size, size), scale=(0.5, 1.0), antialias=True),
            v2.RandomHorizontalFlip(0.5),
            v2.RandomVerticalFlip(0.5),
            # a quarter turn, half turn or three quarters, half of the time
            v2.RandomApply(
                [v2.RandomChoice([v2.RandomRotation((a, a)) for a in (90, 180, 270)])], p=0.5
            ),
            v2.RandomApply([v2.ColorJitter(brightness=0.2, contrast=0.2)], p=0.5),
            v2.ToDtype({tv_tensors.Image: torch.float32, "others": None}, scale=True),
            v2.Normalize((mean / 255).tolist(), (std / 255).tolist()),
        ]
    )

    def run_liandan() -> int:
        for i in range(len(dataset)):  # type: ignore[arg-type]
            dataset[i]
        return len(dataset)  # type: ignore[arg-type]

    def run_plain() -> int:
        for image, mask in zip(images, masks, strict=True):
            out = plain(image=image, mask=mask)
            out["mask"].long()  # ToTensorV2 made the mask a tensor
        return len(images)

    def run_tv() -> int:
        for image, mask in zip(images, masks, strict=True):
            x = tv_tensors.Image(torch.from_numpy(image).permute(2, 0, 1))
            _, m = tv(x, tv_tensors.Mask(torch.from_numpy(mask)))
            m.to(torch.int64)
        return len(images)

    torch.manual_seed(0)
    rows = []
    with OneThread():
        for name, fn in (
            ("liandan (SampleDataset: albumentations on uint8 + normalize + b/c)", run_liandan),
            ("albumentations Compose, uint8 (plain loop)", run_plain),
            ("torchvision.transforms.v2 on uint8 tensors", run_tv),
        ):
            rows.append((name, rate(fn, args.repeats)))
            print(f"augment, {name}: {rows[-1][1]:.1f} images/s", flush=True)
    return rows


# ---------------------------------------------------------------- 3. decoding
def time_decode(roots: dict[str, Path], args: argparse.Namespace) -> list[tuple[str, str, float]]:
    """Images/s of JPEG decoders on the same files; liandan's reader on PNG and TIFF too."""
    rows: list[tuple[str, str, float]] = []

    def files(fmt: str) -> list[Path]:
        return sorted((roots[fmt] / "images").iterdir())[: args.decode_images]

    def liandan_reader(paths: list[Path]) -> Callable[[], int]:
        def run() -> int:
            for p in paths:
                read_image(p)
            return len(paths)

        return run

    with OneThread():
        if "jpeg" in roots:
            paths = files("jpeg")
            blobs = [p.read_bytes() for p in paths]
            arrays = [np.frombuffer(b, np.uint8) for b in blobs]
            tensors = [torch.from_numpy(a.copy()) for a in arrays]
            decoders: list[tuple[str, Callable[[], int]]] = [
                ("liandan read_image (OpenCV, from disk)", liandan_reader(paths))
            ]

            def pil_bytes() -> int:
                for b in blobs:
                    np.asarray(Image.open(io.BytesIO(b)).convert("RGB"))
                return len(blobs)

            def tv_decode() -> int:
                for t in tensors:
                    torchvision.io.decode_jpeg(t)
                return len(tensors)

            def cv_decode() -> int:
                for a in arrays:
                    bgr = cv2.imdecode(a, cv2.IMREAD_COLOR)
                    assert bgr is not None
                    cv2.cvtColor(bgr, cv2.COLOR_BGR2RGB)
                return len(arrays)

            decoders += [
                ("Pillow from bytes", pil_bytes),
                ("torchvision.io.decode_jpeg (CHW tensor)", tv_decode),
                ("OpenCV imdecode + BGR to RGB", cv_decode),
            ]
            try:
                import simplejpeg

                def sj_decode() -> int:
                    for b in blobs:
                        simplejpeg.decode_jpeg(b, colorspace="RGB")
                    return len(blobs)

                decoders.append(("simplejpeg", sj_decode))
            except ImportError:
                print("simplejpeg is not installed: left out")
            for name, fn in decoders:
                rows.append(("jpeg", name, rate(fn, args.repeats)))
                print(f"decode jpeg, {name}: {rows[-1][2]:.1f} images/s", flush=True)
        for fmt in ("png", "tiff"):
            if fmt in roots:
                name = "liandan read_image (" + ("Pillow" if fmt == "png" else "rasterio") + ")"
                rows.append((fmt, name, rate(liandan_reader(files(fmt)), args.repeats)))
                print(f"decode {fmt}, {name}: {rows[-1][2]:.1f} images/s", flush=True)
    return rows


# ---------------------------------------------------------------- report
def load() -> str:
    return " / ".join(f"{v:.1f}" for v in os.getloadavg())


def machine(load_start: str) -> str:
    gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "no GPU"
    turbo = features.check_feature("libjpeg_turbo")
    return (
        f"{cpu_model()}, {os.cpu_count()} cores (torch threads {torch.get_num_threads()}), "
        f"{gpu}; load average at the start {load_start}, at the end {load()}. "
        f"torch {torch.__version__}, torchvision {torchvision.__version__}, "
        f"albumentations {A.__version__}, OpenCV {cv2.__version__}, Pillow {PIL.__version__}"
        f" (libjpeg-turbo {'yes' if turbo else 'no'}), rasterio {rasterio.__version__}, "
        f"numpy {np.__version__}, Python {platform.python_version()}"
    )


def report(
    pipe: dict[str, Any],
    augment: list[tuple[str, float]],
    decode: list[tuple[str, str, float]],
    args: argparse.Namespace,
    load_start: str,
) -> str:
    med = pipe["median"]
    synth = med["synthetic"]
    formats = [f for f in med if f != "synthetic"]
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    command = shlex.join(["python", "benchmarks/input_pipeline.py", *sys.argv[1:]])
    lines = [
        f"## Input pipeline: real loader vs synthetic tensors — {datetime.now(UTC):%Y-%m-%d %H:%M}"
        " UTC",
        "",
        f"Machine: {machine(load_start)}. Model: U-Net/{args.encoder} (random weights, "
        f"AdamW, cross-entropy), {pipe['images']} training images an epoch, batch "
        f"{pipe['batch']} ({pipe['steps']} steps), {args.side} px files cropped to "
        f"{args.size} px by the recipe ({', '.join(r.split('.', 1)[1] for r in RECIPE)}); "
        f"data.cache=false, train.num_workers={args.workers} -> {pipe['workers']} workers. "
        f"Median of {args.epochs - 1} epochs after a warm-up round; each round runs the "
        f"synthetic epoch then each format's. Command: `{command}`.",
        "",
        "| format | file KiB | workers | real loader s/epoch | synthetic s/epoch "
        f"| real / synthetic | <= {TARGET:.2f}x | loader only images/s |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for fmt in formats:
        ratio = med[fmt] / synth
        lines.append(
            f"| {fmt.upper()} | {pipe['sizes_kib'][fmt]:.0f} | {pipe['workers']} "
            f"| {med[fmt]:.3f} | {synth:.3f} | {ratio:.3f}x "
            f"| {'yes' if ratio <= TARGET else 'no'} | {pipe['loader_rates'][fmt]:.1f} |"
        )
    base = augment[0][1]
    lines += [
        "",
        f"Augmentation, one process and one thread, {pipe['images']} decoded {args.side} px "
        f"images in memory, the recipe to {args.size} px with normalization; median of "
        f"{args.repeats} passes after a warm-up pass:",
        "",
        "| pipeline | images/s | ms/image | vs liandan |",
        "|---|---|---|---|",
    ]
    for name, r in augment:
        lines.append(f"| {name} | {r:.1f} | {1000 / r:.2f} | {r / base:.2f}x |")
    lines += [
        "",
        f"Decoding, one thread, {args.side} px RGB files (JPEG quality {JPEG_QUALITY}, "
        f"deflate TIFF); median of {args.repeats} passes over up to {args.decode_images} "
        "files after a warm-up pass (files in the page cache):",
        "",
        "| format | decoder | images/s | ms/image | vs liandan's reader |",
        "|---|---|---|---|---|",
    ]
    reader = {fmt: r for fmt, name, r in decode if name.startswith("liandan")}
    for fmt, name, r in decode:
        lines.append(
            f"| {fmt.upper()} | {name} | {r:.1f} | {1000 / r:.2f} | {r / reader[fmt]:.2f}x |"
        )
    lines += ["", *notes(pipe, augment, decode, cores), ""]
    return "\n".join(lines)


def notes(
    pipe: dict[str, Any],
    augment: list[tuple[str, float]],
    decode: list[tuple[str, str, float]],
    cores: int | None,
) -> list[str]:
    """Plain-language notes drawn from the numbers: targets, contention, decoders."""
    med = pipe["median"]
    out = []
    over = [f for f in med if f != "synthetic" and med[f] / med["synthetic"] > TARGET]
    if over:
        out.append(f"Target <= {TARGET:.2f}x missed for {', '.join(f.upper() for f in over)}.")
    else:
        out.append(f"Target <= {TARGET:.2f}x met for every format.")
    if cores is not None and pipe["workers"] >= cores:
        out.append(
            f"On this {cores}-core machine the {pipe['workers']} loader workers and the "
            "model's CPU threads share the same cores, so every decoded image takes CPU "
            "time from the training step: the ratio measures contention as much as "
            "loader latency. On a GPU machine (model on the GPU, more cores) the same "
            "loader runs beside the model instead of competing with it."
        )
    jpeg = [(n, r) for f, n, r in decode if f == "jpeg"]
    if jpeg:
        ours = jpeg[0][1]
        best_name, best = max(jpeg, key=lambda item: item[1])
        if best > ours * 1.05:
            out.append(
                f"JPEG: the fastest installed decoder is {best_name} at {best:.0f} images/s, "
                f"{best / ours:.2f}x liandan's reader ({ours:.0f} images/s)."
            )
        else:
            out.append("JPEG: liandan's reader is within 5% of the fastest decoder.")
    best_aug_name, best_aug = max(augment, key=lambda item: item[1])
    if best_aug > augment[0][1] * 1.05:
        out.append(
            f"Augmentation: {best_aug_name} is {best_aug / augment[0][1]:.2f}x liandan's "
            "sample path."
        )
    else:
        out.append("Augmentation: liandan's sample path is within 5% of the fastest or faster.")
    return [" ".join(out)]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--images", type=int, default=64, help="training images an epoch")
    parser.add_argument("--side", type=int, default=512, help="side of the image files, px")
    parser.add_argument("--size", type=int, default=256, help="training crop (data.image_size)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--epochs", type=int, default=6, help="rounds; the first is warm-up")
    parser.add_argument("--repeats", type=int, default=5, help="passes for augment/decode")
    parser.add_argument("--decode-images", type=int, default=64)
    parser.add_argument("--encoder", default="resnet18", help="U-Net encoder of the loop")
    parser.add_argument("--workers", default="auto", help="train.num_workers")
    parser.add_argument("--formats", default="png,jpeg,tiff")
    parser.add_argument("--no-write", action="store_true", help="do not append to RESULTS.md")
    parser.add_argument("--quick", action="store_true", help="tiny sizes: a smoke run")
    args = parser.parse_args()
    if args.quick:
        args.images, args.side, args.size, args.batch = 8, 96, 64, 4
        args.epochs, args.repeats, args.decode_images = 2, 1, 8
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    unknown = sorted(set(formats) - set(FORMATS))
    if unknown or not formats:
        parser.error(f"--formats: choose from {', '.join(FORMATS)} (got {args.formats!r})")
    if args.epochs < 2:
        parser.error("--epochs must be >= 2 (the first is warm-up)")
    load_start = load()
    # the pairs split holds out round(n * 0.2) images: n + n/4 gives `--images` to train
    n_files = args.images + max(1, round(args.images / 4))
    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        roots = write_datasets(Path(tmp), formats, n_files, args.side)
        print(f"wrote {n_files} images per format in {time.perf_counter() - start:.1f}s")
        pipe = time_pipeline(roots, args)
        augment = time_augment(roots.get("png", next(iter(roots.values()))), args)
        decode = time_decode(roots, args)
    text = report(pipe, augment, decode, args, load_start)
    print(text)
    if not args.no_write:
        with RESULTS.open("a", encoding="utf-8") as fh:
            fh.write("\n" + text)
        print(f"appended to {RESULTS}")


if __name__ == "__main__":
    main()
