"""The Python API for training: ``train``, ``resume`` and ``lr_find``.

``train`` reads as the pipeline: config -> data -> task -> Trainer -> run folder ->
evaluation. Every function returns plain objects a notebook can use. ``evaluate`` is in
:mod:`liandan.evaluation`, ``demo`` in :mod:`liandan.demo_run`.
"""

from __future__ import annotations

import logging
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import lightning as L
import torch

from liandan.config import Config
from liandan.data.datamodule import DataBundle, build_data
from liandan.data.rasters import pixel_size
from liandan.errors import CheckpointError, ConfigError
from liandan.evaluation import evaluate_with_samples, run_config
from liandan.runs import atomic_write_json, create_run_dir, read_model_json, save_model_bundle

if TYPE_CHECKING:
    from liandan.planning import Plan

log = logging.getLogger("liandan")


@dataclass
class RunResult:
    """What ``train`` returns: where the run is and how it scored."""

    run_dir: Path
    metrics: dict[str, Any]
    config: Config
    notes: list[str] = field(default_factory=list)
    duration_s: float = 0.0


def resolve_auto(cfg: Config, bundle: DataBundle | None = None) -> None:
    """Fill the ``auto`` values that follow from the task and the data (written resolved
    to the run). ``cfg.task`` must be known (``build_data`` infers it from the layout)."""
    from liandan.tasks import get_task

    task = get_task(cfg.task or "classify")
    if cfg.model.arch == "auto":
        cfg.model.arch = task.default_arch(cfg.data.image_size)
    if cfg.loss.name == "auto":
        cfg.loss.name = task.default_loss
    if cfg.train.monitor == "auto":
        cfg.train.monitor = cfg.resolved_monitor()


def _class_weights(cfg: Config, bundle: DataBundle) -> torch.Tensor | None:
    from liandan.losses import compute_class_weights

    setting = cfg.loss.class_weights
    if setting == "none":
        return None
    if setting == "auto":
        return compute_class_weights(bundle.class_counts(), cfg.loss.class_weighting)
    if len(setting) != bundle.classes.num_classes:
        raise ConfigError(
            f"{len(setting)} class weights for {bundle.classes.num_classes} classes",
            where="loss.class_weights",
            hint=f"give one weight per class: {bundle.classes.names}",
        )
    return torch.tensor(setting, dtype=torch.float32)


def tta_flips(hflip: float, vflip: float) -> list[list[int]]:
    """The flips ``predict.tta`` averages over: those training augmented with (as tensor
    dims, 3 left-right, 2 upside down). A model trained on upright images (``augment.vflip``
    0, the plan's rule for photos with an up direction) never saw one upside down, and
    its prediction of such an image would only dilute the others."""
    return [dims for dims, p in (([3], hflip), ([2], vflip)) if p > 0]


def model_meta(cfg: Config, bundle: DataBundle) -> dict[str, Any]:
    """Everything predict needs, so it never reads the training config."""
    classes = bundle.classes
    return {
        "task": cfg.task,
        "classes": classes.names,
        "values": classes.values,
        "colors": [list(c) for c in classes.colors],
        "ignore_index": classes.ignore_index,
        "color_masks": classes.color_masks,
        "in_channels": bundle.in_channels,
        "bands": cfg.data.bands,
        "dtype": bundle.checked.dtype,
        "to_rgb": bundle.checked.to_rgb,
        "pixel_size": pixel_size([s.image for s in bundle.splits["train"]]),
        "nodata": cfg.data.nodata,
        "normalization": bundle.normalizer.to_dict(),
        "image_size": cfg.data.image_size,
        "eval_resize": cfg.augment.eval_resize,  # classify: resize x this, centre-crop
        "tta_flips": tta_flips(cfg.augment.hflip, cfg.augment.vflip),
        "tile_size": cfg.predict.tile,
        "arch": cfg.model.arch,
        "encoder": cfg.model.encoder,
        "model": cfg.model.model_dump(mode="json"),
    }


def _as_config(config: Config | str | Path | None, overrides: list[str] | None) -> Config:
    if isinstance(config, Config):
        cfg = config.model_copy(deep=True)
        if overrides:
            from liandan.config import apply_override

            data = cfg.to_dict()
            for item in overrides:
                apply_override(data, item)
            cfg = Config.from_dict(data, "config with overrides")
        return cfg
    return Config.load(config, overrides)


