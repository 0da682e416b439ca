"""A fake UniProt REST and static-file server for download tests; listens on 127.0.0.1 only.

    with FakeServer(entries, files={"a.bin": b"..."}) as server:
        server.inject("500", Fault("429", retry_after=7))  # the next two requests fail
        download_uniprot(out, base_url=server.url, ...)
        assert server.count("/uniprotkb/search") == ...

Endpoints:
  /uniprotkb/search  paginated TSV (Entry, EC number, Sequence) of `entries` filtered by the
                     query's EC class and length range; `Link: <...>; rel="next"` cursors,
                     X-Total-Results, X-UniProt-Release(-Date); gzip if the client accepts it.
  /files/<name>      the bytes in `files[name]` (name may contain slashes).

Faults (one per request, consumed in order from `server.faults`):
  "ok"           no fault (use to let some requests through before a fault)
  "<status>"     e.g. "500", "503", "404": that status; `retry_after` adds a Retry-After header
  "drop"         full Content-Length, half the body, then a TCP reset
  "short"        full Content-Length, half the body, then an orderly close
  "slow"         sleep `delay` seconds before answering normally
  "wrong_total"  X-Total-Results off by 7 (search only)
"""

from __future__ import annotations

import gzip
import re
import socket
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit


@dataclass
class Fault:
    kind: str
    retry_after: str | int | float | None = None
    delay: float = 0.0
    body: str = "injected fault"


@dataclass
class Entry:
    accession: str
    ec: str  # UniProt style: "1.1.1.1; 2.7.1.1"
    sequence: str

    def in_class(self, ec_class: int) -> bool:
        return any(ec.strip().startswith(f"{ec_class}.") for ec in self.ec.split(";"))


_CLASS = re.compile(r"\(ec:(\d+)\.\*\)")
_LENGTH = re.compile(r"\(length:\[(\d+) TO (\d+)\]\)")


class FakeServer:
    def __init__(
        self,
        entries=(),
        files: dict[str, bytes] | None = None,
        *,
        release: str = "2026_04",
        release_date: str | None = "01-October-2026",
        gzip_enabled: bool = True,
    ):
        self.entries = [e if isinstance(e, Entry) else Entry(*e) for e in entries]
        self.files = dict(files or {})
        self.release = release
        self.release_date = release_date
        self.gzip_enabled = gzip_enabled
        self.faults: deque[Fault] = deque()
        self.log: list[dict] = []  # one dict per request received
        self.lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._thread: threading.Thread | None = None

    # -- control ------------------------------------------------------------------------------

    def inject(self, *faults: str | Fault) -> None:
        with self.lock:
            self.faults.extend(f if isinstance(f, Fault) else Fault(f) for f in faults)

    def count(self, path: str | None = None) -> int:
        with self.lock:
            return sum(1 for r in self.log if path is None or r["path"] == path)

    @property
    def url(self) -> str:
        assert self._httpd is not None, "server not started"
        host, port = self._httpd.server_address[:2]
        return f"http://{host}:{port}"

    def start(self) -> FakeServer:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.fake = self  # type: ignore[attr-defined]
        # Short poll interval: shutdown() waits up to one interval.
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        if self._httpd is not None:
            self._httpd.shutdown()
            self._httpd.server_close()
            self._thread.join(timeout=5)
            self._httpd = None

    def __enter__(self) -> FakeServer:
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()

    # -- endpoints ----------------------------------------------------------------------------

    def search(self, params: dict, fault: Fault | None) -> tuple[int, dict, bytes]:
        query = params.get("query", "")
        ec_class, length = _CLASS.search(query), _LENGTH.search(query)
        if (
            "(reviewed:true)" not in query
            or not ec_class
            or not length
            or params.get("format") != "tsv"
            or params.get("fields") != "accession,ec,sequence"
        ):
            return 400, {}, f"bad search request: {params}".encode()
        c, lo, hi = int(ec_class.group(1)), int(length.group(1)), int(length.group(2))
        matches = [e for e in self.entries if e.in_class(c) and lo <= len(e.sequence) <= hi]
        size = int(params.get("size", 25))
        offset = int(params.get("cursor", "o0")[1:])
        page = matches[offset : offset + size]
        body = "Entry\tEC number\tSequence\n" + "".join(
            f"{e.accession}\t{e.ec}\t{e.sequence}\n" for e in page
        )
        total = len(matches) + (7 if fault and fault.kind == "wrong_total" else 0)
        headers = {
            "Content-Type": "text/plain; format=tsv",
            "X-Total-Results": str(total),
            "X-UniProt-Release": self.release,
        }
        if self.release_date:
            headers["X-UniProt-Release-Date"] = self.release_date
        if offset + size < len(matches):
            nxt = urlencode({**params, "cursor": f"o{offset + size}"})
            headers["Link"] = f'<{self.url}/uniprotkb/search?{nxt}>; rel="next"'
        return 200, headers, body.encode()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"  # keep-alive, like the real servers
    disable_nagle_algorithm = True  # else headers then body costs a 40 ms delayed-ACK stall

    def log_message(self, *args) -> None:  # keep pytest output quiet
        pass

    def do_GET(self) -> None:
        fake: FakeServer = self.server.fake  # type: ignore[attr-defined]
        split = urlsplit(self.path)
        params = dict(parse_qsl(split.query))
        accept_gzip = "gzip" in self.headers.get("Accept-Encoding", "")
        with fake.lock:
            fault = fake.faults.popleft() if fake.faults else None
            record = {"path": split.path, "params": params, "fault": fault and fault.kind}
            fake.log.append(record)

        if fault and fault.kind == "slow":
            time.sleep(fault.delay)

        if fault and fault.kind.isdigit():
            status, headers, body = int(fault.kind), {}, fault.body.encode()
            if fault.retry_after is not None:
                headers["Retry-After"] = str(fault.retry_after)
        elif split.path == "/uniprotkb/search":
            status, headers, body = fake.search(params, fault)
        elif split.path.startswith("/files/") and unquote(split.path[7:]) in fake.files:
            status, headers = 200, {"Content-Type": "application/octet-stream"}
            body = fake.files[unquote(split.path[7:])]
        else:
            status, headers, body = 404, {}, f"not found: {split.path}".encode()

        if status == 200 and accept_gzip and fake.gzip_enabled:
            body = gzip.compress(body)
            headers["Content-Encoding"] = "gzip"
        record["gzip"] = headers.get("Content-Encoding") == "gzip"

        try:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            if fault and fault.kind in ("drop", "short"):
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                if fault.kind == "drop":
                    self._reset()
                return
            self.wfile.write(body)
        except (BrokenPipeError, ConnectionResetError):
            # The client gave up (e.g. timed out on a slow response).
            self.close_connection = True

    def _reset(self) -> None:
        """Close with a TCP RST rather than a FIN, like a crashed peer or middlebox."""
        # Detach the fd so socketserver's own shutdown(SHUT_WR) cannot send a FIN first.
        sock = socket.socket(fileno=self.connection.detach())
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
