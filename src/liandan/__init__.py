"""liandan (炼丹): from labelled images or GeoTIFFs to a trained, evaluated model.

>>> import liandan
>>> result = liandan.train("data/", overrides=["train.epochs=5"])  # doctest: +SKIP
>>> liandan.predict(result.run_dir, ["new.png"], out="predictions")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

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

if TYPE_CHECKING:  # what IDEs and mypy see; at run time __getattr__ imports on first use
    from liandan.api import train as train
    from liandan.comparison import compare as compare
    from liandan.demo_run import demo as demo
    from liandan.evaluation import evaluate as evaluate
    from liandan.exporting import export as export
    from liandan.folds import train_folds as train_folds
    from liandan.planning import plan as plan
    from liandan.prediction import predict as predict
    from liandan.reporting import write_report as report
    from liandan.scan_report import scan as scan
    from liandan.scoring import score as score
    from liandan.tuning import tune as tune

# name -> (module, function). No module of the package is named like a function here:
# importing a submodule sets the package's attribute of its name, which would replace
# the function (tests/test_python_api.py checks it).
_LAZY: dict[str, tuple[str, str]] = {
    "train": ("liandan.api", "train"),
    "train_folds": ("liandan.folds", "train_folds"),
    "compare": ("liandan.comparison", "compare"),
    "evaluate": ("liandan.evaluation", "evaluate"),
    "demo": ("liandan.demo_run", "demo"),
    "predict": ("liandan.prediction", "predict"),
    "export": ("liandan.exporting", "export"),
    "scan": ("liandan.scan_report", "scan"),
    "score": ("liandan.scoring", "score"),
    "plan": ("liandan.planning", "plan"),
    "tune": ("liandan.tuning", "tune"),
    "report": ("liandan.reporting", "write_report"),
}


def __getattr__(name: str) -> Any:
    # Heavy imports (torch, Lightning) are deferred so `liandan --help` stays fast.
    if name not in _LAZY:
        raise AttributeError(f"module 'liandan' has no attribute {name!r}")
    import importlib

    module_name, function = _LAZY[name]
    return getattr(importlib.import_module(module_name), function)
