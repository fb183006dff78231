"""How ``predict`` runs: its settings from the run's config, precision, georeferencing checks.

``liandan predict`` reads the run's ``model/`` bundle for the model, and the
``predict`` section of the run's ``config.yaml`` for how to predict (``tile``,
``overlap``, ``blend``, ``tta``, ``batch_size``, ``precision``, and for detection
``score_threshold`` and ``nms_iou``): those are the defaults,
and an argument given to :func:`~liandan.prediction.predict` (a flag of ``liandan
predict``) wins. A model folder without a ``config.yaml`` beside it (an export) uses
the built-in defaults, and ``model.json``'s tile size.
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import ValidationError

from liandan.errors import ConfigError

log = logging.getLogger("liandan")

PRECISIONS = ("auto", "32", "bf16", "16")
PREDICT_KEYS = (
    "tile",
    "overlap",
    "blend",
    "tta",
    "batch_size",
    "precision",
    "score_threshold",
    "nms_iou",
)


def run_predict_section(run: str | Path) -> tuple[dict[str, Any], Path | None]:
    """The ``predict`` section of a run's ``config.yaml`` (``{}`` and None without one).

    ``run`` is a run folder or its ``model/`` folder. Only this section is read, so a
    config written by another liandan version does not stop a prediction.
    """
    from liandan.config import read_yaml

    run = Path(run)
    for folder in (run, run.parent) if run.name == "model" else (run,):
        path = folder / "config.yaml"
        if path.is_file():
            section = read_yaml(path).get("predict") or {}
            if not isinstance(section, dict):
                raise ConfigError("predict: must be a mapping", where=path)
            return {k: v for k, v in section.items() if k in PREDICT_KEYS}, path
    return {}, None


def predict_settings(run: str | Path, **given: Any) -> dict[str, Any]:
    """Predictor keyword arguments: the run's ``predict`` section, then ``given`` (not None).

    Every value is checked against the config schema (``predict.<key>``).

    >>> predict_settings("runs/train", tta=True)  # doctest: +SKIP
    {'tile': 512, 'overlap': 0.25, 'blend': 'gaussian', 'tta': True, 'batch_size': 8, ...}
    """
    from liandan.config import PredictConfig

    unknown = sorted(set(given) - set(PREDICT_KEYS))
    if unknown:
        raise TypeError(f"unknown predict setting(s) {unknown}")
    section, path = run_predict_section(run)
    chosen = {k: v for k, v in given.items() if v is not None}
    merged = {**section, **chosen}
    try:
        settings = PredictConfig.model_validate(merged).model_dump()
    except ValidationError as exc:
        items = []
        for err in exc.errors():
            key = ".".join(str(p) for p in err["loc"])
            source = "argument" if key in chosen else str(path)
            items.append(f"predict.{key}: {err['msg']} (got {err.get('input')!r}, from {source})")
        raise ConfigError(
            "invalid predict setting(s)", items=items, hint="see docs/config.md, section predict"
        ) from None
    if "tile" not in merged:
        settings["tile"] = None  # model.json's tile size
    return dict(settings)


def dtype_family(dtype: str) -> str:
    """What predict compares with training: float, or the integer bit depth."""
    dt = np.dtype(dtype)
    return "floating point" if dt.kind == "f" else f"{dt.itemsize * 8}-bit integer"


def inference_dtype(
    precision: str, device: torch.device, exported: bool = False
) -> torch.dtype | None:
    """The autocast dtype prediction runs under, or None for float32.

    ``auto``: bf16 on a GPU that supports it, else fp16 there (inference has no
    gradients to underflow, so no loss scaling is needed); float32 on the CPU, whose
    bf16 kernels are slower than float32 ones on most processors. An export always runs
    as exported (ONNX Runtime and TorchScript graphs carry their own types).
    """
    if precision not in PRECISIONS:
        raise ConfigError(
            f"unknown precision {precision!r}",
            where="predict.precision",
            hint=" | ".join(PRECISIONS),
        )
    if exported or precision == "32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "16" and device.type != "cuda":
        raise ConfigError(
            "fp16 prediction needs a GPU", where="predict.precision", hint="bf16 or 32 on the CPU"
        )
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if precision == "bf16" else torch.float16


def check_georeferencing(src: Any, meta: dict[str, Any], path: Path) -> None:
    """Warn when a raster's scale cannot match training's, or cannot be checked.

    A model trained on georeferenced rasters records their pixel size; a raster of
    another pixel size (beyond 2x) shows objects at another scale, and a raster without
    a CRS cannot be checked at all (its output has no CRS either).
    """
    size = meta.get("pixel_size")
    if not size:
        return
    if src.crs is None:
        log.warning(
            "%s has no CRS, but the model was trained on georeferenced rasters (pixel "
            "size %.4g): its scale cannot be checked, and the output has no CRS either",
            path,
            float(size[0]),
        )
        return
    ratio = abs(src.transform.a) / float(size[0])
    if ratio > 2 or ratio < 0.5:
        log.warning(
            "%s: pixel size %.4g differs from training (%.4g) by %.1fx; the model "
            "sees objects at another scale",
            path,
            abs(src.transform.a),
            float(size[0]),
            max(ratio, 1 / ratio),
        )
