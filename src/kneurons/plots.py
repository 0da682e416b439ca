"""Figures for the pruning experiment, each written atomically as PNG and PDF.

Figures are built with `matplotlib.figure.Figure` directly (Agg canvas for PNG, PDF backend for
PDF), so nothing here touches pyplot's global state or needs a display.

`style` keys (all optional): dpi (150), font_size (10), cmap ("viridis", for density),
diverging_cmap ("RdBu_r", for enrichment), figure_width (inches, 10).
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import NamedTuple

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.colors import Colormap, LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from kneurons.io import atomic_path, read_json
from kneurons.report import (
    FOCUS_MODULE,
    FULL_METHOD,
    format_retention,
    method_order,
    module_enrichment,
    module_order,
)

PathLike = str | os.PathLike

DEFAULT_STYLE = {
    "dpi": 150,
    "font_size": 10,
    "cmap": "viridis",
    "diverging_cmap": "RdBu_r",
    "figure_width": 10.0,
}
# Methods bring their own colours (kneurons.methods, passed in as style["method_colors"]).
_EXTRA_COLORS = ["#2ca02c", "#d62728", "#9467bd", "#8c564b", "#e377c2", "#17becf"]

OUTPUT_NAMES = {
    "accuracy": "accuracy_vs_retention",
    "density": "density_heatmaps",
    "enrichment": "enrichment_heatmaps",
    "modules": "module_enrichment",
}


# ----------------------------------------------------------------------------- helpers


def _style(style: dict | None) -> dict:
    out = dict(DEFAULT_STYLE)
    out.update({k: v for k, v in (style or {}).items() if v is not None})
    out["dpi"] = int(out["dpi"])
    out["font_size"] = float(out["font_size"])
    out["figure_width"] = float(out["figure_width"])
    # what was scored and kept: output units (neurons) or, at weight granularity, weights
    out["scored"] = "weights" if out.get("granularity") == "weight" else "neurons"
    return out


def _rc(st: dict) -> dict:
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


def _colors(methods: Iterable[str], given: dict | None = None) -> dict[str, str]:
    """Each method's registered colour (`given`), else the next of a fixed palette."""
    given = {FULL_METHOD: "black", **(given or {})}
    colors, extra = {}, iter(_EXTRA_COLORS * 4)
    for m in methods:
        colors[m] = given.get(m) or next(extra)
    return colors


def _save(fig: Figure, out_png: PathLike, out_pdf: PathLike, dpi: int) -> list[Path]:
    with atomic_path(out_png) as tmp:
        fig.savefig(tmp, format="png", dpi=dpi)
    with atomic_path(out_pdf) as tmp:
        fig.savefig(tmp, format="pdf")
    return [Path(out_png), Path(out_pdf)]


def _pruned_methods(df: pd.DataFrame) -> list[str]:
    return [m for m in method_order(df["method"]) if m != FULL_METHOD]


def _bold_tick(ax, labels: Sequence[str], axis: str = "x") -> None:
    ticks = ax.get_xticklabels() if axis == "x" else ax.get_yticklabels()
    for tick, name in zip(ticks, labels, strict=False):
        if name == FOCUS_MODULE:
            tick.set_fontweight("bold")


def _spread_label(n_seeds: int) -> str:
    return "± 1 sd" if n_seeds >= 3 else "min–max"


# ----------------------------------------------------------------------------- accuracy


def _method_curves(ax, summary: pd.DataFrame, methods: list[str], colors: dict) -> None:
    """One line per pruned method: mean accuracy over seeds per retention, spread shaded."""
    for method in methods:
        g = summary[summary["method"] == method].groupby("retention")["accuracy"]
        stats = g.agg(["mean", "std", "min", "max", "count"]).sort_index()
        n = int(stats["count"].min())
        if n >= 3:
            lo, hi = stats["mean"] - stats["std"], stats["mean"] + stats["std"]
        else:
            lo, hi = stats["min"], stats["max"]
        c = colors[method]
        ax.plot(
            stats.index,
            stats["mean"],
            marker="o",
            color=c,
            lw=1.8,
            label=f"{method} (mean {_spread_label(n)}, {n} seeds)",
        )
        ax.fill_between(stats.index, lo, hi, color=c, alpha=0.2, lw=0)


