"""Integrated gradients per unit (Dai et al.): the engine is
`kneurons.attribution.engine.ig_scores`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kneurons.attribution.methods.base import ScoringInputs, ScoringMethod

if TYPE_CHECKING:
    from kneurons.attribution.methods.base import Scores


def score(model, inputs: ScoringInputs) -> Scores:
    """IG of p(true class) for every unit of `inputs.modules` in each of `inputs.layers`."""
    from kneurons.attribution.engine import ig_scores

    s = inputs.settings
    scores: Scores = {}
    for layer in inputs.layers:
        scores |= ig_scores(
            model,
            inputs.sequences,
            inputs.labels,
            layer,
            inputs.modules,
            steps=s["ig_steps"],
            rule=s["ig_rule"],
            absolute=s["ig_abs"],
            batch_size=s["batch_size"],
            rows_per_pass=s["rows_per_pass"],
            max_length=inputs.max_length,
            granularity=s.get("granularity", "unit"),
            per_sequence=s.get("per_sequence", False),
        )
    return scores


METHOD = ScoringMethod(
    name="ig",
    score=score,
    settings=("ig_steps", "ig_rule", "ig_abs", "batch_size", "rows_per_pass"),
    per_layer=True,
    per_sequence=True,
    color="#1f77b4",
)