def plans_by_default(config: object, init_from: object) -> bool:
    """Whether training starts from the data's plan when not told: without a config and
    ``init_from`` (``liandan train DATA``: the dataset's plan, then your overrides)."""
    return config is None and init_from is None


def train_config(
    data: str | Path | None = None,
    config: Config | str | Path | None = None,
    overrides: list[str] | None = None,
    *,
    init_from: str | Path | None = None,
    plan: bool | None = None,
) -> tuple[Config, Plan | None]:
    """The config ``train`` uses, and the plan it came from (None when not planned).

    ``liandan train``, ``liandan train --print-config`` and :func:`train` all resolve
    their config here, so the command line and the Python API cannot differ. ``plan``
    None plans from the data unless a config file or ``init_from`` is given. Values
    measured while training (``optim.lr``, ``train.batch_size`` or
    ``train.steps_per_epoch`` set to ``auto``) stay ``auto``.

    >>> cfg, plan = liandan.api.train_config("data/", overrides=["optim.lr=3e-4"])  # doctest: +SKIP
    """
    from liandan.config import check_overrides

    check_overrides(overrides or [])  # every bad key at once, before any planning
    if plan is None:
        plan = plans_by_default(config, init_from)
    planned = None
    if plan:  # rules from the dataset fingerprint; the config file and overrides win
        from liandan.planning import planned_config

        config, planned = planned_config(data, config, overrides)
        overrides = None
    cfg = _as_config(config, overrides)
    if init_from is not None:
        _init_from(cfg, Path(init_from))
    if data is not None:
        # absolute, so `train --config runs/NAME/config.yaml` works from any folder
        cfg.data.root = Path(data).resolve()
    if cfg.task is not None:
        resolve_auto(cfg)
    return cfg, planned


def train(
    data: str | Path | None = None,
    config: Config | str | Path | None = None,
    overrides: list[str] | None = None,
    *,
    out: str | Path = "runs",
    name: str = "train",
    init_from: str | Path | None = None,
    plan: bool | None = None,
    started: float | None = None,
) -> RunResult:
    """Train a model and write a run folder, exactly as ``liandan train`` does.

    Args:
        data: the dataset folder (or set ``data.root`` in the config).
        config: a Config, a YAML path, or None.
        overrides: dotted ``key=value`` strings.
        out: parent folder of runs.
        name: run name; ``name-2``, ``name-3`` ... when it exists.
        init_from: a run folder whose weights start this training (continue on new
            data); sets ``model.weights`` to its ``model/weights.safetensors``.
        plan: start from ``liandan plan``'s config for DATA (the config file and
            overrides win); writes plan.yaml and plan.md into the run. None (the
            default): plan unless ``config`` or ``init_from`` is given; False: the
            built-in defaults.
        started: ``time.perf_counter()`` at which the budget (``train.budget``) starts
            counting; default: now (the command line passes the process's start).

    >>> result = liandan.train("data/", overrides=["train.epochs=5"])  # doctest: +SKIP
    >>> result.metrics["overall"]["mean_iou"]  # doctest: +SKIP
    0.81
    """
    from liandan.engine.distributed import (
        follower_config,
        is_first_process,
        release_run_dir,
        shared_run_dir,
    )
    from liandan.engine.trainer import check_logger

    # train.budget covers the whole command
    command_start = time.perf_counter() if started is None else started
    launched = time.time()  # names this launch's run folder for the DDP processes
    if not is_first_process():  # DDP rank > 0: rank 0's run folder and resolved config
        run_dir = shared_run_dir(out, name, launched, lambda: create_run_dir(out, name))
        cfg = follower_config(run_dir)
        return train_into(cfg, build_data(cfg), run_dir)
    cfg, planned = train_config(data, config, overrides, init_from=init_from, plan=plan)
    check_logger(cfg)  # a missing logger package: refused before loading any data
    bundle = build_data(cfg)  # fails on bad data before a run folder is made
    # one folder per launch: announced to the other DDP processes (docs/scale.md)
    run_dir = shared_run_dir(out, name, launched, lambda: create_run_dir(out, name))
    if planned is not None:
        planned.write(run_dir / "plan.yaml")
    try:
        result = train_into(cfg, bundle, run_dir, started=command_start)
    finally:
        release_run_dir(out, name)
    if planned is not None:  # say where the decisions are explained
        result.notes[:0] = [*planned.notes, f"config planned from the data: {run_dir / 'plan.md'}"]
    return result


