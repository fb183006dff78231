"""`liandan plan`: from a dataset fingerprint to a complete config, every choice explained.

Plan trains nothing. Each rule reads the fingerprint written by ``liandan scan`` (sizes,
bands, dtype, class frequencies, dataset size) and the target device, sets one part of
the config and says why in one sentence. ``plan.yaml`` carries the sentences as
comments; ``plan.md`` beside it lists them. Values that must be measured (the learning
rate) are written ``auto`` and resolved when training starts.

>>> p = plan("data/", budget="10m")  # doctest: +SKIP
>>> p.config.model.arch, p.reasons["model.arch"]  # doctest: +SKIP
('unet', 'U-Net: the standard encoder-decoder for segmentation ...')
"""

from __future__ import annotations

import json
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from liandan.config import Config, DataConfig, apply_override
from liandan.data.fingerprint import Fingerprint
from liandan.engine.batch_size import MIN_BN_BATCH, MIN_STEPS, batch_cap, pow2_floor
from liandan.engine.budget import FIXED_SHARE
from liandan.tasks import get_task

UPRIGHT_SHIFT = 0.1  # class-mix distance top vs bottom above which scenes are upright
CPU_STEPS = 1500  # optimizer steps a no-budget CPU plan aims for (minutes, not hours)
GPU_STEPS = 8000  # ... and a GPU plan (nnU-Net uses 250k; pretrained-free small data needs less)
MAX_EPOCHS = 300  # upper bound when a time budget decides the length


@dataclass
class PlanFacts:
    """What the rules know about the data and device, and where their choices go.

    The shared rules fill the first fields; a task's rules (``Task.plan_*``) read them,
    set the input side (``size``, ``tiled``) and record each choice with ``put``.
    """

    fp: Fingerprint
    put: Callable[[str, Any, str], None]  # put(key, value, reason)
    device: str  # cpu or cuda
    n_train: int  # training samples (tiles per epoch for tiled rasters)
    side: int  # the median image's shorter side
    top: int  # the largest image's longer side
    bands: int
    dtype: str
    size: int = 0  # the training input side, set by the task's plan_input
    tiled: bool = False  # rasters trained on tiles

    @property
    def gpu(self) -> bool:
        return self.device == "cuda"

    @property
    def median(self) -> tuple[int, int]:
        """The median image's (height, width)."""
        h, w = self.fp.image_size.get("median", [32, 32])
        return int(h), int(w)

    def sized(self, cap: int) -> int:
        """The median image's detail (a multiple of 32) within ``cap``: data.image_size."""
        h, w = self.median
        size = max(32, min(ceil32(self.side), cap))
        reason = f"median image is {w}x{h}"
        if ceil32(self.side) > cap:
            reason += f"; capped at {cap} to fit {self.device} memory and speed"
        if self.top > 2048:
            reason += (
                f"; the largest image ({self.top} px) is resized whole, tiles would keep its detail"
            )
        self.put("data.image_size", size, reason)
        return size

    def weigh_classes(self, threshold: float) -> None:
        """Class weights when the imbalance ratio exceeds ``threshold``."""
        ratio = self.fp.imbalance_ratio or 1.0
        if ratio > threshold:
            self.put("loss.class_weights", "auto", f"imbalance ratio {ratio:g} > {threshold:g}: "
                     "rare classes weighted up (median-frequency balancing)")  # fmt: skip
            self.put(
                "loss.class_weighting", "median", "median frequency: gentler than inverse counts"
            )


