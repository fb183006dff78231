"""Build ``report.html`` and ``plots/*.png`` for a run folder.

The report is the page a person reads first: the data, the config, the environment,
the training curves, the metrics, the confusion matrix, and where the model fails
(the worst segmentation images, or the top losses, PR/ROC curves and most confused
pairs of a classifier). It needs per-sample predictions: training hands over the ones
its evaluation made; ``liandan report RUN`` predicts the validation split again.
"""

from __future__ import annotations

import copy
import json
import logging
import shutil
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import yaml

from liandan.config import Config
from liandan.errors import CheckpointError
from liandan.metrics import PER_CLASS_KEYS
from liandan.metrics_extra import add_extras
from liandan.reporting import figures, gallery
from liandan.reporting import html as H
from liandan.reporting.samples import (
    SampleResults,
    classes_from_meta,
    evaluate_samples,
    pick_split,
    rebuild_splits,
)
from liandan.reporting.summary import (
    DataSummary,
    band_rows,
    data_summary,
    doctor_findings,
    environment,
    history_rows,
)
from liandan.runs import atomic_write_text, read_model_json
from liandan.tasks import get_task

if TYPE_CHECKING:
    from liandan.data.datamodule import DataBundle
    from liandan.data.scan import CheckedDataset

log = logging.getLogger("liandan")


def write_plots(run_dir: Path, metrics: dict[str, Any]) -> list[Path]:
    """Write ``plots/curves.png`` and ``plots/confusion_matrix.png`` for a run."""
    out = run_dir / "plots"
    out.mkdir(exist_ok=True)
    written = [figures.plot_confusion(metrics, out)]
    curves = figures.plot_curves(run_dir / "history.csv", out)
    if curves is not None:
        written.append(curves)
    return written


def write_report(
    run: str | Path,
    metrics: dict[str, Any] | None = None,
    *,
    bundle: DataBundle | None = None,
    results: SampleResults | None = None,
    duration_s: float | None = None,
    tensorboard: bool = False,
) -> Path:
    """Write ``plots/*.png`` and ``report.html`` into a finished run folder.

    Args:
        run: the run folder (with ``model/`` and ``config.yaml``).
        metrics: the validation metrics; read from ``metrics.json`` when None.
        bundle: the training data (saves indexing and checking the dataset again).
        results: per-sample validation results (saves predicting the split again).
        duration_s: the run's duration, shown in the environment section.
        tensorboard: also log the confusion matrix image to the run's TensorBoard.

    Returns:
        The path of ``report.html``.

    >>> liandan.report("runs/train")  # doctest: +SKIP
    PosixPath('runs/train/report.html')
    """
    from liandan.prediction import Predictor

    run = Path(run)
    _, meta = read_model_json(run)
    get_task(meta["task"]).refuse("report")
    config_path = run / "config.yaml"
    if not config_path.is_file():
        raise CheckpointError("config.yaml is missing from the run", where=run)
    cfg = Config.load(config_path)
    if bundle is not None:
        checked, splits = bundle.checked, bundle.splits
    else:
        checked, splits = rebuild_splits(cfg, classes_from_meta(meta))
    # every predict key of the run (tile, overlap, blend, tta, batch size, precision),
    # as `liandan predict` uses them
    predictor = Predictor.from_run(run, **cfg.predict.model_dump())
    if results is None:
        val = pick_split(splits, "val")
        results = evaluate_samples(predictor, checked, val, bands=cfg.data.bands)
    metrics = copy.deepcopy(metrics) if metrics is not None else _read_metrics(run, results)
    add_extras(metrics, results.extras())

    out = run / "plots"
    out.mkdir(exist_ok=True)
    shutil.rmtree(out / "gallery", ignore_errors=True)  # no stale items from an older build
    summary = data_summary(checked, splits)
    sections = [
        _data_section(run, meta, summary, checked, out),
        H.Section(
            "config", "config", f"<pre>{H.esc(config_path.read_text(encoding='utf-8'))}</pre>"
        ),
        _environment_section(run, duration_s),
        _curves_section(run, out),
        _doctor_section(run),
        _metrics_section(metrics),
        _confusion_section(run, metrics, out),
    ]
    task = get_task(results.task)  # its own sections: galleries, curves
    sections += task.report_sections(run, results, predictor, checked, cfg, meta, out)
    overall = metrics["overall"]
    key = task.headline
    accuracy = f"accuracy {H.fmt(overall['accuracy'])} · " if "accuracy" in overall else ""
    subtitle = (
        f"{results.task} · {len(results.classes)} classes · {H.fmt(overall.get(key))} "
        f"{key.replace('_', ' ')} · {accuracy}{cfg.model.arch} · data {cfg.data.root}"
    )
    target = run / "report.html"
    atomic_write_text(target, H.page(f"liandan run {run.name}", subtitle, sections))
    if tensorboard:
        add_confusion_to_tensorboard(run, len(history_rows(run)))
    return target


