"""End to end through the Snakemake CLI on a very small config."""

import json
import re

import pandas as pd
import pytest
from workflow_helpers import ROOT, layer_config, make_workdir, snakemake

pytestmark = pytest.mark.slow  # every test runs snakemake
# the captions of rules that run only with model.pretrain.enabled
PRETRAINING_CAPTIONS = {"pretraining.rst", "pretraining_metrics.rst"}


@pytest.fixture(scope="module")
def finished_run(small_run):
    return small_run


def test_full_run_writes_every_stage(finished_run):
    path = finished_run
    table = pd.read_csv(path / "results/data/sequences.tsv", sep="\t")
    assert list(table.columns) == ["id", "sequence", "ec_numbers", "ec_class", "motifs"]
    assert table["ec_class"].value_counts().to_dict() == {c: 12 for c in range(1, 7)}
    splits = [pd.read_csv(path / f"results/data/split/seed{s}.tsv", sep="\t") for s in (0, 1)]
    assert set(splits[0]["split"]) == {"train", "validation", "test"}
    # each seed its own split and its own backbone initialisation
    assert not splits[0]["split"].equals(splits[1]["split"])
    backbones = [path / f"resources/models/esm2_tiny_seed{s}.pt" for s in (0, 1)]
    assert backbones[0].read_bytes() != backbones[1].read_bytes()
    metrics = json.loads((path / "results/finetune/seed0/metrics.json").read_text())
    assert metrics["chance"] == pytest.approx(1 / 6)
    scores = pd.read_csv(path / "results/scores/seed0/ig.tsv", sep="\t")
    # 2 layers x (4 x 16 attention + 64 fc1 + 16 fc2) units
    assert len(scores) == 2 * (4 * 16 + 64 + 16)
    summary = pd.read_csv(path / "results/summary.tsv", sep="\t")
    assert set(summary["method"]) == {
        "full",
        "ig",
        "activation",
        "gradxact",
        "random",
        "majority",
        "composition",
    }
    assert set(summary["selection"]) == {"full", "scored", "random", "matched", "baseline"}
    assert (summary["n_seeds"] == 2).all()
    tests = pd.read_csv(path / "results/tests.tsv", sep="\t")
    assert set(tests["family"]) == {"random", "matched random", "random within module"}
    assert tests["p_holm"].between(0, 1).all()
    enrichment = pd.read_csv(path / "results/enrichment.tsv", sep="\t")
    assert enrichment["p"].between(0, 1).all()
    # undefined (NaN) where a seed kept no unit of a module type
    assert enrichment["effective_fraction"].dropna().between(0, 1).all()
    density = pd.read_csv(path / "results/density.tsv", sep="\t")
    assert (density["density"] <= 1).all() and (density["n_effective"] <= density["n_kept"]).all()
    for name in [
        "accuracy_vs_retention",
        "density_heatmaps",
        "module_enrichment",
        "module_pruning",
    ]:
        assert (path / f"results/plots/{name}.png").stat().st_size > 1000
    assert (path / "results/summary.md").read_text().strip()
    for rule in ["download", "aggregate", "plots"]:
        assert (path / f"results/benchmarks/{rule}.tsv").exists()
        assert (path / f"results/logs/{rule}.log").exists()
    for rule in ["split/seed0", "prepare_model/seed0", "baselines/seed1", "evaluate/seed1"]:
        assert (path / f"results/benchmarks/{rule}.tsv").exists()
        assert (path / f"results/logs/{rule}.log").exists()


def test_metrics_are_counts_over_the_test_split(finished_run):
    """One epoch of a 2-layer model is at chance on 12 test sequences, so no accuracy threshold:
    every reported accuracy must be a count of correct predictions over the seed's test split,
    and every selection keeps the number of units its ratio says."""
    path = finished_run
    split = pd.read_csv(path / "results/data/split/seed0.tsv", sep="\t")
    test = split[split["split"] == "test"]
    n = len(test)
    metrics = json.loads((path / "results/finetune/seed0/metrics.json").read_text())
    assert [row["epoch"] for row in metrics["history"]] == [1] and metrics["best_epoch"] == 1

    results = pd.read_csv(path / "results/evaluation/seed0/results.tsv", sep="\t")
    assert ((results["accuracy"] * n).round(9) % 1 == 0).all()
    full = results[results["selection"] == "full"]
    assert len(full) == 1 and full["accuracy"].iloc[0] == pytest.approx(metrics["test"]["accuracy"])
    n_units = 2 * (4 * 16 + 64 + 16)
    glob = results[(results["scope"] == "global") & (results["selection"] != "full")]
    assert (glob["n_kept"] == (glob["retention"] * n_units).round()).all()
    counts = glob.groupby(["selection", "method"]).size().to_dict()
    assert counts[("random", "random")] == 3 * 2  # draws x ratios
    assert counts[("matched", "ig")] == 2 * 2 and counts[("scored", "ig")] == 2
    single = glob[glob["selection"] == "scored"]
    assert (single["ci_low"] <= single["accuracy"]).all()
    assert (single["accuracy"] <= single["ci_high"]).all()
    # matched random keeps the method's count in every (layer, module): same totals here
    within = results[results["scope"] != "global"]
    assert set(within["scope"]) == {"q_proj", "k_proj", "v_proj", "out_proj", "fc1", "fc2"}

    baselines = json.loads((path / "results/baselines/seed0.json").read_text())
    assert baselines["n_test"] == n
    sizes = test["ec_class"].value_counts()
    assert baselines["majority"]["accuracy"] <= sizes.max() / n + 1e-12


