"""The labelled sequence table and its steps: columns, EC labels, filtering, capping and the
stratified train/validation/test split; `DataError` for bad input.

Every table has exactly the columns of `COLUMNS`:
  id (str), sequence (str, uppercase), ec_numbers (str, EC numbers joined by ";"),
  ec_class (int, top-level EC class; 0 = not assigned yet), motifs (str, "name:start:end:kind"
  joined by ";", 0-based half-open positions: planted motifs of synthetic data; for real data
  UniProt features or a user table's motif column, else "").

Real data flows read_table / read_fasta (`data.readers`) -> assign_classes -> filter_sequences
-> stratified_split; each step returns the dropped-row reasons as a Counter so the workflow
can log them.
"""

from __future__ import annotations

import math
import os
import re
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from kneurons.errors import UserError

COLUMNS = ["id", "sequence", "ec_numbers", "ec_class", "motifs"]
SPLITS = ("train", "validation", "test")


STANDARD_RESIDUES = "ACDEFGHIKLMNPQRSTVWY"
_EC_RE = re.compile(r"(\d+)\.(\d+|-)\.(\d+|-)\.(n?\d+|-)")


class DataError(UserError, ValueError):
    """Bad input data; the message is one line naming the file, the record and the problem."""


def as_table(columns: dict) -> pd.DataFrame:
    df = pd.DataFrame(columns, columns=COLUMNS)
    return df.astype({"id": str, "sequence": str, "ec_numbers": str, "ec_class": "int64"}).astype(
        {"motifs": str}
    )


def ec_top_class(ec: str) -> int:
    """Top-level class of one EC number: "3.4.21.4", "3.4.-.-", "3.-.-.-", "3.4.21.n1" -> 3."""
    text = str(ec).strip()
    m = _EC_RE.fullmatch(text)
    # After a "-" every lower level must be "-" too ("3.-.4.1" is not an EC number).
    if (
        m is None
        or "-" in m.groups()
        and any(g != "-" for g in m.groups()[m.groups().index("-") :])
    ):
        raise DataError(
            f"malformed EC number {text!r}: expected four dot-separated fields like "
            "3.4.21.4, 3.4.-.- or 3.4.21.n1"
        )
    top = int(m.group(1))
    if not 1 <= top <= 7:
        raise DataError(f"malformed EC number {text!r}: top-level class must be 1-7")
    return top


def _split_ec(ec_numbers: str) -> list[str]:
    return [e.strip() for e in str(ec_numbers).split(";") if e.strip()]


def classes_of(ec_numbers: str) -> set[int]:
    """Top-level classes of a ";"-separated EC list ("1.1.1.1; 2.7.1.1" -> {1, 2}); "" -> set()."""
    return {ec_top_class(e) for e in _split_ec(ec_numbers)}


def normalise_ec(raw: str, where: str) -> str:
    """Validate an EC list and rejoin it as "a;b" (no spaces); errors name `where`."""
    ecs = _split_ec(raw)
    for e in ecs:
        try:
            ec_top_class(e)
        except DataError as err:
            raise DataError(f"{where}: {err}") from None
    return ";".join(ecs)


def prepare_table(
    table: pd.DataFrame,
    classes,
    min_length: int,
    max_length: int,
    *,
    nonstandard: str,
    source: str,
    labelled: bool,
) -> tuple[pd.DataFrame, Counter]:
    """The sequences a run uses: for unlabelled input (UniProt, tables) one row per (id,
    sequence) (an entry fetched for two classes comes twice) labelled by `assign_classes`;
    then `filter_sequences`. Returns (table, dropped reasons)."""
    dropped: Counter = Counter()
    if not labelled:
        table = table.drop_duplicates(subset=["id", "sequence"]).reset_index(drop=True)
        table, dropped_classes = assign_classes(table, classes)
        dropped.update(dropped_classes)
    table, dropped_filter = filter_sequences(
        table, min_length, max_length, nonstandard=nonstandard, source=source
    )
    dropped.update(dropped_filter)
    return table, dropped


