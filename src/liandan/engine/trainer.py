"""The Lightning Trainer factory: devices, processes, precision, checkpoints, logging.

Curves (losses, metrics, learning rates) go to the logger ``train.logger`` names, in
the run folder: ``tensorboard/`` event files, ``csv/metrics.csv``, or an MLflow store in
``mlflow/`` (a SQLite file, no server). See docs/reliability.md.

Checkpoints go through :class:`~liandan.engine.checkpoint.AtomicCheckpointIO` (atomic
writes, ``last-prev`` kept, ``weights_only`` loading) and are saved at the end of each
training epoch, after validation, so that ``last.ckpt`` holds that epoch's history row
and the random states an exact resume needs.

Several processes train with DDP; :mod:`liandan.engine.distributed` says which one
writes and how many devices there are. See docs/scale.md.
"""

from __future__ import annotations

import csv
import functools
import importlib.util
import logging
import shutil
import sys
import warnings
from pathlib import Path
from typing import Any

import lightning as L
import torch
from lightning.pytorch.callbacks import (
    EarlyStopping,
    LearningRateMonitor,
    ModelCheckpoint,
    TQDMProgressBar,
)
from lightning.pytorch.loggers import CSVLogger, Logger, MLFlowLogger, TensorBoardLogger
from lightning.pytorch.loggers.csv_logs import ExperimentWriter
from lightning.pytorch.loggers.logger import rank_zero_experiment

from liandan.config import Config, parse_duration
from liandan.engine.budget import budget_callbacks
from liandan.engine.callbacks import GracefulStop, HistoryCallback, RandomStateCallback
from liandan.engine.checkpoint import (
    AtomicCheckpointIO,
    LastCheckpoint,
    clean_temporary,
    previous_path,
)
from liandan.engine.distributed import (
    devices_and_nodes,
    is_first_process,
    process_count,
    resolve_distributed,
)
from liandan.engine.doctor import TrainingDoctor
from liandan.errors import ConfigError

# ------------------------------------------------------------------ trainer
# Steps between reads of the device in the hot loop (the doctor's checks, logged values):
# each read makes the host wait until the GPU has finished every queued kernel.
SYNC_EVERY = 16


def accelerator_is_cpu(cfg: Config) -> bool:
    """Whether training runs on the CPU, where reading a tensor costs no waiting."""
    return cfg.train.accelerator == "cpu" or (
        cfg.train.accelerator == "auto" and not torch.cuda.is_available()
    )


# CPU flags of native bfloat16 arithmetic (x86: AVX512-BF16, AMX-BF16), in /proc/cpuinfo
CPU_BF16_FLAGS = frozenset({"avx512_bf16", "amx_bf16"})


@functools.cache
def cpu_bf16_native(cpuinfo: Path = Path("/proc/cpuinfo")) -> bool:
    """Whether this CPU computes bfloat16 natively (Linux x86 flags; elsewhere False).

    Without these instructions oneDNN emulates bf16 and autocast gains little or loses.
    """
    try:
        text = cpuinfo.read_text(encoding="utf-8", errors="replace")
    except OSError:
        return False
    for line in text.splitlines():
        if line.startswith("flags"):
            return bool(CPU_BF16_FLAGS & set(line.partition(":")[2].split()))
    return False


def resolve_precision(cfg: Config) -> str:
    """bf16 autocast on GPUs that support it, fp16 with a scaler on older ones; on the
    CPU bf16 autocast where the CPU has bf16 instructions (convolutions about 1.7-2x
    faster than float32, benchmarks/RESULTS.md), else fp32. Weights stay float32."""
    if cfg.train.precision != "auto":
        return cfg.train.precision
    if torch.cuda.is_available() and cfg.train.accelerator in ("auto", "gpu"):
        return "bf16-mixed" if torch.cuda.is_bf16_supported() else "16-mixed"
    return "bf16-mixed" if accelerator_is_cpu(cfg) and cpu_bf16_native() else "32"


def training_autocast(cfg: Config, device: torch.device) -> torch.autocast:
    """The autocast a Trainer of ``cfg`` applies to forward passes on ``device``, for
    probes that time or size training steps outside the Trainer (16-mixed is bf16 on
    a CPU, as in Lightning)."""
    precision = resolve_precision(cfg)
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    if dtype is torch.float16 and device.type == "cpu":
        dtype = torch.bfloat16
    return torch.autocast(device.type, dtype=dtype or torch.float32, enabled=dtype is not None)


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
    """A Trainer writing checkpoints, history and ``train.logger``'s curves into ``run_dir``."""
    quiet_lightning()
    check_logger(cfg)
    resolve_distributed(cfg)  # no-op when train_into resolved it before saving config.yaml
    devices, nodes = devices_and_nodes(cfg)
    monitor = cfg.resolved_monitor()
    fresh = not has_resume_checkpoint(run_dir)
    if is_first_process():  # rank 0 owns the folder; others could race its writes
        clean_temporary(run_dir / "checkpoints")  # what a killed run left unfinished
        if fresh:  # curves of an attempt that never checkpointed (out of memory: retried)
            for folder in LOG_FOLDERS.values():
                shutil.rmtree(run_dir / folder, ignore_errors=True)
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
    # the learning rates in the logger, per step (read from the optimizer: no device read)
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
    logger = build_logger(cfg, run_dir, fresh=fresh)
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


