"""One builder per family of architectures: built-in, torchvision, smp, timm.

Each builder takes a :class:`BuildRequest` and returns a plain ``nn.Module`` that maps
(B, in_channels, H, W) images to logits: (B, num_classes) for classification,
(B, num_classes, H, W) for segmentation. Options are checked before this point (see
``registry.py``); here they are only translated into each library's keywords, and a
keyword is passed only when the user asked for something other than the default.
"""

from __future__ import annotations

import difflib
import logging
from dataclasses import dataclass
from functools import cache
from typing import Any

import segmentation_models_pytorch as smp
import timm
import torchvision
from torch import nn
from torchvision.models import AlexNet_Weights, GoogLeNet_Weights, ResNet50_Weights, WeightsEnum

from liandan.config import ModelConfig
from liandan.errors import ConfigError
from liandan.models.builtin import LeNet, SegNet, TorchvisionSegmenter
from liandan.models.weights import load_state_dict_matching

log = logging.getLogger("liandan")

# smp's decoder keyword for dropout, by architecture (the others have none)
SMP_DROPOUT_ARGS = ("decoder_dropout", "psp_dropout", "decoder_aspp_dropout")


@dataclass(frozen=True)
class BuildRequest:
    """Everything a builder needs: the model section plus what the data decides."""

    cfg: ModelConfig
    arch: str  # canonical name, see registry.resolve_arch
    num_classes: int
    in_channels: int
    image_size: int | None = None  # only for fixed-size timm models (ViT)

    @property
    def pretrained(self) -> bool:
        """Whether the library should fetch its ImageNet weights."""
        return self.cfg.weights == "imagenet"


# ----------------------------------------------------------------------------- helpers
def set_in_channels(parent: nn.Module, name: str, in_channels: int) -> None:
    """Replace the convolution ``parent.<name>`` by one taking ``in_channels`` bands."""
    old = getattr(parent, name)
    if not isinstance(old, nn.Conv2d) or old.in_channels == in_channels:
        return
    new = nn.Conv2d(
        in_channels,
        old.out_channels,
        kernel_size=old.kernel_size,  # type: ignore[arg-type]
        stride=old.stride,  # type: ignore[arg-type]
        padding=old.padding,  # type: ignore[arg-type]
        dilation=old.dilation,  # type: ignore[arg-type]
        groups=old.groups,
        bias=old.bias is not None,
    )
    setattr(parent, name, new)


def load_torchvision_weights(module: nn.Module, weights: WeightsEnum) -> None:
    """Download torchvision ImageNet weights and load the tensors that fit ``module``.

    Going through the state dict, rather than ``weights=`` at construction, lets the
    model keep its own head size and band count (the first convolution is adapted).
    """
    log.info("fetching the ImageNet weights %s (needs internet access)", weights)
    state = weights.get_state_dict(progress=False)
    load_state_dict_matching(module, state, source=f"ImageNet weights {weights}")


def _dropout(req: BuildRequest) -> dict[str, float]:
    """``{"dropout": p}`` when the user set one; None keeps the architecture's own default."""
    return {"dropout": req.cfg.dropout} if req.cfg.dropout is not None else {}


# --------------------------------------------------------------------------- built-ins
def build_lenet(req: BuildRequest) -> nn.Module:
    """LeNet-5 for any band count."""
    return LeNet(req.in_channels, req.num_classes, dropout=req.cfg.dropout or 0.0)


def build_segnet(req: BuildRequest) -> nn.Module:
    """SegNet for any band count."""
    return SegNet(
        req.in_channels,
        req.num_classes,
        dropout=req.cfg.dropout or 0.0,
        scse=req.cfg.attention == "scse",
    )


