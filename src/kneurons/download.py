"""Robust downloads: UniProt REST searches and fair-esm pretrained checkpoints.

Every function here either produces a complete, checked output file or raises `DownloadError`
with a one-line message and leaves nothing behind: output is written to a temporary file beside
the target and renamed into place only once it is complete and verified (`kneurons.io`).
"""

from __future__ import annotations

import argparse
import io
import logging
import os
import re
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path

import numpy as np
import pandas as pd
import requests
import urllib3

from kneurons.io import atomic_path, write_tsv

log = logging.getLogger(__name__)

RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})
# Statuses whose Retry-After header we honour; capped so a hostile or buggy value cannot stall us.
RETRY_AFTER_STATUSES = frozenset({429, 503})
MAX_RETRY_AFTER = 60.0

UNIPROT_URL = "https://rest.uniprot.org"
UNIPROT_FIELDS = "accession,ec,sequence"
UNIPROT_COLUMNS = ["Entry", "EC number", "Sequence"]

ESM_BASE_URL = "https://dl.fbaipublicfiles.com/fair-esm"
ESM_URL = ESM_BASE_URL + "/models/{name}.pt"
ESM_REGRESSION_URL = ESM_BASE_URL + "/regression/{name}-contact-regression.pt"

# Transient transport failures: refused/reset connections, read timeouts, bodies cut short
# (urllib3 2 enforces Content-Length and raises IncompleteRead -> ChunkedEncodingError) and
# truncated gzip streams. All are worth another attempt.
_TRANSIENT = (
    requests.ConnectionError,
    requests.Timeout,
    requests.exceptions.ChunkedEncodingError,
    requests.exceptions.ContentDecodingError,
    urllib3.exceptions.HTTPError,
)


class DownloadError(RuntimeError):
    """A download failed for good. The message is one line naming the URL or file."""


class _Retryable(Exception):
    def __init__(self, reason: str, retry_after: float | None = None):
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


def _one_line(text: object, limit: int | None = None) -> str:
    text = " ".join(str(text).split())
    return text[:limit] if limit is not None else text


def _full_url(url: str, params: Mapping | None) -> str:
    if not params:
        return url
    return requests.Request("GET", url, params=params).prepare().url or url


def _retry_after(resp: requests.Response) -> float | None:
    """Seconds from a numeric Retry-After header, capped; None if absent or an HTTP date."""
    if resp.status_code not in RETRY_AFTER_STATUSES:
        return None
    value = resp.headers.get("Retry-After", "").strip()
    try:
        seconds = float(value)
    except ValueError:
        return None
    if not seconds >= 0:  # also rejects NaN
        return None
    return min(seconds, MAX_RETRY_AFTER)


def _check_status(resp: requests.Response, url: str) -> None:
    if resp.status_code in RETRY_STATUSES:
        raise _Retryable(f"HTTP {resp.status_code} {resp.reason}", _retry_after(resp))
    if resp.status_code >= 400:
        # Any other error status will not fix itself: fail now with what the server said.
        body = _one_line(resp.content.decode("utf-8", "replace"), 200)
        raise DownloadError(f"GET {url}: HTTP {resp.status_code} {resp.reason}: {body!r}")


def _check_length(resp: requests.Response, received: int) -> None:
    """Belt and braces over urllib3's own check: a body shorter than Content-Length is retried.

    Only meaningful without Content-Encoding, since Content-Length then counts decoded bytes.
    """
    if resp.headers.get("Content-Encoding", "identity").lower() not in ("", "identity"):
        return
    declared = resp.headers.get("Content-Length")
    if declared is None or not declared.strip().isdigit():
        return
    if received != int(declared):
        raise _Retryable(f"short body: got {received} of {int(declared)} bytes")


def _with_retries(
    url: str,
    attempt: Callable[[], object],
    *,
    retries: int,
    backoff: float,
    sleep: Callable[[float], object],
):
    if retries < 0:
        raise ValueError(f"retries must be >= 0, got {retries}")
    last = "no attempt made"
    for i in range(retries + 1):
        try:
            return attempt()
        except _Retryable as exc:
            last = exc.reason
            delay = exc.retry_after if exc.retry_after is not None else backoff * 2**i
        if i < retries:
            log.warning("GET %s: %s; retry %d/%d in %.1f s", url, last, i + 1, retries, delay)
            sleep(delay)
    raise DownloadError(f"GET {url} failed after {retries + 1} attempts; last error: {last}")


