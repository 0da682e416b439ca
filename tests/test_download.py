"""Download tests against a local fake UniProt/file server (127.0.0.1 only, no internet)."""

from __future__ import annotations

import argparse
import io
import random

import pandas as pd
import pytest
import requests
import torch

from kneurons import download as dl
from kneurons.download import (
    DownloadError,
    download_file,
    download_uniprot,
    fetch,
    fetch_esm_checkpoint,
    load_checkpoint,
)

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


class Sleeps(list):
    """Records requested sleeps instead of sleeping."""

    def __call__(self, seconds: float) -> None:
        self.append(seconds)


@pytest.fixture
def server():
    payload = b"".join(bytes([i % 251]) for i in range(50_000))
    with FakeServer(make_entries(), files={"blob.bin": payload}) as srv:
        yield srv


@pytest.fixture
def sleeps():
    return Sleeps()


def leftovers(path):
    return sorted(p.name for p in path.iterdir())


def pages_for(n: int) -> int:
    return -(-n // PAGE)


# --- fetch ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "fault, expected_sleep",
    [
        (Fault("500"), 1.0),
        (Fault("502"), 1.0),
        (Fault("504"), 1.0),
        (Fault("429", retry_after=7), 7.0),
        (Fault("503", retry_after=3), 3.0),
        (Fault("429", retry_after=120), 60.0),  # capped
        (Fault("503", retry_after="Wed, 21 Oct 2015 07:28:00 GMT"), 1.0),  # date: use backoff
        (Fault("drop"), 1.0),
        (Fault("short"), 1.0),
    ],
    ids=lambda v: v.kind if isinstance(v, Fault) else None,
)
def test_fetch_survives_fault(server, sleeps, fault, expected_sleep):
    server.inject(fault)
    with requests.Session() as session:
        resp = fetch(session, server.url + "/files/blob.bin", sleep=sleeps)
    assert resp.content == server.files["blob.bin"]
    assert server.count() == 2
    assert sleeps == [expected_sleep]


def test_fetch_exponential_backoff(server, sleeps):
    server.inject("500", "503", "500")
    with requests.Session() as session:
        fetch(session, server.url + "/files/blob.bin", backoff=0.5, sleep=sleeps)
    assert sleeps == [0.5, 1.0, 2.0]
    assert server.count() == 4


def test_fetch_gives_up_after_budget(server, sleeps):
    server.inject(*["503"] * 3)
    with requests.Session() as session, pytest.raises(DownloadError) as err:
        fetch(session, server.url + "/files/blob.bin", retries=2, sleep=sleeps)
    msg = str(err.value)
    assert "\n" not in msg
    assert "/files/blob.bin" in msg and "3 attempts" in msg and "HTTP 503" in msg
    assert server.count() == 3 and len(sleeps) == 2


def test_fetch_client_error_fails_at_once(server, sleeps):
    server.inject(Fault("404", body="no such\nthing " + "x" * 500))
    with requests.Session() as session, pytest.raises(DownloadError) as err:
        fetch(session, server.url + "/files/blob.bin", sleep=sleeps)
    msg = str(err.value)
    assert "HTTP 404" in msg and "no such thing" in msg and "\n" not in msg
    assert len(msg) < 400  # body quoted to 200 chars
    assert server.count() == 1 and sleeps == []


def test_fetch_slow_response_times_out_and_retries(server, sleeps):
    server.inject(Fault("slow", delay=1.0))
    with requests.Session() as session:
        resp = fetch(session, server.url + "/files/blob.bin", timeout=0.3, sleep=sleeps)
    assert resp.ok and server.count() == 2 and len(sleeps) == 1


def test_fetch_connection_refused_is_retried(sleeps):
    with FakeServer() as srv:
        url = srv.url + "/files/x"
    # Server stopped: the port now refuses connections.
    with requests.Session() as session, pytest.raises(DownloadError) as err:
        fetch(session, url, retries=1, timeout=2, sleep=sleeps)
    assert "2 attempts" in str(err.value) and "ConnectionError" in str(err.value)
    assert len(sleeps) == 1


