"""Resume (`liandan train --resume`), Ctrl-C / SIGTERM, and the NaN stop, end to end."""

from __future__ import annotations

import os
import signal
from pathlib import Path

import pytest
import torch

from conftest import FAST_CLS, make_imagefolder
from liandan import api
from liandan.cli import main
from liandan.engine.callbacks import HistoryCallback
from liandan.engine.checkpoint import load_checkpoint_file
from liandan.errors import CheckpointError, TrainingInterrupted, TrainingStopped

# shuffling, flips, noise (augmentation generators), EMA, warmup + cosine schedule
CFG = [
    *FAST_CLS,
    "train.epochs=2",
    "train.seed=3",
    "optim.ema=0.9",
    "augment.vflip=0.5",
    "augment.noise=0.5",
]


def _flatten(prefix: str, value: object) -> dict[str, torch.Tensor]:
    if isinstance(value, torch.Tensor):
        return {prefix: value}
    if isinstance(value, dict):
        out: dict[str, torch.Tensor] = {}
        for key, item in value.items():
            out.update(_flatten(f"{prefix}.{key}", item))
        return out
    return {prefix: torch.tensor(float(value))} if isinstance(value, int | float) else {}


def _weights(run: Path) -> dict[str, torch.Tensor]:
    state = load_checkpoint_file(run / "checkpoints" / "last.ckpt")
    assert any(k.startswith("ema.module.") for k in state["state_dict"])  # the EMA's too
    return {
        **_flatten("model", state["state_dict"]),
        **_flatten("optim", state["optimizer_states"][0]["state"]),
    }


def _signal_after_epoch(monkeypatch: pytest.MonkeyPatch, epoch: int, signum: int) -> None:
    """Send ``signum`` to this process once epoch ``epoch`` has ended (like a Ctrl-C)."""
    original = HistoryCallback.on_train_epoch_end

    def patched(self, trainer, pl_module):  # type: ignore[no-untyped-def]
        original(self, trainer, pl_module)
        if trainer.current_epoch + 1 == epoch:
            os.kill(os.getpid(), signum)

    monkeypatch.setattr(HistoryCallback, "on_train_epoch_end", patched)


def test_interrupted_and_resumed_equals_uninterrupted(tmp_path, monkeypatch):
    """Bitwise: same weights, EMA, optimizer state and history, 1 epoch + resume vs 2."""
    data = make_imagefolder(tmp_path / "cls")
    full = api.train(data, overrides=CFG, out=tmp_path / "runs", name="full")

    with monkeypatch.context() as m:
        _signal_after_epoch(m, 1, signal.SIGINT)
        with pytest.raises(TrainingInterrupted, match="liandan train --resume"):
            api.train(data, overrides=CFG, out=tmp_path / "runs", name="cut")
    cut = tmp_path / "runs" / "cut"
    assert load_checkpoint_file(cut / "checkpoints" / "last.ckpt")["epoch"] == 0
    assert not (cut / "model").exists()

    resumed = api.resume(cut)
    assert resumed.run_dir == cut  # the same run folder, not cut-2
    a, b = _weights(full.run_dir), _weights(cut)
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key  # bitwise on CPU
    rows_a = (full.run_dir / "history.csv").read_text().splitlines()
    rows_b = (cut / "history.csv").read_text().splitlines()
    assert len(rows_a) == len(rows_b) == 3
    strip = [lambda r: r.split(",", 3)[:2] + r.split(",", 3)[3:]]  # time_s differs
    assert [strip[0](r) for r in rows_a] == [strip[0](r) for r in rows_b]
    assert resumed.metrics == full.metrics


@pytest.mark.slow
def test_sigterm_mid_epoch_writes_last_and_cli_exits_130(tmp_path, monkeypatch, capsys):
    data = make_imagefolder(tmp_path / "cls")
    from liandan.engine.task import LiandanTask

    original = LiandanTask.training_step

    def step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        if self.global_step == 1:
            os.kill(os.getpid(), signal.SIGTERM)
        return original(self, batch, batch_idx)

    monkeypatch.setattr(LiandanTask, "training_step", step)
    out = tmp_path / "runs"
    code = main(["train", str(data), *CFG, "train.batch_size=2", "--out", str(out)])
    assert code == 130
    err = capsys.readouterr().err
    assert f"liandan train --resume {out / 'train'}" in err
    state = load_checkpoint_file(out / "train" / "checkpoints" / "last.ckpt")
    assert state["global_step"] == 2  # the running step finished, then it stopped
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # handlers restored

    monkeypatch.setattr(LiandanTask, "training_step", original)
    assert main(["train", "--resume", str(out / "train")]) == 0
    assert (out / "train" / "model" / "weights.safetensors").is_file()
    assert not (out / "train-2").exists()


def test_truncated_last_falls_back_to_last_prev(tmp_path, caplog):
    ckpts = tmp_path / "run" / "checkpoints"
    ckpts.mkdir(parents=True)
    torch.save({"epoch": 4}, ckpts / "last-prev.ckpt")
    torch.save({"epoch": 5, "pad": torch.zeros(5000)}, ckpts / "last.ckpt")
    data = (ckpts / "last.ckpt").read_bytes()
    (ckpts / "last.ckpt").write_bytes(data[: len(data) // 2])
    from liandan.engine.checkpoint import find_resume_checkpoint

    with caplog.at_level("WARNING", logger="liandan"):
        chosen = find_resume_checkpoint(tmp_path / "run")
    assert chosen.name == "last-prev.ckpt"
    assert "last.ckpt cannot be used" in caplog.text and "epoch 4" in caplog.text


def test_nothing_to_resume_is_a_clear_error(tmp_path):
    (tmp_path / "run" / "checkpoints").mkdir(parents=True)
    with pytest.raises(CheckpointError, match="no complete checkpoint"):
        from liandan.engine.checkpoint import find_resume_checkpoint

        find_resume_checkpoint(tmp_path / "run")


@pytest.mark.slow
def test_nan_loss_at_step_k_stops_and_keeps_checkpoints(tmp_path, monkeypatch):
    """A NaN loss at step 3 (epoch 2): exit 1 with a diagnosis; epoch 1's files intact."""
    data = make_imagefolder(tmp_path / "cls")
    from liandan.engine.task import LiandanTask

    original = LiandanTask.training_step

    def step(self, batch, batch_idx):  # type: ignore[no-untyped-def]
        loss = original(self, batch, batch_idx)
        return loss * float("nan") if self.global_step == 2 else loss

    monkeypatch.setattr(LiandanTask, "training_step", step)
    out = tmp_path / "runs"
    overrides = [*FAST_CLS, "train.epochs=3"]
    with pytest.raises(TrainingStopped, match="training loss is nan"):
        api.train(data, overrides=overrides, out=out)
    run = out / "train"
    for name in ("last.ckpt", "best.ckpt"):
        state = load_checkpoint_file(run / "checkpoints" / name)
        assert state["global_step"] == 2 and state["epoch"] == 0
        assert all(
            torch.isfinite(v).all() for v in state["state_dict"].values() if v.is_floating_point()
        )
    assert "nan" in (run / "doctor.json").read_text()
    assert "training loss is nan" in (run / "history.csv").read_text()
    code = main(["train", str(data), *overrides, "--out", str(out)])
    assert code == 1
