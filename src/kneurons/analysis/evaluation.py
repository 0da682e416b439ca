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
The selections are rows of one boolean matrix (`selections`); the models run several to a
forward pass (`sweep.max_tokens`), with the same predictions as one at a time.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
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
from kneurons.progress import model_progress
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
class Plan:
    """Every pruned model of one seed as arrays over the rows of the unit table `units`.

    labels: one row per model (selection, method, scope, retention, draw), in the results'
    order. kept: (models, rows) bool; a row outside a model's scope is kept (intact).
    scopes: the rows each scope prunes (`global`: all rows; a module type: its rows).
    """

    units: pd.DataFrame
    labels: pd.DataFrame
    kept: np.ndarray
    scopes: dict[str, np.ndarray]


def selections(scores: Mapping[str, pd.DataFrame], settings: SweepSettings, seed: int) -> Plan:
    """Every pruned model of one seed, built with one sort per ranking (results do not depend
    on the order: each random draw has its own generator keyed by (seed, purpose, draw))."""
    units = _common_units(scores)
    n = len(units)
    cell, _ = selection.cell_ids(units)
    ranked = {m: selection.ranking_scores(t, settings.normalize) for m, t in scores.items()}
    labels, kept = [("full", "full", GLOBAL, 1.0, 0)], [np.ones((1, n), dtype=bool)]
    ratios = settings.retention_ratios
    for method in scores:
        top = selection.top_fractions(selection.ranking_order(units, ranked[method]), ratios, n)
        for r, chosen in zip(ratios, top, strict=True):
            labels.append(("scored", method, GLOBAL, r, 0))
            kept.append(chosen[None])
            for draw in range(settings.control_draws):
                rng = np.random.default_rng([seed, 1, _stable_id(method), _ratio_id(r), draw])
                labels.append(("matched", method, GLOBAL, r, draw))
                kept.append(selection.matched_random(chosen, cell, rng.random(n))[None])
    for draw in range(settings.random_draws):
        ranking = np.random.default_rng([seed, 2, draw]).random(n)
        kept.append(selection.top_fractions(selection.ranking_order(units, ranking), ratios, n))
        labels += [("random", "random", GLOBAL, r, draw) for r in ratios]
    scopes = {GLOBAL: np.arange(n)}
    for module in dict.fromkeys(units["module"]):
        rows = scopes[module] = np.flatnonzero(units["module"].to_numpy() == module)
        for r in settings.module_ratios:
            for method in scores:
                order = selection.ranking_order(units, ranked[method], rows)
                labels.append(("scored", method, module, r, 0))
                kept.append(_within(rows, selection.top_fractions(order, [r], n, len(rows))))
            for draw in range(settings.control_draws):
                rng = np.random.default_rng([seed, 3, _stable_id(module), _ratio_id(r), draw])
                ranking = np.zeros(n)
                ranking[rows] = rng.random(len(rows))
                order = selection.ranking_order(units, ranking, rows)
                labels.append(("random", "random", module, r, draw))
                kept.append(_within(rows, selection.top_fractions(order, [r], n, len(rows))))
    columns = ["selection", "method", "scope", "retention", "draw"]
    return Plan(units, pd.DataFrame(labels, columns=columns), np.concatenate(kept), scopes)


def _within(rows: np.ndarray, chosen: np.ndarray) -> np.ndarray:
    """A selection of `rows` only: every other row kept."""
    kept = np.ones_like(chosen)
    kept[:, rows] = chosen[:, rows]
    return kept


