"""Robust downloads over HTTP: retries with backoff, per-attempt deadlines, checked bodies and
atomic output files.

Every function here either produces a complete, checked output file or raises `DownloadError`
with a one-line message and leaves nothing behind: output is written to a temporary file beside
the target and renamed into place only once it is complete and verified (`kneurons.io`).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import threading
import time
import zlib
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import requests
import urllib3
from urllib3.exceptions import InvalidHeader, MaxRetryError, ProtocolError
from urllib3.util.retry import Retry

from kneurons.errors import UserError
from kneurons.io import atomic_path

log = logging.getLogger(__name__)
RETRY_STATUSES = frozenset({429, 500, 502, 503, 504})


MAX_RETRY_AFTER = 60.0  # seconds; caps Retry-After so a hostile or buggy value cannot stall us
MIN_RATE = 100_000.0  # bytes/s a file download must average (beyond `timeout`) to meet its deadline


class DownloadError(UserError, RuntimeError):
    """A download failed for good. The message is one line naming the URL or file."""


class BadResponse(Exception):
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
        why = f"HTTP {last.status}" if last.status else one_line(last.error)
        wait = (response and self.get_retry_after(response)) or self.get_backoff_time()
        log.warning("GET %s: %s; retry %d/%d in %.1f s", last.url, why, n, n + self.total, wait)
        super().sleep(response)
        self.started = time.monotonic()


def one_line(text: object, limit: int | None = None) -> str:
    text = " ".join(str(text).split())
    return text[:limit] if limit is not None else text


def _describe(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {one_line(exc.args[0] if exc.args else exc)}"


def decode_body(resp: requests.Response, body: bytes) -> bytes:
    """Undo gzip Content-Encoding; unlike urllib3's decoder, this notices a truncated stream."""
    encoding = resp.headers.get("Content-Encoding", "identity").strip().lower()
    if encoding in ("", "identity"):
        return body
    if encoding != "gzip":
        raise BadResponse(f"unexpected Content-Encoding {encoding!r}")
    gz = zlib.decompressobj(wbits=31)
    try:
        data = gz.decompress(body)
    except zlib.error as exc:
        raise BadResponse(f"corrupt gzip body ({len(body)} bytes): {exc}") from None
    if not gz.eof:
        raise BadResponse(f"gzip body cut short ({len(body)} bytes, stream unfinished)")
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
            raise BadResponse(_describe(exc)) from None
    finally:
        done.set()
    if expired.is_set():
        raise BadResponse(
            f"body not complete within the {allowed():.1f} s deadline ({received} bytes)"
        )


def session_for(session: requests.Session | None):
    return contextlib.nullcontext(session) if session is not None else requests.Session()


def _attempt(resp, url, start, timeout, min_rate, out, accept):
    """Read and check one response: the result, BadResponse (retry) or DownloadError (stop)."""
    status = resp.status_code
    if status in RETRY_STATUSES:  # urllib3 has given up on it
        raise BadResponse(f"HTTP {status} {resp.reason}")
    to_file = out is not None and status < 400
    try:
        with open(out, "wb") if to_file else io.BytesIO() as sink:
            _read_body(resp, sink, start, timeout, min_rate)
            body = b"" if to_file else sink.getvalue()
    except OSError as exc:
        raise DownloadError(f"GET {url}: cannot write {out}: {_describe(exc)}") from exc
    if status >= 400:
        with contextlib.suppress(BadResponse):
            body = decode_body(resp, body)
        text = one_line(body.decode("utf-8", "replace"), 200)
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
    each attempt). `accept` raises BadResponse for a body worth a retry.

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
                except BadResponse as exc:
                    reason = str(exc)
            try:
                retry = retry.increment("GET", url, error=ProtocolError(reason))
            except MaxRetryError:
                raise DownloadError(f"{gave_up} {reason}") from None
            retry.sleep()
    finally:
        for adapter, saved in adapters.items():
            adapter.max_retries = saved


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
    with session_for(session) as session, atomic_path(dest) as tmp:
        kw = {"timeout": timeout, "retries": retries, "backoff": backoff, "min_rate": min_rate}
        # identity: we want the exact bytes, and Content-Length to count them.
        fetch(session, url, headers={"Accept-Encoding": "identity"}, out=tmp, **kw)
        log.info("downloaded %s (%d bytes)", url, tmp.stat().st_size)
        if verify is not None:
            try:
                verify(tmp)
            except Exception as exc:
                problem = f"{type(exc).__name__}: {one_line(exc, 300)}"
                raise DownloadError(f"GET {url}: {dest} failed verification: {problem}") from exc
    return dest
