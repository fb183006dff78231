"""`liandan tune`: Optuna hyper-parameter search, each trial a normal run folder.

The search space is a YAML mapping of dotted config keys to ranges or choices::

    optim.lr: {low: 1.0e-5, high: 1.0e-1, log: true}   # float (log-uniform)
    train.batch_size: {low: 4, high: 16, step: 4}       # int (both bounds integers)
    optim.name: [adamw, sgd]                            # categorical
    model.encoder: [resnet18, resnet34]

TPE samples it; a median pruner (or Hyperband) stops trials whose per-epoch validation
metric falls behind. The study lives in ``runs/tune-<name>/study.db`` (SQLite) unless
``--storage`` (or ``$LIANDAN_STORAGE``) names another database, e.g. PostgreSQL shared
by many workers; its credentials are never printed. Running the command again with the
same name continues the study. Results: ``best.yaml``, ``trials.csv`` and plots.
"""

from __future__ import annotations

import csv
import io
import logging
import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L

from liandan.callable_module import make_callable
from liandan.config import Config, apply_override, read_yaml
from liandan.errors import ConfigError, LiandanError, TrainingStopped
from liandan.runs import atomic_write_text

log = logging.getLogger("liandan")

DEFAULT_SPACE: dict[str, Any] = {
    "optim.lr": {"low": 1.0e-4, "high": 1.0e-2, "log": True},
    "optim.weight_decay": {"low": 1.0e-6, "high": 1.0e-2, "log": True},
    "optim.name": ["adamw", "sgd"],
    "augment.hflip": [0.0, 0.5],
    "schedule.name": ["cosine", "poly"],
}
SEGMENT_SPACE = {"loss.name": ["ce+dice", "ce", "focal+dice"]}
CLASSIFY_SPACE = {"loss.name": ["ce", "focal"], "loss.label_smoothing": [0.0, 0.1]}


@dataclass
class TuneResult:
    """Where the study is, its best trial and config."""

    folder: Path
    study_name: str
    best_value: float | None
    best_params: dict[str, Any]
    best_config: Config | None
    n_trials: int


def mask_url(url: str) -> str:
    """A storage URL with its password hidden: ``postgresql://user:***@host/db``."""
    return re.sub(r"(://[^:/@]+):[^@/]*@", r"\1:***@", url)


def load_space(path: str | Path | None, task: str) -> dict[str, Any]:
    """The search space: a YAML file, or the default one for the task."""
    if path is None:
        extra = SEGMENT_SPACE if task == "segment" else CLASSIFY_SPACE
        return {**DEFAULT_SPACE, **extra}
    space = read_yaml(Path(path))
    for key, spec in space.items():
        apply_override({}, f"{key}=0")  # an unknown key fails here, with did-you-mean
        ok = bool(isinstance(spec, list) and spec)
        ok = ok or (isinstance(spec, dict) and {"low", "high"} <= set(spec))
        if not ok:
            raise ConfigError(
                f"search space entry {key!r} is neither a list of choices nor low/high",
                where=path,
                hint="write e.g. optim.lr: {low: 1.0e-5, high: 1.0e-1, log: true} "
                "or optim.name: [adamw, sgd]",
            )
    return space


def suggest(trial: Any, space: dict[str, Any]) -> dict[str, Any]:
    """One value per key of the space, drawn by the trial."""
    params: dict[str, Any] = {}
    for key, spec in space.items():
        if isinstance(spec, list):
            params[key] = trial.suggest_categorical(key, spec)
        elif isinstance(spec["low"], int) and isinstance(spec["high"], int):
            step = int(spec.get("step", 1))
            params[key] = trial.suggest_int(
                key, spec["low"], spec["high"], step=step, log=bool(spec.get("log"))
            )
        else:
            params[key] = trial.suggest_float(
                key, float(spec["low"]), float(spec["high"]), log=bool(spec.get("log"))
            )
    return params


class PruningCallback(L.Callback):
    """Reports the monitored validation metric each epoch; raises TrialPruned when told."""

    def __init__(self, trial: Any, monitor: str) -> None:
        self.trial = trial
        self.monitor = monitor
        self.values: list[float] = []  # the monitored metric after each epoch

    def on_validation_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        import optuna

        value = trainer.callback_metrics.get(self.monitor)
        if trainer.sanity_checking or value is None:
            return
        epoch = trainer.current_epoch + 1
        self.values.append(float(value))
        self.trial.report(float(value), epoch)
        if self.trial.should_prune():
            self.trial.set_user_attr("pruned_at_epoch", epoch)
            raise optuna.TrialPruned(f"{self.monitor}={float(value):.4f} at epoch {epoch}")


def _with_params(base: Config, params: dict[str, Any]) -> Config:
    data = base.to_dict()
    for key, value in params.items():
        node = data
        *parents, last = key.split(".")
        for part in parents:
            node = node.setdefault(part, {})
        node[last] = value
    return Config.from_dict(data, "search space")


