"""What the knowledge neurons know (after Dai et al.'s knowledge neurons).

- Per-class knowledge neurons: units whose per-sequence IG attribution exceeds a fraction of
  that sequence's largest attribution in at least a given share of the class's sequences.
- A causal test: scale one class's knowledge neurons (0 suppresses, 2 amplifies) and measure the
  change in p(true class) and accuracy on the test sequences of every class; compare the own-class
  specificity with random unit sets of the same per-(layer, module) counts.
- Motif detectors: per unit and planted motif type, the AUROC of the unit's token activation for
  "this residue lies in a motif of that type".

Unit tables have columns layer, module, unit. Classes are the values of `classes` (EC classes),
not head positions. Across-seed statistics belong to `kneurons.reporting.knowledge`.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd
import torch
from scipy import stats as sps

from kneurons.attribution.engine import length_sorted_batches, scoring_subset
from kneurons.data.motifs import MOTIF_KINDS, MOTIFS, parse_motifs
from kneurons.data.tables import read_labelled
from kneurons.io import write_tsv
from kneurons.model.esm import (
    EnzymeClassifier,
    ablated,
    encode,
    linear,
    load_classifier,
    pick_device,
)
from kneurons.model.train import predict_proba_models, token_batches, token_budget
from kneurons.model.units import INTERVENTIONS, UNIT_COLUMNS
from kneurons.progress import model_progress
from kneurons.settings import KnowledgeSettings

log = logging.getLogger(__name__)

KN_COLUMNS = ["class", "layer", "module", "unit", "share", "mean_attribution"]
EFFECT_QUANTITIES = ("p_true", "accuracy")
# a share x n that is an integer can miss it by an ulp in floating point
_SHARE_TOLERANCE = 1e-12
# --- knowledge neurons -------------------------------------------------------------------------


def knowledge_neurons(
    attributions: np.ndarray,
    labels: Sequence,
    classes: Sequence,
    threshold: float = 0.2,
    share: float = 0.5,
    max_count: int | None = None,
    *,
    units: pd.DataFrame | None = None,
) -> pd.DataFrame:
    """Knowledge neurons of each class (KN_COLUMNS, classes in the order of `classes`, each
    class's neurons by share then mean attribution, descending).

    `attributions` (n_sequences, n_units), with its `units` table (a row per column). A unit
    is a knowledge neuron of class c when its attribution is above `threshold` x the
    sequence's largest attribution (over all units) in at least `share` of the class-c sequences
    (`labels`, values of `classes`). A sequence whose largest attribution is not positive
    supports no unit. `max_count` keeps each class's top units by (share, mean
    attribution over the class's sequences).
    """
    values, units = _values_and_units(attributions, units)
    labels = np.asarray(labels)
    if len(labels) != len(values):
        raise ValueError(f"{len(labels)} labels for {len(values)} sequences of attributions")
    peak = values.max(axis=1, keepdims=True)
    above = (values > threshold * peak) & (peak > 0)
    tables = []
    for c in classes:
        in_class = labels == c
        if not in_class.any():
            continue
        shares = above[in_class].mean(axis=0)
        chosen = np.flatnonzero(shares >= share - _SHARE_TOLERANCE)
        table = units.iloc[chosen].assign(
            share=shares[chosen], mean_attribution=values[in_class][:, chosen].mean(axis=0)
        )
        table = table.sort_values(["share", "mean_attribution"], ascending=False, kind="stable")
        if max_count is not None:
            table = table.head(max_count)
        tables.append(table.assign(**{"class": c}))
    if not tables:
        return pd.DataFrame(columns=KN_COLUMNS)
    return pd.concat(tables, ignore_index=True)[KN_COLUMNS]


def _values_and_units(attributions, units) -> tuple[np.ndarray, pd.DataFrame]:
    values = np.asarray(attributions, dtype=float)
    if units is None:
        raise ValueError("an attribution array needs its `units` table (layer, module, unit)")
    if values.ndim != 2 or values.shape[1] != len(units):
        raise ValueError(f"attributions of shape {values.shape} for {len(units)} units")
    return values, units[UNIT_COLUMNS].reset_index(drop=True)


def units_by_class(kn_table: pd.DataFrame) -> dict:
    """{class: its knowledge neurons' unit table} of a `knowledge_neurons` table."""
    return {
        c: group[UNIT_COLUMNS].reset_index(drop=True)
        for c, group in kn_table.groupby("class", sort=False)
    }


# --- causal test: suppress / amplify -----------------------------------------------------------


def scale_masks(
    model: EnzymeClassifier, units: pd.DataFrame, factor: float
) -> dict[tuple[int, str], torch.Tensor]:
    """Float masks for `model.esm.ablated`: ones, and `factor` at `units` (0 suppresses, 2
    amplifies). `ablated` applies them in float32, so a factor is exact only if float32 has it."""
    masks = {}
    for (layer, module), group in units.groupby(["layer", "module"], sort=False):
        n_units = linear(model.esm, int(layer), str(module)).out_features
        mask = torch.ones(n_units, dtype=torch.float64)
        mask[torch.tensor(group["unit"].tolist(), dtype=torch.long)] = factor
        masks[(int(layer), str(module))] = mask
    return masks


def scaled(model: EnzymeClassifier, units: pd.DataFrame, factor: float):
    """Context manager: the outputs of `units` multiplied by `factor` inside the block."""
    return ablated(model, scale_masks(model, units, factor))


def class_effects(
    model: EnzymeClassifier,
    test_table: pd.DataFrame,
    classes: Sequence,
    units_by_class: Mapping,
    factor: float,
    batch_size: int = 64,
    *,
    max_length: int | None = None,
    baseline: torch.Tensor | None = None,
    max_tokens: int = 0,
) -> dict[str, pd.DataFrame]:
    """{"p_true", "accuracy"}: class x class effect matrices of scaling each class's units by
    `factor`. Row c (index `neuron_class`): class c's units (`units_by_class[c]`) scaled;
    column c' (`sequence_class`): the mean change, against the unmodified model, in p(true
    class) (resp. the change in accuracy) over the test sequences of class c'. `classes` is the
    head's class order; `test_table` has `sequence` and `ec_class`. Rows of classes without
    units and columns of classes without test sequences are NaN. `baseline`: the unmodified
    model's `predict_proba` on the test sequences, if already computed. The scaled models run
    several to a forward pass (`max_tokens`, as `many_class_effects`)."""
    return many_class_effects(
        model,
        test_table,
        classes,
        [(units_by_class, factor)],
        batch_size,
        max_length=max_length,
        baseline=baseline,
        max_tokens=max_tokens,
    )[0]


def many_class_effects(
    model: EnzymeClassifier,
    test_table: pd.DataFrame,
    classes: Sequence,
    interventions: Sequence[tuple[Mapping, float]],
    batch_size: int = 64,
    *,
    max_length: int | None = None,
    baseline: torch.Tensor | None = None,
    max_tokens: int = 0,
) -> list[dict[str, pd.DataFrame]]:
    """`class_effects` of each (units_by_class, factor) of `interventions`, in that order: one
    scaled model per (intervention, class with units), run `train.models_per_pass` to a
    forward pass (`max_tokens` padded tokens, `train.token_budget`; 1: one model per pass)."""
    sequences = list(test_table["sequence"])
    position = {c: k for k, c in enumerate(classes)}
    y_true = np.array([position[c] for c in test_table["ec_class"]])
    seq_classes = np.asarray(test_table["ec_class"])
    batches = token_batches(sequences, batch_size=batch_size, max_length=max_length)
    models = [
        (i, c, scale_masks(model, chosen[c], factor))
        for i, (chosen, factor) in enumerate(interventions)
        for c in classes
        if chosen.get(c) is not None and len(chosen[c]) > 0
    ]
    probs = predict_proba_models(
        model,
        stack_masks(model, [masks for _, _, masks in models]),
        len(models),
        batches,
        max_tokens=token_budget(max_tokens, model),
        on_pass=model_progress(len(models), "scaled models"),
    )
    if baseline is None:
        baseline = predict_proba_models(model, {}, 1, batches)[0]
    base = _p_true_and_correct(baseline, y_true)
    rows = [{quantity: {} for quantity in EFFECT_QUANTITIES} for _ in interventions]
    for (i, c, _), scaled_probs in zip(models, probs, strict=True):
        scaled = _p_true_and_correct(scaled_probs, y_true)
        for quantity, after, before in zip(EFFECT_QUANTITIES, scaled, base, strict=True):
            change = pd.Series(after - before).groupby(seq_classes).mean()
            rows[i][quantity][c] = change.reindex(list(classes))
    effects = []
    for i in range(len(interventions)):
        for quantity in EFFECT_QUANTITIES:
            for c in classes:
                rows[i][quantity].setdefault(c, pd.Series(np.nan, index=list(classes)))
        effects.append({q: _class_effect_frame(rows[i][q], classes) for q in EFFECT_QUANTITIES})
    return effects


def stack_masks(
    model: EnzymeClassifier, masks: Sequence[Mapping[tuple[int, str], torch.Tensor]]
) -> dict[tuple[int, str], torch.Tensor]:
    """One (models, units) mask per (layer, module) that any of `masks` (one dict of (units,)
    masks per model) touches; a model that leaves a module intact gets ones there."""
    keys = list(dict.fromkeys(key for model_masks in masks for key in model_masks))
    stacked = {}
    for key in keys:
        ones = torch.ones(linear(model.esm, *key).out_features, dtype=torch.float64)
        stacked[key] = torch.stack([m.get(key, ones).to(torch.float64) for m in masks])
    return stacked


def _p_true_and_correct(probs: torch.Tensor, y_true: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    probs = probs.double().numpy()
    p_true = probs[np.arange(len(y_true)), y_true]
    return p_true, (probs.argmax(-1) == y_true).astype(float)


def _class_effect_frame(rows: Mapping, classes: Sequence) -> pd.DataFrame:
    """One seed's effects {neuron class: Series by sequence class} as a labelled frame."""
    matrix = pd.DataFrame({c: rows[c] for c in classes}).T.astype(float)
    matrix.index.name, matrix.columns.name = "neuron_class", "sequence_class"
    return matrix


def effect_table(effects: Mapping[str, pd.DataFrame]) -> pd.DataFrame:
    """`class_effects` matrices as long rows: quantity, neuron_class, sequence_class, effect."""
    return pd.concat(
        [
            matrix.reset_index()
            .melt(id_vars="neuron_class", var_name="sequence_class", value_name="effect")
            .assign(quantity=quantity)
            for quantity, matrix in effects.items()
        ],
        ignore_index=True,
    )[["quantity", "neuron_class", "sequence_class", "effect"]]


def matched_sets(
    kn_units: pd.DataFrame, all_units: pd.DataFrame, rng: np.random.Generator, k: int
) -> list[pd.DataFrame]:
    """`k` random unit tables with exactly `kn_units`' count in every (layer, module) cell,
    drawn without replacement from that cell's units in `all_units` (knowledge neurons
    included: a uniform draw, like `analysis.evaluation.matched_random`)."""
    counts = kn_units.groupby(["layer", "module"]).size()
    pools = {
        (int(layer), str(module)): group[UNIT_COLUMNS].reset_index(drop=True)
        for (layer, module), group in all_units.groupby(["layer", "module"])
    }
    for (layer, module), n in counts.items():
        available = len(pools.get((int(layer), str(module)), []))
        if n > available:
            raise ValueError(f"layer {layer} {module}: {n} units to match but {available} exist")
    draws = []
    for _ in range(k):
        picks = [
            pools[(int(layer), str(module))].iloc[
                np.sort(rng.choice(len(pools[(int(layer), str(module))]), n, replace=False))
            ]
            for (layer, module), n in counts.items()
        ]
        draws.append(
            pd.concat(picks, ignore_index=True) if picks else pd.DataFrame(columns=UNIT_COLUMNS)
        )
    return draws


def matched_units_by_class(
    units_by_class: Mapping, all_units: pd.DataFrame, rng: np.random.Generator, k: int
) -> list[dict]:
    """`k` draws of {class: `matched_sets` of that class's units}: one `class_effects` run each."""
    per_class = {c: matched_sets(units, all_units, rng, k) for c, units in units_by_class.items()}
    return [{c: sets[draw] for c, sets in per_class.items()} for draw in range(k)]


# --- motif detectors ---------------------------------------------------------------------------


def token_activations(
    model: EnzymeClassifier,
    sequences: Sequence[str],
    units: pd.DataFrame,
    max_length: int | None = None,
    *,
    batch_size: int = 64,
) -> list[np.ndarray]:
    """Per sequence, the outputs of `units` at its tokens: (tokens, n_units), columns in the
    order of `units`. Token 0 is BOS, residue i of the string is token i + 1, the last token is
    EOS (sequences longer than `max_length` keep their first residues); no padding."""
    model.eval()
    device = next(model.parameters()).device
    units = units[UNIT_COLUMNS].reset_index(drop=True)
    columns = {
        (int(layer), str(module)): (
            torch.tensor(group.index.tolist(), dtype=torch.long),
            torch.tensor(group["unit"].tolist(), dtype=torch.long),
        )
        for (layer, module), group in units.groupby(["layer", "module"], sort=False)
    }
    captured: dict[tuple[int, str], torch.Tensor] = {}

    def make_hook(key, unit_index):
        def hook(_mod, _inp, out):
            captured[key] = out.detach()[:, :, unit_index]  # (T, B, k); indexing copies

        return hook

    handles = [
        linear(model.esm, *key).register_forward_hook(make_hook(key, unit_index))
        for key, (_, unit_index) in columns.items()
    ]
    result: list[np.ndarray | None] = [None] * len(sequences)
    try:
        with torch.no_grad():
            for chunk in length_sorted_batches(sequences, batch_size):
                tokens = encode([sequences[i] for i in chunk], max_length).to(device)
                model(tokens)
                block = torch.empty(tokens.shape[1], len(chunk), len(units), dtype=torch.float64)
                for key, (positions, _) in columns.items():
                    block[:, :, positions] = captured[key].double().cpu()
                lengths = (tokens != model.esm.padding_idx).sum(1).tolist()
                for b, i in enumerate(chunk):
                    result[i] = block[: lengths[b], b].numpy()
    finally:
        for h in handles:
            h.remove()
    return result


def motif_labels(
    motifs: str | Sequence[Mapping],
    n_residues: int,
    motif_names: Sequence[str],
    kinds: Sequence[str] = MOTIF_KINDS,
) -> tuple[np.ndarray, np.ndarray]:
    """(inside, excluded), each (n_residues, n_motifs) bool over a sequence's residues: inside
    a planted motif of that name of one of `kinds`; excluded: inside one of another kind only
    (neither positive nor negative). `motifs` is a `motifs` column entry or its parse."""
    entries = parse_motifs(motifs) if isinstance(motifs, str) else motifs
    inside = np.zeros((n_residues, len(motif_names)), dtype=bool)
    other_kind = np.zeros_like(inside)
    column = {name: j for j, name in enumerate(motif_names)}
    for entry in entries:
        j = column.get(entry["name"])
        if j is None:
            continue
        target = inside if entry["kind"] in kinds else other_kind
        target[entry["start"] : min(entry["end"], n_residues), j] = True
    return inside, other_kind & ~inside


def motif_auroc(
    activations: Sequence[np.ndarray],
    sequences_motifs: Sequence,
    motif_names: Sequence[str],
    units: pd.DataFrame,
    *,
    kinds: Sequence[str] = MOTIF_KINDS,
) -> pd.DataFrame:
    """Per unit and motif type: the AUROC of the unit's activation for "this residue lies in a
    planted motif of this type (of `kinds`)" over all residue tokens of the sequences (BOS and
    EOS dropped: residue i is token i + 1). Rank-based (Mann-Whitney U, ties count half); NaN
    when a motif has no positive or no negative residue. Columns: layer, module, unit, motif,
    auroc, n_positive. `activations` as `token_activations` gives them for `units`;
    `sequences_motifs`: each sequence's `motifs` entry (string or parsed)."""
    residue_rows, inside_rows, excluded_rows = [], [], []
    for tokens, motifs in zip(activations, sequences_motifs, strict=True):
        residues = np.asarray(tokens)[1:-1]  # BOS first, EOS last
        inside, excluded = motif_labels(motifs, len(residues), motif_names, kinds)
        residue_rows.append(residues)
        inside_rows.append(inside)
        excluded_rows.append(excluded)
    values = np.concatenate(residue_rows)
    inside, excluded = np.concatenate(inside_rows), np.concatenate(excluded_rows)
    ranks = sps.rankdata(values, axis=0)  # pooled over every residue: the costly step
    units = units[UNIT_COLUMNS].reset_index(drop=True)
    tables = []
    for j, name in enumerate(motif_names):
        auroc = _auroc(values, ranks, inside[:, j], excluded[:, j])
        tables.append(units.assign(motif=name, auroc=auroc, n_positive=int(inside[:, j].sum())))
    return pd.concat(tables, ignore_index=True)


def _auroc(
    values: np.ndarray, ranks: np.ndarray, positive: np.ndarray, excluded: np.ndarray
) -> np.ndarray:
    """Per column: P(positive > negative) + P(tie) / 2, the negatives being the rows neither
    positive nor excluded. Mann-Whitney U of the positives against all other rows (from the
    pooled ranks) minus their U against the excluded rows alone (ranked apart: few rows)."""
    n_pos = int(positive.sum())
    n_neg = len(positive) - n_pos - int(excluded.sum())
    if n_pos == 0 or n_neg == 0:
        return np.full(values.shape[1], np.nan)
    offset = n_pos * (n_pos + 1) / 2
    # a product, not ranks[positive].sum(0): no copy of the (tokens, units) block
    u = positive.astype(float) @ ranks - offset
    if excluded.any():
        both = positive | excluded
        u -= positive[both].astype(float) @ sps.rankdata(values[both], axis=0) - offset
    return u / (n_pos * n_neg)


# --- one seed's analysis, as the workflow runs it -----------------------------------------------


def class_subset(table: pd.DataFrame, max_sequences: int, seed: int) -> pd.DataFrame:
    """At most `max_sequences` rows, the same number from every class as far as they have
    them (a seeded sample per class), so each column of an effect matrix rests on similar
    numbers of sequences; 0 keeps every row."""
    if not max_sequences or len(table) <= max_sequences:
        return table
    classes = sorted(table["ec_class"].unique())
    per_class = max(1, max_sequences // len(classes))
    picks = [
        group.sample(n=min(per_class, len(group)), random_state=seed)
        for _, group in table.groupby("ec_class", sort=True)
    ]
    return pd.concat(picks).sort_index()


def effects_with_controls(
    model: EnzymeClassifier,
    test: pd.DataFrame,
    classes: Sequence,
    neurons: pd.DataFrame,
    units: pd.DataFrame,
    *,
    matched_sets: int,
    seed: int,
    max_length: int | None = None,
    max_tokens: int = 0,
) -> pd.DataFrame:
    """Long table of every intervention's class x class effects: intervention (suppress,
    amplify), set (knowledge, or matched: `matched_sets` random unit sets with each class's
    per-(layer, module) counts), draw, quantity, neuron_class, sequence_class, effect."""
    own = units_by_class(neurons)
    rng = np.random.default_rng([seed, 4])
    controls = matched_units_by_class(own, units, rng, matched_sets) if own else []
    runs = [
        (intervention, set_name, draw, chosen, factor)
        for intervention, factor in INTERVENTIONS.items()
        for set_name, draw, chosen in [("knowledge", 0, own)]
        + [("matched", draw, sets) for draw, sets in enumerate(controls)]
        if chosen
    ]
    effects = many_class_effects(
        model,
        test,
        classes,
        [(chosen, factor) for *_, chosen, factor in runs],
        max_length=max_length,
        max_tokens=max_tokens,
    )
    frames = [
        effect_table(run_effects).assign(intervention=intervention, set=set_name, draw=draw)
        for (intervention, set_name, draw, _, _), run_effects in zip(runs, effects, strict=True)
    ]
    columns = ["intervention", "set", "draw", "quantity", "neuron_class", "sequence_class"]
    if not frames:
        return pd.DataFrame(columns=[*columns, "effect"])
    table = pd.concat(frames, ignore_index=True)
    return table[[*columns, "effect"]]


MOTIF_TABLE_COLUMNS = ["set", "class", "layer", "module", "unit", "motif", "motif_class"]
MOTIF_TABLE_COLUMNS += ["auroc", "n_positive"]


def motif_table(
    model: EnzymeClassifier,
    validation: pd.DataFrame,
    neurons: pd.DataFrame,
    units: pd.DataFrame,
    *,
    seed: int,
    max_length: int | None = None,
) -> pd.DataFrame:
    """Token-level motif AUROCs of each class's knowledge neurons and of one matched random
    set per class, over the validation sequences (true, mutated and decoy motifs; the
    annotation in the `motifs` column). Empty when no sequence carries an annotation."""
    annotated = validation[validation["motifs"].astype(str).str.len() > 0]
    if annotated.empty or neurons.empty:
        return pd.DataFrame(columns=MOTIF_TABLE_COLUMNS)
    names = sorted({m["name"] for s in annotated["motifs"] for m in parse_motifs(s)})
    own = units_by_class(neurons)
    matched = matched_units_by_class(own, units, np.random.default_rng([seed, 5]), 1)[0]
    frames = []
    for set_name, chosen in (("knowledge", own), ("matched", matched)):
        for c, class_units in chosen.items():
            activations = token_activations(
                model, list(annotated["sequence"]), class_units, max_length=max_length
            )
            table = motif_auroc(activations, list(annotated["motifs"]), names, class_units)
            frames.append(table.assign(set=set_name, **{"class": c}))
    table = pd.concat(frames, ignore_index=True)
    table["motif_class"] = table["motif"].map(lambda m: MOTIFS[m][0] if m in MOTIFS else -1)
    return table[MOTIF_TABLE_COLUMNS]


def knowledge(input, output, settings: KnowledgeSettings, wildcards) -> None:
    """The knowledge step: one seed's knowledge neurons per class (from `settings.method`'s
    per-sequence attributions), their suppress/amplify effects against matched random units,
    and their motif AUROCs."""
    seed = int(wildcards["seed"])
    classifier, meta = load_classifier(input.model, pick_device(settings.device))
    classes, max_length = meta["classes"], meta["max_length"]
    split_table = read_labelled(input.split)
    # the scoring subset the attributions were computed on (same seed, same rule)
    sequences, labels = scoring_subset(split_table, classes, settings.max_sequences, seed)
    units = pd.read_csv(input.scores, sep="\t")[UNIT_COLUMNS]
    neurons = knowledge_neurons(
        np.load(input.per_sequence),
        [classes[label] for label in labels],
        classes,
        threshold=settings.threshold,
        share=settings.share,
        max_count=settings.max_count or None,
        units=units,
    )
    counts = neurons.groupby("class").size().reindex(classes, fill_value=0)
    log.info("knowledge neurons per class: %s", counts.to_dict())
    test = class_subset(split_table[split_table["split"] == "test"], settings.test_sequences, seed)
    effects = effects_with_controls(
        classifier,
        test,
        classes,
        neurons,
        units,
        matched_sets=settings.matched_sets,
        seed=seed,
        max_length=max_length,
        max_tokens=settings.max_tokens,
    )
    motifs = motif_table(
        classifier,
        split_table[split_table["split"] == "validation"],
        neurons,
        units,
        seed=seed,
        max_length=max_length,
    )
    write_tsv(neurons, output.neurons)
    write_tsv(effects, output.effects)
    write_tsv(motifs, output.motifs)