def fetch(
    session: requests.Session,
    url: str,
    *,
    params: Mapping | None = None,
    headers: Mapping | None = None,
    timeout: float | tuple[float, float] = 30,
    retries: int = 5,
    backoff: float = 1.0,
    sleep: Callable[[float], object] = time.sleep,
) -> requests.Response:
    """GET `url` and read the whole body, retrying transient failures.

    Retried: HTTP 429/500/502/503/504, connection errors, dropped connections, read timeouts
    and short bodies; at most `retries` retries after the first attempt. The wait is the
    Retry-After header (seconds, 429/503 only, capped at 60 s) or else `backoff * 2**attempt`.
    Other 4xx/5xx statuses fail at once. Raises DownloadError.
    """
    full = _full_url(url, params)

    def attempt() -> requests.Response:
        try:
            # stream=False: the body is read inside get(), so a cut-off body raises here.
            resp = session.get(url, params=params, headers=headers, timeout=timeout)
        except _TRANSIENT as exc:
            raise _Retryable(f"{type(exc).__name__}: {_one_line(exc)}") from exc
        except requests.RequestException as exc:
            raise DownloadError(f"GET {full}: {type(exc).__name__}: {_one_line(exc)}") from exc
        _check_status(resp, full)
        _check_length(resp, len(resp.content))
        return resp

    return _with_retries(full, attempt, retries=retries, backoff=backoff, sleep=sleep)


# --------------------------------------------------------------------------------------------
# UniProt


def uniprot_query(ec_class: int, min_length: int, max_length: int) -> str:
    """The UniProtKB query for reviewed entries of one top-level EC class in a length range."""
    return f"(reviewed:true) AND (ec:{ec_class}.*) AND (length:[{min_length} TO {max_length}])"


def _parse_tsv(resp: requests.Response, url: str) -> pd.DataFrame:
    # Decode explicitly: UniProt sends text/plain without a charset, which requests would
    # otherwise read as ISO-8859-1.
    text = resp.content.decode("utf-8")
    if not text.strip():
        return pd.DataFrame(columns=UNIPROT_COLUMNS, dtype=str)
    table = pd.read_csv(io.StringIO(text), sep="\t", dtype=str, keep_default_na=False)
    if list(table.columns) != UNIPROT_COLUMNS:
        raise DownloadError(
            f"GET {url}: expected TSV columns {UNIPROT_COLUMNS}, got {list(table.columns)}"
        )
    return table


def _search_all(
    session: requests.Session,
    base_url: str,
    query: str,
    *,
    page_size: int,
    fetch_kw: dict,
) -> tuple[pd.DataFrame, str | None, str | None]:
    """All rows of one UniProt search, following cursor links; checks X-Total-Results."""
    url: str | None = f"{base_url.rstrip('/')}/uniprotkb/search"
    params: dict | None = {
        "query": query,
        "format": "tsv",
        "fields": UNIPROT_FIELDS,
        "size": page_size,
    }
    first_url = _full_url(url, params)
    pages: list[pd.DataFrame] = []
    seen: set[str] = set()
    total = received = 0
    release = release_date = None
    while url is not None:
        resp = fetch(session, url, params=params, headers={"Accept-Encoding": "gzip"}, **fetch_kw)
        page_url = resp.url
        if not pages:
            value = resp.headers.get("X-Total-Results", "")
            if not value.strip().isdigit():
                raise DownloadError(f"GET {page_url}: missing or bad X-Total-Results {value!r}")
            total = int(value)
            release = resp.headers.get("X-UniProt-Release")
            release_date = resp.headers.get("X-UniProt-Release-Date")
        elif resp.headers.get("X-UniProt-Release") != release:
            # A release switch mid-pagination would mix two database versions.
            raise DownloadError(
                f"GET {page_url}: UniProt release changed during pagination "
                f"({release} -> {resp.headers.get('X-UniProt-Release')})"
            )
        page = _parse_tsv(resp, page_url)
        pages.append(page)
        received += len(page)
        if received > total:
            raise DownloadError(
                f"GET {first_url}: got {received} records, > X-Total-Results {total}"
            )
        url = resp.links.get("next", {}).get("url")
        params = None  # the next link carries the whole query
        if url is not None:
            if url in seen:
                raise DownloadError(f"GET {first_url}: pagination loops back to {url}")
            seen.add(url)
    if received != total:
        raise DownloadError(
            f"GET {first_url}: got {received} records but X-Total-Results said {total}"
        )
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
    sleep: Callable[[float], object] = time.sleep,
    session: requests.Session | None = None,
) -> dict:
    """Download reviewed UniProtKB entries per top-level EC class, sample `per_class` of each.

    Every matching entry of a class is fetched before sampling, so the sample is uniform over
    the class rather than biased to whatever the server lists first (this costs time for big
    classes; UniProt pages are cheap). Rows are sorted by accession and sampled with
    numpy.default_rng([seed, class]), so a given release and seed always give the same table.
    A class with fewer than `per_class` entries is kept whole, with a warning.

    An entry with EC numbers in two classes appears once per class (`query_class` tells which);
    callers drop such multi-class entries downstream.

    Writes a TSV with columns Entry, EC number, Sequence, query_class to `out_path`, atomically
    and only if every class succeeded. Returns provenance: release, release_date, base_url,
    queries, counts {class: {received, kept}} and the sampling parameters.
    """
    classes = [int(c) for c in classes]
    fetch_kw = {"timeout": timeout, "retries": retries, "backoff": backoff, "sleep": sleep}
    own_session = session is None
    session = session if session is not None else requests.Session()
    frames: list[pd.DataFrame] = []
    queries: dict[str, str] = {}
    counts: dict[str, dict[str, int]] = {}
    release = release_date = None
    try:
        for c in classes:
            query = uniprot_query(c, min_length, max_length)
            queries[str(c)] = query
            table, rel, rel_date = _search_all(
                session, base_url, query, page_size=page_size, fetch_kw=fetch_kw
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
    finally:
        if own_session:
            session.close()

    columns = [*UNIPROT_COLUMNS, "query_class"]
    combined = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=columns)
    write_tsv(combined[columns], out_path)
    return {
        "source": "UniProtKB REST",
        "base_url": base_url,
        "release": release,
        "release_date": release_date,
        "fields": UNIPROT_FIELDS,
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
    sleep: Callable[[float], object] = time.sleep,
    session: requests.Session | None = None,
    chunk_size: int = 1 << 20,
) -> Path:
    """Stream `url` to `dest` with retries, then `verify(tmp_path)` (may raise) before renaming.

    Each attempt restarts from scratch; a partial or unverifiable file never survives.
    Raises DownloadError.
    """
    dest = Path(dest)
    own_session = session is None
    session = session if session is not None else requests.Session()
    try:
        with atomic_path(dest) as tmp:

            def attempt() -> None:
                try:
                    # identity: we want the exact bytes, and Content-Length to count them.
                    with session.get(
                        url, stream=True, timeout=timeout, headers={"Accept-Encoding": "identity"}
                    ) as resp:
                        _check_status(resp, url)
                        size = 0
                        with open(tmp, "wb") as fh:  # "wb" truncates: a retry starts over
                            for chunk in resp.iter_content(chunk_size):
                                fh.write(chunk)
                                size += len(chunk)
                        _check_length(resp, size)
                except _TRANSIENT as exc:
                    raise _Retryable(f"{type(exc).__name__}: {_one_line(exc)}") from exc
                except requests.RequestException as exc:
                    raise DownloadError(
                        f"GET {url}: {type(exc).__name__}: {_one_line(exc)}"
                    ) from exc
                except OSError as exc:
                    raise DownloadError(f"GET {url}: cannot write {tmp}: {_one_line(exc)}") from exc
                log.info("downloaded %s (%d bytes)", url, size)

            _with_retries(url, attempt, retries=retries, backoff=backoff, sleep=sleep)
            if verify is not None:
                try:
                    verify(tmp)
                except Exception as exc:
                    raise DownloadError(
                        f"GET {url}: download for {dest} failed verification: "
                        f"{type(exc).__name__}: {_one_line(exc, 300)}"
                    ) from exc
    finally:
        if own_session:
            session.close()
    return dest


