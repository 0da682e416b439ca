"""Uniform random scores from the run's seed: the baseline every method must beat."""

from __future__ import annotations

from typing import TYPE_CHECKING

from kneurons.methods.base import ScoringInputs, ScoringMethod

if TYPE_CHECKING:
    from kneurons.methods.base import Scores


def score(model, inputs: ScoringInputs) -> Scores:
    """One uniform draw per unit (or per weight, (units, inputs), at weight granularity), in
    (layer, module) order, from `inputs.seed`."""
    import torch  # lazy: see methods.base

    from kneurons.model import linear

    per_weight = inputs.settings.get("granularity", "unit") == "weight"
    generator = torch.Generator().manual_seed(inputs.seed)
    scores = {}
    for layer in inputs.layers:
        for module in inputs.modules:
            shape = linear(model.esm, layer, module).weight.shape
            shape = shape if per_weight else shape[:1]
            scores[(layer, module)] = torch.rand(shape, generator=generator, dtype=torch.float64)
    return scores


METHOD = ScoringMethod(name="random", score=score, needs_model_pass=False, color="#7f7f7f")
