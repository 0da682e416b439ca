"""Real-data paths through the Snakemake CLI: UniProt under faults, users' own tables and FASTA,
bad input, and runs killed mid-job. The UniProt server is tests/fake_uniprot.py on 127.0.0.1."""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from workflow_helpers import ROOT, layer_config, make_workdir, read_config, snakemake, write_config

from fake_uniprot import Entry, FakeServer, Fault

pytestmark = pytest.mark.slow  # every test runs snakemake

AMINO = "ACDEFGHIKLMNPQRSTVWY"


def protein(rng: random.Random, n: int = 70) -> str:
    return "M" + "".join(rng.choice(AMINO) for _ in range(n - 1))


def uniprot_entries() -> list[Entry]:
    rng = random.Random(7)
    return [
        Entry(f"P{c}{i:03d}", f"{c}.1.1.{i}", protein(rng)) for c in (1, 2, 3) for i in range(8)
    ]


def uniprot_config(url: str, retries: int) -> dict:
    return {
        "data": {
            "source": "uniprot",
            "classes": [1, 2, 3],
            "uniprot": {"url": url, "per_class": 6, "retries": retries, "timeout": 5},
        }
    }


def output_of(result: subprocess.CompletedProcess) -> str:
    return result.stdout + result.stderr


def leftovers(path: Path) -> list[str]:
    return sorted(str(p.relative_to(path)) for p in path.rglob("*.tmp"))


# --- UniProt ----------------------------------------------------------------------------------


def test_uniprot_download_records_release_and_survives_a_500(tmp_path):
    with FakeServer(uniprot_entries()) as server:
        server.inject("500")  # the first request fails once; one retry is allowed
        url = server.url
        path = make_workdir(tmp_path, uniprot_config(server.url, retries=1))
        snakemake(path, "results/data/split/seed0.tsv")
    info = json.loads((path / "results/data/download.json").read_text())
    assert info["source"] == "uniprot"
    assert info["release"] == "2026_04" and info["release_date"] == "01-October-2026"
    assert info["uniprot"]["base_url"] == url
    assert info["uniprot"]["counts"] == {str(c): {"received": 8, "kept": 6} for c in (1, 2, 3)}
    assert info["class_counts"] == {"1": 6, "2": 6, "3": 6}
    split = pd.read_csv(path / "results/data/split/seed0.tsv", sep="\t")
    assert len(split) == 18 and set(split["split"]) == {"train", "validation", "test"}
    assert "retry 1/1" in (path / "results/logs/download.log").read_text()


def test_uniprot_server_down_fails_naming_the_url_and_leaves_nothing(tmp_path):
    with FakeServer(uniprot_entries()) as server:
        server.inject(*["500"] * 100)
        url = server.url
        path = make_workdir(tmp_path, uniprot_config(server.url, retries=1))
        result = snakemake(path, "results/data/split/seed0.tsv", check=False)
    assert result.returncode != 0
    errors = [line for line in output_of(result).splitlines() if line.startswith("error in")]
    assert errors, output_of(result)
    assert errors[0].startswith(f"error in download: GET {url}/uniprotkb/search?")
    assert "failed after 2 attempts; last error:" in errors[0] and "HTTP 500" in errors[0]
    assert not (path / "results/data/sequences.tsv").exists()
    assert not (path / "results/data/download.json").exists()
    assert leftovers(path) == []


# --- users' tables and FASTA ------------------------------------------------------------------


def table_config(table: Path, **data) -> dict:
    return {
        "data": {"source": "table", "classes": [1, 2, 3], "table": {"path": str(table)}, **data}
    }


