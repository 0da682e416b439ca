"""Tests for kneurons.reporting.pruning and kneurons.reporting.plots on planted per-seed
evaluation tables."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from scipy import stats as sps

from kneurons.analysis.evaluation import KEPT_COLUMNS, RESULT_COLUMNS
from kneurons.reporting import aggregate, plots, pruning
from kneurons.reporting.format import PRUNING_FIGURES

SEEDS = (0, 1, 2, 3, 4)
RATIOS = (0.5, 0.1)
MODULES = ("q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2")
N_LAYERS, UNITS = 2, 20
N_TOTAL = N_LAYERS * len(MODULES) * UNITS
RANDOM_DRAWS, CONTROL_DRAWS = 4, 2
# planted: "good" beats random by 0.2 at every ratio, "same" equals random up to noise
OFFSET = {"good": 0.2, "same": 0.0}


def _row(seed, selection, method, scope, r, draw, accuracy, n_kept=np.nan):
    return {
        "seed": seed,
        "selection": selection,
        "method": method,
        "scope": scope,
        "retention": r,
        "draw": draw,
        "n_total": N_TOTAL,
        "n_kept": n_kept,
        "n_effective": n_kept * 0.8 if n_kept == n_kept else np.nan,
        "accuracy": accuracy,
        "ci_low": accuracy - 0.05,
        "ci_high": accuracy + 0.05,
        "macro_f1": accuracy,
        "balanced_accuracy": accuracy,
        "balanced_ci_low": accuracy - 0.05,
        "balanced_ci_high": accuracy + 0.05,
    }


def _kept(seed, method, r, rng):
    """Kept counts per cell: "good" puts twice its share in k_proj, "same" is proportional."""
    n_kept = int(round(r * N_TOTAL))
    weights = np.array([2.0 if (m == "k_proj" and method == "good") else 1.0 for m in MODULES])
    rows = []
    per_module = rng.multivariate_hypergeometric(np.full(len(MODULES), N_LAYERS * UNITS), n_kept)
    if method == "good":  # move half of every other module's kept units to k_proj
        k = MODULES.index("k_proj")
        moved = 0
        for i in range(len(MODULES)):
            if i != k:
                take = per_module[i] // 2
                per_module[i] -= take
                moved += take
        per_module[k] = min(per_module[k] + moved, N_LAYERS * UNITS)
    del weights
    for i, module in enumerate(MODULES):
        first = per_module[i] // 2
        for layer, count in enumerate((first, per_module[i] - first)):
            rows.append(
                {
                    "seed": seed,
                    "method": method,
                    "retention": r,
                    "layer": layer,
                    "module": module,
                    "n_neurons": UNITS,
                    "n_kept": int(count),
                    "n_effective": int(count),
                }
            )
    return rows


def _baseline(accuracy: float) -> dict:
    return {
        "accuracy": accuracy,
        "ci_low": accuracy - 0.05,
        "ci_high": accuracy + 0.05,
        "balanced_accuracy": accuracy,
        "balanced_ci_low": accuracy - 0.05,
        "balanced_ci_high": accuracy + 0.05,
    }


def _write_inputs(tmp_path: Path, full_accuracy=0.9, composition=0.3, class_counts=None):
    rng = np.random.default_rng(7)
    finetune, results, kept, baselines = [], [], [], []
    for seed in SEEDS:
        rows, kept_rows = [_row(seed, "full", "full", "global", 1.0, 0, full_accuracy)], []
        for r in RATIOS:
            random_level = 0.3 + 0.4 * r
            for draw in range(RANDOM_DRAWS):
                noise = 0.01 * rng.standard_normal()
                rows.append(_row(seed, "random", "random", "global", r, draw, random_level + noise))
            for method, offset in OFFSET.items():
                noise = 0.01 * rng.standard_normal()
                n_kept = int(round(r * N_TOTAL))
                rows.append(
                    _row(
                        seed,
                        "scored",
                        method,
                        "global",
                        r,
                        0,
                        random_level + offset + noise,
                        n_kept,
                    )
                )
                for draw in range(CONTROL_DRAWS):
                    noise = 0.01 * rng.standard_normal()
                    rows.append(
                        _row(seed, "matched", method, "global", r, draw, random_level + noise)
                    )
                kept_rows += _kept(seed, method, r, rng)
        for module in ("q_proj", "k_proj"):
            for method, offset in OFFSET.items():
                rows.append(_row(seed, "scored", method, module, 0.1, 0, 0.8 + offset / 2))
            for draw in range(CONTROL_DRAWS):
                rows.append(_row(seed, "random", "random", module, 0.1, draw, 0.8))
        paths = {}
        for name, frame, columns in (
            ("results", rows, RESULT_COLUMNS),
            ("kept", kept_rows, KEPT_COLUMNS),
        ):
            path = tmp_path / f"seed{seed}" / f"{name}.tsv"
            path.parent.mkdir(parents=True, exist_ok=True)
            pd.DataFrame(frame, columns=columns).assign(granularity="unit").to_csv(
                path, sep="\t", index=False
            ) if name == "results" else pd.DataFrame(frame, columns=columns).to_csv(
                path, sep="\t", index=False
            )
            paths[name] = path
        results.append(paths["results"])
        kept.append(paths["kept"])
        metrics = tmp_path / f"seed{seed}" / "metrics.json"
        metrics.write_text(json.dumps({"seed": seed, "chance": 1 / 6, "classes": [1, 2, 3]}))
        finetune.append(metrics)
        base = tmp_path / f"seed{seed}" / "baselines.json"
        base.write_text(
            json.dumps(
                {
                    "majority": _baseline(0.2),
                    "composition": _baseline(composition),
                    "class_counts": class_counts or {"1": 10, "2": 10, "3": 10},
                    "n_classes": 3,
                }
            )
        )
        baselines.append(base)
    return finetune, results, kept, baselines


def _outputs(tmp_path: Path) -> dict:
    return {key: tmp_path / "out" / f"{key}.tsv" for key in aggregate.OUTPUT_KEYS} | {
        "markdown": tmp_path / "out" / "summary.md"
    }


@pytest.fixture()
def written(tmp_path):
    inputs = _write_inputs(tmp_path)
    outputs = _outputs(tmp_path)
    aggregate.write_outputs(*inputs, outputs)
    tables = {k: pd.read_csv(v, sep="\t") for k, v in outputs.items() if k != "markdown"}
    return tables, outputs["markdown"].read_text(), inputs, outputs


def test_random_rows_are_the_mean_of_their_draws(written):
    tables, _, inputs, _ = written
    accuracy = tables["accuracy"]
    raw = pd.read_csv(inputs[1][0], sep="\t")
    draws = raw[
        (raw["selection"] == "random") & (raw["scope"] == "global") & (raw["retention"] == 0.5)
    ]
    row = accuracy[
        (accuracy["seed"] == 0)
        & (accuracy["selection"] == "random")
        & (accuracy["scope"] == "global")
        & (accuracy["retention"] == 0.5)
    ].iloc[0]
    assert row["accuracy"] == pytest.approx(draws["accuracy"].mean())
    assert row["n_draws"] == RANDOM_DRAWS
    assert np.isnan(row["ci_low"])  # a mean of draws has no bootstrap interval of its own
    assert set(accuracy.loc[accuracy["selection"] == "baseline", "method"]) == {
        "majority",
        "composition",
    }


def test_summary_interval_is_the_t_interval_over_seeds(written):
    tables, *_ = written
    accuracy, summary = tables["accuracy"], tables["summary"]
    per_seed = accuracy[(accuracy["method"] == "good") & (accuracy["scope"] == "global")]
    per_seed = per_seed[(per_seed["selection"] == "scored") & (per_seed["retention"] == 0.1)]
    values = per_seed["value"].to_numpy()
    half = sps.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values))
    row = summary[
        (summary["selection"] == "scored")
        & (summary["method"] == "good")
        & (summary["scope"] == "global")
        & (summary["retention"] == 0.1)
    ].iloc[0]
    assert row["n_seeds"] == len(SEEDS)
    assert row["ci_low"] == pytest.approx(values.mean() - half)
    assert row["ci_high"] == pytest.approx(values.mean() + half)


def test_paired_tests_find_the_planted_difference_only(written):
    tables, *_ = written
    across = tables["tests"][tables["tests"]["question"] == pruning.ACROSS_MODELS]
    tests = across.set_index(["comparison", "scope", "retention"])
    good = tests.loc[("good - random", "global", 0.1)]
    assert good["mean_difference"] == pytest.approx(0.2, abs=0.03)
    assert good["significant"] and good["p_holm"] < 0.01
    assert not tests.loc[("same - random", "global", 0.1)]["significant"]
    assert not tests.loc[("good - matched random", "global", 0.5)]["mean_difference"] < 0.1
    # within-module: good beats random in its module, same does not
    assert tests.loc[("good - random within module", "k_proj", 0.1)]["mean_difference"] > 0
    # Holm within each family: adjusted >= raw, and the family of 'random' has 4 tests
    assert (tables["tests"]["p_holm"] >= tables["tests"]["p"] - 1e-15).all()
    assert (across["family"] == "random").sum() == len(OFFSET) * len(RATIOS)


def test_per_model_tests_are_permutation_ps_combined_by_fisher(written):
    tables, md, inputs, _ = written
    tests = tables["tests"]
    each = tests[tests["question"] == pruning.IN_EACH_MODEL]
    each = each.set_index(["comparison", "scope", "retention"])
    good = each.loc[("good - random", "global", 0.1)]
    # good beats all 4 draws of every seed: p = 1 / 5 per seed; Fisher: chi2(10) of -2 sum ln p
    assert good["per_seed_p"] == " ".join(f"{s}:0.2" for s in SEEDS)
    assert good["n_draws"] == RANDOM_DRAWS and good["n_seeds"] == len(SEEDS)
    assert good["p"] == pytest.approx(sps.chi2.sf(-2 * len(SEEDS) * np.log(0.2), 2 * len(SEEDS)))
    # so 4 draws per model cannot make it significant, however large the effect (p = 0.097)
    assert not good["significant"]
    # the hand count for one seed of "same": draws at least as high as the method's value
    raw = pd.read_csv(inputs[1][2], sep="\t")
    at = (raw["scope"] == "global") & (raw["retention"] == 0.5)
    observed = raw[at & (raw["selection"] == "scored") & (raw["method"] == "same")]["accuracy"]
    draws = raw[at & (raw["selection"] == "random")]["accuracy"]
    expected = (1 + (draws >= observed.iloc[0]).sum()) / (1 + len(draws))
    same = each.loc[("same - random", "global", 0.5)]
    assert dict(v.split(":") for v in same["per_seed_p"].split())["2"] == f"{expected:.3g}"
    # matched draws are the method's own; within-module draws are the module's
    assert each.loc[("good - matched random", "global", 0.5)]["n_draws"] == CONTROL_DRAWS
    assert each.loc[("good - random within module", "k_proj", 0.1)]["n_draws"] == CONTROL_DRAWS
    # Holm within each question and family: 4 per-model tests against random
    assert (tests.loc[tests["question"] == pruning.IN_EACH_MODEL, "family"] == "random").sum() == 4
    assert "in each model: p per seed (draws)" in md and "0.2 (4)" in md
    # and the page says that these draws cannot give a significant per-model result
    assert "In each model, random: 4 draws per seed and 5 seed(s) give at best p = 0.097" in md
    assert "= 0.39 after Holm over 4 rows, so this test cannot reach" in md


def test_one_seed_gets_the_per_model_test_and_no_paired_test(tmp_path):
    inputs = [paths[:1] for paths in _write_inputs(tmp_path)]
    outputs = _outputs(tmp_path)
    aggregate.write_outputs(*inputs, outputs)
    tests = pd.read_csv(outputs["tests"], sep="\t")
    good = tests[(tests["comparison"] == "good - random") & (tests["retention"] == 0.1)]
    good = good.set_index("question")
    assert np.isnan(good.loc[pruning.ACROSS_MODELS, "p"])  # one seed: no t-test
    # one model, 4 draws, all below: p = 1 / 5 (Fisher of one p-value is that p-value)
    assert good.loc[pruning.IN_EACH_MODEL, "p"] == pytest.approx(0.2)
    assert good.loc[pruning.IN_EACH_MODEL, "per_seed_p"] == "0:0.2"
    md = outputs["markdown"].read_text()
    line = next(x for x in md.splitlines() if x.startswith("| good - random | 10% |"))
    assert "n/a" in line and "0.2 (4)" in line


def test_enrichment_has_exact_nulls_and_flags_k_proj(written):
    tables, md, *_ = written
    enrichment = tables["enrichment"].set_index(["method", "retention", "module"])
    k_good = enrichment.loc[("good", 0.1, "k_proj")]
    assert k_good["enrichment_mean"] > 1.5 and k_good["significant"]
    assert not enrichment.loc[("same", 0.1, "k_proj")]["significant"]
    assert k_good["effective_fraction"] == pytest.approx(1.0)
    # near chance: keeps < 25% of the full model's gain over chance (0.34 vs 0.2 and 0.9)
    assert enrichment.loc[("same", 0.1, "k_proj")]["near_chance"]
    assert not k_good["near_chance"]
    assert "yes (above" in md  # good: k_proj significantly above the runner-up


def test_markdown_says_significant_only_when_it_is(written):
    _, md, *_ = written
    lines = [line for line in md.splitlines() if line.startswith("| same - random |")]
    assert lines and not any("yes" in line for line in lines)
    lines = [line for line in md.splitlines() if line.startswith("| good - random |")]
    assert lines and all("yes (above)" in line for line in lines)
    assert "Warning" not in md


def test_warning_when_the_full_model_is_not_above_the_baselines(tmp_path):
    inputs = _write_inputs(tmp_path, full_accuracy=0.33, composition=0.31)
    outputs = _outputs(tmp_path)
    aggregate.write_outputs(*inputs, outputs)
    md = outputs["markdown"].read_text()
    first_sections = md.split("## Test accuracy")[0]
    assert "Warning: the full model is not clearly better than the composition baseline" in (
        first_sections
    )


def test_plots_are_written(written, tmp_path):
    _, _, inputs, outputs = written

    class Tables:
        accuracy = outputs["accuracy"]
        summary = outputs["summary"]
        enrichment = outputs["enrichment"]
        density = outputs["density"]
        finetune = inputs[0]

    paths = plots.make_all_plots(Tables, tmp_path / "plots", {"dpi": 40})
    assert len(paths) == 2 * len(PRUNING_FIGURES)
    assert all(p.stat().st_size > 1000 for p in paths)


def test_imbalanced_classes_make_balanced_accuracy_the_headline(tmp_path):
    assert pruning.headline_metric([{"class_counts": {"1": 10, "2": 15}}]) == "accuracy"
    assert pruning.headline_metric([{"class_counts": {"1": 10, "2": 16}}]) == "balanced_accuracy"
    assert pruning.headline_metric([{"class_counts": {"1": 10}, "n_classes": 2}]) == (
        "balanced_accuracy"
    )
    inputs = _write_inputs(tmp_path, class_counts={"1": 30, "2": 10, "3": 10})
    outputs = _outputs(tmp_path)
    aggregate.write_outputs(*inputs, outputs)
    md = outputs["markdown"].read_text()
    assert "Headline metric: balanced accuracy" in md
    assert "## Balanced test accuracy of the pruned models" in md
    summary = pd.read_csv(outputs["summary"], sep="\t")
    assert set(summary["metric"]) == {"balanced_accuracy"}


def test_retention_axis_spaces_the_ratios_evenly():
    from matplotlib.figure import Figure

    ax = Figure().add_subplot()
    ratios = [1.0, 0.9, 0.75, 0.5, 0.25, 0.1, 0.01]
    plots._even_ratio_scale(ax, ratios)
    scale = ax.xaxis.get_transform()
    positions = scale.transform(np.array(sorted(ratios)))
    assert positions == pytest.approx(np.arange(len(ratios)))  # 1% at 0, ..., 100% at 6
    # between two ratios: log-interpolated; beyond the ends: continued, and invertible
    assert scale.transform(np.array([np.sqrt(0.01 * 0.1)]))[0] == pytest.approx(0.5)
    back = plots._shifted(ax, [1.0, 0.01], 0.45)
    assert scale.transform(back) == pytest.approx([6.45, 0.45])
    assert back[0] > 1.0 and 0.01 < back[1] < 0.1
