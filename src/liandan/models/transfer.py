"""Transfer learning: which parameters are the encoder, its stages, and freezing them.

``model.transfer`` names the three classic regimes: ``frozen`` (a fixed feature
extractor: only the head/decoder trains), ``partial`` (the first
``model.frozen_stages`` encoder stages stay fixed, the later ones fine-tune) and
``full`` (everything trains). The encoder is what ImageNet weights would fill: smp's
``model.encoder``, a timm classifier without its head, a torchvision backbone.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import torch
from segmentation_models_pytorch.base import SegmentationModel
from torch import nn
from torchvision.models import AlexNet, GoogLeNet

from liandan.config import ModelConfig
from liandan.errors import ConfigError
from liandan.models.builtin import TorchvisionSegmenter

log = logging.getLogger("liandan")

# Side of the blank image run through an encoder to find its stages by stride: large
# enough that stride 32 still leaves 4 x 4 pixels, small enough to take milliseconds.
_PROBE_SIZE = 128


def _encoder_parts(model: nn.Module) -> tuple[nn.Module, set[int]] | None:
    """The module holding the encoder, and the ids of its parameters that are a head."""
    if isinstance(model, SegmentationModel) and isinstance(model.encoder, nn.Module):
        return model.encoder, set()
    if isinstance(model, TorchvisionSegmenter):
        backbone = model.net.get_submodule("backbone")
        return backbone, set()
    if isinstance(model, AlexNet):
        return model.features, set()
    if isinstance(model, GoogLeNet):
        return model, {id(p) for p in model.fc.parameters()}
    from liandan.tasks.detect.models import Detector

    if isinstance(model, Detector):  # its timm encoder (the pyramid and heads are new)
        return model.encoder, set()
    get_classifier = getattr(model, "get_classifier", None)
    if hasattr(model, "pretrained_cfg") and callable(get_classifier):  # a timm model
        head = get_classifier()
        return model, {id(p) for p in head.parameters()} if isinstance(head, nn.Module) else set()
    return None


def encoder_parameters(model: nn.Module) -> list[nn.Parameter] | None:
    """The parameters pretrained weights would fill, for freezing and differential LR.

    Args:
        model: a model from :func:`liandan.models.build_model`.

    Returns:
        smp's ``model.encoder`` parameters, a timm / torchvision classifier's parameters
        except its head, an FCN's backbone; None for the built-ins (LeNet, SegNet).

    >>> # groups = [{"params": encoder_parameters(model), "lr": lr * 0.1}, ...]
    """
    parts = _encoder_parts(model)
    if parts is None:
        return None
    module, head = parts
    return [p for p in module.parameters() if id(p) not in head]


def encoder_stages(model: nn.Module) -> list[list[nn.Parameter]]:
    """The encoder's parameters grouped by stage, from the input on (stage 1 = the stem).

    Stages come from timm's ``feature_info`` where the encoder has one (every timm
    model, ViTs included), otherwise from the stride at which each layer runs: a new
    stage starts where the feature map halves, as in smp's list of encoder features.

    Args:
        model: a model from :func:`liandan.models.build_model`.

    Returns:
        One list of parameters per stage; empty when the stages cannot be identified.
    """
    parts = _encoder_parts(model)
    if parts is None:
        return []
    module, head = parts
    stages = _stages_from_feature_info(module) or _stages_from_strides(module)
    return [[p for p in stage if id(p) not in head] for stage in stages]


def _stages_from_feature_info(module: nn.Module) -> list[list[nn.Parameter]]:
    """Stages from timm's ``feature_info`` module names (a classifier or an smp ``tu-``)."""
    root = module if hasattr(module, "feature_info") else getattr(module, "model", None)
    info: Any = getattr(root, "feature_info", None)
    if root is None or info is None:
        return []
    names = info.module_name() if hasattr(info, "module_name") else [f["module"] for f in info]
    order = {name: i for i, (name, _) in enumerate(root.named_modules())}
    ends: list[int] = []  # position of the last sub-module of each stage's module
    for name in names:
        # timm's feature wrappers flatten "blocks.0" into "blocks_0"
        found = name if name in order else name.replace(".", "_")
        if found not in order:
            return []
        ends.append(max(i for n, i in order.items() if n == found or n.startswith(found + ".")))
    stages: list[list[nn.Parameter]] = [[] for _ in ends]
    for name, param in root.named_parameters():
        position = order[name.rpartition(".")[0]]
        # a parameter belongs to the first stage whose modules end at or after it;
        # those after the last stage (a final norm before the head) belong to none
        stage = next((k for k, end in enumerate(ends) if position <= end), None)
        if stage is not None:
            stages[stage].append(param)
    return [stage for stage in stages if stage]


