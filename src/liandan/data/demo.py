"""The embedded demo datasets, built offline from data bundled in installed packages.

``make_segment_demo`` builds texture mosaics from the three texture photographs bundled
in scikit-image (grass, gravel, brick); ``make_classify_demo`` writes scikit-learn's
handwritten digits as an image folder. Nothing is downloaded.

The segmentation split is honest: train crops come only from the top rows of each
photograph and validation crops (and the GeoTIFF scene) only from the bottom rows, so the
two never share a pixel. The photographs are histogram-matched to one pooled histogram
and regions get class-independent brightness and colour jitter, so a model can only
separate the classes by texture.
"""

from __future__ import annotations

import functools
from pathlib import Path

import numpy as np
import yaml
from PIL import Image

CLASS_NAMES = ("grass", "gravel", "brick")
CLASS_COLORS = ((34, 139, 34), (128, 128, 128), (178, 34, 34))
TRAIN_FRACTION = 0.65  # top 65 % of each photograph's rows feed train, the rest val
SCENE_CRS = "EPSG:32633"  # WGS 84 / UTM zone 33N
SCENE_ORIGIN = (500_000.0, 5_300_000.0)  # west, north in metres (central Austria)
SCENE_PIXEL_SIZE = 0.5
_REGIONS_PER_SAMPLE = (3, 6)  # inclusive range of Voronoi seeds per sample


def texture_rows(split: str, height: int = 512) -> tuple[int, int]:
    """Half-open row range ``[start, stop)`` of each photograph that a split crops from.

    Args:
        split: ``"train"`` or ``"val"`` (the scene uses ``"val"``).
        height: Height of the photographs in pixels.

    Returns:
        The row range; the train and val ranges are disjoint and cover the photograph.
    """
    cut = round(TRAIN_FRACTION * height)
    if split == "train":
        return 0, cut
    if split == "val":
        return cut, height
    raise ValueError(f"split must be 'train' or 'val', not {split!r}")


@functools.lru_cache(maxsize=1)
def _texture_bank() -> tuple[np.ndarray, ...]:
    """The three photographs, histogram-matched exactly to their pooled histogram.

    Ties between equal grey levels are broken by a fixed random dither, so the matched
    histograms are identical (no class can be told apart by its brightness distribution)
    without introducing any spatial pattern.
    """
    from skimage import data

    photos = [np.asarray(f(), dtype=np.uint8) for f in (data.grass, data.gravel, data.brick)]
    reference = np.sort(np.concatenate([p.ravel() for p in photos]))
    rng = np.random.default_rng(0)
    out = []
    for photo in photos:
        order = np.argsort(photo.ravel() + rng.random(photo.size), kind="stable")
        take = np.linspace(0, reference.size - 1, photo.size).round().astype(np.int64)
        flat = np.empty(photo.size, dtype=np.uint8)
        flat[order] = reference[take]
        flat.flags.writeable = False
        out.append(flat.reshape(photo.shape))
    return tuple(out)


def _check_root(root: Path) -> Path:
    root = Path(root)
    if root.exists() and (not root.is_dir() or any(root.iterdir())):
        raise FileExistsError(f"{root} exists and is not an empty folder; choose another")
    root.mkdir(parents=True, exist_ok=True)
    return root


