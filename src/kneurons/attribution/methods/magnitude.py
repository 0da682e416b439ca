"""Weight magnitude (magnitude pruning, Han et al. 2015): a data-free control.

A unit's score is the L2 norm of its weight row and bias; per weight, |w_ij|. It never runs
the model, so it says how much of a method's ranking the weights alone explain.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from kneurons.attribution.methods.base import ScoringInputs, ScoringMethod

if TYPE_CHECKING:
    from kneurons.attribution.methods.base import Scores


def score(model, inputs: ScoringInputs) -> Scores:
    """The weight magnitude of every unit (or weight) of the scored modules."""
    import torch

    from kneurons.model.esm import linear

    scores = {}
    for layer in inputs.layers:
        for module in inputs.modules:
            with torch.no_grad():
                weight = linear(model.esm, layer, module).weight.detach().double()
                bias = linear(model.esm, layer, module).bias
                if inputs.settings.get("granularity", "unit") == "weight":
                    scores[(layer, module)] = weight.abs()
                else:
                    rows = weight if bias is None else torch.cat([weight, bias[:, None]], 1)
                    scores[(layer, module)] = rows.norm(dim=1)
    return scores


METHOD = ScoringMethod(name="magnitude", score=score, needs_model_pass=False, color="#8c564b")
