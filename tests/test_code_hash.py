"""Every module of the package, edited in turn, reruns exactly the rules whose results it can
change (`kneurons.codehash`), on the small config after one complete run.

The expectations are written down here by hand, per module, as the first jobs an edit should
reach; what follows them comes from the small config's DAG below. A module missing from the
table fails the test, so a new module must say what it decides.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest
from test_reruns import job_counts

from kneurons import codehash

# the small config's jobs (2 seeds, 2 layers; ig per layer, activation and gradxact per seed)
JOBS = {
    "download": 1,
    "split": 2,
    "baselines": 2,
    "prepare_model": 2,
    "finetune": 2,
    "score_layer:ig": 4,
    "merge_layers:ig": 2,
    "score:activation": 2,
    "score:gradxact": 2,
    "evaluate": 2,
    "knowledge": 2,
    "aggregate": 1,
    "plots": 1,
    "knowledge_summary": 1,
}
CHILDREN = {
    "download": ["split"],
    "split": ["baselines", "finetune"],
    "baselines": ["aggregate"],
    "prepare_model": ["finetune"],
    "finetune": ["score_layer:ig", "score:activation", "score:gradxact", "evaluate"],
    "score_layer:ig": ["merge_layers:ig"],
    "merge_layers:ig": ["evaluate", "knowledge"],
    "score:activation": ["evaluate"],
    "score:gradxact": ["evaluate"],
    "evaluate": ["aggregate"],
    "knowledge": ["knowledge_summary"],
    "aggregate": ["plots"],
}
SCORES = ["score_layer:ig", "merge_layers:ig", "score:activation", "score:gradxact"]
REPORTS = ["aggregate", "plots", "knowledge_summary"]

# module -> the jobs an edit reaches first (the hash works per module: an edit of
# attribution/quadrature.py reruns activation's scores too, which do not call it)
FIRST = {
    "analysis.__init__": ["baselines", "evaluate", "knowledge", *REPORTS],
    "analysis.baselines": ["baselines"],
    "analysis.evaluation": ["evaluate"],
    "analysis.knowledge": ["knowledge"],
    "analysis.selection": ["evaluate"],
    "analysis.stats": ["baselines", "evaluate", *REPORTS],
    "attribution.__init__": [*SCORES, "knowledge"],
    "attribution.engine": [*SCORES, "knowledge"],
    "attribution.methods.__init__": SCORES,  # the registry: every method's package
    "attribution.methods.activation": ["score:activation"],
    "attribution.methods.base": SCORES,
    "attribution.methods.gradxact": ["score:gradxact"],
    "attribution.methods.ig": ["score_layer:ig"],
    "attribution.quadrature": [*SCORES, "knowledge"],
    "attribution.score": SCORES,
    "data.__init__": ["download"],
    "data.clusters": ["split"],
    "data.download": ["download"],
    "data.http": [],  # the UniProt client's transport: not used by a synthetic run
    "data.motifs": ["download", "knowledge"],
    "data.readers": [],  # users' tables: not read by a synthetic run
    "data.split": ["split"],
    "data.synthetic": ["download"],
    "data.tables": ["download"],
    "data.uniprot": [],  # not used by a synthetic run
    "model.__init__": ["prepare_model", *REPORTS],
    "model.attention": ["prepare_model"],
    "model.esm": ["prepare_model"],
    "model.hf_checkpoint": [],  # not used by the tiny model
    "model.release": [],  # not used by the tiny model
    "model.train": ["finetune"],
    "model.units": ["prepare_model", *REPORTS],
    "reporting.__init__": REPORTS,
    "reporting.format": REPORTS,
    "reporting.knowledge": ["knowledge_summary"],
    "reporting.plots": ["plots"],
    "reporting.pruning": REPORTS,  # the knowledge summary uses its table helpers
    "reporting.style": ["plots", "knowledge_summary"],
}


def expected_counts(first: list[str]) -> dict[str, int]:
    """The dry run's job counts when `first` and everything after them rerun."""
    todo, reached = list(first), set()
    while todo:
        job = todo.pop()
        if job not in reached:
            reached.add(job)
            todo.extend(CHILDREN.get(job, []))
    counts: dict[str, int] = {}
    for job in reached:
        rule = job.split(":")[0]
        counts[rule] = counts.get(rule, 0) + JOBS[job]
    return {**counts, "all": 1} if counts else {}


def test_every_module_is_declared():
    modules = set(codehash.all_modules())
    declared = set(FIRST) | set(codehash.UNHASHED)
    assert modules == declared, (modules - declared, declared - modules)
    assert not set(FIRST) & set(codehash.UNHASHED)


@pytest.fixture(scope="module")
def edited_package(small_run, tmp_path_factory):
    """A copy of the finished run and of the package, first on PYTHONPATH (src/ is never
    touched); each test appends a no-op line to one module of the copy and restores it."""
    root = tmp_path_factory.mktemp("code_hash")
    run = Path(shutil.copytree(small_run, root / "run", symlinks=True))
    site = root / "site"
    shutil.copytree(
        codehash.package_dir(), site / "kneurons", ignore=shutil.ignore_patterns("__pycache__")
    )
    path = os.pathsep.join(filter(None, [str(site), os.environ.get("PYTHONPATH")]))
    env = {"PYTHONPATH": path}
    assert job_counts(run, env) == {}  # the copy hashes like the original
    return run, site / "kneurons", env


@pytest.mark.slow
@pytest.mark.parametrize("module", sorted(set(codehash.all_modules())))
def test_an_edit_reruns_what_the_module_decides(edited_package, module):
    run, package, env = edited_package
    source = package.joinpath(*module.split(".")).with_suffix(".py")
    original = source.read_bytes()
    try:
        source.write_bytes(original + b"\n# an edit that changes nothing\n")
        counts = job_counts(run, env)
    finally:
        source.write_bytes(original)
    if module in codehash.UNHASHED:
        assert counts == {}, f"{module} ({codehash.UNHASHED[module]}) reran {counts}"
    else:
        assert counts == expected_counts(FIRST[module]), module
