"""The command line: a thin typer shell over the Python API.

Exit codes: 0 success; 1 a problem with the user's data, config or files (one clear
message, no traceback unless --debug); 2 wrong usage; 130 interrupted.
"""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

try:  # recent typer releases vendor click; its exceptions are the ones raised
    from typer._click.exceptions import BadParameter, UsageError
except ImportError:  # pragma: no cover - older typer uses the click package
    from click.exceptions import BadParameter, UsageError  # type: ignore

from liandan.cli_output import exit_code, plain_when_piped, q, show_metrics

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
DataArgs = Annotated[
    list[str] | None,
    typer.Argument(help="[DATA] then key=value overrides", metavar="[DATA] [KEY=VALUE]..."),
]
ConfigOpt = Annotated[Path | None, typer.Option("--config", "-c", help="YAML config")]


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
    from liandan.demo_run import demo as run_demo
    from liandan.runs import check_out

    check_out(out)  # before any work: --out can hold a folder
    result = run_demo(task, out=out, overrides=overrides)
    for note in result.notes:
        console.print(f"[dim]note: {q(note)}[/dim]")
    show_metrics(console, result.metrics, f"validation metrics of [bold]{q(result.run_dir)}[/bold]")
    if result.scene_metrics is not None:
        miou = result.scene_metrics["overall"]["mean_iou"]
        console.print(f"scene prediction: {q(result.predictions)} (mean IoU vs truth {miou:.3f})")
    console.print(f"demo finished in {result.duration_s:.0f} s: run folder {q(result.run_dir)}")


@app.command(context_settings={"allow_extra_args": False})
def train(
    args: DataArgs = None,
    config: ConfigOpt = None,
    out: OutOpt = Path("runs"),
    name: Annotated[str, typer.Option(help="run name (suffixed when it exists)")] = "train",
    init_from: Annotated[
        Path | None,
        typer.Option("--init-from", help="start from this run's weights (new data, new head)"),
    ] = None,
    resume: Annotated[
        Path | None, typer.Option("--resume", help="continue this interrupted run (its folder)")
    ] = None,
    unsafe_load: Annotated[
        bool, typer.Option("--unsafe-load", help="allow pickled checkpoints (trusted files only)")
    ] = False,
    plan: Annotated[
        bool | None,
        typer.Option(
            "--plan/--no-plan",
            help="start from `liandan plan`'s config for DATA (the default without --config "
            "or --init-from); --no-plan: the built-in defaults",
        ),
    ] = None,
    budget: Annotated[
        str | None, typer.Option(help="wall-clock budget, e.g. 10m: epochs fitted to it")
    ] = None,
    folds: Annotated[
        int | None,
        typer.Option(help="k-fold cross-validation: one run per fold in NAME/fold-K, an ensemble"),
    ] = None,
) -> None:
    """Train a model on DATA (or data.root from the config)."""
    from liandan.api import resume as run_resume
    from liandan.api import train as run_train
    from liandan.runs import check_out

    data, overrides = _split_args(args)
    if resume is not None:
        if data or overrides or config or init_from or folds:
            raise UsageError("--resume takes only the run folder: its config.yaml is used")
        result = run_resume(resume, unsafe_load=unsafe_load)
    else:
        check_out(out, name)  # before any work: --out can hold a folder, --name is one
        if unsafe_load:
            overrides.append("train.unsafe_load=true")
        if budget is not None:
            overrides.append(f"train.budget={budget}")
        if plan is None:  # `liandan train DATA`: the dataset's plan, then your overrides
            plan = config is None and init_from is None
        from liandan.engine.budget import process_start

        if folds is not None:  # one run per fold, pooled metrics, an ensemble
            from liandan.folds import train_folds

            if init_from is not None:
                raise UsageError("--folds and --init-from cannot be combined")
            result = train_folds(
                data, config, overrides, folds=folds, out=out, name=name, plan=plan,
                started=process_start(),
            )  # fmt: skip
        else:
            result = run_train(
                data, config, overrides, out=out, name=name, init_from=init_from, plan=plan,
                started=process_start(),  # a budget counts from the command's start
            )  # fmt: skip
    if not result.metrics:  # a DDP process other than rank 0: rank 0 reports
        return
    for note in result.notes:
        console.print(f"[dim]note: {q(note)}[/dim]")
    show_metrics(console, result.metrics, f"validation metrics of [bold]{q(result.run_dir)}[/bold]")
    console.print(f"run folder: {q(result.run_dir)}")


