"""The configuration: a pydantic schema, YAML in and out, dotted overrides.

Every option is typed: a choice is a ``Literal`` (or a registry name checked where the
registry lives), so a typo fails at load time with a did-you-mean hint instead of deep
inside training. ``auto`` values are resolved when training starts and written back
resolved into the run's ``config.yaml``, so rerunning that file reproduces the run.

>>> cfg = Config.load(None, ["model.arch=unet", "optim.lr=3e-4"])
>>> cfg.optim.lr
0.0003
"""

from __future__ import annotations

import difflib
import re
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import UnionType
from typing import Annotated, Any, Literal, Union, get_args, get_origin

import yaml
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    NonNegativeInt,
    PositiveInt,
    ValidationError,
    field_validator,
)

from liandan.errors import ConfigError

# data.layout=pairs:IMAGES/MASKS names the image and mask folders of a segmentation dataset
PairFolders = Annotated[str, Field(pattern=r"^pairs:[^/]+/[^/]+$")]


class Section(BaseModel):
    """A config section: unknown keys are errors, assignments are validated."""

    model_config = ConfigDict(extra="forbid", validate_assignment=True)


# the folder layouts (liandan.data.finders); yolo, coco, voc-boxes and vector-boxes (rasters
# with GIS point/polygon layers) hold boxes (detection)
Layout = Literal[
    "auto", "imagefolder", "csv", "pairs", "voc", "yolo", "coco", "voc-boxes", "vector-boxes"
]


class DataConfig(Section):
    root: Path | None = None  # dataset folder; the DATA argument fills it
    layout: Layout | PairFolders = "auto"
    val_fraction: float = Field(0.2, gt=0.0, lt=1.0)  # used when there is no val/ split
    image_size: int = Field(256, ge=8)  # images are resized to this square size
    tile_size: int = Field(512, ge=16)  # large rasters are trained on tiles of this size
    max_image_size: int = Field(2048, ge=64)  # larger images are tiled, not resized
    tiles_per_epoch: int = Field(256, ge=1)  # random training tiles per epoch (rasters)
    nodata: float | None = None  # rasters: a nodata value the files do not declare
    max_nodata_fraction: float = Field(0.5, ge=0.0, le=1.0)  # rasters: skip tiles with more
    split: Literal["auto", "files", "spatial"] = "auto"  # rasters: auto = spatial without val/
    label_attribute: str = "class"  # polygon labels: attribute holding class name or value
    point_box: int | None = Field(None, ge=1)  # detection from GIS points: box side in pixels
    unlabelled: Literal["background", "ignore"] = "background"  # polygon labels: other pixels
    align: Literal["error", "warp"] = "error"  # label raster on another grid: fail, or warp
    bands: list[int] | None = None  # 1-based band indices, as in GDAL
    normalize: Literal["dataset", "imagenet", "vgg", "unit", "percentile", "zca"] = "dataset"
    percentiles: tuple[float, float] = (2.0, 98.0)  # for normalize: percentile
    ignore_index: int | None = None  # mask value excluded from loss and metrics
    on_error: Literal["fail", "skip"] = "fail"  # skip: leave bad files out, listed in the run
    lossy_masks: Literal["error", "nearest"] = "error"  # JPEG/WebP masks: nearest snaps to classes
    cache: bool = True  # keep decoded images in memory when they fit (small datasets)
    sampler: Literal["random", "balanced"] = "random"  # balanced: even classes / rare-class crops
    folds: int | None = Field(None, ge=2)  # k-fold cross-validation (train --folds K)
    fold: int | None = Field(None, ge=0)  # the fold validated by this run (0 .. folds-1)


class ModelConfig(Section):
    arch: str = "auto"  # auto: unet (segment) / resnet18 or lenet (classify)
    encoder: str = "resnet34"  # segmentation encoder (smp / timm name)
    weights: str = "none"  # none | imagenet | path to a weights file
    attention: Literal["none", "scse", "se", "cbam"] = "none"
    transfer: Literal["full", "partial", "frozen"] = "full"
    frozen_stages: int = Field(0, ge=0)  # for transfer: partial
    dropout: float | None = Field(None, ge=0.0, lt=1.0)  # None: the architecture's default
    freeze_bn: bool = False  # keep BatchNorm running statistics fixed (small-batch fine-tuning)
    fpn_channels: int | None = Field(None, ge=64, multiple_of=32)  # detector pyramid (None: 256)


