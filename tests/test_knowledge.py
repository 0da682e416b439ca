from contextlib import nullcontext

import numpy as np
import pandas as pd
import pytest
import torch
from torch import nn

from kneurons.analysis import knowledge
from kneurons.analysis.knowledge import (
    class_effects,
    effect_table,
    knowledge_neurons,
    matched_sets,
    matched_units_by_class,
    motif_auroc,
    scale_masks,
    scaled,
    token_activations,
    units_by_class,
)
from kneurons.attribution.engine import activation_scores, ig_scores
from kneurons.model.esm import ALPHABET, MODULES, EnzymeClassifier, build_tiny_esm2, encode, linear

# --- per-sequence attributions ----------------------------------------------------------------


def test_per_sequence_ig_averages_to_the_default(tiny_classifier, sequences, labels):
    options = dict(steps=5, batch_size=3, rows_per_pass=8, progress=False)
    default = ig_scores(tiny_classifier, sequences, labels, 1, MODULES, **options)
    rows = ig_scores(tiny_classifier, sequences, labels, 1, MODULES, per_sequence=True, **options)
    for key in default:
        assert rows[key].shape == (len(sequences), len(default[key]))
        torch.testing.assert_close(rows[key].mean(0), default[key], rtol=0, atol=1e-12)
    # input order, although batches are length-sorted: row 2 is sequence 2 alone
    alone = ig_scores(tiny_classifier, sequences[2:3], labels[2:3], 1, ["fc1"], **options)
    torch.testing.assert_close(rows[(1, "fc1")][2], alone[(1, "fc1")], rtol=1e-6, atol=1e-10)


def test_per_sequence_activation_averages_to_the_default(tiny_classifier, sequences):
    default = activation_scores(tiny_classifier, sequences, ["v_proj", "fc2"], batch_size=3)
    rows = activation_scores(
        tiny_classifier, sequences, ["v_proj", "fc2"], batch_size=3, per_sequence=True
    )
    for key in default:
        assert rows[key].shape[0] == len(sequences)
        torch.testing.assert_close(rows[key].mean(0), default[key], rtol=0, atol=1e-12)


def test_per_sequence_needs_unit_granularity(tiny_classifier, sequences, labels):
    with pytest.raises(ValueError, match="granularity 'unit'"):
        ig_scores(
            tiny_classifier, sequences, labels, 0, ["fc1"], granularity="weight", per_sequence=True
        )
    with pytest.raises(ValueError, match="granularity 'unit'"):
        activation_scores(
            tiny_classifier, sequences, ["fc1"], granularity="weight", per_sequence=True
        )


# --- knowledge neurons ------------------------------------------------------------------------

UNITS = pd.DataFrame(
    {"layer": [0, 0, 1, 1], "module": ["fc1", "fc1", "fc2", "fc2"], "unit": [0, 1, 0, 1]}
)
ATTRIBUTIONS = np.array(
    [
        [10.0, 3.0, 2.0, 0.0],  # above 0.2 x 10 = 2 (strictly): units 0, 1
        [10.0, 1.0, 5.0, 0.0],  # units 0, 2
        [4.0, 0.0, 1.0, 0.0],  # above 0.8: units 0, 2
        [-1.0, -2.0, -3.0, -4.0],  # no positive attribution: supports no unit
        [0.0, 0.0, 0.0, 5.0],  # class b
        [0.0, 0.0, 1.0, 7.0],  # class b
    ]
)
LABELS = ["a", "a", "a", "a", "b", "b"]


def kn_units(table, c):
    rows = table[table["class"] == c]
    return list(zip(rows["layer"], rows["module"], rows["unit"], strict=True))


