"""The labelled sequence table: synthetic enzyme-like data or real data read from TSV/CSV/FASTA.

Every table has exactly the columns of `COLUMNS`:
  id (str), sequence (str, uppercase), ec_numbers (str, EC numbers joined by ";"),
  ec_class (int, top-level EC class; 0 = not assigned yet), motifs (str, "name:start:end:kind"
  joined by ";", 0-based half-open positions: planted motifs of synthetic data; for real data
  UniProt features or a user table's motif column, else "").

Real data flows read_table / read_fasta -> assign_classes -> filter_sequences -> stratified_split;
each step returns the dropped-row reasons as a Counter so the workflow can log them.
"""

from __future__ import annotations

import csv
import functools
import gzip
import itertools
import math
import os
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from kneurons.errors import UserError

COLUMNS = ["id", "sequence", "ec_numbers", "ec_class", "motifs"]
SPLITS = ("train", "validation", "test")
STANDARD_RESIDUES = "ACDEFGHIKLMNPQRSTVWY"

# UniProtKB/Swiss-Prot amino-acid composition (percent, release statistics); normalised where used.
BACKGROUND_FREQUENCIES = {
    "A": 8.25, "R": 5.53, "N": 4.06, "D": 5.45, "C": 1.37,
    "Q": 3.93, "E": 6.75, "G": 7.07, "H": 2.27, "I": 5.96,
    "L": 9.66, "K": 5.84, "M": 2.42, "F": 3.86, "P": 4.70,
    "S": 6.56, "T": 5.34, "W": 1.08, "Y": 2.92, "V": 6.87,
}  # fmt: skip

# Simplified PROSITE-style signatures: `x` = any residue, `[ST]` = one of S/T, a letter = itself.
MOTIFS: dict[str, tuple[int, str]] = {
    # 1 oxidoreductases
    "rossmann_nad_binding": (1, "GxGxxG"),
    "p450_heme_cys": (1, "FxxGxRxCxG"),
    "zinc_adh": (1, "GHExxGxxxxxGxV"),
    # 2 transferases
    "p_loop_walker_a": (2, "GxxxxGK[ST]"),
    "kinase_hrd_loop": (2, "HRDLKxxN"),
    # 3 hydrolases
    "ser_hydrolase_nucleophile": (3, "GxSxG"),
    "zincin_hexxh": (3, "HExxH"),
    "trypsin_his": (3, "[LIVM][ST]A[STAG]HC"),
    # 4 lyases
    "fumarase_class_ii": (4, "GSSxMPxKxN"),
    "enolase": (4, "KxNQ[LIVM]G[ST][LIVM][ST][DE]"),
    # 5 isomerases
    "tim_active_site": (5, "[AVG]YEP[LIVM]W[SA]IG[TS]G"),
    "cyclophilin": (5, "FHR[LIVMN][LIVMFA]xxF[LIVM]xQ[AG]G"),
    "pdi_thioredoxin": (5, "WCGHCK"),
    # 6 ligases
    "aars_class_i_high": (6, "HxGH"),
    "aars_class_i_kmsks": (6, "KMSKS"),
}

# One representative EC number per class for synthetic rows.
SYNTHETIC_EC = {
    1: "1.1.1.1",
    2: "2.7.11.1",
    3: "3.4.21.4",
    4: "4.2.1.2",
    5: "5.3.1.1",
    6: "6.1.1.1",
}

# true/mutated/decoy: planted in synthetic data; feature: annotated in real data (a UniProt
# sequence feature or a user's own annotation).
MOTIF_KINDS = ("true", "mutated", "decoy", "feature")
FASTA_SUFFIXES = (".fasta", ".fa", ".faa", ".fas")

_EC_RE = re.compile(r"(\d+)\.(\d+|-)\.(\d+|-)\.(n?\d+|-)")


class DataError(UserError, ValueError):
    """Bad input data; the message is one line naming the file, the record and the problem."""


def _as_table(columns: dict) -> pd.DataFrame:
    df = pd.DataFrame(columns, columns=COLUMNS)
    return df.astype({"id": str, "sequence": str, "ec_numbers": str, "ec_class": "int64"}).astype(
        {"motifs": str}
    )


