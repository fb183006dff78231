"""Sliding-window inference in bounded memory: tile grids, blending windows, the stream.

:func:`stream_tiles` runs any ``forward`` (a batch of normalized tiles to class
probabilities) over an image it reads one band of tile rows at a time (windowed reads,
the next band prefetched in a thread while the network runs). Tile probabilities are
blended with a Gaussian (or Hann) window — probabilities, never argmax — into float32
accumulators that hold only the rows still being written, and every finished block of
rows is yielded and dropped. Peak memory is bounded by ``(tile + 256) x width`` and
does not grow with the image's height. The last window is moved back inside the image
rather than padded past it; tiles entirely nodata are skipped.

:class:`~liandan.prediction.Predictor` uses it for rasters and large images alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import Any

import numpy as np

STRIDE = 32  # output stride of 5-stage encoders: tiles are padded to a multiple of it
FLUSH_ROWS = 256  # rows are yielded in whole output blocks (the GeoTIFF's 256 px tiles)

# A band of raw rows: read(top row, n rows) -> (normalized (n, W, C) float32,
# valid (n, W) bool or None).
ReadBand = Callable[[int, int], tuple[np.ndarray, np.ndarray | None]]
# A batch (B, C, h, w) of normalized tiles -> (B, K, h, w) class probabilities.
Forward = Callable[[np.ndarray], np.ndarray]


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


@dataclass
class StreamStats:
    """What one streamed prediction did; ``peak_rows`` is the accumulators' height."""

    tiles: int = 0
    skipped: int = 0
    peak_rows: int = 0
    buffer_rows: int = 0


@dataclass(frozen=True)
class TileGrid:
    """How an image is cut: tile size, overlap, blending window and tiles per batch."""

    tile: int
    overlap: float = 0.25
    blend: str = "gaussian"
    batch_size: int = 8


def stream_tiles(
    read: ReadBand,
    height: int,
    width: int,
    forward: Forward,
    classes: int,
    grid: TileGrid,
    stats: StreamStats,
    on_tiles: Callable[[int, int], None] | None = None,
) -> Iterator[tuple[int, np.ndarray, np.ndarray]]:
    """Blend tile probabilities band by band; yield finished rows and drop them.

    Args:
        read: ``read(top, n)`` -> normalized ``(n, width, C)`` and a valid mask or None.
        height, width: the image size.
        forward: normalized tiles ``(B, C, h, w)`` -> probabilities ``(B, K, h, w)``.
        classes: ``K``.
        stats: filled in as the stream goes (tiles run and skipped, buffer height).
        on_tiles: progress callback: ``(tiles done, image pixels now done)``.

    Yields:
        ``(top, probs (K, n, width), valid (n, width))`` for finished rows, in order;
        pixels of skipped all-nodata tiles have zero probabilities (and are invalid).
    """
    tile = grid.tile
    win_h, win_w = min(tile, height), min(tile, width)
    # tiles smaller than the tile size (small images) are padded to the stride only
    pad_h, pad_w = win_h + (-win_h) % STRIDE, win_w + (-win_w) % STRIDE
    step = max(1, int(tile * (1 - grid.overlap)))
    rows = tile_starts(height, win_h, step)
    cols = tile_starts(width, win_w, step)
    w1 = blend_window(tile, grid.blend)
    weight = np.maximum(np.outer(w1[:win_h], w1[:win_w]), 1e-4).astype(np.float32)
    # rows [top, top + cap) are held: a band starts < FLUSH_ROWS below `top`
    cap = min(height, win_h + FLUSH_ROWS)
    acc = np.zeros((classes, cap, width), np.float32)  # weighted sum of probabilities
    norm = np.zeros((cap, width), np.float32)  # sum of weights
    valid = np.ones((cap, width), bool)  # pixels with data
    stats.buffer_rows = cap
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
            stats.peak_rows = max(stats.peak_rows, r + win_h - top)
            if band_valid is not None:
                valid[r - top : r - top + win_h] = band_valid
            # the band's tiles, all-nodata ones skipped, through the network in batches
            todo = [c for c in cols if band_valid is None or band_valid[:, c : c + win_w].any()]
            stats.skipped += len(cols) - len(todo)
            row, bh = r - top, band.shape[0]
            for chunk in chunks(todo, grid.batch_size):
                batch = np.stack(
                    [
                        pad_tile(band[:, c : c + win_w], pad_h, pad_w).transpose(2, 0, 1)
                        for c in chunk
                    ]
                )
                probs = forward(batch)[:, :, :bh, :win_w]
                for c, p in zip(chunk, probs, strict=True):
                    acc[:, row : row + bh, c : c + win_w] += p * weight
                    norm[row : row + bh, c : c + win_w] += weight
            stats.tiles += len(todo)
            if on_tiles is not None:  # progress: tiles, and image pixels now done
                on_tiles(len(cols), (r + win_h - reached) * width)
            reached = r + win_h


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """Consecutive slices of ``items`` of at most ``size``."""
    for i in range(0, len(items), size):
        yield items[i : i + size]
