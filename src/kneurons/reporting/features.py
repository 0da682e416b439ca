"""The features_summary step: neurons vs SAE features over seeds.

Inputs per seed (results/sae/seed{S}/, `analysis.features`): concepts.tsv (per kind of unit,
layer and concept: the unit chosen on validation and its test F1), quality.tsv (per layer: the
SAE on test residues and the classifier with the reconstruction spliced in), effects.tsv (the
causal test in the knowledge step's effect format; sets features, random_features, neurons).

Every number over seeds is a mean with a 95% Student-t interval over the seeds; "features cover
more concepts than neurons" is a paired t-test over seeds per layer and concept group, Holm over
those rows; the causal test reuses the knowledge step's specificity tests
(`reporting.knowledge.specificity_table`: paired t over seeds, and per model the permutation p
among the random sets, Fisher over seeds), Holm within each comparison.

Pure pandas / matplotlib: no torch import.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
from matplotlib.figure import Figure

from kneurons.analysis import stats
from kneurons.io import atomic_path, write_tsv
from kneurons.reporting.format import (
    ALPHA,
    format_interval,
    format_p,
    format_seed_ps,
    md_table,
    read_seed_tables,
)
from kneurons.reporting.knowledge import KNOWLEDGE, MATCHED, specificity_table
from kneurons.reporting.style import merged_style, rc_params, save_figure
from kneurons.settings import KnowledgeSummarySettings

KINDS = ("residual", "neuron", "sae")
KIND_LABELS = {"residual": "residual dims", "neuron": "neurons", "sae": "SAE features"}
KIND_COLORS = {"residual": "#7f7f7f", "neuron": "#1f77b4", "sae": "#d62728"}
GROUPS = ("true", "mutated", "decoy", "feature", "aa")
GROUP_LABELS = {
    "true": "true motifs",
    "mutated": "mutated motifs",
    "decoy": "decoys",
    "feature": "annotated features",
    "aa": "amino acids (control)",
}
ANY_LAYER = "any"
COMPARISONS = {
    "random": ("features", "random_features", "motif features vs random features"),
    "neurons": ("features", "neurons", "motif features vs knowledge neurons"),
}
OUTPUT_KEYS = ("summary", "coverage", "best_f1", "quality", "causal", "coverage_png")
OUTPUT_KEYS += ("coverage_pdf",)


# --- coverage ------------------------------------------------------------------------------


def seed_coverage(concepts: pd.DataFrame) -> pd.DataFrame:
    """Per (seed, kind, layer, group): concepts covered (test F1 > 0.5 at the unit and
    threshold chosen on validation) and concepts scored; layer `any`: covered by some layer."""
    scored = concepts.dropna(subset=["f1"]).copy()
    scored["covered"] = scored["covered"].astype(str).str.lower().isin(["true", "1"])
    keys = ["seed", "kind", "group"]
    per_layer = (
        scored.groupby([*keys, "layer"])
        .agg(covered=("covered", "sum"), n_concepts=("concept", "nunique"))
        .reset_index()
    )
    any_layer = (
        scored.groupby([*keys, "concept"])["covered"]
        .any()
        .reset_index()
        .groupby(keys)
        .agg(covered=("covered", "sum"), n_concepts=("concept", "nunique"))
        .reset_index()
        .assign(layer=ANY_LAYER)
    )
    per_layer["layer"] = per_layer["layer"].astype(int).astype(str)
    return pd.concat([per_layer, any_layer], ignore_index=True)


def _layer_order(layers) -> list[str]:
    numeric = sorted({str(v) for v in layers if str(v) != ANY_LAYER}, key=int)
    return numeric + ([ANY_LAYER] if ANY_LAYER in {str(v) for v in layers} else [])


def coverage_table(concepts: pd.DataFrame) -> pd.DataFrame:
    """Per (layer, group): each kind's covered concepts, mean [95% t-interval over seeds], and
    SAE features minus neurons, a paired t-test over seeds, Holm over the rows."""
    per_seed = seed_coverage(concepts)
    rows = []
    for layer in _layer_order(per_seed["layer"]):
        for group in [g for g in GROUPS if g in set(per_seed["group"])]:
            sub = per_seed[(per_seed["layer"] == layer) & (per_seed["group"] == group)]
            wide = sub.pivot_table(index="seed", columns="kind", values="covered")
            row = {"layer": layer, "group": group, "n_concepts": int(sub["n_concepts"].max())}
            row["n_seeds"] = len(wide)
            for kind in KINDS:
                values = wide[kind].dropna() if kind in wide else pd.Series(dtype=float)
                mean, low, high = stats.mean_interval(values) if len(values) else (np.nan,) * 3
                row.update({f"{kind}_mean": mean, f"{kind}_ci_low": low, f"{kind}_ci_high": high})
            if {"sae", "neuron"} <= set(wide.columns):
                diff = (wide["sae"] - wide["neuron"]).dropna()
                test = stats.paired_test(diff) if len(diff) else {}
            else:
                test = {}
            row.update(
                difference_mean=test.get("mean", np.nan),
                difference_ci_low=test.get("ci_low", np.nan),
                difference_ci_high=test.get("ci_high", np.nan),
                p=test.get("p", np.nan),
            )
            rows.append(row)
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table["p_holm"] = stats.holm(table["p"].to_numpy(dtype=float))
    table["features_cover_more"] = (table["p_holm"] < ALPHA) & (table["difference_mean"] > 0)
    table["neurons_cover_more"] = (table["p_holm"] < ALPHA) & (table["difference_mean"] < 0)
    return table


def best_f1_table(concepts: pd.DataFrame) -> pd.DataFrame:
    """Per (concept, kind): the best test F1 over layers (each layer's unit chosen on
    validation), mean [95% t-interval over seeds], and the share of seeds covering it."""
    scored = concepts.dropna(subset=["f1"])
    best = scored.groupby(["concept", "group", "kind", "seed"])["f1"].max().reset_index()
    rows = []
    for (concept, group, kind), g in best.groupby(["concept", "group", "kind"], sort=True):
        mean, low, high = stats.mean_interval(g["f1"])
        rows.append(
            {
                "concept": concept,
                "group": group,
                "kind": kind,
                "n_seeds": len(g),
                "f1_mean": mean,
                "f1_ci_low": low,
                "f1_ci_high": high,
                "covered_share": float((g["f1"] > 0.5).mean()),
            }
        )
    return pd.DataFrame(rows)


def quality_table(quality: pd.DataFrame) -> pd.DataFrame:
    """Per layer: each SAE quality figure, mean [95% t-interval over seeds]."""
    metrics = ["variance_explained", "l0", "dead_fraction", "accuracy_full", "accuracy_spliced"]
    rows = []
    for layer, g in quality.groupby("layer", sort=True):
        row = {"layer": int(layer), "n_seeds": len(g), "n_features": int(g["n_features"].max())}
        for metric in metrics:
            mean, low, high = stats.mean_interval(g[metric])
            row.update({f"{metric}_mean": mean, f"{metric}_ci_low": low, f"{metric}_ci_high": high})
        rows.append(row)
    return pd.DataFrame(rows)


# --- the causal test -------------------------------------------------------------------------


def causal_table(effects: pd.DataFrame) -> pd.DataFrame:
    """The knowledge step's specificity tests for each comparison: the class's motif features
    against random feature sets (both tests), and against the class's knowledge neurons (paired
    t over seeds only: one set is no permutation null)."""
    frames = []
    for name, (target, control, _) in COMPARISONS.items():
        sub = effects[effects["set"].isin([target, control])].copy()
        if sub.empty or target not in set(sub["set"]) or control not in set(sub["set"]):
            continue
        # only classes with both sets
        both = sub.groupby(["seed", "neuron_class"])["set"].nunique()
        keep = both[both == 2].index
        sub = sub.set_index(["seed", "neuron_class"]).loc[keep].reset_index()
        sub["set"] = sub["set"].map({target: KNOWLEDGE, control: MATCHED})
        table = specificity_table(sub).assign(comparison=name)
        if name == "neurons":
            for column in ("per_seed_p", "model_p", "model_p_holm"):
                table[column] = np.nan if column != "per_seed_p" else ""
            table["model_specific"] = False
        frames.append(table)
    if not frames:
        return pd.DataFrame()
    table = pd.concat(frames, ignore_index=True)
    return table[["comparison", *[c for c in table.columns if c != "comparison"]]]


# --- figure ----------------------------------------------------------------------------------


def plot_coverage(coverage: pd.DataFrame, out_png, out_pdf, style: dict | None = None) -> None:
    """Concepts covered per layer by each kind of unit (mean and 95% t-interval over seeds):
    one panel per concept group, the amino-acid control last."""
    st = merged_style(style)
    groups = [g for g in GROUPS if not coverage.empty and g in set(coverage["group"])]
    fig = Figure(figsize=(st["figure_width"], 3.2), layout="constrained")
    with _rc(st):
        axes = fig.subplots(1, max(1, len(groups)), squeeze=False)[0]
        for ax, group in zip(axes, groups, strict=False):
            sub = coverage[coverage["group"] == group]
            layers = _layer_order(sub["layer"])
            x = np.arange(len(layers))
            sub = sub.set_index("layer").loc[layers]
            width = 0.8 / len(KINDS)
            for i, kind in enumerate(KINDS):
                mean = sub[f"{kind}_mean"].to_numpy(dtype=float)
                low = sub[f"{kind}_ci_low"].to_numpy(dtype=float)
                high = sub[f"{kind}_ci_high"].to_numpy(dtype=float)
                err = np.vstack([mean - low, high - mean])
                ax.bar(
                    x + (i - 1) * width,
                    mean,
                    width,
                    yerr=np.nan_to_num(err),
                    color=KIND_COLORS[kind],
                    label=KIND_LABELS[kind],
                    capsize=2,
                )
            ax.axhline(sub["n_concepts"].max(), color="black", lw=0.8, ls=":")
            ax.set_xticks(x, [f"L{v}" if v != ANY_LAYER else "any" for v in layers])
            ax.set_title(f"{GROUP_LABELS.get(group, group)} (of {int(sub['n_concepts'].max())})")
            ax.set_xlabel("layer")
        axes[0].set_ylabel("concepts covered (test F1 > 0.5)")
        axes[0].legend(loc="upper left", frameon=False)
    save_figure(fig, out_png, out_pdf, st["dpi"])


def _rc(st):
    import matplotlib

    return matplotlib.rc_context(rc_params(st))


# --- page ------------------------------------------------------------------------------------


def summary_markdown(
    coverage: pd.DataFrame, best: pd.DataFrame, quality: pd.DataFrame, causal: pd.DataFrame
) -> str:
    """The summary page: SAE quality, coverage (any layer, then per layer), the causal test."""
    lines = ["# Neurons vs sparse-autoencoder features", ""]
    lines += [
        "Concept metric of InterPLM (Simon & Zou, 2025): per unit and concept, activation / the",
        "unit's maximum on validation is binarised at 0, 0.15, 0.5, 0.6, 0.8; precision over",
        "residues, recall over concept instances (found when any residue fires), F1; threshold",
        "and unit chosen on validation residues, F1 reported on test residues; covered when",
        "F1 > 0.5. Means over seeds with 95% t-intervals; tests are paired t over seeds, Holm.",
        "",
        "## SAE quality (test residues)",
        "",
    ]
    rows = [
        [
            str(r.layer),
            str(r.n_features),
            format_interval(
                r.variance_explained_mean, r.variance_explained_ci_low, r.variance_explained_ci_high
            ),
            format_interval(r.l0_mean, r.l0_ci_low, r.l0_ci_high, 1),
            format_interval(r.dead_fraction_mean, r.dead_fraction_ci_low, r.dead_fraction_ci_high),
            format_interval(r.accuracy_full_mean, r.accuracy_full_ci_low, r.accuracy_full_ci_high),
            format_interval(
                r.accuracy_spliced_mean, r.accuracy_spliced_ci_low, r.accuracy_spliced_ci_high
            ),
        ]
        for r in quality.itertuples(index=False)
    ]
    header = [
        "layer",
        "features",
        "variance explained",
        "L0",
        "dead",
        "accuracy",
        "accuracy, SAE spliced in",
    ]
    lines += md_table(header, rows)
    lines += ["## Concepts covered", ""]
    if coverage.empty:
        lines += ["No concept could be scored (no annotated motifs).", ""]
    else:
        rows = []
        for r in coverage.itertuples(index=False):
            verdict = (
                "features more"
                if r.features_cover_more
                else "neurons more"
                if r.neurons_cover_more
                else "no difference shown"
            )
            rows.append(
                [
                    str(r.layer),
                    f"{GROUP_LABELS.get(r.group, r.group)} ({r.n_concepts})",
                    *(
                        format_interval(
                            getattr(r, f"{k}_mean"),
                            getattr(r, f"{k}_ci_low"),
                            getattr(r, f"{k}_ci_high"),
                            1,
                        )
                        for k in KINDS
                    ),
                    format_interval(
                        r.difference_mean, r.difference_ci_low, r.difference_ci_high, 1
                    ),
                    format_p(r.p_holm),
                    verdict,
                ]
            )
        header = [
            "layer",
            "concepts",
            *(KIND_LABELS[k] for k in KINDS),
            "features - neurons",
            "Holm p",
            "verdict",
        ]
        lines += md_table(header, rows)
    lines += ["## Causal test: zeroing each class's motif features", ""]
    lines += [
        "Per class, the SAE feature (any layer) with the best validation F1 for each of the",
        "class's true motifs is zeroed in the model with the SAEs spliced in (reconstruction",
        "error added back: nothing zeroed is the model itself). Specificity = change on the",
        "class's own test sequences minus the mean change on the other classes'.",
        "",
    ]
    if causal.empty:
        lines += ["No class had motif features (no annotated motifs).", ""]
    else:
        rows = []
        for r in causal.itertuples(index=False):
            rows.append(
                [
                    COMPARISONS[r.comparison][2],
                    r.quantity,
                    str(r.neuron_class),
                    format_interval(
                        r.specificity_mean, r.specificity_ci_low, r.specificity_ci_high
                    ),
                    f"{r.matched_specificity_mean:.3f}",
                    format_p(r.p_holm),
                    format_seed_ps(r.per_seed_p, r.n_draws),
                    format_p(r.model_p_holm),
                    _causal_verdict(r),
                ]
            )
        header = [
            "comparison",
            "quantity",
            "class",
            "specificity",
            "control's",
            "Holm p across models",
            "per-model p (draws)",
            "Holm p in each model",
            "verdict",
        ]
        lines += md_table(header, rows)
    return "\n".join(lines)


def _causal_verdict(row) -> str:
    """What the two tests say of one causal row (Holm p < ALPHA)."""
    if row.comparison == "neurons":
        if row.p_holm < ALPHA:
            return "features more specific" if row.specific else "neurons more specific"
        return "no difference shown"
    across = "specific" if row.specific else "not shown"
    in_each = "specific" if row.model_specific else "not shown"
    return f"across models: {across}; in each model: {in_each}"


def features_summary(input, output, settings: KnowledgeSummarySettings, wildcards) -> None:
    """The features_summary step: coverage, best F1, quality and causal tables, page, figure."""
    seeds = [int(s) for s in settings.seeds]
    concepts = read_seed_tables(list(input.concepts), seeds)
    quality = quality_table(read_seed_tables(list(input.quality), seeds))
    effects = read_seed_tables(list(input.effects), seeds)
    coverage = coverage_table(concepts)
    best = best_f1_table(concepts)
    causal = causal_table(effects)
    write_tsv(coverage, output.coverage)
    write_tsv(best, output.best_f1)
    write_tsv(quality, output.quality)
    write_tsv(causal, output.causal)
    with atomic_path(output.summary) as tmp:
        tmp.write_text(summary_markdown(coverage, best, quality, causal) + "\n")
    plot_coverage(coverage, output.coverage_png, output.coverage_pdf, dataclasses.asdict(settings))
