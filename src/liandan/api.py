"""The Python API: each command of the CLI is one function here.

``train`` reads as the pipeline: config -> data -> task -> Trainer -> run folder ->
evaluation. Every function returns plain objects a notebook can use.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import lightning as L
import numpy as np
import torch

from liandan.config import Config
from liandan.data.datamodule import DataBundle, build_data, split_samples
from liandan.data.datasets import load_image
from liandan.data.layouts import ClassSpec, find_samples
from liandan.data.scan import MaskMapper, check_dataset
from liandan.errors import CheckpointError, ConfigError
from liandan.metrics import ConfusionMatrix, compute_metrics
from liandan.runs import atomic_write_json, create_run_dir, read_model_json, save_model_bundle

log = logging.getLogger("liandan")


@dataclass
class RunResult:
    """What ``train`` returns: where the run is and how it scored."""

    run_dir: Path
    metrics: dict[str, Any]
    config: Config
    notes: list[str] = field(default_factory=list)
    duration_s: float = 0.0


def resolve_auto(cfg: Config, bundle: DataBundle) -> None:
    """Fill the ``auto`` values that depend on the data (written resolved to the run)."""
    if cfg.model.arch == "auto":
        if cfg.task == "segment":
            cfg.model.arch = "unet"
        else:  # LeNet for tiny inputs (digits, 32 px), a ResNet otherwise
            cfg.model.arch = "lenet" if cfg.data.image_size <= 64 else "resnet18"
    if cfg.loss.name == "auto":
        cfg.loss.name = "ce+dice" if cfg.task == "segment" else "ce"
    if cfg.train.monitor == "auto":
        cfg.train.monitor = cfg.resolved_monitor()


def _class_weights(cfg: Config, bundle: DataBundle) -> torch.Tensor | None:
    from liandan.losses import compute_class_weights

    setting = cfg.loss.class_weights
    if setting == "none":
        return None
    if setting == "auto":
        return compute_class_weights(bundle.class_counts())
    if len(setting) != bundle.classes.num_classes:
        raise ConfigError(
            f"{len(setting)} class weights for {bundle.classes.num_classes} classes",
            where="loss.class_weights",
            hint=f"give one weight per class: {bundle.classes.names}",
        )
    return torch.tensor(setting, dtype=torch.float32)


def model_meta(cfg: Config, bundle: DataBundle) -> dict[str, Any]:
    """Everything predict needs, so it never reads the training config."""
    classes = bundle.classes
    return {
        "task": cfg.task,
        "classes": classes.names,
        "values": classes.values,
        "colors": [list(c) for c in classes.colors],
        "ignore_index": classes.ignore_index,
        "color_masks": classes.color_masks,
        "in_channels": bundle.in_channels,
        "bands": cfg.data.bands,
        "dtype": bundle.checked.dtype,
        "to_rgb": bundle.checked.to_rgb,
        "pixel_size": None,
        "normalization": bundle.normalizer.to_dict(),
        "image_size": cfg.data.image_size,
        "tile_size": cfg.predict.tile,
        "arch": cfg.model.arch,
        "encoder": cfg.model.encoder,
        "model": cfg.model.model_dump(mode="json"),
    }


def _as_config(config: Config | str | Path | None, overrides: list[str] | None) -> Config:
    if isinstance(config, Config):
        cfg = config.model_copy(deep=True)
        if overrides:
            from liandan.config import apply_override

            data = cfg.to_dict()
            for item in overrides:
                apply_override(data, item)
            cfg = Config.from_dict(data, "config with overrides")
        return cfg
    return Config.load(config, overrides)


def train(
    data: str | Path | None = None,
    config: Config | str | Path | None = None,
    overrides: list[str] | None = None,
    *,
    out: str | Path = "runs",
    name: str = "train",
) -> RunResult:
    """Train a model and write a run folder.

    Args:
        data: the dataset folder (or set ``data.root`` in the config).
        config: a Config, a YAML path, or None for the defaults.
        overrides: dotted ``key=value`` strings.
        out: parent folder of runs.
        name: run name; ``name-2``, ``name-3`` ... when it exists.

    >>> result = liandan.train("data/", overrides=["train.epochs=5"])  # doctest: +SKIP
    >>> result.metrics["overall"]["mean_iou"]  # doctest: +SKIP
    0.81
    """
    cfg = _as_config(config, overrides)
    if data is not None:
        cfg.data.root = Path(data)
    bundle = build_data(cfg)  # fails on bad data before a run folder is made
    run_dir = create_run_dir(out, name)
    return train_into(cfg, bundle, run_dir)


def train_into(cfg: Config, bundle: DataBundle, run_dir: Path) -> RunResult:
    """Train into an existing run folder (used by ``train`` and ``demo``)."""
    from liandan.engine.task import LiandanTask
    from liandan.engine.trainer import build_trainer

    start = time.perf_counter()
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    resolve_auto(cfg, bundle)
    cfg.save(run_dir / "config.yaml")
    if bundle.index.skipped:
        atomic_write_json(run_dir / "skipped.json", bundle.index.skipped)
    task = LiandanTask(cfg, bundle.classes.names, bundle.in_channels, _class_weights(cfg, bundle))
    trainer, _ = build_trainer(cfg, run_dir)
    trainer.fit(task, bundle.train_loader, bundle.val_loader)
    # Export the best epoch's weights (EMA ones when enabled) as safetensors + model.json.
    best = run_dir / "checkpoints" / "best.ckpt"
    if best.is_file():
        state = torch.load(best, map_location="cpu", weights_only=True)
        task.load_state_dict(state["state_dict"])
        if "ema_state" in state and task.ema is not None:
            task.ema.load_state_dict(state["ema_state"])
    save_model_bundle(run_dir, task.eval_model().state_dict(), model_meta(cfg, bundle))
    metrics = evaluate(run_dir, split="val", _bundle=bundle)
    duration = time.perf_counter() - start
    try:
        from liandan.report import write_plots

        write_plots(run_dir, metrics)
    except Exception as exc:  # a plot must never cost the user a finished run
        log.warning("plots were not written: %s", exc)
    return RunResult(run_dir, metrics, cfg, list(bundle.notes), duration)


def _run_config(run: Path) -> Config:
    path = run / "config.yaml"
    if not path.is_file():
        raise CheckpointError("config.yaml is missing from the run", where=run)
    return Config.load(path)


def evaluate(
    run: str | Path,
    data: str | Path | None = None,
    *,
    split: str = "val",
    write: bool = True,
    _bundle: DataBundle | None = None,
) -> dict[str, Any]:
    """Score a run's model on a split of its dataset (or of another dataset).

    Writes ``metrics.json`` for the validation split and ``metrics_<split>.json``
    otherwise, never replacing another split's file.

    >>> liandan.evaluate("runs/train", split="test")["overall"]["accuracy"]  # doctest: +SKIP
    0.93
    """
    from liandan.predict import Predictor

    run = Path(run)
    _, meta = read_model_json(run)
    cfg = _run_config(run)
    if data is not None:
        cfg.data.root = Path(data)
    classes = ClassSpec(
        list(meta["classes"]),
        values=meta.get("values"),
        colors=[tuple(c) for c in meta.get("colors") or []],  # type: ignore[misc]
        ignore_index=meta.get("ignore_index"),
        color_masks=bool(meta.get("color_masks")),
    )
    if _bundle is not None:
        checked, splits = _bundle.checked, _bundle.splits
    else:
        if cfg.data.root is None:
            raise ConfigError("no dataset to evaluate on", where="data.root")
        index = find_samples(cfg.data.root, cfg.data.layout, cfg.task, cfg.data.ignore_index)
        if index.task == "segment":
            index.classes = classes
        elif index.classes.names != classes.names:
            raise ConfigError(
                f"the dataset's classes {index.classes.names} differ from the model's "
                f"{classes.names}",
                where=cfg.data.root,
            )
        checked = check_dataset(index, bands=cfg.data.bands, on_error=cfg.data.on_error)
        splits = split_samples(index, cfg.data.val_fraction, cfg.train.seed)
    if split == "all":
        samples = [s for name in ("train", "val", "test") for s in splits.get(name, [])]
    else:
        samples = splits.get(split, [])
    if not samples:
        raise ConfigError(
            f"the dataset has no {split!r} split",
            where="--split",
            hint="use --split val, test or all",
        )
    predictor = Predictor.from_run(run, tile=cfg.predict.tile, overlap=cfg.predict.overlap)
    mapper = MaskMapper(classes) if meta["task"] == "segment" else None
    cm = ConfusionMatrix(len(classes.names), ignore_index=-1)
    for sample in samples:
        image = load_image(checked, sample, cfg.data.bands)
        probs = predictor.predict_array(image, sample.image)
        if mapper is not None:
            assert isinstance(sample.target, Path)
            truth = checked.masks.get(sample.target)
            if truth is None:
                from liandan.data.readers import read_mask

                truth = mapper.map(read_mask(sample.target))
            cm.update(torch.from_numpy(probs.argmax(0)), torch.from_numpy(truth.astype(np.int64)))
        else:
            assert isinstance(sample.target, int)
            cm.update(torch.tensor([int(probs.argmax())]), torch.tensor([sample.target]))
    metrics = compute_metrics(cm.numpy(), classes.names, task=meta["task"], split=split)
    if write:
        name = "metrics.json" if split == "val" else f"metrics_{split}.json"
        atomic_write_json(run / name, metrics)
    return metrics


@dataclass
class DemoResult(RunResult):
    """A demo run plus where its scene prediction went and how it scored."""

    predictions: Path | None = None
    scene_metrics: dict[str, Any] | None = None


# The demo's settings: small enough for 2 CPU cores, measured in the README.
DEMO_OVERRIDES = {
    "segment": [
        "model.arch=unet",
        "model.encoder=resnet18",
        "data.image_size=128",
        "train.epochs=30",  # mIoU swings for ~10 epochs (BatchNorm, 6 steps/epoch)
        "train.batch_size=8",
        "optim.lr=1e-3",
        "augment.vflip=0.5",
        "augment.rotate90=0.5",
    ],
    "classify": [
        "model.arch=lenet",
        "data.image_size=32",
        "train.epochs=15",
        "train.batch_size=32",
        "optim.lr=3e-3",
        "augment.hflip=0.0",  # digits are not mirror-symmetric
    ],
}


def demo(
    task: str = "segment",
    *,
    out: str | Path = "runs",
    overrides: list[str] | None = None,
    name: str = "demo",
) -> DemoResult:
    """Build the embedded demo dataset, train, evaluate and predict: no download.

    Segmentation: mosaics of scikit-image's bundled texture photographs (grass,
    gravel, brick), with a georeferenced GeoTIFF scene predicted at the end.
    Classification: scikit-learn's bundled handwritten digits.

    >>> liandan.demo().metrics["overall"]["mean_iou"]  # doctest: +SKIP
    0.8
    """
    from liandan.data.demo import make_classify_demo, make_segment_demo
    from liandan.predict import predict
    from liandan.score import score

    if task not in DEMO_OVERRIDES:
        raise ConfigError(f"unknown demo task {task!r}", where="--task", hint="segment or classify")
    start = time.perf_counter()
    run_dir = create_run_dir(out, name)
    data_dir = run_dir / "data"
    if task == "segment":
        make_segment_demo(data_dir)
    else:
        make_classify_demo(data_dir)
    cfg = Config.load(None, DEMO_OVERRIDES[task] + list(overrides or []))
    cfg.data.root = data_dir
    bundle = build_data(cfg)
    result = train_into(cfg, bundle, run_dir)
    demo_result = DemoResult(**vars(result))
    scene = data_dir / "scene" / "scene.tif"
    if task == "segment" and scene.is_file():
        pred_dir = run_dir / "predictions"
        predict(run_dir, [scene], out=pred_dir)
        truth = data_dir / "scene" / "scene_mask.tif"
        demo_result.predictions = pred_dir
        if truth.is_file():
            demo_result.scene_metrics = score(pred_dir / "scene.tif", truth)
    demo_result.duration_s = time.perf_counter() - start
    return demo_result
