"""Streamed prediction in column blocks: the same blend as one whole-image pass, in
memory that grows with neither the width nor the height, written window by window."""

from __future__ import annotations

import tracemalloc
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import rasterio
import torch
from PIL import Image

from conftest import write_geotiff
from liandan import predict_outputs
from liandan.predict_outputs import RasterWriter, open_raster
from liandan.prediction import Predictor
from liandan.tiling import (
    FLUSH_ROWS,
    StreamStats,
    TileGrid,
    blend_window,
    stream_tiles,
    tile_starts,
)


def position_forward(batch: np.ndarray) -> np.ndarray:
    """3 classes from each pixel's bands and its place in the tile: overlapping tiles
    disagree about a pixel, so every blending weight shows in the result."""
    _, _, h, w = batch.shape
    i, j = np.arange(h)[:, None], np.arange(w)[None, :]
    a = batch.sum(1) + np.sin(0.3 * i)
    b = -batch.mean(1) + 0.7 * np.cos(0.2 * j)
    logits = np.stack([a, b, 0.5 * a * b], 1)
    e = np.exp(logits - logits.max(1, keepdims=True))
    return (e / e.sum(1, keepdims=True)).astype(np.float32)


def reference_blend(
    x: np.ndarray, valid: np.ndarray | None, forward, classes: int, grid: TileGrid
) -> np.ndarray:
    """The whole image at once: every tile of the grid weighted into full-size sums
    (tiles without a valid pixel are left out, their pixels get zeros)."""
    h, w = x.shape[:2]
    th, tw = min(grid.tile, h), min(grid.tile, w)
    step = max(1, int(grid.tile * (1 - grid.overlap)))
    w1 = blend_window(grid.tile, grid.blend)
    weight = np.maximum(np.outer(w1[:th], w1[:tw]), 1e-4)
    acc = np.zeros((classes, h, w), np.float64)
    norm = np.zeros((h, w), np.float64)
    for r in tile_starts(h, th, step):
        for c in tile_starts(w, tw, step):
            if valid is not None and not valid[r : r + th, c : c + tw].any():
                continue
            tile = x[r : r + th, c : c + tw].transpose(2, 0, 1)[None]
            acc[:, r : r + th, c : c + tw] += forward(tile)[0] * weight
            norm[r : r + th, c : c + tw] += weight
    return (acc / np.maximum(norm, 1e-12)).astype(np.float32)


def run_stream(
    x: np.ndarray, valid: np.ndarray | None, grid: TileGrid, stats: StreamStats, keep: bool = True
) -> tuple[np.ndarray | None, np.ndarray | None, list[tuple[int, int, int, int]]]:
    """Stream ``x`` (H, W, C); the probabilities and validity put back together (when
    ``keep``), and every window ``(top, left, rows, cols)`` in the order yielded."""
    h, w = x.shape[:2]

    def read(top: int, left: int, n: int, m: int) -> tuple[np.ndarray, np.ndarray | None]:
        window = np.s_[top : top + n, left : left + m]
        return x[window], None if valid is None else valid[window]

    probs = np.full((3, h, w), np.nan, np.float32) if keep else None
    seen = np.zeros((h, w), bool) if keep else None
    windows = []
    for top, left, p, v in stream_tiles(read, h, w, position_forward, 3, grid, stats):
        n, m = v.shape
        windows.append((top, left, n, m))
        if probs is not None and seen is not None:
            probs[:, top : top + n, left : left + m] = p
            seen[top : top + n, left : left + m] = v
    return probs, seen, windows


CASES = {
    "odd size": (203, 517, TileGrid(32, 0.25, "gaussian", 5), False),
    "wide, nodata": (90, 1100, TileGrid(32, 0.5, "hann", 8), True),
    "tall, nodata": (1100, 90, TileGrid(64, 0.25, "none", 3), True),
    "tile larger than the image": (40, 50, TileGrid(64, 0.25, "gaussian", 8), False),
    "tile not a stride multiple, nodata": (300, 2000, TileGrid(48, 0.3, "gaussian", 8), True),
}


@pytest.mark.parametrize("case", CASES)
def test_windows_blend_every_pixel_as_one_whole_image_pass(case: str) -> None:
    h, w, grid, nodata = CASES[case]
    rng = np.random.default_rng(0)
    x = rng.random((h, w, 2)).astype(np.float32)
    valid = None
    if nodata:  # scattered holes, and whole nodata tiles across a column block boundary
        valid = rng.random((h, w)) > 0.05
        valid[:, 230:300] = False
        valid[: 2 * grid.tile] = False
    stats = StreamStats()
    got, seen, windows = run_stream(x, valid, grid, stats)
    expected = reference_blend(x, valid, position_forward, 3, grid)
    np.testing.assert_allclose(got, expected, atol=1e-5)
    assert (seen == (True if valid is None else valid)).all()
    cover = np.zeros((h, w), int)  # every pixel in exactly one window
    for top, left, n, m in windows:
        cover[top : top + n, left : left + m] += 1
        assert top % FLUSH_ROWS == 0 and left % FLUSH_ROWS == 0  # whole GeoTIFF blocks
    assert (cover == 1).all()
    if w > 2 * FLUSH_ROWS:  # really cut into column blocks, seams re-run
        assert len({left for _, left, _, _ in windows}) > 1 and stats.recomputed > 0
    if nodata:
        assert stats.skipped > 0


def peak_memory(h: int, w: int) -> tuple[int, StreamStats]:
    """Bytes allocated at the peak of streaming an (h, w) image (the image itself and
    the windows handed out are not counted), and the stream's stats."""
    x = np.random.default_rng(1).random((h, w, 1)).astype(np.float32)
    grid = TileGrid(32, 0.5, "gaussian", 32)  # a step of 16: blocks of 256 are periodic
    stats = StreamStats()
    tracemalloc.start()
    try:
        run_stream(x, None, grid, stats, keep=False)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    return peak, stats


