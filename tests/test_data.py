import gzip
import re

import numpy as np
import pandas as pd
import pytest

from kneurons.data.motifs import MOTIF_REGEX, MOTIFS, find_motifs, format_motifs, parse_motifs
from kneurons.data.readers import read_fasta, read_input, read_table
from kneurons.data.synthetic import SyntheticError, generate_synthetic
from kneurons.data.tables import (
    COLUMNS,
    STANDARD_RESIDUES,
    DataError,
    assign_classes,
    classes_of,
    ec_top_class,
    filter_sequences,
    read_labelled,
    stratified_split,
    summarize_dropped,
)
from kneurons.errors import UserError
from kneurons.io import write_tsv


@pytest.fixture(scope="module")
def synthetic():
    return generate_synthetic(150, 60, 200, seed=7)


def _fixed_positions(pattern):
    """Offsets of non-x tokens and their allowed residues."""
    tokens = re.findall(r"\[[A-Z]+\]|[A-Zx]", pattern)
    return {i: t.strip("[]") for i, t in enumerate(tokens) if t != "x"}, len(tokens)


# ---------------------------------------------------------------- generator


def test_synthetic_columns_balance_lengths_residues(synthetic):
    assert list(synthetic.columns) == COLUMNS
    assert synthetic["ec_class"].value_counts().to_dict() == {c: 150 for c in range(1, 7)}
    lengths = synthetic["sequence"].str.len()
    assert lengths.min() >= 60 and lengths.max() <= 200
    assert synthetic["sequence"].str.fullmatch(f"M[{STANDARD_RESIDUES}]+").all()
    assert synthetic["id"].is_unique
    assert synthetic["id"].str.fullmatch(r"syn_c[1-6]_\d{5}").all()
    assert all(
        ec_top_class(e) == c
        for e, c in zip(synthetic["ec_numbers"], synthetic["ec_class"], strict=True)
    )


def test_synthetic_motifs_at_recorded_positions(synthetic):
    kinds = set()
    for seq, cls, motifs in zip(
        synthetic["sequence"], synthetic["ec_class"], synthetic["motifs"], strict=True
    ):
        entries = parse_motifs(motifs)
        true_count = sum(e["kind"] in ("true", "mutated") for e in entries)
        assert any(e["kind"] == "true" for e in entries)  # at least one intact true motif
        spans = sorted((e["start"], e["end"]) for e in entries)
        assert all(a[1] <= b[0] for a, b in zip(spans, spans[1:], strict=False))  # non-overlapping
        assert spans[0][0] >= 1  # position 0 is the initial M
        for e in entries:
            kinds.add(e["kind"])
            motif_class, pattern = MOTIFS[e["name"]]
            instance = seq[e["start"] : e["end"]]
            fixed, width = _fixed_positions(pattern)
            assert len(instance) == width
            if e["kind"] == "decoy":
                assert motif_class != cls and true_count >= 2
            else:
                assert motif_class == cls
            if e["kind"] == "mutated":
                wrong = [i for i, allowed in fixed.items() if instance[i] not in allowed]
                assert len(wrong) == 1
            else:
                assert re.fullmatch(MOTIF_REGEX[e["name"]], instance)
        # The recorded intact motifs are the only occurrences of any pattern.
        expected = {(e["name"], e["start"]) for e in entries if e["kind"] != "mutated"}
        assert set(find_motifs(seq)) == expected
    assert kinds == {"true", "mutated", "decoy"}


def test_synthetic_deterministic():
    a = generate_synthetic(20, 50, 120, seed=3)
    b = generate_synthetic(20, 50, 120, seed=3)
    c = generate_synthetic(20, 50, 120, seed=4)
    pd.testing.assert_frame_equal(a, b)
    assert not a["sequence"].equals(c["sequence"])
    # Rows are shuffled, not grouped by class.
    assert not a["ec_class"].is_monotonic_increasing


