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

import os
from collections.abc import Sequence

import numpy as np
import pandas as pd

from kneurons.analysis import stats
from kneurons.io import atomic_path, read_json, write_tsv
from kneurons.model.units import GLOBAL
from kneurons.reporting.format import (
    ALPHA,
    FULL_METHOD,
    RANDOM,
    format_interval,
    format_p,
    format_retention,
    md_table,
    method_order,
    module_order,
)
from kneurons.settings import NoSettings

FOCUS_MODULE = "k_proj"
# a pruned model that keeps less than this share of the full model's gain over chance is
# "near chance": where its units sit says nothing about what the model uses
NEAR_CHANCE = 0.25
OUTPUT_KEYS = ("accuracy", "summary", "tests", "enrichment", "density", "markdown")


PathLike = str | os.PathLike


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


def _label(summary: pd.DataFrame) -> str:
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


def tests_table(accuracy: pd.DataFrame) -> pd.DataFrame:
    """Paired tests across seeds: each method minus that seed's random mean (and matched-random
    mean), globally and within each module type; Holm-corrected within each comparison."""
    scored = accuracy[accuracy["selection"] == "scored"]
    rows = []
    for (method, scope, r), _ in scored.groupby(["method", "scope", "retention"], sort=False):
        mine = _per_seed(accuracy, "scored", method, scope, r)
        controls = [("random", RANDOM)]
        if scope == GLOBAL:
            controls.append(("matched", method))
        for control, control_method in controls:
            other = _per_seed(accuracy, control, control_method, scope, r)
            diff = (mine - other).dropna()
            if diff.empty:
                continue
            comparison = f"{control} random" if control == "matched" else "random"
            if scope != GLOBAL:
                comparison = "random within module"
            test = stats.paired_test(diff.to_numpy())
            rows.append(
                {
                    "comparison": f"{method} - {comparison}",
                    "family": comparison,
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
    table = pd.DataFrame(rows)
    if table.empty:
        return table.assign(p_holm=[], significant=[])
    table["p_holm"] = table.groupby("family")["p"].transform(lambda p: stats.holm(p.to_numpy()))
    table["significant"] = table["p_holm"] < ALPHA
    return table


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


def _summary_row(summary: pd.DataFrame, selection: str, method: str, scope: str, r: float):
    rows = rows_of(summary, selection, method, scope, r)
    return rows.iloc[0] if len(rows) else None


def _cell(summary, selection, method, scope, r) -> str:
    row = _summary_row(summary, selection, method, scope, r)
    return "–" if row is None else format_interval(row.value_mean, row.ci_low, row.ci_high)


def _model_lines(summary: pd.DataFrame, accuracy: pd.DataFrame, chance: float) -> list[str]:
    """Warnings first, then the full model against its baselines."""
    full = _summary_row(summary, "full", FULL_METHOD, GLOBAL, 1.0)
    lines = []
    if full is None:
        return lines
    comparisons = []
    full_seeds = accuracy[accuracy["selection"] == "full"].set_index("seed")
    for name in ("majority", "composition"):
        b = _summary_row(summary, "baseline", name, GLOBAL, -1)
        if b is None:
            continue
        # Not clearly above: the intervals over seeds overlap, or in at least half of the seeds
        # the model's bootstrap interval overlaps the baseline's (intervals over seeds are
        # undefined for one seed and blind to test-set noise when the seeds agree).
        across = not pd.isna(full.ci_low) and full.ci_low <= b.ci_high
        base_seeds = accuracy[accuracy["method"] == name].set_index("seed")
        per_seed = (full_seeds["ci_low"] <= base_seeds["ci_high"]).dropna()
        comparisons.append((name, b, across or bool(per_seed.mean() >= 0.5)))
    overlapping = [name for name, _, overlap in comparisons if overlap]
    if overlapping:
        lines += [
            f"**Warning: the full model is not clearly better than the "
            f"{' and '.join(overlapping)} baseline (95% intervals overlap). Pruning results of "
            "such a model cannot show what it knows; read the rest with that in mind.**",
            "",
        ]
    lines += ["## The full model and its baselines", ""]
    rows = [["full model", format_interval(full.value_mean, full.ci_low, full.ci_high)]]
    for name, b, _ in comparisons:
        label = "majority class" if name == "majority" else "composition (residues + length)"
        rows.append([f"{label} baseline", format_interval(b.value_mean, b.ci_low, b.ci_high)])
    rows.append(["chance (1 / classes)", f"{chance:.3f}"])
    lines += md_table(["model", f"{_label(summary)}, mean [95% CI over seeds]"], rows)
    per_seed = accuracy[accuracy["selection"] == "full"].sort_values("seed")
    text = "; ".join(
        f"seed {s}: {a:.3f} [{lo:.3f}, {hi:.3f}]"
        for s, a, lo, hi in per_seed[["seed", "value", "ci_low", "ci_high"]].itertuples(index=False)
    )
    lines += [f"Per seed (95% bootstrap interval over test sequences): {text}.", ""]
    return lines


def _accuracy_lines(summary: pd.DataFrame, tests: pd.DataFrame, n_draws: dict) -> list[str]:
    glob = summary[(summary["scope"] == GLOBAL) & summary["selection"].isin(["scored", "random"])]
    ratios = sorted(glob["retention"].unique(), reverse=True)
    methods = method_order(glob[glob["selection"] == "scored"]["method"])
    lines = [
        f"## {_label(summary).capitalize()} of the pruned models",
        "",
        "Mean [95% t-interval over seeds]. Random: the mean of "
        f"{n_draws.get('random', '?')} uniform selections per seed; matched random: "
        f"{n_draws.get('matched', '?')} random selections per seed with the method's kept "
        "count in every (layer, module).",
        "",
    ]
    rows = []
    for method in methods:
        rows.append([method, *(_cell(summary, "scored", method, GLOBAL, r) for r in ratios)])
        rows.append(
            [
                f"matched random ({method})",
                *(_cell(summary, "matched", method, GLOBAL, r) for r in ratios),
            ]
        )
    rows.append([RANDOM, *(_cell(summary, "random", RANDOM, GLOBAL, r) for r in ratios)])
    lines += md_table(["selection", *(format_retention(r) for r in ratios)], rows)
    if tests.empty:
        return lines
    lines += [
        "### Does a method beat random?",
        "",
        f"Per seed, the method's {_label(summary)} minus the mean of that seed's random draws; "
        "mean "
        "[95% t-interval], two-sided paired t-test over seeds (the seed is the replicate; with 5 "
        "seeds a sign-flip or Wilcoxon test cannot go below p = 0.0625), Holm-corrected over "
        f"methods x ratios within each comparison. Significant: Holm p < {ALPHA}.",
        "",
    ]
    rows = []
    glob_tests = tests[tests["scope"] == GLOBAL]
    for t in glob_tests.itertuples(index=False):
        verdict = "yes" if t.significant else "no"
        direction = "above" if t.mean_difference > 0 else "below"
        rows.append(
            [
                t.comparison,
                format_retention(t.retention),
                format_interval(t.mean_difference, t.ci_low, t.ci_high),
                format_p(t.p_holm),
                f"{verdict} ({direction})" if t.significant else "no",
            ]
        )
    lines += md_table(["comparison", "ratio", "difference", "Holm p", "significant"], rows)
    return lines


def _module_lines(summary: pd.DataFrame, tests: pd.DataFrame) -> list[str]:
    within = summary[summary["scope"] != GLOBAL]
    if within.empty:
        return []
    lines = [
        "## Within-module pruning",
        "",
        "Each module type alone pruned to the ratio (top units by each method, or at random), "
        f"every other module intact; mean {_label(summary)} [95% t-interval over seeds]. "
        "The method - "
        "random difference and its Holm p (over modules x ratios x methods) follow each cell.",
        "",
    ]
    methods = method_order(within[within["selection"] == "scored"]["method"])
    ratios = sorted(within["retention"].unique(), reverse=True)
    rows = []
    for module in module_order(within["scope"]):
        for r in ratios:
            row = [module, format_retention(r)]
            for method in methods:
                cell = _cell(summary, "scored", method, module, r)
                t = tests[
                    (tests["method"] == method)
                    & (tests["scope"] == module)
                    & np.isclose(tests["retention"], r)
                ]
                if not t.empty:
                    t = t.iloc[0]
                    star = " *" if t.significant else ""
                    cell += f"; {t.mean_difference:+.3f}, p {format_p(t.p_holm)}{star}"
                row.append(cell)
            row.append(_cell(summary, "random", RANDOM, module, r))
            rows.append(row)
    lines += md_table(["module", "ratio", *methods, RANDOM], rows)
    lines += ["\\* Holm p < 0.05.", ""]
    return lines


def _enrichment_lines(enrichment: pd.DataFrame, focus: pd.DataFrame, granularity: str):
    if enrichment.empty:
        return []
    unit = "weights" if granularity == "weight" else "units"
    lines = [
        "## Where the kept units sit: enrichment per module type",
        "",
        f"Enrichment = (share of the module type's {unit} kept) / (share of all {unit} kept), "
        "pooled over layers; mean [95% t-interval over seeds]. p: exact one-sided p of the "
        "pooled kept count against same-size random selections (hypergeometric), Holm over "
        "every row of results/enrichment.tsv. Effective: the share of kept units that can "
        "affect the output (a q or k unit needs a kept k or q unit that it meets in the "
        "attention logit, the same index or its rotary partner, a kept v unit in its head and a "
        "kept out_proj unit in its layer; a v unit needs a kept out_proj unit; an fc1 unit a "
        "kept fc2 unit), and the enrichment counted over effective units only.",
        "",
    ]
    rows = []
    for (method, r), g in enrichment.groupby(["method", "retention"], sort=False):
        g = g.sort_values("enrichment_mean", ascending=False)
        top = g.iloc[0]
        k_rows = g[g["module"] == FOCUS_MODULE]
        k = k_rows.iloc[0] if not k_rows.empty else None
        k_txt = share = k_effective = "n/a"
        if k is not None:
            k_interval = format_interval(k.enrichment_mean, k.ci_low, k.ci_high, 2)
            k_txt = f"{k_interval}, p {format_p(k.p_holm)}"
            share = f"{k.effective_fraction:.2f}"
            k_effective = format_interval(
                k.effective_enrichment_mean, k.effective_ci_low, k.effective_ci_high, 2
            )
        f = focus[(focus["method"] == method) & np.isclose(focus["retention"], r)]
        verdict = "n/a"
        if not f.empty:
            f = f.iloc[0]
            if f.highest != FOCUS_MODULE:
                verdict = f"no ({f.highest} highest)"
            elif f.p_holm < ALPHA:
                verdict = f"yes (above {f.runner_up}, Holm p {format_p(f.p_holm)})"
            else:
                verdict = f"not shown (highest; vs {f.runner_up} Holm p {format_p(f.p_holm)})"
        if bool(g["near_chance"].iloc[0]):
            verdict += "; pruned model near chance: not evidence of use"
        rows.append(
            [
                method,
                format_retention(r),
                f"{top.module} {top.enrichment_mean:.2f}",
                k_txt,
                share,
                k_effective,
                verdict,
            ]
        )
    lines += md_table(
        [
            "method",
            "ratio",
            "most enriched",
            f"{FOCUS_MODULE} enrichment",
            f"{FOCUS_MODULE} effective share",
            f"{FOCUS_MODULE} effective enrichment",
            f"{FOCUS_MODULE} most enriched?",
        ],
        rows,
    )
    lines += [
        f"'{FOCUS_MODULE} most enriched?': yes only when {FOCUS_MODULE} has the highest mean and "
        "a paired t-test over seeds of its enrichment minus the runner-up's is significant "
        "(Holm over methods x ratios). 'Near chance': the pruned model keeps less than "
        f"{NEAR_CHANCE:.0%} of the full model's gain over chance; where its units sit is then "
        "no evidence that the model uses them.",
        "",
        "Note: scaling a layer's q_proj or k_proj output by alpha scales the attention logits by "
        "alpha either way, so IG's q_proj and k_proj totals of one layer are equal for any "
        "quadrature rule; a q-vs-k difference in IG lives only in how that total is spread over "
        "units.",
        "",
    ]
    return lines


def _effective_lines(summary: pd.DataFrame) -> list[str]:
    """The share of all kept units that can affect the output, per selection and ratio."""
    glob = summary[(summary["scope"] == GLOBAL) & summary["selection"].isin(["scored", "random"])]
    glob = glob.dropna(subset=["effective_fraction"])
    if glob.empty:
        return []
    ratios = sorted(glob["retention"].unique(), reverse=True)
    rows = []
    for method in method_order(glob["method"]):
        sub = glob[glob["method"] == method]
        cells = []
        for r in ratios:
            match = sub[np.isclose(sub["retention"], r)]
            cells.append(f"{match['effective_fraction'].iloc[0]:.2f}" if len(match) else "–")
        rows.append([method, *cells])
    return [
        "Share of all kept units that can affect the output (mean over seeds; random: over "
        "its draws too):",
        "",
        *md_table(["selection", *(format_retention(r) for r in ratios)], rows),
    ]


def summary_markdown(
    summary: pd.DataFrame,
    accuracy: pd.DataFrame,
    tests: pd.DataFrame,
    enrichment: pd.DataFrame,
    focus: pd.DataFrame,
    *,
    chance: float,
    n_draws: dict,
    granularity: str = "unit",
) -> str:
    """The page a person reads first."""
    seeds = sorted(accuracy["seed"].unique())
    lines = [
        "# Pruning summary",
        "",
        f"Seeds: {len(seeds)} ({', '.join(str(s) for s in seeds)}); each seed is an independent "
        "replicate (split, initialisation, training, scoring subset, random draws).",
        "",
    ]
    if summary["metric"].iloc[0] == "balanced_accuracy":
        lines += [
            "Headline metric: balanced accuracy (mean per-class recall), because the test "
            "classes are imbalanced (largest class more than 1.5x the smallest, or a class "
            "missing); plain accuracy and macro-F1 are in results/accuracy.tsv.",
            "",
        ]
    if granularity == "weight":
        lines += [
            "Granularity: per weight. Every weight of a scored Linear module was scored, kept or "
            "zeroed (biases kept); a kept 'unit' below is one weight.",
            "",
        ]
    lines += _model_lines(summary, accuracy, chance)
    lines += _accuracy_lines(summary, tests, n_draws)
    lines += _module_lines(summary, tests[tests["scope"] != GLOBAL] if len(tests) else tests)
    lines += _enrichment_lines(enrichment, focus, granularity)
    lines += _effective_lines(summary)
    return "\n".join(lines)


def write_outputs(
    finetune_paths: Sequence[PathLike],
    result_paths: Sequence[PathLike],
    kept_paths: Sequence[PathLike],
    baseline_paths: Sequence[PathLike],
    outputs: dict[str, PathLike],
) -> None:
    """Build every table and the markdown page; write each atomically. `outputs` keys:
    accuracy, summary, tests, enrichment, density, markdown."""
    metrics = [read_json(p) for p in finetune_paths]
    seeds = [int(m["seed"]) for m in metrics]
    results = pd.concat([pd.read_csv(p, sep="\t") for p in result_paths], ignore_index=True)
    kept = pd.concat([pd.read_csv(p, sep="\t") for p in kept_paths], ignore_index=True)
    baselines = [read_json(p) for p in baseline_paths]
    granularities = set(results.pop("granularity")) if "granularity" in results else {"unit"}
    if len(granularities) > 1:
        raise ValueError(f"evaluations mix granularities {sorted(granularities)}")
    metric = headline_metric(baselines)
    accuracy = accuracy_table(results, baselines, seeds, metric)
    summary = summary_table(accuracy)
    tests = tests_table(accuracy)
    chance = max(
        float(np.mean([m["chance"] for m in metrics])),
        float(np.mean([b["majority"][metric] for b in baselines])),
    )
    enrichment = enrichment_table(kept, summary, chance)
    focus = focus_tests(_pooled(kept)) if not kept.empty else pd.DataFrame()
    draws = results.groupby(["seed", "selection", "method", "scope", "retention"]).size()
    n_draws = {
        name: int(draws.xs(name, level="selection").max())
        for name in ("random", "matched")
        if name in draws.index.get_level_values("selection")
    }
    text = summary_markdown(
        summary,
        accuracy,
        tests,
        enrichment,
        focus,
        chance=chance,
        n_draws=n_draws,
        granularity=granularities.pop(),
    )
    write_tsv(accuracy, outputs["accuracy"])
    write_tsv(summary, outputs["summary"])
    write_tsv(tests, outputs["tests"])
    write_tsv(enrichment, outputs["enrichment"])
    write_tsv(density_table(kept), outputs["density"])
    with atomic_path(outputs["markdown"]) as tmp:
        tmp.write_text(text + "\n")


def aggregate(input, output, settings: NoSettings, wildcards) -> None:
    """The aggregate step: tables with intervals and tests, and the summary page, over seeds."""
    write_outputs(
        list(input.finetune),
        list(input.results),
        list(input.kept),
        list(input.baselines),
        {key: output[key] for key in OUTPUT_KEYS},
    )
