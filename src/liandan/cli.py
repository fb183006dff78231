"""The command line: a thin typer shell over the Python API.

Exit codes: 0 success; 1 a problem with the user's data, config or files (one clear
message, no traceback unless --debug); 2 wrong usage; 130 interrupted.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

try:  # recent typer releases vendor click; its exceptions are the ones raised
    from typer._click.exceptions import BadParameter, ClickException, UsageError
except ImportError:  # pragma: no cover - older typer uses the click package
    from click.exceptions import BadParameter, ClickException, UsageError  # type: ignore

from liandan.errors import LiandanError

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    help="liandan (炼丹): train, evaluate and deploy image classification and "
    "segmentation models. Add --debug to any command for full tracebacks.",
)
console = Console()
err_console = Console(stderr=True, soft_wrap=True)

OutOpt = Annotated[Path, typer.Option("--out", help="parent folder of runs")]


def _show_metrics(metrics: dict[str, Any], title: str) -> None:
    from liandan.metrics import metrics_table, per_class_table

    console.print(metrics_table(metrics))
    console.print(per_class_table(metrics))
    console.print(title)


def _split_args(args: list[str] | None) -> tuple[str | None, list[str]]:
    """Positional words: at most one DATA folder, the rest key=value overrides."""
    data = None
    overrides = []
    for arg in args or []:
        if "=" in arg:
            overrides.append(arg)
        elif data is None:
            data = arg
        else:
            raise UsageError(f"unexpected argument {arg!r}: DATA was already {data!r}")
    return data, overrides


@app.command()
def demo(
    task: Annotated[str, typer.Option(help="segment or classify")] = "segment",
    out: OutOpt = Path("runs"),
    overrides: Annotated[list[str] | None, typer.Argument(help="key=value overrides")] = None,
) -> None:
    """Train, evaluate and predict on embedded demo data (no download)."""
    from liandan.api import demo as run_demo

    result = run_demo(task, out=out, overrides=overrides)
    for note in result.notes:
        console.print(f"[dim]note: {note}[/dim]")
    _show_metrics(result.metrics, f"validation metrics of [bold]{result.run_dir}[/bold]")
    if result.scene_metrics is not None:
        miou = result.scene_metrics["overall"]["mean_iou"]
        console.print(f"scene prediction: {result.predictions} (mean IoU vs truth {miou:.3f})")
    console.print(f"demo finished in {result.duration_s:.0f} s: run folder {result.run_dir}")


@app.command(context_settings={"allow_extra_args": False})
def train(
    args: Annotated[
        list[str] | None,
        typer.Argument(help="[DATA] then key=value overrides", metavar="[DATA] [KEY=VALUE]..."),
    ] = None,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="YAML config")] = None,
    out: OutOpt = Path("runs"),
    name: Annotated[str, typer.Option(help="run name (suffixed when it exists)")] = "train",
) -> None:
    """Train a model on DATA (or data.root from the config)."""
    from liandan.api import train as run_train

    data, overrides = _split_args(args)
    result = run_train(data, config, overrides, out=out, name=name)
    for note in result.notes:
        console.print(f"[dim]note: {note}[/dim]")
    _show_metrics(result.metrics, f"validation metrics of [bold]{result.run_dir}[/bold]")
    console.print(f"run folder: {result.run_dir}")


@app.command()
def evaluate(
    run: Annotated[Path, typer.Argument(help="run folder")],
    data: Annotated[Path | None, typer.Argument(help="dataset (default: the run's)")] = None,
    split: Annotated[str, typer.Option(help="val, test or all")] = "val",
    as_json: Annotated[bool, typer.Option("--json", help="print metrics.json")] = False,
) -> None:
    """Evaluate a run's model on a split of its dataset."""
    from liandan.api import evaluate as run_evaluate

    if split not in ("val", "test", "all"):
        raise BadParameter("must be val, test or all", param_hint="--split")
    metrics = run_evaluate(run, data, split=split)
    if as_json:
        print(json.dumps(metrics, indent=2))
    else:
        _show_metrics(metrics, f"{split} metrics of [bold]{run}[/bold]")


@app.command()
def predict(
    run: Annotated[Path, typer.Argument(help="run folder")],
    inputs: Annotated[list[Path], typer.Argument(help="images, folders or rasters")],
    out: Annotated[Path, typer.Option("--out", help="output folder")] = Path("predictions"),
    tile: Annotated[int | None, typer.Option(help="tile size for large images")] = None,
    overlap: Annotated[float, typer.Option(help="tile overlap fraction")] = 0.25,
    blend: Annotated[str, typer.Option(help="gaussian, hann or none")] = "gaussian",
    tta: Annotated[bool, typer.Option("--tta", help="flip test-time augmentation")] = False,
) -> None:
    """Predict images or rasters with a trained run."""
    from liandan.predict import predict as run_predict

    if blend not in ("gaussian", "hann", "none"):
        raise BadParameter("must be gaussian, hann or none", param_hint="--blend")
    if not 0 <= overlap < 1:
        raise BadParameter("must be in [0, 1)", param_hint="--overlap")
    result = run_predict(run, inputs, out=out, tile=tile, overlap=overlap, blend=blend, tta=tta)
    console.print(f"{len(result.predictions)} input(s) predicted: {result.out_dir}")


@app.command()
def score(
    pred: Annotated[Path, typer.Argument(help="predictions: mask folder, mask file or CSV")],
    truth: Annotated[Path, typer.Argument(help="ground truth of the same kind")],
    as_json: Annotated[bool, typer.Option("--json", help="print metrics.json")] = False,
    ignore_index: Annotated[int | None, typer.Option(help="truth value to ignore")] = None,
) -> None:
    """Metrics for any predictions against ground truth."""
    from liandan.score import score as run_score

    metrics = run_score(pred, truth, ignore_index=ignore_index)
    if as_json:
        print(json.dumps(metrics, indent=2))
    else:
        _show_metrics(metrics, f"{pred} against {truth}")


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the app and maps errors to exit codes."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        app(args=args, prog_name="liandan", standalone_mode=False)
    except LiandanError as exc:
        if debug:
            raise
        err_console.print(f"[bold red]{exc.kind}:[/bold red] {exc.render()}", highlight=False)
        return 1
    except typer.Exit as exc:
        return exc.exit_code
    except ClickException as exc:
        exc.show()
        return exc.exit_code
    except (KeyboardInterrupt, typer.Abort):
        err_console.print("interrupted")
        return 130
    return 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
