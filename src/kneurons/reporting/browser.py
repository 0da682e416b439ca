"""The browser step: one offline HTML page to look at knowledge neurons and SAE features.

The summaries say how many units know a class or detect a motif; this page shows what a given
unit does on real sequences, so a reader can check a claim unit by unit. Per seed it gathers:
- the units: every knowledge neuron (results/knowledge/seed{S}/neurons.tsv) with its share,
  its class set's own-class suppress/amplify effect on p(true class) and the matched random
  sets' 2.5-97.5% range of the same effect (the null interval), its score and rank under each
  method (results/scores/seed{S}/*.tsv); and every SAE feature that is the best feature for
  some concept (results/sae/seed{S}/concepts.tsv, kind `sae`) with its best concept by test F1;
- the validation sequences once (id, residues, annotated motifs, true and predicted class),
  which the units refer to by index;
- per unit, its `examples` top-activating validation sequences (by the maximum over residues)
  and `random_examples` random others, each with its per-residue activation quantised to an
  integer: 255 x activation / the unit's maximum over the shown sequences, rounded away from
  zero (so a residue is shaded exactly where the activation is > 0), negative values kept
  negative (drawn white; the tooltip gives the sign), clipped to [-255, 255].

A missing or empty knowledge or concepts table (knowledge or SAE steps off) leaves those units
out; the page shows what exists. The page is one file (`reporting.browser_page`): data as JSON,
script and style inline, no network request.

Size bound: a shown residue costs at most 5 bytes ("-255,"), a sequence about its length plus
60 bytes once per seed. The default run (5 seeds, at most `max_units` = 300 units per seed, 13
sequences per unit, at most 90 residues; 360 validation sequences) is therefore below
5 x (300 x 13 x 90 x 5 + 360 x 150) B, about 9 MB; in practice about a third of that (SAE
features are zero at most residues, ~250 units per seed), i.e. a few MB: the small config
(2 seeds, 149 units, residues 60-80) gives 411 kB, 3 bytes per shown residue.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import pandas as pd
import torch

from kneurons.analysis.knowledge import token_activations
from kneurons.data.motifs import MOTIF_KINDS, parse_motifs
from kneurons.data.tables import read_labelled
from kneurons.io import atomic_path
from kneurons.model.esm import load_classifier, pick_device
from kneurons.model.sae import load_sae, residual_stream
from kneurons.model.train import predict_proba_models, token_batches
from kneurons.model.units import UNIT_COLUMNS
from kneurons.reporting.browser_page import render_page
from kneurons.settings import BrowserSettings

log = logging.getLogger(__name__)

NEURON, FEATURE = "neuron", "sae"  # the two kinds of unit on the page
NULL_QUANTILES = (0.025, 0.975)  # the matched random sets' range beside an effect
LEVELS = 255  # activation shades per sign


# --- reading the tables ----------------------------------------------------------------------


def read_optional(path, what: str) -> pd.DataFrame | None:
    """The table at `path`, or None (logged) when there is none, it is empty or unreadable:
    an optional input must not stop the page."""
    if not path:
        return None
    try:
        table = pd.read_csv(path, sep="\t")
    except (OSError, pd.errors.EmptyDataError, pd.errors.ParserError) as err:
        log.warning("%s: %s not shown (%s)", path, what, type(err).__name__)
        return None
    return table if len(table) else None


def unit_id(seed: int, layer: int, module: str, unit: int) -> str:
    """The unit's URL fragment: seed0/L2/k_proj/17 (a neuron), seed0/L2/sae/123 (a feature)."""
    return f"seed{seed}/L{int(layer)}/{module}/{int(unit)}"


def null_interval(values: pd.Series) -> list[float] | None:
    """The 2.5-97.5% range of the matched random sets' effects, or None without draws."""
    values = values.dropna()
    if values.empty:
        return None
    return [float(q) for q in np.quantile(values, NULL_QUANTILES)]


