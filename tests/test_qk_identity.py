"""An exact property of IG on attention: scaling q_proj's output of a layer by alpha scales the
attention logits sum_d q'_d k'_d by alpha (the rotary embedding is linear), and so does scaling
k_proj's output. p(true class) is then the same function f(alpha) on both paths, and by the
chain rule the sum of a module's unit attributions is sum_s w_s f'(alpha_s): equal for q_proj
and k_proj under any quadrature rule and step count, though the units differ."""

import pytest
import torch

from kneurons.attribution.engine import ig_scores
from kneurons.attribution.quadrature import IG_RULES


@pytest.mark.parametrize("rule", IG_RULES)
def test_q_and_k_totals_agree_for_every_rule(tiny_classifier, sequences, labels, rule):
    assert next(tiny_classifier.parameters()).dtype == torch.float64
    for layer in range(tiny_classifier.num_layers):
        scores = ig_scores(
            tiny_classifier, sequences, labels, layer, ["q_proj", "k_proj"], steps=4, rule=rule,
            batch_size=3, progress=False,
        )  # fmt: skip
        q, k = scores[(layer, "q_proj")], scores[(layer, "k_proj")]
        assert q.sum().item() != 0
        assert q.sum().item() == pytest.approx(k.sum().item(), rel=1e-9, abs=0)
        assert not torch.allclose(q, k, rtol=1e-3, atol=1e-9)  # the units differ