def test_fetch_detects_short_body_without_urllib3():
    """Our own Content-Length check, for transports that do not enforce it."""

    def response(body: bytes, declared: int) -> requests.Response:
        resp = requests.Response()
        resp.status_code, resp._content, resp.url = 200, body, "http://127.0.0.1/x"
        resp.headers["Content-Length"] = str(declared)
        return resp

    class StubSession:
        def __init__(self):
            self.replies = [response(b"abc", 10), response(b"0123456789", 10)]

        def get(self, url, **kw):
            return self.replies.pop(0)

    sleeps = Sleeps()
    resp = fetch(StubSession(), "http://127.0.0.1/x", sleep=sleeps)
    assert resp.content == b"0123456789" and sleeps == [1.0]


# --- UniProt ----------------------------------------------------------------------------------


def expected_matches(server: FakeServer, c: int) -> set[str]:
    return {e.accession for e in server.entries if e.in_class(c) and 50 <= len(e.sequence) <= 1000}


def test_download_uniprot_paginates_and_samples(server, sleeps, tmp_path):
    out = tmp_path / "uniprot.tsv"
    info = download_uniprot(
        out, base_url=server.url, per_class=12, page_size=PAGE, seed=3, sleep=sleeps
    )
    table = pd.read_csv(out, sep="\t", dtype={"Entry": str})
    assert list(table.columns) == ["Entry", "EC number", "Sequence", "query_class"]
    assert table.groupby("query_class").size().to_dict() == {c: 12 for c in range(1, 7)}
    for c in range(1, 7):
        kept = set(table.loc[table.query_class == c, "Entry"])
        assert kept <= expected_matches(server, c)  # length filter and class honoured
    # >= 3 pages per class, no retries needed.
    n_pages = sum(pages_for(len(expected_matches(server, c))) for c in range(1, 7))
    assert n_pages >= 18 and server.count("/uniprotkb/search") == n_pages and sleeps == []
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


def test_uniprot_survives_faults_mid_pagination(server, sleeps, tmp_path):
    # Class 1 page 2 fails three different ways, class 2 page 1 is rate limited.
    server.inject("ok", "500", "drop", "short", "ok", "ok", Fault("429", retry_after=5))
    out = tmp_path / "u.tsv"
    info = download_uniprot(
        out, base_url=server.url, classes=(1, 2), per_class=12, page_size=PAGE, sleep=sleeps
    )
    assert sleeps == [1.0, 2.0, 4.0, 5.0]
    assert server.count() == 3 + 3 + 4
    assert info["counts"]["1"] == {"received": 26, "kept": 12}
    assert len(pd.read_csv(out, sep="\t")) == 24


def test_uniprot_slow_page_times_out_and_is_retried(server, sleeps, tmp_path):
    server.inject("ok", Fault("slow", delay=1.0))
    out = tmp_path / "u.tsv"
    download_uniprot(
        out,
        base_url=server.url,
        classes=(5,),
        per_class=3,
        page_size=PAGE,
        timeout=0.3,
        sleep=sleeps,
    )
    assert server.count() == 4 and len(sleeps) == 1 and out.exists()


def test_uniprot_past_retry_budget_leaves_nothing(server, sleeps, tmp_path):
    # Class 1 succeeds, then class 2 fails for good: no output at all.
    server.inject("ok", "ok", "ok", "500", "500", "500")
    out = tmp_path / "u.tsv"
    with pytest.raises(DownloadError) as err:
        download_uniprot(
            out, base_url=server.url, classes=(1, 2), page_size=PAGE, retries=2, sleep=sleeps
        )
    msg = str(err.value)
    assert "\n" not in msg and "3 attempts" in msg and "HTTP 500" in msg
    assert "/uniprotkb/search" in msg and "ec%3A2.%2A" in msg
    assert leftovers(tmp_path) == []