def load_checkpoint(path: str | os.PathLike) -> dict:
    """Load a fair-esm checkpoint safely (weights_only), allowing the argparse.Namespace in cfg."""
    import torch  # lazy: UniProt downloads should not pay for importing torch

    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True)


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
    sleep: Callable[[float], object] = time.sleep,
    session: requests.Session | None = None,
) -> tuple[Path, Path]:
    """Download fair-esm model `name` and its contact regression into `dest_dir`.

    Files are `{name}.pt` and `{name}-contact-regression.pt` (the layout that
    esm.pretrained.load_model_and_alphabet_local expects). Each is verified by a weights_only
    load (keys model+cfg / model) before it is renamed into place. Existing files that verify
    are kept unless `force`. `base_url` replaces https://dl.fbaipublicfiles.com/fair-esm.
    Returns (model_path, regression_path).
    """
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", name):
        raise DownloadError(f"fair-esm checkpoint name {name!r} is not a plain model name")
    if base_url is None:
        model_url, regression_url = ESM_URL, ESM_REGRESSION_URL
    else:
        base = base_url.rstrip("/")
        model_url = base + "/models/{name}.pt"
        regression_url = base + "/regression/{name}-contact-regression.pt"
    dest_dir = Path(dest_dir)
    jobs = [
        (model_url.format(name=name), dest_dir / f"{name}.pt", ("model", "cfg")),
        (
            regression_url.format(name=name),
            dest_dir / f"{name}-contact-regression.pt",
            ("model",),
        ),
    ]
    own_session = session is None
    session = session if session is not None else requests.Session()
    try:
        for url, dest, required in jobs:
            verify = _checkpoint_verifier(required)
            if dest.exists() and not force:
                try:
                    verify(dest)
                    log.info("%s already present and valid; not downloading", dest)
                    continue
                except Exception as exc:
                    log.warning("%s exists but is invalid (%s); downloading again", dest, exc)
            download_file(
                url,
                dest,
                verify=verify,
                timeout=timeout,
                retries=retries,
                backoff=backoff,
                sleep=sleep,
                session=session,
            )
    finally:
        if own_session:
            session.close()
    return jobs[0][1], jobs[1][1]
