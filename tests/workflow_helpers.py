"""Run the real Snakefile on a small config in a temporary copy of the workflow."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]

TEST_CONFIGS = ROOT / ".test" / "config"


def layer_config(name: str) -> dict:
    """The settings of .test/config/<name>.yaml (a layer over config.yaml)."""
    return yaml.safe_load((TEST_CONFIGS / f"{name}.yaml").read_text())


def deep_update(base: dict, extra: dict) -> dict:
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            deep_update(base[key], value)
        else:
            base[key] = value
    return base


def make_workdir(path: Path, config: dict | None = None) -> Path:
    """A copy of the workflow (Snakefile, rules, scripts, schema) with config.yaml: the small
    test config (.test/config/small.yaml) and `config` over it."""
    shutil.copy(ROOT / "Snakefile", path / "Snakefile")
    shutil.copytree(
        ROOT / "workflow", path / "workflow", ignore=shutil.ignore_patterns("__pycache__")
    )
    shutil.copytree(ROOT / "envs", path / "envs")
    config_yaml = yaml.safe_load((ROOT / "config.yaml").read_text())
    write_config(path, deep_update(config_yaml, layer_config("small")))
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