def _read_metrics(run: Path, results: SampleResults) -> dict[str, Any]:
    path = run / "metrics.json"
    if path.is_file():
        return dict(json.loads(path.read_text(encoding="utf-8")))
    return get_task(results.task).score_results(results, results.classes, "val")


def _data_section(
    run: Path,
    meta: dict[str, Any],
    summary: DataSummary,
    checked: CheckedDataset,
    out: Path,
) -> H.Section:
    splits = list(summary.sizes)
    unit = "images containing the class" if summary.pixels else "images"
    parts = [
        H.table(
            ["split", "samples", *summary.classes],
            [[s, summary.sizes[s], *summary.images[s].tolist()] for s in splits],
        ),
        H.note(f"per class: {unit}"),
    ]
    if summary.pixels:
        parts.append(
            H.table(
                [f"split ({summary.unit})", f"labelled {summary.unit}", *summary.classes],
                [
                    [s, int(summary.pixels[s].sum()), *_shares(summary.pixels[s])]
                    for s in summary.pixels
                ],
            )
        )
        if summary.sampled:
            parts.append(H.note(f"pixels counted on a sample of the masks of {summary.sampled}"))
    for counts, name in ((summary.pixels, summary.unit), (summary.images, "images")):
        if counts:
            plot = figures.plot_class_distribution(counts, summary.classes, name, out)
            if plot is not None:
                parts.append(H.image(plot, f"class distribution ({name})", run=run))
            break  # pixels (boxes) when there are any: the images plot would say less
    parts.append("<h3>bands</h3>")
    parts.append(
        H.note(
            f"{meta.get('in_channels')} band(s), dtype {meta.get('dtype')}, normalization "
            f"{(meta.get('normalization') or {}).get('preset')} (statistics from model.json)"
        )
    )
    rows = band_rows(meta)
    cols = sorted({k for r in rows for k in r if k != "band"}, key=lambda k: ("p" in k, k))
    if rows:
        parts.append(
            H.table(["band", *cols], [[r["band"], *(r.get(c) for c in cols)] for r in rows])
        )
    index = checked.index
    facts = [f"layout {index.layout}", f"root {index.root}", *index.notes]
    if index.skipped:
        facts.append(f"{len(index.skipped)} sample(s) skipped (see skipped.json)")
    parts.append("<ul>" + "".join(f"<li>{H.esc(f)}</li>" for f in facts) + "</ul>")
    return H.Section("data", "data", "\n".join(parts))


def _shares(counts: np.ndarray) -> list[str]:
    total = counts.sum()
    return [f"{c:,} ({100 * c / total:.1f}%)" if total else "0" for c in counts.tolist()]


def _environment_section(run: Path, duration_s: float | None) -> H.Section:
    raw = yaml.safe_load((run / "config.yaml").read_text(encoding="utf-8")) or {}
    env = environment(run, raw, duration_s)
    return H.Section("environment", "environment", H.table(["", "value"], list(env.items())))


def _curves_section(run: Path, out: Path) -> H.Section:
    plot = figures.plot_curves(run / "history.csv", out)
    if plot is None:
        return H.Section("curves", "training curves", H.note("no history.csv in this run"))
    body = H.image(plot, "training curves", run=run)
    return H.Section("curves", "training curves", body + H.note("from history.csv, per epoch"))


def _doctor_section(run: Path) -> H.Section:
    """What the training doctor found (doctor.json), one row per finding."""
    findings = doctor_findings(run)
    if not findings:
        body = H.note(
            "the training doctor found nothing: no NaN/Inf, divergence, plateau, "
            "overfitting or class never predicted"
        )
    else:
        body = H.table(
            ["epoch", "finding", "message", "suggestion"],
            [[f.get("epoch"), f.get("kind"), f.get("message"), f.get("advice")] for f in findings],
        ) + H.note("also in doctor.json and the doctor column of history.csv")
    return H.Section("doctor", "training doctor", body)


def _metrics_section(metrics: dict[str, Any]) -> H.Section:
    overall = metrics["overall"]
    rows = [[k.replace("_", " "), v] for k, v in overall.items()]
    extra = sorted({k for row in metrics["per_class"].values() for k in row} - set(PER_CLASS_KEYS))
    keys = [*PER_CLASS_KEYS, *extra]
    per_class = [
        [name, *(metrics["per_class"][name].get(k) for k in keys)] for name in metrics["classes"]
    ]
    body = (
        f"<h3>overall ({H.esc(metrics.get('split', 'val'))} split)</h3>"
        + H.table(["metric", "value"], rows)
        + "<h3>per class</h3>"
        + H.table(["class", *(k.replace("_", " ") for k in keys)], per_class)
        + H.note("— marks an undefined value (zero denominator); see docs/metrics.md")
    )
    return H.Section("metrics", "metrics", body)


