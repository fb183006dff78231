"""Load weights from a file into a freshly built model: matching keys only, and said so.

A weights file rarely fits the new model exactly: the head has a different number of
classes, the first convolution a different number of bands, the keys a ``model.``
prefix from the training wrapper. We keep every tensor whose name and shape fit, adapt
a first convolution whose band count differs (as timm does for ImageNet weights), skip
the rest, and log the counts so nothing is dropped silently.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from timm.models import adapt_input_conv
from torch import nn

from liandan.errors import ConfigError

log = logging.getLogger("liandan")

# Prefixes a training wrapper puts in front of the model's own keys: our engine and
# Lightning (``model.``), DataParallel/DDP (``module.``), common hand-written wrappers.
_PREFIXES = ("", "model.", "module.", "net.", "model.module.")
_HINT = "model.weights takes none, imagenet, or the path of a .safetensors / .pth / .pt file"


@dataclass
class WeightsReport:
    """What happened to each tensor when loading a weights file.

    Attributes:
        matched: keys loaded from the file (adapted ones included).
        adapted: first-convolution keys whose input bands were adapted.
        missing: model keys the file does not hold (they keep their initialization).
        unexpected: file keys the model does not have.
        mismatched: keys in both whose shapes differ (e.g. a head for other classes).
    """

    matched: list[str] = field(default_factory=list)
    adapted: list[str] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)
    unexpected: list[str] = field(default_factory=list)
    mismatched: list[str] = field(default_factory=list)


def read_state_dict(path: str | Path) -> dict[str, torch.Tensor]:
    """Read a state dict from a ``.safetensors`` file or a ``torch.save`` file.

    Pickled files are read with ``weights_only=True``, so a file cannot run code. A
    checkpoint holding the state dict under ``state_dict`` or ``model`` is unwrapped.

    Args:
        path: the weights file.

    Returns:
        The tensors by name.

    Raises:
        ConfigError: the file is missing or holds no tensors.
    """
    path = Path(path).expanduser()
    if not path.is_file():
        raise ConfigError(f"weights file not found: {path}", where="model.weights", hint=_HINT)
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            data: Any = load_file(str(path), device="cpu")
        else:
            data = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # any reader error means the same thing to the user
        raise ConfigError(
            f"cannot read the weights file {path}: {exc}", where="model.weights", hint=_HINT
        ) from exc
    for key in ("state_dict", "model", "model_state_dict"):
        if isinstance(data, dict) and isinstance(data.get(key), dict):
            data = data[key]
    tensors = (
        {k: v for k, v in data.items() if isinstance(v, torch.Tensor)}
        if isinstance(data, dict)
        else {}
    )
    if not tensors:
        raise ConfigError(
            f"{path} holds no state dict (a mapping of names to tensors)",
            where="model.weights",
            hint="save weights with torch.save(model.state_dict(), path) or safetensors",
        )
    return tensors


def _strip_prefix(
    state: dict[str, torch.Tensor], own: dict[str, torch.Tensor]
) -> dict[str, torch.Tensor]:
    """Drop the wrapper prefix that makes the most file keys match the model's."""

    def renamed(prefix: str) -> dict[str, torch.Tensor]:
        return {k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)}

    best = max(_PREFIXES, key=lambda prefix: len(renamed(prefix).keys() & own.keys()))
    return renamed(best)


def load_state_dict_matching(
    model: nn.Module, state: dict[str, torch.Tensor], source: str = "weights"
) -> WeightsReport:
    """Load the tensors of ``state`` that fit ``model``; keep the model's own for the rest.

    Args:
        model: the model to update in place.
        state: tensors by name (a wrapper prefix such as ``model.`` is removed).
        source: where the tensors come from, for the log line.

    Returns:
        A report of matched, adapted, missing, unexpected and mismatched keys.
    """
    own = model.state_dict()
    state = _strip_prefix(state, own)
    report = WeightsReport()
    selected: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        if key not in own:
            report.unexpected.append(key)
            continue
        target = own[key]
        if value.shape == target.shape:
            selected[key] = value
        elif _is_rgb_input_conv(value, target):
            # Same kernel, other band count: sum (1 band) or repeat the RGB filters
            # (timm's rule), which beats a random first layer for multi-band data.
            selected[key] = adapt_input_conv(target.shape[1], value.to(target.dtype))
            report.adapted.append(key)
        else:
            report.mismatched.append(key)
            continue
        report.matched.append(key)
    report.missing = [key for key in own if key not in selected]
    model.load_state_dict(selected, strict=False)
    log.info(
        "loaded %s: %d tensors matched (%d with adapted input bands), %d missing "
        "(kept their initialization), %d unexpected, %d skipped for their shape",
        source,
        len(report.matched),
        len(report.adapted),
        len(report.missing),
        len(report.unexpected),
        len(report.mismatched),
    )
    if report.mismatched:
        log.info("shapes differ, not loaded: %s", ", ".join(report.mismatched[:8]))
    return report


def _is_rgb_input_conv(value: torch.Tensor, target: torch.Tensor) -> bool:
    """True for RGB conv weights (O, 3, kH, kW) going into a conv of another band count."""
    return (
        value.ndim == 4
        and target.ndim == 4
        and value.shape[1] == 3
        and value.shape[0] == target.shape[0]
        and value.shape[2:] == target.shape[2:]
    )


def load_weights(model: nn.Module, path: str | Path) -> WeightsReport:
    """Load a weights file into ``model``, keeping only the tensors that fit.

    Args:
        model: a freshly built model.
        path: a ``.safetensors``, ``.pth`` or ``.pt`` file holding a state dict.

    Returns:
        A report of matched, missing, unexpected and mismatched keys.

    Raises:
        ConfigError: the file is missing, unreadable, or none of its tensors fit.

    >>> # report = load_weights(model, "runs/train/model/weights.safetensors")
    """
    state = read_state_dict(path)
    report = load_state_dict_matching(model, state, source=str(path))
    if not report.matched:
        raise ConfigError(
            f"none of the {len(state)} tensors in {path} fit this model",
            where="model.weights",
            hint="the file was saved from another architecture or encoder; "
            "set model.arch / model.encoder to the ones it was trained with",
        )
    return report
