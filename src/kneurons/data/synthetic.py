"""Synthetic enzyme-like sequences whose EC class is carried by planted motifs
(`generate_synthetic`), with mutated and decoy motifs as noise and class-independent residue
composition."""

from __future__ import annotations

import functools
import itertools

import numpy as np
import pandas as pd

from kneurons.config import ConfigError
from kneurons.data.motifs import MOTIF_TOKENS, MOTIFS, find_motifs
from kneurons.data.tables import COLUMNS, STANDARD_RESIDUES, Loaded, as_table

# UniProtKB/Swiss-Prot amino-acid composition (percent, release statistics); normalised where used.
BACKGROUND_FREQUENCIES = {
    "A": 8.25, "R": 5.53, "N": 4.06, "D": 5.45, "C": 1.37,
    "Q": 3.93, "E": 6.75, "G": 7.07, "H": 2.27, "I": 5.96,
    "L": 9.66, "K": 5.84, "M": 2.42, "F": 3.86, "P": 4.70,
    "S": 6.56, "T": 5.34, "W": 1.08, "Y": 2.92, "V": 6.87,
}  # fmt: skip


class SyntheticError(ConfigError, ValueError):
    """data.synthetic settings (or data.classes) no synthetic table can satisfy; one line
    naming the key. `generate_synthetic`'s arguments are those keys."""


# One representative EC number per class for synthetic rows.
SYNTHETIC_EC = {
    1: "1.1.1.1",
    2: "2.7.11.1",
    3: "3.4.21.4",
    4: "4.2.1.2",
    5: "5.3.1.1",
    6: "6.1.1.1",
}


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
    return as_table({c: [rows[j][c] for j in order] for c in COLUMNS})


def _check_synthetic_args(
    n_per_class: int,
    min_length: int,
    max_length: int,
    classes: tuple[int, ...],
    motifs_per_sequence: tuple[int, int],
    mutation_rate: float,
    decoy_rate: float,
) -> None:
    """Raise SyntheticError unless the arguments of `generate_synthetic` can be satisfied."""
    lo, hi = motifs_per_sequence
    if n_per_class < 1:
        raise SyntheticError(f"data.synthetic.n_per_class must be >= 1, got {n_per_class}")
    if not classes or len(set(classes)) != len(classes):
        raise SyntheticError(f"data.classes must be non-empty and distinct, got {classes}")
    missing = [c for c in classes if c not in SYNTHETIC_EC]
    if missing:
        raise SyntheticError(
            f"data.classes: no synthetic motifs for EC class(es) {missing}; available 1-6"
        )
    if not 1 <= lo <= hi:
        raise SyntheticError(
            f"data.synthetic.motifs_per_sequence must be [lo, hi] with 1 <= lo <= hi, "
            f"got {[lo, hi]}"
        )
    for label, rate in (("mutation_rate", mutation_rate), ("decoy_rate", decoy_rate)):
        if not 0.0 <= rate <= 1.0:
            raise SyntheticError(f"data.synthetic.{label} must be in [0, 1], got {rate}")
    # the shortest sequence must hold "M" plus the most motifs one sequence can get
    decoys_possible = decoy_rate > 0 and len(classes) > 1
    most_true = max(hi, 2) if decoys_possible else hi
    longest = max(len(t) for t in MOTIF_TOKENS.values())
    needed = 1 + (most_true + decoys_possible) * longest
    if min_length < needed or max_length < min_length:
        raise SyntheticError(
            f"data.synthetic: lengths must satisfy {needed} <= min_length <= max_length "
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
            tokens = MOTIF_TOKENS[name]
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
                span = set(range(s, s + len(MOTIF_TOKENS[n]))) - protected
                if not span:
                    break  # the occurrence is made of fixed residues only: start over
                redraw |= span
            else:
                for pos, res in zip(sorted(redraw), _background(rng, len(redraw)), strict=True):
                    seq[pos] = res
                continue
            break
    raise SyntheticError(
        f"data.synthetic: could not place motifs {planted} in a sequence of length {length} "
        "without accidental motif occurrences; raise min_length"
    )


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
        for t in MOTIF_TOKENS[name]:
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
    instances = [[None] * len(MOTIF_TOKENS[name]) for name, _ in planted]
    fixed = [[j for j, t in enumerate(MOTIF_TOKENS[name]) if t is not None] for name, _ in planted]
    mutated = {
        i: fixed[i][int(rng.integers(len(fixed[i])))]
        for i, (_, kind) in enumerate(planted)
        if kind == "mutated"
    }
    # Scarcest demands first, so x positions do not use up a residue a fixed position needs.
    for stage in ("single", "choice", "mutated", "x"):
        for i, (name, _) in enumerate(planted):
            for j, t in enumerate(MOTIF_TOKENS[name]):
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
            raise SyntheticError(
                f"data.synthetic: no motif plan fits residue counts {counts.tolist()} "
                f"(length {length}); raise min_length"
            )
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
                span |= set(range(s, s + len(MOTIF_TOKENS[n]))) - protected
            if not span:
                break  # an occurrence made of fixed residues only: new plan and layout
            for pos in sorted(span):
                other = int(free[rng.integers(len(free))])
                seq[pos], seq[other] = seq[other], seq[pos]
    raise SyntheticError(
        f"data.synthetic: could not place motifs in a sequence of length {length} without "
        "accidental motif occurrences; raise min_length"
    )


def load(settings, input) -> Loaded:
    """The download step's source `synthetic` (`settings`: DownloadSettings)."""
    s = settings.synthetic
    table = generate_synthetic(
        n_per_class=s.n_per_class,
        min_length=s.min_length,
        max_length=s.max_length,
        seed=s.seed,
        classes=settings.classes,
        mutation_rate=s.mutation_rate,
        decoy_rate=s.decoy_rate,
        motifs_per_sequence=s.motifs_per_sequence,
        balance_composition=s.balance_composition,
    )
    return Loaded(table, "synthetic")