@dataclass
class Plan:
    """A planned config and the reason for each decision (dotted key -> sentence)."""

    config: Config
    reasons: dict[str, str]
    fingerprint: Fingerprint
    device: str
    notes: list[str] = field(default_factory=list)

    def yaml(self) -> str:
        """The complete config as YAML, each planned key followed by its reason."""
        lines = [f"# liandan plan for {self.config.data.root} (device: {self.device})"]
        for key, value in self.config.to_dict().items():
            if not isinstance(value, dict):
                lines.append(_line(key, value, self.reasons.get(key), 0))
                continue
            lines.append(f"{key}:")
            for sub, v in value.items():
                lines.append(_line(sub, v, self.reasons.get(f"{key}.{sub}"), 2))
        return "\n".join(lines) + "\n"

    def markdown(self) -> str:
        """plan.md: the fingerprint in brief, then one sentence per decision."""
        fp = self.fingerprint
        size = fp.image_size.get("median", [0, 0])
        head = [
            f"# Plan for `{self.config.data.root}`",
            "",
            f"{fp.num_samples} {fp.task} samples ({fp.layout} layout), median image "
            f"{size[1]}x{size[0]}, {fp.bands} band(s) of {', '.join(fp.dtypes)}, "
            f"classes {fp.classes}, imbalance ratio {fp.imbalance_ratio}; device {self.device}.",
            "",
        ]
        body = [f"- **{k} = {_value(self.config, k)}**: {r}" for k, r in self.reasons.items()]
        notes = ["", *[f"Note: {n}" for n in self.notes]] if self.notes else []
        return "\n".join(head + body + notes) + "\n"

    def write(self, path: str | Path) -> tuple[Path, Path]:
        """Write ``plan.yaml`` (any name) and ``plan.md`` beside it."""
        from liandan.runs import atomic_write_text

        path = Path(path)
        atomic_write_text(path, self.yaml())
        md = path.with_name("plan.md")
        atomic_write_text(md, self.markdown())
        return path, md


def _line(key: str, value: Any, reason: str | None, indent: int) -> str:
    text = f"{' ' * indent}{key}: {json.dumps(value)}"
    return f"{text}  # {reason}" if reason else text


def _value(cfg: Config, key: str) -> Any:
    node: Any = cfg
    for part in key.split("."):
        node = getattr(node, part)
    return node.value if hasattr(node, "value") else node


def _device(device: str) -> tuple[str, float]:
    """``cpu`` or ``cuda`` and the memory (bytes) a batch may use."""
    import torch

    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    if device == "cuda":
        total = 16 * 1024**3  # planning for a GPU on a machine without one: a 16 GB card
        if torch.cuda.is_available():
            total = torch.cuda.get_device_properties(0).total_memory
        return device, 0.5 * total
    return "cpu", 2 * 1024**3


def ceil32(x: float) -> int:
    return int(32 * math.ceil(x / 32))