# ---------------------------------------------------------------- motif patterns


def _parse_pattern(pattern: str) -> list[str | None]:
    """Tokens of a motif: None for `x`, else the string of allowed residues."""
    tokens: list[str | None] = []
    i = 0
    while i < len(pattern):
        ch = pattern[i]
        if ch == "x":
            tokens.append(None)
            i += 1
        elif ch == "[":
            j = pattern.index("]", i)
            choice = pattern[i + 1 : j]
            if not choice or set(choice) - set(STANDARD_RESIDUES):
                raise ValueError(f"bad choice {choice!r} in motif pattern {pattern!r}")
            tokens.append(choice)
            i = j + 1
        elif ch in STANDARD_RESIDUES:
            tokens.append(ch)
            i += 1
        else:
            raise ValueError(f"bad character {ch!r} in motif pattern {pattern!r}")
    return tokens


def _pattern_regex(tokens: list[str | None]) -> str:
    return "".join("." if t is None else t if len(t) == 1 else f"[{t}]" for t in tokens)


_TOKENS = {name: _parse_pattern(pattern) for name, (_, pattern) in MOTIFS.items()}
# Lookahead so overlapping occurrences are all found.
_REGEX = {name: re.compile(f"(?=({_pattern_regex(t)}))") for name, t in _TOKENS.items()}
MOTIF_REGEX = {name: _pattern_regex(t) for name, t in _TOKENS.items()}


def find_motifs(sequence: str) -> list[tuple[str, int]]:
    """All (name, start) occurrences of any MOTIFS pattern in `sequence`, overlapping included."""
    return [(name, m.start()) for name, rx in _REGEX.items() for m in rx.finditer(sequence)]


def parse_motifs(s: str, length: int | None = None) -> list[dict]:
    """Parse the `motifs` column: "name:start:end:kind;..." -> [{name, start, end, kind}, ...].

    Positions are 0-based, half-open ([start, end) of the sequence string); with `length`, an
    entry must also lie within a sequence of that length. Raises DataError naming the entry.
    """
    out = []
    for entry in str(s).split(";"):
        if not entry.strip():
            continue
        parts = entry.strip().split(":")
        if len(parts) != 4 or not parts[0] or not parts[1].isdigit() or not parts[2].isdigit():
            raise DataError(f"malformed motif entry {entry!r}: expected name:start:end:kind")
        name, start, end, kind = parts[0], int(parts[1]), int(parts[2]), parts[3]
        if kind not in MOTIF_KINDS:
            raise DataError(f"malformed motif entry {entry!r}: kind must be one of {MOTIF_KINDS}")
        if end <= start:
            raise DataError(f"malformed motif entry {entry!r}: end must be greater than start")
        if length is not None and end > length:
            raise DataError(
                f"motif entry {entry!r} ends at {end}, beyond the sequence (length {length})"
            )
        out.append({"name": name, "start": start, "end": end, "kind": kind})
    return out


def format_motifs(entries) -> str:
    """The `motifs` column text of parsed entries (dicts as `parse_motifs` returns)."""
    return ";".join(f"{e['name']}:{e['start']}:{e['end']}:{e['kind']}" for e in entries)


# ---------------------------------------------------------------- synthetic data


