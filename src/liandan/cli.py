"""The command line: a thin typer shell over the Python API.

One grammar for every command: positional words are paths, or ``section.key=value``
overrides of the config sections the command reads (a path that exists wins over a
key=value reading of it); a key the command does not read is refused, never ignored.

Exit codes: 0 success; 1 a problem with the user's data, config or files (one clear
message, no traceback unless --debug); 2 wrong usage; 130 interrupted.
"""

from __future__ import annotations

import json
import logging
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.console import Console

try:  # recent typer releases vendor click; its exceptions are the ones raised
    from typer._click.exceptions import BadParameter, UsageError
except ImportError:  # pragma: no cover - older typer uses the click package
    from click.exceptions import BadParameter, UsageError  # type: ignore

from liandan.cli_output import exit_code, plain_when_piped, q, show_metrics

if TYPE_CHECKING:
    from liandan.config import Config

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


# a word KEY=VALUE is an override when KEY reads as a dotted key and no such file exists
_KEY = re.compile(r"[A-Za-z_]\w*(\.[A-Za-z_]\w*)*")
_FILE_LIKE = re.compile(r"[/\\]|\.[A-Za-z]\w{0,4}$")  # a folder or a file extension
EVERY_KEY = None  # the sections train, lr-find, tune and demo read: all of them
PREDICT_KEYS = ["predict"]
SCORE_KEYS = ["data.ignore_index", "data.nodata"]
# how scan and plan read DATA, as training does: the task settles a folder with two
# readings (rasters with GIS layers: polygon labels to segment, boxes to detect)
FOLDER_KEYS = ["task", "data.layout", "data.label_attribute", "data.point_box", "data.tile_size"]


def _is_override(word: str) -> bool:
    key, sep, _ = word.partition("=")
    return bool(sep) and _KEY.fullmatch(key) is not None and not Path(word).exists()


def _words(
    args: list[str] | None, command: str, accepts: list[str] | None, *, paths_too: bool = True
) -> tuple[list[str], list[str]]:
    """Split a command's positional words into paths and ``key=value`` overrides.

    A path that exists wins over a key=value reading of it. Every bad override is
    reported at once (unknown keys with did-you-mean, keys of sections ``command``
    does not read); a path that does not exist is left to the command to report.
    """
    from liandan.config import check_overrides
    from liandan.errors import ConfigError

    paths: list[str] = []
    overrides: list[str] = []
    for word in args or []:
        (overrides if _is_override(word) else paths).append(word)
    try:
        check_overrides(overrides, accepts, command=f"liandan {command}")
    except ConfigError as exc:
        named_files = [w for w in overrides if _FILE_LIKE.search(w)]
        if not paths_too or not named_files:
            raise
        hint = f"{exc.hint}; no file named {', '.join(named_files)} exists either"
        raise ConfigError(exc.message, where=exc.where, hint=hint, items=exc.items) from None
    return paths, overrides


def _data_and_overrides(
    args: list[str] | None, command: str, accepts: list[str] | None = EVERY_KEY
) -> tuple[str | None, list[str]]:
    """Positional words: at most one DATA folder, the rest key=value overrides."""
    paths, overrides = _words(args, command, accepts)
    if len(paths) > 1:
        raise UsageError(
            f"unexpected argument {paths[1]!r}: DATA was already {paths[0]!r} "
            "(overrides are written section.key=value)"
        )
    return (paths[0] if paths else None), overrides


def _task_choices() -> str:
    from liandan.tasks import task_names

    *others, last = task_names()
    return f"{', '.join(others)} or {last}" if others else last


