"""Ship a model: ONNX or TorchScript, with a self-describing ``model.json`` beside it.

The exported network takes the *normalized* image ``(batch, bands, height, width)``
float32 and returns class logits; ``model.json`` carries everything needed to
prepare the input and read the output (bands, normalization, classes, values,
colours, sizes), so ``liandan predict EXPORT_DIR ...`` predicts exactly as the run
does, and any other program can too (docs/deploy.md).

Each export is checked before it is kept: ONNX by ``onnx.checker`` and by running
onnxruntime on two input sizes against eager PyTorch; TorchScript by running the
traced module on a second size. The largest difference of class probabilities must
stay within ``TOLERANCE`` (fp32).
"""

from __future__ import annotations

import json
import logging
import re
import sys
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from liandan.errors import CheckpointError, ConfigError
from liandan.runs import (
    atomic_write_bytes,
    atomic_write_json,
    load_model,
    output_files,
    read_model_json,
)
from liandan.tasks import get_task

log = logging.getLogger(__name__)

TOLERANCE = 1e-4  # max |p_export - p_eager| over class probabilities, fp32
# The first opset the torch.export-based exporter writes natively; a lower one is
# reached by a version conversion that can fail (it then keeps this one)
DEFAULT_OPSET = 18
FILES = {"onnx": "model.onnx", "torchscript": "model.pt"}
INPUT_NAME, OUTPUT_NAME = "image", "logits"


@dataclass
class ExportResult:
    """Where the export went and how closely it matches eager PyTorch."""

    out_dir: Path
    model_file: Path
    format: str
    max_abs_diff: dict[str, float] = field(default_factory=dict)  # per checked input size


def _check_sizes(meta: dict[str, Any]) -> list[tuple[int, int]]:
    return get_task(meta["task"]).export_sizes(meta)


def _probs(logits: torch.Tensor | np.ndarray) -> np.ndarray:
    t = torch.as_tensor(np.asarray(logits) if isinstance(logits, np.ndarray) else logits)
    return torch.softmax(t.float(), dim=1).numpy()


def _operator_in(message: str) -> str | None:
    found = re.search(r"(aten::\w+|operator\s+'?[\w:.]+'?|\b[A-Z]\w+ op\b)", message)
    return found.group(1) if found else None


@contextmanager
def _exporter_output(verbose: bool) -> Iterator[None]:
    """The exporters' own warnings and log lines: shown when ``verbose`` (the CLI's
    ``--debug``) or when Python runs with ``-W`` options, else kept off the console;
    the export is checked against eager PyTorch either way."""
    if verbose or sys.warnoptions:
        yield
        return
    loggers = [logging.getLogger(name) for name in ("torch.onnx", "torch.export", "onnxscript")]
    levels = [lg.level for lg in loggers]
    try:
        for lg in loggers:
            lg.setLevel(logging.ERROR)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            yield
    finally:
        for lg, level in zip(loggers, levels, strict=True):
            lg.setLevel(level)


def _export_onnx(
    model: torch.nn.Module,
    example: torch.Tensor,
    path: Path,
    opset: int,
    dynamic: bool,
    verbose: bool = False,
    output_names: list[str] | None = None,
) -> str:
    """Write ``path`` with PyTorch's ``torch.export``-based exporter; returns which one ran.

    The TorchScript-based exporter, deprecated since PyTorch 2.9, is only the fallback
    for a model the first cannot export (docs/deploy.md has the measurements).
    """
    tmp = path.with_name(f".{path.name}.tmp")
    common: dict[str, Any] = {
        "model": model,
        "args": (example,),
        "f": str(tmp),
        "input_names": [INPUT_NAME],
        "output_names": output_names or [OUTPUT_NAME],
        "opset_version": opset,
    }
    dims = {0: torch.export.Dim("batch", min=1, max=1024)}
    if dynamic:
        dims.update({2: torch.export.Dim.AUTO, 3: torch.export.Dim.AUTO})  # type: ignore[dict-item]
    with _exporter_output(verbose):
        try:
            # one self-contained file: weights inline, not in a model.onnx.data beside it
            torch.onnx.export(
                **common, dynamic_shapes=(dims,), dynamo=True, external_data=False, verbose=verbose
            )
            exporter = "torch.export"
        except Exception as first:
            axes = {0: "batch", 2: "height", 3: "width"} if dynamic else {0: "batch"}
            out_axes = axes if example.ndim == 4 and dynamic else {0: "batch"}
            names = output_names or [OUTPUT_NAME]
            if len(names) > 1:  # several outputs (detection): each has a batch dimension
                out_axes = {0: "batch"}
            try:
                torch.onnx.export(
                    **common,
                    dynamic_axes={INPUT_NAME: axes, **{name: out_axes for name in names}},
                    dynamo=False,
                )
            except Exception:
                raise first from None
            log.warning(
                "the torch.export-based ONNX exporter failed (%s); exported with the "
                "deprecated TorchScript-based one",
                str(first).splitlines()[0][:200] if str(first) else type(first).__name__,
            )
            exporter = "torchscript"
    tmp.replace(path)
    return exporter


