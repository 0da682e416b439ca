import numpy as np
import pandas as pd
import pytest
import torch

from kneurons.analysis.selection import keep_masks, kept_counts, select
from kneurons.attribution.engine import activation_scores, ig_scores, ig_scores_reference
from kneurons.attribution.quadrature import IG_RULES, quadrature
from kneurons.model.esm import MODULES, ablated, encode, linear


@pytest.mark.parametrize("rule", IG_RULES)
def test_quadrature_integrates_polynomials(rule):
    alphas, weights = quadrature(rule, 20)
    assert weights.sum().item() == pytest.approx(1.0)
    exact = 1 / 3
    tolerance = 1e-12 if rule == "gausslegendre" else 0.06
    assert (weights * alphas**2).sum().item() == pytest.approx(exact, abs=tolerance)


def p_true(model, sequences, labels, keep=None):
    with torch.no_grad(), ablated(model, keep or {}):
        return sum(
            model(encode([s])).softmax(-1)[0, y].item()
            for s, y in zip(sequences, labels, strict=True)
        )


@pytest.mark.parametrize("module", MODULES)
def test_ig_completeness(tiny_classifier, sequences, labels, module):
    """Attributions of a module sum to p(x) - p(x with that module's output zeroed)."""
    layer = 1
    scores = ig_scores(
        tiny_classifier,
        sequences,
        labels,
        layer,
        [module],
        steps=64,
        rule="gausslegendre",
        batch_size=3,
        rows_per_pass=40,
        progress=False,
    )
    total = scores[(layer, module)].sum().item() * len(sequences)
    n = linear(tiny_classifier.esm, layer, module).out_features
    zeroed = {(layer, module): torch.zeros(n, dtype=torch.bool)}
    expected = p_true(tiny_classifier, sequences, labels) - p_true(
        tiny_classifier, sequences, labels, zeroed
    )
    assert total == pytest.approx(expected, rel=1e-5, abs=1e-9)
    # the default (left Riemann, 20 steps) carries an O(1/m) error that shrinks with m
    errors = [
        abs(
            ig_scores(tiny_classifier, sequences, labels, layer, [module], steps=m, progress=False)[
                (layer, module)
            ]
            .sum()
            .item()
            * len(sequences)
            - expected
        )
        for m in (5, 20, 80)
    ]
    assert errors[0] > errors[1] > 2 * errors[2]


@pytest.mark.parametrize("absolute", [False, True])
def test_engine_equals_straightforward_reference(tiny_classifier, sequences, labels, absolute):
    """Padded batches of unequal lengths, path steps split across passes, every module type."""
    for layer in (0, 2):
        fast = ig_scores(
            tiny_classifier,
            sequences,
            labels,
            layer,
            MODULES,
            steps=7,
            rule="riemann_trapezoid",
            absolute=absolute,
            batch_size=3,
            rows_per_pass=8,
            progress=False,
        )
        slow = ig_scores_reference(
            tiny_classifier,
            sequences,
            labels,
            layer,
            MODULES,
            steps=7,
            rule="riemann_trapezoid",
            absolute=absolute,
        )
        for key in slow:
            scale = slow[key].abs().max().item()
            torch.testing.assert_close(fast[key], slow[key], rtol=1e-5, atol=1e-7 * scale)


def test_engine_does_not_depend_on_batching(tiny_classifier, sequences, labels):
    a = ig_scores(tiny_classifier, sequences, labels, 1, ["k_proj"], batch_size=1, progress=False)
    b = ig_scores(
        tiny_classifier,
        sequences,
        labels,
        1,
        ["k_proj"],
        batch_size=4,
        rows_per_pass=1000,
        progress=False,
    )
    scale = a[(1, "k_proj")].abs().max().item()
    # fair-esm's attention softmax runs in float32 even for a float64 model
    torch.testing.assert_close(a[(1, "k_proj")], b[(1, "k_proj")], rtol=1e-5, atol=1e-7 * scale)


def test_activation_scores_match_a_hand_computation(tiny_classifier, sequences):
    scores = activation_scores(tiny_classifier, sequences, ["v_proj", "fc1"], batch_size=3)
    for module in ("v_proj", "fc1"):
        target = linear(tiny_classifier.esm, 2, module)
        per_sequence = []
        for s in sequences:
            seen = {}
            h = target.register_forward_hook(lambda m, i, o, seen=seen: seen.setdefault("o", o))
            with torch.no_grad():
                tiny_classifier(encode([s]))
            h.remove()
            out = seen["o"][:, 0, :]  # (T, U), no padding for a single sequence
            assert out.shape[0] == len(s) + 2  # BOS and EOS count as tokens
            per_sequence.append(out.abs().mean(0))
        torch.testing.assert_close(scores[(2, module)], torch.stack(per_sequence).mean(0))


def toy_scores():
    rng = np.random.default_rng(0)
    rows = [
        (layer, module, unit, float(rng.integers(0, 5)))  # many ties on purpose
        for layer in range(3)
        for module in MODULES
        for unit in range(8)
    ]
    return pd.DataFrame(rows, columns=["layer", "module", "unit", "score"])


