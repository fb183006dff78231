"""Tests for liandan.data.transforms: each normalization preset against its formula,
serialization, and masks staying aligned with their image through augmentation."""

from __future__ import annotations

import json

import numpy as np
import pytest

from liandan.config import AugmentConfig
from liandan.data.transforms import (
    IMAGENET_MEAN,
    IMAGENET_STD,
    VGG_MEAN_BGR,
    Normalizer,
    brightness_contrast,
    build_augment,
    dtype_max,
    eval_resize_crop,
    fit_normalizer,
)
from liandan.errors import ConfigError

PRESETS = ["dataset", "imagenet", "vgg", "unit", "percentile", "zca"]


def _image(dtype=np.uint8, bands: int = 3, seed: int = 0, shape=(16, 12)) -> np.ndarray:
    rng = np.random.default_rng(seed)
    top = np.iinfo(dtype).max if np.issubdtype(dtype, np.integer) else 1.0
    return (rng.random((*shape, bands)) * top).astype(dtype)


def _pixels(*images: np.ndarray) -> np.ndarray:
    return np.concatenate([im.reshape(-1, im.shape[-1]) for im in images]).astype(np.float64)


# ------------------------------------------------------------------ presets
def test_dataset_preset_is_per_band_standardization() -> None:
    images = [_image(seed=0), _image(seed=1)]
    norm = fit_normalizer("dataset", images)
    px = _pixels(*images)
    np.testing.assert_allclose(norm.mean, px.mean(axis=0))
    np.testing.assert_allclose(norm.std, px.std(axis=0))
    out = norm(images[0])
    assert out.dtype == np.float32
    expected = (images[0] - px.mean(axis=0)) / px.std(axis=0)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    whole = np.concatenate([norm(im).reshape(-1, 3) for im in images])
    np.testing.assert_allclose(whole.mean(axis=0), 0, atol=1e-4)
    np.testing.assert_allclose(whole.std(axis=0), 1, atol=1e-4)


def test_dataset_preset_constant_band_not_divided_by_zero() -> None:
    img = _image(bands=2)
    img[..., 1] = 7
    out = fit_normalizer("dataset", [img])(img)
    assert np.isfinite(out).all()
    np.testing.assert_array_equal(out[..., 1], 0)


@pytest.mark.parametrize(("dtype", "top"), [(np.uint8, 255.0), (np.uint16, 65535.0)])
def test_unit_divides_by_dtype_max(dtype, top: float) -> None:
    img = _image(dtype)
    norm = fit_normalizer("unit", [img])
    assert norm.scale == top == dtype_max(dtype)
    np.testing.assert_allclose(norm(img), img.astype(np.float64) / top, rtol=1e-6)
    assert 0.0 <= norm(img).min() and norm(img).max() <= 1.0


def test_unit_on_float_keeps_values() -> None:
    img = _image(np.float32)
    np.testing.assert_array_equal(fit_normalizer("unit", [img])(img), img)


@pytest.mark.parametrize(("dtype", "top"), [(np.uint8, 255.0), (np.uint16, 65535.0)])
def test_imagenet_preset(dtype, top: float) -> None:
    img = _image(dtype)
    out = fit_normalizer("imagenet", [img])(img)
    expected = (img / top - np.array(IMAGENET_MEAN)) / np.array(IMAGENET_STD)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)


def test_imagenet_constants() -> None:
    assert IMAGENET_MEAN == (0.485, 0.456, 0.406)
    assert IMAGENET_STD == (0.229, 0.224, 0.225)
    assert VGG_MEAN_BGR == (103.939, 116.779, 123.68)


