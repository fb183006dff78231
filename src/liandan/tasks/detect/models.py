"""Detectors from torchvision over any timm encoder: FCOS, RetinaNet, Faster R-CNN.

:func:`build_detector` returns a :class:`Detector`: timm's ``features_only`` encoder,
torchvision's feature pyramid, and torchvision's detection head and losses, with the
anchors derived from the strides of the feature maps used:

============  ====================  ==========================================
arch          pyramid levels        anchors per location
============  ====================  ==========================================
fcos          P3-P5 + P6, P7        one point per location, size = stride (the
                                    FCOS paper's size ranges 0-64-128-... px)
retinanet     P3-P5 + P6, P7        4 x stride x {1, 2^1/3, 2^2/3}, aspect 1:2, 1:1, 2:1
fasterrcnn    P2-P5 + P6 (max-pool) 8 x stride, aspect 1:2, 1:1, 2:1
============  ====================  ==========================================

These are torchvision's (and the papers') choices, stated per stride instead of in
pixels, so they follow an encoder whose feature maps sit at other strides.

liandan normalizes and resizes images itself, so the torchvision transform in front of
the network is replaced by one that passes images through unchanged (no resizing, no
renormalization; it only pads a batch to a multiple of 32 at the bottom and right), and
boxes come out in the pixels of the input.

**Class ids are 0..K-1 everywhere.** torchvision's FCOS and RetinaNet take them so;
Faster R-CNN reserves label 0 for background, so :class:`Detector` adds 1 to the
targets' labels and subtracts 1 from the predicted ones.

>>> model = build_detector("fcos", "resnet18", num_classes=3, in_channels=3, image_size=128)
>>> model.eval()(torch.zeros(1, 3, 128, 128))[0].keys()  # doctest: +SKIP
dict_keys(['boxes', 'scores', 'labels'])
"""

from __future__ import annotations

import difflib
import logging
from collections import OrderedDict
from pathlib import Path
from typing import Any, Literal

import timm
import torch
from torch import nn
from torchvision.models.detection import FCOS, FasterRCNN, RetinaNet
from torchvision.models.detection.anchor_utils import AnchorGenerator
from torchvision.models.detection.fcos import FCOSHead
from torchvision.models.detection.retinanet import RetinaNetHead
from torchvision.models.detection.transform import GeneralizedRCNNTransform
from torchvision.ops import FeaturePyramidNetwork
from torchvision.ops.feature_pyramid_network import LastLevelMaxPool, LastLevelP6P7

from liandan.errors import ConfigError

log = logging.getLogger("liandan")

Arch = Literal["fcos", "retinanet", "fasterrcnn"]
ARCHS: tuple[str, ...] = ("fcos", "retinanet", "fasterrcnn")
# encoder strides each arch takes its pyramid from (the extra levels are computed on top)
ENCODER_STRIDES = {"fcos": (8, 16, 32), "retinanet": (8, 16, 32), "fasterrcnn": (4, 8, 16, 32)}
FPN_CHANNELS = 256  # torchvision's (and the FPN paper's) pyramid width
ASPECT_RATIOS = (0.5, 1.0, 2.0)  # height / width of the anchors (RetinaNet, Faster R-CNN)
# FCOS's box distances (in strides) pass a ReLU: from torchvision's zero bias, a few early
# steps can push every output below zero, where no gradient flows, and the box loss stays
# at 1.0 for good (a third of from-scratch demo runs, by seed). Starting at two strides a
# side keeps the ReLU open while the targets (about 1-8 strides) pull the outputs up.
FCOS_BOX_BIAS = 2.0

__all__ = ["ARCHS", "Detector", "TimmFPN", "build_detector"]


class Float32P6P7(LastLevelP6P7):
    """FCOS / RetinaNet's two extra levels (stride-2 convolutions on the coarsest one),
    computed in float32 under autocast.

    On a small input these levels are 1 x 1 or 2 x 2 maps, and the CPU's bf16
    convolution returned NaN weight gradients for P7 on them (FCOS at 64 px, the third
    step). Two small convolutions cost little in float32; parameters and state_dict
    keys are the stock block's.
    """

    def forward(  # type: ignore[override]
        self, p: list[torch.Tensor], c: list[torch.Tensor], names: list[str]
    ) -> tuple[list[torch.Tensor], list[str]]:
        x = p[-1] if self.use_P5 else c[-1]
        with torch.autocast(x.device.type, enabled=False):
            p6 = self.p6(x.float())
            p7 = self.p7(nn.functional.relu(p6))
        return [*p, p6, p7], [*names, "p6", "p7"]


