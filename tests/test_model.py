import esm
import pytest
import torch

from kneurons.errors import UserError
from kneurons.io import CheckpointError, load_checkpoint
from kneurons.model.esm import (
    MODULES,
    EnzymeClassifier,
    ablated,
    build_tiny_esm2,
    encode,
    linear,
    load_classifier,
    load_esm_checkpoint,
    module_name,
    regression_path,
    save_classifier,
    save_esm_checkpoint,
)
from kneurons.model.train import classification_metrics, predict_proba

from conftest import SEQUENCES


def test_tiny_model_has_the_real_module_names():
    esm2 = build_tiny_esm2(2, 16, 2, seed=0)
    names = {name for name, _ in esm2.named_modules()}
    for layer in range(2):
        for module in MODULES:
            assert module_name(layer, module) in names
    assert "layers.1.self_attn.k_proj" in names and "layers.0.fc2" in names
    assert linear(esm2, 0, "fc1").out_features == 64


def test_checkpoint_in_fair_esm_format_round_trips(tmp_path):
    esm2 = build_tiny_esm2(2, 16, 2, seed=3)
    path = tmp_path / "esm2_tiny.pt"
    save_esm_checkpoint(esm2, path)
    assert regression_path(path).exists()
    # fair-esm's own loader reads it (it needs the weights_only=False default of old torch)
    with torch.serialization.safe_globals([__import__("argparse").Namespace]):
        via_esm, alphabet = esm.pretrained.load_model_and_alphabet_local(str(path))
    ours = load_esm_checkpoint(path)
    tokens = encode(["MKTAYIAK"])
    with torch.no_grad():
        expected = esm2(tokens)["logits"]
        assert torch.equal(ours(tokens)["logits"], expected)
        assert torch.equal(via_esm(tokens)["logits"], expected)
    assert alphabet.padding_idx == ours.padding_idx


def _one_line_user_error(err, path, problem):
    assert isinstance(err.value, UserError) and isinstance(err.value, ValueError)
    assert "\n" not in str(err.value)
    assert str(err.value).startswith(f"{path}: {problem}")


@pytest.mark.parametrize(
    "bad",
    [b"not a checkpoint", b"", "cut short", "a list", "no cfg", "cfg is not ESM-2's", "weights"],
)
def test_bad_checkpoint_is_a_one_line_user_error(tmp_path, bad):
    path = tmp_path / "esm2_bad.pt"
    problem = "not a readable fair-esm checkpoint"
    if isinstance(bad, bytes):
        path.write_bytes(bad)
    elif bad == "cut short":  # a copy or download that stopped part way
        good = tmp_path / "esm2_good.pt"
        save_esm_checkpoint(build_tiny_esm2(1, 16, 2, seed=0), good)
        path.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    elif bad == "a list":
        torch.save([1, 2], path)
        problem = "not a fair-esm checkpoint (needs keys 'model' and 'cfg')"
    elif bad == "no cfg":
        torch.save({"model": {}}, path)
        problem = "not a fair-esm checkpoint (needs keys 'model' and 'cfg')"
    elif bad == "cfg is not ESM-2's":
        torch.save({"model": {}, "cfg": {"model": {"layers": 2}}}, path)
        problem = "not a fair-esm ESM-2 checkpoint (AttributeError"
    else:  # a layer's weights missing
        save_esm_checkpoint(build_tiny_esm2(1, 16, 2, seed=0), path)
        data = torch.load(path, weights_only=False)
        del data["model"][next(iter(data["model"]))]
        torch.save(data, path)
        problem = "not a fair-esm ESM-2 checkpoint (RuntimeError: Error(s) in loading"
    with pytest.raises(CheckpointError) as err:
        load_esm_checkpoint(path)
    _one_line_user_error(err, path, problem)


def test_bad_contact_regression_is_a_one_line_user_error(tmp_path):
    path = tmp_path / "esm2_tiny.pt"
    save_esm_checkpoint(build_tiny_esm2(1, 16, 2, seed=0), path)
    regression_path(path).write_bytes(regression_path(path).read_bytes()[:100])
    with pytest.raises(CheckpointError) as err:
        load_esm_checkpoint(path)
    _one_line_user_error(err, regression_path(path), "not a readable fair-esm contact regression")


@pytest.mark.parametrize("bad", ["cut short", "a fair-esm checkpoint", "other shapes"])
def test_bad_classifier_file_is_a_one_line_user_error(tmp_path, bad):
    good = tmp_path / "model.pt"
    save_classifier(EnzymeClassifier(build_tiny_esm2(1, 16, 2, seed=0), 3), [1, 2, 3], 50, good)
    path = tmp_path / "bad.pt"
    if bad == "cut short":
        path.write_bytes(good.read_bytes()[:-200])
        problem = "not a readable classifier"
    elif bad == "a fair-esm checkpoint":
        save_esm_checkpoint(build_tiny_esm2(1, 16, 2, seed=0), path)
        problem = "not a saved classifier (needs keys esm_config, classes, max_length, state_dict)"
    else:
        payload = torch.load(good, weights_only=True)
        payload["esm_config"]["embed_dim"] = 32
        torch.save(payload, path)
        problem = "not a saved classifier (RuntimeError: Error(s) in loading state_dict"
    with pytest.raises(CheckpointError) as err:
        load_classifier(path)
    _one_line_user_error(err, path, problem)


def test_truncated_file_is_a_one_line_user_error_of_load_checkpoint(tmp_path):
    path = tmp_path / "x.pt"
    torch.save({"model": torch.zeros(1000)}, path)
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(path)
    _one_line_user_error(err, path, "not a readable checkpoint (")


