"""Scoring a trained run: ``liandan evaluate`` and the evaluation that ends every training.

The run's exported model is applied to a split of its dataset (or of another one) and
scored into ``metrics.json`` / ``metrics_<split>.json``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from liandan.config import Config, check_overrides
from liandan.data.datamodule import DataBundle
from liandan.errors import CheckpointError
from liandan.reporting.samples import SampleResults
from liandan.runs import atomic_write_json, read_model_json
from liandan.tasks import get_task


def run_config(run: Path, overrides: list[str] | None = None) -> Config:
    """A run folder's resolved ``config.yaml`` (with ``key=value`` overrides applied)."""
    path = run / "config.yaml"
    if not path.is_file():
        raise CheckpointError("config.yaml is missing from the run", where=run)
    return Config.load(path, overrides)


def evaluate(
    run: str | Path,
    data: str | Path | None = None,
    *,
    split: str = "val",
    write: bool = True,
    overrides: list[str] | None = None,
    _bundle: DataBundle | None = None,
) -> dict[str, Any]:
    """Score a run's model on a split of its dataset (or of another dataset).

    Writes ``metrics.json`` for the validation split and ``metrics_<split>.json``
    otherwise, never replacing another split's file. ``overrides`` are ``predict.*``
    ``key=value`` strings applied over the run's predict settings (e.g.
    ``predict.tta=true``), as ``liandan evaluate RUN predict.tta=true`` gives them.

    >>> liandan.evaluate("runs/train", split="test")["overall"]["accuracy"]  # doctest: +SKIP
    0.93
    """
    return evaluate_with_samples(
        run, data, split=split, write=write, bundle=_bundle, overrides=overrides
    )[0]


def evaluate_with_samples(
    run: str | Path,
    data: str | Path | None = None,
    *,
    split: str,
    write: bool,
    bundle: DataBundle | None = None,
    overrides: list[str] | None = None,
) -> tuple[dict[str, Any], SampleResults]:
    """``evaluate``, also returning the per-sample results (the report's galleries)."""
    from liandan.prediction import Predictor
    from liandan.reporting.samples import (
        classes_from_meta,
        evaluate_samples,
        pick_split,
        rebuild_splits,
    )

    run = Path(run)
    _, meta = read_model_json(run)
    # predict.* keys over the run's own; any other key is refused, as on the CLI
    check_overrides(overrides or [], ["predict"], command="liandan evaluate")
    cfg = run_config(run, overrides)
    if data is not None:
        cfg.data.root = Path(data)
    classes = classes_from_meta(meta)
    # every predict key of the run (tile, overlap, blend, tta, batch size, precision),
    # as `liandan predict` uses them
    predictor = Predictor.from_run(run, **cfg.predict.model_dump())
    results = None
    tiles = get_task(meta["task"]).uses_raster_tiles  # rasters may be tiled or streamed
    if bundle is None and split != "val" and tiles:
        from liandan.raster_eval import evaluate_raster_split

        # rasters: whole files streamed band by band (None: not a raster dataset)
        results = evaluate_raster_split(cfg, classes, split, predictor)
    if results is None:
        if bundle is None and split == "val" and tiles:
            from liandan.data.rasters import raster_bundle

            bundle = raster_bundle(cfg, classes)  # rasters: the same validation tile grid
        if bundle is not None:
            checked, splits = bundle.checked, bundle.splits
        else:
            checked, splits = rebuild_splits(cfg, classes)
        samples = pick_split(splits, split)
        raster_val = getattr(bundle.val_loader.dataset, "evaluate_with", None) if bundle else None
        if raster_val is not None and split == "val":  # rasters: the validation tile grid
            results = raster_val(predictor)
        else:
            results = evaluate_samples(predictor, checked, samples, bands=cfg.data.bands)
    metrics = get_task(meta["task"]).score_results(results, classes.names, split)
    if write:
        name = "metrics.json" if split == "val" else f"metrics_{split}.json"
        atomic_write_json(run / name, metrics)
    return metrics, results
