"""The run directory: create (never overwrite), write files atomically, load a model.

A run folder holds everything predict needs in ``model/``: ``weights.safetensors``
(no pickle) and ``model.json`` (task, classes, values, colours, bands, normalization,
sizes, architecture). Predict never reads the training config.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch

from liandan.errors import CheckpointError

MODEL_FORMAT_VERSION = 1


def atomic_write_bytes(path: Path, data: bytes) -> None:
    """Write to a temporary file in the same folder, fsync, then rename over ``path``."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def atomic_write_text(path: Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_json(path: Path, data: Any) -> None:
    atomic_write_text(path, json.dumps(data, indent=2, allow_nan=False) + "\n")


def create_run_dir(out: str | Path, name: str) -> Path:
    """``out/name``, or ``out/name-2``, ``-3`` ... : an existing run is never overwritten."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    candidate = out / name
    n = 1
    while True:
        try:
            candidate.mkdir()
            return candidate
        except FileExistsError:
            n += 1
            candidate = out / f"{name}-{n}"


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
        from liandan.export import load_export

        return load_export(folder, meta), meta

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
