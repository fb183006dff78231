"""Tests for liandan.lr_find: the range test, its suggestion rules, restoring, outputs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from conftest import FAST_CLS, make_imagefolder
from liandan.cli import main
from liandan.errors import ConfigError
from liandan.lr_find import find_lr, suggest_steepest, suggest_valley


def _toy_loader(seed: int = 0) -> DataLoader:
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(64, 4, generator=gen)
    y = (x[:, 0] > 0).long()
    return DataLoader(
        TensorDataset(x, y), batch_size=8, shuffle=True, generator=torch.Generator().manual_seed(1)
    )


def _toy_model() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 8), nn.BatchNorm1d(8), nn.ReLU(), nn.Linear(8, 2))


def test_suggestion_rules_on_a_known_curve() -> None:
    lrs = list(np.logspace(-7, 1, 81))
    logs = np.log10(lrs)
    # flat, then falling fastest at 1e-3, then a minimum near 1e-1 and divergence
    curve = 1.0 - 0.5 / (1 + np.exp(-3 * (logs + 3))) + np.where(logs > -1, (logs + 1) ** 2, 0)
    losses = list(curve)
    steepest = suggest_steepest(lrs, losses)
    assert abs(np.log10(steepest) + 3) <= 0.1
    valley = suggest_valley(lrs, losses)
    # inside the longest descent (between the plateau and the minimum), before the minimum
    assert 1e-5 < valley < lrs[int(np.argmin(losses))]


def test_find_lr_restores_model_optimizer_and_random_state() -> None:
    model, loader = _toy_model(), _toy_loader()
    optimizer = torch.optim.SGD(model.parameters(), lr=0.05, momentum=0.9)
    # give the optimizer some state (momentum buffers) to be restored
    x, y = next(iter(loader))
    nn.functional.cross_entropy(model(x), y).backward()
    optimizer.step()
    weights = {k: v.clone() for k, v in model.state_dict().items()}
    opt_state = optimizer.state_dict()
    momentum = {k: v["momentum_buffer"].clone() for k, v in opt_state["state"].items()}
    torch_rng, np_rng = torch.get_rng_state(), np.random.get_state()[1].copy()
    loader_rng = loader.generator.get_state()

    result = find_lr(model, loader, nn.CrossEntropyLoss(), build=lambda m: optimizer, steps=40)

    for key, value in model.state_dict().items():
        assert torch.equal(value, weights[key]), key  # BatchNorm statistics included
    after = optimizer.state_dict()
    assert [g["lr"] for g in after["param_groups"]] == [0.05]
    for key, value in after["state"].items():
        assert torch.equal(value["momentum_buffer"], momentum[key])
    assert torch.equal(torch.get_rng_state(), torch_rng)
    assert np.array_equal(np.random.get_state()[1], np_rng)
    assert torch.equal(loader.generator.get_state(), loader_rng)
    assert 1e-7 <= result.suggestion <= 10.0
    assert result.lrs[0] <= result.suggestion <= result.lrs[-1]
    assert set(result.suggestions) == {"valley", "steepest"}


def test_find_lr_is_seeded_and_stops_on_divergence() -> None:
    runs = []
    for _ in range(2):
        model, loader = _toy_model(), _toy_loader()
        runs.append(
            find_lr(
                model,
                loader,
                nn.CrossEntropyLoss(),
                build=lambda m: torch.optim.SGD(m.parameters(), lr=1.0),
                start_lr=1e-4,
                end_lr=1e4,
                steps=60,
            )
        )
    assert runs[0].losses == runs[1].losses
    assert runs[0].diverged and len(runs[0].lrs) < 60  # 1e4 with plain SGD blows up


def test_find_lr_rejects_a_bad_range() -> None:
    with pytest.raises(ConfigError):
        find_lr(_toy_model(), _toy_loader(), nn.CrossEntropyLoss(), build=torch.optim.SGD,
                start_lr=1.0, end_lr=0.1)  # fmt: skip


@pytest.mark.slow
def test_lr_find_command_writes_plot_and_curve(tmp_path: Path) -> None:
    data = make_imagefolder(tmp_path / "cls", n_per_class=6)
    code = main(["lr-find", str(data), *FAST_CLS, "--steps", "12", "--out", str(tmp_path / "r")])
    assert code == 0
    folder = tmp_path / "r" / "lr-find"
    summary = json.loads((folder / "lr_find.json").read_text())
    low, high = summary["range"]
    assert low == pytest.approx(1e-7) and low <= summary["suggestion"] <= high
    assert (folder / "lr_find.png").stat().st_size > 1000
    rows = (folder / "lr_find.csv").read_text().splitlines()
    assert rows[0] == "lr,loss,smoothed_loss" and len(rows) == summary["steps"] + 1


@pytest.mark.slow
def test_optim_lr_auto_is_written_resolved(tmp_path: Path) -> None:
    from liandan.api import train

    data = make_imagefolder(tmp_path / "cls", n_per_class=6)
    overrides = [*FAST_CLS, "train.epochs=1", "train.steps_per_epoch=1", "optim.lr=auto"]
    result = train(data, overrides=overrides, out=tmp_path / "runs")
    saved = yaml.safe_load((result.run_dir / "config.yaml").read_text())
    suggestion = json.loads((result.run_dir / "lr_find.json").read_text())["suggestion"]
    assert isinstance(saved["optim"]["lr"], float)
    assert saved["optim"]["lr"] == pytest.approx(suggestion)
    assert (result.run_dir / "lr_find.png").is_file()
