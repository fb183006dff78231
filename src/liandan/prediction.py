"""Prediction for images and rasters from a run's ``model/`` bundle.

Segmentation runs at native resolution. An image up to the tile size goes through the
network in one pass (padded to the network stride); anything larger, and every
raster, goes through :func:`liandan.tiling.stream_tiles`: overlapping tiles blended as
probabilities, one band of tile rows in memory at a time, so a raster of any height is
predicted in bounded memory. Output nodata is exactly the input's (nodata value, mask
band or alpha: GDAL's dataset mask). Outputs are in the training masks' values.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from liandan.data.readers import RASTER_EXTS, alpha_bands, band_indexes, read_image, valid_mask
from liandan.data.transforms import Normalizer
from liandan.errors import DataError
from liandan.predict_settings import (
    PRECISIONS,
    check_georeferencing,
    dtype_family,
    inference_dtype,
    predict_settings,
)
from liandan.runs import load_model
from liandan.tasks import get_task
from liandan.tiling import STRIDE, ReadBand, StreamStats, TileGrid, stream_tiles

log = logging.getLogger("liandan")
__all__ = ["PRECISIONS", "Prediction", "Predictor", "dtype_family", "inference_dtype", "predict"]


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
        score_threshold: float = 0.25,
        nms_iou: float | None = None,
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
        self.spec = get_task(self.task)  # what differs between tasks
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
        # the flips training used (model.json of older runs: both, as predict.tta did)
        self.tta_flips = [tuple(d) for d in meta.get("tta_flips", [[3], [2]])]
        if tta and not self.tta_flips:
            log.warning(
                "predict.tta: the model was trained without flips (augment.hflip and "
                "augment.vflip 0), so there is nothing to average: predicting without TTA"
            )
        self.batch_size = batch_size
        # detection: the detections kept (and P/R/F1's threshold), the NMS IoU
        self.score_threshold = score_threshold
        self.nms_iou = nms_iou
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
    def forward_batch(self, batch: np.ndarray) -> np.ndarray:
        """``(B, C, H, W)`` normalized -> ``(B, K, H, W)`` (or ``(B, K)``) probabilities."""
        x = torch.from_numpy(np.ascontiguousarray(batch)).to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        probs = self._probs(x)
        if self.tta and self.tta_flips:  # average over flips, each flipped back first
            for dims in self.tta_flips:
                out = self._probs(torch.flip(x, dims))
                probs += self.spec.merge_flipped(out, dims)
            probs /= 1 + len(self.tta_flips)
        return probs.cpu().numpy()

    def _probs(self, x: torch.Tensor) -> torch.Tensor:
        """Softmax of the network's logits, in float32 whatever the autocast dtype."""
        dtype = self.autocast or torch.float32
        with torch.autocast(self.device.type, dtype=dtype, enabled=self.autocast is not None):
            logits = self.model(x)
        return torch.softmax(logits.float(), dim=1)

    def predict_array(self, image: np.ndarray, path: Path | str = "input") -> np.ndarray:
        """Class probabilities for one raw image: ``(K, H, W)`` or ``(K,)``."""
        return self.spec.predict_array(self, image, path)

    def predict_dense(self, x: np.ndarray, valid: np.ndarray | None = None) -> np.ndarray:
        """In-memory ``(H, W, C)`` normalized -> ``(K, H, W)``: the raster stream over an array."""
        h, w = x.shape[:2]
        out = np.zeros((len(self.classes), h, w), np.float32)

        def read(top: int, left: int, n: int, m: int) -> tuple[np.ndarray, np.ndarray | None]:
            window = np.s_[top : top + n, left : left + m]
            return x[window], None if valid is None else valid[window]

        for top, left, probs, _ in self.stream(read, h, w):
            out[:, top : top + probs.shape[1], left : left + probs.shape[2]] = probs
        return out

    # ---------------------------------------------------------------- streaming
    def stream(
        self, read: ReadBand, height: int, width: int
    ) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
        """:func:`~liandan.tiling.stream_tiles` through this model; fills :attr:`stats`.

        Yields finished windows ``(top, left, probs (K, n, m), valid (n, m))``.
        """
        self.stats = StreamStats()
        grid = TileGrid(self.tile, self.overlap, self.blend, self.batch_size)
        yield from stream_tiles(
            read,
            height,
            width,
            self.forward_batch,
            len(self.classes),
            grid,
            self.stats,
            self.on_tiles,
        )

    def predict_raster(
        self, path: str | Path, writer: Any, rows: tuple[int, int] | None = None
    ) -> StreamStats:
        """Stream a raster through the model into ``writer.write(top, probs, valid, left)``.

        Finished windows arrive in column blocks, each top to bottom (see
        :func:`~liandan.tiling.stream_tiles`). ``rows`` limits it to rows
        ``[start, stop)`` (the model sees nothing outside them); ``top`` is always a row
        of the file.
        """
        from liandan.predict_outputs import open_raster

        path = Path(path)
        with open_raster(path) as src:
            indexes = self.check_raster(src, path)
            width = src.width
            start, stop = rows or (0, src.height)
            read = self.window_reader(src, path, indexes, start)
            for top, left, probs, valid in self.stream(read, stop - start, width):
                writer.write(start + top, probs, valid, left)
        return self.stats

    def window_reader(self, src: Any, path: Path, indexes: list[int], start: int = 0) -> ReadBand:
        """``read(top, left, rows, cols)`` of the open raster ``src``: its bands
        ``indexes`` normalized as in training, nodata pixels set to 0 (the normalized
        mean), and the valid mask; ``top`` counts from row ``start`` of the file."""

        def read(top: int, left: int, n: int, m: int) -> tuple[np.ndarray, np.ndarray]:
            from rasterio.windows import Window

            top += start
            window = Window(left, top, m, n)
            try:
                raw = np.moveaxis(src.read(indexes, window=window), 0, -1)
                # the file's nodata, mask band or alpha, plus data.nodata of training
                valid = valid_mask(src, window, self.meta.get("nodata"))
            except Exception as exc:  # a truncated or corrupt file
                raise DataError(
                    f"cannot read rows {top}-{top + n}, columns {left}-{left + m} "
                    f"({type(exc).__name__}: {exc})",
                    where=path,
                    hint="the file is damaged: check it with gdalinfo -checksum",
                ) from None
            x = self.normalizer(self._bands_like_training(raw))
            x[~valid] = 0.0  # nodata -> the normalized mean, not e.g. -9999 scaled
            return x, valid

        return read

    def check_raster(self, src: Any, path: Path) -> list[int]:
        """Band indexes to read; refuse bands or dtypes unlike training, warn on pixel size."""
        alpha = alpha_bands(src)  # they mark valid pixels (dataset_mask), they are not data
        hint = "predict rasters with the bands the model was trained on"
        indexes = band_indexes(self.bands, src.count, path, hint, alpha)
        expected = int(self.meta["in_channels"])
        if self.bands is None and alpha and len(indexes) < expected == src.count:
            indexes = list(range(1, src.count + 1))  # a model trained with alpha as data
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
        check_georeferencing(src, self.meta, path)  # warns on pixel size, or no CRS
        return indexes

    def predict_file(self, path: str | Path) -> Prediction:
        """Predict one file in memory (see :func:`predict` for rasters of any size)."""
        path = Path(path)
        if path.suffix.lower() in RASTER_EXTS and self.spec.uses_raster_tiles:
            image, valid = _read_raster_with_mask(path, self.bands, self.meta.get("nodata"))
            x = self.prepare(image, path)
            x[~valid] = 0.0
            probs = self.predict_dense(x, valid)
            return Prediction(path, probs, probs.argmax(0), valid)
        image = read_image(path, self.bands)
        probs = self.predict_array(image, path)
        return Prediction(path, probs, self.spec.decide(probs))

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


