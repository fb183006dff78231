"""`liandan tune`: trials are runs, a rerun continues the study, bad trials are pruned."""

from __future__ import annotations

import csv
import os

import optuna
import pytest
import yaml

from conftest import FAST_CLS, make_imagefolder
from liandan.cli import main
from liandan.errors import ConfigError
from liandan.tuning import heartbeat_seconds, load_space, mask_url, storage_url, tune

# steps_per_epoch=2, 2 epochs, lenet at 32 px, judged on validation loss
TINY = [*FAST_CLS, "train.epochs=2", "train.steps_per_epoch=2", "train.monitor=val/loss"]


def test_mask_url_hides_password():
    url = "postgresql://alice:s3cr%21t@db.example.org:5432/studies"
    assert mask_url(url) == "postgresql://alice:***@db.example.org:5432/studies"
    assert mask_url("sqlite:///runs/tune-x/study.db") == "sqlite:///runs/tune-x/study.db"


def test_heartbeat_from_the_argument_or_the_environment(monkeypatch):
    monkeypatch.delenv("LIANDAN_HEARTBEAT", raising=False)
    assert heartbeat_seconds() == 60
    assert heartbeat_seconds(5) == 5
    monkeypatch.setenv("LIANDAN_HEARTBEAT", "2")
    assert heartbeat_seconds() == 2
    for bad in ("0", "soon"):
        monkeypatch.setenv("LIANDAN_HEARTBEAT", bad)
        with pytest.raises(ConfigError, match="LIANDAN_HEARTBEAT"):
            heartbeat_seconds()


def test_postgresql_url_gets_the_installed_driver():
    # SQLAlchemy 2.0 reads a bare postgresql:// as psycopg2, 2.1 as psycopg
    assert storage_url("postgresql://u:p@h/db") == "postgresql+psycopg://u:p@h/db"
    assert storage_url("postgresql+psycopg2://u:p@h/db") == "postgresql+psycopg2://u:p@h/db"
    assert storage_url("sqlite:///x.db") == "sqlite:///x.db"


def test_storage_without_its_driver_names_the_extra(tmp_path):
    root = make_imagefolder(tmp_path / "cls", n_per_class=4)
    url = "mysql://bob:hunter2@127.0.0.1/studies"  # its driver, mysqlclient, is not installed
    with pytest.raises(ConfigError) as info:
        tune(root, trials=1, overrides=TINY, storage=url, out=tmp_path / "runs")
    assert "bob:***@" in str(info.value) and "hunter2" not in str(info.value)
    assert "liandan[postgres]" in (info.value.hint or "")


def test_a_live_trial_failed_by_another_worker_is_not_the_end(tmp_path, monkeypatch, caplog):
    """Another worker took this one's trial for dead (its heartbeat came late) and failed
    it: Optuna refuses the trial's result; the worker says so and goes on."""
    import liandan.api

    def failed_meanwhile(cfg, bundle, run_dir, callbacks):
        trial = callbacks[0].trial  # the PruningCallback's
        trial.storage.set_trial_state_values(trial._trial_id, optuna.trial.TrialState.FAIL)

    monkeypatch.setattr(liandan.api, "train_into", failed_meanwhile)
    root = make_imagefolder(tmp_path / "cls", n_per_class=4)
    result = tune(root, trials=2, overrides=TINY, name="t", out=tmp_path / "runs")
    assert result.n_trials == 2 and result.best_config is None
    assert caplog.text.count("was marked failed by another worker") == 2
    with (result.folder / "trials.csv").open() as fh:
        assert [r["state"] for r in csv.DictReader(fh)] == ["fail", "fail"]


def test_space_yaml_is_checked(tmp_path):
    path = tmp_path / "space.yaml"
    path.write_text("optim.lr: {low: 1.0e-4, high: 1.0e-1, log: true}\noptim.name: [adamw, sgd]\n")
    assert set(load_space(path, "classify")) == {"optim.lr", "optim.name"}
    path.write_text("optim.lrr: [0.1]\n")
    with pytest.raises(ConfigError, match=r"optim\.lrr"):
        load_space(path, "classify")
    path.write_text("optim.lr: 0.1\n")
    with pytest.raises(ConfigError, match="neither a list"):
        load_space(path, "classify")


@pytest.mark.slow
def test_tune_runs_continues_and_prunes(tmp_path, capsys):
    root = make_imagefolder(tmp_path / "cls", n_per_class=6)
    space = tmp_path / "space.yaml"
    space.write_text("optim.lr: [3.0e-3, 1.0e-9]\n")  # 1e-9: an absurd lr that learns nothing
    folder = tmp_path / "runs" / "tune-t"
    folder.mkdir(parents=True)
    storage = f"sqlite:///{folder / 'study.db'}"
    study = optuna.create_study(study_name="t", storage=storage, direction="minimize")
    for lr in (3.0e-3, 3.0e-3, 1.0e-9):  # two good trials first, then a bad one
        study.enqueue_trial({"optim.lr": lr})
    base = ["tune", str(root), "--space", str(space), "--name", "t", *TINY]
    assert main([*base, "--trials", "4", "--out", str(tmp_path / "runs")]) == 0
    assert main([*base, "--trials", "2", "--out", str(tmp_path / "runs")]) == 0  # continues
    with (folder / "trials.csv").open() as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["trial"]) for r in rows] == list(range(6))
    assert all(r["worker"].endswith(f":{os.getpid()}") for r in rows)  # host:pid
    assert sorted(p.name for p in folder.glob("trial-*")) == [f"trial-{i}" for i in range(6)]
    pruned = [r for r in rows if r["state"] == "pruned"]
    assert pruned and all(int(r["epochs_reported"]) < 2 for r in pruned)
    assert rows[2]["state"] == "pruned"  # the absurd lr, stopped after its first epoch
    best = yaml.safe_load((folder / "best.yaml").read_text())
    assert best["optim"]["lr"] == 3.0e-3
    assert (folder / "optimization_history.png").is_file()
    assert "best config" in capsys.readouterr().out
