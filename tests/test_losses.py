"""Tests for liandan.losses: each loss against its formula, ignore_index, plugins, errors."""

from __future__ import annotations

import math
import sys
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
import segmentation_models_pytorch as smp
import torch
import torch.nn.functional as F

from liandan.config import LossConfig
from liandan.errors import ConfigError, DataError
from liandan.losses import (
    CombinedLoss,
    CrossEntropyLoss,
    FocalLoss,
    LovaszSoftmaxLoss,
    TverskyLoss,
    build_loss,
    compute_class_weights,
    list_losses,
)

IGNORE = -1
BIG = 30.0  # logit margin that makes softmax one-hot to ~1e-13


def _seg_batch(seed: int = 0, classes: int = 3) -> tuple[torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    logits = torch.randn(2, classes, 6, 5, generator=gen)
    target = torch.randint(0, classes, (2, 6, 5), generator=gen)
    target[0, :2] = IGNORE
    target[1, 3, 1:4] = IGNORE
    return logits, target


def _hard_logits(pred: torch.Tensor, classes: int) -> torch.Tensor:
    """(B, H, W) predicted classes -> (B, C, H, W) logits whose softmax is one-hot."""
    return F.one_hot(pred, classes).permute(0, 3, 1, 2).float() * BIG


def _loss(name: str, task: str = "segment", classes: int = 3, **cfg: object) -> torch.nn.Module:
    return build_loss(LossConfig(name=name, **cfg), task=task, num_classes=classes)


# ----------------------------------------------------------------- cross-entropy, focal
def test_ce_matches_torch_with_class_weights_and_ignore() -> None:
    logits, target = _seg_batch()
    weights = torch.tensor([0.2, 1.0, 3.0])
    ours = build_loss(LossConfig(name="ce"), task="segment", num_classes=3, class_weights=weights)
    expected = F.cross_entropy(logits, target, weight=weights, ignore_index=IGNORE)
    assert torch.allclose(ours(logits, target), expected, atol=1e-6)
    assert not torch.allclose(_loss("ce")(logits, target), expected, atol=1e-3)


@pytest.mark.parametrize("weights", [None, [0.5, 2.0, 1.0]])
def test_label_smoothing_matches_torch(weights: list[float] | None) -> None:
    logits, target = _seg_batch(1)
    cfg = LossConfig(name="ce", label_smoothing=0.1, class_weights=weights or "none")
    ours = build_loss(cfg, task="segment", num_classes=3)(logits, target)
    w = torch.tensor(weights) if weights else None
    expected = F.cross_entropy(logits, target, w, ignore_index=IGNORE, label_smoothing=0.1)
    assert torch.allclose(ours, expected, atol=1e-6)


@pytest.mark.parametrize("weights", [None, torch.tensor([0.5, 2.0, 1.0])])
def test_focal_gamma_zero_is_cross_entropy(weights: torch.Tensor | None) -> None:
    logits, target = _seg_batch(2)
    focal = FocalLoss(gamma=0.0, ignore_index=IGNORE, class_weights=weights)
    expected = F.cross_entropy(logits, target, weight=weights, ignore_index=IGNORE)
    assert torch.allclose(focal(logits, target), expected, atol=1e-6)


def test_focal_gamma_two_matches_formula() -> None:
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.5, 0.5, 0.0], [0.0, 3.0, 1.0], [1.0, 1.0, 1.0]])
    target = torch.tensor([0, 2, 1, IGNORE])
    alpha = [1.0, 2.0, 0.5]
    expected_sum, weight_sum = 0.0, 0.0
    for row, label in zip(logits.tolist(), target.tolist(), strict=True):
        if label == IGNORE:
            continue
        p = math.exp(row[label]) / sum(math.exp(v) for v in row)
        expected_sum += alpha[label] * -((1 - p) ** 2) * math.log(p)
        weight_sum += alpha[label]
    focal = build_loss(
        LossConfig(name="focal", focal_gamma=2.0, class_weights=alpha),
        task="classify",
        num_classes=3,
    )
    assert focal(logits, target).item() == pytest.approx(expected_sum / weight_sum, rel=1e-5)


# ----------------------------------------------------------------- region losses
def test_dice_of_a_perfect_prediction_is_zero() -> None:
    _, target = _seg_batch(3)
    logits = _hard_logits(target.clamp_min(0), 3)
    for name in ("dice", "jaccard", "tversky", "focal_tversky", "lovasz"):
        assert _loss(name)(logits, target).item() == pytest.approx(0.0, abs=1e-4), name