def _read_raster_with_mask(
    path: Path, bands: list[int] | None, nodata: float | None = None
) -> tuple[np.ndarray, np.ndarray]:
    from liandan.predict_outputs import open_raster

    image = read_image(path, bands)
    with open_raster(path) as src:
        valid = valid_mask(src, None, nodata)  # nodata value, mask band or alpha
    return image, valid


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
    overlap: float | None = None,
    blend: str | None = None,
    tta: bool | None = None,
    batch_size: int | None = None,
    precision: str | None = None,
    score_threshold: float | None = None,
    nms_iou: float | None = None,
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

    ``tile``, ``overlap``, ``blend``, ``tta``, ``batch_size``, ``precision``,
    ``score_threshold`` and ``nms_iou`` left None take the run's ``predict`` section of ``config.yaml`` (the built-in defaults
    without one); given, they win over it.

    Args:
        tile: tile size in pixels (the run's ``predict.tile``, or model.json's).
        overlap: fraction of a tile shared with each neighbour.
        blend: ``gaussian``, ``hann`` or ``none``: how overlapping tiles are weighted.
        tta: average the probabilities over horizontal and vertical flips.
        batch_size: tiles per forward pass.
        probs: rasters also get ``<stem>_probs.tif``, probabilities x 254 as uint8.
        precision: ``auto`` (bf16 or fp16 autocast on a GPU, float32 on the CPU),
            ``32``, ``bf16`` or ``16``.
        score_threshold: detection: the lowest score of a detection kept.
        nms_iou: detection: the IoU of the per-class non-maximum suppression (None:
            the architecture's own).
        vector: ``geojson`` or ``gpkg``: rasters also get polygons with a class name.
        min_area: polygons smaller than this many pixels are left out.
        cog: write Cloud-Optimized GeoTIFFs with overviews.
        progress: show a progress bar (tiles, Mpx/s) on the console.

    >>> liandan.predict("runs/train", ["scene.tif"], out="maps")  # doctest: +SKIP
    """
    from liandan.predict_outputs import (
        RasterWriter,
        list_inputs,
        open_raster,
        output_folder,
        progress_bar,
        write_vectors,
    )

    if isinstance(inputs, str | Path):
        inputs = [inputs]
    if vector not in (None, "geojson", "gpkg"):
        raise DataError(
            f"unknown vector format {vector!r}", where="--vector", hint="geojson or gpkg"
        )
    settings = predict_settings(
        run,
        tile=tile,
        overlap=overlap,
        blend=blend,
        tta=tta,
        batch_size=batch_size,
        precision=precision,
        score_threshold=score_threshold,
        nms_iou=nms_iou,
    )
    predictor = Predictor.from_run(run, **settings)
    files = list_inputs(inputs)
    preds: list[Prediction] = []
    written: list[Path] = []
    # refuses to replace inputs or files liandan did not write; removed again if left empty
    with output_folder(Path(out), files, predictor.task, probs=probs, vector=vector) as out_dir:
        for path in files:
            # a task may predict some rasters its own streamed way (detection: sliced,
            # boxes merged over the raster)
            if predictor.spec.slices_raster(path):
                with progress_bar(predictor, path, enabled=progress):
                    pred, made = predictor.spec.predict_sliced(predictor, path, out_dir)
                preds.append(pred)
                written += made
                continue
            if predictor.spec.uses_raster_tiles and path.suffix.lower() in RASTER_EXTS:
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
            written += predictor.spec.write_prediction(pred, predictor, out_dir)
        written += predictor.spec.write_predictions(preds, predictor, out_dir)
    return PredictResult(out_dir, written, preds)
