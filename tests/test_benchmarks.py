"""Smoke runs of the benchmark scripts: every code path runs and the table is complete.

The scripts are run as a user runs them (``python benchmarks/<name>.py``), in a
subprocess, with their tiny-size flags and without writing to RESULTS.md.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import torch

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def run_script(name: str, *args: str, timeout: int = 900) -> subprocess.CompletedProcess[str]:
    results = BENCHMARKS / "RESULTS.md"
    before = results.read_bytes() if results.exists() else None
    done = subprocess.run(
        [sys.executable, str(BENCHMARKS / name), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    after = results.read_bytes() if results.exists() else None
    assert after == before, f"{name} {' '.join(args)} wrote to RESULTS.md"
    return done


def table_rows(text: str, header_start: str) -> list[list[str]]:
    """Cells of the markdown table whose header line starts with ``header_start``."""
    lines = text.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(header_start))
    rows = []
    for line in lines[start + 2 :]:  # after the header and the |---| line
        if not line.startswith("|"):
            break
        rows.append([cell.strip() for cell in line.strip("|").split("|")])
    return rows


@pytest.mark.slow
def test_input_pipeline_quick_has_a_row_per_format() -> None:
    done = run_script("input_pipeline.py", "--quick", "--no-write")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = table_rows(done.stdout, "| format | file KiB |")
    assert [r[0] for r in rows] == ["PNG", "JPEG", "TIFF"]
    for fmt, kib, workers, real, synth, ratio, _target, loader in rows:
        assert float(kib) > 0 and int(workers) >= 0, fmt
        assert float(real) > 0 and float(synth) > 0 and float(loader) > 0, fmt
        assert ratio.endswith("x"), fmt
        # the table rounds seconds to 3 decimals: compare with a matching tolerance
        expected = float(real) / float(synth)
        assert float(ratio[:-1]) == pytest.approx(expected, rel=0.02, abs=0.002 / float(synth))
    augment = table_rows(done.stdout, "| pipeline | images/s |")
    assert len(augment) == 3 and augment[0][-1] == "1.00x"
    decode = table_rows(done.stdout, "| format | decoder |")
    assert {r[0] for r in decode} == {"PNG", "JPEG", "TIFF"}
    names = [r[1] for r in decode if r[0] == "JPEG"]
    assert names[0].startswith("liandan") and any("decode_jpeg" in n for n in names)
    assert all(float(r[2]) > 0 for r in decode)


@pytest.mark.slow
def test_gpu_smoke_runs_every_part_on_the_cpu() -> None:
    done = run_script("gpu.py", "--smoke")
    assert done.returncode == 0, done.stderr[-3000:]
    rows = table_rows(done.stdout, "| workload | runner |")
    assert not [r for r in rows if r[4].startswith("failed")], rows
    seen = {(r[0].split(",")[0], r[1], r[2], r[3]) for r in rows}
    for expected in [
        ("U-Net/ResNet-34", "raw", "bf16", "channels_last"),
        ("U-Net/ResNet-34", "raw", "fp32", "NCHW"),
        ("U-Net/ResNet-34", "liandan", "bf16", "auto"),
        ("raster 128 x 128", "liandan Predictor", "fp32", "NCHW"),
        ("raster 128 x 128", "liandan Predictor", "bf16", "NCHW"),
        ("raster 128 x 128", "raw forward, raster in GPU memory", "bf16", "channels_last"),
        ("ResNet-50", "raw", "bf16", "channels_last"),
        ("ResNet-50", "liandan", "bf16", "auto"),
    ]:
        assert expected in seen, (expected, seen)
    for r in rows:
        value, unit = r[4].split(" ", 1)
        assert float(value) > 0 and unit in ("images/s", "Mpx/s"), r
    assert "torch.compile" not in done.stdout.split("| workload |")[1]  # skipped on CPU


@pytest.mark.skipif(torch.cuda.is_available(), reason="a CUDA device is present")
def test_gpu_without_cuda_exits_1_and_says_why() -> None:
    done = run_script("gpu.py", timeout=120)
    assert done.returncode == 1
    assert "needs a CUDA device" in done.stderr and "--smoke" in done.stderr


@pytest.mark.slow
def test_vs_raw_loop_step_matched_runs_both_sides_on_digits() -> None:
    """Both sides take the same 20 steps on scikit-learn's digits; the table has the row
    with both scores and their ratio. liandan's run learned something (a constant
    prediction scores a macro F1 of 0.018 on 10 classes; the plain loop, at batch 8 from
    scratch, is often still there after 20 steps)."""
    done = run_script(
        "vs_raw_loop.py", "--steps", "20", "--seeds", "0", "--datasets", "digits", "--no-write"
    )
    assert done.returncode == 0, done.stderr[-3000:]
    rows = table_rows(done.stdout, "| dataset | liandan |")
    assert [r[0] for r in rows] == ["digits"]
    _, ours, theirs, ratio, *_ = rows[0]
    ours_score, loop_score = float(ours.split()[0]), float(theirs.split()[0])
    assert ours_score > 0.1 and 0.0 <= loop_score <= 1.0, rows
    if loop_score >= 0.01:  # the ratio of the rounded scores, within their rounding
        assert float(ratio[:-1]) == pytest.approx(ours_score / loop_score, rel=0.07)
    assert "step-matched, 20 optimizer steps" in done.stdout
    # the loop's batch is 8, liandan's plan takes 64 for digits: images/s = steps/s x 64/8
    speed, images = float(rows[0][6][:-1]), rows[0][7]
    assert images.endswith("(64 vs 8)"), rows
    assert float(images.split("x")[0]) == pytest.approx(speed * 64 / 8, rel=0.05, abs=0.05)