def tune(
    data: str | Path,
    *,
    trials: int,
    config: Config | str | Path | None = None,
    overrides: list[str] | None = None,
    space: str | Path | dict[str, Any] | None = None,
    storage: str | None = None,
    budget: str | None = None,
    name: str = "study",
    out: str | Path = "runs",
    pruner: str = "median",
    seed: int = 0,
) -> TuneResult:
    """Search hyper-parameters with Optuna; each trial is a run in ``out/tune-<name>/``.

    Args:
        data: the dataset folder.
        trials: trials to run now (added to those the study already has).
        config, overrides: the base config every trial starts from.
        space: a search-space YAML path or mapping; None for the default space.
        storage: an Optuna storage URL; default SQLite in the tuning folder.
        budget: wall-clock budget per trial (``train.budget``).
        name: the study name; an existing study of that name is continued.
        out: parent folder of the tuning folder.
        pruner: ``median`` or ``hyperband``.
        seed: seed of the TPE sampler.

    >>> liandan.tune("data/", trials=20, budget="5m").best_params  # doctest: +SKIP
    {'optim.lr': 0.0021, 'optim.name': 'adamw', ...}
    """
    import optuna

    from liandan.api import _as_config, train_into
    from liandan.data.datamodule import build_data
    from liandan.runs import check_run_name, create_run_dir, make_dir

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    base = _as_config(config, overrides)
    base.data.root = Path(data).resolve()
    if budget is not None:
        base.train.budget = budget
    probe = build_data(base)  # fails on bad data before a study is made; fills task
    folder = make_dir(Path(out) / f"tune-{check_run_name(name)}")
    url = storage or os.environ.get("LIANDAN_STORAGE") or f"sqlite:///{folder / 'study.db'}"
    search = space if isinstance(space, dict) else load_space(space, str(probe.index.task))
    monitor = base.resolved_monitor()
    direction: Literal["minimize", "maximize"] = (
        "minimize" if monitor.endswith("loss") else "maximize"
    )
    if pruner not in ("median", "hyperband"):
        raise ConfigError(
            f"unknown pruner {pruner!r}", where="--pruner", hint="median or hyperband"
        )
    chosen: optuna.pruners.BasePruner = (
        optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=0)
        if pruner == "median"
        else optuna.pruners.HyperbandPruner(min_resource=1, max_resource=base.train.epochs)
    )
    try:
        study = optuna.create_study(
            study_name=name,
            storage=url,
            load_if_exists=True,
            direction=direction,
            sampler=optuna.samplers.TPESampler(seed=seed),
            pruner=chosen,
        )
    except Exception as exc:
        message = mask_url(f"cannot open the study storage {url} ({type(exc).__name__})")
        raise ConfigError(message, where="--storage", hint="check the URL and the server") from None
    log.info("study %r in %s: %d trial(s) so far", name, mask_url(url), len(study.trials))

    def objective(trial: optuna.Trial) -> float:
        params = suggest(trial, search)
        cfg = _with_params(base, params)
        run_dir = create_run_dir(folder, f"trial-{trial.number}")
        trial.set_user_attr("run_dir", str(run_dir))
        cfg.save(run_dir / "config.yaml")
        try:
            bundle = build_data(cfg)
            pruning = PruningCallback(trial, monitor)
            train_into(cfg, bundle, run_dir, callbacks=[pruning])
        except TrainingStopped as exc:  # the doctor stopped a diverging trial: a bad trial
            trial.set_user_attr("stopped", exc.message)
            raise optuna.TrialPruned(exc.message) from None
        # the best epoch's value: the one best.ckpt (and the run's model) holds
        finite = [v for v in pruning.values if math.isfinite(v)]
        if not finite:
            raise optuna.TrialPruned(f"{monitor} was never defined in this trial")
        return min(finite) if direction == "minimize" else max(finite)

    # a trial whose combination the config rejects fails alone; the study goes on
    study.optimize(objective, n_trials=trials, catch=(LiandanError,))
    return _write_results(study, base, folder, name)


def _write_results(study: Any, base: Config, folder: Path, name: str) -> TuneResult:
    import optuna

    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    buffer = io.StringIO()
    keys = sorted({k for t in study.trials for k in t.params})
    writer = csv.writer(buffer)
    writer.writerow(["trial", "state", "value", "epochs_reported", *keys, "run_dir"])
    for t in study.trials:
        row = [t.number, t.state.name.lower(), t.value, len(t.intermediate_values)]
        writer.writerow(row + [t.params.get(k) for k in keys] + [t.user_attrs.get("run_dir")])
    atomic_write_text(folder / "trials.csv", buffer.getvalue())
    if not done:
        return TuneResult(folder, name, None, {}, None, len(study.trials))
    best = study.best_trial
    best_cfg = _with_params(base, best.params)
    best_cfg.save(folder / "best.yaml")
    _plots(study, folder)
    return TuneResult(folder, name, best.value, dict(best.params), best_cfg, len(study.trials))


def _plots(study: Any, folder: Path) -> None:
    """Optimization history and parameter importances (when they can be computed)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from optuna.visualization import matplotlib as ovm

    for fname, draw in (
        ("optimization_history.png", ovm.plot_optimization_history),
        ("param_importances.png", ovm.plot_param_importances),
    ):
        try:
            with warnings.catch_warnings():  # optuna marks its matplotlib plots experimental
                warnings.simplefilter("ignore")
                ax = draw(study)
            figure = ax.get_figure(root=True)
            assert figure is not None
            figure.savefig(folder / fname, dpi=100, bbox_inches="tight")
        except Exception as exc:  # e.g. importances need two finished trials
            log.info("%s not drawn: %s", fname, exc)
        finally:
            plt.close("all")


def trials_table(folder: Path) -> Any:
    """trials.csv as a rich table, for the CLI."""
    from rich.table import Table

    with (folder / "trials.csv").open(newline="", encoding="utf-8") as fh:
        rows = list(csv.reader(fh))
    table = Table(title=f"trials of {folder}", title_justify="left")
    for col in rows[0][:-1]:
        table.add_column(col)
    for row in rows[1:]:
        table.add_row(*row[:-1])
    return table


make_callable(__name__, "tune")  # liandan.tune(...) calls tune() even once imported
