"""The unlabeled pretraining corpus: a separate pool from the synthetic generator (its own
seed), or the user's FASTA or table of sequences; never a labelled sequence.

A corpus sequence is dropped when it equals a labelled sequence or shares a window of
`overlap_window` residues with one (the near-duplicates a language model would memorise for
the classifier); the counts go to the corpus report. A seeded `heldout` share is kept apart
for the pretraining report.
"""

from __future__ import annotations

import gzip
import logging
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from kneurons.data import readers, synthetic
from kneurons.data.tables import STANDARD_RESIDUES, DataError
from kneurons.io import write_json, write_tsv
from kneurons.settings import CorpusSettings

log = logging.getLogger(__name__)

CORPUS_COLUMNS = ["id", "sequence", "motifs", "part"]


def windows(sequence: str, k: int) -> set[str]:
    """Every window of `k` residues of `sequence` (the whole sequence if it is shorter)."""
    if len(sequence) <= k:
        return {sequence}
    return {sequence[i : i + k] for i in range(len(sequence) - k + 1)}


def overlapping(corpus: pd.Series, labelled: pd.Series, k: int) -> tuple[np.ndarray, Counter]:
    """(drop, counts): True for each corpus sequence equal to a labelled one (`exact`) or
    sharing a window of `k` residues with one (`window`)."""
    exact = set(labelled)
    seen = set().union(*(windows(s, k) for s in labelled)) if len(labelled) else set()
    reasons = [
        "exact" if s in exact else "window" if not windows(s, k).isdisjoint(seen) else None
        for s in corpus
    ]
    drop = np.array([reason is not None for reason in reasons], dtype=bool)
    return drop, Counter(reason for reason in reasons if reason)


def synthetic_pool(settings) -> pd.DataFrame:
    """`settings.size` sequences from the synthetic generator with the corpus's own seed and
    the labelled data's grammar (classes, lengths, motifs, noise); labels dropped."""
    classes = tuple(settings.classes)
    table = synthetic.generate_synthetic(
        -(-settings.size // len(classes)),
        settings.min_length,
        settings.max_length,
        seed=settings.seed,
        classes=classes,
        motifs_per_sequence=tuple(settings.motifs_per_sequence),
        mutation_rate=settings.mutation_rate,
        decoy_rate=settings.decoy_rate,
        balance_composition=settings.balance_composition,
    ).head(settings.size)
    return pd.DataFrame(
        {"id": [f"corpus_{i:06d}" for i in range(len(table))], **table[["sequence", "motifs"]]}
    )


def user_pool(path: str) -> pd.DataFrame:
    """The sequences of a FASTA file (optionally .gz; ids from the headers) or of a table's
    `Sequence` column (ids from `Entry` where there is one); residues upper-cased, sequences
    with non-standard residues dropped."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"model.pretrain.corpus: {path}: no such file")
    if readers._strip_gz(path).endswith(readers.FASTA_SUFFIXES) or readers._first_line(
        path
    ).startswith(">"):
        from Bio import SeqIO  # only FASTA input needs biopython

        opener = gzip.open if path.name.lower().endswith(".gz") else open
        try:
            with opener(path, "rt") as handle:
                records = [(r.id, str(r.seq)) for r in SeqIO.parse(handle, "fasta")]
        except (ValueError, UnicodeDecodeError, OSError) as err:
            raise DataError(f"{path}: cannot parse FASTA: {type(err).__name__}") from None
        table = pd.DataFrame(records, columns=["id", "sequence"])
    else:
        raw = pd.read_csv(path, sep=readers.sniff_delimiter(path, ("Sequence",)), dtype=str)
        if "Sequence" not in raw.columns:
            raise DataError(f"{path}: no Sequence column (columns: {', '.join(raw.columns)})")
        ids = (
            raw["Entry"] if "Entry" in raw.columns else [f"corpus_{i:06d}" for i in range(len(raw))]
        )
        table = pd.DataFrame({"id": ids, "sequence": raw["Sequence"]})
    table["sequence"] = table["sequence"].fillna("").astype(str).str.strip().str.upper()
    standard = table["sequence"].map(lambda s: len(s) > 0 and set(s) <= set(STANDARD_RESIDUES))
    if not standard.any():
        raise DataError(f"{path}: no sequence of standard residues")
    return table[standard].assign(motifs="").reset_index(drop=True)


def build_corpus(pool: pd.DataFrame, labelled: pd.Series, settings) -> tuple[pd.DataFrame, dict]:
    """(corpus, report): `pool` without its overlaps with `labelled`, with a seeded
    `settings.heldout` share marked `heldout` (the rest `train`)."""
    drop, counts = overlapping(pool["sequence"], labelled, settings.overlap_window)
    corpus = pool[~drop].reset_index(drop=True)
    if len(corpus) < 2:
        raise DataError(
            f"model.pretrain.corpus: {len(corpus)} sequences left after removing "
            f"{int(drop.sum())} that overlap the labelled set"
        )
    rng = np.random.default_rng([settings.seed, 7])
    n_heldout = max(1, int(round(settings.heldout * len(corpus))))
    heldout = np.zeros(len(corpus), dtype=bool)
    heldout[rng.permutation(len(corpus))[:n_heldout]] = True
    corpus["part"] = np.where(heldout, "heldout", "train")
    report = {
        "pool": len(pool),
        "dropped": {"exact": counts["exact"], "window": counts["window"]},
        "overlap_window": settings.overlap_window,
        "train": int((~heldout).sum()),
        "heldout": int(heldout.sum()),
        "residues": int(corpus["sequence"].str.len().sum()),
    }
    return corpus[CORPUS_COLUMNS], report


def pretrain_corpus(input, output, settings: CorpusSettings, wildcards) -> None:
    """The pretrain_corpus step: the corpus (synthetic pool or the user's file) without any
    labelled sequence or near-duplicate of one, its held-out part marked; a JSON report."""
    labelled = pd.read_csv(input.sequences, sep="\t", keep_default_na=False)["sequence"]
    pool = synthetic_pool(settings) if not settings.path else user_pool(settings.path)
    corpus, report = build_corpus(pool, labelled, settings)
    log.info(
        "corpus: %d of %d sequences (%d identical to and %d sharing a %d-residue window with a "
        "labelled sequence dropped); %d train, %d held out",
        len(corpus),
        report["pool"],
        report["dropped"]["exact"],
        report["dropped"]["window"],
        settings.overlap_window,
        report["train"],
        report["heldout"],
    )
    write_tsv(corpus, output.corpus)
    write_json(report, output.report)