class TimmFPN(nn.Module):
    """A timm ``features_only`` encoder under torchvision's feature pyramid network.

    The interface torchvision's detectors expect of a backbone: ``forward`` maps
    ``(B, C, H, W)`` images to an ordered dict of ``(B, out_channels, H / s, W / s)``
    maps, finest first, and ``out_channels`` says their width.

    Args:
        body: a timm model built with ``features_only=True``.
        indices: which of ``body``'s outputs feed the pyramid (finest first).
        out_channels: width of every pyramid level.
        extra: ``"p6p7"`` (two stride-2 convolutions on the coarsest level, FCOS and
            RetinaNet) or ``"pool"`` (a max-pooled level, Faster R-CNN).
    """

    def __init__(self, body: nn.Module, indices: list[int], out_channels: int, extra: str) -> None:
        super().__init__()
        self.body = body
        self.indices = indices
        channels = [body.feature_info.channels()[i] for i in indices]  # type: ignore[union-attr,operator]
        blocks = Float32P6P7(out_channels, out_channels) if extra == "p6p7" else LastLevelMaxPool()
        self.fpn = FeaturePyramidNetwork(channels, out_channels, extra_blocks=blocks)
        self.out_channels = out_channels

    def forward(self, x: torch.Tensor) -> OrderedDict[str, torch.Tensor]:
        features = self.body(x)
        return self.fpn(OrderedDict((str(n), features[i]) for n, i in enumerate(self.indices)))


class _InputAsIs(GeneralizedRCNNTransform):
    """torchvision's detector input transform with its resizing and normalization off.

    Images were brought to the input size and normalized by liandan's data pipeline;
    resizing them again would change the scale the boxes are in, and renormalizing would
    apply ImageNet RGB statistics to any band count. Batching (padding to a multiple of
    32) and mapping boxes back to each image's size (a no-op here) are kept.
    """

    def normalize(self, image: torch.Tensor) -> torch.Tensor:
        return image

    def resize(
        self, image: torch.Tensor, target: dict[str, torch.Tensor] | None = None
    ) -> tuple[torch.Tensor, dict[str, torch.Tensor] | None]:
        return image, target


class Detector(nn.Module):
    """A torchvision detector taking and giving class ids 0..K-1.

    Call it as torchvision's detectors are called, with ``(B, C, H, W)`` images (a
    tensor or a list of ``(C, H, W)`` tensors) and, in training, one target dict per
    image: ``boxes`` ``(N, 4)`` float absolute pixel ``x1 y1 x2 y2`` and ``labels``
    ``(N,)`` int64 in ``0..K-1`` (``N`` may be 0: a background image).

    Returns:
        In training, torchvision's dict of losses (sum them for the total). In eval
        mode, per image a dict of ``boxes`` ``(M, 4)`` in input pixels, ``scores``
        ``(M,)`` and ``labels`` ``(M,)`` in ``0..K-1``.
    """

    def __init__(
        self, model: nn.Module, arch: str, num_classes: int, strides: tuple[int, ...]
    ) -> None:
        super().__init__()
        self.model = model
        self.arch = arch
        self.num_classes = num_classes
        self.strides = strides  # of the pyramid levels, finest first
        # Faster R-CNN's class 0 is background; its foreground classes are 1..K
        self.label_offset = 1 if arch == "fasterrcnn" else 0
        # as built: the score floor (low, for mAP) and the arch's own NMS IoU
        self.built_postprocess = self.postprocess

    @property
    def _postprocessor(self) -> Any:
        """The module holding torchvision's ``score_thresh`` and ``nms_thresh``."""
        return self.model.roi_heads if self.label_offset else self.model

    @property
    def postprocess(self) -> tuple[float, float]:
        """``(score floor, NMS IoU)`` in use: detections scoring at or below the floor are
        dropped before the per-class non-maximum suppression, which removes a box
        overlapping a better-scoring one of its class by more than the IoU."""
        head = self._postprocessor
        return float(head.score_thresh), float(head.nms_thresh)

    def set_postprocess(self, score_floor: float | None, nms_iou: float | None) -> None:
        """Set the score floor and the NMS IoU; None: the value the detector was built
        with (``nms_iou`` None: the architecture's own, 0.6 for FCOS, 0.5 otherwise)."""
        floor, iou = self.built_postprocess
        head = self._postprocessor
        head.score_thresh = floor if score_floor is None else float(score_floor)
        head.nms_thresh = iou if nms_iou is None else float(nms_iou)

    @property
    def encoder(self) -> nn.Module:
        """The timm encoder (e.g. to freeze it or give it its own learning rate)."""
        return self.model.backbone.body  # type: ignore[union-attr,return-value]

    def forward(
        self,
        images: torch.Tensor | list[torch.Tensor],
        targets: list[dict[str, torch.Tensor]] | None = None,
    ) -> Any:
        if targets is not None and self.label_offset:
            targets = [{**t, "labels": t["labels"] + self.label_offset} for t in targets]
        out = self.model(list(images), targets)
        if self.training or not self.label_offset:
            return out
        return [{**d, "labels": d["labels"] - self.label_offset} for d in out]

    def eval_losses(
        self, images: torch.Tensor | list[torch.Tensor], targets: list[dict[str, torch.Tensor]]
    ) -> dict[str, torch.Tensor]:
        """The training losses of a batch with the network in eval mode (validation).

        torchvision's detectors compute losses only in training mode; here only the
        detection head, its box coder and proposals switch to it, while the encoder and
        the pyramid stay in eval mode, so BatchNorm uses (and keeps) its running
        statistics and no dropout or drop-path is drawn.
        """
        backbone = {id(m) for m in self.model.backbone.modules()}  # type: ignore[union-attr]
        switched = [m for m in self.model.modules() if id(m) not in backbone and not m.training]
        for m in switched:
            m.training = True
        if self.label_offset:
            targets = [{**t, "labels": t["labels"] + self.label_offset} for t in targets]
        try:
            return self.model(list(images), targets)  # type: ignore[no-any-return]
        finally:
            for m in switched:
                m.training = False


