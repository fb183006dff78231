"""The LightningModule: wires model, loss, optimizer and metrics built elsewhere.

One class serves both tasks; what differs (output shape, default monitor) comes from
the parts. Hooks are named after what they configure, as in torchgeo's BaseTask.
"""

from __future__ import annotations

import math
from typing import Any

import lightning as L
import torch

from liandan.config import Config
from liandan.engine.doctor import skip_scheduler_step
from liandan.engine.mix import build_mixer
from liandan.models import build_model, encoder_parameters, set_frozen_norms_eval
from liandan.optim import ModelEMA, build_optimizer, build_scheduler
from liandan.tasks import get_task

IGNORE = -1  # internal ignore value of masks (raw ignore values are mapped to it)


class LiandanTask(L.LightningModule):
    """Training and validation for classification and segmentation.

    Args:
        cfg: the resolved config (task, model, loss, optim, schedule set).
        class_names: one name per class.
        in_channels: number of input bands.
        class_weights: per-class loss weights, or None.
    """

    def __init__(
        self,
        cfg: Config,
        class_names: list[str],
        in_channels: int,
        class_weights: torch.Tensor | None = None,
    ) -> None:
        super().__init__()
        self.cfg = cfg
        self.class_names = class_names
        self.num_classes = len(class_names)
        self.in_channels = in_channels
        self.task = str(cfg.task)
        self.spec = get_task(self.task)  # what differs between tasks: loss, validation
        self.model = self.configure_model_parts()
        self.criterion = self.spec.build_criterion(
            cfg.loss, self.num_classes, ignore_index=IGNORE, class_weights=class_weights
        )
        # a submodule: .to(), precision and channels-last move it with the model, and
        # checkpoints hold it in the state dict (ema.module.*, ema.num_updates)
        self.ema: ModelEMA | None = ModelEMA(self.model, cfg.optim.ema) if cfg.optim.ema else None
        self.mixer = build_mixer(cfg.augment, self.task, cfg.train.seed)  # mixup / cutmix
        self.val_cm = self.spec.validation_meter(self.num_classes, IGNORE, None)
        self.last_val_metrics: dict[str, Any] | None = None
        self.val_confusion: torch.Tensor | None = None  # (C, C) of the last validation

    def configure_model_parts(self) -> torch.nn.Module:
        return build_model(
            self.cfg.model,
            task=self.task,
            num_classes=self.num_classes,
            in_channels=self.in_channels,
            image_size=self.cfg.data.image_size,
        )

    def configure_model(self) -> None:
        """``train.compile``: compile the network in place when training starts.

        ``nn.Module.compile`` swaps only how the module is called, not the module, so
        the state dict keeps its names (no ``_orig_mod.`` prefix): checkpoints and the
        exported weights load into an uncompiled network. The EMA copy (validation and
        export) stays uncompiled. Lightning calls this hook at every fit/validate.
        """
        if self.cfg.train.compile and not getattr(self.model, "_compiled_call_impl", None):
            self.model.compile()

    @property
    def log_steps(self) -> bool:
        """Whether the training loss is logged every step (a progress bar shows it)."""
        return self._trainer is not None and self.trainer.progress_bar_callback is not None

    def on_fit_start(self) -> None:
        # GPU: NHWC ("channels_last") lets cuDNN use its fastest convolution kernels
        # under bf16/fp16 autocast (tensor cores); weights are exported contiguous
        if self.device.type == "cuda":
            self.to(memory_format=torch.channels_last)  # type: ignore[call-overload]

    def on_after_batch_transfer(self, batch: Any, dataloader_idx: int) -> Any:
        x, y = batch  # y: the task's targets (labels, masks, or one dict of boxes per image)
        if x.device.type == "cuda" and x.ndim == 4:
            x = x.contiguous(memory_format=torch.channels_last)
        return x, y

    # ------------------------------------------------------------------ steps
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

    def training_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> Any:
        x, y = batch
        if self.mixer is not None:  # soft targets: lam * loss(y_a) + (1 - lam) * loss(y_b)
            mixed = self.mixer(x, y)
            loss = mixed.loss(self.criterion, self.model(mixed.x))
        else:
            loss = self.spec.batch_loss(self.model, self.criterion, x, y)
        self.log(
            "train/loss",
            loss,
            # per step only for a progress bar: each logged step value is read from the
            # device (a GPU waits for it); the epoch mean stays on the device until then
            on_step=self.log_steps,
            on_epoch=True,
            prog_bar=True,
            batch_size=x.shape[0],
            sync_dist=self.distributed,  # the mean over all devices (one scalar all-reduce)
        )
        return loss

    def on_train_epoch_start(self) -> None:
        # Lightning calls model.train() before each epoch; a frozen encoder's BatchNorm
        # must keep the running statistics its weights were trained with.
        set_frozen_norms_eval(self.model, all_norms=self.cfg.model.freeze_bn)

    def on_train_batch_end(self, outputs: Any, batch: Any, batch_idx: int) -> None:
        if self.ema is not None:
            self.ema.update(self.model)

    def eval_model(self) -> torch.nn.Module:
        """The weights used for validation and export: the EMA ones when enabled."""
        return self.ema.module if self.ema is not None else self.model

    def validation_step(self, batch: tuple[torch.Tensor, torch.Tensor], batch_idx: int) -> None:
        x, y = batch
        loss = self.spec.validate_batch(self.eval_model(), self.criterion, x, y, self.val_cm)
        if loss is not None and math.isfinite(float(loss)):
            self.log(
                "val/loss",
                loss,
                on_epoch=True,
                prog_bar=False,
                batch_size=x.shape[0],
                sync_dist=self.distributed,
            )

    def on_validation_epoch_start(self) -> None:
        self.val_cm = self.spec.validation_meter(self.num_classes, IGNORE, self.device)

    def on_validation_epoch_end(self) -> None:
        # under DDP each rank counted its own share of the validation samples, each
        # sample once (data.samplers.EvalShardSampler); the task sums them
        gather = self.all_gather if self.distributed else None
        metrics, self.val_confusion = self.spec.validation_metrics(
            self.val_cm, self.class_names, gather
        )
        self.last_val_metrics = metrics
        for key in self.spec.logged_metrics:
            value = metrics["overall"].get(key)
            # undefined (null) metrics are logged as NaN for the curves, never as 0
            self.log(
                f"val/{key}",
                float("nan") if value is None else float(value),
                prog_bar=key in ("mean_iou", "macro_f1", "accuracy", self.spec.headline),
                sync_dist=False,
            )

    # ------------------------------------------------------------------ optim
    def configure_optimizers(self) -> Any:
        optimizer = build_optimizer(
            self.model, self.cfg.optim, encoder_params=encoder_parameters(self.model)
        )
        steps = max(1, int(self.trainer.estimated_stepping_batches // self.cfg.train.epochs))
        monitor = self.cfg.resolved_monitor()
        scheduler, interval = build_scheduler(
            optimizer,
            self.cfg.schedule,
            epochs=self.cfg.train.epochs,
            steps_per_epoch=steps,
            # plateau: a loss improves going down (as best.ckpt and early stopping read it)
            mode="min" if monitor.endswith("loss") else "max",
        )
        sched: dict[str, Any] = {"scheduler": scheduler, "interval": interval}
        if self.cfg.schedule.name == "plateau":
            sched["monitor"] = monitor
        return {"optimizer": optimizer, "lr_scheduler": sched}

    def lr_scheduler_step(self, scheduler: Any, metric: Any) -> None:
        # fp16: a step the gradient scaler skipped (inf/NaN gradients) does not count
        if not skip_scheduler_step(self.trainer, scheduler):
            super().lr_scheduler_step(scheduler, metric)

    # ------------------------------------------------------------------ state
    @property
    def distributed(self) -> bool:
        """Whether several processes train together (DDP)."""
        return self._trainer is not None and self.trainer.world_size > 1

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        if self.val_confusion is not None:  # the epoch's validation counts, all ranks summed
            checkpoint["val_confusion"] = self.val_confusion

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        upgrade_checkpoint(checkpoint, ema=self.ema is not None)

    def load_weights(self, checkpoint: dict[str, Any]) -> None:
        """Load a checkpoint's weights (model, EMA), older checkpoint formats included."""
        upgrade_checkpoint(checkpoint, ema=self.ema is not None)
        self.load_state_dict(checkpoint["state_dict"])


def upgrade_checkpoint(checkpoint: dict[str, Any], *, ema: bool) -> None:
    """Bring a checkpoint of an older format to the module's state dict, in place.

    Checkpoints written before the EMA was a submodule kept it apart as ``ema_state``;
    its entries move into ``state_dict`` under ``ema.``. A run with EMA resumed from a
    checkpoint without one starts its average from the checkpoint's model weights.
    """
    state = checkpoint.get("state_dict")
    if state is None:
        return
    legacy = checkpoint.pop("ema_state", None)
    if not ema:
        for key in [k for k in state if k.startswith("ema.")]:
            del state[key]
    elif legacy is not None:
        state.update(ModelEMA.legacy_state(legacy, prefix="ema."))
    elif not any(k.startswith("ema.") for k in state):
        state.update(
            {f"ema.module.{k[6:]}": v for k, v in list(state.items()) if k.startswith("model.")}
        )
        state["ema.num_updates"] = torch.zeros((), dtype=torch.int64)