def test_memory_is_bounded_in_width_as_in_height() -> None:
    square, sq = peak_memory(768, 768)  # three column blocks
    wide, wd = peak_memory(768, 3072)
    tall, tl = peak_memory(3072, 768)
    area = sq.buffer_rows * sq.buffer_cols
    assert wd.buffer_rows * wd.buffer_cols == area  # 4x wider, the same accumulators
    assert tl.buffer_rows * tl.buffer_cols == area
    assert sq.buffer_cols < 768 and sq.buffer_rows < 768  # less than the image either way
    # everything the stream allocates, not only the accumulators
    assert wide <= 1.2 * square, (wide, square)
    assert tall <= 1.2 * square, (tall, square)


class SmallNet(torch.nn.Module):
    """A fixed, seeded 2-class network whose padding makes tile edges differ."""

    def __init__(self, bands: int) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.body = torch.nn.Sequential(
            torch.nn.Conv2d(bands, 8, 3, padding=1),
            torch.nn.Tanh(),
            torch.nn.Conv2d(8, 8, 3, padding=2, dilation=2),
            torch.nn.Tanh(),
            torch.nn.Conv2d(8, 2, 1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


def wide_scene(tmp_path: Path) -> tuple[Path, np.ndarray, Predictor, np.ndarray]:
    """A 40 x 700 raster (nodata across the first seam), a predictor with tile 32
    (column blocks of 256: seams at columns 256 and 512) and its whole-image blend."""
    rng = np.random.default_rng(3)
    h, w = 40, 700
    image = (rng.random((2, h // 4 + 1, w // 4 + 1)) * 10000).astype(np.uint16)
    image = np.kron(image, np.ones((4, 4), np.uint16))[:, :h, :w]
    image[:, 5:30, 240:270] = 0
    scene = write_geotiff(tmp_path / "wide.tif", image, nodata=0)
    meta = {
        "task": "segment",
        "classes": ["a", "b"],
        "values": [3, 7],
        "colors": [[200, 0, 0], [0, 0, 200]],
        "in_channels": 2,
        "dtype": "uint16",
        "normalization": {"preset": "dataset", "mean": [5000.0] * 2, "std": [3000.0] * 2},
    }
    predictor = Predictor(SmallNet(2), meta, device="cpu", tile=32, batch_size=8)
    valid = image.any(0)
    x = predictor.prepare(np.moveaxis(image, 0, -1))
    x[~valid] = 0.0
    grid = TileGrid(32, predictor.overlap, predictor.blend)
    expected = reference_blend(x, valid, predictor.forward_batch, 2, grid)
    return scene, valid, predictor, expected


def test_a_wide_raster_is_written_window_by_window_as_predicted_in_memory(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(predict_outputs, "PREVIEW_MAX", 64)  # a preview of every 11th pixel
    scene, valid, predictor, expected = wide_scene(tmp_path)
    target = tmp_path / "out" / "wide.tif"
    probs_path = tmp_path / "out" / "wide_probs.tif"
    with open_raster(scene) as src:
        writer = RasterWriter(src, predictor, target, probs_path=probs_path)
    with writer:
        stats = predictor.predict_raster(scene, writer)
    assert stats.recomputed > 0  # streamed in several column blocks

    labels = expected.argmax(0)
    with rasterio.open(target) as out, rasterio.open(probs_path) as out_probs:
        values, probs = out.read(1), out_probs.read()
    assert (values[~valid] == 255).all() and (probs[:, ~valid] == 255).all()
    clear = valid & (np.abs(expected[1] - expected[0]) > 1e-4)  # not a float tie
    assert 0.2 < labels[clear].mean() < 0.8  # both classes present
    assert (values[clear] == np.array([3, 7])[labels[clear]]).all()
    q = np.rint(expected * 254)
    assert np.abs(probs[:, valid].astype(float) - q[:, valid]).max() <= 1

    # the preview keeps every 11th row and column, whichever window they came in
    preview = np.asarray(Image.open(tmp_path / "out" / "preview" / "wide.png"))
    kept = np.s_[::11, ::11]
    want = predictor.preview(np.where(values == 7, 1, 0)[kept])
    want[~valid[kept]] = 0
    assert preview.shape == want.shape == (4, 64, 3)
    assert (preview == want).all()


def test_label_counts_take_each_window_from_its_own_columns(tmp_path: Path) -> None:
    from liandan.metrics import ConfusionMatrix
    from liandan.raster_eval import LabelCounter

    scene, valid, predictor, expected = wide_scene(tmp_path)
    truth = np.random.default_rng(5).integers(0, 2, valid.shape)
    truth[:, 600:] = -1  # unlabelled
    truth[np.abs(expected[1] - expected[0]) <= 1e-4] = -1  # float ties may go either way

    class Labels:  # reads the labels of a window of the image grid, as RasterTiles does
        def read_label(self, sample: object, window) -> np.ndarray:
            (top, bottom), (left, right) = window.toranges()
            return truth[top:bottom, left:right].copy()

    counted = ConfusionMatrix(2, ignore_index=-1)
    counter = LabelCounter(Labels(), SimpleNamespace(sample=None), counted)  # type: ignore[arg-type]
    predictor.predict_raster(scene, counter)
    assert predictor.stats.recomputed > 0  # several column blocks
    want = ConfusionMatrix(2, ignore_index=-1)
    target = np.where(valid, truth, -1)
    want.update(torch.from_numpy(expected.argmax(0)), torch.from_numpy(target))
    np.testing.assert_array_equal(counted.numpy(), want.numpy())
