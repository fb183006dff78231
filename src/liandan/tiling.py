"""Sliding-window inference in bounded memory: tile grids, blending windows, the stream.

:func:`stream_tiles` runs any ``forward`` (a batch of normalized tiles to class
probabilities) over an image it reads window by window (the next window prefetched in a
thread while the network runs). Tile probabilities are blended with a Gaussian (or
Hann) window — probabilities, never argmax — into float32 accumulators. The image is
cut into column blocks about ``BLOCK_TILES`` tiles wide; each block is swept top to
bottom, its accumulators hold only the rows still being written, and every finished
window is yielded and dropped. A block runs every tile that touches the columns it
finishes, so tiles straddling a block boundary run in both blocks and every pixel is
blended exactly as in one whole-image pass. Peak memory is bounded by ``(tile + 256)
rows x (BLOCK_TILES + 2) tiles`` and grows with neither the height nor the width. The
last window is moved back inside the image rather than padded past it; tiles entirely
nodata are skipped.

:class:`~liandan.prediction.Predictor` uses it for rasters and large images alike.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from itertools import pairwise
from typing import Any

import numpy as np

STRIDE = 32  # output stride of 5-stage encoders: tiles are padded to a multiple of it
FLUSH_ROWS = 256  # windows are yielded in whole output blocks (the GeoTIFF's 256 px tiles)
# A column block finishes about this many tile widths: wider images are swept in several
# blocks, each re-running the tiles on its left edge (about 1/BLOCK_TILES more tiles).
BLOCK_TILES = 8

# A window of raw pixels: read(top, left, rows, cols) -> (normalized (rows, cols, C)
# float32, valid (rows, cols) bool or None).
ReadBand = Callable[[int, int, int, int], tuple[np.ndarray, np.ndarray | None]]
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


def column_blocks(width: int, tile: int) -> list[tuple[int, int]]:
    """Columns ``[start, stop)`` that each column block finishes, left to right.

    Blocks are at most about ``BLOCK_TILES`` tiles wide and as even as boundaries on
    multiples of ``FLUSH_ROWS`` allow (so windows fill whole GeoTIFF blocks).
    """
    per_block = max(1, -(-BLOCK_TILES * tile // FLUSH_ROWS))  # in units of FLUSH_ROWS
    units = -(-width // FLUSH_ROWS)
    n = -(-units // per_block)
    edges = [min(width, FLUSH_ROWS * (i * units // n)) for i in range(n + 1)]
    return list(pairwise(edges))


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
    """What one streamed prediction did.

    ``tiles`` counts tiles run through the network, ``recomputed`` those of them run a
    second time because they straddle a column block boundary; ``buffer_rows`` x
    ``buffer_cols`` is the accumulators' shape and ``peak_rows`` the most rows in use.
    """

    tiles: int = 0
    skipped: int = 0
    peak_rows: int = 0
    buffer_rows: int = 0
    buffer_cols: int = 0
    recomputed: int = 0


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
) -> Iterator[tuple[int, int, np.ndarray, np.ndarray]]:
    """Blend tile probabilities block by block; yield finished windows and drop them.

    Args:
        read: ``read(top, left, rows, cols)`` -> normalized ``(rows, cols, C)`` and a
            valid mask or None.
        height, width: the image size.
        forward: normalized tiles ``(B, C, h, w)`` -> probabilities ``(B, K, h, w)``.
        classes: ``K``.
        stats: filled in as the stream goes (tiles run and skipped, buffer shape).
        on_tiles: progress callback: ``(tiles done, image pixels now done)``; each tile
            of the grid is counted once.

    Yields:
        ``(top, left, probs (K, n, m), valid (n, m))`` for finished windows: column
        blocks left to right, each top to bottom; together they cover the image once.
        Pixels of skipped all-nodata tiles have zero probabilities (and are invalid).
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
    # each block runs every tile touching the columns it finishes, so those columns get
    # the same tiles, with the same weights, as in one pass over the whole image
    blocks = [
        (start, stop, [c for c in cols if c < stop and c + win_w > start])
        for start, stop in column_blocks(width, tile)
    ]
    span = max(run[-1] + win_w - run[0] for _, _, run in blocks)
    # rows [top, top + cap) are held: a band starts < FLUSH_ROWS below `top`
    cap = min(height, win_h + FLUSH_ROWS)
    acc_all = np.zeros((classes, cap, span), np.float32)  # weighted sum of probabilities
    norm_all = np.zeros((cap, span), np.float32)  # sum of weights
    valid_all = np.ones((cap, span), bool)  # pixels with data
    stats.buffer_rows, stats.buffer_cols = cap, span
    bands = [(run[0], run[-1] + win_w, r) for _, _, run in blocks for r in rows]
    with ThreadPoolExecutor(1, thread_name_prefix="liandan-read") as pool:

        def fetch(k: int) -> Future[Any] | None:
            if k >= len(bands):
                return None
            lo, hi, r = bands[k]
            return pool.submit(read, r, lo, win_h, hi - lo)

        k = 0
        pending = fetch(0)
        for start, stop, run in blocks:
            lo = run[0]
            used = run[-1] + win_w - lo  # the block's tiles span columns [lo, lo + used)
            acc, norm, valid = acc_all[..., :used], norm_all[:, :used], valid_all[:, :used]
            acc[:] = 0
            norm[:] = 0
            valid[:] = True
            keep = slice(start - lo, stop - lo)  # the columns this block finishes
            fresh = [c for c in run if c >= start]  # not run by an earlier block
            top = reached = 0
            for r in [*rows, height]:
                done = height if r == height else (r // FLUSH_ROWS) * FLUSH_ROWS
                if done > top:  # rows above `done` get no more tiles: hand them out
                    n = done - top
                    probs = acc[:, :n, keep] / np.maximum(norm[:n, keep], 1e-12)
                    yield top, start, probs, valid[:n, keep].copy()
                    for buf, fill in ((acc, 0), (norm[None], 0), (valid[None], True)):
                        buf[:, : cap - n] = buf[:, n:].copy()  # shift up, clear the bottom
                        buf[:, cap - n :] = fill
                    top = done
                if r == height:
                    break
                assert pending is not None
                band, band_valid = pending.result()
                k += 1
                pending = fetch(k)
                stats.peak_rows = max(stats.peak_rows, r + win_h - top)
                if band_valid is not None:
                    valid[r - top : r - top + win_h] = band_valid
                # the band's tiles, all-nodata ones skipped, through the network in batches
                todo = [
                    c
                    for c in run
                    if band_valid is None or band_valid[:, c - lo : c - lo + win_w].any()
                ]
                stats.skipped += len(set(fresh) - set(todo))
                row, bh = r - top, band.shape[0]
                for chunk in chunks(todo, grid.batch_size):
                    cut = [pad_tile(band[:, c - lo : c - lo + win_w], pad_h, pad_w) for c in chunk]
                    batch = np.stack([t.transpose(2, 0, 1) for t in cut])
                    probs = forward(batch)[:, :, :bh, :win_w]
                    for c, p in zip(chunk, probs, strict=True):
                        acc[:, row : row + bh, c - lo : c - lo + win_w] += p * weight
                        norm[row : row + bh, c - lo : c - lo + win_w] += weight
                stats.tiles += len(todo)
                stats.recomputed += len([c for c in todo if c < start])
                if on_tiles is not None:  # progress: new tiles, and image pixels now done
                    on_tiles(len(fresh), (r + win_h - reached) * (stop - start))
                reached = r + win_h


def chunks(items: Sequence[Any], size: int) -> Iterator[Sequence[Any]]:
    """Consecutive slices of ``items`` of at most ``size``."""
    for i in range(0, len(items), size):
        yield items[i : i + size]
