import sys

import pytest
import torch

from kneurons.model.esm import EnzymeClassifier, build_tiny_esm2


@pytest.fixture
def tiny_classifier():
    """A small float64 classifier with non-trivial weights (random init plus noise)."""
    return make_tiny_classifier()


def make_tiny_classifier():
    """`tiny_classifier`, for fixtures of a wider scope."""
    torch.manual_seed(0)
    model = EnzymeClassifier(build_tiny_esm2(3, 32, 4, seed=0), 6).double()
    with torch.no_grad():
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model.eval()


SEQUENCES = ["MKTAYIAKQRQISFVKSHFSRQ", "MKTAYGG", "MSTNPKPQRKTKRNTNRRPQDVKFPGG", "MAGHWWCLLK"]
LABELS = [0, 3, 5, 1]


@pytest.fixture
def sequences():
    return list(SEQUENCES)


@pytest.fixture
def labels():
    return list(LABELS)


@pytest.fixture(scope="session")
def small_run(tmp_path_factory):
    """One complete run of the workflow on the small config, shared by the workflow tests.

    Read-only: a test that changes the config or the results works on a copy
    (shutil.copytree keeps mtimes, so a copy still has nothing to do).
    """
    from workflow_helpers import make_workdir, snakemake

    path = make_workdir(tmp_path_factory.mktemp("small_run"))
    snakemake(path)
    return path


def runs_the_workflow(item: pytest.Item) -> bool:
    """Whether a test runs Snakemake: it uses `small_run` (directly or through another
    fixture), or its module drives the CLI through workflow_helpers.snakemake."""
    if "small_run" in getattr(item, "fixturenames", ()):
        return True
    runner = getattr(getattr(item, "module", None), "snakemake", None)
    helpers = sys.modules.get("workflow_helpers")
    return helpers is not None and runner is helpers.snakemake


def pytest_collection_modifyitems(config, items):
    """Mark the end-to-end runs slow, in the files that do not mark themselves
    (tests/test_reruns.py): `pytest -m "not slow"` is the quick check."""
    for item in items:
        if runs_the_workflow(item):
            item.add_marker(pytest.mark.slow)
