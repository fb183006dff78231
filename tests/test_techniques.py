"""Every technique of the toolbox trains, and each option takes effect.

A smoke test trains two steps with each loss, optimizer, schedule and normalization on
tiny data (the task's own training step, no Trainer); then one test per option checks
its effect: frozen BatchNorm statistics, freeze_epochs, encoder_lr_mult in history.csv,
the balanced sampler, mixup/cutmix targets, init-from, and predict applying a run's
normalization and class mapping exactly as training did.
"""

from __future__ import annotations

import csv
import itertools
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import yaml
from torch import nn

from conftest import FAST_CLS, FAST_SEG, make_imagefolder, make_pairs
from liandan.api import _class_weights, resolve_auto, train
from liandan.config import Config, LossConfig, ScheduleConfig
from liandan.data.datamodule import DataBundle, build_data
from liandan.data.datasets import load_image
from liandan.data.samplers import RareClassCrop
from liandan.engine.finetune import FreezeEncoder
from liandan.engine.mix import BatchMixer, build_mixer
from liandan.engine.task import LiandanTask
from liandan.errors import ConfigError
from liandan.losses import build_loss, list_losses
from liandan.models import build_model, encoder_parameters
from liandan.optim import build_optimizer, build_scheduler, list_optimizers, list_schedules, lr_at

QUICK = ["train.steps_per_epoch=2", "train.epochs=1"]
# SegNet (built in, no library encoder) keeps the segmentation smoke tests fast
TINY_SEG = [*FAST_SEG, "model.arch=segnet"]
_BUNDLES: dict[tuple[Path, tuple[str, ...]], DataBundle] = {}


@pytest.fixture(scope="module")
def seg_root(module_tmp: Path) -> Path:
    return make_pairs(module_tmp / "seg")


@pytest.fixture(scope="module")
def cls_root(module_tmp: Path) -> Path:
    return make_imagefolder(module_tmp / "cls")


def _bundle(root: Path, overrides: list[str]) -> tuple[Config, DataBundle]:
    cfg = Config.load(None, overrides)
    cfg.data.root = root
    # data options change the bundle; the rest only the model, loss or optimizer
    key = (root, tuple(o for o in overrides if o.startswith(("data.", "augment."))))
    if key not in _BUNDLES:
        _BUNDLES[key] = build_data(cfg)
    cfg.task = _BUNDLES[key].index.task  # type: ignore[assignment]
    resolve_auto(cfg, _BUNDLES[key])
    return cfg, _BUNDLES[key]


def _two_steps(cfg: Config, bundle: DataBundle) -> LiandanTask:
    """Two optimizer steps through the task's training_step; parameters must move."""
    torch.manual_seed(0)
    task = LiandanTask(cfg, bundle.classes.names, bundle.in_channels, _class_weights(cfg, bundle))
    task.train()
    task.on_train_epoch_start()
    optimizer = build_optimizer(
        task.model, cfg.optim, encoder_params=encoder_parameters(task.model)
    )
    scheduler, interval = build_scheduler(optimizer, cfg.schedule, epochs=2, steps_per_epoch=8)
    before = [p.detach().clone() for p in task.model.parameters() if p.requires_grad]
    for step, batch in zip(range(2), itertools.cycle(bundle.train_loader), strict=False):
        optimizer.zero_grad()
        loss = task.training_step(batch, step)
        assert torch.isfinite(loss)
        loss.backward()
        optimizer.step()
        scheduler.step(0.5) if interval == "epoch" else scheduler.step()  # type: ignore[call-arg]
    after = [p for p in task.model.parameters() if p.requires_grad]
    assert any(not torch.equal(a, b) for a, b in zip(after, before, strict=True))
    return task


# ------------------------------------------------------------------ smoke: every option
@pytest.mark.parametrize(
    "loss",
    [*list_losses(), "ce+dice", "focal+lovasz", "ce+tversky"],
)
def test_every_loss_trains_segmentation(seg_root: Path, loss: str) -> None:
    cfg, bundle = _bundle(seg_root, [*TINY_SEG, f"loss.name={loss}"])
    _two_steps(cfg, bundle)


@pytest.mark.parametrize("method", ["inverse", "median", "effective"])
def test_auto_class_weights_by_each_method(seg_root: Path, method: str) -> None:
    cfg, bundle = _bundle(
        seg_root, [*TINY_SEG, "loss.class_weights=auto", f"loss.class_weighting={method}"]
    )
    weights = _class_weights(cfg, bundle)
    assert weights is not None and weights.shape == (3,)
    # class 0 (background) is the most frequent: it weighs least
    assert int(weights.argmin()) == 0
    _two_steps(cfg, bundle)


