"""The architecture registry: names, what each supports, and ``build_model``.

One table per task maps a canonical name to an :class:`ArchSpec` (its builder and what
options it supports), so unknown names and unsupported options fail here, with a
did-you-mean hint, before anything is built. Classification also takes any timm model
name; segmentation takes every architecture the installed smp ships, plus FCN
(torchvision) and SegNet (built in).

``model.dropout`` sets the architecture's dropout (0 turns it off); None, the default,
keeps the library's own (e.g. AlexNet's 0.5, FPN's 0.2), as timm's ``create_model``
keeps defaults for options a user did not set.
"""

from __future__ import annotations

import difflib
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import segmentation_models_pytorch as smp
import timm
from torch import nn

from liandan.config import ModelConfig
from liandan.errors import ConfigError
from liandan.models import factories
from liandan.models.factories import BuildRequest
from liandan.models.transfer import apply_transfer
from liandan.models.weights import load_weights
from liandan.tasks import Task, get_task, task_names

log = logging.getLogger("liandan")

# shown in error messages; any other timm name works too
FEATURED_CLASSIFIERS = (
    "lenet", "alexnet", "googlenet", "vgg11", "resnet18", "resnet50", "densenet121",
    "mobilenetv3_small_100", "efficientnet_b0", "convnext_atto", "vit_tiny_patch16_224",
)  # fmt: skip
_OFFLINE_HINT = (
    "this machine seems to be offline (or the weights are not published); use "
    "model.weights=none, or the path of a weights file downloaded elsewhere"
)


@dataclass(frozen=True)
class ArchSpec:
    """An architecture: how to build it and which options it supports.

    Attributes:
        name: canonical lowercase name.
        family: the library it comes from.
        build: the builder, see ``factories.py``.
        min_size: smallest square input side it accepts.
        attention: the ``model.attention`` values it supports besides ``none``.
        dropout: whether ``model.dropout`` > 0 can be applied.
        pretrained: whether ``model.weights=imagenet`` is available.
        uses_encoder: whether ``model.encoder`` is used.
        pyramid: whether ``model.fpn_channels`` (a detector's pyramid width) applies.
    """

    name: str
    family: Literal["builtin", "torchvision", "smp", "timm"]
    build: Callable[[BuildRequest], nn.Module]
    min_size: int = 32
    attention: tuple[str, ...] = ()
    dropout: bool = True
    pretrained: bool = True
    uses_encoder: bool = False
    pyramid: bool = False


_ARCHS: dict[str, dict[str, ArchSpec]] = {}
_ALIASES: dict[str, dict[str, str]] = {}


def register(task: str, spec: ArchSpec, aliases: tuple[str, ...] = ()) -> None:
    """Add an architecture to the registry of ``task`` (a registered task's name)."""
    _ARCHS.setdefault(task, {})[spec.name] = spec
    for alias in aliases:
        _ALIASES.setdefault(task, {})[alias] = spec.name


register(
    "classify",
    ArchSpec("lenet", "builtin", factories.build_lenet, 16, pretrained=False),
    aliases=("lenet5", "lenet-5"),
)
register("classify", ArchSpec("alexnet", "torchvision", factories.build_alexnet, 64))
register(
    "classify",
    ArchSpec("googlenet", "torchvision", factories.build_googlenet),
    aliases=("inception", "inception_v1", "inceptionv1"),
)
register(
    "segment",
    ArchSpec("segnet", "builtin", factories.build_segnet, 16, ("scse",), pretrained=False),
)
register("segment", ArchSpec("fcn", "torchvision", factories.build_fcn), aliases=("fcn_resnet50",))
# PAN's feature pyramid attention pools its stride-16 map three more times: 128 px minimum
_SMP_MIN_SIZE = {"pan": 128}
for _name in smp.MODEL_ARCHITECTURES_MAPPING:
    _accepts = factories.smp_accepts(_name)
    register(
        "segment",
        ArchSpec(
            _name,
            "smp",
            factories.build_smp,
            _SMP_MIN_SIZE.get(_name, 32),
            # scse from the decoder; se / cbam inside a timm ResNet-family encoder
            ("scse", "se", "cbam") if "decoder_attention_type" in _accepts else ("se", "cbam"),
            dropout=any(arg in _accepts for arg in factories.SMP_DROPOUT_ARGS),
            uses_encoder=True,
        ),
        aliases={"unetplusplus": ("unet++",), "deeplabv3plus": ("deeplabv3+",)}.get(_name, ()),
    )


