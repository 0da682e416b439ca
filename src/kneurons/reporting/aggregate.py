"""The aggregate step: the seeds' evaluations in, the tables and the summary page out."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from kneurons.io import atomic_path, read_json, write_tsv
from kneurons.reporting.format import PathLike
from kneurons.reporting.pruning import (
    _pooled,
    accuracy_table,
    density_table,
    enrichment_table,
    focus_tests,
    headline_metric,
    summary_table,
    tests_table,
)
from kneurons.reporting.pruning_page import summary_markdown
from kneurons.settings import NoSettings

OUTPUT_KEYS = ("accuracy", "summary", "tests", "enrichment", "density", "markdown")


def write_outputs(
    finetune_paths: Sequence[PathLike],
    result_paths: Sequence[PathLike],
    kept_paths: Sequence[PathLike],
    baseline_paths: Sequence[PathLike],
    outputs: dict[str, PathLike],
) -> None:
    """Build every table and the markdown page; write each atomically. `outputs` keys:
    accuracy, summary, tests, enrichment, density, markdown."""
    metrics = [read_json(p) for p in finetune_paths]
    seeds = [int(m["seed"]) for m in metrics]
    results = pd.concat([pd.read_csv(p, sep="\t") for p in result_paths], ignore_index=True)
    kept = pd.concat([pd.read_csv(p, sep="\t") for p in kept_paths], ignore_index=True)
    baselines = [read_json(p) for p in baseline_paths]
    granularities = set(results.pop("granularity")) if "granularity" in results else {"unit"}
    if len(granularities) > 1:
        raise ValueError(f"evaluations mix granularities {sorted(granularities)}")
    metric = headline_metric(baselines)
    accuracy = accuracy_table(results, baselines, seeds, metric)
    summary = summary_table(accuracy)
    tests = tests_table(accuracy, results)
    chance = max(
        float(np.mean([m["chance"] for m in metrics])),
        float(np.mean([b["majority"][metric] for b in baselines])),
    )
    enrichment = enrichment_table(kept, summary, chance)
    focus = focus_tests(_pooled(kept)) if not kept.empty else pd.DataFrame()
    draws = results.groupby(["seed", "selection", "method", "scope", "retention"]).size()
    n_draws = {
        name: int(draws.xs(name, level="selection").max())
        for name in ("random", "matched")
        if name in draws.index.get_level_values("selection")
    }
    text = summary_markdown(
        summary,
        accuracy,
        tests,
        enrichment,
        focus,
        chance=chance,
        n_draws=n_draws,
        granularity=granularities.pop(),
    )
    write_tsv(accuracy, outputs["accuracy"])
    write_tsv(summary, outputs["summary"])
    write_tsv(tests, outputs["tests"])
    write_tsv(enrichment, outputs["enrichment"])
    write_tsv(density_table(kept), outputs["density"])
    with atomic_path(outputs["markdown"]) as tmp:
        tmp.write_text(text + "\n")


def aggregate(input, output, settings: NoSettings, wildcards) -> None:
    """The aggregate step: tables with intervals and tests, and the summary page, over seeds."""
    write_outputs(
        list(input.finetune),
        list(input.results),
        list(input.kept),
        list(input.baselines),
        {key: output[key] for key in OUTPUT_KEYS},
    )
