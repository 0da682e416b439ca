"""TopK SAEs: planted-dictionary recovery, TopK and normalisation, dead-feature resampling,
determinism, the safetensors round trip, and the exactness of the splice into the classifier."""

import logging

import pytest
import torch
from safetensors import safe_open

from kneurons.io import CheckpointError
from kneurons.model.esm import encode
from kneurons.model.sae import (
    SaeConfig,
    SparseAutoencoder,
    init_sae,
    load_sae,
    sae_metrics,
    save_sae,
    spliced,
    train_sae,
)


def planted(n=20000, atoms=64, d=16, active=3, seed=0):
    """n samples (n, d), each a sum of `active` of `atoms` random unit vectors with magnitudes
    in [0.5, 1.5); returns (samples, dictionary (atoms, d))."""
    gen = torch.Generator().manual_seed(seed)
    dictionary = torch.randn(atoms, d, generator=gen)
    dictionary = dictionary / dictionary.norm(dim=1, keepdim=True)
    support = torch.rand(n, atoms, generator=gen).argsort(1)[:, :active]  # (n, active)
    codes = torch.zeros(n, atoms).scatter(1, support, 0.5 + torch.rand(n, active, generator=gen))
    return codes @ dictionary, dictionary


def recovered(sae: SparseAutoencoder, dictionary: torch.Tensor, threshold=0.9) -> float:
    """Fraction of the atoms with a decoder row at cosine > threshold."""
    best = (dictionary @ sae.W_dec.detach().T).max(1).values  # (atoms,)
    return float((best > threshold).float().mean())


@pytest.fixture(autouse=True)
def one_thread():
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def planted_data():
    return planted()


@pytest.fixture(scope="module")
def planted_sae(planted_data):
    """k = 3 as planted; measured: 64/64 atoms at cosine > 0.9, variance explained 0.86."""
    torch.set_num_threads(1)
    x, _ = planted_data
    config = SaeConfig(d_in=16, n_features=128, k=3, steps=1000, batch_size=256, lr=3e-3)
    return train_sae(x, config, log_every=250)


def test_planted_dictionary_is_recovered(planted_data, planted_sae):
    x, dictionary = planted_data
    sae, history = planted_sae
    fraction = recovered(sae, dictionary)
    metrics = sae_metrics(sae, x)
    print(f"k=3: recovered {fraction:.3f} of 64 atoms; {metrics}; history\n{history}")
    assert fraction >= 0.8
    # a linear encoder with TopK cannot code 3 of 64 atoms in 16 dims exactly: thresholding
    # with the true dictionary plus least squares on its support reaches only 0.84
    assert metrics["variance_explained"] > 0.8
    assert metrics["l0"] == pytest.approx(3, abs=0.01)
    assert history["step"].tolist() == [250, 500, 750, 1000]
    # training improved on the first logged batch
    assert history["mse"].iloc[-1] < history["mse"].iloc[0]


def test_variance_explained_above_090_with_more_features_per_token(planted_data):
    x, dictionary = planted_data
    config = SaeConfig(d_in=16, n_features=128, k=8, steps=1000, batch_size=256, lr=3e-3)
    sae, history = train_sae(x, config, log_every=1000)
    metrics = sae_metrics(sae, x)
    print(f"k=8: recovered {recovered(sae, dictionary):.3f}; {metrics}")
    assert metrics["variance_explained"] > 0.9
    assert history["variance_explained"].iloc[-1] > 0.9  # the same in normalised space
    assert metrics["l0"] <= 8
    assert recovered(sae, dictionary) >= 0.8
    # the decoder rows stayed unit norm
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(128))


def test_topk_shapes_and_normalisation():
    gen = torch.Generator().manual_seed(1)
    x = 3.0 + 5.0 * torch.randn(500, 12, generator=gen)
    sae = init_sae(x, SaeConfig(d_in=12, n_features=40, k=5))
    with torch.no_grad():
        x_hat, acts = sae(x)
        assert acts.shape == (500, 40) and x_hat.shape == (500, 12)
        assert sae.decode(acts).shape == (500, 12)
        assert ((acts != 0).sum(1) <= 5).all() and (acts >= 0).all()
        assert ((acts != 0).sum(1) == 5).mean(dtype=torch.float) > 0.5  # TopK keeps k mostly
        normalised = sae.normalise(x)
        assert normalised.pow(2).sum(1).mean() == pytest.approx(12, rel=1e-4)
        torch.testing.assert_close(normalised.mean(0), torch.zeros(12), atol=1e-5, rtol=0)
        assert sae.scale.shape == () and sae.mean.shape == (12,)
        # fewer than k positive pre-activations: the ReLU leaves fewer than k nonzero
        sae.b_enc.fill_(-1e4)
        assert (sae.encode(x) == 0).all()
        assert sae_metrics(sae, x)["dead_fraction"] == 1.0