def _confusion_section(run: Path, metrics: dict[str, Any], out: Path) -> H.Section:
    plot = figures.plot_confusion(metrics, out)
    body = H.image(plot, "confusion matrix", run=run) + H.note(
        "rows: truth, columns: prediction; right: each row divided by its total (recall)"
    )
    pairs = metrics.get("most_confused") or []
    if pairs:
        body += "<h3>most confused pairs</h3>" + H.table(
            ["truth", "predicted as", "count"],
            [[p["truth"], p["predicted"], p["count"]] for p in pairs],
        )
    return H.Section("confusion", "confusion matrix", body)


def mask_sections(
    run: Path,
    results: SampleResults,
    predictor: Any,
    checked: CheckedDataset,
    cfg: Config,
    meta: dict[str, Any],
    out: Path,
) -> list[H.Section]:
    """Segmentation: the validation gallery, worst images first."""
    items = gallery.segmentation_gallery(results, predictor, checked, out, bands=cfg.data.bands)
    values = [v for v in results.ious if v is not None]
    stats = ""
    if values:
        stats = H.note(
            f"per-image IoU over {len(values)} validation images: mean {np.mean(values):.3f}, "
            f"median {np.median(values):.3f}, min {np.min(values):.3f}"
        )
    body = (
        H.legend(results.classes, predictor.colors)
        + stats
        + H.note("worst first, by per-image IoU; each: image | truth | prediction")
        + '<div class="gallery">'
        + "".join(H.figure(i.path, i.title, i.facts, run=run) for i in items)
        + "</div>"
    )
    return [H.Section("gallery", "validation gallery", body)]


def label_sections(
    run: Path,
    results: SampleResults,
    predictor: Any,
    checked: CheckedDataset,
    cfg: Config,
    meta: dict[str, Any],
    out: Path,
) -> list[H.Section]:
    """Classification: PR and ROC curves, the most confident mistakes, CAM."""
    assert results.probs is not None and results.targets is not None
    colors = [tuple(c) for c in meta.get("colors") or []]
    plot = figures.plot_pr_roc(results.probs, results.targets, results.classes, colors, out)  # type: ignore[arg-type]
    curves = H.image(plot, "precision-recall and ROC", run=run) if plot else H.note("no curves")
    heatmaps, cam_note = _heatmaps(predictor, results, checked, cfg)
    items = gallery.top_losses(results, checked, out, bands=cfg.data.bands, heatmaps=heatmaps)
    body = (
        H.note("largest loss (-log p(truth)) first" + cam_note)
        + '<div class="gallery">'
        + "".join(H.figure(i.path, i.title, i.facts, run=run) for i in items)
        + "</div>"
    )
    return [
        H.Section("pr-roc", "precision-recall and ROC", curves),
        H.Section("top-losses", "top losses", body),
    ]


def _heatmaps(
    predictor: Any, results: SampleResults, checked: CheckedDataset, cfg: Config
) -> tuple[dict[int, np.ndarray] | None, str]:
    """Grad-CAM maps of the top losses (pytorch-grad-cam), or none when it cannot run."""
    try:
        from liandan.reporting.cam import top_loss_cams
    except ImportError:  # pytorch-grad-cam missing: the gallery shows the images only
        return None, "; install grad-cam for Grad-CAM heat maps"
    try:
        maps = top_loss_cams(
            predictor, results, checked, bands=cfg.data.bands, size=gallery.GALLERY_SIZE
        )
    except Exception as exc:  # explanations are a bonus: never fail the report for them
        log.warning("Grad-CAM skipped: %s", exc)
        return None, ""
    if not maps:
        return None, ""
    return maps, "; right: Grad-CAM of the predicted class (where the network looked)"


def add_confusion_to_tensorboard(run: Path, step: int) -> None:
    """Log ``plots/confusion_matrix.png`` as an image to the run's TensorBoard."""
    from PIL import Image
    from torch.utils.tensorboard import SummaryWriter

    png = run / "plots" / "confusion_matrix.png"
    if not png.is_file() or not (run / "tensorboard").is_dir():
        return
    image = np.asarray(Image.open(png).convert("RGB"))
    writer = SummaryWriter(log_dir=str(run / "tensorboard"))
    try:
        writer.add_image("val/confusion_matrix", image, global_step=step, dataformats="HWC")
    finally:
        writer.close()
