"""The Python API of the README: ``liandan.<command>(...)`` for every command.

Each command is a plain function of the package, whose signature IDEs and mypy see.
No submodule may be named like one of them: importing ``liandan.<name>`` sets the
package's attribute ``<name>`` to the module, which would replace the function.
"""

from __future__ import annotations

import importlib
import importlib.util
import inspect
import pkgutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

import liandan

COMMANDS = [n for n in liandan.__all__ if n.islower()]


def test_no_submodule_is_named_like_a_command() -> None:
    clashes = [n for n in COMMANDS if importlib.util.find_spec(f"liandan.{n}") is not None]
    assert clashes == []


def test_every_command_stays_a_function_once_every_submodule_is_imported() -> None:
    for info in pkgutil.walk_packages(liandan.__path__, "liandan."):
        importlib.import_module(info.name)
    for name in COMMANDS:
        value = getattr(liandan, name)
        assert inspect.isfunction(value), f"liandan.{name} is {value!r}"
        module, function = liandan._LAZY[name]
        assert value is getattr(importlib.import_module(module), function)


def test_the_functions_have_their_documented_signatures() -> None:
    predict = inspect.signature(liandan.predict).parameters
    assert list(predict)[:3] == ["run", "inputs", "out"]
    assert {"tile", "overlap", "blend", "tta", "batch_size", "precision"} <= set(predict)
    assert list(inspect.signature(liandan.export).parameters)[:2] == ["run", "format"]
    assert list(inspect.signature(liandan.train).parameters)[:3] == ["data", "config", "overrides"]
    assert list(inspect.signature(liandan.report).parameters)[:1] == ["run"]


def test_an_unknown_attribute_is_an_attribute_error() -> None:
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        liandan.nope  # noqa: B018


def test_score_through_the_package(tmp_path: Path) -> None:
    truth = np.zeros((8, 8), np.uint8)
    truth[:, 4:] = 1
    pred = truth.copy()
    pred[0, 0] = 1  # one pixel of 64 wrong
    for folder, mask in (("truth", truth), ("pred", pred)):
        (tmp_path / folder).mkdir()
        Image.fromarray(mask).save(tmp_path / folder / "a.png")
    metrics = liandan.score(tmp_path / "pred", tmp_path / "truth")
    assert metrics["overall"]["accuracy"] == pytest.approx(63 / 64)
