"""Download tests against a local fake UniProt/file server (127.0.0.1 only, no internet)."""

from __future__ import annotations

import argparse
import io
import json
import random
import re
import socket
import subprocess
import sys
import threading
import time

import pandas as pd
import pytest
import requests
import torch

from kneurons import workflow
from kneurons.data import http, tables
from kneurons.data.http import DownloadError, download_file, fetch
from kneurons.data.motifs import parse_motifs
from kneurons.data.uniprot import (
    FEATURE_OUTSIDE,
    FEATURE_UNPARSABLE,
    download_uniprot,
    features_to_motifs,
)
from kneurons.io import load_checkpoint
from kneurons.model import release
from kneurons.model.release import fetch_esm_checkpoint

from fake_uniprot import Entry, FakeServer, Fault

AMINO = "ACDEFGHIKLMNPQRSTVWY"
IN_RANGE = 25  # entries per class within [50, 1000]
PAGE = 10  # -> 3 pages per class (26 matches with the multi-class entry for classes 1 and 2)


def make_entries() -> list[Entry]:
    rng = random.Random(1)
    entries = []
    for c in range(1, 7):
        lengths = [rng.randint(50, 1000) for _ in range(IN_RANGE)] + [20, 49, 1001, 1500]
        for i, n in enumerate(lengths):
            seq = "".join(rng.choice(AMINO) for _ in range(n))
            entries.append(Entry(f"P{c}{i:04d}", f"{c}.{i % 5 + 1}.1.{i}", seq))
    # One enzyme in two classes: it must appear once under each.
    entries.append(Entry("Q99999", "1.1.1.1; 2.7.1.1", "M" * 100))
    rng.shuffle(entries)  # server order must not matter for the sample
    return entries


FAST = {"backoff": 0, "timeout": 0.5}  # no waits between attempts; trickles fail in 0.5 s


@pytest.fixture
def server():
    payload = b"".join(bytes([i % 251]) for i in range(50_000))
    with FakeServer(make_entries(), files={"blob.bin": payload}) as srv:
        yield srv


def leftovers(path):
    return sorted(p.name for p in path.iterdir())