# ------------------------------------------------------------------ loggers
LOG_FOLDERS = {"tensorboard": "tensorboard", "csv": "csv", "mlflow": "mlflow"}
MLFLOW_EXPERIMENT = "liandan"


def has_resume_checkpoint(run_dir: Path) -> bool:
    """Whether the run folder holds a checkpoint a resume would continue from."""
    last = run_dir / "checkpoints" / "last.ckpt"
    return last.is_file() or previous_path(last).is_file()


def check_logger(cfg: Config) -> None:
    """``train.logger=mlflow`` without mlflow installed is a config error, not a traceback.

    Raises:
        ConfigError: the logger's package is missing.
    """
    if cfg.train.logger == "mlflow" and importlib.util.find_spec("mlflow") is None:
        raise ConfigError(
            "train.logger=mlflow needs the mlflow package, which is not installed",
            where="train.logger",
            hint="pip install 'liandan[mlflow]', or use train.logger=tensorboard or csv",
        )


def build_logger(cfg: Config, run_dir: Path, *, fresh: bool = True) -> Logger:
    """The ``train.logger`` writing into ``run_dir``; ``fresh``: no checkpoint to resume.

    A resumed run continues its curves: TensorBoard appends event files, the CSV keeps
    its rows (those the interrupted attempt logged past its checkpoint are replaced),
    MLflow continues the run its store holds.
    """
    check_logger(cfg)
    folder = run_dir / LOG_FOLDERS[cfg.train.logger]
    if cfg.train.logger == "csv":
        return ResumableCSVLogger(save_dir=str(run_dir), name=folder.name, version="")
    if cfg.train.logger == "mlflow":
        return _mlflow_logger(cfg, run_dir, folder, fresh=fresh)
    return TensorBoardLogger(save_dir=str(run_dir), name=folder.name, version="")


def _mlflow_logger(cfg: Config, run_dir: Path, folder: Path, *, fresh: bool) -> Logger:
    # SQLite, not a file: URI: MLflow 3 refuses its file store (in maintenance mode)
    # unless MLFLOW_ALLOW_FILE_STORE is set; SQLite needs only sqlalchemy and alembic,
    # which optuna already brings (docs/reliability.md)
    folder.mkdir(parents=True, exist_ok=True)
    uri = f"sqlite:///{(folder / 'mlflow.db').resolve()}"
    for name in ("mlflow", "alembic"):  # the database set-up's INFO lines
        logging.getLogger(name).setLevel(logging.WARNING)
    run_id = None if fresh else _mlflow_run(uri)
    logger = MLFlowLogger(
        experiment_name=MLFLOW_EXPERIMENT,
        run_name=run_dir.name,
        tracking_uri=uri,
        artifact_location=(folder / "artifacts").resolve().as_uri(),
        run_id=run_id,
    )
    if run_id is None and is_first_process():  # the config, to compare runs in MLflow
        logger.log_hyperparams(cfg.to_dict())
    return logger


def _mlflow_run(uri: str) -> str | None:
    """The run id the store in the run folder holds (a resume continues it), if any."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name(MLFLOW_EXPERIMENT)
    if experiment is None:
        return None
    runs = client.search_runs([experiment.experiment_id], order_by=["attributes.start_time DESC"])
    return runs[0].info.run_id if runs else None


class _ResumingWriter(ExperimentWriter):
    """Lightning's CSV writer, but an existing ``metrics.csv`` is continued, not deleted.

    Lightning removes the file when its folder is not empty, which on a resume would
    lose every curve logged before the interruption. Rows from the step the resumed
    run logs first onwards are dropped: the interrupted attempt logged them after its
    last checkpoint, and the resumed run logs them again.
    """

    def _check_log_dir_exists(self) -> None:
        self._previous: list[dict[str, Any]] | None = None
        if Path(self.metrics_file_path).is_file():
            with open(self.metrics_file_path, newline="") as file:
                reader = csv.DictReader(file)
                self.metrics_keys = sorted(reader.fieldnames or [])
                self._previous = list(reader)

    def save(self) -> None:
        if self._previous is not None and self.metrics:
            first = min(int(row["step"]) for row in self.metrics)
            kept = [row for row in self._previous if int(float(row["step"])) < first]
            with open(self.metrics_file_path, "w", newline="") as file:
                writer = csv.DictWriter(file, fieldnames=self.metrics_keys)
                writer.writeheader()
                writer.writerows(kept)
            self._previous = None
        super().save()


class ResumableCSVLogger(CSVLogger):
    """``csv/metrics.csv``, continued by a resumed run (see :class:`_ResumingWriter`)."""

    @property
    @rank_zero_experiment
    def experiment(self) -> ExperimentWriter:
        if self._experiment is None:
            self._fs.makedirs(self.root_dir, exist_ok=True)
            self._experiment = _ResumingWriter(log_dir=self.log_dir)
        return self._experiment  # type: ignore[return-value]
