"""`liandan scan`: every problem in a dataset, and its fingerprint, in one pass.

Each file is decoded once (in a few threads) and summarised in a small record: shape,
dtype, a hash of the decoded pixels, per-band moments and quantiles, mask value
counts. Records are cached in the user's cache folder (never in the dataset), keyed by
path, size and modification time, so a second scan only decodes what changed. The
problems and the :class:`Fingerprint` are computed from the records; ``plan`` reads the
fingerprint. Nothing in the dataset folder is ever written.

>>> report = scan("data/")  # doctest: +SKIP
>>> report.ok, report.fingerprint.image_size["median"]  # doctest: +SKIP
(True, [512, 512])
"""

from __future__ import annotations

import hashlib
import json
import os
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from liandan.data.fingerprint import (
    LEVELS,
    Fingerprint,
    Problem,
    build_fingerprint,
    check_records,
)
from liandan.data.layouts import find_samples, read_classes_yaml
from liandan.data.readers import (
    RASTER_EXTS,
    alpha_bands,
    band_indexes,
    image_shape,
    is_image_file,
    read_image,
    read_mask,
    valid_mask,
)
from liandan.errors import DataError
from liandan.tasks import get_task

CACHE_VERSION = 4  # 2: mask counts per border third; 3: stats without nodata; 4: alpha
MAX_PIXELS = 179_000_000  # Pillow's decompression-bomb threshold (Image.MAX_IMAGE_PIXELS)
# files a dataset folder may hold besides images
KNOWN_FILES = {"classes.yaml", "labels.csv", "readme.md", "readme.txt", "license", "license.txt"}
KNOWN_SUFFIXES = {".txt", ".xml", ".geojson", ".gpkg", ".shp", ".shx", ".dbf", ".prj", ".cpg"}


@dataclass
class ScanReport:
    """Problems, fingerprint and notes of one dataset folder."""

    root: Path
    problems: list[Problem]
    fingerprint: Fingerprint
    notes: list[str] = field(default_factory=list)
    decoded: int = 0  # files decoded in this scan (the rest came from the cache)
    cached: int = 0

    @property
    def ok(self) -> bool:
        """No problem that would stop training."""
        return not any(p.severity == "error" for p in self.problems)

    def to_dict(self) -> dict[str, Any]:
        return {
            "root": str(self.root),
            "ok": self.ok,
            "problems": [{**asdict(p), "severity": p.severity} for p in self.problems],
            "fingerprint": asdict(self.fingerprint),
            "notes": self.notes,
            "files": {"decoded": self.decoded, "cached": self.cached},
        }


# ------------------------------------------------------------------ cache
def cache_dir() -> Path:
    """``$LIANDAN_CACHE_DIR`` or ``$XDG_CACHE_HOME/liandan`` or ``~/.cache/liandan``."""
    if os.environ.get("LIANDAN_CACHE_DIR"):
        return Path(os.environ["LIANDAN_CACHE_DIR"])
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "liandan"


def _cache_path(root: Path) -> Path:
    digest = hashlib.sha1(str(root.resolve()).encode()).hexdigest()[:16]
    return cache_dir() / "scan" / f"{digest}.json"


def _load_cache(path: Path) -> dict[str, Any]:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    return data.get("records", {}) if data.get("version") == CACHE_VERSION else {}


def _save_cache(path: Path, records: dict[str, Any]) -> None:
    from liandan.runs import atomic_write_text

    try:
        text = json.dumps({"version": CACHE_VERSION, "records": records})
        atomic_write_text(path, text)
    except OSError:  # a read-only home must not stop a scan
        pass


# ------------------------------------------------------------------ one file
def _stamp(path: Path) -> list[int]:
    st = path.stat()
    return [st.st_size, st.st_mtime_ns]


def _raster_header(path: Path) -> tuple[float | None, bool]:
    import rasterio
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        with rasterio.open(path) as src:
            return src.nodata, src.crs is not None


