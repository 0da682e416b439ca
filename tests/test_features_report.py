"""Neurons vs SAE features over seeds: coverage counts and tests, best F1, the causal table."""

import numpy as np
import pandas as pd
import pytest

from kneurons.reporting.features import (
    best_f1_table,
    causal_table,
    coverage_table,
    plot_coverage,
    seed_coverage,
    summary_markdown,
)
from kneurons.reporting.features import quality_table as quality_over_seeds


def concept_rows(seed, kind, layer, f1s, group="true"):
    return [
        {
            "seed": seed,
            "kind": kind,
            "layer": layer,
            "concept": f"m{i}/{group}",
            "group": group,
            "f1": f1,
            "covered": bool(f1 > 0.5) if not np.isnan(f1) else False,
        }
        for i, f1 in enumerate(f1s)
    ]


def planted_concepts(n_seeds=5):
    """SAE features cover 3 of 4 motif concepts in layer 1, neurons 1; layer 0: both 0 or 1."""
    rows = []
    rng = np.random.default_rng(0)
    for seed in range(n_seeds):
        jitter = rng.uniform(-0.05, 0.05, 4)
        rows += concept_rows(seed, "sae", 1, [0.9, 0.8, 0.7, 0.2] + jitter)
        rows += concept_rows(seed, "neuron", 1, [0.9, 0.3, 0.2, 0.1] + jitter)
        rows += concept_rows(seed, "residual", 1, [0.4, 0.3, 0.2, 0.1] + jitter)
        rows += concept_rows(seed, "sae", 0, [0.2, 0.6 if seed % 2 else 0.4, 0.1, np.nan])
        rows += concept_rows(seed, "neuron", 0, [0.6 if seed % 2 == 0 else 0.4, 0.3, 0.1, np.nan])
        rows += concept_rows(seed, "residual", 0, [0.1, 0.1, 0.1, np.nan])
    return pd.DataFrame(rows)


def test_seed_coverage_counts_covered_concepts_per_layer_and_any_layer():
    per_seed = seed_coverage(planted_concepts())
    one = per_seed[(per_seed["seed"] == 0) & (per_seed["kind"] == "sae")].set_index("layer")
    assert one.loc["1", "covered"] == 3 and one.loc["1", "n_concepts"] == 4
    assert one.loc["0", "covered"] == 0 and one.loc["0", "n_concepts"] == 3  # NaN F1 not scored
    assert one.loc["any", "covered"] == 3  # layer 0 adds nothing on seed 0
    odd = per_seed[(per_seed["seed"] == 1) & (per_seed["kind"] == "sae")].set_index("layer")
    assert odd.loc["any", "covered"] == 3  # m1 covered in both layers counts once


def test_coverage_table_tests_features_against_neurons_with_holm():
    table = coverage_table(planted_concepts()).set_index("layer")
    assert table.loc["1", "sae_mean"] == 3 and table.loc["1", "neuron_mean"] == 1
    assert table.loc["1", "difference_mean"] == 2
    assert table.loc["1", "features_cover_more"]  # all-equal differences: p = 0
    # layer 0 alternates 0/1 against 1/0: no difference can be shown
    assert not table.loc["0", "features_cover_more"] and not table.loc["0", "neurons_cover_more"]
    assert (table["p_holm"] >= table["p"]).all()


def test_best_f1_is_the_best_layer_per_seed_averaged_over_seeds():
    best = best_f1_table(planted_concepts()).set_index(["concept", "kind"])
    # m1 for SAE: layer 1 gives 0.8 +- jitter, layer 0 0.4/0.6: the max is layer 1's
    assert best.loc[("m1/true", "sae"), "f1_mean"] == pytest.approx(0.8, abs=0.05)
    assert best.loc[("m1/true", "sae"), "covered_share"] == 1.0
    assert best.loc[("m3/true", "residual"), "covered_share"] == 0.0


def causal_effects(n_seeds=3, n_random=4):
    """Zeroing class c's motif features lowers p(true) on class c by 0.3; random sets by 0.01;
    knowledge neurons by 0.1 (all other cells 0)."""
    rows = []
    for seed in range(n_seeds):
        for c in (1, 2):
            sets = [("features", 0, -0.3), ("neurons", 0, -0.1)]
            sets += [("random_features", d, -0.01 * (d + 1) / n_random) for d in range(n_random)]
            for set_name, draw, own in sets:
                for sc in (1, 2):
                    effect = own + 0.001 * seed if sc == c else 0.0
                    for quantity in ("p_true", "accuracy"):
                        rows.append(("suppress", set_name, draw, quantity, c, sc, effect, 2, seed))
    columns = ["intervention", "set", "draw", "quantity", "neuron_class", "sequence_class"]
    return pd.DataFrame(rows, columns=[*columns, "effect", "n_units", "seed"])


def test_causal_table_compares_features_with_random_sets_and_with_neurons():
    table = causal_table(causal_effects())
    random = table[(table["comparison"] == "random") & (table["quantity"] == "p_true")]
    assert len(random) == 2
    assert random["specificity_mean"].to_numpy() == pytest.approx([-0.299, -0.299])
    assert (random["n_draws"] == 4).all()
    # the features beat every one of 4 random sets in each of 3 seeds: p = 1/5 per seed
    assert random["per_seed_p"].iloc[0] == "0:0.2 1:0.2 2:0.2"
    assert random["specific"].all()
    neurons = table[(table["comparison"] == "neurons") & (table["quantity"] == "p_true")]
    assert neurons["matched_specificity_mean"].to_numpy() == pytest.approx([-0.099, -0.099])
    assert neurons["model_p"].isna().all()  # one neuron set per class: no permutation null


def test_the_page_and_figure_are_written(tmp_path):
    coverage = coverage_table(planted_concepts())
    quality = quality_over_seeds(
        pd.DataFrame(
            {
                "seed": [0, 1, 0, 1],
                "layer": [0, 0, 1, 1],
                "n_features": 32,
                "k": 2,
                "variance_explained": [0.9, 0.92, 0.8, 0.82],
                "l0": 2.0,
                "dead_fraction": [0.0, 0.1, 0.0, 0.0],
                "accuracy_full": 0.9,
                "accuracy_spliced": [0.8, 0.85, 0.7, 0.75],
            }
        )
    )
    text = summary_markdown(
        coverage, best_f1_table(planted_concepts()), quality, causal_table(causal_effects())
    )
    assert "| 1 | true motifs (4) | 0.0 [0.0, 0.0] | 1.0 [1.0, 1.0] | 3.0 [3.0, 3.0] |" in text
    assert "features more" in text and "motif features vs knowledge neurons" in text
    assert "| features more specific |" in text
    assert "across models: specific; in each model: not shown" in text
    plot_coverage(coverage, tmp_path / "c.png", tmp_path / "c.pdf")
    assert (tmp_path / "c.png").stat().st_size > 1000
