"""``liandan demo``: build the embedded demo dataset, train, evaluate and predict.

The datasets themselves are made by :mod:`liandan.data.demo`.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from liandan.api import RunResult, train_into
from liandan.config import Config
from liandan.data.datamodule import build_data
from liandan.errors import ConfigError
from liandan.runs import create_run_dir
from liandan.tasks import get_task


@dataclass
class DemoResult(RunResult):
    """A demo run plus where its scene prediction went and how it scored."""

    predictions: Path | None = None
    scene_metrics: dict[str, Any] | None = None

    @property
    def scene_summary(self) -> str | None:
        """The scene's headline against its truth, in words: mean IoU (segmentation),
        mAP@.5 (detection); None without scene metrics."""
        overall = (self.scene_metrics or {}).get("overall") or {}
        if "mean_iou" in overall:
            return f"mean IoU vs truth {overall['mean_iou']:.3f}"
        if "map50" in overall:
            value = overall["map50"]
            shown = "undefined (no truth box)" if value is None else f"{value:.3f}"
            return f"mAP@.5 vs truth boxes {shown}"
        return None


def demo(
    task: str = "segment",
    *,
    out: str | Path = "runs",
    overrides: list[str] | None = None,
    name: str = "demo",
) -> DemoResult:
    """Build the embedded demo dataset, train, evaluate and predict: no download.

    Segmentation: mosaics of scikit-image's bundled texture photographs (grass,
    gravel, brick), with a georeferenced GeoTIFF scene predicted at the end.
    Classification: scikit-learn's bundled handwritten digits. Detection: shapes on
    the same textures, with a georeferenced scene predicted sliced (GeoPackage of boxes)
    and scored (mAP@.5) at the end.

    >>> liandan.demo().metrics["overall"]["mean_iou"]  # doctest: +SKIP
    0.8
    """
    try:
        spec = get_task(task)
    except ConfigError as exc:
        raise ConfigError(f"unknown demo task {task!r}", where="--task", hint=exc.hint) from None
    start = time.perf_counter()
    run_dir = create_run_dir(out, name)
    data_dir = run_dir / "data"
    spec.make_demo(data_dir)
    cfg = Config.load(None, [*spec.demo_settings, *(overrides or [])])
    cfg.data.root = data_dir.resolve()
    bundle = build_data(cfg)
    result = train_into(cfg, bundle, run_dir)
    demo_result = DemoResult(**vars(result))
    # a georeferenced scene to predict and score, where the task's demo has one
    demo_result.predictions, demo_result.scene_metrics = spec.finish_demo(run_dir, data_dir)
    demo_result.duration_s = time.perf_counter() - start
    return demo_result