def pages_for(n: int) -> int:
    return -(-n // PAGE)


def assert_one_line(msg: str, *parts: str) -> None:
    assert "\n" not in msg
    for part in parts:
        assert part in msg, (part, msg)


# --- fetch ------------------------------------------------------------------------------------


def get(url: str, **kw):
    """fetch(url) in a fresh session, asking for the bytes as they are (no gzip)."""
    with requests.Session() as session:
        return fetch(session, url, headers={"Accept-Encoding": "identity"}, **kw)


@pytest.mark.parametrize(
    "fault",
    [
        Fault("429"),
        Fault("500"),
        Fault("502"),
        Fault("503"),
        Fault("504"),
        Fault("503", retry_after="Wed, 21 Oct 2015 07:28:00 GMT"),  # in the past: no wait
        Fault("503", retry_after="soon"),  # unparseable: plain backoff
        Fault("drop"),
        Fault("short"),
        Fault("slow", delay=1.0),
        Fault("trickle"),
        Fault("trickle", content_length=False),
    ],
    ids=lambda f: f"{f.kind}-{f.retry_after}-{f.content_length}",
)
def test_fetch_survives_fault(server, fault):
    server.inject(fault)
    resp, body = get(server.url + "/files/blob.bin", **FAST)
    assert body == server.files["blob.bin"] and resp.status_code == 200
    assert server.count() == 2


def test_fetch_deadline_is_exact(server):
    # A piece every 0.45 s: with per-read timeouts alone the attempt would end with the read
    # that returns at 0.9 s; the watchdog ends it at the 0.5 s deadline.
    server.inject(Fault("trickle", delay=0.45))
    start = time.monotonic()
    with pytest.raises(DownloadError, match=r"failed after 1 attempts.*0.5 s deadline"):
        get(server.url + "/files/blob.bin", timeout=0.5, retries=0)
    assert time.monotonic() - start < 0.75


def test_fetch_exponential_backoff(server):
    server.inject("500", "503", "500")
    get(server.url + "/files/blob.bin", backoff=0.1)
    assert server.count() == 4
    gaps = server.gaps()  # urllib3: no wait before the first retry, then 0.2 s, 0.4 s
    assert gaps[0] < 0.15 and 0.2 <= gaps[1] < 0.4 and 0.4 <= gaps[2] < 0.7


def test_fetch_honours_retry_after_seconds_and_http_date(server):
    server.inject(Fault("429", retry_after=1), Fault("503", retry_after_date=2))
    get(server.url + "/files/blob.bin", backoff=0)
    assert server.count() == 3
    seconds, date = server.gaps()
    assert 0.95 <= seconds < 1.3
    assert 0.95 <= date < 2.3  # the date has whole seconds: 2 s ahead means 1 to 2 s


def test_fetch_caps_retry_after(server, monkeypatch):
    monkeypatch.setattr(http, "MAX_RETRY_AFTER", 0.3)
    server.inject(Fault("429", retry_after=120), Fault("503", retry_after_date=3600))
    get(server.url + "/files/blob.bin", backoff=0)
    assert server.count() == 3
    assert all(0.25 <= gap < 0.6 for gap in server.gaps())


def test_fetch_gives_up_after_budget(server):
    server.inject(*["503"] * 3)
    with requests.Session() as session:
        before = {prefix: a.max_retries for prefix, a in session.adapters.items()}
        with pytest.raises(DownloadError) as err:
            fetch(session, server.url + "/files/blob.bin", retries=2, backoff=0)
        # The session's own retry policy is back as it was.
        assert {prefix: a.max_retries for prefix, a in session.adapters.items()} == before
    assert_one_line(str(err.value), "/files/blob.bin", "3 attempts", "HTTP 503")
    assert server.count() == 3


@pytest.mark.parametrize("retries, ok", [(3, False), (4, True)])
def test_fetch_shares_one_budget_between_urllib3_and_body_checks(server, retries, ok):
    # urllib3 retries the statuses, fetch the cut and the trickling body: 4 faults in all.
    server.inject("500", "drop", "503", Fault("trickle"))
    if ok:
        assert get(server.url + "/files/blob.bin", retries=retries, **FAST)[1]
    else:
        with pytest.raises(DownloadError, match=r"failed after 4 attempts.*deadline"):
            get(server.url + "/files/blob.bin", retries=retries, **FAST)
    assert server.count() == retries + 1


def test_fetch_client_error_fails_at_once(server):
    server.inject(Fault("404", body="no such\nthing " + "x" * 500))
    with pytest.raises(DownloadError) as err:
        get(server.url + "/files/blob.bin", backoff=0)
    msg = str(err.value)
    assert_one_line(msg, "/files/blob.bin", "HTTP 404", "no such thing")
    assert len(msg) < 400  # body quoted to 200 chars
    assert server.count() == 1


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def test_fetch_connection_refused_for_good():
    url = f"http://127.0.0.1:{free_port()}/files/x"
    start = time.monotonic()
    with pytest.raises(DownloadError) as err:
        get(url, retries=2, backoff=0, timeout=2)
    assert_one_line(str(err.value), url, "3 attempts", "Connection refused")
    assert time.monotonic() - start < 2


def test_fetch_connection_refused_then_up():
    port = free_port()
    late = FakeServer(files={"x": b"hello"}, port=port)
    starter = threading.Timer(0.3, late.start)
    starter.start()
    try:
        # Attempts at about 0, 0, 0.4 and 1.2 s.
        _, body = get(f"http://127.0.0.1:{port}/files/x", backoff=0.2)
        assert body == b"hello" and late.count() == 1
    finally:
        starter.join()
        late.stop()


# --- UniProt ----------------------------------------------------------------------------------


def expected_matches(server: FakeServer, c: int) -> set[str]:
    return {e.accession for e in server.entries if e.in_class(c) and 50 <= len(e.sequence) <= 1000}


def test_download_uniprot_paginates_and_samples(server, tmp_path):
    out = tmp_path / "uniprot.tsv"
    info = download_uniprot(out, base_url=server.url, per_class=12, page_size=PAGE, seed=3)
    table = pd.read_csv(out, sep="\t", dtype={"Entry": str})
    assert list(table.columns) == ["Entry", "EC number", "Sequence", "query_class"]
    assert table.groupby("query_class").size().to_dict() == {c: 12 for c in range(1, 7)}
    for c in range(1, 7):
        kept = set(table.loc[table.query_class == c, "Entry"])
        assert kept <= expected_matches(server, c)  # length filter and class honoured
    # >= 3 pages per class, no retries needed.
    n_pages = sum(pages_for(len(expected_matches(server, c))) for c in range(1, 7))
    assert n_pages >= 18 and server.count("/uniprotkb/search") == n_pages
    assert all(r["gzip"] for r in server.log)  # we asked for gzip and got it
    assert info["release"] == "2026_04" and info["release_date"] == "01-October-2026"
    assert info["counts"]["1"] == {"received": 26, "kept": 12}
    assert info["counts"]["3"] == {"received": 25, "kept": 12}
    assert info["queries"]["2"] == "(reviewed:true) AND (ec:2.*) AND (length:[50 TO 1000])"
    assert info["base_url"] == server.url
    assert leftovers(tmp_path) == ["uniprot.tsv"]

    # Same seed -> same bytes, whatever the page size; another seed -> another sample.
    again = tmp_path / "again.tsv"
    download_uniprot(again, base_url=server.url, per_class=12, page_size=7, seed=3)
    assert again.read_bytes() == out.read_bytes()
    other = tmp_path / "other.tsv"
    download_uniprot(other, base_url=server.url, per_class=12, page_size=PAGE, seed=4)
    assert other.read_bytes() != out.read_bytes()


def test_multiclass_entry_kept_under_both_classes(server, tmp_path):
    out = tmp_path / "u.tsv"
    info = download_uniprot(out, base_url=server.url, classes=(1, 2), per_class=100)
    table = pd.read_csv(out, sep="\t")
    rows = table[table.Entry == "Q99999"]
    assert sorted(rows.query_class) == [1, 2]
    assert info["counts"] == {"1": {"received": 26, "kept": 26}, "2": {"received": 26, "kept": 26}}


def test_uniprot_without_gzip_gives_same_table(server, tmp_path):
    zipped = tmp_path / "zipped.tsv"
    download_uniprot(zipped, base_url=server.url, classes=(4,), per_class=5, page_size=PAGE)
    server.gzip_enabled = False
    plain = tmp_path / "plain.tsv"
    download_uniprot(plain, base_url=server.url, classes=(4,), per_class=5, page_size=PAGE)
    assert [r["gzip"] for r in server.log] == [True] * 3 + [False] * 3
    assert zipped.read_bytes() == plain.read_bytes()


def test_uniprot_accepts_tab_separated_values_type(server, tmp_path, monkeypatch):
    original = server.search

    def tsv_type(params, fault):
        status, headers, body = original(params, fault)
        return status, {**headers, "Content-Type": "text/tab-separated-values"}, body

    monkeypatch.setattr(server, "search", tsv_type)
    download_uniprot(tmp_path / "u.tsv", base_url=server.url, classes=(4,), page_size=PAGE)
    assert server.count() == 3


# Every fault class, with what the error must say when it persists. Each is injected on the
# second page of class 1 (three pages); its URL carries a cursor.
UNIPROT_FAULTS = {
    "429": (Fault("429"), "HTTP 429"),
    "500": (Fault("500"), "HTTP 500"),
    "502": (Fault("502"), "HTTP 502"),
    "503": (Fault("503"), "HTTP 503"),
    "504": (Fault("504"), "HTTP 504"),
    "retry_after_date": (Fault("503", retry_after_date=1), "HTTP 503"),
    "drop": (Fault("drop"), "Connection broken"),
    "short": (Fault("short"), "IncompleteRead"),
    "slow": (Fault("slow", delay=1.0), "Read timed out"),
    "trickle": (Fault("trickle"), "deadline"),
    "cut_gzip": (Fault("cut_gzip"), "gzip body cut short"),
    "close_mid_row": (Fault("close_mid_row"), "does not end with a newline"),
    "html": (Fault("html"), "response is not TSV (Content-Type 'text/html; charset=utf-8'): "),
    "missing_rows": (Fault("missing_rows"), "9 rows on a page with a next link"),
    "wrong_columns": (Fault("wrong_columns"), "header row is 'Entry\\tEntry Name\\tSequence'"),
    "wrong_total": (Fault("wrong_total"), "X-Total-Results 33 differs from 26"),
}


def download_class_1(server, out, **kw):
    kw = {**FAST, **kw}
    return download_uniprot(out, base_url=server.url, classes=(1,), page_size=PAGE, **kw)


@pytest.mark.parametrize("name", UNIPROT_FAULTS)
def test_uniprot_recovers_from_one_fault(server, tmp_path, name):
    reference = tmp_path / "reference.tsv"
    download_class_1(server, reference)
    assert server.count() == 3
    server.inject("ok", UNIPROT_FAULTS[name][0])
    out = tmp_path / "out" / "u.tsv"
    download_class_1(server, out)
    assert server.count() == 3 + 4  # one retry
    assert out.read_bytes() == reference.read_bytes()
    assert leftovers(out.parent) == ["u.tsv"]


@pytest.mark.parametrize("name", UNIPROT_FAULTS)
def test_uniprot_persistent_fault_fails_cleanly(server, tmp_path, name):
    fault, problem = UNIPROT_FAULTS[name]
    server.inject("ok", *[fault] * 3)
    start = time.monotonic()
    with pytest.raises(DownloadError) as err:
        download_class_1(server, tmp_path / "u.tsv", retries=2)
    elapsed = time.monotonic() - start
    # 3 attempts of at most timeout (0.5 s) each, plus 2 Retry-After waits of at most 1 s.
    assert elapsed < 3 * 0.5 + 2 * 1 + 0.5
    msg = str(err.value)
    assert_one_line(msg, f"GET {server.url}/uniprotkb/search?", "cursor=o10", "3 attempts", problem)
    assert "release" not in msg  # e.g. a 200 HTML page is no release change
    assert server.count() == 4
    assert leftovers(tmp_path) == []


def test_uniprot_one_budget_per_page(server, tmp_path):
    faults = ("500", Fault("cut_gzip"), "503", Fault("html"))
    server.inject("ok", *faults)
    with pytest.raises(DownloadError, match=r"failed after 4 attempts.*not TSV"):
        download_class_1(server, tmp_path / "u.tsv", retries=3)
    assert server.count() == 1 + 4 and leftovers(tmp_path) == []
    server.inject("ok", *faults)
    download_class_1(server, tmp_path / "u.tsv", retries=4)
    assert server.count() == 5 + 3 + 4


def test_uniprot_survives_faults_mid_pagination(server, tmp_path):
    reference = tmp_path / "reference.tsv"
    download_uniprot(reference, base_url=server.url, classes=(1, 2), per_class=12, page_size=PAGE)
    # Class 1 page 2 fails three different ways, class 2 page 1 is rate limited.
    server.inject("ok", "500", "drop", "short", "ok", "ok", Fault("429", retry_after=0))
    out = tmp_path / "u.tsv"
    info = download_uniprot(
        out, base_url=server.url, classes=(1, 2), per_class=12, page_size=PAGE, backoff=0
    )
    assert server.count() == 6 + 3 + 3 + 4
    assert info["counts"]["1"] == {"received": 26, "kept": 12}
    assert out.read_bytes() == reference.read_bytes()


def test_uniprot_past_retry_budget_leaves_nothing(server, tmp_path):
    # Class 1 succeeds, then class 2 fails for good: no output at all.
    server.inject("ok", "ok", "ok", "500", "500", "500")
    out = tmp_path / "u.tsv"
    with pytest.raises(DownloadError) as err:
        download_uniprot(
            out, base_url=server.url, classes=(1, 2), page_size=PAGE, retries=2, backoff=0
        )
    assert_one_line(str(err.value), "3 attempts", "HTTP 500", "/uniprotkb/search", "ec%3A2.%2A")
    assert leftovers(tmp_path) == []


def test_uniprot_wrong_total_is_reported(server, tmp_path):
    server.inject(*["wrong_total"] * 3)  # every page says 33
    with pytest.raises(DownloadError) as err:
        download_class_1(server, tmp_path / "u.tsv", retries=0)
    assert_one_line(str(err.value), "cursor=o20", "got 26 records but X-Total-Results said 33")
    # A wrong total on the first page cannot be told from the right one on the next.
    server.inject("wrong_total")
    with pytest.raises(DownloadError, match=r"cursor=o10.*X-Total-Results 26 differs from 33"):
        download_class_1(server, tmp_path / "u.tsv", retries=1)
    assert leftovers(tmp_path) == []


def test_uniprot_release_change_mid_pagination_is_reported(server, tmp_path, monkeypatch):
    original = server.search

    def switching(params, fault):
        status, headers, body = original(params, fault)
        if "cursor" in params:
            headers["X-UniProt-Release"] = "2026_05"
        return status, headers, body

    monkeypatch.setattr(server, "search", switching)
    with pytest.raises(DownloadError, match=r"release changed during pagination"):
        download_uniprot(tmp_path / "u.tsv", base_url=server.url, classes=(1,), page_size=PAGE)
    assert server.count() == 2  # no retries: a new release will not go away
    assert leftovers(tmp_path) == []


# --- sequence features ------------------------------------------------------------------------

FEATURED = [
    Entry(
        "F0001",
        "1.1.1.1",
        "M" + "A" * 59,  # 60 residues
        {
            "ft_act_site": 'ACT_SITE 1; /note="Proton acceptor"; /evidence="ECO:0000255"; '
            'ACT_SITE 60; /evidence="ECO:0000269|PubMed:1"',
            "ft_binding": 'BINDING 10..15; /ligand="NAD(+)"; /ligand_id="ChEBI:CHEBI:57540"; '
            'BINDING 58..61; /ligand="Zn(2+)"; BINDING ?..20; /ligand="a; b"',
            "ft_motif": 'MOTIF 30..34; /note="HIGH region"; MOTIF 40..42',
        },
    ),
    Entry("F0002", "1.2.1.1", "M" + "C" * 69),  # no features
    Entry("F0003", "1.1.1.2", "M" + "D" * 79, {"ft_motif": "MOTIF 80..80"}),
]
FEATURED_MOTIFS = {
    "F0001": "act_site:0:1:feature;binding:9:15:feature;high_region:29:34:feature;"
    "motif:39:42:feature;act_site:59:60:feature",
    "F0002": "",
    "F0003": "motif:79:80:feature",
}


def test_uniprot_features_asked_for_only_when_on(tmp_path):
    with FakeServer(FEATURED) as server:
        off = download_uniprot(tmp_path / "off.tsv", base_url=server.url, classes=(1,))
        on = download_uniprot(tmp_path / "on.tsv", base_url=server.url, classes=(1,), features=True)
        fields = [r["params"]["fields"] for r in server.log]
    assert fields == [
        "accession,ec,sequence",
        "accession,ec,sequence,ft_act_site,ft_binding,ft_motif",
    ]
    assert off["fields"] == fields[0] and on["fields"] == fields[1]
    assert off["features_dropped"] == {}
    table = pd.read_csv(tmp_path / "off.tsv", sep="\t", dtype=str)
    assert list(table.columns) == ["Entry", "EC number", "Sequence", "query_class"]


def test_uniprot_features_become_motifs(tmp_path):
    out = tmp_path / "u.tsv"
    with FakeServer(FEATURED) as server:
        info = download_uniprot(out, base_url=server.url, classes=(1,), features=True)
    table = pd.read_csv(out, sep="\t", dtype=str, keep_default_na=False)
    assert list(table.columns) == ["Entry", "EC number", "Sequence", "motifs", "query_class"]
    assert dict(zip(table["Entry"], table["motifs"], strict=True)) == FEATURED_MOTIFS
    # 1-based inclusive -> 0-based half-open: residue 1 is sequence[0], 10..15 is [9:15]
    entries = parse_motifs(FEATURED_MOTIFS["F0001"], length=60)
    assert [e["kind"] for e in entries] == ["feature"] * 5
    # BINDING 58..61 runs past the 60 residues; BINDING ?..20 has an unknown start
    assert info["features_dropped"] == {
        FEATURE_OUTSIDE: 1,
        FEATURE_UNPARSABLE: 1,
    }


def test_uniprot_features_count_in_dropped_and_off_leaves_motifs_empty(tmp_path):
    params = {
        "source": "uniprot",
        "classes": [1, 2],
        "min_length": 50,
        "max_length": 1000,
        "nonstandard": "drop",
    }
    extra = [Entry("G0001", "2.1.1.1", "M" + "G" * 59, {"ft_act_site": "ACT_SITE 99"})]
    with FakeServer(FEATURED + extra) as server:
        uniprot = {"url": server.url, "per_class": 10, "seed": 0, "retries": 0, "timeout": 5}
        results = {}
        for features in (False, True):
            out = argparse.Namespace(
                table=tmp_path / f"{features}.tsv", info=tmp_path / f"{features}.json"
            )
            settings = {**params, "uniprot": {**uniprot, "features": features}}
            workflow.call("download", argparse.Namespace(), out, settings)
            results[features] = (tables.read_labelled(out.table), json.loads(out.info.read_text()))
    table, info = results[False]
    assert (table["motifs"] == "").all() and len(table) == 4
    assert info["dropped"] == {}
    table, info = results[True]
    assert dict(zip(table["id"], table["motifs"], strict=True)) == {**FEATURED_MOTIFS, "G0001": ""}
    assert info["dropped"] == {FEATURE_OUTSIDE: 2, FEATURE_UNPARSABLE: 1}


def test_uniprot_features_page_missing_a_column_is_retried_then_fails(tmp_path, monkeypatch):
    with FakeServer(FEATURED) as server:
        original = server.search

        def short_rows(params, fault):
            status, headers, body = original(params, fault)
            lines = body.decode().split("\n")
            cut = [lines[0]] + ["\t".join(line.split("\t")[:-1]) for line in lines[1:-1]]
            return status, headers, ("\n".join(cut) + "\n").encode()

        monkeypatch.setattr(server, "search", short_rows)
        with pytest.raises(DownloadError) as err:
            download_uniprot(
                tmp_path / "u.tsv",
                base_url=server.url,
                classes=(1,),
                features=True,
                retries=1,
                backoff=0,
            )
        assert server.count() == 2
    assert_one_line(str(err.value), "2 attempts", "a row has other than 6 fields")
    assert leftovers(tmp_path) == []


@pytest.mark.parametrize(
    "text, motifs, dropped",
    [
        ("", "", {}),
        ("ACT_SITE 5", "act_site:4:5:feature", {}),
        ('ACT_SITE 5; /note="a"; ACT_SITE 5; /note="b"', "act_site:4:5:feature", {}),
        ('MOTIF 2..4; /note="Zinc-finger (C2H2)"', "zinc_finger_c2h2:1:4:feature", {}),
        ("BINDING 0..3", "", {"outside": 1}),
        ("BINDING 5..3", "", {"unparsable": 1}),
        ("BINDING <1..3; BINDING 4..>9; BINDING ?", "", {"unparsable": 3}),
        ('/note="orphan"; BINDING 1..2', "binding:0:2:feature", {"unparsable": 1}),
        ("binding 1..2", "", {"unparsable": 1}),
    ],
)
def test_features_to_motifs(text, motifs, dropped):
    reasons = {"outside": FEATURE_OUTSIDE, "unparsable": FEATURE_UNPARSABLE}
    got, bad = features_to_motifs([text], 10)
    assert got == motifs
    assert bad == {reasons[k]: n for k, n in dropped.items()}


# --- files and checkpoints --------------------------------------------------------------------


def test_download_file_retries_dropped_connection(server, tmp_path):
    server.inject("drop", "short")
    dest = tmp_path / "sub" / "blob.bin"
    seen = []
    path = download_file(
        server.url + "/files/blob.bin",
        dest,
        verify=lambda p: seen.append(p.read_bytes()),
        backoff=0,
    )
    assert path == dest and dest.read_bytes() == server.files["blob.bin"]
    assert seen == [server.files["blob.bin"]]  # verify saw the complete file, before rename
    assert server.count() == 3
    assert not any(r["gzip"] for r in server.log)
    assert leftovers(dest.parent) == ["blob.bin"]


@pytest.mark.parametrize("content_length", [True, False])
def test_download_file_trickle(server, tmp_path, content_length):
    url, dest = server.url + "/files/blob.bin", tmp_path / "blob.bin"
    trickle = Fault("trickle", content_length=content_length)
    kw = {**FAST, "min_rate": 1e6}  # deadline 0.5 s + 50 kB / 1 MB/s
    server.inject(trickle)
    download_file(url, dest, **kw)
    assert dest.read_bytes() == server.files["blob.bin"] and server.count() == 2
    dest.unlink()
    server.inject(*[trickle] * 3)
    start = time.monotonic()
    with pytest.raises(DownloadError) as err:
        download_file(url, dest, retries=2, **kw)
    assert time.monotonic() - start < 3 * 0.55 + 0.5
    assert_one_line(str(err.value), url, "3 attempts", "deadline")
    assert leftovers(tmp_path) == []


def test_download_file_deadline_scales_with_size(server, tmp_path):
    # 50 kB at about 100 kB/s takes 0.5 s: too long for a fixed 0.2 s deadline, fine for
    # 0.2 s + 50 kB / (50 kB/s).
    steady = Fault("trickle", piece=5000, delay=0.05)
    url, dest = server.url + "/files/blob.bin", tmp_path / "blob.bin"
    server.inject(steady)
    download_file(url, dest, timeout=0.2, min_rate=50_000, retries=0)
    assert dest.read_bytes() == server.files["blob.bin"]
    server.inject(steady)
    with pytest.raises(DownloadError, match="deadline"):
        get(url, timeout=0.2, retries=0)


def test_download_file_verify_failure_leaves_nothing(server, tmp_path):
    def verify(path):
        raise ValueError("bad magic\nnumber")

    dest = tmp_path / "blob.bin"
    with pytest.raises(DownloadError) as err:
        download_file(server.url + "/files/blob.bin", dest, verify=verify)
    assert_one_line(str(err.value), "failed verification", "bad magic number", "blob.bin")
    assert leftovers(tmp_path) == []


def test_download_file_past_budget_leaves_nothing(server, tmp_path):
    server.inject("drop", "drop", "drop")
    with pytest.raises(DownloadError, match=r"failed after 3 attempts.*Connection"):
        download_file(server.url + "/files/blob.bin", tmp_path / "b", retries=2, backoff=0)
    assert leftovers(tmp_path) == []


def test_download_file_404_fails_at_once(server, tmp_path):
    with pytest.raises(DownloadError, match=r"HTTP 404.*not found: /files/nope"):
        download_file(server.url + "/files/nope", tmp_path / "nope")
    assert server.count() == 1 and leftovers(tmp_path) == []


def tiny_esm2(name: str) -> tuple[bytes, bytes]:
    """A tiny checkpoint and contact regression in fair-esm's on-disk format."""
    import esm

    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    layers, dim, heads = 2, 32, 4
    model = esm.model.esm2.ESM2(
        num_layers=layers, embed_dim=dim, attention_heads=heads, alphabet=alphabet
    )
    state = model.state_dict()
    regression = {k: state.pop(k) for k in list(state) if k.startswith("contact_head.regression")}
    cfg = argparse.Namespace(
        encoder_layers=layers,
        encoder_embed_dim=dim,
        encoder_attention_heads=heads,
        token_dropout=True,
    )
    # fair-esm stores weights with the fairseq prefix that load_model_and_alphabet_core strips.
    model_data = {"model": {f"encoder.{k}": v for k, v in state.items()}, "cfg": {"model": cfg}}
    buffers = []
    for obj in (model_data, {"model": regression}):
        buf = io.BytesIO()
        torch.save(obj, buf)
        buffers.append(buf.getvalue())
    return buffers[0], buffers[1]


def test_fetch_esm_checkpoint_builds_model(server, tmp_path):
    import esm

    name = "esm2_t2_tiny"
    model_bytes, regression_bytes = tiny_esm2(name)
    server.files[f"fair-esm/models/{name}.pt"] = model_bytes
    server.files[f"fair-esm/regression/{name}-contact-regression.pt"] = regression_bytes
    server.inject("drop")  # the first download is cut off and retried

    base = server.url + "/files/fair-esm"
    model_path, regression_path = fetch_esm_checkpoint(name, tmp_path, base_url=base, backoff=0)
    assert model_path == tmp_path / f"{name}.pt"
    assert regression_path == tmp_path / f"{name}-contact-regression.pt"
    assert server.count() == 3

    model, alphabet = esm.pretrained.load_model_and_alphabet_core(
        name, load_checkpoint(model_path), load_checkpoint(regression_path)
    )
    assert len(model.layers) == 2 and model.embed_dim == 32
    tokens = alphabet.get_batch_converter()([("p", "MKTAYIAK")])[2]
    with torch.no_grad():
        assert model(tokens, return_contacts=True)["contacts"].shape == (1, 8, 8)

    # Files already present and valid: nothing is downloaded again.
    fetch_esm_checkpoint(name, tmp_path, base_url=base)
    assert server.count() == 3
    assert leftovers(tmp_path) == sorted([model_path.name, regression_path.name])


def test_fetch_esm_checkpoint_rejects_wrong_content(server, tmp_path):
    name = "esm2_t2_bad"
    buf = io.BytesIO()
    torch.save({"weights": {}}, buf)  # loads fine but lacks model/cfg
    server.files[f"fair-esm/models/{name}.pt"] = buf.getvalue()
    with pytest.raises(DownloadError, match=r"failed verification.*lacks keys \['model', 'cfg'\]"):
        fetch_esm_checkpoint(name, tmp_path, base_url=server.url + "/files/fair-esm")
    assert leftovers(tmp_path) == []


def test_fetch_esm_checkpoint_rejects_odd_names(tmp_path):
    with pytest.raises(DownloadError, match="not a plain model name"):
        fetch_esm_checkpoint("../evil", tmp_path, base_url="http://127.0.0.1:1")


def test_release_name_pattern_matches_exactly_the_release_names():
    assert release.RELEASE_NAME_PATTERN == r"esm2_t(6_8M|12_35M|30_150M|33_650M|36_3B|48_15B)_UR50D"
    for name in release.RELEASE_NAMES:
        assert re.fullmatch(release.RELEASE_NAME_PATTERN, name)
    for name in ("tiny", "esm2_t6_8M_UR50D.pt", "esm2_t7_8M_UR50D", "esm1b_t33_650M_UR50S"):
        assert not re.fullmatch(release.RELEASE_NAME_PATTERN, name)
    # the Snakefile imports the names while it is parsed: no torch for that
    code = "import sys, kneurons.model.release; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


def test_default_urls():
    assert release.ESM_URL.format(name="esm2_t33_650M_UR50D") == (
        "https://dl.fbaipublicfiles.com/fair-esm/models/esm2_t33_650M_UR50D.pt"
    )
    assert release.ESM_REGRESSION_URL.format(name="esm2_t6_8M_UR50D") == (
        "https://dl.fbaipublicfiles.com/fair-esm/regression/esm2_t6_8M_UR50D-contact-regression.pt"
    )