@app.command()
def compare(
    runs: Annotated[list[Path], typer.Argument(help="finished run folders")],
    split: Annotated[str, typer.Option(help="val (metrics.json) or a split evaluated")] = "val",
    plot: Annotated[Path | None, typer.Option(help="also draw them into this new PNG")] = None,
) -> None:
    """Print (and plot) finished runs' metrics side by side."""
    from liandan.cli_output import compare_table
    from liandan.comparison import compare as run_compare

    result = run_compare(list(runs), split=split, plot=plot)
    console.print(compare_table(result, split))
    if plot is not None:
        console.print(f"plot: {q(plot)}")


@app.command("lr-find")
def lr_find(
    args: DataArgs = None,
    config: ConfigOpt = None,
    out: OutOpt = Path("runs"),
    name: Annotated[str, typer.Option(help="folder name (suffixed when it exists)")] = "lr-find",
    steps: Annotated[int, typer.Option(min=2, help="most training steps")] = 100,
    start_lr: Annotated[float, typer.Option(help="first learning rate")] = 1e-7,
    end_lr: Annotated[float, typer.Option(help="last learning rate")] = 10.0,
    method: Annotated[str, typer.Option(help="valley or steepest")] = "valley",
) -> None:
    """Learning-rate range test: suggests optim.lr and plots loss against lr."""
    from liandan.api import lr_find as run_lr_find
    from liandan.runs import check_out

    check_out(out, name)
    if method not in ("valley", "steepest"):
        raise BadParameter("must be valley or steepest", param_hint="--method")
    data, overrides = _split_args(args)
    folder, result = run_lr_find(
        data,
        config,
        overrides,
        out=out,
        name=name,
        steps=steps,
        start_lr=start_lr,
        end_lr=end_lr,
        method=method,
    )
    others = ", ".join(f"{k} {v:.2e}" for k, v in sorted(result.suggestions.items()))
    console.print(f"suggested optim.lr={result.suggestion:.2e} ({others})")
    console.print(f"plot and curve: {q(folder / 'lr_find.png')}")


@app.command()
def evaluate(
    run: Annotated[Path, typer.Argument(help="run folder")],
    data: Annotated[Path | None, typer.Argument(help="dataset (default: the run's)")] = None,
    split: Annotated[str, typer.Option(help="val, test or all")] = "val",
    as_json: Annotated[bool, typer.Option("--json", help="print metrics.json")] = False,
) -> None:
    """Evaluate a run's model on a split of its dataset."""
    from liandan.evaluation import evaluate as run_evaluate

    if split not in ("val", "test", "all"):
        raise BadParameter("must be val, test or all", param_hint="--split")
    metrics = run_evaluate(run, data, split=split)
    if as_json:
        print(json.dumps(metrics, indent=2))
    else:
        show_metrics(console, metrics, f"{split} metrics of [bold]{q(run)}[/bold]")


