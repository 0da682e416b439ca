import numpy as np
import pandas as pd
import pytest

from kneurons.analysis.concepts import (
    AMINO_ACIDS,
    REPORT_COLUMNS,
    THRESHOLDS,
    Concepts,
    concept_counts,
    concept_scores,
    residue_concepts,
    select_and_report,
)
from kneurons.data.tables import DataError


def make_concepts(n_residues, instances, excluded=(), names=None):
    """Concepts from, per concept, a list of residue-index lists (one per instance, ids 0, 1, ...)
    and optionally, per concept, the excluded residue indices."""
    n = len(instances)
    instance = np.full((n_residues, n), -1)
    for c, concept_instances in enumerate(instances):
        for i, residues in enumerate(concept_instances):
            instance[residues, c] = i
    excluded_array = np.zeros((n_residues, n), dtype=bool)
    for c, residues in enumerate(excluded):
        excluded_array[list(residues), c] = True
    names = names or [f"c{c}" for c in range(n)]
    return Concepts(names, instance >= 0, instance, excluded_array)


# --- concept_counts ---------------------------------------------------------------------------


def test_hand_made_precision_recall_f1_at_each_threshold():
    # 12 residues; concept 0: instances {1, 2, 3} and {7, 8, 9}; concept 1: residues 5 and 11.
    concepts = make_concepts(12, [[[1, 2, 3], [7, 8, 9]], [[5], [11]]])
    activations = np.zeros((12, 3))
    activations[[1, 2, 4, 7], 0] = [0.9, 0.3, 0.1, 0.55]  # max 1
    activations[:, 1] = -0.5
    activations[[0, 5, 11], 1] = [0.2, 1.0, 0.7]  # max 1; negatives never fire
    activations[[3, 8, 10], 2] = [1.0, 2.0, 0.4]  # max 2: normalised 0.5 (not > 0.5), 1, 0.2
    counts = concept_counts(activations, np.array([1.0, 1.0, 2.0]), concepts)

    def f1(p, r):
        return 2 * p * r / (p + r) if p + r else 0.0

    # expected[unit][concept]: (precision, recall) at thresholds 0, 0.15, 0.5, 0.6, 0.8
    expected = {
        (0, 0): [(3 / 4, 1), (1, 1), (1, 1), (1, 1 / 2), (1, 1 / 2)],
        (0, 1): [(0, 0)] * 5,
        (1, 0): [(0, 0)] * 5,
        (1, 1): [(2 / 3, 1), (2 / 3, 1), (1, 1), (1, 1), (1, 1 / 2)],
        (2, 0): [(2 / 3, 1), (2 / 3, 1), (1, 1 / 2), (1, 1 / 2), (1, 1 / 2)],
        (2, 1): [(0, 0)] * 5,
    }
    for (unit, concept), values in expected.items():
        precision, recall = np.array(values).T
        np.testing.assert_allclose(counts["precision"][:, unit, concept], precision, rtol=1e-12)
        np.testing.assert_allclose(counts["recall"][:, unit, concept], recall, rtol=1e-12)
        want_f1 = [f1(p, r) for p, r in values]
        np.testing.assert_allclose(counts["f1"][:, unit, concept], want_f1, rtol=1e-12)
    assert counts["f1"][0, 0, 0] == pytest.approx(6 / 7)
    assert counts["f1"].shape == (len(THRESHOLDS), 3, 2)
    np.testing.assert_array_equal(counts["n_instances"], [2, 2])


def test_recall_is_over_instances_and_precision_over_residues():
    # One instance of 5 residues (0-4); the unit fires on residue 2 (inside) and 7 (outside).
    concepts = make_concepts(10, [[[0, 1, 2, 3, 4]]])
    activations = np.zeros((10, 1))
    activations[[2, 7], 0] = 1.0
    counts = concept_counts(activations, np.ones(1), concepts)
    np.testing.assert_allclose(counts["recall"][:, 0, 0], 1.0)  # residue recall would be 1/5
    np.testing.assert_allclose(counts["precision"][:, 0, 0], 0.5)
    np.testing.assert_allclose(counts["f1"][:, 0, 0], 2 / 3)
    assert counts["n_instances"][0] == 1


