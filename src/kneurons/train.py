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

from kneurons.model import EnzymeClassifier, ablated, encode, load_esm_checkpoint
from kneurons.progress import format_seconds, progress

log = logging.getLogger(__name__)


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


@torch.no_grad()
def predict_proba(
    model: EnzymeClassifier,
    sequences: Sequence[str],
    *,
    batch_size: int = 64,
    max_length: int | None = None,
    keep: Mapping | None = None,
) -> torch.Tensor:
    """Class probabilities (N, C); `keep` ablates every unit marked False."""
    model.eval()
    device = next(model.parameters()).device
    # Length-sorted batches pad less; results are put back in input order.
    order = sorted(range(len(sequences)), key=lambda i: len(sequences[i]))
    probs = torch.empty(len(sequences), model.head.out_features)
    with ablated(model, keep or {}):
        for chunk in torch.tensor(order).split(batch_size):
            tokens = encode([sequences[i] for i in chunk], max_length).to(device)
            probs[chunk] = model(tokens).float().softmax(-1).cpu()
    return probs


def classification_metrics(
    y_true: Sequence[int], y_pred: Sequence[int], classes: Sequence[int]
) -> dict:
    """Accuracy, macro-F1 and per-class accuracy (recall); labels are class indices."""
    y_true, y_pred = np.asarray(y_true), np.asarray(y_pred)
    f1s, per_class = [], {}
    for k, c in enumerate(classes):
        tp = int(((y_pred == k) & (y_true == k)).sum())
        n_true, n_pred = int((y_true == k).sum()), int((y_pred == k).sum())
        precision = tp / n_pred if n_pred else 0.0
        recall = tp / n_true if n_true else 0.0
        f1s.append(2 * precision * recall / (precision + recall) if precision + recall else 0.0)
        per_class[str(c)] = recall
    return {
        "accuracy": float((y_true == y_pred).mean()) if len(y_true) else 0.0,
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
) -> dict:
    """Metrics of `model` on `table` (columns `sequence`, `ec_class`), optionally ablated."""
    index = {c: k for k, c in enumerate(classes)}
    y_true = [index[c] for c in table["ec_class"]]
    probs = predict_proba(
        model, list(table["sequence"]), batch_size=batch_size, max_length=max_length, keep=keep
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
    """AdamW with a separate learning rate for the new head; one-epoch warm-up, cosine decay."""
    optimizer = torch.optim.AdamW(
        [
            {"params": model.esm.parameters(), "lr": lr},
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
) -> tuple[float, int]:
    """One epoch over index batches `chunks` ((B,) each; labels (N,)): (summed loss, n correct)."""
    model.train()
    total_loss, correct = 0.0, 0
    for chunk in progress(chunks, f"epoch {epoch}", summary=False):
        tokens = encode([sequences[i] for i in chunk], max_length).to(device)
        target = labels[chunk].to(device)
        logits = model(tokens)
        loss = nn.functional.cross_entropy(logits, target)
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
        "validation": {"accuracy": best["val_accuracy"], "loss": best["val_loss"]},
        "test": test_metrics,
        "device": str(device),
    }


def finetune(
    checkpoint: str,
    split: pd.DataFrame,
    *,
    seed: int,
    epochs: int,
    lr: float,
    head_lr: float,
    weight_decay: float,
    batch_size: int,
    max_length: int,
    device: torch.device,
) -> tuple[EnzymeClassifier, list[int], dict]:
    """Train the whole model; keep the epoch with the best validation accuracy (first on ties)."""
    seed_everything(seed)
    classes = sorted(int(c) for c in split["ec_class"].unique())
    index = {c: k for k, c in enumerate(classes)}
    train = split[split["split"] == "train"].reset_index(drop=True)
    val = split[split["split"] == "validation"].reset_index(drop=True)
    test = split[split["split"] == "test"].reset_index(drop=True)

    model = EnzymeClassifier(load_esm_checkpoint(checkpoint), len(classes)).to(device)
    steps_per_epoch = -(-len(train) // batch_size)
    optimizer, scheduler = _optimiser(model, lr, head_lr, weight_decay, steps_per_epoch, epochs)
    labels = torch.tensor([index[c] for c in train["ec_class"]])
    sequences = list(train["sequence"])
    generator = torch.Generator().manual_seed(seed)
    history, best, best_state = [], None, None
    log.info(
        "fine-tuning on %d train / %d validation sequences, %d classes",
        len(train),
        len(val),
        len(classes),
    )
    started = time.monotonic()
    for epoch in range(1, epochs + 1):
        epoch_start = time.monotonic()
        chunks = batches(len(train), batch_size, generator)
        total_loss, correct = _train_epoch(
            model, optimizer, scheduler, chunks, sequences, labels, max_length, device, epoch
        )
        train_seconds = time.monotonic() - epoch_start
        val_metrics = evaluate(model, val, classes, batch_size=batch_size, max_length=max_length)
        row = {
            "epoch": epoch,
            "train_loss": total_loss / len(train),
            "train_accuracy": correct / len(train),
            "val_loss": val_metrics["loss"],
            "val_accuracy": val_metrics["accuracy"],
        }
        history.append(row)
        _log_epoch(row, epochs, len(train), train_seconds, time.monotonic() - started)
        if best is None or row["val_accuracy"] > best["val_accuracy"]:
            best, best_state = row, copy.deepcopy(model.state_dict())
    model.load_state_dict(best_state)
    test_metrics = evaluate(model, test, classes, batch_size=batch_size, max_length=max_length)
    metrics = _final_metrics(seed, classes, test, best, history, test_metrics, device)
    log.info(
        "best epoch %d: test accuracy %.4f macro-F1 %.4f",
        best["epoch"],
        test_metrics["accuracy"],
        test_metrics["macro_f1"],
    )
    return model, classes, metrics
