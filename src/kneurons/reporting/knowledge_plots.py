"""Figures of the knowledge neurons: effects, placement, motif detectors."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.colors import Normalize, TwoSlopeNorm
from matplotlib.figure import Figure

from kneurons.model.units import INTERVENTIONS, UNIT_COLUMNS
from kneurons.reporting.format import (
    PathLike,
    module_order,
)
from kneurons.reporting.knowledge import (
    FACTORS,
    KNOWLEDGE,
    MATCHED,
    class_key,
    class_order,
    placement_means,
    seeds_of,
    sort_key,
)
from kneurons.reporting.knowledge_page import class_label
from kneurons.reporting.style import (
    ColourScale,
    annotate_cells,
    merged_style,
    rc_params,
    save_figure,
)


def _message(ax, text: str) -> None:
    ax.text(0.5, 0.5, text, ha="center", va="center", wrap=True, transform=ax.transAxes)
    ax.set_axis_off()


def _mean_p_true_grid(effects: pd.DataFrame, intervention: str, set_name: str, classes: list):
    """(classes, classes) array: the mean effect on p_true over seeds of the effects tables of
    every seed (matched: over draws, then seeds)."""
    sub = effects[
        (effects["intervention"] == intervention)
        & (effects["set"] == set_name)
        & (effects["quantity"] == "p_true")
    ]
    per_seed = sub.groupby(["seed", "neuron_class", "sequence_class"])["effect"].mean()
    means = per_seed.groupby(["neuron_class", "sequence_class"]).mean()
    matrix = means.unstack("sequence_class") if len(means) else pd.DataFrame()
    return matrix.reindex(index=classes, columns=classes).to_numpy(dtype=float)


def plot_effects(
    effects: pd.DataFrame, out_png: PathLike, out_pdf: PathLike, style: dict | None = None
) -> list[Path]:
    """Class x class heatmaps of the mean change in p(true class) over seeds: rows suppress and
    amplify, columns the knowledge neurons and the mean of their matched random sets; one
    diverging colour scale centred at 0, values printed."""
    st = merged_style(style)
    classes = class_order(effects.get("neuron_class", []), effects.get("sequence_class", []))
    grids = {
        (i, s): _mean_p_true_grid(effects, i, s, classes) if classes else np.empty((0, 0))
        for i in INTERVENTIONS
        for s in (KNOWLEDGE, MATCHED)
    }
    finite = np.concatenate([g[np.isfinite(g)] for g in grids.values()])
    span = max(float(np.abs(finite).max()) if finite.size else 0.0, 1e-6)
    scale = ColourScale(
        Normalize(vmin=-span, vmax=span),
        mpl.colormaps[st["diverging_cmap"]],
        "change in p(true class)",
        "{:+.2f}",
    )
    n_seeds = len(seeds_of(effects))
    side = st["figure_width"] / 2
    with mpl.rc_context(rc_params(st)):
        fig = Figure(figsize=(st["figure_width"], side * 2 * 0.9 + 0.6), layout="constrained")
        axes = fig.subplots(2, 2, squeeze=False)
        im = None
        for i, intervention in enumerate(INTERVENTIONS):
            for j, set_name in enumerate((KNOWLEDGE, MATCHED)):
                ax = axes[i, j]
                if not classes:
                    _message(ax, "no knowledge neurons: no effects")
                    continue
                grid = grids[(intervention, set_name)]
                im = ax.imshow(
                    np.ma.masked_invalid(grid),
                    cmap=scale.cmap,
                    norm=scale.norm,
                    interpolation="nearest",
                )
                if len(classes) <= 12:
                    annotate_cells(ax, grid, scale, st["font_size"] * 1.4)
                labels = [str(c) for c in classes]
                ax.set_xticks(range(len(classes)), labels)
                ax.set_yticks(range(len(classes)), labels)
                ax.set_xlabel("test sequences of class")
                ax.set_ylabel("neurons of class scaled")
                who = "knowledge neurons" if set_name == KNOWLEDGE else "matched random (mean)"
                ax.set_title(f"{intervention} ({FACTORS[intervention]}): {who}")
        if im is not None:
            cbar = fig.colorbar(im, ax=axes, shrink=0.8, pad=0.01, aspect=30)
            cbar.set_label(scale.label)
        fig.suptitle(
            f"Change in p(true class) when a class's neurons are scaled; mean over {n_seeds} "
            f"seed{'s' if n_seeds != 1 else ''}"
        )
        return save_figure(fig, out_png, out_pdf, st["dpi"])


def plot_placement(
    neurons: pd.DataFrame,
    out_png: PathLike,
    out_pdf: PathLike,
    style: dict | None = None,
    *,
    seeds: Sequence[int] | None = None,
) -> list[Path]:
    """Per class, a layers x module types heatmap of the mean number of knowledge neurons over
    seeds (a seed without any counts 0); one colour scale, counts printed."""
    st = merged_style(style)
    seeds = list(seeds) if seeds is not None else seeds_of(neurons)
    means = placement_means(neurons, seeds)
    classes = class_order(means["class"])
    with mpl.rc_context(rc_params(st)):
        if not classes:
            fig = Figure(figsize=(st["figure_width"], 3), layout="constrained")
            _message(fig.subplots(), "no knowledge neurons in any class or seed")
            return save_figure(fig, out_png, out_pdf, st["dpi"])
        layers = list(range(int(means["layer"].min()), int(means["layer"].max()) + 1))
        mods = module_order(means["module"])
        n_cols = min(3, len(classes))
        n_rows = -(-len(classes) // n_cols)
        annotate = len(layers) <= 12
        panel_h = max(1.8, 0.22 * len(layers) + 0.9) if annotate else 4.0
        fig = Figure(figsize=(st["figure_width"], panel_h * n_rows + 0.8), layout="constrained")
        axes = np.atleast_2d(fig.subplots(n_rows, n_cols, squeeze=False))
        scale = ColourScale(
            Normalize(vmin=0.0, vmax=max(float(means["count"].max()), 1e-9)),
            mpl.colormaps[st["cmap"]],
            "knowledge neurons (mean count)",
            "{:.2g}",
        )
        im = None
        for k, ax in enumerate(axes.ravel()):
            if k >= len(classes):
                ax.set_axis_off()
                continue
            c = classes[k]
            grid = (
                means[means["class"] == c]
                .pivot(index="layer", columns="module", values="count")
                .reindex(index=layers, columns=mods)
                .fillna(0.0)
                .to_numpy(dtype=float)
            )
            im = ax.imshow(grid, aspect="auto", origin="lower", cmap=scale.cmap, norm=scale.norm)
            if annotate:
                annotate_cells(ax, np.where(grid > 0, grid, np.nan), scale, st["font_size"])
            ax.set_title(class_label(c))
            ax.set_xticks(range(len(mods)), mods, rotation=45, ha="right")
            ax.set_yticks(range(len(layers))[:: max(1, len(layers) // 8)])
            ax.set_yticklabels([str(layer) for layer in layers][:: max(1, len(layers) // 8)])
            if k % n_cols == 0:
                ax.set_ylabel("layer")
        cbar = fig.colorbar(im, ax=axes, shrink=0.9, pad=0.01, aspect=30)
        cbar.set_label(scale.label)
        fig.suptitle(
            "Where each class's knowledge neurons sit: mean count per layer and module type "
            f"over {len(seeds)} seed{'s' if len(seeds) != 1 else ''}"
        )
        return save_figure(fig, out_png, out_pdf, st["dpi"])


def plot_motif_detectors(
    motifs: pd.DataFrame, out_png: PathLike, out_pdf: PathLike, style: dict | None = None
) -> list[Path]:
    """The first seed's knowledge neurons (rows, grouped by class) x motif types (columns,
    grouped by the motif's class), coloured by AUROC (diverging, centred at 0.5); a message
    panel when there is no motif annotation."""
    st = merged_style(style)
    know = motifs[motifs["set"] == KNOWLEDGE] if len(motifs) else motifs
    with mpl.rc_context(rc_params(st)):
        if know.empty:
            fig = Figure(figsize=(st["figure_width"], 3), layout="constrained")
            _message(
                fig.subplots(),
                "No motif annotation in the data:\nmotif detectors were not measured",
            )
            return save_figure(fig, out_png, out_pdf, st["dpi"])
        seed = int(know["seed"].min())
        sub = know[know["seed"] == seed]
        motif_cols = (
            sub[["motif", "motif_class"]]
            .drop_duplicates("motif")
            .sort_values(["motif_class", "motif"], key=lambda s: s.map(class_key))
        )
        rows = sub[["class", *UNIT_COLUMNS]].drop_duplicates()
        rows = rows.sort_values(["class", *UNIT_COLUMNS], key=sort_key).reset_index(drop=True)
        wide = sub.pivot_table(
            index=["class", *UNIT_COLUMNS], columns="motif", values="auroc", aggfunc="mean"
        )
        index = pd.MultiIndex.from_frame(rows)
        grid = wide.reindex(index=index, columns=list(motif_cols["motif"])).to_numpy(dtype=float)
        n_rows, n_cols = grid.shape
        height = float(np.clip(0.13 * n_rows + 2.5, 3.5, 40.0))
        fig = Figure(figsize=(st["figure_width"], height), layout="constrained")
        ax = fig.subplots()
        norm = TwoSlopeNorm(vmin=0.0, vcenter=0.5, vmax=1.0)
        im = ax.imshow(
            np.ma.masked_invalid(grid),
            aspect="auto",
            cmap=mpl.colormaps[st["diverging_cmap"]],
            norm=norm,
            interpolation="nearest",
        )
        ax.set_xticks(
            range(n_cols),
            [f"{m} ({c})" for m, c in motif_cols.itertuples(index=False)],
            rotation=60,
            ha="right",
        )
        label_size = st["font_size"] * (0.8 if n_rows <= 40 else max(0.3, 30 / n_rows))
        ax.set_yticks(
            range(n_rows),
            [f"EC {r[0]} L{r[1]} {r[2]}:{r[3]}" for r in rows.itertuples(index=False)],
            fontsize=label_size,
        )
        # lines between classes (rows) and between motif classes (columns)
        for edge in np.flatnonzero(rows["class"].to_numpy()[1:] != rows["class"].to_numpy()[:-1]):
            ax.axhline(edge + 0.5, color="black", lw=0.8)
        mc = motif_cols["motif_class"].astype(str).to_numpy()
        for edge in np.flatnonzero(mc[1:] != mc[:-1]):
            ax.axvline(edge + 0.5, color="black", lw=0.8)
        ax.set_xlabel("motif type (its EC class)")
        ax.set_ylabel("knowledge neuron")
        cbar = fig.colorbar(im, ax=ax, shrink=0.8, pad=0.01, aspect=30)
        cbar.set_label("token-level AUROC (0.5 = chance)")
        fig.suptitle(f"Motif AUROC of the knowledge neurons of seed {seed} (first seed)")
        return save_figure(fig, out_png, out_pdf, st["dpi"])