def test_synthetic_no_noise_and_subset_of_classes():
    df = generate_synthetic(10, 50, 80, seed=1, classes=(2, 5), mutation_rate=0, decoy_rate=0)
    assert set(df["ec_class"]) == {2, 5}
    kinds = {e["kind"] for m in df["motifs"] for e in parse_motifs(m)}
    assert kinds == {"true"}


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"min_length": 10, "max_length": 20}, "data.synthetic: lengths must satisfy"),
        ({"classes": (1, 7)}, r"data.classes: no synthetic motifs for EC class\(es\) \[7\]"),
        ({"mutation_rate": 1.5}, r"data.synthetic.mutation_rate must be in \[0, 1\]"),
        ({"motifs_per_sequence": (3, 2)}, "data.synthetic.motifs_per_sequence must be"),
    ],
)
def test_synthetic_rejects_bad_settings_with_a_one_line_user_error(kwargs, message):
    # a config the schema lets through (data.classes may hold 7, translocases)
    settings = {"n_per_class": 5, "min_length": 60, "max_length": 80, "seed": 0, **kwargs}
    with pytest.raises(SyntheticError, match=f"^{message}") as err:
        generate_synthetic(**settings)
    assert isinstance(err.value, UserError) and isinstance(err.value, ValueError)
    assert "\n" not in str(err.value)


def test_trivial_motif_classifier_high_but_not_perfect():
    df = generate_synthetic(200, 50, 200, seed=11)
    per_class = {}
    for name, (cls, _) in MOTIFS.items():
        per_class.setdefault(cls, []).append(re.compile(f"(?={MOTIF_REGEX[name]})"))

    def predict(seq):
        counts = {c: sum(len(rx.findall(seq)) for rx in rxs) for c, rxs in per_class.items()}
        best = max(counts.values())
        winners = [c for c, v in counts.items() if v == best]
        return winners[0] if len(winners) == 1 else -1  # a tie counts as wrong

    accuracy = np.mean(
        [predict(s) == c for s, c in zip(df["sequence"], df["ec_class"], strict=True)]
    )
    # Measured ~0.90-0.93 over seeds: decoy + one mutated true motif gives exact-match ties.
    assert 0.85 <= accuracy <= 0.97


def test_parse_motifs():
    assert parse_motifs("") == []
    assert parse_motifs("a:1:5:true;b:7:9:decoy") == [
        {"name": "a", "start": 1, "end": 5, "kind": "true"},
        {"name": "b", "start": 7, "end": 9, "kind": "decoy"},
    ]
    with pytest.raises(DataError, match="malformed motif"):
        parse_motifs("a:1:5:weird")


def test_parse_motifs_feature_kind_and_length():
    entries = parse_motifs(" act_site:4:5:feature ; binding:0:3:feature", length=5)
    assert [(e["name"], e["start"], e["end"], e["kind"]) for e in entries] == [
        ("act_site", 4, 5, "feature"),
        ("binding", 0, 3, "feature"),
    ]
    assert format_motifs(entries) == "act_site:4:5:feature;binding:0:3:feature"
    with pytest.raises(DataError, match="ends at 6, beyond the sequence .length 5."):
        parse_motifs("a:4:6:feature", length=5)
    for bad in ("a:5:5:true", ":1:2:true", "a:-1:2:true", "a:1:2"):
        with pytest.raises(DataError, match="malformed motif entry"):
            parse_motifs(bad)


# ---------------------------------------------------------------- EC numbers


@pytest.mark.parametrize(
    "ec, top",
    [("3.4.21.4", 3), ("3.4.-.-", 3), ("3.-.-.-", 3), ("3.4.21.n1", 3), (" 7.1.1.1 ", 7)],
)
def test_ec_top_class(ec, top):
    assert ec_top_class(ec) == top


@pytest.mark.parametrize("ec", ["3.4.21", "3.-.4.1", "x.1.1.1", "0.1.1.1", "3.4.n1.1", ""])
def test_ec_top_class_malformed(ec):
    with pytest.raises(DataError, match="malformed EC"):
        ec_top_class(ec)


def test_classes_of():
    assert classes_of("1.1.1.1; 2.7.1.1") == {1, 2}
    assert classes_of("1.1.1.1 ;1.2.-.-;") == {1}
    assert classes_of("") == set()


# ---------------------------------------------------------------- reading tables


UNIPROT_TSV = (
    "Entry\tEntry Name\tEC number\tSequence\n"
    "P1\tA_HUMAN\t1.1.1.1; 1.2.3.4\tmkvla\n"
    "P2\tB_HUMAN\t2.7.11.1\tMSTPQ\n"
    "P3\tC_HUMAN\t\tMAAAA\n"
    "P4\tD_HUMAN\t1.1.1.1; 2.7.1.1\tMGGGG\n"
    "P2\tB_HUMAN\t2.7.11.1\tMSTPQ\n"
)


