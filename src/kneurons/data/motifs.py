"""PROSITE-style motifs: the patterns planted in synthetic sequences (per EC class), finding
their occurrences, and the `motifs` column's "name:start:end:kind" entries (parse, format)."""

from __future__ import annotations

import re

from kneurons.data.tables import STANDARD_RESIDUES, DataError

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
# true/mutated/decoy: planted in synthetic data; feature: annotated in real data (a UniProt
# sequence feature or a user's own annotation).
MOTIF_KINDS = ("true", "mutated", "decoy", "feature")


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


MOTIF_TOKENS = {name: _parse_pattern(pattern) for name, (_, pattern) in MOTIFS.items()}
# Lookahead so overlapping occurrences are all found.
_REGEX = {name: re.compile(f"(?=({_pattern_regex(t)}))") for name, t in MOTIF_TOKENS.items()}
MOTIF_REGEX = {name: _pattern_regex(t) for name, t in MOTIF_TOKENS.items()}


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
