"""Aggregate the seeds' knowledge-neuron tables into tests, a summary page and figures.

Inputs per seed (results/knowledge/seed{S}/), each given a `seed` column here:
- neurons.tsv: class, layer, module, unit, share, mean_attribution
  (`analysis.knowledge.KN_COLUMNS`);
- effects.tsv: intervention (suppress | amplify), set (knowledge | matched), draw, quantity
  (p_true | accuracy), neuron_class, sequence_class, effect (change against the unmodified model
  on the test sequences of sequence_class when neuron_class's set is scaled);
- motifs.tsv: set, class, layer, module, unit, motif, motif_class, auroc, n_positive (may be
  empty: no motif annotation).

Specificity of a class's set = its effect on the class's own test sequences minus the mean
effect on the other classes' test sequences (`seed_specificity`). The seed is the
replicate: across seeds a mean has a 95% Student-t interval over the per-seed values, and the
knowledge set is compared with the mean of that seed's matched random sets by a paired t-test
over seeds (`analysis.stats.paired_test`), Holm-corrected over the family of rows.

Pure pandas / matplotlib: no torch import, so the report step stays light.
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

import matplotlib as mpl
import numpy as np
import pandas as pd
from matplotlib.colors import Normalize, TwoSlopeNorm
from matplotlib.figure import Figure

from kneurons.analysis import stats
from kneurons.io import atomic_path, write_tsv
from kneurons.model.units import INTERVENTIONS, UNIT_COLUMNS
from kneurons.reporting.format import (
    ALPHA,
    INTERVAL,
    format_interval,
    format_p,
    md_table,
    module_order,
)
from kneurons.reporting.style import (
    ColourScale,
    annotate_cells,
    merged_style,
    rc_params,
    save_figure,
)
from kneurons.settings import KnowledgeSummarySettings

PathLike = str | os.PathLike

KNOWLEDGE, MATCHED = "knowledge", "matched"
QUANTITIES = ("p_true", "accuracy")
# the sign of a specific effect: suppression (x0) lowers, amplification (x2) raises
EXPECTED_SIGN = {"suppress": -1.0, "amplify": 1.0}
FACTORS = {name: f"x{factor:g}" for name, factor in INTERVENTIONS.items()}
QUANTITY_LABELS = {"p_true": "p(true class)", "accuracy": "accuracy"}
# a unit "detects" a motif only when its best AUROC is above chance
MIN_AUROC = 0.5
ALL_CLASSES = "all"
OUTPUT_KEYS = (
    "specificity",
    "detectors",
    "summary",
    "effects_png",
    "effects_pdf",
    "placement_png",
    "placement_pdf",
    "motif_detectors_png",
    "motif_detectors_pdf",
)

SPECIFICITY_COLUMNS = [
    "intervention",
    "quantity",
    "neuron_class",
    "n_seeds",
    "own_effect_mean",
    "own_ci_low",
    "own_ci_high",
    "specificity_mean",
    "specificity_ci_low",
    "specificity_ci_high",
    "matched_own_mean",
    "matched_specificity_mean",
    "difference_mean",
    "difference_ci_low",
    "difference_ci_high",
    "t",
    "p",
    "p_holm",
    "specific",
]
SHARES = ("own_share", "other_share", "none_share")
DETECTOR_COLUMNS = [
    "set",
    "class",
    "n_seeds",
    "n_units_mean",
    *(f"{s}_{x}" for s in SHARES for x in ("mean", "ci_low", "ci_high")),
    "own_difference_mean",
    "own_difference_ci_low",
    "own_difference_ci_high",
    "p",
    "p_holm",
    "more_own",
]
# ----------------------------------------------------------------------------- helpers


def _class_key(c) -> tuple:
    """Numeric classes in numeric order, then anything else ('all' last) by name."""
    try:
        return (0, float(c), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(c))


def class_order(*columns: Iterable) -> list:
    """The distinct classes of `columns`, in numeric order."""
    seen = {c for column in columns for c in column if not pd.isna(c)}
    return sorted(seen, key=_class_key)


def _seeds_of(*tables: pd.DataFrame) -> list[int]:
    return sorted({int(s) for t in tables if "seed" in t for s in t["seed"]})


def _interval_or_nan(values) -> tuple[float, float, float]:
    values = np.asarray(values, dtype=float)
    values = values[~np.isnan(values)]
    if len(values) == 0:
        return np.nan, np.nan, np.nan
    return stats.mean_interval(values)


def _test_or_nan(differences) -> dict:
    differences = np.asarray(differences, dtype=float)
    differences = differences[~np.isnan(differences)]
    if len(differences) == 0:
        return {"mean": np.nan, "ci_low": np.nan, "ci_high": np.nan, "t": np.nan, "p": np.nan}
    return stats.paired_test(differences)


# ----------------------------------------------------------------------------- specificity


def seed_specificity(effects: pd.DataFrame) -> pd.DataFrame:
    """Per (seed, intervention, quantity, neuron_class): the knowledge set's own-class effect
    (own_effect) and specificity (own effect - mean effect on the other classes' sequences,
    NaN cells skipped), and the means over that seed's matched draws (matched_own_mean,
    matched_specificity_mean, n_draws). `effects`: the effects tables with a `seed` column."""
    keys = ["seed", "intervention", "quantity", "set", "draw", "neuron_class"]
    out_keys = ["seed", "intervention", "quantity", "neuron_class"]
    if effects.empty:
        columns = ["own_effect", "specificity", "matched_own_mean", "matched_specificity_mean"]
        return pd.DataFrame(columns=[*out_keys, *columns, "n_draws"])
    own_cell = effects["neuron_class"] == effects["sequence_class"]
    own = effects[own_cell].groupby(keys)["effect"].mean()
    others = effects[~own_cell].groupby(keys)["effect"].mean()  # mean() skips NaN cells
    per_set = pd.DataFrame({"own": own, "specificity": own - others.reindex(own.index)})
    per_set = per_set.reset_index()
    knowledge = per_set[per_set["set"] == KNOWLEDGE].groupby(out_keys)[["own", "specificity"]]
    knowledge = knowledge.mean().rename(columns={"own": "own_effect"})
    matched = per_set[per_set["set"] == MATCHED].groupby(out_keys)
    matched = matched.agg(
        matched_own_mean=("own", "mean"),
        matched_specificity_mean=("specificity", "mean"),
        n_draws=("draw", "nunique"),
    )
    table = knowledge.join(matched, how="left").reset_index()
    table["n_draws"] = table["n_draws"].fillna(0).astype(int)
    return table


def specificity_table(effects: pd.DataFrame) -> pd.DataFrame:
    """Per (intervention, quantity, neuron_class), across seeds: the knowledge set's own-class
    effect and specificity (mean with its 95% t-interval over seeds), the matched sets' mean
    own effect and specificity, and a two-sided paired t-test over seeds of (knowledge
    specificity - matched specificity), Holm-corrected over all rows. `specific`: Holm p <
    ALPHA and the difference in the expected direction (suppress: below matched, amplify:
    above). `effects` has a `seed` column; seeds without the class's knowledge neurons have no
    rows and do not count."""
    per_seed = seed_specificity(effects)
    rows = []
    interventions = [i for i in INTERVENTIONS if i in set(per_seed["intervention"])]
    interventions += sorted(set(per_seed["intervention"]) - set(INTERVENTIONS))
    for intervention in interventions:
        for quantity in [q for q in QUANTITIES if q in set(per_seed["quantity"])]:
            sub = per_seed[
                (per_seed["intervention"] == intervention) & (per_seed["quantity"] == quantity)
            ]
            for c in class_order(sub["neuron_class"]):
                g = sub[sub["neuron_class"] == c]
                own = _interval_or_nan(g["own_effect"])
                spec = _interval_or_nan(g["specificity"])
                test = _test_or_nan(g["specificity"] - g["matched_specificity_mean"])
                rows.append(
                    {
                        "intervention": intervention,
                        "quantity": quantity,
                        "neuron_class": c,
                        "n_seeds": int(g["specificity"].notna().sum()),
                        "own_effect_mean": own[0],
                        "own_ci_low": own[1],
                        "own_ci_high": own[2],
                        "specificity_mean": spec[0],
                        "specificity_ci_low": spec[1],
                        "specificity_ci_high": spec[2],
                        "matched_own_mean": g["matched_own_mean"].mean(),
                        "matched_specificity_mean": g["matched_specificity_mean"].mean(),
                        "difference_mean": test["mean"],
                        "difference_ci_low": test["ci_low"],
                        "difference_ci_high": test["ci_high"],
                        "t": test["t"],
                        "p": test["p"],
                    }
                )
    table = pd.DataFrame(rows, columns=SPECIFICITY_COLUMNS[:-2])
    table["p_holm"] = stats.holm(table["p"].to_numpy(dtype=float)) if len(table) else []
    sign = table["intervention"].map(EXPECTED_SIGN).to_numpy(dtype=float)
    expected = np.sign(table["difference_mean"].to_numpy(dtype=float)) == sign
    table["specific"] = (table["p_holm"] < ALPHA).to_numpy() & expected
    return table[SPECIFICITY_COLUMNS]


# ----------------------------------------------------------------------------- motif detectors


def best_motifs_per_seed(motifs: pd.DataFrame) -> pd.DataFrame:
    """Per (seed, set, class, unit): its best motif (highest AUROC; ties: first row) with that
    motif's class and AUROC; units with only NaN AUROCs get none (NaN)."""
    keys = ["seed", "set", "class", *UNIT_COLUMNS]
    units = motifs[keys].drop_duplicates()
    scored = motifs.dropna(subset=["auroc"])
    best = scored.loc[scored.groupby(keys, sort=False)["auroc"].idxmax()]
    best = best[[*keys, "motif", "motif_class", "auroc"]].rename(
        columns={"motif": "best_motif", "auroc": "best_auroc"}
    )
    return units.merge(best, on=keys, how="left")


