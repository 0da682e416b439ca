"""The knowledge neurons' summary page (markdown) over seeds."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from kneurons.analysis import stats
from kneurons.model.units import INTERVENTIONS
from kneurons.reporting.format import (
    ALPHA,
    INTERVAL,
    format_interval,
    format_p,
    format_seed_ps,
    md_table,
)
from kneurons.reporting.knowledge import (
    ALL_CLASSES,
    FACTORS,
    KNOWLEDGE,
    MATCHED,
    MIN_AUROC,
    QUANTITIES,
    QUANTITY_LABELS,
    class_order,
    neuron_counts,
    placement_means,
    seeds_of,
    top_detectors,
)


def class_label(c) -> str:
    return f"EC {c}" if c != ALL_CLASSES else "all classes"


def class_names(classes: Sequence) -> str:
    return ", ".join(str(c) for c in classes) if classes else "none"


def _specific_classes(p_true: pd.DataFrame, column: str) -> tuple[dict, list]:
    """The classes whose rows are flagged in `column`, per intervention and under either."""
    flagged = p_true[p_true[column].astype(bool)]
    by = {
        i: class_order(flagged[flagged["intervention"] == i]["neuron_class"]) for i in INTERVENTIONS
    }
    return by, class_order(by["suppress"], by["amplify"])


def _first_paragraph(
    specificity: pd.DataFrame,
    detectors: pd.DataFrame,
    classes: list,
    without: list,
    has_motifs: bool,
) -> list[str]:
    """The answer first: how many classes have specific knowledge neurons, and do they detect
    their own class's motifs more than matched random units."""
    n = len(classes)
    p_true = specificity[specificity["quantity"] == "p_true"]
    by, either = _specific_classes(p_true, "specific")
    if p_true.empty:
        text = (
            f"**No class has knowledge neurons in any seed ({n} classes), so there is no "
            "knowledge neuron to test.**"
        )
    elif either:
        text = (
            f"**{len(either)} of {n} classes show specific knowledge neurons** "
            f"(EC {class_names(either)}): scaling the class's knowledge neurons changes "
            "p(true class) "
            "of its own test sequences more than that of the other classes, beyond matched "
            "random units, in the expected direction (suppression lowers, amplification raises; "
            f"Holm p < {ALPHA}). Under suppression: {len(by['suppress'])} of {n} "
            f"(EC {class_names(by['suppress'])}); under amplification: {len(by['amplify'])} of {n} "
            f"(EC {class_names(by['amplify'])})."
        )
    else:
        text = (
            f"**0 of {n} classes show specific knowledge neurons**: for no class does "
            "suppressing or amplifying its knowledge neurons change p(true class) of its own "
            "sequences, relative to the other classes', more than random units with the same "
            f"per-(layer, module) counts do (Holm p < {ALPHA}). The knowledge neurons found here "
            "are not class-specific."
        )
    if not p_true.empty and "model_specific" in p_true:
        _, within = _specific_classes(p_true, "model_specific")
        n_sets = int(specificity["n_draws"].min())
        floor = stats.fisher_floor(n_sets, int(specificity["n_seeds"].max()), len(specificity))
        text += (
            f" Tested in each fine-tuned model instead (the knowledge set against that model's "
            f"{n_sets} matched sets, Fisher over seeds; these sets and seeds allow at best Holm "
            f"p = {format_p(floor)}): {len(within)} of {n} classes"
            + (f" (EC {class_names(within)})." if within else ".")
        )
    if without:
        text += f" Classes without knowledge neurons in any seed: EC {class_names(without)}."
    if not has_motifs:
        text += (
            " The data carry no motif annotation, so whether knowledge neurons detect motifs "
            "was not measured."
        )
    else:
        know = detectors[detectors["set"] == KNOWLEDGE]
        per_class = know[know["class"] != ALL_CLASSES]
        more = class_order(per_class[per_class["more_own"].astype(bool)]["class"])
        pooled = know[know["class"] == ALL_CLASSES]
        matched = detectors[(detectors["set"] == MATCHED) & (detectors["class"] == ALL_CLASSES)]
        share = ""
        if not pooled.empty:
            r = pooled.iloc[0]
            m = matched["own_share_mean"].iloc[0] if not matched.empty else np.nan
            share = (
                f" (share of knowledge neurons whose best motif is their own class's: "
                f"{format_interval(r.own_share_mean, r.own_share_ci_low, r.own_share_ci_high, 2)}, "
                f"matched random units {m:.2f}; difference Holm p {format_p(r.p_holm)})"
            )
        pooled_more = bool(not pooled.empty and pooled["more_own"].astype(bool).iloc[0])
        counted = f"per class in {len(more)} of {len(per_class)} classes with scored units"
        if pooled_more:
            text += (
                " Knowledge neurons detect their own class's motifs more than matched random "
                f"units pooled over classes{share}; {counted} (EC {class_names(more)})."
            )
        elif more:
            text += (
                " Pooled over classes, knowledge neurons are not shown to detect their own "
                f"class's motifs more than matched random units{share}; {counted} they do "
                f"(EC {class_names(more)})."
            )
        else:
            text += (
                " Knowledge neurons do not detect their own class's motifs more than matched "
                f"random units{share}, in no class either: they are not shown to be motif "
                "detectors."
            )
    return [text, ""]