def inspect_image(path: Path, nodata: float | None = None) -> dict[str, Any]:
    """Summary of one image: shape, dtype, pixel hash, per-band statistics."""
    rec: dict[str, Any] = {"stamp": _stamp(path), "nodata_asked": nodata}
    if rec["stamp"][0] == 0:
        return {**rec, "error": "empty-file", "reason": "empty file (0 bytes)"}
    try:
        h, w, _ = image_shape(path)
    except DataError as exc:
        return {**rec, "error": "unreadable", "reason": exc.message}
    if path.suffix.lower() not in RASTER_EXTS and h * w > MAX_PIXELS:
        reason = f"{w}x{h} = {h * w / 1e6:.0f} Mpx: decompression-bomb sized, not decoded"
        return {**rec, "error": "bomb", "reason": reason}
    if path.suffix.lower() in RASTER_EXTS and h * w > STREAM_PIXELS:
        return _inspect_raster_by_rows(path, rec, nodata)
    try:
        img = read_image(path)
    except DataError as exc:
        return {**rec, "error": "unreadable", "reason": exc.message}
    flat = img.reshape(-1, img.shape[2])
    if path.suffix.lower() in RASTER_EXTS:  # the nodata value, a mask band or alpha
        from liandan.predict_outputs import open_raster

        with open_raster(path) as src:
            empty = ~valid_mask(src, None, nodata).reshape(-1)
            tag, rec["geo"] = src.nodata, src.crs is not None
        nodata = nodata if nodata is not None else tag
    else:
        empty = (flat == nodata).all(1) if nodata is not None else np.zeros(len(flat), bool)
    data = flat[~empty] if empty.any() and not empty.all() else flat  # pixels with data
    if img.dtype == np.uint8:  # from each band's histogram: the same numbers, ~10x faster
        mean, var, q = _uint8_stats(data)
    else:
        data = data.astype(np.float64)
        mean, var = data.mean(0).tolist(), data.var(0).tolist()
        q = np.percentile(data, LEVELS, axis=0).T.tolist()  # (bands, levels)
    rec.update(
        h=int(img.shape[0]),
        w=int(img.shape[1]),
        c=int(img.shape[2]),
        dtype=str(img.dtype),
        hash=hashlib.sha1(img.tobytes() + str(img.shape).encode()).hexdigest(),
        mean=mean,
        var=var,
        q=q,
        nodata=nodata,
        nodata_pixels=int(empty.sum()),
    )
    return rec


def _uint8_stats(pixels: np.ndarray) -> tuple[list[float], list[float], list[list[float]]]:
    """Per-band mean, variance and ``LEVELS`` percentiles of ``(N, bands)`` uint8 pixels,
    from 256-bin histograms; percentiles interpolate linearly as ``np.percentile``."""
    n = len(pixels)
    values = np.arange(256, dtype=np.float64)
    means, variances, quantiles = [], [], []
    for band in range(pixels.shape[1]):
        counts = np.bincount(pixels[:, band], minlength=256).astype(np.float64)
        mean = float(counts @ values / n)
        means.append(mean)
        variances.append(float(counts @ (values - mean) ** 2 / n))
        cum = np.cumsum(counts)
        position = np.asarray(LEVELS, dtype=np.float64) / 100.0 * (n - 1)
        low = np.floor(position)
        below = np.searchsorted(cum, low, side="right")  # value at sorted index `low`
        above = np.searchsorted(cum, np.minimum(low + 1, n - 1), side="right")
        quantiles.append((below + (position - low) * (above - below)).tolist())
    return means, variances, quantiles


STREAM_PIXELS = 4096 * 4096  # larger rasters are scanned by row bands, never whole
CHUNK_VALUES = 16 * 1024 * 1024  # values per row band (bounded memory)
SAMPLE_PIXELS = 1_000_000  # pixels kept for the percentiles of a streamed raster


