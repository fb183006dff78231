"""``train.freeze_epochs``: train the new head on a frozen encoder first, then everything.

fastai's ``fine_tune`` recipe (Howard & Gugger 2020): a randomly initialized head
sends large, noisy gradients into pretrained features during the first steps; training
the head alone for a few epochs first protects them. The encoder parameters stay in the
optimizer from the start (so its groups, lr schedule and ``encoder_lr_mult`` apply
after unfreezing) but have ``requires_grad`` off, so they get no gradient, no update
and no weight decay, and their BatchNorm statistics stay fixed (the task puts norms
of frozen layers in eval mode). Parameters frozen by ``model.transfer`` stay frozen.
"""

from __future__ import annotations

import logging

import lightning as L
from torch import nn

from liandan.errors import ConfigError
from liandan.models import encoder_parameters

log = logging.getLogger("liandan")


class FreezeEncoder(L.Callback):
    """Freezes the encoder for the first ``epochs`` epochs, then unfreezes it.

    Args:
        epochs: number of epochs the head trains alone (``train.freeze_epochs``).
    """

    def __init__(self, epochs: int) -> None:
        self.epochs = epochs
        self._params: list[nn.Parameter] = []

    def setup(self, trainer: L.Trainer, pl_module: L.LightningModule, stage: str) -> None:
        model = getattr(pl_module, "model", pl_module)
        params = encoder_parameters(model)
        if params is None:
            raise ConfigError(
                "train.freeze_epochs needs a model with a pretrained encoder",
                where="train.freeze_epochs",
                hint="use a timm / smp / torchvision architecture, or train.freeze_epochs=0",
            )
        # only those that train at all: model.transfer may keep some frozen for good
        self._params = [p for p in params if p.requires_grad]

    def on_train_epoch_start(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        frozen = trainer.current_epoch < self.epochs
        for param in self._params:
            param.requires_grad_(not frozen)
        if trainer.current_epoch == 0 and frozen:
            log.info("train.freeze_epochs: the head trains alone for %d epoch(s)", self.epochs)
        elif trainer.current_epoch == self.epochs:
            log.info("train.freeze_epochs: encoder unfrozen at epoch %d", self.epochs + 1)
