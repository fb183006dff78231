"""The run's report: ``plots/*.png`` (matplotlib, Agg backend) and ``report.html``.

Modules: :mod:`~liandan.report.samples` (one prediction pass over a split),
:mod:`~liandan.report.figures` (curves, confusion matrix, PR/ROC, class distribution),
:mod:`~liandan.report.gallery` (overlays and top losses), :mod:`~liandan.report.summary`
(data, bands, environment), :mod:`~liandan.report.html` (the page) and
:mod:`~liandan.report.build` (all of it for a run folder).

``liandan.report(run)`` is :func:`write_report`: importing a subpackage sets the
package's attribute ``liandan.report`` to the module, so the module itself is made
callable rather than a function of the same name being shadowed by it.

>>> liandan.report("runs/train")  # doctest: +SKIP
PosixPath('runs/train/report.html')
"""

from __future__ import annotations

from liandan.callable_module import make_callable
from liandan.report.build import write_plots, write_report
from liandan.report.figures import plot_confusion, plot_curves

__all__ = ["plot_confusion", "plot_curves", "write_plots", "write_report"]


make_callable(__name__, "write_report")
