"""predict's outputs: class GeoTIFF (streamed), probabilities, previews, polygons, masks, CSV.

:class:`RasterWriter` receives finished row blocks from :meth:`Predictor.stream` and
writes them straight to a tiled, deflate-compressed GeoTIFF with the input's CRS and
transform, so nothing raster-sized is ever held in memory (the preview is decimated
to at most ``PREVIEW_MAX`` pixels a side as rows go by).
"""

from __future__ import annotations

import contextlib
import csv
import io
import json
import math
import time
import warnings
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image

from liandan.data.readers import IMAGE_EXTS, RASTER_EXTS
from liandan.errors import DataError, OutputError
from liandan.runs import atomic_write_bytes, atomic_write_text, output_files
from liandan.tasks import get_task

if TYPE_CHECKING:
    from liandan.prediction import Prediction, Predictor

PREVIEW_MAX = 2048  # longest side of the colour preview PNG
# GDAL's block cache holds written and read blocks; capped so it cannot grow with the
# raster (the default is 5% of RAM). Rows are read and written once, so little is lost.
GDAL_CACHE_MB = 64


@contextlib.contextmanager
def output_folder(
    out_dir: Path,
    files: Sequence[Path],
    task: str,
    *,
    probs: bool = False,
    vector: str | None = None,
) -> Iterator[Path]:
    """Create ``out_dir`` for predicting ``files``, after checking that no output would
    replace an input or a file liandan did not write, and that ``out_dir`` is not the
    folder of an input. If predict fails before writing anything into a folder it
    created, the folder is removed again (a folder you had stays)."""
    mixed = sorted({f.parent for f in files if _same_folder(f.parent, out_dir)})
    if mixed:
        raise OutputError(
            "--out is the folder of the inputs: predictions would be mixed with them "
            "(and could replace them)",
            where=out_dir,
            hint=f"give another folder, e.g. --out {out_dir.resolve().parent / 'predictions'}",
        )
    # every file predict writes for the inputs, and the input each comes from
    targets, sources = get_task(task).planned_outputs(files, out_dir, probs, vector)
    with output_files(out_dir, targets, sources=sources, inputs=files) as folder:
        yield folder


