"""What every benchmark entry records about the machine it ran on."""

from __future__ import annotations

import platform
from pathlib import Path


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (or what platform knows)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


RESULTS = Path(__file__).with_name("RESULTS.md")


def publish(lines: list[str], write: bool = True) -> str:
    """Print a benchmark entry and, with ``write``, append it to RESULTS.md."""
    text = "\n".join(lines)
    print(text)
    if write:
        with RESULTS.open("a", encoding="utf-8") as fh:
            fh.write("\n" + text)
    return text