def _common_units(scores: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """The unit table every method's scores share, row for row."""
    tables = iter(scores.items())
    first_method, first = next(tables)
    columns = _unit_columns(first)
    units = first[columns].reset_index(drop=True)
    for method, table in tables:
        if list(table.columns) != list(first.columns) or not table[columns].reset_index(
            drop=True
        ).equals(units):
            raise ValueError(f"the scores of {method} and {first_method} list different units")
    return units


def _unit_columns(table: pd.DataFrame) -> list[str]:
    return [c for c in ("layer", "module", "unit", "input") if c in table.columns]


def _stable_id(name: str) -> int:
    """A process-independent integer for a name (Python's hash() is salted per process)."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "little")


def _ratio_id(ratio: float) -> int:
    return int(round(float(ratio) * 1_000_000))


def effective_counts(masks: Mapping, config: Mapping) -> dict[tuple[int, str], np.ndarray]:
    """Per (layer, module): for each model of `masks` ((models, ...) each), its kept units (or
    weights) that can affect the output (`stats.effective_masks`)."""
    effective = stats.effective_masks(
        {key: mask.numpy() for key, mask in masks.items()},
        num_layers=config["num_layers"],
        embed_dim=config["embed_dim"],
        heads=config["attention_heads"],
        ffn_dim=config["ffn_embed_dim"],
        models=True,
    )
    return {key: mask.reshape(len(mask), -1).sum(axis=1) for key, mask in effective.items()}


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
    global selections, its kept and effective counts per (layer, module) (KEPT_COLUMNS).
    `settings.max_tokens` padded tokens per forward pass (`train.token_budget`) decide how many
    models share one."""
    index = {c: k for k, c in enumerate(classes)}
    y_true = np.array([index[c] for c in test["ec_class"]])
    sequences = list(test["sequence"])
    config = esm_config(model.esm)
    config.setdefault("ffn_embed_dim", model.esm.layers[0].fc1.out_features)
    plan = selections(scores, settings, seed)
    masks = selection.stacked_masks(plan.units, plan.kept)
    batches = train.token_batches(sequences, batch_size=settings.batch_size, max_length=max_length)
    n_models = len(plan.labels)
    budget = train.token_budget(settings.max_tokens, model)
    group = train.models_per_pass(batches, budget, "input" in plan.units.columns)
    log.info("%d pruned models, %d per forward pass", n_models, group)
    probs = train.predict_proba_models(
        model,
        masks,
        n_models,
        batches,
        max_tokens=budget,
        on_pass=model_progress(n_models, "pruned models"),
    )
    predicted = probs.argmax(-1).numpy()
    correct = (predicted == y_true).astype(float)
    single = plan.labels["selection"].isin(SINGLE_MODELS).to_numpy()
    intervals = np.full((n_models, 4), np.nan)  # a draw's interval is never reported: its mean is
    intervals[single, :2] = stats.bootstrap_cis(correct[single], settings.bootstrap, seed)
    intervals[single, 2:] = stats.bootstrap_balanced_cis(
        correct[single], y_true, settings.bootstrap, seed
    )
    glob = ((plan.labels["scope"] == GLOBAL) & (plan.labels["selection"] != "full")).to_numpy()
    effective = effective_counts({k: m[torch.tensor(glob)] for k, m in masks.items()}, config)
    effective_row = np.cumsum(glob) - 1  # a global model's row in `effective`
    cell, keys = selection.cell_ids(plan.units)
    n_neurons = np.bincount(cell, minlength=len(keys))
    rows, kept_rows = [], []
    for m, label in enumerate(plan.labels.itertuples(index=False)):
        metrics = train.classification_metrics(y_true, predicted[m], classes)
        low, high, b_low, b_high = intervals[m]
        row = {
            "seed": seed,
            **label._asdict(),
            "accuracy": metrics["accuracy"],
            "ci_low": low,
            "ci_high": high,
            "macro_f1": metrics["macro_f1"],
            "balanced_accuracy": metrics["balanced_accuracy"],
            "balanced_ci_low": b_low,
            "balanced_ci_high": b_high,
        }
        if label.selection == "full":
            row.update(n_total=np.nan, n_kept=np.nan, n_effective=np.nan)
        else:
            scope = plan.scopes[label.scope]
            row.update(n_total=len(scope), n_kept=int(plan.kept[m, scope].sum()))
            row["n_effective"] = np.nan
            if label.scope == GLOBAL:
                per_cell = {key: int(effective[key][effective_row[m]]) for key in keys}
                row["n_effective"] = sum(per_cell.values())
                if label.selection == "scored":
                    n_kept = np.bincount(cell, weights=plan.kept[m], minlength=len(keys))
                    kept_rows += [
                        {
                            "seed": seed,
                            "method": label.method,
                            "retention": label.retention,
                            "layer": layer,
                            "module": module,
                            "n_neurons": int(n_neurons[c]),
                            "n_kept": int(n_kept[c]),
                            "n_effective": per_cell[(layer, module)],
                        }
                        for c, (layer, module) in enumerate(keys)
                    ]
        rows.append(row)
    results = pd.DataFrame(rows, columns=RESULT_COLUMNS)
    return results, pd.DataFrame(kept_rows, columns=KEPT_COLUMNS)


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
