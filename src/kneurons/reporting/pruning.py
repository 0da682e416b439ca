"""Aggregate the seeds' evaluations into tables with intervals and tests, and a summary page.

Inputs per seed: the fine-tuning metrics, the evaluation results (one row per pruned model:
`analysis.evaluation`), the kept counts per (layer, module) of each method's selections, and
the split's baselines (majority class, residue composition).

Intervals: one kind per level. A single model's accuracy has a 95% percentile-bootstrap
interval over test sequences (computed in the evaluation). Across seeds, a mean has a 95%
Student-t interval over the per-seed values (the seed is the replicate: it varies the split,
the initialisation, training and scoring). Tests compare per-seed values paired by seed
(`analysis.stats.paired_test`) and are Holm-corrected within each family of comparisons.

Enrichment of a module type M = (fraction of M's units kept) / (fraction of all units kept):
1 = kept in proportion to size; a uniform random selection gives 1 in expectation. Its null is
exact: under same-size random selections the kept count of M is hypergeometric.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from kneurons.analysis import stats
from kneurons.model.units import GLOBAL
from kneurons.reporting.format import (
    ALPHA,
    RANDOM,
)

FOCUS_MODULE = "k_proj"


# a pruned model that keeps less than this share of the full model's gain over chance is
# "near chance": where its units sit says nothing about what the model uses
NEAR_CHANCE = 0.25


def accuracy_table(
    results: pd.DataFrame,
    baselines: Sequence[dict],
    seeds: Sequence[int],
    metric: str = "accuracy",
) -> pd.DataFrame:
    """Per (seed, selection, method, scope, retention): `value` is the headline metric
    (`metric`: accuracy or balanced_accuracy) with its 95% bootstrap interval; accuracy,
    balanced accuracy and macro-F1 beside it. Random and matched-random rows are the mean over
    their draws (`n_draws`, `draws_sd`; no interval of their own). The baselines come as rows
    with selection 'baseline'."""
    prefix = "" if metric == "accuracy" else "balanced_"
    results = results.assign(
        value=results[metric],
        ci_low=results[f"{prefix}ci_low"],
        ci_high=results[f"{prefix}ci_high"],
    )
    keys = ["seed", "selection", "method", "scope", "retention"]
    grouped = results.groupby(keys, sort=False, dropna=False)
    table = grouped.agg(
        value=("value", "mean"),
        ci_low=("ci_low", "first"),
        ci_high=("ci_high", "first"),
        draws_sd=("value", "std"),
        n_draws=("value", "size"),
        accuracy=("accuracy", "mean"),
        balanced_accuracy=("balanced_accuracy", "mean"),
        macro_f1=("macro_f1", "mean"),
        n_kept=("n_kept", "mean"),
        n_effective=("n_effective", "mean"),
        n_total=("n_total", "first"),
    ).reset_index()
    drawn = table["n_draws"] > 1
    table.loc[drawn, ["ci_low", "ci_high"]] = np.nan
    table.loc[~drawn, "draws_sd"] = np.nan
    rows = []
    for seed, baseline in zip(seeds, baselines, strict=True):
        for name in ("majority", "composition"):
            b = baseline[name]
            rows.append(
                {
                    "seed": seed,
                    "selection": "baseline",
                    "method": name,
                    "scope": GLOBAL,
                    "retention": np.nan,
                    "value": b[metric],
                    "ci_low": b[f"{prefix}ci_low"],
                    "ci_high": b[f"{prefix}ci_high"],
                    "n_draws": 1,
                    "accuracy": b["accuracy"],
                    "balanced_accuracy": b.get("balanced_accuracy", np.nan),
                    "macro_f1": b.get("macro_f1", np.nan),
                }
            )
    table = pd.concat([table, pd.DataFrame(rows)], ignore_index=True)
    return table.assign(metric=metric)


def headline_metric(baselines: Sequence[dict]) -> str:
    """balanced_accuracy when any seed's test split is imbalanced (its largest class more than
    1.5 times its smallest, or a class missing), else accuracy: with imbalanced classes
    accuracy rewards the majority class."""
    for b in baselines:
        counts = list(b.get("class_counts", {}).values())
        if counts and (
            len(counts) < b.get("n_classes", len(counts)) or max(counts) > 1.5 * min(counts)
        ):
            return "balanced_accuracy"
    return "accuracy"


def summary_table(accuracy: pd.DataFrame) -> pd.DataFrame:
    """Across seeds: the headline metric's mean with its 95% t-interval per (selection, method,
    scope, retention), in the accuracy table's order."""
    keys = ["selection", "method", "scope", "retention"]
    rows = []
    for key, group in accuracy.groupby(keys, sort=False, dropna=False):
        mean, low, high = stats.mean_interval(group["value"].to_numpy())
        effective = (group["n_effective"] / group["n_kept"]).mean()
        rows.append(
            {
                **dict(zip(keys, key, strict=True)),
                "n_seeds": len(group),
                "metric": group["metric"].iloc[0],
                "value_mean": mean,
                "ci_low": low,
                "ci_high": high,
                "accuracy_mean": group["accuracy"].mean(),
                "balanced_accuracy_mean": group["balanced_accuracy"].mean(),
                "macro_f1_mean": group["macro_f1"].mean(),
                "effective_fraction": effective,
            }
        )
    return pd.DataFrame(rows)


