"""State follows the model: ``.to()`` moves every tensor the task uses (EMA, class
weights, metric accumulators), and checkpoints hold them.

The ``meta`` device shows a tensor left behind without a GPU: after ``task.to("meta")``
anything still on the CPU was not moved. A test on CUDA runs where one is present.
"""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from conftest import FAST_CLS, FAST_SEG
from liandan.config import Config
from liandan.engine.task import IGNORE, LiandanTask, upgrade_checkpoint
from liandan.losses import build_loss, list_losses
from liandan.optim import ModelEMA


def _task(overrides: list[str], weights: torch.Tensor | None = None) -> LiandanTask:
    cfg = Config.load(None, [*overrides])
    n = 2 if cfg.task == "classify" else 3
    return LiandanTask(cfg, [str(i) for i in range(n)], 3, weights)


def _tensors(module: nn.Module) -> dict[str, torch.Tensor]:
    return {**dict(module.named_parameters()), **dict(module.named_buffers())}


CLS_EMA = [*FAST_CLS, "task=classify", "optim.ema=0.9"]


def test_ema_is_a_submodule_that_follows_to() -> None:
    task = _task(CLS_EMA, torch.tensor([1.0, 3.0]))
    assert task.ema is not None and any(m is task.ema for m in task.modules())
    task.to("meta")
    left = [name for name, t in _tensors(task).items() if t.device.type != "meta"]
    assert not left  # was: every ema.module.* parameter and buffer stayed on the CPU
    # the first EMA update after the move: the model and its average on one device
    task.on_train_batch_end(None, None, 0)
    assert task.ema.num_updates.device.type == "meta"


def test_ema_follows_dtype_and_takes_no_gradient() -> None:
    task = _task(CLS_EMA)
    assert task.ema is not None
    task.double()
    assert all(p.dtype == torch.float64 for p in task.ema.module.parameters())
    assert not any(p.requires_grad for p in task.ema.parameters())
    # the optimizer (built over task.model) never sees the average's parameters
    ema_ids = {id(p) for p in task.ema.parameters()}
    assert not ema_ids & {id(p) for p in task.model.parameters()}


def test_ema_update_on_a_moved_task_runs_on_its_device() -> None:
    """The average is updated where the model is (double here, like a GPU move)."""
    task = _task(CLS_EMA).double()
    assert task.ema is not None
    with torch.no_grad():
        for p in task.model.parameters():
            p.add_(1.0)
    before = {k: v.clone() for k, v in task.ema.module.state_dict().items()}
    task.on_train_batch_end(None, None, 0)
    for key, value in task.ema.module.state_dict().items():
        if value.is_floating_point():
            expected = 0.9 * before[key] + 0.1 * task.model.state_dict()[key]
            assert torch.allclose(value, expected), key
    assert int(task.ema.num_updates) == 1


def test_checkpoint_state_holds_the_ema_and_loads_it_back() -> None:
    task = _task(CLS_EMA)
    assert task.ema is not None
    with torch.no_grad():
        for p in task.model.parameters():
            p.add_(1.0)
    task.on_train_batch_end(None, None, 0)
    checkpoint = {"state_dict": task.state_dict()}
    assert "ema.num_updates" in checkpoint["state_dict"]
    assert any(k.startswith("ema.module.") for k in checkpoint["state_dict"])
    other = _task([*CLS_EMA, "optim.ema=0.5"])
    other.load_weights(copy.deepcopy(checkpoint))
    assert other.ema is not None and int(other.ema.num_updates) == 1
    for key, value in task.ema.module.state_dict().items():
        assert torch.equal(other.ema.module.state_dict()[key], value), key


def test_checkpoints_of_the_former_format_load() -> None:
    """A checkpoint written when the EMA was kept apart (``ema_state``) still loads."""
    task = _task(CLS_EMA)
    assert task.ema is not None
    averaged = {
        k: v + 1 if v.is_floating_point() else v for k, v in task.model.state_dict().items()
    }
    legacy = {
        "state_dict": {k: v for k, v in task.state_dict().items() if not k.startswith("ema.")},
        "ema_state": {"module": averaged, "num_updates": 7, "decay": 0.8},
    }
    fresh = _task(CLS_EMA)
    fresh.load_weights(legacy)
    assert fresh.ema is not None and int(fresh.ema.num_updates) == 7
    for key, value in averaged.items():
        assert torch.equal(fresh.ema.module.state_dict()[key], value), key
    # a checkpoint with an EMA loads into a task without one, and the reverse
    plain = _task([*FAST_CLS, "task=classify"])
    plain.load_weights({"state_dict": task.state_dict()})
    state = {"state_dict": plain.state_dict()}
    upgrade_checkpoint(state, ema=True)
    fresh.load_state_dict(state["state_dict"])


@pytest.mark.parametrize("loss", [*list_losses(), "ce+dice"])
def test_class_weights_follow_the_loss_to_its_device(loss: str) -> None:
    criterion = build_loss(
        Config.load(None, [f"loss.name={loss}"]).loss,
        task="segment",
        num_classes=3,
        ignore_index=IGNORE,
        class_weights=torch.tensor([1.0, 2.0, 3.0]),
    )
    criterion.to("meta")
    tensors = _tensors(criterion)
    assert not [name for name, t in tensors.items() if t.device.type != "meta"]
    if loss != "lovasz":  # the one loss without class weights
        assert any(name.endswith("weight") for name in tensors)


def test_confusion_matrix_follows_the_module_each_validation() -> None:
    task = _task([*FAST_SEG, "task=segment"])
    task.to("meta")
    task.on_validation_epoch_start()
    assert task.val_cm.matrix.device.type == "meta"


def test_ema_module_alone() -> None:
    net = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4))
    ema = ModelEMA(net, 0.5)
    assert set(ema.state_dict()) == {
        *(f"module.{k}" for k in net.state_dict()),
        "num_updates",
    }
    ema.to("meta")
    assert all(t.device.type == "meta" for t in _tensors(ema).values())


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_ema_training_on_cuda(tmp_path) -> None:  # type: ignore[no-untyped-def]
    from conftest import make_imagefolder
    from liandan import api

    data = make_imagefolder(tmp_path / "cls")
    result = api.train(
        data,
        overrides=[*FAST_CLS, "optim.ema=0.9", "train.accelerator=gpu", "train.epochs=1"],
        out=tmp_path / "runs",
    )
    assert (result.run_dir / "model" / "weights.safetensors").is_file()
