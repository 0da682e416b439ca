"""Run the real Snakefile on a small config in a temporary copy of the workflow."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

SMALL_CONFIG = {
    # two seeds: the statistics across seeds run end to end
    "seeds": [0, 1],
    "data": {"synthetic": {"n_per_class": 12, "min_length": 60, "max_length": 80}},
    "model": {"tiny": {"num_layers": 2, "embed_dim": 16, "attention_heads": 2}},
    # head_lr != lr, so swapping the two is a change (tests/test_reruns.py)
    "finetune": {"epochs": 1, "batch_size": 16, "head_lr": 0.004},
    # IG one job per layer (the cluster layout; the default runs one job per seed)
    "scoring": {"max_sequences": 12, "ig_steps": 4, "batch_size": 8, "jobs_per_layer": True},
    "sweep": {
        "retention_ratios": [0.5, 0.1],
        "random_draws": 3,
        "control_draws": 2,
        "module_ratios": [0.5],
        "bootstrap": 200,
    },
    "knowledge": {"max_count": 5, "matched_sets": 2, "test_sequences": 0},
    "plots": {"dpi": 60},
}


def deep_update(base: dict, extra: dict) -> dict:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_update(base[key], value)
        else:
            base[key] = value
    return base


def make_workdir(path: Path, config: dict | None = None) -> Path:
    """A copy of the workflow (Snakefile, rules, scripts, schema) with a merged config.yaml."""
    shutil.copy(ROOT / "Snakefile", path / "Snakefile")
    shutil.copytree(
        ROOT / "workflow", path / "workflow", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copytree(ROOT / "envs", path / "envs")
    write_config(
        path, deep_update(yaml.safe_load((ROOT / "config.yaml").read_text()), SMALL_CONFIG)
    )
    if config:
        write_config(path, deep_update(read_config(path), config))
    return path


def read_config(path: Path) -> dict:
    return yaml.safe_load((path / "config.yaml").read_text())


def write_config(path: Path, config: dict) -> None:
    (path / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))


def snakemake(
    path: Path, *args: str, check: bool = True, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess:
    """Run snakemake in path; env: variables set on top of this process's environment."""
    result = subprocess.run(
        [sys.executable, "-m", "snakemake", "--cores", "2", *args],
        cwd=path,
        capture_output=True,
        text=True,
        env={**os.environ, **env} if env else None,
    )
    if check and result.returncode != 0:
        raise AssertionError(
            f"snakemake {' '.join(args)} failed:\n{result.stdout}\n{result.stderr}"
        )
    return result