def test_read_table_uniprot_tsv(tmp_path):
    path = tmp_path / "uniprot.tsv"
    path.write_text(UNIPROT_TSV)
    df, dropped = read_table(path)
    assert list(df.columns) == COLUMNS
    assert df["id"].tolist() == ["P1", "P2", "P4"]
    assert df["sequence"].tolist()[0] == "MKVLA"
    assert df["ec_numbers"].tolist()[0] == "1.1.1.1;1.2.3.4"
    assert (df["ec_class"] == 0).all() and (df["motifs"] == "").all()
    assert dropped == {"no EC number": 1, "duplicate id (same sequence)": 1}

    labelled, dropped2 = assign_classes(df, classes=(1, 2, 3))
    assert labelled[["id", "ec_class"]].values.tolist() == [["P1", 1], ["P2", 2]]
    assert dropped2 == {"multiple top-level EC classes": 1}
    only1, dropped3 = assign_classes(df, classes=(1,))
    assert only1["id"].tolist() == ["P1"] and dropped3["EC class not selected"] == 1


def test_read_table_csv_gz_and_custom_columns(tmp_path):
    path = tmp_path / "data.csv.gz"
    with gzip.open(path, "wt") as fh:
        fh.write("acc,ec,seq\nQ1,3.4.21.4,MKKL\nQ2,6.1.1.n2,MWWW\n")
    df, dropped = read_table(path, id_column="acc", ec_column="ec", sequence_column="seq")
    assert df["id"].tolist() == ["Q1", "Q2"] and not dropped
    assert read_input(path, id_column="acc", ec_column="ec", sequence_column="seq")[0].equals(df)


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "file is empty"),
        ("Entry\tEC number\tSequence\n", "no records"),
        ("Entry\tSequence\nP1\tMKV\n", r"missing column\(s\) \['EC number'\].*Entry"),
        (
            "Entry\tEC number\tSequence\nP1\t1.1.1.1\tMK\nP9\t1.1.1.1\t \n",
            "row 2 .id P9.: empty seq",
        ),
        (
            "Entry\tEC number\tSequence\nP1\t1.1.1.1\tMK\nP7\t1.1.x.1\tMKV\n",
            "row 2 .id P7.: malformed",
        ),
        (
            "Entry\tEC number\tSequence\nP5\t1.1.1.1\tMK\nP5\t1.1.1.1\tMV\n",
            "row 2: duplicate id P5 with a different sequence than row 1",
        ),
    ],
)
def test_read_table_errors_name_file_and_record(tmp_path, content, message):
    path = tmp_path / "bad.tsv"
    path.write_text(content)
    with pytest.raises(DataError, match=message) as err:
        read_table(path)
    text = str(err.value)
    assert str(path) in text and "\n" not in text


@pytest.mark.parametrize(
    "name, text",
    [
        ("tabs.csv", UNIPROT_TSV),  # benchmark sets ship tab-separated .csv files
        ("commas.tsv", UNIPROT_TSV.replace("\t", ",").replace("; ", ";")),
        ("windows.txt", "\ufeff" + UNIPROT_TSV.replace("\n", "\r\n")),  # BOM, CRLF
        ("no_extension", UNIPROT_TSV),
    ],
)
def test_read_table_delimiter_comes_from_content(tmp_path, name, text):
    expected, _ = read_table(_write(tmp_path / "uniprot.tsv", UNIPROT_TSV))
    path = _write(tmp_path / name, text)
    df, dropped = read_table(path)
    assert df.equals(expected)
    assert dropped == {"no EC number": 1, "duplicate id (same sequence)": 1}
    assert read_input(path)[0].equals(expected)


@pytest.mark.parametrize(
    "text", ["Entry;EC number;Sequence\nP1;1.1.1.1;MKV\n", "Entry|EC|Seq\nP1|1.1.1.1|MKV\n"]
)
def test_read_table_unknown_delimiter_names_file_and_first_line(tmp_path, text):
    path = _write(tmp_path / "data.csv", text)
    with pytest.raises(DataError) as err:
        read_table(path)
    message = str(err.value)
    assert str(path) in message and repr(text.splitlines()[0]) in message
    assert "tab- or comma-separated" in message and "\n" not in message