# ------------------------------------------------------------------------- torchvision
def build_alexnet(req: BuildRequest) -> nn.Module:
    """AlexNet (Krizhevsky et al., 2012) from torchvision."""
    net = torchvision.models.alexnet(weights=None, num_classes=req.num_classes, **_dropout(req))
    set_in_channels(net.features, "0", req.in_channels)
    if req.pretrained:
        load_torchvision_weights(net, AlexNet_Weights.DEFAULT)
    return net


def build_googlenet(req: BuildRequest) -> nn.Module:
    """GoogLeNet / Inception v1 (Szegedy et al., 2015) from torchvision, no aux heads."""
    net = torchvision.models.googlenet(
        weights=None,
        num_classes=req.num_classes,
        aux_logits=False,
        init_weights=True,
        # torchvision's ImageNet weights expect this re-normalization of RGB input
        transform_input=req.pretrained and req.in_channels == 3,
        **_dropout(req),
    )
    set_in_channels(net.conv1, "conv", req.in_channels)
    if req.pretrained:
        load_torchvision_weights(net, GoogLeNet_Weights.DEFAULT)
    return net


def build_fcn(req: BuildRequest) -> nn.Module:
    """FCN (Long et al., 2015) with a dilated ResNet-50 backbone, from torchvision."""
    net = torchvision.models.segmentation.fcn_resnet50(
        weights=None, weights_backbone=None, num_classes=req.num_classes, aux_loss=False
    )
    set_in_channels(net.backbone, "conv1", req.in_channels)
    if req.cfg.dropout is not None:
        net.classifier[3].p = req.cfg.dropout  # FCNHead: conv, bn, relu, dropout, conv
    if req.pretrained:
        load_torchvision_weights(net.backbone, ResNet50_Weights.IMAGENET1K_V1)
    return TorchvisionSegmenter(net)


# --------------------------------------------------------------------------------- smp
@cache
def smp_encoder_names() -> tuple[str, ...]:
    """smp's own encoder names (any timm model also works as ``tu-<name>``)."""
    return tuple(smp.encoders.get_encoder_names())


@cache
def timm_resnet_family() -> frozenset[str]:
    """timm models built by its ResNet class, whose blocks take an ``attn_layer``."""
    return frozenset(timm.list_models(module="resnet"))


