"""``train.batch_size: auto`` (GPU probe search, CPU estimate) and the out-of-memory retry."""

from __future__ import annotations

import logging
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import FAST_CLS, FAST_SEG, make_imagefolder, write_geotiff
from liandan.cli import main
from liandan.config import Config
from liandan.data.raster_tiles import RasterTiles
from liandan.engine import batch_size as B
from liandan.engine.task import LiandanTask
from liandan.models import build_model


def oom(batch: int) -> torch.cuda.OutOfMemoryError:
    return torch.cuda.OutOfMemoryError(f"CUDA out of memory. Tried to allocate at batch {batch}")


def fits_up_to(limit: int, tried: list[int]):
    def try_batch(n: int) -> None:
        tried.append(n)
        if n > limit:
            raise oom(n)

    return try_batch


# ------------------------------------------------------------------- the search
def test_search_doubles_until_out_of_memory_then_keeps_a_margin():
    tried: list[int] = []
    fitted, failed = B.search_batch_size(fits_up_to(40, tried), cap=256)
    assert tried == [2, 4, 8, 16, 32, 64] and (fitted, failed) == (32, 64)
    assert B.with_margin(fitted, failed) == 24  # 0.8 * 32 = 25.6, down to a multiple of 8


def test_search_stops_at_the_cap_without_margin():
    tried: list[int] = []
    fitted, failed = B.search_batch_size(fits_up_to(1000, tried), cap=48)
    assert tried == [2, 4, 8, 16, 32, 48] and (fitted, failed) == (48, None)
    assert B.with_margin(fitted, failed) == 48


def test_search_when_nothing_fits_and_other_errors_propagate():
    assert B.search_batch_size(fits_up_to(1, []), cap=64) == (0, 2)

    def broken(n: int) -> None:
        raise ValueError("not a memory problem")

    with pytest.raises(ValueError):
        B.search_batch_size(broken, cap=64)


def test_margin_below_eight_is_a_power_of_two():
    assert B.with_margin(8, 16) == 4  # 6.4 -> 4
    assert B.with_margin(4, 8) == 2  # 3.2 -> 2
    assert B.with_margin(2, 4) == 2  # never below the 2 that fitted
    assert B.with_margin(128, 256) == 96  # 102.4 -> 96


def test_out_of_memory_errors_are_recognised():
    assert B.is_out_of_memory(oom(8))
    assert B.is_out_of_memory(RuntimeError("CUDA error: out of memory"))
    assert B.is_out_of_memory(RuntimeError("DefaultCPUAllocator: can't allocate memory"))
    assert not B.is_out_of_memory(RuntimeError("shape mismatch"))
    assert not B.is_out_of_memory(ValueError("out of memory"))


def test_cap_per_task_device_and_training_set():
    assert B.batch_cap("classify", 100_000, gpu=True) == 256
    assert B.batch_cap("segment", 100_000, gpu=False) == 16
    assert B.batch_cap("classify", 200, gpu=True) == 32  # at least 4 steps per epoch
    assert B.batch_cap("classify", 40, gpu=True) == 8  # 4 steps would be batches of 10 -> 8
    assert B.batch_cap("classify", 20, gpu=True) == 8  # not below 8 for BatchNorm's sake
    assert B.batch_cap("segment", 5, gpu=True) == 5  # never more than the training set
    assert B.batch_cap("segment", 1, gpu=False) == 2


# ------------------------------------------------------------------ the estimate
def _lenet() -> torch.nn.Module:
    from liandan.config import ModelConfig

    return build_model(ModelConfig(arch="lenet"), task="classify", num_classes=2, in_channels=3)


def test_per_sample_bytes_on_meta_match_a_real_forward():
    real = B.saved_bytes(_lenet().train(), torch.randn(4, 3, 32, 32))
    real -= B.saved_bytes(_lenet().train(), torch.randn(2, 3, 32, 32))
    meta = B.per_sample_bytes(_lenet(), 3, 32)
    assert meta == pytest.approx(real / 2, rel=0.05)
    # activations grow with the pixels: twice the side, about four times the bytes
    assert B.per_sample_bytes(_lenet(), 3, 64) == pytest.approx(4 * meta, rel=0.25)


def test_cpu_estimate_fits_half_the_available_memory():
    model = _lenet()
    fixed = 4 * sum(p.numel() * p.element_size() for p in model.parameters())
    per_sample = B.per_sample_bytes(_lenet(), 3, 32)
    # room for 5.5 samples in half the memory: the largest power of two below is 4
    available = int(2 * (fixed + 5.5 * per_sample))
    batch, measured = B.cpu_batch_size(model, 3, 32, cap=128, available=available)
    assert (batch, measured) == (4, per_sample)
    assert B.cpu_batch_size(_lenet(), 3, 32, cap=128, available=2**40)[0] == 128
    assert B.cpu_batch_size(_lenet(), 3, 32, cap=100, available=2**40)[0] == 64
    assert B.cpu_batch_size(_lenet(), 3, 32, cap=128, available=1)[0] == 2  # at least 2


