"""Every config key takes effect, or the command that cannot use it refuses it.

``EFFECTS`` names, for every leaf key of the schema, a non-default value and how its
effect is observed: ``liandan train``'s objects are built from the config the way
``train_into`` builds them (resolved config, data bundle, LightningModule, optimizer and
schedule, Trainer, the run's model bundle and the Predictor ``liandan predict`` makes
of it), once with the schema's default and once with the value, and the observation
must differ. No training runs. A key added to the schema without a row here fails
``test_every_schema_key_has_an_observed_effect``; a key whose effect is removed fails its
row. The commands that read only some sections (predict, evaluate, score, export)
refuse every other key, naming it.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import lightning as L
import numpy as np
import pytest
import rasterio
import torch
from PIL import Image

import liandan.engine.trainer as trainer_module
from conftest import make_imagefolder, make_pairs, seg_pair, write_geotiff
from liandan.api import _class_weights, model_meta, resolve_auto, train_config
from liandan.cli import main
from liandan.config import Config, config_keys, key_accepted
from liandan.data.datamodule import DataBundle, build_data
from liandan.engine.task import LiandanTask
from liandan.engine.trainer import accelerator_is_cpu, build_trainer, resolve_precision
from liandan.errors import ConfigError, LiandanError
from liandan.predict_settings import predict_settings
from liandan.prediction import Predictor
from liandan.runs import save_model_bundle
from test_rasters import make_scene

# Shared by both builds of a row unless the row is about that key: small and fast.
COMMON = {
    "seg": ["data.image_size=32", "model.encoder=mobilenet_v2", "predict.tile=64"],
    "cls": ["data.image_size=32", "model.arch=lenet", "predict.tile=64"],
    "det": ["data.image_size=64", "model.encoder=test_resnet"],
    "points": ["task=detect", "data.image_size=64", "model.encoder=test_resnet"],
}


# ------------------------------------------------------------------ datasets
def _seg(root: Path) -> Path:
    return make_pairs(root, n=10)


def _cls(root: Path) -> Path:
    return make_imagefolder(root, n_per_class=6)


def _big(root: Path) -> Path:
    """80-px TIFF pairs without a CRS: read whole up to ``data.max_image_size``, else tiled."""
    rng = np.random.default_rng(0)
    for i in range(4):
        img, mask = seg_pair(rng, size=80)
        write_geotiff(root / "images" / f"img{i}.tif", img.transpose(2, 0, 1), crs=None)
        write_geotiff(root / "masks" / f"img{i}.tif", mask[None], crs=None)
    return root


def _renamed(root: Path) -> Path:
    """Pairs in folders ``auto`` does not know: only ``data.layout=pairs:pics/labels``."""
    make_pairs(root, n=6)
    (root / "images").rename(root / "pics")
    (root / "masks").rename(root / "labels")
    return root


def _broken(root: Path) -> Path:
    """Pairs with one unreadable image: ``data.on_error=fail`` refuses, ``skip`` trains."""
    make_pairs(root, n=8)
    (root / "images" / "img00.png").write_bytes(b"not a png")
    return root


def _jpeg_masks(root: Path) -> Path:
    """Masks saved as JPEG (lossy values): ``data.lossy_masks=nearest`` snaps them."""
    make_pairs(
        root, n=6, values=(0, 128, 255), classes_yaml="names: [a, b, c]\nvalues: [0, 128, 255]\n"
    )
    for png in sorted((root / "masks").glob("*.png")):
        Image.open(png).save(png.with_suffix(".jpg"), quality=80)
        png.unlink()
    return root


def _scene(root: Path) -> Path:
    """Two georeferenced 7-band scenes whose nodata collar (0) the files do not declare."""
    make_scene(root, height=150, width=130)
    with rasterio.open(root / "images" / "scene.tif", "r+") as dst:
        dst.nodata = None
    for folder in ("images", "masks"):
        shutil.copy(root / folder / "scene.tif", root / folder / "scene2.tif")
    return root


def _polygons(root: Path) -> Path:
    """A scene labelled by GeoJSON polygons with two attributes: ``class`` and ``kind``."""
    make_scene(root, label="geojson")
    path = root / "labels" / "scene.geojson"
    layer = json.loads(path.read_text())
    for feature in layer["features"]:
        feature["properties"]["kind"] = {"field": "crop", "water": "lake"}[
            feature["properties"]["class"]
        ]
    path.write_text(json.dumps(layer))
    return root


def _coarse(root: Path) -> Path:
    """A scene whose label raster lies on a coarser grid: ``data.align=warp`` warps it."""
    from rasterio.transform import from_origin

    from test_rasters import write

    make_scene(root)
    truth = np.zeros((75, 65), np.uint8)
    truth[15:45, 20:50] = 1
    write(root / "masks" / "scene.tif", truth[None], transform=from_origin(500000, 4000000, 20, 20))
    return root


def _det(root: Path) -> Path:
    """The detection demo's shapes, tiny: a YOLO folder of 6 training, 2 validation images."""
    from liandan.tasks.detect.demo import make_detect_demo

    return make_detect_demo(root, n_train=6, n_val=2, size=64, scene_size=64)


