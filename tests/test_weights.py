"""Per-weight granularity: scores of every weight of a scored Linear, selection, ablation."""

from __future__ import annotations

import copy

import pytest
import torch

from kneurons.analysis.selection import keep_masks, kept_counts, select
from kneurons.attribution.engine import activation_scores, ig_scores, scores_frame
from kneurons.attribution.methods.gradxact import gradxact_scores
from kneurons.attribution.quadrature import quadrature
from kneurons.model.esm import encode, linear
from kneurons.model.train import predict_proba

PICKED = [(0, "q_proj"), (1, "v_proj"), (1, "fc1"), (2, "fc2")]


def brute_force_weight_ig(model, sequences, labels, layer, module, steps, rule):
    """One sequence and one path step at a time; d p / d W straight from autograd."""
    target = linear(model.esm, layer, module)
    original = target.weight.detach().clone()
    alphas, weights = quadrature(rule, steps)
    total = torch.zeros_like(original)
    try:
        for sequence, label in zip(sequences, labels, strict=True):
            integral = torch.zeros_like(original)
            for alpha, w in zip(alphas.tolist(), weights.tolist(), strict=True):
                with torch.no_grad():
                    target.weight.copy_(alpha * original)
                p = model(encode([sequence])).softmax(-1)[0, label]
                (grad,) = torch.autograd.grad(p, target.weight)
                integral += w * grad
            total += original * integral
    finally:
        with torch.no_grad():
            target.weight.copy_(original)
    return total / len(sequences)


@pytest.mark.parametrize("layer, module", PICKED)
def test_weight_ig_equals_brute_force(tiny_classifier, sequences, labels, layer, module):
    fast = ig_scores(
        tiny_classifier, sequences, labels, layer, [module], steps=3, rule="gausslegendre",
        batch_size=4, rows_per_pass=8, progress=False, granularity="weight",
    )[(layer, module)]  # fmt: skip
    slow = brute_force_weight_ig(
        tiny_classifier, sequences, labels, layer, module, 3, "gausslegendre"
    )
    assert fast.shape == linear(tiny_classifier.esm, layer, module).weight.shape
    torch.testing.assert_close(fast, slow, rtol=1e-5, atol=1e-5 * slow.abs().max().item())


def test_weight_ig_completeness(tiny_classifier, sequences, labels):
    """Attributions of one module's weights sum to p(W) - p(W = 0, bias kept), up to quadrature."""
    layer, module = 1, "k_proj"
    scores = ig_scores(
        tiny_classifier, sequences, labels, layer, [module], steps=48, rule="gausslegendre",
        progress=False, granularity="weight",
    )[(layer, module)]  # fmt: skip
    n = linear(tiny_classifier.esm, layer, module).weight.shape
    none = {(layer, module): torch.zeros(n, dtype=torch.bool)}
    p_full = predict_proba(tiny_classifier, sequences)[range(4), labels]
    p_zero = predict_proba(tiny_classifier, sequences, keep=none)[range(4), labels]
    expected = (p_full - p_zero).mean().item()
    assert scores.sum().item() == pytest.approx(expected, rel=1e-5)


def test_gradxact_per_weight_is_one_right_riemann_step(tiny_classifier, sequences, labels):
    modules = ["k_proj", "out_proj", "fc2"]
    fast = gradxact_scores(
        tiny_classifier, sequences, labels, [1], modules, batch_size=3, granularity="weight"
    )
    one_step = ig_scores(
        tiny_classifier, sequences, labels, 1, modules, steps=1, rule="riemann_right",
        progress=False, granularity="weight",
    )  # fmt: skip
    for key in fast:
        torch.testing.assert_close(fast[key], one_step[key], rtol=1e-9, atol=1e-12)


def test_activation_per_weight(tiny_classifier, sequences):
    scores = activation_scores(
        tiny_classifier, sequences, ["fc2"], layers=[2], batch_size=3, granularity="weight"
    )[(2, "fc2")]
    target = linear(tiny_classifier.esm, 2, "fc2")
    per_sequence = []
    seen = {}
    handle = target.register_forward_hook(lambda _m, inp, _o: seen.update(x=inp[0]))
    try:
        for sequence in sequences:
            with torch.no_grad():
                tiny_classifier(encode([sequence]))
            # |w_ij x_j| at every token (T, U, I), mean over tokens
            per_sequence.append((target.weight[None] * seen["x"][:, 0, None, :]).abs().mean(0))
    finally:
        handle.remove()
    torch.testing.assert_close(scores, torch.stack(per_sequence).mean(0).detach())


def test_weight_selection_ablation_and_density(tiny_classifier, sequences):
    generator = torch.Generator().manual_seed(5)
    frame = scores_frame(
        {
            (layer, module): torch.rand(
                linear(tiny_classifier.esm, layer, module).weight.shape, generator=generator
            )
            for layer in range(3)
            for module in ("q_proj", "fc1")
        }
    )
    n_weights = 3 * (32 * 32 + 128 * 32)
    assert len(frame) == n_weights and list(frame.columns[-2:]) == ["input", "score"]

    everything = keep_masks(select(frame, 1.0))
    assert everything[(0, "q_proj")].shape == (32, 32) and everything[(1, "fc1")].shape == (128, 32)
    assert torch.equal(
        predict_proba(tiny_classifier, sequences, keep=everything),
        predict_proba(tiny_classifier, sequences),
    )  # keeping 100% changes nothing

    selected = select(frame, 0.1)
    counts = kept_counts(selected)
    assert sum(c["n_neurons"] for c in counts) == n_weights
    assert sum(c["n_kept"] for c in counts) == round(0.1 * n_weights)

    masks = keep_masks(selected)
    zeroed = copy.deepcopy(tiny_classifier)
    with torch.no_grad():
        for (layer, module), mask in masks.items():
            linear(zeroed.esm, layer, module).weight.mul_(mask)  # bias kept
    torch.testing.assert_close(
        predict_proba(tiny_classifier, sequences, keep=masks), predict_proba(zeroed, sequences)
    )
