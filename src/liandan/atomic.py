"""The one atomic writer: every run file, output and checkpoint goes through it.

A file is written to a temporary file in the same folder, fsynced, given the mode a
plain ``open(path, "w")`` would give it (``0o666`` less the process's umask; the
temporary file starts at 0600), renamed over ``path`` (atomic on POSIX filesystems),
and the folder entry is fsynced. A reader sees the old complete file or the new
complete one, never a part. With ``keep_previous`` the file being replaced is kept as
``<stem>-prev<suffix>`` until the new one is in place (checkpoints).

Standard library only, so that any module (the config too) can use it without
import cycles.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from pathlib import Path
from typing import Any

TMP_SUFFIX = ".tmp"
CHUNK = 1 << 16  # bytes written between fsync-free chunks (and test delays)
# Test-only: seconds to sleep between chunks, so a test can kill a process mid-write.
WRITE_DELAY_ENV = "LIANDAN_TEST_CKPT_WRITE_DELAY"


def current_umask() -> int:
    """The process's umask, read without changing it where Linux allows."""
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except (OSError, ValueError):
        pass
    mask = os.umask(0)  # elsewhere: set and restore (not thread-safe, but brief)
    os.umask(mask)
    return mask


def fsync_dir(folder: Path) -> None:
    """Make a rename durable: fsync the folder entry (no-op where unsupported)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def previous_path(path: Path) -> Path:
    """``last.ckpt`` -> ``last-prev.ckpt``: where the previous version is kept."""
    return path.with_name(f"{path.stem}-prev{path.suffix}")


def write_atomic(path: Path, data: bytes, *, keep_previous: bool = False) -> None:
    """Write ``data`` to ``path`` through a temporary file, fsync and rename.

    With ``keep_previous``, an existing ``path`` is first hard-linked (or copied) to
    ``<stem>-prev<suffix>`` so that the previous version survives until the new one is
    complete and renamed into place.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    delay = float(os.environ.get(WRITE_DELAY_ENV, "0") or 0)
    fd, tmp_name = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=TMP_SUFFIX)
    tmp = Path(tmp_name)
    try:
        with os.fdopen(fd, "wb") as fh:
            for start in range(0, len(data), CHUNK):
                fh.write(data[start : start + CHUNK])
                if delay:
                    fh.flush()
                    time.sleep(delay)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes 0600
        if keep_previous and path.is_file():
            prev = previous_path(path)
            fd2, link_name = tempfile.mkstemp(
                dir=path.parent, prefix=f".{prev.name}.", suffix=TMP_SUFFIX
            )
            os.close(fd2)
            link = Path(link_name)
            link.unlink()
            try:
                os.link(path, link)  # same inode: no copy, complete by construction
            except OSError:  # filesystems without hard links: copy, then fsync
                link.write_bytes(path.read_bytes())
            os.replace(link, prev)
        os.replace(tmp, path)
        fsync_dir(path.parent)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """:func:`write_atomic` without keeping the previous version."""
    write_atomic(path, data)


def atomic_write_text(path: Path, text: str) -> None:
    write_atomic(path, text.encode("utf-8"))


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")