def read_labelled(path: str | os.PathLike) -> pd.DataFrame:
    """Read back a table written (with io.write_tsv) from one of this module's results."""
    try:
        df = pd.read_csv(path, sep="\t", dtype=str, keep_default_na=False)
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file is empty") from None
    missing = [c for c in COLUMNS if c not in df.columns]
    if missing:
        raise DataError(f"{path}: missing column(s) {missing}; columns present: {list(df.columns)}")
    bad = df.index[~df["ec_class"].str.fullmatch(r"\d+")]
    if len(bad):
        raise DataError(f"{path}: row {bad[0] + 1} (id {df['id'][bad[0]]}): ec_class is not an int")
    df["ec_class"] = df["ec_class"].astype("int64")
    return df


def assign_classes(df: pd.DataFrame, classes) -> tuple[pd.DataFrame, Counter]:
    """Set ec_class from ec_numbers; drop entries spanning several top-level classes and
    entries whose class is not in `classes`."""
    wanted = {int(c) for c in classes}
    dropped: Counter = Counter()
    keep, labels = [], []
    for i, ec in enumerate(df["ec_numbers"]):
        found = classes_of(ec)
        if len(found) > 1:
            dropped["multiple top-level EC classes"] += 1
        elif not found:
            dropped["no EC number"] += 1
        elif (c := found.pop()) not in wanted:
            dropped["EC class not selected"] += 1
        else:
            keep.append(i)
            labels.append(c)
    out = df.iloc[keep].reset_index(drop=True).copy()
    out["ec_class"] = pd.Series(labels, dtype="int64")
    return out[COLUMNS], dropped


def filter_sequences(
    df: pd.DataFrame,
    min_length: int,
    max_length: int,
    nonstandard: str = "drop",
    source: str = "input",
) -> tuple[pd.DataFrame, Counter]:
    """Drop (or, with nonstandard="error", reject) sequences with residues outside the 20
    standard ones, then those outside [min_length, max_length], then exact duplicate sequences
    (first kept). Raises DataError if nothing is left."""
    if nonstandard not in ("drop", "error"):
        raise ValueError(f"nonstandard must be 'drop' or 'error', got {nonstandard!r}")
    if not 1 <= min_length <= max_length:
        raise ValueError(f"need 1 <= min_length <= max_length, got {min_length}, {max_length}")
    bad_residue = re.compile(f"[^{STANDARD_RESIDUES}]")
    dropped: Counter = Counter()
    seen: set[str] = set()
    keep = []
    for i, (rid, seq) in enumerate(zip(df["id"], df["sequence"], strict=True)):
        if m := bad_residue.search(seq):
            if nonstandard == "error":
                raise DataError(
                    f"{source}: id {rid}: non-standard residue {m.group()!r} at position "
                    f"{m.start() + 1}"
                )
            dropped["non-standard residue"] += 1
        elif len(seq) < min_length:
            dropped[f"shorter than {min_length}"] += 1
        elif len(seq) > max_length:
            dropped[f"longer than {max_length}"] += 1
        elif seq in seen:
            dropped["duplicate sequence"] += 1
        else:
            seen.add(seq)
            keep.append(i)
    if not keep:
        raise DataError(
            f"{source}: no sequences left after filtering ({summarize_dropped(dropped, sep='; ')})"
        )
    return df.iloc[keep].reset_index(drop=True), dropped


def check_split_input(df: pd.DataFrame, fractions: dict | None) -> dict:
    """The fractions (default 0.7/0.15/0.15) after checking them and that ids are unique."""
    fractions = dict(fractions or {"train": 0.7, "validation": 0.15, "test": 0.15})
    if set(fractions) != set(SPLITS):
        raise ValueError(f"fractions must have exactly the keys {SPLITS}, got {sorted(fractions)}")
    if any(f <= 0 for f in fractions.values()) or abs(sum(fractions.values()) - 1) > 1e-6:
        raise ValueError(f"fractions must be positive and sum to 1, got {fractions}")
    if df["id"].duplicated().any():
        raise DataError(f"duplicate id {df['id'][df['id'].duplicated()].iloc[0]} in split input")
    return fractions


