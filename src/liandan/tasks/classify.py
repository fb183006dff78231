"""Image classification: one class label per image."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from liandan.tasks.base import Task
from liandan.tasks.registry import register_task

if TYPE_CHECKING:
    from liandan.data.layouts import Sample


class Classify(Task):
    name = "classify"
    aliases = ("classification",)
    targets = "image labels"
    headline = "macro_f1"
    default_loss = "ce"
    batch_cap = {"cuda": 256, "cpu": 64}
    mixes_labels = True

    def default_arch(self, image_size: int) -> str:
        # LeNet for tiny inputs (digits, 32 px), a ResNet otherwise
        return "lenet" if image_size <= 64 else "resnet18"

    def search_space(self) -> dict[str, Any]:
        from liandan.tuning import CLASSIFY_SPACE

        return dict(CLASSIFY_SPACE)

    def stratum(self, sample: Sample) -> int:
        return int(sample.target)  # type: ignore[arg-type]


register_task(Classify())