def check_encoder(name: str) -> str:
    """Return ``name`` if smp can build it, else raise a ConfigError with did-you-mean."""
    if name in smp_encoder_names() or (name.startswith("tu-") and timm.is_model(name[3:])):
        return name
    candidates = [*smp_encoder_names(), *(f"tu-{n}" for n in timm.list_models())]
    close = difflib.get_close_matches(name, candidates, n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    raise ConfigError(
        f"unknown encoder {name!r}",
        where="model.encoder",
        hint=f"{hint}smp encoders: {', '.join(smp_encoder_names())}; "
        "any timm model also works as tu-<name> (timm.list_models())",
    )


def build_smp(req: BuildRequest) -> nn.Module:
    """Any segmentation_models_pytorch architecture with ``cfg.encoder``."""
    cfg = req.cfg
    encoder = check_encoder(cfg.encoder)
    model_class = smp.MODEL_ARCHITECTURES_MAPPING[req.arch]
    kwargs: dict[str, Any] = {
        "encoder_name": encoder,
        "encoder_weights": None,
        "in_channels": req.in_channels,
        "classes": req.num_classes,
    }
    if req.pretrained:
        kwargs["encoder_weights"] = True if encoder.startswith("tu-") else "imagenet"
        if not encoder.startswith("tu-"):
            available = smp.encoders.encoders[encoder]["pretrained_settings"]
            if "imagenet" not in available:
                raise ConfigError(
                    f"the encoder {encoder} has no ImageNet weights in smp",
                    where="model.weights",
                    hint=f"smp has {', '.join(available)} for it; use model.weights=none",
                )
        log.info("fetching the ImageNet weights of %s (needs internet access)", encoder)
    if cfg.attention == "scse":
        kwargs["decoder_attention_type"] = "scse"
    elif cfg.attention in ("se", "cbam"):
        if encoder[3:] not in timm_resnet_family():
            raise ConfigError(
                f"model.attention={cfg.attention} needs a timm ResNet-family encoder",
                where="model.attention",
                hint="use e.g. model.encoder=tu-resnet34, or an encoder with SE built in "
                "such as se_resnet50 (with model.attention=none)",
            )
        # timm's ResNet blocks take the attention layer by name (seresnet18 is built so)
        kwargs["block_args"] = {"attn_layer": cfg.attention}
        if req.pretrained:
            kwargs["pretrained_strict"] = False  # the new attention layers start random
    if cfg.dropout is not None:
        # registry.py allows dropout > 0 only where the architecture has one of these
        accepted = smp_accepts(req.arch)
        kwargs.update({arg: cfg.dropout for arg in SMP_DROPOUT_ARGS if arg in accepted})
    if req.arch == "dpt" and _timm_fixed_size(encoder[3:]):
        kwargs["dynamic_img_size"] = True  # any input whose sides are multiples of the patch
    return model_class(**kwargs)


@cache
def smp_accepts(arch: str) -> frozenset[str]:
    """The keyword arguments the smp architecture's constructor takes."""
    import inspect

    model_class = smp.MODEL_ARCHITECTURES_MAPPING[arch]
    return frozenset(inspect.signature(model_class.__init__).parameters)


# -------------------------------------------------------------------------------- timm
def _timm_fixed_input(name: str) -> int | None:
    """The input side a timm model is built for, if it takes only that (ViT, Swin...)."""
    pretrained_cfg = timm.get_pretrained_cfg(name.split(".")[0])
    if pretrained_cfg is None or not pretrained_cfg.fixed_input_size:
        return None  # a CNN, or no config to tell: any size from timm_min_size() on
    return int(pretrained_cfg.input_size[-1])


def _timm_fixed_size(name: str) -> bool:
    """True for timm models built for one input size."""
    return _timm_fixed_input(name) is not None


def timm_min_size(name: str) -> int:
    """Smallest square input a timm classifier takes (built without ``image_size``)."""
    # five stride-2 stages leave a 1 x 1 map at 32 px, then global pooling
    return _timm_fixed_input(name) or 32


def build_timm(req: BuildRequest) -> nn.Module:
    """Any timm classifier by name (``resnet18``, ``convnext_atto``, ``vit_tiny_...``)."""
    cfg = req.cfg
    kwargs: dict[str, Any] = {"num_classes": req.num_classes, "in_chans": req.in_channels}
    if cfg.dropout is not None:
        kwargs["drop_rate"] = cfg.dropout
    if cfg.attention in ("se", "cbam"):
        kwargs["block_args"] = {"attn_layer": cfg.attention}
        if req.pretrained:
            kwargs["pretrained_strict"] = False  # the new attention layers start random
            log.warning("ImageNet weights have no %s layers: they start random", cfg.attention)
    if req.image_size is not None and _timm_fixed_size(req.arch):
        kwargs["img_size"] = req.image_size  # position embeddings sized for our input
    if req.pretrained:
        log.info("fetching the ImageNet weights of %s (needs internet access)", req.arch)
    return timm.create_model(req.arch, pretrained=req.pretrained, **kwargs)


# --------------------------------------------------------------------------- detection
def build_detector(req: BuildRequest) -> nn.Module:
    """FCOS, RetinaNet or Faster R-CNN from torchvision over a timm encoder (weights
    files are loaded by :func:`~liandan.models.build_model`, as for every architecture)."""
    from liandan.tasks.detect.models import FPN_CHANNELS
    from liandan.tasks.detect.models import build_detector as build

    return build(
        req.arch,
        req.cfg.encoder,
        req.num_classes,
        req.in_channels,
        req.image_size or 0,
        "imagenet" if req.pretrained else None,
        fpn_channels=req.cfg.fpn_channels or FPN_CHANNELS,
    )
