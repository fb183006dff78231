"""scan counts mask colours by packing them into one integer each: same counts as a
row-wise unique, whatever the colours."""

from __future__ import annotations

import numpy as np
import pytest

from liandan.scan_report import _value_counts


@pytest.mark.parametrize("seed", [0, 1])
def test_colour_counts_equal_a_row_wise_unique(seed: int) -> None:
    rng = np.random.default_rng(seed)
    palette = rng.integers(0, 256, (7, 3), dtype=np.uint8)
    palette[0] = (255, 255, 255)  # the largest code
    palette[1] = (0, 0, 0)
    mask = palette[rng.integers(0, 7, (40, 50))]
    values, counts = np.unique(mask.reshape(-1, 3), axis=0, return_counts=True)
    expected = {
        ",".join(str(int(x)) for x in v): int(n) for v, n in zip(values, counts, strict=True)
    }
    assert _value_counts(mask) == expected
    grey = mask[..., 0]
    assert _value_counts(grey) == {
        str(int(v)): int(n) for v, n in zip(*np.unique(grey, return_counts=True), strict=True)
    }


@pytest.mark.parametrize("n", [1, 2, 7, 1000, 12345])
def test_uint8_band_statistics_equal_numpy(n: int) -> None:
    """Means, variances and percentiles from histograms equal numpy's on the pixels."""
    from liandan.scan_report import LEVELS, _uint8_stats

    pixels = np.random.default_rng(n).integers(0, 256, (n, 3)).astype(np.uint8)
    mean, var, q = _uint8_stats(pixels)
    as_float = pixels.astype(np.float64)
    np.testing.assert_allclose(mean, as_float.mean(0))
    np.testing.assert_allclose(var, as_float.var(0))
    np.testing.assert_allclose(q, np.percentile(as_float, LEVELS, axis=0).T)
