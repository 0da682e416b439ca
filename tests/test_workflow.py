"""End to end through the Snakemake CLI on a very small config."""

import json
import re

import pandas as pd
import pytest
from workflow_helpers import ROOT, make_workdir, snakemake

pytestmark = pytest.mark.slow  # every test runs snakemake


@pytest.fixture(scope="module")
def finished_run(small_run):
    return small_run


def test_full_run_writes_every_stage(finished_run):
    path = finished_run
    table = pd.read_csv(path / "results/data/sequences.tsv", sep="\t")
    assert list(table.columns) == ["id", "sequence", "ec_numbers", "ec_class", "motifs"]
    assert table["ec_class"].value_counts().to_dict() == {c: 12 for c in range(1, 7)}
    split = pd.read_csv(path / "results/data/split.tsv", sep="\t")
    assert set(split["split"]) == {"train", "validation", "test"}
    assert (path / "resources/models/esm2_tiny.pt").exists()
    metrics = json.loads((path / "results/finetune/seed0/metrics.json").read_text())
    assert metrics["chance"] == pytest.approx(1 / 6)
    assert (path / "results/finetune/seed0/model.pt").exists()
    scores = pd.read_csv(path / "results/scores/seed0/ig.tsv", sep="\t")
    # 2 layers x (4 x 16 attention + 64 fc1 + 16 fc2) units
    assert len(scores) == 2 * (4 * 16 + 64 + 16)
    summary = pd.read_csv(path / "results/summary.tsv", sep="\t")
    assert set(summary["method"]) == {"full", "ig", "activation", "gradxact", "random"}
    density = pd.read_csv(path / "results/density.tsv", sep="\t")
    assert (density["density"] <= 1).all()
    for name in ["accuracy_vs_retention", "density_heatmaps", "module_enrichment"]:
        assert (path / f"results/plots/{name}.png").stat().st_size > 1000
    assert (path / "results/summary.md").read_text().strip()
    for rule in ["download", "split", "prepare_model", "aggregate", "plots"]:
        assert (path / f"results/benchmarks/{rule}.tsv").exists()
        assert (path / f"results/logs/{rule}.log").exists()


def test_metrics_are_counts_over_the_test_split(finished_run):
    """One epoch of a 2-layer model is at chance on 12 test sequences (measured for seeds 0-7:
    1/12 to 4/12 correct, chance 2/12), so no accuracy threshold: every reported accuracy must
    be a count of correct predictions over the test split that results/data/split.tsv records."""
    path = finished_run
    split = pd.read_csv(path / "results/data/split.tsv", sep="\t")
    test = split[split["split"] == "test"]
    n = len(test)
    sizes = test["ec_class"].value_counts().to_dict()
    metrics = json.loads((path / "results/finetune/seed0/metrics.json").read_text())
    classes = metrics["classes"]
    assert set(sizes) <= set(classes)
    assert metrics["majority_baseline"] == pytest.approx(max(sizes.values()) / n)
    # one epoch: the history has one row, and its validation accuracy is the one reported
    assert [row["epoch"] for row in metrics["history"]] == [1] and metrics["best_epoch"] == 1
    n_val = int((split["split"] == "validation").sum())
    val_correct = metrics["validation"]["accuracy"] * n_val
    assert val_correct == pytest.approx(round(val_correct))
    assert metrics["history"][0]["val_accuracy"] == metrics["validation"]["accuracy"]

    evaluations = {
        (e["method"], e["retention"]): e
        for e in (
            json.loads(p.read_text())
            for p in (path / "results/evaluation/seed0").glob("*/retention*.json")
        )
    }
    assert sorted(evaluations) == sorted(
        (m, r) for m in ("ig", "activation", "gradxact", "random") for r in (0.5, 0.1)
    )
    n_neurons = 2 * (4 * 16 + 64 + 16)
    for (_, retention), e in evaluations.items():
        assert e["n_neurons_total"] == n_neurons
        assert e["n_kept"] == max(1, round(retention * n_neurons))

    results = {("full", 1.0): metrics["test"]} | {k: e["test"] for k, e in evaluations.items()}
    for key, result in results.items():
        assert result["n"] == n, key
        assert set(result["per_class_accuracy"]) == {str(c) for c in classes}, key
        correct = 0
        for c, recall in result["per_class_accuracy"].items():
            hits = recall * sizes.get(int(c), 0)  # per-class accuracy: hits / class size
            assert hits == pytest.approx(round(hits)), (key, c)
            correct += round(hits)
        # accuracy: the per-class accuracies averaged with the split's class sizes as weights
        assert result["accuracy"] == pytest.approx(correct / n), key

    # the summary table is these numbers, not a recomputation
    summary = pd.read_csv(path / "results/summary.tsv", sep="\t")
    assert len(summary) == len(results)
    for row in summary.itertuples():
        assert row.seed == 0
        assert row.accuracy == pytest.approx(results[(row.method, row.retention)]["accuracy"])
        assert row.macro_f1 == pytest.approx(results[(row.method, row.retention)]["macro_f1"])


def test_second_run_has_nothing_to_do(finished_run):
    result = snakemake(finished_run, "--dry-run")
    assert "Nothing to be done" in result.stdout + result.stderr