def test_knowledge_neurons_threshold_and_share_boundaries():
    table = knowledge_neurons(ATTRIBUTIONS, LABELS, ["a", "b"], units=UNITS, share=0.5)
    # class a: unit 0 in 3/4 sequences, unit 2 in 2/4 (share 0.5 is enough), unit 1 in 1/4
    assert kn_units(table, "a") == [(0, "fc1", 0), (1, "fc2", 0)]
    assert table[table["class"] == "a"]["share"].tolist() == [0.75, 0.5]
    assert table[table["class"] == "a"]["mean_attribution"].tolist() == [23 / 4, 5 / 4]
    assert kn_units(table, "b") == [(1, "fc2", 1)]
    strict = knowledge_neurons(ATTRIBUTIONS, LABELS, ["a"], units=UNITS, share=0.76)
    assert strict.empty
    # threshold 0.1 admits unit 2 of sequence 0 (2 > 1) and unit 2 of class b's second sequence
    loose = knowledge_neurons(ATTRIBUTIONS, LABELS, ["a", "b"], units=UNITS, threshold=0.1)
    assert table[table["class"] == "a"]["share"].tolist() == [0.75, 0.5]
    assert loose[(loose["class"] == "a") & (loose["layer"] == 1)]["share"].tolist() == [0.75]
    assert kn_units(loose, "b") == [(1, "fc2", 1), (1, "fc2", 0)]


def test_knowledge_neurons_cap_by_share_then_mean_attribution():
    capped = knowledge_neurons(
        ATTRIBUTIONS, LABELS, ["a", "b"], units=UNITS, share=0.25, max_count=2
    )
    assert kn_units(capped, "a") == [(0, "fc1", 0), (1, "fc2", 0)]
    # class b: units 3 (share 1) then 2 (share 1/2); equal shares fall back on the mean
    tied = np.array([[1.0, 2.0, 0.0, 0.0], [2.0, 2.0, 0.0, 0.0]])
    top = knowledge_neurons(tied, ["a", "a"], ["a"], units=UNITS, max_count=1)
    assert kn_units(top, "a") == [(0, "fc1", 1)]


def test_knowledge_neurons_checks_shapes():
    with pytest.raises(ValueError, match="units"):
        knowledge_neurons(ATTRIBUTIONS, LABELS, ["a"])
    with pytest.raises(ValueError, match="labels"):
        knowledge_neurons(ATTRIBUTIONS, LABELS[:2], ["a"], units=UNITS)


# --- suppress / amplify -----------------------------------------------------------------------


def recorder(store, key, take):
    """A forward hook that keeps take(inputs, output) under `key` and leaves the output as is."""

    def hook(_module, inputs, output):
        store[key] = take(inputs, output)

    return hook


@pytest.mark.parametrize("factor", [0.0, 2.0])
def test_scaling_touches_exactly_the_chosen_units(tiny_classifier, sequences, factor):
    units = pd.DataFrame({"layer": [1, 1, 2], "module": ["q_proj", "q_proj", "fc2"]})
    units["unit"] = [3, 7, 5]
    tokens = encode(sequences)

    def run(context):
        seen = {}
        with torch.no_grad(), context:
            # registered after the scaling hooks, so these see the scaled outputs
            hooks = [
                linear(tiny_classifier.esm, layer, module).register_forward_hook(
                    recorder(seen, module, lambda i, o: (i[0].clone(), o.clone()))
                )
                for layer, module in [(1, "q_proj"), (2, "fc2")]
            ]
            tiny_classifier(tokens)
        for h in hooks:
            h.remove()
        return seen

    plain = run(nullcontext())
    changed = run(scaled(tiny_classifier, units, factor))
    # q_proj comes first: same input, so chosen units scaled and the others bit-identical
    expected = plain["q_proj"][1].clone()
    expected[..., [3, 7]] *= factor
    torch.testing.assert_close(changed["q_proj"][1], expected, rtol=0, atol=0)
    # fc2's input changed upstream; its own output is the plain Linear's, scaled at unit 5
    fc2 = linear(tiny_classifier.esm, 2, "fc2")
    expected = nn.functional.linear(changed["fc2"][0], fc2.weight, fc2.bias)
    expected[..., 5] *= factor
    torch.testing.assert_close(changed["fc2"][1], expected, rtol=0, atol=1e-12)
    masks = scale_masks(tiny_classifier, units, factor)
    assert set(masks) == {(1, "q_proj"), (2, "fc2")}
    assert masks[(1, "q_proj")].tolist() == [factor if u in (3, 7) else 1.0 for u in range(32)]


