"""``train.batch_size: auto`` and the out-of-memory retry.

Resolution happens in :func:`~liandan.data.datamodule.build_data`, before the loaders
are built, so ``config.yaml`` of the run holds the integer that was used and a rerun
reproduces it. Two ways to find it:

- GPU: a probe. The run's model (same architecture, precision and optimizer) takes
  one forward/backward/optimizer step on random tensors of the input size at batch
  2, 4, 8, ... until CUDA runs out of memory or the cap is reached. The batch is the
  largest that fitted times 0.8, rounded down to a multiple of 8 (a power of two
  below 8), or the cap itself when nothing failed.
- CPU: an estimate. One forward pass at batch 2 and one at 4 measure the bytes
  autograd keeps for the backward pass per sample (saved-tensor hooks, on the
  ``meta`` device: exact shapes, no memory, milliseconds; repeatable, unlike the
  process's resident size). Weights, gradients and two AdamW moments add four times
  the parameter bytes. The batch is the largest power of two whose total fits in half
  of the available memory (``MemAvailable``).

Both are capped by :func:`batch_cap`, the rule ``liandan plan`` uses too: 256 images
(classify) or 64 tiles (segment) on a GPU, 64 / 16 on a CPU, and a power of two leaving
at least 4 steps per epoch, though not below 8 (BatchNorm) for that.

An out-of-memory error during the first epoch of ``trainer.fit`` (no checkpoint yet)
halves the batch, rebuilds the loaders and starts training again, at most
:data:`MAX_RETRIES` times; the batch used is saved in ``config.yaml``.
"""

from __future__ import annotations

import gc
import logging
import math
import os
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import torch

from liandan.config import Config
from liandan.errors import TrainingStopped
from liandan.tasks import get_task

if TYPE_CHECKING:
    from liandan.data.datamodule import DataBundle

log = logging.getLogger("liandan")

MARGIN = 0.8  # GPU: keep 20% of the largest batch that fitted for fragmentation, validation
CPU_SHARE = 0.5  # CPU: the estimate must fit in half the available memory (2x margin)
MIN_STEPS = 4  # an epoch keeps at least this many optimizer steps ...
# ... unless that leaves fewer samples than this for BatchNorm's batch statistics, which
# get noisy below ~8 (Wu & He 2018); the epoch count or the budget sets the steps anyway
MIN_BN_BATCH = 8
MAX_RETRIES = 3  # out-of-memory retries, each with half the batch
T = TypeVar("T")


def is_out_of_memory(exc: BaseException) -> bool:
    """A CUDA out-of-memory error, or an allocator failure reported as a RuntimeError."""
    if isinstance(exc, torch.cuda.OutOfMemoryError):
        return True
    text = str(exc).lower()
    return isinstance(exc, RuntimeError) and (
        "out of memory" in text or "can't allocate memory" in text
    )


def pow2_floor(x: float) -> int:
    """The largest power of two <= ``x`` (1 for anything below 2)."""
    return int(2 ** math.floor(math.log2(max(x, 1.0))))


