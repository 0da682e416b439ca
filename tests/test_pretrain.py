"""Masked-language-model pretraining: the masking recipe, the corpus kept apart from the
labelled set, a checkpoint that fair-esm and finetune load, and the report's metrics."""

from __future__ import annotations

import types

import numpy as np
import pandas as pd
import pytest
import torch

from kneurons.data import corpus
from kneurons.data.tables import DataError
from kneurons.model import pretrain
from kneurons.model.esm import ALPHABET, build_tiny_esm2, encode, load_esm_checkpoint
from kneurons.reporting import pretraining

RESIDUES = list("ACDEFGHIKLMNPQRSTVWY")


def _random_sequences(n, low, high, seed=0):
    rng = np.random.default_rng(seed)
    return ["M" + "".join(rng.choice(RESIDUES, rng.integers(low, high))) for _ in range(n)]


def test_masking_recipe_counts_and_proportions():
    tokens = encode(_random_sequences(400, 40, 120))
    residue = (
        (tokens != ALPHABET.padding_idx)
        & (tokens != ALPHABET.cls_idx)
        & (tokens != ALPHABET.eos_idx)
    )
    inputs, targets = pretrain.mask_tokens(tokens, torch.Generator().manual_seed(0))
    chosen = targets != pretrain.IGNORE
    n_residues, n_chosen = int(residue.sum()), int(chosen.sum())

    def within(count, n, p):  # 4 binomial standard deviations
        return abs(count - n * p) <= 4 * (n * p * (1 - p)) ** 0.5

    assert not (chosen & ~residue).any()  # never BOS, EOS or padding
    assert within(n_chosen, n_residues, 0.15)
    assert (targets[chosen] == tokens[chosen]).all()
    assert (inputs[~chosen] == tokens[~chosen]).all()
    masked = int((inputs[chosen] == ALPHABET.mask_idx).sum())
    unchanged = int((inputs[chosen] == tokens[chosen]).sum())
    swapped = n_chosen - masked - unchanged
    assert within(masked, n_chosen, 0.8)
    # a random residue equals the original 1 time in 20: unchanged 0.1 + 0.1 / 20
    assert within(unchanged, n_chosen, 0.1 + 0.1 / 20)
    assert within(swapped, n_chosen, 0.1 - 0.1 / 20)
    assert set(inputs[chosen & (inputs != ALPHABET.mask_idx)].tolist()) <= set(
        pretrain.RESIDUE_TOKENS.tolist()
    )
    again, again_targets = pretrain.mask_tokens(tokens, torch.Generator().manual_seed(0))
    assert torch.equal(again, inputs) and torch.equal(again_targets, targets)


def test_corpus_drops_labelled_sequences_and_near_duplicates():
    labelled = pd.Series(_random_sequences(20, 40, 60, seed=1))
    fresh = _random_sequences(30, 40, 60, seed=2)
    pool = pd.DataFrame(
        {
            "id": [f"p{i}" for i in range(33)],
            "sequence": fresh
            + [labelled[0], "AAAA" + labelled[1][5:30] + "CCCC", labelled[2][:19] + "W" * 30],
            "motifs": "",
        }
    )
    drop, counts = corpus.overlapping(pool["sequence"], labelled, 20)
    assert drop.tolist() == [False] * 30 + [True, True, False]  # a 19-residue share is kept
    assert counts == {"exact": 1, "window": 1}
    settings = types.SimpleNamespace(overlap_window=20, seed=0, heldout=0.2)
    table, report = corpus.build_corpus(pool, labelled, settings)
    assert len(table) == 31 and report["dropped"] == {"exact": 1, "window": 1}
    assert report["heldout"] == round(0.2 * 31) == (table["part"] == "heldout").sum()
    windows = set().union(*(corpus.windows(s, 20) for s in labelled))
    assert all(corpus.windows(s, 20).isdisjoint(windows) for s in table["sequence"])
    with pytest.raises(DataError, match="0 sequences left"):
        corpus.build_corpus(pool.iloc[30:32], labelled, settings)