def detector_shares(motifs: pd.DataFrame) -> pd.DataFrame:
    """Per (seed, set, class) and pooled over classes (class 'all'): of the class's units,
    the share whose best motif (AUROC > MIN_AUROC) is one of its own class's motifs
    (own_share), one of another class's (other_share: decoy detectors) and neither
    (none_share), and n_units. `motifs` has a `seed` column."""
    columns = ["seed", "set", "class", "n_units", *SHARES]
    if motifs.empty:
        return pd.DataFrame(columns=columns)
    best = best_motifs_per_seed(motifs)
    detects = best["best_auroc"].to_numpy(dtype=float) > MIN_AUROC
    # compare as text: the tables may carry classes as numbers or as strings
    same = best["motif_class"].astype(str).to_numpy() == best["class"].astype(str).to_numpy()
    best = best.assign(
        own_share=detects & same,
        other_share=detects & ~same & best["motif_class"].notna().to_numpy(),
    )
    best["none_share"] = ~(best["own_share"] | best["other_share"])
    pooled = best.assign(**{"class": ALL_CLASSES})
    tables = []
    for frame in (best, pooled):
        g = frame.groupby(["seed", "set", "class"], sort=False)
        shares = g[list(SHARES)].mean().join(g.size().rename("n_units")).reset_index()
        tables.append(shares)
    return pd.concat(tables, ignore_index=True)[columns]