# detection: torchvision's detectors over a timm encoder (liandan.tasks.detect.models)
for _name in ("fcos", "retinanet", "fasterrcnn"):
    register(
        "detect",
        ArchSpec(_name, "torchvision", factories.build_detector, 64, dropout=False,
                 uses_encoder=True, pyramid=True),
        aliases={"fasterrcnn": ("faster_rcnn", "faster-rcnn")}.get(_name, ()),
    )  # fmt: skip


def _timm_spec(name: str) -> ArchSpec:
    """A timm classifier; SE / CBAM where timm's ResNet blocks can take them."""
    attention = ("se", "cbam") if name.split(".")[0] in factories.timm_resnet_family() else ()
    return ArchSpec(name, "timm", factories.build_timm, factories.timm_min_size(name), attention)


def _task(task: str) -> Task:
    """The registered task (a ConfigError naming the registered ones otherwise)."""
    found = get_task(task)
    _ARCHS.setdefault(found.name, {})
    _ALIASES.setdefault(found.name, {})
    return found


def list_archs(task: str) -> list[str]:
    """Every architecture name ``model.arch`` accepts for ``task`` (canonical names).

    Args:
        task: a registered task, e.g. ``classify`` or ``segment``.

    Returns:
        Sorted names; where the task takes timm classifiers (classify), every timm model.

    >>> "unet" in list_archs("segment")
    True
    """
    names = set(_ARCHS[_task(task).name])
    if get_task(task).timm_classifiers:
        names.update(timm.list_models())
    return sorted(names)


def resolve_arch(task: str, arch: str) -> str:
    """The canonical name of ``arch`` for ``task`` (``auto`` and aliases resolved).

    Args:
        task: a registered task, e.g. ``classify`` or ``segment``.
        arch: a name as the user wrote it, e.g. ``UNet++`` or ``resnet18``.

    Returns:
        The canonical name, e.g. ``unetplusplus``.

    Raises:
        ConfigError: the name is unknown for the task (with a did-you-mean hint).

    >>> resolve_arch("segment", "DeepLabV3+")
    'deeplabv3plus'
    """
    spec_task = _task(task)
    task = spec_task.name
    name = arch.strip()
    low = name.lower()
    if low == "auto":
        return spec_task.default_arch()
    low = _ALIASES[task].get(low, low)
    if low in _ARCHS[task]:
        return low
    if spec_task.timm_classifiers:
        for candidate in (name, low):  # timm names are lowercase: ResNet18 is resnet18
            if timm.is_model(candidate):
                return candidate
    owner = _owner(low, name, besides=task)
    if owner is not None:
        hint = spec_task.misplaced_arch_hint(arch, get_task(owner))
    else:
        shown = list(FEATURED_CLASSIFIERS) if spec_task.timm_classifiers else sorted(_ARCHS[task])
        candidates = list_archs(task) + list(_ALIASES[task])
        close = difflib.get_close_matches(low, candidates, n=3, cutoff=0.6)
        hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
        hint += f"valid: {', '.join(shown)}"
        if spec_task.timm_classifiers:
            hint += ", or any timm model (timm.list_models())"
    raise ConfigError(f"unknown {task} architecture {arch!r}", where="model.arch", hint=hint)


def _owner(low: str, name: str, besides: str) -> str | None:
    """Another task whose architecture ``name`` is (``low``: its lowercase form)."""
    for other in task_names():
        if other == besides:
            continue
        _task(other)
        if low in _ARCHS[other] or low in _ALIASES[other]:
            return other
        if get_task(other).timm_classifiers and timm.is_model(name):
            return other
    return None


def _spec(task: str, arch: str) -> ArchSpec:
    """The spec of a canonical name (a timm classifier gets one made on the fly)."""
    return _ARCHS.get(get_task(task).name, {}).get(arch) or _timm_spec(arch)


def min_input_size(task: str, arch: str) -> int:
    """The smallest square input side the architecture accepts.

    Segmentation models accept any multiple of 32 from this size on. Fixed-size timm
    models (ViT) return the size they are built for without ``image_size``.

    Args:
        task: a registered task, e.g. ``classify`` or ``segment``.
        arch: an architecture name (aliases and ``auto`` accepted).

    Returns:
        The side in pixels, e.g. 32 for an smp U-Net with a 5-stage encoder.

    >>> min_input_size("segment", "pan")
    128
    """
    return _spec(task, resolve_arch(task, arch)).min_size


