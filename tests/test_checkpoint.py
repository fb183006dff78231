"""Atomic checkpoints under SIGKILL, safe loading (no pickle code runs), safe YAML/paths."""

from __future__ import annotations

import io
import os
import random
import signal
import time
from pathlib import Path

import pytest
import torch

from conftest import make_csv, make_voc
from liandan.cli import main
from liandan.config import Config
from liandan.engine.checkpoint import (
    WRITE_DELAY_ENV,
    AtomicCheckpointIO,
    clean_temporary,
    load_checkpoint_file,
    previous_path,
    write_atomic,
)
from liandan.errors import CheckpointError, DataError

N = 80_000  # floats: ~320 KB, 5 chunks of the writer


def _payloads(count: int) -> list[bytes]:
    """Serialized checkpoints numbered 1..count (serialized before the fork: a forked
    child must not run torch's thread pools; the file writing is what is under test)."""
    out = []
    for i in range(1, count + 1):
        buffer = io.BytesIO()
        torch.save({"i": i, "w": torch.full((N,), float(i))}, buffer)
        out.append(buffer.getvalue())
    return out


def _writer(folder: Path, payloads: list[bytes]) -> None:
    """Child process: write last (and every third time best) as AtomicCheckpointIO does."""
    for i, data in enumerate(payloads, start=1):
        write_atomic(folder / "last.ckpt", data, keep_previous=True)
        if i % 3 == 0:
            write_atomic(folder / "best.ckpt", data)


def _check(folder: Path) -> int:
    """Every checkpoint present loads completely; return last's number."""
    last = load_checkpoint_file(folder / "last.ckpt")
    assert torch.equal(last["w"], torch.full((N,), float(last["i"])))
    prev = folder / "last-prev.ckpt"
    if prev.exists():
        older = load_checkpoint_file(prev)
        assert last["i"] - older["i"] in (0, 1)
        assert torch.equal(older["w"], torch.full((N,), float(older["i"])))
    best = folder / "best.ckpt"
    if best.exists():  # never a missing or partial file behind the name
        state = load_checkpoint_file(best)
        assert state["i"] % 3 == 0 and torch.equal(
            state["w"], torch.full_like(state["w"], state["i"])
        )
    return int(last["i"])


@pytest.mark.slow
def test_sigkill_during_checkpoint_writes_never_loses_last(tmp_path, monkeypatch):
    """20 SIGKILLs at random moments of a slowed writer: the checkpoints always load."""
    monkeypatch.setenv(WRITE_DELAY_ENV, "0.004")  # 5 chunks: a write lasts ~20 ms
    folder = tmp_path / "checkpoints"
    folder.mkdir()
    AtomicCheckpointIO().save_checkpoint({"i": 0, "w": torch.zeros(N)}, folder / "last.ckpt")
    payloads = _payloads(40)
    rng = random.Random(0)
    inside_writes = 0
    for _ in range(20):
        pid = os.fork()
        if pid == 0:  # pragma: no cover - the child never returns
            try:
                _writer(folder, payloads)
            finally:
                os._exit(0)
        # wait until a write has started (its temporary file exists), then kill at a
        # random moment of it: most kills land inside a write, some just after one
        deadline = time.monotonic() + 5
        while not list(folder.glob(".last.ckpt.*.tmp")) and time.monotonic() < deadline:
            time.sleep(0.0005)
        time.sleep(rng.uniform(0.0, 0.025))
        os.kill(pid, signal.SIGKILL)
        os.waitpid(pid, 0)
        leftovers = list(folder.glob(".*.tmp"))
        inside_writes += bool(leftovers)  # a temporary file exists only inside a write
        _check(folder)
        removed = clean_temporary(folder)  # what the next start does
        assert sorted(removed) == sorted(leftovers)
        assert not list(folder.glob(".*.tmp"))
    print(f"{inside_writes} of 20 kills landed inside a write")
    assert inside_writes >= 10, f"only {inside_writes} of 20 kills landed inside a write"


def test_atomic_write_keeps_previous_last(tmp_path):
    io = AtomicCheckpointIO()
    io.save_checkpoint({"i": 1}, tmp_path / "last.ckpt")
    assert not previous_path(tmp_path / "last.ckpt").exists()
    io.save_checkpoint({"i": 2}, tmp_path / "last.ckpt")
    assert load_checkpoint_file(tmp_path / "last-prev.ckpt")["i"] == 1
    assert io.load_checkpoint(tmp_path / "last.ckpt")["i"] == 2
    io.save_checkpoint({"i": 3}, tmp_path / "best.ckpt")
    assert not (tmp_path / "best-prev.ckpt").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [
        "best.ckpt",
        "last-prev.ckpt",
        "last.ckpt",
    ]


class Evil:
    """Unpickling this object touches a marker file: it must never happen by default."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (Path.touch, (self.marker,))


def _malicious_run(tmp_path: Path) -> tuple[Path, Path]:
    run = tmp_path / "runs" / "train"
    (run / "checkpoints").mkdir(parents=True)
    Config().save(run / "config.yaml")
    marker = tmp_path / "pwned"
    torch.save({"state_dict": {}, "payload": Evil(marker)}, run / "checkpoints" / "last.ckpt")
    return run, marker


def test_malicious_pickle_is_refused_and_never_runs(tmp_path, capsys):
    run, marker = _malicious_run(tmp_path)
    with pytest.raises(CheckpointError, match="--unsafe-load") as info:
        load_checkpoint_file(run / "checkpoints" / "last.ckpt")
    assert "last.ckpt" in str(info.value)
    assert main(["train", "--resume", str(run)]) == 1
    err = capsys.readouterr().err
    assert "--unsafe-load" in err and "unpickling" in err
    assert not marker.exists()


def test_unsafe_load_is_an_explicit_opt_in(tmp_path):
    run, marker = _malicious_run(tmp_path)
    load_checkpoint_file(run / "checkpoints" / "last.ckpt", unsafe=True)
    assert marker.exists()  # the opt-in really unpickles: only for trusted files


def test_python_tag_in_run_config_is_rejected(tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    marker = tmp_path / "pwned"
    (run / "config.yaml").write_text(f"task: !!python/object/apply:os.system ['touch {marker}']\n")
    assert main(["train", "--resume", str(run)]) == 1
    err = capsys.readouterr().err
    assert "config.yaml" in err and "YAML" in err
    assert not marker.exists()


def test_csv_symlink_escaping_the_dataset_is_rejected(tmp_path):
    root = make_csv(tmp_path / "ds")
    outside = tmp_path / "secret.png"
    outside.write_bytes((root / "pics" / "a0.png").read_bytes())
    (root / "pics" / "a0.png").unlink()
    (root / "pics" / "a0.png").symlink_to(outside)
    from liandan.data.layouts import find_samples

    with pytest.raises(DataError, match="outside the dataset"):
        find_samples(root, "csv", None, None)


def test_voc_symlink_escaping_the_dataset_is_rejected(tmp_path):
    root = make_voc(tmp_path / "voc")
    target = root / "JPEGImages" / "2007_000000.jpg"
    outside = tmp_path / "elsewhere.jpg"
    outside.write_bytes(target.read_bytes())
    target.unlink()
    target.symlink_to(outside)
    from liandan.data.layouts import find_samples

    with pytest.raises(DataError, match="outside the dataset"):
        find_samples(root, "voc", None, None)
