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

Many workers may start on one new database at the same moment: creating its tables and
the study is retried until one of them has done it. Each running trial beats a heartbeat
(every ``$LIANDAN_HEARTBEAT`` seconds, default 60); a trial whose worker died without a
beat for twice that is marked failed by the next worker that starts a trial.
"""

from __future__ import annotations

import csv
import importlib.util
import io
import logging
import math
import os
import random
import re
import socket
import time
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

import lightning as L

from liandan.config import Config, apply_override, read_yaml
from liandan.errors import ConfigError, LiandanError, TrainingStopped
from liandan.runs import atomic_write_text
from liandan.tasks import get_task

log = logging.getLogger("liandan")

DEFAULT_SPACE: dict[str, Any] = {
    "optim.lr": {"low": 1.0e-4, "high": 1.0e-2, "log": True},
    "optim.weight_decay": {"low": 1.0e-6, "high": 1.0e-2, "log": True},
    "optim.name": ["adamw", "sgd"],
    "augment.hflip": [0.0, 0.5],
    "schedule.name": ["cosine", "poly"],
}


HEARTBEAT_S = 60  # Optuna's own example: a beat a minute, failed after two minutes' silence
OPEN_ATTEMPTS = 8  # tries at creating the tables and the study against other workers


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


def storage_url(url: str) -> str:
    """A driver-less ``postgresql://`` URL with the psycopg (3) driver when it is installed.

    SQLAlchemy 2.0 reads ``postgresql://`` as psycopg2, 2.1 as psycopg: the ``postgres``
    extra installs psycopg, and this makes either SQLAlchemy use it.
    """
    if url.startswith("postgresql://") and importlib.util.find_spec("psycopg") is not None:
        return "postgresql+psycopg://" + url[len("postgresql://") :]
    return url


def heartbeat_seconds(heartbeat: int | None = None) -> int:
    """The heartbeat interval: the argument, else ``$LIANDAN_HEARTBEAT``, else 60 s."""
    value = heartbeat if heartbeat is not None else os.environ.get("LIANDAN_HEARTBEAT")
    try:
        seconds = int(value) if value is not None else HEARTBEAT_S
    except ValueError:
        seconds = 0
    if seconds < 1:
        raise ConfigError(
            f"heartbeat {value!r} is not a whole number of seconds >= 1",
            where="heartbeat" if heartbeat is not None else "LIANDAN_HEARTBEAT",
            hint="e.g. LIANDAN_HEARTBEAT=60",
        )
    return seconds


def open_study(
    url: str,
    name: str,
    *,
    direction: Literal["minimize", "maximize"],
    sampler: Any = None,
    pruner: Any = None,
    heartbeat: int = HEARTBEAT_S,
) -> Any:
    """Create the study, or load it when it exists, in an Optuna RDB storage.

    Workers started together on a new database race to create its tables and the
    study: the loser's CREATE fails (PostgreSQL: IntegrityError on ``pg_type``, or
    "relation already exists"). That is retried, and the next try finds what the winner
    made. The storage beats a heartbeat every ``heartbeat`` seconds while a trial runs;
    a trial silent for twice that is failed by ``study.optimize`` at its next trial.
    """
    import optuna
    import sqlalchemy.exc

    engine_kwargs = {} if url.startswith("sqlite") else {"pool_pre_ping": True}
    for attempt in range(OPEN_ATTEMPTS):
        try:
            with warnings.catch_warnings():  # heartbeat_interval is marked experimental
                warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
                storage = optuna.storages.RDBStorage(
                    storage_url(url),
                    engine_kwargs=engine_kwargs,
                    heartbeat_interval=heartbeat,
                    grace_period=2 * heartbeat,
                )
            return optuna.create_study(
                study_name=name,
                storage=storage,
                load_if_exists=True,
                direction=direction,
                sampler=sampler,
                pruner=pruner,
            )
        except (
            sqlalchemy.exc.IntegrityError,
            sqlalchemy.exc.ProgrammingError,
            optuna.exceptions.StorageInternalError,
        ) as exc:
            if attempt == OPEN_ATTEMPTS - 1:
                raise
            log.debug("storage busy (%s): trying again", type(exc).__name__)
            time.sleep(random.uniform(0.05, 0.25) * (attempt + 1))  # jitter: workers part
    raise AssertionError("unreachable")


def _storage_error(url: str, exc: Exception) -> ConfigError:
    """A one-line, password-free message for a storage that cannot be opened."""
    cause = getattr(exc, "orig", None) or exc.__cause__ or exc
    first = (str(cause).strip().splitlines() or [""])[0]
    detail = f"{type(exc).__name__}: {first}" if first else type(exc).__name__
    if isinstance(exc, ImportError):
        hint = (
            "its database driver is not installed; for PostgreSQL: pip install 'liandan[postgres]'"
        )
    else:
        hint = "check the URL, the credentials and that the server is reachable"
    message = mask_url(f"cannot open the study storage {url} ({detail})")
    return ConfigError(message, where="--storage", hint=hint)


def load_space(path: str | Path | None, task: str) -> dict[str, Any]:
    """The search space: a YAML file, or the default one for the task."""
    if path is None:
        return {**DEFAULT_SPACE, **get_task(task).search_space()}
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
    heartbeat: int | None = None,
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
        seed: seed of the TPE sampler (with the folder's own SQLite study; workers
            sharing a ``storage`` draw with seeds of their own, or all would draw alike).
        heartbeat: seconds between a running trial's heartbeats (default
            ``$LIANDAN_HEARTBEAT`` or 60); a trial silent for twice that is failed.

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
    shared = storage or os.environ.get("LIANDAN_STORAGE")
    url = shared or f"sqlite:///{folder / 'study.db'}"
    beat = heartbeat_seconds(heartbeat)
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
    # constant liar: a worker treats the others' running trials as bad, so it does not
    # sample next to them
    sampler = optuna.samplers.TPESampler(seed=None if shared else seed, constant_liar=True)
    try:
        study = open_study(
            url, name, direction=direction, sampler=sampler, pruner=chosen, heartbeat=beat
        )
    except Exception as exc:
        raise _storage_error(url, exc) from None
    worker = f"{socket.gethostname()}:{os.getpid()}"
    log.info("study %r in %s: %d trial(s) so far", name, mask_url(url), len(study.trials))
    running: list[int] = []  # the number of the trial this worker runs

    def objective(trial: optuna.Trial) -> float:
        running[:] = [trial.number]
        params = suggest(trial, search)
        cfg = _with_params(base, params)
        run_dir = create_run_dir(folder, f"trial-{trial.number}")
        trial.set_user_attr("run_dir", str(run_dir))
        trial.set_user_attr("worker", worker)
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

    for _ in range(trials):
        running.clear()
        try:
            # a trial whose combination the config rejects fails alone; the study goes on
            study.optimize(objective, n_trials=1, catch=(LiandanError,))
        except ValueError as exc:  # "Cannot tell a FAIL trial."
            if not (running and _failed_elsewhere(study, running[0], exc)):
                raise
            log.warning(
                "trial %d was marked failed by another worker: its heartbeat came more "
                "than %d s late (a busy machine? raise LIANDAN_HEARTBEAT); going on",
                running[0],
                2 * beat,
            )
    return _write_results(study, base, folder, name)


def _failed_elsewhere(study: Any, number: int, exc: Exception) -> bool:
    """Whether another worker failed this worker's live trial as stale (a late heartbeat).

    Optuna then refuses the trial's result (or its next report) and ``optimize`` raises
    "Cannot tell a FAIL trial."; the work is lost, the worker goes on with the next trial.
    """
    import optuna

    if not str(exc).startswith("Cannot tell a"):
        return False
    failed = study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.FAIL,))
    return any(t.number == number for t in failed)


def _write_results(study: Any, base: Config, folder: Path, name: str) -> TuneResult:
    import optuna

    with warnings.catch_warnings():  # marked experimental
        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        optuna.storages.fail_stale_trials(study)  # a dead worker's trials, once silent long
    done = [t for t in study.trials if t.state == optuna.trial.TrialState.COMPLETE]
    buffer = io.StringIO()
    keys = sorted({k for t in study.trials for k in t.params})
    writer = csv.writer(buffer)
    writer.writerow(["trial", "state", "value", "epochs_reported", *keys, "worker", "run_dir"])
    for t in study.trials:
        row = [t.number, t.state.name.lower(), t.value, len(t.intermediate_values)]
        row += [t.params.get(k) for k in keys]
        writer.writerow([*row, t.user_attrs.get("worker"), t.user_attrs.get("run_dir")])
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
