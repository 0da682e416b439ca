"""Reading a user's labelled sequences: TSV/CSV tables (delimiter sniffed, gzip allowed) and
FASTA files with EC numbers in the headers, as the labelled table; bad input is a one-line
`DataError` naming the file and record."""

from __future__ import annotations

import csv
import gzip
import os
import re
from collections import Counter
from pathlib import Path

import pandas as pd

from kneurons.data.motifs import format_motifs, parse_motifs
from kneurons.data.tables import DataError, Loaded, as_table, normalise_ec

FASTA_SUFFIXES = (".fasta", ".fa", ".faa", ".fas")


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
        ec = normalise_ec(raw_ec, f"{source}: {where} (id {rid})")
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
    df = as_table(
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


def load(settings, input) -> Loaded:
    """The download step's source `table`: the user's table or FASTA (`input.table`)."""
    t = settings.table
    table, dropped = read_input(
        input.table,
        id_column=t.id_column,
        ec_column=t.ec_column,
        sequence_column=t.sequence_column,
        motif_column=t.motif_column,
    )
    return Loaded(table, input.table, dropped, {"table": str(Path(input.table).resolve())})
