"""Every module of the package, edited in turn, reruns exactly the rules whose results it can
change (`kneurons.codehash`), on the small config after one complete run.

The expectations are written down here by hand, per module, as the first jobs an edit should
reach; what follows them comes from the small config's DAG below. A module missing from the
table fails the test, so a new module must say what it decides.
"""

from __future__ import annotations

import ast
import os
import shutil
from pathlib import Path

import pytest
from test_reruns import job_counts

from kneurons import codehash
from kneurons.attribution.methods import REGISTRY

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
    "sae": 4,
    "features": 2,
    "features_summary": 1,
    "browser": 1,
}
CHILDREN = {
    "download": ["split"],
    "split": ["baselines", "finetune", "sae", "features", "browser"],
    "baselines": ["aggregate"],
    "prepare_model": ["finetune"],
    "finetune": [
        "score_layer:ig",
        "score:activation",
        "score:gradxact",
        "evaluate",
        "sae",
        "browser",
    ],
    "score_layer:ig": ["merge_layers:ig"],
    "merge_layers:ig": ["evaluate", "knowledge", "browser"],
    "score:activation": ["evaluate", "browser"],
    "score:gradxact": ["evaluate", "browser"],
    "evaluate": ["aggregate"],
    "knowledge": ["knowledge_summary", "features", "browser"],
    "aggregate": ["plots"],
    "sae": ["features", "browser"],
    "features": ["features_summary", "browser"],
}
SCORES = ["score_layer:ig", "merge_layers:ig", "score:activation", "score:gradxact"]
REPORTS = ["aggregate", "plots", "knowledge_summary", "features_summary"]

# module -> the jobs an edit reaches first (the hash works per module: an edit of
# attribution/quadrature.py reruns activation's scores too, which do not call it)
FIRST = {
    "analysis.__init__": ["baselines", "evaluate", "knowledge", "features", *REPORTS],
    "analysis.concepts": ["features"],
    "analysis.features": ["features"],
    "analysis.baselines": ["baselines"],
    "analysis.evaluation": ["evaluate"],
    "analysis.knowledge": ["knowledge", "features"],
    "analysis.selection": ["evaluate"],
    "analysis.stats": ["baselines", "evaluate", *REPORTS],
    "attribution.__init__": [*SCORES, "knowledge", "features"],
    "attribution.engine": [*SCORES, "knowledge", "features"],
    "attribution.methods.__init__": SCORES,  # the registry: every method's package
    "attribution.methods.base": SCORES,
    "attribution.quadrature": [*SCORES, "knowledge", "features"],
    "attribution.score": SCORES,
    "data.__init__": ["download"],
    "data.clusters": ["split"],
    "data.corpus": [],  # the pretraining corpus: the small config does not pretrain
    "data.download": ["download"],
    "data.http": [],  # the UniProt client's transport: not used by a synthetic run
    "data.motifs": ["download", "knowledge", "features"],
    "data.readers": [],  # users' tables: not read by a synthetic run
    "data.split": ["split"],
    "data.synthetic": ["download"],
    "data.tables": ["download"],
    "data.uniprot": [],  # not used by a synthetic run
    "model.__init__": ["prepare_model", "baselines", *REPORTS],
    "model.attention": ["prepare_model"],
    "model.esm": ["prepare_model"],
    "model.hf_checkpoint": [],  # not used by the tiny model
    "model.pretrain": [],  # the small config does not pretrain
    "model.sae": ["sae", "features"],
    "model.release": [],  # not used by the tiny model
    "model.train": ["finetune"],
    "model.units": ["prepare_model", "baselines", *REPORTS],  # the effective-unit rules in stats
    "reporting.__init__": [*REPORTS, "browser"],
    "reporting.browser": ["browser"],
    "reporting.browser_page": ["browser"],
    "reporting.format": REPORTS,
    "reporting.aggregate": ["aggregate"],
    "reporting.features": ["features_summary"],
    "reporting.knowledge": ["knowledge_summary", "features_summary"],
    "reporting.knowledge_page": ["knowledge_summary"],
    "reporting.knowledge_plots": ["knowledge_summary"],
    "reporting.knowledge_summary": ["knowledge_summary"],
    "reporting.plots": ["plots"],
    "reporting.pretraining": [],  # the small config does not pretrain
    "reporting.pruning": ["aggregate", "plots"],
    "reporting.pruning_page": ["aggregate"],
    "reporting.style": ["plots", "knowledge_summary", "features_summary"],
}


