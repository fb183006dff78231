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


@dataclass
class DemoResult(RunResult):
    """A demo run plus where its scene prediction went and how it scored."""

    predictions: Path | None = None
    scene_metrics: dict[str, Any] | None = None


# The demo's settings: small enough for 2 CPU cores, measured in the README.
DEMO_OVERRIDES = {
    "segment": [
        "model.arch=unet",
        "model.encoder=resnet18",
        "data.image_size=128",
        "train.epochs=30",  # mIoU swings for ~10 epochs (BatchNorm, 6 steps/epoch)
        "train.batch_size=8",
        "optim.lr=1e-3",
        "augment.vflip=0.5",
        "augment.rotate90=0.5",
    ],
    "classify": [
        "model.arch=lenet",
        "data.image_size=32",
        "train.epochs=15",
        "train.batch_size=32",
        "optim.lr=3e-3",
        "augment.hflip=0.0",  # digits are not mirror-symmetric
    ],
}


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
    Classification: scikit-learn's bundled handwritten digits.

    >>> liandan.demo().metrics["overall"]["mean_iou"]  # doctest: +SKIP
    0.8
    """
    from liandan.data.demo import make_classify_demo, make_segment_demo
    from liandan.prediction import predict
    from liandan.scoring import score

    if task not in DEMO_OVERRIDES:
        raise ConfigError(f"unknown demo task {task!r}", where="--task", hint="segment or classify")
    start = time.perf_counter()
    run_dir = create_run_dir(out, name)
    data_dir = run_dir / "data"
    if task == "segment":
        make_segment_demo(data_dir)
    else:
        make_classify_demo(data_dir)
    cfg = Config.load(None, DEMO_OVERRIDES[task] + list(overrides or []))
    cfg.data.root = data_dir.resolve()
    bundle = build_data(cfg)
    result = train_into(cfg, bundle, run_dir)
    demo_result = DemoResult(**vars(result))
    scene = data_dir / "scene" / "scene.tif"
    if task == "segment" and scene.is_file():
        pred_dir = run_dir / "predictions"
        predict(run_dir, [scene], out=pred_dir)
        truth = data_dir / "scene" / "scene_mask.tif"
        demo_result.predictions = pred_dir
        if truth.is_file():
            demo_result.scene_metrics = score(pred_dir / "scene.tif", truth)
    demo_result.duration_s = time.perf_counter() - start
    return demo_result
