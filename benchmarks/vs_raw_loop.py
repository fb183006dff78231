"""liandan's defaults against a plain PyTorch loop given the same wall-clock budget.

For each dataset and seed, in one process tree on one machine, interleaved:

- ``liandan train DATA --budget B`` with no other option (a new process; the budget
  covers the whole command: scan, plan, training, final evaluation, report), scored
  by its own metrics.json (validation split, whole images);
- a plain loop of about 50 lines (below, :func:`raw_loop`): the same model family
  (smp U-Net/ResNet-18 for segmentation, a LeNet-size CNN or timm ResNet-18 for
  classification, as liandan's plan picks), random crops, flips and 90-degree rotations,
  AdamW 1e-3, cosine over the elapsed share of the budget, batch 8; B seconds of
  *training alone* (its data loading and final evaluation are not counted), scored on
  the same validation images with liandan's metric code (same definitions).

Datasets: ``demo-segment`` and ``demo-classify`` (liandan's embedded demos),
``digits`` (scikit-learn's bundled handwritten digits, 8x8 grayscale scans, real data
that ships with the package), ``dubai`` (../shared/realdata/dubai-aerial, real satellite tiles with colour masks,
laid out as a user would: tiles flattened into images/ + masks/, every 5th pair held out
for validation, classes.yaml with the colours found in the masks and black, which two
masks hold on 306 pixels, as the ignore colour, as `liandan scan` suggests). Results are
appended to benchmarks/RESULTS.md with the machine's load.

    python benchmarks/vs_raw_loop.py --budget 5m --seeds 0 1 2
    python benchmarks/vs_raw_loop.py --budget 3m --seeds 0 --datasets dubai
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from machine import cpu_model

STEP_EPOCHS = 5  # the step-matched comparison (--steps): validations along the way
LOOP_BATCH = 8  # every dataset; liandan's plan picks its own batch: images/s are compared too

ROOT = Path(__file__).resolve().parents[1]
REALDATA = Path(os.environ.get("LIANDAN_REALDATA", ROOT.parent / "shared" / "realdata"))
DUBAI_COLORS = {  # the colours found in the mask files (realdata/README.md)
    "Building": (60, 16, 152),
    "Land": (132, 41, 246),
    "Road": (110, 193, 228),
    "Vegetation": (254, 221, 58),
    "Water": (226, 169, 41),
    "Unlabeled": (155, 155, 155),
}


# ----------------------------------------------------------------------------- data
def make_dubai(root: Path) -> Path:
    """The dubai tiles as a user lays them out: train/ and val/ images + masks."""
    source = REALDATA / "dubai-aerial"
    pairs = sorted(source.glob("Tile */images/*.jpg"))
    for i, image in enumerate(pairs):
        split = "val" if i % 5 == 4 else "train"
        mask = image.parent.parent / "masks" / (image.stem + ".png")
        stem = f"{image.parent.parent.name.replace(' ', '')}_{image.stem}"
        for kind, path in (("images", image), ("masks", mask)):
            target = root / split / kind / (stem + path.suffix)
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(path, target)  # byte for byte, palette PNGs included
    names = list(DUBAI_COLORS)
    colors = "\n".join(f"  - [{r}, {g}, {b}]" for r, g, b in DUBAI_COLORS.values())
    # two masks hold 306 black pixels of no class: scan says so, and suggests this
    (root / "classes.yaml").write_text(
        f"names: {json.dumps(names)}\ncolors:\n{colors}\nignore_index: [0, 0, 0]\n"
    )
    return root


def make_digits(root: Path) -> Path:
    """scikit-learn's bundled handwritten digits (1797 real 8x8 scans, 10 classes) as a
    user lays out a classification set: train/ and val/ folders of class folders of PNGs,
    every 5th image held out."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    for i, (image, label) in enumerate(zip(digits.images, digits.target, strict=True)):
        split = "val" if i % 5 == 4 else "train"
        target = root / split / str(label) / f"{i:04d}.png"
        target.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray((image * 255 / 16).round().astype(np.uint8)).save(target)
    return root