@app.command()
def demo(
    task: Annotated[str, typer.Option(help=_task_choices())] = "segment",
    out: OutOpt = Path("runs"),
    args: Annotated[
        list[str] | None, typer.Argument(help="key=value overrides", metavar="[KEY=VALUE]...")
    ] = None,
) -> None:
    """Train, evaluate and predict on embedded demo data (no download)."""
    from liandan.demo_run import demo as run_demo
    from liandan.runs import check_out

    words, overrides = _words(args, "demo", EVERY_KEY, paths_too=False)
    if words:
        raise UsageError(f"unexpected argument {words[0]!r}: demo takes key=value overrides")
    check_out(out)  # before any work: --out can hold a folder
    result = run_demo(task, out=out, overrides=overrides)
    for note in result.notes:
        console.print(f"[dim]note: {q(note)}[/dim]")
    show_metrics(console, result.metrics, f"validation metrics of [bold]{q(result.run_dir)}[/bold]")
    if result.scene_summary is not None:  # mean IoU (segment), mAP@.5 (detect)
        console.print(f"scene prediction: {q(result.predictions)} ({result.scene_summary})")
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
    print_config: Annotated[
        bool,
        typer.Option("--print-config", help="print the config training would use (YAML) and stop"),
    ] = False,
) -> None:
    """Train a model on DATA (or data.root from the config)."""
    from liandan.api import plans_by_default, train_config
    from liandan.api import resume as run_resume
    from liandan.api import train as run_train
    from liandan.runs import check_out

    data, overrides = _data_and_overrides(args, "train")
    if resume is not None:
        if data or overrides or config or init_from or folds or print_config:
            raise UsageError("--resume takes only the run folder: its config.yaml is used")
        result = run_resume(resume, unsafe_load=unsafe_load)
    else:
        if unsafe_load:
            overrides.append("train.unsafe_load=true")
        if budget is not None:
            overrides.append(f"train.budget={budget}")
        if print_config:  # the config `liandan train` would train with, nothing written
            import yaml

            cfg, _ = train_config(data, config, overrides, init_from=init_from, plan=plan)
            print(yaml.safe_dump(cfg.to_dict(), sort_keys=False, default_flow_style=None), end="")
            return
        check_out(out, name)  # before any work: --out can hold a folder, --name is one
        from liandan.engine.budget import process_start

        if folds is not None:  # one run per fold, pooled metrics, an ensemble
            from liandan.folds import train_folds

            if init_from is not None:
                raise UsageError("--folds and --init-from cannot be combined")
            result = train_folds(
                data, config, overrides, folds=folds, out=out, name=name,
                plan=plans_by_default(config, init_from) if plan is None else plan,
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
    data, overrides = _data_and_overrides(args, "lr-find")
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
    args: Annotated[
        list[str] | None,
        typer.Argument(
            help="dataset (default: the run's), and predict.* key=value overrides",
            metavar="[DATA] [KEY=VALUE]...",
        ),
    ] = None,
    split: Annotated[str, typer.Option(help="val, test or all")] = "val",
    as_json: Annotated[bool, typer.Option("--json", help="print metrics.json")] = False,
) -> None:
    """Evaluate a run's model on a split of its dataset (with the run's predict settings)."""
    from liandan.evaluation import evaluate as run_evaluate

    # predict.* keys over the run's own predict settings (config.yaml)
    data, overrides = _data_and_overrides(args, "evaluate", accepts=["predict"])
    if split not in ("val", "test", "all"):
        raise BadParameter("must be val, test or all", param_hint="--split")
    metrics = run_evaluate(run, data, split=split, overrides=overrides)
    if as_json:
        print(json.dumps(metrics, indent=2))
    else:
        show_metrics(console, metrics, f"{split} metrics of [bold]{q(run)}[/bold]")