def detector_table(motifs: pd.DataFrame) -> pd.DataFrame:
    """Per set and class (and pooled, class 'all'): n_seeds, mean units per seed, and the own,
    other-class (decoy) and none shares of `detector_shares`, each a mean with its 95%
    t-interval over seeds. Knowledge rows add a two-sided paired t-test over seeds of (own
    share, knowledge - matched): own_difference_*, p, p_holm (Holm over the knowledge rows) and
    `more_own` (Holm p < ALPHA and the difference positive)."""
    per_seed = detector_shares(motifs)
    if per_seed.empty:
        return pd.DataFrame(columns=DETECTOR_COLUMNS)
    rows = []
    classes = class_order(per_seed["class"])
    for set_name in [s for s in (KNOWLEDGE, MATCHED) if s in set(per_seed["set"])]:
        for c in classes:
            g = per_seed[(per_seed["set"] == set_name) & (per_seed["class"] == c)]
            if g.empty:
                continue
            row = {"set": set_name, "class": c, "n_seeds": len(g)}
            row["n_units_mean"] = g["n_units"].mean()
            for share in SHARES:
                mean, low, high = _interval_or_nan(g[share])
                row |= {f"{share}_mean": mean, f"{share}_ci_low": low, f"{share}_ci_high": high}
            test = {"mean": np.nan, "ci_low": np.nan, "ci_high": np.nan, "p": np.nan}
            if set_name == KNOWLEDGE:
                other = per_seed[(per_seed["set"] == MATCHED) & (per_seed["class"] == c)]
                paired = g.merge(other, on="seed", suffixes=("", "_matched"))
                if not paired.empty:
                    test = stats.paired_test(paired["own_share"] - paired["own_share_matched"])
            row |= {
                "own_difference_mean": test["mean"],
                "own_difference_ci_low": test["ci_low"],
                "own_difference_ci_high": test["ci_high"],
                "p": test["p"],
            }
            rows.append(row)
    table = pd.DataFrame(rows)
    knowledge = (table["set"] == KNOWLEDGE).to_numpy()
    table["p_holm"] = np.nan
    table.loc[knowledge, "p_holm"] = stats.holm(table.loc[knowledge, "p"].to_numpy(dtype=float))
    table["more_own"] = (table["p_holm"] < ALPHA) & (table["own_difference_mean"] > 0)
    return table[DETECTOR_COLUMNS]


