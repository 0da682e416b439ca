"""Sparse-autoencoder features against neurons: what each kind of unit detects, and whether the
features that detect a class's motifs are what the classifier uses.

Per seed, on the fine-tuned model and its sparse autoencoders (`model.sae.sae_step`, one per
layer), `features_step` computes:
- InterPLM's concept metric (`analysis.concepts`) for three kinds of unit per layer - the
  residual-stream dimensions, every module unit (q/k/v/out_proj, fc1, fc2 outputs) and the SAE
  features - with threshold and unit chosen on validation residues and F1 reported on test
  residues;
- each SAE's quality on test residues (variance explained, L0, dead fraction, the classifier's
  accuracy with the reconstruction spliced in);
- the causal test: per class, the SAE features that best detect its true motifs are zeroed in
  the spliced model (the reconstruction error added back, so nothing zeroed is the model
  itself), against `sae.random_sets` random feature sets of the same per-layer counts and
  against the class's knowledge neurons (suppressed, x0), on the knowledge step's test
  sequences.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping, Sequence
from contextlib import AbstractContextManager

import numpy as np
import pandas as pd
import torch

from kneurons.analysis.concepts import concept_scores, residue_concepts
from kneurons.analysis.knowledge import (
    EFFECT_QUANTITIES,
    _p_true_and_correct,
    class_subset,
    scaled,
    token_activations,
    units_by_class,
)
from kneurons.data.motifs import MOTIF_KINDS, MOTIFS, parse_motifs
from kneurons.data.tables import read_labelled
from kneurons.io import write_tsv
from kneurons.model.esm import EnzymeClassifier, linear, load_classifier, pick_device
from kneurons.model.sae import load_sae, residual_stream, sae_metrics, spliced
from kneurons.model.train import predict_proba_models, token_batches
from kneurons.model.units import MODULES, UNIT_COLUMNS
from kneurons.progress import model_progress
from kneurons.settings import FeatureSettings

log = logging.getLogger(__name__)

UNIT_KINDS = ("residual", "neuron", "sae")  # residual-stream dimension, module unit, SAE feature
CONCEPT_COLUMNS = ["seed", "kind", "layer", "concept", "group", "module", "unit", "threshold"]
CONCEPT_COLUMNS += ["val_f1", "f1", "precision", "recall", "covered"]
CONCEPT_COLUMNS += ["n_val_instances", "n_test_instances", "n_units"]
QUALITY_COLUMNS = ["seed", "layer", "n_features", "k", "variance_explained", "l0"]
QUALITY_COLUMNS += ["dead_fraction", "accuracy_full", "accuracy_spliced", "p_true_full"]
QUALITY_COLUMNS += ["p_true_spliced", "n_test_sequences"]
EFFECT_COLUMNS = ["intervention", "set", "draw", "quantity", "neuron_class", "sequence_class"]
EFFECT_COLUMNS += ["effect", "n_units"]
# sets of the causal test: the class's motif features, random features, its knowledge neurons
FEATURES, RANDOM_FEATURES, NEURONS = "features", "random_features", "neurons"


# --- activations ---------------------------------------------------------------------------


def layer_units(model: EnzymeClassifier, layer: int) -> pd.DataFrame:
    """Every module unit of `layer` (UNIT_COLUMNS), module by module."""
    return pd.DataFrame(
        [
            (layer, module, unit)
            for module in MODULES
            for unit in range(linear(model.esm, layer, module).out_features)
        ],
        columns=UNIT_COLUMNS,
    )


def neuron_activations(
    model: EnzymeClassifier, sequences: Sequence[str], units: pd.DataFrame, max_length
) -> np.ndarray:
    """(residues, units) float32: each module unit's output at every residue."""
    tokens = token_activations(model, sequences, units, max_length)
    return np.concatenate([t[1:-1] for t in tokens]).astype(np.float32)