class LossConfig(Section):
    name: str = "auto"  # auto: ce+dice (segment) / ce (classify); combine with "+"
    weights: list[float] | None = None  # one weight per combined loss; default all 1.0
    class_weights: Literal["none", "auto"] | list[float] = "none"
    label_smoothing: float = Field(0.0, ge=0.0, lt=1.0)
    focal_gamma: float = Field(2.0, ge=0.0)
    class_weighting: Literal["inverse", "median", "effective"] = "inverse"  # class_weights: auto
    tversky_alpha: float = Field(0.3, ge=0.0)  # tversky, focal_tversky: weight of false positives
    tversky_beta: float = Field(0.7, ge=0.0)  # tversky, focal_tversky: weight of false negatives


class OptimConfig(Section):
    name: Literal["sgd", "adagrad", "adadelta", "rmsprop", "adam", "adamw"] = "adamw"
    lr: float | Literal["auto"] = 1.0e-3  # peak learning rate (> 0); auto: found by lr-find
    weight_decay: float = Field(1.0e-4, ge=0.0)
    momentum: float = Field(0.9, ge=0.0, lt=1.0)  # sgd / rmsprop
    nesterov: bool = False
    betas: tuple[float, float] = (0.9, 0.999)  # adam / adamw: decay of the moment averages
    ema: float | None = Field(None, gt=0.0, lt=1.0)  # decay of a weight moving average
    encoder_lr_mult: float = Field(1.0, gt=0.0)  # lr of pretrained encoder = lr * this

    @field_validator("lr")
    @classmethod
    def _positive_lr(cls, value: float | str) -> float | str:
        if not isinstance(value, str) and value <= 0:
            raise ValueError("the learning rate must be > 0 (or auto)")
        return value

    @field_validator("betas")
    @classmethod
    def _betas_in_range(cls, value: tuple[float, float]) -> tuple[float, float]:
        if not all(0.0 <= beta < 1.0 for beta in value):
            raise ValueError("each beta must be in [0, 1)")
        return value


class ScheduleConfig(Section):
    name: Literal[
        "constant",
        "step",
        "multistep",
        "exponential",
        "cosine",
        "sgdr",
        "onecycle",
        "poly",
        "plateau",
    ] = "cosine"
    warmup_epochs: float = Field(1.0, ge=0.0)
    warmup_start_factor: float = Field(0.01, gt=0.0, le=1.0)  # warmup starts at lr * this
    min_lr_ratio: float = Field(0.01, ge=0.0, le=1.0)  # final lr = lr * this (cosine, poly)
    step_size: int = Field(10, ge=1)  # step
    milestones: list[int] = [10, 15]  # multistep
    gamma: float = Field(0.1, gt=0.0)  # step, multistep, exponential
    t0: int = Field(5, ge=1)  # sgdr: epochs of the first cycle
    t_mult: int = Field(2, ge=1)  # sgdr: each cycle is this many times longer
    power: float = Field(0.9, gt=0.0)  # poly
    patience: int = Field(5, ge=0)  # plateau: epochs without improvement before a cut


class AugmentConfig(Section):
    hflip: float = Field(0.5, ge=0.0, le=1.0)
    vflip: float = Field(0.0, ge=0.0, le=1.0)
    rotate90: float = Field(0.0, ge=0.0, le=1.0)
    # classify: the share of the image's area; segment: relative to the training crop
    scale: tuple[float, float] = (1.0, 1.0)  # random-resized-crop area range; (1,1) = off
    brightness_contrast: float = Field(0.0, ge=0.0, le=1.0)  # probability
    rotate: float = Field(0.0, ge=0.0, le=180.0)  # random rotation within +-degrees
    shift_scale_rotate: float = Field(0.0, ge=0.0, le=1.0)  # probability of a small affine
    hue_saturation: float = Field(0.0, ge=0.0, le=1.0)  # probability; RGB images only
    gamma: float = Field(0.0, ge=0.0, le=1.0)  # probability of a random gamma (per band)
    blur: float = Field(0.0, ge=0.0, le=1.0)  # probability of a Gaussian blur
    noise: float = Field(0.0, ge=0.0, le=1.0)  # probability of Gaussian noise
    coarse_dropout: float = Field(0.0, ge=0.0, le=1.0)  # probability of erasing patches
    eval_resize: float | None = Field(None, ge=1.0)  # classify eval: resize x this, centre-crop
    mixup: float = Field(0.0, ge=0.0)  # classify: Beta(alpha, alpha) of mixup; 0 = off
    cutmix: float = Field(0.0, ge=0.0)  # classify: Beta(alpha, alpha) of cutmix; 0 = off