def _points(root: Path) -> Path:
    """A georeferenced raster with a GeoJSON of WGS84 points: detection needs
    ``data.point_box`` to make boxes of them."""
    from rasterio.warp import transform

    rng = np.random.default_rng(0)
    write_geotiff(root / "images" / "trees.tif", rng.integers(0, 255, (3, 128, 128), np.uint8))
    features = []
    for i, (col, row) in enumerate([(20, 30), (90, 40), (40, 100), (100, 100)]):
        (lon,), (lat,) = transform("EPSG:32633", "EPSG:4326", [500000 + col * 10], [4000000 - row * 10])  # fmt: skip
        point = {"type": "Point", "coordinates": [lon, lat]}
        features.append({"type": "Feature", "geometry": point, "properties": {"class": i % 2}})
    (root / "labels").mkdir(parents=True)
    layer = {"type": "FeatureCollection", "features": features}
    (root / "labels" / "trees.geojson").write_text(json.dumps(layer))
    return root


DATASETS: dict[str, Callable[[Path], Path]] = {
    "seg": _seg,
    "cls": _cls,
    "big": _big,
    "renamed": _renamed,
    "broken": _broken,
    "jpeg": _jpeg_masks,
    "scene": _scene,
    "polygons": _polygons,
    "coarse": _coarse,
    "det": _det,
    "points": _points,
}


@pytest.fixture(scope="module")
def datasets(module_tmp: Path) -> Callable[[str], Path]:
    made: dict[str, Path] = {}

    def get(name: str) -> Path:
        if name not in made:
            made[name] = DATASETS[name](module_tmp / name)
        return made[name]

    return get


# ------------------------------------------------------------------ building
@dataclass
class Built:
    """What ``liandan train`` builds from a config before its first step."""

    cfg: Config
    bundle: DataBundle
    task: LiandanTask
    trainer: L.Trainer
    history: Any
    run_dir: Path
    cache: dict[str, Any] = field(default_factory=dict)


def build(data: Path, overrides: list[str], run_dir: Path) -> Built:
    """Build as ``api.train`` and ``api.train_into`` do, up to ``trainer.fit``."""
    shutil.rmtree(run_dir, ignore_errors=True)
    run_dir.mkdir(parents=True)
    cfg, _ = train_config(data, None, overrides, plan=False)
    bundle = build_data(cfg)
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    resolve_auto(cfg, bundle)
    task = LiandanTask(cfg, bundle.classes.names, bundle.in_channels, _class_weights(cfg, bundle))
    trainer, history = build_trainer(cfg, run_dir)
    return Built(cfg, bundle, task, trainer, history, run_dir)


def digest(*arrays: Any) -> str:
    """A short fingerprint of arrays or tensors (rounded: float noise is not an effect)."""
    h = hashlib.sha1()
    for a in arrays:
        a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
        h.update(str(a.shape).encode())
        h.update(np.round(a.astype(np.float64), 4).tobytes())
    return h.hexdigest()[:12]


# ------------------------------------------------------------------ observers
def obs_split(b: Built) -> Any:
    return {k: sorted(str(s.image) for s in v) for k, v in b.bundle.splits.items()}


def obs_train_items(b: Built) -> Any:
    """The first training samples as the loader yields them (augmentation included)."""
    ds = b.bundle.train_loader.dataset
    return [digest(*ds[i]) for i in range(min(4, len(ds)))]  # type: ignore[arg-type]


def obs_val_items(b: Built) -> Any:
    ds = b.bundle.val_loader.dataset
    return [digest(*ds[i]) for i in range(min(2, len(ds)))]  # type: ignore[arg-type]


