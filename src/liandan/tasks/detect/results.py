"""What one evaluation pass of a detector yields, for metrics.json and the report."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from liandan.reporting.samples import SampleResults


@dataclass
class DetectionResults(SampleResults):
    """:class:`~liandan.reporting.samples.SampleResults` of a detection split.

    ``confusion`` is the ``(K + 1) x (K + 1)`` box confusion matrix (last row and
    column: background).

    Attributes:
        found: the :class:`~liandan.tasks.detect.metrics.DetectionMetrics`.
        predictions: per sample, its detections in the original image's pixels.
    """

    found: Any = None
    predictions: list[Any] = field(default_factory=list)