def make_dataset(name: str, root: Path) -> Path:
    from liandan.data.demo import make_classify_demo, make_segment_demo

    if name == "demo-segment":
        return make_segment_demo(root)
    if name == "demo-classify":
        return make_classify_demo(root)
    if name == "dubai":
        return make_dubai(root)
    if name == "digits":
        return make_digits(root)
    raise SystemExit(f"unknown dataset {name}")


def read_split(root: Path, split: str) -> tuple[list, list, list[str], str]:
    """(images, targets, class names, task) of a split, decoded into memory."""
    from liandan.data.readers import read_image

    base = root / split
    if (base / "images").is_dir():  # segmentation: masks by class index (colours or values)
        import yaml

        spec = yaml.safe_load((root / "classes.yaml").read_text())
        names = spec["names"]
        colors = [tuple(c) for c in spec.get("colors", [])]
        images, masks = [], []
        for path in sorted((base / "images").iterdir()):
            images.append(read_image(path)[..., :3])
            raw = Image.open(next((base / "masks").glob(path.stem + ".*")))
            if colors and "dubai" in str(root):
                rgb = np.asarray(raw.convert("RGB")).astype(np.int32)
                key = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
                mask = np.full(key.shape, -1, np.int64)  # colours of no class: ignored
                for k, (r, g, b) in enumerate(colors):
                    mask[key == ((r << 16) | (g << 8) | b)] = k
            else:
                mask = np.asarray(raw).astype(np.int64)
            masks.append(mask)
        return images, masks, names, "segment"
    names = sorted(p.name for p in base.iterdir() if p.is_dir())
    images, labels = [], []
    for k, name in enumerate(names):
        for path in sorted((base / name).iterdir()):
            images.append(read_image(path))
            labels.append(k)
    return images, labels, names, "classify"


