"""What a change reruns: `snakemake --dry-run` job counts after one complete small run.

Every case works on a copy of the finished run (the session fixture `small_run`);
shutil.copytree keeps mtimes and copies .snakemake/ metadata, so a copy has nothing to do.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import pytest
import yaml
from workflow_helpers import ROOT, deep_update, read_config, snakemake, write_config

TAIL = {"aggregate": 1, "plots": 1, "all": 1}
SEEDS = 2  # the small config's seeds 0 and 1


def per_seed(counts: dict[str, int], seeds: int = SEEDS) -> dict[str, int]:
    return {rule: n * seeds for rule, n in counts.items()}


# one seed of the small config: 2 layers; methods ig (per layer), activation, gradxact
SCORING = {"score_layer": 2, "merge_layers": 1, "score": 2}
# a seed's chain from its split on: split, baselines, backbone, model, scores, evaluation
SEED_CHAIN = {"split": 1, "baselines": 1, "prepare_model": 1, "finetune": 1, **SCORING}
SEED_CHAIN |= {"evaluate": 1, "knowledge": 1, "sae": 2, "features": 1}  # an SAE per layer
# the knowledge analysis of every seed and its summary
KNOWLEDGE = {"knowledge": SEEDS, "knowledge_summary": 1}
# what follows a seed's fine-tuned model besides scores and evaluation: SAEs, features, pages
AFTER_MODEL = {"sae": 2 * SEEDS, "features": SEEDS, "features_summary": 1, "browser": 1}
AFTER_FINETUNE = per_seed({"finetune": 1, **SCORING, "evaluate": 1}) | KNOWLEDGE | AFTER_MODEL


def job_counts(path: Path, env: dict | None = None) -> dict[str, int]:
    """The dry run's "Job stats" table as {rule: count}, {} when nothing is to be done."""
    result = snakemake(path, "--dry-run", env=env)
    log = result.stdout + result.stderr
    if "Nothing to be done" in log:
        return {}
    table = log.split("Job stats:", 1)[1]
    counts = {}
    for line in table.splitlines()[3:]:
        match = re.fullmatch(r"(\w+)\s+(\d+)", line.strip())
        if not match or match[1] == "total":
            break
        counts[match[1]] = int(match[2])
    assert counts, log
    return counts


@pytest.fixture
def run_copy(small_run, tmp_path):
    return Path(shutil.copytree(small_run, tmp_path / "run", symlinks=True))


def change_config(path: Path, change: dict) -> None:
    write_config(path, deep_update(read_config(path), change))


def report(case: str, counts: dict[str, int]) -> None:
    print(f"{case}: {counts} (total {sum(counts.values())})")


def test_copy_of_a_finished_run_has_nothing_to_do(run_copy):
    counts = job_counts(run_copy)
    report("no change", counts)
    assert counts == {}


def test_new_retention_ratio_reruns_only_the_evaluations(run_copy):
    change_config(run_copy, {"sweep": {"retention_ratios": [0.5, 0.25, 0.1]}})
    counts = job_counts(run_copy)
    report("ratio 0.25 added", counts)
    assert counts == {"evaluate": SEEDS, **TAIL}  # one evaluation job per seed


def test_new_method_runs_only_its_scoring_and_the_evaluations(run_copy):
    # make the copy a finished run without activation (reruns evaluate and what follows)
    for seed in range(SEEDS):
        (run_copy / f"results/scores/seed{seed}/activation.tsv").unlink()
    change_config(run_copy, {"scoring": {"methods": ["ig", "gradxact"]}})
    assert job_counts(run_copy) == {"evaluate": SEEDS, **TAIL, "browser": 1}
    snakemake(run_copy)
    assert job_counts(run_copy) == {}

    change_config(run_copy, {"scoring": {"methods": ["ig", "activation", "gradxact"]}})
    counts = job_counts(run_copy)
    report("method activation added", counts)
    assert counts == {"score": SEEDS, "evaluate": SEEDS, **TAIL, "browser": 1}  # it shows scores


def test_new_seed_runs_only_that_seeds_chain(run_copy):
    change_config(run_copy, {"seeds": [0, 1, 2]})
    counts = job_counts(run_copy)
    report("seed 2 added", counts)
    # no download: the data are shared
    summaries = {"knowledge_summary": 1, "features_summary": 1, "browser": 1}
    assert counts == {**SEED_CHAIN, **TAIL, **summaries}


def test_shared_split_is_one_split_and_its_seed_decides_only_it(run_copy):
    change_config(run_copy, {"split": {"seed": 7}})  # only the shared split reads split.seed
    assert job_counts(run_copy) == {}
    change_config(run_copy, {"split": {"shared": True}})
    counts = job_counts(run_copy)
    report("split.shared on", counts)
    chain = per_seed({k: v for k, v in SEED_CHAIN.items() if k != "prepare_model"})
    assert counts == {**chain, "split": 1, "baselines": 1, **TAIL, **KNOWLEDGE, **AFTER_MODEL}


def test_finetune_change_reruns_finetune_and_what_follows(run_copy):
    config = read_config(run_copy)
    change_config(run_copy, {"finetune": {"lr": config["finetune"]["lr"] / 2}})
    counts = job_counts(run_copy)
    report("finetune.lr changed", counts)
    assert counts == {**AFTER_FINETUNE, **TAIL}


