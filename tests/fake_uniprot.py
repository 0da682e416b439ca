"""A fake UniProt REST and static-file server for download tests; listens on 127.0.0.1 only.

    with FakeServer(entries, files={"a.bin": b"..."}) as server:
        server.inject("500", Fault("429", retry_after=7))  # the next two requests fail
        download_uniprot(out, base_url=server.url, ...)
        assert server.count("/uniprotkb/search") == ...

Endpoints:
  /uniprotkb/search  paginated TSV (Entry, EC number, Sequence, then the feature columns of
                     FEATURES that `fields` asks for) of `entries` filtered by the query's EC
                     class and length range; `Link: <...>; rel="next"` cursors,
                     X-Total-Results, X-UniProt-Release(-Date); gzip if the client accepts it.
  /files/<name>      the bytes in `files[name]` (name may contain slashes).

Faults (one per request, consumed in order from `server.faults`):
  "ok"             no fault (use to let some requests through before a fault)
  "<status>"       e.g. "500", "503", "404": that status; `retry_after` adds a Retry-After
                   header, `retry_after_date` one with the HTTP date that many seconds ahead
  "drop"           full Content-Length, half the body, then a TCP reset
  "short"          full Content-Length, half the body, then an orderly close
  "slow"           sleep `delay` seconds before answering normally
  "trickle"        the body in `piece`-byte pieces every `delay` seconds (default 0.05): every
                   read gets bytes soon, so only a deadline on the whole body ends it
  "cut_gzip"       the gzip body cut in half, with a Content-Length matching the cut body
  "close_mid_row"  the plain body cut in the middle of a row, no Content-Length, then close
  "html"           200 with a text/html maintenance page
  "wrong_total"    X-Total-Results off by 7 (search only)
  "missing_rows"   the page's last row left out, otherwise complete (search only)
  "wrong_columns"  another header row (search only)

`content_length=False` sends any of these without Content-Length, ending the body by closing.

Each request is logged in `server.log` with path, params, fault, gzip and `time` (monotonic
seconds on arrival), so tests can measure the waits between attempts.
"""

from __future__ import annotations

import email.utils
import gzip
import itertools
import re
import socket
import struct
import threading
import time
from collections import deque
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qsl, unquote, urlencode, urlsplit


@dataclass
class Fault:
    kind: str
    retry_after: str | int | float | None = None
    retry_after_date: float | None = None
    delay: float = 0.0
    piece: int = 16
    content_length: bool = True
    body: str = "injected fault"


# The sequence-feature fields the fake serves, with UniProt's TSV headers.
FEATURES = {"ft_act_site": "Active site", "ft_binding": "Binding site", "ft_motif": "Motif"}
BASE_FIELDS = ["accession", "ec", "sequence"]


