"""Mean |output| of each unit over a sequence's tokens: the engine is
`kneurons.attribution.engine.activation_scores`."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kneurons.attribution.methods.base import ScoringInputs, ScoringMethod

if TYPE_CHECKING:
    from kneurons.attribution.methods.base import Scores


def score(model, inputs: ScoringInputs) -> Scores:
    """Activation magnitude of every unit, averaged over the scoring sequences."""
    from kneurons.attribution.engine import activation_scores

    return activation_scores(
        model,
        inputs.sequences,
        inputs.modules,
        layers=inputs.layers,
        batch_size=inputs.settings["batch_size"],
        max_length=inputs.max_length,
        granularity=inputs.settings.get("granularity", "unit"),
    )


METHOD = ScoringMethod(name="activation", score=score, settings=("batch_size",), color="#ff7f0e")
