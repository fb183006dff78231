"""The run's report: ``plots/*.png`` (matplotlib, Agg backend) and ``report.html``.

Modules: :mod:`~liandan.reporting.samples` (one prediction pass over a split),
:mod:`~liandan.reporting.figures` (curves, confusion matrix, PR/ROC, class distribution),
:mod:`~liandan.reporting.gallery` (overlays and top losses), :mod:`~liandan.reporting.summary`
(data, bands, environment), :mod:`~liandan.reporting.html` (the page) and
:mod:`~liandan.reporting.build` (all of it for a run folder).

``liandan.report(run)`` is :func:`write_report` (the package is named ``reporting`` so
that importing it never replaces the function ``liandan.report``).

>>> liandan.report("runs/train")  # doctest: +SKIP
PosixPath('runs/train/report.html')
"""

from __future__ import annotations

from liandan.reporting.build import write_plots, write_report
from liandan.reporting.figures import plot_confusion, plot_curves

__all__ = ["plot_confusion", "plot_curves", "write_plots", "write_report"]