def test_dead_features_are_resampled(planted_data):
    x = planted_data[0][:4000]
    base = init_sae(x, SaeConfig(d_in=16, n_features=64, k=3))
    with torch.no_grad():
        base.W_enc[:, 7] = 0.0
        base.b_enc[7] = -1e3  # feature 7 cannot fire
    assert not base.encode(x)[:, 7].any()
    assert sae_metrics(base, x)["dead_fraction"] >= 1 / 64

    # dead_after past the end of training: nothing resampled, feature 7 stays dead
    kept, history = train_sae(
        x, SaeConfig(16, 64, 3, steps=60, batch_size=256, dead_after=1000), init=base
    )
    assert history["resampled"].tolist() == [0]
    assert history["dead_fraction"].iloc[-1] >= 1 / 64
    assert not kept.encode(x)[:, 7].any()

    sae, history = train_sae(
        x, SaeConfig(16, 64, 3, steps=60, batch_size=256, dead_after=20), init=base, log_every=20
    )
    print(f"resampled per log step: {history['resampled'].tolist()}")
    assert history["resampled"].iloc[-1] >= 1
    assert history["resampled"].is_monotonic_increasing
    assert sae.b_enc[7] > -1e3 and sae.encode(x)[:, 7].any()
    torch.testing.assert_close(sae.W_dec.norm(dim=1), torch.ones(64))
    assert base.b_enc[7] == -1e3  # init was copied, not trained in place


def test_training_is_deterministic_per_seed(planted_data, caplog):
    x = planted_data[0][:3000]
    config = SaeConfig(d_in=16, n_features=32, k=3, steps=50, batch_size=128)
    logger = logging.getLogger("test_sae")
    with caplog.at_level(logging.INFO, logger="test_sae"):
        first, history = train_sae(x, config, log_every=25, logger=logger)
    assert [r.getMessage().split(":")[0] for r in caplog.records] == [
        "sae step 25/50",
        "sae step 50/50",
    ]
    second, history2 = train_sae(x, config, log_every=25)
    other, _ = train_sae(
        x, SaeConfig(d_in=16, n_features=32, k=3, steps=50, batch_size=128, seed=1)
    )
    for name, tensor in first.state_dict().items():
        assert torch.equal(tensor, second.state_dict()[name]), name
    assert history.equals(history2)
    assert not torch.equal(first.W_dec, other.W_dec)
    assert not torch.equal(first.W_enc, other.W_enc)


def test_save_load_round_trip(tmp_path, planted_data):
    x = planted_data[0][:2000]
    sae, _ = train_sae(x, SaeConfig(d_in=16, n_features=32, k=4, steps=20, batch_size=128))
    path = tmp_path / "sae.safetensors"
    metadata = {"layer": 1, "model": "tiny", "history": [0.5, 0.9]}
    save_sae(sae, path, metadata)
    assert [p.name for p in tmp_path.iterdir()] == ["sae.safetensors"]  # no temp file left
    with safe_open(str(path), framework="pt") as handle:
        assert set(handle.keys()) == {"W_enc", "b_enc", "W_dec", "b_dec", "mean", "scale"}
        assert '"k": 4' in handle.metadata()["sae_config"]
    loaded, meta = load_sae(path)
    assert meta == metadata and loaded.config == sae.config
    for name, tensor in sae.state_dict().items():
        assert torch.equal(tensor, loaded.state_dict()[name]), name
    with torch.no_grad():
        assert torch.equal(loaded(x)[0], sae(x)[0]) and torch.equal(loaded(x)[1], sae(x)[1])

    with pytest.raises(ValueError, match="reserved"):
        save_sae(sae, tmp_path / "other.safetensors", {"sae_config": 1})
    (tmp_path / "bad.safetensors").write_bytes(path.read_bytes()[:100])
    with pytest.raises(CheckpointError, match="bad.safetensors"):
        load_sae(tmp_path / "bad.safetensors")


# splicing into the classifier (conftest's tiny float64 classifier, 3 layers, width 32)


