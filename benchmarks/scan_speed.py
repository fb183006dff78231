"""`liandan scan` throughput against a plain decode of the same files.

Scan decodes every image and mask once (4 threads) and computes the fingerprint:
band statistics, class pixels, colours, the top/bottom/left/right class mix. A plain
decode (PIL, then numpy, the same 4 threads) is the floor any integrity check pays.
Both read the same files, the cache of scan off, files in the page cache (a warm-up
pass first). Appended to benchmarks/RESULTS.md.

    python benchmarks/scan_speed.py [DATA]   # default: the dubai tiles, laid out as a user would
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path

import numpy as np
from PIL import Image

sys.path.insert(0, str(Path(__file__).parent))
from machine import cpu_model

ROOT = Path(__file__).resolve().parents[1]


def files_of(root: Path) -> list[Path]:
    exts = {".png", ".jpg", ".jpeg", ".tif", ".tiff"}
    return sorted(p for p in root.rglob("*") if p.suffix.lower() in exts)


def plain_decode(paths: list[Path]) -> float:
    def one(path: Path) -> int:
        return int(np.asarray(Image.open(path)).size)

    with ThreadPoolExecutor(4) as pool:
        return float(sum(pool.map(one, paths)))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("data", nargs="?", type=Path)
    parser.add_argument("--no-write", action="store_true")
    args = parser.parse_args()
    from liandan.scan_report import scan

    with tempfile.TemporaryDirectory() as tmp:
        root = args.data
        if root is None:
            from vs_raw_loop import make_dubai

            root = make_dubai(Path(tmp) / "dubai")
        paths = files_of(root)
        pixels = sum(Image.open(p).size[0] * Image.open(p).size[1] for p in paths)
        plain_decode(paths)  # warm-up: files in the page cache
        load = os.getloadavg()
        times: dict[str, list[float]] = {"scan": [], "decode": []}
        for _ in range(3):  # interleaved
            start = time.perf_counter()
            scan(root, use_cache=False)
            times["scan"].append(time.perf_counter() - start)
            start = time.perf_counter()
            plain_decode(paths)
            times["decode"].append(time.perf_counter() - start)
    scan_s, decode_s = (sorted(v)[1] for v in times.values())
    when = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    text = (
        f"\n## Scan throughput — {when}\n\nMachine: {cpu_model()}, {os.cpu_count()} cores; "
        f"load average at the start {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}. "
        f"{len(paths)} files ({pixels / 1e6:.1f} Mpx) of `{root.name}`; median of 3 "
        "interleaved runs, files in the page cache, scan's cache off. Command: "
        "`python benchmarks/scan_speed.py`.\n\n"
        "| what | s | Mpx/s | vs plain decode |\n|---|---|---|---|\n"
        f"| liandan scan (decode + checks + fingerprint) | {scan_s:.2f} | "
        f"{pixels / 1e6 / scan_s:.1f} | {scan_s / decode_s:.2f}x |\n"
        f"| plain decode (PIL, 4 threads) | {decode_s:.2f} | {pixels / 1e6 / decode_s:.1f} | "
        "1.00x |\n"
    )
    print(text)
    if not args.no_write:
        with (ROOT / "benchmarks" / "RESULTS.md").open("a", encoding="utf-8") as fh:
            fh.write(text)


if __name__ == "__main__":
    main()
