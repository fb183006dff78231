"""The run directory: create (never overwrite), write files atomically, load a model.

A run folder holds everything predict needs in ``model/``: ``weights.safetensors``
(no pickle) and ``model.json`` (task, classes, values, colours, bands, normalization,
sizes, architecture). Predict never reads the training config.

Outputs never replace a file liandan did not write: every folder liandan writes
outputs into (predict's, export's, score's) lists them in ``.liandan-outputs.json``,
and only the files listed there may be replaced by a later command (docs/outputs.md).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch

# run files are written by the one atomic writer, re-exported here for its callers
from liandan.atomic import atomic_write_bytes as atomic_write_bytes
from liandan.atomic import atomic_write_json as atomic_write_json
from liandan.atomic import atomic_write_text as atomic_write_text
from liandan.errors import CheckpointError, OutputError

MODEL_FORMAT_VERSION = 1
OUTPUTS_MANIFEST = ".liandan-outputs.json"  # the files liandan wrote into an output folder


def check_run_name(name: str, where: str = "--name") -> str:
    """A run name is one folder name inside ``--out``: no path separator, not ``..``."""
    seps = {"/", "\\", os.sep, os.altsep or "/"}
    if not name.strip() or name in (".", "..") or "\0" in name or any(c in name for c in seps):
        raise OutputError(
            f"{name!r} is not a run name: a run name is a single folder name",
            where=where,
            hint="give a name such as unet-r34, and the parent folder with --out",
        )
    return name


def check_out(path: str | Path, name: str | None = None, where: str = "--out") -> Path:
    """Say at once (before any work) why ``path`` cannot be an output folder: it or one of
    its parents is a file, the nearest existing folder is not writable, or the run
    ``name`` to make in it is not one folder name."""
    if name is not None:
        check_run_name(name)
    path = Path(path)
    for p in (path, *path.parents):
        if not p.exists():
            continue
        if not p.is_dir():
            what = "it is a file" if p == path else f"{p} is a file"
            raise OutputError(
                f"{where} must be a folder, but {what}",
                where=path,
                hint=f"give {where} a folder (it is created when missing)",
            )
        if not os.access(p, os.W_OK | os.X_OK):
            raise OutputError(
                f"cannot write in {p}: permission denied",
                where=path,
                hint=f"give {where} a folder you can write to",
            )
        break
    return path


def make_dir(path: str | Path, where: str = "--out") -> Path:
    """Create the output folder ``path`` (and its parents), or say why it cannot be."""
    path = check_out(path, where=where)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        check_out(path, where=where)  # a file appeared meanwhile: say so
        raise OutputError(
            f"cannot create the folder ({exc.strerror or exc})",
            where=path,
            hint=f"give {where} a folder you can write to",
        ) from None
    return path


def create_run_dir(out: str | Path, name: str) -> Path:
    """``out/name``, or ``out/name-2``, ``-3`` ... : an existing run is never overwritten."""
    check_run_name(name)
    out = make_dir(out)
    candidate = out / name
    n = 1
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            n += 1
            candidate = out / f"{name}-{n}"
        except OSError as exc:
            raise OutputError(
                f"cannot create the run folder ({exc.strerror or exc})", where=candidate
            ) from None


def _written_before(folder: Path) -> set[str]:
    try:
        files = json.loads((folder / OUTPUTS_MANIFEST).read_text(encoding="utf-8"))["files"]
    except (OSError, ValueError, KeyError, TypeError):
        return set()
    return {f for f in files if isinstance(f, str)}


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino


def claim_outputs(
    folder: Path,
    targets: Sequence[Path],
    *,
    sources: Sequence[Path] | None = None,
    inputs: Iterable[Path] = (),
    where: str = "--out",
) -> None:
    """Check that writing ``targets`` (files in ``folder``) replaces nothing of the user's,
    then list them in the folder's ``.liandan-outputs.json`` as liandan's own.

    Refused, every case named in one error: a target that is one of ``inputs`` (the same
    file, through links too), an existing target that liandan did not write there, and
    two targets of one call that share a path (``sources[i]`` made ``targets[i]``).
    """
    owned = _written_before(folder)
    protected = {i for i in map(_identity, inputs) if i is not None}
    problems: list[str] = []
    made_by: dict[Path, Path | None] = {}
    for i, target in enumerate(targets):
        source = sources[i] if sources is not None else None
        if target in made_by:
            first = made_by[target]
            if first != source:
                problems.append(f"{target}: would be written for both {first} and {source}")
            continue
        made_by[target] = source
        rel = target.relative_to(folder).as_posix()
        if _identity(target) is not None and _identity(target) in protected:
            problems.append(f"{target}: is an input; writing the output would replace it")
        elif (target.exists() or target.is_symlink()) and rel not in owned:
            problems.append(f"{target}: exists and liandan did not write it")
    if problems:
        raise OutputError(
            f"{len(problems)} output(s) would replace files or each other; nothing was written",
            where=f"{where} {folder}",
            items=problems,
            hint=f"choose another {where} (a new or empty folder), or rename the inputs or move "
            "those files away: liandan only replaces files it wrote",
        )
    rels = {t.relative_to(folder).as_posix() for t in made_by}
    if not rels <= owned:
        note = "files written here by liandan: a later liandan command may replace only these"
        atomic_write_json(folder / OUTPUTS_MANIFEST, {"note": note, "files": sorted(owned | rels)})


@contextlib.contextmanager
def output_files(
    folder: str | Path,
    targets: Sequence[Path] = (),
    *,
    sources: Sequence[Path] | None = None,
    inputs: Iterable[Path] = (),
    where: str = "--out",
) -> Iterator[Path]:
    """Create ``folder`` and claim ``targets`` in it (:func:`claim_outputs`); a folder
    this created is removed again if the body fails before writing any output."""
    folder = Path(folder)
    created = not folder.exists()
    make_dir(folder, where)
    try:
        claim_outputs(folder, targets, sources=sources, inputs=inputs, where=where)
        yield folder
    except BaseException:
        if created and {p.name for p in folder.iterdir()} <= {OUTPUTS_MANIFEST}:
            (folder / OUTPUTS_MANIFEST).unlink(missing_ok=True)
            folder.rmdir()
        raise


def save_model_bundle(run_dir: Path, state_dict: dict[str, torch.Tensor], meta: dict) -> Path:
    """Write ``model/weights.safetensors`` and ``model/model.json``."""
    from safetensors.torch import save

    folder = run_dir / "model"
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items()}
    atomic_write_bytes(folder / "weights.safetensors", save(tensors))
    atomic_write_json(folder / "model.json", {"format_version": MODEL_FORMAT_VERSION, **meta})
    return folder


REQUIRED_META = ("task", "classes", "in_channels", "normalization", "arch")


def read_model_json(run: str | Path) -> tuple[Path, dict[str, Any]]:
    """Find and validate ``model.json`` in a run folder (or its ``model/`` folder)."""
    run = Path(run)
    if not run.exists():
        raise CheckpointError("run folder not found", where=run, hint="check the path")
    folder = run / "model" if (run / "model").is_dir() else run
    path = folder / "model.json"
    if not path.is_file():
        raise CheckpointError(
            "no model/model.json in this folder: not a finished liandan run",
            where=run,
            hint="give a run folder such as runs/train (training writes model/ at its end)",
        )
    try:
        meta = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"model.json is not valid JSON ({exc})", where=path) from None
    missing = [k for k in REQUIRED_META if k not in meta]
    if missing:
        raise CheckpointError(f"model.json lacks the key(s) {missing}", where=path)
    if meta.get("format_version", 0) > MODEL_FORMAT_VERSION:
        raise CheckpointError(
            f"model.json format {meta['format_version']} is newer than this liandan reads",
            where=path,
            hint="upgrade liandan",
        )
    return folder, meta


def load_model(run: str | Path) -> tuple[torch.nn.Module, dict[str, Any]]:
    """Rebuild the network of a run and load its weights (safetensors, never pickle).

    An export folder (model.onnx or model.pt beside model.json) loads its exported
    network instead, without importing Lightning, timm or segmentation_models_pytorch.
    """
    folder, meta = read_model_json(run)
    if "export" in meta:
        from liandan.exporting import load_export

        return load_export(folder, meta), meta
    if "ensemble" in meta:  # a k-fold run: its folds' networks, probabilities averaged
        from liandan.ensemble import load_ensemble

        return load_ensemble(folder, meta), meta

    from safetensors.torch import load_file

    from liandan.config import ModelConfig
    from liandan.models import build_model

    weights = folder / "weights.safetensors"
    if not weights.is_file():
        raise CheckpointError("weights.safetensors is missing", where=folder)
    model_cfg = ModelConfig.model_validate(meta.get("model", {"arch": meta["arch"]}))
    model_cfg = model_cfg.model_copy(update={"weights": "none"})
    model = build_model(
        model_cfg,
        task=meta["task"],
        num_classes=len(meta["classes"]),
        in_channels=int(meta["in_channels"]),
        image_size=meta.get("image_size"),
    )
    try:
        state = load_file(str(weights))
        model.load_state_dict(state)
    except Exception as exc:
        raise CheckpointError(
            f"cannot load the weights ({type(exc).__name__}: {str(exc)[:300]})",
            where=weights,
            hint="the file is damaged or belongs to another model; retrain or re-export",
        ) from None
    model.eval()
    return model, meta