METRIC_LABELS = {"accuracy": "test accuracy", "balanced_accuracy": "balanced test accuracy"}


def metric_label(summary: pd.DataFrame) -> str:
    return METRIC_LABELS[summary["metric"].iloc[0]]


def rows_of(
    table: pd.DataFrame, selection: str, method: str, scope: str, r: float | None = None
) -> pd.DataFrame:
    """The rows of one selection (and retention `r`; -1 matches the baselines' NaN)."""
    match = (
        (table["selection"] == selection) & (table["method"] == method) & (table["scope"] == scope)
    )
    if r is not None:
        match &= np.isclose(table["retention"].fillna(-1), r)
    return table[match]


def _per_seed(accuracy: pd.DataFrame, selection: str, method: str, scope: str, r: float):
    return rows_of(accuracy, selection, method, scope, r).set_index("seed")["value"]


# the two questions a test answers, as tests.tsv's `question` names them
ACROSS_MODELS = "across fine-tuned models"
IN_EACH_MODEL = "in each fine-tuned model"
TEST_COLUMNS = [
    "comparison",
    "family",
    "question",
    "test",
    "method",
    "scope",
    "retention",
    "n_seeds",
    "n_draws",
    "mean_difference",
    "ci_low",
    "ci_high",
    "t",
    "p",
    "per_seed_p",
    "p_holm",
    "significant",
]


def _controls(method: str, scope: str) -> list[tuple[str, str, str]]:
    """(selection, method, comparison name) of the controls a method's selection is tested
    against: random and matched random globally, random within the module type otherwise."""
    if scope != GLOBAL:
        return [("random", RANDOM, "random within module")]
    return [("random", RANDOM, "random"), ("matched", method, "matched random")]