def generate_synthetic(
    n_per_class: int,
    min_length: int,
    max_length: int,
    seed: int,
    classes=(1, 2, 3, 4, 5, 6),
    motifs_per_sequence=(1, 2),
    mutation_rate: float = 0.15,
    decoy_rate: float = 0.3,
    balance_composition: bool = True,
) -> pd.DataFrame:
    """Enzyme-like sequences whose class is carried by planted PROSITE-style motifs.

    Each sequence: "M" + background residues (Swiss-Prot frequencies), length uniform in
    [min_length, max_length], with k ~ uniform(motifs_per_sequence) motifs of its own class
    (drawn without replacement while possible) at random non-overlapping positions.
    Noise: each true motif is, with probability `mutation_rate`, given one substitution at a
    fixed (non-x) position to a residue the pattern does not allow (kind "mutated"), but at least
    one true motif always stays intact; with probability `decoy_rate` one intact motif of another
    requested class is planted too (kind "decoy"), and such a sequence carries at least two true
    motifs, so true motifs always outnumber the decoy and the label stays decidable.
    No motif pattern occurs anywhere except at the recorded true/decoy positions, so the
    `motifs` column is the complete list of occurrences.

    Composition: planted motifs are rich in residues such as G, H, C, W, K and S, so adding
    them to background would make the class readable from residue counts alone (a logistic
    regression on composition and length gets 0.72 test accuracy on the default data). With
    `balance_composition` (default) the residue counts of positions 2..length are drawn first,
    from one class-independent distribution: Multinomial(length - 1, Swiss-Prot frequencies),
    redrawn until every requested class could plant its smallest motif set from them (this
    raises the rare residues, W in particular, equally in every class). The motif residues
    (x positions included, mutated and decoy motifs too) are then taken from those counts and
    the rest is shuffled into the gaps; a motif plan that does not fit the counts is redrawn.
    Accidental motif occurrences are removed by swapping residues, which keeps the counts.
    So a sequence's composition and length carry no information about its class.
    The price: plans are redrawn to fit the counts, so motifs rich in rare residues, decoys and
    third motifs come less often than `motifs_per_sequence` and `decoy_rate` say (default data:
    2.1-2.4 true motifs and 18-26% decoys per class instead of 2.5 and 30%; pdi_thioredoxin,
    which needs W and two C, a third as often).
    `balance_composition=False` gives the earlier generator (motifs on top of independently
    drawn background, accidental occurrences redrawn), reproducing its tables exactly.
    Rows are shuffled deterministically; the same arguments give the same table.
    """
    classes = tuple(int(c) for c in classes)
    lo, hi = (int(v) for v in motifs_per_sequence)
    _check_synthetic_args(
        n_per_class, min_length, max_length, classes, (lo, hi), mutation_rate, decoy_rate
    )
    by_class = {c: [n for n, (cls, _) in MOTIFS.items() if cls == c] for c in classes}
    smallest = _smallest_plans(by_class, (lo, hi), decoy_rate)
    rows = []
    for cls in classes:
        # One stream per class: adding or removing a class leaves the others unchanged.
        rng = np.random.default_rng([seed, cls])
        others = [by_class[c] for c in classes if c != cls]
        for i in range(1, n_per_class + 1):
            length = int(rng.integers(min_length, max_length + 1))
            if balance_composition:
                seq, records = _build_balanced(
                    rng,
                    length,
                    smallest,
                    lambda r, cls=cls, others=others: _plan_motifs(
                        r, by_class[cls], others, (lo, hi), mutation_rate, decoy_rate
                    ),
                )
            else:
                planted = _plan_motifs(
                    rng, by_class[cls], others, (lo, hi), mutation_rate, decoy_rate
                )
                seq, records = _build_sequence(rng, length, planted)
            rows.append(
                {
                    "id": f"syn_c{cls}_{i:05d}",
                    "sequence": seq,
                    "ec_numbers": SYNTHETIC_EC[cls],
                    "ec_class": cls,
                    "motifs": ";".join(f"{n}:{s}:{e}:{kind}" for n, s, e, kind in records),
                }
            )
    order = np.random.default_rng([seed, 0]).permutation(len(rows))
    return _as_table({c: [rows[j][c] for j in order] for c in COLUMNS})


def _check_synthetic_args(
    n_per_class: int,
    min_length: int,
    max_length: int,
    classes: tuple[int, ...],
    motifs_per_sequence: tuple[int, int],
    mutation_rate: float,
    decoy_rate: float,
) -> None:
    """Raise ValueError unless the arguments of `generate_synthetic` can be satisfied."""
    lo, hi = motifs_per_sequence
    if n_per_class < 1:
        raise ValueError(f"n_per_class must be >= 1, got {n_per_class}")
    if not classes or len(set(classes)) != len(classes):
        raise ValueError(f"classes must be non-empty and distinct, got {classes}")
    missing = [c for c in classes if c not in SYNTHETIC_EC]
    if missing:
        raise ValueError(f"no synthetic motifs for EC class(es) {missing}; available 1-6")
    if not 1 <= lo <= hi:
        raise ValueError(f"motifs_per_sequence must be (lo, hi) with 1 <= lo <= hi, got {(lo, hi)}")
    for label, rate in (("mutation_rate", mutation_rate), ("decoy_rate", decoy_rate)):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"{label} must be in [0, 1], got {rate}")
    # the shortest sequence must hold "M" plus the most motifs one sequence can get
    decoys_possible = decoy_rate > 0 and len(classes) > 1
    most_true = max(hi, 2) if decoys_possible else hi
    longest = max(len(t) for t in _TOKENS.values())
    needed = 1 + (most_true + decoys_possible) * longest
    if min_length < needed or max_length < min_length:
        raise ValueError(
            f"lengths must satisfy {needed} <= min_length <= max_length "
            f"(room for 'M' plus {most_true + decoys_possible} motifs of up to {longest} "
            f"residues), got min_length={min_length}, max_length={max_length}"
        )


