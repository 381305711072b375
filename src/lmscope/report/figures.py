"""Figures in the report: PNG files embedded as data URLs, each shown at its own print size.

A figure's CSS width is its width in inches (pixels / the dpi in its pHYs chunk) times 96, so
that every figure of a page is drawn at the same scale: a 10-point label has the same size in
all of them, whatever their pixel size. A figure wider than its column shrinks to fit.
"""

from __future__ import annotations

import base64
import html
import struct
from pathlib import Path

CSS_DPI = 96  # CSS pixels per inch
INCH = 0.0254  # metres


def png_display_width(data: bytes) -> int | None:
    """The width in CSS pixels at which a PNG shows at its print size (its dpi from the pHYs
    chunk; 96 where it has none); None when `data` is not a PNG."""
    if data[:8] != b"\x89PNG\r\n\x1a\n" or data[12:16] != b"IHDR":
        return None
    width = struct.unpack(">I", data[16:20])[0]
    dpi = CSS_DPI
    at = data.find(b"pHYs", 8, 4096)  # pHYs comes before the image data
    if at > 0:
        per_unit, _, unit = struct.unpack(">IIB", data[at + 4: at + 13])
        if unit == 1 and per_unit > 0:  # pixels per metre
            dpi = per_unit * INCH
    return max(1, round(width * CSS_DPI / dpi))


def img_tag(path: Path, alt: str = "") -> str:
    """An <img> of the PNG at `path`, embedded, at its print size (at most its column's width)."""
    data = path.read_bytes()
    width = png_display_width(data)
    size = f' width="{width}"' if width else ""
    encoded = base64.b64encode(data).decode("ascii")
    return (f"<img alt=\"{html.escape(alt or path.name)}\"{size} "
            f"src=\"data:image/png;base64,{encoded}\">")


def figures(items: list[tuple[Path, str]]) -> str:
    """Figures with captions, side by side where they fit."""
    cells = [f"<figure>{img_tag(p)}<figcaption>{html.escape(caption)}</figcaption></figure>"
             for p, caption in items if p.is_file()]
    return f"<div class=\"figures\">{''.join(cells)}</div>" if cells else ""
