"""Detectors over timm encoders: losses, outputs in input pixels, class ids 0..K-1."""

from __future__ import annotations

import math

import pytest
import timm
import torch

from liandan.errors import ConfigError
from liandan.tasks.detect import models
from liandan.tasks.detect.matching import box_iou
from liandan.tasks.detect.models import ARCHS, build_detector

ENCODER = "test_resnet"  # timm's tiny ResNet for tests: strides 2-32, 0.4 M parameters
SMALL = {"fpn_channels": 64}  # the narrowest pyramid allowed


def tiny(arch: str, in_channels: int = 3, num_classes: int = 3, **kwargs):
    torch.manual_seed(0)
    return build_detector(arch, ENCODER, num_classes, in_channels, 64, **SMALL, **kwargs)


def _targets() -> list[dict[str, torch.Tensor]]:
    return [
        {"boxes": torch.tensor([[8.0, 10.0, 40.0, 30.0]]), "labels": torch.tensor([2])},
        {"boxes": torch.zeros(0, 4), "labels": torch.zeros(0, dtype=torch.int64)},  # background
    ]


@pytest.mark.parametrize("in_channels", [3, 4])
@pytest.mark.parametrize("arch", ARCHS)
def test_losses_finite_and_outputs_in_input_pixels(arch: str, in_channels: int) -> None:
    model = tiny(arch, in_channels)
    seen: list[torch.Tensor] = []
    model.model.backbone.register_forward_pre_hook(lambda _m, args: seen.append(args[0]))
    x = torch.rand(2, in_channels, 64, 48)  # not square: a resizing transform would show
    losses = model.train()(x, _targets())
    assert losses and all(math.isfinite(float(v.detach())) for v in losses.values())
    # the network sees the input as given: no resize, no renormalization (padding to a
    # multiple of 32 only, at the right)
    assert seen[0].shape == (2, in_channels, 64, 64)
    assert torch.equal(seen[0][..., :48], x)
    assert not seen[0][..., 48:].any()
    with torch.no_grad():
        out = model.eval()(x)
    assert len(out) == 2
    for d in out:
        assert set(d) == {"boxes", "scores", "labels"}
        boxes = d["boxes"]
        # clipped to each image's own size in input pixels (48 wide, 64 high)
        assert (boxes[:, 0::2] <= 48).all() and (boxes[:, 1::2] <= 64).all()
        assert ((d["labels"] >= 0) & (d["labels"] < 3)).all()


def _one_object() -> tuple[torch.Tensor, list[dict[str, torch.Tensor]]]:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(1, 3, 64, 64, generator=gen) * 0.2
    x[:, :, 20:44, 12:30] += 0.8  # a bright object where its box is
    # class 0: Faster R-CNN's background id, so a missing label shift would show
    target = [{"boxes": torch.tensor([[12.0, 20.0, 30.0, 44.0]]), "labels": torch.tensor([0])}]
    return x, target


def _fit(model: models.Detector, steps: int, lr: float = 2e-3) -> list[float]:
    x, target = _one_object()
    opt = torch.optim.AdamW(model.parameters(), lr=lr)
    model.train()
    losses = []
    for _ in range(steps):
        loss = sum(model(x, target).values())
        loss.backward()
        opt.step()
        opt.zero_grad()
        losses.append(float(loss.detach()))
    return losses


@pytest.mark.parametrize("arch", ARCHS)
def test_a_few_steps_on_one_box_reduce_the_loss(arch: str) -> None:
    # a small learning rate: RetinaNet's loss jumps about at larger ones from random init
    losses = _fit(tiny(arch, num_classes=2), steps=10, lr=5e-4)
    assert losses[-1] < 0.6 * losses[0]


@pytest.mark.slow
@pytest.mark.parametrize("arch", ARCHS)
def test_training_finds_the_box_in_input_pixels_with_its_class(arch: str) -> None:
    model = tiny(arch, num_classes=2, score_thresh=0.0)
    _fit(model, steps=60)
    x, target = _one_object()
    with torch.no_grad():
        pred = model.eval()(x)[0]
    best = int(pred["scores"].argmax())
    iou = box_iou(pred["boxes"][best : best + 1].numpy(), target[0]["boxes"].numpy())
    assert float(iou[0, 0]) > 0.5
    assert int(pred["labels"][best]) == 0


def test_unknown_arch_and_encoder_name_their_key() -> None:
    with pytest.raises(ValueError, match="multiple of 32"):
        build_detector("fcos", ENCODER, 3, 3, 64, fpn_channels=48)
    with pytest.raises(ConfigError, match="unknown detection architecture 'fcoss'") as err:
        build_detector("fcoss", ENCODER, 3, 3, 64)
    assert err.value.where == "model.arch" and "'fcos'" in (err.value.hint or "")
    with pytest.raises(ConfigError, match="unknown encoder 'resnet81'") as err:
        build_detector("fcos", "resnet81", 3, 3, 64)
    assert err.value.where == "model.encoder" and "resnet18" in (err.value.hint or "")