def top_detectors(motifs: pd.DataFrame, n: int = 3, set_name: str = KNOWLEDGE) -> pd.DataFrame:
    """Per class: the `n` units of `set_name` (over all seeds) with the highest best-motif
    AUROC above MIN_AUROC: class, seed, layer, module, unit, best_motif, motif_class,
    best_auroc."""
    columns = ["class", "seed", *UNIT_COLUMNS, "best_motif", "motif_class", "best_auroc"]
    if motifs.empty:
        return pd.DataFrame(columns=columns)
    best = best_motifs_per_seed(motifs[motifs["set"] == set_name])
    best = best[best["best_auroc"] > MIN_AUROC].sort_values("best_auroc", ascending=False)
    return best.groupby("class", sort=False).head(n)[columns].reset_index(drop=True)


# ----------------------------------------------------------------------------- markdown


def _cls(c) -> str:
    return f"EC {c}" if c != ALL_CLASSES else "all classes"


def _names(classes: Sequence) -> str:
    return ", ".join(str(c) for c in classes) if classes else "none"


def neuron_counts(neurons: pd.DataFrame, classes: Sequence, seeds: Sequence[int]) -> pd.DataFrame:
    """Knowledge neurons per (seed, class), 0 where a seed has none of a class's."""
    counts = neurons.groupby(["seed", "class"]).size() if len(neurons) else pd.Series(dtype=int)
    grid = pd.MultiIndex.from_product([list(seeds), list(classes)], names=["seed", "class"])
    return counts.reindex(grid, fill_value=0).rename("count").reset_index()


def placement_means(neurons: pd.DataFrame, seeds: Sequence[int]) -> pd.DataFrame:
    """Per (class, layer, module): the mean number of knowledge neurons over `seeds` (a seed
    without any in a cell counts 0)."""
    if neurons.empty:
        return pd.DataFrame(columns=["class", "layer", "module", "count"])
    counts = neurons.groupby(["class", "layer", "module"]).size() / max(len(seeds), 1)
    return counts.rename("count").reset_index()


