"""SAE features against neurons, per seed: residual stream, the motif features of a class,
random feature sets, and the two steps on a tiny model."""

from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest
import torch

from kneurons.analysis import features
from kneurons.model.esm import encode, residue_mask
from kneurons.model.sae import load_sae, residual_stream, sae_step, training_sequences
from kneurons.settings import FeatureSettings, SaeSettings


def test_residual_stream_is_each_layers_output_at_residues(tiny_classifier, sequences):
    """The same numbers a forward hook on each layer sees, residues only, in input order."""
    model = tiny_classifier.float()
    captured = {}
    handles = [
        layer.register_forward_hook(lambda _m, _i, out, k=k: captured.__setitem__(k, out[0]))
        for k, layer in enumerate(model.esm.layers)
    ]
    tokens = encode(sequences)
    with torch.no_grad():
        model(tokens)
    for h in handles:
        h.remove()
    residues = residue_mask(tokens)  # (B, T)
    stream = residual_stream(model, sequences, [0, 2], batch_size=2)
    for layer in (0, 2):
        expected = captured[layer].transpose(0, 1)[residues]  # (residues, E), row-major order
        assert stream[layer].shape == (sum(map(len, sequences)), model.esm.embed_dim)
        np.testing.assert_allclose(stream[layer], expected.numpy(), atol=1e-5)


def concept_rows(rows):
    columns = ["kind", "layer", "concept", "group", "unit", "val_f1"]
    return pd.DataFrame(rows, columns=columns)


def test_motif_features_take_the_best_validation_feature_of_each_true_motif():
    concepts = concept_rows(
        [
            ("sae", 0, "rossmann_nad_binding/true", "true", 5, 0.4),
            ("sae", 1, "rossmann_nad_binding/true", "true", 7, 0.9),  # best: layer 1
            ("sae", 0, "p450_heme_cys/true", "true", 2, 0.6),
            ("sae", 1, "p450_heme_cys/true", "true", 3, 0.6),  # a tie: the lower layer
            ("sae", 1, "rossmann_nad_binding/decoy", "true", 9, 1.0),  # not a true motif
            ("neuron", 1, "rossmann_nad_binding/true", "true", 1, 1.0),  # not a feature
            ("sae", 0, "p_loop_walker_a/true", "true", 4, np.nan),  # unscored
            ("sae", 0, "kinase_hrd_loop/true", "true", 4, 0.3),  # class 2
            ("sae", 0, "aa/G", "aa", 8, 1.0),
        ]
    )
    concepts.loc[4, "group"] = "decoy"
    chosen = features.motif_features(concepts, [1, 2, 3])
    assert chosen == {1: {0: [2], 1: [7]}, 2: {0: [4]}}
    assert features.motif_features(concepts, [3]) == {}


def test_random_features_match_the_per_layer_counts():
    chosen = {0: [1, 2], 3: [5]}
    rng = np.random.default_rng(0)
    picked = features.random_features(chosen, {0: 10, 3: 4}, rng)
    assert {layer: len(f) for layer, f in picked.items()} == {0: 2, 3: 1}
    assert len(set(picked[0])) == 2 and all(0 <= f < 10 for f in picked[0])
    again = features.random_features(chosen, {0: 10, 3: 4}, np.random.default_rng(0))
    assert again == picked


def test_training_sequences_use_the_corpus_train_part_only():
    split = pd.DataFrame({"sequence": ["AAA", "CCC", "DDD"], "split": ["train", "test", "train"]})
    corpus = pd.DataFrame(
        {"sequence": [f"M{i}" for i in range(10)], "part": ["train"] * 8 + ["heldout"] * 2}
    )
    assert training_sequences(split, None, 5, 0) == ["AAA", "DDD"]
    out = training_sequences(split, corpus, 5, 0)
    assert out[:2] == ["AAA", "DDD"] and len(out) == 7
    assert not {"M8", "M9"} & set(out)
    assert training_sequences(split, corpus, 100, 0)[2:] == [f"M{i}" for i in range(8)]