def _definitions(n_draws: int) -> list[str]:
    return [
        f"Intervals: mean [{INTERVAL}] (Student t; the seed is the replicate: split, "
        "training, attributions and random draws all vary with it). Effect: the change, "
        "against the unmodified model, in mean p(true class) (or accuracy) over the test "
        "sequences of a class when one class's knowledge neurons are scaled (x0 suppress, x2 "
        "amplify). Own effect: on the class's own sequences. Specificity: own effect minus the "
        "mean effect on the other classes' sequences. Matched: the mean over the "
        f"{n_draws} random unit set{'s' if n_draws != 1 else ''} per seed with the same count "
        "in every (layer, module) cell. Difference: knowledge specificity - matched "
        "specificity, paired by seed. Two questions, two tests, each Holm-corrected over every "
        "intervention x quantity x class row. *Across fine-tuned models*: two-sided paired "
        f"t-test over seeds; specific: Holm p < {ALPHA} and the difference in the expected "
        "direction (suppression below matched, amplification above). *In each fine-tuned "
        "model*: per seed, the permutation p of the knowledge set's specificity among that "
        "seed's matched sets, one-sided in the expected direction, (1 + sets at least as "
        "extreme) / (1 + sets), so at least 1 / (1 + sets); combined over seeds by Fisher's "
        f"method; specific: Holm p < {ALPHA}.",
        "",
    ]


def _neuron_lines(neurons: pd.DataFrame, classes: list, seeds: list[int], n_top: int):
    counts = neuron_counts(neurons, classes, seeds)
    placement = placement_means(neurons, seeds)
    rows = []
    for c in classes:
        n = counts[counts["class"] == c]["count"]
        cells = placement[placement["class"] == c].sort_values("count", ascending=False)
        top = "; ".join(
            f"L{r.layer} {r.module} ({r.count:.2g})" for r in cells.head(n_top).itertuples()
        )
        rows.append(
            [
                class_label(c),
                f"{n.mean():.1f} ({n.min()}–{n.max()})",
                f"{int((n > 0).sum())} of {len(seeds)}",
                top or "–",
            ]
        )
    header = [
        "class",
        "knowledge neurons per seed: mean (min–max)",
        "seeds with any",
        f"top (layer, module) cells (mean count over {len(seeds)} seeds)",
    ]
    return ["## Knowledge neurons per class", "", *md_table(header, rows)]


def _effect_lines(specificity: pd.DataFrame) -> list[str]:
    lines = []
    for quantity in [q for q in QUANTITIES if q in set(specificity["quantity"])]:
        sub = specificity[specificity["quantity"] == quantity]
        rows = []
        for r in sub.itertuples(index=False):
            rows.append(
                [
                    class_label(r.neuron_class),
                    f"{r.intervention} ({FACTORS.get(r.intervention, '?')})",
                    str(r.n_seeds),
                    format_interval(r.own_effect_mean, r.own_ci_low, r.own_ci_high),
                    format_interval(
                        r.specificity_mean, r.specificity_ci_low, r.specificity_ci_high
                    ),
                    f"{r.matched_specificity_mean:.3f}",
                    format_interval(r.difference_mean, r.difference_ci_low, r.difference_ci_high),
                    format_p(r.p_holm),
                    "yes" if r.specific else "no",
                    format_seed_ps(r.per_seed_p, r.n_draws),
                    format_p(r.model_p_holm),
                    "yes" if r.model_specific else "no",
                ]
            )
        header = [
            "class",
            "intervention",
            "seeds",
            "own effect",
            "specificity",
            "matched specificity",
            "difference",
            "across models: Holm p",
            "specific",
            "in each model: p per seed (sets)",
            "in each model: Holm p",
            "specific",
        ]
        lines += [f"## Causal effects on {QUANTITY_LABELS.get(quantity, quantity)}", ""]
        lines += md_table(header, rows)
    return lines