@pytest.mark.parametrize("name", list_optimizers())
def test_every_optimizer_trains(cls_root: Path, name: str) -> None:
    cfg, bundle = _bundle(cls_root, [*FAST_CLS, f"optim.name={name}", "loss.name=focal"])
    _two_steps(cfg, bundle)


@pytest.mark.parametrize("name", list_schedules())
def test_every_schedule_trains(cls_root: Path, name: str) -> None:
    cfg, bundle = _bundle(cls_root, [*FAST_CLS, f"schedule.name={name}"])
    _two_steps(cfg, bundle)


@pytest.mark.parametrize("preset", ["dataset", "imagenet", "vgg", "unit", "percentile", "zca"])
def test_every_normalization_trains(cls_root: Path, preset: str) -> None:
    cfg, bundle = _bundle(cls_root, [*FAST_CLS, f"data.normalize={preset}"])
    assert bundle.normalizer.preset == preset
    _two_steps(cfg, bundle)


def test_augmentations_and_mixup_train(cls_root: Path) -> None:
    augment = [
        "augment.rotate=20",
        "augment.shift_scale_rotate=0.5",
        "augment.hue_saturation=0.5",
        "augment.gamma=0.5",
        "augment.blur=0.5",
        "augment.noise=0.5",
        "augment.coarse_dropout=0.5",
        "augment.mixup=0.4",
        "augment.cutmix=1.0",
    ]
    cfg, bundle = _bundle(cls_root, [*FAST_CLS, *augment])
    task = _two_steps(cfg, bundle)
    assert task.mixer is not None


# ------------------------------------------------------------------ options take effect
def _batchnorms(model: nn.Module) -> list[nn.BatchNorm2d]:
    return [m for m in model.modules() if isinstance(m, nn.BatchNorm2d)]


@pytest.mark.parametrize("freeze", [True, False])
def test_freeze_bn_keeps_running_statistics(seg_root: Path, freeze: bool) -> None:
    cfg, bundle = _bundle(seg_root, [*TINY_SEG, f"model.freeze_bn={str(freeze).lower()}"])
    torch.manual_seed(0)
    task = LiandanTask(cfg, bundle.classes.names, bundle.in_channels)
    norms = _batchnorms(task.model)
    stats = [m.running_mean.clone() for m in norms]
    task.train()
    task.on_train_epoch_start()
    optimizer = torch.optim.SGD(task.model.parameters(), lr=0.1)
    x, y = next(iter(bundle.train_loader))
    task.criterion(task.model(x), y).backward()
    optimizer.step()
    same = [torch.equal(m.running_mean, s) for m, s in zip(norms, stats, strict=True)]
    assert all(same) if freeze else not any(same)
    # the scale and shift still get gradients (they train; only the statistics are fixed)
    assert all(m.weight.grad is not None and bool(m.weight.grad.any()) for m in norms)


class _Probe(L.Callback):
    def __init__(self) -> None:
        self.encoder: list[list[torch.Tensor]] = []
        self.head: list[list[torch.Tensor]] = []

    def on_train_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        model = pl_module.model  # type: ignore[attr-defined]
        self.encoder.append([p.detach().clone() for p in model.encoder.parameters()])
        self.head.append([p.detach().clone() for p in model.segmentation_head.parameters()])


def _changed(a: list[torch.Tensor], b: list[torch.Tensor]) -> bool:
    return any(not torch.equal(x, y) for x, y in zip(a, b, strict=True))


@pytest.mark.slow
def test_freeze_epochs_trains_the_head_first_then_everything(seg_root: Path) -> None:
    cfg, bundle = _bundle(seg_root, [*FAST_SEG, "train.epochs=2", "schedule.warmup_epochs=0"])
    torch.manual_seed(0)
    task = LiandanTask(cfg, bundle.classes.names, bundle.in_channels)
    start_encoder = [p.detach().clone() for p in task.model.encoder.parameters()]
    start_head = [p.detach().clone() for p in task.model.segmentation_head.parameters()]
    probe = _Probe()
    trainer = L.Trainer(
        max_epochs=2,
        limit_train_batches=2,
        limit_val_batches=0,
        callbacks=[FreezeEncoder(1), probe],
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        accelerator="cpu",
    )
    trainer.fit(task, bundle.train_loader)
    assert not _changed(probe.encoder[0], start_encoder)  # epoch 1: encoder frozen
    assert _changed(probe.head[0], start_head)  # ... while the head trains
    assert _changed(probe.encoder[1], probe.encoder[0])  # epoch 2: everything trains
    assert all(p.requires_grad for p in task.model.encoder.parameters())