def _seeds(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """``n`` points in a ``size`` square, spread out by rejection sampling."""
    min_dist = 0.9 * size / np.sqrt(n)
    points: list[np.ndarray] = []
    for attempt in range(2000 * n):
        p = rng.uniform(0.05 * size, 0.95 * size, 2)
        if all(np.hypot(*(p - q)) >= min_dist for q in points):
            points.append(p)
            if len(points) == n:
                break
        if attempt % 200 == 199:
            min_dist *= 0.95  # crowded: relax the spacing a little
    return np.array(points)


def _smooth_noise(rng: np.random.Generator, size: int, cells: int) -> np.ndarray:
    """A smooth random field in [-1, 1] of shape ``(size, size)``."""
    coarse = Image.fromarray(rng.uniform(-1, 1, (cells, cells)).astype(np.float32), mode="F")
    return np.asarray(coarse.resize((size, size), Image.Resampling.BICUBIC), dtype=np.float32)


def _voronoi(rng: np.random.Generator, n: int, size: int) -> np.ndarray:
    """Label map (0..n-1) of a Voronoi partition with gently wavy borders."""
    seeds = _seeds(rng, n, size)
    yy, xx = np.mgrid[0:size, 0:size].astype(np.float32)
    amp = 0.25 * size / np.sqrt(n)
    cells = max(4, round(1.6 * np.sqrt(n)))  # about one wave per region
    yy += amp * _smooth_noise(rng, size, cells)
    xx += amp * _smooth_noise(rng, size, cells)
    best = np.full((size, size), np.inf, dtype=np.float32)
    labels = np.zeros((size, size), dtype=np.int32)
    for i, (sy, sx) in enumerate(seeds):
        d = (yy - sy) ** 2 + (xx - sx) ** 2
        closer = d < best
        best[closer] = d[closer]
        labels[closer] = i
    return labels


def _texture_patch(rng: np.random.Generator, band: np.ndarray, h: int, w: int) -> np.ndarray:
    """A ``h`` x ``w`` crop of ``band`` at a random offset, randomly rotated/flipped.

    Where the band is smaller than the patch it is extended by mirroring, so every pixel
    still comes from ``band``.
    """
    t = np.rot90(band, int(rng.integers(4)))
    if rng.random() < 0.5:
        t = t[:, ::-1]
    pad_h, pad_w = max(0, h - t.shape[0]), max(0, w - t.shape[1])
    if pad_h or pad_w:
        t = np.pad(t, ((0, pad_h), (0, pad_w)), mode="symmetric")
    y = int(rng.integers(0, t.shape[0] - h + 1))
    x = int(rng.integers(0, t.shape[1] - w + 1))
    return t[y : y + h, x : x + w]


def _mosaic(
    rng: np.random.Generator, split: str, size: int, n_regions: int, classes: np.ndarray
) -> tuple[np.ndarray, np.ndarray]:
    """One RGB uint8 mosaic and its class mask; region ``i`` gets class ``classes[i]``."""
    from scipy import ndimage

    bank = _texture_bank()
    labels = _voronoi(rng, n_regions, size)
    gray = np.zeros((size, size), dtype=np.float32)
    mask = np.zeros((size, size), dtype=np.uint8)
    for i, box in enumerate(ndimage.find_objects(labels + 1)):
        if box is None:
            continue
        cls = int(classes[i])
        start, stop = texture_rows(split, bank[cls].shape[0])
        h, w = box[0].stop - box[0].start, box[1].stop - box[1].start
        patch = _texture_patch(rng, bank[cls][start:stop], h, w).astype(np.float32)
        # class-independent brightness/contrast jitter per region
        patch = (patch - 118.0) * rng.uniform(0.9, 1.1) + 118.0 + rng.uniform(-8, 8)
        inside = labels[box] == i
        gray[box][inside] = patch[inside]
        mask[box][inside] = cls
    tint = rng.uniform(0.9, 1.1, 3).astype(np.float32)  # mild per-image colour cast
    rgb = np.clip(np.rint(gray[..., None] * tint), 0, 255).astype(np.uint8)
    return rgb, mask


def _sample_classes(rng: np.random.Generator, n: int) -> np.ndarray:
    """Classes for ``n`` regions: each class at least once (n >= 3), the rest random."""
    extra = rng.integers(0, len(CLASS_NAMES), max(0, n - len(CLASS_NAMES)))
    return rng.permutation(np.concatenate([np.arange(len(CLASS_NAMES)), extra]))[:n]


def _write_scene(folder: Path, image: np.ndarray, mask: np.ndarray) -> None:
    import rasterio
    from rasterio.transform import Affine

    size = image.shape[0]
    (west, north), px = SCENE_ORIGIN, SCENE_PIXEL_SIZE
    profile = {
        "driver": "GTiff",
        "height": size,
        "width": size,
        "dtype": "uint8",
        "crs": SCENE_CRS,
        # = rasterio.transform.from_origin(west, north, px, px), which warns with affine 3
        "transform": Affine(px, 0.0, west, 0.0, -px, north),
        "compress": "deflate",
    }
    if size >= 256:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    folder.mkdir(parents=True, exist_ok=True)
    with rasterio.open(folder / "scene.tif", "w", count=3, photometric="RGB", **profile) as dst:
        dst.write(np.moveaxis(image, -1, 0))
    with rasterio.open(folder / "scene_mask.tif", "w", count=1, **profile) as dst:
        dst.write(mask, 1)


def make_segment_demo(
    root: Path,
    *,
    seed: int = 0,
    n_train: int = 48,
    n_val: int = 16,
    size: int = 128,
    scene_size: int = 512,
) -> Path:
    """Write the texture-mosaic segmentation demo (classes grass, gravel, brick).

    Each sample is a ``size`` x ``size`` Voronoi mosaic of 3-6 regions, each filled with
    a randomly placed, rotated and flipped crop of one class's photograph. Layout:
    ``{train,val}/{images,masks}/<name>.png``, ``classes.yaml``,
    ``scene/scene.tif`` + ``scene/scene_mask.tif`` (a georeferenced scene built from
    validation rows only) and ``README.txt``.

    Args:
        root: Folder to create; it must not exist or be empty.
        seed: Seed of the random generator; the same seed writes identical files.
        n_train: Number of training samples.
        n_val: Number of validation samples.
        size: Side of each sample in pixels.
        scene_size: Side of the GeoTIFF scene in pixels.

    Returns:
        ``root``.

    Raises:
        FileExistsError: ``root`` exists and is not an empty folder.
    """
    if min(n_train, n_val) < 1 or min(size, scene_size) < 16:
        raise ValueError("n_train and n_val must be >= 1; size and scene_size >= 16")
    root = _check_root(root)
    rng = np.random.default_rng(seed)
    lo, hi = _REGIONS_PER_SAMPLE
    for split, count in (("train", n_train), ("val", n_val)):
        (root / split / "images").mkdir(parents=True)
        (root / split / "masks").mkdir(parents=True)
        for i in range(count):
            n = int(rng.integers(lo, hi + 1))
            image, mask = _mosaic(rng, split, size, n, _sample_classes(rng, n))
            name = f"{split}_{i:03d}.png"
            Image.fromarray(image, mode="RGB").save(root / split / "images" / name)
            Image.fromarray(mask, mode="L").save(root / split / "masks" / name)

    n_scene = max(lo, round(0.5 * (lo + hi) * (scene_size / size) ** 2))
    scene_classes = rng.integers(0, len(CLASS_NAMES), n_scene)
    scene_classes[: len(CLASS_NAMES)] = np.arange(len(CLASS_NAMES))
    _write_scene(root / "scene", *_mosaic(rng, "val", scene_size, n_scene, scene_classes))

    classes = {"names": list(CLASS_NAMES), "colors": [list(c) for c in CLASS_COLORS]}
    (root / "classes.yaml").write_text(yaml.safe_dump(classes, default_flow_style=None))
    cut = texture_rows("train")[1]
    (root / "README.txt").write_text(
        "Texture mosaics made from the grass, gravel and brick photographs bundled with "
        "scikit-image (skimage.data), histogram-matched to one another so only texture "
        "tells them apart.\n"
        f"train/ crops only rows 0-{cut - 1} (top {TRAIN_FRACTION:.0%}) of each photograph; "
        f"val/ and scene/ only rows {cut}-511, so train and validation share no pixel.\n"
        f"scene/scene.tif is a {scene_size} x {scene_size} GeoTIFF ({SCENE_CRS}, "
        f"{SCENE_PIXEL_SIZE} m pixels) with its truth mask scene_mask.tif.\n"
        f"Generated by liandan.data.demo.make_segment_demo(seed={seed}).\n"
    )
    return root


def make_classify_demo(root: Path, *, seed: int = 0, size: int = 32) -> Path:
    """Write scikit-learn's handwritten digits as an image-folder classification demo.

    The 1797 8x8 digits are split 80/20 (stratified, seeded) into
    ``{train,val}/<digit>/<index>.png``, each upscaled to ``size`` x ``size`` grayscale.

    Args:
        root: Folder to create; it must not exist or be empty.
        seed: Seed of the split.
        size: Side of the written images in pixels.

    Returns:
        ``root``.

    Raises:
        FileExistsError: ``root`` exists and is not an empty folder.
    """
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    root = _check_root(root)
    digits = load_digits()
    images = np.clip(np.rint(digits.images * (255.0 / 16.0)), 0, 255).astype(np.uint8)
    index = np.arange(len(images))
    train_idx, val_idx = train_test_split(
        index, test_size=0.2, stratify=digits.target, random_state=seed
    )
    for split, idx in (("train", train_idx), ("val", val_idx)):
        for label in range(10):
            (root / split / str(label)).mkdir(parents=True)
        for i in sorted(int(j) for j in idx):
            img = Image.fromarray(images[i], mode="L")
            img = img.resize((size, size), Image.Resampling.BILINEAR)
            img.save(root / split / str(int(digits.target[i])) / f"{i:04d}.png")
    (root / "README.txt").write_text(
        "Handwritten digits 0-9 bundled with scikit-learn (sklearn.datasets.load_digits: "
        "1797 8x8 images, UCI optical recognition of handwritten digits).\n"
        f"Values 0-16 scaled to 0-255 and upscaled bilinearly to {size} x {size}; "
        f"split 80/20 stratified by digit with seed {seed}.\n"
        "File names are the digit's index in load_digits().\n"
    )
    return root
