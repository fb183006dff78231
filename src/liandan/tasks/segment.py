"""Semantic segmentation: one class per pixel, from masks or vector layers."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from liandan.tasks.base import Task
from liandan.tasks.registry import register_task

if TYPE_CHECKING:
    from liandan.data.layouts import ClassSpec


class Segment(Task):
    name = "segment"
    aliases = ("segmentation",)
    targets = "masks"
    headline = "mean_iou"
    default_loss = "ce+dice"
    batch_cap = {"cuda": 64, "cpu": 16}
    uses_raster_tiles = True

    def default_arch(self, image_size: int) -> str:
        return "unet"

    def search_space(self) -> dict[str, Any]:
        from liandan.tuning import SEGMENT_SPACE

        return dict(SEGMENT_SPACE)

    def target_mapper(self, classes: ClassSpec) -> Any:
        from liandan.data.masks import MaskMapper

        return MaskMapper(classes)

    def reads_classes_yaml(self) -> bool:
        return True


register_task(Segment())