def _plan_motifs(
    rng: np.random.Generator,
    names: list[str],
    other_classes: list[list[str]],
    motifs_per_sequence: tuple[int, int],
    mutation_rate: float,
    decoy_rate: float,
) -> list[tuple[str, str]]:
    """Shuffled (name, kind) motifs for one sequence whose own class has the motifs `names`."""
    lo, hi = motifs_per_sequence
    k = int(rng.integers(lo, hi + 1))
    decoy = bool(other_classes) and rng.random() < decoy_rate
    if decoy:
        k = max(k, 2)  # true motifs outnumber the decoy
    picks = rng.choice(len(names), size=k, replace=k > len(names))
    mutated = rng.random(k) < mutation_rate
    if mutated.all():
        mutated[rng.integers(k)] = False  # at least one true motif stays intact
    planted = [(names[p], "mutated" if m else "true") for p, m in zip(picks, mutated, strict=True)]
    if decoy:
        other = other_classes[int(rng.integers(len(other_classes)))]
        planted.append((other[int(rng.integers(len(other)))], "decoy"))
    return [planted[j] for j in rng.permutation(len(planted))]


_BG_RESIDUES = np.array(list(STANDARD_RESIDUES))
_BG_P = np.array([BACKGROUND_FREQUENCIES[r] for r in STANDARD_RESIDUES])
_BG_P = _BG_P / _BG_P.sum()
_RES_INDEX = {r: i for i, r in enumerate(STANDARD_RESIDUES)}


def _background(rng: np.random.Generator, n: int, exclude: str = "") -> list[str]:
    if not exclude:
        return list(rng.choice(_BG_RESIDUES, size=n, p=_BG_P))
    keep = np.array([r not in exclude for r in STANDARD_RESIDUES])
    p = _BG_P[keep] / _BG_P[keep].sum()
    return list(rng.choice(_BG_RESIDUES[keep], size=n, p=p))


def _build_sequence(rng, length, planted, max_restarts=200, max_fixes=50):
    """Lay out planted motifs in a background sequence; return (sequence, records)."""
    for _ in range(max_restarts):
        instances, protected_offsets = [], []
        for name, kind in planted:
            tokens = _TOKENS[name]
            inst, fixed = [], []
            for j, t in enumerate(tokens):
                if t is None:
                    inst.append(_background(rng, 1)[0])
                else:
                    inst.append(t if len(t) == 1 else t[int(rng.integers(len(t)))])
                    fixed.append(j)
            if kind == "mutated":
                j = fixed[int(rng.integers(len(fixed)))]
                inst[j] = _background(rng, 1, exclude=tokens[j])[0]
            instances.append(inst)
            protected_offsets.append(fixed)
        # Random non-overlapping layout: split the free residues into len(planted) + 1 gaps.
        free = length - 1 - sum(len(x) for x in instances)
        cuts = np.sort(rng.integers(0, free + 1, size=len(instances)))
        gaps = np.diff(np.concatenate([[0], cuts, [free]]))
        seq = ["M"] + _background(rng, int(gaps[0]))
        protected = {0}
        records = []
        for (name, kind), inst, fixed, gap in zip(
            planted, instances, protected_offsets, gaps[1:], strict=True
        ):
            start = len(seq)
            seq += inst
            protected.update(start + j for j in fixed)
            records.append((name, start, start + len(inst), kind))
            seq += _background(rng, int(gap))
        expected = {(n, s) for n, s, _, kind in records if kind != "mutated"}
        for _ in range(max_fixes):
            text = "".join(seq)
            spurious = [(n, s) for n, s in find_motifs(text) if (n, s) not in expected]
            if not spurious:
                return text, records
            # Redraw the unprotected residues of each accidental occurrence (x positions of
            # planted motifs included: they match any residue, so the planted match survives).
            redraw = set()
            for n, s in spurious:
                span = set(range(s, s + len(_TOKENS[n]))) - protected
                if not span:
                    break  # the occurrence is made of fixed residues only: start over
                redraw |= span
            else:
                for pos, res in zip(sorted(redraw), _background(rng, len(redraw)), strict=True):
                    seq[pos] = res
                continue
            break
    raise ValueError(
        f"could not place motifs {planted} in a sequence of length {length} without "
        f"accidental motif occurrences; use longer sequences"
    )


