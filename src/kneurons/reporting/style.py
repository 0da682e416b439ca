"""The figures' common style: defaults and rc parameters, method colours, colour scales with
annotated cells, and writing a figure atomically as PNG and PDF.

Figures are built with `matplotlib.figure.Figure` directly (Agg canvas for PNG, PDF backend for
PDF), so nothing here touches pyplot's global state or needs a display.

`style` keys (all optional): dpi (150), font_size (10), cmap ("viridis", for density),
diverging_cmap ("RdBu_r", for enrichment), figure_width (inches, 10).
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import NamedTuple

import numpy as np
from matplotlib.colors import Colormap, Normalize
from matplotlib.figure import Figure

from kneurons.io import atomic_path
from kneurons.reporting.format import FULL_METHOD, PathLike

DEFAULT_STYLE = {
    "dpi": 150,
    "font_size": 10,
    "cmap": "viridis",
    "diverging_cmap": "RdBu_r",
    "figure_width": 10.0,
}
# Methods bring their own colours (kneurons.attribution.methods, passed in as
# style["method_colors"]).
_EXTRA_COLORS = ["#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"]


def merged_style(style: dict | None) -> dict:
    out = dict(DEFAULT_STYLE)
    out.update({k: v for k, v in (style or {}).items() if v is not None})
    out["dpi"] = int(out["dpi"])
    out["font_size"] = float(out["font_size"])
    out["figure_width"] = float(out["figure_width"])
    # what was scored and kept: output units (neurons) or, at weight granularity, weights
    out["scored"] = "weights" if out.get("granularity") == "weight" else "neurons"
    return out


def rc_params(st: dict) -> dict:
    fs = st["font_size"]
    return {
        "font.size": fs,
        "axes.titlesize": fs,
        "axes.labelsize": fs,
        "xtick.labelsize": fs * 0.9,
        "ytick.labelsize": fs * 0.9,
        "legend.fontsize": fs * 0.9,
        "figure.titlesize": fs * 1.2,
        "pdf.fonttype": 42,
    }


def method_colors(methods: Iterable[str], given: dict | None = None) -> dict[str, str]:
    """Each method's registered colour (`given`), else the next of a fixed palette."""
    given = {FULL_METHOD: "black", **(given or {})}
    colors, extra = {}, iter(_EXTRA_COLORS * 4)
    for m in methods:
        colors[m] = given.get(m) or next(extra)
    return colors


def save_figure(fig: Figure, out_png: PathLike, out_pdf: PathLike, dpi: int) -> list[Path]:
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    with atomic_path(out_pdf) as tmp:
        fig.savefig(tmp, format="pdf")
    return [Path(out_png), Path(out_pdf)]


class ColourScale(NamedTuple):
    """How heatmap values become colours, and how the colour bar and cells are labelled."""

    norm: Normalize
    cmap: Colormap
    label: str
    fmt: str


def annotate_cells(ax, grid: np.ndarray, scale: ColourScale, font_size: float) -> None:
    """Print each finite cell value, white on dark colours and black on light ones."""
    norm, cmap = scale.norm, scale.cmap
    for (yy, xx), v in np.ndenumerate(grid):
        if not np.isfinite(v):
            continue
        rgba = cmap(norm(np.clip(v, norm.vmin, norm.vmax)))
        lum = 0.299 * rgba[0] + 0.587 * rgba[1] + 0.114 * rgba[2]
        ax.text(
            xx,
            yy,
            "0" if v == 0 else scale.fmt.format(v),
            ha="center",
            va="center",
            fontsize=font_size * 0.6,
            color="white" if lum < 0.5 else "black",
        )