def class_effects(effects: pd.DataFrame | None, classes: Sequence[int]) -> dict:
    """{class: {suppress, amplify: its knowledge set's effect on p(true class) per sequence
    class (in `classes` order); suppress_own, amplify_own: the effect on its own class;
    suppress_null, amplify_null: the matched random sets' 2.5-97.5% range of that own-class
    effect}}, for each class with a knowledge set in the effects table."""
    if effects is None:
        return {}
    p_true = effects[effects["quantity"] == "p_true"]
    out: dict = {}
    for c in classes:
        rows = p_true[p_true["neuron_class"] == c]
        knowledge = rows[rows["set"] == "knowledge"]
        if knowledge.empty:
            continue
        entry = {}
        for intervention in ("suppress", "amplify"):
            own = knowledge[knowledge["intervention"] == intervention]
            by_class = own.set_index("sequence_class")["effect"]
            entry[intervention] = [_number(by_class.get(s)) for s in classes]
            entry[f"{intervention}_own"] = _number(by_class.get(c))
            matched = rows[
                (rows["set"] == "matched")
                & (rows["intervention"] == intervention)
                & (rows["sequence_class"] == c)
            ]
            entry[f"{intervention}_null"] = null_interval(matched["effect"])
        out[int(c)] = entry
    return out


def _number(value) -> float | None:
    """A float for JSON (4 decimals), None for a missing, NaN or infinite value."""
    if value is None or not np.isfinite(float(value)):
        return None
    return round(float(value), 4)


def ranked_scores(scores: Mapping[str, pd.DataFrame]) -> dict[str, pd.DataFrame]:
    """{method: score and rank (1 = highest) indexed by (layer, module, unit)}."""
    ranked = {}
    for method, table in scores.items():
        table = table[[*UNIT_COLUMNS, "score"]].copy()
        table["rank"] = table["score"].rank(ascending=False, method="min")
        ranked[method] = table.set_index(UNIT_COLUMNS)
    return ranked


def neuron_units(
    neurons: pd.DataFrame | None,
    effects: Mapping,
    scores: Mapping[str, pd.DataFrame],
    seed: int,
) -> list[dict]:
    """One entry per knowledge neuron, by share (a unit of several classes once, its classes
    by share; the effects are those of its first class's set): id, kind, layer, module, unit,
    classes, share, suppress/amplify own-class effects with their null intervals, and
    {method: [score, rank]}."""
    if neurons is None:
        return []
    units = []
    ordered = neurons.sort_values(["share", "mean_attribution"], ascending=False, kind="stable")
    for (layer, module, unit), group in ordered.groupby(UNIT_COLUMNS, sort=False):
        key = (int(layer), str(module), int(unit))
        classes = [int(c) for c in group["class"]]
        own = effects.get(classes[0], {})
        entry = {
            "id": unit_id(seed, *key),
            "kind": NEURON,
            "layer": key[0],
            "module": key[1],
            "unit": key[2],
            "classes": classes,
            "share": _number(group["share"].iloc[0]),
            "scores": {
                method: [_number(table.at[key, "score"]), int(table.at[key, "rank"])]
                for method, table in scores.items()
                if key in table.index
            },
        }
        for intervention in ("suppress", "amplify"):
            entry[intervention] = own.get(f"{intervention}_own")
            entry[f"{intervention}_null"] = own.get(f"{intervention}_null")
        units.append(entry)
    return units


def feature_units(concepts: pd.DataFrame | None, seed: int) -> list[dict]:
    """One entry per SAE feature that is the best feature of some concept (kind `sae` rows of
    the concepts table), by its best test F1: id, kind, layer, module, unit, concept (the one
    of highest test F1), f1, and every concept it is best for with its test F1."""
    if concepts is None or "kind" not in concepts:
        return []
    rows = concepts[(concepts["kind"] == FEATURE) & concepts["unit"].notna()]
    units = []
    for (layer, unit), group in rows.groupby(["layer", "unit"], sort=False):
        group = group.sort_values("f1", ascending=False, na_position="last", kind="stable")
        best = group.iloc[0]
        units.append(
            {
                "id": unit_id(seed, layer, FEATURE, unit),
                "kind": FEATURE,
                "layer": int(layer),
                "module": FEATURE,
                "unit": int(unit),
                "concept": str(best["concept"]),
                "f1": _number(best["f1"]),
                "concepts": [[str(r.concept), _number(r.f1)] for r in group.itertuples()],
            }
        )
    units.sort(key=lambda u: (u["f1"] is None, -(u["f1"] or 0.0)))  # unscored last
    return units


def capped(neurons: list[dict], features: list[dict], max_units: int) -> list[dict]:
    """Neurons first (by share), then features (by F1), `max_units` in all (0: no cap)."""
    units = neurons + features
    return units[:max_units] if max_units else units


# --- activations and examples ----------------------------------------------------------------


