"""Hugging Face `transformers` ESM-2 directories (`facebook/esm2_t*`) as fair-esm checkpoints.

A directory holds config.json and the weights (model.safetensors, or pytorch_model.bin, either
possibly sharded with an `.index.json`). `convert_hf_esm2` maps every tensor to the name fair-esm's
ESM2 gives it and writes the checkpoint `kneurons.model.esm.save_esm_checkpoint` writes, so the
rest of the workflow loads it like a fair-esm release. transformers itself is not needed.

Tensors dropped on purpose (each checked first, none carries a weight fair-esm lacks):
- `*rotary_embeddings.inv_freq`: fair-esm recomputes its rotary frequencies from the head size;
  the file's must agree with them (to float16 precision: old checkpoints stored them so).
- `embeddings.position_ids`: a buffer holding 0, 1, 2, ... (old transformers saved it).
- `lm_head.decoder.weight`: fair-esm ties the LM head's weight to the token embeddings; the file's
  must equal them.
- `pooler.dense.*`: EsmModel's pooler, not part of the ESM-2 language model (fair-esm has none).

This module imports torch only inside functions: the Snakefile reads config.json through it.
"""

from __future__ import annotations

import json
import logging
import math
import re
from pathlib import Path

from kneurons.errors import UserError
from kneurons.model.units import MODULE_TYPES
from kneurons.settings import NoSettings

log = logging.getLogger(__name__)

# fair-esm's ESM-2 alphabet (esm.data.Alphabet.from_architecture("ESM-1b").all_toks), spelled
# out so reading config.json needs no torch; tests check it against fair-esm's.
ESM2_VOCAB = (
    "<cls>", "<pad>", "<eos>", "<unk>",
    "L", "A", "G", "V", "S", "E", "R", "T", "I", "D", "P", "K", "Q", "N", "F", "Y", "M", "H",
    "W", "C", "X", "B", "U", "Z", "O", ".", "-",
    "<null_1>", "<mask>",
)  # fmt: skip
PAD_IDX = ESM2_VOCAB.index("<pad>")
MASK_IDX = ESM2_VOCAB.index("<mask>")
# fair-esm's ESM2 has these fixed; a config that differs describes another model.
FFN_FACTOR = 4
LAYER_NORM_EPS = 1e-5
ROPE_THETA = 10000.0

CONFIG_FILE = "config.json"
VOCAB_FILE = "vocab.txt"
# in the order transformers prefers them
WEIGHT_FILES = (
    "model.safetensors",
    "model.safetensors.index.json",
    "pytorch_model.bin",
    "pytorch_model.bin.index.json",
)

# HF module (inside encoder.layer.N.) -> fair-esm module (inside layers.N.): the scored
# Linears (model.units) and the layer norms
_LAYER_MODULES = {m.hf_path: m.path for m in MODULE_TYPES} | {
    "attention.LayerNorm": "self_attn_layer_norm",
    "LayerNorm": "final_layer_norm",
}
# HF module outside the layers (after the `esm.` prefix, or as is for lm_head) -> fair-esm
_TOP_MODULES = {
    "embeddings.word_embeddings": "embed_tokens",
    "encoder.emb_layer_norm_after": "emb_layer_norm_after",
    "contact_head.regression": "contact_head.regression",
    "lm_head.dense": "lm_head.dense",
    "lm_head.layer_norm": "lm_head.layer_norm",
}
_NORMS = {"attention.LayerNorm", "LayerNorm", "encoder.emb_layer_norm_after", "lm_head.layer_norm"}
# transformers 5 writes LayerNorm parameters under their old BERT names
_NORM_PARAMS = {"weight": "weight", "bias": "bias", "gamma": "weight", "beta": "bias"}
_LAYER_RE = re.compile(r"encoder\.layer\.(\d+)\.(.+)\.(\w+)")
_TOP_RE = re.compile(r"(.+)\.(\w+)")

# what each intentionally dropped tensor is (see the module docstring)
INV_FREQ, POSITION_IDS, TIED_DECODER, POOLER = (
    "rotary inv_freq",
    "position_ids",
    "tied lm_head.decoder.weight",
    "pooler",
)
_DROPPED = {INV_FREQ, POSITION_IDS, TIED_DECODER, POOLER}


class HFCheckpointError(UserError, ValueError):
    """A Hugging Face ESM-2 directory that fair-esm's ESM2 cannot represent, or a broken one."""


def _first_line(err: Exception) -> str:
    """An exception's message cut to one line (torch's can run over many)."""
    lines = str(err).strip().splitlines()
    return lines[0] if lines else type(err).__name__


def _bad(path: Path, key: str, problem: str) -> HFCheckpointError:
    return HFCheckpointError(f"{path}: key '{key}' {problem}")


