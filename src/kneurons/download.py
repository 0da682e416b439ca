"""Robust downloads: UniProt REST searches and fair-esm pretrained checkpoints.

Every function here either produces a complete, checked output file or raises `DownloadError`
with a one-line message and leaves nothing behind: output is written to a temporary file beside
the target and renamed into place only once it is complete and verified (`kneurons.io`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import re
import threading
import time
import zlib
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from functools import partial
from pathlib import Path
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import numpy as np
import pandas as pd
import requests
import urllib3
from urllib3.exceptions import InvalidHeader, MaxRetryError, ProtocolError
from urllib3.util.retry import Retry

from kneurons.errors import UserError
from kneurons.io import atomic_path, load_checkpoint, write_tsv

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
MAX_RETRY_AFTER = 60.0  # seconds; caps Retry-After so a hostile or buggy value cannot stall us
MIN_RATE = 100_000.0  # bytes/s a file download must average (beyond `timeout`) to meet its deadline

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

ESM_BASE_URL = "https://dl.fbaipublicfiles.com/fair-esm"
ESM_URL = ESM_BASE_URL + "/models/{name}.pt"
ESM_REGRESSION_URL = ESM_BASE_URL + "/regression/{name}-contact-regression.pt"


class DownloadError(UserError, RuntimeError):
    """A download failed for good. The message is one line naming the URL or file."""


class _Bad(Exception):
    """This attempt's response is no good (cut short, too slow, incomplete); worth a retry."""


class _Retry(Retry):
    """urllib3's Retry, Retry-After capped at MAX_RETRY_AFTER; logs retries, notes their start."""

    started: float | None = None

    def get_retry_after(self, response) -> float | None:
        try:
            seconds = super().get_retry_after(response)
        except InvalidHeader:
            return None
        return None if seconds is None else min(seconds, MAX_RETRY_AFTER)

    def sleep(self, response=None) -> None:
        last, n = self.history[-1], len(self.history)  # what failed; retry n of n + total
        why = f"HTTP {last.status}" if last.status else _one_line(last.error)
        wait = (response and self.get_retry_after(response)) or self.get_backoff_time()
        log.warning("GET %s: %s; retry %d/%d in %.1f s", last.url, why, n, n + self.total, wait)
        super().sleep(response)
        self.started = time.monotonic()


def _one_line(text: object, limit: int | None = None) -> str:
    text = " ".join(str(text).split())
    return text[:limit] if limit is not None else text


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {_one_line(exc.args[0] if exc.args else exc)}"


def _decode(resp: requests.Response, body: bytes) -> bytes:
    """Undo gzip Content-Encoding; unlike urllib3's decoder, this notices a truncated stream."""
    encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding != "gzip":
        raise _Bad(f"unexpected Content-Encoding {encoding!r}")
    gz = zlib.decompressobj(wbits=31)
    try:
        data = gz.decompress(body)
    except zlib.error as exc:
        raise _Bad(f"corrupt gzip body ({len(body)} bytes): {exc}") from None
    if not gz.eof:
        raise _Bad(f"gzip body cut short ({len(body)} bytes, stream unfinished)")
    return data


def _read_body(resp, sink, start: float, timeout: float, min_rate: float | None) -> None:
    """Copy the body as sent to `sink` before the deadline (see `fetch`), when a watchdog thread
    shuts the socket (urllib3's HTTPResponse.shutdown), ending even a read blocked on a trickle.
    read1 returns whatever has arrived, keeping current the byte count the deadline may use."""
    size, received = resp.raw.length_remaining or 0, 0  # Content-Length, as urllib3 read it
    done, expired = threading.Event(), threading.Event()

    def allowed() -> float:
        return timeout + (max(size, received) / min_rate if min_rate else 0.0)

    def watchdog() -> None:
        while not done.wait(max(0.0, start + allowed() - time.monotonic())):
            if time.monotonic() >= start + allowed():
                expired.set()
                with contextlib.suppress(Exception):  # e.g. already back in the pool
                    resp.raw.shutdown()
                return

    threading.Thread(target=watchdog, daemon=True).start()
    try:
        while not expired.is_set() and (chunk := resp.raw.read1(1 << 20, decode_content=False)):
            sink.write(chunk)
            received += len(chunk)
    except urllib3.exceptions.HTTPError as exc:  # cut short, reset, read timeout
        if not expired.is_set():
            raise _Bad(_describe(exc)) from None
    finally:
        done.set()
    if expired.is_set():
        raise _Bad(f"body not complete within the {allowed():.1f} s deadline ({received} bytes)")


def _session(session: requests.Session | None):
    return contextlib.nullcontext(session) if session is not None else requests.Session()


