"""Prediction for images and rasters from a run's ``model/`` bundle.

Segmentation runs on the native resolution: images up to the tile size in one pass
(padded to the network stride), larger ones in overlapping tiles whose class
probabilities are blended with a Gaussian (or Hann) window — probabilities, never
argmax — with the last tile moved back inside the image rather than padded past it.
Outputs are written in the training masks' value space.
"""

from __future__ import annotations

import csv
import io
import warnings
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import cv2
import numpy as np
import torch
from PIL import Image

from liandan.data.readers import IMAGE_EXTS, RASTER_EXTS, read_image
from liandan.data.transforms import Normalizer
from liandan.errors import DataError
from liandan.runs import atomic_write_bytes, atomic_write_text, load_model

STRIDE = 32


def blend_weights(tile: int, mode: str = "gaussian") -> np.ndarray:
    """``(tile, tile)`` blending window: Gaussian with sigma = tile/8, Hann, or flat."""
    if mode == "none":
        return np.ones((tile, tile), np.float32)
    if mode == "hann":
        w = np.hanning(tile + 2)[1:-1]  # strictly positive so every pixel gets weight
    else:
        coords = np.arange(tile) - (tile - 1) / 2
        w = np.exp(-(coords**2) / (2 * (tile / 8) ** 2))
    w2 = np.outer(w, w).astype(np.float32)
    return np.maximum(w2 / w2.max(), 1e-4).astype(np.float32)


def tile_starts(length: int, tile: int, step: int) -> list[int]:
    """Window starts covering ``length``; the last one is moved back inside."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)
    return sorted(set(starts))


@dataclass
class Prediction:
    """One input's result: class indices (segment) or one label (classify)."""

    path: Path
    probs: np.ndarray  # (C, H, W) segment, (C,) classify
    labels: np.ndarray | int  # (H, W) class indices, or a class index
    valid: np.ndarray | None = None  # (H, W) bool: pixels with data (rasters)