# ------------------------------------------------------------------------ building
def _timm_name(encoder: str) -> str:
    """The timm model name (liandan's segmentation spells timm encoders ``tu-<name>``)."""
    name = encoder.removeprefix("tu-")
    if timm.is_model(name):
        return name
    close = difflib.get_close_matches(name, timm.list_models(), n=3, cutoff=0.6)
    hint = f"did you mean {' or '.join(repr(c) for c in close)}? " if close else ""
    raise ConfigError(
        f"unknown encoder {encoder!r}",
        where="model.encoder",
        hint=f"{hint}detectors take any timm model with a feature pyramid "
        "(timm.list_models(), e.g. resnet18, resnet50, convnext_tiny, efficientnet_b0)",
    )


def _encoder(name: str, in_channels: int, pretrained: bool) -> nn.Module:
    if pretrained:
        log.info("fetching the ImageNet weights of %s (needs internet access)", name)
    try:
        return timm.create_model(
            name, features_only=True, in_chans=in_channels, pretrained=pretrained
        )
    except (RuntimeError, ValueError, AssertionError, TypeError) as exc:
        raise ConfigError(
            f"timm cannot build {name!r} as a feature extractor ({exc})",
            where="model.encoder",
            hint="choose a convolutional encoder such as resnet18, resnet50 or convnext_tiny",
        ) from None


def _levels(body: nn.Module, name: str, wanted: tuple[int, ...], arch: str) -> list[int]:
    """The index of the (last) feature map at each ``wanted`` stride."""
    reductions = list(body.feature_info.reduction())  # type: ignore[union-attr,operator]
    missing = [s for s in wanted if s not in reductions]
    if missing:
        raise ConfigError(
            f"the encoder {name} has feature maps at strides {sorted(set(reductions))}, "
            f"but {arch} needs strides {list(wanted)}",
            where="model.encoder",
            hint="choose a convolutional encoder with five stride-2 stages "
            "(resnet18, resnet50, efficientnet_b0, convnext_tiny ...)",
        )
    return [max(i for i, r in enumerate(reductions) if r == s) for s in wanted]


def _load_file(det: Detector, path: str | Path) -> None:
    """Load a detector's weights (a run's), or an encoder's (a timm classifier's)."""
    from liandan.models.weights import _strip_prefix, load_state_dict_matching, read_state_dict

    state = read_state_dict(path)
    # whichever the file's keys fit better: the whole detector or its encoder alone
    fits = {
        module: len(_strip_prefix(state, own := module.state_dict()).keys() & own.keys())
        for module in (det, det.encoder)
    }
    target = max(fits, key=lambda m: fits[m])
    if not fits[target]:
        raise ConfigError(
            f"none of the {len(state)} tensors in {path} fit this detector or its encoder",
            where="model.weights",
            hint="the file was saved from another architecture or encoder; "
            "set model.arch / model.encoder to the ones it was trained with",
        )
    what = "detector" if target is det else "encoder"
    load_state_dict_matching(target, state, source=f"{path} (into the {what})")


