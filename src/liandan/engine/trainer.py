"""The Lightning Trainer factory: devices, precision, checkpoints, logging."""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import EarlyStopping, ModelCheckpoint, TQDMProgressBar
from lightning.pytorch.loggers import TensorBoardLogger

from liandan.config import Config
from liandan.engine.callbacks import HistoryCallback


def resolve_precision(cfg: Config) -> str:
    """bf16 autocast on GPUs that support it, fp16 with a scaler on older ones, else fp32."""
    if cfg.train.precision != "auto":
        return cfg.train.precision
    if torch.cuda.is_available() and cfg.train.accelerator in ("auto", "gpu"):
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "32"


def quiet_lightning() -> None:
    """Keep Lightning's start-up chatter (tips, device summaries) off the console."""
    for name in ("lightning", "lightning.pytorch", "lightning.fabric"):
        logging.getLogger(name).setLevel(logging.WARNING)
    warnings.filterwarnings("ignore", ".*does not have many workers.*")
    warnings.filterwarnings("ignore", ".*`isinstance.*LeafSpec.*")
    warnings.filterwarnings("ignore", ".*The number of training batches.*")
    warnings.filterwarnings("ignore", ".*Checkpoint directory.*exists and is not empty.*")


def build_trainer(cfg: Config, run_dir: Path) -> tuple[L.Trainer, HistoryCallback]:
    """A Trainer writing checkpoints, history and TensorBoard logs into ``run_dir``."""
    quiet_lightning()
    monitor = cfg.resolved_monitor()
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="best",
        monitor=monitor,
        mode="min" if monitor.endswith("loss") else "max",
        save_last=True,
        save_top_k=1,
        auto_insert_metric_name=False,
        enable_version_counter=False,
    )
    history = HistoryCallback(run_dir / "history.csv")
    callbacks: list[L.Callback] = [checkpoint, history]
    if cfg.train.progress:
        callbacks.append(TQDMProgressBar(refresh_rate=1))
    if cfg.train.patience:
        callbacks.append(
            EarlyStopping(monitor=monitor, mode=checkpoint.mode, patience=cfg.train.patience)
        )
    logger = TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version="")
    trainer = L.Trainer(
        max_epochs=cfg.train.epochs,
        accelerator=cfg.train.accelerator,
        devices=cfg.train.devices,
        precision=resolve_precision(cfg),  # type: ignore[arg-type]
        callbacks=callbacks,
        logger=logger,
        default_root_dir=str(run_dir),
        num_sanity_val_steps=0,
        limit_train_batches=cfg.train.steps_per_epoch,
        log_every_n_steps=1,
        enable_progress_bar=cfg.train.progress,
        enable_model_summary=False,
        # seeded and reproducible on CPU; "warn" lets ops without a deterministic kernel
        # (e.g. max-unpooling in SegNet) run instead of stopping the run
        deterministic="warn" if not torch.cuda.is_available() else False,
        benchmark=torch.cuda.is_available(),
    )
    return trainer, history
