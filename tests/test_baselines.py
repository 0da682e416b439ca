import numpy as np
import pandas as pd
import pytest

from kneurons.analysis.baselines import (
    composition_baseline,
    composition_features,
    majority_baseline,
)
from kneurons.data.tables import STANDARD_RESIDUES, DataError, stratified_split

RESIDUES = np.array(list(STANDARD_RESIDUES))


def _random_seq(rng, length, p):
    return "".join(rng.choice(RESIDUES, size=length, p=p))


def _toy_table(enriched: dict[int, str], n_per_class=60, seed=0):
    """Sequences per class: uniform residues, the class's enriched residue 5x as frequent."""
    rng = np.random.default_rng(seed)
    rows = []
    for cls, residue in enriched.items():
        p = np.full(20, 1.0)
        if residue:
            p[STANDARD_RESIDUES.index(residue)] = 5.0
        p /= p.sum()
        for i in range(n_per_class):
            seq = _random_seq(rng, int(rng.integers(80, 120)), p)
            rows.append({"id": f"c{cls}_{i}", "sequence": seq, "ec_class": cls})
    table = pd.DataFrame(rows).assign(ec_numbers="", motifs="")
    return stratified_split(table, {"train": 0.6, "validation": 0.2, "test": 0.2}, seed=seed)


def test_composition_features():
    x = composition_features(["AAW", "ACDEFGHIKLMNPQRSTVWY"])
    assert x.shape == (2, 21)
    assert x[0, STANDARD_RESIDUES.index("A")] == pytest.approx(2 / 3)
    assert x[0, STANDARD_RESIDUES.index("W")] == pytest.approx(1 / 3)
    np.testing.assert_allclose(x[1, :20], 1 / 20)
    np.testing.assert_allclose(x[:, 20], np.log([3, 20]))
    # non-standard residues count towards length only
    assert composition_features(["AX"])[0, 0] == pytest.approx(0.5)
    with pytest.raises(DataError, match="empty sequence"):
        composition_features(["A", ""])


def test_planted_composition_is_found():
    split = _toy_table({1: "W", 2: "C", 3: "H"})
    result = composition_baseline(split, (1, 2, 3))
    assert result["accuracy"] >= 0.95
    assert result["macro_f1"] >= 0.95
    assert result["balanced_accuracy"] >= 0.95
    test = split[split["split"] == "test"]
    assert len(result["correct"]) == len(test) == result["n_test"]
    assert set(result["correct"]) <= {0, 1}
    assert np.mean(result["correct"]) == result["accuracy"]


def test_shared_composition_is_near_chance():
    split = _toy_table({1: "", 2: "", 3: ""}, n_per_class=100)
    result = composition_baseline(split, (1, 2, 3))
    assert result["accuracy"] <= 0.55  # chance 1/3; 60 test rows


def test_composition_baseline_is_deterministic():
    split = _toy_table({1: "W", 2: "", 3: ""}, seed=2)
    a = composition_baseline(split, (1, 2, 3), seed=0)
    b = composition_baseline(split.sample(frac=1, random_state=1), (1, 2, 3), seed=0)
    assert a == composition_baseline(split, (1, 2, 3), seed=0)
    # row order changes `correct`'s order only
    assert b["accuracy"] == pytest.approx(a["accuracy"])
    assert b["C"] == a["C"]


def test_composition_baseline_rejects_bad_tables():
    split = _toy_table({1: "W", 2: "C"})
    with pytest.raises(DataError, match=r"class\(es\) \[2\] not in classes \[1\]"):
        composition_baseline(split, (1,))
    with pytest.raises(DataError, match="no validation rows"):
        composition_baseline(split[split["split"] != "validation"], (1, 2))
    with pytest.raises(DataError, match="lacks column"):
        composition_baseline(split.drop(columns="split"), (1, 2))


def test_majority_baseline():
    table = pd.DataFrame(
        {
            "sequence": ["A"] * 9,
            "ec_class": [1, 2, 2, 3, 3, 1, 2, 3, 2],
            "split": ["train"] * 5 + ["validation", "test", "test", "test"],
        }
    )
    # train: 1 once, 2 twice, 3 twice -> tie broken towards the smaller class
    result = majority_baseline(table)
    assert result["majority_class"] == 2
    assert result["correct"] == [1, 0, 1]  # test classes 2, 3, 2 in row order
    assert result["accuracy"] == pytest.approx(2 / 3)
    assert result["n_test"] == 3


def test_majority_baseline_scores_like_a_constant_classifier():
    table = pd.DataFrame(
        {
            "id": [f"s{i}" for i in range(10)],
            "sequence": ["MKV"] * 10,
            "ec_class": [1, 1, 1, 2, 2, 1, 2, 1, 2, 3],
            "split": ["train"] * 5 + ["validation"] + ["test"] * 4,
        }
    )
    result = majority_baseline(table)  # train: 1 x3, 2 x2 -> always class 1
    assert result["majority_class"] == 1 and result["correct"] == [0, 1, 0, 0]
    assert result["accuracy"] == 0.25
    assert result["balanced_accuracy"] == pytest.approx(1 / 3)  # recall 1, 0, 0 over 3 classes
    # F1 of class 1: precision 1/4, recall 1 -> 0.4; classes 2 and 3: 0
    assert result["macro_f1"] == pytest.approx(0.4 / 3)