def test_synthetic_pool_has_the_grammar_and_its_own_seed():
    settings = types.SimpleNamespace(
        size=50,
        seed=5,
        classes=[1, 2, 3],
        min_length=60,
        max_length=90,
        motifs_per_sequence=[2, 3],
        mutation_rate=0.15,
        decoy_rate=0.3,
        balance_composition=True,
    )
    pool = corpus.synthetic_pool(settings)
    assert len(pool) == 50 and pool["motifs"].str.len().gt(0).all()
    other = corpus.synthetic_pool(types.SimpleNamespace(**{**vars(settings), "seed": 6}))
    assert set(pool["sequence"]).isdisjoint(other["sequence"])


def test_user_corpus_from_fasta_without_ec_and_from_a_table(tmp_path):
    fasta = tmp_path / "corpus.fasta"
    fasta.write_text(">a\nMKTAYIAK\n>b some words\nmsthxx\n>c\nMSTNPKPQ\n")
    table = corpus.user_pool(str(fasta))
    assert table["id"].tolist() == ["a", "c"]  # b has non-standard residues (X)
    tsv = tmp_path / "corpus.tsv"
    tsv.write_text("Entry\tSequence\nP1\tMKTAYIAK\nP2\tMKKL\n")
    assert corpus.user_pool(str(tsv))["sequence"].tolist() == ["MKTAYIAK", "MKKL"]
    with pytest.raises(DataError, match="no Sequence column"):
        bad = tmp_path / "bad.tsv"
        bad.write_text("Entry\tSeq\nP1\tMKT\n")
        corpus.user_pool(str(bad))
    with pytest.raises(DataError, match="no such file"):
        corpus.user_pool(str(tmp_path / "missing.fasta"))


def test_pretraining_learns_a_grammar_and_writes_a_loadable_checkpoint(tmp_path):
    """Sequences made of a few fixed 8-residue words: masked residues are predictable from
    their word, so a trained model beats the unigram model by far; the checkpoint loads in
    fair-esm with its LM head and in finetune."""
    rng = np.random.default_rng(0)
    words = ["".join(rng.choice(RESIDUES, 8)) for _ in range(4)]
    sequences = ["M" + "".join(rng.choice(words, 6)) for _ in range(240)]
    table = pd.DataFrame(
        {
            "id": [f"s{i}" for i in range(240)],
            "sequence": sequences,
            "motifs": "",
            "part": ["heldout"] * 40 + ["train"] * 200,
        }
    )
    table.to_csv(tmp_path / "corpus.tsv", sep="\t", index=False)
    settings = types.SimpleNamespace(
        seed=0,
        num_layers=2,
        embed_dim=32,
        attention_heads=4,
        steps=300,
        batch_size=32,
        lr=1e-2,
        weight_decay=0.0,
        warmup_steps=10,
        max_length=1022,
        device="cpu",
    )
    output = types.SimpleNamespace(
        checkpoint=tmp_path / "pretrained.pt",
        history=tmp_path / "history.tsv",
        predictions=tmp_path / "predictions.tsv",
        info=tmp_path / "info.json",
    )
    pretrain.pretrain_step(
        types.SimpleNamespace(corpus=tmp_path / "corpus.tsv"), output, settings, {}
    )
    predictions = pd.read_csv(output.predictions, sep="\t", keep_default_na=False)
    frequencies = pretraining.unigram(table.loc[table["part"] == "train", "sequence"])
    metrics = pretraining.region_metrics(predictions, frequencies, n_boot=200)
    accuracy = metrics[(metrics["metric"] == "accuracy") & (metrics["region"] == "all")]
    model, unigram = accuracy.set_index("predictor")["value"][["model", "unigram"]]
    assert model > 0.6 > 0.2 > unigram
    assert (accuracy["ci_low"] <= accuracy["value"]).all()
    loaded = load_esm_checkpoint(output.checkpoint)
    fresh = build_tiny_esm2(2, 32, 4, seed=0)
    assert not torch.equal(loaded.lm_head.dense.weight, fresh.lm_head.dense.weight)
    history = pd.read_csv(output.history, sep="\t")
    assert history["loss"].iloc[-1] < history["loss"].iloc[0]
    from kneurons.model import train
    from kneurons.settings import FinetuneSettings

    split = pd.DataFrame(
        {
            "sequence": sequences[:36],
            "ec_class": [1, 2, 3] * 12,
            "split": ["train"] * 24 + ["validation"] * 6 + ["test"] * 6,
        }
    )
    finetune_settings = FinetuneSettings(
        epochs=1,
        lr=1e-3,
        head_lr=1e-3,
        weight_decay=0.0,
        batch_size=8,
        max_length=1022,
        device="cpu",
        class_weights="none",
        max_tokens=0,
        precision="fp32",
        train_layers=0,
    )
    classifier, classes, _ = train.finetune(
        str(output.checkpoint), split, finetune_settings, seed=0, device=torch.device("cpu")
    )
    assert classes == [1, 2, 3]
    # the fine-tuned backbone started from the pretrained weights, not a fresh init
    start = load_esm_checkpoint(output.checkpoint).embed_tokens.weight
    assert (classifier.esm.embed_tokens.weight - start).abs().max() < 0.05