# ---------------------------------------------------------------- composition-balanced build


def _smallest_plans(by_class, motifs_per_sequence, decoy_rate) -> list[tuple]:
    """Per class, the needs of the smallest plans `_plan_motifs` can draw, intact: (single-letter
    counts (sets, 20), choice-token columns per set), see `_needs`.

    A residue count vector that fits one set of every class can host a sequence of any class,
    so requiring that keeps the counts' distribution the same for all classes.
    """
    lo = motifs_per_sequence[0]
    classes = list(by_class)
    decoy_always = decoy_rate >= 1 and len(classes) > 1
    out = []
    for cls in classes:
        names = by_class[cls]
        k = max(lo, 2) if decoy_always else lo
        combos = (
            itertools.combinations(names, k)
            if k <= len(names)
            else itertools.combinations_with_replacement(names, k)
        )
        combos = [tuple(c) for c in combos]
        if decoy_always:
            decoys = [n for c in classes if c != cls for n in by_class[c]]
            combos = [c + (d,) for c in combos for d in decoys]
        needs = [_needs(c) for c in combos]
        out.append((np.array([n[0] for n in needs]), [n[1] for n in needs]))
    return out


def _needs(names: tuple[str, ...]) -> tuple[np.ndarray, list[list[int]]]:
    """Residue counts the single-letter tokens of `names` need, and the columns of each
    choice token (most constrained first)."""
    single = np.zeros(len(STANDARD_RESIDUES), dtype=int)
    choices = []
    for name in names:
        for t in _TOKENS[name]:
            if t is not None and len(t) == 1:
                single[_RES_INDEX[t]] += 1
            elif t is not None:
                choices.append([_RES_INDEX[r] for r in t])
    return single, sorted(choices, key=len)


def _first_hosting(counts: np.ndarray, smallest) -> int | None:
    """Index of the first row of `counts` (B, 20) from which every class can make one of its
    smallest motif sets (`_smallest_plans`), or None."""
    per_class = []
    for singles, choices in smallest:
        # (B, sets): the single-letter tokens fit; the choice tokens are checked greedily below
        per_class.append(((counts[:, None, :] >= singles[None]).all(-1), singles, choices))
    candidates = np.all([ok.any(1) for ok, _, _ in per_class], axis=0)
    for b in np.flatnonzero(candidates):
        if all(
            any(
                ok[b, j] and _choices_fit(counts[b] - singles[j], choices[j])
                for j in range(len(choices))
            )
            for ok, singles, choices in per_class
        ):
            return int(b)
    return None


def _choices_fit(left: np.ndarray, choices: list[list[int]]) -> bool:
    left = left.tolist()
    for cols in choices:
        best = max(cols, key=left.__getitem__)
        if left[best] <= 0:
            return False
        left[best] -= 1
    return True


@functools.cache
def _allowed_columns(allowed: str | None) -> tuple[int, ...]:
    return tuple(range(len(STANDARD_RESIDUES)) if allowed is None else map(_RES_INDEX.get, allowed))


def _take(rng: np.random.Generator, left: list[int], allowed: str | None) -> str | None:
    """Remove and return one residue of `left` (weighted by count), among `allowed` if given."""
    cols = _allowed_columns(allowed)
    total = sum(left[c] for c in cols)
    if total <= 0:
        return None
    r = int(rng.integers(total))
    for c in cols:
        r -= left[c]
        if r < 0:
            left[c] -= 1
            return STANDARD_RESIDUES[c]
    raise AssertionError("unreachable")


