"""TopK sparse autoencoders (SAEs) on the residual stream of the ESM-2 classifier, saved as
safetensors, and a splice that runs the classifier with an SAE in place of a layer's output.

An SAE writes a layer's residual stream as a sparse nonnegative sum of learned directions
(features), a basis in which single units are more often interpretable than raw neurons.
TopK (Gao et al., 2024, "Scaling and evaluating sparse autoencoders") keeps the `k` largest
ReLU pre-activations per token: L0 is set directly rather than tuned through an L1 weight,
the kept activations are not shrunk by an L1 penalty, and fewer features die. InterPLM
(Simon & Zou, 2024) trained ReLU SAEs with an L1 penalty on ESM-2; we use TopK instead.

Inputs are normalised, x_n = (x - mean) / scale with mean squared norm d_in, as buffers of the
SAE, so one learning rate fits every layer. Feature activations are in that normalised space:
feature f adds acts_f * scale * W_dec[f] to the reconstruction in input space. Dead features
(none of the batches of `dead_after` steps fired them) are resampled towards badly
reconstructed inputs.

`spliced` hooks SAEs into the classifier. With `keep_error` (the default) the layer output is
x minus the zeroed features' contributions, so with nothing zeroed the model is unchanged bit
for bit and zeroing a feature removes exactly what flows through it; without it the layer
output is the SAE's reconstruction alone.
"""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import pandas as pd
import torch
from torch import nn

from kneurons.data.tables import read_labelled
from kneurons.io import CheckpointError, atomic_path, describe, write_tsv
from kneurons.model.esm import EnzymeClassifier, encode, load_classifier, pick_device
from kneurons.settings import SaeSettings

log = logging.getLogger(__name__)

# safetensors metadata key holding the SaeConfig (the caller's keys sit beside it)
CONFIG_KEY = "sae_config"
# a resampled feature's encoder column is its decoder row times this much of the mean
# encoder-column norm of the live features. Anthropic's resampling ("Towards Monosemanticity")
# uses 0.2, for ReLU + L1 SAEs where any positive pre-activation fires; under TopK a feature has
# to beat the k largest, and at 0.2 or 0.5 a resampled feature never fired again in
# tests/test_sae.py::test_dead_features_are_resampled (at 1.0 on 5% of the inputs).
RESAMPLE_ENCODER_SCALE = 1.0


@dataclass(frozen=True)
class SaeConfig:
    """Architecture and training settings of a TopK SAE."""

    d_in: int
    n_features: int  # expansion x d_in
    k: int  # active features per token
    # training
    steps: int = 1000
    batch_size: int = 2048
    lr: float = 1e-3
    dead_after: int = 200  # steps without firing before a feature counts as dead and is resampled
    seed: int = 0

    def __post_init__(self):
        if not 0 < self.k <= self.n_features:
            raise ValueError(f"k {self.k} must be in [1, n_features {self.n_features}]")
        if self.d_in < 1 or self.steps < 0 or self.batch_size < 1 or self.dead_after < 1:
            raise ValueError(f"invalid SaeConfig {self}")