def _written_opset(path: Path) -> int:
    """The default-domain opset the ONNX file declares (a conversion can fall short)."""
    import onnx

    model = onnx.load(str(path), load_external_data=False)
    return next(int(o.version) for o in model.opset_import if o.domain in ("", "ai.onnx"))


def _onnx_runner(path: Path):  # type: ignore[no-untyped-def]
    import onnx
    import onnxruntime as ort

    onnx.checker.check_model(str(path))
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return lambda x: session.run(None, {INPUT_NAME: x.numpy()})  # every output, in order


def export(
    run: str | Path,
    format: str = "onnx",
    *,
    out: str | Path | None = None,
    opset: int | None = None,
    dynamic: bool | None = None,
    verbose: bool = False,
) -> ExportResult:
    """Export a run's model and write its bundle (model file + model.json).

    Args:
        run: the run folder.
        format: ``onnx`` or ``torchscript``.
        out: output folder (default ``RUN/export-<format>``).
        opset: ONNX opset version (default ``DEFAULT_OPSET``; a lower one is converted
            to, and ``model.json`` records the opset the file really has).
        dynamic: dynamic height and width (default: on for segmentation).
        verbose: show the exporters' own warnings and progress (the CLI's ``--debug``).

    >>> liandan.export("runs/train", "onnx").model_file  # doctest: +SKIP
    PosixPath('runs/train/export-onnx/model.onnx')
    """
    if format not in FILES:
        raise ConfigError(
            f"unknown export format {format!r}", where="--format", hint="onnx or torchscript"
        )
    if format == "onnx":
        _require_onnx()  # before any work: loading the run takes a while
    run = Path(run)
    _, meta = read_model_json(run)
    if "export" in meta:
        raise CheckpointError(
            "this folder is already an export", where=run, hint="export from the run folder"
        )
    out_dir = Path(out) if out is not None else run / f"export-{format}"
    path = out_dir / FILES[format]
    # replaces only a bundle liandan wrote there (never the run's model/model.json)
    with output_files(out_dir, [path, out_dir / "model.json"]):
        return _export(run, format, out_dir, path, opset or DEFAULT_OPSET, dynamic, verbose)


def _require_onnx() -> None:
    try:
        import onnx  # noqa: F401
        import onnxruntime  # noqa: F401
        import onnxscript  # noqa: F401
    except ImportError:
        raise ConfigError(
            "ONNX export needs the onnx, onnxruntime and onnxscript packages",
            where="--format",
            hint="pip install 'liandan[export]'",
        ) from None


def _export(
    run: Path,
    format: str,
    out_dir: Path,
    path: Path,
    opset: int,
    dynamic: bool | None,
    verbose: bool = False,
) -> ExportResult:
    model, meta = load_model(run)  # safetensors only: loading never unpickles
    model = model.float().eval()
    task = meta["task"]
    spec = get_task(task)
    dynamic = spec.dynamic_export if dynamic is None else dynamic
    sizes = _check_sizes(meta)
    bands = int(meta["in_channels"])
    gen = torch.Generator().manual_seed(0)
    example = torch.randn(1, bands, *sizes[0], generator=gen)
    # what is exported (a detector: its dense outputs), its outputs, model.json's extras
    target, output_names, extra = spec.export_module(model, meta, sizes[0])
    target = target.eval()
    exporter, written = "torch.jit.trace", None  # what a TorchScript bundle records
    try:
        if format == "onnx":
            with torch.no_grad():
                exporter = _export_onnx(
                    target, example, path, opset, dynamic, verbose, output_names
                )
            written = _written_opset(path)
            if written != opset:
                log.warning(
                    "ONNX opset %d was asked, but the exporter could not convert the model "
                    "to it: model.onnx has opset %d",
                    opset,
                    written,
                )
            runner = _onnx_runner(path)
        else:
            with torch.no_grad(), _exporter_output(verbose):
                traced = torch.jit.trace(target, example, check_trace=False)
            with _exporter_output(verbose):  # torch.jit.save/load warn they are deprecated
                buffer = _save_torchscript(traced)
                atomic_write_bytes(path, buffer)
                loaded = torch.jit.load(str(path), map_location="cpu")

            def runner(x: torch.Tensor) -> list[Any]:
                with torch.no_grad():
                    out = loaded(x)
                return [t.numpy() for t in (out if isinstance(out, tuple | list) else [out])]
    except (ConfigError, CheckpointError):
        raise
    except Exception as exc:
        op = _operator_in(str(exc))
        what = (op if op.startswith("operator") else f"operator {op}") if op else type(exc).__name__
        raise ConfigError(
            f"the {meta['arch']} model cannot be exported to {format}: {what} "
            f"({str(exc).splitlines()[0][:200]})",
            where="model.arch",
            hint="try another --opset, the other format, or an architecture that exports",
        ) from None
    meta["export"] = dict(extra)  # what the task's check reads (detection: postprocess)
    try:
        diffs = spec.check_export(model, target, runner, meta, sizes, gen)
    except ConfigError as exc:  # an export that differs is not kept
        path.unlink(missing_ok=True)
        where = exc.where or str(path)
        raise ConfigError(exc.message, where=where, hint=exc.hint, items=exc.items) from None
    shape_out = spec.output_axes(len(meta["classes"]))
    meta["export"] = {
        "format": format,
        "file": path.name,
        "liandan_version": _version(),
        "opset": written,
        "exporter": exporter,
        "dynamic": dynamic,
        "input": {
            "name": INPUT_NAME,
            "dtype": "float32",
            "normalized": True,
            "shape": [
                "batch",
                bands,
                "height" if dynamic else sizes[0][0],
                "width" if dynamic else sizes[0][1],
            ],
        },
        "output": {"name": OUTPUT_NAME, "dtype": "float32", "kind": "logits", "shape": shape_out},
        "tolerance": TOLERANCE,
        "max_abs_diff": diffs,
        **extra,  # the task's own entries (detection: outputs, postprocess, its checks)
    }
    atomic_write_json(out_dir / "model.json", meta)
    return ExportResult(out_dir, path, format, diffs)