@dataclass
class Entry:
    accession: str
    ec: str  # UniProt style: "1.1.1.1; 2.7.1.1"
    sequence: str
    # field -> TSV text, e.g. {"ft_act_site": 'ACT_SITE 38; /note="Proton acceptor"'}
    features: dict[str, str] = field(default_factory=dict)

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
        port: int = 0,
    ):
        self.entries = [e if isinstance(e, Entry) else Entry(*e) for e in entries]
        self.files = dict(files or {})
        self.release = release
        self.release_date = release_date
        self.gzip_enabled = gzip_enabled
        self.port = port
        self.faults: deque[Fault] = deque()
        self.log: list[dict] = []  # one dict per request received
        self.lock = threading.Lock()
        self._httpd: ThreadingHTTPServer | None = None
        self._url: str | None = None
        self._thread: threading.Thread | None = None

    # -- control ------------------------------------------------------------------------------

    def inject(self, *faults: str | Fault) -> None:
        with self.lock:
            self.faults.extend(f if isinstance(f, Fault) else Fault(f) for f in faults)

    def count(self, path: str | None = None) -> int:
        with self.lock:
            return sum(1 for r in self.log if path is None or r["path"] == path)

    def gaps(self) -> list[float]:
        """Seconds between the arrivals of consecutive requests."""
        with self.lock:
            times = [r["time"] for r in self.log]
        return [b - a for a, b in itertools.pairwise(times)]

    @property
    def url(self) -> str:
        assert self._url is not None, "server not started"
        return self._url

    def start(self) -> FakeServer:
        self._httpd = ThreadingHTTPServer(("127.0.0.1", self.port), _Handler)
        self._httpd.daemon_threads = True
        self._httpd.fake = self  # type: ignore[attr-defined]
        host, port = self._httpd.server_address[:2]
        self._url = f"http://{host}:{port}"  # kept after stop() for requests still in flight
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
        fields = params.get("fields", "").split(",")
        if (
            "(reviewed:true)" not in query
            or not ec_class
            or not length
            or params.get("format") != "tsv"
            or fields[:3] != BASE_FIELDS
            or not set(fields[3:]) <= set(FEATURES)
        ):
            return 400, {}, f"bad search request: {params}".encode()
        extra = fields[3:]
        c, lo, hi = int(ec_class.group(1)), int(length.group(1)), int(length.group(2))
        matches = [e for e in self.entries if e.in_class(c) and lo <= len(e.sequence) <= hi]
        size = int(params.get("size", 25))
        offset = int(params.get("cursor", "o0")[1:])
        page = matches[offset : offset + size]
        kind = fault.kind if fault else None
        if kind == "missing_rows":
            page = page[:-1]
        names = ["Entry", "Entry Name" if kind == "wrong_columns" else "EC number", "Sequence"]
        header = "\t".join(names + [FEATURES[f] for f in extra])
        body = header + "\n"
        for e in page:
            body += "\t".join(
                [e.accession, e.ec, e.sequence, *(e.features.get(f, "") for f in extra)]
            )
            body += "\n"
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
            record = {
                "path": split.path,
                "params": params,
                "fault": fault and fault.kind,
                "time": time.monotonic(),
            }
            fake.log.append(record)

        if fault and fault.kind == "slow":
            time.sleep(fault.delay)

        if fault and fault.kind.isdigit():
            status, headers, body = int(fault.kind), {}, fault.body.encode()
            if fault.retry_after is not None:
                headers["Retry-After"] = str(fault.retry_after)
            if fault.retry_after_date is not None:
                when = time.time() + fault.retry_after_date
                headers["Retry-After"] = email.utils.formatdate(when, usegmt=True)
        elif fault and fault.kind == "html":
            status, headers = 200, {"Content-Type": "text/html; charset=utf-8"}
            body = b"<html><body><h1>UniProt is down for maintenance</h1></body></html>"
        elif split.path == "/uniprotkb/search":
            status, headers, body = fake.search(params, fault)
        elif split.path.startswith("/files/") and unquote(split.path[7:]) in fake.files:
            status, headers = 200, {"Content-Type": "application/octet-stream"}
            body = fake.files[unquote(split.path[7:])]
        else:
            status, headers, body = 404, {}, f"not found: {split.path}".encode()

        kind = fault.kind if fault else None
        if kind == "close_mid_row":
            # Plain text, cut a few characters into the last row; the end is the close.
            body = body[: body.rindex(b"\n", 0, len(body) - 1) + 5]
        elif status == 200 and accept_gzip and fake.gzip_enabled:
            body = gzip.compress(body)
            headers["Content-Encoding"] = "gzip"
            if kind == "cut_gzip":
                body = body[: len(body) // 2]
        record["gzip"] = headers.get("Content-Encoding") == "gzip"
        if kind != "close_mid_row" and (fault is None or fault.content_length):
            headers["Content-Length"] = str(len(body))
        else:
            headers["Connection"] = "close"
            self.close_connection = True

        try:
            self.send_response(status)
            for key, value in headers.items():
                self.send_header(key, value)
            self.end_headers()
            if kind == "trickle":
                for i in range(0, len(body), fault.piece):
                    self.wfile.write(body[i : i + fault.piece])
                    self.wfile.flush()
                    time.sleep(fault.delay or 0.05)
                return
            if fault and fault.kind in ("drop", "short"):
                self.wfile.write(body[: len(body) // 2])
                self.wfile.flush()
                self.close_connection = True
                if fault.kind == "drop":
                    self._reset()
                return
            self.wfile.write(body)
        except OSError:  # e.g. broken pipe, reset
            # The client gave up (e.g. timed out on a slow response).
            self.close_connection = True

    def _reset(self) -> None:
        """Close with a TCP RST rather than a FIN, like a crashed peer or middlebox."""
        # Detach the fd so socketserver's own shutdown(SHUT_WR) cannot send a FIN first.
        sock = socket.socket(fileno=self.connection.detach())
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        sock.close()