def test_freeze_epochs_needs_an_encoder(cls_root: Path) -> None:
    cfg, bundle = _bundle(cls_root, FAST_CLS)  # LeNet: no pretrained encoder
    task = LiandanTask(cfg, bundle.classes.names, bundle.in_channels)
    with pytest.raises(ConfigError) as info:
        FreezeEncoder(1).setup(L.Trainer(logger=False), task, "fit")
    assert info.value.where == "train.freeze_epochs"


def test_balanced_sampler_draws_classes_evenly(tmp_path: Path) -> None:
    root = make_imagefolder(tmp_path / "cls", n_per_class=4, classes=("rare",))
    make_imagefolder(root, n_per_class=20, classes=("common",), seed=1)
    shares = {}
    for sampler in ("random", "balanced"):
        _, bundle = _bundle(root, [*FAST_CLS, f"data.sampler={sampler}"])
        rare = bundle.classes.names.index("rare")
        train = bundle.splits["train"]
        drawn = [train[i].target for _ in range(30) for i in bundle.train_loader.sampler]
        shares[sampler] = float(np.mean([t == rare for t in drawn]))
    assert shares["random"] < 0.25
    assert 0.42 < shares["balanced"] < 0.58


def test_rare_class_crops_find_small_classes() -> None:
    mask = np.zeros((96, 96), np.int16)
    mask[:, 48:] = 1
    mask[80:84, 10:14] = 2  # 16 pixels of a rare class
    image = mask[..., None].astype(np.float32).repeat(3, axis=2)
    crop = RareClassCrop(np.bincount(mask.ravel()), size=24, p=1.0)
    rng = np.random.default_rng(0)
    hits = 0
    for _ in range(200):
        img, out = crop(image, mask, rng)
        assert out.shape == (24, 24) and img.shape == (24, 24, 3)
        np.testing.assert_array_equal(img[..., 0], out)  # image and mask cropped alike
        hits += int((out == 2).any())
    # a uniform 24 px crop holds the patch about 6% of the time; aimed crops most of it
    assert hits > 100


def test_mixup_makes_soft_targets_and_soft_cross_entropy() -> None:
    torch.manual_seed(0)
    x, y = torch.randn(8, 3, 4, 4), torch.arange(8)  # label i = sample i: y_b is the pairing
    mixed = BatchMixer(mixup=0.4, seed=1)(x, y)
    assert 0.0 < mixed.lam < 1.0
    torch.testing.assert_close(mixed.x, mixed.lam * x + (1 - mixed.lam) * x[mixed.y_b])
    soft = mixed.soft_targets(8)
    torch.testing.assert_close(soft.sum(1), torch.ones(8))
    assert not torch.equal(soft, nn.functional.one_hot(y, 8).float())  # targets changed
    logits = torch.randn(8, 8)
    expected = -(soft * logits.log_softmax(1)).sum(1).mean()
    torch.testing.assert_close(mixed.loss(nn.CrossEntropyLoss(), logits), expected)


def test_cutmix_lam_is_the_share_of_kept_pixels() -> None:
    x = torch.arange(2.0).view(2, 1, 1, 1).expand(2, 1, 16, 16).contiguous()
    y = torch.tensor([0, 1])
    mixer = BatchMixer(cutmix=1.0, seed=3)
    for _ in range(10):
        mixed = mixer(x, y)
        for i in range(2):
            kept = float((mixed.x[i] == x[i]).float().mean())
            if int(mixed.y_b[i]) != int(y[i]):
                assert kept == pytest.approx(mixed.lam)


def test_mixup_is_for_classification_only() -> None:
    cfg = Config.load(None, ["augment.mixup=0.2"])
    assert build_mixer(cfg.augment, "classify") is not None
    with pytest.raises(ConfigError):
        build_mixer(cfg.augment, "segment")


def test_dropout_none_keeps_library_default_and_zero_turns_it_off() -> None:
    def rates(dropout: str) -> set[float]:
        cfg = Config.load(None, ["model.arch=fpn", "model.encoder=mobilenet_v2", dropout])
        model = build_model(cfg.model, task="segment", num_classes=2, in_channels=3)
        return {m.p for m in model.modules() if isinstance(m, nn.Dropout | nn.Dropout2d)}

    assert rates("model.dropout=null") == {0.2}  # smp FPN's default
    assert rates("model.dropout=0") == {0.0}


