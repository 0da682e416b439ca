"""Sequence-blind baselines for the EC classification task (no torch).

A fine-tuned model is only interesting where it beats what residue composition alone predicts:
`composition_baseline` fits a multinomial logistic regression on the 20 residue frequencies plus
length; `majority_baseline` always answers the most common training class.
Both report per-test-sequence correctness (0/1, in the test rows' order) so a caller can
bootstrap confidence intervals.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import pandas as pd

from kneurons.analysis.stats import bootstrap_balanced_ci, bootstrap_ci
from kneurons.data.tables import SPLITS, STANDARD_RESIDUES, DataError, read_labelled
from kneurons.io import write_json
from kneurons.settings import BaselinesSettings

log = logging.getLogger(__name__)

# Small grid of inverse regularisation strengths; chosen by validation accuracy.
C_GRID = (0.01, 0.1, 1.0, 10.0, 100.0)

_INDEX = {r: i for i, r in enumerate(STANDARD_RESIDUES)}


def composition_features(sequences) -> np.ndarray:
    """(N, 21) float array: frequencies of the 20 standard residues, then log(length).

    Residues outside the 20 standard ones count towards the length but not any frequency.
    """
    sequences = list(sequences)
    out = np.zeros((len(sequences), len(STANDARD_RESIDUES) + 1))
    for row, seq in enumerate(sequences):
        seq = str(seq).upper()
        if not seq:
            raise DataError(f"empty sequence at row {row + 1}: composition is undefined")
        for residue in seq:
            col = _INDEX.get(residue)
            if col is not None:
                out[row, col] += 1
        out[row, :-1] /= len(seq)
        # log: lengths span orders of magnitude in real data
        out[row, -1] = math.log(len(seq))
    return out


def _parts(split_table: pd.DataFrame) -> dict[str, pd.DataFrame]:
    missing = [c for c in ("sequence", "ec_class", "split") if c not in split_table.columns]
    if missing:
        raise DataError(f"split table lacks column(s) {missing}")
    parts = {s: split_table[split_table["split"] == s] for s in SPLITS}
    empty = [s for s, part in parts.items() if part.empty]
    if empty:
        raise DataError(f"split table has no {empty[0]} rows")
    return parts


def _macro_f1(y_true: np.ndarray, y_pred: np.ndarray, classes) -> float:
    from sklearn.metrics import f1_score

    return float(f1_score(y_true, y_pred, labels=list(classes), average="macro", zero_division=0))


def _balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    # mean recall over the classes present in y_true
    return float(np.mean([np.mean(y_pred[y_true == c] == c) for c in np.unique(y_true)]))


def composition_baseline(split_table: pd.DataFrame, classes=None, seed: int = 0) -> dict:
    """Logistic regression on `composition_features`: train on 'train', pick C on 'validation'.

    A Pipeline of StandardScaler and an L2 multinomial LogisticRegression is fitted for each C
    in `C_GRID`; the model of the first C with the best validation accuracy is scored on
    'test' (not refitted). `classes` (default: the classes present) is the label set of
    macro-F1; a row of another class is an error.
    Returns {accuracy, macro_f1, balanced_accuracy, C, val_accuracy, n_test, correct}, where
    `correct` lists 0/1 per test row in the table's order.
    """
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    parts = _parts(split_table)
    present = {int(c) for c in split_table["ec_class"].unique()}
    classes = sorted(present if classes is None else {int(c) for c in classes})
    extra = sorted(present - set(classes))
    if extra:
        raise DataError(f"split table has class(es) {extra} not in classes {classes}")
    x = {s: composition_features(p["sequence"]) for s, p in parts.items()}
    y = {s: p["ec_class"].to_numpy(dtype=int) for s, p in parts.items()}
    if len(np.unique(y["train"])) < 2:
        raise DataError("split table's train rows hold fewer than 2 classes")
    best = None
    for c in C_GRID:
        pipe = make_pipeline(
            StandardScaler(), LogisticRegression(C=c, max_iter=5000, random_state=seed)
        )
        pipe.fit(x["train"], y["train"])
        val_acc = float(np.mean(pipe.predict(x["validation"]) == y["validation"]))
        if best is None or val_acc > best[1]:  # strict: first best on ties
            best = (c, val_acc, pipe)
    c, val_acc, pipe = best
    pred = pipe.predict(x["test"])
    correct = (pred == y["test"]).astype(int)
    return {
        "accuracy": float(correct.mean()),
        "macro_f1": _macro_f1(y["test"], pred, classes),
        "balanced_accuracy": _balanced_accuracy(y["test"], pred),
        "C": c,
        "val_accuracy": val_acc,
        "n_test": len(correct),
        "correct": correct.tolist(),
    }


def majority_baseline(split_table: pd.DataFrame) -> dict:
    """Always answer the most common train class (smallest class on ties), scored on 'test'.

    Returns {majority_class, accuracy, balanced_accuracy, macro_f1, n_test, correct} with
    `correct` 0/1 per test row; balanced accuracy is 1 / (classes in test) when the majority
    class is among them.
    """
    parts = _parts(split_table)
    counts = parts["train"]["ec_class"].astype(int).value_counts()
    majority = int(min(counts.index[counts == counts.max()]))
    truth = parts["test"]["ec_class"].to_numpy(dtype=int)
    correct = (truth == majority).astype(int)
    return {
        "majority_class": majority,
        "accuracy": float(correct.mean()),
        "balanced_accuracy": _balanced_accuracy(truth, np.full_like(truth, majority)),
        "macro_f1": _macro_f1(
            truth, np.full_like(truth, majority), sorted(set(truth) | {majority})
        ),
        "n_test": len(correct),
        "correct": correct.tolist(),
    }


def baselines(input, output, settings: BaselinesSettings, wildcards) -> None:
    """The baselines step: majority class and composition on one split's test sequences, with
    95% bootstrap intervals (plain and class-balanced)."""
    split_table = read_labelled(input.split)
    test = split_table[split_table["split"] == "test"]
    result = {}
    for name, fit in (("majority", majority_baseline), ("composition", composition_baseline)):
        if name == "majority":
            metrics = fit(split_table)
        else:
            metrics = fit(split_table, sorted(split_table["ec_class"].unique()), seed=0)
        correct = np.asarray(metrics.pop("correct"), dtype=float)
        low, high = bootstrap_ci(correct, n_boot=settings.bootstrap, seed=0)
        b_low, b_high = bootstrap_balanced_ci(
            correct, test["ec_class"].to_numpy(), n_boot=settings.bootstrap, seed=0
        )
        result[name] = {
            **metrics,
            "ci_low": low,
            "ci_high": high,
            "balanced_ci_low": b_low,
            "balanced_ci_high": b_high,
        }
        log.info(
            "%s baseline: test accuracy %.3f [%.3f, %.3f]", name, metrics["accuracy"], low, high
        )
    result["n_test"] = len(test)
    result["class_counts"] = {
        str(c): int(n) for c, n in test["ec_class"].value_counts().sort_index().items()
    }
    result["n_classes"] = int(split_table["ec_class"].nunique())
    write_json(result, output.baselines)
