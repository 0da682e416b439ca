"""The scoring-method interface: registry, common contract, adding a method as one file."""

from __future__ import annotations

import importlib
import subprocess
import sys

import pytest
import torch

from kneurons.attribution import methods
from kneurons.attribution.methods import REGISTRY, ScoringInputs, ScoringMethod
from kneurons.model.esm import linear

SETTINGS = {"ig_steps": 2, "ig_rule": "gausslegendre", "ig_abs": False, "batch_size": 2}
SETTINGS |= {"rows_per_pass": 8}


def test_registry_order_and_declarations():
    assert list(REGISTRY)[:2] == ["ig", "activation"]  # the paper's, then the rest
    # a control of the sweep (kneurons.analysis.evaluation), not a method
    assert "random" not in REGISTRY
    assert REGISTRY["ig"].per_layer and REGISTRY["ig"].per_sequence
    for name, method in REGISTRY.items():
        assert method.name == name and method.color
        assert set(method.settings) <= set(SETTINGS), name
    with pytest.raises(KeyError, match="unknown scoring method 'saliency'; known: ig, "):
        methods.get("saliency")


@pytest.mark.parametrize("name", list(REGISTRY))
def test_every_method_scores_every_unit(tiny_classifier, sequences, labels, name):
    method = REGISTRY[name]
    inputs = ScoringInputs(
        sequences if method.needs_model_pass else [],
        labels if method.needs_model_pass else [],
        [0, 2],
        ["k_proj", "fc1"],
        seed=3,
        max_length=None,
        settings={key: SETTINGS[key] for key in method.settings},
    )
    scores = method.score(tiny_classifier, inputs)
    assert list(scores) == [(0, "k_proj"), (0, "fc1"), (2, "k_proj"), (2, "fc1")]
    for (layer, module), values in scores.items():
        assert values.shape == (linear(tiny_classifier.esm, layer, module).out_features,)
        assert torch.isfinite(values).all() and values.abs().sum() > 0
    again = method.score(tiny_classifier, inputs)
    assert all(torch.equal(scores[k], again[k]) for k in scores)  # deterministic on CPU


def test_a_new_method_is_one_file(tmp_path, monkeypatch, tiny_classifier):
    (tmp_path / "weightnorm.py").write_text(
        "import torch\n"
        "from kneurons.attribution.methods.base import ScoringMethod\n"
        "from kneurons.model.esm import linear\n"
        "def score(model, inputs):\n"
        "    return {(l, m): linear(model.esm, l, m).weight.norm(dim=1).double()\n"
        "            for l in inputs.layers for m in inputs.modules}\n"
        "METHOD = ScoringMethod(name='weightnorm', score=score, needs_model_pass=False)\n"
    )
    monkeypatch.setattr(methods, "__path__", [*methods.__path__, str(tmp_path)])
    monkeypatch.delitem(sys.modules, "kneurons.attribution.methods.weightnorm", raising=False)
    found = methods._discover()
    assert list(found)[-1] == "weightnorm" and list(found)[:2] == ["ig", "activation"]
    assert isinstance(found["weightnorm"], ScoringMethod)
    inputs = ScoringInputs([], [], [1], ["fc2"], 0, None)
    scores = found["weightnorm"].score(tiny_classifier, inputs)
    assert scores[(1, "fc2")].shape == (32,)
    importlib.invalidate_caches()


def test_reading_the_registry_does_not_import_torch():
    """The Snakefile reads the registry on every parse (dry runs, each cluster job)."""
    code = (
        "import sys, kneurons.attribution.methods as m; "
        "print(len(m.REGISTRY), 'torch' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == [str(len(REGISTRY)), "False"]


def test_magnitude_is_the_weight_norm(tiny_classifier):
    method = REGISTRY["magnitude"]
    layer = linear(tiny_classifier.esm, 1, "fc1")
    units = method.score(tiny_classifier, ScoringInputs([], [], [1], ["fc1"], 0, None))
    rows = torch.cat([layer.weight, layer.bias[:, None]], 1).double()
    assert torch.allclose(units[(1, "fc1")], rows.norm(dim=1))
    weights = ScoringInputs([], [], [1], ["fc1"], 0, None, {"granularity": "weight"})
    assert torch.equal(
        method.score(tiny_classifier, weights)[(1, "fc1")], layer.weight.abs().double()
    )
