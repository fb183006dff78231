"""Detection samples: boxes stay on their objects, remnants are dropped, background works."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from liandan.data.transforms import Normalizer
from liandan.tasks.detect.boxes import ImageBoxes
from liandan.tasks.detect.data import (
    DetectionData,
    detection_collate,
    letterbox_scale,
    to_original,
)
from liandan.tasks.detect.demo import make_detect_demo
from liandan.tasks.detect.formats import read_detection

# one object per class, painted 255 in the band of its class on a black image
OBJECTS = np.array([[4, 6, 30, 16], [36, 20, 44, 44], [10, 30, 22, 40]], np.float64)


def painted(tmp_path: Path, width: int = 64, height: int = 48) -> ImageBoxes:
    image = np.zeros((height, width, 3), np.uint8)
    for k, (x1, y1, x2, y2) in enumerate(OBJECTS.astype(int)):
        image[y1:y2, x1:x2, k] = 255
    path = tmp_path / "objects.png"
    Image.fromarray(image).save(path)
    return ImageBoxes(path, width, height, OBJECTS, [0, 1, 2])


def extent(band: np.ndarray) -> np.ndarray | None:
    """``x1 y1 x2 y2`` pixel-edge extent of the pixels above half intensity."""
    rows, cols = np.nonzero(band > 0.5)
    if not len(rows):
        return None
    return np.array([cols.min(), rows.min(), cols.max() + 1, rows.max() + 1], np.float64)


def test_boxes_frame_their_objects_under_every_transform(tmp_path: Path) -> None:
    data = DetectionData(
        [painted(tmp_path)],
        64,
        train=True,
        scale=(0.6, 1.8),
        hflip=0.5,
        vflip=0.5,
        rotate90=0.5,
        brightness_contrast=0.0,
        hue_saturation=0.0,
        gamma=0.0,
        seed=1,
    )
    orientations = set()
    kept = 0
    for _ in range(60):
        image, target = data[0]
        assert image.shape == (3, 64, 64)
        labels = target["labels"].tolist()
        assert len(set(labels)) == len(labels)  # each object at most once
        for box, k in zip(target["boxes"].numpy(), labels, strict=True):
            seen = extent(image[k].numpy())
            assert seen is not None, f"box {box} of class {k} frames no object pixel"
            # bilinear resampling moves a half-intensity edge by up to a pixel
            np.testing.assert_allclose(box, seen, atol=1.01)
            kept += 1
        if 1 in labels:  # object 1 is 8 x 24: rotations show as a wide box
            w, h = np.ptp(target["boxes"][labels.index(1)].numpy().reshape(2, 2), axis=0)
            orientations.add(bool(w > h))
    assert kept > 60 and orientations == {True, False}


def test_cut_remnants_below_min_visibility_are_dropped(tmp_path: Path) -> None:
    # a fixed 2x zoom of a 64 px image, then a 64 px crop: objects are often cut
    data = DetectionData(
        [painted(tmp_path, 64, 64)],
        64,
        train=True,
        scale=(2.0, 2.0),
        hflip=0.0,
        brightness_contrast=0.0,
        hue_saturation=0.0,
        gamma=0.0,
        min_visibility=0.4,
        seed=2,
    )
    full_area = 4 * np.prod(OBJECTS[:, 2:] - OBJECTS[:, :2], axis=1)
    dropped = kept_cut = 0
    for _ in range(80):
        image, target = data[0]
        labels = target["labels"].tolist()
        for k in range(3):
            visible = float((image[k].numpy() > 0.5).sum()) / full_area[k]
            if k in labels:
                assert visible > 0.4 - 0.05
                kept_cut += visible < 0.95
            else:
                assert visible < 0.4 + 0.05
                dropped += visible > 0
    assert dropped and kept_cut  # both cases happened


def test_eval_letterbox_and_back_to_original_pixels(tmp_path: Path) -> None:
    rec = painted(tmp_path, 64, 48)
    data = DetectionData([rec], 32, train=False)
    image, target = data[0]
    assert image.shape == (3, 32, 32)
    sx, sy = target["scale"].tolist()
    assert (sx, sy) == letterbox_scale(64, 48, 32) == (0.5, 0.5)
    np.testing.assert_allclose(target["boxes"].numpy(), OBJECTS * 0.5)
    np.testing.assert_allclose(to_original(target["boxes"], target["scale"]), OBJECTS)
    assert not image[:, 24:].any()  # padding at the bottom (48 * 0.5 = 24 rows of image)
    for k in range(3):  # the resized objects sit under their boxes
        np.testing.assert_allclose(extent(image[k].numpy()), OBJECTS[k] * 0.5, atol=1.01)


def test_background_images_give_empty_targets_and_collate(tmp_path: Path) -> None:
    rec = painted(tmp_path)
    empty = ImageBoxes(rec.path, rec.width, rec.height)  # no boxes: background
    for train in (True, False):
        data = DetectionData([rec, empty], 64, train=train, seed=3)
        images, targets = detection_collate([data[0], data[1]])
        assert images.shape == (2, 3, 64, 64) and images.dtype == torch.float32
        assert targets[1]["boxes"].shape == (0, 4) and targets[1]["boxes"].dtype == torch.float32
        assert targets[1]["labels"].shape == (0,) and targets[1]["labels"].dtype == torch.int64
        assert targets[0]["labels"].dtype == torch.int64 and len(targets[0]["boxes"])


def test_normalization_choices_agree(tmp_path: Path) -> None:
    rec = painted(tmp_path)
    mean, std = [10.0, 20.0, 30.0], [2.0, 4.0, 8.0]
    expected = (np.asarray(Image.open(rec.path), np.float32) - mean) / std
    expected = expected.transpose(2, 0, 1)
    for normalize in (
        Normalizer("dataset", mean=mean, std=std),
        (mean, std),
        lambda x: (x - np.float32(mean)) / np.float32(std),
    ):
        image, _ = DetectionData([rec], 64, train=False, normalize=normalize)[0]
        np.testing.assert_allclose(image.numpy()[:, :48], expected, rtol=1e-5, atol=1e-5)
    raw, _ = DetectionData([rec], 64, train=False)[0]
    assert float(raw.max()) == 1.0  # None: divided by the dtype's maximum


def test_multiband_uint16_geotiff_trains(tmp_path: Path) -> None:
    import rasterio
    from rasterio.transform import Affine

    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 3000, (4, 40, 40)).astype(np.uint16)
    pixels[:, 10:20, 5:25] = 60000
    path = tmp_path / "scene.tif"
    profile = {"driver": "GTiff", "width": 40, "height": 40, "count": 4, "dtype": "uint16"}
    with rasterio.open(
        path, "w", crs="EPSG:32633", transform=Affine(1, 0, 500_000, 0, -1, 5_300_000), **profile
    ) as dst:
        dst.write(pixels)
    rec = ImageBoxes(path, 40, 40, [[5, 10, 25, 20]], [0])
    data = DetectionData([rec], 40, train=True, scale=(1.0, 1.0), hflip=0.0, seed=0)
    for _ in range(5):
        image, target = data[0]
        assert image.shape == (4, 40, 40) and torch.isfinite(image).all()
        np.testing.assert_allclose(target["boxes"].numpy(), [[5, 10, 25, 20]])


def test_seeded_augmentation_repeats(tmp_path: Path) -> None:
    rec = painted(tmp_path)
    a = DetectionData([rec], 64, train=True, rotate90=0.5, seed=5)
    b = DetectionData([rec], 64, train=True, rotate90=0.5, seed=5)
    for _ in range(3):
        (xa, ta), (xb, tb) = a[0], b[0]
        assert torch.equal(xa, xb) and torch.equal(ta["boxes"], tb["boxes"])


def test_demo_is_a_clean_yolo_dataset_and_repeats(tmp_path: Path) -> None:
    import json

    from liandan.tasks.detect.boxes import validate

    root = make_detect_demo(tmp_path / "a", n_train=6, n_val=3, size=64, scene_size=128)
    make_detect_demo(tmp_path / "b", n_train=6, n_val=3, size=64, scene_size=128)
    ds = read_detection(root)
    assert ds.class_names == ["rectangle", "circle", "triangle"]
    assert validate(ds) == []
    assert sorted({r.split for r in ds.images}) == ["train", "val"] and len(ds.images) == 9
    for name in ("images/train/train_0000.png", "scene/scene.tif", "scene/scene_boxes.json"):
        assert (root / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    truth = json.loads((root / "scene" / "scene_boxes.json").read_text())
    assert truth["crs"] == "EPSG:32633" and len(truth["boxes"]) == len(truth["classes"]) > 0
    with pytest.raises(FileExistsError):
        make_detect_demo(root)


# ------------------------------------------------------------------ colour
def graded(tmp_path: Path, size: int = 32) -> ImageBoxes:
    """An RGB image of mid-grey values (none at 0 or 255, so a gamma curve shows) with
    one box; training at ``size`` with scale 1 and no flips leaves its geometry alone."""
    rng = np.random.default_rng(4)
    image = rng.integers(30, 226, (size, size, 3)).astype(np.uint8)
    path = tmp_path / "graded.png"
    Image.fromarray(image).save(path)
    return ImageBoxes(path, size, size, [[4, 4, 20, 20]], [0])


def detect_datasets(rec: ImageBoxes, **augment: float) -> tuple[DetectionData, DetectionData]:
    """Detection's training and validation datasets as ``liandan train`` builds them,
    with the config's ``augment`` section set to ``augment`` (scale 1, no flips)."""
    from types import SimpleNamespace

    from liandan.config import Config
    from liandan.data.layouts import Sample
    from liandan.tasks import get_task

    section = {"hflip": 0.0, "scale": [1.0, 1.0], **augment}
    cfg = Config.from_dict(
        {"task": "detect", "data": {"image_size": rec.width}, "augment": section}
    )
    checked = SimpleNamespace(
        index=SimpleNamespace(source=SimpleNamespace(images=[rec])), images={}
    )
    splits = {"train": [Sample(rec.path, 0, "train")], "val": [Sample(rec.path, 0, "val")]}
    return get_task("detect").build_datasets(cfg, checked, splits, None)  # type: ignore[arg-type]


