"""What the reports share: the order of methods and modules, how retentions, intervals and
p-values are written, markdown tables, and the significance level and interval label."""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence

import pandas as pd

from kneurons.model.units import MODULES

PathLike = str | os.PathLike
FULL_METHOD = "full"
RANDOM = "random"
# the pruning figures (kneurons.reporting.plots), each a PNG and a PDF: key -> file name
PRUNING_FIGURES = {
    "accuracy": "accuracy_vs_retention",
    "density": "density_heatmaps",
    "enrichment": "enrichment_heatmaps",
    "modules": "module_enrichment",
    "pruning": "module_pruning",
}
# the significance level of every Holm-corrected test in the reports
ALPHA = 0.05
# what the intervals of means over seeds are
INTERVAL = "95% t-interval over seeds"


def method_order(methods: Iterable[str]) -> list[str]:
    """'full' first, the scored methods in order of first appearance (the config's), 'random'
    last."""
    present = list(dict.fromkeys(methods))
    scored = [m for m in present if m not in (FULL_METHOD, RANDOM)]
    return [m for m in present if m == FULL_METHOD] + scored + [m for m in present if m == RANDOM]


def module_order(modules: Iterable[str]) -> list[str]:
    """Canonical module order (q, k, v, out, fc1, fc2), only those present; unknown ones after."""
    present = list(dict.fromkeys(modules))
    known = [m for m in MODULES if m in present]
    return known + sorted(m for m in present if m not in MODULES)


def format_retention(r: float) -> str:
    """0.5 -> '50%', 0.01 -> '1%', 0.005 -> '0.5%'."""
    return f"{float(r) * 100:.4g}%"


def format_interval(mean: float, low: float, high: float, digits: int = 3) -> str:
    if pd.isna(low):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def format_p(p: float) -> str:
    if pd.isna(p):
        return "n/a"
    return f"{p:.2g}" if p >= 1e-4 else "<1e-4"


def format_seed_ps(per_seed_p, n_draws) -> str:
    """The range of per-seed permutation p-values ("seed:p seed:p ...") and, in brackets, the
    draws behind each: "0.01-0.05 (99)"; "n/a" without any."""
    if not isinstance(per_seed_p, str) or not per_seed_p:
        return "n/a"
    p = [float(v.split(":")[1]) for v in per_seed_p.split()]
    spread = f"{min(p):.2g}" if min(p) == max(p) else f"{min(p):.2g}-{max(p):.2g}"
    return f"{spread} ({int(n_draws)})"


def md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    return lines + ["| " + " | ".join(r) + " |" for r in rows] + [""]


def read_seed_tables(paths: Sequence[PathLike], seeds: Sequence[int]) -> pd.DataFrame:
    """The per-seed tables stacked with a `seed` column; an empty file adds no rows."""
    frames = []
    for path, seed in zip(paths, seeds, strict=True):
        try:
            frame = pd.read_csv(path, sep="\t")
        except pd.errors.EmptyDataError:
            continue
        frames.append(frame.assign(seed=int(seed)))
    non_empty = [f for f in frames if len(f)]
    if non_empty:
        return pd.concat(non_empty, ignore_index=True)
    return frames[0] if frames else pd.DataFrame(columns=["seed"])
