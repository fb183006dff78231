"""The Lightning Trainer factory: devices, processes, precision, checkpoints, logging.

Checkpoints go through :class:`~liandan.engine.checkpoint.AtomicCheckpointIO` (atomic
writes, ``last-prev`` kept, ``weights_only`` loading) and are saved at the end of each
training epoch, after validation, so that ``last.ckpt`` holds that epoch's history row
and the random states an exact resume needs.

Several processes train with DDP; :mod:`liandan.engine.distributed` says which one
writes and how many devices there are. See docs/scale.md.
"""

from __future__ import annotations

import logging
import sys
import warnings
from pathlib import Path

import lightning as L
import torch
from lightning.pytorch.callbacks import (
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
    TQDMProgressBar,
)
from lightning.pytorch.loggers import TensorBoardLogger

from liandan.config import Config, parse_duration
from liandan.engine.budget import budget_callbacks
from liandan.engine.callbacks import GracefulStop, HistoryCallback, RandomStateCallback
from liandan.engine.checkpoint import AtomicCheckpointIO, LastCheckpoint, clean_temporary
from liandan.engine.distributed import (
    devices_and_nodes,
    is_first_process,
    process_count,
    resolve_distributed,
)
from liandan.engine.doctor import TrainingDoctor

# ------------------------------------------------------------------ trainer
# Steps between reads of the device in the hot loop (the doctor's checks, logged values):
# each read makes the host wait until the GPU has finished every queued kernel.
SYNC_EVERY = 16


def accelerator_is_cpu(cfg: Config) -> bool:
    """Whether training runs on the CPU, where reading a tensor costs no waiting."""
    return cfg.train.accelerator == "cpu" or (
        cfg.train.accelerator == "auto" and not torch.cuda.is_available()
    )


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


def build_trainer(
    cfg: Config, run_dir: Path, extra_callbacks: list[L.Callback] | None = None
) -> tuple[L.Trainer, HistoryCallback]:
    """A Trainer writing checkpoints, history and TensorBoard logs into ``run_dir``."""
    quiet_lightning()
    resolve_distributed(cfg)  # no-op when train_into resolved it before saving config.yaml
    devices, nodes = devices_and_nodes(cfg)
    monitor = cfg.resolved_monitor()
    if is_first_process():  # rank 0 owns the folder; others could race its writes
        clean_temporary(run_dir / "checkpoints")  # what a killed run left unfinished
    checkpoint = ModelCheckpoint(
        dirpath=run_dir / "checkpoints",
        filename="best",
        monitor=monitor,
        mode="min" if monitor.endswith("loss") else "max",
        save_last=False,  # LastCheckpoint writes last.ckpt every epoch
        save_top_k=1,
        auto_insert_metric_name=False,
        enable_version_counter=False,
        save_on_train_epoch_end=True,  # after validation and the epoch's history row
        save_weights_only=True,  # the best epoch's weights; resume uses last.ckpt
    )
    # A progress bar on a terminal; in logs (CI, files) one line per epoch instead of
    # thousands of carriage-return updates.
    bar = cfg.train.progress and sys.stderr.isatty()
    history = HistoryCallback(run_dir / "history.csv", log_epochs=cfg.train.progress and not bar)
    precision = resolve_precision(cfg)
    doctor = TrainingDoctor(
        run_dir,
        history,
        monitor,
        cfg.optim.lr if isinstance(cfg.optim.lr, float) else 1e-3,
        check_gradients=precision != "16-mixed",  # the fp16 scaler skips such steps itself
        sync_every=1 if accelerator_is_cpu(cfg) else SYNC_EVERY,
    )
    # the learning rates in TensorBoard, per step (read from the optimizer: no device read)
    callbacks: list[L.Callback] = [checkpoint, history, LearningRateMonitor("step")]
    callbacks += budget_callbacks(cfg, run_dir)  # train.budget: stop in time, record it
    callbacks += extra_callbacks or []  # e.g. tune's pruning callback
    callbacks += [doctor, RandomStateCallback(), GracefulStop(run_dir)]
    every_s = parse_duration(cfg.train.checkpoint_interval, "train.checkpoint_interval")
    callbacks.append(LastCheckpoint(run_dir / "checkpoints", every_s))  # after best
    if cfg.train.freeze_epochs:  # the fine_tune recipe: head first, then everything
        from liandan.engine.finetune import FreezeEncoder

        callbacks.append(FreezeEncoder(cfg.train.freeze_epochs))
    if bar:
        callbacks.append(TQDMProgressBar(refresh_rate=1))
    if cfg.train.patience:
        callbacks.append(
            EarlyStopping(monitor=monitor, mode=checkpoint.mode, patience=cfg.train.patience)
        )
    logger = TensorBoardLogger(save_dir=str(run_dir), name="tensorboard", version="")
    trainer = L.Trainer(
        max_epochs=cfg.train.epochs,
        accelerator=cfg.train.accelerator,
        devices=devices,
        num_nodes=nodes,
        strategy=cfg.train.strategy,
        sync_batchnorm=cfg.train.sync_batchnorm is True and process_count(cfg) > 1,
        precision=precision,  # type: ignore[arg-type]
        callbacks=callbacks,
        plugins=[AtomicCheckpointIO(unsafe_load=cfg.train.unsafe_load)],
        logger=logger,
        default_root_dir=str(run_dir),
        num_sanity_val_steps=0,
        # an int once train_into resolved auto (data.epochs: longer epochs are redrawn)
        limit_train_batches=cfg.train.steps_per_epoch
        if isinstance(cfg.train.steps_per_epoch, int)
        else None,
        log_every_n_steps=1 if accelerator_is_cpu(cfg) else SYNC_EVERY,
        enable_progress_bar=bar,
        enable_model_summary=False,
        # seeded and reproducible on CPU; "warn" lets ops without a deterministic kernel
        # (e.g. max-unpooling in SegNet) run instead of stopping the run
        deterministic="warn" if not torch.cuda.is_available() else False,
        benchmark=torch.cuda.is_available(),
    )
    return trainer, history
