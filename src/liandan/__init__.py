"""liandan (炼丹): from labelled images or GeoTIFFs to a trained, evaluated model.

>>> import liandan
>>> result = liandan.train("data/", overrides=["train.epochs=5"])  # doctest: +SKIP
>>> liandan.predict(result.run_dir, ["new.png"], out="predictions")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import Any

__version__ = "0.1.0"

__all__ = [
    "CheckpointError",
    "Config",
    "ConfigError",
    "DataError",
    "LiandanError",
    "demo",
    "evaluate",
    "predict",
    "score",
    "train",
]

from liandan.config import Config
from liandan.errors import CheckpointError, ConfigError, DataError, LiandanError


def __getattr__(name: str) -> Any:
    # Heavy imports (torch, Lightning) are deferred so `liandan --help` stays fast.
    if name in ("train", "evaluate", "demo"):
        from liandan import api

        return getattr(api, name)
    if name == "predict":
        from liandan.predict import predict

        return predict
    if name == "score":
        from liandan.score import score

        return score
    raise AttributeError(f"module 'liandan' has no attribute {name!r}")