def _reference_lines(ax, summary: pd.DataFrame, chance: float | None) -> None:
    """Dashed full-model mean (marker at r = 1 with its min–max over seeds) and dotted chance."""
    full = summary.loc[summary["method"] == FULL_METHOD, "accuracy"]
    if not full.empty:
        fm = float(full.mean())
        ax.axhline(
            fm,
            color="black",
            ls="--",
            lw=1.2,
            label=f"full model, no pruning (mean {fm:.3f}, {len(full)} seeds)",
        )
        if len(full) > 1:
            ax.errorbar(
                [1.0],
                [fm],
                yerr=[[fm - full.min()], [full.max() - fm]],
                fmt="s",
                color="black",
                ms=5,
                capsize=3,
            )
        else:
            ax.plot([1.0], [fm], "s", color="black", ms=5)
    if chance is not None and np.isfinite(chance):
        ax.axhline(chance, color="0.3", ls=":", lw=1.5, label=f"chance ({chance:.3f})")


def _retention_axes(ax, retentions: Iterable[float], scored: str = "neurons") -> None:
    """Log retention axis with one labelled tick per ratio (100% on the left), labels, grid."""
    rets = sorted(set(retentions) | {1.0})
    ax.set_xscale("log")
    ax.xaxis.set_major_locator(FixedLocator(rets))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: format_retention(x)))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.set_xlim(max(rets) * 1.25, min(rets) / 1.25)  # 100% on the left: more pruning ->
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(f"retention ratio r (% of scored {scored} kept, log scale)")
    ax.set_ylabel("test accuracy (fraction correct)")
    ax.set_title(f"Test accuracy after keeping the top-r {scored} and ablating the rest")
    ax.grid(True, which="major", alpha=0.3)


def plot_accuracy_vs_retention(
    summary: pd.DataFrame,
    chance: float | None,
    out_png: PathLike,
    out_pdf: PathLike,
    style: dict | None = None,
) -> list[Path]:
    """Test accuracy vs retention ratio, one line per method (mean over seeds, shaded spread).

    Spread is ± 1 sd over seeds when a method has >= 3 seeds, else min–max; the legend says which.
    """
    st = _style(style)
    with mpl.rc_context(_rc(st)):
        fig = Figure(figsize=(st["figure_width"], st["figure_width"] * 0.55), layout="constrained")
        ax = fig.add_subplot()
        methods = _pruned_methods(summary)
        _method_curves(ax, summary, methods, _colors(methods, st.get("method_colors")))
        _reference_lines(ax, summary, chance)
        _retention_axes(ax, summary["retention"].astype(float), st["scored"])
        fig.legend(loc="outside right upper", frameon=False)
        return _save(fig, out_png, out_pdf, st["dpi"])


# ----------------------------------------------------------------------------- heatmaps


def _cell_means(density: pd.DataFrame, value: str) -> pd.DataFrame:
    """Mean of `value` over seeds per (method, retention, layer, module); methods in the order
    they come (the config's)."""
    keys = ["method", "retention", "layer", "module"]
    return density.groupby(keys, as_index=False, sort=False)[value].mean()


class _ColourScale(NamedTuple):
    """How heatmap values become colours, and how the colour bar and cells are labelled."""

    norm: Normalize
    cmap: Colormap
    label: str
    fmt: str


