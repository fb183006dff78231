"""Built-in architectures that no library ships in a usable form: LeNet-5 and SegNet.

Both are small, framework-free ``nn.Module`` s (like an smp decoder file): they take any
number of input bands and return logits, so they can be trained from scratch on
multi-band data without a pretrained encoder.
"""

from __future__ import annotations

import torch
from segmentation_models_pytorch.base.modules import SCSEModule
from torch import nn


class LeNet(nn.Module):
    """LeNet-5 (LeCun et al., 1998) with ReLU and max pooling, for any band count and size.

    The original takes 32 x 32 grey images and ends its convolutions at 5 x 5 x 16; an
    adaptive pool to 5 x 5 keeps that 400-120-84 classifier for any input of 16 px or more.

    Args:
        in_channels: number of input bands.
        num_classes: number of output logits.
        dropout: dropout probability before each fully connected layer (0 = none).

    >>> LeNet(1, 10)(torch.zeros(2, 1, 28, 28)).shape
    torch.Size([2, 10])
    """

    def __init__(self, in_channels: int, num_classes: int, dropout: float = 0.0) -> None:
        super().__init__()
        # ReLU + max pooling instead of the paper's scaled tanh + subsampling: same shape,
        # trains faster, and is what every modern re-implementation uses.
        self.features = nn.Sequential(
            nn.Conv2d(in_channels, 6, kernel_size=5, padding=2),  # (B, 6, H, W)
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),  # (B, 6, H/2, W/2)
            nn.Conv2d(6, 16, kernel_size=5),  # (B, 16, H/2-4, W/2-4)
            nn.ReLU(inplace=True),
            nn.MaxPool2d(2),
            nn.AdaptiveAvgPool2d(5),  # (B, 16, 5, 5) whatever the input size
        )
        self.classifier = nn.Sequential(
            nn.Flatten(),
            nn.Dropout(dropout),
            nn.Linear(16 * 5 * 5, 120),
            nn.ReLU(inplace=True),
            nn.Dropout(dropout),
            nn.Linear(120, 84),
            nn.ReLU(inplace=True),
            nn.Linear(84, num_classes),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images -> (B, num_classes) logits."""
        return self.classifier(self.features(x))


def _conv_bn_relu(in_channels: int, out_channels: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(in_channels, out_channels, kernel_size=3, padding=1, bias=False),
        nn.BatchNorm2d(out_channels),
        nn.ReLU(inplace=True),
    )


class SegNet(nn.Module):
    """SegNet (Badrinarayanan et al., 2017), four stages, for any band count.

    The encoder max-pools and remembers *where* each maximum was; the decoder puts
    features back at those positions with ``MaxUnpool2d`` instead of learning an
    upsampling, which keeps boundaries sharp at almost no memory cost. Four stages of
    two conv-BN-ReLU blocks (the paper has five VGG-16 stages) keep it trainable from
    scratch on small datasets.

    Args:
        in_channels: number of input bands.
        num_classes: number of output channels (logits per class).
        width: channels of the first stage; each stage doubles it.
        dropout: ``Dropout2d`` probability before the classifier (0 = none).
        scse: add a concurrent spatial and channel squeeze-excitation block
            (Roy et al., 2018) after each decoder stage.

    >>> SegNet(4, 3)(torch.zeros(2, 4, 64, 96)).shape
    torch.Size([2, 3, 64, 96])
    """

    def __init__(
        self,
        in_channels: int,
        num_classes: int,
        width: int = 32,
        dropout: float = 0.0,
        scse: bool = False,
    ) -> None:
        super().__init__()
        channels = [width * 2**i for i in range(4)]  # e.g. 32, 64, 128, 256
        self.encoder = nn.ModuleList()
        previous = in_channels
        for out in channels:
            self.encoder.append(
                nn.Sequential(_conv_bn_relu(previous, out), _conv_bn_relu(out, out))
            )
            previous = out
        self.pool = nn.MaxPool2d(2, return_indices=True)
        self.unpool = nn.MaxUnpool2d(2)
        self.decoder = nn.ModuleList()
        # decoder stage i mirrors encoder stage i: channels[i] -> channels[i - 1]
        for i in reversed(range(4)):
            out = channels[i - 1] if i > 0 else width
            blocks: list[nn.Module] = [
                _conv_bn_relu(channels[i], channels[i]),
                _conv_bn_relu(channels[i], out),
            ]
            if scse:
                blocks.append(SCSEModule(out))
            self.decoder.append(nn.Sequential(*blocks))
        self.dropout = nn.Dropout2d(dropout)
        self.classifier = nn.Conv2d(width, num_classes, kernel_size=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images -> (B, num_classes, H, W) logits."""
        skips: list[tuple[torch.Tensor, torch.Size]] = []
        for stage in self.encoder:
            x = stage(x)
            size = x.shape  # kept so odd sizes unpool back exactly
            x, indices = self.pool(x)  # (B, C, H/2, W/2)
            skips.append((indices, size))
        for stage in self.decoder:
            indices, size = skips.pop()
            x = self.unpool(x, indices, output_size=size[-2:])  # (B, C, H, W)
            x = stage(x)
        return self.classifier(self.dropout(x))


class TorchvisionSegmenter(nn.Module):
    """Wrap a torchvision segmentation model to return its ``"out"`` logits as a tensor.

    torchvision's FCN / DeepLab return a dict (``out`` and optionally ``aux``); every
    other segmentation model here returns the logits tensor, so the wrapper keeps one
    contract for losses, metrics and export.

    Args:
        net: a ``torchvision.models.segmentation`` model.
    """

    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) images -> (B, num_classes, H, W) logits."""
        out: torch.Tensor = self.net(x)["out"]
        return out