def split_table(n=48, seed=0):
    """Sequences of 3 classes; class 1 carries a planted Rossmann motif (GxGxxG), class 3 a
    zincin HExxH; the background has no G and no H."""
    rng = np.random.default_rng(seed)
    background = list("ACDEFIKLMNPQRSTVWY")
    rows = []
    for i in range(n):
        c = 1 + i % 3
        sequence = list("M" + "".join(rng.choice(background, 40)))
        motifs = ""
        if c == 1:
            sequence[5:11] = list("GAGAAG")
            motifs = "rossmann_nad_binding:5:11:true"
        elif c == 3:
            sequence[20:25] = list("HEAAH")
            motifs = "zincin_hexxh:20:25:true"
        part = ["train", "train", "validation", "test"][i // 3 % 4]
        rows.append(
            {
                "id": f"s{i}",
                "sequence": "".join(sequence),
                "ec_numbers": f"{c}.1.1.1",
                "ec_class": c,
                "motifs": motifs,
                "split": part,
            }
        )
    return pd.DataFrame(rows)


@pytest.fixture(scope="module")
def seed_run(tmp_path_factory):
    """The sae step for each layer and the features step, as the workflow calls them."""
    from kneurons.model.esm import save_classifier

    from conftest import make_tiny_classifier

    tmp_path = tmp_path_factory.mktemp("seed_run")
    model = make_tiny_classifier().float()
    classes = [1, 2, 3, 4, 5, 6]
    save_classifier(model, classes, 1022, tmp_path / "model.pt")
    table = split_table()
    table.to_csv(tmp_path / "split.tsv", sep="\t", index=False)
    sae_settings = SaeSettings(
        expansion=2,
        k=4,
        steps=40,
        batch_size=256,
        lr=1e-3,
        dead_after=20,
        corpus_sequences=0,
        device="cpu",
    )
    saes = []
    for layer in range(model.num_layers):
        out = SimpleNamespace(
            sae=tmp_path / f"layer{layer}.safetensors",
            history=tmp_path / f"layer{layer}_history.tsv",
        )
        inp = SimpleNamespace(model=tmp_path / "model.pt", split=tmp_path / "split.tsv")
        sae_step(inp, out, sae_settings, {"seed": "0", "layer": str(layer)})
        saes.append(out.sae)
    neurons = pd.DataFrame(
        {
            "class": [1, 3],
            "layer": [0, 2],
            "module": ["fc1", "k_proj"],
            "unit": [3, 4],
            "share": 1.0,
            "mean_attribution": 1.0,
        }
    )
    neurons.to_csv(tmp_path / "neurons.tsv", sep="\t", index=False)
    out = SimpleNamespace(**{k: tmp_path / f"{k}.tsv" for k in ("concepts", "quality", "effects")})
    inp = SimpleNamespace(
        model=tmp_path / "model.pt",
        split=tmp_path / "split.tsv",
        saes=saes,
        neurons=tmp_path / "neurons.tsv",
    )
    settings = FeatureSettings(random_sets=3, test_sequences=0, device="cpu")
    features.features_step(inp, out, settings, {"seed": "0"})
    return tmp_path, {k: pd.read_csv(getattr(out, k), sep="\t") for k in vars(out)}


def test_the_sae_step_writes_a_loadable_sae_per_layer(seed_run):
    path, _ = seed_run
    sae, info = load_sae(path / "layer1.safetensors")
    assert int(info["layer"]) == 1 and sae.n_features == 2 * 32
    history = pd.read_csv(path / "layer1_history.tsv", sep="\t")
    assert {"step", "variance_explained", "l0", "dead_fraction"} <= set(history.columns)


def test_the_features_step_scores_every_kind_and_tests_the_motif_features(seed_run):
    _, tables = seed_run
    concepts, quality, effects = tables["concepts"], tables["quality"], tables["effects"]
    assert set(concepts["kind"]) == {"residual", "neuron", "sae"}
    assert set(concepts["layer"]) == {0, 1, 2}
    assert {"rossmann_nad_binding/true", "zincin_hexxh/true", "aa/G"} <= set(concepts["concept"])
    n_units = concepts.groupby("kind")["n_units"].first().to_dict()
    # q, k, v, out_proj (32 each), fc1 (4 x 32), fc2 (32)
    assert n_units == {"residual": 32, "neuron": 4 * 32 + 4 * 32 + 32, "sae": 64}
    # G appears only inside the planted Rossmann motifs: the amino-acid control finds it
    assert concepts[concepts["concept"] == "aa/G"]["f1"].max() > 0.5
    assert list(quality["layer"]) == [0, 1, 2] and (quality["accuracy_full"] >= 0).all()
    sets = effects.groupby("set")["draw"].nunique().to_dict()
    assert sets == {"features": 1, "random_features": 3, "neurons": 1}
    assert set(effects["neuron_class"]) == {1, 3}  # the classes with motifs (and neurons)
    assert set(effects["intervention"]) == {"suppress"}


def test_without_motif_annotations_only_the_amino_acid_control_is_scored(tiny_classifier):
    """Real data without features: no motif concept, no causal run, an empty effects table."""
    model = tiny_classifier.float()
    table = split_table(n=24).assign(motifs="")
    assert features.concept_kinds([table]) == ([], [])
    concepts = pd.DataFrame(columns=["kind", "layer", "concept", "group", "unit", "val_f1"])
    effects = features.causal_effects(
        model, {}, table, [1, 2, 3], concepts, None, random_sets=2, seed=0, max_length=None
    )
    assert effects.empty and list(effects.columns) == features.EFFECT_COLUMNS
