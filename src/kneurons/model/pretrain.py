"""Masked-language-model pretraining of an ESM-2 (fair-esm's own LM head and alphabet), as
ESM-2 was trained: 15% of residue tokens chosen, of those 80% replaced by `<mask>`, 10% by a
random residue and 10% left unchanged; the loss is the cross-entropy at the chosen tokens.

The result is an ordinary fair-esm checkpoint (`model.esm.save_esm_checkpoint`) that
`finetune` starts from, and, for the report, each held-out masked position's target and
prediction (`masked_predictions`).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Sequence

import numpy as np
import pandas as pd
import torch
from esm.model.esm2 import ESM2
from torch import nn

from kneurons.data.motifs import parse_motifs
from kneurons.data.tables import STANDARD_RESIDUES
from kneurons.io import write_json, write_tsv
from kneurons.model.attention import use_fused_attention
from kneurons.model.esm import (
    ALPHABET,
    build_tiny_esm2,
    encode,
    esm_config,
    load_esm_checkpoint,
    pick_device,
    residue_mask,
    save_esm_checkpoint,
)
from kneurons.model.train import warmup_cosine
from kneurons.progress import format_seconds
from kneurons.settings import PretrainSettings

log = logging.getLogger(__name__)

MASK_RATE = 0.15
# of the chosen tokens: replaced by <mask>, by a random residue, left unchanged
MASK_SPLIT = (0.8, 0.1, 0.1)
RESIDUE_TOKENS = torch.tensor([ALPHABET.get_idx(a) for a in sorted(STANDARD_RESIDUES)])
IGNORE = -100  # cross-entropy's ignore_index: a token that is not predicted
PREDICTION_COLUMNS = ["sequence", "position", "target", "predicted", "log_p", "region"]


def mask_tokens(
    tokens: torch.Tensor, generator: torch.Generator, rate: float = MASK_RATE
) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, targets) for one masked-LM step on `tokens` (B, T): each residue token (not
    BOS, EOS or padding) is chosen with probability `rate`; a chosen token becomes `<mask>`
    with probability 0.8, a uniformly random standard residue with 0.1, and stays itself with
    0.1. `targets` holds the original token at chosen positions and IGNORE elsewhere."""
    chosen = (torch.rand(tokens.shape, generator=generator) < rate) & residue_mask(tokens)
    roll = torch.rand(tokens.shape, generator=generator)
    masked, randomised = MASK_SPLIT[0], MASK_SPLIT[0] + MASK_SPLIT[1]
    inputs = tokens.clone()
    inputs[chosen & (roll < masked)] = ALPHABET.mask_idx
    swap = chosen & (roll >= masked) & (roll < randomised)
    picks = torch.randint(len(RESIDUE_TOKENS), (int(swap.sum()),), generator=generator)
    inputs[swap] = RESIDUE_TOKENS[picks]
    return inputs, torch.where(chosen, tokens, torch.full_like(tokens, IGNORE))