def test_region_losses_on_a_known_overlap() -> None:
    # class 1: truth 2 px, predicted 1 of them (tp=1, fp=0, fn=1);
    # class 0: truth 2 px, predicted 3 px (tp=2, fp=1, fn=0).
    target = torch.tensor([[[1, 1], [0, 0]]])
    logits = _hard_logits(torch.tensor([[[1, 0], [0, 0]]]), 2)
    dice = ((1 - 2 / 3) + (1 - 4 / 5)) / 2
    jaccard = ((1 - 1 / 2) + (1 - 2 / 3)) / 2
    tp, fp, fn = [1, 2], [0, 1], [1, 0]
    ftl = sum((1 - tp[c] / (tp[c] + 0.3 * fp[c] + 0.7 * fn[c])) ** 0.75 for c in (0, 1)) / 2
    for name, expected in [("dice", dice), ("jaccard", jaccard), ("focal_tversky", ftl)]:
        assert _loss(name, classes=2)(logits, target).item() == pytest.approx(expected, abs=1e-5)
    # Lovász of a hard prediction is 1 - IoU per class, like Jaccard.
    assert _loss("lovasz", classes=2)(logits, target).item() == pytest.approx(jaccard, abs=1e-5)


def test_soft_dice_matches_formula_over_present_classes() -> None:
    logits, target = _seg_batch(4, classes=4)
    target[target == 3] = 0  # class 3 absent: left out of the mean
    probs = logits.softmax(1).permute(0, 2, 3, 1).reshape(-1, 4).numpy()
    labels = target.reshape(-1).numpy()
    keep = labels != IGNORE
    probs, labels = probs[keep], labels[keep]
    scores = [
        2 * probs[labels == c, c].sum() / (probs[:, c].sum() + (labels == c).sum())
        for c in range(3)
    ]
    expected = 1 - float(np.mean(scores))
    assert _loss("dice", classes=4)(logits, target).item() == pytest.approx(expected, rel=1e-5)


def test_tversky_exposes_alpha_beta() -> None:
    target = torch.tensor([[[1, 1], [0, 0]]])
    logits = _hard_logits(torch.tensor([[[1, 0], [0, 0]]]), 2)
    loss = TverskyLoss(alpha=0.0, beta=1.0)  # recall only: class 0 has no FN
    assert loss(logits, target).item() == pytest.approx((1 - 1 / 2) / 2, abs=1e-5)


def test_lovasz_one_soft_pixel_error_by_hand() -> None:
    # 4 pixels, truth [1, 1, 0, 0]; pixel 2 predicted class 1 with p=0.3.
    # class 1: one error 0.3 on a false positive: 0.3 * (1 - 2/3); class 0: 0.3 * (1 - 1/2).
    p = torch.tensor([[0.0, 1.0], [0.0, 1.0], [0.7, 0.3], [1.0, 0.0]]).clamp(1e-12)
    logits = p.log().T.reshape(1, 2, 1, 4)
    target = torch.tensor([[[1, 1, 0, 0]]])
    expected = (0.3 / 3 + 0.3 / 2) / 2
    assert _loss("lovasz", classes=2)(logits, target).item() == pytest.approx(expected, abs=1e-6)


def test_lovasz_matches_smp() -> None:
    logits, target = _seg_batch(5)
    reference = smp.losses.LovaszLoss("multiclass", ignore_index=IGNORE)(logits, target)
    assert torch.allclose(LovaszSoftmaxLoss(IGNORE)(logits, target), reference)


# ----------------------------------------------------------------- every loss
@pytest.mark.parametrize("name", list_losses())
def test_ignored_pixels_do_not_count(name: str) -> None:
    logits, target = _seg_batch(6)
    loss = _loss(name)
    base = loss(logits, target)
    # Any logits at ignored pixels: same loss, and no gradient there.
    noisy = logits.clone()
    ignored = (target == IGNORE).unsqueeze(1).expand_as(noisy)
    noisy[ignored] = torch.randn(int(ignored.sum())) * 10
    noisy.requires_grad_(True)
    assert torch.allclose(loss(noisy, target), base, atol=1e-6)
    loss(noisy, target).backward()
    assert noisy.grad is not None and noisy.grad[ignored].abs().max() == 0
    # Same as the loss over the kept pixels alone, laid out as one (1, C, N, 1) image.
    keep = target != IGNORE
    kept_logits = logits.permute(1, 0, 2, 3)[:, keep].reshape(1, 3, -1, 1)
    kept_target = target[keep].reshape(1, -1, 1)
    assert torch.allclose(loss(kept_logits, kept_target), base, atol=1e-6)


