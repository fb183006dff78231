"""k-fold cross-validation, the folds' ensemble, and `liandan compare`."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import FAST_CLS, make_imagefolder, make_pairs
from liandan.cli import main
from liandan.data.datamodule import split_samples
from liandan.data.layouts import find_samples
from liandan.ensemble import Ensemble
from liandan.errors import OutputError
from liandan.runs import load_model


@pytest.mark.parametrize("maker", [make_imagefolder, make_pairs])
def test_folds_validate_every_sample_once_and_stratify(tmp_path: Path, maker) -> None:  # type: ignore[no-untyped-def]
    root = maker(tmp_path / "data", splits=True)
    index = find_samples(root)
    pool = {s.image for s in index.split("train") + index.split("val")}
    seen: Counter[Path] = Counter()
    for k in range(3):
        splits = split_samples(index, 0.2, seed=1, folds=(k, 3))
        val = {s.image for s in splits["val"]}
        train = {s.image for s in splits["train"]}
        assert not val & train and val | train == pool  # a partition of the pool
        assert abs(len(val) - len(pool) / 3) <= 1  # folds differ by at most one sample
        seen.update(val)
        if index.task == "classify":  # both classes in every fold's validation
            assert {int(s.target) for s in splits["val"]} == {0, 1}  # type: ignore[arg-type]
    assert set(seen) == pool and set(seen.values()) == {1}  # each validated exactly once
    # seeded: the same folds again
    again = split_samples(index, 0.2, seed=1, folds=(0, 3))["val"]
    assert [s.image for s in again] == [
        s.image for s in split_samples(index, 0.2, 1, (0, 3))["val"]
    ]


def test_ensemble_averages_the_members_probabilities() -> None:
    torch.manual_seed(0)
    members = [torch.nn.Conv2d(3, 4, 1) for _ in range(3)]
    x = torch.randn(2, 3, 5, 5)
    expected = torch.stack([torch.softmax(m(x), 1) for m in members]).mean(0)
    got = torch.softmax(Ensemble(members)(x), 1)
    torch.testing.assert_close(got, expected)


@pytest.mark.slow
def test_train_folds_pools_metrics_and_predicts_with_the_ensemble(tmp_path: Path, capsys) -> None:  # type: ignore[no-untyped-def]
    data = make_imagefolder(tmp_path / "cls", n_per_class=8)
    out = tmp_path / "runs"
    code = main(["train", str(data), "--folds", "2", "--no-plan", "--out", str(out), *FAST_CLS])
    assert code == 0
    parent = out / "train"
    assert (parent / "fold-0" / "model" / "weights.safetensors").is_file()
    assert (parent / "fold-1" / "report.html").is_file()
    metrics = json.loads((parent / "metrics.json").read_text())
    assert metrics["split"] == "cv"
    # out of fold: every one of the 16 images validated once, by the fold not trained on it
    assert int(np.asarray(metrics["confusion_matrix"]).sum()) == 16
    per_fold = [json.loads((parent / f"fold-{k}" / "metrics.json").read_text()) for k in range(2)]
    accuracies = [m["overall"]["accuracy"] for m in per_fold]
    assert metrics["folds"]["accuracy"]["values"] == accuracies
    assert metrics["folds"]["accuracy"]["mean"] == pytest.approx(np.mean(accuracies))
    assert metrics["overall"]["accuracy"] >= 0.75  # two learnable classes: chance is 0.5
    assert "2-fold cross-validation" in (parent / "report.html").read_text()
    # the parent predicts with both folds' networks, probabilities averaged
    ensemble, _ = load_model(parent)
    assert isinstance(ensemble, Ensemble) and len(ensemble.members) == 2
    members = [load_model(parent / f"fold-{k}")[0] for k in range(2)]
    x = torch.randn(3, 3, 32, 32)
    with torch.no_grad():
        expected = torch.stack([torch.softmax(m(x), 1) for m in members]).mean(0)
        torch.testing.assert_close(torch.softmax(ensemble(x), 1), expected)
    preds = tmp_path / "preds"
    assert main(["predict", str(parent), str(data / "cat"), "--out", str(preds)]) == 0
    rows = (preds / "predictions.csv").read_text().strip().splitlines()[1:]
    assert len(rows) == 8 and sum(r.split(",")[1] == "cat" for r in rows) >= 6
    # compare: the parent (with its fold spread) beside one fold
    capsys.readouterr()
    plot = tmp_path / "compare.png"
    args = ["compare", str(parent), str(parent / "fold-0"), "--plot", str(plot)]
    assert main(args) == 0
    printed = capsys.readouterr().out
    assert f"{metrics['overall']['accuracy']:.4f}" in printed
    assert f"{accuracies[0]:.4f}" in printed
    assert plot.stat().st_size > 1000
    assert main(args) == 1  # an existing file is never overwritten
    from liandan.comparison import compare

    with pytest.raises(OutputError):
        compare([parent], plot=plot)


def test_a_fold_without_folds_is_refused() -> None:
    from liandan.config import Config
    from liandan.data.datamodule import fold_of
    from liandan.errors import ConfigError

    with pytest.raises(ConfigError, match=r"without data\.folds"):
        fold_of(Config.load(None, ["data.fold=1"]))
    with pytest.raises(ConfigError, match="fold 3 of 3"):
        fold_of(Config.load(None, ["data.folds=3", "data.fold=3"]))
    assert fold_of(Config.load(None, ["data.folds=3", "data.fold=2"])) == (2, 3)
