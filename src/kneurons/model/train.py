"""Fine-tuning ESM-2 with a linear head on EC classes; evaluation of a (possibly pruned) model."""

from __future__ import annotations

import copy
import logging
import math
import random
import time
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from torch import nn

from kneurons.data.tables import read_labelled
from kneurons.errors import UserError
from kneurons.io import write_json
from kneurons.model.esm import (
    EnzymeClassifier,
    ablated,
    autocast,
    encode,
    load_esm_checkpoint,
    pick_device,
    save_classifier,
)
from kneurons.progress import format_seconds, progress
from kneurons.settings import FinetuneSettings

log = logging.getLogger(__name__)

CLASS_WEIGHTS = ("none", "balanced")
PRECISIONS = ("auto", "fp32", "bf16")


def seed_everything(seed: int) -> None:
    """Seed Python's, numpy's and torch's global generators."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def batches(
    n: int, batch_size: int, generator: torch.Generator | None = None
) -> list[torch.Tensor]:
    """Index batches over n items: shuffled by `generator` if given, else in order."""
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    return list(order.split(batch_size))


def token_lengths(sequences: Sequence[str], max_length: int | None = None) -> list[int]:
    """Tokens per sequence as `encode` makes them: residues (cut at `max_length`) plus BOS/EOS."""
    return [min(len(s), max_length) + 2 if max_length else len(s) + 2 for s in sequences]


def token_budget_batches(
    lengths: Sequence[int], max_tokens: int, generator: torch.Generator | None = None
) -> list[torch.Tensor]:
    """Index batches whose padded size (items x longest, in tokens) is at most `max_tokens`.

    Items are sorted by length and cut greedily; an item longer than the budget gets a batch of
    its own. With `generator`, ties in length are broken and the batch order shuffled by it
    (deterministic for a seed); without, batches come shortest first, ties by index.
    """
    n = len(lengths)
    order = torch.randperm(n, generator=generator) if generator is not None else torch.arange(n)
    # stable sort: equal lengths keep the (shuffled) order, so batches vary between epochs
    order = sorted(order.tolist(), key=lambda i: lengths[i])
    chunks: list[list[int]] = []
    for i in order:
        # sorted ascending, so the newest item is the longest: padded size = count x its length
        if chunks and (len(chunks[-1]) + 1) * lengths[i] <= max_tokens:
            chunks[-1].append(i)
        else:
            chunks.append([i])
    if generator is not None:
        chunks = [chunks[k] for k in torch.randperm(len(chunks), generator=generator).tolist()]
    return [torch.tensor(c, dtype=torch.long) for c in chunks]


def class_weights(labels: torch.Tensor, n_classes: int, mode: str) -> torch.Tensor | None:
    """Cross-entropy class weights from train labels (N,): None for `none`; `balanced` is
    n / (n_classes x n_c) (a class absent from `labels` gets 0: it is never a target)."""
    if mode == "none":
        return None
    if mode != "balanced":
        raise UserError(f"finetune.class_weights: unknown {mode!r}; expected none or balanced")
    counts = torch.bincount(labels, minlength=n_classes).double()
    weights = len(labels) / (n_classes * counts.clamp(min=1))
    return weights.masked_fill(counts == 0, 0).float()


def resolve_precision(precision: str, device: torch.device) -> str:
    """`fp32` or `bf16`: `auto` is bf16 on a CUDA device that supports it, else fp32."""
    if precision not in PRECISIONS:
        raise UserError(f"finetune.precision: unknown {precision!r}; expected auto, fp32 or bf16")
    if precision == "auto":
        cuda = device.type == "cuda" and torch.cuda.is_bf16_supported()
        return "bf16" if cuda else "fp32"
    return precision


def freeze_lower_layers(model: EnzymeClassifier, train_layers: int | None) -> int:
    """Train only the top `train_layers` transformer layers, the final layer norm and the head:
    everything else gets requires_grad False. None or 0 trains all. Returns the number of
    trainable parameters."""
    n_layers = model.num_layers
    if train_layers and not 0 < train_layers <= n_layers:
        raise UserError(
            f"finetune.train_layers: {train_layers} is more than the model's {n_layers} layers"
        )
    if train_layers:
        model.esm.requires_grad_(False)
        for layer in model.esm.layers[n_layers - train_layers :]:
            layer.requires_grad_(True)
        model.esm.emb_layer_norm_after.requires_grad_(True)
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def token_batches(
    sequences: Sequence[str],
    *,
    batch_size: int = 64,
    max_length: int | None = None,
    max_tokens: int = 0,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(indices, tokens) batches of `sequences`, length-sorted (they pad less): `batch_size`
    sequences each, or at most `max_tokens` padded tokens when > 0 (`token_budget_batches`).
    Encoded once, they serve every pruned model of an evaluation."""
    if max_tokens:
        chunks = token_budget_batches(token_lengths(sequences, max_length), max_tokens)
    else:
        order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
        chunks = torch.tensor(order).split(batch_size)
    return [
        (torch.as_tensor(chunk), encode([sequences[i] for i in chunk], max_length))
        for chunk in chunks
    ]


