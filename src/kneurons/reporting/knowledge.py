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

from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from kneurons.analysis import stats
from kneurons.model.units import INTERVENTIONS, UNIT_COLUMNS
from kneurons.reporting.format import (
    ALPHA,
)

KNOWLEDGE, MATCHED = "knowledge", "matched"


QUANTITIES = ("p_true", "accuracy")


# the sign of a specific effect: suppression (x0) lowers, amplification (x2) raises
EXPECTED_SIGN = {"suppress": -1.0, "amplify": 1.0}


FACTORS = {name: f"x{factor:g}" for name, factor in INTERVENTIONS.items()}


QUANTITY_LABELS = {"p_true": "p(true class)", "accuracy": "accuracy"}


# a unit "detects" a motif only when its best AUROC is above chance
MIN_AUROC = 0.5


ALL_CLASSES = "all"


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
    "n_draws",
    "per_seed_p",
    "model_p",
    "model_p_holm",
    "model_specific",
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


def class_key(c) -> tuple:
    """Numeric classes in numeric order, then anything else ('all' last) by name."""
    try:
        return (0, float(c), "")
    except (TypeError, ValueError):
        return (1, 0.0, str(c))


def sort_key(column: pd.Series) -> pd.Series:
    """A table column as it sorts: classes by their number (`class_key`), others as they are."""
    return column.map(class_key) if column.name == "class" else column


def class_order(*columns: Iterable) -> list:
    """The distinct classes of `columns`, in numeric order."""
    seen = {c for column in columns for c in column if not pd.isna(c)}
    return sorted(seen, key=class_key)


def seeds_of(*tables: pd.DataFrame) -> list[int]:
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
    draws = matched["specificity"].apply(lambda v: v.to_numpy(dtype=float))
    matched = matched.agg(
        matched_own_mean=("own", "mean"),
        matched_specificity_mean=("specificity", "mean"),
        n_draws=("draw", "nunique"),
    )
    table = knowledge.join(matched, how="left").reset_index()
    table["n_draws"] = table["n_draws"].fillna(0).astype(int)
    table["permutation_p"] = [
        stats.permutation_p(
            row.specificity,
            draws.get(tuple(getattr(row, k) for k in out_keys), []),
            "less" if EXPECTED_SIGN.get(row.intervention, 1.0) < 0 else "greater",
        )
        for row in table.itertuples(index=False)
    ]
    return table


def specificity_table(effects: pd.DataFrame) -> pd.DataFrame:
    """Per (intervention, quantity, neuron_class), across seeds: the knowledge set's own-class
    effect and specificity (mean with its 95% t-interval over seeds), the matched sets' mean
    own effect and specificity, and a two-sided paired t-test over seeds of (knowledge
    specificity - matched specificity), Holm-corrected over all rows. `specific`: Holm p <
    ALPHA and the difference in the expected direction (suppress: below matched, amplify:
    above). In each fine-tuned model, too: per seed the permutation p of the knowledge set's
    specificity among that seed's matched sets, one-sided in the expected direction
    (`per_seed_p`, at least 1 / (1 + `n_draws`)), combined over seeds by Fisher's method
    (`model_p`), Holm over all rows (`model_p_holm`, `model_specific`). `effects` has a `seed`
    column; seeds without the class's knowledge neurons have no rows and do not count."""
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
                        "n_draws": int(g["n_draws"].min()),
                        "per_seed_p": " ".join(
                            f"{int(s)}:{v:.3g}"
                            for s, v in zip(g["seed"], g["permutation_p"], strict=True)
                            if not np.isnan(v)
                        ),
                        "model_p": stats.fisher_combined(g["permutation_p"].to_numpy()),
                    }
                )
    derived = ("p_holm", "specific", "model_p_holm", "model_specific")
    table = pd.DataFrame(rows, columns=[c for c in SPECIFICITY_COLUMNS if c not in derived])
    for prefix in ("", "model_"):
        p = table[f"{prefix}p"].to_numpy(dtype=float)
        table[f"{prefix}p_holm"] = stats.holm(p) if len(table) else []
    sign = table["intervention"].map(EXPECTED_SIGN).to_numpy(dtype=float)
    expected = np.sign(table["difference_mean"].to_numpy(dtype=float)) == sign
    table["specific"] = (table["p_holm"] < ALPHA).to_numpy() & expected
    # one-sided in the expected direction already
    table["model_specific"] = (table["model_p_holm"] < ALPHA).to_numpy()
    return table[SPECIFICITY_COLUMNS]


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
