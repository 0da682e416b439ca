"""Aggregate per-job JSON outputs into tables and a short markdown summary.

Inputs are the fine-tuning metrics (one JSON per seed) and the pruning evaluations (one JSON per
seed x method x retention ratio). Outputs: a long accuracy table (`summary_table`), a per-cell
kept-neuron table (`density_table`), per-module enrichment pooled over layers
(`module_enrichment`) and a markdown page (`summary_markdown`).

Enrichment of a cell = (fraction of its neurons kept) / (global retention ratio r). A module type
that is kept exactly in proportion to its size has enrichment 1; random selection gives 1 in
expectation by construction.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Iterable, Sequence

import numpy as np
import pandas as pd

from kneurons.io import atomic_path, read_json, write_tsv
from kneurons.units import MODULES

FULL_METHOD = "full"
FOCUS_MODULE = "k_proj"

SUMMARY_COLUMNS = ["seed", "method", "retention", "accuracy", "macro_f1"]
DENSITY_COLUMNS = [
    "seed",
    "method",
    "retention",
    "layer",
    "module",
    "n_neurons",
    "n_kept",
    "density",
    "enrichment",
]
ENRICHMENT_COLUMNS = [
    "method",
    "retention",
    "module",
    "enrichment_mean",
    "enrichment_sd",
    "enrichment_min",
    "enrichment_max",
    "n_seeds",
]

PathLike = str | os.PathLike


# ----------------------------------------------------------------------------- ordering helpers


def method_order(methods: Iterable[str]) -> list[str]:
    """'full' first, then the methods in order of first appearance (the config's order: the
    workflow passes evaluations seed by seed, methods in config order)."""
    present = list(dict.fromkeys(methods))
    return [m for m in present if m == FULL_METHOD] + [m for m in present if m != FULL_METHOD]


def module_order(modules: Iterable[str]) -> list[str]:
    """Canonical module order (q, k, v, out, fc1, fc2), only those present; unknown ones after."""
    present = list(dict.fromkeys(modules))
    known = [m for m in MODULES if m in present]
    return known + sorted(m for m in present if m not in MODULES)


def format_retention(r: float) -> str:
    """0.5 -> '50%', 0.01 -> '1%', 0.005 -> '0.5%'."""
    return f"{float(r) * 100:.4g}%"


def _sort_methods(df: pd.DataFrame) -> pd.DataFrame:
    """Stable sort by canonical method order, keeping the existing order within a method."""
    order = method_order(df["method"])
    key = pd.Categorical(df["method"], categories=order, ordered=True)
    out = df.assign(_m=key).sort_values("_m", kind="stable").drop(columns="_m")
    return out.reset_index(drop=True)


def _load(items: Iterable) -> list[dict]:
    """Accept paths or already-parsed dicts."""
    return [item if isinstance(item, dict) else read_json(item) for item in items]


# ----------------------------------------------------------------------------- tables


def summary_table(
    finetune_paths: Iterable[PathLike], evaluation_paths: Iterable[PathLike]
) -> pd.DataFrame:
    """Test accuracy per (seed, method, retention).

    The unpruned model contributes one row per seed with method 'full' and retention 1.0.
    Raises ValueError on duplicate (seed, method, retention) keys.
    """
    rows = []
    for m in _load(finetune_paths):
        rows.append(
            {
                "seed": int(m["seed"]),
                "method": FULL_METHOD,
                "retention": 1.0,
                "accuracy": float(m["test"]["accuracy"]),
                "macro_f1": float(m["test"].get("macro_f1", math.nan)),
            }
        )
    for e in _load(evaluation_paths):
        rows.append(
            {
                "seed": int(e["seed"]),
                "method": str(e["method"]),
                "retention": float(e["retention"]),
                "accuracy": float(e["test"]["accuracy"]),
                "macro_f1": float(e["test"].get("macro_f1", math.nan)),
            }
        )
    df = pd.DataFrame(rows, columns=SUMMARY_COLUMNS)
    dup = df.duplicated(["seed", "method", "retention"], keep=False)
    if dup.any():
        keys = df.loc[dup, ["seed", "method", "retention"]].drop_duplicates()
        raise ValueError(
            f"duplicate (seed, method, retention) rows:\n{keys.to_string(index=False)}"
        )
    df = df.astype({"seed": "int64", "retention": "float64"})
    df = df.sort_values(["retention", "seed"], ascending=[False, True])
    return _sort_methods(df)


def density_table(evaluation_paths: Iterable[PathLike]) -> pd.DataFrame:
    """One row per (seed, method, retention, layer, module) with kept counts.

    density = n_kept / n_neurons; enrichment = density / retention.
    Warns if the cells' n_kept do not sum to the evaluation's n_kept.
    """
    rows = []
    for e in _load(evaluation_paths):
        seed, method, r = int(e["seed"]), str(e["method"]), float(e["retention"])
        total = 0
        for cell in e["kept"]:
            n, k = int(cell["n_neurons"]), int(cell["n_kept"])
            total += k
            rows.append(
                {
                    "seed": seed,
                    "method": method,
                    "retention": r,
                    "layer": int(cell["layer"]),
                    "module": str(cell["module"]),
                    "n_neurons": n,
                    "n_kept": k,
                }
            )
        if "n_kept" in e and int(e["n_kept"]) != total:
            warnings.warn(
                f"seed={seed} method={method} retention={r}: cells keep {total} neurons, "
                f"JSON says n_kept={e['n_kept']}",
                stacklevel=2,
            )
    df = pd.DataFrame(rows, columns=DENSITY_COLUMNS[:-2])
    df = df.astype({"seed": "int64", "retention": "float64", "layer": "int64"})
    df["density"] = (df["n_kept"] / df["n_neurons"]).astype("float64")
    df["enrichment"] = (df["density"] / df["retention"]).astype("float64")
    if df.empty:
        return df[DENSITY_COLUMNS]
    mods = module_order(df["module"])
    df["_mod"] = pd.Categorical(df["module"], categories=mods, ordered=True)
    df = df.sort_values(["retention", "seed", "layer", "_mod"], ascending=[False, True, True, True])
    df = df.drop(columns="_mod")
    return _sort_methods(df)[DENSITY_COLUMNS]


def module_enrichment(density: pd.DataFrame) -> pd.DataFrame:
    """Per (method, retention, module): enrichment pooled over layers, then mean/sd over seeds.

    Per seed: enrichment = (sum n_kept / sum n_neurons) / retention. sd uses ddof=1 (NaN for one
    seed); min/max are given for plots with fewer than 3 seeds.
    """
    if density.empty:
        return pd.DataFrame(columns=ENRICHMENT_COLUMNS)
    # sort=False: methods stay in the order they come (the config's)
    per_seed = density.groupby(
        ["method", "retention", "module", "seed"], as_index=False, sort=False
    )[["n_kept", "n_neurons"]].sum()
    per_seed["enrichment"] = per_seed["n_kept"] / per_seed["n_neurons"] / per_seed["retention"]
    agg = per_seed.groupby(["method", "retention", "module"], as_index=False, sort=False)[
        "enrichment"
    ].agg(
        enrichment_mean="mean",
        enrichment_sd=lambda s: s.std(ddof=1),
        enrichment_min="min",
        enrichment_max="max",
        n_seeds="count",
    )
    mods = module_order(agg["module"])
    agg["_mod"] = pd.Categorical(agg["module"], categories=mods, ordered=True)
    agg = agg.sort_values(["retention", "_mod"], ascending=[False, True]).drop(columns="_mod")
    return _sort_methods(agg)[ENRICHMENT_COLUMNS]


# ----------------------------------------------------------------------------- markdown


def _pm(values: Sequence[float], digits: int = 3) -> str:
    v = np.asarray([x for x in values if not pd.isna(x)], dtype=float)
    if v.size == 0:
        return "n/a"
    if v.size == 1:
        return f"{v[0]:.{digits}f}"
    return f"{v.mean():.{digits}f} ± {v.std(ddof=1):.{digits}f}"


def _pm_row(mean: float, sd: float, digits: int = 2) -> str:
    if pd.isna(sd):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {sd:.{digits}f}"


def _md_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(r) + " |" for r in rows]
    return lines


def _header_lines(summary: pd.DataFrame, metrics: list[dict]) -> list[str]:
    """Title, seeds, full-model accuracy per seed, and chance / majority baseline / test size."""
    full = summary[summary["method"] == FULL_METHOD].sort_values("seed")
    seeds = sorted(set(summary["seed"]) | {int(m["seed"]) for m in metrics})
    lines = ["# Pruning summary", ""]
    lines.append(f"Seeds: {len(seeds)} ({', '.join(str(s) for s in seeds)}).")
    if not full.empty:
        per_seed = ", ".join(
            f"seed {s}: {a:.3f}" for s, a in zip(full["seed"], full["accuracy"], strict=True)
        )
        lines.append(
            f"Full model test accuracy: {_pm(full['accuracy'].tolist())} "
            f"(mean ± sd over {len(full)} seeds; {per_seed})."
        )
    if metrics:
        chance = float(np.mean([m["chance"] for m in metrics]))
        n_classes = len(metrics[0].get("classes", []))
        cls = f", 1/{n_classes} classes" if n_classes else ""
        line = f"Chance accuracy: {chance:.3f}{cls}."
        if all("majority_baseline" in m for m in metrics):
            maj = float(np.mean([m["majority_baseline"] for m in metrics]))
            line += f" Majority-class baseline: {maj:.3f}."
        n_test = {m["test"].get("n") for m in metrics} - {None}
        if len(n_test) == 1:
            line += f" Test set: {n_test.pop()} sequences."
        lines.append(line)
    lines.append("")
    return lines


def _accuracy_lines(summary: pd.DataFrame) -> list[str]:
    """Section 'Test accuracy': a methods x retentions (descending) table, mean ± sd over seeds."""
    lines = ["## Test accuracy (mean ± sd over seeds)", ""]
    retentions = sorted(summary["retention"].unique(), reverse=True)
    rows = []
    for method in method_order(summary["method"]):
        sub = summary[summary["method"] == method]
        cells = []
        for r in retentions:
            acc = sub.loc[np.isclose(sub["retention"], r), "accuracy"].tolist()
            cells.append(_pm(acc) if acc else "–")
        rows.append([method, *cells])
    lines += _md_table(["method", *(format_retention(r) for r in retentions)], rows)
    lines.append("")
    return lines


def _kept_text(density: pd.DataFrame, r_min: float) -> str:
    """'a–b of N scored neurons kept' at retention r_min; the range runs over seed x method jobs."""
    d_min = density[np.isclose(density["retention"], r_min)]
    per_job = d_min.groupby(["seed", "method"])[["n_kept", "n_neurons"]].sum()
    kept_lo, kept_hi = int(per_job["n_kept"].min()), int(per_job["n_kept"].max())
    n_scored = int(per_job["n_neurons"].max())
    kept_range = f"{kept_lo}" if kept_lo == kept_hi else f"{kept_lo}–{kept_hi}"
    return f"{kept_range} of {n_scored} scored neurons kept"


def _focus_rank(means: pd.Series, k_val: float) -> tuple[int, int, str]:
    """Competition rank of FOCUS_MODULE among the module means, its tie count, and as text."""
    # competition rank: 1 + number of module types strictly above k_proj
    rank = 1 + int((means > k_val + 1e-12).sum())
    n_same = int(np.isclose(means, k_val).sum())
    rank_txt = f"{rank} of {len(means)}" + (
        f", tied with {n_same - 1} other{'s' if n_same > 2 else ''}" if n_same > 1 else ""
    )
    return rank, n_same, rank_txt


def _method_enrichment(method: str, sub: pd.DataFrame) -> tuple[list[str], str]:
    """Enrichment-table row and yes/tied/no verdict of one method from its rows `sub` at one r."""
    sub = sub.sort_values("enrichment_mean", ascending=False, kind="stable")
    means = sub.set_index("module")["enrichment_mean"]
    best = float(means.max())
    tied = [m for m, v in means.items() if np.isclose(v, best)]
    top = sub.iloc[0]
    top_txt = ", ".join(tied)
    if FOCUS_MODULE not in means.index:
        k_txt, rank_txt = "n/a", "n/a"
        verdict = f"{method}: {FOCUS_MODULE} not scored"
    else:
        k_row = sub[sub["module"] == FOCUS_MODULE].iloc[0]
        k_val = float(k_row["enrichment_mean"])
        k_txt = _pm_row(k_val, k_row["enrichment_sd"])
        rank, n_same, rank_txt = _focus_rank(means, k_val)
        others = means.drop(FOCUS_MODULE)
        if rank == 1 and n_same == 1:
            nxt = f", next {others.idxmax()} {others.max():.2f}" if len(others) else ""
            verdict = f"{method}: yes ({FOCUS_MODULE} {k_val:.2f}{nxt})"
        elif rank == 1:
            verdict = f"{method}: tied ({top_txt} all {best:.2f})"
        else:
            verdict = (
                f"{method}: no ({top_txt} {best:.2f}, {FOCUS_MODULE} {k_val:.2f}, rank {rank_txt})"
            )
    row = [method, top_txt, _pm_row(top["enrichment_mean"], top["enrichment_sd"]), k_txt, rank_txt]
    return row, verdict


def _enrichment_lines(rows: list[list[str]], r_min: float, kept_txt: str) -> list[str]:
    """Section 'Module enrichment at the smallest retention': the per-method table of `rows`."""
    lines = [
        f"## Module enrichment at the smallest retention ({format_retention(r_min)}; {kept_txt})",
        "",
        "Enrichment = (neurons kept in the module type, pooled over layers / its neurons) "
        "/ retention; 1 = kept in proportion to size. Mean ± sd over seeds.",
        "",
    ]
    lines += _md_table(
        [
            "method",
            "most enriched module",
            "its enrichment",
            f"{FOCUS_MODULE} enrichment",
            f"{FOCUS_MODULE} rank",
        ],
        rows,
    )
    lines.append("")
    return lines


def _verdict_lines(verdicts: list[str], r_min: float, kept_txt: str, has_random: bool) -> list[str]:
    """Section 'Is k_proj the most enriched module type?': one sentence of per-method verdicts."""
    random_note = (
        " Random selection has expected enrichment 1 for every module type by construction;"
        " its deviations from 1 measure sampling noise."
        if has_random
        else ""
    )
    return [
        f"## Is {FOCUS_MODULE} the most enriched module type?",
        "",
        f"At retention {format_retention(r_min)} ({kept_txt}), is {FOCUS_MODULE} the module "
        f"type with the highest mean enrichment? " + "; ".join(verdicts) + "." + random_note,
        "",
    ]


def summary_markdown(
    summary: pd.DataFrame,
    density: pd.DataFrame,
    finetune_metrics: Iterable,
    granularity: str = "unit",
) -> str:
    """The page a person reads first. `finetune_metrics`: paths or parsed dicts (one per seed).
    granularity="weight": the scores, selections and counts are of weights, and it says so."""
    metrics = sorted(_load(finetune_metrics), key=lambda m: int(m["seed"]))
    lines = _header_lines(summary, metrics)
    if granularity == "weight":
        lines += [
            "Granularity: per weight. Every weight of a scored Linear module was scored, kept or "
            "zeroed (biases kept); below, a kept 'neuron' is one weight and a module's "
            "'neurons' are its weights.",
            "",
        ]
    lines += _accuracy_lines(summary)
    enr = module_enrichment(density)
    if not enr.empty:
        # the enrichment and verdict sections look at the smallest retention only
        r_min = float(enr["retention"].min())
        at = enr[np.isclose(enr["retention"], r_min)]
        kept_txt = _kept_text(density, r_min)
        rows, verdicts = [], []
        for method in method_order(at["method"]):
            row, verdict = _method_enrichment(method, at[at["method"] == method])
            rows.append(row)
            verdicts.append(verdict)
        lines += _enrichment_lines(rows, r_min, kept_txt)
        lines += _verdict_lines(verdicts, r_min, kept_txt, "random" in set(at["method"]))
    return "\n".join(lines)


def write_outputs(
    finetune_paths: Sequence[PathLike],
    evaluation_paths: Sequence[PathLike],
    summary_tsv: PathLike,
    density_tsv: PathLike,
    summary_md: PathLike,
) -> None:
    """Build the three outputs and write each atomically."""
    finetune = _load(finetune_paths)
    evaluations = _load(evaluation_paths)
    summary = summary_table(finetune, evaluations)
    density = density_table(evaluations)
    granularities = {e.get("granularity", "unit") for e in evaluations}
    if len(granularities) > 1:
        raise ValueError(f"evaluations mix granularities {sorted(granularities)}")
    text = summary_markdown(
        summary, density, finetune, granularities.pop() if evaluations else "unit"
    )
    write_tsv(summary, summary_tsv)
    write_tsv(density, density_tsv)
    with atomic_path(summary_md) as tmp:
        tmp.write_text(text + "\n")
