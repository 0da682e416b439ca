"""Figures for the pruning experiment (accuracy against retention, density and enrichment
heatmaps, module enrichment and within-module pruning), each written atomically as PNG and PDF
in the common style (`reporting.style`)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterable, Sequence
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.colors import LogNorm, Normalize
from matplotlib.figure import Figure
from matplotlib.image import AxesImage
from matplotlib.ticker import FixedLocator, FuncFormatter, NullLocator

from kneurons.io import read_json
from kneurons.model.units import GLOBAL
from kneurons.reporting.format import (
    FULL_METHOD,
    INTERVAL,
    PRUNING_FIGURES,
    RANDOM,
    PathLike,
    format_retention,
    method_order,
    module_order,
)
from kneurons.reporting.pruning import FOCUS_MODULE, METRIC_LABELS, rows_of
from kneurons.reporting.style import (
    ColourScale,
    annotate_cells,
    merged_style,
    method_colors,
    rc_params,
    save_figure,
)
from kneurons.settings import PlotSettings


def _pruned_methods(df: pd.DataFrame) -> list[str]:
    return [m for m in method_order(df["method"]) if m != FULL_METHOD]


def _bold_tick(ax, labels: Sequence[str], axis: str = "x") -> None:
    ticks = ax.get_xticklabels() if axis == "x" else ax.get_yticklabels()
    for tick, name in zip(ticks, labels, strict=False):
        if name == FOCUS_MODULE:
            tick.set_fontweight("bold")


def _selected(summary: pd.DataFrame, selection: str, method: str, scope: str) -> pd.DataFrame:
    return rows_of(summary, selection, method, scope).sort_values("retention")


def _mean_with_interval(ax, rows: pd.DataFrame, color: str, label: str, **line) -> None:
    """Mean per ratio with its 95% interval as error bars (none where undefined)."""
    x = rows["retention"].to_numpy(dtype=float)
    mean = rows["value_mean"].to_numpy(dtype=float)
    low = (mean - rows["ci_low"].to_numpy(dtype=float)).clip(min=0)
    high = (rows["ci_high"].to_numpy(dtype=float) - mean).clip(min=0)
    ax.errorbar(
        x,
        mean,
        yerr=np.nan_to_num(np.vstack([low, high])),
        color=color,
        capsize=3,
        marker="o",
        ms=4,
        label=label,
        **line,
    )


def _method_curves(ax, summary, accuracy, methods: list[str], colors: dict) -> None:
    """Per method: per-seed points, mean with its interval, and its matched random (dashed)."""
    for k, method in enumerate(methods):
        c = colors[method]
        points = accuracy[
            (accuracy["selection"] == "scored")
            & (accuracy["method"] == method)
            & (accuracy["scope"] == GLOBAL)
        ]
        shift = 0.04 * (k - (len(methods) - 1) / 2)  # in evenly spaced ratio positions
        x = _shifted(ax, points["retention"].to_numpy(dtype=float), shift)
        ax.plot(x, points["value"], ".", color=c, alpha=0.5, ms=5)
        _mean_with_interval(ax, _selected(summary, "scored", method, GLOBAL), c, method, lw=1.8)
        matched = _selected(summary, "matched", method, GLOBAL)
        if not matched.empty:
            ax.plot(
                matched["retention"],
                matched["value_mean"],
                ls="--",
                color=c,
                lw=1,
                label=f"matched random ({method})",
            )


def _random_band(ax, summary: pd.DataFrame) -> None:
    rows = _selected(summary, "random", RANDOM, GLOBAL)
    if rows.empty:
        return
    x = rows["retention"].to_numpy(dtype=float)
    ax.plot(x, rows["value_mean"], color="0.45", lw=1.5, marker="s", ms=3, label=RANDOM)
    ax.fill_between(x, rows["ci_low"], rows["ci_high"], color="0.6", alpha=0.3, lw=0)


def _reference_lines(ax, summary: pd.DataFrame, chance: float | None) -> None:
    """The full model at r = 1 with its interval; composition and majority baselines."""
    full = _selected(summary, "full", FULL_METHOD, GLOBAL)
    if not full.empty:
        _mean_with_interval(ax, full, "black", "full model", ls="none")
    for name, style in (("composition", "-."), ("majority", ":")):
        row = summary[(summary["selection"] == "baseline") & (summary["method"] == name)]
        if row.empty:
            continue
        value = float(row["value_mean"].iloc[0])
        label = "composition baseline" if name == "composition" else "majority class"
        ax.axhline(value, color="0.2", ls=style, lw=1.2, label=f"{label} ({value:.3f})")
    if chance is not None and np.isfinite(chance):
        ax.axhline(chance, color="0.6", ls=":", lw=1, label=f"chance ({chance:.3f})")


def _retention_axes(
    ax, retentions: Iterable[float], scored: str = "neurons", metric: str = "test accuracy"
) -> None:
    """Ticks, limits and labels of a retention axis (`_even_ratio_scale`, set before anything
    is drawn): one labelled tick per ratio, 100% on the left."""
    rets = sorted(set(retentions) | {1.0})
    ax.xaxis.set_major_locator(FixedLocator(rets))
    ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: format_retention(x)))
    ax.xaxis.set_minor_locator(NullLocator())
    # 100% on the left: more pruning ->
    ax.set_xlim(_shifted(ax, [max(rets)], 0.45)[0], _shifted(ax, [min(rets)], -0.45)[0])
    ax.set_ylim(0, 1.02)
    ax.set_xlabel(f"retention ratio r (% of scored {scored} kept, ratios evenly spaced)")
    ax.set_ylabel(metric)
    ax.set_title(f"Test accuracy after keeping the top-r {scored} and ablating the rest")
    ax.grid(True, which="major", alpha=0.3)


def _piecewise(x, xp: np.ndarray, fp: np.ndarray) -> np.ndarray:
    """Piecewise-linear through (xp, fp), xp ascending, continued linearly past both ends."""
    x = np.asarray(x, dtype=float)
    if len(xp) < 2:
        return x - xp[0] + fp[0]
    y = np.interp(x, xp, fp)
    low, high = x < xp[0], x > xp[-1]
    y[low] = fp[0] + (x[low] - xp[0]) * (fp[1] - fp[0]) / (xp[1] - xp[0])
    y[high] = fp[-1] + (x[high] - xp[-1]) * (fp[-1] - fp[-2]) / (xp[-1] - xp[-2])
    return y


def _even_ratio_scale(ax, ratios: Sequence[float]) -> None:
    """An x scale on which the sorted `ratios` sit one unit apart (log-interpolated between
    them, continued linearly beyond); increasing, like every matplotlib scale."""
    logs = np.log(np.asarray(sorted(ratios), dtype=float))
    positions = np.arange(len(logs), dtype=float)

    def forward(x):
        return _piecewise(np.log(np.clip(np.asarray(x, dtype=float), 1e-12, None)), logs, positions)

    def inverse(y):
        return np.exp(_piecewise(y, positions, logs))

    ax.set_xscale("function", functions=(forward, inverse))


def _shifted(ax, ratios, shift: float) -> np.ndarray:
    """Where to draw `ratios` moved by `shift` positions of the x scale (a jitter, a margin)."""
    scale = ax.xaxis.get_transform()
    return scale.inverted().transform(scale.transform(np.asarray(ratios, dtype=float)) + shift)


def plot_accuracy_vs_retention(
    summary: pd.DataFrame,
    accuracy: pd.DataFrame,
    chance: float | None,
    out_png: PathLike,
    out_pdf: PathLike,
    style: dict | None = None,
) -> list[Path]:
    """Test accuracy vs retention ratio: per-seed points, means with 95% t-intervals over
    seeds, random (band), matched random (dashed) and the baselines."""
    st = merged_style(style)
    with mpl.rc_context(rc_params(st)):
        fig = Figure(figsize=(st["figure_width"], st["figure_width"] * 0.55), layout="constrained")
        ax = fig.add_subplot()
        methods = method_order(summary.loc[summary["selection"] == "scored", "method"])
        ratios = summary.loc[summary["scope"] == GLOBAL, "retention"].dropna().astype(float)
        # evenly spaced, not log: a log axis crowds 100%, 90% and 75% into one spot
        _even_ratio_scale(ax, sorted(set(ratios) | {1.0}))
        _method_curves(
            ax, summary, accuracy, methods, method_colors(methods, st.get("method_colors"))
        )
        _random_band(ax, summary)
        _reference_lines(ax, summary, chance)
        _retention_axes(ax, ratios, st["scored"], METRIC_LABELS[summary["metric"].iloc[0]])
        fig.legend(
            loc="outside right upper", frameon=False, title=f"points: seeds\nbars: {INTERVAL}"
        )
        return save_figure(fig, out_png, out_pdf, st["dpi"])


def plot_module_pruning(
    summary: pd.DataFrame,
    out_png: PathLike,
    out_pdf: PathLike,
    style: dict | None = None,
) -> list[Path]:
    """One panel per module type pruned alone: accuracy vs ratio per method and random."""
    st = merged_style(style)
    within = summary[(summary["scope"] != GLOBAL) & summary["selection"].isin(["scored", "random"])]
    mods = module_order(within["scope"])
    methods = method_order(within.loc[within["selection"] == "scored", "method"])
    colors = {**method_colors(methods, st.get("method_colors")), RANDOM: "0.45"}
    n_cols = min(3, max(1, len(mods)))
    n_rows = max(1, int(np.ceil(len(mods) / n_cols)))
    with mpl.rc_context(rc_params(st)):
        fig = Figure(figsize=(st["figure_width"], 2.8 * n_rows + 0.8), layout="constrained")
        axes = fig.subplots(n_rows, n_cols, squeeze=False).ravel()
        for ax in axes[len(mods) :]:
            ax.set_visible(False)
        full = _selected(summary, "full", FULL_METHOD, GLOBAL)
        for j, (ax, module) in enumerate(zip(axes, mods, strict=False)):
            for method in [*methods, RANDOM]:
                selection = RANDOM if method == RANDOM else "scored"
                rows = _selected(within, selection, method, module)
                _mean_with_interval(ax, rows, colors[method], method, lw=1.5)
            if not full.empty:
                ax.axhline(float(full["value_mean"].iloc[0]), color="black", ls="--", lw=1)
            ratios = within.loc[within["scope"] == module, "retention"].astype(float)
            ax.set_xscale("log")
            ax.xaxis.set_major_locator(FixedLocator(sorted(set(ratios))))
            ax.xaxis.set_major_formatter(FuncFormatter(lambda x, _: format_retention(x)))
            ax.xaxis.set_minor_locator(NullLocator())
            ax.set_xlim(max(ratios) * 1.6, min(ratios) / 1.6)
            ax.set_ylim(0, 1.02)
            ax.set_title(
                f"only {module} pruned", fontweight="bold" if module == FOCUS_MODULE else None
            )
            ax.grid(True, alpha=0.3)
            if j % n_cols == 0:
                ax.set_ylabel(METRIC_LABELS[summary["metric"].iloc[0]])
        handles, labels = axes[0].get_legend_handles_labels()
        fig.legend(handles, labels, loc="outside lower center", ncols=len(labels), frameon=False)
        fig.suptitle(
            f"Within-module pruning: keep the top-r {st['scored']} of one module type, "
            f"the rest intact\n(mean, {INTERVAL}; dashed: full model)"
        )
        return save_figure(fig, out_png, out_pdf, st["dpi"])


def _cell_means(density: pd.DataFrame, value: str) -> pd.DataFrame:
    """Mean of `value` over seeds per (method, retention, layer, module); methods in the order
    they come (the config's)."""
    keys = ["method", "retention", "layer", "module"]
    return density.groupby(keys, as_index=False, sort=False)[value].mean()


def _heatmap_scale(vals: np.ndarray, value: str, st: dict) -> ColourScale:
    """Shared colour scale: density linear from 0; enrichment log, symmetric about 1, >= 0.5..2."""
    if value == "density":
        return ColourScale(
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
    return ColourScale(
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


def _heatmap_panel(
    ax,
    grid: np.ndarray,
    scale: ColourScale,
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
        annotate_cells(ax, grid, scale, font_size)
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


def _heatmap_colorbar(fig: Figure, im: AxesImage, axes, scale: ColourScale, value: str) -> None:
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
    st = merged_style(style)
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
    with mpl.rc_context(rc_params(st)):
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
            title = f"Enrichment of kept {st['scored']} per layer and module type"
        else:
            title = f"Fraction of {st['scored']} kept per layer and module type"
        fig.suptitle(f"{title}; mean over {n_seeds} seed{'s' if n_seeds != 1 else ''}")
        return save_figure(fig, out_png, out_pdf, st["dpi"])


def plot_density_heatmaps(
    density: pd.DataFrame, out_png: PathLike, out_pdf: PathLike, style: dict | None = None
) -> list[Path]:
    """Layer x module heatmaps coloured by fraction of neurons kept."""
    return plot_layer_heatmaps(density, out_png, out_pdf, style, value="density")


def plot_enrichment_heatmaps(
    density: pd.DataFrame, out_png: PathLike, out_pdf: PathLike, style: dict | None = None
) -> list[Path]:
    """Layer x module heatmaps coloured by enrichment (kept share / overall kept share), log
    scale centred at 1."""
    return plot_layer_heatmaps(density, out_png, out_pdf, style, value="enrichment")


def _error_bars(s: pd.DataFrame, mean: np.ndarray) -> np.ndarray:
    """(2, n_modules) lower/upper error-bar lengths to the 95% interval (0 if undefined)."""
    low = np.nan_to_num(mean - s["ci_low"].to_numpy(dtype=float)).clip(min=0)
    high = np.nan_to_num(s["ci_high"].to_numpy(dtype=float) - mean).clip(min=0)
    return np.vstack([low, high])


def _enrichment_panel(
    ax,
    sub: pd.DataFrame,
    methods: list[str],
    colors: dict,
    mods: list[str],
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
            yerr=_error_bars(s, mean),
            capsize=2,
            error_kw={"lw": 0.8},
            label=method,
            zorder=2,
        )
        significant = s["significant"].fillna(False).astype(bool).to_numpy()
        top = np.nan_to_num(s["ci_high"].to_numpy(dtype=float), nan=0.0)
        for xi, yi in zip(x[significant], np.maximum(top, mean)[significant], strict=True):
            ax.text(xi, yi, "*", ha="center", va="bottom", fontsize="small", zorder=4)
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
    """Grouped bars of module-type enrichment (`reporting.pruning.enrichment_table`): one panel per
    retention ratio; error bars: 95% t-interval over seeds; *: Holm p < 0.05 vs random."""
    st = merged_style(style)
    methods = _pruned_methods(enrichment)
    colors = method_colors(methods, st.get("method_colors"))
    rets = sorted(enrichment["retention"].unique(), reverse=True)
    mods = module_order(enrichment["module"])
    n_seeds = int(enrichment["n_seeds"].min()) if len(enrichment) else 0
    n_cols = min(2, len(rets))
    n_rows = int(np.ceil(len(rets) / n_cols))
    with mpl.rc_context(rc_params(st)):
        fig = Figure(
            figsize=(st["figure_width"], 2.9 * n_rows + 0.7),
            layout="constrained",
        )
        axes = fig.subplots(n_rows, n_cols, squeeze=False).ravel()
        for ax in axes[len(rets) :]:
            ax.set_visible(False)
        for j, (ax, r) in enumerate(zip(axes, rets, strict=False)):
            sub = enrichment[np.isclose(enrichment["retention"], r)]
            _enrichment_panel(ax, sub, methods, colors, mods)
            ax.set_title(f"r = {format_retention(r)}")
            if j % n_cols == 0:
                ax.set_ylabel("enrichment\n(kept share / overall kept share)")
            ax.grid(True, axis="y", alpha=0.3, zorder=0)
        _bar_legend(fig, axes[0], methods)
        fig.suptitle(
            f"Enrichment of kept {st['scored']} by module type, pooled over layers\n"
            f"(mean over {n_seeds} seeds, {INTERVAL}; *: Holm p < 0.05 vs random)"
        )
        return save_figure(fig, out_png, out_pdf, st["dpi"])


def make_all_plots(tables, out_dir: PathLike, style: dict | None = None) -> list[Path]:
    """Write every figure (PNG + PDF) under out_dir from the aggregate's tables (`tables` has
    paths accuracy, summary, enrichment, density and finetune, a list of metrics files)."""
    out_dir = Path(out_dir)
    summary = pd.read_csv(tables.summary, sep="\t")
    accuracy = pd.read_csv(tables.accuracy, sep="\t")
    density = pd.read_csv(tables.density, sep="\t")
    enrichment = pd.read_csv(tables.enrichment, sep="\t")
    chances = [float(read_json(p)["chance"]) for p in tables.finetune]
    chance = float(np.mean(chances)) if chances else None

    def paths(key: str) -> tuple[Path, Path]:
        return out_dir / f"{PRUNING_FIGURES[key]}.png", out_dir / f"{PRUNING_FIGURES[key]}.pdf"

    written: list[Path] = []
    written += plot_accuracy_vs_retention(summary, accuracy, chance, *paths("accuracy"), style)
    written += plot_density_heatmaps(density, *paths("density"), style)
    written += plot_enrichment_heatmaps(density, *paths("enrichment"), style)
    written += plot_module_enrichment(enrichment, *paths("modules"), style)
    written += plot_module_pruning(summary, *paths("pruning"), style)
    return written


def plots(input, output, settings: PlotSettings, wildcards) -> None:
    """The plots step: every figure, PNG and PDF, beside the first output."""
    make_all_plots(input, Path(output[0]).parent, dataclasses.asdict(settings))