@torch.no_grad()
def sae_activations(sae, residual: np.ndarray, batch_size: int = 8192) -> np.ndarray:
    """(residues, n_features) float32: the SAE's feature activations."""
    out = [
        sae.encode(torch.from_numpy(residual[i : i + batch_size])).numpy()
        for i in range(0, len(residual), batch_size)
    ]
    return np.concatenate(out).astype(np.float32)


# --- concepts ------------------------------------------------------------------------------


def concept_kinds(tables: Sequence[pd.DataFrame]) -> tuple[list[str], list[str]]:
    """(motif names, kinds): every annotated motif name and kind of `tables`' motifs columns,
    kinds in MOTIF_KINDS order."""
    entries = [m for t in tables for s in t["motifs"] for m in parse_motifs(str(s))]
    names = sorted({m["name"] for m in entries})
    kinds = [k for k in MOTIF_KINDS if k in {m["kind"] for m in entries}]
    return names, kinds


def concept_group(concept: str) -> str:
    """`aa` for the amino-acid control, else the motif kind (`name/kind`)."""
    return "aa" if concept.startswith("aa/") else concept.split("/")[-1]


def unit_concepts(
    val_acts: np.ndarray,
    test_acts: np.ndarray,
    val_concepts,
    test_concepts,
    unit_labels: pd.DataFrame,
) -> pd.DataFrame:
    """One kind's concept table: the metric, with each chosen unit's module and index."""
    table = concept_scores(val_acts, test_acts, val_acts.max(axis=0), val_concepts, test_concepts)
    chosen = table["unit"].to_numpy()
    valid = ~pd.isna(chosen)
    picked = np.where(valid, chosen, 0).astype(int)
    table["module"] = np.where(valid, unit_labels["module"].to_numpy()[picked], "")
    table["unit"] = np.where(valid, unit_labels["unit"].to_numpy()[picked], -1)
    table["n_units"] = len(unit_labels)
    return table


def concept_table(
    model: EnzymeClassifier,
    saes: Mapping[int, object],
    validation: pd.DataFrame,
    test: pd.DataFrame,
    max_length: int | None,
    seed: int,
) -> pd.DataFrame:
    """Per kind of unit, layer and concept (CONCEPT_COLUMNS): the best unit on validation and
    its test F1 (InterPLM's metric)."""
    names, kinds = concept_kinds([validation, test])
    concepts = {
        part: residue_concepts(list(t["sequence"]), list(t["motifs"]), names, kinds)
        for part, t in (("validation", validation), ("test", test))
    }
    layers = sorted(saes)
    residual = {
        part: residual_stream(model, list(t["sequence"]), layers, max_length)
        for part, t in (("validation", validation), ("test", test))
    }
    frames = []
    for layer in layers:
        units = layer_units(model, layer)
        dims = residual["validation"][layer].shape[1]
        kinds_of_units = {
            "residual": (
                lambda part, layer=layer: residual[part][layer],
                pd.DataFrame({"module": "residual", "unit": np.arange(dims)}),
            ),
            "neuron": (
                lambda part, units=units: neuron_activations(
                    model, list(_part(part, validation, test)["sequence"]), units, max_length
                ),
                units,
            ),
            "sae": (
                lambda part, layer=layer: sae_activations(saes[layer], residual[part][layer]),
                pd.DataFrame({"module": "sae", "unit": np.arange(saes[layer].n_features)}),
            ),
        }
        for kind, (activations, labels) in kinds_of_units.items():
            table = unit_concepts(
                activations("validation"),
                activations("test"),
                concepts["validation"],
                concepts["test"],
                labels,
            )
            frames.append(table.assign(seed=seed, kind=kind, layer=layer))
        log.info("layer %d: concepts scored for %s", layer, ", ".join(kinds_of_units))
    table = pd.concat(frames, ignore_index=True)
    table["group"] = table["concept"].map(concept_group)
    return table[CONCEPT_COLUMNS]


