"""Tests for liandan.models: every architecture, weights files, transfer, attention.

Everything runs on CPU with random weights at each architecture's smallest input; no
test downloads anything (the ImageNet tests check that an offline machine gets a
ConfigError, with the network blocked).
"""

from __future__ import annotations

import socket
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors.torch import save_file
from torch import nn

from liandan.config import ModelConfig
from liandan.errors import ConfigError
from liandan.models import (
    build_model,
    encoder_parameters,
    encoder_stages,
    list_archs,
    load_weights,
    min_input_size,
    resolve_arch,
    set_frozen_norms_eval,
)

TINY_ENCODER = "tu-mobilenetv3_small_050"  # 0.6M parameters, a timm features_only encoder
CLASSIFIERS = [
    "lenet", "alexnet", "googlenet", "resnet18", "mobilenetv3_small_100", "convnext_atto",
]  # fmt: skip
# the natural encoder where the tiny one does not fit: smp's own ResNet and MiT, a ViT
ENCODER_OF = {
    "unet": "resnet18", "deeplabv3plus": "resnet18", "segformer": "mit_b0",
    "dpt": "tu-vit_tiny_patch16_224", "fcn": "resnet34", "segnet": "resnet34",
}  # fmt: skip
BANDS = (1, 3, 7)