def test_encoder_without_the_needed_strides_is_refused() -> None:
    # a ViT's feature maps all sit at stride 16
    with pytest.raises(ConfigError, match="strides") as err:
        build_detector("retinanet", "test_vit", 3, 3, 64)
    assert err.value.where == "model.encoder"


def test_tu_prefix_and_strides_follow_the_arch() -> None:
    assert tiny("fcos").strides == (8, 16, 32, 64, 128)
    assert tiny("fasterrcnn").strides == (4, 8, 16, 32, 64)
    model = build_detector("fcos", f"tu-{ENCODER}", 3, 3, 64, **SMALL)
    assert model.arch == "fcos"


def test_imagenet_weights_come_from_timm(monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[dict] = []
    create_model = timm.create_model

    def create(name: str, **kwargs):
        calls.append(kwargs)
        return create_model(name, **{**kwargs, "pretrained": False})  # no download

    monkeypatch.setattr(models.timm, "create_model", create)
    tiny("fcos", weights="imagenet")
    tiny("fcos")
    assert [c["pretrained"] for c in calls] == [True, False]
    assert calls[0]["features_only"] and calls[0]["in_chans"] == 3


def test_weights_file_of_a_detector_or_an_encoder(tmp_path) -> None:
    trained = tiny("retinanet")
    with torch.no_grad():
        for p in trained.parameters():
            p.add_(1.0)
    torch.save({"model": trained.state_dict()}, tmp_path / "det.pt")
    loaded = build_detector("retinanet", ENCODER, 3, 3, 64, tmp_path / "det.pt", **SMALL)
    for (name, a), b in zip(
        trained.state_dict().items(), loaded.state_dict().values(), strict=True
    ):
        assert torch.equal(a, b), name

    classifier = timm.create_model(ENCODER, num_classes=10)
    torch.save(classifier.state_dict(), tmp_path / "enc.pt")
    model = build_detector("fcos", ENCODER, 3, 3, 64, tmp_path / "enc.pt", **SMALL)
    assert torch.equal(model.encoder.conv1[0].weight, classifier.conv1[0].weight)

    torch.save({"unrelated.weight": torch.zeros(3)}, tmp_path / "bad.pt")
    with pytest.raises(ConfigError, match="fit") as err:
        build_detector("fcos", ENCODER, 3, 3, 64, tmp_path / "bad.pt", **SMALL)
    assert err.value.where == "model.weights"


@pytest.mark.parametrize("arch", ["fcos", "retinanet"])
def test_extra_levels_run_in_float32_under_bf16_autocast(arch: str) -> None:
    """P6 and P7 are 1 x 1 maps on a 64 px input; the CPU's bf16 convolution gave NaN
    weight gradients there. Under autocast they run in float32 (finite gradients), the
    other levels in bf16."""
    torch.manual_seed(0)
    det = build_detector(arch, "resnet18", 3, 3, 64)
    backbone = det.model.backbone
    x = torch.rand(2, 3, 64, 64)
    with torch.autocast("cpu", torch.bfloat16):
        levels = backbone(x)
    dtypes = {name: level.dtype for name, level in levels.items()}
    assert dtypes.pop("p6") == dtypes.pop("p7") == torch.float32, dtypes
    assert set(dtypes.values()) == {torch.bfloat16}, dtypes  # the encoder's levels
    assert levels["p7"].shape[-2:] == (1, 1)
    sum(level.float().sum() for level in levels.values()).backward()
    p7 = backbone.fpn.extra_blocks.p7.weight.grad
    assert p7 is not None and torch.isfinite(p7).all()


def test_fcos_box_distances_start_above_the_relu() -> None:
    """FCOS's box distances pass a ReLU. From a zero bias about half the raw outputs
    start below zero, and a few early steps can close all of them (no gradient flows
    there; the box loss then stays at 1.0: a third of the from-scratch detection demos
    did, by seed). They start positive, two strides a side."""
    model = tiny("fcos")
    raw: list[torch.Tensor] = []
    reg = model.model.head.regression_head.bbox_reg
    reg.register_forward_hook(lambda _m, _a, out: raw.append(out.detach()))
    model.train()(torch.rand(2, 3, 64, 64), _targets())
    values = torch.cat([r.flatten() for r in raw])
    assert (values > 0).float().mean() > 0.99
    assert float(values.median()) == pytest.approx(models.FCOS_BOX_BIAS, abs=0.5)