def _instances(rng, counts, planted):
    """Residues of each planted motif taken from `counts`: (instances, fixed offsets, leftover)
    or None where the counts cannot supply them."""
    left = counts.tolist()
    instances = [[None] * len(_TOKENS[name]) for name, _ in planted]
    fixed = [[j for j, t in enumerate(_TOKENS[name]) if t is not None] for name, _ in planted]
    mutated = {
        i: fixed[i][int(rng.integers(len(fixed[i])))]
        for i, (_, kind) in enumerate(planted)
        if kind == "mutated"
    }
    # Scarcest demands first, so x positions do not use up a residue a fixed position needs.
    for stage in ("single", "choice", "mutated", "x"):
        for i, (name, _) in enumerate(planted):
            for j, t in enumerate(_TOKENS[name]):
                if mutated.get(i) == j:
                    if stage != "mutated":
                        continue
                    allowed = "".join(r for r in STANDARD_RESIDUES if r not in t)
                elif t is None:
                    if stage != "x":
                        continue
                    allowed = None
                elif stage != ("single" if len(t) == 1 else "choice"):
                    continue
                else:
                    allowed = t
                residue = _take(rng, left, allowed)
                if residue is None:
                    return None
                instances[i][j] = residue
    return instances, fixed, left


def _build_balanced(rng, length, smallest, plan, max_plans=1000, max_restarts=200, max_fixes=50):
    """A sequence of `length` whose residue counts are drawn independently of its class.

    `smallest`: `_smallest_plans`; `plan(rng)`: one (name, kind) motif plan of the class.
    Returns (sequence, records) like `_build_sequence`.
    """
    while True:
        # in batches: most draws are rejected (the default data keep about 1 in 70)
        batch = rng.multinomial(length - 1, _BG_P, size=64)
        b = _first_hosting(batch, smallest)
        if b is not None:
            counts = batch[b]
            break
    for _ in range(max_restarts):
        for _ in range(max_plans):
            planted = plan(rng)
            made = _instances(rng, counts, planted)
            if made is not None:
                break
        else:
            raise ValueError(f"no motif plan fits residue counts {counts.tolist()}")
        instances, fixed_offsets, left = made
        pool = [r for r, n in zip(STANDARD_RESIDUES, left, strict=True) for _ in range(int(n))]
        pool = [pool[j] for j in rng.permutation(len(pool))]
        cuts = np.sort(rng.integers(0, len(pool) + 1, size=len(instances)))
        bounds = np.concatenate([[0], cuts, [len(pool)]])
        seq = ["M"] + pool[: bounds[1]]
        protected = {0}
        records = []
        for k, ((name, kind), inst, fixed) in enumerate(
            zip(planted, instances, fixed_offsets, strict=True)
        ):
            start = len(seq)
            seq += inst
            protected.update(start + j for j in fixed)
            records.append((name, start, start + len(inst), kind))
            seq += pool[bounds[k + 1] : bounds[k + 2]]
        free = np.array([p for p in range(length) if p not in protected])
        expected = {(n, s) for n, s, _, kind in records if kind != "mutated"}
        for _ in range(max_fixes):
            spurious = [(n, s) for n, s in find_motifs("".join(seq)) if (n, s) not in expected]
            if not spurious:
                return "".join(seq), records
            # Swap each unprotected residue of an accidental occurrence with a random
            # unprotected one: the counts stay as drawn (x positions of planted motifs may
            # swap too, they match any residue).
            span = set()
            for n, s in spurious:
                span |= set(range(s, s + len(_TOKENS[n]))) - protected
            if not span:
                break  # an occurrence made of fixed residues only: new plan and layout
            for pos in sorted(span):
                other = int(free[rng.integers(len(free))])
                seq[pos], seq[other] = seq[other], seq[pos]
    raise ValueError(
        f"could not place motifs in a sequence of length {length} without accidental motif "
        "occurrences; use longer sequences"
    )


# ---------------------------------------------------------------- EC numbers


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