@app.command()
def predict(
    run: Annotated[Path, typer.Argument(help="run folder")],
    args: Annotated[
        list[str],
        typer.Argument(
            help="images, folders or rasters, and predict.* key=value overrides",
            metavar="INPUT... [KEY=VALUE]...",
        ),
    ],
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
    run's config.yaml (its predict section); a flag given wins. predict.tile=256 (and
    every predict.* key) is the same as --tile 256.
    """
    from liandan.config import override_values
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
    inputs, overrides = _words(args, "predict", PREDICT_KEYS)
    if not inputs:
        raise UsageError("give at least one INPUT (an image, a folder or a raster)")
    settings: dict[str, Any] = {"tile": tile, "overlap": overlap, "blend": blend, "tta": tta}
    settings |= {"batch_size": batch_size, "precision": precision}
    settings |= {"score_threshold": None, "nms_iou": None}  # detection: key=value only
    for key, value in override_values(overrides, PREDICT_KEYS).items():  # checked values
        name = key.removeprefix("predict.")
        if settings[name] is not None:
            raise UsageError(f"{key} is given twice (also as --{name.replace('_', '-')})")
        settings[name] = value
    result = run_predict(
        run,
        [Path(p) for p in inputs],
        out=out,
        probs=probs,
        vector=vector,
        min_area=min_area,
        cog=cog,
        progress=sys.stderr.isatty(),
        **settings,
    )
    console.print(f"{len(result.predictions)} input(s) predicted: {q(result.out_dir)}")


@app.command()
def score(
    args: Annotated[
        list[str],
        typer.Argument(
            help="PRED: predictions (mask folder, mask file, CSV, or detections: a COCO "
            "results JSON or a folder of YOLO .txt with confidences); TRUTH: ground truth "
            "(for detections a YOLO or VOC folder or a COCO JSON); data.ignore_index and "
            "data.nodata as key=value",
            metavar="PRED TRUTH [KEY=VALUE]...",
        ),
    ],
    as_json: Annotated[bool, typer.Option("--json", help="print metrics.json")] = False,
    ignore_index: Annotated[int | None, typer.Option(help="truth value to ignore")] = None,
    nodata: Annotated[int | None, typer.Option(help="value meaning no data (not counted)")] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="folder to write metrics.json and confusion_matrix.png"),
    ] = None,
    score_threshold: Annotated[
        float | None,
        typer.Option(help="detections: confidence counted for precision/recall/F1 (0.25)"),
    ] = None,
) -> None:
    """Metrics for any predictions against ground truth."""
    from liandan.config import override_values
    from liandan.scoring import score as run_score

    paths, overrides = _words(args, "score", SCORE_KEYS)
    if len(paths) != 2:
        raise UsageError(f"give PRED and TRUTH (got {len(paths)} path(s): {paths})")
    pred, truth = Path(paths[0]), Path(paths[1])
    flags: dict[str, float | None] = {"ignore_index": ignore_index, "nodata": nodata}
    for key, value in override_values(overrides, SCORE_KEYS).items():
        name = key.removeprefix("data.")
        if flags[name] is not None:
            raise UsageError(f"{key} is given twice (also as --{name.replace('_', '-')})")
        flags[name] = value
    ignore_index = _whole(flags["ignore_index"], "data.ignore_index")
    nodata = _whole(flags["nodata"], "data.nodata")

    metrics = run_score(
        pred, truth, ignore_index=ignore_index, nodata=nodata, out=out,
        score_threshold=score_threshold,
    )  # fmt: skip
    if as_json:
        print(json.dumps(metrics, indent=2))
    else:
        show_metrics(console, metrics, f"{q(pred)} against {q(truth)}")
        if splits := metrics["inputs"].get("splits"):
            console.print(
                f"scored the truth's {', '.join(splits)} split(s), where the detections are"
            )
        if out is not None:
            console.print(f"written: {q(out / 'metrics.json')}, {q(out / 'confusion_matrix.png')}")


@app.command()
def report(run: Annotated[Path, typer.Argument(help="run folder")]) -> None:
    """(Re)build a run's report.html and plots/ (predicts its validation split again)."""
    from liandan.reporting import write_report

    console.print(f"report: {q(write_report(run))}")


FolderArgs = Annotated[
    list[str],
    typer.Argument(
        help="dataset folder, then how to read it: task=detect, data.layout=... (and "
        "data.label_attribute, data.point_box, data.tile_size for GIS layers)",
        metavar="DATA [KEY=VALUE]...",
    ),
]


def _folder(args: list[str], command: str) -> tuple[Path, Config]:
    """DATA and the settings that say how to read it (:data:`FOLDER_KEYS`)."""
    from liandan.config import Config, apply_override

    data, overrides = _data_and_overrides(args, command, FOLDER_KEYS)
    if data is None:
        raise UsageError("give the DATA folder")
    written: dict[str, Any] = {}
    for item in overrides:
        apply_override(written, item)
    return Path(data), Config.from_dict(written, "the command line")


