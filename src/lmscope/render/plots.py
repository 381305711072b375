"""The few kinds of figure the studies draw, as PNG files: bars, heatmaps and lines.

matplotlib with its non-interactive Agg backend (no display needed); every file is written
to a temporary name and renamed into place. Every figure is saved at DPI and at most MAX_WIDTH
inches wide, so that the report (which shows each at its print size) draws them all at one
scale: a label has the same size in every figure.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path, PurePath

import numpy as np

from lmscope.io import atomic_write

DPI = 96  # one PNG pixel per CSS pixel in the report
MAX_WIDTH = 11.5  # inches: the report's column (1136 CSS pixels at 96 per inch)


def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def drawn(path: str | Path, skip: Sequence[str] = ()) -> bool:
    """Whether the figure at `path` is to be drawn: not when its path matches a pattern of
    `skip` (pathlib's `match`, from the right: "heatmap_*.png", "*/grid_*.png"): the figures a
    study's report does not show, when the study draws only what its report shows (`[study]
    figures = "report"`)."""
    return not any(PurePath(path).match(pattern) for pattern in skip)


def figure(*args, **kwargs):
    """plt.subplots with constrained layout: every figure is laid out as it is drawn, so that
    `save` draws it once (bbox_inches="tight" would draw it twice, to find its edges first)."""
    return _pyplot().subplots(*args, layout="constrained", **kwargs)


def save(fig, path: str | Path) -> Path:
    """`fig` as a PNG of at most 256 colours, at DPI: under half the bytes of matplotlib's
    RGBA. Pillow's maximum-coverage palette keeps each pixel close to matplotlib's (median cut,
    the default, turned a light blue line teal; the fast octree is up to 18 of 255 off);
    tests/report/test_html.py checks it. zlib's default level: its highest (optimize=True)
    takes twice the time of the whole encoding for 13% fewer bytes."""
    from PIL import Image  # matplotlib's own dependency, imported with it

    path = Path(path)
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=DPI)
    _pyplot().close(fig)
    image = Image.open(buffer).convert("RGB").quantize(256, method=Image.Quantize.MAXCOVERAGE)
    atomic_write(path, lambda tmp: image.save(tmp, format="PNG", dpi=(DPI, DPI)))
    return path


def bar_chart(labels: Sequence[str], values: Sequence[float], path, *, title: str,
              ylabel: str) -> Path:
    fig, ax = figure(figsize=(min(max(6, 0.35 * len(labels)), MAX_WIDTH), 3.5))
    ax.bar(range(len(labels)), values, color="#4878a8")
    ax.set_xticks(range(len(labels)), labels, rotation=90 if len(labels) > 12 else 0)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return save(fig, path)


def heatmap(values, row_labels: Sequence[str], col_labels: Sequence[str], path, *, title: str,
            xlabel: str = "", ylabel: str = "", fmt: str = "{:.3f}", cmap: str = "viridis",
            colorbar: str = "", annotate: bool = True) -> Path:
    """A matrix as coloured cells, each annotated with its value (NaN cells left blank)."""
    values = np.asarray(values, dtype=float)
    rows, cols = values.shape
    width = max(4, 0.9 + 0.5 * cols) if annotate and cols < 12 else max(4, 0.25 * cols + 2)
    fig, ax = figure(figsize=(min(width, MAX_WIDTH), max(2.5, 0.5 * rows + 1.2)))
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, aspect="auto")
    ax.set_xticks(range(cols), col_labels, rotation=90 if cols > 8 else 0)
    ax.set_yticks(range(rows), row_labels)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label=colorbar)
    if annotate:
        for r in range(rows):
            for c in range(cols):
                if np.isfinite(values[r, c]):
                    red, green, blue, _ = image.cmap(image.norm(values[r, c]))
                    light = 0.299 * red + 0.587 * green + 0.114 * blue > 0.5  # text readable on it
                    ax.text(c, r, fmt.format(values[r, c]), ha="center", va="center", fontsize=8,
                            color="black" if light else "white")
    return save(fig, path)


def heatmap_panels(panels: Mapping[str, np.ndarray], row_labels: Sequence[str],
                   col_labels: Sequence[str], path, *, title: str, xlabel: str = "",
                   ylabel: str = "", cmap: str = "viridis", colorbar: str = "") -> Path:
    """Several matrices of one shape and one quantity (panel title -> values), stacked with one
    shared colour scale and one set of column labels at the bottom: one figure where there
    would be one per matrix, read side by side (and drawn in a third of the time)."""
    mats = [np.asarray(v, dtype=float) for v in panels.values()]
    rows, cols = mats[0].shape
    finite = [m[np.isfinite(m)] for m in mats]
    vmax = max((float(f.max()) for f in finite if f.size), default=1.0)
    vmin = min((float(f.min()) for f in finite if f.size), default=0.0)
    fig, axes = figure(len(mats), 1, sharex=True, squeeze=False,
                             figsize=(min(max(4, 0.25 * cols + 2), MAX_WIDTH),
                                      len(mats) * max(1.4, 0.3 * rows + 0.7) + 1.2))
    axes = axes[:, 0]
    for ax, (name, values) in zip(axes, zip(panels, mats, strict=True), strict=True):
        image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, aspect="auto", vmin=vmin,
                          vmax=vmax)
        ax.set_yticks(range(rows), row_labels, fontsize=8)
        ax.set_title(name, fontsize=9)
        ax.set_ylabel(ylabel, fontsize=8)
    axes[-1].set_xticks(range(cols), col_labels, rotation=90 if cols > 8 else 0)
    axes[-1].set_xlabel(xlabel)
    fig.suptitle(title)
    fig.colorbar(image, ax=list(axes), label=colorbar)
    return save(fig, path)


def token_grid(values, texts, row_labels: Sequence[str], col_labels: Sequence[str], path, *,
               title: str, xlabel: str = "", ylabel: str = "", colorbar: str = "",
               vmin: float | None = None, vmax: float | None = None,
               cmap: str = "viridis") -> Path:
    """A matrix as coloured cells, each showing a short text (a token) instead of its value: the
    logit lens's picture, layers by positions, each cell the layer's first choice there."""
    values = np.asarray(values, dtype=float)
    rows, cols = values.shape
    fig, ax = figure(figsize=(min(max(4.0, 0.38 * cols + 2.2), MAX_WIDTH),
                                    max(2.5, 0.36 * rows + 1.4)))
    image = ax.imshow(np.ma.masked_invalid(values), cmap=cmap, aspect="auto", vmin=vmin,
                      vmax=vmax)
    ax.set_xticks(range(cols), col_labels, rotation=90, fontsize=8)
    ax.set_yticks(range(rows), row_labels, fontsize=8)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    fig.colorbar(image, ax=ax, label=colorbar)
    for r in range(rows):
        for c in range(cols):
            red, green, blue, _ = image.cmap(image.norm(values[r, c]))
            light = 0.299 * red + 0.587 * green + 0.114 * blue > 0.5
            ax.text(c, r, texts[r][c], ha="center", va="center", fontsize=7,
                    color="black" if light else "white")
    return save(fig, path)


def line_plot(series: Mapping[str, tuple[Sequence[float], Sequence[float]]], path, *, title: str,
              xlabel: str, ylabel: str, styles: Mapping[str, str] | None = None,
              logx: bool = False) -> Path:
    """One line per named series of (x, y)."""
    fig, ax = figure(figsize=(6.5, 4))
    for label, (x, y) in series.items():
        ax.plot(x, y, (styles or {}).get(label, "-"), marker=".", label=label)
    if logx:
        ax.set_xscale("symlog")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(alpha=0.3)
    if series:
        ax.legend(fontsize=8)
    return save(fig, path)


def panels(n: int, *, title: str, width: float = 5.0, height: float = 3.6):
    """A row of `n` axes sharing a title, for side-by-side comparisons, at most MAX_WIDTH inches
    wide in all; save with `save`."""
    fig, axes = figure(1, n, figsize=(min(width * n, MAX_WIDTH), height), squeeze=False)
    fig.suptitle(title)
    return fig, list(axes[0])


def grid(rows: int, cols: int, *, title: str, width: float = 4.5, height: float = 3.0,
         **kwargs):
    """`rows` x `cols` axes (a list of rows) sharing a title: small multiples, at most MAX_WIDTH
    inches wide; `kwargs` go to plt.subplots (sharex, sharey, ...)."""
    fig, axes = figure(rows, cols, figsize=(min(width * cols, MAX_WIDTH), height * rows),
                       squeeze=False, **kwargs)
    fig.suptitle(title)
    return fig, [list(row) for row in axes]


def legend_below(fig, handles=None, labels=None, *, ncol: int | None = None) -> None:
    """One legend for the whole figure, under its axes (the entries of its first axes that has
    any, unless `handles` and `labels` are given)."""
    if handles is None:
        for ax in fig.axes:
            handles, labels = ax.get_legend_handles_labels()
            if handles:
                break
    if handles:
        fig.legend(handles, labels, loc="outside lower center", fontsize=9, frameon=False,
                   ncol=ncol or min(len(handles), 4))


def sequential_colours(n: int, cmap: str = "viridis_r") -> list:
    """`n` colours from light to dark, for lines that follow training (early light, late dark)."""
    plt = _pyplot()
    colours = plt.get_cmap(cmap)
    return [colours(0.15 + 0.8 * i / max(n - 1, 1)) for i in range(n)]


def mean_band(ax, x, values, label: str, color: str) -> None:
    """The mean of `values` (rows: seeds, columns: the points of `x`) as a line, with a shaded
    +-1 standard error band (ddof 1; no band for one row)."""
    if not len(x):
        return
    values = np.asarray(values, dtype=float)
    mean = values.mean(axis=0)
    ax.plot(x, mean, color=color, label=label)
    if len(values) > 1:
        se = values.std(axis=0, ddof=1) / np.sqrt(len(values))
        ax.fill_between(x, mean - se, mean + se, color=color, alpha=0.25)


def iteration_axis(ax, iterations, *, label: str = "training iteration") -> None:
    """An x axis of training iterations with a tick at each one (when there are at most 12), on
    a symlog scale when they span decades (linear up to the first after 0, which keeps 0)."""
    iters = sorted(set(iterations))
    positive = [i for i in iters if i > 0]
    if positive and iters[-1] > 20 * positive[0]:
        ax.set_xscale("symlog", linthresh=positive[0], linscale=0.5)
    if len(iters) <= 12:
        ax.set_xticks(iters, [str(i) for i in iters], rotation=45 if len(iters) > 5 else 0)
        ax.minorticks_off()
    ax.set_xlabel(label)


def finish_axes(axes, *, xlabel: str = "iteration", ylabel: str = "") -> None:
    """Label, grid and (where something is labelled) a legend on each of `axes`."""
    for ax in axes:
        ax.set_xlabel(xlabel)
        if ylabel:
            ax.set_ylabel(ylabel)
        ax.grid(alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=7)


def training_curves(rows: Sequence[Mapping], path, *, title: str) -> Path:
    """A run's curves from its metrics rows: train loss at every logged step, and the validation
    (and train) loss estimates at every evaluation, labelled by epoch where the run has epochs."""
    train = [(r["iter"], r["loss"]) for r in rows
             if r.get("kind") == "train" and r.get("loss") is not None]  # None: a skipped step
    evals = [r for r in rows if r.get("kind") == "eval"]
    fig, ax = figure(figsize=(7, 4))
    if train:
        ax.plot(*zip(*train, strict=True), color="C0", alpha=0.5, linewidth=0.8,
                label="train loss (each logged step)")
    if evals:
        by_epoch = all("epoch" in r for r in evals)
        label = "per epoch" if by_epoch else "per evaluation"
        ax.plot([r["iter"] for r in evals], [r["val_loss"] for r in evals], "o-", color="C3",
                label=f"validation loss ({label})")
        ax.plot([r["iter"] for r in evals], [r["train_loss"] for r in evals], "s--", color="C0",
                markersize=4, label=f"train loss estimate ({label})")
    ax.set_xlabel("iteration")
    ax.set_ylabel("loss (nats/token)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return save(fig, path)