class SparseAutoencoder(nn.Module):
    """acts = TopK(ReLU((x_n - b_dec) W_enc + b_enc)), x_hat_n = acts W_dec + b_dec, where
    x_n = (x - mean) / scale; decoder rows have unit norm (Gao et al.'s pre-encoder bias)."""

    def __init__(self, config: SaeConfig):
        super().__init__()
        self.config = config
        d, f = config.d_in, config.n_features
        self.W_enc = nn.Parameter(torch.zeros(d, f))  # (d_in, F)
        self.b_enc = nn.Parameter(torch.zeros(f))  # (F,)
        self.W_dec = nn.Parameter(torch.zeros(f, d))  # (F, d_in), unit-norm rows
        self.b_dec = nn.Parameter(torch.zeros(d))  # (d_in,)
        self.register_buffer("mean", torch.zeros(d))  # (d_in,)
        self.register_buffer("scale", torch.ones(()))  # scalar

    @property
    def k(self) -> int:
        """Active features per token."""
        return self.config.k

    @property
    def n_features(self) -> int:
        """Number of dictionary features F."""
        return self.config.n_features

    def normalise(self, x: torch.Tensor) -> torch.Tensor:
        """(N, d_in) inputs in the SAE's normalised space."""
        return (x - self.mean) / self.scale

    def pre_acts(self, x_n: torch.Tensor) -> torch.Tensor:
        """(N, F) encoder pre-activations of normalised inputs (N, d_in)."""
        return (x_n - self.b_dec) @ self.W_enc + self.b_enc

    def topk(self, pre: torch.Tensor) -> torch.Tensor:
        """(N, F): the k largest pre-activations per row through a ReLU, the rest 0."""
        values, indices = pre.topk(self.k, dim=-1)  # (N, k)
        return torch.zeros_like(pre).scatter(-1, indices, values.relu())

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """Feature activations (N, F) of inputs (N, d_in): at most k nonzero per row."""
        return self.topk(self.pre_acts(self.normalise(x)))

    def decode_normalised(self, acts: torch.Tensor) -> torch.Tensor:
        """(N, d_in) reconstruction in the normalised space."""
        return acts @ self.W_dec + self.b_dec

    def decode(self, acts: torch.Tensor) -> torch.Tensor:
        """Reconstruction (N, d_in) in the input's (unnormalised) space of activations (N, F)."""
        return self.decode_normalised(acts) * self.scale + self.mean

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(x_hat (N, d_in), acts (N, F)) of inputs x (N, d_in)."""
        acts = self.encode(x)
        return self.decode(acts), acts

    @torch.no_grad()
    def normalise_decoder(self) -> None:
        """Rescale the decoder rows to unit norm."""
        self.W_dec.div_(self.W_dec.norm(dim=1, keepdim=True).clamp(min=1e-12))


def _geometric_median(x: torch.Tensor, iterations: int = 30) -> torch.Tensor:
    """Weiszfeld's iterations from the mean: the point of least summed distance to rows of x."""
    median = x.mean(0)
    for _ in range(iterations):
        weights = 1 / (x - median).norm(dim=1).clamp(min=1e-6)  # (N,)
        median = (weights[:, None] * x).sum(0) / weights.sum()
    return median


@torch.no_grad()
def init_sae(activations: torch.Tensor, config: SaeConfig) -> SparseAutoencoder:
    """A fresh SAE for `activations` (N, d_in): normalisation fitted to them, decoder rows
    random unit vectors, W_enc = W_dec.T, b_enc 0, b_dec the geometric median of (a sample
    of up to 8192 of) the normalised inputs; random draws from `config.seed`."""
    _check_activations(activations, config)
    gen = torch.Generator().manual_seed(config.seed)
    sae = SparseAutoencoder(config)
    x = activations.double()  # float64 statistics: N x d_in sums lose digits in float32
    mean = x.mean(0)
    sae.mean.copy_(mean)
    sae.scale.copy_(((x - mean).pow(2).sum(1).mean() / config.d_in).sqrt().clamp(min=1e-12))
    sae.W_dec.copy_(torch.randn(config.n_features, config.d_in, generator=gen))
    sae.normalise_decoder()
    sae.W_enc.copy_(sae.W_dec.T)
    sample = torch.randperm(len(activations), generator=gen)[:8192]
    sae.b_dec.copy_(_geometric_median(sae.normalise(activations[sample])))
    return sae


def _check_activations(activations: torch.Tensor, config: SaeConfig) -> None:
    if activations.ndim != 2 or activations.shape[1] != config.d_in:
        raise ValueError(f"activations {tuple(activations.shape)}: expected (N, {config.d_in})")
    if len(activations) == 0:
        raise ValueError("no activations to train on")


def _reset_adam(optimizer: torch.optim.Adam, param: nn.Parameter, index, dim: int) -> None:
    """Zero Adam's moments of `param` at `index` along `dim` (the step count is shared)."""
    state = optimizer.state.get(param, {})
    for key in ("exp_avg", "exp_avg_sq"):
        if key in state:
            state[key].index_fill_(dim, index, 0.0)