def plan_from_fingerprint(
    fp: Fingerprint,
    root: str | Path,
    *,
    budget: str | None = None,
    device: str = "auto",
) -> Plan:
    """The rules: fingerprint (+ device, budget) -> Config with a reason per decision."""
    device, memory = _device(device)
    gpu = device == "cuda"
    task = get_task(fp.task)
    cfg: dict[str, Any] = {}
    why: dict[str, str] = {}

    def put(key: str, value: Any, reason: str) -> None:
        apply_override(cfg, f"{key}={json.dumps(value)}")
        why[key] = reason

    put("task", fp.task, f"the {fp.layout} layout holds {task.targets}")
    apply_override(cfg, f"data.root={json.dumps(str(root))}")
    put("data.layout", fp.layout, "detected from the folder structure")
    h, w = fp.image_size.get("median", [32, 32])
    bands = max(fp.bands, key=fp.bands.count) if fp.bands else 3
    facts = PlanFacts(
        fp,
        put,
        device,
        n_train=fp.splits.get("train", 0) + round(0.8 * fp.splits.get("none", 0)),
        side=min(h, w),
        top=max(fp.image_size.get("max", [h, w])),
        bands=bands,
        dtype=fp.dtypes[0] if fp.dtypes else "uint8",
    )
    dtype = facts.dtype
    overhead = fp.georeferenced or bands > 4 or dtype != "uint8"
    overhead = overhead or (any(e in (".tif", ".tiff") for e in fp.extensions) and h == w)

    # input size: keep the median image's detail, within what the device trains fast
    task.plan_input(facts)
    size = facts.size

    # normalization from dtype and band statistics
    if dtype == "uint8" and bands in (1, 3):
        put("data.normalize", "dataset", "8-bit images: per-band mean/std of the training set")
    elif dtype == "uint8":
        put("data.normalize", "dataset", f"{bands}-band 8-bit images: per-band mean/std")
    else:
        low, high = fp.band_p005, fp.band_p995
        put("data.normalize", "percentile", f"{dtype} values with long tails (0.5-99.5% range "
            f"{low} .. {high}): each band is clipped to its percentiles and scaled to 0-1")  # fmt: skip
        put("data.percentiles", [0.5, 99.5], "keeps 99% of the values, clips sensor outliers")

    # architecture sized to data and device; its training memory per input pixel
    per_pixel = task.plan_model(facts)
    put("model.weights", "none", "from scratch (no download); model.weights=imagenet usually "
        "helps RGB photos when the weights can be fetched")  # fmt: skip

    # loss and class weights from the imbalance ratio
    task.plan_loss(facts)

    # augmentation: rotations only where orientation carries no meaning
    if overhead:
        reason = "overhead imagery (georeferenced, multi-band, 16-bit or square TIFF tiles): "
        for key in ("augment.hflip", "augment.vflip", "augment.rotate90"):
            put(key, 0.5, reason + "any orientation is valid")
    elif not task.plan_orientation(facts):
        upright = "upright photos"
        shift = fp.layout_shift
        if "vertical" in shift:
            upright += (f" (the masks' top and bottom thirds differ in class mix by "
                        f"{shift['vertical']:.2f} > {UPRIGHT_SHIFT})")  # fmt: skip
        put("augment.hflip", 0.5, f"{upright}: mirrored left-right is still valid")
        put("augment.vflip", 0.0, f"{upright}: upside-down is not")
    if dtype == "uint8" and bands == 3:
        put("augment.brightness_contrast", 0.3, "RGB photos vary in exposure")
    task.plan_scale(facts)

    # batch size: memory estimate with a 2x margin, within the rule `auto` uses too
    # (engine.batch_size.batch_cap: per-device caps, a few steps per epoch)
    n_train = facts.n_train
    per_sample = per_pixel * size * size * 4 * 2
    cap = batch_cap(task.name, n_train, gpu=gpu)
    batch = max(2, pow2_floor(min(memory / per_sample, cap)))
    estimate = (
        f"~{per_sample / 2**20:.1f} MB per sample at {size} px (x2 margin) in "
        f"{memory / 2**30:.0f} GB suggests {batch}; at least {MIN_STEPS} steps per epoch "
        f"unless that means fewer than {MIN_BN_BATCH} samples for BatchNorm's statistics"
    )
    if gpu:  # the GPU measures it when training starts: the largest batch that fits
        put("train.batch_size", "auto", f"probed on the GPU when training starts; {estimate}")
    else:
        put("train.batch_size", batch, estimate)
    task.plan_predict(facts)
    put("optim.name", "adamw", "AdamW: robust to the learning rate across architectures")
    put("optim.lr", "auto", "measured by the lr range test when training starts")

    # length and schedule: from the budget, or a step target
    steps = max(1, n_train // batch)
    if budget:
        put("train.budget", budget, "the run is fitted to this wall-clock budget")
        put("train.epochs", MAX_EPOCHS, "upper bound: the budget decides the actual number")
        epochs = MAX_EPOCHS
    else:
        target = GPU_STEPS if gpu else CPU_STEPS
        epochs = int(min(MAX_EPOCHS, max(10, math.ceil(target / steps))))
        put("train.epochs", epochs, f"about {target} optimizer steps ({steps} per epoch)")
    put("train.steps_per_epoch", "auto", f"an epoch is the unit of validation and "
        f"checkpoints, not a pass over the data ({steps} steps here): it is sized when "
        f"training starts so that they cost under {FIXED_SHARE:.0%} of its training time, "
        "measured (small datasets are drawn several times per epoch, each draw a fresh "
        "crop)")  # fmt: skip
    put("schedule.name", "cosine", "cosine decay: no schedule knobs to tune")
    put("schedule.warmup_epochs", 1.0 if epochs >= 10 else 0.0, "one warmup epoch steadies "
        "AdamW's first steps")  # fmt: skip
    if budget:
        put("train.patience", None, "early stopping is set when the budget fixes the epochs "
            "(a quarter of them)")  # fmt: skip
    else:
        put("train.patience", max(10, epochs // 5), "stop when the validation metric has not "
            "improved for this many epochs")  # fmt: skip
    config = Config.from_dict(cfg, "plan")
    return Plan(config, why, fp, device)


def plan(
    data: str | Path,
    *,
    budget: str | None = None,
    device: str = "auto",
    use_cache: bool = True,
    task: str | None = None,
    layout: str = "auto",
    options: DataConfig | None = None,
) -> Plan:
    """Scan DATA and plan a config for it (trains nothing).

    Args:
        data: the dataset folder.
        budget: wall-clock budget such as ``10m``; None plans by a step count.
        device: ``cpu``, ``cuda``, or ``auto`` (this machine's).
        use_cache: reuse ``liandan scan``'s record cache.
        task: the task DATA is read for (``task=detect``: rasters with GIS layers are
            boxes, not polygon labels); None: as its layout says.
        layout: ``data.layout``, or ``auto``.
        options: the config's ``data`` section, for layouts that read more of it
            (``vector-boxes``: point boxes, windows); None: its defaults.

    >>> liandan.plan("data/", budget="10m").write("plan.yaml")  # doctest: +SKIP
    >>> liandan.plan("rasters/", task="detect").config.model.arch  # doctest: +SKIP
    'fcos'
    """
    from liandan.scan_report import scan

    report = scan(data, use_cache=use_cache, task=task, layout=layout, data=options)
    result = plan_from_fingerprint(
        report.fingerprint, Path(data).resolve(), budget=budget, device=device
    )
    errors = [p for p in report.problems if p.severity == "error"]
    if errors:
        # never skipped on the user's behalf: training stops on them and names each file
        result.notes.append(
            f"scan found {len(errors)} problem(s) that stop training: run `liandan scan` "
            "and fix them, or set data.on_error=skip to leave those files out"
        )
    result.notes += report.notes
    return result


def _merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for key, value in top.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def planned_config(
    data: str | Path | None,
    config: Config | str | Path | None,
    overrides: list[str] | None,
    *,
    budget: str | None = None,
    device: str = "auto",
) -> tuple[Config, Plan]:
    """``train --plan``: the plan's config, then the config file's keys, then overrides.

    Only what the user wrote overrides the plan (not the defaults of an unwritten key).
    The task, layout and ``data`` keys written are also how DATA is scanned, as training
    reads it (``task=detect`` on rasters with GIS layers plans detection). ``budget``
    None: ``train.budget`` as written.
    """
    from liandan.config import read_yaml

    if isinstance(config, Config):
        user: dict[str, Any] = config.model_dump(mode="json", exclude_unset=True)
    else:
        user = read_yaml(Path(config)) if config is not None else {}
    for item in overrides or []:
        apply_override(user, item)
    first = Config.from_dict(user, "config with overrides")
    root = data if data is not None else first.data.root
    if root is None:
        from liandan.errors import ConfigError

        raise ConfigError("no dataset to plan for", where="data.root", hint="pass DATA")
    result = plan(
        root,
        budget=budget if budget is not None else first.train.budget,
        device=device,
        task=first.task,
        layout=first.data.layout,
        options=first.data,
    )
    merged = Config.from_dict(_merge(result.config.to_dict(), user), "plan with your settings")
    for key in [k for k in result.reasons if _written(user, k)]:
        result.reasons[key] = "set by you (the plan's choice was overridden)"
    counted = _written(user, "train.epochs") and not _written(user, "train.steps_per_epoch")
    if counted and not merged.train.budget:  # your epochs are passes over the data
        merged.train.steps_per_epoch = None
        result.reasons["train.steps_per_epoch"] = (
            "one pass over the training set per epoch: you set train.epochs, counted in passes"
        )
    result.config = merged
    return merged, result


def _written(user: dict[str, Any], key: str) -> bool:
    node: Any = user
    for part in key.split("."):
        if not isinstance(node, dict) or part not in node:
            return False
        node = node[part]
    return True
