"""A small, dependency-free HTML writer for report.html.

Every image is embedded as a base64 ``data:`` URI, so the page is one self-contained
file that can be mailed or moved on its own (the same PNGs stay under ``plots/``).
"""

from __future__ import annotations

import base64
import html
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

CSS = """
body { font: 14px/1.45 system-ui, -apple-system, "Segoe UI", sans-serif; margin: 0;
       color: #222; background: #fafafa; }
header { background: #1f2937; color: #fff; padding: 16px 32px; }
header h1 { margin: 0 0 4px; font-size: 22px; }
header p { margin: 0; color: #cbd5e1; }
nav { position: sticky; top: 0; background: #fff; border-bottom: 1px solid #ddd;
      padding: 8px 32px; z-index: 1; }
nav a { margin-right: 14px; color: #2563eb; text-decoration: none; }
main { padding: 8px 32px 48px; max-width: 1400px; }
section { background: #fff; border: 1px solid #e5e7eb; border-radius: 6px;
          padding: 4px 20px 16px; margin: 16px 0; }
h2 { font-size: 18px; border-bottom: 1px solid #eee; padding-bottom: 4px; }
table { border-collapse: collapse; margin: 8px 0; }
th, td { border: 1px solid #e5e7eb; padding: 3px 10px; text-align: right; }
th { background: #f3f4f6; }
td:first-child, th:first-child { text-align: left; }
#doctor td { text-align: left; }
pre { background: #f6f8fa; padding: 10px; overflow: auto; max-height: 480px; }
img { max-width: 100%; }
.note { color: #6b7280; }
.gallery { display: flex; flex-wrap: wrap; gap: 12px; }
.gallery figure { margin: 0; border: 1px solid #e5e7eb; padding: 6px; background: #fff; }
.gallery figcaption { font-size: 12px; max-width: 600px; word-break: break-all; }
.swatch { display: inline-block; width: 12px; height: 12px; border: 1px solid #999;
          vertical-align: middle; margin: 0 4px 0 10px; }
"""


def esc(value: Any) -> str:
    return html.escape(str(value), quote=True)


def fmt(value: Any, digits: int = 4) -> str:
    """A cell: ``None`` as an em dash (undefined), floats rounded, ints with separators."""
    if value is None:
        return "—"
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def table(headers: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    head = "".join(f"<th>{esc(h)}</th>" for h in headers)
    body = "".join(
        "<tr>" + "".join(f"<td>{esc(fmt(v))}</td>" for v in row) + "</tr>" for row in rows
    )
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def data_uri(path: Path) -> str:
    return "data:image/png;base64," + base64.b64encode(path.read_bytes()).decode("ascii")


def image(path: Path, alt: str, *, run: Path | None = None) -> str:
    """An ``<img>`` with the PNG embedded; ``data-file`` names it relative to the run."""
    rel = path.relative_to(run).as_posix() if run is not None else path.name
    return f'<img src="{data_uri(path)}" alt="{esc(alt)}" data-file="{esc(rel)}">'


def figure(path: Path, caption: str, facts: dict[str, Any], *, run: Path | None = None) -> str:
    lines = [f"<b>{esc(caption)}</b>"] + [f"{esc(k)}: {esc(v)}" for k, v in facts.items()]
    return f"<figure>{image(path, caption, run=run)}<figcaption>{'<br>'.join(lines)}</figcaption></figure>"


def legend(names: Sequence[str], colors: Sequence[Sequence[int]]) -> str:
    parts = [
        f'<span class="swatch" style="background: rgb({c[0]}, {c[1]}, {c[2]})"></span>{esc(n)}'
        for n, c in zip(names, colors, strict=False)
    ]
    return f"<p>classes: {''.join(parts)}</p>"


def note(text: str) -> str:
    return f'<p class="note">{esc(text)}</p>'


@dataclass
class Section:
    """One ``<section>`` of the page, linked from the navigation bar."""

    id: str
    title: str
    body: str


def page(title: str, subtitle: str, sections: Sequence[Section]) -> str:
    nav = "".join(f'<a href="#{esc(s.id)}">{esc(s.title)}</a>' for s in sections)
    body = "\n".join(
        f'<section id="{esc(s.id)}"><h2>{esc(s.title)}</h2>\n{s.body}\n</section>' for s in sections
    )
    return (
        "<!DOCTYPE html>\n"
        f'<html lang="en"><head><meta charset="utf-8"><title>{esc(title)}</title>'
        '<meta name="viewport" content="width=device-width, initial-scale=1">'
        f"<style>{CSS}</style></head><body>\n"
        f"<header><h1>{esc(title)}</h1><p>{esc(subtitle)}</p></header>\n"
        f"<nav>{nav}</nav>\n<main>\n{body}\n</main></body></html>\n"
    )