@torch.no_grad()
def _resample(
    sae: SparseAutoencoder,
    optimizer: torch.optim.Adam,
    dead: torch.Tensor,
    x_n: torch.Tensor,
    x_hat_n: torch.Tensor,
) -> None:
    """Point the `dead` features (1-D indices) at the worst-reconstructed inputs of the batch
    x_n (B, d_in): decoder row the input's direction (from b_dec), encoder column that row
    times the live features' mean encoder norm, b_enc 0, Adam moments reset."""
    errors = (x_n - x_hat_n).pow(2).sum(1)  # (B,)
    worst = errors.argsort(descending=True)[: len(dead)]
    worst = worst.repeat((len(dead) + len(worst) - 1) // len(worst))[: len(dead)]
    directions = x_n[worst] - sae.b_dec  # (dead, d_in)
    directions = directions / directions.norm(dim=1, keepdim=True).clamp(min=1e-12)
    alive = torch.ones(sae.n_features, dtype=torch.bool)
    alive[dead] = False
    norms = sae.W_enc.norm(dim=0)  # (F,)
    enc_norm = float(norms[alive].mean()) if alive.any() else 1.0
    sae.W_dec[dead] = directions
    sae.W_enc[:, dead] = directions.T * (RESAMPLE_ENCODER_SCALE * enc_norm)
    sae.b_enc[dead] = 0.0
    _reset_adam(optimizer, sae.W_dec, dead, 0)
    _reset_adam(optimizer, sae.W_enc, dead, 1)
    _reset_adam(optimizer, sae.b_enc, dead, 0)


def _variance_explained(x: torch.Tensor, x_hat: torch.Tensor) -> float:
    """1 - sum ||x - x_hat||^2 / sum ||x - mean(x)||^2 over rows of x (N, d)."""
    residual = (x - x_hat).double().pow(2).sum()
    total = (x - x.mean(0)).double().pow(2).sum()
    return float(1 - residual / total) if total > 0 else float("nan")


def train_sae(
    activations: torch.Tensor,
    config: SaeConfig,
    *,
    log_every: int = 100,
    logger: logging.Logger | None = None,
    init: SparseAutoencoder | None = None,
) -> tuple[SparseAutoencoder, pd.DataFrame]:
    """Train a TopK SAE on `activations` (N, d_in), float32 on the CPU.

    Adam on the normalised-space MSE; batches are shuffled passes over the data. The decoder
    rows stay unit norm: the gradient's component along each row is removed before the step,
    the rows are rescaled after it. A feature that fired in none of the last `dead_after`
    batches is resampled (`_resample`). Deterministic for `config.seed` (one torch.Generator
    draws the init and the batches). `init`: start from a copy of this SAE (its weights and
    normalisation) instead of a fresh one.

    Returns the SAE (in eval mode) and the history, one row per log step (every `log_every`
    steps and the last): step, mse (per element, normalised space), variance_explained and l0
    of that step's batch, dead_fraction (features that fired in no batch since the previous
    row), resampled (resamplings so far). Logs each row with `logger` (default: this module's).
    """
    logger = logger or log
    _check_activations(activations, config)
    if init is not None:
        if init.config.d_in != config.d_in or init.config.n_features != config.n_features:
            raise ValueError("init's shape differs from config's")
        sae = copy.deepcopy(init)
        sae.config = config
    else:
        sae = init_sae(activations, config)
    sae.train()
    gen = torch.Generator().manual_seed(config.seed + 1)  # batches; the init used config.seed
    optimizer = torch.optim.Adam(sae.parameters(), lr=config.lr)
    n, f = len(activations), config.n_features
    since_fired = torch.zeros(f, dtype=torch.long)  # steps since each feature last fired
    fired_since_log = torch.zeros(f, dtype=torch.bool)
    order, cursor, resampled, history = torch.randperm(n, generator=gen), 0, 0, []
    for step in range(1, config.steps + 1):
        if cursor + config.batch_size > n and cursor > 0:  # a new pass over the data
            order, cursor = torch.randperm(n, generator=gen), 0
        batch = activations[order[cursor : cursor + config.batch_size]]
        cursor += config.batch_size
        x_n = sae.normalise(batch)  # (B, d_in)
        acts = sae.topk(sae.pre_acts(x_n))  # (B, F)
        x_hat_n = sae.decode_normalised(acts)  # (B, d_in)
        loss = (x_hat_n - x_n).pow(2).mean()
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        with torch.no_grad():
            # keep the step tangent to the unit sphere of each decoder row
            grad, rows = sae.W_dec.grad, sae.W_dec
            grad.sub_((grad * rows).sum(1, keepdim=True) * rows)
        optimizer.step()
        sae.normalise_decoder()

        with torch.no_grad():
            fired = (acts > 0).any(0)  # (F,)
            since_fired = torch.where(fired, 0, since_fired + 1)
            fired_since_log |= fired
            dead = (since_fired >= config.dead_after).nonzero().flatten()
            if len(dead):
                _resample(sae, optimizer, dead, x_n.detach(), x_hat_n.detach())
                since_fired[dead] = 0
                resampled += len(dead)
        if step % log_every == 0 or step == config.steps:
            with torch.no_grad():
                row = {
                    "step": step,
                    "mse": float(loss),
                    "variance_explained": _variance_explained(x_n, x_hat_n),
                    "l0": float((acts > 0).sum(1).float().mean()),
                    "dead_fraction": float((~fired_since_log).float().mean()),
                    "resampled": resampled,
                }
            fired_since_log.zero_()
            history.append(row)
            logger.info(
                "sae step %d/%d: variance explained %.3f, L0 %.1f, dead %.3f, resampled %d",
                step,
                config.steps,
                row["variance_explained"],
                row["l0"],
                row["dead_fraction"],
                resampled,
            )
    columns = ["step", "mse", "variance_explained", "l0", "dead_fraction", "resampled"]
    return sae.eval(), pd.DataFrame(history, columns=columns)


@torch.no_grad()
def sae_metrics(sae: SparseAutoencoder, activations: torch.Tensor, batch_size: int = 8192) -> dict:
    """How well `sae` codes `activations` (N, d_in): variance_explained (1 - sum ||x - x_hat||^2
    / sum ||x - mean||^2, input space), l0 (mean nonzeros per row), dead_fraction (features
    active on none of the rows), n_features."""
    residual, nonzeros = 0.0, 0
    active = torch.zeros(sae.n_features, dtype=torch.bool)
    x = activations.to(sae.W_dec.dtype)
    for chunk in x.split(batch_size):
        x_hat, acts = sae(chunk)
        residual += float((chunk - x_hat).double().pow(2).sum())
        nonzeros += int((acts > 0).sum())
        active |= (acts > 0).any(0).cpu()
    total = float((x - x.double().mean(0)).pow(2).sum())
    return {
        "variance_explained": 1 - residual / total if total > 0 else float("nan"),
        "l0": nonzeros / len(x),
        "dead_fraction": float((~active).float().mean()),
        "n_features": sae.n_features,
    }


def save_sae(sae: SparseAutoencoder, path: str | Path, metadata: Mapping) -> None:
    """Write `sae` to a safetensors file, atomically. Its config goes into the file's string
    metadata as JSON (key `sae_config`), and each entry of `metadata` as its value in JSON."""
    from safetensors.torch import save_file

    if CONFIG_KEY in metadata:
        raise ValueError(f"metadata key {CONFIG_KEY!r} is reserved for the SAE's config")
    strings = {str(key): json.dumps(value) for key, value in metadata.items()}
    strings[CONFIG_KEY] = json.dumps(asdict(sae.config))
    tensors = {name: t.detach().cpu().contiguous() for name, t in sae.state_dict().items()}
    with atomic_path(path) as tmp:
        save_file(tensors, str(tmp), metadata=strings)


def load_sae(path: str | Path) -> tuple[SparseAutoencoder, dict]:
    """The SAE saved at `path` by `save_sae` (on the CPU, eval mode) and its metadata. A file
    that is not such a safetensors file raises CheckpointError naming it."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as handle:
            strings = handle.metadata() or {}
            tensors = {name: handle.get_tensor(name) for name in handle.keys()}
        config = SaeConfig(**json.loads(strings[CONFIG_KEY]))
        sae = SparseAutoencoder(config).to(tensors["W_dec"].dtype)
        sae.load_state_dict(tensors)
        metadata = {key: json.loads(value) for key, value in strings.items() if key != CONFIG_KEY}
    except Exception as err:  # safetensors raises its own error types; JSON, keys, shapes
        raise CheckpointError(f"{path}: not a saved SAE ({describe(err)})") from None
    return sae.eval(), metadata


def _zero_mask(zero: torch.Tensor | None, n_features: int) -> torch.Tensor | None:
    """`zero` as a bool mask, (F,) or (models, F); None when it zeroes nothing."""
    if zero is None:
        return None
    zero = torch.as_tensor(zero)
    if zero.dtype != torch.bool:
        if zero.ndim != 1:
            raise ValueError("feature indices to zero must be a 1-D tensor")
        mask = torch.zeros(n_features, dtype=torch.bool)
        mask[zero.long().cpu()] = True
        zero = mask
    if zero.ndim not in (1, 2) or zero.shape[-1] != n_features:
        raise ValueError(
            f"zero mask {tuple(zero.shape)}: expected (F,) or (models, F), F {n_features}"
        )
    return zero if zero.any() else None


@contextmanager
def spliced(
    model: EnzymeClassifier,
    saes: Mapping[int, SparseAutoencoder],
    zero: Mapping[int, torch.Tensor] | None = None,
    keep_error: bool = True,
) -> Iterator[None]:
    """Run `model` with the SAE saes[L] on the output x (T, B, E) of layer L.

    keep_error=True: the output is x - scale * (acts * zeroed) W_dec, which is
    x + decode(acts with the features zero[L] set to 0) - decode(acts) without the rounding of
    adding and removing the biases: nothing zeroed returns x itself (the model unchanged bit
    for bit), and zeroing feature f removes acts_f * scale * W_dec[f] and nothing else.
    keep_error=False: the output is decode(acts with zero[L] set to 0), the reconstruction
    alone.

    zero[L]: feature indices (1-D long) or a bool mask (F,); or a (models, F) bool mask when the
    batch holds `models` copies of the sequences, model-major (`tokens.repeat(models, 1)`):
    copy m zeroes mask m's features. The SAE runs in its own dtype; its result is cast back to
    x's. Gradients flow through the SAE (for attributions to features); run under
    torch.no_grad to skip them. Hooks are removed on exit, also after an error.
    """
    zero = dict(zero or {})
    unknown = set(zero) - set(saes)
    if unknown:
        raise ValueError(f"features zeroed in layers without an SAE: {sorted(unknown)}")
    handles = []
    try:
        for layer, sae in saes.items():
            mask = _zero_mask(zero.get(layer), sae.n_features)
            if mask is not None:
                mask = mask.to(sae.W_dec.device)
            if keep_error and mask is None:
                continue  # x itself: no hook at all

            def hook(_mod, _inp, out, sae=sae, mask=mask):
                x = out[0]  # (T, B, E)
                flat = x.reshape(-1, x.shape[-1]).to(device=sae.W_dec.device, dtype=sae.W_dec.dtype)
                acts = sae.encode(flat)  # (T*B, F)
                if mask is not None:
                    by_row = acts.view(x.shape[0], -1, acts.shape[-1])  # (T, B, F)
                    if mask.ndim == 2:  # (models, F): (T, models, B, F) times (models, 1, F)
                        by_row = by_row.unflatten(1, (len(mask), -1))
                        removed = by_row * mask[:, None].to(by_row.dtype)
                    else:
                        removed = by_row * mask.to(by_row.dtype)
                    removed = removed.reshape(acts.shape)  # (T*B, F)
                if keep_error:
                    new = x - (removed @ sae.W_dec * sae.scale).view(x.shape).to(x)
                else:
                    kept = acts - removed if mask is not None else acts
                    new = sae.decode(kept).view(x.shape).to(x)
                return (new, *out[1:])

            handles.append(model.esm.layers[layer].register_forward_hook(hook))
        yield
    finally:
        for handle in handles:
            handle.remove()


# --- the residual stream and the sae step --------------------------------------------------


@torch.no_grad()
def residual_stream(
    model: EnzymeClassifier,
    sequences: Sequence[str],
    layers: Sequence[int],
    max_length: int | None = None,
    batch_size: int = 64,
) -> dict[int, np.ndarray]:
    """{layer: (residues, embed_dim) float32}: the residual stream after each of `layers` at
    every residue of `sequences`, concatenated in order (BOS, EOS and padding dropped)."""
    model.eval()
    device = next(model.parameters()).device
    wanted = set(layers)
    chunks: dict[int, list[np.ndarray]] = {layer: [] for layer in layers}
    per_sequence: dict[int, list] = {layer: [None] * len(sequences) for layer in layers}
    order = sorted(range(len(sequences)), key=lambda i: (len(sequences[i]), i))
    for start in range(0, len(order), batch_size):
        chunk = order[start : start + batch_size]
        tokens = encode([sequences[i] for i in chunk], max_length).to(device)
        x, padding_mask = model.embed(tokens)  # (T, B, E)
        lengths = (tokens != model.esm.padding_idx).sum(1).tolist()
        for layer in range(max(wanted) + 1):
            x = model.run_layers(x, padding_mask, layer, layer + 1)
            if layer in wanted:
                block = x.float().cpu().numpy()
                for b, i in enumerate(chunk):
                    per_sequence[layer][i] = block[1 : lengths[b] - 1, b]  # residues only
    for layer in layers:
        chunks[layer] = np.concatenate(per_sequence[layer]).astype(np.float32)
    return chunks


def training_sequences(
    split_table: pd.DataFrame, corpus: pd.DataFrame | None, n_corpus: int, seed: int
) -> list[str]:
    """The train split's sequences, then up to `n_corpus` of the corpus' training part (a
    seeded sample; the corpus never holds a labelled sequence)."""
    sequences = list(split_table.loc[split_table["split"] == "train", "sequence"])
    if corpus is not None and n_corpus > 0:
        pool = corpus[corpus["part"] == "train"] if "part" in corpus else corpus
        if len(pool) > n_corpus:
            pool = pool.sample(n=n_corpus, random_state=seed)
        sequences += list(pool["sequence"])
    return sequences


def sae_step(input, output, settings: SaeSettings, wildcards) -> None:
    """The sae step: one seed's and one layer's sparse autoencoder on the residual stream."""
    seed, layer = int(wildcards["seed"]), int(wildcards["layer"])
    device = pick_device(settings.device)
    classifier, meta = load_classifier(input.model, device)
    corpus = None
    if getattr(input, "corpus", None) and settings.corpus_sequences:
        corpus = pd.read_csv(input.corpus, sep="\t", keep_default_na=False)
    sequences = training_sequences(
        read_labelled(input.split), corpus, settings.corpus_sequences, seed
    )
    residual = residual_stream(classifier, sequences, [layer], meta["max_length"])[layer]
    log.info("layer %d: %d residues of %d sequences", layer, len(residual), len(sequences))
    config = SaeConfig(
        d_in=residual.shape[1],
        n_features=settings.expansion * residual.shape[1],
        k=settings.k,
        steps=settings.steps,
        batch_size=settings.batch_size,
        lr=settings.lr,
        dead_after=settings.dead_after,
        seed=seed * 1000 + layer,
    )
    sae, history = train_sae(torch.from_numpy(residual), config, logger=log)
    save_sae(sae, output.sae, {"seed": seed, "layer": layer, "n_residues": len(residual)})
    write_tsv(history.assign(seed=seed, layer=layer), output.history)
