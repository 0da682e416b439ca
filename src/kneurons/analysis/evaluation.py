"""Every pruned model of one seed, evaluated in one process (one model load).

Selections, each evaluated on the test split (per-sequence correctness -> accuracy with a 95%
percentile-bootstrap interval over test sequences):
- `full`: the unpruned model;
- `scored`: each method's global top-r units (or weights) at each retention ratio r;
- `random`: `random_draws` uniform selections of the same size per ratio (nested over ratios
  within a draw, like a method's);
- `matched`: per method and ratio, `control_draws` random selections with exactly the method's
  per-(layer, module) kept counts, so "method beats matched random" is about which units, not
  which module types;
- within-module pruning (scope = a module type M): the top-r of M's units by each method (and
  `control_draws` random draws), every other module intact.
Single models (full, scored) get the interval; draws are summarised by their mean per seed.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch

from kneurons.analysis import selection, stats
from kneurons.data.tables import read_labelled
from kneurons.io import write_tsv
from kneurons.model import train
from kneurons.model.esm import EnzymeClassifier, esm_config, load_classifier, pick_device
from kneurons.model.units import GLOBAL
from kneurons.settings import SweepSettings

log = logging.getLogger(__name__)

# selections that are one model each (the others are draws, reported by their mean)
SINGLE_MODELS = ("full", "scored")
RESULT_COLUMNS = [
    "seed",
    "selection",
    "method",
    "scope",
    "retention",
    "draw",
    "n_total",
    "n_kept",
    "n_effective",
    "accuracy",
    "ci_low",
    "ci_high",
    "macro_f1",
    "balanced_accuracy",
    "balanced_ci_low",
    "balanced_ci_high",
]
KEPT_COLUMNS = [
    "seed",
    "method",
    "retention",
    "layer",
    "module",
    "n_neurons",
    "n_kept",
    "n_effective",
]


@dataclass(frozen=True)
class Selection:
    """One pruned model to evaluate: `selected` has the scored rows and a boolean `kept`."""

    selection: str
    method: str
    scope: str
    retention: float
    draw: int
    selected: pd.DataFrame | None


def random_scores(units: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """`units` with uniform random scores: a random ranking for `selection.select`."""
    return units.assign(score=rng.random(len(units)))


def matched_random(selected: pd.DataFrame, rng: np.random.Generator) -> pd.DataFrame:
    """A random selection with exactly `selected`'s kept count in every (layer, module) cell."""
    cells = [selected["layer"], selected["module"]]
    quota = selected["kept"].groupby(cells).transform("sum").to_numpy()
    rank = (
        pd.Series(rng.random(len(selected)), index=selected.index)
        .groupby(cells)
        .rank(method="first")
    )
    return selected.assign(kept=rank.to_numpy() <= quota)


def selections(
    scores: Mapping[str, pd.DataFrame], settings: SweepSettings, seed: int
) -> Iterator[Selection]:
    """Every pruned model of one seed, in a fixed order (results do not depend on the order:
    each random draw has its own generator keyed by (seed, purpose, draw))."""
    yield Selection("full", "full", GLOBAL, 1.0, 0, None)
    units = next(iter(scores.values()))[_unit_columns(next(iter(scores.values())))]
    for method, table in scores.items():
        for r in settings.retention_ratios:
            chosen = selection.select(table, r, settings.normalize)
            yield Selection("scored", method, GLOBAL, r, 0, chosen)
            for draw in range(settings.control_draws):
                rng = np.random.default_rng([seed, 1, _stable_id(method), _ratio_id(r), draw])
                yield Selection("matched", method, GLOBAL, r, draw, matched_random(chosen, rng))
    for draw in range(settings.random_draws):
        ranking = random_scores(units, np.random.default_rng([seed, 2, draw]))
        for r in settings.retention_ratios:
            yield Selection("random", "random", GLOBAL, r, draw, selection.select(ranking, r))
    modules = list(dict.fromkeys(units["module"]))
    for module in modules:
        in_module = units["module"] == module
        for r in settings.module_ratios:
            for method, table in scores.items():
                chosen = selection.select(table[in_module.to_numpy()], r, settings.normalize)
                yield Selection("scored", method, module, r, 0, chosen)
            for draw in range(settings.control_draws):
                rng = np.random.default_rng([seed, 3, _stable_id(module), _ratio_id(r), draw])
                ranking = random_scores(units[in_module], rng)
                yield Selection("random", "random", module, r, draw, selection.select(ranking, r))


def _unit_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in ("layer", "module", "unit", "input") if c in table.columns]