def test_read_input_fasta_told_from_content(tmp_path):
    path = _write(tmp_path / "enzymes.txt", ">A1 EC=1.1.1.1\nMKV\n")
    df, _ = read_input(path)
    assert df["id"].tolist() == ["A1"]
    with pytest.raises(DataError, match="no such file"):
        read_input(tmp_path / "missing.tsv")


ANNOTATED_TSV = (
    "Entry\tEC number\tSequence\tSites\n"
    "P1\t1.1.1.1\tMKVLAGG\tbinding:1:3:feature; p_loop:2:7:true\n"
    "P2\t2.7.11.1\tMSTPQ\t\n"
    "P3\t3.1.1.1\tMAAAA\tact_site:4:5:feature\n"
)


def test_read_table_motif_column(tmp_path):
    path = _write(tmp_path / "annotated.tsv", ANNOTATED_TSV)
    df, dropped = read_table(path, motif_column="Sites")
    assert list(df.columns) == COLUMNS and not dropped
    assert df["motifs"].tolist() == [
        "binding:1:3:feature;p_loop:2:7:true",
        "",
        "act_site:4:5:feature",
    ]
    assert parse_motifs(df["motifs"][2], len(df["sequence"][2]))[0]["end"] == 5
    assert read_input(path, motif_column="Sites")[0].equals(df)
    # without motif_column the annotations are not read
    assert (read_table(path)[0]["motifs"] == "").all()


@pytest.mark.parametrize(
    "row, message",
    [
        ("act_site:5:6:feature", r"row 3 \(id P3\): motif entry 'act_site:5:6:feature' ends at 6"),
        ("act_site:4:5:site", r"row 3 \(id P3\): malformed motif entry 'act_site:4:5:site'"),
        ("act_site:4", r"row 3 \(id P3\): malformed motif entry 'act_site:4'"),
    ],
)
def test_read_table_motif_column_errors_name_file_record_and_entry(tmp_path, row, message):
    text = ANNOTATED_TSV.replace("act_site:4:5:feature", row)
    path = _write(tmp_path / "annotated.tsv", text)
    with pytest.raises(DataError, match=message) as err:
        read_table(path, motif_column="Sites")
    assert str(path) in str(err.value) and "\n" not in str(err.value)


def test_read_table_motif_column_missing_or_fasta(tmp_path):
    path = _write(tmp_path / "plain.tsv", UNIPROT_TSV)
    with pytest.raises(DataError, match=r"missing column\(s\) \['Sites'\]"):
        read_table(path, motif_column="Sites")
    fasta = _write(tmp_path / "seqs.fasta", ">A1 EC=1.1.1.1\nMKV\n")
    with pytest.raises(DataError, match="FASTA has no columns, so no motif column 'Sites'"):
        read_input(fasta, motif_column="Sites")


def test_download_step_keeps_a_tables_motif_column(tmp_path):
    from types import SimpleNamespace

    from kneurons import workflow

    rows = [(f"A{c}{i}", f"{c}.1.1.1", "M" + STANDARD_RESIDUES * 4) for c in (1, 2) for i in (1, 2)]
    rows = [(rid, ec, seq[: i + 60]) for i, (rid, ec, seq) in enumerate(rows)]  # distinct
    text = "id,ec,seq,sites\n" + "".join(
        f"{rid},{ec},{seq},act_site:{i}:{i + 1}:feature;m:0:3:true\n"
        for i, (rid, ec, seq) in enumerate(rows)
    )
    path = _write(tmp_path / "mine.csv", text)
    columns = {"id_column": "id", "ec_column": "ec", "sequence_column": "seq"}
    params = {
        "source": "table",
        "classes": [1, 2],
        "min_length": 50,
        "max_length": 1000,
        "nonstandard": "drop",
        "table": {**columns, "motif_column": "sites", "sha256": "-", "per_class": 0, "seed": 0},
    }
    out = SimpleNamespace(table=tmp_path / "sequences.tsv", info=tmp_path / "download.json")
    workflow.call("download", SimpleNamespace(table=str(path)), out, params)
    kept = read_labelled(out.table)
    assert kept["motifs"].tolist() == [f"act_site:{i}:{i + 1}:feature;m:0:3:true" for i in range(4)]
    _write(path, text.replace("act_site:3:4:feature", "act_site:3:99:feature"))
    with pytest.raises(DataError) as err:
        workflow.call("download", SimpleNamespace(table=str(path)), out, params)
    assert str(err.value) == (
        f"{path}: row 4 (id A22): motif entry 'act_site:3:99:feature' ends at 99, "
        "beyond the sequence (length 63)"
    )