def wired_model():
    """Layers all zero (the residual stream is the embedding) but one path: fc1 unit 0 of the
    last layer fires on W only, fc2 unit 1 writes it to dimension 1, and the head reads
    dimension 1 into class 2 (position 1) only. Zeroing fc2 unit 1 removes class-2 evidence
    from sequences with W and changes nothing on sequences without."""
    torch.manual_seed(0)
    model = EnzymeClassifier(build_tiny_esm2(2, 32, 4, seed=0), 3).double().eval()
    with torch.no_grad():
        for layer in range(model.num_layers):
            for module in MODULES:
                linear(model.esm, layer, module).weight.zero_()
                linear(model.esm, layer, module).bias.zero_()
        w = ALPHABET.get_idx("W")
        model.esm.embed_tokens.weight[:, 1] = 0  # dimension 1 only carries the wired unit
        model.esm.embed_tokens.weight[w] = 0
        model.esm.embed_tokens.weight[w, 0] = 5
        x, _ = model.embed(encode(["W"]))
        last = model.esm.layers[-1]
        direction = last.final_layer_norm(x[1, 0])
        last.fc1.weight[0] = 20 * direction / direction.dot(direction)
        last.fc1.bias[0] = -16
        last.fc2.weight[1, 0] = 10
        model.head.weight.zero_()
        model.head.bias.zero_()
        model.head.weight[1, 1] = 5
    return model


def wired_test_table():
    rng = np.random.default_rng(0)
    letters = list("ACDEFGHIKLMNPQRSTVY")  # no W

    def background(n):
        return "".join(rng.choice(letters, n))

    rows = [(1, background(12)) for _ in range(4)] + [(3, background(10)) for _ in range(4)]
    rows += [(2, "WWWW" + background(8)) for _ in range(4)]
    return pd.DataFrame(rows, columns=["ec_class", "sequence"])


def test_effect_matrix_of_a_unit_wired_to_one_class():
    model, test = wired_model(), wired_test_table()
    wired = pd.DataFrame({"layer": [1], "module": ["fc2"], "unit": [1]})
    dead = pd.DataFrame({"layer": [1], "module": ["fc2"], "unit": [5]})  # outputs 0 anyway
    # the wiring: the unit is silent on every token of the sequences without W
    activations = token_activations(model, list(test["sequence"]), wired)
    by_class = list(zip(activations, test["ec_class"], strict=True))
    silent = np.concatenate([a for a, c in by_class if c != 2])
    assert np.abs(silent).max() < 1e-6
    assert min(a.max() for a, c in by_class if c == 2) > 10
    effects = class_effects(model, test, [1, 2, 3], {1: dead, 2: wired}, 0.0, batch_size=5)
    p_true = effects["p_true"]
    assert p_true.loc[2, 2] < -0.3
    assert p_true.loc[2, [1, 3]].abs().max() < 1e-6
    assert p_true.loc[1].abs().max() < 1e-12
    assert p_true.loc[3].isna().all()  # class 3 has no units
    assert effects["accuracy"].loc[2, 2] < -0.5
    assert effects["accuracy"].loc[2, [1, 3]].tolist() == [0.0, 0.0]
    amplified = class_effects(model, test, [1, 2, 3], {2: wired}, 2.0)["p_true"]
    assert amplified.loc[2, 2] >= 0 and amplified.loc[2, [1, 3]].abs().max() < 1e-6
    long = effect_table(effects)
    assert len(long) == 2 * 9 and set(long["quantity"]) == {"p_true", "accuracy"}


# --- matched random sets -----------------------------------------------------------------------


def all_units():
    cells = [(layer, module, 8) for layer in (0, 1) for module in ("fc1", "q_proj")]
    return pd.DataFrame(
        [(layer, module, u) for layer, module, n in cells for u in range(n)],
        columns=["layer", "module", "unit"],
    )


def test_matched_sets_have_exactly_the_per_cell_counts():
    kn = pd.DataFrame({"layer": [0, 0, 0, 1], "module": ["fc1", "fc1", "q_proj", "q_proj"]})
    kn["unit"] = [1, 2, 3, 7]
    draws = matched_sets(kn, all_units(), np.random.default_rng(0), 20)
    assert len(draws) == 20
    expected = kn.groupby(["layer", "module"]).size()
    for draw in draws:
        pd.testing.assert_series_equal(draw.groupby(["layer", "module"]).size(), expected)
        assert not draw.duplicated().any()
        assert draw.merge(all_units()).shape[0] == len(draw)
    assert len({tuple(d["unit"]) for d in draws}) > 1  # random
    again = matched_sets(kn, all_units(), np.random.default_rng(0), 20)
    assert all(a.equals(b) for a, b in zip(draws, again, strict=True))
    per_class = matched_units_by_class(
        {5: kn, 6: kn.head(1)}, all_units(), np.random.default_rng(1), 3
    )
    assert len(per_class) == 3 and all(len(d[5]) == 4 and len(d[6]) == 1 for d in per_class)
    with pytest.raises(ValueError, match="9 units to match"):
        matched_sets(
            pd.concat([all_units().head(8), kn.head(1)]), all_units(), np.random.default_rng(0), 1
        )


