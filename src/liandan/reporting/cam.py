"""Grad-CAM heat maps for the classification top-loss gallery (pytorch-grad-cam).

Grad-CAM (Selvaraju et al. 2017) weighs the last convolution's feature maps by the
gradient of the predicted class's score: where the network looked to decide. The
method comes from the maintained ``pytorch-grad-cam`` package, not written here.
"""

from __future__ import annotations

from typing import Any

import cv2
import numpy as np
import torch
from pytorch_grad_cam import GradCAM
from pytorch_grad_cam.utils.model_targets import ClassifierOutputTarget

from liandan.data.datasets import load_image
from liandan.data.scan import CheckedDataset
from liandan.reporting.samples import SampleResults


def last_conv(model: torch.nn.Module) -> torch.nn.Module | None:
    """The network's last 2-D convolution: the usual Grad-CAM target layer."""
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d)]
    return convs[-1] if convs else None


def classifier_input(predictor: Any, image: np.ndarray) -> np.ndarray:
    """A raw image as the classifier sees it: resized, then normalized, ``(C, S, S)``."""
    size = predictor.image_size
    raw = cv2.resize(image.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
    if raw.ndim == 2:
        raw = raw[:, :, None]
    return predictor.prepare(raw).transpose(2, 0, 1)


def top_loss_cams(
    predictor: Any,
    results: SampleResults,
    checked: CheckedDataset,
    *,
    bands: list[int] | None,
    size: int,
) -> dict[int, np.ndarray]:
    """``{sample index: (S, S) heat map in [0, 1]}`` for the ``size`` largest losses.

    Each map explains the class the model predicted for that image.
    """
    assert results.probs is not None
    model = predictor.model
    layer = last_conv(model)
    if layer is None:
        return {}
    order = np.argsort(-results.losses(), kind="stable")[:size].tolist()
    if not order:
        return {}
    batch = np.stack(
        [classifier_input(predictor, load_image(checked, results.samples[i], bands)) for i in order]
    )
    x = torch.from_numpy(np.ascontiguousarray(batch)).to(predictor.device)
    x.requires_grad_(True)  # gradients reach the layer even through a frozen encoder
    targets = [ClassifierOutputTarget(int(results.probs[i].argmax())) for i in order]
    model.eval()
    with GradCAM(model=model, target_layers=[layer]) as cam:
        maps = cam(input_tensor=x, targets=targets)  # (B, S, S), each scaled to [0, 1]
    return {i: np.asarray(m, dtype=np.float32) for i, m in zip(order, maps, strict=True)}