def residue_activations(
    model, sequences: Sequence[str], units: Sequence[dict], saes: Mapping[int, object], max_length
) -> list[np.ndarray]:
    """Per sequence, (residues, n_units) float64: each unit's output at each residue of the
    sequence (the first `max_length` residues), columns in the order of `units`. A neuron is
    its module's output; a feature its SAE's activation on the residual stream after its
    layer."""
    lengths = [len(s[:max_length]) if max_length else len(s) for s in sequences]
    out = [np.zeros((n, len(units))) for n in lengths]
    neurons = [i for i, u in enumerate(units) if u["kind"] == NEURON]
    if neurons:
        table = pd.DataFrame(
            [(units[i]["layer"], units[i]["module"], units[i]["unit"]) for i in neurons],
            columns=UNIT_COLUMNS,
        )
        tokens = token_activations(model, list(sequences), table, max_length)
        for s, values in enumerate(tokens):
            out[s][:, neurons] = values[1 : 1 + lengths[s]]  # token 0 is BOS
    features = [i for i, u in enumerate(units) if u["kind"] == FEATURE]
    layers = sorted({units[i]["layer"] for i in features})
    if layers:
        stream = residual_stream(model, list(sequences), layers, max_length)
        bounds = np.cumsum([0, *lengths])
        for layer in layers:
            columns = [i for i in features if units[i]["layer"] == layer]
            wanted = torch.tensor([units[i]["unit"] for i in columns], dtype=torch.long)
            sae = saes[layer]
            with torch.no_grad():
                x = torch.from_numpy(stream[layer]).to(sae.W_dec.device, sae.W_dec.dtype)
                acts = sae.encode(x)[:, wanted.to(x.device)].double().cpu().numpy()
            for s in range(len(sequences)):
                out[s][:, columns] = acts[bounds[s] : bounds[s + 1]]
    return out


def quantised(values: np.ndarray, peak: float) -> list[int]:
    """Activations as integers in [-255, 255]: 255 x value / peak rounded away from zero (a
    positive value is at least 1, so shaded), 0 for every value when peak is not positive."""
    if not peak > 0:
        return [0] * len(values)
    scaled = np.clip(values / peak * LEVELS, -LEVELS, LEVELS)
    return [int(v) for v in np.sign(scaled) * np.ceil(np.abs(scaled) - 1e-9)]


def examples(
    activations: Sequence[np.ndarray], column: int, n_top: int, n_random: int, rng
) -> tuple[list, float]:
    """([[sequence index, "top"|"random", quantised activations], ...], peak): the `n_top`
    sequences of highest maximum activation (ties by index), then `n_random` random others;
    peak is the largest activation over the shown sequences."""
    maxima = np.array([a[:, column].max() if len(a) else -np.inf for a in activations])
    order = sorted(range(len(maxima)), key=lambda i: (-maxima[i], i))
    top = order[:n_top]
    rest = np.array(order[n_top:], dtype=int)
    random = sorted(rng.choice(rest, min(n_random, len(rest)), replace=False).tolist())
    shown = [(i, "top") for i in top] + [(int(i), "random") for i in random]
    peak = max((float(maxima[i]) for i, _ in shown), default=0.0)
    rows = [[i, kind, quantised(activations[i][:, column], peak)] for i, kind in shown]
    return rows, peak


# --- one seed, and the step --------------------------------------------------------------


def validation_sequences(split: pd.DataFrame, predicted: Sequence[int], max_length) -> dict:
    """The seed's validation sequences, columnar: id, seq (the residues the model reads), true
    and predicted class, motifs ([name, start, end, kind], cut to the residues shown)."""
    seqs = [s[:max_length] if max_length else s for s in split["sequence"]]
    motifs = []
    for seq, text in zip(seqs, split["motifs"], strict=True):
        entries = parse_motifs(str(text)) if str(text) else []
        motifs.append(
            [
                [m["name"], m["start"], min(m["end"], len(seq)), m["kind"]]
                for m in entries
                if m["start"] < len(seq)
            ]
        )
    return {
        "id": [str(i) for i in split["id"]],
        "seq": seqs,
        "true": [int(c) for c in split["ec_class"]],
        "pred": [int(c) for c in predicted],
        "motifs": motifs,
    }