def _stable_id(name: str) -> int:
    """A process-independent integer for a name (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")


def _ratio_id(ratio: float) -> int:
    return int(round(float(ratio) * 1_000_000))


def effective_counts(
    selected: pd.DataFrame, masks: Mapping, config: Mapping
) -> dict[tuple[int, str], int]:
    """Per (layer, module): kept units (or weights) that can affect the output (`stats`)."""
    effective = stats.effective_masks(
        {key: mask.numpy() for key, mask in masks.items()},
        num_layers=config["num_layers"],
        embed_dim=config["embed_dim"],
        heads=config["attention_heads"],
        ffn_dim=config["ffn_embed_dim"],
    )
    return {key: int(mask.sum()) for key, mask in effective.items()}


def evaluate_seed(
    model: EnzymeClassifier,
    test: pd.DataFrame,
    classes: Sequence[int],
    scores: Mapping[str, pd.DataFrame],
    settings: SweepSettings,
    *,
    seed: int,
    max_length: int | None = None,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """(results, kept): one results row per pruned model (RESULT_COLUMNS) and, for each method's
    global selections, its kept and effective counts per (layer, module) (KEPT_COLUMNS)."""
    index = {c: k for k, c in enumerate(classes)}
    y_true = np.array([index[c] for c in test["ec_class"]])
    sequences = list(test["sequence"])
    config = esm_config(model.esm)
    config.setdefault("ffn_embed_dim", model.esm.layers[0].fc1.out_features)
    rows, kept_rows = [], []
    batches = train.token_batches(sequences, batch_size=settings.batch_size, max_length=max_length)
    planned = _count(scores, settings)
    started, done = time.monotonic(), 0
    for item in selections(scores, settings, seed):
        masks = selection.keep_masks(item.selected) if item.selected is not None else {}
        with torch.no_grad():
            probs = train.predict_proba(model, sequences, keep=masks, batches=batches)
        predicted = probs.argmax(-1).numpy()
        correct = (predicted == y_true).astype(float)
        metrics = train.classification_metrics(y_true, predicted, classes)
        low = high = b_low = b_high = np.nan
        if item.selection in SINGLE_MODELS:  # a draw's interval is never reported: its mean is
            low, high = stats.bootstrap_ci(correct, n_boot=settings.bootstrap, seed=seed)
            b_low, b_high = stats.bootstrap_balanced_ci(
                correct, y_true, n_boot=settings.bootstrap, seed=seed
            )
        row = {
            "seed": seed,
            "selection": item.selection,
            "method": item.method,
            "scope": item.scope,
            "retention": item.retention,
            "draw": item.draw,
            "accuracy": metrics["accuracy"],
            "ci_low": low,
            "ci_high": high,
            "macro_f1": metrics["macro_f1"],
            "balanced_accuracy": metrics["balanced_accuracy"],
            "balanced_ci_low": b_low,
            "balanced_ci_high": b_high,
        }
        if item.selected is None:
            row.update(n_total=np.nan, n_kept=np.nan, n_effective=np.nan)
        else:
            row.update(n_total=len(item.selected), n_kept=int(item.selected["kept"].sum()))
            row["n_effective"] = np.nan
            if item.scope == GLOBAL:
                effective = effective_counts(item.selected, masks, config)
                row["n_effective"] = sum(effective.values())
                if item.selection == "scored":
                    for cell in selection.kept_counts(item.selected):
                        cell_key = (cell["layer"], cell["module"])
                        kept_rows.append(
                            {
                                "seed": seed,
                                "method": item.method,
                                "retention": item.retention,
                                **cell,
                                "n_effective": effective[cell_key],
                            }
                        )
        rows.append(row)
        done += 1
        if done % 25 == 0 or done == planned:
            elapsed = time.monotonic() - started
            log.info(
                "%d/%d pruned models (%s %s at %.4g: accuracy %.3f); %.1f models/s",
                done,
                planned,
                item.selection,
                item.method,
                item.retention,
                row["accuracy"],
                done / max(elapsed, 1e-9),
            )
    results = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    return results, pd.DataFrame(kept_rows, columns=KEPT_COLUMNS)


def _count(scores: Mapping, settings: SweepSettings) -> int:
    n_ratios, n_module = len(settings.retention_ratios), len(settings.module_ratios)
    n_modules = next(iter(scores.values()))["module"].nunique()
    per_method = n_ratios * (1 + settings.control_draws) + n_modules * n_module
    return (
        1
        + len(scores) * per_method
        + settings.random_draws * n_ratios
        + n_modules * n_module * settings.control_draws
    )


def evaluate(input, output, settings: SweepSettings, wildcards) -> None:
    """The evaluate step: every pruned model of one seed (methods, random and matched-random
    controls, within-module pruning) on the test split, in one process."""
    seed = int(wildcards["seed"])
    device = pick_device(settings.device)
    classifier, meta = load_classifier(input.model, device)
    scores = {
        method: pd.read_csv(path, sep="\t")
        for method, path in zip(settings.methods, input.scores, strict=True)
    }
    test = read_labelled(input.split).query("split == 'test'")
    log.info("evaluating on %d test sequences (%s)", len(test), device)
    results, kept = evaluate_seed(
        classifier,
        test,
        meta["classes"],
        scores,
        settings,
        seed=seed,
        max_length=meta["max_length"],
    )
    granularity = "weight" if "input" in next(iter(scores.values())).columns else "unit"
    write_tsv(results.assign(granularity=granularity), output.results)
    write_tsv(kept, output.kept)