def _attempt(resp, url, start, timeout, min_rate, out, accept):
    """Read and check one response: the result, or _Bad (retry) or DownloadError (give up)."""
    status = resp.status_code
    if status in RETRY_STATUSES:  # urllib3 has given up on it
        raise _Bad(f"HTTP {status} {resp.reason}")
    to_file = out is not None and status < 400
    try:
        with open(out, "wb") if to_file else io.BytesIO() as sink:
            _read_body(resp, sink, start, timeout, min_rate)
            body = b"" if to_file else sink.getvalue()
    except OSError as exc:
        raise DownloadError(f"GET {url}: cannot write {out}: {_describe(exc)}") from exc
    if status >= 400:
        with contextlib.suppress(_Bad):
            body = _decode(resp, body)
        text = _one_line(body.decode("utf-8", "replace"), 200)
        raise DownloadError(f"GET {url}: HTTP {status} {resp.reason}: {text!r}")
    return accept(resp, body) if accept else (resp, body)


def fetch(
    session: requests.Session,
    url: str,
    *,
    headers: Mapping | None = None,
    timeout: float | tuple[float, float] = 30,
    retries: int = 5,
    backoff: float = 1.0,
    min_rate: float | None = None,
    out: Path | None = None,
    accept: Callable[[requests.Response, bytes], Any] | None = None,
) -> Any:
    """GET `url`; return accept(response, body), or (response, body) without `accept`.

    `body`: the bytes as sent (not decoded), or b"" when written to `out` (a path, rewritten by
    each attempt). `accept` raises _Bad for a body worth a retry.

    At most `retries + 1` attempts, whatever the mix of faults. urllib3's Retry (on the
    session's HTTPAdapter for the call) retries connect errors, timeouts waiting for the
    response and HTTP 429/500/502/503/504, waiting Retry-After (seconds or HTTP date, capped at
    MAX_RETRY_AFTER) or else backoff * 2**(n - 1) s before retry n > 1. With the same budget and
    waits, bodies cut short, late or rejected by `accept` are retried here. Other 4xx/5xx fail.

    Deadline per attempt, connect to last byte: `timeout` s (a (connect, read) pair is summed),
    plus with `min_rate` max(Content-Length, bytes so far) / min_rate. urllib3's total timeout
    bounds connect and the wait for the response, a watchdog the body (trickled header bytes
    are bounded only per read): a request ends within about (retries + 1) deadlines plus waits.
    """
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    timeout = float(sum(timeout)) if isinstance(timeout, tuple) else float(timeout)
    gave_up = f"GET {url} failed after {retries + 1} attempts; last error:"
    # raise_on_status=False: urllib3 hands back the last 429/5xx, which we report.
    retry = _Retry(retries, backoff_factor=backoff, status_forcelist=RETRY_STATUSES)
    retry.raise_on_status = False
    connect_and_wait = urllib3.Timeout(total=timeout)
    adapters = {a: a.max_retries for a in session.adapters.values()}  # a redirect may switch
    try:
        while True:
            for adapter in adapters:
                adapter.max_retries = retry
            t0 = time.monotonic()
            try:
                resp = session.get(url, headers=headers, stream=True, timeout=connect_and_wait)
            except requests.RequestException as exc:
                cause = exc.args[0] if exc.args else None
                if isinstance(cause, MaxRetryError):  # urllib3 spent the budget
                    raise DownloadError(f"{gave_up} {_describe(cause.reason or cause)}") from exc
                raise DownloadError(f"GET {url}: {_describe(exc)}") from exc
            with resp:
                retry = resp.raw.retries or retry  # now counting the retries urllib3 made
                try:
                    return _attempt(resp, url, retry.started or t0, timeout, min_rate, out, accept)
                except _Bad as exc:
                    reason = str(exc)
            try:
                retry = retry.increment("GET", url, error=ProtocolError(reason))
            except MaxRetryError:
                raise DownloadError(f"{gave_up} {reason}") from None
            retry.sleep()
    finally:
        for adapter, saved in adapters.items():
            adapter.max_retries = saved


# --------------------------------------------------------------------------------------------
# UniProt


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
    """(response, rows, X-Total-Results) of one UniProt TSV page; _Bad unless it is complete.

    Complete: TSV Content-Type, a gzip stream that reached its end, a final newline, the
    header row of `columns`, every row with that many fields, X-Total-Results as on the first
    page (`total`) and a row count that fits: a page with a next link has `size` rows, the
    last brings the count to the total.
    """
    content_type = resp.headers.get("Content-Type", "")
    text = _decode(resp, body).decode("utf-8", "replace")
    if content_type.split(";")[0].strip().lower() not in TSV_TYPES:
        raise _Bad(f"response is not TSV (Content-Type {content_type!r}): {_one_line(text, 80)!r}")
    if "\ufffd" in text:
        raise _Bad("body is not valid UTF-8")
    value = resp.headers.get("X-Total-Results", "").strip()
    if not value.isdigit():
        raise _Bad(f"missing or bad X-Total-Results {value!r}")
    if total is not None and int(value) != total:
        raise _Bad(f"X-Total-Results {value} differs from {total} on the first page")
    total = int(value)
    if text and not text.endswith("\n"):
        raise _Bad(f"body does not end with a newline (cut mid-row?): ...{text[-40:]!r}")
    lines = text.split("\n")[:-1]
    header = "\t".join(columns)
    if lines and lines[0] != header:
        raise _Bad(f"header row is {lines[0][:100]!r}, expected {header!r}")
    rows = [line.split("\t") for line in lines[1:]]
    if any(len(row) != len(columns) for row in rows):
        raise _Bad(f"a row has other than {len(columns)} fields")
    # These counts also bound the pagination: each page with a next link brings new rows.
    if "next" in resp.links and not (0 < len(rows) == size and received + len(rows) < total):
        raise _Bad(f"{len(rows)} rows on a page with a next link (size {size}, total {total})")
    if "next" not in resp.links and received + len(rows) != total:
        raise _Bad(f"got {received + len(rows)} records but X-Total-Results said {total}")
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
    with _session(session) as session:
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


