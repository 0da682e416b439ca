"""Splits by sequence identity: MMseqs2 clusters go whole to train, validation or test.

Swiss-Prot is full of close homologs, so a random split puts near-copies of training sequences
into the test set; EC-prediction benchmarks split by sequence identity instead.
`cluster_sequences` clusters with MMseqs2, `cluster_split` assigns the clusters, and
`max_identity_to_train` measures what leaks (for any split, random ones included).

MMseqs2 runs with a fixed thread count and the sequences sorted by id, named by position, so
a given table, MMseqs2 version and setting give the same clusters.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import pandas as pd

from kneurons.data import tables
from kneurons.errors import UserError

MMSEQS = "mmseqs"
INSTALL_HINT = "apt-get install mmseqs2 or conda install -c bioconda mmseqs2"
# Sensitivity of the test-against-train search: MMseqs2's most sensitive preset, so remote
# homologs count as leakage too.
SEARCH_SENSITIVITY = 7.5
IDENTITY_THRESHOLDS = (0.3, 0.5, 0.9)


class MMseqsError(UserError, RuntimeError):
    """MMseqs2 failed; the message names the command and its last error line."""


class MMseqsMissing(MMseqsError):
    """The mmseqs executable is not on PATH."""


def mmseqs_path(purpose: str = "split.method is 'cluster'") -> str:
    """The mmseqs executable; MMseqsMissing (one line, how to install it) when not on PATH."""
    path = shutil.which(MMSEQS)
    if path is None:
        raise MMseqsMissing(f"{purpose} but mmseqs (MMseqs2) is not installed: {INSTALL_HINT}")
    return path


def mmseqs_version() -> str | None:
    """`mmseqs version`, or None when MMseqs2 is not installed."""
    path = shutil.which(MMSEQS)
    if path is None:
        return None
    done = subprocess.run([path, "version"], capture_output=True, text=True, check=False)
    return done.stdout.strip() or None


def _run(args: list[str], purpose: str) -> None:
    """Run `mmseqs args...`; MMseqsError with its last stderr line when it fails."""
    command = [mmseqs_path(purpose), *args]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        lines = [line.strip() for line in (done.stderr + done.stdout).splitlines()]
        last = next((line for line in reversed(lines) if line), "no error message")
        raise MMseqsError(f"mmseqs {args[0]} failed (exit {done.returncode}): {last}")


def _write_fasta(sequences, path: Path, prefix: str = "") -> None:
    """FASTA with records named prefix + position: table ids may hold characters that MMseqs2
    would cut a name at."""
    with open(path, "w") as handle:
        for i, seq in enumerate(sequences):
            handle.write(f">{prefix}{i}\n{seq}\n")


def cluster_sequences(
    table: pd.DataFrame, identity: float, coverage: float, threads: int = 1
) -> pd.Series:
    """MMseqs2 clusters of the table's sequences: a Series id -> cluster id, in table order.

    A cluster's id is the id of its representative sequence. Members share at least `identity`
    (alignment identity) with the representative over alignments covering at least `coverage`
    of both sequences (`--cov-mode 0`: full-length homologs, not shared domains). One
    clustering step at the sensitivity MMseqs2 picks for `identity` (the cascade only saves
    time on millions of sequences), set cover, `threads` threads.
    """
    if not 0 < identity <= 1 or not 0 <= coverage <= 1:
        raise ValueError(
            f"need 0 < identity <= 1 and 0 <= coverage <= 1, got {identity}, {coverage}"
        )
    ids = table["id"].astype(str).to_numpy()
    order = np.argsort(ids, kind="stable")  # the same clusters whatever the row order
    sorted_ids = ids[order]
    sequences = table["sequence"].to_numpy()[order]
    with tempfile.TemporaryDirectory(prefix="kneurons-mmseqs-") as tmp:
        tmp = Path(tmp)
        _write_fasta(sequences, tmp / "in.fasta")
        _run(
            [
                "easy-cluster",
                str(tmp / "in.fasta"),
                str(tmp / "out"),
                str(tmp / "work"),
                "--min-seq-id",
                str(identity),
                "-c",
                str(coverage),
                "--cov-mode",
                "0",
                "--single-step-clustering",
                "--cluster-mode",
                "0",
                "--threads",
                str(int(threads)),
                "-v",
                "1",
            ],
            "split.method is 'cluster'",
        )
        pairs = pd.read_csv(
            tmp / "out_cluster.tsv", sep="\t", header=None, names=["rep", "member"], dtype=int
        )
    cluster = pd.Series(sorted_ids[pairs["rep"].to_numpy()], index=sorted_ids[pairs["member"]])
    missing = set(sorted_ids) - set(cluster.index)
    if missing or cluster.index.duplicated().any():
        raise MMseqsError(
            f"mmseqs easy-cluster: {len(missing)} sequence(s) without a cluster "
            f"(e.g. {sorted(missing)[:1]}) or in two clusters"
        )
    return pd.Series(cluster.loc[ids].to_numpy(), index=pd.Index(ids, name="id"), name="cluster")


def cluster_split(
    table: pd.DataFrame, fractions: dict | None, seed: int, clusters: pd.Series
) -> pd.DataFrame:
    """Add a `split` column (train/validation/test) that puts every cluster whole into one split,
    stratified by ec_class as far as the clusters allow.

    Targets per class are those of `tables.stratified_split` (validation and test round-half-up
    of n * fraction, at least 1). A cluster counts for its majority class (ties: smallest).
    Clusters are sorted by id, then shuffled with the seed. First, so that small classes reach
    every split, test and then validation get the smallest cluster of each class (first in the
    shuffled order among equals) while another is left for train. Then the others go one by
    one to the split that is least filled, relative to its target, for the cluster's class once
    the cluster is in (ties: a split without that class yet, then total fill, then train,
    validation, test); so a big cluster lands where it overshoots least, usually train.
    DataError when a class ends up missing from a split. Output rows keep the input order.
    """
    fractions = tables.check_split_input(table, fractions)
    clusters = pd.Series(clusters)
    ids = table["id"].astype(str)
    missing = ids[~ids.isin(clusters.index)]
    if len(missing):
        raise tables.DataError(f"sequence id {missing.iloc[0]} has no cluster")
    cluster_of = clusters.loc[ids.to_numpy()].to_numpy()
    labels = table["ec_class"].to_numpy()
    classes = sorted(int(c) for c in np.unique(labels))
    target = {s: Counter() for s in tables.SPLITS}
    for cls in classes:
        sizes = tables.split_sizes(int((labels == cls).sum()), fractions, cls)
        for s in tables.SPLITS:
            target[s][cls] = sizes[s]
    total_target = {s: sum(target[s].values()) for s in tables.SPLITS}

    members: dict[str, list[int]] = {}
    for row, cid in enumerate(cluster_of):
        members.setdefault(str(cid), []).append(row)
    names = sorted(members)
    order = [names[k] for k in np.random.default_rng(seed).permutation(len(names))]
    counts = {name: Counter(int(labels[r]) for r in members[name]) for name in order}
    major = {name: min(c, key=lambda k, c=c: (-c[k], k)) for name, c in counts.items()}
    assigned = {s: Counter() for s in tables.SPLITS}
    split = np.empty(len(table), dtype=object)

    def assign(name: str, chosen: str) -> None:
        assigned[chosen].update(counts[name])
        split[members[name]] = chosen

    seeded: set[str] = set()
    for cls in classes:
        # stable sort: the shuffled order decides among clusters of the same size
        own = sorted((n for n in order if major[n] == cls), key=lambda n: len(members[n]))
        for s in ("test", "validation"):
            if assigned[s][cls] == 0 and len(own) >= 2:
                seeded.add(own[0])
                assign(own.pop(0), s)
    for name in order:
        if name not in seeded:
            assign(name, _least_filled(counts[name], major[name], assigned, target, total_target))
    for cls in classes:
        empty = [s for s in tables.SPLITS if assigned[s][cls] == 0]
        if empty:
            n = sum(assigned[s][cls] for s in tables.SPLITS)
            k = len({cluster_of[r] for r in np.flatnonzero(labels == cls)})
            raise tables.DataError(
                f"class {cls} has {n} sequences in {k} cluster(s), too few to give "
                f"{' and '.join(empty)} a share of it"
            )
    out = table.copy()
    out["split"] = pd.Series(split, index=table.index).astype(str)
    return out.reset_index(drop=True)


def _least_filled(counts: Counter, major: int, assigned: dict, target: dict, total: dict) -> str:
    """The split least filled for class `major` once a cluster with class `counts` is in."""
    size = sum(counts.values())

    def fill(s: str) -> tuple:
        return (
            (assigned[s][major] + counts[major]) / target[s][major],
            assigned[s][major] > 0,  # at a tie, give the class to a split that lacks it
            (sum(assigned[s].values()) + size) / total[s],
            tables.SPLITS.index(s),
        )

    return min(tables.SPLITS, key=fill)


def cluster_summary(clusters: pd.Series) -> dict:
    """Number of clusters and their size distribution ([size, number of clusters], by size)."""
    sizes = pd.Series(clusters).value_counts()
    distribution = sizes.value_counts().sort_index()
    return {
        "n_clusters": int(len(sizes)),
        "n_sequences": int(sizes.sum()),
        "singletons": int((sizes == 1).sum()),
        "largest": int(sizes.max()) if len(sizes) else 0,
        "mean_size": float(sizes.mean()) if len(sizes) else 0.0,
        "size_distribution": [[int(size), int(n)] for size, n in distribution.items()],
    }


def max_identity_to_train(split_table: pd.DataFrame, threads: int = 1) -> np.ndarray:
    """For each test sequence (in table order), the highest identity (0-1) to any training
    sequence: an MMseqs2 search of test against train at sensitivity 7.5 (E-value <= 1e-3, up
    to 300 hits per query); 0 where nothing is found.

    Identity is identical residues over the length of the shorter of the two sequences
    (MMseqs2's --seq-id-mode 1), close to a global alignment's identity for homologs of similar
    length, so a short local hit (a shared motif) does not pass for a near-copy.
    """
    test = split_table.loc[split_table["split"] == "test", "sequence"].to_numpy()
    train = split_table.loc[split_table["split"] == "train", "sequence"].to_numpy()
    best = np.zeros(len(test))
    if not len(test) or not len(train):
        return best
    with tempfile.TemporaryDirectory(prefix="kneurons-mmseqs-") as tmp:
        tmp = Path(tmp)
        _write_fasta(test, tmp / "test.fasta", "q")
        _write_fasta(train, tmp / "train.fasta", "t")
        _run(
            [
                "easy-search",
                str(tmp / "test.fasta"),
                str(tmp / "train.fasta"),
                str(tmp / "hits.m8"),
                str(tmp / "work"),
                "-s",
                str(SEARCH_SENSITIVITY),
                "--format-output",
                "query,target,fident",
                "--seq-id-mode",
                "1",
                "--threads",
                str(int(threads)),
                "-v",
                "1",
            ],
            "the split report's identity of test to train is measured",
        )
        best_hits(tmp / "hits.m8", best)
    return best


def best_hits(path: Path, best: np.ndarray) -> None:
    """Set best[i] to the highest identity of query q{i} in an MMseqs2 hit table (query, target,
    fident), which is empty, not even a header, when nothing was found."""
    if Path(path).stat().st_size == 0:
        return
    hits = pd.read_csv(path, sep="\t", header=None, names=["query", "target", "fident"])
    per_query = hits.groupby("query")["fident"].max()
    best[per_query.index.str[1:].astype(int)] = per_query.to_numpy()


def identity_summary(identity) -> dict:
    """min, quartiles, max, mean and the share above 0.3 / 0.5 / 0.9 of max identities."""
    values = np.asarray(identity, dtype=float)
    if not len(values):
        return {"n": 0}
    q1, median, q3 = np.quantile(values, [0.25, 0.5, 0.75])
    summary = {
        "n": int(len(values)),
        "min": float(values.min()),
        "q1": float(q1),
        "median": float(median),
        "q3": float(q3),
        "max": float(values.max()),
        "mean": float(values.mean()),
    }
    for t in IDENTITY_THRESHOLDS:
        summary[f"share_above_{t}"] = float((values > t).mean())
    return summary


def format_identity_summary(summary: dict) -> str:
    """One log line of an `identity_summary`."""
    if not summary.get("n"):
        return "no test sequences"
    shares = ", ".join(
        f"> {t}: {100 * summary[f'share_above_{t}']:.1f}%" for t in IDENTITY_THRESHOLDS
    )
    return (
        f"{summary['n']} test sequences, min {summary['min']:.3f}, quartiles "
        f"{summary['q1']:.3f} / {summary['median']:.3f} / {summary['q3']:.3f}, "
        f"max {summary['max']:.3f}; {shares}"
    )