# --- motif detectors --------------------------------------------------------------------------


def pairwise_auroc(scores, positive):
    pos, neg = scores[positive], scores[~positive]
    greater = (pos[:, None] > neg[None, :]).mean()
    ties = (pos[:, None] == neg[None, :]).mean()
    return greater + ties / 2


def test_motif_auroc_counts_residues_after_bos():
    sequence = "MAGHEAAHKLLLLLLL"  # zincin_hexxh HExxH at residues 3..7
    motifs = "zincin_hexxh:3:8:true"
    n_tokens = len(sequence) + 2
    exact = np.zeros(n_tokens)
    exact[3 + 1 : 8 + 1] = 1.0  # residue i is token i + 1
    shifted = np.roll(exact, -1)  # the string positions, forgetting BOS
    noise = np.random.default_rng(0).random(n_tokens)
    activations = [np.stack([exact, shifted, noise], axis=1)]
    units = pd.DataFrame({"layer": [0, 0, 0], "module": ["fc1"] * 3, "unit": [0, 1, 2]})
    table = motif_auroc(activations, [motifs], ["zincin_hexxh", "enolase"], units)
    zincin = table[table["motif"] == "zincin_hexxh"]["auroc"].to_numpy()
    positive = np.zeros(len(sequence), dtype=bool)
    positive[3:8] = True
    assert zincin[0] == 1.0
    assert zincin[1] < 1.0
    assert zincin[1] == pytest.approx(pairwise_auroc(shifted[1:-1], positive))
    assert zincin[2] == pytest.approx(pairwise_auroc(noise[1:-1], positive))
    assert table[table["motif"] == "enolase"]["auroc"].isna().all()  # no positive residue
    assert set(table["n_positive"]) == {5, 0}
    # a decoy occurrence of the motif, left out of both classes when only true motifs count
    decoy = "zincin_hexxh:3:8:true;zincin_hexxh:10:15:decoy"
    only_true = motif_auroc(activations, [decoy], ["zincin_hexxh"], units, kinds=("true",))
    assert only_true["n_positive"].tolist() == [5, 5, 5]
    assert only_true["auroc"].iloc[0] == 1.0
    negative = np.ones(len(sequence), dtype=bool)
    negative[3:8] = negative[10:15] = False  # the decoy residues are neither
    kept = positive | negative
    for column, scores in enumerate([exact, shifted, noise]):  # ties in the first two
        assert only_true["auroc"].iloc[column] == pytest.approx(
            pairwise_auroc(scores[1:-1][kept], positive[kept])
        )
    assert only_true["auroc"].iloc[2] != pytest.approx(zincin[2])


def test_token_activations_follow_input_order_and_skip_padding(tiny_classifier, sequences):
    units = pd.DataFrame({"layer": [2, 0], "module": ["fc1", "k_proj"], "unit": [4, 1]})
    batched = token_activations(tiny_classifier, sequences, units, batch_size=3)
    for sequence, tokens in zip(sequences, batched, strict=True):
        assert tokens.shape == (len(sequence) + 2, 2)
        seen = {}
        hook = linear(tiny_classifier.esm, 2, "fc1").register_forward_hook(
            recorder(seen, "fc1", lambda i, o: o[:, 0, 4].clone())
        )
        with torch.no_grad():
            tiny_classifier(encode([sequence]))
        hook.remove()
        np.testing.assert_allclose(tokens[:, 0], seen["fc1"].numpy(), rtol=1e-6, atol=1e-9)
    cut = token_activations(tiny_classifier, sequences, units, max_length=5)
    assert [len(t) for t in cut] == [min(len(s), 5) + 2 for s in sequences]


