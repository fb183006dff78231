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
    "export",
    "plan",
    "predict",
    "report",
    "scan",
    "score",
    "train",
    "tune",
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
    if name == "export":
        from liandan.export import export

        return export
    if name == "scan":
        from liandan.scan_report import scan

        return scan
    if name in ("plan", "tune"):  # callable modules: liandan.plan(DATA), liandan.tune(DATA)
        import importlib

        return importlib.import_module(f"liandan.{name}")
    if name == "score":
        from liandan.score import score

        return score
    if name == "report":  # the package is callable: liandan.report(run) builds report.html
        import liandan.report

        return liandan.report
    raise AttributeError(f"module 'liandan' has no attribute {name!r}")
