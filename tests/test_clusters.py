"""Identity-based splits: MMseqs2 clusters, whole clusters per split, leakage of test to train,
and the per-class cap of user tables. Each MMseqs2 call costs about 1.5 s (its k-mer index),
so the real ones are few and the clustering is shared."""

from __future__ import annotations

import json
import random
import shutil
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from kneurons import workflow
from kneurons.data import clusters, tables
from kneurons.data.tables import DataError
from kneurons.errors import UserError
from kneurons.io import write_tsv

needs_mmseqs = pytest.mark.skipif(shutil.which("mmseqs") is None, reason="mmseqs not installed")

AMINO = "ACDEFGHIKLMNPQRSTVWY"
CLASSES = (1, 2, 3)
FAMILIES = 5  # per class
MEMBERS = 4  # per family, each 4 substitutions away from the family's ancestor (~91% identity)
FRACTIONS = {"train": 0.6, "validation": 0.2, "test": 0.2}


def family_table() -> pd.DataFrame:
    """Families of near-duplicates (ids c{class}f{family}m{member}); unrelated across families."""
    rng = random.Random(0)
    rows = []
    for cls in CLASSES:
        for fam in range(FAMILIES):
            ancestor = ["M"] + [rng.choice(AMINO) for _ in range(89)]
            for member in range(MEMBERS):
                seq = list(ancestor)
                for pos in rng.sample(range(1, len(seq)), 4):
                    seq[pos] = rng.choice(AMINO.replace(seq[pos], ""))
                rows.append((f"c{cls}f{fam}m{member}", "".join(seq), f"{cls}.1.1.1", cls, ""))
    return tables.as_table({c: [r[i] for r in rows] for i, c in enumerate(tables.COLUMNS)})


def family(ids) -> pd.Series:
    return pd.Series(ids).str.replace(r"m\d+$", "", regex=True)


@pytest.fixture(scope="module")
def table() -> pd.DataFrame:
    return family_table()


@pytest.fixture(scope="module")
def clustered(table) -> pd.Series:
    return clusters.cluster_sequences(table, identity=0.3, coverage=0.8)


def straddling(split: pd.DataFrame) -> list[str]:
    """Families with members in more than one split."""
    per_family = split.groupby(family(split["id"]).to_numpy())["split"].nunique()
    return sorted(per_family.index[per_family > 1])


# --- clustering and assignment ---------------------------------------------------------------


@needs_mmseqs
def test_clusters_are_the_planted_families_whatever_the_row_order(table, clustered):
    assert clustered.index.tolist() == table["id"].tolist()
    by_cluster = family(clustered.index).groupby(clustered.to_numpy()).nunique()
    assert len(by_cluster) == len(CLASSES) * FAMILIES and (by_cluster == 1).all()
    shuffled = table.sample(frac=1, random_state=1)
    again = clusters.cluster_sequences(shuffled, identity=0.3, coverage=0.8)
    assert again[clustered.index].tolist() == clustered.tolist()  # same ids, representatives
    assert clusters.cluster_summary(clustered) == {
        "n_clusters": 15,
        "n_sequences": 60,
        "singletons": 0,
        "largest": 4,
        "mean_size": 4.0,
        "size_distribution": [[4, 15]],
    }


def planted_clusters(table: pd.DataFrame) -> pd.Series:
    """The clusters MMseqs2 finds here (test above), without running it."""
    return pd.Series(family(table["id"]).to_numpy(), index=table["id"].to_numpy())


def test_cluster_split_keeps_families_whole_and_stratifies(table):
    out = clusters.cluster_split(table, FRACTIONS, 0, planted_clusters(table))
    assert out["id"].tolist() == table["id"].tolist()
    assert out.columns.tolist() == [*tables.COLUMNS, "split"]
    assert straddling(out) == []
    counts = out.groupby(["ec_class", "split"]).size().unstack()
    # 20 per class: targets 12 / 4 / 4, met exactly with families of 4
    assert (counts["train"] == 12).all() and (counts["validation"] == 4).all()
    assert (counts["test"] == 4).all()