def _motif_lines(motifs: pd.DataFrame, detectors: pd.DataFrame, n_top: int) -> list[str]:
    lines = ["## Motif detectors", ""]
    if motifs.empty or detectors.empty:
        return lines + [
            "No motif annotation: the data carry no planted or annotated motifs, so no unit's "
            "motif AUROC was computed.",
            "",
        ]
    lines += [
        "Per unit, the AUROC of its token activation for 'this residue lies in a motif of type "
        "m'; a unit's best motif is the one with the highest AUROC, counted only when above "
        f"{MIN_AUROC}. Own: the best motif is one of the class's own motifs; other: another "
        "class's (a decoy detector); none: no AUROC above 0.5. Shares per seed, mean "
        f"[{INTERVAL}]. Difference: own share, knowledge - matched, paired by seed; "
        "two-sided paired t-test, Holm over the knowledge rows.",
        "",
    ]
    top = top_detectors(motifs, n_top)
    rows = []
    for c in class_order(detectors["class"]):
        know = detectors[(detectors["set"] == KNOWLEDGE) & (detectors["class"] == c)]
        matched = detectors[(detectors["set"] == MATCHED) & (detectors["class"] == c)]
        if know.empty:
            continue
        k = know.iloc[0]
        t = top[top["class"].astype(str) == str(c)] if c != ALL_CLASSES else top.head(0)
        rows.append(
            [
                class_label(c),
                format_interval(k.own_share_mean, k.own_share_ci_low, k.own_share_ci_high, 2),
                format_interval(k.other_share_mean, k.other_share_ci_low, k.other_share_ci_high, 2),
                f"{k.none_share_mean:.2f}",
                f"{matched['own_share_mean'].iloc[0]:.2f}" if not matched.empty else "–",
                format_interval(
                    k.own_difference_mean, k.own_difference_ci_low, k.own_difference_ci_high, 2
                )
                + f", p {format_p(k.p_holm)}",
                "; ".join(
                    f"s{r.seed} L{r.layer} {r.module}:{r.unit} {r.best_motif} (EC {r.motif_class}) "
                    f"{r.best_auroc:.2f}"
                    for r in t.itertuples()
                )
                or "–",
            ]
        )
    header = [
        "class",
        "own share",
        "other-class (decoy) share",
        "none",
        "matched own share",
        "own share - matched",
        "top detectors (seed, unit, best motif (its class), AUROC)",
    ]
    return lines + md_table(header, rows)


def summary_markdown(
    neurons: pd.DataFrame,
    effects: pd.DataFrame,
    motifs: pd.DataFrame,
    specificity: pd.DataFrame,
    detectors: pd.DataFrame,
    *,
    seeds: Sequence[int] | None = None,
    n_top: int = 3,
) -> str:
    """The knowledge-neuron summary page: the answer first, definitions, then per class the
    knowledge neurons and where they sit, the causal effects and the motif detectors. The
    tables carry a `seed` column; `seeds` defaults to those in the tables."""
    seeds = list(seeds) if seeds is not None else seeds_of(neurons, effects, motifs)
    classes = class_order(
        effects.get("sequence_class", []),
        effects.get("neuron_class", []),
        neurons.get("class", []),
    )
    with_neurons = set(class_order(neurons.get("class", []), effects.get("neuron_class", [])))
    without = [c for c in classes if c not in with_neurons]
    matched = effects[effects["set"] == MATCHED] if len(effects) else effects
    n_draws = int(matched.groupby("seed")["draw"].nunique().max()) if len(matched) else 0
    lines = [
        "# Knowledge neurons",
        "",
        *_first_paragraph(specificity, detectors, classes, without, not motifs.empty),
        f"Seeds: {len(seeds)} ({', '.join(str(s) for s in seeds)}).",
        "",
        *_definitions(n_draws),
        *_neuron_lines(neurons, classes, seeds, n_top),
        *_effect_lines(specificity),
        *_motif_lines(motifs, detectors, n_top),
    ]
    return "\n".join(lines)