def test_excluded_residues_count_neither_way():
    # Instances {0, 1} and {6, 7}; residues 3, 4 excluded, and residue 7 (inside) too.
    concepts = make_concepts(10, [[[0, 1], [6, 7]]], excluded=[[3, 4, 7]])
    activations = np.zeros((10, 3))
    activations[[0, 3, 4], 0] = 1.0  # fires inside and on excluded residues only
    activations[[3, 4], 1] = 1.0  # fires on excluded residues only
    activations[[0, 7], 2] = 1.0  # 7 is excluded: instance {6, 7} is not found through it
    counts = concept_counts(activations, np.ones(3), concepts)
    np.testing.assert_allclose(counts["precision"][:, 0, 0], 1.0)  # not 1/3
    np.testing.assert_allclose(counts["recall"][:, 0, 0], 0.5)
    np.testing.assert_allclose(counts["precision"][:, 1, 0], 0.0)
    np.testing.assert_allclose(counts["recall"][:, 1, 0], 0.0)
    np.testing.assert_allclose(counts["precision"][:, 2, 0], 1.0)
    np.testing.assert_allclose(counts["recall"][:, 2, 0], 0.5)
    # An instance all of whose residues are excluded is no instance.
    gone = make_concepts(10, [[[0, 1], [6, 7]]], excluded=[[6, 7]])
    assert concept_counts(activations, np.ones(3), gone)["n_instances"][0] == 1


def test_units_whose_max_is_not_positive_never_fire():
    concepts = make_concepts(6, [[[0], [1], [2]]])
    activations = np.zeros((6, 3))
    activations[:3] = 1.0  # every unit is positive exactly on the concept
    counts = concept_counts(activations, np.array([0.0, -1.0, 1.0]), concepts)
    for unit in (0, 1):
        for key in ("precision", "recall", "f1"):
            np.testing.assert_array_equal(counts[key][:, unit, 0], 0.0)
    np.testing.assert_array_equal(counts["f1"][:, 2, 0], 1.0)


def test_vectorised_counts_match_a_naive_loop():
    rng = np.random.default_rng(7)
    n_residues, n_units, n_concepts = 300, 7, 4
    instance = np.full((n_residues, n_concepts), -1)
    for c in range(n_concepts):
        ids = iter(rng.permutation(1000))  # arbitrary, non-consecutive ids
        r = int(rng.integers(0, 10))
        while r < n_residues:
            length = int(rng.integers(1, 7))
            instance[r : r + length, c] = next(ids)
            r += length + int(rng.integers(1, 25))
    inside = instance >= 0
    excluded = rng.random((n_residues, n_concepts)) < 0.1
    concepts = Concepts([f"c{c}" for c in range(n_concepts)], inside, instance, excluded)
    activations = rng.normal(size=(n_residues, n_units))
    max_activation = np.abs(rng.normal(size=n_units)) * 2
    max_activation[3] = 0.0
    max_activation[5] = -0.5
    counts = concept_counts(activations, max_activation, concepts)

    shape = (len(THRESHOLDS), n_units, n_concepts)
    naive = {key: np.zeros(shape) for key in ("precision", "recall", "f1")}
    for t, threshold in enumerate(THRESHOLDS):
        for u in range(n_units):
            for c in range(n_concepts):
                true_positives = fired = 0
                instances, found = set(), set()
                for r in range(n_residues):
                    if excluded[r, c]:
                        continue
                    m = max_activation[u]
                    fires = m > 0 and activations[r, u] / m > threshold
                    fired += fires
                    if inside[r, c]:
                        instances.add(instance[r, c])
                        true_positives += fires
                        if fires:
                            found.add(instance[r, c])
                p = true_positives / fired if fired else 0.0
                rec = len(found) / len(instances)
                naive["precision"][t, u, c] = p
                naive["recall"][t, u, c] = rec
                naive["f1"][t, u, c] = 2 * p * rec / (p + rec) if p + rec else 0.0
    for key, values in naive.items():
        np.testing.assert_allclose(counts[key], values, rtol=1e-12, atol=0, err_msg=key)
    want_instances = [len(set(instance[inside[:, c] & ~excluded[:, c], c])) for c in range(4)]
    np.testing.assert_array_equal(counts["n_instances"], want_instances)
    assert (counts["f1"] > 0).any() and (counts["f1"] < 1).any()  # not a degenerate draw


# --- selection on validation, report on test ---------------------------------------------------