def _normalise_ec(raw: str, where: str) -> str:
    """Validate an EC list and rejoin it as "a;b" (no spaces); errors name `where`."""
    ecs = _split_ec(raw)
    for e in ecs:
        try:
            ec_top_class(e)
        except DataError as err:
            raise DataError(f"{where}: {err}") from None
    return ";".join(ecs)


# ---------------------------------------------------------------- reading real data


def _strip_gz(path: Path) -> str:
    name = path.name.lower()
    return name[:-3] if name.endswith(".gz") else name


def _collect(records, source: str) -> tuple[pd.DataFrame, Counter]:
    """records: (where, id, sequence, raw_ec, raw_motifs) -> table with unassigned class,
    dropped reasons. Motifs are checked against the sequence (see `parse_motifs`)."""
    dropped: Counter = Counter()
    seen: dict[str, tuple[str, str]] = {}
    rows = []
    for where, rid, seq, raw_ec, raw_motifs in records:
        rid = rid.strip()
        seq = "".join(seq.split()).upper()
        if not rid:
            raise DataError(f"{source}: {where}: empty id")
        if not seq:
            raise DataError(f"{source}: {where} (id {rid}): empty sequence")
        ec = _normalise_ec(raw_ec, f"{source}: {where} (id {rid})")
        try:
            motifs = format_motifs(parse_motifs(raw_motifs, len(seq)))
        except DataError as err:
            raise DataError(f"{source}: {where} (id {rid}): {err}") from None
        if rid in seen:
            first_where, first_seq = seen[rid]
            if first_seq != seq:
                raise DataError(
                    f"{source}: {where}: duplicate id {rid} with a different sequence "
                    f"than {first_where}"
                )
            dropped["duplicate id (same sequence)"] += 1
            continue
        seen[rid] = (where, seq)
        if not ec:
            dropped["no EC number"] += 1
            continue
        rows.append((rid, seq, ec, motifs))
    df = _as_table(
        {
            "id": [r[0] for r in rows],
            "sequence": [r[1] for r in rows],
            "ec_numbers": [r[2] for r in rows],
            "ec_class": [0] * len(rows),
            "motifs": [r[3] for r in rows],
        }
    )
    return df, dropped


