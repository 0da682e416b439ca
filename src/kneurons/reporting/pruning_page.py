"""The pruning experiment's summary page (markdown): what each table says, with its
intervals and tests."""

from __future__ import annotations

import numpy as np
import pandas as pd

from kneurons.analysis import stats
from kneurons.model.units import GLOBAL
from kneurons.reporting.format import (
    ALPHA,
    FULL_METHOD,
    RANDOM,
    format_interval,
    format_p,
    format_retention,
    format_seed_ps,
    md_table,
    method_order,
    module_order,
)
from kneurons.reporting.pruning import (
    ACROSS_MODELS,
    FOCUS_MODULE,
    IN_EACH_MODEL,
    NEAR_CHANCE,
    metric_label,
    rows_of,
)


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
    lines += md_table(["model", f"{metric_label(summary)}, mean [95% CI over seeds]"], rows)
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
        f"## {metric_label(summary).capitalize()} of the pruned models",
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
        "Two questions, two tests, Holm-corrected over methods x ratios within each question "
        f"and comparison; significant: Holm p < {ALPHA}.",
        "",
        "- *Across fine-tuned models*: per seed, the method's "
        f"{metric_label(summary)} minus the mean of that seed's draws; mean [95% t-interval], "
        "two-sided paired t-test over seeds (the seed is the replicate; with 5 seeds a "
        "sign-flip or Wilcoxon test cannot go below p = 0.0625).",
        "- *In each fine-tuned model*: per seed, the permutation p of the method's value among "
        "that seed's random draws, (1 + draws at least as high) / (1 + draws), one-sided; the "
        "smallest p one seed can give is 1 / (1 + draws). Combined over seeds by Fisher's "
        "method (the null: in no model does the method beat its random draws).",
        "",
    ]
    across = _question(tests, ACROSS_MODELS)
    each = _question(tests, IN_EACH_MODEL)
    rows = []
    for t in across[across["scope"] == GLOBAL].itertuples(index=False):
        model_test = _matching(each, t)
        seed_ps = "n/a"
        if model_test is not None:
            seed_ps = format_seed_ps(model_test.per_seed_p, model_test.n_draws)
        rows.append(
            [
                t.comparison,
                format_retention(t.retention),
                format_interval(t.mean_difference, t.ci_low, t.ci_high),
                _verdict(t),
                seed_ps,
                _verdict(model_test),
            ]
        )
    header = [
        "comparison",
        "ratio",
        "difference",
        "across models: Holm p",
        "in each model: p per seed (draws)",
        "in each model: Holm p",
    ]
    lines += md_table(header, rows)
    return lines + _floor_lines(each[each["scope"] == GLOBAL] if not each.empty else each)


def _floor_lines(each: pd.DataFrame) -> list[str]:
    """What the in-each-model test can reach at best with these draws and seeds: the Fisher
    p of every seed at its floor, and that times the rows of its Holm family."""
    lines = []
    for family, rows in each.groupby("family", sort=False):
        n_draws, n_seeds = int(rows["n_draws"].min()), int(rows["n_seeds"].max())
        best = stats.fisher_floor(n_draws, n_seeds)
        holm_best = stats.fisher_floor(n_draws, n_seeds, len(rows))
        verdict = "can" if holm_best < ALPHA else "cannot"
        lines.append(
            f"- In each model, {family}: {n_draws} draws per seed and {n_seeds} seed(s) give at "
            f"best p {_equals(best)}, {_equals(holm_best)} after Holm over {len(rows)} rows, "
            f"so this test {verdict} reach Holm p < {ALPHA}."
        )
    return [*lines, ""] if lines else []


def _equals(p: float) -> str:
    """'= 0.097' or '<1e-4' (format_p's own '<')."""
    text = format_p(p)
    return text if text.startswith("<") else f"= {text}"


def _question(tests: pd.DataFrame, question: str) -> pd.DataFrame:
    if tests.empty or "question" not in tests:
        return tests
    return tests[tests["question"] == question]


def _matching(tests: pd.DataFrame, row) -> object | None:
    """The row of `tests` for the same comparison, scope and ratio as `row`, or None."""
    if tests.empty:
        return None
    match = tests[
        (tests["comparison"] == row.comparison)
        & (tests["scope"] == row.scope)
        & np.isclose(tests["retention"], row.retention)
    ]
    return None if match.empty else next(match.itertuples(index=False))


def _verdict(test) -> str:
    """Holm p, with 'yes (above)' / 'yes (below)' where significant."""
    if test is None:
        return "n/a"
    if not test.significant:
        return format_p(test.p_holm)
    direction = "above" if test.mean_difference > 0 else "below"
    return f"{format_p(test.p_holm)}, yes ({direction})"


def _module_lines(summary: pd.DataFrame, tests: pd.DataFrame) -> list[str]:
    within = summary[summary["scope"] != GLOBAL]
    if within.empty:
        return []
    lines = [
        "## Within-module pruning",
        "",
        "Each module type alone pruned to the ratio (top units by each method, or at random), "
        f"every other module intact; mean {metric_label(summary)} [95% t-interval over seeds]. "
        "The method - "
        "random difference and its Holm p (over modules x ratios x methods) follow each cell: "
        "across fine-tuned models (paired t) / in each fine-tuned model (permutation, Fisher).",
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
                ps = []
                for question in (ACROSS_MODELS, IN_EACH_MODEL):
                    t = _question(tests, question)
                    t = t[
                        (t["method"] == method)
                        & (t["scope"] == module)
                        & np.isclose(t["retention"], r)
                    ]
                    if not t.empty:
                        t = t.iloc[0]
                        ps.append(f"{format_p(t.p_holm)}{' *' if t.significant else ''}")
                        difference = t.mean_difference
                if ps:
                    cell += f"; {difference:+.3f}, p {' / '.join(ps)}"
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