# a method's module reruns its own scores; a method the small config does not score, nothing
# (so a new method is one file: this table needs no line for it)
SCORE_JOBS = {
    "ig": "score_layer:ig",
    "activation": "score:activation",
    "gradxact": "score:gradxact",
}
for _name in REGISTRY:
    FIRST[f"attribution.methods.{_name}"] = [SCORE_JOBS[_name]] if _name in SCORE_JOBS else []


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


# --- the hash walker on a package of its own ------------------------------------------------


@pytest.fixture
def toy_package(tmp_path, monkeypatch):
    """A package laid out like kneurons: a stage with relative imports, a registry package
    that imports its modules dynamically, a top-level module."""
    root = tmp_path / "kneurons"
    files = {
        "__init__.py": "",
        "base.py": "X = 1\n",
        "stage/__init__.py": "",
        "stage/step.py": "from .helper import f\nfrom ..base import X\n",
        "stage/helper.py": "def f():\n    from kneurons.stage import lazy\n",
        "stage/lazy.py": "",
        "stage/other.py": "",
        "registry/__init__.py": "import importlib\n",
        "registry/a.py": "",
        "registry/b.py": "",
        "user.py": "from kneurons.registry import a\n",
        "whole.py": "from kneurons import registry\n",
    }
    for name, text in files.items():
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    monkeypatch.setattr(codehash, "package_dir", lambda: root)
    for cached in (codehash.direct_dependencies, codehash.code_version):
        cached.cache_clear()
    yield root
    for cached in (codehash.direct_dependencies, codehash.code_version):
        cached.cache_clear()


def test_relative_lazy_and_parent_imports_are_followed(toy_package):
    assert codehash.dependencies("stage.step") == [
        "base",
        "stage.__init__",
        "stage.helper",
        "stage.lazy",
        "stage.step",
    ]
    # a module of a package needs the package's __init__, not its siblings
    assert codehash.dependencies("user") == ["registry.__init__", "registry.a", "user"]
    # a package imported as a whole stands for every module in it
    assert codehash.dependencies("whole") == [
        "registry",
        "registry.__init__",
        "registry.a",
        "registry.b",
        "whole",
    ]


def test_the_hash_follows_the_source(toy_package):
    before = codehash.code_version("stage.step")
    (toy_package / "stage/other.py").write_text("Y = 2\n")
    codehash.code_version.cache_clear()
    assert codehash.code_version("stage.step") == before  # not imported
    (toy_package / "stage/lazy.py").write_text("Y = 2\n")
    codehash.code_version.cache_clear()
    assert codehash.code_version("stage.step") != before  # imported inside a function
    with pytest.raises(ModuleNotFoundError, match="no module kneurons.nowhere"):
        codehash.dependencies("nowhere")


# --- imports go only downwards -----------------------------------------------------------------

# top-level modules the stages may import; then the stages, lowest first
BASE = {"__init__", "config", "errors", "io", "progress", "settings"}
STAGES = ["data", "model", "attribution", "analysis", "reporting"]
TOP = {"codehash", "workflow"}  # they read the stages, nothing imports them


def rank(module: str) -> int:
    if module in BASE:
        return 0
    if module in TOP:
        return len(STAGES) + 1
    return STAGES.index(module.split(".")[0]) + 1


def test_imports_only_go_downwards_without_cycles():
    graph = {}
    for module in codehash.all_modules():
        tree = ast.parse(codehash.module_file(module).read_text())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import | ast.ImportFrom):
                imported |= codehash._imported(module, node)
        imported -= {module}
        graph[module] = imported
        upwards = sorted(m for m in imported if rank(m.split(".__init__")[0]) > rank(module))
        assert not upwards, f"{module} imports {upwards}"
    # no cycles among modules (a package name stands for its __init__)
    state: dict[str, int] = {}

    def visit(module, path):
        key = module if module in graph else f"{module}.__init__"
        if state.get(key) == 1:
            raise AssertionError(f"import cycle: {' -> '.join([*path, module])}")
        if state.get(key) == 2 or key not in graph:
            return
        state[key] = 1
        for dependency in graph[key]:
            visit(dependency, [*path, module])
        state[key] = 2

    for module in graph:
        visit(module, [])