def lm_loss(esm2: ESM2, inputs: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(mean cross-entropy over the predicted tokens, number of correct predictions)."""
    logits = esm2(inputs)["logits"]
    loss = nn.functional.cross_entropy(
        logits.flatten(0, 1).float(), targets.flatten(), ignore_index=IGNORE
    )
    predicted = targets != IGNORE
    correct = int((logits.argmax(-1)[predicted] == targets[predicted]).sum())
    return loss, correct


def train_mlm(
    esm2: ESM2,
    sequences: Sequence[str],
    *,
    steps: int,
    batch_size: int,
    lr: float,
    weight_decay: float,
    warmup_steps: int,
    max_length: int,
    seed: int,
    device: torch.device,
    log_every: int = 50,
) -> list[dict]:
    """Pretrain `esm2` in place: `steps` AdamW steps on batches of `batch_size` sequences drawn
    without replacement (reshuffled each pass over `sequences`), linear warm-up over
    `warmup_steps` then cosine decay; one log line every `log_every` steps. Returns the
    history: one row per logged step (step, loss, masked accuracy, sequences/s)."""
    use_fused_attention(esm2, True)
    esm2.to(device).train()
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(esm2.parameters(), lr=lr, weight_decay=weight_decay)
    scheduler = warmup_cosine(optimizer, warmup=warmup_steps, total=steps)
    order: list[int] = []
    window_keys = ("loss", "correct", "predicted", "sequences")  # sums since the last line
    history, window = [], dict.fromkeys(window_keys, 0)
    started = window_start = time.monotonic()
    for step in range(1, steps + 1):
        if len(order) < batch_size:
            order += torch.randperm(len(sequences), generator=generator).tolist()
        chunk, order = order[:batch_size], order[batch_size:]
        tokens = encode([sequences[i] for i in chunk], max_length)
        inputs, targets = mask_tokens(tokens, generator)
        loss, correct = lm_loss(esm2, inputs.to(device), targets.to(device))
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        n_predicted = int((targets != IGNORE).sum())
        window["loss"] += loss.item() * n_predicted
        window["correct"] += correct
        window["predicted"] += n_predicted
        window["sequences"] += len(chunk)
        if step % log_every == 0 or step == steps:
            seconds = time.monotonic() - window_start
            row = {
                "step": step,
                "loss": window["loss"] / max(window["predicted"], 1),
                "masked_accuracy": window["correct"] / max(window["predicted"], 1),
                "sequences_per_s": window["sequences"] / max(seconds, 1e-9),
            }
            history.append(row)
            elapsed = time.monotonic() - started
            log.info(
                "step %d/%d loss %.4f masked accuracy %.3f | %.1f sequences/s, ETA %s",
                step,
                steps,
                row["loss"],
                row["masked_accuracy"],
                row["sequences_per_s"],
                format_seconds(elapsed / step * (steps - step)),
            )
            window = dict.fromkeys(window_keys, 0)
            window_start = time.monotonic()
    esm2.eval()
    return history


def motif_regions(motifs: str, n_residues: int) -> np.ndarray:
    """Per residue of a sequence: the kind of planted motif it lies in (`true`, `mutated`,
    `decoy`), `start` for the first residue (an M in nearly every protein, so no test of
    context) or `background`, from its `motifs` annotation."""
    regions = np.full(n_residues, "background", dtype=object)
    regions[:1] = "start"
    for entry in parse_motifs(motifs) if motifs else []:
        regions[entry["start"] : min(entry["end"], n_residues)] = entry["kind"]
    return regions


@torch.no_grad()
def masked_predictions(
    esm2: ESM2,
    table: pd.DataFrame,
    *,
    seed: int,
    max_length: int,
    batch_size: int = 64,
) -> pd.DataFrame:
    """The masked-LM test on `table` (columns sequence, motifs): in every sequence the positions
    `mask_tokens` chooses with a generator seeded by `seed` (the same positions every time),
    all of them replaced by `<mask>` (the 10% random and 10% unchanged tokens are a training
    device: an unchanged token would be copied, not predicted). One row per predicted position
    (PREDICTION_COLUMNS): the sequence's row number, the residue position (0-based), the target
    and predicted residues, log p(target) and the region (`motif_regions`)."""
    esm2.eval()
    device = next(esm2.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    sequences = list(table["sequence"])
    motifs = list(table["motifs"]) if "motifs" in table.columns else [""] * len(sequences)
    frames = []
    for start in range(0, len(sequences), batch_size):
        chunk = range(start, min(start + batch_size, len(sequences)))
        tokens = encode([sequences[i] for i in chunk], max_length)
        _, targets = mask_tokens(tokens, generator)
        inputs = tokens.masked_fill(targets != IGNORE, ALPHABET.mask_idx)
        log_probs = esm2(inputs.to(device))["logits"].float().log_softmax(-1).cpu()
        rows, cols = torch.nonzero(targets != IGNORE, as_tuple=True)
        target = targets[rows, cols]
        frames.append(
            pd.DataFrame(
                {
                    "sequence": [chunk[r] for r in rows.tolist()],
                    "position": (cols - 1).tolist(),  # token 0 is BOS
                    "target": [ALPHABET.get_tok(t) for t in target.tolist()],
                    "predicted": [
                        ALPHABET.get_tok(t) for t in log_probs[rows, cols].argmax(-1).tolist()
                    ],
                    "log_p": log_probs[rows, cols, target].double().numpy(),
                }
            )
        )
    predictions = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame()
    regions = {}
    for i in predictions["sequence"].unique() if len(predictions) else []:
        regions[i] = motif_regions(motifs[i], min(len(sequences[i]), max_length))
    predictions["region"] = [
        regions[s][p] for s, p in zip(predictions["sequence"], predictions["position"], strict=True)
    ]
    return predictions[PREDICTION_COLUMNS]


def pretrain_step(input, output, settings: PretrainSettings, wildcards) -> None:
    """The pretrain step: a tiny ESM-2 (or the checkpoint `input.checkpoint`, for continued
    pretraining) trained as a masked LM on the corpus's train part; its checkpoint, the
    logged history and the held-out masked predictions."""
    seed = settings.seed
    corpus = pd.read_csv(input.corpus, sep="\t", keep_default_na=False)
    train = corpus[corpus["part"] == "train"]
    heldout = corpus[corpus["part"] == "heldout"].reset_index(drop=True)
    if getattr(input, "checkpoint", None):
        esm2 = load_esm_checkpoint(input.checkpoint)
    else:
        esm2 = build_tiny_esm2(
            settings.num_layers, settings.embed_dim, settings.attention_heads, seed
        )
    device = pick_device(settings.device)
    log.info(
        "masked-LM pretraining of %s on %d sequences (%d held out), %d steps of %d, %s",
        esm_config(esm2),
        len(train),
        len(heldout),
        settings.steps,
        settings.batch_size,
        device,
    )
    history = train_mlm(
        esm2,
        list(train["sequence"]),
        steps=settings.steps,
        batch_size=settings.batch_size,
        lr=settings.lr,
        weight_decay=settings.weight_decay,
        warmup_steps=settings.warmup_steps,
        max_length=settings.max_length,
        seed=seed,
        device=device,
    )
    predictions = masked_predictions(esm2, heldout, seed=seed, max_length=settings.max_length)
    use_fused_attention(esm2, False)
    save_esm_checkpoint(esm2.cpu(), output.checkpoint)
    write_tsv(pd.DataFrame(history), output.history)
    write_tsv(predictions, output.predictions)
    write_json({"seed": seed, "esm_config": esm_config(esm2)}, output.info)
