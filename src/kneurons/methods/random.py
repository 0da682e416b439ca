"""Uniform random scores from the run's seed: the baseline every method must beat."""

from __future__ import annotations

import torch

from kneurons.methods.base import Scores, ScoringInputs, ScoringMethod
from kneurons.model import linear


def score(model, inputs: ScoringInputs) -> Scores:
    """One uniform draw per unit, in (layer, module) order, from `inputs.seed`."""
    generator = torch.Generator().manual_seed(inputs.seed)
    return {
        (layer, module): torch.rand(
            linear(model.esm, layer, module).out_features, generator=generator, dtype=torch.float64
        )
        for layer in inputs.layers
        for module in inputs.modules
    }


METHOD = ScoringMethod(name="random", score=score, needs_model_pass=False, color="#7f7f7f")
