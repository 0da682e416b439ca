"""One seed's evaluation job: the selections it makes, the numbers it reports, and many pruned
models per forward pass giving the predictions of one at a time."""

from __future__ import annotations

import dataclasses

import numpy as np
import pandas as pd
import pytest
import torch

from kneurons.analysis import evaluation, selection
from kneurons.analysis.selection import select
from kneurons.attribution.engine import scores_frame
from kneurons.model import train
from kneurons.model.esm import linear
from kneurons.settings import SweepSettings

SETTINGS = SweepSettings(
    retention_ratios=(0.5, 0.1),
    random_draws=3,
    control_draws=2,
    module_ratios=(0.25,),
    normalize="none",
    bootstrap=200,
    batch_size=64,
    max_tokens=1 << 20,
    device="cpu",
    methods=("ig", "activation"),
)
MODULES = ("q_proj", "k_proj", "fc1")


def _scores(model, seed: int) -> pd.DataFrame:
    generator = torch.Generator().manual_seed(seed)
    return scores_frame(
        {
            (layer, module): torch.rand(
                linear(model.esm, layer, module).out_features, generator=generator
            )
            for layer in range(model.num_layers)
            for module in MODULES
        }
    )


@pytest.fixture
def scored(tiny_classifier):
    return {"ig": _scores(tiny_classifier, 1), "activation": _scores(tiny_classifier, 2)}


@pytest.fixture
def test_table():
    rng = np.random.default_rng(0)
    residues = list("ACDEFGHIKLMNPQRSTVWY")
    lengths = rng.integers(12, 40, 30)
    return pd.DataFrame(
        {
            "sequence": ["M" + "".join(rng.choice(residues, n)) for n in lengths],
            "ec_class": [1, 2, 3, 4, 5, 6] * 5,
        }
    )


def _labels(plan, **where) -> pd.DataFrame:
    mask = np.ones(len(plan.labels), bool)
    for key, value in where.items():
        mask &= (plan.labels[key] == value).to_numpy()
    return plan.labels[mask]


def test_matched_random_keeps_exactly_the_per_cell_counts(scored):
    units = scored["ig"]
    chosen = select(units, 0.1)["kept"].to_numpy()
    cell, _ = selection.cell_ids(units)
    rng = np.random.default_rng(0)
    draws = [selection.matched_random(chosen, cell, rng.random(len(units))) for _ in range(5)]
    for draw in draws:
        assert (np.bincount(cell, weights=draw) == np.bincount(cell, weights=chosen)).all()
    assert not all((draw == chosen).all() for draw in draws)  # other units
    # ties in the random values go by row order: all-equal values keep each cell's first rows
    first = selection.matched_random(chosen, cell, np.zeros(len(units)))
    for c in np.unique(cell):
        rows = np.flatnonzero(cell == c)
        assert first[rows].tolist() == sorted(first[rows].tolist(), reverse=True)


def test_selections_cover_every_control_once(scored):
    plan = evaluation.selections(scored, SETTINGS, seed=0)
    kinds = plan.labels.groupby(["selection", "method", "scope"]).size()
    assert kinds[("full", "full", "global")] == 1
    assert kinds[("scored", "ig", "global")] == 2  # ratios
    assert kinds[("matched", "ig", "global")] == 2 * 2  # ratios x control draws
    assert kinds[("random", "random", "global")] == 3 * 2  # random draws x ratios
    assert kinds[("scored", "activation", "k_proj")] == 1  # module ratios
    assert kinds[("random", "random", "fc1")] == 2  # control draws
    # full + per method (2 ratios x (1 + 2 matched) + 3 modules) + 3 x 2 random + 3 x 2 module
    assert len(plan.labels) == plan.kept.shape[0] == 1 + 2 * (2 * 3 + 3) + 6 + 6
    # within-module selections touch only that module and keep its top 25%
    m = _labels(plan, scope="k_proj", selection="scored").index[0]
    k_proj = plan.scopes["k_proj"]
    assert plan.kept[m, np.setdiff1d(np.arange(len(plan.units)), k_proj)].all()
    assert plan.kept[m, k_proj].sum() == round(0.25 * len(k_proj))
    # a random draw is nested over ratios, like a method's ranking
    first = _labels(plan, selection="random", scope="global", draw=0).index
    assert (plan.kept[first[1]] <= plan.kept[first[0]]).all()
    # the same seed gives the same draws; another seed other draws
    assert (evaluation.selections(scored, SETTINGS, seed=0).kept == plan.kept).all()
    assert (
        evaluation.selections(scored, SETTINGS, seed=1).kept[first[0]] != plan.kept[first[0]]
    ).any()