def _part(part: str, validation: pd.DataFrame, test: pd.DataFrame) -> pd.DataFrame:
    return validation if part == "validation" else test


# --- quality and the causal test -------------------------------------------------------------


def _probabilities(
    model: EnzymeClassifier,
    batches,
    contexts: Sequence[Callable[[], AbstractContextManager]],
    desc: str,
) -> list[torch.Tensor]:
    """Class probabilities (N, C) of the model inside each context, one after another."""
    on_pass = model_progress(len(contexts), desc)
    out = []
    for done, context in enumerate(contexts, start=1):
        with context():
            out.append(predict_proba_models(model, {}, 1, batches)[0])
        on_pass(done)
    return out


def quality_table(
    model: EnzymeClassifier,
    saes: Mapping[int, object],
    test: pd.DataFrame,
    classes: Sequence,
    max_length: int | None,
    seed: int,
) -> pd.DataFrame:
    """Per layer (QUALITY_COLUMNS): the SAE on the test residues, and the classifier on the test
    sequences with that layer's reconstruction in place of its residual stream."""
    layers = sorted(saes)
    residual = residual_stream(model, list(test["sequence"]), layers, max_length)
    batches = token_batches(list(test["sequence"]), batch_size=64, max_length=max_length)
    position = {c: k for k, c in enumerate(classes)}
    y_true = np.array([position[c] for c in test["ec_class"]])
    full = _p_true_and_correct(predict_proba_models(model, {}, 1, batches)[0], y_true)
    contexts = [
        lambda layer=layer: spliced(model, {layer: saes[layer]}, keep_error=False)
        for layer in layers
    ]
    rows = []
    for layer, probs in zip(
        layers, _probabilities(model, batches, contexts, "splices"), strict=True
    ):
        metrics = sae_metrics(saes[layer], torch.from_numpy(residual[layer]))
        p_true, correct = _p_true_and_correct(probs, y_true)
        rows.append(
            {
                "seed": seed,
                "layer": layer,
                "n_features": metrics["n_features"],
                "k": saes[layer].k,
                "variance_explained": metrics["variance_explained"],
                "l0": metrics["l0"],
                "dead_fraction": metrics["dead_fraction"],
                "accuracy_full": full[1].mean(),
                "accuracy_spliced": correct.mean(),
                "p_true_full": full[0].mean(),
                "p_true_spliced": p_true.mean(),
                "n_test_sequences": len(test),
            }
        )
    return pd.DataFrame(rows, columns=QUALITY_COLUMNS)


def motif_features(concepts: pd.DataFrame, classes: Sequence) -> dict:
    """{class: {layer: feature indices}}: per class, for each of its planted motif types, the
    SAE feature (any layer) with the best validation F1 for the motif's true instances."""
    sae = concepts[(concepts["kind"] == "sae") & (concepts["group"] == "true")]
    sae = sae.dropna(subset=["val_f1"])
    chosen: dict = {}
    for concept, rows in sae.groupby("concept", sort=True):
        motif = concept.split("/")[0]
        if motif not in MOTIFS or MOTIFS[motif][0] not in set(classes):
            continue
        best = rows.sort_values(["val_f1", "layer"], ascending=[False, True]).iloc[0]
        per_layer = chosen.setdefault(MOTIFS[motif][0], {})
        per_layer.setdefault(int(best["layer"]), set()).add(int(best["unit"]))
    return {
        c: {layer: sorted(f) for layer, f in sorted(layers.items())} for c, layers in chosen.items()
    }


def random_features(
    chosen: Mapping[int, Sequence[int]], n_features: Mapping[int, int], rng: np.random.Generator
) -> dict[int, list[int]]:
    """A random feature set with `chosen`'s count in every layer."""
    return {
        layer: sorted(rng.choice(n_features[layer], size=len(f), replace=False).tolist())
        for layer, f in chosen.items()
    }