def _check_options(spec: ArchSpec, cfg: ModelConfig, task: str) -> None:
    """Raise a ConfigError for any option this architecture cannot honour."""
    if cfg.attention != "none" and cfg.attention not in spec.attention:
        supported = ", ".join(spec.attention) or "none"
        hint = (
            "scse is decoder attention: use model.arch=unet, unetplusplus or segnet"
            if cfg.attention == "scse"
            else "se / cbam go inside timm ResNet blocks: e.g. model.arch=resnet18 "
            "(classify) or model.encoder=tu-resnet34 (segment)"
        )
        raise ConfigError(
            f"{spec.name} does not support attention {cfg.attention} (supports: {supported})",
            where="model.attention",
            hint=hint,
        )
    if cfg.dropout and not spec.dropout:
        with_dropout = [n for n, s in _ARCHS.get(get_task(task).name, {}).items() if s.dropout]
        raise ConfigError(
            f"{spec.name} has no dropout to set",
            where="model.dropout",
            hint=f"leave model.dropout unset, or use an architecture with one: "
            f"{', '.join(with_dropout)}",
        )
    if cfg.fpn_channels is not None and not spec.pyramid:
        raise ConfigError(
            f"{spec.name} has no feature pyramid to size",
            where="model.fpn_channels",
            hint="leave model.fpn_channels unset: it is the width of a detector's pyramid "
            "and heads (fcos, retinanet, fasterrcnn)",
        )
    if cfg.weights == "imagenet" and not spec.pretrained:
        raise ConfigError(
            f"{spec.name} has no ImageNet weights",
            where="model.weights",
            hint="use model.weights=none, or the path of a weights file",
        )
    default_encoder = ModelConfig.model_fields["encoder"].default
    if not spec.uses_encoder and cfg.encoder != default_encoder:
        log.warning("model.encoder=%s is not used by %s", cfg.encoder, spec.name)


def build_model(
    cfg: ModelConfig,
    *,
    task: str,
    num_classes: int,
    in_channels: int,
    image_size: int | None = None,
) -> nn.Module:
    """Build the model ``cfg`` describes, load its weights, freeze what it asks.

    Args:
        cfg: the ``model`` config section.
        task: a registered task, e.g. ``classify`` or ``segment``.
        num_classes: number of output logits per image (classify) or pixel (segment).
        in_channels: number of input bands.
        image_size: training input side; only fixed-size timm models (ViT) use it.

    Returns:
        A module mapping (B, in_channels, H, W) images to logits: (B, num_classes) for
        ``classify``, (B, num_classes, H, W) for ``segment``.

    Raises:
        ConfigError: unknown arch or encoder, an unsupported option, a weights file that
            is missing or does not fit, or ImageNet weights that cannot be downloaded.

    >>> model = build_model(ModelConfig(arch="lenet"), task="classify", num_classes=10,
    ...                     in_channels=1)
    """
    arch = resolve_arch(task, cfg.arch)
    spec = _spec(task, arch)
    _check_options(spec, cfg, task)
    request = BuildRequest(cfg, arch, num_classes, in_channels, image_size)
    try:
        model = spec.build(request)
    except ConfigError:
        raise
    except Exception as exc:
        raise _build_error(exc, spec, cfg) from exc
    if cfg.weights not in ("none", "imagenet"):
        load_weights(model, Path(cfg.weights))
    apply_transfer(model, cfg)
    return model


def _build_error(exc: Exception, spec: ArchSpec, cfg: ModelConfig) -> Exception:
    """Turn a library error while building into a ConfigError when the user can fix it."""
    if cfg.weights == "imagenet" and isinstance(exc, OSError):
        return ConfigError(
            f"could not download the ImageNet weights of {spec.name}: {exc}",
            where="model.weights",
            hint=_OFFLINE_HINT,
        )
    if spec.family == "smp" and isinstance(exc, ValueError | KeyError | TypeError | RuntimeError):
        return ConfigError(
            f"smp cannot build {spec.name} with the encoder {cfg.encoder}: {exc}",
            where="model.encoder",
            hint="DPT needs a timm ViT encoder, e.g. tu-vit_small_patch16_224"
            if spec.name == "dpt"
            else "try another encoder, e.g. resnet34",
        )
    if cfg.weights == "imagenet":
        return ConfigError(
            f"could not load the ImageNet weights of {spec.name}: {exc}",
            where="model.weights",
            hint=_OFFLINE_HINT,
        )
    return exc
