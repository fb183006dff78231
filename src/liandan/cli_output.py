"""What the command line prints: tables on a terminal, whole lines everywhere else.

When the output is not a terminal (CI logs, ``| grep``, a file), nothing is folded at
80 columns: tables are as wide as their content and problems are printed one per line,
``FILE: error: REASON [KIND]`` with the whole path, so ``liandan scan DATA | grep
masks/`` finds every one.
Paths and messages are printed as text, never read as rich markup (a folder named
``[old]`` stays ``[old]``).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer
from rich.console import Console
from rich.markup import escape

from liandan.errors import LiandanError, TrainingInterrupted

try:  # recent typer releases vendor click; its exceptions are the ones raised
    from typer._click.exceptions import ClickException
except ImportError:  # pragma: no cover - older typer uses the click package
    from click.exceptions import ClickException  # type: ignore

if TYPE_CHECKING:
    from liandan.scan_report import ScanReport

WIDE = 100_000  # columns when not a terminal: tables take the width of their content


def plain_when_piped(*consoles: Console) -> None:
    """Consoles writing to a pipe or a file fold nothing (see the module docstring)."""
    for console in consoles:
        if not console.is_terminal:
            console.soft_wrap = True
            console.width = WIDE


def q(value: object) -> str:
    """A path or name, escaped to print as it is inside rich markup."""
    return escape(str(value))


def print_error(console: Console, exc: LiandanError) -> None:
    """One error: its kind in bold red, then the message, listed items and hint as text."""
    console.print(f"[bold red]{exc.kind}:[/bold red] {escape(exc.render())}", highlight=False)


def exit_code(exc: BaseException, console: Console, *, debug: bool) -> int:
    """Print why a command failed and return its exit code: 1 for the user's data, config
    or files (no traceback unless ``debug``), 2 for wrong usage, 130 when interrupted.
    Anything else is a bug in liandan and raised again, with its traceback."""
    if isinstance(exc, LiandanError | OSError) and not debug:
        if isinstance(exc, LiandanError):
            print_error(console, exc)
        else:  # a full disk, a permission refused... on a path: one line, not a traceback
            console.print(f"[bold red]error:[/bold red] {q(exc)} (--debug shows where)")
        return 1
    if isinstance(exc, typer.Exit):
        return int(exc.exit_code)
    if isinstance(exc, ClickException):
        exc.show()
        return int(exc.exit_code)
    if isinstance(exc, TrainingInterrupted):  # last.ckpt was written; it says how to resume
        console.print(f"[bold]interrupted:[/bold] {q(exc)}", highlight=False)
        return 130
    if isinstance(exc, KeyboardInterrupt | typer.Abort):
        console.print("interrupted")
        return 130
    raise exc


def show_metrics(console: Console, metrics: dict[str, Any], title: str) -> None:
    """The overall and per-class metric tables, then ``title`` (rich markup)."""
    from liandan.metrics import metrics_table

    console.print(metrics_table(metrics))
    console.print(per_class_table(metrics))
    console.print(title)


def per_class_columns(metrics: dict[str, Any]) -> list[str]:
    """The per-class metrics a metrics dict holds, as the task's evaluation wrote them:
    liandan's usual ones first in their usual order (precision ... support), then any
    other in the order the classes' rows first list them (detection's ``ap``, ``tp``
    ...; classification's ``roc_auc``)."""
    from liandan.metrics import PER_CLASS_KEYS

    seen = dict.fromkeys(k for row in metrics["per_class"].values() for k in row)
    return [k for k in PER_CLASS_KEYS if k in seen] + [k for k in seen if k not in PER_CLASS_KEYS]


