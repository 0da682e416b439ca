"""The SLURM profile on a real single-node SLURM cluster (tests/slurm/start_cluster.sh).

Skipped where the SLURM daemons are not installed, the test is not root, or the cluster does
not start. CI (.ci/run) installs slurm-wlm and munge, so it runs there.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time

import pytest
import yaml
from workflow_helpers import ROOT, make_workdir

SCRIPTS = ROOT / "tests" / "slurm"
# what a one-node test cluster needs on top of profiles/slurm: the site settings a user
# edits (partition, account, GPUs) and sizes that fit a 2-core machine
NODE_LIMITS = {"cpus_per_task": 2, "mem_mb": 4000}

pytestmark = pytest.mark.slow  # a SLURM cluster and two workflow runs


def site_profile(path):
    """profiles/slurm/config.yaml with this cluster's site settings, written under path."""
    profile = yaml.safe_load((ROOT / "profiles/slurm/config.yaml").read_text())
    profile["default-resources"]["slurm_partition"] = "debug"
    for resources in profile["set-resources"].values():
        resources.pop("gpu", None)  # the test node has no GPU
        for key, limit in NODE_LIMITS.items():
            if key in resources:
                resources[key] = min(resources[key], limit)
    # the rules' own thread count (1), as in the local run the results are compared with:
    # torch's float sums, so the IG scores' last digits, depend on the number of threads
    profile.pop("set-threads")
    profile.update(
        {
            "slurm-no-account": True,  # no accounting database, so no accounts
            "slurm-status-command": "squeue",  # no sacct without accounting storage
            # poll squeue soon: the plugin waits this long after a job finishes, adding 10 s
            # per round without one (the default 40 s would dominate this test's time)
            "slurm-init-seconds-before-status-checks": 1,
            "seconds-between-status-checks": 1,
            "slurm-keep-successful-logs": True,
            "keep-going": False,
        }
    )
    (path / "profile").mkdir()
    (path / "profile/config.yaml").write_text(yaml.safe_dump(profile))
    return path / "profile"


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    missing = [t for t in ("sbatch", "slurmctld", "slurmd", "munged") if not shutil.which(t)]
    if missing:
        pytest.skip(
            f"SLURM is not installed (no {', '.join(missing)}): apt-get install slurm-wlm munge"
        )
    if os.geteuid() != 0:
        pytest.skip("starting slurmctld/slurmd for the test cluster needs root")
    state = tmp_path_factory.mktemp("slurm")
    old = os.environ.get("SLURM_CONF")
    # stop the daemons whatever happens once start_cluster.sh has run: a failed start, a
    # timeout, a failed test (pytest.skip and assertion errors pass through `finally`)
    try:
        try:
            start = subprocess.run(
                [SCRIPTS / "start_cluster.sh", state], capture_output=True, text=True, timeout=120
            )
        except subprocess.TimeoutExpired as error:
            pytest.skip(f"the test SLURM cluster did not start in 120 s:\n{error.stderr}")
        if start.returncode != 0:
            pytest.skip(f"the test SLURM cluster did not start:\n{start.stdout}\n{start.stderr}")
        os.environ["SLURM_CONF"] = str(state / "slurm.conf")
        yield state
    finally:
        subprocess.run([SCRIPTS / "stop_cluster.sh", state], capture_output=True, timeout=60)
        if old is None:
            os.environ.pop("SLURM_CONF", None)
        else:
            os.environ["SLURM_CONF"] = old


def test_slurm_profile_runs_the_workflow_through_sbatch(slurm_cluster, tmp_path, request):
    (tmp_path / "slurm").mkdir()
    slurm_dir = make_workdir(tmp_path / "slurm")
    profile = site_profile(tmp_path)
    started = time.monotonic()
    slurm_run = subprocess.Popen(
        [sys.executable, "-m", "snakemake", "--cores", "2", "--profile", str(profile)],
        cwd=slurm_dir,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    # the same config run locally, meanwhile (the SLURM run mostly waits for squeue polls):
    # the session's shared small run (conftest.small_run), asked for only here so that a
    # skipped SLURM test does not start it
    try:
        local_dir = request.getfixturevalue("small_run")
        log, _ = slurm_run.communicate(timeout=600)
    finally:
        if slurm_run.poll() is None:  # snakemake cancels its SLURM jobs on SIGTERM
            slurm_run.terminate()
            try:
                slurm_run.communicate(timeout=60)
            except subprocess.TimeoutExpired:
                slurm_run.kill()
                slurm_run.communicate()
    elapsed = time.monotonic() - started
    assert slurm_run.returncode == 0, log
    submitted = re.findall(r"submitted with SLURM jobid (\d+)", log)
    # everything but the local rules (download, all) went through sbatch
    assert len(submitted) >= 8, log
    logs = slurm_dir / ".snakemake/slurm_logs"
    slurm_logs = [p.relative_to(logs).parts[0] for p in logs.rglob("*.log")]
    assert set(slurm_logs) >= {
        "rule_finetune",
        "rule_score_layer",
        "rule_evaluate",
        "rule_knowledge",
        "rule_aggregate",
        "rule_plots",
        "rule_sae",
        "rule_features",
    }
    assert "Job stats" in log and "rule download" in log
    print(f"SLURM run of the small config: {elapsed:.0f} s, {len(submitted)} sbatch jobs")

    for name in [
        "results/summary.tsv",
        "results/tests.tsv",
        "results/scores/seed0/ig.tsv",
        "results/density.tsv",
        "results/knowledge/specificity.tsv",
        "results/sae/coverage.tsv",
        "results/sae/causal.tsv",
    ]:
        assert (slurm_dir / name).read_text() == (local_dir / name).read_text(), name