def obs_loaders(b: Built) -> Any:
    train, val = b.bundle.train_loader, b.bundle.val_loader
    return {
        "batch": train.batch_size,
        "workers": train.num_workers,
        "sampler": type(train.sampler).__name__,
        "train": (type(train.dataset).__name__, len(train.dataset)),  # type: ignore[arg-type]
        "val": (type(val.dataset).__name__, len(val.dataset), val.batch_size),  # type: ignore[arg-type]
    }


def obs_cache(b: Built) -> Any:
    return len(b.bundle.checked.images)


def obs_classes(b: Built) -> Any:
    c = b.bundle.classes
    return (c.names, c.values, c.ignore_index, b.bundle.in_channels)


def obs_boxes(b: Built) -> Any:
    """The boxes of a detection dataset's records (windows of GIS layers included)."""
    return [np.round(r.boxes, 2).tolist() for r in b.bundle.checked.index.source.images]


def obs_normalizer(b: Built) -> Any:
    return json.dumps(b.bundle.normalizer.to_dict(), sort_keys=True, default=str)


def obs_raster_tiles(b: Built) -> Any:
    """Tiles the training set draws (seeded) and the first validation tile, with masks."""
    ds = b.bundle.train_loader.dataset
    rng = np.random.default_rng(0)
    drawn = [digest(*ds._random_window(rng)) for _ in range(6)]  # type: ignore[attr-defined]
    val = b.bundle.val_loader.dataset
    first = digest(*val.read(*val.windows[0]))  # type: ignore[attr-defined]
    regions = [(r.sample.image.name, r.top, r.bottom) for r in ds.regions]  # type: ignore[attr-defined]
    return drawn, first, regions, len(ds)  # type: ignore[arg-type]


def obs_model(b: Built) -> Any:
    """The network: its modules, weights, which are trained, dropout rates."""
    model = b.task.model
    params = list(model.parameters())
    return {
        "modules": sorted({type(m).__name__ for m in model.modules()}),
        "weights": digest(*[p.detach().flatten()[:64] for p in params]),
        "count": sum(p.numel() for p in params),
        "trained": sum(p.numel() for p in params if p.requires_grad),
        "dropout": sorted(
            {m.p for m in model.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd)}
        ),
    }


def obs_norms_in_training(b: Built) -> Any:
    """Norm layers still updating their statistics at the start of a training epoch."""
    b.task.train()
    b.task.on_train_epoch_start()
    return sum(m.training for m in b.task.model.modules() if "Norm" in type(m).__name__)


def obs_compiled(b: Built) -> Any:
    b.task.configure_model()  # Lightning's hook at fit start
    return getattr(b.task.model, "_compiled_call_impl", None) is not None


def obs_loss(b: Built) -> Any:
    """The criterion's value on fixed predictions and targets."""
    torch.manual_seed(1)
    n = b.task.num_classes
    if b.task.task == "segment":
        logits, target = torch.randn(2, n, 8, 8), torch.randint(0, n, (2, 8, 8))
    else:
        logits, target = torch.randn(6, n), torch.arange(6) % n
    return round(float(b.task.criterion(logits, target)), 5)


def obs_mixer(b: Built) -> Any:
    if b.task.mixer is None:
        return None
    x = torch.arange(4 * 3 * 8 * 8, dtype=torch.float32).reshape(4, 3, 8, 8)
    mixed = b.task.mixer(x, torch.arange(4) % 2)
    return digest(mixed.x), round(mixed.lam, 5)


STEPS_PER_EPOCH = 4


def optimizers(b: Built) -> tuple[Any, Any]:
    """``configure_optimizers`` as the Trainer calls it (a run of 4 steps per epoch)."""
    if "optim" not in b.cache:
        epochs = b.cfg.train.epochs
        b.task._trainer = SimpleNamespace(estimated_stepping_batches=STEPS_PER_EPOCH * epochs)  # type: ignore[assignment]
        conf = b.task.configure_optimizers()
        b.task._trainer = None
        b.cache["optim"] = conf["optimizer"], conf["lr_scheduler"]
    return b.cache["optim"]


def obs_optimizer(b: Built) -> Any:
    optimizer, _ = optimizers(b)
    groups = [
        {k: v for k, v in g.items() if k not in ("params", "name", "initial_lr")}
        for g in optimizer.param_groups
    ]
    return type(optimizer).__name__, json.dumps(groups, sort_keys=True, default=str)