@pytest.fixture(autouse=True, scope="module")
def _one_thread() -> Iterator[None]:
    """One thread: on tiny tensors thread start-up costs more than it saves (5x here)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(autouse=True)
def _seed() -> None:
    torch.manual_seed(0)


def _build(task: str, in_channels: int = 3, num_classes: int = 3, **cfg: Any) -> Any:
    """Build from model-config keys; typed Any because tests reach into submodules."""
    return build_model(
        ModelConfig(**cfg), task=task, num_classes=num_classes, in_channels=in_channels
    )


def _forward_backward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    model.train()
    out = model(x)
    out.float().pow(2).mean().backward()
    grads = [p.grad for p in model.parameters() if p.requires_grad]
    assert any(g is not None for g in grads)
    assert all(torch.isfinite(g).all() for g in grads if g is not None)
    return out


# ------------------------------------------------------------------- every architecture
@pytest.mark.parametrize("index, arch", list(enumerate(list_archs("segment"))))
def test_segmentation_arch_forward_backward(index: int, arch: str) -> None:
    bands = BANDS[index % len(BANDS)]
    encoder = ENCODER_OF.get(arch, TINY_ENCODER)
    model = _build("segment", bands, arch=arch, encoder=encoder)
    size = min_input_size("segment", arch)
    out = _forward_backward(model, torch.randn(2, bands, size, size))
    assert out.shape == (2, 3, size, size)
    model.eval()
    with torch.no_grad():  # any multiple of 32, not only squares
        assert model(torch.randn(1, bands, size, size + 32)).shape == (1, 3, size, size + 32)


@pytest.mark.parametrize("index, arch", list(enumerate(CLASSIFIERS)))
def test_classification_arch_forward_backward(index: int, arch: str) -> None:
    bands = BANDS[index % len(BANDS)]
    model = _build("classify", bands, num_classes=5, arch=arch)
    size = min_input_size("classify", arch)
    out = _forward_backward(model, torch.randn(2, bands, size, size))
    assert out.shape == (2, 5)


def test_vit_is_built_for_the_image_size() -> None:
    cfg = ModelConfig(arch="vit_tiny_patch16_224")
    assert min_input_size("classify", cfg.arch) == 224
    model = build_model(cfg, task="classify", num_classes=4, in_channels=3, image_size=32)
    assert _forward_backward(model, torch.randn(2, 3, 32, 32)).shape == (2, 4)


def test_lenet_takes_any_band_count_and_size() -> None:
    model = _build("classify", 7, num_classes=10, arch="lenet")
    for size in (16, 28, 61):
        assert model(torch.randn(2, 7, size, size)).shape == (2, 10)


# --------------------------------------------------------------------------------- names
@pytest.mark.parametrize(
    "task, name, canonical",
    [
        ("segment", "UNet++", "unetplusplus"),
        ("segment", "deeplabv3+", "deeplabv3plus"),
        ("segment", "auto", "unet"),
        ("classify", "auto", "resnet18"),
        ("classify", "Inception", "googlenet"),
        ("classify", "efficientnet_b0", "efficientnet_b0"),
        ("classify", "ResNet18", "resnet18"),
    ],
)
def test_resolve_arch(task: str, name: str, canonical: str) -> None:
    assert resolve_arch(task, name) == canonical


def test_list_archs() -> None:
    segment = list_archs("segment")
    for arch in ("unet", "unetplusplus", "fpn", "pspnet", "deeplabv3", "deeplabv3plus",
                 "linknet", "manet", "pan", "upernet", "segformer", "fcn", "segnet"):  # fmt: skip
        assert arch in segment
    classify = list_archs("classify")
    assert {"lenet", "alexnet", "googlenet", "vgg11", "resnet18", "densenet121"} <= set(classify)


@pytest.mark.parametrize(
    "task, arch, expected",
    [("segment", "unte", "'unet'"), ("classify", "resnet81", "'resnet18'"),
     ("classify", "lenett", "'lenet'")],
)  # fmt: skip
def test_unknown_arch_suggests(task: str, arch: str, expected: str) -> None:
    with pytest.raises(ConfigError) as info:
        _build(task, arch=arch)
    assert info.value.where == "model.arch"
    assert info.value.hint is not None and f"did you mean {expected}" in info.value.hint


def test_arch_of_the_other_task_says_so() -> None:
    with pytest.raises(ConfigError, match=r"model\.encoder=resnet50"):
        resolve_arch("segment", "resnet50")
    with pytest.raises(ConfigError, match="task: segment"):
        resolve_arch("classify", "unet")
    with pytest.raises(ConfigError):
        resolve_arch("detect", "unet")


def test_unknown_encoder_suggests() -> None:
    with pytest.raises(ConfigError) as info:
        _build("segment", arch="unet", encoder="resnet3")
    assert info.value.where == "model.encoder"
    assert info.value.hint is not None and "did you mean 'resnet34'" in info.value.hint


# ------------------------------------------------------------------------------- weights
def test_safetensors_round_trip(tmp_path: Path) -> None:
    source = _build("segment", 4, arch="unet", encoder=TINY_ENCODER)
    path = tmp_path / "weights.safetensors"
    save_file({k: v.contiguous() for k, v in source.state_dict().items()}, str(path))
    torch.manual_seed(1)  # a different initialization, replaced by the file
    loaded = _build("segment", 4, arch="unet", encoder=TINY_ENCODER, weights=str(path))
    for (name, expected), actual in zip(
        source.state_dict().items(), loaded.state_dict().values(), strict=True
    ):
        assert torch.equal(expected, actual), name


def test_checkpoint_with_wrapper_prefix(tmp_path: Path) -> None:
    source = _build("classify", 1, arch="lenet")
    path = tmp_path / "last.pt"
    torch.save({"state_dict": {f"model.{k}": v for k, v in source.state_dict().items()}}, path)
    loaded = _build("classify", 1, arch="lenet", weights=str(path))
    x = torch.randn(2, 1, 28, 28)
    assert torch.equal(source.eval()(x), loaded.eval()(x))


def test_new_head_keeps_its_own_weights(tmp_path: Path) -> None:
    source = _build("classify", 3, num_classes=10, arch="resnet18")
    path = tmp_path / "imagenet-like.pth"
    torch.save(source.state_dict(), path)
    target = _build("classify", 4, num_classes=2, arch="resnet18")
    head_before = target.fc.weight.detach().clone()
    report = load_weights(target, path)
    assert set(report.mismatched) == {"fc.weight", "fc.bias"}
    assert report.adapted == ["conv1.weight"]  # 3 bands adapted to 4
    assert torch.equal(target.fc.weight, head_before)
    assert torch.equal(target.layer4[1].conv2.weight, source.layer4[1].conv2.weight)
    assert target(torch.randn(2, 4, 32, 32)).shape == (2, 2)


def test_weights_file_errors(tmp_path: Path) -> None:
    with pytest.raises(ConfigError) as info:
        _build("classify", arch="lenet", weights=str(tmp_path / "missing.safetensors"))
    assert info.value.where == "model.weights"
    path = tmp_path / "lenet.pt"
    torch.save(_build("classify", arch="lenet").state_dict(), path)
    with pytest.raises(ConfigError, match="fit this model"):  # nothing in common
        _build("segment", arch="segnet", weights=str(path))
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"not a checkpoint")
    with pytest.raises(ConfigError, match="cannot read"):
        _build("classify", arch="lenet", weights=str(garbage))


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No network and empty caches: what a machine without internet sees."""
    import huggingface_hub.constants

    def refuse(*args: Any, **kwargs: Any) -> Any:
        raise OSError("network is unreachable (blocked by the test)")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket, "getaddrinfo", refuse)
    monkeypatch.setattr(socket, "create_connection", refuse)
    # offline mode skips huggingface_hub's retries (a minute) but fails the same way
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "hf"))
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))


