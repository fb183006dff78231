"""Prediction for images and rasters from a run's ``model/`` bundle.

Segmentation runs at native resolution. An image up to the tile size goes through the
network in one pass (padded to the network stride); anything larger is cut into
overlapping tiles whose class probabilities are blended with a Gaussian (or Hann)
window — probabilities, never argmax — with the last tile moved back inside the image
rather than padded past it.

Rasters are streamed (:meth:`Predictor.stream`): one band of tile rows is read at a
time (windowed reads, the next band prefetched in a thread while the network runs),
blended into float32 accumulators that hold only the rows still being written, and
every finished block of rows is handed to the writer and dropped. Peak memory is
bounded by ``(tile + 256) x width`` and does not grow with the raster's height. Tiles
entirely nodata are skipped and output nodata is exactly the input's (nodata value,
mask band or alpha: GDAL's dataset mask). Outputs are in the training masks' values.
"""

from __future__ import annotations

import csv
import io
import logging
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image

from liandan.callable_module import make_callable
from liandan.data.readers import IMAGE_EXTS, RASTER_EXTS, band_indexes, read_image, valid_mask
from liandan.data.transforms import Normalizer, eval_resize_crop
from liandan.errors import ConfigError, DataError
from liandan.runs import atomic_write_bytes, atomic_write_text, load_model

log = logging.getLogger("liandan")

STRIDE = 32
FLUSH_ROWS = 256  # rows are written in whole output blocks (the GeoTIFF's 256 px tiles)

PRECISIONS = ("auto", "32", "bf16", "16")

# A band of raw rows: (top row, normalized (n, W, C) float32, valid (n, W) bool or None).
ReadBand = Callable[[int, int], tuple[np.ndarray, np.ndarray | None]]


def blend_window(tile: int, mode: str = "gaussian") -> np.ndarray:
    """1-D blending window of length ``tile``, peak 1: Gaussian (sigma = tile/8), Hann, flat."""
    if mode == "none":
        return np.ones(tile, np.float32)
    if mode == "hann":
        w = np.hanning(tile + 2)[1:-1]  # strictly positive so every pixel gets weight
    else:
        coords = np.arange(tile) - (tile - 1) / 2
        w = np.exp(-(coords**2) / (2 * (tile / 8) ** 2))
    return (w / w.max()).astype(np.float32)


def blend_weights(tile: int, mode: str = "gaussian") -> np.ndarray:
    """``(tile, tile)`` blending window: the outer product of :func:`blend_window`."""
    w = blend_window(tile, mode)
    return np.maximum(np.outer(w, w), 1e-4).astype(np.float32)


def tile_starts(length: int, tile: int, step: int) -> list[int]:
    """Window starts covering ``length``; the last one is moved back inside."""
    if length <= tile:
        return [0]
    starts = list(range(0, length - tile, step))
    starts.append(length - tile)
    return sorted(set(starts))


def pad_tile(x: np.ndarray, height: int, width: int) -> np.ndarray:
    """Pad ``(h, w, C)`` bottom/right to ``(height, width, C)``: reflect, edge when too small."""
    h, w = x.shape[:2]
    ph, pw = height - h, width - w
    if ph == 0 and pw == 0:
        return x
    mode: Any = "reflect" if ph < h and pw < w else "edge"
    return np.pad(x, ((0, ph), (0, pw), (0, 0)), mode=mode)


def dtype_family(dtype: str) -> str:
    """What predict compares with training: float, or the integer bit depth."""
    dt = np.dtype(dtype)
    return "floating point" if dt.kind == "f" else f"{dt.itemsize * 8}-bit integer"


@dataclass
class Prediction:
    """One input's result: class indices (segment) or one label (classify).

    Streamed rasters keep nothing in memory: ``probs`` and ``labels`` are None and
    ``output`` names the written GeoTIFF.
    """

    path: Path
    probs: np.ndarray | None  # (C, H, W) segment, (C,) classify
    labels: np.ndarray | int | None  # (H, W) class indices, or a class index
    valid: np.ndarray | None = None  # (H, W) bool: pixels with data (rasters)
    output: Path | None = None


@dataclass
class StreamStats:
    """What one streamed prediction did; ``peak_rows`` is the accumulators' height."""

    tiles: int = 0
    skipped: int = 0
    peak_rows: int = 0
    buffer_rows: int = 0


