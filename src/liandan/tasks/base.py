"""The interface every task implements.

A :class:`Task` holds what differs between tasks and only that: how targets are read,
checked and kept aligned by transforms, how a split is stratified, the default model,
loss, monitor and search space, what predict writes and what the report shows. The
shared machinery calls these methods; it never tests a task's name.

Methods import what they use when called, so that importing the registry (as reading a
config does) stays cheap.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar

if TYPE_CHECKING:
    import numpy as np
    import torch

    from liandan.config import Config
    from liandan.data.layouts import ClassSpec, DatasetIndex, Sample


class Task:
    """One computer-vision task; subclasses fill in the class attributes and methods."""

    name: ClassVar[str]
    aliases: ClassVar[tuple[str, ...]] = ()
    targets: ClassVar[str]  # what a sample's target is, in words ("masks", "image labels")
    headline: ClassVar[str]  # the metrics.json overall key that ranks runs
    default_loss: ClassVar[str]
    # largest batch the automatic batch size picks, per device kind
    batch_cap: ClassVar[dict[str, int]]
    # mixup / cutmix mix whole-image labels; dense targets cannot be mixed that way
    mixes_labels: ClassVar[bool] = False
    # large or georeferenced rasters are trained on tiles and predicted streamed
    uses_raster_tiles: ClassVar[bool] = False

    def __repr__(self) -> str:
        return f"<task {self.name}>"

    # ------------------------------------------------------------------ defaults
    @property
    def monitor(self) -> str:
        """The validation metric checkpoints and early stopping follow."""
        return f"val/{self.headline}"

    def default_arch(self, image_size: int) -> str:
        """The architecture ``model.arch=auto`` resolves to."""
        raise NotImplementedError

    def search_space(self) -> dict[str, Any]:
        """Task-specific entries added to the default tuning search space."""
        return {}

    # ---------------------------------------------------------------------- data
    def stratum(self, sample: Sample) -> int:
        """The group a sample is dealt from when splitting (one group: no stratification)."""
        return 0

    def target_mapper(self, classes: ClassSpec) -> Any:
        """What turns a stored target into class indices (None: targets are indices)."""
        return None

    def prepare_classes(self, index: DatasetIndex, root: Path, ignore_index: int | None) -> None:
        """Settle ``index.classes`` from files beside the data (e.g. classes.yaml)."""

    def reads_classes_yaml(self) -> bool:
        """Whether ``classes.yaml`` beside the data describes this task's targets."""
        return False

