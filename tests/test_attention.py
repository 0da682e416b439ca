import functools

import torch
import torch.nn.functional as F

from kneurons.attribution.engine import ig_scores
from kneurons.model.attention import attention_modules, use_fused_attention
from kneurons.model.esm import MODULES, EnzymeClassifier, build_tiny_esm2, encode, linear


def fused_attention_enabled(model):
    """Every attention module runs the fused forward (an instance attribute over the class's)."""
    modules = attention_modules(model)
    return bool(modules) and all("forward" in vars(module) for module in modules)


def outputs(model, tokens):
    with torch.no_grad():
        return model(tokens), model.esm(tokens, repr_layers=[1])["representations"][1]


def test_fused_attention_matches_fair_esm_on_padded_batches(tiny_classifier, sequences):
    float32 = EnzymeClassifier(build_tiny_esm2(2, 32, 4, seed=1), 3).eval()
    for model in (tiny_classifier, float32):
        tokens = encode(sequences)  # unequal lengths: padded
        use_fused_attention(model, False)  # classifiers are built fused; start from fair-esm's
        plain = outputs(model, tokens)
        use_fused_attention(model, True)
        assert fused_attention_enabled(model)
        try:
            fused = outputs(model, tokens)
        finally:
            use_fused_attention(model, False)
        assert not fused_attention_enabled(model)
        for a, b in zip(plain, fused, strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)
        torch.testing.assert_close(outputs(model, tokens)[0], plain[0], rtol=0, atol=0)


def test_classifiers_are_built_with_fused_attention(tiny_classifier):
    assert fused_attention_enabled(tiny_classifier)


def hooked(model, tokens):
    """{module: (input, output)} of layer 1's linear modules, as forward hooks see them."""
    seen = {}

    def hook(module, inputs, output, name):
        # clone: fair-esm scales q_proj's output in place after the hook has run
        seen.setdefault(name, (inputs[0].clone(), output.clone()))  # returns None: no change

    handles = [
        linear(model.esm, 1, m).register_forward_hook(functools.partial(hook, name=m))
        for m in MODULES
    ]
    try:
        with torch.no_grad():
            model(tokens)
    finally:
        for h in handles:
            h.remove()
    return seen


def test_hooks_fire_and_see_the_same_values_as_with_fair_esm(tiny_classifier, sequences):
    tokens = encode(sequences)
    use_fused_attention(tiny_classifier, False)
    plain = hooked(tiny_classifier, tokens)
    use_fused_attention(tiny_classifier, True)
    try:
        fused = hooked(tiny_classifier, tokens)
    finally:
        use_fused_attention(tiny_classifier, False)
    assert sorted(fused) == sorted(plain) == sorted(MODULES)
    for m in MODULES:
        x, out = fused[m]
        layer = linear(tiny_classifier.esm, 1, m)
        torch.testing.assert_close(out, F.linear(x, layer.weight, layer.bias), rtol=0, atol=0)
        for a, b in zip(fused[m], plain[m], strict=True):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-5)


def test_ig_scores_unchanged(tiny_classifier, sequences, labels):
    def scores():
        return ig_scores(
            tiny_classifier, sequences, labels, 1, MODULES, steps=6, batch_size=3, progress=False
        )

    use_fused_attention(tiny_classifier, False)
    plain = scores()
    use_fused_attention(tiny_classifier, True)
    try:
        fused = scores()
    finally:
        use_fused_attention(tiny_classifier, False)
    for key in plain:
        scale = plain[key].abs().max().item()
        torch.testing.assert_close(fused[key], plain[key], rtol=1e-5, atol=1e-7 * scale)