# ----------------------------------------------------------------------------- raw loop
def raw_loop(root: Path, budget_s: float, seed: int, arch: str, steps_cap: int = 0) -> dict:
    """The plain loop: about 50 lines of what a practitioner writes by hand.

    With ``steps_cap``, it runs exactly that many steps, cosine over the step share
    (the step-matched comparison), instead of ``budget_s`` seconds.
    """
    import segmentation_models_pytorch as smp
    import timm

    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    images, targets, names, task = read_split(root, "train")
    val_images, val_targets, _, _ = read_split(root, "val")
    stack = np.concatenate([im.reshape(-1, im.shape[-1]) for im in images]).astype(np.float32)
    mean, std = stack.mean(0), stack.std(0) + 1e-6
    norm = lambda im: torch.from_numpy(((im - mean) / std).transpose(2, 0, 1).copy()).float()  # noqa: E731
    seg, bands, n = task == "segment", images[0].shape[-1], len(names)
    size = 256 if seg else images[0].shape[0] * (4 if images[0].shape[0] <= 8 else 1)
    size = max(32, size)
    if seg:
        model = smp.Unet("resnet18", encoder_weights=None, in_channels=bands, classes=n)
    elif arch == "lenet":
        model = torch.nn.Sequential(
            torch.nn.Conv2d(bands, 32, 3, padding=1), torch.nn.BatchNorm2d(32), torch.nn.ReLU(),
            torch.nn.MaxPool2d(2), torch.nn.Conv2d(32, 64, 3, padding=1), torch.nn.BatchNorm2d(64),
            torch.nn.ReLU(), torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(64, n),
        )  # fmt: skip
    else:
        model = timm.create_model(arch, pretrained=False, in_chans=bands, num_classes=n)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = model.to(device)
    amp = torch.autocast("cuda", torch.bfloat16, enabled=device.type == "cuda")  # as liandan
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=1e-4)

    def sample() -> tuple[torch.Tensor, torch.Tensor]:
        i = int(rng.integers(len(images)))
        im, t = images[i], targets[i]
        if seg:  # random crop (padded when smaller), flips, 90-degree turns
            h, w = t.shape
            ph, pw = max(0, size - h), max(0, size - w)
            im = np.pad(im, ((0, ph), (0, pw), (0, 0)))
            t = np.pad(t, ((0, ph), (0, pw)), constant_values=-1)
            y, x = rng.integers(0, im.shape[0] - size + 1), rng.integers(0, im.shape[1] - size + 1)
            im, t = im[y : y + size, x : x + size], t[y : y + size, x : x + size]
            k = int(rng.integers(4))
            im, t = np.rot90(im, k), np.rot90(t, k)
            if rng.random() < 0.5:
                im, t = im[:, ::-1], t[:, ::-1]
            return norm(np.ascontiguousarray(im)), torch.from_numpy(t.copy())
        x = torch.nn.functional.interpolate(norm(im)[None], size=size, mode="bilinear")[0]
        return x, torch.tensor(t)

    start, steps = time.perf_counter(), 0
    model.train()
    while (elapsed := time.perf_counter() - start) < budget_s or steps < steps_cap:
        if steps_cap and steps >= steps_cap:
            break
        share = steps / steps_cap if steps_cap else elapsed / budget_s
        for group in opt.param_groups:  # cosine over the elapsed share of the budget
            group["lr"] = 1e-3 * 0.5 * (1 + math.cos(math.pi * share))
        xs, ys = zip(*(sample() for _ in range(LOOP_BATCH)), strict=True)
        with amp:
            out = model(torch.stack(xs).to(device))
            loss = torch.nn.functional.cross_entropy(
                out.float(), torch.stack(ys).to(device), ignore_index=-1
            )
        opt.zero_grad()
        loss.backward()
        opt.step()
        steps += 1
    train_s = time.perf_counter() - start
    model.eval()
    confusion = np.zeros((n, n), np.int64)
    with torch.no_grad():
        for im, t in zip(val_images, val_targets, strict=True):
            x = norm(im)[None].to(device)
            if seg:
                h, w = t.shape
                x = torch.nn.functional.pad(x, (0, (-w) % 32, 0, (-h) % 32))
                pred = model(x)[0, :, :h, :w].argmax(0).cpu().numpy()
                keep = t >= 0
                np.add.at(confusion, (t[keep], pred[keep]), 1)
            else:
                x = torch.nn.functional.interpolate(x, size=size, mode="bilinear")
                confusion[t, int(model(x).argmax(1).item())] += 1
    if device.type == "cuda":
        torch.cuda.synchronize()
    return {"confusion": confusion, "names": names, "task": task, "steps": steps,
            "train_s": train_s}  # fmt: skip


def score(result: dict) -> float:
    from liandan.metrics import compute_metrics

    m = compute_metrics(result["confusion"], result["names"], task=result["task"], split="val")
    return float(m["overall"]["mean_iou" if result["task"] == "segment" else "macro_f1"])