def read_hf_config(directory: str | Path) -> dict:
    """The architecture in `directory`/config.json, checked against fair-esm's ESM-2.

    Returns {"num_layers", "embed_dim", "attention_heads", "token_dropout"} (what
    `kneurons.model.esm.esm_config` reports). Raises HFCheckpointError naming the file and key.
    """
    directory = Path(directory)
    path = directory / CONFIG_FILE
    if not path.is_file():
        raise HFCheckpointError(
            f"{directory}: no {CONFIG_FILE} (not a Hugging Face model directory)"
        )
    try:
        cfg = json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as err:
        raise HFCheckpointError(f"{path}: not readable JSON ({_first_line(err)})") from None
    if not isinstance(cfg, dict):
        raise HFCheckpointError(f"{path}: not a JSON object")

    def value(key, default=None, required=False):
        if key not in cfg or cfg[key] is None:
            if required:
                raise _bad(path, key, "is missing")
            return default
        return cfg[key]

    def integer(key):
        got = value(key, required=True)
        if isinstance(got, bool) or not isinstance(got, int) or got < 1:
            raise _bad(path, key, f"must be a positive integer, got {got!r}")
        return got

    def expect(key, wanted, default=None, required=False):
        got = value(key, default, required)
        if got != wanted:
            raise _bad(path, key, f"is {got!r}; fair-esm's ESM-2 needs {wanted!r}")

    expect("model_type", "esm", required=True)
    expect("is_folding_model", False, default=False)
    expect("position_embedding_type", "rotary", default="absolute")
    expect("emb_layer_norm_before", False, default=False)
    expect("hidden_act", "gelu", default="gelu")
    expect("add_cross_attention", False, default=False)
    expect("vocab_size", len(ESM2_VOCAB), required=True)
    expect("pad_token_id", PAD_IDX, required=True)
    expect("mask_token_id", MASK_IDX, required=True)
    vocab_list = value("vocab_list")
    if vocab_list is not None and list(vocab_list) != list(ESM2_VOCAB):
        raise _bad(path, "vocab_list", "differs from ESM-2's 33-token alphabet")
    layers = integer("num_hidden_layers")
    embed_dim = integer("hidden_size")
    heads = integer("num_attention_heads")
    if embed_dim % heads or (embed_dim // heads) % 2:
        raise _bad(
            path,
            "num_attention_heads",
            f"{heads} does not split hidden_size {embed_dim} into heads of even size (rotary)",
        )
    ffn = integer("intermediate_size")
    if ffn != FFN_FACTOR * embed_dim:
        raise _bad(
            path,
            "intermediate_size",
            f"is {ffn}; fair-esm's ESM-2 needs {FFN_FACTOR} x hidden_size "
            f"= {FFN_FACTOR * embed_dim}",
        )
    # transformers' default (1e-12) is not ESM-2's, so the key must be there
    eps = value("layer_norm_eps", required=True)
    if not isinstance(eps, int | float) or not math.isclose(eps, LAYER_NORM_EPS, rel_tol=1e-6):
        raise _bad(path, "layer_norm_eps", f"is {eps!r}; fair-esm's ESM-2 uses {LAYER_NORM_EPS:g}")
    rope = value("rope_parameters", default={})
    if not isinstance(rope, dict):
        raise _bad(path, "rope_parameters", f"must be a mapping, got {rope!r}")
    theta = value("rope_theta", default=rope.get("rope_theta", ROPE_THETA))
    if not isinstance(theta, int | float) or theta != ROPE_THETA:
        raise _bad(path, "rope_theta", f"is {theta!r}; fair-esm's ESM-2 uses {ROPE_THETA:g}")
    if rope.get("rope_type", "default") != "default":
        raise _bad(path, "rope_parameters", "rope_type must be 'default' (plain rotary)")
    token_dropout = value("token_dropout", default=False)
    if not isinstance(token_dropout, bool):
        raise _bad(path, "token_dropout", f"must be true or false, got {token_dropout!r}")
    _check_vocab_file(directory / VOCAB_FILE)
    return {
        "num_layers": layers,
        "embed_dim": embed_dim,
        "attention_heads": heads,
        "token_dropout": token_dropout,
    }


def _check_vocab_file(path: Path) -> None:
    if not path.is_file():
        return  # the tokenizer is optional; config.json's vocab_size and ids were checked
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as err:
        raise HFCheckpointError(f"{path}: not a readable text file ({_first_line(err)})") from None
    tokens = [line.strip() for line in text.splitlines() if line.strip()]
    if tokens != list(ESM2_VOCAB):
        first = next(
            (i for i, (a, b) in enumerate(zip(tokens, ESM2_VOCAB, strict=False)) if a != b),
            min(len(tokens), len(ESM2_VOCAB)),
        )
        got = tokens[first] if first < len(tokens) else "end of file"
        want = ESM2_VOCAB[first] if first < len(ESM2_VOCAB) else "end of file"
        raise HFCheckpointError(
            f"{path}: token {first} is {got!r}, ESM-2's alphabet has {want!r} there"
        )


def weight_files(directory: str | Path) -> list[Path]:
    """The weight files of `directory`: model.safetensors (preferred) or pytorch_model.bin, or
    the shards their `.index.json` lists. The index itself comes first when there is one."""
    directory = Path(directory)
    for name in WEIGHT_FILES:
        path = directory / name
        if not path.is_file():
            continue
        if not name.endswith(".index.json"):
            return [path]
        try:
            weight_map = json.loads(path.read_text())["weight_map"]
            shards = sorted(set(weight_map.values()))
            if not all(isinstance(shard, str) for shard in shards):
                raise TypeError("file names must be strings")
        except (OSError, ValueError, KeyError, TypeError, AttributeError) as err:
            raise HFCheckpointError(
                f"{path}: no readable 'weight_map' ({_first_line(err)})"
            ) from None
        missing = [s for s in shards if not (directory / s).is_file()]
        if missing:
            raise _bad(path, "weight_map", f"lists {missing[0]}, which does not exist")
        return [path, *(directory / s for s in shards)]
    raise HFCheckpointError(f"{directory}: no weights ({' or '.join(WEIGHT_FILES[::2])})")


def read_hf_weights(directory: str | Path) -> dict:
    """Every tensor in the weight files of `directory`, by its Hugging Face name."""
    import torch

    tensors: dict = {}
    for path in weight_files(directory):
        if path.name.endswith(".index.json"):
            continue
        if path.suffix == ".safetensors":
            from safetensors import SafetensorError
            from safetensors.torch import load_file

            try:
                part = load_file(str(path), device="cpu")
            except (OSError, SafetensorError) as err:
                raise HFCheckpointError(
                    f"{path}: not a readable safetensors file ({_first_line(err)})"
                ) from None
        else:
            try:
                part = torch.load(str(path), map_location="cpu", weights_only=True)
            except Exception as err:  # torch raises many types for a bad file
                raise HFCheckpointError(
                    f"{path}: not a readable state dict ({_first_line(err)})"
                ) from None
            if not isinstance(part, dict) or not all(
                isinstance(v, torch.Tensor) for v in part.values()
            ):
                raise HFCheckpointError(f"{path}: not a state dict (name -> tensor)")
        for name, tensor in part.items():
            if name in tensors:
                raise HFCheckpointError(f"{path}: tensor {name} is also in another weight file")
            tensors[name] = tensor
    return tensors


def fair_esm_name(hf_name: str) -> str | None:
    """The fair-esm ESM2 state-dict name of Hugging Face tensor `hf_name`, or one of INV_FREQ,
    POSITION_IDS, TIED_DECODER, POOLER for a tensor dropped on purpose, or None (unknown)."""
    name = hf_name.removeprefix("esm.")  # EsmForMaskedLM nests EsmModel as `esm`
    if name.endswith("rotary_embeddings.inv_freq"):
        return INV_FREQ
    if name == "embeddings.position_ids":
        return POSITION_IDS
    if hf_name == "lm_head.decoder.weight":
        return TIED_DECODER
    if name.startswith("pooler.dense."):
        return POOLER
    if hf_name == "lm_head.bias":
        return "lm_head.bias"
    if name.startswith("lm_head.") and name != hf_name:
        return None  # lm_head lives beside `esm`, never inside it
    match = _LAYER_RE.fullmatch(name)
    if match:
        layer, module, param = match.groups()
        target = _LAYER_MODULES.get(module)
        prefix = f"layers.{int(layer)}."
    else:
        match = _TOP_RE.fullmatch(name)
        if not match:
            return None
        module, param = match.groups()
        target = _TOP_MODULES.get(module)
        prefix = ""
    params = _NORM_PARAMS if module in _NORMS else {"weight": "weight", "bias": "bias"}
    if target is None or param not in params:
        return None
    return f"{prefix}{target}.{params[param]}"


def _names(names) -> str:
    names = sorted(names)
    more = f" (and {len(names) - 3} more)" if len(names) > 3 else ""
    return ", ".join(names[:3]) + more


def convert_hf_esm2(directory: str | Path, out_path: str | Path) -> dict:
    """Write the Hugging Face ESM-2 in `directory` as a fair-esm checkpoint at `out_path` (and
    its `-contact-regression.pt`), in the format `kneurons.model.esm.save_esm_checkpoint` writes.

    Every tensor is mapped to its fair-esm name or dropped on purpose (see the module
    docstring); an unknown tensor, a missing fair-esm parameter or a shape that differs raises
    HFCheckpointError naming it. Returns {"config", "tensors" (mapped), "dropped" (HF names)}.
    """
    from esm.model.esm2 import ESM2

    from kneurons.model.esm import ALPHABET, save_esm_checkpoint

    directory = Path(directory)
    if tuple(ALPHABET.all_toks) != ESM2_VOCAB:
        raise RuntimeError(
            "fair-esm's alphabet differs from kneurons.model.hf_checkpoint.ESM2_VOCAB"
        )
    cfg = read_hf_config(directory)
    source = ", ".join(str(p) for p in weight_files(directory))
    hf = read_hf_weights(directory)

    esm2 = ESM2(
        cfg["num_layers"],
        cfg["embed_dim"],
        cfg["attention_heads"],
        alphabet=ALPHABET,
        token_dropout=cfg["token_dropout"],
    )
    expected = esm2.state_dict()
    state, dropped, unknown = {}, {}, []
    for hf_name, tensor in hf.items():
        target = fair_esm_name(hf_name)
        if target is None or (target not in expected and target not in _DROPPED):
            unknown.append(hf_name)
        elif target in _DROPPED:
            dropped[hf_name] = target
        elif target in state:
            raise HFCheckpointError(f"{source}: {hf_name} is a second copy of {target}")
        else:
            state[target] = tensor
    if unknown:
        raise HFCheckpointError(
            f"{source}: tensor(s) with no fair-esm ESM-2 name: {_names(unknown)}"
        )
    # fair-esm ties lm_head.weight to the embeddings and computes the rotary frequencies
    if "embed_tokens.weight" in state:
        state["lm_head.weight"] = state["embed_tokens.weight"]
    for name, tensor in expected.items():
        if name.endswith("rot_emb.inv_freq"):
            state[name] = tensor
    missing = set(expected) - set(state)
    if missing:
        raise HFCheckpointError(f"{source}: fair-esm ESM-2 parameter(s) missing: {_names(missing)}")
    for name, tensor in state.items():
        if tuple(tensor.shape) != tuple(expected[name].shape):
            raise HFCheckpointError(
                f"{source}: {_hf_source(hf, name)} has shape {tuple(tensor.shape)}, "
                f"config.json implies {tuple(expected[name].shape)}"
            )
        if not tensor.is_floating_point():
            raise HFCheckpointError(f"{source}: {_hf_source(hf, name)} is not floating point")
    _check_dropped(source, hf, dropped, state, expected)

    esm2.load_state_dict(state, strict=True)
    save_esm_checkpoint(esm2, out_path)
    for hf_name, kind in sorted(dropped.items()):
        log.info("dropped %s (%s; checked)", hf_name, kind)
    log.info("%s -> %s: %d tensors, %s", directory, out_path, len(hf) - len(dropped), cfg)
    return {"config": cfg, "tensors": len(hf) - len(dropped), "dropped": sorted(dropped)}


def _hf_source(hf: dict, fair_name: str) -> str:
    """The HF name a fair-esm tensor came from (for messages)."""
    return next((n for n in hf if fair_esm_name(n) == fair_name), fair_name)


def _check_dropped(source: str, hf: dict, dropped: dict, state: dict, expected: dict) -> None:
    """A dropped tensor must hold what fair-esm will have in its place."""
    import torch

    for hf_name, kind in dropped.items():
        tensor = hf[hf_name]
        if kind == TIED_DECODER:
            if not torch.equal(
                tensor.to(state["embed_tokens.weight"].dtype), state["embed_tokens.weight"]
            ):
                raise HFCheckpointError(
                    f"{source}: {hf_name} differs from the token embeddings; fair-esm ties them"
                )
        elif kind == INV_FREQ:
            ours = next(t for n, t in expected.items() if n.endswith("rot_emb.inv_freq"))
            if tensor.shape != ours.shape or not torch.allclose(
                tensor.float(), ours, rtol=1e-3, atol=0
            ):
                raise HFCheckpointError(
                    f"{source}: {hf_name} differs from fair-esm's rotary frequencies "
                    f"(base {ROPE_THETA:g}, head size {2 * ours.numel()})"
                )
        elif kind == POSITION_IDS:
            if not torch.equal(tensor.reshape(-1).long(), torch.arange(tensor.numel())):
                raise HFCheckpointError(f"{source}: {hf_name} is not 0, 1, 2, ...")


def convert_hf_model(input, output, settings: NoSettings, wildcards) -> None:
    """The convert_hf_model step: a Hugging Face ESM-2 directory as a fair-esm checkpoint,
    checked to load."""
    from kneurons.model.esm import log_loaded

    report = convert_hf_esm2(Path(input.config).parent, output.checkpoint)
    log.info("dropped on purpose (checked): %s", ", ".join(report["dropped"]) or "nothing")
    log_loaded(output.checkpoint)