def test_uniprot_wrong_total_is_reported(server, sleeps, tmp_path):
    server.inject("wrong_total")
    out = tmp_path / "u.tsv"
    with pytest.raises(DownloadError, match=r"got 26 records but X-Total-Results said 33"):
        download_uniprot(out, base_url=server.url, classes=(1,), page_size=PAGE, sleep=sleeps)
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
    assert leftovers(tmp_path) == []


# --- files and checkpoints --------------------------------------------------------------------


def test_download_file_retries_dropped_connection(server, sleeps, tmp_path):
    server.inject("drop", "short")
    dest = tmp_path / "sub" / "blob.bin"
    seen = []
    path = download_file(
        server.url + "/files/blob.bin",
        dest,
        verify=lambda p: seen.append(p.read_bytes()),
        sleep=sleeps,
    )
    assert path == dest and dest.read_bytes() == server.files["blob.bin"]
    assert seen == [server.files["blob.bin"]]  # verify saw the complete file, before rename
    assert server.count() == 3 and sleeps == [1.0, 2.0]
    assert not any(r["gzip"] for r in server.log)
    assert leftovers(dest.parent) == ["blob.bin"]


def test_download_file_verify_failure_leaves_nothing(server, tmp_path):
    def verify(path):
        raise ValueError("bad magic\nnumber")

    dest = tmp_path / "blob.bin"
    with pytest.raises(DownloadError) as err:
        download_file(server.url + "/files/blob.bin", dest, verify=verify)
    msg = str(err.value)
    assert "failed verification" in msg and "bad magic number" in msg and "blob.bin" in msg
    assert "\n" not in msg and leftovers(tmp_path) == []


def test_download_file_past_budget_leaves_nothing(server, sleeps, tmp_path):
    server.inject("drop", "drop", "drop")
    with pytest.raises(DownloadError, match=r"failed after 3 attempts.*Connection"):
        download_file(server.url + "/files/blob.bin", tmp_path / "b", retries=2, sleep=sleeps)
    assert leftovers(tmp_path) == []


def test_download_file_404_fails_at_once(server, sleeps, tmp_path):
    with pytest.raises(DownloadError, match=r"HTTP 404.*not found: /files/nope"):
        download_file(server.url + "/files/nope", tmp_path / "nope", sleep=sleeps)
    assert server.count() == 1 and sleeps == [] and leftovers(tmp_path) == []


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


def test_fetch_esm_checkpoint_builds_model(server, sleeps, tmp_path):
    import esm

    name = "esm2_t2_tiny"
    model_bytes, regression_bytes = tiny_esm2(name)
    server.files[f"fair-esm/models/{name}.pt"] = model_bytes
    server.files[f"fair-esm/regression/{name}-contact-regression.pt"] = regression_bytes
    server.inject("drop")  # the first download is cut off and retried

    base = server.url + "/files/fair-esm"
    model_path, regression_path = fetch_esm_checkpoint(name, tmp_path, base_url=base, sleep=sleeps)
    assert model_path == tmp_path / f"{name}.pt"
    assert regression_path == tmp_path / f"{name}-contact-regression.pt"
    assert server.count() == 3 and sleeps == [1.0]

    model, alphabet = esm.pretrained.load_model_and_alphabet_core(
        name, load_checkpoint(model_path), load_checkpoint(regression_path)
    )
    assert len(model.layers) == 2 and model.embed_dim == 32
    tokens = alphabet.get_batch_converter()([("p", "MKTAYIAK")])[2]
    with torch.no_grad():
        assert model(tokens, return_contacts=True)["contacts"].shape == (1, 8, 8)

    # Files already present and valid: nothing is downloaded again.
    fetch_esm_checkpoint(name, tmp_path, base_url=base, sleep=sleeps)
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


def test_default_urls():
    assert dl.ESM_URL.format(name="esm2_t33_650M_UR50D") == (
        "https://dl.fbaipublicfiles.com/fair-esm/models/esm2_t33_650M_UR50D.pt"
    )
    assert dl.ESM_REGRESSION_URL.format(name="esm2_t6_8M_UR50D") == (
        "https://dl.fbaipublicfiles.com/fair-esm/regression/esm2_t6_8M_UR50D-contact-regression.pt"
    )