# ----------------------------------------------------------------------------- liandan
def run_liandan(
    root: Path, out: Path, budget: str, seed: int, steps: int = 0, extra: tuple[str, ...] = ()
) -> dict:
    """``liandan train DATA --budget B``; with ``steps``, exactly that many optimizer steps
    in 5 epochs, no budget, the warmup the budget would give (5% of the steps)."""
    name = f"s{seed}"
    start = time.perf_counter()
    length = ["--budget", budget]
    if steps:
        length = [f"train.epochs={STEP_EPOCHS}", f"train.steps_per_epoch={steps // STEP_EPOCHS}",
                  f"schedule.warmup_epochs={0.05 * STEP_EPOCHS:g}", "train.patience=null"]  # fmt: skip
    cmd = [sys.executable, "-m", "liandan.cli", "train", str(root), *length, "--out", str(out),
           "--name", name, f"train.seed={seed}", "train.progress=false", *extra]  # fmt: skip
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    wall = time.perf_counter() - start
    run = out / name
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:], file=sys.stderr)
        return {"error": proc.returncode, "wall_s": wall}
    metrics = json.loads((run / "metrics.json").read_text())
    budget_file = run / "budget.json"
    budget_info = json.loads(budget_file.read_text()) if budget_file.exists() else {}
    if not budget_info:  # step-matched: the steps and time from the history
        history = (run / "history.csv").read_text().splitlines()
        last = dict(zip(history[0].split(","), history[-1].split(","), strict=False))
        budget_info = {"steps_run": int(last["step"]), "train_s_used": float(last["time_s"])}
    cfg = json.loads(json.dumps(__import__("yaml").safe_load((run / "config.yaml").read_text())))
    task = metrics["task"]
    weights = (run / "model" / "weights.safetensors").stat().st_size
    folder = sum(p.stat().st_size for p in run.rglob("*") if p.is_file())
    resumable = sum(p.stat().st_size for p in (run / "checkpoints").glob("last*.ckpt"))
    return {
        "score": float(metrics["overall"]["mean_iou" if task == "segment" else "macro_f1"]),
        "wall_s": wall,
        "steps": budget_info.get("steps_run", 0),
        "train_s": budget_info.get("train_s_used", 0.0),
        "arch": cfg["model"]["arch"],
        "batch": int(cfg["train"]["batch_size"]),
        "folder_mb": folder / 2**20,
        "limit_mb": (2 * weights + resumable) / 2**20 + 5,
        "final_lr": _final_lr(run),
        "peak_lr": cfg["optim"]["lr"],
    }


def _final_lr(run: Path) -> float:
    from liandan.engine.checkpoint import load_checkpoint_file

    state = load_checkpoint_file(run / "checkpoints" / "last.ckpt")
    return float(state["optimizer_states"][0]["param_groups"][0]["lr"])


# ----------------------------------------------------------------------------- main
def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--budget", default="5m")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument(
        "--datasets", nargs="+", default=["dubai", "digits", "demo-segment", "demo-classify"]
    )
    parser.add_argument("--no-write", action="store_true", help="print, do not append")
    parser.add_argument("--steps", type=int, default=0, help="step-matched instead: both run "
                        "exactly this many optimizer steps (no budget; load does not matter)")  # fmt: skip
    parser.add_argument(
        "--set",
        nargs="*",
        default=[],
        metavar="KEY=VALUE",
        help="overrides for liandan's runs (ablations)",
    )
    parser.add_argument("--only", choices=["liandan", "loop"], help="run one side only")
    parser.add_argument("--keep", type=Path, help="copy liandan's run folders here (no .ckpt)")
    args = parser.parse_args()
    from liandan.config import parse_duration

    budget_s = parse_duration(args.budget)
    torch.set_num_threads(os.cpu_count() or 1)
    load_start = os.getloadavg()
    rows = []
    with tempfile.TemporaryDirectory(prefix="vs-raw-") as tmp:
        for name in args.datasets:
            root = make_dataset(name, Path(tmp) / name)
            ours, theirs = [], []
            for seed in args.seeds:
                if args.only != "loop":
                    ours.append(run_liandan(root, Path(tmp) / f"runs-{name}", args.budget, seed,
                                            args.steps, tuple(args.set)))  # fmt: skip
                if args.only != "liandan":
                    arch = ours[-1].get("arch", "resnet18") if ours else "resnet18"
                    raw = raw_loop(root, budget_s, seed, arch, args.steps)
                    theirs.append({"score": score(raw), "steps": raw["steps"],
                                   "train_s": raw["train_s"]})  # fmt: skip
                print(name, seed, ours[-1:], theirs[-1:], flush=True)
            rows.append((name, ours, theirs))
            if args.keep and (Path(tmp) / f"runs-{name}").is_dir():  # budget.json, history
                shutil.copytree(Path(tmp) / f"runs-{name}", args.keep / name,
                                ignore=shutil.ignore_patterns("*.ckpt"), dirs_exist_ok=True)  # fmt: skip
    load_end = os.getloadavg()
    text = report(rows, args, load_start, load_end, budget_s)
    print(text)
    if not args.no_write:
        with (ROOT / "benchmarks" / "RESULTS.md").open("a", encoding="utf-8") as fh:
            fh.write("\n" + text)