def test_vgg_preset_bgr_and_mean_subtraction() -> None:
    img = _image(np.uint8)
    out = fit_normalizer("vgg", [img])(img)
    # channel 0 of the output is the input's blue channel, on 0-255, minus 103.939
    np.testing.assert_allclose(out[..., 0], img[..., 2] - 103.939, rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(out[..., 1], img[..., 1] - 116.779, rtol=1e-6, atol=1e-4)
    np.testing.assert_allclose(out[..., 2], img[..., 0] - 123.68, rtol=1e-6, atol=1e-4)


def test_vgg_preset_on_16_bit_rescales_to_0_255() -> None:
    img = _image(np.uint16)
    out = fit_normalizer("vgg", [img])(img)
    rgb255 = img.astype(np.float64) * 255.0 / 65535.0
    np.testing.assert_allclose(out, rgb255[..., ::-1] - np.array(VGG_MEAN_BGR), atol=1e-3)


def test_percentile_preset_clips_and_scales() -> None:
    img = _image(np.uint16, bands=4, shape=(40, 30))
    norm = fit_normalizer("percentile", [img], percentiles=(2.0, 98.0))
    px = _pixels(img)
    low, high = np.percentile(px, 2, axis=0), np.percentile(px, 98, axis=0)
    np.testing.assert_allclose(norm.low, low)
    np.testing.assert_allclose(norm.high, high)
    out = norm(img)
    expected = (np.clip(img, low, high) - low) / (high - low)
    np.testing.assert_allclose(out, expected, rtol=1e-5, atol=1e-5)
    assert out.min() == 0.0 and out.max() == 1.0
    clipped_low = (out == 0).mean(axis=(0, 1))
    assert np.all((clipped_low > 0.01) & (clipped_low < 0.04))  # about 2 % per band


def test_zca_whitens_to_identity_covariance() -> None:
    rng = np.random.default_rng(0)
    mix = np.array([[1.0, 0.0, 0.0], [0.8, 0.6, 0.0], [0.5, 0.3, 0.2]])
    raw = rng.normal(size=(50 * 40, 3)) @ mix.T * 30 + 100
    img = raw.reshape(50, 40, 3).astype(np.float32)
    assert abs(np.corrcoef(raw.T)[0, 1]) > 0.5  # the bands are strongly correlated
    norm = fit_normalizer("zca", [img])
    out = norm(img).reshape(-1, 3).astype(np.float64)
    np.testing.assert_allclose(out.mean(axis=0), 0, atol=1e-3)
    np.testing.assert_allclose(np.cov(out.T), np.eye(3), atol=1e-2)
    w = np.asarray(norm.whiten)
    np.testing.assert_allclose(w, w.T, atol=1e-8)  # ZCA (not PCA): symmetric whitening


@pytest.mark.parametrize("preset", ["imagenet", "vgg"])
@pytest.mark.parametrize("bands", [1, 4])
def test_rgb_presets_need_three_bands(preset: str, bands: int) -> None:
    with pytest.raises(ConfigError) as err:
        fit_normalizer(preset, [_image(bands=bands)])
    assert err.value.where == "data.normalize"
    assert f"{bands} bands" in str(err.value)


def test_unknown_preset() -> None:
    with pytest.raises(ConfigError):
        fit_normalizer("minmax", [_image()])
    with pytest.raises(ConfigError):
        Normalizer("minmax")(_image())


@pytest.mark.parametrize("preset", PRESETS)
def test_normalizer_round_trip_gives_identical_output(preset: str) -> None:
    images = [_image(np.uint8, seed=s) for s in range(3)]
    norm = fit_normalizer(preset, images)
    again = Normalizer.from_dict(json.loads(json.dumps(norm.to_dict())))
    assert again.preset == preset
    test = _image(np.uint8, seed=9)
    np.testing.assert_array_equal(again(test), norm(test))


@pytest.mark.parametrize("preset", PRESETS)
@pytest.mark.parametrize("dtype", [np.uint8, np.uint16, np.float32])
def test_channel_first_output_equals_the_transposed_call(preset: str, dtype) -> None:
    images = [_image(dtype, seed=s) for s in range(3)]
    norm = fit_normalizer(preset, images)
    test = _image(dtype, seed=9)
    chw = norm.to_chw(test)
    assert chw.dtype == np.float32 and chw.flags.c_contiguous
    np.testing.assert_array_equal(chw, norm(test).transpose(2, 0, 1))


@pytest.mark.parametrize("preset", ["dataset", "imagenet", "vgg", "unit"])
def test_affine_presets_match_their_formulas(preset: str) -> None:
    images = [_image(np.uint16, seed=s) for s in range(3)]
    norm = fit_normalizer(preset, images)
    x = _image(np.uint16, seed=9).astype(np.float64)
    mean, std, scale = np.asarray(norm.mean), np.asarray(norm.std), norm.scale
    expected = {
        "dataset": lambda: (x - mean) / std,
        "imagenet": lambda: (x / scale - mean) / std,
        "vgg": lambda: x[..., ::-1] * 255.0 / scale - mean,
        "unit": lambda: x / scale,
    }[preset]()
    np.testing.assert_allclose(norm(x.astype(np.uint16)), expected, rtol=1e-5, atol=1e-5)


# ------------------------------------------------------------------ augmentation
def _rule_image(seed: int, h: int = 24, w: int = 40) -> tuple[np.ndarray, np.ndarray]:
    """An image whose mask follows from its pixels: mask = image[..., 0] > 128."""
    rng = np.random.default_rng(seed)
    blocks = rng.integers(0, 2, (h // 4, w // 4))
    bright = np.kron(blocks, np.ones((4, 4), dtype=np.int64)).astype(bool)
    img = rng.integers(0, 256, (h, w, 3)).astype(np.float32)
    img[..., 0] = np.where(bright, 255.0, 0.0)
    return img, bright.astype(np.int16)


def _check_aligned(
    image: np.ndarray, mask: np.ndarray, strict_fill: bool = True, margin: float = 55.0
) -> None:
    assert image.shape[:2] == mask.shape
    assert set(np.unique(mask).tolist()) <= {-1, 0, 1}  # nearest: never interpolated
    valid = mask >= 0
    red = image[..., 0]
    # pixels that interpolation left pure: a mask under 1/4 weight cannot flip them
    pure_on = valid & (red > 255 - margin)
    pure_off = valid & (red < margin)
    assert (pure_on | pure_off).sum() > (0.5 if margin >= 55 else 0.1) * valid.sum()
    assert (mask[pure_on] == 1).all()
    assert (mask[pure_off] == 0).all()
    if not strict_fill:  # warps blend the image's border with the fill over a pixel
        return
    # padding is 0 in the image and -1 in the mask; resizing blends its edge
    assert (red[~valid] < 200).all()
    if (~valid).any():
        assert (image[~valid] == 0).all(axis=-1).mean() > 0.5


@pytest.mark.parametrize("scale", [(0.5, 1.0), (1.0, 1.0)])
def test_masks_stay_aligned_through_training_augment(scale: tuple[float, float]) -> None:
    cfg = AugmentConfig(hflip=1.0, vflip=1.0, rotate90=1.0, scale=scale)
    aug = build_augment(cfg, task="segment", image_size=32, train=True)
    padded = 0
    for i in range(40):
        img, mask = _rule_image(i)
        out = aug(image=img, mask=mask)
        assert out["image"].shape == (32, 32, 3)
        _check_aligned(out["image"], out["mask"])
        padded += int((out["mask"] == -1).any())
    assert padded > 0  # the 24-pixel-high images were padded to 32


def test_flips_move_image_and_mask_together() -> None:
    cfg = AugmentConfig(hflip=1.0, vflip=0.0, rotate90=0.0, scale=(1.0, 1.0))
    aug = build_augment(cfg, task="segment", image_size=32, train=True)
    img, mask = _rule_image(0, 32, 32)
    out = aug(image=img, mask=mask)
    np.testing.assert_array_equal(out["mask"], mask[:, ::-1])
    np.testing.assert_array_equal(out["image"], img[:, ::-1])


def test_eval_pipeline_keeps_segmentation_unchanged() -> None:
    aug = build_augment(AugmentConfig(hflip=1.0), task="segment", image_size=32, train=False)
    img, mask = _rule_image(3, 24, 40)
    out = aug(image=img, mask=mask)
    np.testing.assert_array_equal(out["image"], img)
    np.testing.assert_array_equal(out["mask"], mask)


@pytest.mark.parametrize("train", [True, False])
def test_classification_resizes_to_image_size(train: bool) -> None:
    cfg = AugmentConfig(scale=(0.5, 1.0))
    aug = build_augment(cfg, task="classify", image_size=20, train=train)
    out = aug(image=_image(np.uint8, shape=(37, 51)).astype(np.float32))
    assert out["image"].shape == (20, 20, 3)


def test_brightness_contrast_same_for_all_bands() -> None:
    x = np.ones((4, 4, 5), np.float32)
    out = brightness_contrast(x, np.random.default_rng(0), limit=0.2)
    assert out.dtype == np.float32
    assert np.allclose(out, out[0, 0, 0])
    assert 0.6 <= out[0, 0, 0] <= 1.4


@pytest.mark.parametrize(
    "options, margin",
    [
        ({"rotate": 30.0}, 55.0),
        ({"shift_scale_rotate": 1.0}, 55.0),
        # three resamplings in a row: a pixel blended at each step may end up bright
        # while the chain of nearest picks lands next to it, so only unblended ones count
        ({"rotate": 45.0, "shift_scale_rotate": 1.0, "hflip": 1.0, "scale": (0.5, 1.0)}, 5.0),
    ],
)
def test_masks_stay_aligned_through_rotation_and_affine(options: dict, margin: float) -> None:
    aug = build_augment(AugmentConfig(**options), task="segment", image_size=32, train=True)
    filled = 0
    for i in range(30):
        img, mask = _rule_image(i, 48, 48)
        out = aug(image=img, mask=mask)
        _check_aligned(out["image"], out["mask"], strict_fill=False, margin=margin)
        filled += int((out["mask"] == -1).any())
    assert filled > 0  # rotated corners are filled and ignored


@pytest.mark.parametrize("key", ["blur", "noise", "gamma", "coarse_dropout", "hue_saturation"])
def test_intensity_augment_changes_the_image_not_the_mask(key: str) -> None:
    aug = build_augment(
        AugmentConfig(hflip=0.0, **{key: 1.0}), task="segment", image_size=32, train=True
    )
    img, mask = _rule_image(1, 32, 32)
    out = aug(image=img.copy(), mask=mask)
    np.testing.assert_array_equal(out["mask"], mask)
    assert out["image"].shape == img.shape and out["image"].dtype == np.float32
    assert not np.array_equal(out["image"], img)


def test_multiband_gets_per_band_intensity_but_no_hue() -> None:
    rng = np.random.default_rng(0)
    img = rng.uniform(100, 4000, (32, 32, 5)).astype(np.float32)
    hue = build_augment(
        AugmentConfig(hflip=0.0, hue_saturation=1.0),
        task="classify", image_size=32, train=True, bands=5, value_scale=65535.0,
    )  # fmt: skip
    np.testing.assert_array_equal(hue(image=img.copy())["image"], img)  # RGB only: skipped
    gamma = build_augment(
        AugmentConfig(hflip=0.0, gamma=1.0),
        task="classify", image_size=32, train=True, bands=5, value_scale=65535.0,
    )  # fmt: skip
    out = gamma(image=img.copy())["image"]
    ratios = [float(np.median(out[..., b] / img[..., b])) for b in range(5)]
    assert len({round(r, 4) for r in ratios}) > 1  # one gamma per band
    assert np.isfinite(out).all()


def test_augment_is_reproducible_from_its_seed() -> None:
    cfg = AugmentConfig(hflip=0.5, rotate=20.0, noise=0.5, gamma=0.5)
    outs = []
    for _ in range(2):
        aug = build_augment(cfg, task="segment", image_size=32, train=True, seed=3)
        outs.append(
            [aug(image=_rule_image(i)[0], mask=_rule_image(i)[1])["image"] for i in range(5)]
        )
    for a, b in zip(*outs, strict=True):
        np.testing.assert_array_equal(a, b)
    aug.reset()
    again = aug(image=_rule_image(0)[0], mask=_rule_image(0)[1])["image"]
    np.testing.assert_array_equal(again, outs[0][0])


def test_eval_resize_then_centre_crop() -> None:
    img = np.zeros((64, 64, 3), np.float32)
    img[:, :4] = 255.0  # a border stripe the centre crop removes
    aug = build_augment(
        AugmentConfig(eval_resize=256 / 224), task="classify", image_size=28, train=False
    )
    out = aug(image=img)["image"]
    assert out.shape == (28, 28, 3)
    np.testing.assert_allclose(out, eval_resize_crop(img, 28, 256 / 224))
    plain = build_augment(AugmentConfig(), task="classify", image_size=28, train=False)
    assert out[:, 0, 0].mean() < plain(image=img)["image"][:, 0, 0].mean()


def test_brightness_contrast_in_the_training_set_is_reproducible_from_the_seed(
    tmp_path,
) -> None:
    from conftest import FAST_CLS, make_imagefolder
    from liandan.config import Config
    from liandan.data.datamodule import build_data

    cfg = Config.load(None, [*FAST_CLS, "augment.brightness_contrast=0.5"])
    cfg.data.root = make_imagefolder(tmp_path / "data")
    dataset = build_data(cfg).train_loader.dataset

    def items(seed: int) -> list[np.ndarray]:
        np.random.seed(seed)  # what seed_everything does in the process and each worker
        dataset.augment.reset()
        return [dataset[i][0].numpy() for i in range(len(dataset))]

    first, again = items(0), items(0)
    for a, b in zip(first, again, strict=True):
        np.testing.assert_array_equal(a, b)
    dataset.bc_p = 0.0
    plain = items(0)
    changed = sum(not np.array_equal(a, b) for a, b in zip(first, plain, strict=True))
    assert 0 < changed < len(plain)  # applied to some samples, not all (p = 0.5)


def test_segment_scale_zooms_around_the_native_resolution() -> None:
    """augment.scale for segmentation is relative to the crop: on a 512 px image, 16 px
    stripes stay 11-23 px wide in 64 px crops (as an area share of the whole image they
    were shrunk to 2-3 px, a scale predict at native resolution never sees)."""
    cfg = AugmentConfig(scale=(0.5, 2.0))
    aug = build_augment(cfg, task="segment", image_size=64, train=True, seed=0)
    columns = np.arange(512)
    mask = np.broadcast_to(((columns // 16) % 2).astype(np.int16), (512, 512)).copy()
    image = np.repeat((mask * 200).astype(np.uint8)[..., None], 3, axis=2)
    widths = []
    for _ in range(30):
        row = aug(image=image, mask=mask)["mask"][32]
        edges = np.flatnonzero(np.diff(row)) + 1
        widths += list(np.diff(edges))  # whole stripes between two edges
    assert widths
    assert 16 / 1.5 <= float(np.median(widths)) <= 16 * 1.5
    assert min(widths) >= 16 / 1.5 - 1 and max(widths) <= 16 * 1.5 + 1