@app.command()
def predict(
    run: Annotated[Path, typer.Argument(help="run folder")],
    inputs: Annotated[list[Path], typer.Argument(help="images, folders or rasters")],
    out: Annotated[Path, typer.Option("--out", help="output folder")] = Path("predictions"),
    # tile .. precision: None takes the run's config.yaml predict section (flags win)
    tile: Annotated[int | None, typer.Option(help="tile size for large images")] = None,
    overlap: Annotated[float | None, typer.Option(help="tile overlap fraction")] = None,
    blend: Annotated[str | None, typer.Option(help="gaussian, hann or none")] = None,
    tta: Annotated[
        bool | None, typer.Option("--tta/--no-tta", help="flip test-time augmentation")
    ] = None,
    probs: Annotated[
        bool, typer.Option("--probs", help="rasters: also write probabilities")
    ] = False,
    vector: Annotated[
        str | None, typer.Option(help="rasters: also write polygons (geojson or gpkg)")
    ] = None,
    min_area: Annotated[float, typer.Option(help="smallest polygon kept, in pixels")] = 0.0,
    cog: Annotated[bool, typer.Option("--cog", help="rasters: Cloud-Optimized GeoTIFF")] = False,
    batch_size: Annotated[int | None, typer.Option(help="tiles per batch")] = None,
    precision: Annotated[
        str | None,
        typer.Option(help="auto (bf16 on a GPU, float32 on the CPU), 32, bf16 or 16"),
    ] = None,
) -> None:
    """Predict images or rasters with a trained run (rasters are streamed, any size).

    --tile, --overlap, --blend, --tta, --batch-size and --precision default to the
    run's config.yaml (its predict section); a flag given wins.
    """
    from liandan.prediction import PRECISIONS
    from liandan.prediction import predict as run_predict

    if blend not in (None, "gaussian", "hann", "none"):
        raise BadParameter("must be gaussian, hann or none", param_hint="--blend")
    if overlap is not None and not 0 <= overlap < 1:
        raise BadParameter("must be in [0, 1)", param_hint="--overlap")
    if vector not in (None, "geojson", "gpkg"):
        raise BadParameter("must be geojson or gpkg", param_hint="--vector")
    if precision not in (None, *PRECISIONS):
        raise BadParameter(f"must be one of {', '.join(PRECISIONS)}", param_hint="--precision")
    result = run_predict(
        run,
        inputs,
        out=out,
        tile=tile,
        overlap=overlap,
        blend=blend,
        tta=tta,
        batch_size=batch_size,
        precision=precision,
        probs=probs,
        vector=vector,
        min_area=min_area,
        cog=cog,
        progress=sys.stderr.isatty(),
    )
    console.print(f"{len(result.predictions)} input(s) predicted: {q(result.out_dir)}")


@app.command()
def score(
    pred: Annotated[Path, typer.Argument(help="predictions: mask folder, mask file or CSV")],
    truth: Annotated[Path, typer.Argument(help="ground truth of the same kind")],
    as_json: Annotated[bool, typer.Option("--json", help="print metrics.json")] = False,
    ignore_index: Annotated[int | None, typer.Option(help="truth value to ignore")] = None,
    nodata: Annotated[int | None, typer.Option(help="value meaning no data (not counted)")] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="folder to write metrics.json and confusion_matrix.png"),
    ] = None,
) -> None:
    """Metrics for any predictions against ground truth."""
    from liandan.scoring import score as run_score

    metrics = run_score(pred, truth, ignore_index=ignore_index, nodata=nodata, out=out)
    if as_json:
        print(json.dumps(metrics, indent=2))
    else:
        show_metrics(console, metrics, f"{q(pred)} against {q(truth)}")
        if out is not None:
            console.print(f"written: {q(out / 'metrics.json')}, {q(out / 'confusion_matrix.png')}")


@app.command()
def report(run: Annotated[Path, typer.Argument(help="run folder")]) -> None:
    """(Re)build a run's report.html and plots/ (predicts its validation split again)."""
    from liandan.reporting import write_report

    console.print(f"report: {q(write_report(run))}")


@app.command()
def scan(
    data: Annotated[Path, typer.Argument(help="dataset folder")],
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="decode every file again")] = False,
) -> None:
    """Check every file of DATA and print its fingerprint; exit 1 on a blocking problem."""
    from liandan.cli_output import print_scan_report
    from liandan.scan_report import scan as run_scan

    report = run_scan(data, use_cache=not no_cache, progress=not as_json)
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
    else:
        print_scan_report(report, console)
    if not report.ok:
        from liandan.errors import DataError

        raise DataError(
            "the dataset has problems that would stop training (listed above)",
            where=data,
            hint="fix or remove those files, or train with data.on_error=skip to leave them out",
        )