@pytest.mark.parametrize(
    "name, content, nonstandard, message",
    [
        (
            "mine.csv",
            "Entry,Sequence\nP1,MKV\n",
            "drop",
            "missing column(s) ['EC number']; columns present: ['Entry', 'Sequence']",
        ),
        (
            "mine.tsv",
            "Entry\tEC number\tSequence\nP1\t1.1.1.1\t"
            + "A" * 60
            + "\nP2\t2.1.1.1\t"
            + "AU" * 30
            + "\n",
            "error",
            "id P2: non-standard residue 'U' at position 2",
        ),
        (
            "mine.fasta",
            ">A1 EC=1.1.1.1\n" + "M" * 60 + "\n>A2 EC=1.1.1.1\n" + "W" * 60 + "\n"
            ">A1 EC=1.1.1.1\n" + "K" * 60 + "\n",
            "drop",
            "record 3: duplicate id A1 with a different sequence than record 1",
        ),
    ],
)
def test_bad_input_shows_one_line_naming_file_and_record(
    tmp_path, name, content, nonstandard, message
):
    table = tmp_path / name
    table.write_text(content)
    path = make_workdir(tmp_path, table_config(table, nonstandard=nonstandard))
    result = snakemake(path, "results/data/split/seed0.tsv", check=False)
    assert result.returncode != 0
    errors = {line for line in output_of(result).splitlines() if line.startswith("error in")}
    assert errors == {f"error in download: {table}: {message}"}, output_of(result)
    assert not (path / "results/data/sequences.tsv").exists()
    # the user's mistake: one line in the log too, no traceback anywhere
    log = (path / "results/logs/download.log").read_text()
    assert log.count("\n") == 1 and log.rstrip().endswith(f"{table}: {message}"), log
    assert "Traceback" not in output_of(result)


def test_tab_separated_csv_table_runs_and_reruns_on_content_not_path(tmp_path):
    """A benchmark set's tab-separated .csv: read by content; editing it reruns the download,
    spelling its path another way does not."""
    rng = random.Random(5)
    rows = [f"A{c}{i}\t{c}.1.1.{i}\t{protein(rng)}\n" for c in (1, 2, 3) for i in range(6)]
    table = tmp_path / "data" / "benchmark.csv"
    table.parent.mkdir()
    table.write_text("Entry\tEC number\tSequence\n" + "".join(rows))
    path = make_workdir(tmp_path, table_config(table))
    snakemake(path, "results/data/split/seed0.tsv")
    sequences = pd.read_csv(path / "results/data/sequences.tsv", sep="\t")
    assert len(sequences) == 18

    def planned() -> str:
        return output_of(snakemake(path, "--dry-run", "results/data/split/seed0.tsv"))

    assert "Nothing to be done" in planned()
    config = read_config(path)
    config["data"]["table"]["path"] = str(table.parent / "." / "benchmark.csv")
    write_config(path, config)
    assert "Nothing to be done" in planned()
    table.write_text(table.read_text() + f"B1\t1.2.1.1\t{protein(rng)}\n")
    assert "download" in planned() and "Nothing to be done" not in planned()


def test_dropped_rows_are_logged_and_a_small_class_fails_the_split(tmp_path):
    rng = random.Random(3)
    rows = [(f"A{c}{i}", f"{c}.1.1.1", protein(rng)) for c in (1, 2) for i in range(8)]
    rows += [("C1", "3.1.1.1", protein(rng)), ("C2", "3.2.1.1", protein(rng))]
    rows += [
        ("X1", "1.1.1.1", protein(rng)[:-1] + "X"),  # non-standard residue
        ("X2", "1.1.1.1", protein(rng, 20)),  # shorter than min_length
        ("X3", "", protein(rng)),  # no EC number
        ("X4", "1.1.1.1; 2.1.1.1", protein(rng)),  # two top-level classes
        ("X5", "7.1.1.1", protein(rng)),  # class not selected
        ("X6", "1.1.1.1", rows[0][2]),  # same sequence as A10
        rows[1],  # same id and sequence again
    ]
    table = tmp_path / "mine.tsv"
    pd.DataFrame(rows, columns=["Entry", "EC number", "Sequence"]).to_csv(
        table, sep="\t", index=False
    )
    path = make_workdir(tmp_path, table_config(table))
    result = snakemake(path, "results/data/split/seed0.tsv", check=False)
    log = (path / "results/logs/download.log").read_text()
    for reason in [
        "non-standard residue",
        "shorter than 50",
        "no EC number",
        "multiple top-level EC classes",
        "EC class not selected",
        "duplicate sequence",
        "duplicate id (same sequence)",
    ]:
        assert f"dropped: dropped 1: {reason}" in log
    info = json.loads((path / "results/data/download.json").read_text())
    assert info["class_counts"] == {"1": 8, "2": 8, "3": 2} and sum(info["dropped"].values()) == 7
    assert result.returncode != 0
    errors = [line for line in output_of(result).splitlines() if line.startswith("error in")]
    assert errors == [
        "error in split: results/data/sequences.tsv: class 3 has 2 sequences; the split needs "
        "at least 3; add sequences or remove the class from data.classes"
    ], output_of(result)