def _stages_from_strides(module: nn.Module) -> list[list[nn.Parameter]]:
    """Stages from the output stride of each layer, found by running a blank image."""
    first_conv = next((m for m in module.modules() if isinstance(m, nn.Conv2d)), None)
    if first_conv is None:
        return []
    owners = [m for m in module.modules() if any(True for _ in m.parameters(recurse=False))]
    stage_of: dict[nn.Module, int] = {}
    current = 0

    def hook(layer: nn.Module, _inputs: Any, output: Any) -> None:
        nonlocal current
        if layer in stage_of or not isinstance(output, torch.Tensor) or output.ndim != 4:
            return
        height = output.shape[-2]
        if output.shape[-2:] != (1, 1):  # 1 x 1 maps are squeeze-excitation, not a stage
            current = max(current, round(math.log2(_PROBE_SIZE / height)))
        stage_of[layer] = current

    handles = [m.register_forward_hook(hook) for m in owners]
    modes = {m: m.training for m in module.modules()}
    try:
        module.eval()
        with torch.no_grad():
            module(torch.zeros(1, first_conv.in_channels, _PROBE_SIZE, _PROBE_SIZE))
    except Exception:  # an encoder that cannot run alone: its stages stay unknown
        log.debug("could not probe the encoder's stages", exc_info=True)
        return []
    finally:
        for handle in handles:
            handle.remove()
        for m, mode in modes.items():
            m.training = mode
    numbers = sorted(set(stage_of.values()))
    stages: list[list[nn.Parameter]] = [[] for _ in numbers]
    for layer, number in stage_of.items():
        stages[numbers.index(number)].extend(layer.parameters(recurse=False))
    return stages


def apply_transfer(model: nn.Module, cfg: ModelConfig) -> None:
    """Freeze encoder parameters as ``cfg.transfer`` asks (``requires_grad = False``).

    Args:
        model: a freshly built model, weights already loaded.
        cfg: the model section; reads ``transfer``, ``frozen_stages`` and ``weights``.

    Raises:
        ConfigError: the model has no encoder to freeze, its stages cannot be found,
            or ``frozen_stages`` does not fit the chosen transfer mode.
    """
    if cfg.transfer != "partial" and cfg.frozen_stages:
        raise ConfigError(
            f"model.frozen_stages is only used with model.transfer=partial (got {cfg.transfer})",
            where="model.frozen_stages",
            hint="set model.transfer=partial, or model.frozen_stages=0",
        )
    if cfg.transfer == "full":
        return
    params = encoder_parameters(model)
    if params is None:
        raise ConfigError(
            f"{cfg.arch} has no pretrained encoder to freeze",
            where="model.transfer",
            hint="use model.transfer=full, or a timm / smp / torchvision architecture",
        )
    if cfg.weights == "none":
        log.warning("model.transfer=%s freezes a randomly initialized encoder", cfg.transfer)
    if cfg.transfer == "frozen":
        _freeze(params)
        log.info("froze the encoder: %d tensors, only the head trains", len(params))
        return
    if cfg.frozen_stages == 0:
        raise ConfigError(
            "model.transfer=partial needs the number of encoder stages to freeze",
            where="model.frozen_stages",
            hint="set model.frozen_stages, e.g. 2 (the stem and the first stage)",
        )
    stages = encoder_stages(model)
    if not stages:
        raise ConfigError(
            f"cannot identify the encoder stages of {cfg.arch}",
            where="model.transfer",
            hint="use model.transfer=frozen or full",
        )
    if cfg.frozen_stages > len(stages):
        raise ConfigError(
            f"the encoder has {len(stages)} stages, cannot freeze {cfg.frozen_stages}",
            where="model.frozen_stages",
            hint=f"use 1 to {len(stages)}, or model.transfer=frozen",
        )
    frozen = [p for stage in stages[: cfg.frozen_stages] for p in stage]
    _freeze(frozen)
    log.info(
        "froze %d of %d encoder stages (%d tensors)", cfg.frozen_stages, len(stages), len(frozen)
    )


def _freeze(params: list[nn.Parameter]) -> None:
    for param in params:
        param.requires_grad_(False)


def set_frozen_norms_eval(model: nn.Module, all_norms: bool = False) -> int:
    """Put batch-norm layers whose parameters are all frozen (or all of them) in eval mode.

    A frozen encoder should also keep its running statistics, or a small batch of new
    data shifts them away from the ones its weights were trained with. ``all_norms``
    (``model.freeze_bn``) keeps every BatchNorm's statistics fixed, which helps when
    fine-tuning with batches too small to estimate them; their scale and shift still
    train. Call this after every ``model.train()`` (e.g. at the start of each epoch).

    Args:
        model: the model being trained.
        all_norms: every BatchNorm layer, not only frozen ones.

    Returns:
        How many normalization layers were put in eval mode.
    """
    count = 0
    for module in model.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            params = list(module.parameters(recurse=False))
            if all_norms or (params and not any(p.requires_grad for p in params)):
                module.eval()
                count += 1
    return count