def tests_table(accuracy: pd.DataFrame, results: pd.DataFrame | None = None) -> pd.DataFrame:
    """Does each method's selection beat its controls (random, matched random globally; random
    within each module type)? Two questions, two tests (`question`):
    - across fine-tuned models: per seed the method minus the mean of that seed's draws, a
      two-sided paired t-test over seeds (`paired_test`);
    - in each fine-tuned model (needs `results`, the per-model rows with every draw): per
      seed the permutation p of the method's value among that seed's draws (one-sided,
      greater; `permutation_p`), combined over seeds by Fisher's method (`fisher_combined`).
    Holm-corrected over methods x ratios (x modules) within each (question, comparison)."""
    scored = accuracy[accuracy["selection"] == "scored"]
    rows = []
    for (method, scope, r), _ in scored.groupby(["method", "scope", "retention"], sort=False):
        mine = _per_seed(accuracy, "scored", method, scope, r)
        for control, control_method, comparison in _controls(method, scope):
            other = _per_seed(accuracy, control, control_method, scope, r)
            diff = (mine - other).dropna()
            if diff.empty:
                continue
            test = stats.paired_test(diff.to_numpy())
            rows.append(
                {
                    "comparison": f"{method} - {comparison}",
                    "family": comparison,
                    "question": ACROSS_MODELS,
                    "test": "paired t over seeds",
                    "method": method,
                    "scope": scope,
                    "retention": r,
                    "n_seeds": test["n"],
                    "mean_difference": test["mean"],
                    "ci_low": test["ci_low"],
                    "ci_high": test["ci_high"],
                    "t": test["t"],
                    "p": test["p"],
                }
            )
            if results is not None:
                rows += _model_test_rows(results, accuracy, method, scope, r, control, comparison)
    table = pd.DataFrame(rows, columns=TEST_COLUMNS[:-2])
    if table.empty:
        return table.assign(p_holm=[], significant=[])
    family = table["question"] + ": " + table["family"]
    table["p_holm"] = table.groupby(family)["p"].transform(lambda p: stats.holm(p.to_numpy()))
    table["significant"] = table["p_holm"] < ALPHA
    return table[TEST_COLUMNS]


def _model_test_rows(
    results: pd.DataFrame,
    accuracy: pd.DataFrame,
    method: str,
    scope: str,
    r: float,
    control: str,
    comparison: str,
) -> list[dict]:
    """The in-each-model test of one (method, scope, ratio) against one control: the per-seed
    permutation p-values and their Fisher combination (at most one row)."""
    metric = accuracy["metric"].iloc[0]
    at_ratio = np.isclose(results["retention"], r) & (results["scope"] == scope)
    mine = results[at_ratio & (results["selection"] == "scored") & (results["method"] == method)]
    draws = results[at_ratio & (results["selection"] == control)]
    if control == "matched":
        draws = draws[draws["method"] == method]
    p_by_seed, n_draws, differences = {}, [], []
    for seed, observed in mine.set_index("seed")[metric].items():
        values = draws.loc[draws["seed"] == seed, metric].to_numpy(dtype=float)
        if len(values):
            p_by_seed[seed] = stats.permutation_p(float(observed), values, "greater")
            n_draws.append(len(values))
            differences.append(float(observed) - values.mean())
    if not p_by_seed:
        return []
    return [
        {
            "comparison": f"{method} - {comparison}",
            "family": comparison,
            "question": IN_EACH_MODEL,
            "test": "permutation per seed (one-sided), Fisher over seeds",
            "method": method,
            "scope": scope,
            "retention": r,
            "n_seeds": len(p_by_seed),
            "n_draws": min(n_draws),
            "mean_difference": float(np.mean(differences)),
            "ci_low": np.nan,
            "ci_high": np.nan,
            "t": np.nan,
            "p": stats.fisher_combined(list(p_by_seed.values())),
            "per_seed_p": " ".join(f"{s}:{p:.3g}" for s, p in sorted(p_by_seed.items())),
        }
    ]


def density_table(kept: pd.DataFrame) -> pd.DataFrame:
    """Per (seed, method, retention, layer, module): kept and effective counts, density
    (kept / units) and enrichment (density / overall kept fraction)."""
    out = kept.copy()
    totals = out.groupby(["seed", "method", "retention"])[["n_kept", "n_neurons"]].transform("sum")
    out["density"] = out["n_kept"] / out["n_neurons"]
    out["enrichment"] = out["density"] / (totals["n_kept"] / totals["n_neurons"])
    return out


def _pooled(kept: pd.DataFrame) -> pd.DataFrame:
    """Per (method, retention, seed, module): counts pooled over layers, plus the selection's
    totals."""
    per_module = kept.groupby(["method", "retention", "seed", "module"], sort=False)[
        ["n_neurons", "n_kept", "n_effective"]
    ].sum()
    totals = per_module.groupby(["method", "retention", "seed"]).transform("sum")
    totals.columns = [f"{c}_all" for c in totals.columns]
    per_module = per_module.join(totals).reset_index()
    per_module["enrichment"] = (per_module["n_kept"] / per_module["n_neurons"]) / (
        per_module["n_kept_all"] / per_module["n_neurons_all"]
    )
    # undefined (NaN) for a selection of which no unit can affect the output
    effective_all = per_module["n_effective_all"].where(per_module["n_effective_all"] > 0)
    per_module["effective_enrichment"] = (per_module["n_effective"] / effective_all) / (
        per_module["n_neurons"] / per_module["n_neurons_all"]
    )
    return per_module