class TrainConfig(Section):
    epochs: int = Field(20, ge=1)
    batch_size: PositiveInt | Literal["auto"] = 8  # >= 1, or auto: the largest that fits in memory
    seed: int = 0
    monitor: str = "auto"  # auto: val/mean_iou (segment) / val/macro_f1 (classify)
    patience: int | None = Field(None, ge=1)  # early stopping on the monitor
    budget: str | None = None  # e.g. "10m": fit the schedule to a wall-clock budget
    devices: int | Literal["auto"] = "auto"
    num_nodes: int = Field(1, ge=1)  # machines taking part (torchrun / SLURM launch)
    strategy: Literal["auto", "ddp", "ddp_spawn"] = "auto"  # auto: ddp on several devices
    sync_batchnorm: bool | Literal["auto"] = "auto"  # auto: on under DDP when batch < 16
    compile: bool = False  # torch.compile the model (GPU; slower first steps)
    accelerator: Literal["auto", "cpu", "gpu", "mps"] = "auto"
    precision: Literal["auto", "32", "bf16-mixed", "16-mixed"] = "auto"
    num_workers: int | Literal["auto"] = "auto"
    # None = one pass over the training set; an int caps it (or draws fresh random crops
    # past one pass); auto = validation and checkpoints under a tenth of an epoch
    steps_per_epoch: PositiveInt | Literal["auto"] | None = None  # optimizer steps per epoch
    # auto: crops when the validation images are >= 4x the training crop's area
    val_patches: NonNegativeInt | Literal["auto"] = "auto"  # segment: crops validated; 0 = whole
    # auto: last with train.budget (its schedule ends at the floor), else best
    export: Literal["auto", "best", "last"] = "auto"  # the weights model/ gets
    checkpoint_interval: str = "3m"  # last.ckpt at most this often (and at every stop)
    # csv: metrics.csv in the run; mlflow: a local file store in the run (no server)
    logger: Literal["tensorboard", "csv", "mlflow"] = "tensorboard"  # where curves go

    @field_validator("budget", "checkpoint_interval")
    @classmethod
    def _duration(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"\s*\d+(\.\d+)?\s*[smhSMH]?\s*", value):
            raise ValueError(f"{value!r} is not a duration: write e.g. 90s, 10m or 1.5h")
        return value

    freeze_epochs: int = Field(0, ge=0)  # train the head alone this many epochs, then all
    progress: bool = True
    unsafe_load: bool = False  # allow checkpoints needing arbitrary unpickling (trusted only)


class PredictConfig(Section):
    tile: int = Field(512, ge=16)
    overlap: float = Field(0.25, ge=0.0, lt=1.0)
    blend: Literal["gaussian", "hann", "none"] = "gaussian"
    tta: bool = False
    batch_size: int = Field(8, ge=1)
    precision: Literal["auto", "32", "bf16", "16"] = "auto"
    score_threshold: float = Field(0.25, ge=0.0, le=1.0)
    nms_iou: float | None = Field(None, gt=0.0, le=1.0)