def test_units_by_class_splits_the_table():
    table = knowledge_neurons(ATTRIBUTIONS, LABELS, ["a", "b"], units=UNITS)
    split = units_by_class(table)
    assert list(split) == ["a", "b"]
    assert split["b"].to_dict("records") == [{"layer": 1, "module": "fc2", "unit": 1}]


def test_one_seed_analysis_tables(tiny_classifier):
    """The workflow's per-seed calls: effects of knowledge and matched sets, motif AUROCs."""
    model = tiny_classifier.float()
    rng = np.random.default_rng(0)
    residues = list("ACDEFHIKLMNPQRSTVWY")  # no G: only the planted motif has G
    rows = []
    for i in range(24):
        sequence = list("M" + "".join(rng.choice(residues, 30)))
        motifs = ""
        if i % 2 == 0:
            sequence[5:11] = list("GAGAAG")  # rossmann_nad_binding, GxGxxG
            motifs = "rossmann_nad_binding:5:11:true"
        rows.append({"sequence": "".join(sequence), "ec_class": 1 + i % 3, "motifs": motifs})
    table = pd.DataFrame(rows)
    classes = [1, 2, 3, 4, 5, 6]
    units = pd.DataFrame(
        [
            (layer, module, unit)
            for layer in range(3)
            for module in ("k_proj", "fc1")
            for unit in range(8)
        ],
        columns=["layer", "module", "unit"],
    )
    neurons = pd.DataFrame(
        {
            "class": [1, 1, 2],
            "layer": [0, 1, 2],
            "module": ["k_proj", "fc1", "fc1"],
            "unit": [3, 4, 5],
            "share": 1.0,
            "mean_attribution": 1.0,
        }
    )
    assert len(knowledge.class_subset(table, 6, seed=0)) == 6
    assert knowledge.class_subset(table, 6, seed=0)["ec_class"].value_counts().eq(2).all()
    effects = knowledge.effects_with_controls(
        model, table, classes, neurons, units, matched_sets=2, seed=0
    )
    sets = effects.groupby(["intervention", "set"])["draw"].nunique().to_dict()
    assert sets == {
        ("amplify", "knowledge"): 1,
        ("amplify", "matched"): 2,
        ("suppress", "knowledge"): 1,
        ("suppress", "matched"): 2,
    }
    # rows of classes with knowledge neurons only; columns: every class with test sequences
    assert set(effects.dropna()["neuron_class"]) == {1, 2}
    motifs = knowledge.motif_table(model, table, neurons, units, seed=0)
    assert set(motifs["set"]) == {"knowledge", "matched"}
    assert set(motifs["motif"]) == {"rossmann_nad_binding"}
    assert (motifs["motif_class"] == 1).all() and motifs["auroc"].between(0, 1).all()
    assert knowledge.motif_table(model, table.assign(motifs=""), neurons, units, seed=0).empty


def test_many_interventions_per_pass_equal_one_model_per_pass(tiny_classifier):
    """Every suppress/amplify model of the causal test batched into shared forward passes gives
    the effects of one scaled model per pass."""
    model = tiny_classifier.float()
    rng = np.random.default_rng(1)
    residues = list("ACDEFGHIKLMNPQRSTVWY")
    test = pd.DataFrame(
        {
            "sequence": [
                "M" + "".join(rng.choice(residues, rng.integers(8, 30))) for _ in range(18)
            ],
            "ec_class": [1, 2, 3] * 6,
        }
    )
    units = pd.DataFrame(
        [(layer, module, unit) for layer in range(3) for module in MODULES for unit in range(8)],
        columns=["layer", "module", "unit"],
    )
    own = {1: units.iloc[[0, 9, 40]], 3: units.iloc[[5, 77]]}
    controls = matched_units_by_class(own, units, np.random.default_rng(0), 3)
    interventions = [(sets, factor) for factor in (0.0, 2.0) for sets in [own, *controls]]
    classes = [1, 2, 3, 4, 5, 6]
    batched = knowledge.many_class_effects(model, test, classes, interventions, max_tokens=1 << 20)
    for (sets, factor), effects in zip(interventions, batched, strict=True):
        alone = class_effects(model, test, classes, sets, factor, max_tokens=1)
        for quantity in ("p_true", "accuracy"):
            pd.testing.assert_frame_equal(effects[quantity], alone[quantity], rtol=0, atol=1e-6)
            assert effects[quantity].loc[2].isna().all()  # a class without units: a NaN row