def test_cluster_split_deterministic_for_a_seed(table):
    planted = planted_clusters(table)
    first = clusters.cluster_split(table, FRACTIONS, 3, planted).set_index("id")["split"]
    again = clusters.cluster_split(table.iloc[::-1], FRACTIONS, 3, planted)
    assert again.set_index("id")["split"].to_dict() == first.to_dict()  # order does not matter
    others = [clusters.cluster_split(table, FRACTIONS, s, planted) for s in (4, 5)]
    assert any(not o.set_index("id")["split"].equals(first) for o in others)


def test_small_class_reaches_every_split(table):
    """Three clusters of 4, 4 and 2 (targets 6 / 2 / 2): filling by target alone gives
    train at least two of them; here each split gets one, test the smallest."""
    small = table[~table["id"].str.match(r"c3f[34]|c3f2m[12]")]  # class 3: families of 4, 4, 2
    for seed in range(5):
        out = clusters.cluster_split(small, FRACTIONS, seed, planted_clusters(small))
        assert straddling(out) == []
        counts = out[out["ec_class"] == 3].groupby("split").size().to_dict()
        assert counts == {"train": 4, "validation": 4, "test": 2}


def test_cluster_split_errors(table):
    planted = planted_clusters(table)
    with pytest.raises(DataError, match="sequence id c1f0m0 has no cluster"):
        clusters.cluster_split(table, FRACTIONS, 0, planted.drop("c1f0m0"))
    # class 3 in two families: test gets one, train keeps the other, validation none
    small = table[~table["id"].str.match(r"c3f[234]")]
    with pytest.raises(
        DataError, match=r"^class 3 has 8 sequences in 2 cluster\(s\), too few to give validation a"
    ):
        clusters.cluster_split(small, FRACTIONS, 0, planted)
    with pytest.raises(ValueError, match="sum to 1"):
        clusters.cluster_split(table, {"train": 0.5, "validation": 0.2, "test": 0.2}, 0, planted)


def test_best_hits_per_query(tmp_path):
    best = np.zeros(3)
    (tmp_path / "none.m8").write_text("")  # MMseqs2 found nothing
    clusters.best_hits(tmp_path / "none.m8", best)
    assert best.tolist() == [0, 0, 0]
    (tmp_path / "hits.m8").write_text("q2\tt0\t0.4\nq0\tt5\t0.9\nq2\tt1\t0.7\n")
    clusters.best_hits(tmp_path / "hits.m8", best)
    assert best.tolist() == [0.9, 0, 0.7]


def test_identity_summary():
    summary = clusters.identity_summary([0.0, 0.2, 0.4, 0.6, 0.95])
    assert summary["min"] == 0 and summary["median"] == 0.4 and summary["max"] == 0.95
    assert summary["q1"] == 0.2 and summary["q3"] == 0.6
    assert summary["share_above_0.3"] == 0.6 and summary["share_above_0.9"] == 0.2
    assert "quartiles 0.200 / 0.400 / 0.600" in clusters.format_identity_summary(summary)
    assert clusters.identity_summary([]) == {"n": 0}


# --- the split step: cluster against random --------------------------------------------------


def run_split(tmp_path, table: pd.DataFrame, method: str) -> tuple[pd.DataFrame, dict]:
    """The split step as the rule runs it, outside Snakemake."""
    path = tmp_path / "sequences.tsv"
    write_tsv(table, path)
    out = SimpleNamespace(
        split=tmp_path / method / "split.tsv", report=tmp_path / method / "r.json"
    )
    params = {"method": method, "seed": 0, "identity": 0.3, "coverage": 0.8, **FRACTIONS}
    params["identity_report"] = True
    workflow.call("split", SimpleNamespace(table=str(path)), out, params)
    return tables.read_labelled(out.split), json.loads(out.report.read_text())


@needs_mmseqs
def test_cluster_split_has_no_close_homologs_a_random_split_does(tmp_path, table):
    split, report = run_split(tmp_path, table, "cluster")
    assert straddling(split) == []
    assert report["method"] == "cluster" and report["clusters"]["n_clusters"] == 15
    assert report["counts"]["test"] == {"1": 4, "2": 4, "3": 4}
    identity = report["test_max_identity_to_train"]
    assert identity["n"] == 12 and identity["max"] < 0.5 and identity["share_above_0.3"] == 0

    split, report = run_split(tmp_path, table, "random")
    assert straddling(split)  # near-copies on both sides
    assert report["clusters"] is None and report["counts"]["test"] == {"1": 4, "2": 4, "3": 4}
    identity = report["test_max_identity_to_train"]
    assert identity["min"] > 0.85 and identity["share_above_0.9"] > 0.5  # leakage
    assert report["mmseqs_version"]