def _heatmap_scale(vals: np.ndarray, value: str, st: dict) -> _ColourScale:
    """Shared colour scale: density linear from 0; enrichment log, symmetric about 1, >= 0.5..2."""
    if value == "density":
        return _ColourScale(
            Normalize(vmin=0.0, vmax=max(float(np.nanmax(vals)), 1e-9)),
            mpl.colormaps[st["cmap"]],
            f"fraction of {st['scored']} kept",
            "{:.2f}",
        )
    pos = vals[vals > 0]
    span = max(
        float(np.nanmax(vals)) if vals.size else 2.0,
        1.0 / float(pos.min()) if pos.size else 2.0,
        2.0,
    )
    return _ColourScale(
        LogNorm(vmin=1.0 / span, vmax=span),
        mpl.colormaps[st["diverging_cmap"]].copy(),
        "enrichment = fraction kept / r (log scale; 1 = no preference)",
        "{:.2g}",
    )


def _panel_grid(
    means: pd.DataFrame, method: str, r: float, value: str, layers: list, mods: list[str]
) -> np.ndarray:
    """(n_layers, n_modules) array of `value` for one method and retention; NaN where absent."""
    sub = means[(means["method"] == method) & np.isclose(means["retention"], r)]
    return (
        sub.pivot(index="layer", columns="module", values=value)
        .reindex(index=layers, columns=mods)
        .to_numpy(dtype=float)
    )


def _annotate_cells(ax, grid: np.ndarray, scale: _ColourScale, font_size: float) -> None:
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


def _heatmap_panel(
    ax,
    grid: np.ndarray,
    scale: _ColourScale,
    clip: bool,
    annotate: bool,
    font_size: float,
) -> AxesImage:
    """Draw one (n_layers, n_modules) grid, layer 0 at the bottom; NaN cells stay blank."""
    # clip (log scale): values outside the range take the end colours instead of none
    shown = np.clip(grid, scale.norm.vmin, scale.norm.vmax) if clip else grid
    im = ax.imshow(
        np.ma.masked_invalid(shown),
        aspect="auto",
        origin="lower",
        cmap=scale.cmap,
        norm=scale.norm,
        interpolation="nearest",
    )
    if annotate:
        _annotate_cells(ax, grid, scale, font_size)
    return im