def _mean_sd(values: list[float]) -> str:
    if not values:
        return "-"
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.3f} ± {sd:.3f}"


def report(rows: list, args: argparse.Namespace, load_start, load_end, budget_s: float) -> str:
    import lightning
    import segmentation_models_pytorch

    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    if args.steps:
        title = f"step-matched, {args.steps} optimizer steps"
        how = (f"liandan: `liandan train DATA train.epochs={STEP_EPOCHS} "
               f"train.steps_per_epoch={args.steps // STEP_EPOCHS}` with a 5% warmup, no budget; "
               f"the loop: {args.steps} steps, cosine over the step share")  # fmt: skip
    else:
        title = f"{args.budget} budget"
        how = (f"liandan: `liandan train DATA --budget {args.budget}` (the whole command, "
               f"metrics.json); the loop: {budget_s:.0f} s of training alone")  # fmt: skip
    flags = f" --steps {args.steps}" if args.steps else ""
    flags += f" --set {' '.join(args.set)}" if args.set else ""
    flags += f" --only {args.only}" if args.only else ""
    lines = [
        f"## liandan vs a plain PyTorch loop, {title} — {when}",
        "",
        f"Machine: {cpu_model()}, {os.cpu_count()} cores, "
        f"{torch.cuda.get_device_name() if torch.cuda.is_available() else 'no GPU'}; "
        "load average at the start "
        f"{load_start[0]:.1f} / {load_start[1]:.1f} / {load_start[2]:.1f}, at the end "
        f"{load_end[0]:.1f} / {load_end[1]:.1f} / {load_end[2]:.1f}. torch {torch.__version__}, "
        f"lightning {lightning.__version__}, smp {segmentation_models_pytorch.__version__}. "
        f"Seeds {args.seeds}, interleaved (liandan, then the loop, per seed). {how}. Metric: "
        "validation mean IoU (segment) or macro F1 (classify). Command: "
        f"`python benchmarks/vs_raw_loop.py --budget {args.budget} --seeds "
        f"{' '.join(map(str, args.seeds))} --datasets {' '.join(args.datasets)}{flags}`.",
        "",
        "| dataset | liandan | plain loop | liandan / loop | liandan steps/s (all included) | "
        "loop steps/s (training only) | ratio | images/s ratio (batch) | liandan wall s "
        "(of budget) | final lr / peak | run folder MB (limit) |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for name, ours, theirs in rows:
        ok = [o for o in ours if "score" in o]
        a = [o["score"] for o in ok]
        b = [t["score"] for t in theirs]
        ours_rate = [o["steps"] / o["wall_s"] for o in ok]
        loop_rate = [t["steps"] / t["train_s"] for t in theirs]
        ratio = statistics.mean(a) / statistics.mean(b) if a and b and statistics.mean(b) else 0
        speed = statistics.mean(ours_rate) / statistics.mean(loop_rate) if ok and theirs else 0
        batches = sorted({o["batch"] for o in ok})
        images = speed * statistics.mean(o["batch"] for o in ok) / LOOP_BATCH if speed else 0
        batch = f"{'/'.join(map(str, batches))} vs {LOOP_BATCH}"
        walls = ", ".join(f"{o['wall_s']:.0f}" for o in ours)
        lrs = ", ".join(f"{o['final_lr'] / o['peak_lr']:.3f}" for o in ok)
        folders = ", ".join(f"{o['folder_mb']:.0f} ({o['limit_mb']:.0f})" for o in ok)
        failed = len(ours) - len(ok)
        lines.append(
            f"| {name} | {_mean_sd(a)}{f' ({failed} failed)' if failed else ''} | {_mean_sd(b)} "
            f"| {ratio:.2f}x | {_mean_sd(ours_rate)} | {_mean_sd(loop_rate)} | {speed:.2f}x "
            f"| {images:.2f}x ({batch}) "
            f"| {walls} | {lrs} | {folders} |"
        )
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
