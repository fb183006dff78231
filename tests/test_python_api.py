"""The Python API of the README: ``liandan.<command>(...)`` for every command.

``liandan.predict``, ``liandan.export``, ``liandan.score``, ``liandan.plan``,
``liandan.tune`` and ``liandan.report`` are both a submodule and a function. Importing
the submodule (training imports ``liandan.predict``, for one) replaces the package's
attribute with the module; these tests check the name still calls the function then.
"""

from __future__ import annotations

import importlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import liandan

COMMANDS = [
    ("predict", "predict"),
    ("export", "export"),
    ("score", "score"),
    ("plan", "plan"),
    ("tune", "tune"),
    ("report", "write_report"),
]


@pytest.mark.parametrize(("name", "function"), COMMANDS)
def test_a_command_stays_callable_once_its_module_is_imported(
    name: str, function: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    module = importlib.import_module(f"liandan.{name}")
    assert getattr(liandan, name) is module  # the import put the module there
    monkeypatch.setattr(module, function, lambda *a, **k: ("called", a, k))
    assert getattr(liandan, name)("runs/x", out="y") == ("called", ("runs/x",), {"out": "y"})


def test_score_through_the_package_after_the_module_import(tmp_path: Path) -> None:
    importlib.import_module("liandan.score")
    truth = np.zeros((8, 8), np.uint8)
    truth[:, 4:] = 1
    pred = truth.copy()
    pred[0, 0] = 1  # one pixel of 64 wrong
    for folder, mask in (("truth", truth), ("pred", pred)):
        (tmp_path / folder).mkdir()
        Image.fromarray(mask).save(tmp_path / folder / "a.png")
    metrics = liandan.score(tmp_path / "pred", tmp_path / "truth")
    assert metrics["overall"]["accuracy"] == pytest.approx(63 / 64)


@pytest.mark.parametrize("name", [n for n in liandan.__all__ if n.islower()])
def test_every_command_of_the_package_is_callable(name: str) -> None:
    assert callable(getattr(liandan, name))
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        liandan.nope  # noqa: B018