def _label_panel(ax, title: str, mods: list[str], layers: list, first_col: bool) -> None:
    """Title, module names on x (k_proj bold), layers on y (thinned beyond 12 layers)."""
    ax.set_title(title)
    ax.set_xticks(range(len(mods)))
    ax.set_xticklabels(mods, rotation=45, ha="right")
    _bold_tick(ax, mods)
    ax.set_yticks(layers if len(layers) <= 12 else layers[:: max(1, len(layers) // 8)])
    if first_col:
        ax.set_ylabel("layer")
    ax.tick_params(length=2)


def _heatmap_colorbar(fig: Figure, im: AxesImage, axes, scale: _ColourScale, value: str) -> None:
    """One colour bar for all panels; enrichment gets ticks at round ratios around 1."""
    cbar = fig.colorbar(im, ax=axes, shrink=0.9, pad=0.01, aspect=30)
    cbar.set_label(scale.label)
    if value == "enrichment":
        norm = scale.norm
        ticks = [t for t in (0.01, 0.1, 0.25, 0.5, 1, 2, 4, 10, 100) if norm.vmin <= t <= norm.vmax]
        cbar.set_ticks(ticks)
        cbar.set_ticklabels([f"{t:g}" for t in ticks])
        cbar.ax.minorticks_off()


def plot_layer_heatmaps(
    density: pd.DataFrame,
    out_png: PathLike,
    out_pdf: PathLike,
    style: dict | None = None,
    value: str = "density",
) -> list[Path]:
    """Grid of layer x module heatmaps: rows = methods, columns = retention ratios (descending).

    value="density": fraction kept, linear colour scale shared by all panels.
    value="enrichment": fraction kept / r, diverging log scale centred at 1.
    Colour = mean over seeds. Cell values are printed when there are <= 12 layers.
    """
    if value not in ("density", "enrichment"):
        raise ValueError(f"value must be 'density' or 'enrichment', not {value!r}")
    st = _style(style)
    means = _cell_means(density, value)
    methods = _pruned_methods(means)
    rets = sorted(means["retention"].unique(), reverse=True)
    layers = sorted(means["layer"].unique())
    mods = module_order(means["module"])
    n_rows, n_cols = len(methods), len(rets)
    n_seeds = density["seed"].nunique()
    scale = _heatmap_scale(means[value].to_numpy(dtype=float), value, st)

    annotate = len(layers) <= 12
    n_lay = len(layers)
    # taller panels when cell values are printed, so the text fits
    panel_h = max(1.6, 0.22 * n_lay + 0.9) if annotate else min(4.0, 0.08 * n_lay + 1.4)
    with mpl.rc_context(_rc(st)):
        fig = Figure(
            figsize=(st["figure_width"], panel_h * n_rows + 0.8),
            layout="constrained",
        )
        axes = np.atleast_2d(fig.subplots(n_rows, n_cols, squeeze=False, sharex=True, sharey=True))
        im = None
        for i, method in enumerate(methods):
            for j, r in enumerate(rets):
                ax = axes[i, j]
                grid = _panel_grid(means, method, r, value, layers, mods)
                clip = value != "density"
                im = _heatmap_panel(ax, grid, scale, clip, annotate, st["font_size"])
                _label_panel(ax, f"{method}, r = {format_retention(r)}", mods, layers, j == 0)
        _heatmap_colorbar(fig, im, axes, scale, value)
        if value == "enrichment":
            title = (
                f"Enrichment of kept {st['scored']} per layer and module type (fraction kept / r)"
            )
        else:
            title = f"Fraction of {st['scored']} kept per layer and module type"
        fig.suptitle(f"{title}; mean over {n_seeds} seed{'s' if n_seeds != 1 else ''}")
        return _save(fig, out_png, out_pdf, st["dpi"])


def plot_density_heatmaps(
    density: pd.DataFrame, out_png: PathLike, out_pdf: PathLike, style: dict | None = None
) -> list[Path]:
    """Layer x module heatmaps coloured by fraction of neurons kept."""
    return plot_layer_heatmaps(density, out_png, out_pdf, style, value="density")


def plot_enrichment_heatmaps(
    density: pd.DataFrame, out_png: PathLike, out_pdf: PathLike, style: dict | None = None
) -> list[Path]:
    """Layer x module heatmaps coloured by enrichment (density / r), log scale centred at 1."""
    return plot_layer_heatmaps(density, out_png, out_pdf, style, value="enrichment")


# ----------------------------------------------------------------------------- module bars


def _error_bars(s: pd.DataFrame, mean: np.ndarray, use_sd: bool) -> np.ndarray:
    """(2, n_modules) lower/upper error-bar lengths: ± sd (0 if undefined), else to min/max."""
    if use_sd:
        sd = s["enrichment_sd"].fillna(0).to_numpy(dtype=float)
        return np.vstack([sd, sd])
    return np.vstack(
        [
            mean - s["enrichment_min"].to_numpy(dtype=float),
            s["enrichment_max"].to_numpy(dtype=float) - mean,
        ]
    )


def _enrichment_panel(
    ax,
    sub: pd.DataFrame,
    methods: list[str],
    colors: dict,
    mods: list[str],
    use_sd: bool,
) -> None:
    """One retention's panel: bars per module, grouped by method, k_proj shaded, line at 1."""
    width = 0.8 / max(1, len(methods))
    if FOCUS_MODULE in mods:
        k = mods.index(FOCUS_MODULE)
        ax.axvspan(k - 0.45, k + 0.45, color="#fff2b3", zorder=0)
    for i, method in enumerate(methods):
        s = sub[sub["method"] == method].set_index("module").reindex(mods)
        mean = s["enrichment_mean"].to_numpy(dtype=float)
        x = np.arange(len(mods)) + (i - (len(methods) - 1) / 2) * width
        ax.bar(
            x,
            mean,
            width=width,
            color=colors[method],
            yerr=_error_bars(s, mean, use_sd),
            capsize=2,
            error_kw={"lw": 0.8},
            label=method,
            zorder=2,
        )
    ax.axhline(1.0, color="black", ls="--", lw=1, zorder=3, label="1 = no preference")
    ax.set_xticks(range(len(mods)))
    ax.set_xticklabels(mods)
    _bold_tick(ax, mods)
    ax.set_xlim(-0.6, len(mods) - 0.4)
    ax.set_ylim(bottom=0)


def _bar_legend(fig: Figure, ax, methods: list[str]) -> None:
    """One legend below all panels, taken from `ax`: the methods first, then the line at 1."""
    handles, labels = ax.get_legend_handles_labels()
    order = sorted(range(len(labels)), key=lambda i: labels[i] not in methods)  # methods first
    handles, labels = [handles[i] for i in order], [labels[i] for i in order]
    fig.legend(
        handles,
        labels,
        loc="outside lower center",
        ncols=len(labels),
        frameon=False,
    )


def plot_module_enrichment(
    enrichment: pd.DataFrame,
    out_png: PathLike,
    out_pdf: PathLike,
    style: dict | None = None,
) -> list[Path]:
    """Grouped bars of module-type enrichment (output of `report.module_enrichment`).

    One panel per retention ratio; error bars are ± 1 sd over seeds (min–max when < 3 seeds).
    """
    st = _style(style)
    methods = _pruned_methods(enrichment)
    colors = _colors(methods, st.get("method_colors"))
    rets = sorted(enrichment["retention"].unique(), reverse=True)
    mods = module_order(enrichment["module"])
    n_seeds = int(enrichment["n_seeds"].min()) if len(enrichment) else 0
    use_sd = n_seeds >= 3
    n_cols = min(2, len(rets))
    n_rows = int(np.ceil(len(rets) / n_cols))
    with mpl.rc_context(_rc(st)):
        fig = Figure(
            figsize=(st["figure_width"], 2.9 * n_rows + 0.7),
            layout="constrained",
        )
        axes = fig.subplots(n_rows, n_cols, squeeze=False).ravel()
        for ax in axes[len(rets) :]:
            ax.set_visible(False)
        for j, (ax, r) in enumerate(zip(axes, rets, strict=False)):
            sub = enrichment[np.isclose(enrichment["retention"], r)]
            _enrichment_panel(ax, sub, methods, colors, mods, use_sd)
            ax.set_title(f"r = {format_retention(r)}")
            if j % n_cols == 0:
                ax.set_ylabel("enrichment\n(kept fraction / retention)")
            ax.grid(True, axis="y", alpha=0.3, zorder=0)
        _bar_legend(fig, axes[0], methods)
        fig.suptitle(
            f"Enrichment of kept {st['scored']} by module type, pooled over layers "
            f"(bars: mean over {n_seeds} seeds, error bars {_spread_label(n_seeds)})"
        )
        return _save(fig, out_png, out_pdf, st["dpi"])


# ----------------------------------------------------------------------------- all


def make_all_plots(
    summary_tsv: PathLike,
    density_tsv: PathLike,
    finetune_paths: Iterable[PathLike],
    out_dir: PathLike,
    style: dict | None = None,
) -> list[Path]:
    """Write all four figures (PNG + PDF) under out_dir; return the eight paths."""
    out_dir = Path(out_dir)
    summary = pd.read_csv(summary_tsv, sep="\t")
    density = pd.read_csv(density_tsv, sep="\t")
    chances = [float(read_json(p)["chance"]) for p in finetune_paths]
    chance = float(np.mean(chances)) if chances else None

    def paths(key: str) -> tuple[Path, Path]:
        return out_dir / f"{OUTPUT_NAMES[key]}.png", out_dir / f"{OUTPUT_NAMES[key]}.pdf"

    written: list[Path] = []
    written += plot_accuracy_vs_retention(summary, chance, *paths("accuracy"), style)
    written += plot_density_heatmaps(density, *paths("density"), style)
    written += plot_enrichment_heatmaps(density, *paths("enrichment"), style)
    written += plot_module_enrichment(module_enrichment(density), *paths("modules"), style)
    return written