def test_threshold_is_chosen_on_validation_and_f1_reported_on_test():
    concepts = make_concepts(6, [[[0], [1]]])
    # Validation: best at t >= 0.5 (F1 1; 2/3 at t = 0, 0.15); the lowest such is 0.5.
    val = np.array([[1.0], [0.9], [0.3], [0.3], [0.0], [0.0]])
    # Test: F1 1 at t = 0, 0.15, but 2/3 at 0.5 (residue 1 no longer fires).
    test = np.array([[1.0], [0.3], [0.0], [0.0], [0.0], [0.0]])
    report = concept_scores(val, test, np.ones(1), concepts, concepts)
    row = report.iloc[0]
    assert row["threshold"] == 0.5
    assert row["val_f1"] == 1.0
    assert row["f1"] == pytest.approx(2 / 3)  # not the best test F1, 1.0
    assert row["precision"] == 1.0 and row["recall"] == 0.5
    assert bool(row["covered"])


def test_unit_is_chosen_on_validation():
    concepts = make_concepts(10, [[[0], [1], [2]]])
    val = np.zeros((10, 2))
    val[[0, 1, 2], 0] = 1.0  # unit 0: perfect on validation
    val[[0, 1, 2, 3], 1] = 1.0  # unit 1: F1 6/7 on validation
    test = np.zeros((10, 2))
    test[[0, 3, 4, 5, 6], 0] = 1.0  # unit 0 on test: P 1/5, R 1/3, F1 1/4
    test[[0, 1, 2], 1] = 1.0  # unit 1 on test: perfect
    report = concept_scores(val, test, np.ones(2), concepts, concepts)
    row = report.iloc[0]
    assert row["unit"] == 0
    assert row["val_f1"] == 1.0
    assert row["f1"] == pytest.approx(1 / 4)
    assert not row["covered"]


def test_ties_go_to_the_lowest_unit_then_the_lowest_threshold():
    concepts = make_concepts(4, [[[0]]])
    activations = np.zeros((4, 3))
    activations[0, 1:] = 1.0  # units 1 and 2 are perfect at every threshold
    report = concept_scores(activations, activations, np.ones(3), concepts, concepts)
    assert report.iloc[0]["unit"] == 1
    assert report.iloc[0]["threshold"] == THRESHOLDS[0]


def test_concepts_without_test_or_validation_instances_are_nan_and_not_covered():
    # Concept 0 in both splits; concept 1 only in validation; concept 2 only in test.
    val_concepts = make_concepts(4, [[[0]], [[1]], []])
    test_concepts = make_concepts(4, [[[0]], [], [[2]]])
    activations = np.eye(4)[:, :3]  # unit j fires on residue j
    report = concept_scores(activations, activations, np.ones(3), val_concepts, test_concepts)
    assert list(report.columns) == REPORT_COLUMNS
    assert list(report["concept"]) == ["c0", "c1", "c2"]
    assert report["covered"].tolist() == [True, False, False]
    assert report["n_val_instances"].tolist() == [1, 1, 0]
    assert report["n_test_instances"].tolist() == [1, 0, 1]
    no_test, no_val = report.iloc[1], report.iloc[2]
    assert no_test["unit"] == 1 and no_test["val_f1"] == 1.0  # the validation choice stays
    for column in ("f1", "precision", "recall"):
        assert np.isnan(no_test[column]) and np.isnan(no_val[column])
    assert pd.isna(no_val["unit"]) and np.isnan(no_val["threshold"])
    assert np.isnan(no_val["val_f1"])


def test_select_and_report_rejects_mismatched_shapes():
    concepts = make_concepts(4, [[[0]]])
    counts = concept_counts(np.ones((4, 2)), np.ones(2), concepts)
    with pytest.raises(ValueError, match="concepts=2"):
        select_and_report(counts, counts, ["a", "b"])


# --- residue_concepts ---------------------------------------------------------------------------


