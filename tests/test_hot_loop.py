"""The training hot loop reads the device at most once every few steps.

A GPU runs ahead of the host; every ``.item()``, ``bool(tensor)``, ``float(tensor)`` or
``.tolist()`` makes the host wait for every queued kernel. On a CPU nothing waits, so
the count is taken with the trainer set up as on a GPU (``accelerator_is_cpu`` False),
counting reads of tensors made by liandan and Lightning (the optimizer's step counter
and the sampler's permutation are host tensors on a GPU too, and are left out).
"""

from __future__ import annotations

import collections
import traceback
from pathlib import Path

import pytest
import torch
from lightning.pytorch.callbacks import Callback

from conftest import FAST_CLS, make_imagefolder
from liandan import api

READS = ("item", "__bool__", "__float__", "__int__", "tolist")
HOST_SIDE = ("torch/optim/", "torch/utils/data/")  # host tensors even on a GPU


class Counting(Callback):
    """Counts device reads between the start of the first step and the epoch's end."""

    def __init__(self) -> None:
        self.on = False
        self.reads: collections.Counter[str] = collections.Counter()

    def on_train_batch_start(self, *args: object) -> None:
        self.on = True

    def on_validation_start(self, *args: object) -> None:
        self.on = False

    def on_train_epoch_end(self, *args: object) -> None:
        self.on = False


@pytest.mark.slow
def test_training_steps_read_the_device_once_every_sync_every_steps(tmp_path, monkeypatch):
    import liandan.engine.trainer as trainer_module

    monkeypatch.setattr(trainer_module, "accelerator_is_cpu", lambda cfg: False)
    counter = Counting()
    for name in READS:
        original = getattr(torch.Tensor, name)

        def read(self, *args, _original=original, _name=name, **kwargs):  # type: ignore[no-untyped-def]
            if counter.on:
                caller = traceback.extract_stack(limit=2)[0].filename  # who read it
                if not any(part in caller for part in HOST_SIDE):
                    counter.reads[_name] += 1
            return _original(self, *args, **kwargs)

        monkeypatch.setattr(torch.Tensor, name, read)
    original_train_into = api.train_into

    def train_into(*args, callbacks=None, **kwargs):  # type: ignore[no-untyped-def]
        return original_train_into(*args, callbacks=[counter], **kwargs)

    monkeypatch.setattr(api, "train_into", train_into)
    data = make_imagefolder(tmp_path / "cls")
    steps = 2 * 32
    result = api.train(
        data, overrides=[*FAST_CLS, "train.steps_per_epoch=32"], out=tmp_path / "runs"
    )
    assert Path(result.run_dir / "model" / "weights.safetensors").is_file()
    total = sum(counter.reads.values())
    assert total <= steps // trainer_module.SYNC_EVERY, counter.reads