class Config(Section):
    """The complete configuration of a run."""

    task: str | None = None  # classify, segment or detect; else inferred from the layout
    data: DataConfig = DataConfig()
    model: ModelConfig = ModelConfig()
    loss: LossConfig = LossConfig()
    optim: OptimConfig = OptimConfig()
    schedule: ScheduleConfig = ScheduleConfig()
    augment: AugmentConfig = AugmentConfig()
    train: TrainConfig = TrainConfig()
    predict: PredictConfig = PredictConfig()

    @field_validator("task", mode="before")
    @classmethod
    def _task_name(cls, value: Any) -> Any:
        from liandan.tasks import resolve_task_name

        if value is None or not isinstance(value, str):
            return value
        try:  # a task's alias (segmentation) is read as its name (segment)
            return resolve_task_name(value)
        except ConfigError as exc:
            raise ValueError(f"{exc.message}; {exc.hint}") from None

    # ---------------------------------------------------------------- loading
    @classmethod
    def from_dict(cls, data: dict[str, Any], source: str = "config") -> Config:
        """Validate a plain dict, turning pydantic errors into a ConfigError."""
        try:
            return cls.model_validate(data)
        except ValidationError as exc:
            raise _config_error(exc, source) from None

    @classmethod
    def load(cls, path: str | Path | None = None, overrides: list[str] | None = None) -> Config:
        """Load a YAML file (or defaults) and apply ``key=value`` overrides.

        Args:
            path: YAML config file, or None for the defaults.
            overrides: dotted ``key=value`` strings, e.g. ``optim.lr=3e-4``.
        """
        data: dict[str, Any] = {}
        source = "defaults"
        if path is not None:
            data = read_yaml(Path(path))
            source = str(path)
        check_overrides(overrides or [])  # every bad key at once, not the first only
        for item in overrides or []:
            apply_override(data, item)
        if overrides:
            source = f"{source} with overrides"
        return cls.from_dict(data, source)

    def to_dict(self) -> dict[str, Any]:
        """Plain, YAML-safe dict (paths as strings, tuples as lists)."""
        return _plain(self.model_dump(mode="json"))

    def save(self, path: str | Path) -> None:
        """Write the config as YAML."""
        from liandan.atomic import atomic_write_text

        text = yaml.safe_dump(self.to_dict(), sort_keys=False, default_flow_style=None)
        atomic_write_text(Path(path), text)

    def resolved_monitor(self) -> str:
        if self.train.monitor != "auto":
            return self.train.monitor
        from liandan.tasks import get_task

        return get_task(self.task or "classify").monitor

    def resolved_export(self) -> str:
        """Which weights model/ gets: ``last`` or ``best`` (``train.export``)."""
        if self.train.export != "auto":
            return self.train.export
        return "last" if self.train.budget else "best"


def read_yaml(path: Path) -> dict[str, Any]:
    """Read a YAML mapping with safe_load only (no python tags)."""
    if not path.is_file():
        raise ConfigError("config file not found", where=path, hint="check the path")
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except yaml.YAMLError as exc:
        raise ConfigError(
            f"not valid YAML: {exc}", where=path, hint="only plain YAML is accepted"
        ) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError("the config must be a mapping of sections", where=path)
    return data


def apply_override(data: dict[str, Any], item: str) -> None:
    """Apply one ``dotted.key=value`` override to a nested dict (value parsed as YAML)."""
    if "=" not in item:
        raise ConfigError(f"override {item!r} is not key=value", hint="write e.g. optim.lr=3e-4")
    key, _, raw = item.partition("=")
    key = key.strip()
    parts = key.split(".")
    _check_key_path(parts)
    try:
        value = yaml.safe_load(raw) if raw.strip() else None
    except yaml.constructor.ConstructorError as exc:  # e.g. a !!python/object tag
        raise ConfigError(
            f"cannot read the value {raw!r} ({exc.problem})",
            where=key,
            hint="only plain YAML values are accepted (no !!python tags)",
        ) from None
    except yaml.YAMLError:
        value = raw
    if isinstance(value, int | float) and _wants_text(_annotation(parts), raw.strip()):
        value = raw.strip()  # train.precision=32 means the choice "32", not the number
    node = data
    for part in parts[:-1]:
        child = node.setdefault(part, {})
        if not isinstance(child, dict):
            raise ConfigError(f"{part} is a value, not a section", where=key)
        node = child
    node[parts[-1]] = value


def _annotation(parts: list[str]) -> Any:
    """The type of the (valid) dotted key ``parts`` in the schema."""
    model: Any = Config
    for part in parts:
        model = model.model_fields[part].annotation
    return model


def _wants_text(annotation: Any, text: str) -> bool:
    """Whether a field takes ``text`` as a string but no number (``"32"`` of a choice)."""
    union = get_origin(annotation) in (Union, UnionType)
    options = get_args(annotation) if union else (annotation,)
    kinds = []
    for option in options:
        while get_origin(option) is Annotated:  # PositiveInt and the like
            option = get_args(option)[0]
        kinds.append(option)
    if any(kind in (int, float, bool) for kind in kinds):
        return False
    return any(
        kind is str or (get_origin(kind) is Literal and text in get_args(kind)) for kind in kinds
    )


