"""A Hugging Face ESM-2 directory converted to fair-esm's format computes what transformers does."""

import json

import pytest
import torch
from safetensors.torch import load_file, save_file

from kneurons.model.esm import ALPHABET, encode, load_esm_checkpoint
from kneurons.model.hf_checkpoint import (
    ESM2_VOCAB,
    HFCheckpointError,
    convert_hf_esm2,
    fair_esm_name,
    read_hf_config,
)

transformers = pytest.importorskip("transformers")
from transformers.models.esm.configuration_esm import get_default_vocab_list  # noqa: E402

LAYERS, HIDDEN, HEADS = 2, 64, 4
# Real-looking proteins of different lengths (padding, and rotary positions past the shortest).
SEQUENCES = [
    "MKTAYIAKQRQISFVKSHFSRQLEERLGLIEVQAPILSRVGDGTQDNLSGAEKAVQVKVKALPDAQFEVVHSLAKWKRQTLGQHDFSAGEGLYTHMKALRPDEDRLSPLHSVYVDQWDWERVMGDGERQFSTLKSTVEAIWAGIKATEAAVSEEFGLAPFLPDQIHFVHSQELLSRYPDLDAKGRERAIAKDLGAVFLVGIGGKLSDGHRHDVRAPDYDDWSTPSELGHAGLNGDILVWNPVLEDAFELSSMGIRVDADTLKHQLALTGDEDRLELEWHQALLRGEMPQTIGGGIGQSRLTMLLLQLPHIGQVQAGVWPAACRESVPALL",
    "MALWMRLLPLLALLALWGPDPAAAFVNQHLCGSHLVEALYLVCGERGFFYTPKTRREAEDLQVGQVELGGGPGAGSLQPLALEGSLQKRGIVEQCCTSICSLYQLENYCN",
    "GSHMSLFDFFKNKGSAAPAEAAPAGSSPEELKKRLEELSAKLEELKKKG",
]


def hf_config(**overrides):
    """The facebook/esm2_t* config values at a small size."""
    values = dict(
        vocab_size=33,
        hidden_size=HIDDEN,
        num_hidden_layers=LAYERS,
        num_attention_heads=HEADS,
        intermediate_size=4 * HIDDEN,  # fair-esm's ESM2 fixes the FFN at 4 x hidden
        position_embedding_type="rotary",
        token_dropout=True,
        emb_layer_norm_before=False,
        pad_token_id=1,
        mask_token_id=32,
        layer_norm_eps=1e-5,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
        max_position_embeddings=1026,
    )
    values.update(overrides)
    return transformers.EsmConfig(**values)


@pytest.fixture(scope="module")
def hf_model():
    """A random EsmForMaskedLM; every tensor perturbed so no two share a value by chance
    (LayerNorm weights start at 1, biases at 0: swapped names would go unnoticed)."""
    torch.manual_seed(0)
    model = transformers.EsmForMaskedLM(hf_config()).eval()
    with torch.no_grad():
        for param in model.parameters():
            param.add_(0.1 * torch.randn_like(param))
    return model


@pytest.fixture
def hf_dir(tmp_path, hf_model):
    path = tmp_path / "esm2_hf_small"
    hf_model.save_pretrained(path)
    # the hub's tokenizer file, as facebook/esm2_* ship it
    (path / "vocab.txt").write_text("\n".join(get_default_vocab_list()) + "\n")
    return path


def tokens():
    batch = encode(SEQUENCES)
    batch[2, 7] = ALPHABET.mask_idx  # a masked residue: token dropout rescales the embeddings
    return batch


def max_difference(hf_model, esm2, batch):
    """Largest |HF - fair-esm| over per-layer representations and logits (real tokens only)."""
    real = batch.ne(ALPHABET.padding_idx)
    with torch.no_grad():
        ours = esm2(batch, repr_layers=list(range(LAYERS + 1)))
        theirs = hf_model(input_ids=batch, attention_mask=real, output_hidden_states=True)
        final = hf_model.esm(input_ids=batch, attention_mask=real).last_hidden_state
    # Like with like: fair-esm's last representation has emb_layer_norm_after applied, as
    # HF's last_hidden_state does; hidden_states[i < L] are the raw layer outputs in both.
    pairs = [(ours["representations"][i], theirs.hidden_states[i]) for i in range(LAYERS)]
    pairs += [(ours["representations"][LAYERS], final), (ours["logits"], theirs.logits)]
    return max((a - b)[real].abs().max().item() for a, b in pairs)