def test_knowledge_setting_reruns_only_the_knowledge_rules(run_copy):
    change_config(run_copy, {"knowledge": {"threshold": 0.3}})
    counts = job_counts(run_copy)
    report("knowledge.threshold changed", counts)
    # the features' causal test and the browser show the knowledge neurons
    assert counts == {**KNOWLEDGE, "features": SEEDS, "features_summary": 1, "browser": 1, "all": 1}


def test_plot_style_change_reruns_only_plots(run_copy):
    change_config(run_copy, {"plots": {"dpi": 72}})
    counts = job_counts(run_copy)
    report("plots.dpi changed", counts)
    # the three draw figures
    assert counts == {"plots": 1, "knowledge_summary": 1, "features_summary": 1, "all": 1}


def test_cluster_settings_of_a_random_split_rerun_nothing(run_copy):
    change_config(run_copy, {"split": {"identity": 0.5, "coverage": 0.5}})
    counts = job_counts(run_copy)
    report("split.identity, split.coverage changed (method random)", counts)
    assert counts == {}


# --- the same settings written another way rerun nothing -------------------------------------

SCHEMA = yaml.safe_load((ROOT / "workflow/schemas/config.schema.yaml").read_text())


def reordered(value):
    """Every mapping's keys in reverse order, recursively."""
    if isinstance(value, dict):
        return {key: reordered(value[key]) for key in reversed(list(value))}
    if isinstance(value, list):
        return [reordered(item) for item in value]
    return value


def respelled(value):
    """Every number as a float (30 -> 30.0): YAML writers and users differ on this."""
    if isinstance(value, dict):
        return {key: respelled(item) for key, item in value.items()}
    if isinstance(value, list):
        return [respelled(item) for item in value]
    if isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    return value


def without_defaults(config: dict, schema: dict) -> dict:
    """The config with every key left out whose value is the schema's default for it."""
    out = {}
    for key, value in config.items():
        sub = schema.get("properties", {}).get(key, {})
        if isinstance(value, dict):
            value = without_defaults(value, sub)
            if not value and "default" in sub:
                continue
        elif "default" in sub and sub["default"] == value:
            continue
        out[key] = value
    return out


def test_reordered_config_reruns_nothing(run_copy):
    write_config(run_copy, reordered(read_config(run_copy)))
    counts = job_counts(run_copy)
    report("every mapping reordered", counts)
    assert counts == {}


def test_defaults_left_out_or_written_out_rerun_nothing(run_copy):
    full = read_config(run_copy)
    short = without_defaults(full, SCHEMA)
    assert "uniprot" not in short["data"] and "ig_rule" not in short["scoring"]  # left out
    write_config(run_copy, short)
    counts = job_counts(run_copy)
    report("defaulted keys left out", counts)
    assert counts == {}
    # and written out again, at the end of their mappings, numbers spelled as floats
    write_config(run_copy, respelled(deep_update(short, without_defaults(full, {}))))
    counts = job_counts(run_copy)
    report("defaulted keys written out, numbers as floats", counts)
    assert counts == {}


def test_values_swapped_between_keys_rerun(run_copy):
    """Snakemake compares params as an unnamed set of values: one named mapping catches this."""
    config = read_config(run_copy)
    lr, head_lr = config["finetune"]["lr"], config["finetune"]["head_lr"]
    assert lr != head_lr
    change_config(run_copy, {"finetune": {"lr": head_lr, "head_lr": lr}})
    counts = job_counts(run_copy)
    report("lr and head_lr swapped", counts)
    assert counts == {**AFTER_FINETUNE, **TAIL}


def touched_run(path: Path) -> Path:
    """A finished run of the config in `path` as far as rerun decisions go: every output
    exists and Snakemake's metadata (params, code, inputs) is recorded (`--touch`), without
    the minutes of computing."""
    summary = snakemake(path, "--forceall", "--summary").stdout
    for line in summary.splitlines()[1:]:
        output = path / line.split("\t")[0]
        output.parent.mkdir(parents=True, exist_ok=True)
        output.touch()
    snakemake(path, "--forceall", "--touch")
    return path


def test_default_config_written_another_way_reruns_nothing(tmp_path):
    for name in ("Snakefile", "config.yaml"):
        shutil.copy(ROOT / name, tmp_path / name)
    for name in ("workflow", "envs"):
        shutil.copytree(ROOT / name, tmp_path / name, ignore=shutil.ignore_patterns("__pycache__"))
    run = touched_run(tmp_path)
    assert job_counts(run) == {}
    default = read_config(run)
    variants = {
        "reordered": reordered(default),
        "defaults left out": without_defaults(default, SCHEMA),
        "numbers as floats, reordered": reordered(respelled(default)),
    }
    for case, config in variants.items():
        write_config(run, config)
        counts = job_counts(run)
        report(f"default config, {case}", counts)
        assert counts == {}, case
    write_config(run, deep_update(default, {"scoring": {"ig_steps": 12}}))
    # a real change: IG reruns, one job per seed in the default layout
    assert job_counts(run)["score"] == len(default["seeds"])