def _check_key_path(parts: list[str]) -> None:
    """Fail early, with did-you-mean, on a dotted key that is not in the schema."""
    key = ".".join(parts)
    problem = key_problem(key)
    if problem is not None:
        raise ConfigError(problem[0], where=key, hint=problem[1])


# Other tools' names for liandan's keys (Ultralytics YOLO's, mostly): suggested, never
# applied silently.
KEY_ALIASES: dict[str, str] = {
    "imgsz": "data.image_size",
    "batch": "train.batch_size",
    "lr0": "optim.lr",
    "lrf": "schedule.min_lr_ratio",
    "learning_rate": "optim.lr",
    "optimizer": "optim.name",
    "workers": "train.num_workers",
    "device": "train.accelerator",
    "amp": "train.precision",
    "fliplr": "augment.hflip",
    "flipud": "augment.vflip",
    "degrees": "augment.rotate",
    "pretrained": "model.weights",
    "scheduler": "schedule.name",
}
# a section's name alone (model=unet) probably meant its main key
SECTION_KEYS = {
    "data": "data.root",
    "model": "model.arch",
    "loss": "loss.name",
    "optim": "optim.name",
    "schedule": "schedule.name",
}


def config_keys() -> list[str]:
    """Every dotted key of the schema, in schema order (``task``, ``data.root``, ...)."""

    def walk(model: type[BaseModel], prefix: str) -> list[str]:
        keys = []
        for name, field in model.model_fields.items():
            annotation = field.annotation
            if isinstance(annotation, type) and issubclass(annotation, BaseModel):
                keys += walk(annotation, f"{prefix}{name}.")
            else:
                keys.append(f"{prefix}{name}")
        return keys

    return walk(Config, "")


def suggest_keys(key: str, accepts: Sequence[str] | None = None) -> list[str]:
    """Keys the user may have meant by ``key``: another tool's name for it (``imgsz``),
    the keys ending in its last part (``epochs`` -> ``train.epochs``), or close spellings.
    Keys under ``accepts`` (sections or keys) come first when there are any."""
    keys = config_keys()
    leaf = key.rsplit(".", 1)[-1]
    aliases = {**KEY_ALIASES, **SECTION_KEYS}
    found = [aliases[leaf]] if leaf in aliases else []
    found += [k for k in keys if k.rsplit(".", 1)[-1] == leaf]
    if not found:
        found = difflib.get_close_matches(key, keys, n=2, cutoff=0.75)
    if not found:
        leaves = {k.rsplit(".", 1)[-1] for k in keys}
        close = difflib.get_close_matches(leaf, leaves, n=2, cutoff=0.75)
        found = [k for k in keys if k.rsplit(".", 1)[-1] in close]
    found = list(dict.fromkeys(found))  # once each, in order
    if accepts is not None:
        inside = [k for k in found if key_accepted(k, accepts)]
        found = inside or found
    return found


def key_accepted(key: str, accepts: Sequence[str]) -> bool:
    """Whether ``key`` is one of ``accepts`` or inside one of its sections."""
    return any(key == a or key.startswith(f"{a}.") for a in accepts)


def _did_you_mean_keys(key: str, accepts: Sequence[str] | None = None) -> str:
    close = suggest_keys(key, accepts)
    if not close:
        return "docs/config.md lists every key"
    note = f" ({key} is another tool's name)" if key in KEY_ALIASES else ""
    if accepts is not None and not any(key_accepted(k, accepts) for k in close):
        note += " (not read by this command either)"
    return f"did you mean {' or '.join(close)}?{note}"


def key_problem(key: str, accepts: Sequence[str] | None = None) -> tuple[str, str] | None:
    """What is wrong with a dotted override key, as (message, hint); None when it is one."""
    model: type[BaseModel] = Config
    parts = key.split(".")
    for depth, part in enumerate(parts):
        if part not in model.model_fields:
            return "unknown config key", _did_you_mean_keys(key, accepts)
        annotation = model.model_fields[part].annotation
        section = annotation if isinstance(annotation, type) else None
        if section is None or not issubclass(section, BaseModel):
            if depth < len(parts) - 1:
                value = ".".join(parts[: depth + 1])
                return f"{value} is a value, not a section", f"write {value}=VALUE"
            return None
        model = section
    if key in SECTION_KEYS:
        return f"{key} is a section, not a key", f"did you mean {SECTION_KEYS[key]}?"
    some = ", ".join(f"{key}.{name}" for name in list(model.model_fields)[:3])
    return f"{key} is a section, not a key", f"give one of its keys: {some}, ..."