def test_same_config_same_numbers(finished_run, tmp_path):
    again = make_workdir(tmp_path)
    snakemake(again, "results/finetune/seed0/metrics.json", "results/scores/seed0/ig.tsv")
    for name in ["results/data/split.tsv", "results/scores/seed0/ig.tsv"]:
        assert (again / name).read_text() == (finished_run / name).read_text()
    first = json.loads((finished_run / "results/finetune/seed0/metrics.json").read_text())
    second = json.loads((again / "results/finetune/seed0/metrics.json").read_text())
    assert first["history"] == second["history"] and first["test"] == second["test"]


@pytest.mark.parametrize(
    "override, message",
    [
        ({"sweep": {"retention_ratios": [1.5]}}, "retention_ratios"),
        ({"scoring": {"methods": ["saliency"]}}, "methods"),
        ({"finetune": {"epochs": -1}}, "'finetune.epochs': -1 is less than the minimum of 1"),
        ({"finetune": {"epoch": 5}}, "'finetune': Additional properties are not allowed ('epoch'"),
        ({"model": {"name": "esm3_huge"}}, "name"),
        ({"typo_key": 1}, "typo_key"),
        ({"data": {"source": "table", "table": {"path": "missing.tsv"}}}, "data.table.path"),
        ({"sweep": {"retention_ratios": [0]}}, "retention_ratios"),
        ({"scoring": {"modules": ["fc1", "gate_proj"]}}, "modules"),
        ({"split": {"train": 0.8}}, "config key 'split': train + validation + test must be 1"),
        ({"data": {"uniprot": {"retries": -1}}}, "retries"),
    ],
)
def test_bad_config_is_rejected_naming_the_key(tmp_path, override, message):
    path = make_workdir(tmp_path, override)
    result = snakemake(path, "--dry-run", check=False)
    assert result.returncode != 0
    lines = [
        line
        for line in (result.stdout + result.stderr).splitlines()
        if not line.startswith("Using workflow specific profile")
    ]
    assert len(lines) == 1 and lines[0].startswith("config key '"), lines  # no traceback
    assert message in lines[0]
    assert not (path / "results").exists()


def test_report_has_the_plots_and_their_captions(finished_run, tmp_path):
    report = tmp_path / "report.html"
    snakemake(finished_run, "--report", str(report))
    html = report.read_text()
    for caption in (ROOT / "workflow/report").glob("*.rst"):
        if caption.name == "workflow.rst":
            continue
        # the first words of each caption (before any reStructuredText markup)
        words = re.split(r"[`*(]", caption.read_text().splitlines()[0])[0].strip()
        assert words and words in html, caption.name
    assert "accuracy_vs_retention.png" in html


def test_logs_are_lines_not_progress_bars(finished_run):
    logs = finished_run / "results/logs"
    finetune = (logs / "finetune/seed0.log").read_text()
    assert "\r" not in finetune
    epochs = [line for line in finetune.splitlines() if " epoch 1/1 " in line]
    assert len(epochs) == 1 and "sequences/s" in epochs[0] and "ETA" in epochs[0]
    for step in ["score/seed0/ig/layer1.log", "score/seed0/activation.log"]:
        text = (logs / step).read_text()
        assert "\r" not in text and "sequences/s" in text, step
    evaluation = json.loads(
        (finished_run / "results/evaluation/seed0/ig/retention0.5.json").read_text()
    )
    assert evaluation["device"] == "cpu"  # sweep.device auto, on a machine without a GPU


def test_weight_granularity_end_to_end(tmp_path):
    """The paper's protocol on the small config: q/k/v only, every weight scored and pruned."""
    path = make_workdir(
        tmp_path,
        {
            "scoring": {"granularity": "weight", "modules": ["q_proj", "k_proj", "v_proj"]},
            "sweep": {"retention_ratios": [1.0, 0.1]},
        },
    )
    snakemake(path)
    scores = pd.read_csv(path / "results/scores/seed0/ig.tsv", sep="\t")
    assert list(scores.columns) == ["layer", "module", "unit", "input", "score"]
    n_weights = 2 * 3 * 16 * 16  # layers x q/k/v x (16 x 16)
    assert len(scores) == n_weights
    full = json.loads((path / "results/finetune/seed0/metrics.json").read_text())["test"]
    for method in ("ig", "activation", "gradxact", "random"):
        kept_all = json.loads(
            (path / f"results/evaluation/seed0/{method}/retention1.0.json").read_text()
        )
        assert kept_all["granularity"] == "weight" and kept_all["n_neurons_total"] == n_weights
        assert kept_all["test"]["accuracy"] == full["accuracy"]  # keeping 100% changes nothing
        tenth = json.loads(
            (path / f"results/evaluation/seed0/{method}/retention0.1.json").read_text()
        )
        assert tenth["n_kept"] == round(0.1 * n_weights)
    assert "Granularity: per weight" in (path / "results/summary.md").read_text()


def test_paper_config_plans_the_papers_protocol(tmp_path):
    path = make_workdir(tmp_path)
    result = snakemake(path, "--dry-run", "--configfile", str(ROOT / "config/paper.yaml"))
    plan = result.stdout + result.stderr
    assert "fetch_pretrained_model" in plan and "esm2_t6_8M_UR50D" in plan
    # the small config's one seed: 6 layers of IG, ig/activation/random x 4 ratios
    assert re.search(r"score_layer\s+6\b", plan) and re.search(r"evaluate\s+12\b", plan)