def _first_paragraph(
    specificity: pd.DataFrame,
    detectors: pd.DataFrame,
    classes: list,
    without: list,
    has_motifs: bool,
) -> list[str]:
    """The answer first: how many classes have specific knowledge neurons, and do they detect
    their own class's motifs more than matched random units."""
    n = len(classes)
    p_true = specificity[specificity["quantity"] == "p_true"]
    by = {
        i: class_order(p_true[(p_true["intervention"] == i) & p_true["specific"]]["neuron_class"])
        for i in INTERVENTIONS
    }
    either = class_order(by["suppress"], by["amplify"])
    if p_true.empty:
        text = (
            f"**No class has knowledge neurons in any seed ({n} classes), so there is no "
            "knowledge neuron to test.**"
        )
    elif either:
        text = (
            f"**{len(either)} of {n} classes show specific knowledge neurons** "
            f"(EC {_names(either)}): scaling the class's knowledge neurons changes p(true class) "
            "of its own test sequences more than that of the other classes, beyond matched "
            "random units, in the expected direction (suppression lowers, amplification raises; "
            f"Holm p < {ALPHA}). Under suppression: {len(by['suppress'])} of {n} "
            f"(EC {_names(by['suppress'])}); under amplification: {len(by['amplify'])} of {n} "
            f"(EC {_names(by['amplify'])})."
        )
    else:
        text = (
            f"**0 of {n} classes show specific knowledge neurons**: for no class does "
            "suppressing or amplifying its knowledge neurons change p(true class) of its own "
            "sequences, relative to the other classes', more than random units with the same "
            f"per-(layer, module) counts do (Holm p < {ALPHA}). The knowledge neurons found here "
            "are not class-specific."
        )
    if without:
        text += f" Classes without knowledge neurons in any seed: EC {_names(without)}."
    if not has_motifs:
        text += (
            " The data carry no motif annotation, so whether knowledge neurons detect motifs "
            "was not measured."
        )
    else:
        know = detectors[detectors["set"] == KNOWLEDGE]
        per_class = know[know["class"] != ALL_CLASSES]
        more = class_order(per_class[per_class["more_own"].astype(bool)]["class"])
        pooled = know[know["class"] == ALL_CLASSES]
        matched = detectors[(detectors["set"] == MATCHED) & (detectors["class"] == ALL_CLASSES)]
        share = ""
        if not pooled.empty:
            r = pooled.iloc[0]
            m = matched["own_share_mean"].iloc[0] if not matched.empty else np.nan
            share = (
                f" (share of knowledge neurons whose best motif is their own class's: "
                f"{format_interval(r.own_share_mean, r.own_share_ci_low, r.own_share_ci_high, 2)}, "
                f"matched random units {m:.2f}; difference Holm p {format_p(r.p_holm)})"
            )
        pooled_more = bool(not pooled.empty and pooled["more_own"].astype(bool).iloc[0])
        counted = f"per class in {len(more)} of {len(per_class)} classes with scored units"
        if pooled_more:
            text += (
                " Knowledge neurons detect their own class's motifs more than matched random "
                f"units pooled over classes{share}; {counted} (EC {_names(more)})."
            )
        elif more:
            text += (
                " Pooled over classes, knowledge neurons are not shown to detect their own "
                f"class's motifs more than matched random units{share}; {counted} they do "
                f"(EC {_names(more)})."
            )
        else:
            text += (
                " Knowledge neurons do not detect their own class's motifs more than matched "
                f"random units{share}, in no class either: they are not shown to be motif "
                "detectors."
            )
    return [text, ""]


def _definitions(n_draws: int) -> list[str]:
    return [
        f"Intervals: mean [{INTERVAL}] (Student t; the seed is the replicate: split, "
        "training, attributions and random draws all vary with it). Effect: the change, "
        "against the unmodified model, in mean p(true class) (or accuracy) over the test "
        "sequences of a class when one class's knowledge neurons are scaled (x0 suppress, x2 "
        "amplify). Own effect: on the class's own sequences. Specificity: own effect minus the "
        "mean effect on the other classes' sequences. Matched: the mean over the "
        f"{n_draws} random unit set{'s' if n_draws != 1 else ''} per seed with the same count "
        "in every (layer, module) cell. Difference: knowledge specificity - matched "
        "specificity, paired by seed; p: two-sided paired t-test over seeds, Holm-corrected "
        "over every intervention x quantity x class row. Specific: Holm p < "
        f"{ALPHA} and the difference in the expected direction (suppression below matched, "
        "amplification above).",
        "",
    ]


def _neuron_lines(neurons: pd.DataFrame, classes: list, seeds: list[int], n_top: int):
    counts = neuron_counts(neurons, classes, seeds)
    placement = placement_means(neurons, seeds)
    rows = []
    for c in classes:
        n = counts[counts["class"] == c]["count"]
        cells = placement[placement["class"] == c].sort_values("count", ascending=False)
        top = "; ".join(
            f"L{r.layer} {r.module} ({r.count:.2g})" for r in cells.head(n_top).itertuples()
        )
        rows.append(
            [
                _cls(c),
                f"{n.mean():.1f} ({n.min()}–{n.max()})",
                f"{int((n > 0).sum())} of {len(seeds)}",
                top or "–",
            ]
        )
    header = [
        "class",
        "knowledge neurons per seed: mean (min–max)",
        "seeds with any",
        f"top (layer, module) cells (mean count over {len(seeds)} seeds)",
    ]
    return ["## Knowledge neurons per class", "", *md_table(header, rows)]