def obs_lr_curve(b: Built) -> Any:
    """The learning rate at each step (per epoch: plateau, with a metric that never improves)."""
    optimizer, sched = optimizers(b)
    scheduler = sched["scheduler"]
    lrs = []
    for _ in range(b.cfg.train.epochs):
        for _ in range(STEPS_PER_EPOCH if sched["interval"] == "step" else 1):
            lrs.append(round(optimizer.param_groups[0]["lr"], 8))
            optimizer.step()
            if sched["interval"] == "step":
                scheduler.step()
        if sched["interval"] == "epoch":
            scheduler.step(0.5) if "monitor" in sched else scheduler.step()
    return lrs


def obs_ema(b: Built) -> Any:
    """The weights validation and export use after one step of changed weights."""
    if b.task.ema is None:
        return None
    with torch.no_grad():
        for p in b.task.model.parameters():
            p.add_(1.0)
    b.task.on_train_batch_end(None, None, 0)
    return digest(*[p.flatten()[:16] for p in b.task.eval_model().parameters()])


def _callback(b: Built, name: str) -> Any:
    return [c for c in b.trainer.callbacks if type(c).__name__ == name]  # type: ignore[attr-defined]


def obs_trainer(b: Built) -> Any:
    """The Lightning Trainer's arguments as it resolved them."""
    t = b.trainer
    return {
        "max_epochs": t.max_epochs,
        "precision": t.precision,
        "strategy": type(t.strategy).__name__,
        "devices": t.num_devices,
        "nodes": t.num_nodes,
        "limit_train_batches": t.limit_train_batches,
        "logger": type(t.logger).__name__,
        "sync_batchnorm": getattr(t.strategy, "_layer_sync", None) is not None,
    }


def obs_callbacks(b: Built) -> Any:
    """Callbacks and their settings: best checkpoint, early stopping, freezing, last.ckpt."""
    ckpt = b.trainer.checkpoint_callback
    stop = _callback(b, "EarlyStopping")
    return {
        "monitor": (ckpt.monitor, ckpt.mode),  # type: ignore[union-attr]
        "patience": stop[0].patience if stop else None,
        "freeze": [c.epochs for c in _callback(b, "FreezeEncoder")],
        "last_every_s": [c.every_s for c in _callback(b, "LastCheckpoint")],
        "history_log_epochs": b.history.log_epochs,
        "unsafe_load": b.trainer.strategy.checkpoint_io.unsafe_load,  # type: ignore[union-attr]
    }


def obs_on_a_gpu_machine(b: Built, monkeypatch: pytest.MonkeyPatch) -> Any:
    """Where training would run, and in which precision, were a bf16 GPU present."""
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda *a, **k: True)
    return accelerator_is_cpu(b.cfg), resolve_precision(b.cfg)


def obs_exported_weights(b: Built) -> Any:
    """Which checkpoint's weights ``train_into`` writes to model/ at the end."""
    return b.cfg.resolved_export()


def obs_predictor(b: Built) -> Any:
    """The Predictor ``liandan predict RUN`` makes of the run this config would write."""
    b.cfg.save(b.run_dir / "config.yaml")
    save_model_bundle(b.run_dir, b.task.eval_model().state_dict(), model_meta(b.cfg, b.bundle))
    p = Predictor.from_run(b.run_dir, **predict_settings(b.run_dir))
    settings = p.tile, p.overlap, p.blend, p.tta, p.batch_size, str(p.autocast)
    return (*settings, p.score_threshold, p.nms_iou)


def obs_detections(b: Built) -> Any:
    """What the detector of ``liandan predict RUN`` keeps of a validation image, and the
    score threshold of the precision in ``liandan evaluate``'s metrics.json."""
    from liandan.tasks import get_task

    b.cfg.save(b.run_dir / "config.yaml")
    save_model_bundle(b.run_dir, b.task.eval_model().state_dict(), model_meta(b.cfg, b.bundle))
    p = Predictor.from_run(b.run_dir, **predict_settings(b.run_dir))
    task = get_task("detect")
    val = b.bundle.splits["val"]
    rows = task.predict_array(p, np.asarray(Image.open(val[0].image)), val[0].image)
    found = task.evaluate_samples(p, b.bundle.checked, val, None)
    overall = task.score_results(found, b.bundle.classes.names, "val")["overall"]
    return len(rows), digest(rows), overall["score_threshold"], overall["precision"]


def obs_precision_on_a_plain_cpu(b: Built, monkeypatch: pytest.MonkeyPatch) -> Any:
    """The training precision on a CPU without bf16 instructions (auto: float32 there,
    bf16 autocast where the CPU has them: the default differs between machines)."""
    monkeypatch.setattr(trainer_module, "cpu_bf16_native", lambda: False)
    return resolve_precision(b.cfg)


