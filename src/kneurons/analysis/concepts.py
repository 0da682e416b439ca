"""Which units detect which residue-level concepts: the concept F1 of InterPLM (Simon & Zou,
Nature Methods 2025), one implementation for every kind of unit (residual-stream dimensions,
MLP/attention neurons, sparse-autoencoder features).

A concept is a set of instances over residues: a planted motif of one type and kind (an instance
is a contiguous residue span), a UniProt feature, or an amino acid (the positive control: an
instance is one residue). Each unit's activations are divided by its maximum over a reference set
and binarised at each threshold (a residue fires when activation / max > t, so t = 0 means
"positive"). Then, per (threshold, unit, concept):

- precision: firing residues inside the concept / firing residues;
- recall: instances with at least one firing residue / instances;
- F1 = 2PR / (P + R).

Residues excluded from a concept (e.g. those of a decoy instance when scoring true instances of
the same motif) count neither as firing residues nor as instances. Per concept, the (unit,
threshold) with the best validation F1 is chosen and its test F1 reported, so that picking the
best of many units and thresholds does not inflate the score; a concept is covered by a kind of
unit when that test F1 exceeds 0.5.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from kneurons.data.motifs import parse_motifs
from kneurons.data.tables import DataError

THRESHOLDS: tuple[float, ...] = (0.0, 0.15, 0.5, 0.6, 0.8)
AMINO_ACIDS = "ACDEFGHIKLMNPQRSTVWY"
# A concept is covered by a kind of unit when its reported test F1 exceeds this.
COVERED_F1 = 0.5
REPORT_COLUMNS = [
    "concept",
    "unit",
    "threshold",
    "val_f1",
    "f1",
    "precision",
    "recall",
    "covered",
    "n_val_instances",
    "n_test_instances",
]


@dataclass(frozen=True)
class Concepts:
    """Concept labels over a set of residues (the concatenation of many sequences' residues).

    `inside[r, c]`: residue r lies in an instance of concept c; `instance[r, c]`: that instance's
    id within concept c (>= 0; -1 outside); `excluded[r, c]`: residue r is neither a positive nor
    a negative for concept c (an excluded residue inside an instance does not count for it)."""

    names: list[str]  # (concepts,)
    inside: np.ndarray  # (residues, concepts) bool
    instance: np.ndarray  # (residues, concepts) int
    excluded: np.ndarray  # (residues, concepts) bool

    def __post_init__(self):
        shape = (self.inside.shape[0], len(self.names))
        for field in ("inside", "instance", "excluded"):
            if getattr(self, field).shape != shape:
                raise ValueError(
                    f"Concepts.{field} has shape {getattr(self, field).shape}, expected {shape} "
                    "(residues, concepts)"
                )
        if not np.array_equal(self.instance >= 0, self.inside):
            raise ValueError("Concepts.instance must be >= 0 exactly where Concepts.inside")

    @property
    def n_residues(self) -> int:
        return self.inside.shape[0]


def _normalised(activations: np.ndarray, max_activation: np.ndarray) -> np.ndarray:
    """(residues, units) activation / max; -inf for units whose max is <= 0 (never fire)."""
    activations = np.asarray(activations)
    if not np.issubdtype(activations.dtype, np.floating):
        activations = activations.astype(np.float64)
    max_activation = np.asarray(max_activation, dtype=activations.dtype)
    if activations.ndim != 2 or max_activation.shape != (activations.shape[1],):
        raise ValueError(
            f"activations {activations.shape} must be (residues, units) and max_activation "
            f"{max_activation.shape} must be (units,)"
        )
    fires_ever = max_activation > 0
    safe_max = np.where(fires_ever, max_activation, 1)
    with np.errstate(invalid="ignore"):
        normalised = activations / safe_max
    normalised[:, ~fires_ever] = -np.inf
    return normalised


def _instance_maxima(normalised: np.ndarray, concepts: Concepts) -> tuple[np.ndarray, np.ndarray]:
    """Each instance's largest normalised activation (instances, units) over its counted residues
    (excluded ones left out: an instance all of whose residues are excluded is no instance), and
    each instance's concept (instances,). Instances are numbered by (concept, id)."""
    counted = concepts.inside & ~concepts.excluded  # (residues, concepts)
    rows, columns = np.nonzero(counted)  # (pairs,) each: a residue in an instance
    ids = concepts.instance[rows, columns].astype(np.int64)
    ids_per_concept = int(ids.max(initial=0)) + 1
    keys, instance_of_pair = np.unique(columns * ids_per_concept + ids, return_inverse=True)
    order = np.argsort(instance_of_pair, kind="stable")
    rows = rows[order]  # (pairs,) grouped by instance
    sizes = np.bincount(instance_of_pair, minlength=len(keys))  # (instances,)
    starts = np.cumsum(sizes) - sizes
    maxima = np.empty((len(keys), normalised.shape[1]), dtype=normalised.dtype)
    # Instances of one size at a time: (instances of that size, size, units) -> max over size
    # (much faster than np.maximum.reduceat over many short groups).
    for size in np.unique(sizes):
        of_size = np.flatnonzero(sizes == size)
        pairs = starts[of_size, None] + np.arange(size)  # (instances of that size, size)
        maxima[of_size] = normalised[rows[pairs]].max(axis=1)
    return maxima, keys // ids_per_concept


def concept_counts(
    activations: np.ndarray,
    max_activation: np.ndarray,
    concepts: Concepts,
    thresholds: Sequence[float] = THRESHOLDS,
) -> dict[str, np.ndarray]:
    """Precision, recall and F1 of every unit for every concept at every threshold.

    `activations`: (residues, units), the residues those of `concepts`; `max_activation`: (units,),
    each unit's maximum over a reference set. Returns "precision", "recall", "f1", each
    (thresholds, units, concepts), and "n_instances" (concepts,). Precision is 0 when no residue
    fires; F1 is 0 when precision + recall is 0; recall and F1 are NaN for a concept without
    instances."""
    normalised = _normalised(activations, max_activation)  # (residues, units)
    if normalised.shape[0] != concepts.n_residues:
        raise ValueError(
            f"activations cover {normalised.shape[0]} residues, concepts {concepts.n_residues}"
        )
    n_units, n_concepts = normalised.shape[1], len(concepts.names)
    positive = (concepts.inside & ~concepts.excluded).astype(np.float32)  # (residues, concepts)
    # Only columns with excluded residues need their own count of firing residues.
    with_excluded = np.flatnonzero(concepts.excluded.any(axis=0))
    excluded = concepts.excluded[:, with_excluded].astype(np.float32)  # (residues, some concepts)

    # Each instance's largest normalised activation: it is found at t when that exceeds t.
    instance_max, instance_concept = _instance_maxima(normalised, concepts)  # (instances, units)
    instance_of_concept = np.zeros((len(instance_concept), n_concepts), dtype=np.float32)
    instance_of_concept[np.arange(len(instance_concept)), instance_concept] = 1
    n_instances = np.bincount(instance_concept, minlength=n_concepts)  # (concepts,)

    shape = (len(thresholds), n_units, n_concepts)
    precision, recall = np.zeros(shape), np.zeros(shape)
    for i, threshold in enumerate(thresholds):
        fires = normalised > threshold  # (residues, units)
        fires_float = fires.astype(np.float32)
        # float32 sums of 0/1 are exact below 2**24 residues.
        true_positives = fires_float.T @ positive  # (units, concepts)
        fired = np.repeat(np.count_nonzero(fires, axis=0)[:, None], n_concepts, axis=1)
        fired[:, with_excluded] -= (fires_float.T @ excluded).astype(fired.dtype)
        found = (instance_max > threshold).astype(np.float32).T @ instance_of_concept
        precision[i] = np.divide(
            true_positives, fired, out=np.zeros_like(precision[i]), where=fired > 0
        )
        with np.errstate(invalid="ignore", divide="ignore"):
            recall[i] = np.where(n_instances > 0, found / n_instances, np.nan)
    total = precision + recall
    with np.errstate(invalid="ignore", divide="ignore"):
        f1 = np.where(total > 0, 2 * precision * recall / total, 0.0)
    f1[np.isnan(recall)] = np.nan
    return {"precision": precision, "recall": recall, "f1": f1, "n_instances": n_instances}


def select_and_report(
    validation: Mapping[str, np.ndarray],
    test: Mapping[str, np.ndarray],
    names: Sequence[str],
    thresholds: Sequence[float] = THRESHOLDS,
) -> pd.DataFrame:
    """Per concept, the (unit, threshold) with the highest validation F1 (ties: lowest unit, then
    lowest threshold) and that pair's test F1, precision and recall; covered when that test F1
    exceeds 0.5. `validation`, `test`: `concept_counts` results over the same units, concepts and
    thresholds. A concept without validation instances gets no unit (<NA>) and NaN throughout;
    one without test instances keeps its validation choice but NaN test scores; neither is
    covered. One row per concept, columns REPORT_COLUMNS."""
    shape = validation["f1"].shape
    if test["f1"].shape != shape or shape[0] != len(thresholds) or shape[2] != len(names):
        raise ValueError(
            f"validation F1 {shape} and test F1 {test['f1'].shape} must both be "
            f"(thresholds={len(thresholds)}, units, concepts={len(names)})"
        )
    rows = []
    for c, name in enumerate(names):
        n_val, n_test = int(validation["n_instances"][c]), int(test["n_instances"][c])
        row = dict(concept=name, unit=pd.NA, threshold=np.nan, val_f1=np.nan, f1=np.nan)
        row.update(precision=np.nan, recall=np.nan, covered=False)
        row.update(n_val_instances=n_val, n_test_instances=n_test)
        if n_val > 0 and shape[1] > 0:
            # (units, thresholds) row-major: argmax's first maximum is the lowest unit, then the
            # lowest threshold.
            by_unit = validation["f1"][:, :, c].T
            unit, t = np.unravel_index(int(np.argmax(by_unit)), by_unit.shape)
            row.update(
                unit=int(unit), threshold=float(thresholds[t]), val_f1=float(by_unit[unit, t])
            )
            if n_test > 0:
                f1 = float(test["f1"][t, unit, c])
                row.update(f1=f1, covered=f1 > COVERED_F1)
                row.update(
                    precision=float(test["precision"][t, unit, c]),
                    recall=float(test["recall"][t, unit, c]),
                )
        rows.append(row)
    report = pd.DataFrame(rows, columns=REPORT_COLUMNS)
    return report.astype({"unit": "Int64", "covered": bool})


def concept_scores(
    val_activations: np.ndarray,
    test_activations: np.ndarray,
    max_activation: np.ndarray,
    val_concepts: Concepts,
    test_concepts: Concepts,
    thresholds: Sequence[float] = THRESHOLDS,
) -> pd.DataFrame:
    """`concept_counts` on the validation and on the test residues, then `select_and_report`:
    per concept, the best unit and threshold on validation and its test scores."""
    if list(val_concepts.names) != list(test_concepts.names):
        raise ValueError("validation and test concepts must have the same names, in order")
    validation = concept_counts(val_activations, max_activation, val_concepts, thresholds)
    test = concept_counts(test_activations, max_activation, test_concepts, thresholds)
    return select_and_report(validation, test, list(val_concepts.names), thresholds)


def _merged_spans(spans: list[tuple[int, int]]) -> list[tuple[int, int]]:
    """Half-open spans with those sharing a residue merged (one instance)."""
    merged: list[tuple[int, int]] = []
    for start, end in sorted(spans):
        if merged and start < merged[-1][1]:
            merged[-1] = (merged[-1][0], max(merged[-1][1], end))
        else:
            merged.append((start, end))
    return merged


def residue_concepts(
    sequences: Sequence[str],
    motifs: Sequence[str | list[dict]],
    motif_names: Sequence[str],
    kinds: Sequence[str] = ("true", "mutated", "decoy"),
    amino_acids: str = AMINO_ACIDS,
) -> Concepts:
    """Concepts over the concatenated residues of `sequences` (residue i of sequence s is
    `sequences[s][i]`): for each motif name m of `motif_names` and kind k of `kinds`, "m/k", whose
    instances are the `motifs` entries of that name and kind (residues in m's entries of any other
    kind are excluded); then "aa/X" for each letter X of `amino_acids`, whose instances are the
    single residues X. `motifs`: each sequence's `motifs` column entry (string, or its
    `parse_motifs` list); entries of other names or kinds are ignored. Entries of one concept that
    share a residue form one instance; an instance never spans two sequences."""
    if len(motifs) != len(sequences):
        raise ValueError(f"{len(motifs)} motifs entries for {len(sequences)} sequences")
    motif_concepts = [(m, k) for m in motif_names for k in kinds]
    names = [f"{m}/{k}" for m, k in motif_concepts] + [f"aa/{a}" for a in amino_acids]
    n_residues = sum(len(s) for s in sequences)
    n_motif = len(motif_concepts)
    instance = np.full((n_residues, len(names)), -1, dtype=np.int64)
    other_kind = np.zeros((n_residues, n_motif), dtype=bool)
    column = {concept: j for j, concept in enumerate(motif_concepts)}
    next_id = np.zeros(n_motif, dtype=np.int64)
    offset = 0
    for sequence, entries in zip(sequences, motifs, strict=True):
        length = len(sequence)
        if isinstance(entries, str):
            entries = parse_motifs(entries, length)
        spans: dict[int, list[tuple[int, int]]] = {}
        for entry in entries:
            if entry["end"] > length:
                raise DataError(f"motif entry {entry} ends beyond its sequence (length {length})")
            start, end = offset + entry["start"], offset + entry["end"]
            for (m, k), j in column.items():
                if m != entry["name"]:
                    continue
                if k == entry["kind"]:
                    spans.setdefault(j, []).append((start, end))
                else:
                    other_kind[start:end, j] = True
        for j, concept_spans in spans.items():
            for start, end in _merged_spans(concept_spans):
                instance[start:end, j] = next_id[j]
                next_id[j] += 1
        offset += length

    # Amino acids: instance ids number each letter's residues in order.
    letters = np.frombuffer("".join(sequences).encode("ascii"), dtype=np.uint8)
    for i, letter in enumerate(amino_acids):
        is_letter = letters == ord(letter)
        instance[is_letter, n_motif + i] = np.arange(int(is_letter.sum()))

    inside = instance >= 0
    excluded = np.zeros_like(inside)
    excluded[:, :n_motif] = other_kind & ~inside[:, :n_motif]
    return Concepts(names=names, inside=inside, instance=instance, excluded=excluded)