def test_residue_concepts_from_motif_strings():
    sequences = ["MKAGAGAAGKLMHEAAHWYA", "AMKAAGKAAG"]  # 20 + 10 residues
    motifs = [
        "rossmann_nad_binding:2:8:true;zincin_hexxh:10:15:decoy",
        "rossmann_nad_binding:1:4:mutated;rossmann_nad_binding:5:9:true;p450_heme_cys:0:3:true",
    ]
    concepts = residue_concepts(sequences, motifs, ["rossmann_nad_binding", "zincin_hexxh"])
    kinds = ("true", "mutated", "decoy")
    motif_names = [f"{m}/{k}" for m in ("rossmann_nad_binding", "zincin_hexxh") for k in kinds]
    assert concepts.names == motif_names + [f"aa/{a}" for a in AMINO_ACIDS]
    assert concepts.inside.shape == (30, 26)
    column = {name: j for j, name in enumerate(concepts.names)}

    def ids(name):
        return concepts.instance[:, column[name]].tolist()

    def where(array, name):
        return np.flatnonzero(array[:, column[name]]).tolist()

    outside = [-1]
    # Second sequence starts at residue 20: its 5:9 is 25..28, its 1:4 is 21..23.
    assert ids("rossmann_nad_binding/true") == (
        outside * 2 + [0] * 6 + outside * 17 + [1] * 4 + outside
    )
    assert where(concepts.inside, "rossmann_nad_binding/mutated") == [21, 22, 23]
    assert ids("rossmann_nad_binding/mutated")[21:24] == [0, 0, 0]
    assert where(concepts.excluded, "rossmann_nad_binding/true") == [21, 22, 23]
    assert where(concepts.excluded, "rossmann_nad_binding/mutated") == [
        *range(2, 8),
        *range(25, 29),
    ]
    assert where(concepts.inside, "rossmann_nad_binding/decoy") == []
    assert where(concepts.excluded, "rossmann_nad_binding/decoy") == [
        *range(2, 8),
        *range(21, 24),
        *range(25, 29),
    ]
    assert where(concepts.inside, "zincin_hexxh/decoy") == [10, 11, 12, 13, 14]
    assert where(concepts.inside, "zincin_hexxh/true") == []
    assert where(concepts.excluded, "zincin_hexxh/true") == [10, 11, 12, 13, 14]
    # Amino acids: single-residue instances numbered in order; nothing excluded.
    joined = "".join(sequences)
    a_positions = [i for i, letter in enumerate(joined) if letter == "A"]
    assert where(concepts.inside, "aa/A") == a_positions
    assert [ids("aa/A")[i] for i in a_positions] == list(range(len(a_positions)))
    assert where(concepts.inside, "aa/H") == [12, 16]
    assert where(concepts.inside, "aa/C") == []
    assert not concepts.excluded[:, len(motif_names) :].any()
    assert concepts.inside[:, len(motif_names) :].sum() == 30  # every residue is one letter


def test_residue_concepts_real_data_features_and_overlaps():
    sequences = ["ACDEFGHIKL", "MNPQRSTVWY"]
    motifs = [
        [
            {"name": "binding", "start": 1, "end": 4, "kind": "feature"},
            {"name": "binding", "start": 3, "end": 6, "kind": "feature"},  # overlaps: merged
            {"name": "binding", "start": 8, "end": 10, "kind": "feature"},
        ],
        [{"name": "binding", "start": 0, "end": 2, "kind": "feature"}],
    ]
    concepts = residue_concepts(sequences, motifs, ["binding"], kinds=("feature",))
    assert concepts.names[0] == "binding/feature"
    # The instance ending a sequence and the one starting the next are two instances.
    assert concepts.instance[:, 0].tolist() == [-1, 0, 0, 0, 0, 0, -1, -1, 1, 1, 2, 2] + [-1] * 8
    assert not concepts.excluded.any()
    with pytest.raises(DataError, match="beyond"):
        residue_concepts(["ACD"], ["binding:1:5:feature"], ["binding"], kinds=("feature",))


def test_amino_acid_control_one_hot_unit_is_covered():
    rng = np.random.default_rng(0)
    letters = np.array(list(AMINO_ACIDS))
    val_sequences = ["".join(rng.choice(letters, 40)) for _ in range(5)]
    test_sequences = ["".join(rng.choice(letters, 40)) for _ in range(5)]

    def one_hot_and_noise(sequences):
        joined = np.array(list("".join(sequences)))
        noise = rng.normal(size=len(joined))
        return np.stack([(joined == "A").astype(float), noise], axis=1)  # (residues, 2)

    val_concepts = residue_concepts(val_sequences, [""] * 5, [])
    test_concepts = residue_concepts(test_sequences, [""] * 5, [])
    report = concept_scores(
        one_hot_and_noise(val_sequences),
        one_hot_and_noise(test_sequences),
        np.array([1.0, 3.0]),
        val_concepts,
        test_concepts,
    ).set_index("concept")
    assert report.loc["aa/A", "unit"] == 0
    assert report.loc["aa/A", "f1"] == 1.0
    assert report.loc["aa/A", "covered"]
    assert not report.drop(index="aa/A")["covered"].any()