def test_auto_is_resolved_before_the_loaders(tmp_path: Path, caplog):
    from liandan.data.datamodule import build_data

    data = make_imagefolder(tmp_path / "data", n_per_class=40)  # 64 training images
    cfg = Config.load(None, [*FAST_CLS, "train.batch_size=auto"])
    cfg.data.root = data
    with caplog.at_level(logging.INFO, logger="liandan"):
        bundle = build_data(cfg)
    assert cfg.train.batch_size == 16  # 64 // 4: four steps per epoch; memory allows more
    assert bundle.train_loader.batch_size == 16
    assert any(n.startswith("train.batch_size=auto: 16 (") for n in bundle.notes)
    assert "train.batch_size=auto: 16" in caplog.text


def test_auto_on_rasters_measures_at_the_tile_size(tmp_path: Path):
    from liandan.data.datamodule import build_data

    rng = np.random.default_rng(0)
    write_geotiff(tmp_path / "images" / "scene.tif", rng.integers(0, 255, (4, 200, 200), np.uint8))
    truth = (rng.random((1, 200, 200)) > 0.5).astype(np.uint8)
    write_geotiff(tmp_path / "masks" / "scene.tif", truth)
    cfg = Config.load(None, [*FAST_SEG, "data.tile_size=64", "train.batch_size=auto"])
    cfg.data.root = tmp_path
    bundle = build_data(cfg)
    assert isinstance(bundle.train_loader.dataset, RasterTiles)
    assert isinstance(cfg.train.batch_size, int)
    assert bundle.train_loader.batch_size == min(
        cfg.train.batch_size, len(bundle.train_loader.dataset)
    )
    note = next(n for n in bundle.notes if n.startswith("train.batch_size=auto"))
    assert "at 64 px" in note  # the tiles, not data.image_size (32)


# ---------------------------------------------------------------- the OOM retry
@pytest.fixture
def oom_above(monkeypatch: pytest.MonkeyPatch):
    """Training steps with more than ``limit`` images raise CUDA's out-of-memory error."""
    seen: list[int] = []

    def install(limit: int) -> list[int]:
        original = LiandanTask.training_step

        def training_step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
            seen.append(batch[0].shape[0])
            if batch[0].shape[0] > limit:
                raise oom(batch[0].shape[0])
            return original(self, batch, batch_idx)

        monkeypatch.setattr(LiandanTask, "training_step", training_step)
        return seen

    return install


@pytest.mark.slow
def test_out_of_memory_halves_the_batch_and_saves_it(tmp_path: Path, oom_above, caplog):
    seen = oom_above(2)
    data = make_imagefolder(tmp_path / "data", n_per_class=8)  # 13 training images
    args = [*FAST_CLS, "train.batch_size=8", "train.epochs=1", "optim.lr=0.01"]
    with caplog.at_level(logging.WARNING, logger="liandan"):
        code = main(["train", str(data), *args, "--out", str(tmp_path / "runs"), "--name", "r"])
    assert code == 0
    run = tmp_path / "runs" / "r"
    assert "out of memory at batch 8: retrying with 4" in caplog.text
    assert "out of memory at batch 4: retrying with 2" in caplog.text
    assert seen[:2] == [8, 4] and set(seen[2:]) == {2}  # the third attempt trained at 2
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["batch_size"] == 2
    assert (run / "model" / "weights.safetensors").is_file()
    # one TensorBoard history: the failed attempts' events were removed
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run / "tensorboard"))
    events.Reload()
    tag = next(t for t in events.Tags()["scalars"] if t.startswith("lr-"))  # per step
    steps = [e.step for e in events.Scalars(tag)]
    assert len(steps) == len(set(steps)) == 6  # 13 images in batches of 2, last dropped


def test_four_out_of_memory_errors_stop_with_a_clear_message(tmp_path: Path, oom_above, capsys):
    seen = oom_above(0)  # nothing fits
    data = make_imagefolder(tmp_path / "data", n_per_class=8)
    args = [*FAST_CLS, "train.batch_size=8", "train.epochs=1", "optim.lr=0.01"]
    code = main(["train", str(data), *args, "--out", str(tmp_path / "runs"), "--name", "r"])
    assert code == 1
    assert seen == [8, 4, 2, 1]  # three retries, then the error
    err = capsys.readouterr().err
    assert "out of memory at batch 1" in err and "train.batch_size" in err
    assert "image_size" in err and "precision" in err
