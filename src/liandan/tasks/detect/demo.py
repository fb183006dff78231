"""The embedded detection demo: coloured shapes on texture photographs, no download.

``make_detect_demo`` draws rectangles, circles and triangles (three classes) with
:mod:`skimage.draw` on backgrounds cut from the grass, gravel and brick photographs
bundled with scikit-image, adds sensor-like noise, and writes a YOLO layout that
:func:`~liandan.tasks.detect.yolo.read_yolo` reads:

- ``images/{train,val}/<name>.png`` and ``labels/{train,val}/<name>.txt``
  (``class cx cy w h`` as fractions; background images have no label file);
- ``data.yaml`` with the class names;
- ``scene/scene.tif``, a larger georeferenced GeoTIFF drawn the same way, with its truth
  boxes in ``scene/scene_boxes.json`` (pixel ``x1 y1 x2 y2``, the frame of
  :mod:`~liandan.tasks.detect.boxes`, plus the scene's CRS and transform).

Shapes are drawn whole inside the image, never touching one another, so every box is the
exact extent of its shape's pixels. Each shape's colour differs from the background
under it by a margin, so every object is visible. As in the segmentation demo, train
backgrounds come only from the top rows of each photograph and validation (and scene)
backgrounds only from the bottom rows.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import yaml
from PIL import Image

# the texture bank, the photographs' train/val rows and the scene's georeferencing are
# the segmentation demo's, so both demos cut their backgrounds alike
from liandan.data.demo import (
    SCENE_CRS,
    SCENE_ORIGIN,
    SCENE_PIXEL_SIZE,
    _check_root,
    _texture_bank,
    _texture_patch,
    texture_rows,
)

CLASS_NAMES = ("rectangle", "circle", "triangle")
SHAPE_SIDE = (0.1, 0.3)  # shape side as a fraction of a 128 px image: 13-38 px
SHAPES_PER_IMAGE = (1, 5)  # inclusive
BACKGROUND_SHARE = 0.05  # images drawn without shapes (background images)
MIN_CONTRAST = 60.0  # grey-level gap between a shape and the background under it
NOISE_STD = 8.0  # grey levels of the Gaussian noise over the whole image
GAP = 2  # pixels kept free around each shape, so no two boxes' pixels touch

__all__ = ["CLASS_NAMES", "draw_shapes", "make_detect_demo"]


def _shape_pixels(
    rng: np.random.Generator, cls: int, side: int, shape: tuple[int, int]
) -> tuple[np.ndarray, np.ndarray]:
    """Row and column indices of one shape of class ``cls``, about ``side`` px across,
    somewhere wholly inside an image of ``shape``."""
    from skimage import draw

    h, w = shape
    if cls == 0:  # rectangle, aspect ratio 1:2 to 2:1
        aspect = np.exp(rng.uniform(-np.log(2), np.log(2)))
        rh = max(4, round(side * np.sqrt(aspect)))
        rw = max(4, round(side / np.sqrt(aspect)))
        r0 = int(rng.integers(0, h - rh + 1))
        c0 = int(rng.integers(0, w - rw + 1))
        return draw.rectangle((r0, c0), extent=(rh, rw), shape=shape)
    radius = side / 2
    cy = rng.uniform(radius, h - radius)
    cx = rng.uniform(radius, w - radius)
    if cls == 1:  # circle
        return draw.disk((cy, cx), radius, shape=shape)
    # triangle: equilateral-ish, any orientation, inscribed in the same circle
    angles = rng.uniform(0, 2 * np.pi) + np.array([0, 2, 4]) * np.pi / 3
    angles += rng.uniform(-0.25, 0.25, 3)
    return draw.polygon(cy + radius * np.sin(angles), cx + radius * np.cos(angles), shape=shape)


def _background(rng: np.random.Generator, split: str, h: int, w: int) -> np.ndarray:
    """``(h, w, 3)`` float32: a texture crop with random contrast, brightness and tint."""
    bank = _texture_bank()
    photo = bank[int(rng.integers(len(bank)))]
    start, stop = texture_rows(split, photo.shape[0])
    gray = _texture_patch(rng, photo[start:stop], h, w).astype(np.float32)
    gray = (gray - 118.0) * rng.uniform(0.6, 1.0) + 118.0 + rng.uniform(-25, 25)
    tint = rng.uniform(0.85, 1.15, 3).astype(np.float32)
    return gray[..., None] * tint


def draw_shapes(
    rng: np.random.Generator, split: str, height: int, width: int, n_shapes: int, scale: float
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """One demo image and its boxes.

    Args:
        rng: the random generator (the only source of randomness).
        split: ``"train"`` or ``"val"``: which rows of the photographs to use.
        height, width: image size in pixels.
        n_shapes: shapes to try to place (fewer when the image is crowded).
        scale: shape sides are ``SHAPE_SIDE`` times ``128 * scale`` pixels.

    Returns:
        The RGB uint8 image ``(height, width, 3)``, the boxes ``(N, 4)`` float64 in
        absolute pixel ``x1 y1 x2 y2`` (pixel edges, so a one-pixel shape is 1 x 1),
        and their classes ``(N,)`` int64.
    """
    image = _background(rng, split, height, width)
    taken = np.zeros((height, width), bool)  # shape pixels, grown by GAP
    boxes, classes = [], []
    lo, hi = (round(f * 128 * scale) for f in SHAPE_SIDE)
    for _ in range(n_shapes):
        cls = int(rng.integers(len(CLASS_NAMES)))
        for _attempt in range(20):
            rr, cc = _shape_pixels(rng, cls, int(rng.integers(lo, hi + 1)), (height, width))
            r0, r1, c0, c1 = rr.min(), rr.max(), cc.min(), cc.max()
            if not taken[max(0, r0 - GAP) : r1 + GAP + 1, max(0, c0 - GAP) : c1 + GAP + 1].any():
                break
        else:
            continue  # no free place found: the image gets fewer shapes
        taken[max(0, r0 - GAP) : r1 + GAP + 1, max(0, c0 - GAP) : c1 + GAP + 1] = True
        # a colour whose grey level is at least MIN_CONTRAST from the background's
        under = float(image[rr, cc].mean())
        for _attempt in range(50):
            colour = rng.uniform(0, 255, 3)
            if abs(colour.mean() - under) >= MIN_CONTRAST:
                break
        else:
            colour = np.full(3, 255.0 if under < 128 else 0.0)
        image[rr, cc] = colour
        boxes.append([c0, r0, c1 + 1, r1 + 1])
        classes.append(cls)
    image += rng.normal(0, NOISE_STD, image.shape).astype(np.float32)
    rgb = np.clip(np.rint(image), 0, 255).astype(np.uint8)
    return rgb, np.array(boxes, np.float64).reshape(-1, 4), np.array(classes, np.int64)


def _yolo_lines(boxes: np.ndarray, classes: np.ndarray, width: int, height: int) -> str:
    lines = []
    for (x1, y1, x2, y2), cls in zip(boxes, classes, strict=True):
        cx, cy = (x1 + x2) / 2 / width, (y1 + y2) / 2 / height
        bw, bh = (x2 - x1) / width, (y2 - y1) / height
        lines.append(f"{cls} {cx:.6f} {cy:.6f} {bw:.6f} {bh:.6f}\n")
    return "".join(lines)


def _write_scene(folder: Path, image: np.ndarray, boxes: np.ndarray, classes: np.ndarray) -> None:
    import rasterio
    from rasterio.transform import Affine

    size = image.shape[0]
    (west, north), px = SCENE_ORIGIN, SCENE_PIXEL_SIZE
    transform = Affine(px, 0.0, west, 0.0, -px, north)
    profile = {
        "driver": "GTiff",
        "height": size,
        "width": image.shape[1],
        "dtype": "uint8",
        "crs": SCENE_CRS,
        "transform": transform,
        "compress": "deflate",
    }
    if size >= 256:
        profile.update(tiled=True, blockxsize=256, blockysize=256)
    folder.mkdir(parents=True)
    with rasterio.open(folder / "scene.tif", "w", count=3, photometric="RGB", **profile) as dst:
        dst.write(np.moveaxis(image, -1, 0))
    truth = {
        "image": "scene.tif",
        "width": int(image.shape[1]),
        "height": int(size),
        "crs": SCENE_CRS,
        "transform": list(transform)[:6],  # rasterio's a, b, c, d, e, f
        "class_names": list(CLASS_NAMES),
        "boxes": [[round(float(v), 3) for v in box] for box in boxes],
        "classes": [int(c) for c in classes],
    }
    (folder / "scene_boxes.json").write_text(json.dumps(truth, indent=1) + "\n")


def make_detect_demo(
    root: str | Path,
    *,
    n_train: int = 400,
    n_val: int = 100,
    size: int = 128,
    seed: int = 0,
    scene_size: int = 512,
) -> Path:
    """Write the shapes detection demo (classes rectangle, circle, triangle).

    Args:
        root: folder to create; it must not exist or be empty.
        n_train: training images.
        n_val: validation images.
        size: side of each image in pixels; shapes scale with it (13-38 px at 128).
        seed: seed of the random generator; the same seed writes identical files.
        scene_size: side of the GeoTIFF scene in pixels (shapes as large as in the
            ``size`` images, so a model trained on them finds them when tiled).

    Returns:
        ``root``.

    Raises:
        FileExistsError: ``root`` exists and is not an empty folder.

    >>> make_detect_demo("shapes")  # doctest: +SKIP
    PosixPath('shapes')
    """
    if min(n_train, n_val) < 1 or size < 32 or scene_size < size:
        raise ValueError("n_train and n_val must be >= 1, size >= 32 and scene_size >= size")
    root = _check_root(Path(root))
    rng = np.random.default_rng(seed)
    scale = size / 128
    lo, hi = SHAPES_PER_IMAGE
    for split, count in (("train", n_train), ("val", n_val)):
        (root / "images" / split).mkdir(parents=True)
        (root / "labels" / split).mkdir(parents=True)
        for i in range(count):
            n = 0 if rng.random() < BACKGROUND_SHARE else int(rng.integers(lo, hi + 1))
            image, boxes, classes = draw_shapes(rng, split, size, size, n, scale)
            name = f"{split}_{i:04d}"
            Image.fromarray(image, mode="RGB").save(root / "images" / split / f"{name}.png")
            if len(boxes):
                text = _yolo_lines(boxes, classes, size, size)
                (root / "labels" / split / f"{name}.txt").write_text(text)

    # the scene: as many shapes per area as the images hold on average
    n_scene = round(0.5 * (lo + hi) * (scene_size / size) ** 2)
    _write_scene(root / "scene", *draw_shapes(rng, "val", scene_size, scene_size, n_scene, scale))
    data = {
        "path": ".",
        "train": "images/train",
        "val": "images/val",
        "nc": len(CLASS_NAMES),
        "names": list(CLASS_NAMES),
    }
    (root / "data.yaml").write_text(yaml.safe_dump(data, sort_keys=False))
    (root / "README.txt").write_text(
        "Rectangles, circles and triangles drawn with skimage.draw on crops of the grass, "
        "gravel and brick photographs bundled with scikit-image, with Gaussian noise.\n"
        f"images/train backgrounds come only from rows 0-{texture_rows('train')[1] - 1} "
        "of each photograph, images/val and scene/ only from the rows below.\n"
        f"Labels are YOLO text files (class cx cy w h, fractions); classes in data.yaml. "
        f"About {BACKGROUND_SHARE:.0%} of the images are background (no label file).\n"
        f"scene/scene.tif is a {scene_size} x {scene_size} GeoTIFF ({SCENE_CRS}, "
        f"{SCENE_PIXEL_SIZE} m pixels); scene/scene_boxes.json holds its boxes in pixels.\n"
        f"Generated by liandan.tasks.detect.demo.make_detect_demo(seed={seed}).\n"
    )
    return root


def predict_scene(run_dir: Path, data_dir: Path) -> tuple[Path | None, dict[str, Any] | None]:
    """Predict the demo's scene sliced and score it against its truth boxes.

    ``data_dir/scene/scene.tif`` goes through the sliced raster path
    (:func:`~liandan.tasks.detect.raster.detect_raster`, the run's ``predict`` settings:
    the demo's ``predict.tile`` is 256, so the 512 px scene is cut into 3 x 3 tiles with
    seams through some shapes) into ``run_dir/predictions`` (``scene.gpkg``,
    ``scene_detections.json``, ``preview/scene.png``: the boxes at or above
    ``predict.score_threshold``). The scene's metrics (``evaluate_detections``, as
    validation computes them: every box down to the detector's score floor for mAP, the
    threshold for precision, recall and F1) are returned, and written to
    ``predictions/scene_metrics.json``.

    Returns:
        The predictions folder and the metrics dict (metrics.json's layout, split
        ``scene``), or ``(None, None)`` where the demo has no scene.
    """
    from liandan.atomic import atomic_write_json
    from liandan.predict_outputs import output_folder
    from liandan.predict_settings import predict_settings
    from liandan.prediction import Predictor
    from liandan.tasks.detect.metrics import Detections, evaluate_detections
    from liandan.tasks.detect.predict import configure_detector
    from liandan.tasks.detect.raster import detect_raster, write_raster_outputs
    from liandan.tasks.detect.task import detection_metrics

    scene = data_dir / "scene" / "scene.tif"
    truth_file = data_dir / "scene" / "scene_boxes.json"
    if not scene.is_file() or not truth_file.is_file():
        return None, None
    truth = json.loads(truth_file.read_text())
    predictor = Predictor.from_run(run_dir, **predict_settings(run_dir))
    threshold = configure_detector(predictor)
    floor = min(threshold, float(predictor.model.built_postprocess[0]))  # type: ignore[index]
    predictor.score_threshold = floor  # every box validation would score
    found = detect_raster(predictor, scene)
    predictor.score_threshold = threshold
    every = found.rows
    out = run_dir / "predictions"
    with output_folder(out, [scene], predictor.task) as folder:
        found.rows = every[every[:, 4] >= threshold]
        write_raster_outputs(found, predictor, folder)
    boxes = np.asarray(truth["boxes"], np.float64).reshape(-1, 4)
    classes = np.asarray(truth["classes"], np.int64)
    k = len(predictor.classes)
    scored = evaluate_detections(
        [Detections(boxes, np.ones(len(boxes)), classes)],
        [Detections(every[:, :4].astype(np.float64), every[:, 4], every[:, 5].astype(np.int64))],
        k,
        score_threshold=threshold,
        max_detections=max(100, len(every)),  # one scene holds many boxes of a class
    )
    metrics = detection_metrics(scored, list(predictor.classes), "scene")
    atomic_write_json(out / "scene_metrics.json", metrics)
    return out, metrics