# --- MMseqs2 missing or failing --------------------------------------------------------------


def test_missing_mmseqs_is_one_line(tmp_path, monkeypatch, table):
    monkeypatch.setenv("PATH", str(tmp_path / "empty"))
    with pytest.raises(clusters.MMseqsMissing) as err:
        clusters.cluster_sequences(table, 0.3, 0.8)
    assert str(err.value) == (
        "split.method is 'cluster' but mmseqs (MMseqs2) is not installed: "
        "apt-get install mmseqs2 or conda install -c bioconda mmseqs2"
    )
    with pytest.raises(UserError, match="split.method is 'cluster' but mmseqs"):
        run_split(tmp_path, table, "cluster")  # a UserError: one line, no traceback
    # a random split needs no MMseqs2: the report says what it could not measure
    split, report = run_split(tmp_path, table, "random")
    assert len(split) == len(table) and report["test_max_identity_to_train"] is None


def test_mmseqs_failure_names_its_last_error_line(tmp_path, monkeypatch, table):
    fake = tmp_path / "bin" / "mmseqs"
    fake.parent.mkdir()
    fake.write_text("#!/bin/sh\necho 'reading input' >&2\necho 'Error: disk full' >&2\nexit 3\n")
    fake.chmod(0o755)
    monkeypatch.setenv("PATH", str(fake.parent))
    with pytest.raises(clusters.MMseqsError, match=r"^mmseqs easy-cluster failed \(exit 3\): "):
        clusters.cluster_sequences(table, 0.3, 0.8)
    with pytest.raises(clusters.MMseqsError, match="Error: disk full$"):
        clusters.max_identity_to_train(
            clusters.cluster_split(table, FRACTIONS, 0, planted_clusters(table))
        )


# --- per-class cap of user tables ------------------------------------------------------------


def test_cap_per_class_is_a_seeded_sample(table):
    capped, dropped = tables.cap_per_class(table, 7, seed=0)
    assert capped["ec_class"].value_counts().to_dict() == {1: 7, 2: 7, 3: 7}
    assert dropped == {"over 7 per class (seeded sample)": 39}
    order = table["id"].tolist()
    assert sorted(capped["id"], key=order.index) == capped["id"].tolist()  # input order kept
    again, _ = tables.cap_per_class(table.iloc[::-1], 7, seed=0)
    assert set(again["id"]) == set(capped["id"])  # row order does not matter
    other, _ = tables.cap_per_class(table, 7, seed=1)
    assert set(other["id"]) != set(capped["id"])
    whole, dropped = tables.cap_per_class(table, 0, seed=0)
    assert whole.equals(table) and not dropped
    assert len(tables.cap_per_class(table, 25, seed=0)[0]) == len(table)


def test_download_caps_a_user_table(tmp_path, table):
    path = tmp_path / "mine.tsv"
    pd.DataFrame(
        {"Entry": table["id"], "EC number": table["ec_numbers"], "Sequence": table["sequence"]}
    ).to_csv(path, sep="\t", index=False)
    columns = {"id_column": "Entry", "ec_column": "EC number", "sequence_column": "Sequence"}
    params = {
        "source": "table",
        "classes": [1, 2, 3],
        "min_length": 50,
        "max_length": 1000,
        "nonstandard": "drop",
        "table": {**columns, "motif_column": "", "sha256": "-", "per_class": 5, "seed": 0},
    }
    out = SimpleNamespace(table=tmp_path / "sequences.tsv", info=tmp_path / "download.json")
    workflow.call("download", SimpleNamespace(table=str(path)), out, params)
    kept = tables.read_labelled(out.table)
    info = json.loads(out.info.read_text())
    assert kept["ec_class"].value_counts().to_dict() == {1: 5, 2: 5, 3: 5}
    assert info["class_counts"] == {"1": 5, "2": 5, "3": 5} and info["per_class"] == 5
    assert info["dropped"] == {"over 5 per class (seeded sample)": 45}
    assert np.isin(kept["id"], table["id"]).all()