def _reference_selections(scores, settings, seed):
    """The selections as the evaluation built them one pandas table per model (before many
    models per pass): the oracle for the array version. Yields (label, kept over all rows)."""
    units = next(iter(scores.values()))[["layer", "module", "unit"]]
    n = len(units)

    def matched(chosen, rng):
        cells = [chosen["layer"], chosen["module"]]
        quota = chosen["kept"].groupby(cells).transform("sum").to_numpy()
        rank = pd.Series(rng.random(n), index=chosen.index).groupby(cells).rank(method="first")
        return rank.to_numpy() <= quota

    def within(rows, chosen):
        kept = np.ones(n, bool)
        kept[rows] = chosen["kept"].to_numpy()
        return kept

    yield ("full", "full", "global", 1.0, 0), np.ones(n, bool)
    stable, ratio = evaluation._stable_id, evaluation._ratio_id
    for method, table in scores.items():
        for r in settings.retention_ratios:
            chosen = select(table, r, settings.normalize)
            yield ("scored", method, "global", r, 0), chosen["kept"].to_numpy()
            for draw in range(settings.control_draws):
                rng = np.random.default_rng([seed, 1, stable(method), ratio(r), draw])
                yield ("matched", method, "global", r, draw), matched(chosen, rng)
    for draw in range(settings.random_draws):
        ranking = units.assign(score=np.random.default_rng([seed, 2, draw]).random(n))
        for r in settings.retention_ratios:
            yield ("random", "random", "global", r, draw), select(ranking, r)["kept"].to_numpy()
    for module in dict.fromkeys(units["module"]):
        rows = np.flatnonzero(units["module"] == module)
        for r in settings.module_ratios:
            for method, table in scores.items():
                chosen = select(table.iloc[rows], r, settings.normalize)
                yield ("scored", method, module, r, 0), within(rows, chosen)
            for draw in range(settings.control_draws):
                rng = np.random.default_rng([seed, 3, stable(module), ratio(r), draw])
                ranking = units.iloc[rows].assign(score=rng.random(len(rows)))
                yield ("random", "random", module, r, draw), within(rows, select(ranking, r))


@pytest.mark.parametrize("normalize", ["none", "mean"])
def test_array_selections_equal_the_per_model_tables(scored, normalize):
    # ties within and across modules: the tie-break decides which units are kept
    tied = {m: t.assign(score=(t["score"] * 4).round() / 4) for m, t in scored.items()}
    settings = dataclasses.replace(SETTINGS, normalize=normalize)
    plan = evaluation.selections(tied, settings, seed=3)
    reference = list(_reference_selections(tied, settings, seed=3))
    assert [label for label, _ in reference] == list(plan.labels.itertuples(index=False, name=None))
    for m, (label, kept) in enumerate(reference):
        assert (plan.kept[m] == kept).all(), label


def test_many_models_per_pass_give_the_predictions_of_one_at_a_time(
    tiny_classifier, scored, test_table
):
    model = tiny_classifier.float()
    plan = evaluation.selections(scored, SETTINGS, seed=0)
    masks = selection.stacked_masks(plan.units, plan.kept)
    sequences = list(test_table["sequence"])
    batches = train.token_batches(sequences, batch_size=8)
    n_models = len(plan.labels)
    one_at_a_time = torch.stack(
        [
            train.predict_proba(model, sequences, keep={k: v[m] for k, v in masks.items()})
            for m in range(n_models)
        ]
    )
    for max_tokens in (1, 3 * 8 * 41, 1 << 20):  # 1, 3 and all models per pass
        many = train.predict_proba_models(model, masks, n_models, batches, max_tokens=max_tokens)
        assert torch.equal(many.argmax(-1), one_at_a_time.argmax(-1))
        torch.testing.assert_close(many, one_at_a_time, rtol=0, atol=1e-6)
    assert train.models_per_pass(batches, 3 * 8 * 41, per_weight=False) == 3
    assert train.models_per_pass(batches, 1 << 20, per_weight=True) == 1
    # auto on CPU is one model per pass (sharing a pass gains nothing there); else as given
    assert train.token_budget(0, model) == 1
    assert train.token_budget(5000, model) == 5000


