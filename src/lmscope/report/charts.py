"""Interactive line charts in the report, drawn in the browser by uPlot.

uPlot (vendor/uPlot.iife.min.js, MIT, 51 kB; vendor/README.md says where it came from) is embedded
in a page that has a chart, once, so that the page needs no network. A chart is a `<div
class="chart">` holding its data as JSON; js/charts.js draws each one with:

    hover      the cursor's x and every series' value there, in the legend below the chart
    zoom       drag across the plot to zoom in on an x range; double-click to zoom out
    toggle     click a series in the legend to hide or show it

Numbers are written with 5 significant digits: a chart is for reading, the tables hold the
exact values.
"""

from __future__ import annotations

import html
import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

VENDOR = Path(__file__).parent / "vendor"
SCRIPTS = Path(__file__).parent / "js"
# matplotlib's tab10, so that a model has the same colour in charts and in figures
PALETTE = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2",
           "#7f7f7f", "#bcbd22", "#17becf")

STYLE = """
.chart-box { margin: .8em 0; }
.chart { width: 100%; min-height: 120px; }
.chart .u-legend { font-size: 12px; }
.chart .u-legend .u-series > * { padding: 1px 3px; }
.chart .u-legend .u-value { min-width: 4.5em; text-align: left; font-variant-numeric: tabular-nums; }
"""



@dataclass
class Series:
    """One line of a chart: (x, y) points; NaN or None values are left out."""

    label: str
    points: Sequence[tuple[float, float | None]]
    color: str = PALETTE[0]
    width: float = 1.5
    dash: bool = False
    markers: bool = False  # a dot at each point
    faint: bool = False  # drawn translucent (a noisy series under a smooth one)


def colour(i: int) -> str:
    return PALETTE[i % len(PALETTE)]


def _rgba(hex_colour: str, alpha: float) -> str:
    r, g, b = (int(hex_colour[i:i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _short(v) -> float | int | None:
    if v is None or (isinstance(v, float) and not math.isfinite(v)):
        return None
    if float(v).is_integer() and abs(v) < 1e15:
        return int(v)
    return float(f"{v:.5g}")


def line_chart(series: Sequence[Series], *, xlabel: str, ylabel: str, caption: str = "",
               height: int = 320, logy: bool = False) -> str:
    """A chart of `series` over a shared x axis (the union of their x values), as HTML."""
    xs = sorted({_short(x) for s in series for x, _ in s.points if _short(x) is not None})
    at = {x: i for i, x in enumerate(xs)}
    lines = []
    for s in series:
        ys: list = [None] * len(xs)
        for x, y in s.points:
            if _short(x) is not None:
                ys[at[_short(x)]] = _short(y)
        lines.append({"label": s.label, "y": ys, "width": s.width, "dash": s.dash,
                      "markers": s.markers,
                      "color": _rgba(s.color, 0.45) if s.faint else s.color})
    spec = {"x": xs, "series": lines, "xlabel": xlabel, "ylabel": ylabel, "height": height,
            "logy": logy}
    # no "<" inside the data block: a label holding "</script>" cannot end it
    data = json.dumps(spec, separators=(",", ":")).replace("<", "\\u003c")
    note = ("Hover for values; drag across to zoom in, double-click to zoom out; click a legend "
            "entry to hide or show it.")
    return (f"<figure class=\"chart-box\"><div class=\"chart\"><script type=\"application/json\">"
            f"{data}</script></div><figcaption>{html.escape(caption)} {note}</figcaption></figure>")


def assets(body: str) -> tuple[str, str]:
    """The style sheet and scripts a page with `body` needs for its charts ("" and "" when it
    has none): uPlot's CSS and JS, embedded, and js/charts.js."""
    if 'class="chart"' not in body:
        return "", ""
    css = (VENDOR / "uPlot.min.css").read_text(encoding="utf-8")
    js = (VENDOR / "uPlot.iife.min.js").read_text(encoding="utf-8")
    return (f"<style>{css}{STYLE}</style>",
            f"<script>/* uPlot 1.6.32, (c) 2022 Leon Sorokin, MIT license */\n{js}</script>"
            f"<script>{script('charts.js')}</script>")


def script(name: str) -> str:
    """The text of js/NAME, one of the report's own scripts."""
    return (SCRIPTS / name).read_text(encoding="utf-8")