@pytest.mark.parametrize("ratio", [1.0, 0.5, 0.25, 0.1, 0.01, 0.37])
def test_selection_keeps_round_r_n_and_is_deterministic(ratio):
    scores = toy_scores()
    chosen = select(scores, ratio)
    assert chosen["kept"].sum() == round(ratio * len(scores))
    shuffled = scores.sample(frac=1, random_state=3)
    again = select(shuffled, ratio).sort_index()
    assert again["kept"].equals(chosen["kept"])
    # every kept score is >= every dropped score
    if 0 < chosen["kept"].sum() < len(scores):
        assert chosen.loc[chosen.kept, "score"].min() >= chosen.loc[~chosen.kept, "score"].max()


def test_mean_normalisation_removes_module_scale():
    scores = toy_scores()
    scores.loc[scores.module == "fc1", "score"] *= 1000  # fc1 on another scale
    raw = select(scores, 0.1)
    normalized = select(scores, 0.1, normalize="mean")
    assert raw.loc[raw.kept, "module"].eq("fc1").all()
    assert normalized.loc[normalized.kept, "module"].nunique() > 1


def test_selection_rejects_bad_ratio():
    with pytest.raises(ValueError, match="outside"):
        select(toy_scores(), 0)


def test_masks_and_counts_agree():
    chosen = select(toy_scores(), 0.25)
    masks = keep_masks(chosen)
    counts = kept_counts(chosen)
    assert sum(c["n_kept"] for c in counts) == chosen["kept"].sum()
    assert sum(c["n_neurons"] for c in counts) == len(chosen)
    for c in counts:
        assert masks[(c["layer"], c["module"])].sum().item() == c["n_kept"]


def test_scoring_leaves_requires_grad_as_it_was(tiny_classifier, sequences, labels):
    assert all(p.requires_grad for p in tiny_classifier.parameters())
    ig_scores(tiny_classifier, sequences, labels, 0, ["k_proj"], steps=2, progress=False)
    assert all(p.requires_grad for p in tiny_classifier.parameters())  # later training works


# --- gradient x activation ---------------------------------------------------------------------


def test_gradxact_equals_ig_with_one_right_riemann_step(tiny_classifier, sequences, labels):
    from kneurons.attribution.methods.gradxact import gradxact_scores

    modules = ["q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"]
    fast = gradxact_scores(tiny_classifier, sequences, labels, range(3), modules, batch_size=3)
    for layer in range(3):
        one_step = ig_scores(
            tiny_classifier, sequences, labels, layer, modules, steps=1, rule="riemann_right",
            progress=False,
        )  # fmt: skip
        for module in modules:
            torch.testing.assert_close(
                fast[(layer, module)], one_step[(layer, module)], rtol=1e-9, atol=1e-12
            )


def test_gradxact_equals_per_unit_finite_differences(tiny_classifier, sequences, labels):
    """Brute force: scale one unit's output by 1 +- eps, one sequence at a time, unbatched."""
    from kneurons.attribution.methods.gradxact import gradxact_scores

    picked = [(0, "k_proj"), (1, "fc1"), (2, "out_proj")]
    fast = gradxact_scores(
        tiny_classifier, sequences, labels, range(3), ["k_proj", "fc1", "out_proj"], batch_size=4
    )  # one padded batch
    eps = 1e-6
    for layer, module in picked:
        target = linear(tiny_classifier.esm, layer, module)
        for unit in range(6):
            total = 0.0
            for sequence, label in zip(sequences, labels, strict=True):
                p = []
                for sign in (1, -1):
                    scale = torch.ones(target.out_features, dtype=torch.float64)
                    scale[unit] += sign * eps
                    handle = target.register_forward_hook(lambda _m, _i, out, s=scale: out * s)
                    try:
                        with torch.no_grad():
                            p.append(tiny_classifier(encode([sequence])).softmax(-1)[0, label])
                    finally:
                        handle.remove()
                total += ((p[0] - p[1]) / (2 * eps)).item()
            expected = total / len(sequences)
            assert fast[(layer, module)][unit].item() == pytest.approx(expected, abs=1e-8)


def test_bf16_autocast_ig_stays_close_to_fp32(sequences, labels):
    """The tolerance behind scoring.precision bf16 (autocast leaves float64 alone: a float32
    model). Measured on the 4-layer, 64-dim tiny model: 0.4-0.5% relative L2, top-10% kept
    sets with Jaccard 0.99."""
    from kneurons.model.esm import EnzymeClassifier, autocast, build_tiny_esm2

    model = EnzymeClassifier(build_tiny_esm2(2, 32, 4, seed=0), 6).eval()
    fp32 = ig_scores(model, sequences, labels, 1, MODULES, steps=8, progress=False)
    with autocast(torch.device("cpu"), "bf16"):
        bf16 = ig_scores(model, sequences, labels, 1, MODULES, steps=8, progress=False)
    a = torch.cat([fp32[k].flatten() for k in fp32])
    b = torch.cat([bf16[k].flatten() for k in fp32])
    assert 0 < ((a - b).norm() / a.norm()).item() < 0.02  # bf16 did run, and stayed close
    k = len(a) // 10
    top_a, top_b = set(a.topk(k).indices.tolist()), set(b.topk(k).indices.tolist())
    assert len(top_a & top_b) / len(top_a | top_b) >= 0.8