def test_tversky_alpha_beta_from_config() -> None:
    logits, target = torch.randn(2, 3, 8, 8), torch.randint(0, 3, (2, 8, 8))
    as_jaccard = LossConfig(name="tversky", tversky_alpha=1.0, tversky_beta=1.0)
    tversky = build_loss(as_jaccard, task="segment", num_classes=3)
    jaccard = build_loss(LossConfig(name="jaccard"), task="segment", num_classes=3)
    torch.testing.assert_close(tversky(logits, target), jaccard(logits, target))


def test_warmup_start_factor_and_plateau_patience() -> None:
    cfg = ScheduleConfig(name="constant", warmup_epochs=1, warmup_start_factor=0.5)
    assert lr_at(cfg, 1.0, 0, epochs=4, steps_per_epoch=10) == pytest.approx(0.5)
    optimizer = torch.optim.SGD(nn.Linear(2, 2).parameters(), lr=1.0)
    plateau = ScheduleConfig(name="plateau", patience=1, gamma=0.1)
    scheduler, interval = build_scheduler(optimizer, plateau, epochs=5, steps_per_epoch=1)
    assert interval == "epoch"
    for metric in (0.5, 0.5, 0.5):  # no improvement for 2 epochs > patience 1
        scheduler.step(metric)  # type: ignore[call-arg]
    assert optimizer.param_groups[0]["lr"] == pytest.approx(0.1)


# ------------------------------------------------------------------ end to end
@pytest.fixture(scope="module")
def seg_run(module_tmp: Path) -> Path:
    """One run on a dataset with raw mask values 0/100/200, zca, encoder lr x 0.1."""
    root = module_tmp / "seg_values"
    names = "names: [background, road, roof]\nvalues: [0, 100, 200]\n"
    make_pairs(root, values=(0, 100, 200), classes_yaml=names)
    overrides = [
        *FAST_SEG,
        *QUICK,
        "data.normalize=zca",
        "optim.encoder_lr_mult=0.1",
        "schedule.name=constant",
        "schedule.warmup_epochs=0",
    ]
    return train(root, overrides=overrides, out=root / "runs").run_dir


@pytest.mark.slow
def test_encoder_lr_mult_in_history(seg_run: Path) -> None:
    rows = list(csv.DictReader((seg_run / "history.csv").open()))
    assert {"lr_encoder", "lr_head"} <= set(rows[0])
    assert float(rows[0]["lr_encoder"]) == pytest.approx(0.1 * float(rows[0]["lr_head"]))


@pytest.mark.slow
def test_predict_applies_the_runs_normalization_and_classes(seg_run: Path) -> None:
    from liandan.prediction import Predictor

    cfg = Config.load(seg_run / "config.yaml")
    bundle = build_data(cfg)
    predictor = Predictor.from_run(seg_run)
    assert predictor.classes == bundle.classes.names == ["background", "road", "roof"]
    assert predictor.values == [0, 100, 200]
    dataset = bundle.val_loader.dataset
    for i, sample in enumerate(bundle.splits["val"]):
        raw = load_image(bundle.checked, sample, cfg.data.bands)
        prepared = predictor.prepare(raw)
        trained = dataset[i][0].numpy().transpose(1, 2, 0)
        np.testing.assert_allclose(prepared, trained, rtol=0, atol=1e-5)


@pytest.mark.slow
def test_init_from_continues_from_another_runs_weights(seg_run: Path, tmp_path: Path) -> None:
    from safetensors.torch import load_file

    other = make_pairs(tmp_path / "two", values=(0, 1), seed=5)  # 2 classes: a new head
    result = train(other, overrides=[*FAST_SEG, *QUICK], out=tmp_path / "runs", init_from=seg_run)
    saved = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    weights = seg_run / "model" / "weights.safetensors"
    assert Path(saved["model"]["weights"]) == weights.resolve()
    assert saved["model"]["arch"] == "unet" and saved["model"]["encoder"] == "mobilenet_v2"
    cfg = Config.load(result.run_dir / "config.yaml")
    model = build_model(cfg.model, task="segment", num_classes=2, in_channels=3)
    source = load_file(str(weights))
    key = next(k for k in source if k.startswith("encoder.") and k.endswith("weight"))
    torch.testing.assert_close(model.state_dict()[key], source[key])
    assert model.state_dict()["segmentation_head.0.weight"].shape[0] == 2


def test_init_from_needs_a_finished_run(tmp_path: Path, seg_root: Path) -> None:
    from liandan.errors import CheckpointError

    with pytest.raises(CheckpointError):
        train(seg_root, overrides=FAST_SEG, out=tmp_path / "runs", init_from=tmp_path)