def test_second_run_has_nothing_to_do(finished_run):
    result = snakemake(finished_run, "--dry-run")
    assert "Nothing to be done" in result.stdout + result.stderr


def test_same_config_same_numbers(finished_run, tmp_path):
    again = make_workdir(tmp_path)
    snakemake(again, "results/finetune/seed0/metrics.json", "results/scores/seed0/ig.tsv")
    for name in ["results/data/split/seed0.tsv", "results/scores/seed0/ig.tsv"]:
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
        if caption.name == "workflow.rst" or caption.name in PRETRAINING_CAPTIONS:
            continue  # the pretraining captions: test_pretraining_end_to_end
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
    evaluation = (logs / "evaluate/seed0.log").read_text()
    assert "(cpu)" in evaluation  # sweep.device auto, on a machine without a GPU
    assert "pruned models" in evaluation and "models/s" in evaluation


def test_weight_granularity_end_to_end(tmp_path):
    """The paper's protocol on the small config: q/k/v only, every weight scored and pruned."""
    path = make_workdir(tmp_path, layer_config("weight"))
    snakemake(path)
    scores = pd.read_csv(path / "results/scores/seed0/ig.tsv", sep="\t")
    assert list(scores.columns) == ["layer", "module", "unit", "input", "score"]
    n_weights = 2 * 3 * 16 * 16  # layers x q/k/v x (16 x 16)
    assert len(scores) == n_weights
    results = pd.read_csv(path / "results/evaluation/seed0/results.tsv", sep="\t")
    assert set(results["granularity"]) == {"weight"}
    full = results.loc[results["selection"] == "full", "accuracy"].iloc[0]
    glob = results[(results["scope"] == "global") & (results["selection"] != "full")]
    assert (glob["n_total"] == n_weights).all()
    kept_all = glob[glob["retention"] == 1.0]
    assert (kept_all["accuracy"] == full).all()  # keeping 100% changes nothing
    assert (glob.loc[glob["retention"] == 0.1, "n_kept"] == round(0.1 * n_weights)).all()
    assert "Granularity: per weight" in (path / "results/summary.md").read_text()


def test_paper_config_plans_the_papers_protocol(tmp_path):
    path = make_workdir(tmp_path)
    result = snakemake(path, "--dry-run", "--configfile", str(ROOT / "config/paper.yaml"))
    plan = result.stdout + result.stderr
    assert "fetch_pretrained_model" in plan and "esm2_t6_8M_UR50D" in plan
    # the small config's two seeds: 6 layers of IG each, one evaluation job per seed
    assert re.search(r"score_layer\s+12\b", plan) and re.search(r"evaluate\s+2\b", plan)


def test_pretraining_end_to_end(tmp_path):
    """The shared pretrained backbone: a corpus without labelled sequences, the masked-LM
    report, and every seed fine-tuning the pretrained checkpoint (no per-seed tiny init)."""
    path = make_workdir(tmp_path, layer_config("pretrain"))
    result = snakemake(path)
    assert re.search(r"pretrain\s+1\b", result.stdout + result.stderr)
    corpus = pd.read_csv(path / "results/pretrain/corpus.tsv", sep="\t", keep_default_na=False)
    labelled = pd.read_csv(path / "results/data/sequences.tsv", sep="\t")
    assert set(corpus["sequence"]).isdisjoint(labelled["sequence"])
    assert (corpus["part"] == "heldout").sum() == round(0.1 * len(corpus))
    report = json.loads((path / "results/pretrain/corpus.json").read_text())
    assert report["train"] + report["heldout"] == len(corpus) <= report["pool"] == 240
    metrics = pd.read_csv(path / "results/pretrain/shared/metrics.tsv", sep="\t")
    assert {"model", "unigram", "composition"} == set(metrics["predictor"])
    assert {"all", "motif", "background"} <= set(metrics["region"])
    assert (metrics["ci_low"] <= metrics["value"]).all()
    assert (path / "results/pretrain/shared/pretraining.png").stat().st_size > 0
    assert not list((path / "resources/models").glob("esm2_tiny_seed*.pt"))
    plan = snakemake(path, "--dry-run", "--forcerun", "finetune")
    assert "input: resources/models/pretrained_shared.pt" in plan.stdout + plan.stderr
    assert "masked accuracy" in (path / "results/logs/pretrain/shared.log").read_text()
    report = tmp_path / "report.html"
    snakemake(path, "--report", str(report))
    html = report.read_text()
    for name in PRETRAINING_CAPTIONS:
        words = re.split(r"[`*(:]", (ROOT / "workflow/report" / name).read_text())[0].strip()
        assert words in html, name
