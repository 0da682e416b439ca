"""Labelled sequences from the UniProt REST API: reviewed entries per top-level EC class, every
page checked complete, a seeded sample per class, and optionally their active sites, binding
sites and motifs as the `motifs` column."""

from __future__ import annotations

import logging
import os
import re
import tempfile
from collections import Counter
from collections.abc import Iterable
from functools import partial
from pathlib import Path
from urllib.parse import parse_qsl, urlsplit

import numpy as np
import pandas as pd
import requests

from kneurons.data.http import BadResponse, DownloadError, decode_body, fetch, one_line, session_for
from kneurons.data.readers import read_table
from kneurons.data.tables import Loaded
from kneurons.io import write_tsv

log = logging.getLogger(__name__)

UNIPROT_URL = "https://rest.uniprot.org"
UNIPROT_FIELDS = "accession,ec,sequence"


UNIPROT_COLUMNS = ["Entry", "EC number", "Sequence"]
UNIPROT_HEADER = "\t".join(UNIPROT_COLUMNS)


# Sequence features asked for with data.uniprot.features, and their TSV column headers.
FEATURE_FIELDS = {"ft_act_site": "Active site", "ft_binding": "Binding site", "ft_motif": "Motif"}
MOTIFS_COLUMN = "motifs"  # the features, converted, in download_uniprot's output


FEATURE_OUTSIDE = "UniProt feature outside the sequence (feature dropped, sequence kept)"
FEATURE_UNPARSABLE = "UniProt feature not parsable (feature dropped, sequence kept)"


TSV_TYPES = frozenset({"text/plain", "text/tab-separated-values"})


def uniprot_query(ec_class: int, min_length: int, max_length: int) -> str:
    """The UniProtKB query for reviewed entries of one top-level EC class in a length range."""
    return f"(reviewed:true) AND (ec:{ec_class}.*) AND (length:[{min_length} TO {max_length}])"


def uniprot_columns(features: bool = False) -> list[str]:
    """The TSV columns a search returns: UNIPROT_COLUMNS, then the feature columns if asked."""
    return [*UNIPROT_COLUMNS, *FEATURE_FIELDS.values()] if features else list(UNIPROT_COLUMNS)


def uniprot_fields(features: bool = False) -> str:
    """The `fields=` of a search: UNIPROT_FIELDS, then the feature fields if asked."""
    return ",".join([UNIPROT_FIELDS, *FEATURE_FIELDS]) if features else UNIPROT_FIELDS


def _parse_page(
    resp: requests.Response,
    body: bytes,
    *,
    size: int,
    received: int,
    total: int | None,
    columns: list[str] = UNIPROT_COLUMNS,
) -> tuple[requests.Response, pd.DataFrame, int]:
    """(response, rows, X-Total-Results) of one UniProt TSV page; BadResponse unless it is complete.

    Complete: TSV Content-Type, a gzip stream that reached its end, a final newline, the
    header row of `columns`, every row with that many fields, X-Total-Results as on the first
    page (`total`) and a row count that fits: a page with a next link has `size` rows, the
    last brings the count to the total.
    """
    content_type = resp.headers.get("Content-Type", "")
    text = decode_body(resp, body).decode("utf-8", "replace")
    if content_type.split(";")[0].strip().lower() not in TSV_TYPES:
        raise BadResponse(
            f"response is not TSV (Content-Type {content_type!r}): {one_line(text, 80)!r}"
        )
    if "\ufffd" in text:
        raise BadResponse("body is not valid UTF-8")
    value = resp.headers.get("X-Total-Results", "").strip()
    if not value.isdigit():
        raise BadResponse(f"missing or bad X-Total-Results {value!r}")
    if total is not None and int(value) != total:
        raise BadResponse(f"X-Total-Results {value} differs from {total} on the first page")
    total = int(value)
    if text and not text.endswith("\n"):
        raise BadResponse(f"body does not end with a newline (cut mid-row?): ...{text[-40:]!r}")
    lines = text.split("\n")[:-1]
    header = "\t".join(columns)
    if lines and lines[0] != header:
        raise BadResponse(f"header row is {lines[0][:100]!r}, expected {header!r}")
    rows = [line.split("\t") for line in lines[1:]]
    if any(len(row) != len(columns) for row in rows):
        raise BadResponse(f"a row has other than {len(columns)} fields")
    # These counts also bound the pagination: each page with a next link brings new rows.
    if "next" in resp.links and not (0 < len(rows) == size and received + len(rows) < total):
        raise BadResponse(
            f"{len(rows)} rows on a page with a next link (size {size}, total {total})"
        )
    if "next" not in resp.links and received + len(rows) != total:
        raise BadResponse(f"got {received + len(rows)} records but X-Total-Results said {total}")
    return resp, pd.DataFrame(rows, columns=columns, dtype=str), total