@pytest.mark.parametrize(
    "task, cfg",
    [
        ("classify", {"arch": "resnet18"}),
        ("classify", {"arch": "alexnet"}),
        ("segment", {"arch": "unet", "encoder": "resnet18"}),
        ("segment", {"arch": "fpn", "encoder": TINY_ENCODER}),
    ],
)
@pytest.mark.usefixtures("offline")
def test_imagenet_offline_is_a_config_error(task: str, cfg: dict[str, Any]) -> None:
    with pytest.raises(ConfigError) as info:
        _build(task, weights="imagenet", **cfg)
    assert info.value.where == "model.weights"
    assert info.value.hint is not None and "offline" in info.value.hint


def test_builtins_have_no_imagenet_weights() -> None:
    with pytest.raises(ConfigError, match="no ImageNet weights"):
        _build("classify", arch="lenet", weights="imagenet")


# ------------------------------------------------------------------------------ transfer
def test_frozen_encoder_does_not_move() -> None:
    model = _build("classify", num_classes=4, arch="resnet18", transfer="frozen")
    encoder = encoder_parameters(model)
    assert encoder is not None and not any(p.requires_grad for p in encoder)
    before = {name: p.detach().clone() for name, p in model.named_parameters()}
    trainable = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.SGD(trainable, lr=0.1)
    _forward_backward(model, torch.randn(2, 3, 32, 32))
    optimizer.step()
    for name, p in model.named_parameters():
        changed = not torch.equal(before[name], p)
        assert changed == name.startswith("fc."), name
    model.train()
    assert set_frozen_norms_eval(model) > 0 and not model.bn1.training


def test_partial_freezes_the_first_stages() -> None:
    model = _build("classify", arch="resnet18", transfer="partial", frozen_stages=2)
    frozen = {name for name, p in model.named_parameters() if not p.requires_grad}
    assert "conv1.weight" in frozen and "layer1.1.conv2.weight" in frozen
    assert "layer2.0.conv1.weight" not in frozen and "fc.weight" not in frozen
    # smp's own encoder has no feature_info: stages come from the layers' strides
    unet = _build("segment", arch="unet", encoder="resnet18", transfer="partial", frozen_stages=2)
    frozen = {name for name, p in unet.named_parameters() if not p.requires_grad}
    assert {"encoder.conv1.weight", "encoder.layer1.0.conv1.weight"} <= frozen
    assert not any(name.startswith(("encoder.layer2", "decoder")) for name in frozen)
    assert len(encoder_stages(unet)) == 5