def resume(run: str | Path, *, unsafe_load: bool = False) -> RunResult:
    """Continue an interrupted run in its own folder, from its newest complete checkpoint.

    Model, optimizer, scheduler, EMA, epoch/step counters, history and random states
    are restored; the config is the run's ``config.yaml``. A damaged ``last.ckpt``
    falls back to ``last-prev.ckpt`` (then ``best.ckpt``) with a warning.

    >>> liandan.resume("runs/train")  # doctest: +SKIP
    """
    from liandan.engine.checkpoint import find_resume_checkpoint

    run_dir = Path(run)
    cfg = run_config(run_dir)
    if unsafe_load:
        cfg.train.unsafe_load = True
    ckpt = find_resume_checkpoint(run_dir, unsafe=cfg.train.unsafe_load)
    log.info("resuming %s from %s", run_dir, ckpt.name)
    bundle = build_data(cfg)
    return train_into(cfg, bundle, run_dir, ckpt_path=ckpt)


def train_into(
    cfg: Config,
    bundle: DataBundle,
    run_dir: Path,
    ckpt_path: Path | None = None,
    callbacks: list[L.Callback] | None = None,
    started: float | None = None,
) -> RunResult:
    """Train into an existing run folder (used by ``train``, ``resume`` and ``demo``).

    ``started`` is the ``time.perf_counter()`` of the command's start: ``train.budget``
    counts from there (scan and plan included).
    """
    from liandan.engine.batch_size import fit_retrying_oom
    from liandan.engine.checkpoint import load_checkpoint_file
    from liandan.engine.distributed import (
        check_validation_shards,
        is_first_process,
        resolve_distributed,
    )
    from liandan.engine.task import LiandanTask
    from liandan.engine.trainer import build_trainer

    lead = is_first_process()  # DDP ranks > 0 train, but write nothing in the run folder
    start = time.perf_counter() if started is None else started
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    check_validation_shards(cfg, len(bundle.val_loader.dataset))  # type: ignore[arg-type]
    resolve_auto(cfg, bundle)
    probe = None  # step timing: measured once for the lr range test's cap and the budget
    if cfg.optim.lr == "auto":  # the lr range test, written resolved into config.yaml
        probe = _resolve_lr(cfg, bundle, run_dir, fit_budget=ckpt_path is None)
    if cfg.train.budget and ckpt_path is None and lead:  # epochs fitted to the budget
        from liandan.engine.budget import fit_budget

        spent = time.perf_counter() - start
        fit_budget(cfg, bundle, _class_weights(cfg, bundle), run_dir, spent, probe)
    elif cfg.train.steps_per_epoch == "auto":  # epochs sized by measured fixed costs
        from liandan.engine.budget import fit_epoch_length, time_probe

        probe = time_probe(
            cfg, bundle, _class_weights(cfg, bundle), scratch=run_dir / "checkpoints"
        )
        fitted = fit_epoch_length(cfg, bundle, probe)
        log.info("train.steps_per_epoch=auto: %(steps_per_epoch)d steps, %(epochs)d epochs", fitted)
    if isinstance(cfg.train.steps_per_epoch, int):  # small data: several draws per epoch
        from liandan.data.epochs import with_epoch_length

        bundle.train_loader = with_epoch_length(bundle.train_loader, cfg.train.steps_per_epoch)
    resolve_distributed(cfg)  # train.strategy, train.sync_batchnorm
    if lead:
        cfg.save(run_dir / "config.yaml")
        if bundle.index.skipped:
            atomic_write_json(run_dir / "skipped.json", bundle.index.skipped)

    def fit() -> tuple[L.Trainer, LiandanTask]:  # a fresh model and Trainer per attempt
        task = LiandanTask(
            cfg, bundle.classes.names, bundle.in_channels, _class_weights(cfg, bundle)
        )
        trainer, _ = build_trainer(cfg, run_dir, callbacks)
        trainer.fit(task, bundle.train_loader, bundle.val_loader, ckpt_path=ckpt_path)
        return trainer, task

    # out of memory in the first epoch: half the batch, at most 3 times (saved in config.yaml)
    trainer, task = fit_retrying_oom(
        fit, cfg, bundle, run_dir, rebuild=build_data, resuming=ckpt_path is not None
    )
    if not trainer.is_global_zero:  # torchrun / SLURM rank > 0: rank 0 exports and reports
        return RunResult(run_dir, {}, cfg, list(bundle.notes), time.perf_counter() - start)
    # Export the best epoch's weights, or the last ones (train.export; EMA ones when
    # enabled) as safetensors + model.json.
    best = run_dir / "checkpoints" / "best.ckpt"
    if cfg.resolved_export() == "best" and best.is_file():
        state = load_checkpoint_file(best, unsafe=cfg.train.unsafe_load)
        task.load_weights(state)  # the model and its EMA
    save_model_bundle(run_dir, task.eval_model().state_dict(), model_meta(cfg, bundle))
    metrics, samples = evaluate_with_samples(run_dir, split="val", write=True, bundle=bundle)
    duration = time.perf_counter() - start
    try:
        from liandan.reporting import write_report

        write_report(
            run_dir, metrics, bundle=bundle, results=samples, duration_s=duration, tensorboard=True
        )
    except Exception as exc:  # a report must never cost the user a finished run
        log.warning("the report was not written: %s", exc, exc_info=log.isEnabledFor(10))
    if cfg.train.budget:  # the whole command, report included
        from liandan.engine.budget import record_total

        record_total(run_dir, time.perf_counter() - start)
    return RunResult(run_dir, metrics, cfg, list(bundle.notes), duration)