def test_vocab_matches_fair_esm_and_hf():
    assert list(ESM2_VOCAB) == ALPHABET.all_toks == list(get_default_vocab_list())


def test_hf_tokenizer_ids_match_fair_esm(hf_dir):
    tokenizer = transformers.EsmTokenizer(str(hf_dir / "vocab.txt"))
    ids = tokenizer(SEQUENCES, padding=True, return_tensors="pt")["input_ids"]
    assert torch.equal(ids, encode(SEQUENCES))
    assert tokenizer.mask_token_id == ALPHABET.mask_idx


def test_converted_model_computes_what_transformers_does(hf_dir, hf_model, tmp_path):
    out = tmp_path / "models" / "esm2_hf_small.pt"
    report = convert_hf_esm2(hf_dir, out)
    assert out.is_file() and (tmp_path / "models" / "esm2_hf_small-contact-regression.pt").is_file()
    assert report["config"] == {
        "num_layers": LAYERS,
        "embed_dim": HIDDEN,
        "attention_heads": HEADS,
        "token_dropout": True,
    }
    assert all(name.endswith("rotary_embeddings.inv_freq") for name in report["dropped"])
    esm2 = load_esm_checkpoint(out).eval()
    assert esm2.num_layers == LAYERS and esm2.token_dropout
    difference = max_difference(hf_model, esm2, tokens())
    print(f"max |HF - fair-esm| = {difference:.3g}")
    assert difference < 1e-5
    # the contact head came across as well (fair-esm reads it from the regression file)
    hf_state = hf_model.state_dict()
    for name in ("weight", "bias"):
        assert torch.equal(
            getattr(esm2.contact_head.regression, name),
            hf_state[f"esm.contact_head.regression.{name}"],
        )


def test_pytorch_model_bin_is_the_fallback(hf_dir, hf_model, tmp_path):
    (hf_dir / "model.safetensors").unlink()
    # a plain state dict, as older hub repos hold: .weight/.bias names, the tied decoder and
    # the rotary buffer included
    torch.save(hf_model.state_dict(), hf_dir / "pytorch_model.bin")
    out = tmp_path / "esm2_from_bin.pt"
    report = convert_hf_esm2(hf_dir, out)
    assert set(report["dropped"]) == {"esm.rotary_embeddings.inv_freq", "lm_head.decoder.weight"}
    assert max_difference(hf_model, load_esm_checkpoint(out).eval(), tokens()) < 1e-5


def test_sharded_safetensors_are_read(hf_dir, hf_model, tmp_path):
    tensors = load_file(hf_dir / "model.safetensors")
    (hf_dir / "model.safetensors").unlink()
    names = sorted(tensors)
    shards = {
        "model-00001-of-00002.safetensors": names[::2],
        "model-00002-of-00002.safetensors": names[1::2],
    }
    for shard, part in shards.items():
        save_file({n: tensors[n] for n in part}, hf_dir / shard)
    weight_map = {n: shard for shard, part in shards.items() for n in part}
    (hf_dir / "model.safetensors.index.json").write_text(json.dumps({"weight_map": weight_map}))
    out = tmp_path / "esm2_sharded.pt"
    convert_hf_esm2(hf_dir, out)
    assert max_difference(hf_model, load_esm_checkpoint(out).eval(), tokens()) < 1e-5


def edit_weights(directory, edit):
    path = directory / "model.safetensors"
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, path)


def one_line_error(directory, tmp_path, match):
    with pytest.raises(HFCheckpointError, match=match) as err:
        convert_hf_esm2(directory, tmp_path / "out" / "esm2_x.pt")
    assert "\n" not in str(err.value)
    assert not (tmp_path / "out").exists() or not list((tmp_path / "out").iterdir())
    return str(err.value)