def _inspect_raster_by_rows(
    path: Path, rec: dict[str, Any], nodata: float | None
) -> dict[str, Any]:
    """The same summary as ``inspect_image`` in one pass of row bands (bounded memory).

    Mean, variance (of the pixels with data), the pixel hash and the nodata count are
    exact; percentiles come from an evenly strided sample of at most SAMPLE_PIXELS pixels.
    """
    from rasterio.windows import Window

    from liandan.predict_outputs import open_raster

    tag, rec["geo"] = _raster_header(path)
    asked, nodata = nodata, nodata if nodata is not None else tag
    try:
        with open_raster(path) as src:
            indexes = band_indexes(None, src.count, path, alpha=alpha_bands(src))
            h, w, c = src.height, src.width, len(indexes)
            rows = max(1, CHUNK_VALUES // max(1, w * c))
            stride = max(1, (h * w) // SAMPLE_PIXELS)
            digest = hashlib.sha1()
            total = np.zeros(c)
            squares = np.zeros(c)
            empty = 0
            sample = []
            for top in range(0, h, rows):
                n = min(rows, h - top)
                window = Window(0, top, w, n)
                chunk = np.moveaxis(src.read(indexes, window=window), 0, -1)
                digest.update(np.ascontiguousarray(chunk).tobytes())  # HWC order, as whole
                flat = chunk.reshape(-1, c).astype(np.float64)
                has_data = valid_mask(src, window, asked).reshape(-1)
                empty += int(len(flat) - has_data.sum())
                picked = np.zeros(len(flat), bool)
                picked[(-(top * w)) % stride :: stride] = True
                flat, picked = flat[has_data], picked[has_data]
                total += flat.sum(0)
                squares += (flat**2).sum(0)
                sample.append(flat[picked])
            dtype = str(src.dtypes[0])
    except Exception as exc:
        return {**rec, "error": "unreadable", "reason": f"cannot read ({exc})"}
    digest.update(str((h, w, c)).encode())
    count = float(max(1, h * w - empty))
    mean = total / count
    pixels = np.concatenate(sample)
    if not len(pixels):  # nodata everywhere (a blocking problem of its own)
        pixels = np.zeros((1, c))
    rec.update(
        h=h,
        w=w,
        c=c,
        dtype=dtype,
        hash=digest.hexdigest(),
        mean=mean.tolist(),
        var=np.maximum(squares / count - mean**2, 0.0).tolist(),
        q=np.percentile(pixels, LEVELS, axis=0).T.tolist(),
        nodata=nodata,
        nodata_pixels=empty,
    )
    return rec


def _inspect_label_raster_by_rows(
    path: Path, rec: dict[str, Any], h: int, w: int
) -> dict[str, Any]:
    """Value counts of a single-band label raster, one row band at a time."""
    from rasterio.windows import Window

    from liandan.predict_outputs import open_raster

    counts: dict[int, int] = {}
    try:
        with open_raster(path) as src:
            nodata = src.nodata
            rows = max(1, CHUNK_VALUES // max(1, w))
            for top in range(0, h, rows):
                band = src.read(1, window=Window(0, top, w, min(rows, h - top)))
                values, n = np.unique(band, return_counts=True)
                for v, k in zip(values.tolist(), n.tolist(), strict=True):
                    counts[int(v)] = counts.get(int(v), 0) + int(k)
    except Exception as exc:
        return {**rec, "error": "unreadable", "reason": f"cannot read ({exc})"}
    rec.update(h=h, w=w, color=False, values={str(v): n for v, n in sorted(counts.items())})
    _drop_label_nodata(rec, nodata)
    return rec


def inspect_mask(path: Path) -> dict[str, Any]:
    """Summary of one mask: shape and the count of each raw value (or colour)."""
    rec: dict[str, Any] = {"stamp": _stamp(path)}
    if path.suffix.lower() in RASTER_EXTS and rec["stamp"][0] > 0:
        try:
            h, w, c = image_shape(path)
        except DataError as exc:
            return {**rec, "error": "unreadable", "reason": exc.message}
        if h * w > STREAM_PIXELS and c == 1:
            return _inspect_label_raster_by_rows(path, rec, h, w)
    try:
        mask = read_mask(path)
    except DataError as exc:
        kind = "empty-file" if rec["stamp"][0] == 0 else "unreadable"
        return {**rec, "error": kind, "reason": exc.message}
    rec.update(h=int(mask.shape[0]), w=int(mask.shape[1]), color=mask.ndim == 3)
    rec["values"] = _value_counts(mask)
    # where each value sits: the fingerprint compares top with bottom and left with
    # right to tell upright scenes (sky above road) from overhead or texture images
    h3, w3 = max(1, mask.shape[0] // 3), max(1, mask.shape[1] // 3)
    rec["thirds"] = {
        "top": _value_counts(mask[:h3]),
        "bottom": _value_counts(mask[-h3:]),
        "left": _value_counts(mask[:, :w3]),
        "right": _value_counts(mask[:, -w3:]),
    }
    if path.suffix.lower() in RASTER_EXTS and not rec["color"]:
        _drop_label_nodata(rec, _raster_header(path)[0])
    return rec


def _drop_label_nodata(rec: dict[str, Any], nodata: float | None) -> None:
    """A label raster's nodata value means "no label" (training ignores those pixels),
    not a class value: its count moves from ``values`` to ``nodata_pixels``."""
    if nodata is None or not float(nodata).is_integer():
        return
    key = str(int(nodata))
    rec["nodata"] = nodata
    rec["nodata_pixels"] = rec["values"].pop(key, 0)
    for counts in rec.get("thirds", {}).values():
        counts.pop(key, None)


def _value_counts(mask: np.ndarray) -> dict[str, int]:
    """Count of each raw value (``"v"``) or colour (``"r,g,b"``) of a mask array."""
    if mask.ndim == 3 and mask.dtype == np.uint8:  # colours packed into one integer each:
        rgb = mask[..., :3].astype(np.int32)  # a 1-D unique is ~50x faster than axis=0
        codes = (rgb[..., 0] << 16) | (rgb[..., 1] << 8) | rgb[..., 2]
        values, counts = np.unique(codes, return_counts=True)
        return {
            f"{v >> 16},{(v >> 8) & 255},{v & 255}": int(n)
            for v, n in zip(values.tolist(), counts, strict=True)
        }
    if mask.ndim == 3:
        values, counts = np.unique(mask.reshape(-1, 3), axis=0, return_counts=True)
        return {
            ",".join(str(int(x)) for x in v): int(n) for v, n in zip(values, counts, strict=True)
        }
    values, counts = np.unique(mask, return_counts=True)
    return {str(int(v)): int(n) for v, n in zip(values.tolist(), counts, strict=True)}


# ------------------------------------------------------------------ scan
def _records(
    paths: list[tuple[Path, str]], cache: dict[str, Any], nodata: float | None, progress: bool
) -> tuple[dict[Path, dict[str, Any]], int]:
    """Records for (path, "image"|"mask"), decoding only files not in the cache."""
    out: dict[Path, dict[str, Any]] = {}
    todo: list[tuple[Path, str]] = []
    for path, kind in paths:
        rec = cache.get(str(path))
        fresh = rec is not None and rec.get("stamp") == _stamp(path)
        if fresh and kind == "image" and rec.get("nodata_asked") != nodata:  # type: ignore[union-attr]
            fresh = False
        if fresh:
            out[path] = rec  # type: ignore[assignment]
        else:
            todo.append((path, kind))

    def work(item: tuple[Path, str]) -> dict[str, Any]:
        path, kind = item
        return inspect_image(path, nodata) if kind == "image" else inspect_mask(path)

    if todo:
        from rich.progress import Progress

        workers = min(4, os.cpu_count() or 1)
        with Progress(transient=True, disable=not progress) as bar:
            task = bar.add_task("scanning", total=len(todo))
            with ThreadPoolExecutor(workers) as pool:
                for (path, _), rec in zip(todo, pool.map(work, todo), strict=True):
                    out[path] = rec
                    bar.advance(task)
    for path, rec in out.items():
        cache[str(path)] = rec
    return out, len(todo)


def _layout_files(index: Any) -> set[Path]:
    """Label and metadata files the layout's reader read besides the samples' images and
    masks: a task's own reader (``index.source``) lists them with ``files_read()``
    (detection: YOLO's data.yaml, COCO JSON files)."""
    read = getattr(index.source, "files_read", None)
    return set(read()) if callable(read) else set()


def _stray_files(root: Path, used: set[Path]) -> list[Problem]:
    """Files in the dataset folder that are neither samples nor known side files."""
    found = []
    for path in sorted(root.rglob("*")):
        if not path.is_file() or path in used or path.name.startswith("."):
            continue
        if path.name.lower() in KNOWN_FILES or path.suffix.lower() in KNOWN_SUFFIXES:
            continue
        if path.name.endswith(".aux.xml") or is_image_file(path):
            continue
        found.append(Problem("not-an-image", str(path), "not an image file: ignored"))
    return found


def scan(
    root: str | Path,
    *,
    layout: str = "auto",
    ignore_index: int | None = None,
    use_cache: bool = True,
    progress: bool = False,
    lossy_masks: str = "error",
    task: str | None = None,
    data: Any = None,
) -> ScanReport:
    """Scan a dataset folder: every problem (file + reason) and the fingerprint.

    Args:
        root: the dataset folder.
        layout: a layout name, or ``auto``.
        ignore_index: raw mask value to ignore (overrides classes.yaml).
        use_cache: read and update the record cache in the user's cache folder.
        progress: show a progress bar while decoding.
        lossy_masks: ``error``: masks in a lossy format (JPEG) are a problem;
            ``nearest``: their values are snapped to the classes (``data.lossy_masks``).
        task: the task the folder is read for (``task=detect``), as training reads it:
            it settles a folder that reads as more than one layout (rasters with GIS
            layers are polygon labels for segmentation, and boxes for detection); None
            reads it as its layout says.
        data: the config's ``data`` section, for layouts that read more of it
            (``vector-boxes``: the label attribute, point boxes and windows); None: its
            defaults.

    >>> liandan.scan("data/").ok  # doctest: +SKIP
    True
    """
    root = Path(root)
    index = find_samples(root, layout, task, ignore_index, strict=False, data=data)
    # what strict indexing would refuse (unpaired files, empty class folders) blocks training
    problems = [Problem(kind, str(f), why, blocking=True) for kind, f, why in index.problems]
    yaml_data = read_classes_yaml(root) if get_task(index.task).reads_classes_yaml() else None
    nodata = yaml_data.get("nodata") if yaml_data else None
    paths: list[tuple[Path, str]] = [(s.image, "image") for s in index.samples]
    paths += [(s.target, "mask") for s in index.samples if isinstance(s.target, Path)]
    cache_file = _cache_path(root)
    cache = _load_cache(cache_file) if use_cache else {}
    from rasterio.errors import NotGeoreferencedWarning

    with warnings.catch_warnings():  # set here: the worker threads share the filters
        warnings.simplefilter("ignore", NotGeoreferencedWarning)
        records, decoded = _records(paths, cache, nodata, progress)
    if use_cache:
        _save_cache(cache_file, {str(p): r for p, r in records.items()})
    problems += _label_grid_problems(index, records)
    notes = list(index.notes)
    problems += check_records(index, records, notes, lossy_masks)
    side = {yaml_data["_path"]} if yaml_data else set()  # classes.yaml or a class list JSON
    problems += _stray_files(root, {p for p, _ in paths} | _layout_files(index) | side)
    fingerprint = build_fingerprint(index, records, nodata, lossy_masks)
    return ScanReport(
        root, problems, fingerprint, notes, decoded=decoded, cached=len(records) - decoded
    )


def _label_grid_problems(index: Any, records: dict[Path, dict[str, Any]]) -> list[Problem]:
    """Training's checks of label rasters (CRS, transform) and polygons (CRS, overlap)."""
    from liandan.data.problems import is_vector
    from liandan.data.rasters import check_labels

    def readable(path: Any) -> bool:  # polygon labels are read by check_labels itself
        return is_vector(path) or "error" not in records.get(path, {})

    # unreadable files are problems of their own; sizes are compared from the records
    samples = [s for s in index.samples if readable(s.image) and readable(s.target)]
    found, _ = check_labels(index, sizes=False, samples=samples)
    return [Problem(kind, str(file), reason, blocking=True) for kind, file, reason in found]