def split_sizes(n: int, fractions: dict, cls: int) -> dict[str, int]:
    """Sizes of the three splits for a class of n sequences: validation and test get
    round-half-up of n * fraction but at least 1, train the rest (at least 1, else DataError)."""
    sizes = {s: max(1, math.floor(n * fractions[s] + 0.5)) for s in ("validation", "test")}
    if n - sum(sizes.values()) < 1:
        raise DataError(f"class {cls} has {n} sequences; the split needs at least {len(SPLITS)}")
    return {"train": n - sum(sizes.values()), **sizes}


def cap_per_class(df: pd.DataFrame, per_class: int, seed: int) -> tuple[pd.DataFrame, Counter]:
    """At most `per_class` rows of each ec_class (0 = no cap), like the UniProt download's
    sample: ids sorted, then numpy.default_rng([seed, class]) picks which to keep, so the input
    row order does not matter. Kept rows stay in input order. Returns (table, dropped reasons)."""
    dropped: Counter = Counter()
    if per_class <= 0:
        return df, dropped
    keep = []
    for cls in sorted(df["ec_class"].unique()):
        members = df.index[df["ec_class"] == cls]
        if len(members) <= per_class:
            keep.extend(members)
            continue
        ordered = members[np.argsort(df.loc[members, "id"].to_numpy(), kind="stable")]
        rng = np.random.default_rng([seed, int(cls)])
        keep.extend(ordered[rng.choice(len(ordered), size=per_class, replace=False)])
        dropped[f"over {per_class} per class (seeded sample)"] += len(members) - per_class
    return df.loc[sorted(keep)].reset_index(drop=True), dropped


def stratified_split(
    df: pd.DataFrame, fractions: dict | None = None, seed: int = 0
) -> pd.DataFrame:
    """Add a `split` column (train/validation/test), stratified by ec_class.

    Per class the ids are sorted, then shuffled with the seed (so input row order does not
    matter); validation/test sizes are round-half-up of n * fraction but at least 1, and the
    remainder goes to train. Output rows keep the input order (index reset).
    """
    fractions = check_split_input(df, fractions)
    split = pd.Series("", index=df.index, dtype=object)
    for cls in sorted(df["ec_class"].unique()):
        members = df.index[df["ec_class"] == cls]
        n = len(members)
        sizes = split_sizes(n, fractions, cls)
        ordered = members[np.argsort(df.loc[members, "id"].to_numpy(), kind="stable")]
        shuffled = ordered[np.random.default_rng([seed, int(cls)]).permutation(n)]
        n_val = sizes["validation"]
        split[shuffled[:n_val]] = "validation"
        split[shuffled[n_val : n_val + sizes["test"]]] = "test"
        split[shuffled[n_val + sizes["test"] :]] = "train"
    out = df.copy()
    out["split"] = split.astype(str)
    return out.reset_index(drop=True)


def summarize_dropped(dropped: dict, sep: str = "\n") -> str:
    """One "dropped N: reason" line per reason, most frequent first; "dropped nothing" if empty."""
    items = sorted(((n, r) for r, n in dropped.items() if n), key=lambda x: (-x[0], x[1]))
    if not items:
        return "dropped nothing"
    return sep.join(f"dropped {n}: {r}" for n, r in items)


@dataclass
class Loaded:
    """What a data source's `load` returns (`kneurons.data.download`): the raw table, the
    name used in error messages, what it dropped (reason -> count) and what the download
    report should say about the source."""

    table: pd.DataFrame
    name: str
    dropped: Counter = field(default_factory=Counter)
    info: dict = field(default_factory=dict)