def _hand_made_predictions() -> tuple[pd.DataFrame, pd.Series]:
    """Two sequences, two masked positions each (one background, one in a true motif)."""
    predictions = pd.DataFrame(
        {
            "sequence": [0, 0, 1, 1],
            "position": [0, 1, 0, 1],
            "target": ["A", "G", "A", "C"],
            "predicted": ["A", "G", "C", "C"],
            "log_p": np.log([0.5, 0.25, 0.5, 0.5]),
            "region": ["background", "true", "background", "true"],
        }
    )
    return predictions, pd.Series({"A": 0.5, "C": 0.25, "G": 0.25})


def test_region_metrics_on_a_hand_made_case():
    predictions, frequencies = _hand_made_predictions()
    table = pretraining.region_metrics(predictions, frequencies, n_boot=100).set_index(
        ["region", "predictor", "metric"]
    )
    assert table.loc[("all", "model", "accuracy"), "value"] == 0.75
    assert table.loc[("background", "model", "accuracy"), "value"] == 0.5
    assert table.loc[("true", "model", "accuracy"), "value"] == 1.0
    assert table.loc[("all", "unigram", "accuracy"), "value"] == 0.5  # always A
    assert table.loc[("true", "model", "perplexity"), "value"] == pytest.approx(
        np.exp(-(np.log(0.25) + np.log(0.5)) / 2)
    )
    assert table.loc[("true", "unigram", "perplexity"), "value"] == pytest.approx(4.0)
    assert table.loc[("true", "model", "accuracy"), "n_positions"] == 2


def test_composition_baseline_uses_only_the_unmasked_residues():
    predictions, frequencies = _hand_made_predictions()
    # unmasked: "AA" in sequence 0 (predicts A), "CC" in sequence 1 (predicts C)
    table = pretraining.region_metrics(
        predictions, frequencies, ["AGAA", "ACCC"], n_boot=100
    ).set_index(["region", "predictor", "metric"])
    assert table.loc[("all", "composition", "accuracy"), "value"] == 0.5
    assert table.loc[("background", "composition", "accuracy"), "value"] == 0.5
    p_g, p_c = 0.25 / 3, (2 + 0.25) / 3  # (count + prior) / (unmasked + 1)
    assert table.loc[("true", "composition", "perplexity"), "value"] == pytest.approx(
        np.exp(-(np.log(p_g) + np.log(p_c)) / 2)
    )
