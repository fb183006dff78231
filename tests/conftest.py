"""Fixtures: tiny datasets written in each real layout, generated on the fly.

Images carry a learnable signal (class-dependent pattern) so end-to-end tests can
assert more than "it ran", yet stay a few KB and train in seconds on a CPU.
"""

from __future__ import annotations

import csv
import shutil
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

SIZE = 32


@pytest.fixture(scope="module")
def module_tmp(
    request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Path]:
    """A folder for one test module's shared runs, removed when the module ends.

    Runs write checkpoints of tens of MB; like pytest's own ``tmp_path`` under the
    ``failed`` retention policy, the folder is kept only when a test of the module failed.
    """
    failed_before = request.session.testsfailed
    path = tmp_path_factory.mktemp(request.module.__name__.rsplit(".", 1)[-1])
    yield path
    if request.session.testsfailed == failed_before:
        shutil.rmtree(path, ignore_errors=True)


def class_image(rng: np.random.Generator, label: int, size: int = SIZE) -> np.ndarray:
    """An RGB uint8 image whose brightness pattern depends on the class."""
    img = rng.integers(0, 60, (size, size, 3), dtype=np.uint8)
    if label % 2 == 0:
        img[: size // 2] += 150
    else:
        img[:, : size // 2] += 150
    if label >= 2:
        img[..., label % 3] = 255
    return img


def seg_pair(rng: np.random.Generator, size: int = SIZE, values=(0, 1, 2)) -> tuple:
    """An RGB image with bright squares and the mask of where they are."""
    img = rng.integers(0, 50, (size, size, 3), dtype=np.uint8)
    mask = np.full((size, size), values[0], dtype=np.uint8)
    for value, channel in zip(values[1:], range(3), strict=False):
        r, c = rng.integers(0, size - 12, 2)
        img[r : r + 12, c : c + 12, channel] = 230
        mask[r : r + 12, c : c + 12] = value
    return img, mask


def save(arr: np.ndarray, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return path


def make_imagefolder(
    root: Path, n_per_class: int = 6, classes=("cat", "dog"), splits=False, seed: int = 0
) -> Path:
    rng = np.random.default_rng(seed)
    for split in ("train", "val") if splits else (None,):
        base = root / split if split else root
        for label, name in enumerate(classes):
            for i in range(n_per_class):
                save(class_image(rng, label), base / name / f"{name}_{i}.png")
    return root


def make_pairs(
    root: Path,
    n: int = 8,
    splits=False,
    values=(0, 1, 2),
    seed: int = 0,
    classes_yaml: str | None = None,
) -> Path:
    rng = np.random.default_rng(seed)
    for split in ("train", "val") if splits else (None,):
        base = root / split if split else root
        for i in range(n):
            img, mask = seg_pair(rng, values=values)
            save(img, base / "images" / f"img{i:02d}.png")
            save(mask, base / "masks" / f"img{i:02d}.png")
    if classes_yaml is not None:
        (root / "classes.yaml").write_text(classes_yaml)
    return root


def make_csv(root: Path, n_per_class: int = 6, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    rows = []
    for label, name in enumerate(("a", "b")):
        for i in range(n_per_class):
            rel = f"pics/{name}{i}.png"
            save(class_image(rng, label), root / rel)
            rows.append({"image": rel, "label": name})
    with (root / "labels.csv").open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["image", "label"])
        writer.writeheader()
        writer.writerows(rows)
    return root


def make_voc(root: Path, n: int = 6, seed: int = 0) -> Path:
    rng = np.random.default_rng(seed)
    names = []
    for i in range(n):
        img, mask = seg_pair(rng, values=(0, 1, 15))
        mask[0, :] = 255  # VOC's object boundary: ignored
        save(img, root / "JPEGImages" / f"2007_{i:06d}.jpg")
        pal = Image.fromarray(mask, mode="P")
        pal.putpalette([v for c in range(256) for v in (c, 255 - c, (c * 7) % 256)])
        (root / "SegmentationClass").mkdir(parents=True, exist_ok=True)
        pal.save(root / "SegmentationClass" / f"2007_{i:06d}.png")
        names.append(f"2007_{i:06d}")
    sets = root / "ImageSets" / "Segmentation"
    sets.mkdir(parents=True)
    (sets / "train.txt").write_text("\n".join(names[:4]) + "\n")
    (sets / "val.txt").write_text("\n".join(names[4:]) + "\n")
    return root


def write_geotiff(
    path: Path,
    arr: np.ndarray,
    *,
    crs: str | None = "EPSG:32633",
    transform=None,
    nodata: float | None = None,
) -> Path:
    """Write ``(C, H, W)`` as a GeoTIFF (10 m pixels at a UTM origin unless told)."""
    import rasterio
    from rasterio.transform import from_origin

    path.parent.mkdir(parents=True, exist_ok=True)
    count, height, width = arr.shape
    transform = transform if transform is not None else from_origin(500000, 4000000, 10.0, 10.0)
    profile = dict(
        driver="GTiff",
        width=width,
        height=height,
        count=count,
        dtype=arr.dtype.name,
        crs=crs,
        transform=transform,
        nodata=nodata,
    )
    with rasterio.open(path, "w", **profile) as dst:
        dst.write(arr)
    return path


# A config that trains in seconds on a CPU: tiny models, few steps, no progress bar.
FAST = [
    "train.epochs=2",
    "train.batch_size=4",
    "train.progress=false",
    "data.image_size=32",
    "predict.tile=64",
]
FAST_SEG = [*FAST, "model.encoder=mobilenet_v2"]
FAST_CLS = [*FAST, "model.arch=lenet"]


@pytest.fixture
def imagefolder(tmp_path: Path) -> Path:
    return make_imagefolder(tmp_path / "cls")


@pytest.fixture
def pairs(tmp_path: Path) -> Path:
    return make_pairs(tmp_path / "seg")


def learned(metrics: dict, *, accuracy: float = 0.9, kappa: float = 0.6) -> bool:
    """Whether a run's metrics show it learned: accuracy and Cohen's kappa (agreement
    beyond chance: 0 for a constant or random predictor) both clear their bar.

    The fixtures above are learnable in seconds; the same run on shuffled labels stays
    near kappa 0 and fails (tests/test_promises.py shows it).
    """
    overall = metrics["overall"]
    return overall["accuracy"] >= accuracy and (overall["kappa"] or 0.0) >= kappa