def check_probabilities(
    model: torch.nn.Module,
    runner: Any,
    meta: dict[str, Any],
    sizes: list[tuple[int, int]],
    generator: torch.Generator,
) -> dict[str, float]:
    """The largest difference of class probabilities between the export (``runner``:
    input -> its outputs) and eager PyTorch at each size; raises above ``TOLERANCE``."""
    bands = int(meta["in_channels"])
    diffs: dict[str, float] = {}
    for h, w in sizes:
        x = torch.randn(2, bands, h, w, generator=generator)
        with torch.no_grad():
            eager = _probs(model(x))
        diff = float(np.abs(_probs(runner(x)[0]) - eager).max())
        diffs[f"{h}x{w}"] = diff
        if not diff <= TOLERANCE:
            raise ConfigError(
                f"the exported model differs from PyTorch by {diff:.2e} at {h}x{w} "
                f"(tolerance {TOLERANCE:g})",
                hint="report this model/format combination; use the other format meanwhile",
            )
    return diffs


def _save_torchscript(module: Any) -> bytes:
    import io

    buffer = io.BytesIO()
    torch.jit.save(module, buffer)
    return buffer.getvalue()


def _version() -> str:
    from liandan import __version__

    return __version__


class OnnxModule(torch.nn.Module):
    """An ONNX file run by onnxruntime, callable like the PyTorch model it came from.

    Lets the same Predictor (tiling, blending, writers) run an export. Uses the CUDA
    provider when onnxruntime has it, else the CPU.
    """

    def __init__(self, path: Path) -> None:
        super().__init__()
        import onnxruntime as ort

        providers = [
            p
            for p in ("CUDAExecutionProvider", "CPUExecutionProvider")
            if p in ort.get_available_providers()
        ]
        self.session = ort.InferenceSession(str(path), providers=providers)
        self.input_shape = self.session.get_inputs()[0].shape

    def forward(self, x: torch.Tensor) -> Any:
        outs = self.session.run(None, {INPUT_NAME: x.detach().cpu().float().numpy()})
        tensors = tuple(torch.from_numpy(o).to(x.device) for o in outs)
        return tensors[0] if len(tensors) == 1 else tensors  # several: a detector's


def load_export(folder: Path, meta: dict[str, Any]) -> torch.nn.Module:
    """The network of an export bundle; never unpickles (ONNX protobuf / TorchScript)."""
    info = meta["export"]
    if not isinstance(info, dict) or info.get("format") not in FILES:
        raise CheckpointError("model.json has no valid 'export' entry", where=folder / "model.json")
    path = folder / str(info.get("file", FILES[info["format"]]))
    if not path.is_file():
        raise CheckpointError(f"{path.name} is missing beside model.json", where=folder)
    spec = get_task(meta["task"])
    if info["format"] == "torchscript":
        return spec.wrap_export(torch.jit.load(str(path), map_location="cpu").eval(), meta)
    try:
        module = OnnxModule(path)
    except ImportError:
        raise CheckpointError(
            "predicting with an ONNX export needs onnxruntime",
            where=path,
            hint="pip install onnxruntime",
        ) from None
    bands = module.input_shape[1] if len(module.input_shape) > 1 else None
    if isinstance(bands, int) and bands != int(meta["in_channels"]):
        raise CheckpointError(
            f"model.json says {meta['in_channels']} input bands but {path.name} takes {bands}",
            where=folder / "model.json",
            hint="the bundle was altered: export it again from the run",
        )
    return spec.wrap_export(module, meta)  # a detector: its postprocess around the network


def read_bundle(folder: str | Path) -> tuple[Path, dict[str, Any]]:
    """Validated model.json of an export folder."""
    folder, meta = read_model_json(folder)
    if "export" not in meta:
        raise CheckpointError("not an export folder (model.json has no 'export')", where=folder)
    json.dumps(meta)  # must be plain JSON
    return folder, meta
