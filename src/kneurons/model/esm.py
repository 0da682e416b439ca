"""ESM-2 (fair-esm) checkpoints, the enzyme classifier built on it, and neuron ablation."""

from __future__ import annotations

import argparse
import logging
import os
from collections.abc import Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path

import esm
import torch
from esm.model.esm2 import ESM2
from torch import nn

from kneurons.io import CheckpointError, atomic_path, describe, load_checkpoint
from kneurons.model.attention import use_fused_attention
from kneurons.model.units import MODULE_TYPE, MODULES
from kneurons.settings import TinyModelSettings

log = logging.getLogger(__name__)

# fair-esm's gelu, x * 0.5 * (1 + erf(x / sqrt(2))), runs as four unfused elementwise ops (a
# third of a tiny model's forward pass on CPU); torch's gelu computes the same function in one
# kernel (outputs equal to ~1e-6): 1.7x faster pruned-model evaluation here
# (benchmarks/gelu_benchmark.py). fair-esm's layers look the name up at call time.
esm.modules.gelu = nn.functional.gelu

ALPHABET = esm.data.Alphabet.from_architecture("ESM-1b")
# fair-esm's loader prefixes; real checkpoints carry the first.
_STATE_PREFIX = "encoder.sentence_encoder."
_REGRESSION_KEYS = ("contact_head.regression.weight", "contact_head.regression.bias")


def module_name(layer: int, module: str) -> str:
    """Name of a scored Linear inside ESM2, e.g. `layers.3.self_attn.k_proj`."""
    if module not in MODULES:
        raise ValueError(f"unknown module {module!r}; expected one of {', '.join(MODULES)}")
    return f"layers.{layer}.{MODULE_TYPE[module].path}"


def linear(esm2: ESM2, layer: int, module: str) -> nn.Linear:
    """The Linear `module` (q_proj, ..., fc2) of layer `layer` of `esm2`."""
    return esm2.get_submodule(module_name(layer, module))


def esm_config(esm2: ESM2) -> dict:
    """The architecture of `esm2` as plain values (enough to rebuild it)."""
    return {
        "num_layers": esm2.num_layers,
        "embed_dim": esm2.embed_dim,
        "attention_heads": esm2.attention_heads,
        "token_dropout": bool(esm2.token_dropout),
    }


def build_tiny_esm2(num_layers: int, embed_dim: int, attention_heads: int, seed: int) -> ESM2:
    """A small ESM-2 from fair-esm's own class, so module names match the real models."""
    if embed_dim % attention_heads:
        raise ValueError(
            f"embed_dim {embed_dim} is not divisible by attention_heads {attention_heads}"
        )
    torch.manual_seed(seed)
    return ESM2(num_layers, embed_dim, attention_heads, alphabet=ALPHABET, token_dropout=True)


def save_esm_checkpoint(esm2: ESM2, path: str | Path) -> None:
    """Write `path` (and its `-contact-regression.pt`) in the format of fair-esm's releases."""
    path = Path(path)
    state = esm2.state_dict()
    cfg = argparse.Namespace(
        encoder_layers=esm2.num_layers,
        encoder_embed_dim=esm2.embed_dim,
        encoder_ffn_embed_dim=4 * esm2.embed_dim,
        encoder_attention_heads=esm2.attention_heads,
        token_dropout=bool(esm2.token_dropout),
    )
    model_data = {
        "cfg": {"model": cfg},
        "model": {_STATE_PREFIX + k: v for k, v in state.items() if k not in _REGRESSION_KEYS},
    }
    regression = {"model": {k: state[k] for k in _REGRESSION_KEYS}}
    with atomic_path(regression_path(path)) as tmp:
        torch.save(regression, tmp)
    with atomic_path(path) as tmp:
        torch.save(model_data, tmp)


def regression_path(path: str | Path) -> Path:
    """Where fair-esm expects the contact regression of checkpoint `path`."""
    path = Path(path)
    return path.with_name(path.stem + "-contact-regression.pt")


def load_esm_checkpoint(path: str | Path) -> ESM2:
    """Load an ESM-2 checkpoint written in fair-esm's format (pretrained release or our own).

    A file cut short, or one that is not a fair-esm ESM-2 checkpoint, raises CheckpointError
    naming it."""
    path = Path(path)
    model_data = load_checkpoint(path, "fair-esm checkpoint")
    if not isinstance(model_data, dict) or "model" not in model_data or "cfg" not in model_data:
        raise CheckpointError(f"{path}: not a fair-esm checkpoint (needs keys 'model' and 'cfg')")
    regression = None
    if regression_path(path).exists():
        regression = load_checkpoint(regression_path(path), "fair-esm contact regression")
        if not isinstance(regression, dict) or not isinstance(regression.get("model"), dict):
            raise CheckpointError(
                f"{regression_path(path)}: not a fair-esm contact regression (needs key 'model')"
            )
    # fair-esm picks the ESM-2 loader by the name's prefix; we only support ESM-2.
    name = path.stem if path.stem.startswith("esm2") else "esm2_" + path.stem
    try:
        model, _ = esm.pretrained.load_model_and_alphabet_core(name, model_data, regression)
    except (AttributeError, KeyError, TypeError, ValueError, RuntimeError) as err:
        # a cfg without ESM-2's fields, weights of other names or shapes
        raise CheckpointError(
            f"{path}: not a fair-esm ESM-2 checkpoint ({describe(err)})"
        ) from None
    return model


