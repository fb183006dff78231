"""Tasks are first-class: a registry of Task objects that the shared machinery asks.

No module outside ``liandan/tasks`` tests a task's name: what differs between tasks is
a method or attribute of the task, so a new task is a new module in that package.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest

import liandan
from liandan.config import Config, LossConfig
from liandan.engine.batch_size import batch_cap
from liandan.errors import ConfigError
from liandan.losses import build_loss
from liandan.tasks import Task, get_task, register_task, registry, task_names
from liandan.tasks.classify import Classify

PACKAGE = Path(liandan.__file__).parent
# a comparison with a task name: task == "segment", "classify" != x, in ("segment", ...)
BRANCH = re.compile(
    r"""(==|!=|\bin\s*[(\[{])\s*["'](?:segment|classify|detect)["']"""
    r"""|["'](?:segment|classify|detect)["']\s*(==|!=)"""
    r"""|\bin\s*[(\[{][^)\]}]*["'](?:segment|classify|detect)["']"""
)


def test_builtin_tasks_are_registered_with_their_aliases() -> None:
    assert task_names() == ["classify", "detect", "segment"]
    assert get_task("segmentation") is get_task("segment")
    assert get_task("classification").name == "classify"
    assert get_task("segment").monitor == "val/mean_iou"
    assert get_task("classify").monitor == "val/macro_f1"
    assert get_task("detection") is get_task("detect")
    assert get_task("detect").monitor == "val/map"


def test_an_unknown_task_names_the_registered_ones() -> None:
    with pytest.raises(ConfigError) as info:
        get_task("detection-ish")
    assert "classify, detect, segment" in info.value.render()
    with pytest.raises(ConfigError) as info:
        Config.load(None, ["task=segmnt"])
    assert "segmnt" in str(info.value) and "classify, detect, segment" in str(info.value)


def test_config_reads_a_task_alias_as_its_name() -> None:
    assert Config.load(None, ["task=segmentation"]).task == "segment"


def test_no_task_name_branch_outside_the_tasks_package() -> None:
    found = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if "tasks" in path.relative_to(PACKAGE).parts:
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            code = line.split("#", 1)[0]
            if BRANCH.search(code) and not code.lstrip().startswith(">>>"):
                found.append(f"{path.relative_to(PACKAGE)}:{number}: {line.strip()}")
    assert found == []


def test_the_branch_pattern_finds_the_shapes_it_forbids() -> None:
    for line in (
        'if task == "segment":',
        "x = a if cfg.task != 'classify' else b",
        'if cfg.task in (None, "segment"):',
        'if "classify" == meta["task"]:',
        'elif spec.name == "detect":',
    ):
        assert BRANCH.search(line), line
    assert not BRANCH.search('register("segment", spec)')


class Tagging(Classify):
    """A plug-in task: classification under another name, with its own defaults."""

    name = "tagging"
    title = "tagging"
    aliases = ("tags",)
    headline = "accuracy"
    default_loss = "focal"
    batch_cap_gpu = 32
    batch_cap_cpu = 4

    def search_space(self) -> dict:
        return {"loss.focal_gamma": [1.0, 2.0]}


@pytest.fixture
def tagging(monkeypatch: pytest.MonkeyPatch) -> Task:
    monkeypatch.setattr(registry, "_TASKS", dict(registry._TASKS))
    monkeypatch.setattr(registry, "_ALIASES", dict(registry._ALIASES))
    return register_task(Tagging())


def test_a_registered_task_is_what_shared_machinery_asks(tagging: Task) -> None:
    from liandan.tuning import load_space

    cfg = Config.load(None, ["task=tags"])
    assert cfg.task == "tagging"
    assert cfg.resolved_monitor() == "val/accuracy"
    loss = build_loss(LossConfig(), task="tagging", num_classes=3)
    assert type(loss).__name__ == "FocalLoss"
    assert batch_cap("tagging", 10_000, gpu=False) == 4
    assert batch_cap("tagging", 10_000, gpu=True) == 32
    assert load_space(None, "tagging")["loss.focal_gamma"] == [1.0, 2.0]
    # its architectures are the classifier's (a subclass keeps timm classifiers)
    from liandan.models import resolve_arch

    assert resolve_arch("tagging", "auto") == "resnet18"