def test_evaluate_seed_reports_counts_and_intervals(tiny_classifier, scored, test_table):
    model = tiny_classifier.float()
    test = test_table
    classes = [1, 2, 3, 4, 5, 6]
    results, kept = evaluation.evaluate_seed(model, test, classes, scored, SETTINGS, seed=0)
    assert list(results.columns) == evaluation.RESULT_COLUMNS
    assert len(results) == len(evaluation.selections(scored, SETTINGS, seed=0).labels)
    full = results[results["selection"] == "full"].iloc[0]
    assert full["accuracy"] == pytest.approx(train.evaluate(model, test, classes)["accuracy"])
    assert ((results["accuracy"] * 30).round(9) % 1 == 0).all()  # counts over 30 sequences
    single = results[results["selection"].isin(["full", "scored"])]
    assert (single["ci_low"] <= single["accuracy"]).all()
    assert (single["accuracy"] <= single["ci_high"]).all()
    assert results.loc[~results.index.isin(single.index), "ci_low"].isna().all()
    glob = results[(results["scope"] == "global") & (results["selection"] != "full")]
    assert (glob["n_effective"] <= glob["n_kept"]).all()
    # kept cells of each method's global selections sum to the selection's count
    totals = kept.groupby(["method", "retention"])["n_kept"].sum()
    for (method, r), total in totals.items():
        row = results[
            (results["selection"] == "scored")
            & (results["method"] == method)
            & (results["scope"] == "global")
            & (results["retention"] == r)
        ]
        assert row["n_kept"].iloc[0] == total
    again, _ = evaluation.evaluate_seed(model, test, classes, scored, SETTINGS, seed=0)
    pd.testing.assert_frame_equal(results, again)  # deterministic on CPU
    # one model per pass: the same table
    alone = dataclasses.replace(SETTINGS, max_tokens=1)
    one, one_kept = evaluation.evaluate_seed(model, test, classes, scored, alone, seed=0)
    pd.testing.assert_frame_equal(results, one)
    pd.testing.assert_frame_equal(kept, one_kept)


def test_interval_and_effective_counts_match_the_per_model_functions(
    tiny_classifier, scored, test_table
):
    """The vectorised intervals and effective counts are those of each model on its own."""
    from kneurons.analysis import stats

    model = tiny_classifier.float()
    classes = [1, 2, 3, 4, 5, 6]
    results, kept = evaluation.evaluate_seed(model, test_table, classes, scored, SETTINGS, seed=0)
    plan = evaluation.selections(scored, SETTINGS, seed=0)
    masks = selection.stacked_masks(plan.units, plan.kept)
    y_true = test_table["ec_class"].to_numpy() - 1
    m = _labels(plan, selection="scored", method="ig", scope="global", retention=0.1).index[0]
    probs = train.predict_proba(
        model, list(test_table["sequence"]), keep={k: v[m] for k, v in masks.items()}
    )
    correct = (probs.argmax(-1).numpy() == y_true).astype(float)
    row = results.iloc[m]
    assert (row["ci_low"], row["ci_high"]) == stats.bootstrap_ci(correct, 200, seed=0)
    assert (row["balanced_ci_low"], row["balanced_ci_high"]) == stats.bootstrap_balanced_ci(
        correct, y_true, 200, seed=0
    )
    config = dict(num_layers=3, embed_dim=32, heads=4, ffn_dim=128)
    alone = stats.effective_masks({k: v[m].numpy() for k, v in masks.items()}, **config)
    assert row["n_effective"] == sum(int(mask.sum()) for mask in alone.values())
    cells = kept[(kept["method"] == "ig") & (kept["retention"] == 0.1)]
    assert cells.set_index(["layer", "module"])["n_effective"].to_dict() == {
        key: int(mask.sum()) for key, mask in alone.items()
    }