def _same_folder(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (b.exists() and a.samefile(b))
    except OSError:
        return False


@contextlib.contextmanager
def open_raster(path: Path) -> Iterator[Any]:
    """Open a raster with rasterio, reporting failures as a DataError naming the file."""
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        try:
            src = rasterio.open(path)
        except Exception as exc:
            raise DataError(
                f"cannot open raster ({type(exc).__name__}: {exc})",
                where=path,
                hint="check the file with gdalinfo",
            ) from None
        with src:
            yield src


class RasterWriter:
    """Writes finished windows of class probabilities as class values (and optional extras).

    Args:
        src: the open input raster (its size, CRS and transform are copied).
        predictor: gives the class values, colours and names.
        target: the class GeoTIFF; ``<parent>/preview/<stem>.png`` is written beside it.
        probs_path: also write probabilities, ``round(p x 254)`` as uint8, nodata 255.
        cog: convert the outputs to Cloud-Optimized GeoTIFFs with overviews at the end.
    """

    def __init__(
        self,
        src: Any,
        predictor: Predictor,
        target: Path,
        *,
        probs_path: Path | None = None,
        cog: bool = False,
    ) -> None:
        self.predictor = predictor
        self.target = target
        self.probs_path = probs_path
        self.cog = cog
        self.height, self.width = src.height, src.width
        self.crs, self.transform = src.crs, src.transform
        self.dtype = predictor.out_dtype
        self.nodata = 255 if self.dtype == np.uint8 else 65535
        self.lut = np.asarray(predictor.values, dtype=self.dtype)
        self.step = max(1, math.ceil(max(self.height, self.width) / PREVIEW_MAX))
        # every step-th row and column, filled window by window (at most PREVIEW_MAX a side)
        shape = (-(-self.height // self.step), -(-self.width // self.step), 3)
        self.preview = np.zeros(shape, np.uint8)
        self.written = 0  # pixels written, to tell a finished raster from an empty one
        self._stack = contextlib.ExitStack()
        self._dst: Any = None
        self._probs: Any = None

    def _profile(self, count: int, dtype: str, nodata: int) -> dict[str, Any]:
        tiled = self.height >= 256 and self.width >= 256
        profile: dict[str, Any] = dict(
            driver="GTiff",
            height=self.height,
            width=self.width,
            count=count,
            dtype=dtype,
            crs=self.crs,
            transform=self.transform,
            nodata=nodata,
            compress="deflate",
            tiled=tiled,
            BIGTIFF="IF_SAFER",
        )
        if tiled:
            profile.update(blockxsize=256, blockysize=256)
        return profile

    def __enter__(self) -> RasterWriter:
        import rasterio
        from rasterio.errors import NotGeoreferencedWarning

        stack = self._stack
        stack.enter_context(rasterio.Env(GDAL_CACHEMAX=GDAL_CACHE_MB))
        stack.enter_context(warnings.catch_warnings())
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        self.target.parent.mkdir(parents=True, exist_ok=True)
        tmp = _tmp(self.target)
        self._dst = stack.enter_context(
            rasterio.open(tmp, "w", **self._profile(1, np.dtype(self.dtype).name, self.nodata))
        )
        if self.dtype == np.uint8 and self.predictor.colors:
            colors = zip(self.predictor.values, self.predictor.colors, strict=False)
            self._dst.write_colormap(1, {v: (*c, 255) for v, c in colors})
        self._dst.update_tags(1, classes=",".join(self.predictor.classes))
        if self.probs_path is not None:
            k = len(self.predictor.classes)
            self._probs = stack.enter_context(
                rasterio.open(_tmp(self.probs_path), "w", **self._profile(k, "uint8", 255))
            )
            self._probs.update_tags(scale=str(1 / 254), classes=",".join(self.predictor.classes))
            for i, name in enumerate(self.predictor.classes, start=1):
                self._probs.set_band_description(i, name)
        return self

    def write(self, top: int, probs: np.ndarray, valid: np.ndarray, left: int = 0) -> None:
        """Write the window at row ``top``, column ``left`` from ``probs (K, n, m)`` and
        ``valid (n, m)``; windows may come in any order (whole rows: ``left`` 0)."""
        from rasterio.windows import Window

        n, m = probs.shape[1:]
        window = Window(left, top, m, n)
        labels = probs.argmax(0)
        values = self.lut[labels]
        values[~valid] = self.nodata
        self._dst.write(values, 1, window=window)
        if self._probs is not None:
            q = np.rint(probs * 254).astype(np.uint8)
            q[:, ~valid] = 255
            self._probs.write(q, window=window)
        # the preview keeps every step-th row and column of the raster: the first such
        # row and column in this window, and where they land in the preview
        r0, c0 = (-top) % self.step, (-left) % self.step
        if r0 < n and c0 < m:
            kept = np.s_[r0 :: self.step, c0 :: self.step]
            preview = self.predictor.preview(labels[kept])
            preview[~valid[kept]] = 0
            y, x = (top + r0) // self.step, (left + c0) // self.step
            self.preview[y : y + preview.shape[0], x : x + preview.shape[1]] = preview
        self.written += n * m

    def __exit__(self, *exc: Any) -> None:
        self._stack.close()
        if exc[0] is not None:
            for path in (self.target, self.probs_path):
                if path is not None:
                    _tmp(path).unlink(missing_ok=True)
            return
        for path in (self.target, self.probs_path):
            if path is None:
                continue
            if self.cog:
                _to_cog(_tmp(path), path)
            else:
                _tmp(path).replace(path)
        if self.written:
            buf = io.BytesIO()
            Image.fromarray(self.preview).save(buf, format="PNG")
            preview_dir = self.target.parent / "preview"
            preview_dir.mkdir(parents=True, exist_ok=True)
            atomic_write_bytes(preview_dir / f"{self.target.stem}.png", buf.getvalue())


def _tmp(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp")


def _to_cog(tmp: Path, target: Path) -> None:
    """GeoTIFF -> Cloud-Optimized GeoTIFF (nearest-neighbour overviews keep class values)."""
    import rasterio.shutil

    part = target.with_name(f".{target.name}.cog")
    rasterio.shutil.copy(tmp, part, driver="COG", COMPRESS="DEFLATE", OVERVIEW_RESAMPLING="NEAREST")
    tmp.unlink()
    part.replace(target)


@contextlib.contextmanager
def progress_bar(predictor: Predictor, path: Path, *, enabled: bool) -> Iterator[None]:
    """A rich progress bar over tiles with the throughput in Mpx/s (console only)."""
    if not enabled:
        yield
        return
    from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

    with open_raster(path) as src:
        height, width = src.height, src.width
    from liandan.tiling import tile_starts

    tile = predictor.tile
    step = max(1, int(tile * (1 - predictor.overlap)))
    total = len(tile_starts(height, min(tile, height), step)) * len(
        tile_starts(width, min(tile, width), step)
    )
    start = time.perf_counter()
    done_px = [0]
    columns = (
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total} tiles"),
        TextColumn("{task.fields[rate]:.2f} Mpx/s"),
        TimeRemainingColumn(),
    )
    with Progress(*columns, transient=False) as bar:
        task = bar.add_task(path.name, total=total, rate=0.0)

        def advance(tiles: int, pixels: int) -> None:
            done_px[0] += pixels
            rate = done_px[0] / 1e6 / max(time.perf_counter() - start, 1e-9)
            bar.update(task, advance=tiles, rate=rate)

        predictor.on_tiles = advance
        try:
            yield
        finally:
            predictor.on_tiles = None


def write_vectors(classes_tif: Path, predictor: Predictor, fmt: str, min_area: float) -> Path:
    """Polygons of the class raster (one per connected region) with their class name.

    The class raster is read whole (1 or 2 bytes per pixel) for ``rasterio.features.shapes``;
    polygons smaller than ``min_area`` pixels are left out; nodata makes no polygon.
    """
    from rasterio.features import shapes

    with open_raster(classes_tif) as src:
        values = src.read(1)
        valid = values != src.nodata
        transform, crs = src.transform, src.crs
    names = dict(zip(predictor.values, predictor.classes, strict=False))
    pixel_area = abs(transform.a * transform.e - transform.b * transform.d) or 1.0
    features = []
    for geom, value in shapes(values, mask=valid, transform=transform):
        area = _polygon_area(geom["coordinates"]) / pixel_area
        if area < min_area:
            continue
        props = {"class": names.get(int(value), str(int(value))), "value": int(value)}
        props["area_px"] = round(area, 2)
        features.append({"type": "Feature", "geometry": geom, "properties": props})
    target = classes_tif.with_suffix(".geojson" if fmt == "geojson" else ".gpkg")
    if fmt == "geojson":
        collection: dict[str, Any] = {"type": "FeatureCollection", "features": features}
        if crs is not None and crs.to_epsg():
            collection["crs"] = {"type": "name", "properties": {"name": f"EPSG:{crs.to_epsg()}"}}
        atomic_write_text(target, json.dumps(collection))
        return target
    try:
        import fiona
    except ImportError:
        raise DataError(
            "writing a GeoPackage needs the fiona package",
            where="--vector gpkg",
            hint="pip install fiona, or use --vector geojson",
        ) from None
    schema = {
        "geometry": "Polygon",
        "properties": {"class": "str", "value": "int", "area_px": "float"},
    }
    with fiona.open(
        target, "w", driver="GPKG", schema=schema, crs=crs.to_wkt() if crs else None
    ) as dst:
        dst.writerecords(features)
    return target


def _polygon_area(rings: list[list[tuple[float, float]]]) -> float:
    """Shoelace area of a polygon: the outer ring minus its holes."""
    total = 0.0
    for i, ring in enumerate(rings):
        xy = np.asarray(ring, dtype=np.float64)
        a = 0.5 * abs(np.dot(xy[:-1, 0], xy[1:, 1]) - np.dot(xy[1:, 0], xy[:-1, 1]))
        total += a if i == 0 else -a
    return total


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
