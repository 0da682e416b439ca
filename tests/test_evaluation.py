"""One seed's evaluation job: the selections it makes and the numbers it reports."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
import torch

from kneurons.analysis import evaluation
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


def test_matched_random_keeps_exactly_the_per_cell_counts(scored):
    chosen = select(scored["ig"], 0.1)
    rng = np.random.default_rng(0)
    draws = [evaluation.matched_random(chosen, rng) for _ in range(5)]
    cells = ["layer", "module"]
    expected = chosen.groupby(cells)["kept"].sum()
    for draw in draws:
        pd.testing.assert_series_equal(draw.groupby(cells)["kept"].sum(), expected)
    assert not all(draw["kept"].equals(chosen["kept"]) for draw in draws)  # other units


def test_selections_cover_every_control_once(scored):
    items = list(evaluation.selections(scored, SETTINGS, seed=0))
    kinds = pd.Series([(i.selection, i.method, i.scope) for i in items]).value_counts()
    assert kinds[("full", "full", "global")] == 1
    assert kinds[("scored", "ig", "global")] == 2  # ratios
    assert kinds[("matched", "ig", "global")] == 2 * 2  # ratios x control draws
    assert kinds[("random", "random", "global")] == 3 * 2  # random draws x ratios
    assert kinds[("scored", "activation", "k_proj")] == 1  # module ratios
    assert kinds[("random", "random", "fc1")] == 2  # control draws
    assert len(items) == evaluation._count(scored, SETTINGS)
    # within-module selections touch only that module and keep its top 25%
    item = next(i for i in items if i.scope == "k_proj" and i.selection == "scored")
    assert set(item.selected["module"]) == {"k_proj"}
    assert item.selected["kept"].sum() == round(0.25 * len(item.selected))
    # a random draw is nested over ratios, like a method's ranking
    first = [i for i in items if i.selection == "random" and i.scope == "global" and i.draw == 0]
    assert (first[1].selected["kept"] <= first[0].selected["kept"]).all()
    # the same seed gives the same draws; another seed other draws
    again = list(evaluation.selections(scored, SETTINGS, seed=0))
    other = list(evaluation.selections(scored, SETTINGS, seed=1))
    assert all(
        a.selected is None or a.selected["kept"].equals(b.selected["kept"])
        for a, b in zip(items, again, strict=True)
    )
    assert (
        not first[0]
        .selected["kept"]
        .equals(next(i for i in other if i.selection == "random").selected["kept"])
    )


def test_evaluate_seed_reports_counts_and_intervals(tiny_classifier, scored):
    model = tiny_classifier.float()
    rng = np.random.default_rng(0)
    residues = list("ACDEFGHIKLMNPQRSTVWY")
    test = pd.DataFrame(
        {
            "sequence": ["M" + "".join(rng.choice(residues, 30)) for _ in range(24)],
            "ec_class": [1, 2, 3, 4, 5, 6] * 4,
        }
    )
    classes = [1, 2, 3, 4, 5, 6]
    results, kept = evaluation.evaluate_seed(model, test, classes, scored, SETTINGS, seed=0)
    assert list(results.columns) == evaluation.RESULT_COLUMNS
    assert len(results) == evaluation._count(scored, SETTINGS)
    full = results[results["selection"] == "full"].iloc[0]
    assert full["accuracy"] == pytest.approx(train.evaluate(model, test, classes)["accuracy"])
    assert ((results["accuracy"] * 24).round(9) % 1 == 0).all()  # counts over 24 sequences
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
