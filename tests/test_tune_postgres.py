"""`liandan tune --storage postgresql://...` against a real PostgreSQL server.

Workers started at once on a new database (the race on its tables and the study), two
`liandan tune` processes sharing one study, and a worker killed mid-trial. The server is
Debian's PostgreSQL, started for this module (tests/postgres_server.py); without it these
tests fail, they are not skipped.
"""

from __future__ import annotations

import csv
import os
import signal
import subprocess
import sys
import threading
import time

import optuna
import pytest
import yaml

from conftest import make_imagefolder
from liandan.errors import ConfigError
from liandan.tuning import open_study, storage_url, tune
from postgres_server import PASSWORD, postgres_server
from test_tune import TINY

LIANDAN = [sys.executable, "-m", "liandan.cli"]  # the `liandan` command, wherever it is


@pytest.fixture(scope="module")
def pg():
    with postgres_server() as server:
        yield server


def _open_together(url: str, workers: int) -> tuple[list[int], list[BaseException]]:
    """Open one study from several threads released at the same instant."""
    barrier = threading.Barrier(workers)
    studies: list[optuna.Study] = []
    errors: list[BaseException] = []

    def worker() -> None:
        barrier.wait()
        try:
            studies.append(open_study(url, "s", direction="minimize", heartbeat=5))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=worker) for _ in range(workers)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    for study in studies:  # close each worker's pooled connections
        study._storage._backend.engine.dispose()
    return [study._study_id for study in studies], errors


def test_workers_started_together_open_one_study(pg):
    """Eight workers open a study on a new database at once: none fails, one study."""
    for round_ in range(3):  # unhandled, the race failed 7 of 8 workers in every round
        url = pg.create_database(f"race{round_}")
        ids, errors = _open_together(url, 8)
        assert not errors, errors[0]
        assert len(ids) == 8 and len(set(ids)) == 1
        assert optuna.get_all_study_names(storage_url(url)) == ["s"]


def test_bad_credentials_are_one_masked_error(pg, tmp_path):
    root = make_imagefolder(tmp_path / "cls", n_per_class=4)
    url = pg.url("postgres", password="wrong-pw")
    with pytest.raises(ConfigError) as info:
        tune(root, trials=1, overrides=TINY, storage=url, out=tmp_path / "runs")
    message = str(info.value)
    assert "cannot open the study storage" in message and "OperationalError" in message
    assert "wrong-pw" not in message and "liandan:***@" in message


@pytest.mark.slow
def test_two_workers_share_a_study_and_a_killed_trial_fails(pg, tmp_path):
    root = make_imagefolder(tmp_path / "cls", n_per_class=6)
    space = tmp_path / "space.yaml"
    space.write_text("optim.lr: [1.0e-3, 3.0e-3, 1.0e-2]\noptim.weight_decay: [0.0, 1.0e-4]\n")
    url = pg.create_database("shared")
    out = tmp_path / "runs"
    cmd = [*LIANDAN, "tune", str(root), "--space", str(space), "--storage", url,
           "--name", "shared", "--out", str(out), *TINY]  # fmt: skip
    # failed after 4 s without a beat (1 s: a live trial on a machine with a load of 10
    # was taken for dead)
    env = {**os.environ, "LIANDAN_HEARTBEAT": "2"}
    env.pop("LIANDAN_STORAGE", None)
    pipes = {"stdout": subprocess.PIPE, "stderr": subprocess.STDOUT}
    # started at the same moment on a database with no tables yet; b outlives a's
    # kill by two trials, so it starts a trial after the grace period
    a, b = (
        subprocess.Popen([*cmd, "--trials", n], env=env, text=True, **pipes) for n in ("2", "4")
    )
    # kill worker a in its second (last) trial, once it has finished one
    killed, study = None, None
    deadline = time.monotonic() + 240
    while killed is None and time.monotonic() < deadline and a.poll() is None:
        time.sleep(0.05)
        if study is None:
            try:
                study = optuna.load_study(study_name="shared", storage=storage_url(url))
            except Exception:  # the tables or the study are not there yet
                continue
        trials = study.get_trials(deepcopy=False)
        mine = [t for t in trials if t.user_attrs.get("worker", "").endswith(f":{a.pid}")]
        running = [t for t in mine if t.state == optuna.trial.TrialState.RUNNING]
        if running and len(mine) >= 2:
            a.send_signal(signal.SIGKILL)
            killed = running[0].number
            # b stands still past the grace period, as if in a long trial, so that the
            # next trial it starts (or its end) finds a's trial silent for too long
            # whatever the pace of b's remaining trials
            b.send_signal(signal.SIGSTOP)
            time.sleep(5)
            b.send_signal(signal.SIGCONT)
    out_a = a.communicate(timeout=60)[0]
    out_b = b.communicate(timeout=240)[0]
    assert killed is not None, f"worker a never reached its second trial:\n{out_a}"
    assert a.returncode == -signal.SIGKILL
    assert b.returncode == 0, out_b  # the other worker went on to the end
    assert PASSWORD not in out_a + out_b and "liandan:***@" in out_b

    trials = optuna.load_study(study_name="shared", storage=storage_url(url)).trials
    by_number = {t.number: t for t in trials}
    assert sorted(by_number) == list(range(len(trials)))
    assert by_number[killed].state == optuna.trial.TrialState.FAIL  # by the heartbeat
    states = {t.number: t.state.name.lower() for t in trials}
    finished = [t for t in trials if t.state != optuna.trial.TrialState.FAIL]
    assert all(s in ("complete", "pruned") for n, s in states.items() if n != killed)
    workers = {t.user_attrs["worker"].rsplit(":", 1)[1] for t in finished}
    assert workers == {str(a.pid), str(b.pid)}  # both workers finished trials
    assert sum(t.user_attrs["worker"].endswith(f":{b.pid}") for t in trials) == 4

    # every trial ran exactly once: one run folder each, holding that trial's parameters
    folder = out / "tune-shared"
    assert sorted(p.name for p in folder.glob("trial-*")) == sorted(f"trial-{n}" for n in by_number)
    for t in finished:
        cfg = yaml.safe_load((folder / f"trial-{t.number}" / "config.yaml").read_text())
        assert cfg["optim"]["lr"] == t.params["optim.lr"]
        assert t.user_attrs["run_dir"] == str(folder / f"trial-{t.number}")

    # the best of both workers' trials, in the study and in what worker b wrote last
    complete = [t for t in trials if t.state == optuna.trial.TrialState.COMPLETE]
    best = min(complete, key=lambda t: t.value)
    with (folder / "trials.csv").open() as fh:
        rows = {int(r["trial"]): r for r in csv.DictReader(fh)}
    assert {n: r["state"] for n, r in rows.items()} == states
    assert rows[killed]["state"] == "fail"
    best_cfg = yaml.safe_load((folder / "best.yaml").read_text())
    assert best_cfg["optim"]["lr"] == best.params["optim.lr"]
    assert best_cfg["optim"]["weight_decay"] == best.params["optim.weight_decay"]
    assert f"best {best.value:.4f}" in out_b