def test_gamma_alone_changes_images_only_by_a_gamma_curve(tmp_path: Path) -> None:
    rec = graded(tmp_path)
    train, val = detect_datasets(rec, gamma=1.0)
    plain = val[0][0].numpy().astype(np.float64)  # the image in 0-1, untouched
    gammas = []
    for _ in range(30):
        image, target = train[0]
        np.testing.assert_allclose(target["boxes"].numpy(), [[4, 4, 20, 20]])
        seen = image.numpy().astype(np.float64)
        # out = in ** g, one g per band: log(out) / log(in) is the same for every pixel
        ratio = np.log(seen) / np.log(plain)
        for band in ratio:
            assert np.ptp(band) < 1e-3, "a change other than a gamma curve"
        gammas.append(ratio[:, 0, 0])
    # gamma = 1: every image gets its curve (0.8-1.25 per band: at least one band shows)
    assert np.all(np.abs(np.log(gammas)).max(axis=1) > 1e-2)


def test_each_colour_change_has_its_own_probability(tmp_path: Path) -> None:
    rec = graded(tmp_path)
    _, val = detect_datasets(rec)
    plain = val[0][0].numpy().astype(np.float64)
    draws = 400
    for key, p in (("brightness_contrast", 0.25), ("hue_saturation", 0.0)):
        train, _ = detect_datasets(rec, **{key: p})
        changed = 0
        for _ in range(draws):
            seen = train[0][0].numpy().astype(np.float64)
            if not np.allclose(seen, plain, atol=1e-5):
                changed += 1
                if key == "brightness_contrast":  # x * c + b, the same for every band
                    slope, offset = np.polyfit(plain.ravel(), seen.ravel(), 1)
                    np.testing.assert_allclose(seen, plain * slope + offset, atol=1e-4)
        # binomial: 400 draws at 0.25 have a standard deviation of about 0.022
        assert abs(changed / draws - p) < 0.07, (key, changed / draws)


def test_colour_probabilities_outside_0_to_1_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"gamma=1\.5"):
        DetectionData([graded(tmp_path)], 32, train=True, gamma=1.5)


def test_boxes_of_a_bf16_detector_map_back() -> None:
    """Under bf16 autocast (a GPU's, or a CPU's with bf16 instructions) a detector's
    boxes come out in bf16, which numpy cannot hold."""
    boxes = torch.tensor([[8.0, 4.0, 40.0, 30.0]], dtype=torch.bfloat16)
    np.testing.assert_allclose(to_original(boxes, (0.5, 0.5)), [[16.0, 8.0, 80.0, 60.0]])