@app.command()
def scan(
    args: FolderArgs,
    as_json: Annotated[bool, typer.Option("--json", help="print the report as JSON")] = False,
    no_cache: Annotated[bool, typer.Option("--no-cache", help="decode every file again")] = False,
) -> None:
    """Check every file of DATA and print its fingerprint; exit 1 on a blocking problem.

    task=detect reads DATA as training with task=detect does (rasters with GIS layers:
    boxes, not polygon labels).
    """
    from liandan.cli_output import print_scan_report
    from liandan.scan_report import scan as run_scan

    data, cfg = _folder(args, "scan")
    report = run_scan(
        data, use_cache=not no_cache, progress=not as_json, task=cfg.task,
        layout=cfg.data.layout, data=cfg.data,
    )  # fmt: skip
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
    args: FolderArgs,
    output: Annotated[Path, typer.Option("-o", "--output", help="plan YAML")] = Path("plan.yaml"),
    budget: Annotated[str | None, typer.Option(help="wall-clock budget, e.g. 10m")] = None,
    device: Annotated[str, typer.Option(help="cpu, cuda or auto")] = "auto",
) -> None:
    """Plan a complete config for DATA from its fingerprint (trains nothing).

    task=detect (and the other KEY=VALUE) read DATA as training does and are kept in
    the plan, as `liandan train DATA task=detect` plans.
    """
    from liandan.config import parse_duration
    from liandan.planning import planned_config
    from liandan.runs import output_files

    if device not in ("cpu", "cuda", "auto"):
        raise BadParameter("must be cpu, cuda or auto", param_hint="--device")
    if budget is not None:
        parse_duration(budget)
    data, overrides = _data_and_overrides(args, "plan", FOLDER_KEYS)
    if data is None:
        raise UsageError("give the DATA folder")
    _, result = planned_config(data, None, overrides, budget=budget, device=device)
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
    data, overrides = _data_and_overrides(args, "tune")
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
    args: Annotated[
        list[str] | None,
        typer.Argument(help="no config key is read (the flags below)", metavar="[KEY=VALUE]..."),
    ] = None,
    format: Annotated[str, typer.Option("--format", help="onnx or torchscript")] = "onnx",
    out: Annotated[Path | None, typer.Option("--out", help="output folder")] = None,
    opset: Annotated[
        int | None, typer.Option(help="ONNX opset (default: the exporter's, 18)")
    ] = None,
    dynamic: Annotated[
        bool | None, typer.Option("--dynamic/--static", help="dynamic height/width")
    ] = None,
) -> None:
    """Export a run's model to ONNX or TorchScript with its model.json bundle."""
    from liandan.exporting import export as run_export

    words, _ = _words(args, "export", accepts=[])  # the model bundle says everything
    if words:
        raise UsageError(f"unexpected argument {words[0]!r}: export takes one RUN folder")
    if format not in ("onnx", "torchscript"):
        raise BadParameter("must be onnx or torchscript", param_hint="--format")
    # --debug shows the exporters' own warnings and progress
    result = run_export(run, format, out=out, opset=opset, dynamic=dynamic, verbose=_DEBUG[0])
    diffs = ", ".join(f"{k}: {v:.1e}" for k, v in result.max_abs_diff.items())
    console.print(f"exported {q(result.model_file)} (max probability difference {diffs})")


def _whole(value: float | None, key: str) -> int | None:
    """A mask value given as a config key (``data.nodata`` is a float there)."""
    if value is None or float(value).is_integer():
        return None if value is None else int(value)
    from liandan.errors import ConfigError

    raise ConfigError(f"must be a whole number to score masks (got {value})", where=key)


_DEBUG = [False]  # --debug of the running command (main strips it from the arguments)


def main(argv: list[str] | None = None) -> int:
    """Entry point: runs the app and maps errors to exit codes."""
    args = list(sys.argv[1:] if argv is None else argv)
    debug = "--debug" in args
    args = [a for a in args if a != "--debug"]
    _DEBUG[0] = debug
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