def test_classifier_matches_esm2_forward_and_round_trips(tmp_path, tiny_classifier):
    tokens = encode(SEQUENCES)
    with torch.no_grad():
        reps = tiny_classifier.esm(tokens, repr_layers=[3])["representations"][3]
        x, padding = tiny_classifier.embed(tokens)
        ours = tiny_classifier.esm.emb_layer_norm_after(
            tiny_classifier.run_layers(x, padding)
        ).transpose(0, 1)
    assert torch.allclose(reps, ours)
    # a float32 model (fair-esm caches rotary tables per dtype: build, don't convert)
    float_model = EnzymeClassifier(build_tiny_esm2(2, 16, 2, seed=1), 6).eval()
    save_classifier(float_model, [1, 2, 3, 4, 5, 6], 100, tmp_path / "m.pt")
    loaded, meta = load_classifier(tmp_path / "m.pt")
    assert meta == {"classes": [1, 2, 3, 4, 5, 6], "max_length": 100}
    with torch.no_grad():
        assert torch.equal(loaded(tokens), float_model(tokens))


def test_padding_does_not_change_predictions(tiny_classifier):
    alone = predict_proba(tiny_classifier, SEQUENCES[:1], batch_size=1)
    padded = predict_proba(tiny_classifier, SEQUENCES, batch_size=4)
    assert torch.allclose(alone[0], padded[0], atol=1e-6)


@pytest.mark.parametrize("module", MODULES)
def test_ablated_unit_outputs_zero_and_changes_the_output(tiny_classifier, module):
    target = linear(tiny_classifier.esm, 1, module)
    keep = torch.ones(target.out_features, dtype=torch.bool)
    keep[::3] = False
    tokens = encode(SEQUENCES)
    seen = {}
    with torch.no_grad():
        before = tiny_classifier(tokens)
        with ablated(tiny_classifier, {(1, module): keep}):
            # hooks run in registration order: ablated's first, so ours sees the ablated output
            handle = target.register_forward_hook(
                lambda m, i, o: seen.update(input=i[0].clone(), output=o.clone())
            )
            try:
                after = tiny_classifier(tokens)
            finally:
                handle.remove()
    assert not torch.allclose(before, after)
    # the captured output is the layer's own computation on its input, ablated units zeroed
    direct = torch.nn.functional.linear(seen["input"], target.weight, target.bias)
    assert torch.all(direct[..., ~keep] != 0)
    assert torch.all(seen["output"][..., ~keep] == 0)
    torch.testing.assert_close(seen["output"][..., keep], direct[..., keep], rtol=0, atol=1e-12)
    # zeroing the weight rows and bias is the same thing
    with torch.no_grad():
        w, b = target.weight.clone(), target.bias.clone()
        target.weight[~keep] = 0
        target.bias[~keep] = 0
        zeroed = tiny_classifier(tokens)
        target.weight.copy_(w)
        target.bias.copy_(b)
    assert torch.allclose(zeroed, after, atol=1e-12)


def test_keeping_everything_reproduces_predictions_exactly(tiny_classifier):
    keep = {
        (layer, m): torch.ones(linear(tiny_classifier.esm, layer, m).out_features, dtype=torch.bool)
        for layer in range(3)
        for m in MODULES
    }
    assert torch.equal(
        predict_proba(tiny_classifier, SEQUENCES),
        predict_proba(tiny_classifier, SEQUENCES, keep=keep),
    )


def test_classification_metrics_by_hand():
    metrics = classification_metrics([0, 0, 1, 1, 2], [0, 1, 1, 1, 0], classes=[1, 2, 3])
    assert metrics["accuracy"] == pytest.approx(3 / 5)
    assert metrics["per_class_accuracy"] == {"1": 0.5, "2": 1.0, "3": 0.0}
    # F1: class1 p=.5 r=.5 -> .5; class2 p=2/3 r=1 -> .8; class3 0
    assert metrics["macro_f1"] == pytest.approx((0.5 + 0.8 + 0) / 3)
    assert metrics["balanced_accuracy"] == pytest.approx((0.5 + 1.0 + 0.0) / 3)
    # imbalanced: always predicting the majority class is accurate but not balanced-accurate
    majority = classification_metrics([0] * 8 + [1, 2], [0] * 10, classes=[1, 2, 3])
    assert majority["accuracy"] == pytest.approx(0.8)
    assert majority["balanced_accuracy"] == pytest.approx((1 + 0 + 0) / 3)
    # a class without test examples is left out of the mean recall (its recall is undefined)
    absent = classification_metrics([0, 0, 1], [0, 1, 1], classes=[1, 2, 3])
    assert absent["balanced_accuracy"] == pytest.approx((0.5 + 1.0) / 2)


def test_logits_are_the_head_on_the_mean_residue_representation(tiny_classifier):
    """One logit per class from the mean of the final representations over each sequence's
    own residues (no BOS, EOS or padding), computed here sequence by sequence."""
    with torch.no_grad():
        logits = tiny_classifier(encode(SEQUENCES))
        pooled = torch.stack(
            [
                tiny_classifier.esm(encode([s]), repr_layers=[3])["representations"][3][
                    0, 1 : len(s) + 1
                ].mean(0)
                for s in SEQUENCES
            ]
        )
        expected = tiny_classifier.head(pooled)
    assert logits.shape == (len(SEQUENCES), 6)
    torch.testing.assert_close(logits, expected)