class Predictor:
    """Applies a trained model exactly as it was trained: bands, normalization, size.

    >>> predictor = Predictor.from_run("runs/train")  # doctest: +SKIP
    >>> predictor.predict_file("scene.tif").labels.shape  # doctest: +SKIP
    (1024, 1024)
    """

    def __init__(
        self,
        model: torch.nn.Module,
        meta: dict[str, Any],
        *,
        device: str | None = None,
        tile: int | None = None,
        overlap: float = 0.25,
        blend: str = "gaussian",
        tta: bool = False,
        batch_size: int = 8,
    ) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        self.meta = meta
        self.task = meta["task"]
        self.classes: list[str] = list(meta["classes"])
        self.values: list[int] = list(meta.get("values") or range(len(self.classes)))
        self.colors = [tuple(c) for c in meta.get("colors") or []]
        self.normalizer = Normalizer.from_dict(meta["normalization"])
        self.bands = meta.get("bands")
        self.to_rgb = bool(meta.get("to_rgb"))
        self.image_size = int(meta.get("image_size", 256))
        self.tile = int(tile or meta.get("tile_size", 512))
        self.tile += (-self.tile) % STRIDE
        self.overlap = overlap
        self.blend = blend
        self.tta = tta
        self.batch_size = batch_size

    @classmethod
    def from_run(cls, run: str | Path, **kwargs: Any) -> Predictor:
        model, meta = load_model(run)
        return cls(model, meta, **kwargs)

    # ---------------------------------------------------------------- inputs
    def prepare(self, image: np.ndarray, path: Path | str = "input") -> np.ndarray:
        """Raw ``(H, W, C)`` -> normalized float32 ``(H, W, C)``, checking the bands."""
        if self.to_rgb and image.shape[2] != 3:
            image = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[:, :, :3]
        expected = int(self.meta["in_channels"])
        if image.shape[2] != expected:
            raise DataError(
                f"the image has {image.shape[2]} band(s) but the model was trained on {expected}",
                where=path,
                hint="predict images like the training ones (same bands, same order)",
            )
        return self.normalizer(image)

    @torch.no_grad()
    def _forward(self, batch: np.ndarray) -> np.ndarray:
        """``(B, C, H, W)`` normalized -> ``(B, K, H, W)`` (or ``(B, K)``) probabilities."""
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
        probs = torch.softmax(self.model(x).float(), dim=1)
        if self.tta:  # average over flips; each prediction is flipped back first
            for dims in ((3,), (2,)):
                out = torch.softmax(self.model(torch.flip(x, dims)).float(), dim=1)
                probs += torch.flip(out, dims) if self.task == "segment" else out
            probs /= 3
        return probs.cpu().numpy()

    def predict_array(self, image: np.ndarray, path: Path | str = "input") -> np.ndarray:
        """Class probabilities for one raw image: ``(K, H, W)`` or ``(K,)``."""
        if self.task == "classify":
            # resize the raw image first, then normalize: the order training used
            size = self.image_size
            raw = cv2.resize(image.astype(np.float32), (size, size), interpolation=cv2.INTER_AREA)
            if raw.ndim == 2:
                raw = raw[:, :, None]
            x = self.prepare(raw, path)
            return self._forward(x.transpose(2, 0, 1)[None])[0]
        return self._segment(self.prepare(image, path))

    def _segment(self, x: np.ndarray) -> np.ndarray:
        h, w = x.shape[:2]
        tile = self.tile
        if max(h, w) <= tile:
            ph, pw = (-h) % STRIDE, (-w) % STRIDE
            mode: Any = "reflect" if ph < h and pw < w else "edge"
            padded = np.pad(x, ((0, ph), (0, pw), (0, 0)), mode=mode)
            return self._forward(padded.transpose(2, 0, 1)[None])[0][:, :h, :w]
        # sliding window over an image larger than one tile
        if min(h, w) < tile:
            ph, pw = max(0, tile - h), max(0, tile - w)
            x = np.pad(x, ((0, ph), (0, pw), (0, 0)), mode="reflect")
        H, W = x.shape[:2]
        step = max(1, int(tile * (1 - self.overlap)))
        weight = blend_weights(tile, self.blend)
        acc = np.zeros((len(self.classes), H, W), np.float32)
        norm = np.zeros((H, W), np.float32)
        windows = [(r, c) for r in tile_starts(H, tile, step) for c in tile_starts(W, tile, step)]
        for chunk in _chunks(windows, self.batch_size):
            batch = np.stack([x[r : r + tile, c : c + tile].transpose(2, 0, 1) for r, c in chunk])
            probs = self._forward(batch)
            for (r, c), p in zip(chunk, probs, strict=True):
                acc[:, r : r + tile, c : c + tile] += p * weight
                norm[r : r + tile, c : c + tile] += weight
        return (acc / norm)[:, :h, :w]

    def predict_file(self, path: str | Path) -> Prediction:
        path = Path(path)
        valid = None
        if path.suffix.lower() in RASTER_EXTS:
            image, valid = _read_raster_with_mask(path, self.bands)
        else:
            image = read_image(path, self.bands)
        probs = self.predict_array(image, path)
        labels = int(probs.argmax()) if self.task == "classify" else probs.argmax(0)
        return Prediction(path, probs, labels, valid)

    # ---------------------------------------------------------------- outputs
    def to_values(self, labels: np.ndarray) -> np.ndarray:
        """Class indices -> the raw mask values the training masks used."""
        dtype = np.uint8 if max(self.values) <= 254 else np.uint16
        return np.asarray(self.values, dtype=dtype)[labels]

    def preview(self, labels: np.ndarray) -> np.ndarray:
        palette = np.asarray(self.colors or [(0, 0, 0)] * len(self.classes), dtype=np.uint8)
        return palette[labels]


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _read_raster_with_mask(path: Path, bands: list[int] | None) -> tuple[np.ndarray, np.ndarray]:
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    image = read_image(path, bands)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            valid = src.dataset_mask() > 0  # nodata value, mask band or alpha
    return image, valid


def write_prediction(pred: Prediction, predictor: Predictor, out_dir: Path) -> Path:
    """Write the class-value mask (PNG, or GeoTIFF for TIFF inputs) and its preview."""
    labels = np.asarray(pred.labels)
    values = predictor.to_values(labels)
    (out_dir / "preview").mkdir(parents=True, exist_ok=True)
    preview = predictor.preview(labels)
    if pred.valid is not None:
        preview[~pred.valid] = 0
    buf = io.BytesIO()
    Image.fromarray(preview).save(buf, format="PNG")
    atomic_write_bytes(out_dir / "preview" / f"{pred.path.stem}.png", buf.getvalue())
    if pred.path.suffix.lower() in RASTER_EXTS:
        target = out_dir / f"{pred.path.stem}.tif"
        _write_geotiff(pred, predictor, values, target)
        return target
    target = out_dir / f"{pred.path.stem}.png"
    buf = io.BytesIO()
    Image.fromarray(values).save(buf, format="PNG")
    atomic_write_bytes(target, buf.getvalue())
    return target