def _zeroed(model, saes, chosen: Mapping[int, Sequence[int]]):
    zero = {layer: torch.tensor(f, dtype=torch.long) for layer, f in chosen.items()}
    return lambda: spliced(model, {layer: saes[layer] for layer in zero}, zero)


def causal_effects(
    model: EnzymeClassifier,
    saes: Mapping[int, object],
    test: pd.DataFrame,
    classes: Sequence,
    concepts: pd.DataFrame,
    neurons: pd.DataFrame | None,
    *,
    random_sets: int,
    seed: int,
    max_length: int | None,
) -> pd.DataFrame:
    """Long table (EFFECT_COLUMNS) of the class x class effects of zeroing each class's motif
    features, `random_sets` random feature sets with the same per-layer counts, and (with
    `neurons`) suppressing the class's knowledge neurons; effect = change against the
    unmodified model in p(true class) (resp. accuracy), mean over the test sequences of
    sequence_class."""
    chosen = motif_features(concepts, classes)
    n_features = {layer: sae.n_features for layer, sae in saes.items()}
    rng = np.random.default_rng([seed, 6])
    runs = []  # (set, draw, class, n_units, context)
    for c, features in chosen.items():
        n_units = sum(len(f) for f in features.values())
        runs.append((FEATURES, 0, c, n_units, _zeroed(model, saes, features)))
        for draw in range(random_sets):
            picked = random_features(features, n_features, rng)
            runs.append((RANDOM_FEATURES, draw, c, n_units, _zeroed(model, saes, picked)))
    if neurons is not None and not neurons.empty:
        for c, units in units_by_class(neurons).items():
            runs.append((NEURONS, 0, c, len(units), lambda units=units: scaled(model, units, 0.0)))
    batches = token_batches(list(test["sequence"]), batch_size=64, max_length=max_length)
    position = {c: k for k, c in enumerate(classes)}
    y_true = np.array([position[c] for c in test["ec_class"]])
    seq_classes = np.asarray(test["ec_class"])
    base = _p_true_and_correct(predict_proba_models(model, {}, 1, batches)[0], y_true)
    probs = _probabilities(model, batches, [run[-1] for run in runs], "interventions")
    rows = []
    for (set_name, draw, c, n_units, _), run_probs in zip(runs, probs, strict=True):
        after = _p_true_and_correct(run_probs, y_true)
        for quantity, a, b in zip(EFFECT_QUANTITIES, after, base, strict=True):
            change = pd.Series(a - b).groupby(seq_classes).mean().reindex(list(classes))
            rows += [
                ("suppress", set_name, draw, quantity, c, sc, float(v), n_units)
                for sc, v in change.items()
            ]
    return pd.DataFrame(rows, columns=EFFECT_COLUMNS)


def features_step(input, output, settings: FeatureSettings, wildcards) -> None:
    """The features step: one seed's concept table, SAE quality and causal test."""
    seed = int(wildcards["seed"])
    device = pick_device(settings.device)
    classifier, meta = load_classifier(input.model, device)
    classes, max_length = meta["classes"], meta["max_length"]
    saes = {}
    for path in input.saes:
        sae, info = load_sae(path)
        saes[int(info["layer"])] = sae.to(device)
    split_table = read_labelled(input.split)
    validation = split_table[split_table["split"] == "validation"]
    test = split_table[split_table["split"] == "test"]
    concepts = concept_table(classifier, saes, validation, test, max_length, seed)
    quality = quality_table(classifier, saes, test, classes, max_length, seed)
    neurons = pd.read_csv(input.neurons, sep="\t") if getattr(input, "neurons", None) else None
    effects = causal_effects(
        classifier,
        saes,
        class_subset(test, settings.test_sequences, seed),
        classes,
        concepts,
        neurons,
        random_sets=settings.random_sets,
        seed=seed,
        max_length=max_length,
    )
    write_tsv(concepts, output.concepts)
    write_tsv(quality, output.quality)
    write_tsv(effects, output.effects)