# --------------------------------------------------------------------------------------------
# Files and fair-esm checkpoints


def download_file(
    url: str,
    dest: str | os.PathLike,
    *,
    verify: Callable[[Path], object] | None = None,
    timeout: float | tuple[float, float] = 60,
    retries: int = 5,
    backoff: float = 1.0,
    min_rate: float = MIN_RATE,
    session: requests.Session | None = None,
) -> Path:
    """Download `url` to `dest` with `fetch`, then `verify(tmp_path)` (may raise) before renaming.

    Each attempt restarts from scratch and must finish within `timeout` + size / `min_rate`
    seconds (size: Content-Length, or without one the bytes received so far), so a multi-GB
    checkpoint gets its time while a trickle still fails. A partial or unverifiable file never
    survives. Raises DownloadError.
    """
    dest = Path(dest)
    with _session(session) as session, atomic_path(dest) as tmp:
        kw = {"timeout": timeout, "retries": retries, "backoff": backoff, "min_rate": min_rate}
        # identity: we want the exact bytes, and Content-Length to count them.
        fetch(session, url, headers={"Accept-Encoding": "identity"}, out=tmp, **kw)
        log.info("downloaded %s (%d bytes)", url, tmp.stat().st_size)
        if verify is not None:
            try:
                verify(tmp)
            except Exception as exc:
                problem = f"{type(exc).__name__}: {_one_line(exc, 300)}"
                raise DownloadError(f"GET {url}: {dest} failed verification: {problem}") from exc
    return dest


def _checkpoint_verifier(required: tuple[str, ...]) -> Callable[[Path], None]:
    def verify(path: Path) -> None:
        data = load_checkpoint(path)
        if not isinstance(data, dict):
            raise ValueError(f"checkpoint is a {type(data).__name__}, not a dict")
        missing = [k for k in required if k not in data]
        if missing:
            raise ValueError(f"checkpoint lacks keys {missing}; has {sorted(map(str, data))}")
        if not isinstance(data["model"], dict):
            raise ValueError("checkpoint['model'] is not a state dict")

    return verify


def fetch_esm_checkpoint(
    name: str,
    dest_dir: str | os.PathLike,
    *,
    base_url: str | None = None,
    force: bool = False,
    timeout: float | tuple[float, float] = 60,
    retries: int = 5,
    backoff: float = 1.0,
    min_rate: float = MIN_RATE,
    session: requests.Session | None = None,
) -> tuple[Path, Path]:
    """Download fair-esm model `name` and its contact regression into `dest_dir`.

    Files are `{name}.pt` and `{name}-contact-regression.pt` (the layout that
    esm.pretrained.load_model_and_alphabet_local expects). Each is verified by a weights_only
    load (keys model+cfg / model) before it is renamed into place. Existing files that verify
    are kept unless `force`. `base_url` replaces https://dl.fbaipublicfiles.com/fair-esm.
    Downloads as `download_file`. Returns (model_path, regression_path).
    """
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise DownloadError(f"fair-esm checkpoint name {name!r} is not a plain model name")
    base = ESM_BASE_URL if base_url is None else base_url.rstrip("/")
    model, regression = f"models/{name}.pt", f"regression/{name}-contact-regression.pt"
    files = {model: ("model", "cfg"), regression: ("model",)}
    dests = [Path(dest_dir) / Path(path).name for path in files]
    kw = {"timeout": timeout, "retries": retries, "backoff": backoff, "min_rate": min_rate}
    with _session(session) as session:
        for (path, required), dest in zip(files.items(), dests, strict=True):
            url, verify = f"{base}/{path}", _checkpoint_verifier(required)
            if dest.exists() and not force:
                try:
                    verify(dest)
                    log.info("%s already present and valid; not downloading", dest)
                    continue
                except Exception as exc:
                    log.warning("%s exists but is invalid (%s); downloading again", dest, exc)
            download_file(url, dest, verify=verify, session=session, **kw)
    return dests[0], dests[1]