def check_overrides(
    items: Iterable[str], accepts: Sequence[str] | None = None, *, command: str | None = None
) -> None:
    """Raise one ConfigError naming every bad ``key=value`` override at once.

    A bad override is not ``key=value``, names no key of the schema (the hint suggests
    one, also from a key's last part alone or another tool's name: ``epochs``,
    ``imgsz``), or, with ``accepts``, names a key outside the sections (or keys) a
    command reads.

    >>> check_overrides(["epochs=3"])
    Traceback (most recent call last):
    ...
    liandan.errors.ConfigError: epochs: unknown config key
    hint: did you mean train.epochs?
    """
    problems: list[tuple[str, str, str]] = []  # (key, message, hint)
    for item in items:
        key, sep, _ = item.partition("=")
        key = key.strip()
        if not sep or not key:
            problems.append((item, "not key=value", "write e.g. optim.lr=3e-4"))
            continue
        problem = key_problem(key, accepts)
        if problem is None and accepts is not None and not key_accepted(key, accepts):
            reads = ", ".join(f"{a}.*" if a in Config.model_fields else a for a in accepts)
            problem = (
                f"not read by {command or 'this command'}",
                f"it reads {reads}" if accepts else "it reads no config key (see its --help)",
            )
        if problem is not None:
            problems.append((key, *problem))
    if len(problems) == 1:
        key, message, hint = problems[0]
        raise ConfigError(message, where=key, hint=hint)
    if problems:
        raise ConfigError(
            f"{len(problems)} bad overrides" + (f" for {command}" if command else ""),
            items=[f"{key}: {message}; {hint}" for key, message, hint in problems],
            hint="write section.key=value; docs/config.md lists every key",
        )


def override_values(items: list[str], accepts: Sequence[str] | None = None) -> dict[str, Any]:
    """The value of each ``key=value`` override, checked and typed by the schema.

    >>> override_values(["predict.tile=256", "predict.tta=true"], ["predict"])
    {'predict.tile': 256, 'predict.tta': True}
    """
    check_overrides(items, accepts)
    data: dict[str, Any] = {}
    for item in items:
        apply_override(data, item)
    cfg = Config.from_dict(data, "the command line")
    values = {}
    for item in items:
        key = item.partition("=")[0].strip()
        node: Any = cfg
        for part in key.split("."):
            node = getattr(node, part)
        values[key] = node
    return values


def _did_you_mean(name: str, options: Any) -> str:
    options = list(options)
    close = difflib.get_close_matches(name, options, n=1, cutoff=0.5)
    if close:
        return f"did you mean {close[0]!r}? (valid keys: {', '.join(options)})"
    return f"valid keys: {', '.join(options)}"


def _config_error(exc: ValidationError, source: str) -> ConfigError:
    lines = []
    first_key = None
    hint = "see docs/config.md for every key, its type and default"
    for err in exc.errors():
        key = ".".join(str(p) for p in err["loc"])
        first_key = first_key or key
        if err["type"] == "extra_forbidden":
            parent: type[BaseModel] = Config
            for part in err["loc"][:-1]:
                ann = parent.model_fields[str(part)].annotation
                if isinstance(ann, type) and issubclass(ann, BaseModel):
                    parent = ann
            hint = _did_you_mean(str(err["loc"][-1]), parent.model_fields)
            lines.append(f"{key}: unknown config key")
        else:
            got = err.get("input")
            lines.append(f"{key}: {err['msg']} (got {got!r})")
    message = f"invalid configuration in {source}"
    return ConfigError(message, where=None, hint=hint, items=lines)


def _plain(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _plain(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_plain(v) for v in value]
    return value


def parse_duration(text: str, key: str = "train.budget") -> float:
    """Parse a duration such as ``90s``, ``10m``, ``1.5h`` (or ``0``) into seconds."""
    units = {"s": 1.0, "m": 60.0, "h": 3600.0}
    text = text.strip().lower()
    try:
        if text[-1] in units:
            return float(text[:-1]) * units[text[-1]]
        return float(text)
    except (ValueError, IndexError):
        raise ConfigError(
            f"cannot read the duration {text!r}", where=key, hint="write e.g. 10m"
        ) from None