NEEDS_MONKEYPATCH = {obs_on_a_gpu_machine, obs_precision_on_a_plain_cpu}


# ------------------------------------------------------------------ the table
@dataclass(frozen=True)
class Effect:
    """How one key's effect is observed.

    Attributes:
        value: a non-default value, as typed on the command line.
        observe: what differs between the default and ``value``.
        data: the dataset (a key of ``DATASETS``).
        base: overrides of other keys both builds share (with ``COMMON``).
        against: compared with this value, not the default (which ``base`` refuses).
        default_refused: the data needs the value: the default build must be refused.
        refused: the value is refused here, by an error naming the key (its effect is
            where this machine cannot build it, e.g. GPUs).
    """

    value: str
    observe: Callable[..., Any]
    data: str = "seg"
    base: tuple[str, ...] = ()
    against: str | None = None
    default_refused: bool = False
    refused: bool = False


E = Effect
RASTER = ("data.tile_size=32", "data.tiles_per_epoch=4", "data.val_fraction=0.3")
SGD = ("optim.name=sgd",)
EFFECTS: dict[str, Effect] = {
    # folders that could be pairs or classes: the task settles which (refused without)
    "task": E("segment", obs_classes, data="renamed", default_refused=True),
    "data.root": E("{data}", obs_split, default_refused=True),
    "data.layout": E("pairs:pics/labels", obs_split, data="renamed", default_refused=True),
    "data.val_fraction": E("0.5", obs_split),
    "data.image_size": E("16", obs_train_items),
    "data.tile_size": E("48", obs_raster_tiles, data="scene", base=RASTER[1:]),
    "data.max_image_size": E("64", obs_loaders, data="big"),
    "data.tiles_per_epoch": E("6", obs_raster_tiles, data="scene", base=(RASTER[0], RASTER[2])),
    "data.nodata": E("0", obs_raster_tiles, data="scene", base=RASTER),
    "data.max_nodata_fraction": E(
        "0.05", obs_raster_tiles, data="scene", base=(*RASTER, "data.nodata=0")
    ),
    "data.split": E("files", obs_raster_tiles, data="scene", base=RASTER),
    "data.label_attribute": E("kind", obs_classes, data="polygons", base=RASTER),
    # GIS points for detection: refused without a box size, boxes of that size with one
    "data.point_box": E(
        "12", obs_boxes, data="points", base=("data.tile_size=64",), default_refused=True
    ),
    "data.unlabelled": E("ignore", obs_classes, data="polygons", base=RASTER),
    "data.align": E("warp", obs_raster_tiles, data="coarse", base=RASTER, default_refused=True),
    "data.bands": E("[1]", obs_classes),
    "data.normalize": E("imagenet", obs_normalizer),
    "data.percentiles": E("[1,99]", obs_normalizer, base=("data.normalize=percentile",)),
    "data.ignore_index": E("2", obs_classes),
    "data.on_error": E("skip", obs_split, data="broken", default_refused=True),
    "data.lossy_masks": E("nearest", obs_classes, data="jpeg", default_refused=True),
    "data.cache": E("false", obs_cache),
    "data.sampler": E("balanced", obs_train_items, base=("data.image_size=16",)),
    "data.folds": E("2", obs_split),
    "data.fold": E("1", obs_split, base=("data.folds=3",)),
    "model.arch": E("segnet", obs_model),
    "model.encoder": E("resnet18", obs_model),
    "model.weights": E("{weights}", obs_model),
    "model.attention": E("scse", obs_model),
    "model.transfer": E("frozen", obs_model),
    "model.frozen_stages": E("2", obs_model, base=("model.transfer=partial",), against="1"),
    "model.dropout": E("0.3", obs_model, base=("model.arch=segnet",)),
    "model.freeze_bn": E("true", obs_norms_in_training),
    "model.fpn_channels": E("128", obs_model, data="det"),
    "loss.name": E("focal", obs_loss),
    "loss.weights": E("[1.0,3.0]", obs_loss),
    "loss.class_weights": E("auto", obs_loss),
    "loss.label_smoothing": E("0.2", obs_loss),
    "loss.focal_gamma": E("0.5", obs_loss, base=("loss.name=focal",)),
    # median is inverse scaled (median(f) / f_c): the same weights relative to each other
    "loss.class_weighting": E("effective", obs_loss, base=("loss.class_weights=auto",)),
    "loss.tversky_alpha": E("0.6", obs_loss, base=("loss.name=tversky",)),
    "loss.tversky_beta": E("0.2", obs_loss, base=("loss.name=tversky",)),
    "optim.name": E("sgd", obs_optimizer),
    "optim.lr": E("0.01", obs_optimizer),
    "optim.weight_decay": E("0.05", obs_optimizer),
    "optim.momentum": E("0.5", obs_optimizer, base=SGD),
    "optim.nesterov": E("true", obs_optimizer, base=SGD),
    "optim.betas": E("[0.8,0.99]", obs_optimizer),
    "optim.ema": E("0.5", obs_ema),
    "optim.encoder_lr_mult": E("0.1", obs_optimizer),
    "schedule.name": E("constant", obs_lr_curve),
    "schedule.warmup_epochs": E("0", obs_lr_curve),
    "schedule.warmup_start_factor": E("0.5", obs_lr_curve),
    "schedule.min_lr_ratio": E("0.5", obs_lr_curve),
    "schedule.step_size": E("1", obs_lr_curve, base=("schedule.name=step",)),
    "schedule.milestones": E("[1,2]", obs_lr_curve, base=("schedule.name=multistep",)),
    "schedule.gamma": E("0.5", obs_lr_curve, base=("schedule.name=exponential",)),
    "schedule.t0": E("1", obs_lr_curve, base=("schedule.name=sgdr", "schedule.warmup_epochs=0")),
    "schedule.t_mult": E(
        "1", obs_lr_curve, base=("schedule.name=sgdr", "schedule.warmup_epochs=0", "schedule.t0=1")
    ),
    "schedule.power": E("2.0", obs_lr_curve, base=("schedule.name=poly",)),
    "schedule.patience": E("1", obs_lr_curve, base=("schedule.name=plateau",)),
    "augment.hflip": E("1.0", obs_train_items),
    "augment.vflip": E("1.0", obs_train_items),
    "augment.rotate90": E("1.0", obs_train_items),
    "augment.scale": E("[0.5,1.0]", obs_train_items),
    "augment.brightness_contrast": E("1.0", obs_train_items),
    "augment.rotate": E("30", obs_train_items),
    "augment.shift_scale_rotate": E("1.0", obs_train_items),
    "augment.hue_saturation": E("1.0", obs_train_items),
    "augment.gamma": E("1.0", obs_train_items),
    "augment.blur": E("1.0", obs_train_items),
    "augment.noise": E("1.0", obs_train_items),
    "augment.coarse_dropout": E("1.0", obs_train_items),
    "augment.eval_resize": E("1.5", obs_val_items, data="cls"),
    "augment.mixup": E("0.4", obs_mixer, data="cls"),
    "augment.cutmix": E("1.0", obs_mixer, data="cls"),
    "train.epochs": E("3", obs_trainer),
    "train.batch_size": E("2", obs_loaders),
    "train.seed": E("1", obs_split),
    "train.monitor": E("val/loss", obs_callbacks),
    "train.patience": E("2", obs_callbacks),
    "train.budget": E("10m", obs_exported_weights),
    "train.devices": E("2", obs_trainer, base=("train.accelerator=cpu",)),
    "train.num_nodes": E("2", obs_trainer),
    "train.strategy": E("ddp", obs_trainer),
    # on GPUs only (torch syncs no CPU tensors): auto is off here, true is refused
    "train.sync_batchnorm": E(
        "true", obs_trainer, base=("train.accelerator=cpu", "train.devices=2"), refused=True
    ),
    "train.compile": E("true", obs_compiled),
    "train.accelerator": E("cpu", obs_on_a_gpu_machine),
    "train.precision": E("bf16-mixed", obs_precision_on_a_plain_cpu),
    "train.num_workers": E("1", obs_loaders),
    "train.steps_per_epoch": E("3", obs_trainer),
    "train.val_patches": E("2", obs_loaders),
    "train.export": E("last", obs_exported_weights),
    "train.checkpoint_interval": E("10s", obs_callbacks),
    "train.logger": E("csv", obs_trainer),
    "train.freeze_epochs": E("1", obs_callbacks),
    "train.progress": E("false", obs_callbacks),
    "train.unsafe_load": E("true", obs_callbacks),
    "predict.tile": E("32", obs_predictor),
    "predict.overlap": E("0.5", obs_predictor),
    "predict.blend": E("hann", obs_predictor),
    "predict.tta": E("true", obs_predictor),
    "predict.batch_size": E("2", obs_predictor),
    "predict.precision": E("bf16", obs_predictor),
    # an untrained detector scores about 0.01 (FCOS's prior): nothing reaches 0.25
    "predict.score_threshold": E("0.001", obs_detections, data="det"),
    # RetinaNet's untrained boxes are its anchors, nine overlapping ones per location
    "predict.nms_iou": E(
        "0.1",
        obs_detections,
        data="det",
        base=("model.arch=retinanet", "predict.score_threshold=0.001"),
    ),
}