def _write(path, text):
    path.write_bytes(text.encode())
    return path


# ---------------------------------------------------------------- reading FASTA


def test_read_fasta_header_styles(tmp_path):
    path = tmp_path / "seqs.fasta"
    path.write_text(
        ">A1 EC=1.1.1.1;2.3.1.1 some protein\nMKV\nLLA\n"
        ">sp|P12345|ADH_HUMAN Alcohol dehydrogenase EC=1.1.1.1 OS=Homo sapiens\nmaaa\n"
        ">tr|Q99999|Q99999_YEAST Uncharacterized OS=Yeast\nMCCC\n"
        ">B2|3.4.21.4;3.4.-.-\nMDDD\n"
        ">C3|\nMEEE\n"
    )
    df, dropped = read_fasta(path)
    assert df["id"].tolist() == ["A1", "P12345", "B2"]
    assert df["sequence"].tolist() == ["MKVLLA", "MAAA", "MDDD"]
    assert df["ec_numbers"].tolist() == ["1.1.1.1;2.3.1.1", "1.1.1.1", "3.4.21.4;3.4.-.-"]
    assert dropped == {"no EC number": 2}
    assert read_input(path)[0].equals(df)


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "no FASTA records"),
        (">A1 EC=1.1.1.1\nMKV\n>A2 EC=1.1.1.1\n", r"record 2 \(id A2\): empty sequence"),
        (">A1 EC=1.1.1.1\nMKV\n>A2|9.x\nMKV\n", r"record 2 \(id A2\): malformed EC"),
        (">A1 EC=1.1.1.1\nMKV\n>A1 EC=1.1.1.1\nMKW\n", "record 2: duplicate id A1"),
    ],
)
def test_read_fasta_errors_name_file_and_record(tmp_path, content, message):
    path = tmp_path / "bad.fa"
    path.write_text(content)
    with pytest.raises(DataError, match=message) as err:
        read_fasta(path)
    assert str(path) in str(err.value) and "\n" not in str(err.value)


# ---------------------------------------------------------------- filtering


def _table(rows):
    return pd.DataFrame(
        {
            "id": [r[0] for r in rows],
            "sequence": [r[1] for r in rows],
            "ec_numbers": ["1.1.1.1"] * len(rows),
            "ec_class": [1] * len(rows),
            "motifs": [""] * len(rows),
        }
    )


def test_filter_sequences_drop():
    df = _table(
        [
            ("a", "MKVLA"),
            ("b", "MKXLA"),
            ("c", "MK"),
            ("d", "M" * 20),
            ("e", "MKVLA"),
            ("f", "MWWWW"),
        ]
    )
    out, dropped = filter_sequences(df, 3, 10, source="in.tsv")
    assert out["id"].tolist() == ["a", "f"]
    assert dropped == {
        "non-standard residue": 1,
        "shorter than 3": 1,
        "longer than 10": 1,
        "duplicate sequence": 1,
    }
    assert summarize_dropped(dropped).splitlines()[0] == "dropped 1: duplicate sequence"
    assert len(summarize_dropped(dropped).splitlines()) == 4
    assert summarize_dropped({}) == "dropped nothing"


def test_filter_sequences_error_and_empty():
    df = _table([("a", "MKVLA"), ("b", "MKULA")])
    with pytest.raises(DataError, match=r"in\.tsv: id b: non-standard residue 'U' at position 3"):
        filter_sequences(df, 1, 100, nonstandard="error", source="in.tsv")
    with pytest.raises(DataError, match="in.tsv: no sequences left"):
        filter_sequences(df, 50, 100, source="in.tsv")


# ---------------------------------------------------------------- splitting