def _first_line(path: Path) -> str:
    """The first line of a (possibly gzipped) text file, without its line ending or BOM."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rt", encoding="utf-8-sig", newline="") as handle:
            return handle.readline().rstrip("\r\n")
    except (UnicodeDecodeError, OSError, EOFError) as err:
        first = " ".join(str(err).split()).split(". ")[0] or type(err).__name__  # one line
        raise DataError(f"{path}: cannot read: {first}") from None


def sniff_delimiter(path: str | os.PathLike, columns: tuple[str, ...]) -> str:
    """Tab or comma: whichever splits the header into fields that include all `columns` (else
    into the most fields).

    Decided by content, not the file name: benchmark sets ship tab-separated `.csv` files.
    """
    path = Path(path)
    header = _first_line(path)
    if not header.strip():
        raise DataError(f"{path}: file is empty")
    fields = {
        sep: [field.strip() for field in next(csv.reader([header], delimiter=sep))]
        for sep in ("\t", ",")
    }
    for sep, names in fields.items():
        if all(column in names for column in columns):
            return sep
    # Columns missing: the one that splits the header best, so the caller names what is there.
    sep = max(fields, key=lambda sep: len(fields[sep]))
    if len(fields[sep]) > 1:
        return sep
    shown = header if len(header) <= 120 else header[:117] + "..."
    raise DataError(
        f"{path}: the first line is not a tab- or comma-separated header with the columns "
        f"{list(columns)}; it reads {shown!r}"
    )


def read_table(
    path: str | os.PathLike,
    id_column: str = "Entry",
    ec_column: str = "EC number",
    sequence_column: str = "Sequence",
    motif_column: str = "",
) -> tuple[pd.DataFrame, Counter]:
    """Read a UniProt-style table, tab- or comma-separated (told from the header line, whatever
    the extension), optionally gzipped.

    Returns (table with ec_class 0, dropped reasons). Rows without EC are dropped and counted;
    a repeated id with the same sequence is kept once; records are named "row N" (data rows,
    1-based, header excluded). `motif_column` (optional) holds annotations in the format of
    the `motifs` column (`parse_motifs`), each checked against its row's sequence.
    """
    path = Path(path)
    required = tuple(c for c in (id_column, ec_column, sequence_column, motif_column) if c)
    sep = sniff_delimiter(path, required)
    try:
        raw = pd.read_csv(
            path,
            sep=sep,
            dtype=str,
            keep_default_na=False,
            compression="gzip" if path.name.lower().endswith(".gz") else None,
            encoding="utf-8-sig",
        )
    except pd.errors.EmptyDataError:
        raise DataError(f"{path}: file is empty") from None
    except (pd.errors.ParserError, UnicodeDecodeError, OSError) as err:
        first = " ".join(str(err).split()).split(". ")[0] or type(err).__name__  # one line
        raise DataError(f"{path}: cannot parse table: {first}") from None
    raw.columns = [str(column).strip() for column in raw.columns]
    missing = [c for c in required if c not in raw.columns]
    if missing:
        raise DataError(
            f"{path}: missing column(s) {missing}; columns present: {list(raw.columns)}"
        )
    if raw.empty:
        raise DataError(f"{path}: file has a header but no records")
    records = (
        (
            f"row {n}",
            r[id_column],
            r[sequence_column],
            r[ec_column],
            r[motif_column] if motif_column else "",
        )
        for n, r in enumerate(raw.to_dict("records"), start=1)
    )
    return _collect(records, str(path))


_EC_TOKEN_RE = re.compile(r"\bEC=(\S+)")


def _fasta_header(description: str) -> tuple[str, str]:
    """(id, raw EC list) from a FASTA header; see read_fasta for the accepted forms."""
    first = description.split()[0] if description.split() else ""
    fields = first.split("|")
    tokens = _EC_TOKEN_RE.findall(description)
    ec = ";".join(t.strip(",;)]") for t in tokens).replace(",", ";")
    if len(fields) >= 3 and fields[0] in ("sp", "tr"):
        return fields[1], ec
    if len(fields) >= 2 and not tokens:
        return fields[0], fields[-1]
    return fields[0], ec


def read_fasta(path: str | os.PathLike) -> tuple[pd.DataFrame, Counter]:
    """Read FASTA (optionally .gz). Header forms:
      >ID EC=1.1.1.1;2.3.1.1 anything
      >sp|P12345|NAME_HUMAN ... EC=1.1.1.1 ...   (id = accession, also tr|)
      >ID|1.1.1.1;2.3.1.1                          (last |-field of the first word is the EC list)
    An `EC=` token wins over the |-field. Records without EC are dropped and counted; records are
    named "record N" (1-based).
    """
    from Bio import SeqIO  # imported here: only FASTA input needs biopython

    path = Path(path)
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    try:
        with opener(path, "rt") as handle:
            parsed = [
                (f"record {n}", *_fasta_header(rec.description), str(rec.seq))
                for n, rec in enumerate(SeqIO.parse(handle, "fasta"), start=1)
            ]
    except (ValueError, UnicodeDecodeError, OSError) as err:
        first = " ".join(str(err).split()).split(". ")[0] or type(err).__name__  # one line
        raise DataError(f"{path}: cannot parse FASTA: {first}") from None
    if not parsed:
        raise DataError(f"{path}: no FASTA records (empty file or no '>' header)")
    return _collect(((w, rid, seq, ec, "") for w, rid, ec, seq in parsed), str(path))


def read_input(path: str | os.PathLike, **table_columns) -> tuple[pd.DataFrame, Counter]:
    """read_fasta for .fasta/.fa/.faa/.fas(.gz) or a file starting with '>', else read_table
    (column names passed through; FASTA has no columns, so no `motif_column` either)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: no such file")
    if _strip_gz(path).endswith(FASTA_SUFFIXES) or _first_line(path).startswith(">"):
        if table_columns.get("motif_column"):
            raise DataError(
                f"{path}: FASTA has no columns, so no motif column "
                f"{table_columns['motif_column']!r}; use a table or no motif column"
            )
        return read_fasta(path)
    return read_table(path, **table_columns)


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


# ---------------------------------------------------------------- labelling and filtering


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


# ---------------------------------------------------------------- splitting


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