class Predictor:
    """Applies a trained model exactly as it was trained: bands, normalization, size.

    >>> predictor = Predictor.from_run("runs/train")  # doctest: +SKIP
    >>> predictor.predict_file("photo.png").labels.shape  # doctest: +SKIP
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
        precision: str = "auto",
    ) -> None:
        self.device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
        self.model = model.to(self.device).eval()
        self.meta = meta
        exported = "export" in meta
        self.autocast = inference_dtype(precision, self.device, exported)
        # NHWC on the GPU, as training: cuDNN's fastest kernels under bf16/fp16
        self.channels_last = self.device.type == "cuda" and not exported
        if self.channels_last:
            self.model.to(memory_format=torch.channels_last)  # type: ignore[call-overload]
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
        self.stats = StreamStats()
        self.on_tiles: Callable[[int, int], None] | None = None  # (tiles done, pixels)

    @classmethod
    def from_run(cls, run: str | Path, **kwargs: Any) -> Predictor:
        model, meta = load_model(run)
        return cls(model, meta, **kwargs)

    # ---------------------------------------------------------------- inputs
    def _bands_like_training(self, image: np.ndarray) -> np.ndarray:
        if self.to_rgb and image.shape[2] != 3:
            image = np.repeat(image, 3, axis=2) if image.shape[2] == 1 else image[:, :, :3]
        return image

    def prepare(self, image: np.ndarray, path: Path | str = "input") -> np.ndarray:
        """Raw ``(H, W, C)`` -> normalized float32 ``(H, W, C)``, checking the bands."""
        image = self._bands_like_training(image)
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
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        probs = self._probs(x)
        if self.tta:  # average over flips; each prediction is flipped back first
            for dims in ((3,), (2,)):
                out = self._probs(torch.flip(x, dims))
                probs += torch.flip(out, dims) if self.task == "segment" else out
            probs /= 3
        return probs.cpu().numpy()

    def _probs(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax of the network's logits, in float32 whatever the autocast dtype."""
        dtype = self.autocast or torch.float32
        with torch.autocast(self.device.type, dtype=dtype, enabled=self.autocast is not None):
            logits = self.model(x)
        return torch.softmax(logits.float(), dim=1)

    def predict_array(self, image: np.ndarray, path: Path | str = "input") -> np.ndarray:
        """Class probabilities for one raw image: ``(K, H, W)`` or ``(K,)``."""
        if self.task == "classify":
            # resize (and centre-crop, with augment.eval_resize) the raw image first,
            # then normalize: the order training's validation used
            raw = eval_resize_crop(image, self.image_size, self.meta.get("eval_resize"))
            x = self.prepare(raw, path)
            return self._forward(x.transpose(2, 0, 1)[None])[0]
        return self._segment(self.prepare(image, path))

    def _segment(self, x: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """In-memory ``(H, W, C)`` normalized -> ``(K, H, W)``: the raster stream over an array."""
        h, w = x.shape[:2]
        out = np.zeros((len(self.classes), h, w), np.float32)

        def read(top: int, n: int) -> tuple[np.ndarray, np.ndarray | None]:
            return x[top : top + n], None if valid is None else valid[top : top + n]

        for top, probs, _ in self.stream(read, h, w):
            out[:, top : top + probs.shape[1]] = probs
        return out

    # ---------------------------------------------------------------- streaming
    def stream(
        self, read: ReadBand, height: int, width: int
    ) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
        """Blend tile probabilities band by band; yield finished rows and drop them.

        Args:
            read: ``read(top, n)`` -> normalized ``(n, width, C)`` and a valid mask or None.
            height, width: the image size.

        Yields:
            ``(top, probs (K, n, width), valid (n, width))`` for finished rows, in order;
            pixels of skipped all-nodata tiles have zero probabilities (and are invalid).
        """
        k = len(self.classes)
        win_h, win_w = min(self.tile, height), min(self.tile, width)
        # tiles smaller than the tile size (small images) are padded to the stride only
        pad_h, pad_w = win_h + (-win_h) % STRIDE, win_w + (-win_w) % STRIDE
        step = max(1, int(self.tile * (1 - self.overlap)))
        rows = tile_starts(height, win_h, step)
        cols = tile_starts(width, win_w, step)
        w1 = blend_window(self.tile, self.blend)
        weight = np.maximum(np.outer(w1[:win_h], w1[:win_w]), 1e-4).astype(np.float32)
        # rows [top, top + cap) are held: a band starts < FLUSH_ROWS below `top`
        cap = min(height, win_h + FLUSH_ROWS)
        acc = np.zeros((k, cap, width), np.float32)  # weighted sum of probabilities
        norm = np.zeros((cap, width), np.float32)  # sum of weights
        valid = np.ones((cap, width), bool)  # pixels with data
        self.stats = StreamStats(buffer_rows=cap)
        top = reached = 0
        with ThreadPoolExecutor(1, thread_name_prefix="liandan-read") as pool:
            pending: Future[Any] | None = pool.submit(read, rows[0], win_h)
            for i, r in enumerate([*rows, height]):
                done = height if r == height else (r // FLUSH_ROWS) * FLUSH_ROWS
                if done > top:  # rows above `done` get no more tiles: hand them out
                    n = done - top
                    probs = acc[:, :n] / np.maximum(norm[:n], 1e-12)
                    yield top, probs, valid[:n].copy()
                    for buf, fill in ((acc[:], 0), (norm[None], 0), (valid[None], True)):
                        buf[:, : cap - n] = buf[:, n:].copy()  # shift up, clear the bottom
                        buf[:, cap - n :] = fill
                    top = done
                if pending is None:
                    break
                band, band_valid = pending.result()
                nxt = rows[i + 1] if i + 1 < len(rows) else None
                pending = pool.submit(read, nxt, win_h) if nxt is not None else None
                self.stats.peak_rows = max(self.stats.peak_rows, r + win_h - top)
                if band_valid is not None:
                    valid[r - top : r - top + win_h] = band_valid
                sizes = (win_w, pad_h, pad_w)
                self._blend_band(band, band_valid, r - top, cols, sizes, weight, acc, norm)
                if self.on_tiles is not None:  # progress: tiles, and raster pixels now done
                    self.on_tiles(len(cols), (r + win_h - reached) * width)
                reached = r + win_h

    def _blend_band(
        self,
        band: np.ndarray,
        valid: np.ndarray | None,
        row: int,
        cols: list[int],
        sizes: tuple[int, int, int],
        weight: np.ndarray,
        acc: np.ndarray,
        norm: np.ndarray,
    ) -> None:
        """Predict the tiles of one band ``(win_h, W, C)`` and add them at buffer ``row``."""
        win_w, pad_h, pad_w = sizes
        win_h = band.shape[0]
        todo = [c for c in cols if valid is None or valid[:, c : c + win_w].any()]
        self.stats.skipped += len(cols) - len(todo)
        for chunk in _chunks(todo, self.batch_size):
            batch = np.stack(
                [pad_tile(band[:, c : c + win_w], pad_h, pad_w).transpose(2, 0, 1) for c in chunk]
            )
            probs = self._forward(batch)[:, :, :win_h, :win_w]
            for c, p in zip(chunk, probs, strict=True):
                acc[:, row : row + win_h, c : c + win_w] += p * weight
                norm[row : row + win_h, c : c + win_w] += weight
        self.stats.tiles += len(todo)

    def predict_raster(
        self, path: str | Path, writer: Any, rows: tuple[int, int] | None = None
    ) -> StreamStats:
        """Stream a raster through the model into ``writer.write(top, probs, valid)``.

        ``rows`` limits it to rows ``[start, stop)`` (the model sees nothing outside
        them); ``top`` is always a row of the file.
        """
        from liandan.predict_outputs import open_raster

        path = Path(path)
        with open_raster(path) as src:
            indexes = self.check_raster(src, path)
            width = src.width
            start, stop = rows or (0, src.height)

            def read(top: int, n: int) -> tuple[np.ndarray, np.ndarray]:
                from rasterio.windows import Window

                top += start
                window = Window(0, top, width, n)
                try:
                    raw = np.moveaxis(src.read(indexes, window=window), 0, -1)
                    # the file's nodata, mask band or alpha, plus data.nodata of training
                    valid = valid_mask(src, window, self.meta.get("nodata"))
                except Exception as exc:  # a truncated or corrupt file
                    raise DataError(
                        f"cannot read rows {top}-{top + n} ({type(exc).__name__}: {exc})",
                        where=path,
                        hint="the file is damaged: check it with gdalinfo -checksum",
                    ) from None
                x = self.normalizer(self._bands_like_training(raw))
                x[~valid] = 0.0  # nodata -> the normalized mean, not e.g. -9999 scaled
                return x, valid

            for top, probs, valid in self.stream(read, stop - start, width):
                writer.write(start + top, probs, valid)
        return self.stats

    def check_raster(self, src: Any, path: Path) -> list[int]:
        """Band indexes to read; refuse bands or dtypes unlike training, warn on pixel size."""
        indexes = band_indexes(
            self.bands,
            src.count,
            path,
            hint="predict rasters with the bands the model was trained on",
        )
        expected = int(self.meta["in_channels"])
        if self.bands is None and len(indexes) == expected + 1 and _is_alpha(src, indexes[-1]):
            # an alpha band marks valid pixels (read through dataset_mask), it is not data
            indexes = indexes[:-1]
        n = 3 if self.to_rgb and len(indexes) in (1, 3, 4) else len(indexes)
        if n != expected:
            raise DataError(
                f"the raster has {n} band(s) but the model was trained on {expected}",
                where=path,
                hint="predict rasters like the training ones (same bands, same order)",
            )
        trained = self.meta.get("dtype")
        dtype = src.dtypes[indexes[0] - 1]
        if trained and dtype_family(dtype) != dtype_family(trained):
            raise DataError(
                f"the raster is {dtype} ({dtype_family(dtype)}) but the model was trained on "
                f"{trained} ({dtype_family(trained)}) images",
                where=path,
                hint="convert the raster to the training data type and scale first",
            )
        size = self.meta.get("pixel_size")
        if size and src.crs is not None:
            ratio = abs(src.transform.a) / float(size[0])
            if ratio > 2 or ratio < 0.5:
                log.warning(
                    "%s: pixel size %.4g differs from training (%.4g) by %.1fx; the model "
                    "sees objects at another scale",
                    path,
                    abs(src.transform.a),
                    float(size[0]),
                    max(ratio, 1 / ratio),
                )
        return indexes

    def predict_file(self, path: str | Path) -> Prediction:
        """Predict one file in memory (see :func:`predict` for rasters of any size)."""
        path = Path(path)
        if path.suffix.lower() in RASTER_EXTS and self.task == "segment":
            image, valid = _read_raster_with_mask(path, self.bands, self.meta.get("nodata"))
            x = self.prepare(image, path)
            x[~valid] = 0.0
            probs = self._segment(x, valid)
            return Prediction(path, probs, probs.argmax(0), valid)
        image = read_image(path, self.bands)
        probs = self.predict_array(image, path)
        labels = int(probs.argmax()) if self.task == "classify" else probs.argmax(0)
        return Prediction(path, probs, labels)

    # ---------------------------------------------------------------- outputs
    @property
    def out_dtype(self) -> type[np.unsignedinteger]:
        return np.uint8 if max(self.values) <= 254 else np.uint16

    def to_values(self, labels: np.ndarray) -> np.ndarray:
        """Class indices -> the raw mask values the training masks used."""
        return np.asarray(self.values, dtype=self.out_dtype)[labels]

    def preview(self, labels: np.ndarray) -> np.ndarray:
        palette = np.asarray(self.colors or [(0, 0, 0)] * len(self.classes), dtype=np.uint8)
        return palette[labels]


def inference_dtype(
    precision: str, device: torch.device, exported: bool = False
) -> torch.dtype | None:
    """The autocast dtype prediction runs under, or None for float32.

    ``auto``: bf16 on a GPU that supports it, else fp16 there (inference has no
    gradients to underflow, so no loss scaling is needed); float32 on the CPU, whose
    bf16 kernels are slower than float32 ones on most processors. An export always runs
    as exported (ONNX Runtime and TorchScript graphs carry their own types).
    """
    if precision not in PRECISIONS:
        raise ConfigError(
            f"unknown precision {precision!r}",
            where="predict.precision",
            hint=" | ".join(PRECISIONS),
        )
    if exported or precision == "32" or (precision == "auto" and device.type != "cuda"):
        return None
    if precision == "16" and device.type != "cuda":
        raise ConfigError(
            "fp16 prediction needs a GPU", where="predict.precision", hint="bf16 or 32 on the CPU"
        )
    if precision == "auto":
        return torch.bfloat16 if torch.cuda.is_bf16_supported() else torch.float16
    return torch.bfloat16 if precision == "bf16" else torch.float16


def _chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    for i in range(0, len(items), size):
        yield items[i : i + size]


def _read_raster_with_mask(
    path: Path, bands: list[int] | None, nodata: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    from liandan.predict_outputs import open_raster

    image = read_image(path, bands)
    with open_raster(path) as src:
        valid = valid_mask(src, None, nodata)  # nodata value, mask band or alpha
    return image, valid


def write_prediction(pred: Prediction, predictor: Predictor, out_dir: Path) -> Path:
    """Write an in-memory prediction: the class-value mask (PNG, or GeoTIFF for rasters)."""
    labels = np.asarray(pred.labels)
    (out_dir / "preview").mkdir(parents=True, exist_ok=True)
    preview = predictor.preview(labels)
    if pred.valid is not None:
        preview[~pred.valid] = 0
    buf = io.BytesIO()
    Image.fromarray(preview).save(buf, format="PNG")
    atomic_write_bytes(out_dir / "preview" / f"{pred.path.stem}.png", buf.getvalue())
    if pred.path.suffix.lower() in RASTER_EXTS:
        from liandan.predict_outputs import RasterWriter, open_raster

        target = out_dir / f"{pred.path.stem}.tif"
        with open_raster(pred.path) as src, RasterWriter(src, predictor, target) as writer:
            assert pred.probs is not None
            valid = pred.valid if pred.valid is not None else np.ones(labels.shape, bool)
            writer.write(0, pred.probs, valid)
        return target
    target = out_dir / f"{pred.path.stem}.png"
    buf = io.BytesIO()
    Image.fromarray(predictor.to_values(labels)).save(buf, format="PNG")
    atomic_write_bytes(target, buf.getvalue())
    return target


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
        assert p.labels is not None and p.probs is not None
        label = predictor.classes[int(p.labels)]  # type: ignore[arg-type]
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
    precision: str = "auto",
    probs: bool = False,
    vector: str | None = None,
    min_area: float = 0.0,
    cog: bool = False,
    progress: bool = False,
) -> PredictResult:
    """Predict images, folders or rasters with a run's model and write the outputs.

    Segmentation writes ``out/<stem>.png`` holding class values (``.tif`` for rasters:
    streamed in bounded memory, georeferenced, nodata 255 or 65535) and
    ``out/preview/<stem>.png``; classification writes ``out/predictions.csv``
    (``image,label,prob_<class>...``).

    Args:
        probs: rasters also get ``<stem>_probs.tif``, probabilities x 254 as uint8.
        precision: ``auto`` (bf16 or fp16 autocast on a GPU, float32 on the CPU),
            ``32``, ``bf16`` or ``16``.
        vector: ``geojson`` or ``gpkg``: rasters also get polygons with a class name.
        min_area: polygons smaller than this many pixels are left out.
        cog: write Cloud-Optimized GeoTIFFs with overviews.
        progress: show a progress bar (tiles, Mpx/s) on the console.

    >>> liandan.predict("runs/train", ["scene.tif"], out="maps")  # doctest: +SKIP
    """
    from liandan.predict_outputs import RasterWriter, open_raster, progress_bar, write_vectors

    if isinstance(inputs, str | Path):
        inputs = [inputs]
    if vector not in (None, "geojson", "gpkg"):
        raise DataError(
            f"unknown vector format {vector!r}", where="--vector", hint="geojson or gpkg"
        )
    predictor = Predictor.from_run(
        run,
        tile=tile,
        overlap=overlap,
        blend=blend,
        tta=tta,
        batch_size=batch_size,
        precision=precision,
    )
    files = list_inputs(inputs)
    out_dir = Path(out)
    out_dir.mkdir(parents=True, exist_ok=True)
    preds: list[Prediction] = []
    written: list[Path] = []
    for path in files:
        if predictor.task == "segment" and path.suffix.lower() in RASTER_EXTS:
            target = out_dir / f"{path.stem}.tif"
            probs_path = out_dir / f"{path.stem}_probs.tif" if probs else None
            with open_raster(path) as src:
                writer = RasterWriter(src, predictor, target, probs_path=probs_path, cog=cog)
            with writer, progress_bar(predictor, path, enabled=progress):
                predictor.predict_raster(path, writer)
            written += [target, *([probs_path] if probs_path else [])]
            if vector:
                written.append(write_vectors(target, predictor, vector, min_area))
            preds.append(Prediction(path, None, None, output=target))
            continue
        pred = predictor.predict_file(path)
        preds.append(pred)
        if predictor.task == "segment":
            written.append(write_prediction(pred, predictor, out_dir))
    if predictor.task == "classify":
        write_predictions_csv(preds, predictor, out_dir / "predictions.csv")
        written.append(out_dir / "predictions.csv")
    return PredictResult(out_dir, written, preds)


def _is_alpha(src: Any, band: int) -> bool:
    """Whether a band of an open rasterio dataset is an alpha (transparency) band."""
    from rasterio.enums import ColorInterp

    try:
        return bool(src.colorinterp[band - 1] == ColorInterp.alpha)
    except (IndexError, ValueError):
        return False


make_callable(__name__, "predict")  # liandan.predict(...) calls predict() even once imported