@torch.no_grad()
def predict_proba(
    model: EnzymeClassifier,
    sequences: Sequence[str],
    *,
    batch_size: int = 64,
    max_length: int | None = None,
    keep: Mapping | None = None,
    max_tokens: int = 0,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]] | None = None,
) -> torch.Tensor:
    """Class probabilities (N, C), in input order; `keep` ablates every unit marked False.
    `batches`: `token_batches` of `sequences` made beforehand (else made here). One model of
    `predict_proba_models`."""
    if batches is None:
        batches = token_batches(
            sequences, batch_size=batch_size, max_length=max_length, max_tokens=max_tokens
        )
    masks = {key: mask[None] for key, mask in (keep or {}).items()}
    return predict_proba_models(model, masks, 1, batches)[0]


def token_budget(max_tokens: int, model: EnzymeClassifier) -> int:
    """Padded tokens per forward pass of many pruned models (`sweep.max_tokens`,
    `knowledge.max_tokens`): a positive value as given (1: one model per pass); 0 (auto) is one
    model per pass on CPU, where the passes are compute-bound and sharing them gains nothing
    (benchmarks/sweep_benchmark.py), and on CUDA as many tokens as fill a quarter of the free
    memory at 64 x embed_dim bytes per token (16 float32 activations of the model's width)."""
    if max_tokens > 0:
        return max_tokens
    device = next(model.parameters()).device
    if device.type != "cuda":
        return 1
    free, _ = torch.cuda.mem_get_info(device)
    return max(1, int(free // 4 // (64 * model.esm.embed_dim)))


def models_per_pass(
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]], max_tokens: int, per_weight: bool
) -> int:
    """How many pruned models share a forward pass: as many copies of the largest batch as fit
    in `max_tokens` padded tokens (at least 1); per-weight masks run one model per pass."""
    if per_weight or not max_tokens:
        return 1
    return max(1, max_tokens // max(tokens.numel() for _, tokens in batches))


@torch.no_grad()
def predict_proba_models(
    model: EnzymeClassifier,
    masks: Mapping[tuple[int, str], torch.Tensor],
    n_models: int,
    batches: Sequence[tuple[torch.Tensor, torch.Tensor]],
    *,
    max_tokens: int = 0,
    on_pass=None,
) -> torch.Tensor:
    """Class probabilities (n_models, N, C) of `n_models` pruned models on the sequences of
    `batches` (`token_batches`: N sequences, input order restored), several models per forward
    pass: `masks` {(layer, module): (n_models, units) or (n_models, units, inputs)} (a module
    not in `masks` is intact). Each copy of a batch gets its model's masks (`ablated`), so the
    probabilities are those of one model per pass (bitwise on CPU, where the kernels compute
    each row of a batch independently of the others). `on_pass(done)` is called after each
    group of models."""
    model.eval()
    device = next(model.parameters()).device
    n_sequences = sum(len(chunk) for chunk, _ in batches)
    per_weight = any(mask.ndim == 3 for mask in masks.values())
    group = models_per_pass(batches, max_tokens, per_weight)
    probs = torch.empty(n_models, n_sequences, model.head.out_features)
    for start in range(0, n_models, group):
        stop = min(start + group, n_models)
        # a module every model of the group keeps whole needs no hook (x 1 changes nothing)
        keep = {key: mask[start:stop] for key, mask in masks.items()}
        keep = {key: mask for key, mask in keep.items() if not bool((mask == 1).all())}
        with ablated(model, keep, models=stop - start):
            for chunk, tokens in batches:
                logits = model(tokens.to(device).repeat(stop - start, 1))
                probs[start:stop, chunk] = (
                    logits.float().softmax(-1).cpu().unflatten(0, (stop - start, -1))
                )
        if on_pass is not None:
            on_pass(stop)
    return probs


def classification_metrics(
    y_true: Sequence[int], y_pred: Sequence[int], classes: Sequence[int]
) -> dict:
    """Accuracy, balanced accuracy, macro-F1 and per-class accuracy (recall); labels are class
    indices. Balanced accuracy is the mean recall over the classes present in `y_true`."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    f1s, per_class, recalls = [], {}, []
    for k, c in enumerate(classes):
        tp = int(((y_pred == k) & (y_true == k)).sum())
        n_true, n_pred = int((y_true == k).sum()), int((y_pred == k).sum())
        precision = tp / n_pred if n_pred else 0.0
        recall = tp / n_true if n_true else 0.0
        f1s.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
        per_class[str(c)] = recall
        if n_true:
            recalls.append(recall)
    return {
        "accuracy": float((y_true == y_pred).mean()) if len(y_true) else 0.0,
        "balanced_accuracy": float(np.mean(recalls)) if recalls else 0.0,
        "macro_f1": float(np.mean(f1s)),
        "per_class_accuracy": per_class,
        "n": int(len(y_true)),
    }


def evaluate(
    model: EnzymeClassifier,
    table: pd.DataFrame,
    classes: Sequence[int],
    *,
    batch_size: int = 64,
    max_length: int | None = None,
    keep: Mapping | None = None,
    max_tokens: int = 0,
) -> dict:
    """Metrics of `model` on `table` (columns `sequence`, `ec_class`), optionally ablated."""
    index = {c: k for k, c in enumerate(classes)}
    y_true = [index[c] for c in table["ec_class"]]
    probs = predict_proba(
        model,
        list(table["sequence"]),
        batch_size=batch_size,
        max_length=max_length,
        keep=keep,
        max_tokens=max_tokens,
    )
    metrics = classification_metrics(y_true, probs.argmax(-1).tolist(), classes)
    metrics["loss"] = float(
        nn.functional.nll_loss(probs.clamp_min(1e-12).log(), torch.tensor(y_true))
    )
    return metrics


def warmup_cosine(optimizer, warmup: int, total: int) -> torch.optim.lr_scheduler.LambdaLR:
    """Linear warm-up over `warmup` steps, then cosine decay to zero at `total`."""

    def factor(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        progress = (step - warmup) / max(1, total - warmup)
        return 0.5 * (1 + math.cos(math.pi * min(1.0, progress)))

    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def _optimiser(
    model: EnzymeClassifier,
    lr: float,
    head_lr: float,
    weight_decay: float,
    steps_per_epoch: int,
    epochs: int,
) -> tuple[torch.optim.AdamW, torch.optim.lr_scheduler.LambdaLR]:
    """AdamW with a separate learning rate for the new head; one-epoch warm-up, cosine decay.
    Frozen parameters (requires_grad False) are left out."""
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in model.esm.parameters() if p.requires_grad], "lr": lr},
            {"params": model.head.parameters(), "lr": head_lr},
        ],
        weight_decay=weight_decay,
    )
    scheduler = warmup_cosine(optimizer, warmup=steps_per_epoch, total=epochs * steps_per_epoch)
    return optimizer, scheduler


def _train_epoch(
    model: EnzymeClassifier,
    optimizer: torch.optim.Optimizer,
    scheduler: torch.optim.lr_scheduler.LRScheduler,
    chunks: list[torch.Tensor],
    sequences: Sequence[str],
    labels: torch.Tensor,
    max_length: int,
    device: torch.device,
    epoch: int,
    weight: torch.Tensor | None = None,
    precision: str = "fp32",
) -> tuple[float, int]:
    """One epoch over index batches `chunks` ((B,) each; labels (N,)): (summed loss, n correct).
    `weight`: cross-entropy class weights (C,); `precision` bf16 runs the forward in autocast."""
    model.train()
    total_loss, correct = 0.0, 0
    weight = None if weight is None else weight.to(device)
    for chunk in progress(chunks, f"epoch {epoch}", summary=False):
        tokens = encode([sequences[i] for i in chunk], max_length).to(device)
        target = labels[chunk].to(device)
        with autocast(device, precision):
            logits = model(tokens)
        if logits.dtype == torch.bfloat16:
            logits = logits.float()  # the loss in float32
        loss = nn.functional.cross_entropy(logits, target, weight=weight)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        scheduler.step()
        total_loss += loss.item() * len(chunk)
        correct += int((logits.argmax(-1) == target).sum())
    return total_loss, correct


def _log_epoch(row: dict, epochs: int, n_train: int, train_seconds: float, elapsed: float) -> None:
    """One progress line per epoch: the history row, throughput and the time left."""
    epoch = row["epoch"]
    per_epoch = elapsed / epoch
    log.info(
        "epoch %d/%d train_loss %.4f train_acc %.3f val_loss %.4f val_acc %.3f "
        "| %.1f sequences/s, %s per epoch, ETA %s",
        epoch,
        epochs,
        row["train_loss"],
        row["train_accuracy"],
        row["val_loss"],
        row["val_accuracy"],
        n_train / train_seconds if train_seconds > 0 else float("inf"),
        format_seconds(per_epoch),
        format_seconds(per_epoch * (epochs - epoch)),
    )


def _final_metrics(
    seed: int,
    classes: list[int],
    test: pd.DataFrame,
    best: dict,
    history: list[dict],
    test_metrics: dict,
    device: torch.device,
) -> dict:
    """The fine-tuning metrics (metrics.json): baselines, history, best epoch and test metrics."""
    counts = test["ec_class"].value_counts()
    return {
        "seed": seed,
        "classes": classes,
        "chance": 1 / len(classes),
        "majority_baseline": float(counts.max() / counts.sum()),
        "best_epoch": best["epoch"],
        "history": history,
        "validation": {
            "accuracy": best["val_accuracy"],
            "balanced_accuracy": best["val_balanced_accuracy"],
            "loss": best["val_loss"],
        },
        "test": test_metrics,
        "device": str(device),
    }


def finetune(
    checkpoint: str,
    split: pd.DataFrame,
    settings: FinetuneSettings,
    *,
    seed: int,
    device: torch.device,
) -> tuple[EnzymeClassifier, list[int], dict]:
    """Train the model (or its top `settings.train_layers` layers); keep the epoch with the
    best validation accuracy (first on ties).

    `class_weights` balanced weights the cross-entropy by n / (n_classes x n_c) of the train
    split; `max_tokens` > 0 batches by padded tokens instead of `batch_size` sequences;
    `precision` (auto, fp32, bf16) is that of the training forward and backward passes.
    Validation and test metrics are computed in float32, as the evaluate step does.
    """
    epochs, lr, head_lr = settings.epochs, settings.lr, settings.head_lr
    weight_decay = settings.weight_decay
    batch_size, max_length, max_tokens = (
        settings.batch_size,
        settings.max_length,
        settings.max_tokens,
    )
    precision, train_layers = settings.precision, settings.train_layers
    seed_everything(seed)
    classes = sorted(int(c) for c in split["ec_class"].unique())
    index = {c: k for k, c in enumerate(classes)}
    train = split[split["split"] == "train"].reset_index(drop=True)
    val = split[split["split"] == "validation"].reset_index(drop=True)
    test = split[split["split"] == "test"].reset_index(drop=True)

    model = EnzymeClassifier(load_esm_checkpoint(checkpoint), len(classes)).to(device)
    n_trainable = freeze_lower_layers(model, train_layers)
    labels = torch.tensor([index[c] for c in train["ec_class"]])
    sequences = list(train["sequence"])
    lengths = token_lengths(sequences, max_length)
    if max_tokens:
        # the batch sizes depend only on the sorted lengths, so every epoch has this many
        steps_per_epoch = len(token_budget_batches(lengths, max_tokens))
    else:
        steps_per_epoch = -(-len(train) // batch_size)
    optimizer, scheduler = _optimiser(model, lr, head_lr, weight_decay, steps_per_epoch, epochs)
    weight = class_weights(labels, len(classes), settings.class_weights)
    precision = resolve_precision(precision, device)
    generator = torch.Generator().manual_seed(seed)
    history, best, best_state = [], None, None
    log.info(
        "fine-tuning on %d train / %d validation sequences, %d classes",
        len(train),
        len(val),
        len(classes),
    )
    log.info(
        "trainable parameters: %d of %d (%s); precision %s; %s; class weights %s",
        n_trainable,
        sum(p.numel() for p in model.parameters()),
        f"top {train_layers} of {model.num_layers} layers" if train_layers else "all layers",
        precision,
        f"batches of at most {max_tokens} tokens" if max_tokens else f"batch size {batch_size}",
        "none"
        if weight is None
        else {c: round(w, 3) for c, w in zip(classes, weight.tolist(), strict=True)},
    )
    started = time.monotonic()
    for epoch in range(1, epochs + 1):
        epoch_start = time.monotonic()
        if max_tokens:
            chunks = token_budget_batches(lengths, max_tokens, generator)
        else:
            chunks = batches(len(train), batch_size, generator)
        total_loss, correct = _train_epoch(
            model,
            optimizer,
            scheduler,
            chunks,
            sequences,
            labels,
            max_length,
            device,
            epoch,
            weight,
            precision,
        )
        train_seconds = time.monotonic() - epoch_start
        val_metrics = evaluate(
            model,
            val,
            classes,
            batch_size=batch_size,
            max_length=max_length,
            max_tokens=max_tokens,
        )
        row = {
            "epoch": epoch,
            "train_loss": total_loss / len(train),
            "train_accuracy": correct / len(train),
            "val_loss": val_metrics["loss"],
            "val_accuracy": val_metrics["accuracy"],
            "val_balanced_accuracy": val_metrics["balanced_accuracy"],
        }
        history.append(row)
        _log_epoch(row, epochs, len(train), train_seconds, time.monotonic() - started)
        if best is None or row["val_accuracy"] > best["val_accuracy"]:
            best, best_state = row, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    test_metrics = evaluate(
        model, test, classes, batch_size=batch_size, max_length=max_length, max_tokens=max_tokens
    )
    metrics = _final_metrics(seed, classes, test, best, history, test_metrics, device)
    metrics["training"] = {
        "class_weights": None if weight is None else weight.tolist(),
        "max_tokens": max_tokens,
        "precision": precision,
        "train_layers": train_layers or model.num_layers,
        "trainable_parameters": n_trainable,
    }
    log.info(
        "best epoch %d: test accuracy %.4f balanced accuracy %.4f macro-F1 %.4f",
        best["epoch"],
        test_metrics["accuracy"],
        test_metrics["balanced_accuracy"],
        test_metrics["macro_f1"],
    )
    return model, classes, metrics


def finetune_step(input, output, settings: FinetuneSettings, wildcards) -> None:
    """The finetune step: ESM-2 plus a head for one seed; write the model and its metrics."""
    classifier, classes, metrics = finetune(
        input.checkpoint,
        read_labelled(input.split),
        settings,
        seed=int(wildcards["seed"]),
        device=pick_device(settings.device),
    )
    save_classifier(classifier, classes, settings.max_length, output.model)
    write_json(metrics, output.metrics)