class EnzymeClassifier(nn.Module):
    """ESM-2 plus a linear head over mean-pooled residue representations."""

    def __init__(self, esm2: ESM2, n_classes: int, fused_attention: bool = True):
        super().__init__()
        self.esm = esm2
        self.head = nn.Linear(esm2.embed_dim, n_classes)
        # same numbers within 1e-5 as fair-esm's attention, faster on long sequences
        use_fused_attention(esm2, fused_attention)

    @property
    def num_layers(self) -> int:
        """Number of transformer layers."""
        return self.esm.num_layers

    def embed(self, tokens: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Token embeddings as ESM2.forward computes them: (T, B, E) and the padding mask."""
        e = self.esm
        padding_mask = tokens.eq(e.padding_idx)
        x = e.embed_scale * e.embed_tokens(tokens)
        if e.token_dropout:
            x = x.masked_fill((tokens == e.mask_idx).unsqueeze(-1), 0.0)
            mask_ratio_train = 0.15 * 0.8
            src_lengths = (~padding_mask).sum(-1)
            mask_ratio_observed = (tokens == e.mask_idx).sum(-1).to(x.dtype) / src_lengths
            x = x * (1 - mask_ratio_train) / (1 - mask_ratio_observed)[:, None, None]
        x = x * (1 - padding_mask.unsqueeze(-1).type_as(x))
        return x.transpose(0, 1), (padding_mask if padding_mask.any() else None)

    def run_layers(
        self,
        x: torch.Tensor,
        padding_mask: torch.Tensor | None,
        start: int = 0,
        stop: int | None = None,
    ) -> torch.Tensor:
        """Run layers [start, stop) on time-major hidden states x (T, B, E)."""
        for layer in self.esm.layers[start:stop]:
            x, _ = layer(x, self_attn_padding_mask=padding_mask)
        return x

    def classify(self, x: torch.Tensor, tokens: torch.Tensor) -> torch.Tensor:
        """Final layer norm, mean over residues (no BOS/EOS/padding), linear head."""
        x = self.esm.emb_layer_norm_after(x).transpose(0, 1)  # (B, T, E)
        residue = residue_mask(tokens).unsqueeze(-1).type_as(x)
        pooled = (x * residue).sum(1) / residue.sum(1).clamp(min=1)
        return self.head(pooled)

    def forward(self, tokens: torch.Tensor) -> torch.Tensor:
        """Class logits (B, C) of token batches (B, T)."""
        x, padding_mask = self.embed(tokens)
        return self.classify(self.run_layers(x, padding_mask), tokens)


def residue_mask(tokens: torch.Tensor) -> torch.Tensor:
    """(B, T) True at residues: not BOS, EOS or padding."""
    return (
        (tokens != ALPHABET.padding_idx)
        & (tokens != ALPHABET.cls_idx)
        & (tokens != ALPHABET.eos_idx)
    )


def encode(sequences: Sequence[str], max_length: int | None = None) -> torch.Tensor:
    """Tokens with BOS/EOS, padded; sequences longer than `max_length` keep their first residues."""
    if max_length:
        sequences = [s[:max_length] for s in sequences]
    longest = max(len(s) for s in sequences)
    tokens = torch.full((len(sequences), longest + 2), ALPHABET.padding_idx, dtype=torch.long)
    for i, seq in enumerate(sequences):
        ids = [ALPHABET.cls_idx, *(ALPHABET.get_idx(a) for a in seq), ALPHABET.eos_idx]
        tokens[i, : len(ids)] = torch.tensor(ids)
    return tokens


def save_classifier(model: EnzymeClassifier, classes: Sequence[int], max_length: int, path) -> None:
    """Save the fine-tuned classifier atomically: weights, architecture, class order, max_length."""
    payload = {
        "esm_config": esm_config(model.esm),
        "classes": [int(c) for c in classes],
        "max_length": int(max_length),
        "state_dict": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    with atomic_path(path) as tmp:
        torch.save(payload, tmp)


def load_classifier(path, device: str | torch.device = "cpu") -> tuple[EnzymeClassifier, dict]:
    """Rebuild a classifier saved by `save_classifier` on `device`, in eval mode.

    Returns (model, {"classes", "max_length"}). A file cut short or not written by
    `save_classifier` raises CheckpointError naming it."""
    payload = load_checkpoint(path, "classifier")
    keys = ("esm_config", "classes", "max_length", "state_dict")
    if not isinstance(payload, dict) or not all(key in payload for key in keys):
        raise CheckpointError(f"{path}: not a saved classifier (needs keys {', '.join(keys)})")
    try:
        cfg = payload["esm_config"]
        esm2 = ESM2(
            cfg["num_layers"],
            cfg["embed_dim"],
            cfg["attention_heads"],
            ALPHABET,
            cfg["token_dropout"],
        )
        model = EnzymeClassifier(esm2, len(payload["classes"]))
        model.load_state_dict(payload["state_dict"])
    except (KeyError, TypeError, ValueError, RuntimeError) as err:
        # an esm_config without its fields, weights of other names or shapes
        raise CheckpointError(f"{path}: not a saved classifier ({describe(err)})") from None
    model.to(device).eval()
    return model, {"classes": payload["classes"], "max_length": payload["max_length"]}


def pick_device(requested: str = "auto") -> torch.device:
    """`auto` is CUDA when available, else CPU; on CUDA, deterministic kernels are requested."""
    if requested == "auto":
        requested = "cuda" if torch.cuda.is_available() else "cpu"
    device = torch.device(requested)
    if device.type == "cuda":
        request_determinism()
    return device


def request_determinism() -> None:
    """Ask torch for deterministic CUDA kernels where it has them (warn, not fail, where not).

    cuBLAS needs its workspace setting before its first use. Still not bitwise reproducible on
    GPU: atomics-based reductions torch has no deterministic kernel for (it warns about them),
    and results differ between GPU models, driver/CUDA versions and from the CPU.
    """
    os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")
    torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = False
    torch.backends.cudnn.deterministic = True


def autocast(device: torch.device, precision: str) -> AbstractContextManager:
    """bf16 autocast on `device` for precision `bf16` (weights stay float32); else nothing."""
    if precision == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return nullcontext()


@contextmanager
def frozen(model: nn.Module) -> Iterator[nn.Module]:
    """No weight gradients inside the block; every parameter's requires_grad is restored after."""
    flags = [(p, p.requires_grad) for p in model.parameters()]
    for p, _ in flags:
        p.requires_grad_(False)
    try:
        yield model
    finally:
        for p, flag in flags:
            p.requires_grad_(flag)


@contextmanager
def ablated(
    model: EnzymeClassifier,
    keep: Mapping[tuple[int, str], torch.Tensor],
    models: int | None = None,
) -> Iterator[None]:
    """Ablate what `keep` marks False (or scale by a float mask): per unit (a (units,) mask: the
    unit's output times the mask, the same as scaling its weight row and bias) or per weight (a
    (units, inputs) mask: those weights are zero, the bias is kept).

    `models`: the batch holds that many copies of the sequences, model-major (`tokens.repeat`),
    and each unit mask has a leading models axis, (models, units): copy m gets mask m, so one
    forward pass runs `models` pruned models. Each output is the same product as with one
    model per pass. Per-weight masks run one model per pass (models 1, mask (1, units, inputs)).
    """
    handles = []
    try:
        for (layer, module), mask in keep.items():
            target = linear(model.esm, layer, module)
            per_model = models is not None and models > 1
            if models is not None:
                if mask.shape[0] != models:
                    raise ValueError(f"({layer}, {module}): {mask.shape[0]} masks for {models}")
                if per_model and mask.ndim == 3:
                    raise ValueError("per-weight masks are applied one model per pass")
                mask = mask if per_model else mask[0]
            scale = mask.to(device=target.weight.device, dtype=target.weight.dtype)

            def unit_hook(_mod, _inp, out, scale=scale):
                return out * scale.to(dtype=out.dtype)

            def models_hook(_mod, _inp, out, scale=scale):
                # (T, models x B, U) viewed as (T, models, B, U), times (models, 1, U)
                by_model = out.unflatten(1, (len(scale), -1))
                return (by_model * scale.to(dtype=out.dtype)[:, None]).flatten(1, 2)

            def weight_hook(mod, inp, _out, scale=scale):
                return nn.functional.linear(inp[0], mod.weight * scale, mod.bias)

            if per_model:
                hook = models_hook
            else:
                hook = weight_hook if scale.ndim == 2 else unit_hook
            handles.append(target.register_forward_hook(hook))
        yield
    finally:
        for h in handles:
            h.remove()


def set_threads(threads: int) -> None:
    """Torch intra-op threads for this process (at least 1)."""
    torch.set_num_threads(max(1, int(threads)))


def log_loaded(path) -> None:
    """Check that the checkpoint at `path` loads; log its size."""
    esm2 = load_esm_checkpoint(path)
    log.info("%s loads: %d parameters", path, sum(p.numel() for p in esm2.parameters()))


def prepare_model(input, output, settings: TinyModelSettings, wildcards) -> None:
    """The prepare_model step: the tiny ESM-2, initialised from the run seed (each seed gets
    its own backbone), saved and checked to load."""
    esm2 = build_tiny_esm2(
        settings.num_layers, settings.embed_dim, settings.attention_heads, int(wildcards["seed"])
    )
    log.info("built a tiny ESM-2: %s", esm_config(esm2))
    save_esm_checkpoint(esm2, output.checkpoint)
    log_loaded(output.checkpoint)
