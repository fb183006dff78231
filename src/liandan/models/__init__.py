"""Models: ``build_model(config)`` from timm, smp, torchvision and built-ins.

>>> from liandan.config import ModelConfig
>>> model = build_model(ModelConfig(arch="unet", encoder="resnet18"), task="segment",
...                     num_classes=3, in_channels=4)
"""

from liandan.models.builtin import LeNet, SegNet
from liandan.models.registry import (
    ArchSpec,
    build_model,
    list_archs,
    min_input_size,
    register,
    resolve_arch,
)
from liandan.models.transfer import (
    apply_transfer,
    encoder_parameters,
    encoder_stages,
    set_frozen_norms_eval,
)
from liandan.models.weights import WeightsReport, load_state_dict_matching, load_weights

__all__ = [
    "ArchSpec",
    "LeNet",
    "SegNet",
    "WeightsReport",
    "apply_transfer",
    "build_model",
    "encoder_parameters",
    "encoder_stages",
    "list_archs",
    "load_state_dict_matching",
    "load_weights",
    "min_input_size",
    "register",
    "resolve_arch",
    "set_frozen_norms_eval",
]