def _effect_lines(specificity: pd.DataFrame) -> list[str]:
    lines = []
    for quantity in [q for q in QUANTITIES if q in set(specificity["quantity"])]:
        sub = specificity[specificity["quantity"] == quantity]
        rows = []
        for r in sub.itertuples(index=False):
            rows.append(
                [
                    _cls(r.neuron_class),
                    f"{r.intervention} ({FACTORS.get(r.intervention, '?')})",
                    str(r.n_seeds),
                    format_interval(r.own_effect_mean, r.own_ci_low, r.own_ci_high),
                    format_interval(
                        r.specificity_mean, r.specificity_ci_low, r.specificity_ci_high
                    ),
                    f"{r.matched_specificity_mean:.3f}",
                    format_interval(r.difference_mean, r.difference_ci_low, r.difference_ci_high),
                    format_p(r.p_holm),
                    "yes" if r.specific else "no",
                ]
            )
        header = [
            "class",
            "intervention",
            "seeds",
            "own effect",
            "specificity",
            "matched specificity",
            "difference",
            "Holm p",
            "specific",
        ]
        lines += [f"## Causal effects on {QUANTITY_LABELS.get(quantity, quantity)}", ""]
        lines += md_table(header, rows)
    return lines


def _motif_lines(motifs: pd.DataFrame, detectors: pd.DataFrame, n_top: int) -> list[str]:
    lines = ["## Motif detectors", ""]
    if motifs.empty or detectors.empty:
        return lines + [
            "No motif annotation: the data carry no planted or annotated motifs, so no unit's "
            "motif AUROC was computed.",
            "",
        ]
    lines += [
        "Per unit, the AUROC of its token activation for 'this residue lies in a motif of type "
        "m'; a unit's best motif is the one with the highest AUROC, counted only when above "
        f"{MIN_AUROC}. Own: the best motif is one of the class's own motifs; other: another "
        "class's (a decoy detector); none: no AUROC above 0.5. Shares per seed, mean "
        f"[{INTERVAL}]. Difference: own share, knowledge - matched, paired by seed; "
        "two-sided paired t-test, Holm over the knowledge rows.",
        "",
    ]
    top = top_detectors(motifs, n_top)
    rows = []
    for c in class_order(detectors["class"]):
        know = detectors[(detectors["set"] == KNOWLEDGE) & (detectors["class"] == c)]
        matched = detectors[(detectors["set"] == MATCHED) & (detectors["class"] == c)]
        if know.empty:
            continue
        k = know.iloc[0]
        t = top[top["class"].astype(str) == str(c)] if c != ALL_CLASSES else top.head(0)
        rows.append(
            [
                _cls(c),
                format_interval(k.own_share_mean, k.own_share_ci_low, k.own_share_ci_high, 2),
                format_interval(k.other_share_mean, k.other_share_ci_low, k.other_share_ci_high, 2),
                f"{k.none_share_mean:.2f}",
                f"{matched['own_share_mean'].iloc[0]:.2f}" if not matched.empty else "–",
                format_interval(
                    k.own_difference_mean, k.own_difference_ci_low, k.own_difference_ci_high, 2
                )
                + f", p {format_p(k.p_holm)}",
                "; ".join(
                    f"s{r.seed} L{r.layer} {r.module}:{r.unit} {r.best_motif} (EC {r.motif_class}) "
                    f"{r.best_auroc:.2f}"
                    for r in t.itertuples()
                )
                or "–",
            ]
        )
    header = [
        "class",
        "own share",
        "other-class (decoy) share",
        "none",
        "matched own share",
        "own share - matched",
        "top detectors (seed, unit, best motif (its class), AUROC)",
    ]
    return lines + md_table(header, rows)


def summary_markdown(
    neurons: pd.DataFrame,
    effects: pd.DataFrame,
    motifs: pd.DataFrame,
    specificity: pd.DataFrame,
    detectors: pd.DataFrame,
    *,
    seeds: Sequence[int] | None = None,
    n_top: int = 3,
) -> str:
    """The knowledge-neuron summary page: the answer first, definitions, then per class the
    knowledge neurons and where they sit, the causal effects and the motif detectors. The
    tables carry a `seed` column; `seeds` defaults to those in the tables."""
    seeds = list(seeds) if seeds is not None else _seeds_of(neurons, effects, motifs)
    classes = class_order(
        effects.get("sequence_class", []),
        effects.get("neuron_class", []),
        neurons.get("class", []),
    )
    with_neurons = set(class_order(neurons.get("class", []), effects.get("neuron_class", [])))
    without = [c for c in classes if c not in with_neurons]
    matched = effects[effects["set"] == MATCHED] if len(effects) else effects
    n_draws = int(matched.groupby("seed")["draw"].nunique().max()) if len(matched) else 0
    lines = [
        "# Knowledge neurons",
        "",
        *_first_paragraph(specificity, detectors, classes, without, not motifs.empty),
        f"Seeds: {len(seeds)} ({', '.join(str(s) for s in seeds)}).",
        "",
        *_definitions(n_draws),
        *_neuron_lines(neurons, classes, seeds, n_top),
        *_effect_lines(specificity),
        *_motif_lines(motifs, detectors, n_top),
    ]
    return "\n".join(lines)