def batch_cap(task: str, n_train: int, *, gpu: bool) -> int:
    """The largest batch a plan or ``auto`` chooses; memory may make it smaller.

    Per task and device (``Task.batch_cap_gpu``, ``batch_cap_cpu``); a power of two leaving at least
    ``MIN_STEPS`` steps per epoch, but not below ``MIN_BN_BATCH`` for that; never more
    than the training set.
    """
    spec = get_task(task)
    cap = spec.batch_cap_gpu if gpu else spec.batch_cap_cpu
    per_epoch = max(MIN_BN_BATCH, pow2_floor(n_train // MIN_STEPS))
    return max(2, min(cap, per_epoch, n_train))


# ---------------------------------------------------------------- GPU: the probe
def search_batch_size(try_batch: Callable[[int], None], cap: int) -> tuple[int, int | None]:
    """Try batches 2, 4, 8, ... (then ``cap``) until one runs out of memory.

    Args:
        try_batch: runs one training step at the given batch; raises an
            out-of-memory error (see :func:`is_out_of_memory`) when it does not fit.
        cap: the largest batch to try.

    Returns:
        The largest batch that fitted (0 when even 2 did not) and the first that did
        not (None when every batch up to ``cap`` fitted).
    """
    fitted, size = 0, min(2, cap)
    while True:
        if not _fits(try_batch, size):
            _free_memory()  # after the handler: the exception no longer holds the frames
            return fitted, size
        fitted = size
        if size >= cap:
            return fitted, None
        size = min(size * 2, cap)


def _fits(try_batch: Callable[[int], None], size: int) -> bool:
    try:
        try_batch(size)
    except Exception as exc:
        if not is_out_of_memory(exc):
            raise
        return False
    return True


def with_margin(fitted: int, failed: int | None) -> int:
    """The batch to train with, given the probe's result (see the module docstring)."""
    if failed is None:
        return fitted  # the cap fitted: no memory limit was met
    batch = int(fitted * MARGIN)
    batch = batch - batch % 8 if batch >= 8 else pow2_floor(batch)
    return max(min(2, fitted), batch)


def _free_memory() -> None:
    gc.collect()  # the failed step's tensors are referenced from the exception's frames
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _probe_model(cfg: Config, task: str, in_channels: int, num_classes: int) -> torch.nn.Module:
    """The run's architecture, without downloading or loading any weights."""
    from liandan.models import build_model

    model_cfg = cfg.model.model_copy(update={"weights": "none"})
    return build_model(
        model_cfg,
        task=task,
        num_classes=num_classes,
        in_channels=in_channels,
        image_size=cfg.data.image_size,
    )


def _probe_optimizer(cfg: Config, model: torch.nn.Module) -> torch.optim.Optimizer:
    from liandan.models import encoder_parameters
    from liandan.optim import build_optimizer

    lr = cfg.optim.lr if isinstance(cfg.optim.lr, float) else 1e-3  # auto: any value will do
    optim_cfg = cfg.optim.model_copy(update={"lr": lr})
    return build_optimizer(model, optim_cfg, encoder_params=encoder_parameters(model))


def cuda_step(
    cfg: Config, task: str, in_channels: int, num_classes: int, size: int
) -> Callable[[int], None]:
    """``try_batch`` for :func:`search_batch_size`: one real training step on the GPU."""
    from liandan.engine.trainer import resolve_precision

    # under torchrun each process probes its own GPU (Lightning selects it later)
    device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
    precision = resolve_precision(cfg)
    dtype = {"bf16-mixed": torch.bfloat16, "16-mixed": torch.float16}.get(precision)
    model = _probe_model(cfg, task, in_channels, num_classes).to(device).train()
    optimizer = _probe_optimizer(cfg, model)
    spec = get_task(task)

    def step(batch: int) -> None:
        x = torch.randn(batch, in_channels, size, size, device=device)
        with torch.autocast("cuda", dtype=dtype or torch.float32, enabled=dtype is not None):
            loss = spec.probe_loss(model, x, num_classes)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        torch.cuda.synchronize()

    return step


# ------------------------------------------------------------ CPU: the estimate
def saved_bytes(model: torch.nn.Module, x: torch.Tensor) -> int:
    """Bytes autograd keeps for the backward pass of ``model(x)`` (each storage once).

    Works on the ``meta`` device, where no memory is allocated and no arithmetic done.
    """
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        try:
            storage = t.untyped_storage()
            storages[storage._cdata] = storage.nbytes()  # _cdata: the storage's identity
        except (RuntimeError, NotImplementedError):  # tensors without a storage
            pass
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = model(x)
    del out
    return sum(storages.values())


def per_sample_bytes(model: torch.nn.Module, in_channels: int, size: int) -> int:
    """Activation bytes per sample kept for backward: batch 4 minus batch 2, halved.

    Measured on the ``meta`` device (the same shapes, at no cost); on the CPU for
    models with an operation that has no meta kernel.
    """
    model.train()  # batch statistics, dropout: what training keeps
    for device in ("meta", "cpu"):
        try:
            net = model.to(device)
            # two tensors, not a slice: a view would keep all 4 samples' storage
            x2, x4 = (torch.randn(n, in_channels, size, size, device=device) for n in (2, 4))
            return max(1, (saved_bytes(net, x4) - saved_bytes(net, x2)) // 2)
        except (RuntimeError, NotImplementedError) as exc:
            if device == "cpu":
                raise
            log.debug("batch size estimate: no meta run (%s); measuring on the CPU", exc)
    raise AssertionError("unreachable")


def cpu_batch_size(
    model: torch.nn.Module,
    in_channels: int,
    size: int,
    cap: int,
    available: int,
) -> tuple[int, int]:
    """The largest power of two whose estimated memory fits ``available * CPU_SHARE``.

    Estimate: four times the parameter bytes (weights, gradients, two AdamW moments)
    plus the batch times :func:`per_sample_bytes`.

    Returns:
        The batch (at least 2, at most ``cap``) and the bytes per sample.
    """
    fixed = 4 * sum(p.numel() * p.element_size() for p in model.parameters())
    per_sample = per_sample_bytes(model, in_channels, size)
    room = available * CPU_SHARE - fixed
    batch = pow2_floor(room / per_sample) if room >= 2 * per_sample else 2
    return max(2, min(batch, pow2_floor(cap))), per_sample


def available_memory() -> int:
    """Memory the system can give without swapping (``MemAvailable``), in bytes."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:  # not Linux: half of the physical memory as a stand-in
        return int(os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")) // 2
    except (ValueError, OSError, AttributeError):
        return 4 * 1024**3


# ------------------------------------------------------------------ resolution
def _uses_cuda(cfg: Config) -> bool:
    return torch.cuda.is_available() and cfg.train.accelerator in ("auto", "gpu")


def resolve_batch_size(
    cfg: Config,
    *,
    in_channels: int,
    num_classes: int,
    n_train: int,
    size: int,
    notes: list[str] | None = None,
) -> int:
    """Replace ``train.batch_size: auto`` by an integer (in ``cfg``) and return it.

    Args:
        cfg: the run's config; ``cfg.task`` must be known.
        in_channels: input bands.
        num_classes: classes of the task.
        n_train: training samples (images or tiles).
        size: the input side in pixels (``data.image_size`` or ``data.tile_size``).
        notes: where a sentence on how the batch was found is appended (the data
            notes of the run and its report).

    Raises:
        TrainingStopped: not even a batch of 2 fits on the GPU.
    """
    if cfg.train.batch_size != "auto":
        return int(cfg.train.batch_size)
    task = str(cfg.task)
    gpu = _uses_cuda(cfg)
    cap = batch_cap(task, n_train, gpu=gpu)
    if gpu:
        fitted, failed = search_batch_size(
            cuda_step(cfg, task, in_channels, num_classes, size), cap
        )
        _free_memory()
        if fitted == 0:
            raise out_of_memory_error(2, size)
        batch = with_margin(fitted, failed)
        how = (
            f"batch {fitted} fitted on the GPU and {failed} did not; x{MARGIN} margin"
            if failed is not None
            else f"the cap ({cap}) fitted on the GPU"
        )
    else:
        model = _probe_model(cfg, task, in_channels, num_classes)
        available = available_memory()
        batch, per_sample = cpu_batch_size(model, in_channels, size, cap, available)
        how = (
            f"~{per_sample / 2**20:.1f} MB per sample at {size} px, {available / 2**30:.1f} GB "
            f"available, x{1 / CPU_SHARE:.0f} margin, cap {cap}"
        )
    cfg.train.batch_size = batch
    note = f"train.batch_size=auto: {batch} ({how})"
    log.info(note)
    if notes is not None:
        notes.append(note)
    return batch


# ------------------------------------------------------------- the OOM retry
def out_of_memory_error(batch: int, size: int) -> TrainingStopped:
    return TrainingStopped(
        f"out of memory at batch {batch}",
        where="train.batch_size",
        hint=f"lower data.image_size / data.tile_size (now {size} px), use "
        "train.precision=bf16-mixed or 16-mixed on a GPU, or a smaller model "
        "(model.arch / model.encoder)",
    )


def fit_retrying_oom(
    attempt: Callable[[], T],
    cfg: Config,
    bundle: DataBundle,
    run_dir: Path,
    *,
    rebuild: Callable[[Config], DataBundle],
    resuming: bool = False,
) -> T:
    """Run ``attempt`` (one ``trainer.fit``); on out-of-memory in the first epoch, halve.

    Each retry sets ``train.batch_size`` to half, rebuilds the loaders of ``bundle``
    with ``rebuild`` (``build_data``: exactly as a new run with that batch would), reseeds, removes the failed
    attempt's TensorBoard events and saves ``config.yaml``; ``attempt`` must build a
    fresh model and Trainer. After :data:`MAX_RETRIES` retries, or an out-of-memory
    error after the first checkpoint (or when resuming), training stops with a
    :class:`~liandan.errors.TrainingStopped` that says what to change.
    """
    import lightning as L

    size = cfg.data.tile_size if _is_raster(bundle) else cfg.data.image_size
    retries = 0
    while True:
        try:
            return attempt()
        except Exception as exc:
            if not is_out_of_memory(exc):
                raise
            batch = int(bundle.train_loader.batch_size or cfg.train.batch_size)
            # after a checkpoint a new batch would change the epoch's steps under the
            # schedule; several processes would each have to agree on the retry
            started = resuming or (run_dir / "checkpoints" / "last.ckpt").is_file()
            distributed = torch.distributed.is_available() and torch.distributed.is_initialized()
            if started or distributed or retries >= MAX_RETRIES or batch < 2:
                raise out_of_memory_error(batch, size) from exc
        _free_memory()
        retries += 1
        half = batch // 2
        log.warning("out of memory at batch %d: retrying with %d", batch, half)
        cfg.train.batch_size = half
        fresh = rebuild(cfg)
        bundle.train_loader, bundle.val_loader = fresh.train_loader, fresh.val_loader
        note = f"out of memory at batch {batch}: retried with {half}"
        bundle.notes.append(note)
        bundle.index.notes.append(note)  # the data notes of the report
        shutil.rmtree(run_dir / "tensorboard", ignore_errors=True)
        cfg.save(run_dir / "config.yaml")
        L.seed_everything(cfg.train.seed, workers=True, verbose=False)


def _is_raster(bundle: DataBundle) -> bool:
    dataset: Any = bundle.train_loader.dataset
    return hasattr(dataset, "regions")
