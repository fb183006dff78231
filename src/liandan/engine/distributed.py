"""Processes: who is rank 0, where the run folder is, and how many devices train.

Several processes (``train.devices`` > 1, ``train.num_nodes`` > 1, or a torchrun /
SLURM launch) train with DDP: one copy of the model per device, gradients averaged.
Every process runs ``liandan.train``; the first one (rank 0) makes the run folder and
writes every file in it, the others find that folder (:func:`shared_run_dir`), read
the config rank 0 resolved (:func:`follower_config`), train, and return without
writing. See docs/scale.md.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Callable
from pathlib import Path

import torch

from liandan.config import Config
from liandan.errors import ConfigError, DataError, LiandanError

RUN_DIR_ENV = "LIANDAN_RUN_DIR"  # rank 0's run folder, inherited by processes it launches
FOLLOW_WAIT_S = 3600.0  # how long other ranks wait for rank 0's folder and config
SAME_LAUNCH_S = 60.0  # processes of one launch start within this many seconds
# train.sync_batchnorm: auto syncs BatchNorm statistics across devices below this batch
# per device: with fewer samples the per-device statistics are noisy (Wu & He, Group
# Normalization, 2018: BatchNorm degrades sharply below ~16 samples per batch).
SYNC_BN_BELOW = 16


# ------------------------------------------------------------------ processes
def _env_int(name: str) -> int | None:
    value = os.environ.get(name, "")
    return int(value) if value.strip().lstrip("-").isdigit() else None


def is_first_process() -> bool:
    """False in every process but rank 0 of a torchrun, SLURM or Lightning DDP launch.

    Read from the environment (``RANK``, ``SLURM_PROCID``, ``NODE_RANK``,
    ``LOCAL_RANK``), so it is known before any process group exists: when the run
    folder is made and the config resolved.
    """
    if _env_int("RANK") is not None:  # torchrun
        return _env_int("RANK") == 0
    if (_env_int("SLURM_NTASKS") or 1) > 1 and _env_int("SLURM_PROCID") is not None:
        return _env_int("SLURM_PROCID") == 0
    # processes Lightning's "ddp" launches itself carry these two
    return not (_env_int("NODE_RANK") or _env_int("LOCAL_RANK"))


def _launch_key() -> str:
    """What the processes of one torchrun / SLURM launch share (and other launches do not)."""
    names = ("TORCHELASTIC_RUN_ID", "SLURM_JOB_ID", "SLURM_STEP_ID", "MASTER_ADDR", "MASTER_PORT")
    return "|".join(os.environ.get(n, "") for n in names)


def _handoff(out: Path, name: str) -> Path:
    return out / f".{name}.launch.json"


def shared_run_dir(out: str | Path, name: str, started: float, create: Callable[[], Path]) -> Path:
    """The run folder of this launch: made once by rank 0, found by the other ranks.

    Rank 0 calls ``create`` (``out/name``, ``name-2`` ... when taken) and announces the
    folder twice: in ``$LIANDAN_RUN_DIR`` for the processes Lightning starts from it
    (trusted only by rank 0's own child processes),
    and in ``out/.NAME.launch.json`` for torchrun / SLURM processes started beside it
    (on other machines too, when ``out`` is on a shared filesystem). The other ranks
    wait for the announcement of their own launch: same launch variables, started
    within ``SAME_LAUNCH_S`` seconds of them.

    Args:
        out: the parent folder of runs.
        name: the run name.
        started: when this process entered ``liandan.train`` (``time.time()``).
        create: makes the folder (rank 0 only).

    Raises:
        LiandanError: no announcement came within ``FOLLOW_WAIT_S`` seconds.
    """
    out = Path(out)
    if is_first_process():
        run_dir = create().resolve()
        # "PID:FOLDER": only this process's own children (Lightning's launcher) trust it,
        # not the processes of a later launch that happen to inherit this environment
        os.environ[RUN_DIR_ENV] = f"{os.getpid()}:{run_dir}"
        if (_env_int("WORLD_SIZE") or _env_int("SLURM_NTASKS") or 1) > 1:
            from liandan.runs import atomic_write_json

            info = {"run_dir": str(run_dir), "launch": _launch_key(), "started": started}
            atomic_write_json(_handoff(out, name), info)
        return run_dir
    parent, _, inherited = os.environ.get(RUN_DIR_ENV, "").partition(":")
    if inherited and parent == str(os.getppid()):  # launched by rank 0 (Lightning's ddp)
        return Path(inherited)

    def announced() -> Path | None:
        try:
            info = json.loads(_handoff(out, name).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        same = info.get("launch") == _launch_key()
        if same and abs(float(info.get("started", 0.0)) - started) <= SAME_LAUNCH_S:
            return Path(info["run_dir"])
        return None  # an earlier launch's note: rank 0 has not written ours yet

    return _wait_for(announced, f"rank 0's run folder ({_handoff(out, name)})", out)


def release_run_dir(out: str | Path, name: str) -> None:
    """Rank 0, after training: remove the announcement (every rank has read it)."""
    if is_first_process():
        _handoff(Path(out), name).unlink(missing_ok=True)


def follower_config(run_dir: Path) -> Config:
    """Ranks > 0: the config rank 0 resolved (lr-find, budget, auto values) and saved."""
    path = run_dir / "config.yaml"
    _wait_for(lambda: path if path.is_file() else None, f"rank 0's {path.name}", run_dir)
    return Config.load(path)


def _wait_for(found: Callable[[], Path | None], what: str, where: Path) -> Path:
    deadline = time.monotonic() + FOLLOW_WAIT_S
    while time.monotonic() < deadline:
        value = found()
        if value is not None:
            return value
        time.sleep(0.2)
    raise LiandanError(
        f"waited {FOLLOW_WAIT_S:.0f} s for {what} in vain",
        where=where,
        hint="every process of a multi-process launch needs the same --out folder, on a "
        "filesystem all machines share; check rank 0's log for its error",
    )


def launch_shape() -> tuple[int, int] | None:
    """(processes per machine, machines) of a torchrun or srun launch, else None."""
    from lightning.fabric.plugins.environments import SLURMEnvironment, TorchElasticEnvironment

    if TorchElasticEnvironment.detect():
        world, local = _env_int("WORLD_SIZE") or 1, _env_int("LOCAL_WORLD_SIZE") or 1
        return local, max(1, world // local)
    if SLURMEnvironment.detect():
        tasks = _env_int("SLURM_NTASKS") or 1
        nodes = _env_int("SLURM_NNODES") or 1
        return _env_int("SLURM_NTASKS_PER_NODE") or max(1, tasks // nodes), nodes
    return None


def _gpu(cfg: Config) -> bool:
    return cfg.train.accelerator == "gpu" or (
        cfg.train.accelerator == "auto" and torch.cuda.is_available()
    )


def devices_and_nodes(cfg: Config) -> tuple[int | str, int]:
    """``train.devices`` and ``train.num_nodes``, taken from the launch when left at auto/1.

    Under torchrun or srun the launch already fixed how many processes run where;
    ``devices: auto`` means one per process on each machine.

    Raises:
        ConfigError: the values given disagree with the launch.
    """
    devices, nodes = cfg.train.devices, cfg.train.num_nodes
    shape = launch_shape()
    if shape is None:
        return devices, nodes
    per_machine, machines = shape
    if devices == "auto":
        devices = per_machine
    if nodes == 1:
        nodes = machines
    if int(devices) * nodes != per_machine * machines:
        raise ConfigError(
            f"train.devices={devices} x train.num_nodes={nodes} processes, but the launch "
            f"started {per_machine} per machine on {machines} machine(s)",
            where="train.devices",
            hint="leave train.devices: auto and train.num_nodes: 1: they are read from "
            "torchrun / srun",
        )
    return devices, nodes


def process_count(cfg: Config) -> int:
    """How many training processes (one per device) the run will have."""
    devices, nodes = devices_and_nodes(cfg)
    if devices == "auto":  # Lightning's auto: every visible GPU, else one CPU process
        devices = max(1, torch.cuda.device_count()) if _gpu(cfg) else 1
    return int(devices) * nodes


def check_validation_shards(cfg: Config, n_val: int) -> None:
    """Refuse a run whose validation set has fewer samples (tiles) than processes.

    Each process validates its own share (:class:`~liandan.data.samplers.EvalShardSampler`);
    one with nothing to validate would skip validation and leave the others waiting for
    it in the confusion-matrix sum forever.
    """
    count = process_count(cfg)
    if count > 1 and n_val < count:
        raise DataError(
            f"the validation split has {n_val} sample(s) for {count} training processes: "
            "each process needs at least one",
            where="data.val_fraction",
            hint="add validation samples (a val/ folder or a larger data.val_fraction), "
            "or train on fewer devices (train.devices)",
        )


def resolve_distributed(cfg: Config) -> None:
    """Fill ``train.strategy`` and ``train.sync_batchnorm`` (written resolved to the run).

    ``strategy: auto`` becomes ``ddp`` with more than one process; ``sync_batchnorm:
    auto`` is on under DDP on GPUs when ``train.batch_size`` (per device) is below
    ``SYNC_BN_BELOW``.

    Raises:
        ConfigError: ``sync_batchnorm: true`` on CPUs (PyTorch syncs only GPU tensors).
    """
    processes = process_count(cfg)
    if cfg.train.strategy == "auto" and processes > 1:
        cfg.train.strategy = "ddp"
    ddp = processes > 1 and cfg.train.strategy != "auto"
    if cfg.train.sync_batchnorm == "auto":
        batch = cfg.train.batch_size  # per device; an int once the data is built
        small = isinstance(batch, int) and batch < SYNC_BN_BELOW
        cfg.train.sync_batchnorm = ddp and _gpu(cfg) and small
    elif cfg.train.sync_batchnorm and ddp and not _gpu(cfg):
        raise ConfigError(
            "SyncBatchNorm needs GPUs; this run trains on CPUs",
            where="train.sync_batchnorm",
            hint="set train.sync_batchnorm: false (or auto)",
        )