def _search_all(
    session: requests.Session,
    base_url: str,
    query: str,
    *,
    page_size: int,
    fetch_kw: dict,
    features: bool = False,
) -> tuple[pd.DataFrame, str | None, str | None]:
    """All rows of one UniProt search, following cursor links; every page checked complete."""
    fields, columns = uniprot_fields(features), uniprot_columns(features)
    params = {"query": query, "format": "tsv", "fields": fields, "size": page_size}
    fetch_kw = {**fetch_kw, "headers": {"Accept-Encoding": "gzip"}}
    search = requests.Request("GET", f"{base_url.rstrip('/')}/uniprotkb/search", params=params)
    url: str | None = search.prepare().url
    first_url, total, received = url, None, 0
    pages: list[pd.DataFrame] = []
    release = release_date = None
    while url is not None:
        size = int(dict(parse_qsl(urlsplit(url).query)).get("size", page_size))
        accept = partial(_parse_page, size=size, received=received, total=total, columns=columns)
        resp, page, total = fetch(session, url, accept=accept, **fetch_kw)
        new = resp.headers.get("X-UniProt-Release")
        if not pages:
            release, release_date = new, resp.headers.get("X-UniProt-Release-Date")
        elif new != release:  # a release switch mid-pagination would mix two database versions
            raise DownloadError(
                f"GET {url}: UniProt release changed during pagination ({release} -> {new})"
            )
        pages.append(page)
        received += len(page)
        url = resp.links.get("next", {}).get("url")
    table = pd.concat(pages, ignore_index=True)
    dups = table["Entry"][table["Entry"].duplicated()]
    if len(dups):
        raise DownloadError(
            f"GET {first_url}: {len(dups)} duplicate entries across pages (e.g. {dups.iloc[0]})"
        )
    return table, release, release_date


def _sample(table: pd.DataFrame, n: int, seed: int, ec_class: int) -> pd.DataFrame:
    """Deterministic uniform sample of n rows, independent of the order the server sent them."""
    table = table.sort_values("Entry", kind="mergesort", ignore_index=True)
    if len(table) <= n:
        return table
    rng = np.random.default_rng([seed, ec_class])
    keep = np.sort(rng.choice(len(table), size=n, replace=False))
    return table.iloc[keep].reset_index(drop=True)


# One feature's location: "pos" or "start..end", 1-based inclusive. Uncertain ends ("?", "<1",
# ">120") and other forms do not match: such a feature is dropped as not parsable.
_FEATURE_LOCATION = re.compile(r"(\d+)(?:\.\.(\d+))?")
# The pieces of a feature column: split at ";" outside double quotes (notes may hold ";").
_FEATURE_PIECE = re.compile(r'(?:[^;"]|"[^"]*")+')


def _slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "_", text.lower()).strip("_")


def parse_features(text: str) -> list[tuple[str, str, dict[str, str]]]:
    """(TYPE, location, {qualifier: value}) of each feature in a UniProt TSV feature column,
    e.g. 'ACT_SITE 38; /note="Proton acceptor"; /evidence="..."; BINDING 10..15; /ligand=...'.
    A qualifier before any feature is attached to a feature with TYPE "" (not parsable)."""
    features: list[tuple[str, str, dict[str, str]]] = []
    for piece in (p.strip() for p in _FEATURE_PIECE.findall(text)):
        if not piece:
            continue
        if piece.startswith("/"):
            key, _, value = piece[1:].partition("=")
            if not features:
                features.append(("", "", {}))
            features[-1][2][key.strip()] = value.strip().strip('"')
        else:
            kind, _, location = piece.partition(" ")
            features.append((kind.strip(), location.strip(), {}))
    return features


def features_to_motifs(columns: Iterable[str], length: int) -> tuple[str, Counter]:
    """The `motifs` entries (kind "feature") of an entry's feature columns and what was dropped.

    Names: the feature type in lower case (act_site, binding), for MOTIF the /note slugified
    ("HIGH region" -> high_region; "motif" without a note). UniProt's 1-based inclusive
    positions become 0-based half-open ones. A feature outside a sequence of `length`
    residues, or one whose type or location does not parse, is dropped and counted
    (FEATURE_OUTSIDE, FEATURE_UNPARSABLE); the entry itself is kept.
    """
    dropped: Counter = Counter()
    entries: set[tuple[int, int, str]] = set()
    for text in columns:
        for kind, location, qualifiers in parse_features(text):
            where = _FEATURE_LOCATION.fullmatch(location)
            if not re.fullmatch(r"[A-Z][A-Z_]*", kind) or where is None:
                dropped[FEATURE_UNPARSABLE] += 1
                continue
            first = int(where.group(1))
            last = int(where.group(2) or first)
            if last < first:
                dropped[FEATURE_UNPARSABLE] += 1
            elif first < 1 or last > length:
                dropped[FEATURE_OUTSIDE] += 1
            else:
                name = kind.lower()
                if kind == "MOTIF":
                    name = _slug(qualifiers.get("note", "")) or name
                entries.add((first - 1, last, name))
    motifs = ";".join(f"{name}:{start}:{end}:feature" for start, end, name in sorted(entries))
    return motifs, dropped


