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
    "compare",
    "demo",
    "evaluate",
    "export",
    "plan",
    "predict",
    "report",
    "scan",
    "score",
    "train",
    "train_folds",
    "tune",
]

from liandan.config import Config
from liandan.errors import CheckpointError, ConfigError, DataError, LiandanError

# name -> (module, attribute); None: the module itself, which is callable as its
# function (liandan.callable_module explains why)
_LAZY: dict[str, tuple[str, str | None]] = {
    "train": ("liandan.api", "train"),
    "train_folds": ("liandan.folds", "train_folds"),
    "compare": ("liandan.comparison", "compare"),
    "evaluate": ("liandan.evaluation", "evaluate"),
    "demo": ("liandan.demo_run", "demo"),
    "predict": ("liandan.predict", "predict"),
    "export": ("liandan.export", "export"),
    "scan": ("liandan.scan_report", "scan"),
    "score": ("liandan.score", "score"),
    "plan": ("liandan.plan", None),
    "tune": ("liandan.tune", None),
    "report": ("liandan.report", None),
}


def __getattr__(name: str) -> Any:
    # Heavy imports (torch, Lightning) are deferred so `liandan --help` stays fast.
    if name not in _LAZY:
        raise AttributeError(f"module 'liandan' has no attribute {name!r}")
    import importlib

    module_name, attribute = _LAZY[name]
    module = importlib.import_module(module_name)
    return module if attribute is None else getattr(module, attribute)