def per_class_table(metrics: dict[str, Any]) -> Any:
    """A rich table with one row per class and one column per metric of
    :func:`per_class_columns` (a value a class lacks, or None, shown as "—")."""
    from rich.table import Table

    beta = metrics.get("overall", {}).get("beta")
    keys = per_class_columns(metrics)
    table = Table(title="per class")
    table.add_column("class")
    for key in keys:
        label = f"F{beta:g}" if key == "fbeta" and beta is not None else key.replace("_", " ")
        table.add_column(label, justify="right")
    for name in metrics["classes"]:
        row = metrics["per_class"].get(name, {})
        table.add_row(q(name), *(_cell(row.get(key)) for key in keys))
    return table


def _cell(value: Any) -> str:
    if value is None:
        return "—"
    return f"{value:.4f}" if isinstance(value, float) else q(value)


def compare_table(result: dict[str, Any], split: str) -> Any:
    """``liandan compare``'s table: one row per run, mean ± spread across folds."""
    from rich.table import Table

    table = Table(title=f"{split} metrics")
    table.add_column("run")
    for key in result["metrics"]:
        table.add_column(key.replace("_", " "), justify="right")
    for run, row in result["runs"].items():
        spread = result["spread"].get(run, {})
        cells = [
            "–" if v is None else f"{v:.4f}" + (f" ± {spread[k]:.4f}" if spread.get(k) else "")
            for k, v in row.items()
        ]
        table.add_row(q(run), *cells)
    return table


def print_scan_report(report: ScanReport, console: Console) -> None:
    """The problems (one per line when piped, else a table), then the fingerprint."""
    from rich.table import Table

    fp = report.fingerprint
    if report.problems and not console.is_terminal:
        console.print(f"{len(report.problems)} problem(s):", highlight=False)
        for p in report.problems:
            line = f"{p.file}: {p.severity}: {p.reason} [{p.kind}]"  # like a compiler's
            console.print(line, markup=False, highlight=False, soft_wrap=True)
    elif report.problems:
        table = Table(title=f"{len(report.problems)} problem(s)", title_justify="left")
        for col in ("severity", "kind", "file", "reason"):
            table.add_column(col, overflow="fold")
        for p in report.problems:
            style = "red" if p.severity == "error" else "yellow"
            table.add_row(f"[{style}]{p.severity}[/{style}]", q(p.kind), q(p.file), q(p.reason))
        console.print(table)
    table = Table(title=f"fingerprint of {q(report.root)}", title_justify="left", show_header=False)
    table.add_column("key", style="bold")
    table.add_column("value", overflow="fold")
    size = fp.image_size
    rows = [
        ("task / layout", f"{fp.task} / {fp.layout}"),
        ("samples", f"{fp.num_samples} ({', '.join(f'{k}: {v}' for k, v in fp.splits.items())})"),
        ("image size h x w", " / ".join(f"{k} {v[0]}x{v[1]}" for k, v in size.items())),
        ("bands / dtypes", f"{fp.bands} / {fp.dtypes}"),
        ("band mean", str(fp.band_mean)),
        ("band std", str(fp.band_std)),
        ("band 0.5 / 99.5 %", f"{fp.band_p005} / {fp.band_p995}"),
        ("images per class", str(fp.class_images)),
    ]
    if fp.class_pixels:
        rows.append(("pixels per class", str(fp.class_pixels)))
    rows.append(("imbalance ratio", str(fp.imbalance_ratio)))
    if fp.nodata_fraction is not None:
        source = "mask or alpha band" if fp.nodata_value is None else f"value {fp.nodata_value}"
        rows.append(("nodata", f"{source}: {fp.nodata_fraction:.2%} of pixels"))
    for key, value in rows:
        table.add_row(key, q(value))
    console.print(table)
    for note in report.notes:
        console.print(f"[dim]note: {q(note)}[/dim]")
    errors = sum(p.severity == "error" for p in report.problems)
    verdict = "[green]ready to train[/green]" if report.ok else f"[red]{errors} error(s)[/red]"
    console.print(f"{verdict}; {report.decoded} file(s) decoded, {report.cached} from the cache")
