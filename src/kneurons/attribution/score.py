"""The score steps: one method's scores of one layer or all layers, and the merge of a
per-layer method's layers.

The method is imported by name (`attribution.methods.<name>`), not through the registry, so a
rule's code hash holds only its own method's module.
"""

from __future__ import annotations

import importlib
import logging

import numpy as np
import pandas as pd

from kneurons import io
from kneurons.attribution.engine import scores_frame, scoring_subset
from kneurons.attribution.methods.base import ScoringInputs, ScoringMethod
from kneurons.data.tables import read_labelled
from kneurons.model.esm import autocast, load_classifier, pick_device
from kneurons.settings import NoSettings, ScoringSettings

log = logging.getLogger(__name__)


def load_method(name: str) -> ScoringMethod:
    """The METHOD of module `kneurons.attribution.methods.<name>`."""
    return importlib.import_module(f"kneurons.attribution.methods.{name}").METHOD


def score(input, output, settings: ScoringSettings, wildcards) -> None:
    """Scores of one method: one layer (per-layer methods) or all; with them, for methods
    that give them, each scoring sequence's own values (`per_sequence` output)."""
    method = load_method(wildcards["method"])
    seed = int(wildcards["seed"])
    classifier, meta = load_classifier(input.model, pick_device(settings.device or "cpu"))
    sequences, labels = [], []
    if method.needs_model_pass:
        sequences, labels = scoring_subset(
            read_labelled(input.split), meta["classes"], settings.max_sequences, seed
        )
    if "layer" in wildcards:
        layers = [int(wildcards["layer"])]
    else:
        layers = list(range(classifier.num_layers))
    log.info(
        "%s scores of layer(s) %s on %d validation sequences",
        method.name,
        ", ".join(map(str, layers)),
        len(sequences),
    )
    # per-sequence values (for the per-class knowledge neurons) come from the same passes;
    # the scores are their mean
    per_sequence = method.per_sequence and settings.granularity == "unit"
    inputs = ScoringInputs(
        sequences,
        labels,
        layers,
        settings.modules,
        seed,
        meta["max_length"],
        {**settings.method, "granularity": settings.granularity, "per_sequence": per_sequence},
    )
    # bf16 is opt-in (default fp32): on the tiny model it moved IG scores by 0.4-0.5% (relative
    # L2) and 1% of the top-10% kept set; on large models and long sequences it is untested.
    precision = settings.precision or "fp32"
    if precision != "fp32":
        log.info("scoring in %s autocast", precision)
    device = next(classifier.parameters()).device
    with autocast(device, precision):
        scores = method.score(classifier, inputs)
    rows = np.zeros((len(sequences), 0), dtype=np.float32)
    if per_sequence:
        rows = np.concatenate([v.float().numpy() for v in scores.values()], axis=1)
        scores = {key: values.mean(0) for key, values in scores.items()}
    write_array(rows, output.per_sequence)
    io.write_tsv(scores_frame(scores), output.scores)


def merge_layers(input, output, settings: NoSettings, wildcards) -> None:
    """Concatenate per-layer score tables (and their per-sequence arrays) in layer order."""
    write_array(
        np.concatenate([np.load(path) for path in input.per_sequence], axis=1),
        output.per_sequence,
    )
    io.write_tsv(
        pd.concat([pd.read_csv(p, sep="\t") for p in input.layers], ignore_index=True),
        output.scores,
    )


def write_array(values: np.ndarray, path) -> None:
    """Save `values` as .npy, atomically."""
    with io.atomic_path(path) as tmp, open(tmp, "wb") as handle:
        np.save(handle, values)