def test_unexpected_tensor_is_named(hf_dir, tmp_path):
    name = "esm.encoder.layer.0.attention.self.gate.weight"
    edit_weights(hf_dir, lambda t: t.update({name: torch.zeros(HIDDEN, HIDDEN)}))
    message = one_line_error(hf_dir, tmp_path, "no fair-esm ESM-2 name")
    assert name in message and "model.safetensors" in message


def test_layer_beyond_the_config_is_unexpected(hf_dir, tmp_path):
    def add_layer(tensors):
        tensors["esm.encoder.layer.2.output.dense.bias"] = torch.zeros(HIDDEN)

    edit_weights(hf_dir, add_layer)
    assert "esm.encoder.layer.2.output.dense.bias" in one_line_error(hf_dir, tmp_path, "no fair")


def test_missing_tensor_is_named(hf_dir, tmp_path):
    edit_weights(hf_dir, lambda t: t.pop("esm.encoder.layer.1.output.dense.bias"))
    message = one_line_error(hf_dir, tmp_path, "missing")
    assert "layers.1.fc2.bias" in message


def test_missing_contact_head_is_named(hf_dir, tmp_path):
    edit_weights(hf_dir, lambda t: t.pop("esm.contact_head.regression.weight"))
    assert "contact_head.regression.weight" in one_line_error(hf_dir, tmp_path, "missing")


def test_untied_decoder_is_rejected(hf_dir, tmp_path):
    def untie(tensors):
        embeddings = tensors["esm.embeddings.word_embeddings.weight"]
        tensors["lm_head.decoder.weight"] = embeddings + 1

    edit_weights(hf_dir, untie)
    assert "lm_head.decoder.weight" in one_line_error(hf_dir, tmp_path, "ties them")


def test_wrong_shape_is_named(hf_dir, tmp_path):
    edit_weights(hf_dir, lambda t: t.update({"lm_head.bias": torch.zeros(34)}))
    assert "lm_head.bias" in one_line_error(hf_dir, tmp_path, "shape")


@pytest.mark.parametrize(
    "key, value",
    [
        ("model_type", "bert"),
        ("position_embedding_type", "absolute"),
        ("emb_layer_norm_before", True),
        ("vocab_size", 35),
        ("mask_token_id", 3),
        ("intermediate_size", 128),
        ("layer_norm_eps", 1e-12),
        ("num_hidden_layers", 0),
        ("vocab_list", ["A", "B"]),
    ],
)
def test_bad_config_names_the_file_and_key(hf_dir, tmp_path, key, value):
    path = hf_dir / "config.json"
    config = json.loads(path.read_text())
    config[key] = value
    path.write_text(json.dumps(config))
    message = one_line_error(hf_dir, tmp_path, f"key '{key}'")
    assert message.startswith(f"{path}: ")


def test_bad_vocab_file_is_named(hf_dir, tmp_path):
    vocab = hf_dir / "vocab.txt"
    vocab.write_text(vocab.read_text().replace("\nA\n", "\nB\n", 1))
    assert str(vocab) in one_line_error(hf_dir, tmp_path, "token 5 is 'B'")


def test_directory_without_config_or_weights(hf_dir, tmp_path):
    (hf_dir / "model.safetensors").unlink()
    one_line_error(hf_dir, tmp_path, "no weights")
    (hf_dir / "config.json").unlink()
    with pytest.raises(HFCheckpointError, match="no config.json"):
        read_hf_config(hf_dir)


def test_every_hf_name_maps():
    assert fair_esm_name("esm.encoder.layer.11.attention.self.query.weight") == (
        "layers.11.self_attn.q_proj.weight"
    )
    assert fair_esm_name("esm.encoder.layer.0.LayerNorm.gamma") == (
        "layers.0.final_layer_norm.weight"
    )
    assert fair_esm_name("encoder.layer.0.attention.LayerNorm.beta") == (
        "layers.0.self_attn_layer_norm.bias"
    )
    assert fair_esm_name("esm.encoder.layer.0.attention.output.dense.gamma") is None
    assert fair_esm_name("esm.lm_head.dense.weight") is None
    assert fair_esm_name("classifier.dense.weight") is None