# ----------------------------------------------------------------------------- figures


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
    n_seeds = len(_seeds_of(effects))
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
    seeds = list(seeds) if seeds is not None else _seeds_of(neurons)
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
            ax.set_title(_cls(c))
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
            .sort_values(["motif_class", "motif"], key=lambda s: s.map(_class_key))
        )
        rows = sub[["class", *UNIT_COLUMNS]].drop_duplicates()
        rows = rows.sort_values(["class", *UNIT_COLUMNS], key=_sort_key).reset_index(drop=True)
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


def _sort_key(column: pd.Series) -> pd.Series:
    return column.map(_class_key) if column.name == "class" else column


# ----------------------------------------------------------------------------- outputs


def _read(paths: Sequence[PathLike], seeds: Sequence[int]) -> pd.DataFrame:
    """The per-seed tables stacked with a `seed` column; an empty file adds no rows."""
    frames = []
    for path, seed in zip(paths, seeds, strict=True):
        try:
            frame = pd.read_csv(path, sep="\t")
        except pd.errors.EmptyDataError:
            continue
        frames.append(frame.assign(seed=int(seed)))
    non_empty = [f for f in frames if len(f)]
    if non_empty:
        return pd.concat(non_empty, ignore_index=True)
    return frames[0] if frames else pd.DataFrame(columns=["seed"])


def write_outputs(
    neuron_paths: Sequence[PathLike],
    effect_paths: Sequence[PathLike],
    motif_paths: Sequence[PathLike],
    seeds: Sequence[int],
    outputs: dict[str, PathLike],
    style: dict | None = None,
) -> None:
    """Read each seed's neurons, effects and motifs tables (in the order of `seeds`); write the
    specificity and detector tables, the summary page and the figures, each atomically.
    `outputs` keys: OUTPUT_KEYS (summary: the markdown page)."""
    seeds = [int(s) for s in seeds]
    neurons = _read(neuron_paths, seeds)
    effects = _read(effect_paths, seeds)
    motifs = _read(motif_paths, seeds)
    for table, columns in (
        (effects, ["intervention", "set", "draw", "quantity", "neuron_class", "sequence_class"]),
        (motifs, ["set", "class", *UNIT_COLUMNS, "motif", "motif_class", "auroc"]),
        (neurons, ["class", *UNIT_COLUMNS]),
    ):
        for column in columns:
            if column not in table:
                table[column] = pd.Series(dtype=float)
    specificity = specificity_table(effects)
    detectors = detector_table(motifs)
    text = summary_markdown(neurons, effects, motifs, specificity, detectors, seeds=seeds)
    write_tsv(specificity, outputs["specificity"])
    write_tsv(detectors, outputs["detectors"])
    with atomic_path(outputs["summary"]) as tmp:
        tmp.write_text(text + "\n")
    plot_effects(effects, outputs["effects_png"], outputs["effects_pdf"], style)
    plot_placement(neurons, outputs["placement_png"], outputs["placement_pdf"], style, seeds=seeds)
    plot_motif_detectors(
        motifs, outputs["motif_detectors_png"], outputs["motif_detectors_pdf"], style
    )


def knowledge_summary(input, output, settings: KnowledgeSummarySettings, wildcards) -> None:
    """The knowledge_summary step: across seeds, specificity with tests, motif detectors, the
    summary page and the figures."""
    write_outputs(
        list(input.neurons),
        list(input.effects),
        list(input.motifs),
        settings.seeds,
        {key: output[key] for key in OUTPUT_KEYS},
        dataclasses.asdict(settings),
    )