def test_stratified_split(synthetic):
    fractions = {"train": 0.7, "validation": 0.15, "test": 0.15}
    out = stratified_split(synthetic, fractions, seed=5)
    assert out["id"].tolist() == synthetic["id"].tolist()  # input order kept
    assert set(out["split"]) == {"train", "validation", "test"}  # every row in exactly one
    assert len(out) == len(synthetic) and out["id"].is_unique
    counts = out.groupby(["ec_class", "split"]).size().unstack()
    # 150 per class: 22.5 -> 23 validation, 23 test, 104 train.
    assert (counts["validation"] == 23).all() and (counts["test"] == 23).all()
    assert (counts["train"] == 104).all()
    again = stratified_split(synthetic.iloc[::-1], fractions, seed=5)
    assert again.set_index("id")["split"].to_dict() == out.set_index("id")["split"].to_dict()
    other = stratified_split(synthetic, fractions, seed=6)
    assert not other["split"].equals(out["split"])


def test_stratified_split_minimum_and_errors():
    df = _table([("a", "MA"), ("b", "MC"), ("c", "MD")])
    out = stratified_split(df, {"train": 0.7, "validation": 0.15, "test": 0.15}, seed=0)
    assert sorted(out["split"]) == ["test", "train", "validation"]
    with pytest.raises(DataError, match="class 1 has 2 sequences; the split needs at least 3"):
        stratified_split(df.iloc[:2], seed=0)
    with pytest.raises(ValueError, match="sum to 1"):
        stratified_split(df, {"train": 0.7, "validation": 0.2, "test": 0.2}, seed=0)


def test_read_labelled_round_trip(tmp_path, synthetic):
    path = tmp_path / "out" / "table.tsv"
    real = _table([("a", "MKV")])  # empty motifs must come back as "", not NaN
    write_tsv(pd.concat([synthetic.head(5), real], ignore_index=True), path)
    back = read_labelled(path)
    assert back["motifs"].iloc[-1] == "" and back["ec_class"].dtype == "int64"
    assert back["sequence"].tolist()[:5] == synthetic["sequence"].head(5).tolist()


def test_synthetic_composition_does_not_give_the_class_away():
    from kneurons.analysis.baselines import composition_baseline

    kw = dict(n_per_class=80, min_length=60, max_length=90, seed=0, motifs_per_sequence=(2, 3))
    fractions = {"train": 0.6, "validation": 0.2, "test": 0.2}
    balanced = stratified_split(generate_synthetic(**kw), fractions, seed=0)
    unbalanced = stratified_split(
        generate_synthetic(**kw, balance_composition=False), fractions, seed=0
    )
    assert composition_baseline(balanced)["accuracy"] < 0.3  # chance 1/6, 96 test rows
    assert composition_baseline(unbalanced)["accuracy"] > 0.5


def test_synthetic_balanced_residue_counts_match_across_classes():
    df = generate_synthetic(150, 60, 90, seed=5)
    counts = pd.DataFrame(
        [
            {r: s.count(r) for r in "WCHM"} | {"ec_class": c}
            for s, c in zip(df["sequence"], df["ec_class"], strict=True)
        ]
    )
    means = counts.groupby("ec_class").mean()
    # rare residues the motifs need (W only in class 5 motifs, C, H, M) are as common anywhere
    assert (means.max() - means.min()).max() < 0.6  # the earlier generator: 1.1-1.5


def test_synthetic_unbalanced_reproduces_the_earlier_generator():
    df = generate_synthetic(2, 60, 90, seed=0, balance_composition=False)
    # first rows of the generator before composition balancing
    assert list(df["sequence"][:2]) == [
        "MLGPLYPESESSGKNSKACNEAIALNAVYEPVWSIGSGNDALEDVVQSYKLEKLREPFHQSGIIPMNH",
        "MGLTPPGFTPDGKTATTIIFSLFAAEHAQWEPVKNALGGDMEGKLIARFKRMGKHLDDSVKKLDAISAIRSGTYLAQYQLLEAESHKLPA",
    ]


def test_atomic_outputs_get_the_mode_of_a_plain_open(tmp_path):
    """mkstemp's 0600 would hide every result from the rest of a group's shared folder."""
    import os

    from kneurons.io import write_atomic

    umask = os.umask(0o022)
    try:
        write_atomic(tmp_path / "out.txt", lambda tmp: tmp.write_text("x"))
        plain = tmp_path / "plain.txt"
        plain.write_text("x")
    finally:
        os.umask(umask)
    assert (tmp_path / "out.txt").stat().st_mode & 0o777 == plain.stat().st_mode & 0o777 == 0o644