def build_detector(
    arch: str,
    encoder: str,
    num_classes: int,
    in_channels: int,
    image_size: int,
    weights: str | Path | None = None,
    *,
    fpn_channels: int = FPN_CHANNELS,
    score_thresh: float = 0.05,
    detections_per_img: int = 100,
) -> Detector:
    """A torchvision detector over a timm encoder (see the module docstring).

    Args:
        arch: ``fcos``, ``retinanet`` or ``fasterrcnn``.
        encoder: any timm model name with a feature pyramid (``tu-<name>`` works too).
        num_classes: K foreground classes; class ids are 0..K-1.
        in_channels: image bands; any number (timm adapts the first convolution).
        image_size: the side inputs are brought to (informational for the transform,
            which passes any size through unchanged).
        weights: None or ``"none"`` for random initialization; ``"imagenet"`` for
            timm's ImageNet weights of the encoder (downloaded); or the path of a
            ``.safetensors`` / ``.pth`` file holding a detector's or an encoder's state
            dict (the tensors that fit are loaded, see :mod:`liandan.models.weights`).
        fpn_channels: width of the pyramid and of the FCOS / RetinaNet heads; a
            multiple of 32 from 64 on (FCOS's head normalizes 32 groups of channels, and
            a group of one channel cannot be normalized on a 1 x 1 level at batch 1).
        score_thresh: detections scoring lower are dropped before non-maximum
            suppression; 0.05, low enough for mAP (torchvision's FCOS default, 0.2,
            would cut the precision-recall curve short).
        detections_per_img: the most detections kept per image.

    Raises:
        ConfigError: an unknown arch (``model.arch``), an unknown encoder or one
            without feature maps at the strides the arch needs (``model.encoder``), or
            a weights file that fits nothing (``model.weights``).
    """
    if arch not in ARCHS:
        close = difflib.get_close_matches(arch, ARCHS, n=1)
        hint = f"did you mean {close[0]!r}? " if close else ""
        raise ConfigError(
            f"unknown detection architecture {arch!r}",
            where="model.arch",
            hint=f"{hint}detection architectures: {', '.join(ARCHS)}",
        )
    if num_classes < 1 or in_channels < 1:
        raise ValueError(
            f"num_classes and in_channels must be >= 1, not {num_classes}, {in_channels}"
        )
    if fpn_channels < 64 or fpn_channels % 32:
        raise ValueError(f"fpn_channels must be a multiple of 32 from 64 on, not {fpn_channels}")
    name = _timm_name(encoder)
    body = _encoder(name, in_channels, pretrained=weights == "imagenet")
    indices = _levels(body, name, ENCODER_STRIDES[arch], arch)
    base = ENCODER_STRIDES[arch]
    common: dict[str, Any] = {
        # the transform is replaced below; these values make the stock one neutral too
        "min_size": image_size,
        "max_size": image_size,
        "image_mean": [0.0] * in_channels,
        "image_std": [1.0] * in_channels,
    }
    model: nn.Module
    if arch == "fasterrcnn":
        backbone = TimmFPN(body, indices, fpn_channels, extra="pool")
        strides = (*base, base[-1] * 2)  # + the max-pooled level
        anchors = AnchorGenerator(tuple((8 * s,) for s in strides), (ASPECT_RATIOS,) * len(strides))
        model = FasterRCNN(
            backbone,
            num_classes=num_classes + 1,  # + background
            rpn_anchor_generator=anchors,
            box_score_thresh=score_thresh,
            box_detections_per_img=detections_per_img,
            **common,
        )
    else:
        backbone = TimmFPN(body, indices, fpn_channels, extra="p6p7")
        strides = (*base, base[-1] * 2, base[-1] * 4)  # + P6, P7
        if arch == "fcos":
            anchors = AnchorGenerator(tuple((s,) for s in strides), ((1.0,),) * len(strides))
            fcos_head = FCOSHead(fpn_channels, 1, num_classes)
            nn.init.constant_(fcos_head.regression_head.bbox_reg.bias, FCOS_BOX_BIAS)
            head: nn.Module = fcos_head
            model = FCOS(
                backbone,
                num_classes,
                anchor_generator=anchors,
                head=head,
                score_thresh=score_thresh,
                detections_per_img=detections_per_img,
                **common,
            )
        else:
            sizes = tuple(tuple(round(4 * s * 2 ** (k / 3)) for k in range(3)) for s in strides)
            anchors = AnchorGenerator(sizes, (ASPECT_RATIOS,) * len(strides))
            head = RetinaNetHead(fpn_channels, anchors.num_anchors_per_location()[0], num_classes)
            model = RetinaNet(
                backbone,
                num_classes,
                anchor_generator=anchors,
                head=head,
                score_thresh=score_thresh,
                detections_per_img=detections_per_img,
                **common,
            )
    model.transform = _InputAsIs(**common)
    det = Detector(model, arch, num_classes, strides)
    if weights not in (None, "none", "imagenet"):
        _load_file(det, weights)  # type: ignore[arg-type]
    return det