# --- interrupted runs -------------------------------------------------------------------------


def start(path: Path, *targets: str) -> subprocess.Popen:
    return subprocess.Popen(
        [sys.executable, "-m", "snakemake", "--cores", "2", *targets],
        cwd=path,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def kill_when(proc: subprocess.Popen, ready, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    try:
        while not ready():
            assert proc.poll() is None, "snakemake ended before the kill"
            assert time.monotonic() < deadline, "the job never got going"
            time.sleep(0.1)
    finally:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def rerun_after_kill(path: Path, target: str) -> None:
    """A killed snakemake leaves its lock: the next run says so, `--unlock` clears it, and then
    a plain run (no --rerun-incomplete) finishes, since no partial output was left."""
    locked = snakemake(path, target, check=False)
    assert locked.returncode != 0 and "--unlock" in output_of(locked)
    snakemake(path, "--unlock")
    result = snakemake(path, target)
    assert "incomplete" not in output_of(result).lower()


def test_killed_finetune_leaves_no_output_and_the_next_run_finishes(tmp_path):
    path = make_workdir(tmp_path, {"finetune": {"epochs": 1000}})
    target = "results/finetune/seed0/metrics.json"
    log = path / "results/logs/finetune/seed0.log"
    proc = start(path, target)
    kill_when(proc, lambda: log.exists() and "epoch 1/1000 train_loss" in log.read_text())
    finetune = path / "results/finetune/seed0"
    assert not (finetune / "model.pt").exists() and not (finetune / "metrics.json").exists()
    assert leftovers(path) == []
    config = read_config(path)
    config["finetune"]["epochs"] = 1
    write_config(path, config)
    rerun_after_kill(path, target)
    assert json.loads((finetune / "metrics.json").read_text())["best_epoch"] == 1


def test_killed_download_leaves_no_output_and_the_next_run_finishes(tmp_path):
    with FakeServer(uniprot_entries()) as server:
        server.inject(Fault("slow", delay=20))
        path = make_workdir(tmp_path, uniprot_config(server.url, retries=0))
        config = read_config(path)
        config["data"]["uniprot"]["timeout"] = 30
        write_config(path, config)
        proc = start(path, "results/data/split/seed0.tsv")
        kill_when(proc, lambda: server.count("/uniprotkb/search") > 0)
        assert not (path / "results/data").exists() or not any((path / "results/data").iterdir())
        assert leftovers(path) == []
        rerun_after_kill(path, "results/data/split/seed0.tsv")
    info = json.loads((path / "results/data/download.json").read_text())
    assert info["release"] == "2026_04"


@pytest.mark.skipif(shutil.which("mmseqs") is None, reason="mmseqs not installed")
def test_table_config_with_a_cluster_split_end_to_end(tmp_path):
    """.test/config/table.yaml: a user's table of families, split by MMseqs2 clusters."""
    config = layer_config("table")
    config["data"]["table"]["path"] = str(ROOT / config["data"]["table"]["path"])
    path = make_workdir(tmp_path, config)
    snakemake(path)
    for seed in (0, 1):
        split = pd.read_csv(path / f"results/data/split/seed{seed}.tsv", sep="\t")
        family = split["id"].str.replace(r"m\d+$", "", regex=True)
        assert (split.groupby(family)["split"].nunique() == 1).all()  # families stay whole
        report = json.loads((path / f"results/data/split/seed{seed}.json").read_text())
        assert report["method"] == "cluster" and report["clusters"]["n_clusters"] == 15
        assert report["test_max_identity_to_train"]["share_above_0.3"] == 0
    assert (path / "results/summary.md").is_file()
    assert (path / "results/knowledge/summary.md").is_file()