def _features_column(table: pd.DataFrame) -> tuple[list[str], Counter]:
    """`features_to_motifs` of each row; drops counted once per entry (an entry of two EC
    classes comes twice)."""
    motifs, dropped, seen = [], Counter(), set()
    for row in table.to_dict("records"):
        columns = [row[column] for column in FEATURE_FIELDS.values()]
        text, bad = features_to_motifs(columns, len(row["Sequence"]))
        motifs.append(text)
        if row["Entry"] not in seen:
            seen.add(row["Entry"])
            dropped.update(bad)
    return motifs, dropped


def download_uniprot(
    out_path: str | os.PathLike,
    *,
    base_url: str = UNIPROT_URL,
    classes: Iterable[int] = (1, 2, 3, 4, 5, 6),
    per_class: int = 500,
    min_length: int = 50,
    max_length: int = 1000,
    seed: int = 0,
    page_size: int = 500,
    timeout: float = 30,
    retries: int = 5,
    backoff: float = 1.0,
    session: requests.Session | None = None,
    features: bool = False,
) -> dict:
    """Download reviewed UniProtKB entries per top-level EC class, sample `per_class` of each.

    Every matching entry of a class is fetched before sampling, so the sample is uniform over
    the class rather than biased to whatever the server lists first (this costs time for big
    classes; UniProt pages are cheap). Rows are sorted by accession and sampled with
    numpy.default_rng([seed, class]), so a given release and seed always give the same table.
    A class with fewer than `per_class` entries is kept whole, with a warning.

    Pages are fetched with `fetch` (`retries`; a `timeout` s deadline per attempt) and only
    accepted when complete (`_parse_page`); an incomplete page is retried like any fault.

    An entry with EC numbers in two classes appears once per class (`query_class` tells which);
    callers drop such multi-class entries downstream.

    With `features`, the search also asks for the active sites, binding sites and motifs
    (FEATURE_FIELDS), and the kept entries get them as a `motifs` column (`features_to_motifs`);
    features that cannot be placed on the sequence are dropped and counted.

    Writes a TSV with columns Entry, EC number, Sequence, (with `features`: motifs,)
    query_class to `out_path`, atomically and only if every class succeeded. Returns
    provenance: release, release_date, base_url, fields, queries, counts {class: {received,
    kept}}, the sampling parameters and features_dropped {reason: features}.
    """
    classes = [int(c) for c in classes]
    fetch_kw = {"timeout": timeout, "retries": retries, "backoff": backoff}
    frames: list[pd.DataFrame] = []
    queries: dict[str, str] = {}
    counts: dict[str, dict[str, int]] = {}
    release = release_date = None
    with session_for(session) as session:
        for c in classes:
            query = uniprot_query(c, min_length, max_length)
            queries[str(c)] = query
            table, rel, rel_date = _search_all(
                session, base_url, query, page_size=page_size, fetch_kw=fetch_kw, features=features
            )
            if release is None:
                release, release_date = rel, rel_date
            elif rel != release:
                raise DownloadError(
                    f"{base_url}: UniProt release changed between classes ({release} -> {rel})"
                )
            kept = _sample(table, per_class, seed, c)
            if len(kept) < per_class:
                log.warning("EC class %d: only %d entries, wanted %d", c, len(kept), per_class)
            log.info("EC class %d: received %d, kept %d", c, len(table), len(kept))
            counts[str(c)] = {"received": len(table), "kept": len(kept)}
            frames.append(kept.assign(query_class=c))

    raw_columns = [*uniprot_columns(features), "query_class"]
    combined = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=raw_columns)
    columns = [*UNIPROT_COLUMNS, "query_class"]
    features_dropped: Counter = Counter()
    if features:
        columns.insert(len(UNIPROT_COLUMNS), MOTIFS_COLUMN)
        combined[MOTIFS_COLUMN], features_dropped = _features_column(combined)
        for reason, n in sorted(features_dropped.items()):
            log.info("dropped %d: %s", n, reason)
    write_tsv(combined[columns], out_path)
    return {
        "source": "UniProtKB REST",
        "base_url": base_url,
        "release": release,
        "release_date": release_date,
        "fields": uniprot_fields(features),
        "features_dropped": dict(features_dropped),
        "queries": queries,
        "counts": counts,
        "per_class": per_class,
        "seed": seed,
        "min_length": min_length,
        "max_length": max_length,
    }


def load(settings, input) -> Loaded:
    """The download step's source `uniprot`: one paginated query per class, then read as a
    table; the release is recorded."""
    u = settings.uniprot
    with tempfile.TemporaryDirectory() as tmp:
        raw = Path(tmp) / "uniprot.tsv"
        report = download_uniprot(
            raw,
            base_url=u.url,
            classes=settings.classes,
            per_class=u.per_class,
            min_length=settings.min_length,
            max_length=settings.max_length,
            seed=u.seed,
            retries=u.retries,
            timeout=u.timeout,
            features=u.features,
        )
        table, dropped = read_table(raw, motif_column=MOTIFS_COLUMN if u.features else "")
    # features that could not be placed: counted like dropped rows, the entries are kept
    dropped.update(report["features_dropped"])
    info = {
        "uniprot": report,
        "release": report["release"],
        "release_date": report["release_date"],
    }
    return Loaded(table, u.url, dropped, info)