def test_every_schema_key_has_an_observed_effect() -> None:
    keys = config_keys()
    missing = [k for k in keys if k not in EFFECTS]
    stale = [k for k in EFFECTS if k not in keys]
    assert not missing, f"say how these keys take effect in EFFECTS: {missing}"
    assert not stale, f"EFFECTS names keys the schema no longer has: {stale}"


def _overrides(key: str, effect: Effect, value: str | None, paths: dict[str, str]) -> list[str]:
    given = {o.partition("=")[0] for o in effect.base} | {key}
    common = COMMON.get(effect.data, COMMON["seg"])
    items = [*(o for o in common if o.partition("=")[0] not in given), *effect.base]
    if value is not None:
        items.append(f"{key}={value.format(**paths)}")
    return items


def _weights_file(folder: Path, data: Path) -> Path:
    """Weights of the default network, shifted: what model.weights loads must show."""
    path = folder / "weights.pt"
    if not path.is_file():
        built = build(data, COMMON["seg"], folder / "run-weights")
        state = {
            k: v + 0.5 if v.is_floating_point() else v
            for k, v in built.task.model.state_dict().items()
        }
        torch.save(state, path)
    return path


def observe(
    key: str,
    effect: Effect,
    value: str | None,
    datasets: Callable[[str], Path],
    tmp: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> Any:
    data = datasets(effect.data)
    paths = {"data": str(data)}
    if "{weights}" in effect.value:
        paths["weights"] = str(_weights_file(tmp, datasets("seg")))
    built = build(
        data if key != "data.root" else None,  # type: ignore[arg-type]
        _overrides(key, effect, value, paths),
        tmp / ("run-default" if value is None else "run-value"),
    )
    if effect.observe in NEEDS_MONKEYPATCH:
        return effect.observe(built, monkeypatch)
    return effect.observe(built)


@pytest.mark.parametrize("key", list(EFFECTS))
def test_a_non_default_value_changes_what_train_builds(
    key: str, datasets: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    effect = EFFECTS[key]
    assert effect.value != str(_schema_default(key)), f"{key}: the row's value is the default"
    if effect.refused:
        with pytest.raises(ConfigError) as err:
            observe(key, effect, effect.value, datasets, tmp_path, monkeypatch)
        assert err.value.where == key, err.value.render()
        return
    changed = observe(key, effect, effect.value, datasets, tmp_path, monkeypatch)
    if effect.default_refused:
        with pytest.raises(LiandanError):
            observe(key, effect, None, datasets, tmp_path, monkeypatch)
        return
    default = observe(key, effect, effect.against, datasets, tmp_path, monkeypatch)
    what = f"{key}={effect.value} against {effect.against or 'the default'}"
    assert changed != default, f"{what}: no change {effect.observe.__name__} sees"


def _schema_default(key: str) -> Any:
    node: Any = Config()
    for part in key.split("."):
        node = getattr(node, part)
    return node


# ------------------------------------------------------------------ the harness itself
def _first_row_per_observer() -> list[str]:
    seen: dict[str, str] = {}
    for key, effect in EFFECTS.items():
        if not (effect.refused or effect.default_refused):
            seen.setdefault(effect.observe.__name__, key)
    return list(seen.values())


@pytest.mark.parametrize("key", _first_row_per_observer())
def test_each_observation_repeats_exactly(
    key: str, datasets: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Two builds of one config observe alike, so a difference above is the key's effect."""
    effect = EFFECTS[key]
    first = observe(key, effect, effect.value, datasets, tmp_path, monkeypatch)
    assert observe(key, effect, effect.value, datasets, tmp_path, monkeypatch) == first


def test_a_key_whose_effect_is_lost_fails_its_row(
    datasets: Callable[[str], Path], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Augmentation losing its vertical flips: the vflip row sees no change."""
    from liandan.data.transforms import AugmentPipeline

    real = AugmentPipeline.__init__

    def without_vflip(self: AugmentPipeline, geometric: list[Any], *args: Any, **kw: Any) -> None:
        kept = [op for op in geometric if type(op).__name__ != "VerticalFlip"]
        real(self, kept, *args, **kw)

    monkeypatch.setattr(AugmentPipeline, "__init__", without_vflip)
    effect = EFFECTS["augment.vflip"]
    changed = observe("augment.vflip", effect, effect.value, datasets, tmp_path, monkeypatch)
    assert changed == observe("augment.vflip", effect, None, datasets, tmp_path, monkeypatch)


# ------------------------------------------------------------------ other commands
# the sections (or keys) each command reads, as its --help and docs/config.md say
READS = {
    "predict": ["predict"],
    "evaluate": ["predict"],
    "score": ["data.ignore_index", "data.nodata"],
    "export": [],
}


@pytest.fixture(scope="module")
def run(datasets: Callable[[str], Path], module_tmp: Path) -> Path:
    """A run folder (model bundle and config.yaml) of a default segmentation config."""
    built = build(datasets("seg"), COMMON["seg"], module_tmp / "run")
    built.cfg.save(built.run_dir / "config.yaml")
    meta = model_meta(built.cfg, built.bundle)
    save_model_bundle(built.run_dir, built.task.eval_model().state_dict(), meta)
    return built.run_dir


def _command_words(command: str, run: Path, image: Path) -> list[str]:
    return {
        "predict": [command, str(run), str(image)],
        "evaluate": [command, str(run)],
        "score": [command, str(image), str(image)],
        "export": [command, str(run)],
    }[command]


@pytest.mark.parametrize("command", list(READS))
def test_a_command_refuses_every_key_it_does_not_read_naming_each(
    command: str, run: Path, datasets: Callable[[str], Path], capsys: pytest.CaptureFixture[str]
) -> None:

    image = next((datasets("seg") / "images").iterdir())
    refused = [k for k in config_keys() if not key_accepted(k, READS[command])]
    items = [f"{k}={EFFECTS[k].value}" for k in refused]
    assert main([*_command_words(command, run, image), *items]) == 1
    err = capsys.readouterr().err
    missing = [k for k in refused if f"{k}: not read by liandan {command}" not in err]
    assert not missing, err


class _Stop(Exception):
    """Ends a command once its Predictor is made."""


@pytest.mark.parametrize("command", ["predict", "evaluate"])
def test_every_predict_key_reaches_the_predictor_of_predict_and_evaluate(
    command: str, run: Path, datasets: Callable[[str], Path], monkeypatch: pytest.MonkeyPatch
) -> None:

    made: list[Predictor] = []
    real = Predictor.__init__

    def record(self: Predictor, *args: Any, **kwargs: Any) -> None:
        real(self, *args, **kwargs)
        made.append(self)
        raise _Stop

    monkeypatch.setattr(Predictor, "__init__", record)
    image = next((datasets("seg") / "images").iterdir())
    keys = [k for k in config_keys() if k.startswith("predict.")]

    def settings(*items: str) -> tuple[Any, ...]:
        made.clear()
        with pytest.raises(_Stop):
            main([*_command_words(command, run, image), *items, "--debug"])
        p = made[0]
        settings = p.tile, p.overlap, p.blend, p.tta, p.batch_size, str(p.autocast)
        return (*settings, p.score_threshold, p.nms_iou)

    default = settings()
    for i, key in enumerate(keys):
        changed = settings(f"{key}={EFFECTS[key].value}")
        assert changed[i] != default[i], f"{key} does not reach liandan {command}'s Predictor"
        assert changed[:i] + changed[i + 1 :] == default[:i] + default[i + 1 :], key


def test_score_keys_change_the_scores(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:

    truth = np.zeros((16, 16), np.uint8)
    truth[:, 8:] = 1
    truth[:4] = 2
    pred = truth.copy()
    pred[:4] = 0  # wrong only where the truth is 2
    pred[12:, :8] = 1  # and in a block of 0s
    truth_path, pred_path = tmp_path / "truth.png", tmp_path / "pred.png"
    Image.fromarray(truth).save(truth_path)
    Image.fromarray(pred).save(pred_path)

    def accuracy(*items: str) -> float:
        assert main(["score", str(pred_path), str(truth_path), "--json", *items]) == 0
        return float(json.loads(capsys.readouterr().out)["overall"]["accuracy"])

    plain = accuracy()
    assert accuracy("data.ignore_index=2") > plain  # the wrong 2s are not counted
    assert accuracy("data.nodata=2") > plain
    assert sorted(READS["score"]) == sorted(k for k in config_keys() if k in READS["score"])