def seed_data(
    seed: int,
    files: Mapping,
    methods: Sequence[str],
    settings: BrowserSettings,
    device,
) -> dict:
    """One seed's part of the page: classes, methods, validation sequences, class effects and
    units with their examples. `files`: split, model, scores (in `methods` order), and
    optionally neurons, effects, concepts, saes (paths; missing or empty ones are skipped)."""
    model, meta = load_classifier(files["model"], device)
    classes, max_length = [int(c) for c in meta["classes"]], meta["max_length"]
    split = read_labelled(files["split"])
    validation = split[split["split"] == "validation"].reset_index(drop=True)
    sequences = list(validation["sequence"])
    if sequences:
        batches = token_batches(sequences, batch_size=64, max_length=max_length)
        probs = predict_proba_models(model, {}, 1, batches)[0]
        predicted = [classes[i] for i in probs.argmax(dim=1).tolist()]
    else:
        predicted = []
    scores = {
        m: t
        for m, path in zip(methods, files["scores"], strict=True)
        if (t := read_optional(path, f"{m} scores")) is not None
    }
    effects = class_effects(read_optional(files.get("effects"), "knowledge effects"), classes)
    neurons = neuron_units(
        read_optional(files.get("neurons"), "knowledge neurons"),
        effects,
        ranked_scores(scores),
        seed,
    )
    features = feature_units(read_optional(files.get("concepts"), "SAE concepts"), seed)
    saes = {}
    for path in files.get("saes") or []:
        sae, info = load_sae(path)
        saes[int(info["layer"])] = sae.to(device)
    missing = sorted({u["layer"] for u in features} - set(saes))
    if missing:
        log.warning("seed %d: no SAE for layers %s: their features are not shown", seed, missing)
        features = [u for u in features if u["layer"] in saes]
    units = capped(neurons, features, settings.max_units)
    if len(units) < len(neurons) + len(features):
        log.info(
            "seed %d: %d of %d units shown (max_units)",
            seed,
            len(units),
            len(neurons) + len(features),
        )
    if sequences and units:
        activations = residue_activations(model, sequences, units, saes, max_length)
        for column, unit in enumerate(units):
            rng = np.random.default_rng([seed, unit["layer"], column])
            unit["examples"], peak = examples(
                activations, column, settings.examples, settings.random_examples, rng
            )
            unit["peak"] = _number(peak)
    else:
        for unit in units:
            unit["examples"], unit["peak"] = [], None
    log.info(
        "seed %d: %d knowledge neurons, %d SAE features, %d validation sequences",
        seed,
        sum(u["kind"] == NEURON for u in units),
        sum(u["kind"] == FEATURE for u in units),
        len(sequences),
    )
    return {
        "seed": seed,
        "classes": classes,
        "methods": list(scores),
        "sequences": validation_sequences(validation, predicted, max_length),
        "class_effects": {str(c): e for c, e in effects.items()},
        "units": units,
    }


def per_seed(paths: Sequence, n_seeds: int) -> list[list]:
    """A seed-major flat list of paths (the same number per seed) split by seed; an empty
    list gives each seed none."""
    paths = list(paths or [])
    if len(paths) % max(n_seeds, 1):
        raise ValueError(f"{len(paths)} files for {n_seeds} seeds")
    size = len(paths) // n_seeds if n_seeds else 0
    return [paths[i * size : (i + 1) * size] for i in range(n_seeds)]


def browser(input, output, settings: BrowserSettings, wildcards) -> None:
    """The browser step: every seed's units and examples in one self-contained HTML page.

    Inputs, in `settings.seeds` order: splits, models, scores (seed-major, `settings.methods`
    order), and when their steps run neurons, effects (knowledge), concepts and saes
    (seed-major, every layer)."""
    seeds = list(settings.seeds)
    device = pick_device(settings.device)
    optional = {
        name: per_seed(getattr(input, name, None), len(seeds))
        for name in ("neurons", "effects", "concepts", "saes")
    }
    scores = per_seed(input.scores, len(seeds))
    data = {"seeds": [], "motif_kinds": list(MOTIF_KINDS)}
    for s, seed in enumerate(seeds):
        files = {
            "split": input.splits[s],
            "model": input.models[s],
            "scores": scores[s],
            "saes": optional["saes"][s],
        }
        files |= {name: (optional[name][s] or [None])[0] for name in ("neurons", "effects")}
        files["concepts"] = (optional["concepts"][s] or [None])[0]
        data["seeds"].append(seed_data(seed, files, settings.methods, settings, device))
    page = render_page(data)
    with atomic_path(output.page) as tmp:
        Path(tmp).write_text(page, encoding="utf-8")
    units = sum(len(s["units"]) for s in data["seeds"])
    log.info(
        "%s: %d seeds, %d units, %d bytes",
        output.page,
        len(seeds),
        units,
        len(page.encode("utf-8")),
    )


def page_data(page: str) -> dict:
    """The data embedded in a page written by `browser` (for tests and readers)."""
    start = page.index('<script type="application/json" id="data">')
    start = page.index(">", start) + 1
    end = page.index("</script>", start)
    return json.loads(page[start:end])