@app.command("plan")
def plan_cmd(
    data: Annotated[Path, typer.Argument(help="dataset folder")],
    output: Annotated[Path, typer.Option("-o", "--output", help="plan YAML")] = Path("plan.yaml"),
    budget: Annotated[str | None, typer.Option(help="wall-clock budget, e.g. 10m")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto")] = "auto",
) -> None:
    """Plan a complete config for DATA from its fingerprint (trains nothing)."""
    from liandan.config import parse_duration
    from liandan.planning import plan as run_plan
    from liandan.runs import output_files

    if device not in ("cpu", "cuda", "auto"):
        raise BadParameter("must be cpu, cuda or auto", param_hint="--device")
    if budget is not None:
        parse_duration(budget)
    result = run_plan(data, budget=budget, device=device)
    with output_files(output.parent, [output, output.with_name("plan.md")], where="-o"):
        yaml_path, md_path = result.write(output)  # replaces no file liandan did not write
    console.print(result.markdown(), markup=False, highlight=False)
    console.print(f"plan written: {q(yaml_path)} and {q(md_path)}; train it with "
                  f"`liandan train --config {q(yaml_path)}`")  # fmt: skip


@app.command("tune")
def tune_cmd(
    args: Annotated[
        list[str] | None,
        typer.Argument(help="DATA then key=value overrides", metavar="DATA [KEY=VALUE]..."),
    ] = None,
    trials: Annotated[int, typer.Option(min=1, help="trials to run now")] = 20,
    config: Annotated[Path | None, typer.Option("--config", "-c", help="base YAML config")] = None,
    space: Annotated[Path | None, typer.Option(help="search space YAML")] = None,
    storage: Annotated[
        str | None, typer.Option(help="Optuna storage URL (default: SQLite in the folder)")
    ] = None,
    budget: Annotated[str | None, typer.Option(help="wall-clock budget per trial")] = None,
    name: Annotated[str, typer.Option(help="study name; an existing one continues")] = "study",
    pruner: Annotated[str, typer.Option(help="median or hyperband")] = "median",
    out: OutOpt = Path("runs"),
) -> None:
    """Hyper-parameter search with Optuna; every trial is a run in runs/tune-NAME/."""
    from liandan.runs import check_out
    from liandan.tuning import trials_table
    from liandan.tuning import tune as run_tune

    check_out(out, name)  # the study folder is tune-NAME
    data, overrides = _split_args(args)
    if data is None:
        raise UsageError("give the DATA folder")
    result = run_tune(
        data,
        trials=trials,
        config=config,
        overrides=overrides,
        space=space,
        storage=storage,
        budget=budget,
        name=name,
        out=out,
        pruner=pruner,
    )
    console.print(trials_table(result.folder))
    if result.best_config is None:
        console.print("no trial finished: no best config yet")
    else:
        console.print(f"best {result.best_value:.4f} with {q(result.best_params)}")
        console.print(f"best config: {q(result.folder / 'best.yaml')}")


@app.command("export")
def export_cmd(
    run: Annotated[Path, typer.Argument(help="run folder")],
    format: Annotated[str, typer.Option("--format", help="onnx or torchscript")] = "onnx",
    out: Annotated[Path | None, typer.Option("--out", help="output folder")] = None,
    opset: Annotated[int, typer.Option(help="ONNX opset")] = 17,
    dynamic: Annotated[
        bool | None, typer.Option("--dynamic/--static", help="dynamic height/width")
    ] = None,
) -> None:
    """Export a run's model to ONNX or TorchScript with its model.json bundle."""
    from liandan.exporting import export as run_export

    if format not in ("onnx", "torchscript"):
        raise BadParameter("must be onnx or torchscript", param_hint="--format")
    result = run_export(run, format, out=out, opset=opset, dynamic=dynamic)
    diffs = ", ".join(f"{k}: {v:.1e}" for k, v in result.max_abs_diff.items())
    console.print(f"exported {q(result.model_file)} (max probability difference {diffs})")


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the app and maps errors to exit codes."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if not debug:  # GDAL's own lines on a damaged file come before liandan's clearer error
        logging.getLogger("rasterio").setLevel(logging.WARNING)
    plain_when_piped(console, err_console)  # CI logs, | grep: no path folded at 80 columns
    try:
        app(args=args, prog_name="liandan", standalone_mode=False)
    except BaseException as exc:  # the user's problems: one message and an exit code
        return exit_code(exc, err_console, debug=debug)
    return 0


def run() -> None:
    """Console-script entry point."""
    sys.exit(main())


if __name__ == "__main__":
    run()
