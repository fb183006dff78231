"""The user's folders around a liandan command: hashed before and after, nothing changed.

``guarded(main)`` wraps the CLI entry point: every existing path the command reads (DATA,
predict's inputs, score's PRED and TRUTH, --config, --init-from) is hashed file by file
before the command and compared after it; a changed, added or removed file fails the
test that ran the command. The RUN folder of evaluate/predict/report/export and the
folders given to --out, -o and --resume are outputs and are not guarded.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path

OUTPUT_OPTIONS = {"--out", "-o", "--output", "--resume", "--name", "--storage"}
RUN_FIRST = {"evaluate", "predict", "report", "export"}  # their first argument is the run


def snapshot(path: Path) -> dict[str, str]:
    """``{relative path: sha256}`` of a file or of every file and folder under a folder."""
    if path.is_file():
        return {".": hashlib.sha256(path.read_bytes()).hexdigest()}
    found = {}
    for p in sorted(path.rglob("*")):
        rel = p.relative_to(path).as_posix()
        found[rel] = hashlib.sha256(p.read_bytes()).hexdigest() if p.is_file() else "folder"
    return found


def input_paths(argv: list[str]) -> list[Path]:
    """The existing paths a CLI command reads (see the module docstring)."""
    args = [a for a in argv if a != "--debug"]
    if not args:
        return []
    command, rest = args[0], args[1:]
    paths: list[Path] = []
    skip_run = command in RUN_FIRST
    i = 0
    while i < len(rest):
        arg = rest[i]
        if arg in OUTPUT_OPTIONS:
            i += 2
            continue
        if not arg.startswith("-") and skip_run:
            skip_run = False
        elif "=" not in arg and Path(arg).exists():
            paths.append(Path(arg))
        i += 1
    return paths


def changes(before: dict[str, str], after: dict[str, str]) -> list[str]:
    """What differs between two snapshots, in words."""
    found = [f"added {k}" for k in sorted(after.keys() - before.keys())]
    found += [f"removed {k}" for k in sorted(before.keys() - after.keys())]
    found += [f"changed {k}" for k in sorted(before.keys() & after.keys()) if before[k] != after[k]]
    return found


def guarded(main: Callable[[list[str]], int]) -> Callable[[list[str]], int]:
    """``main`` that fails when a command changed, added or removed a file of its inputs."""

    def run(argv: list[str]) -> int:
        inputs = input_paths(argv)
        before = [snapshot(p) for p in inputs]
        code = main(argv)
        for path, old in zip(inputs, before, strict=True):
            diff = changes(old, snapshot(path)) if path.exists() else ["removed the whole path"]
            assert not diff, f"`liandan {' '.join(argv)}` modified its input {path}: {diff}"
        return code

    return run
