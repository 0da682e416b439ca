"""The knowledge_summary step: every seed's knowledge tables in, the tables, page and
figures over seeds out."""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import pandas as pd

from kneurons.io import atomic_path, write_tsv
from kneurons.model.units import UNIT_COLUMNS
from kneurons.reporting.format import PathLike, read_seed_tables
from kneurons.reporting.knowledge import detector_table, specificity_table
from kneurons.reporting.knowledge_page import summary_markdown
from kneurons.reporting.knowledge_plots import plot_effects, plot_motif_detectors, plot_placement
from kneurons.settings import KnowledgeSummarySettings

OUTPUT_KEYS = (
    "specificity",
    "detectors",
    "summary",
    "effects_png",
    "effects_pdf",
    "placement_png",
    "placement_pdf",
    "motif_detectors_png",
    "motif_detectors_pdf",
)


def write_outputs(
    neuron_paths: Sequence[PathLike],
    effect_paths: Sequence[PathLike],
    motif_paths: Sequence[PathLike],
    seeds: Sequence[int],
    outputs: dict[str, PathLike],
    style: dict | None = None,
) -> None:
    """Read each seed's neurons, effects and motifs tables (in the order of `seeds`); write the
    specificity and detector tables, the summary page and the figures, each atomically.
    `outputs` keys: OUTPUT_KEYS (summary: the markdown page)."""
    seeds = [int(s) for s in seeds]
    neurons = read_seed_tables(neuron_paths, seeds)
    effects = read_seed_tables(effect_paths, seeds)
    motifs = read_seed_tables(motif_paths, seeds)
    for table, columns in (
        (effects, ["intervention", "set", "draw", "quantity", "neuron_class", "sequence_class"]),
        (motifs, ["set", "class", *UNIT_COLUMNS, "motif", "motif_class", "auroc"]),
        (neurons, ["class", *UNIT_COLUMNS]),
    ):
        for column in columns:
            if column not in table:
                table[column] = pd.Series(dtype=float)
    specificity = specificity_table(effects)
    detectors = detector_table(motifs)
    text = summary_markdown(neurons, effects, motifs, specificity, detectors, seeds=seeds)
    write_tsv(specificity, outputs["specificity"])
    write_tsv(detectors, outputs["detectors"])
    with atomic_path(outputs["summary"]) as tmp:
        tmp.write_text(text + "\n")
    plot_effects(effects, outputs["effects_png"], outputs["effects_pdf"], style)
    plot_placement(neurons, outputs["placement_png"], outputs["placement_pdf"], style, seeds=seeds)
    plot_motif_detectors(
        motifs, outputs["motif_detectors_png"], outputs["motif_detectors_pdf"], style
    )


def knowledge_summary(input, output, settings: KnowledgeSummarySettings, wildcards) -> None:
    """The knowledge_summary step: across seeds, specificity with tests, motif detectors, the
    summary page and the figures."""
    write_outputs(
        list(input.neurons),
        list(input.effects),
        list(input.motifs),
        settings.seeds,
        {key: output[key] for key in OUTPUT_KEYS},
        dataclasses.asdict(settings),
    )