@pytest.mark.parametrize("name", list_losses())
@pytest.mark.parametrize("task", ["classify", "segment"])
def test_every_loss_runs_backward_and_handles_all_ignored(name: str, task: str) -> None:
    loss = _loss(name, task=task)
    shape = (4, 3) if task == "classify" else (2, 3, 4, 4)
    logits = torch.randn(*shape, requires_grad=True)
    target = torch.randint(0, 3, (shape[0], *shape[2:]))
    value = loss(logits, target)
    value.backward()
    assert value.dim() == 0 and torch.isfinite(value)
    assert logits.grad is not None and torch.isfinite(logits.grad).all()
    empty = loss(logits, torch.full_like(target, IGNORE))
    assert empty.item() == 0.0
    empty.backward()


def test_auto_names() -> None:
    seg = _loss("auto")
    assert isinstance(seg, CombinedLoss) and seg.names == ["ce", "dice"]
    assert isinstance(_loss("auto", task="classify"), CrossEntropyLoss)


def test_combo_weights() -> None:
    logits, target = _seg_batch(7)
    combo = _loss("ce + dice", weights=[0.3, 2.0])
    expected = 0.3 * _loss("ce")(logits, target) + 2.0 * _loss("dice")(logits, target)
    assert torch.allclose(combo(logits, target), expected, atol=1e-6)
    assert isinstance(combo, CombinedLoss) and set(combo.last_terms) == {"ce", "dice"}


def test_weights_length_mismatch() -> None:
    with pytest.raises(ConfigError) as err:
        _loss("ce+dice", weights=[1.0])
    assert err.value.where == "loss.weights"


def test_class_weights_from_config_and_length_check() -> None:
    logits, target = _seg_batch(8)
    loss = _loss("ce", class_weights=[1.0, 2.0, 3.0])
    expected = F.cross_entropy(logits, target, torch.tensor([1.0, 2.0, 3.0]), ignore_index=-1)
    assert torch.allclose(loss(logits, target), expected, atol=1e-6)
    with pytest.raises(ConfigError) as err:
        _loss("ce", class_weights=[1.0, 2.0])
    assert err.value.where == "loss.class_weights"


def test_unknown_name_did_you_mean() -> None:
    with pytest.raises(ConfigError) as err:
        _loss("ce+dcie")
    assert err.value.where == "loss.name"
    assert err.value.hint is not None and "did you mean 'dice'" in err.value.hint
    assert "lovasz" in err.value.hint


# ----------------------------------------------------------------- plugins
PLUGIN = """
import torch

class Const(torch.nn.Module):
    def forward(self, logits, target):
        return logits.sum() * 0 + 7.0

class NotALoss:
    pass
"""


@pytest.fixture
def plugin(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    (tmp_path / "my_losses.py").write_text(PLUGIN)
    monkeypatch.syspath_prepend(str(tmp_path))
    yield "my_losses"
    sys.modules.pop("my_losses", None)


def test_plugin_class(plugin: str) -> None:
    logits, target = _seg_batch(9)
    assert _loss(f"{plugin}:Const")(logits, target).item() == 7.0
    combo = _loss(f"ce+{plugin}:Const", weights=[0.0, 0.5])
    assert combo(logits, target).item() == pytest.approx(3.5)


@pytest.mark.parametrize(
    "spec", ["no_such_module_xyz:Loss", "my_losses:Missing", "my_losses:NotALoss"]
)
def test_plugin_errors(plugin: str, spec: str) -> None:
    with pytest.raises(ConfigError) as err:
        _loss(spec)
    assert err.value.where == "loss.name"


# ----------------------------------------------------------------- class weights
def test_compute_class_weights_by_hand() -> None:
    counts = np.array([10, 30, 0, 60])
    inverse = compute_class_weights(counts, "inverse")  # 1/n scaled to mean 1 over present
    assert inverse.tolist() == pytest.approx([2.0, 2 / 3, 2.0, 1 / 3])
    median = compute_class_weights(torch.tensor(counts), "median")  # freq .1 .3 .6, median .3
    assert median.tolist() == pytest.approx([3.0, 1.0, 3.0, 0.5])
    # beta 0.5: effective numbers 1 and 1.5 -> weights 1, 2/3 -> scaled to mean 1
    effective = compute_class_weights(np.array([1, 2]), "effective", beta=0.5)
    assert effective.tolist() == pytest.approx([1.2, 0.8])
    assert inverse.dtype == torch.float32


def test_compute_class_weights_errors() -> None:
    with pytest.raises(ConfigError, match="inverse"):
        compute_class_weights(np.array([1, 2]), "inverce")
    with pytest.raises(DataError):
        compute_class_weights(np.array([0, 0]))