def _resolve_lr(
    cfg: Config, bundle: DataBundle, run_dir: Path, *, fit_budget: bool
) -> dict[str, float] | None:
    """``optim.lr: auto``: the lr range test, capped to a tenth of ``train.budget``.

    Returns the step timing measured for the cap (the budget fit reuses it), if any.
    """
    from liandan.lr_find import STEPS, lr_find_for_config, write_lr_find

    weights = _class_weights(cfg, bundle)
    steps, probe = STEPS, None
    if cfg.train.budget and fit_budget:
        from liandan.engine.budget import FALLBACK_LR, lr_find_budget

        steps, probe = lr_find_budget(cfg, bundle, weights)
        if not steps:  # the test alone would eat the budget: the optimizer's usual rate
            cfg.optim.lr = FALLBACK_LR.get(cfg.optim.name, 1e-3)
            bundle.notes.append(
                f"optim.lr=auto: budget {cfg.train.budget} too short for the lr range test; "
                f"{cfg.optim.name}'s usual {cfg.optim.lr:g} is used"
            )
            log.info("%s", bundle.notes[-1])
            return probe
    found = lr_find_for_config(cfg, bundle, weights, steps=steps)
    write_lr_find(run_dir, found)
    cfg.optim.lr = found.suggestion
    log.info("optim.lr=auto: the lr range test (%d steps) suggests %.3g", steps, found.suggestion)
    return probe


def _init_from(cfg: Config, run: Path) -> None:
    """Start from another run's weights: its architecture unless the config names one."""
    weights = run / "model" / "weights.safetensors"
    if not weights.is_file():
        raise CheckpointError(
            "the run has no model/weights.safetensors", where=run, hint="pass a finished run"
        )
    _, meta = read_model_json(run)
    if cfg.model.arch == "auto":
        cfg.model.arch = str(meta.get("arch") or "auto")
        cfg.model.encoder = str(meta.get("encoder") or cfg.model.encoder)
    cfg.model.weights = str(weights.resolve())


def lr_find(
    data: str | Path | None = None,
    config: Config | str | Path | None = None,
    overrides: list[str] | None = None,
    *,
    out: str | Path = "runs",
    name: str = "lr-find",
    steps: int = 100,
    start_lr: float = 1e-7,
    end_lr: float = 10.0,
    method: str = "valley",
) -> tuple[Path, Any]:
    """The learning-rate range test: writes lr_find.png/.csv/.json into a run folder.

    Returns the folder and an :class:`liandan.lr_find.LRFindResult`.

    >>> folder, result = liandan.api.lr_find("data/")  # doctest: +SKIP
    >>> result.suggestion  # doctest: +SKIP
    0.0012
    """
    from liandan.lr_find import lr_find_for_config, write_lr_find

    cfg = _as_config(config, overrides)
    if data is not None:
        cfg.data.root = Path(data).resolve()
    bundle = build_data(cfg)
    run_dir = create_run_dir(out, name)
    L.seed_everything(cfg.train.seed, workers=True, verbose=False)
    resolve_auto(cfg, bundle)
    result = lr_find_for_config(
        cfg,
        bundle,
        _class_weights(cfg, bundle),
        steps=steps,
        start_lr=start_lr,
        end_lr=end_lr,
        method=method,
    )
    cfg.save(run_dir / "config.yaml")
    write_lr_find(run_dir, result)
    return run_dir, result