def _write_geotiff(
    pred: Prediction, predictor: Predictor, values: np.ndarray, target: Path
) -> None:
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    nodata = 255 if values.dtype == np.uint8 else 65535
    if pred.valid is not None:
        values = values.copy()
        values[~pred.valid] = nodata
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(pred.path) as src:
            crs, transform = src.crs, src.transform
        h, w = values.shape
        profile = dict(
            driver="GTiff",
            height=h,
            width=w,
            count=1,
            dtype=values.dtype.name,
            crs=crs,
            transform=transform,
            nodata=nodata,
            compress="deflate",
            tiled=h >= 256 and w >= 256,
            blockxsize=256,
            blockysize=256,
        )
        if not profile["tiled"]:
            profile.pop("blockxsize")
            profile.pop("blockysize")
        tmp = target.with_name(f".{target.name}.tmp")
        with rasterio.open(tmp, "w", **profile) as dst:
            dst.write(values, 1)
            if values.dtype == np.uint8:
                cmap = {
                    v: (*c, 255) for v, c in zip(predictor.values, predictor.colors, strict=False)
                }
                dst.write_colormap(1, cmap)
            dst.update_tags(1, classes=",".join(predictor.classes))
        tmp.replace(target)


def list_inputs(inputs: Sequence[str | Path]) -> list[Path]:
    """Expand folders into their image files (sorted); files are taken as given."""
    files: list[Path] = []
    for item in inputs:
        p = Path(item)
        if p.is_dir():
            files += sorted(
                f for f in p.iterdir() if f.is_file() and f.suffix.lower() in IMAGE_EXTS
            )
        elif p.is_file():
            files.append(p)
        else:
            raise DataError("input not found", where=p, hint="give image files or folders")
    if not files:
        raise DataError("no images to predict", where=", ".join(map(str, inputs)))
    return files


def write_predictions_csv(preds: list[Prediction], predictor: Predictor, path: Path) -> None:
    buf = io.StringIO()
    writer = csv.writer(buf)
    writer.writerow(["image", "label", *[f"prob_{c}" for c in predictor.classes]])
    for p in preds:
        label = predictor.classes[int(p.labels)]
        writer.writerow([str(p.path), label, *[f"{v:.6f}" for v in p.probs.tolist()]])
    atomic_write_text(path, buf.getvalue())


@dataclass
class PredictResult:
    """What ``predict`` returns: the written files and the per-input predictions."""

    out_dir: Path
    files: list[Path]
    predictions: list[Prediction]


def predict(
    run: str | Path,
    inputs: Sequence[str | Path] | str | Path,
    *,
    out: str | Path = "predictions",
    tile: int | None = None,
    overlap: float = 0.25,
    blend: str = "gaussian",
    tta: bool = False,
    batch_size: int = 8,
) -> PredictResult:
    """Predict images, folders or rasters with a run's model and write the outputs.

    Segmentation writes ``out/<stem>.png`` (``.tif`` for TIFF inputs, georeferenced)
    holding class values, and ``out/preview/<stem>.png``; classification writes
    ``out/predictions.csv`` (``image,label,prob_<class>...``).

    >>> liandan.predict("runs/train", ["scene.tif"], out="maps")  # doctest: +SKIP
    """
    if isinstance(inputs, str | Path):
        inputs = [inputs]
    predictor = Predictor.from_run(
        run, tile=tile, overlap=overlap, blend=blend, tta=tta, batch_size=batch_size
    )
    files = list_inputs(inputs)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    preds: list[Prediction] = []
    written: list[Path] = []
    for path in files:
        pred = predictor.predict_file(path)
        preds.append(pred)
        if predictor.task == "segment":
            written.append(write_prediction(pred, predictor, out_dir))
    if predictor.task == "classify":
        write_predictions_csv(preds, predictor, out_dir / "predictions.csv")
        written.append(out_dir / "predictions.csv")
    return PredictResult(out_dir, written, preds)