@pytest.mark.parametrize(
    "task, cfg, where",
    [
        ("classify", {"arch": "lenet", "transfer": "frozen"}, "model.transfer"),
        ("classify", {"arch": "resnet18", "transfer": "partial"}, "model.frozen_stages"),
        ("classify", {"arch": "resnet18", "transfer": "partial", "frozen_stages": 9},
         "model.frozen_stages"),
        ("classify", {"arch": "resnet18", "frozen_stages": 2}, "model.frozen_stages"),
    ],
)  # fmt: skip
def test_transfer_errors(task: str, cfg: dict[str, Any], where: str) -> None:
    with pytest.raises(ConfigError) as info:
        _build(task, **cfg)
    assert info.value.where == where


def test_encoder_parameters() -> None:
    assert encoder_parameters(_build("classify", arch="lenet")) is None
    unet = _build("segment", arch="unet", encoder=TINY_ENCODER)
    encoder = encoder_parameters(unet)
    assert encoder is not None and len(encoder) == len(list(unet.encoder.parameters()))


# ------------------------------------------------------------- attention and dropout
def _module_names(model: nn.Module) -> set[str]:
    return {type(m).__name__ for m in model.modules()}


@pytest.mark.parametrize(
    "task, cfg, module",
    [
        ("segment", {"arch": "unet", "encoder": TINY_ENCODER, "attention": "scse"}, "SCSEModule"),
        ("segment", {"arch": "segnet", "attention": "scse"}, "SCSEModule"),
        ("segment", {"arch": "fpn", "encoder": "tu-resnet10t", "attention": "se"}, "SEModule"),
        ("classify", {"arch": "resnet18", "attention": "se"}, "SEModule"),
        ("classify", {"arch": "resnet18", "attention": "cbam"}, "CbamModule"),
    ],
)
def test_attention_adds_its_module(task: str, cfg: dict[str, Any], module: str) -> None:
    assert module not in _module_names(_build(task, **{**cfg, "attention": "none"}))
    model = _build(task, **cfg)
    assert module in _module_names(model)
    size = min_input_size(task, cfg["arch"])
    _forward_backward(model, torch.randn(2, 3, size, size))


@pytest.mark.parametrize(
    "task, cfg, where",
    [
        ("segment", {"arch": "fpn", "encoder": TINY_ENCODER, "attention": "scse"},
         "model.attention"),
        ("segment", {"arch": "unet", "encoder": "resnet18", "attention": "se"},
         "model.attention"),
        ("classify", {"arch": "convnext_atto", "attention": "se"}, "model.attention"),
        ("classify", {"arch": "resnet18", "attention": "scse"}, "model.attention"),
        ("segment", {"arch": "unet", "encoder": TINY_ENCODER, "dropout": 0.2},
         "model.dropout"),
    ],
)  # fmt: skip
def test_unsupported_options_are_errors(task: str, cfg: dict[str, Any], where: str) -> None:
    with pytest.raises(ConfigError) as info:
        _build(task, **cfg)
    assert info.value.where == where


def test_dropout_reaches_the_model() -> None:
    fpn = _build("segment", arch="fpn", encoder=TINY_ENCODER, dropout=0.35)
    rates = {m.p for m in fpn.modules() if isinstance(m, nn.Dropout | nn.Dropout2d)}
    assert 0.35 in rates
    lenet = _build("classify", arch="lenet", dropout=0.25)
    assert {m.p for m in lenet.modules() if isinstance(m, nn.Dropout)} == {0.25}


def test_fpn_channels_sizes_a_detectors_pyramid_and_is_refused_elsewhere() -> None:
    """``model.fpn_channels`` is the width of a detector's pyramid and heads; an
    architecture without a pyramid refuses it rather than ignoring it."""
    narrow = _build("detect", arch="fcos", encoder="resnet18", fpn_channels=128)
    assert narrow.model.backbone.out_channels == 128
    assert _build("detect", arch="fcos", encoder="resnet18").model.backbone.out_channels == 256
    with pytest.raises(ConfigError) as info:
        _build("segment", arch="unet", encoder=TINY_ENCODER, fpn_channels=128)
    assert info.value.where == "model.fpn_channels"
    with pytest.raises(ValueError):  # the head's GroupNorm needs multiples of 32
        ModelConfig(fpn_channels=100)
