"""One atomic writer for run files, outputs and checkpoints, with the umask's mode."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from liandan.atomic import atomic_write_json, current_umask, write_atomic
from liandan.config import Config
from liandan.engine import checkpoint
from liandan.runs import atomic_write_text


@pytest.fixture(params=[0o022, 0o027, 0o077])
def umask(request: pytest.FixtureRequest) -> Iterator[int]:
    old = os.umask(request.param)
    try:
        yield request.param
    finally:
        os.umask(old)


def mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_every_writer_gives_the_mode_of_a_plain_open(tmp_path: Path, umask: int) -> None:
    expected = 0o666 & ~umask
    with open(tmp_path / "plain", "w") as fh:  # what the user's own tools would make
        fh.write("x")
    assert mode(tmp_path / "plain") == expected
    atomic_write_json(tmp_path / "metrics.json", {"a": 1})
    atomic_write_text(tmp_path / "history.csv", "epoch\n")
    Config().save(tmp_path / "config.yaml")
    checkpoint.write_atomic(tmp_path / "last.ckpt", b"0" * 10, keep_previous=True)
    checkpoint.write_atomic(tmp_path / "last.ckpt", b"1" * 10, keep_previous=True)
    for name in ("metrics.json", "history.csv", "config.yaml", "last.ckpt", "last-prev.ckpt"):
        assert mode(tmp_path / name) == expected, name
    assert not list(tmp_path.glob(".*.tmp"))  # no temporary file left behind


def test_the_umask_is_read_without_changing_it(umask: int) -> None:
    assert current_umask() == umask
    assert current_umask() == umask


def test_checkpoints_and_run_files_share_the_one_writer() -> None:
    assert checkpoint.write_atomic is write_atomic


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path: Path) -> None:
    target = tmp_path / "model.json"
    atomic_write_text(target, "old")

    class Boom(bytes):
        def __len__(self) -> int:
            raise OSError("disk full")

    with pytest.raises(OSError):
        write_atomic(target, Boom(b"new"))
    assert target.read_text() == "old"
    assert not list(tmp_path.glob(".*.tmp"))


def test_reading_a_config_does_not_import_the_run_folder_code() -> None:
    code = "import sys, liandan.config; print('liandan.runs' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
