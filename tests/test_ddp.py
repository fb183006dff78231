"""Several processes (DDP on CPU, gloo): one run folder, each validation sample once.

Two launches are checked end to end: torchrun starting ``liandan train`` twice (what a
cluster job does; every process runs the whole command) and ``strategy=ddp_spawn``
from the Python API (Lightning spawns the processes; only the caller continues).
The validation splits have an odd number of samples, so the padding a plain
``DistributedSampler`` adds (one sample counted twice) would show in the counts.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from conftest import FAST_CLS, FAST_SEG, SIZE, make_imagefolder, make_pairs
from liandan import api
from liandan.config import Config
from liandan.data.samplers import EvalShardSampler
from liandan.engine.checkpoint import load_checkpoint_file
from liandan.engine.distributed import is_first_process, resolve_distributed
from liandan.errors import ConfigError
from liandan.runs import load_model


def _confusion_total(path: Path) -> int:
    return int(sum(sum(row) for row in json.loads(path.read_text())["confusion_matrix"]))


def _check_run(run: Path, expected: int) -> None:
    """Each validation sample (pixel) counted once, in training and in the final evaluation."""
    for name in ("best.ckpt", "last.ckpt"):
        state = load_checkpoint_file(run / "checkpoints" / name)
        # the epoch's confusion matrix, summed over both ranks inside the LightningModule
        assert int(state["val_confusion"].sum()) == expected, name
    assert _confusion_total(run / "metrics.json") == expected
    model, meta = load_model(run)  # weights.safetensors into a fresh network, strictly
    assert meta["in_channels"] == 3 and not model.training
    saved = yaml.safe_load((run / "config.yaml").read_text())
    assert saved["train"]["strategy"] in ("ddp", "ddp_spawn")
    assert saved["train"]["sync_batchnorm"] is False  # CPUs: PyTorch syncs GPU tensors only
    assert len((run / "history.csv").read_text().splitlines()) == 1 + saved["train"]["epochs"]


@pytest.mark.slow
def test_torchrun_two_processes_one_run_each_pixel_once(tmp_path: Path):
    # 3 validation images (odd): a padded DistributedSampler would count 4
    data = make_pairs(tmp_path / "seg", n=3, splits=True)
    runs = tmp_path / "runs"
    # a folder an earlier api.train of this process announced must not mislead rank 1
    stale = f"{os.getpid()}:{tmp_path / 'stale'}"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "LIANDAN_RUN_DIR": stale}
    command = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc_per_node=2",
        "-m",
        "liandan.cli",
        "train",
        str(data),
        *FAST_SEG,
        "train.accelerator=cpu",
        "--no-plan",
        "--out",
        str(runs),
        "--name",
        "ddp",
    ]
    done = subprocess.run(command, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert [p.name for p in runs.iterdir()] == ["ddp"]  # one folder, announcement removed
    _check_run(runs / "ddp", expected=3 * SIZE * SIZE)
    assert done.stdout.count("run folder:") == 1  # rank 1 trained but did not report


@pytest.mark.slow
def test_ddp_spawn_from_the_api_counts_each_image_once(tmp_path: Path):
    # 3 classes x 3 validation images = 9 (odd): a padded sampler would count 10
    data = make_imagefolder(tmp_path / "cls", n_per_class=3, classes=("a", "b", "c"), splits=True)
    overrides = [
        *FAST_CLS,
        "train.accelerator=cpu",
        "train.devices=2",
        "train.strategy=ddp_spawn",
        "train.num_workers=0",
    ]
    # Spawning pickles the Trainer; this sandbox's kernel refuses some of the memfd
    # storages of torch's default "file_descriptor" sharing, so tensors go by file.
    sharing = torch.multiprocessing.get_sharing_strategy()
    torch.multiprocessing.set_sharing_strategy("file_system")
    try:
        result = api.train(data, overrides=overrides, out=tmp_path / "runs", name="spawn")
    finally:
        torch.multiprocessing.set_sharing_strategy(sharing)
    _check_run(result.run_dir, expected=9)
    assert result.metrics["overall"]["accuracy"] is not None
    assert [p.name for p in (tmp_path / "runs").iterdir()] == ["spawn"]


def test_fewer_validation_samples_than_processes_is_refused_before_training(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
):
    # one validation image for two processes: one rank would skip validation and the
    # other wait for it in the confusion-matrix sum forever
    data = make_pairs(tmp_path / "data", n=6)
    overrides = [
        *FAST_SEG,
        "data.val_fraction=0.1",
        "train.accelerator=cpu",
        "train.devices=2",
        "train.strategy=ddp_spawn",
    ]
    from liandan.cli import main

    rc = main(["train", str(data), *overrides, "--out", str(tmp_path / "runs"), "--no-plan"])
    assert rc == 1
    err = capsys.readouterr().err
    assert "each process needs at least one" in err and "data.val_fraction" in err
    assert "Traceback" not in err
    run = next((tmp_path / "runs").iterdir())
    assert not (run / "checkpoints" / "last.ckpt").exists()


def test_validation_shard_check_counts_processes():
    from liandan.engine.distributed import check_validation_shards
    from liandan.errors import DataError

    two = Config.load(None, ["train.accelerator=cpu", "train.devices=2"])
    with pytest.raises(DataError, match=r"1 sample.*2 training processes"):
        check_validation_shards(two, 1)
    check_validation_shards(two, 2)
    check_validation_shards(Config.load(None, ["train.accelerator=cpu"]), 1)


@pytest.mark.slow
def test_compiled_training_exports_plain_weights(tmp_path: Path):
    """train.compile on CPU: the network runs compiled and its weights load uncompiled."""
    from torch._dynamo.utils import counters

    data = make_imagefolder(tmp_path / "cls")
    counters.clear()
    overrides = [*FAST_CLS, "train.epochs=1", "train.compile=true", "train.accelerator=cpu"]
    result = api.train(data, overrides=overrides, out=tmp_path / "runs")
    assert counters["stats"]["unique_graphs"] > 0  # dynamo traced the network
    state = load_checkpoint_file(result.run_dir / "checkpoints" / "best.ckpt")["state_dict"]
    assert not [k for k in state if "_orig_mod" in k]  # resumable without compile too
    model, _ = load_model(result.run_dir)
    assert model(torch.zeros(1, 3, SIZE, SIZE)).shape == (1, 2)


def test_eval_shard_sampler_splits_without_repeats(monkeypatch: pytest.MonkeyPatch):
    sampler = EvalShardSampler(list(range(5)))
    assert list(sampler) == [0, 1, 2, 3, 4] and len(sampler) == 5  # no process group
    seen = []
    for rank in (0, 1):
        monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
        monkeypatch.setattr(torch.distributed, "get_rank", lambda r=rank: r)
        monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
        seen += list(sampler)
        assert len(sampler) == len(list(sampler))
    assert sorted(seen) == [0, 1, 2, 3, 4]  # 3 + 2: every sample exactly once


def test_rank_and_strategy_come_from_the_launch(monkeypatch: pytest.MonkeyPatch):
    for name in ("RANK", "LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(name, raising=False)
    assert is_first_process()
    monkeypatch.setenv("LOCAL_RANK", "1")  # a process Lightning's ddp launched
    assert not is_first_process()
    monkeypatch.setenv("RANK", "0")  # torchrun's global rank wins over the local one
    assert is_first_process()

    cfg = Config.load(None, ["train.accelerator=cpu", "train.devices=2", "train.batch_size=4"])
    resolve_distributed(cfg)
    assert cfg.train.strategy == "ddp" and cfg.train.sync_batchnorm is False
    single = Config.load(None, ["train.accelerator=cpu", "train.devices=1"])
    resolve_distributed(single)
    assert single.train.strategy == "auto" and single.train.sync_batchnorm is False
    cpu_sync = Config.load(None, ["train.accelerator=cpu", "train.devices=2"])
    cpu_sync.train.sync_batchnorm = True
    with pytest.raises(ConfigError, match=r"train\.sync_batchnorm"):
        resolve_distributed(cpu_sync)


def test_other_ranks_find_the_run_folder_of_their_own_launch(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
):
    import liandan.engine.distributed as distributed
    from liandan.errors import LiandanError
    from liandan.runs import create_run_dir

    for name in ("LOCAL_RANK", "NODE_RANK", "SLURM_PROCID", "SLURM_NTASKS", "LIANDAN_RUN_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setattr(distributed, "FOLLOW_WAIT_S", 0.5)
    out = tmp_path / "runs"
    create_run_dir(out, "r")  # an earlier run took the name: this launch gets r-2

    monkeypatch.setenv("RANK", "0")
    made = distributed.shared_run_dir(out, "r", 1000.0, lambda: create_run_dir(out, "r"))
    assert made.name == "r-2"
    # rank 0 left "its pid:folder" for the processes Lightning launches from it; another
    # launch inheriting that environment (its parent is not rank 0) must not use it
    assert os.environ["LIANDAN_RUN_DIR"] == f"{os.getpid()}:{made}"

    monkeypatch.setenv("RANK", "1")
    never = lambda: pytest.fail("only rank 0 makes a folder")  # noqa: E731
    monkeypatch.setenv("LIANDAN_RUN_DIR", f"{os.getpid()}:{tmp_path / 'stale'}")
    assert distributed.shared_run_dir(out, "r", 1010.0, never) == made
    monkeypatch.setenv("LIANDAN_RUN_DIR", f"{os.getppid()}:{tmp_path / 'launched'}")
    assert distributed.shared_run_dir(out, "r", 1010.0, never) == tmp_path / "launched"
    monkeypatch.delenv("LIANDAN_RUN_DIR")
    with pytest.raises(LiandanError, match="rank 0's run folder"):  # an earlier launch's note
        distributed.shared_run_dir(out, "r", 5000.0, never)
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", "job-2")
    with pytest.raises(LiandanError):  # another launch's note
        distributed.shared_run_dir(out, "r", 1010.0, never)
    monkeypatch.setenv("RANK", "0")
    distributed.release_run_dir(out, "r")
    assert sorted(p.name for p in out.iterdir()) == ["r", "r-2"]