def enrichment_table(kept: pd.DataFrame, summary: pd.DataFrame, chance: float) -> pd.DataFrame:
    """Per (method, retention, module type): enrichment with its 95% t-interval over seeds, the
    exact p-value of the pooled kept count against same-size random selections (one-sided,
    enriched; Holm over all rows), the fraction of kept units that can affect the output and
    the enrichment counted over those effective units only. `near_chance`: the pruned model
    keeps less than NEAR_CHANCE of the full model's gain over chance (its mean), so
    enrichment there is not evidence that the model uses those units."""
    pooled = _pooled(kept)
    rows = []
    for (method, r, module), g in pooled.groupby(["method", "retention", "module"], sort=False):
        mean, low, high = stats.mean_interval(g["enrichment"].to_numpy())
        defined = g["effective_enrichment"].dropna().to_numpy()
        eff_mean, eff_low, eff_high = (
            stats.mean_interval(defined) if len(defined) else (np.nan, np.nan, np.nan)
        )
        p = stats.pooled_enrichment_p(
            g["n_kept"].to_numpy(),
            g["n_neurons"].to_numpy(),
            g["n_kept_all"].to_numpy(),
            g["n_neurons_all"].to_numpy(),
        )
        accuracy = summary[
            (summary["selection"] == "scored")
            & (summary["method"] == method)
            & (summary["scope"] == GLOBAL)
            & np.isclose(summary["retention"], r)
        ]
        full = summary[summary["selection"] == "full"]
        near_chance = bool(
            not accuracy.empty
            and not full.empty
            and accuracy["value_mean"].iloc[0] - chance
            < NEAR_CHANCE * (full["value_mean"].iloc[0] - chance)
        )
        rows.append(
            {
                "method": method,
                "retention": r,
                "module": module,
                "n_seeds": len(g),
                "enrichment_mean": mean,
                "ci_low": low,
                "ci_high": high,
                "p": p,
                "effective_fraction": (g["n_effective"] / g["n_kept"]).mean(),
                "effective_enrichment_mean": eff_mean,
                "effective_ci_low": eff_low,
                "effective_ci_high": eff_high,
                "near_chance": near_chance,
            }
        )
    table = pd.DataFrame(rows)
    if table.empty:
        return table
    table["p_holm"] = stats.holm(table["p"].to_numpy())
    table["significant"] = table["p_holm"] < ALPHA
    return table


def focus_tests(pooled: pd.DataFrame) -> pd.DataFrame:
    """Per (method, retention): is FOCUS_MODULE more enriched than the runner-up module type?
    Paired t-test over seeds of (k_proj - runner-up) enrichment; Holm over all rows."""
    rows = []
    for (method, r), g in pooled.groupby(["method", "retention"], sort=False):
        wide = g.pivot(index="seed", columns="module", values="enrichment")
        if FOCUS_MODULE not in wide.columns or wide.shape[1] < 2:
            continue
        means = wide.mean()
        others = means.drop(FOCUS_MODULE)
        runner_up = str(others.idxmax())
        test = stats.paired_test((wide[FOCUS_MODULE] - wide[runner_up]).to_numpy())
        rows.append(
            {
                "method": method,
                "retention": r,
                "highest": str(means.idxmax()),
                "runner_up": runner_up,
                "difference": test["mean"],
                "ci_low": test["ci_low"],
                "ci_high": test["ci_high"],
                "p": test["p"],
            }
        )
    table = pd.DataFrame(rows)
    if not table.empty:
        table["p_holm"] = stats.holm(table["p"].to_numpy())
    return table
