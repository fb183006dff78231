"""train.logger: TensorBoard, CSV and MLflow each get the curves (val metric and lr)."""

from __future__ import annotations

import csv
import signal
import sys
from pathlib import Path

import pytest

from conftest import FAST_CLS, make_imagefolder
from liandan import api
from liandan.cli import main
from liandan.engine.checkpoint import load_checkpoint_file
from liandan.errors import TrainingInterrupted
from test_resume import _signal_after_epoch

LOGGERS = ["tensorboard", "csv", "mlflow"]
MONITOR = "val/macro_f1"  # classification's monitor


def _curves(run: Path, logger: str) -> dict[str, list[tuple[int, float]]]:
    """Every scalar curve in the logger's files: name -> [(step, value), ...]."""
    if logger == "tensorboard":
        from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

        events = EventAccumulator(str(run / "tensorboard"))
        events.Reload()
        tags = events.Tags()["scalars"]
        return {t: [(e.step, e.value) for e in events.Scalars(t)] for t in tags}
    if logger == "csv":
        with open(run / "csv" / "metrics.csv", newline="") as file:
            rows = list(csv.DictReader(file))
        names = [k for k in rows[0] if k != "step"]
        return {
            name: [(int(r["step"]), float(r[name])) for r in rows if r[name] != ""]
            for name in names
        }
    from mlflow.tracking import MlflowClient

    client = MlflowClient(f"sqlite:///{run / 'mlflow' / 'mlflow.db'}")
    (experiment,) = [e for e in client.search_experiments() if e.name == "liandan"]
    (found,) = client.search_runs([experiment.experiment_id])
    return {
        name: [(m.step, m.value) for m in client.get_metric_history(found.info.run_id, name)]
        for name in found.data.metrics
    }


def _history(run: Path, column: str) -> list[float]:
    with open(run / "history.csv", newline="") as file:
        return [float(row[column]) for row in csv.DictReader(file)]


def _check_curves(run: Path, logger: str, epochs: int) -> None:
    """The val metric once per epoch (as history.csv has it), the lr once per step."""
    curves = _curves(run, logger)
    assert [v for _, v in curves[MONITOR]] == pytest.approx(_history(run, "val_macro_f1"))
    assert len(curves[MONITOR]) == epochs
    lr = [name for name in curves if name.startswith("lr-")]
    assert lr, sorted(curves)
    steps = load_checkpoint_file(run / "checkpoints" / "last.ckpt")["global_step"]
    assert sorted(s for s, _ in curves[lr[0]]) == list(range(steps))  # each step once
    # warmup then cosine: the curve moves, it is not one constant logged repeatedly
    assert len({v for _, v in curves[lr[0]]}) > 2


@pytest.mark.parametrize("logger", LOGGERS)
def test_the_chosen_logger_gets_the_metric_and_lr_curves(logger: str, tmp_path: Path) -> None:
    data = make_imagefolder(tmp_path / "data")
    run = api.train(
        data, overrides=[*FAST_CLS, f"train.logger={logger}"], out=tmp_path / "runs"
    ).run_dir
    _check_curves(run, logger, epochs=2)
    written = {name for name in LOGGERS if (run / name).exists()}
    assert written == {logger}  # the others write nothing


@pytest.mark.parametrize("logger", LOGGERS)
def test_a_resumed_run_continues_its_curves(
    logger: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Interrupted after epoch 1, resumed: one curve, epoch 1's points kept, none twice.

    Lightning's own CSV logger deleted metrics.csv on the resume (epoch 1 was lost),
    and MLflow would start a second run.
    """
    data = make_imagefolder(tmp_path / "data")
    cfg = [*FAST_CLS, f"train.logger={logger}", "train.epochs=2"]
    with monkeypatch.context() as m:
        _signal_after_epoch(m, 1, signal.SIGINT)
        with pytest.raises(TrainingInterrupted):
            api.train(data, overrides=cfg, out=tmp_path / "runs", name="cut")
    run = tmp_path / "runs" / "cut"
    api.resume(run)
    _check_curves(run, logger, epochs=2)


def test_mlflow_missing_is_a_config_error_with_the_install_hint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setitem(sys.modules, "mlflow", None)  # as if not installed
    data = make_imagefolder(tmp_path / "data")
    args = ["train", str(data), *FAST_CLS, "train.logger=mlflow", "--out", str(tmp_path / "r")]
    assert main(args) == 1
    err = capsys.readouterr().err
    assert "train.logger=mlflow needs the mlflow package" in err
    assert "pip install 'liandan[mlflow]'" in err  # the extra's brackets printed as they are
    assert not (tmp_path / "r").exists()  # refused before any data or run folder