def layer_output(model, tokens, layer=1):
    """The input of layer layer + 1, i.e. the residual stream after `layer`, (T, B, E)."""
    captured = {}

    def grab(_mod, args, kwargs):
        captured["x"] = args[0].detach().clone()

    handle = model.esm.layers[layer + 1].register_forward_pre_hook(grab, with_kwargs=True)
    try:
        with torch.no_grad():
            logits = model(tokens)
    finally:
        handle.remove()
    return captured["x"], logits


@pytest.fixture
def spliced_setup(tiny_classifier, sequences):
    """The classifier, tokens, the plain layer-1 residuals (T, B, E) and logits, and an SAE
    (float32) trained briefly on those residuals."""
    tokens = encode(sequences)
    x, logits = layer_output(tiny_classifier, tokens)
    flat = x.reshape(-1, x.shape[-1]).float()  # (T*B, 32)
    sae, _ = train_sae(flat, SaeConfig(d_in=32, n_features=64, k=4, steps=30, batch_size=64))
    return tiny_classifier, tokens, x, logits, sae


def test_splice_with_nothing_zeroed_is_exact(spliced_setup):
    model, tokens, _, logits, sae = spliced_setup
    for zero in (None, {1: torch.tensor([], dtype=torch.long)}, {1: torch.zeros(64, dtype=bool)}):
        with spliced(model, {1: sae}, zero), torch.no_grad():
            assert torch.equal(model(tokens), logits)


def test_zeroing_a_feature_removes_only_its_contribution(spliced_setup):
    model, tokens, x, logits, sae = spliced_setup
    with torch.no_grad():
        acts = sae.encode(x.reshape(-1, 32).float())  # (T*B, F)
    frequency = (acts > 0).float().mean(0)
    # a feature active at some tokens and not at others
    f = int(((frequency - 0.5).abs() + (frequency == 0) * 2).argmin())
    assert 0 < frequency[f] < 1
    with spliced(model, {1: sae}, {1: torch.tensor([f])}):
        changed, new_logits = layer_output(model, tokens)
    change = (changed - x).reshape(-1, 32)  # (T*B, E)
    expected = -acts[:, f, None] * sae.W_dec[f].detach() * sae.scale  # input space
    torch.testing.assert_close(change, expected.double(), atol=1e-5, rtol=0)
    inactive = acts[:, f] == 0
    assert inactive.any() and (change[inactive] == 0).all()
    assert (change[~inactive] != 0).any(1).all()
    assert not torch.equal(new_logits, logits)

    # a bool mask means the same; a batch of 2 models: copy 0 zeroes nothing, copy 1 zeroes f
    mask = torch.zeros(64, dtype=bool)
    mask[f] = True
    with spliced(model, {1: sae}, {1: mask}), torch.no_grad():
        assert torch.equal(model(tokens), new_logits)
    masks = torch.stack([torch.zeros(64, dtype=bool), mask])  # (models, F)
    with spliced(model, {1: sae}, {1: masks}), torch.no_grad():
        both = model(tokens.repeat(2, 1))
    n = len(tokens)
    torch.testing.assert_close(both[:n], logits, atol=1e-10, rtol=0)
    torch.testing.assert_close(both[n:], new_logits, atol=1e-10, rtol=0)


def test_without_the_error_the_layer_outputs_the_reconstruction(spliced_setup):
    model, tokens, x, logits, sae = spliced_setup
    with spliced(model, {1: sae}, keep_error=False):
        reconstructed, new_logits = layer_output(model, tokens)
    with torch.no_grad():
        expected = sae.decode(sae.encode(x.reshape(-1, 32).float())).double().view(x.shape)
    torch.testing.assert_close(reconstructed, expected, atol=1e-6, rtol=0)
    assert not torch.equal(new_logits, logits)
    assert (reconstructed - x).abs().max() > 1e-3  # the error term is really gone


def test_hooks_are_removed_after_the_context(spliced_setup):
    model, tokens, _, logits, sae = spliced_setup
    layer = model.esm.layers[1]
    with spliced(model, {1: sae}, {1: torch.tensor([0, 1])}):
        assert len(layer._forward_hooks) == 1
    assert len(layer._forward_hooks) == 0
    with pytest.raises(RuntimeError, match="boom"):
        with spliced(model, {1: sae}, keep_error=False):
            assert len(layer._forward_hooks) == 1
            raise RuntimeError("boom")
    assert len(layer._forward_hooks) == 0
    with torch.no_grad():
        assert torch.equal(model(tokens), logits)
    with pytest.raises(ValueError, match="without an SAE"):
        with spliced(model, {1: sae}, {2: torch.tensor([0])}):
            pass
