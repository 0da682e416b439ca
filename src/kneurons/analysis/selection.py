"""Keep the global top fraction of scored neurons; count what survives per (layer, module).

A selection is a boolean vector over the rows of a score table (units, or weights when the
table has an `input` column); many selections are a (models, rows) matrix, built with one
sort per ranking (`ranking_order`, `top_fractions`) and turned into per-module masks for the
model's hooks once (`stacked_masks`).
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import torch

from kneurons.model.units import MODULES

NORMALIZE = ("none", "mean")


def ranking_scores(scores: pd.DataFrame, normalize: str = "none") -> np.ndarray:
    """Scores used for the global ranking.

    `mean` divides each score by the mean |score| of its own (layer, module), so a unit is kept
    for standing out within its module rather than for its module's scale. The magnitude keeps
    the sign meaningful for signed IG scores (a signed mean can be ~0).
    """
    values = scores["score"].to_numpy(dtype=float)
    if normalize == "none":
        return values
    if normalize != "mean":
        raise ValueError(f"unknown normalize {normalize!r}; expected one of {', '.join(NORMALIZE)}")
    scale = scores["score"].abs().groupby([scores["layer"], scores["module"]]).transform("mean")
    scale = scale.to_numpy(dtype=float)
    return np.divide(values, scale, out=np.zeros_like(values), where=scale > 0)


def ranking_order(units: pd.DataFrame, ranked: np.ndarray, rows: np.ndarray | None = None):
    """Positions of `rows` (all rows of `units` if None) in ranking order: highest `ranked`
    first, ties broken by (layer, module order, unit, input), so every selection is
    deterministic. `ranked` has one value per row of `units`."""
    rows = np.arange(len(units)) if rows is None else np.asarray(rows)
    module_order = units["module"].map({m: i for i, m in enumerate(MODULES)}).to_numpy()
    # lexsort: last key is primary; ascending, so negate the score
    keys = [units["unit"].to_numpy()[rows], module_order[rows], units["layer"].to_numpy()[rows]]
    keys.append(-np.asarray(ranked, dtype=float)[rows])
    if "input" in units.columns:
        keys.insert(0, units["input"].to_numpy()[rows])
    return rows[np.lexsort(keys)]


def top_fractions(order: np.ndarray, retentions, n_rows: int, n_ranked: int | None = None):
    """(len(retentions), n_rows) bool: row r keeps the first round(retention x n_ranked) of
    `order` (`n_ranked` defaults to len(order)), so the selections of one ranking are nested."""
    n_ranked = len(order) if n_ranked is None else n_ranked
    kept = np.zeros((len(retentions), n_rows), dtype=bool)
    for k, retention in enumerate(retentions):
        if not 0 < retention <= 1:
            raise ValueError(f"retention {retention} is outside (0, 1]")
        kept[k, order[: int(round(retention * n_ranked))]] = True
    return kept


def select(scores: pd.DataFrame, retention: float, normalize: str = "none") -> pd.DataFrame:
    """`scores` with a boolean `kept` column: the top round(retention * N) rows overall (units,
    or weights when `scores` has an `input` column); ties as `ranking_order` breaks them."""
    order = ranking_order(scores, ranking_scores(scores, normalize))
    return scores.assign(kept=top_fractions(order, [retention], len(scores))[0])


def cell_ids(units: pd.DataFrame) -> tuple[np.ndarray, list[tuple[int, str]]]:
    """(cell, keys): each row's (layer, module) cell as an index into `keys`, the cells in
    order of first appearance."""
    codes, uniques = pd.factorize(pd.MultiIndex.from_arrays([units["layer"], units["module"]]))
    return codes, [(int(layer), str(module)) for layer, module in uniques]


def matched_random(kept: np.ndarray, cell: np.ndarray, random: np.ndarray) -> np.ndarray:
    """A selection with exactly `kept`'s count in every cell (`cell_ids`): in each cell, the
    rows with the smallest `random` values (one uniform value per row; ties by row order)."""
    n_cells = int(cell.max()) + 1 if len(cell) else 0
    quota = np.bincount(cell, weights=kept, minlength=n_cells)
    order = np.lexsort((np.arange(len(cell)), random, cell))
    starts = np.concatenate([[0], np.cumsum(np.bincount(cell, minlength=n_cells))[:-1]])
    rank = np.empty(len(cell), dtype=np.int64)
    rank[order] = np.arange(len(cell)) - starts[cell[order]]
    return rank < quota[cell]


def stacked_masks(
    units: pd.DataFrame, kept: np.ndarray, widths: dict | None = None
) -> dict[tuple[int, str], torch.Tensor]:
    """Per (layer, module): a boolean tensor (models, units), or (models, units, inputs) when
    `units` has an `input` column, True where row `kept[m]` keeps it. `kept` is (models, rows)
    or one selection (rows,), which gives masks without the models axis. Every cell must list
    each of its units (and inputs) once; `widths` {(layer, module): units}, when given, is
    checked against the table."""
    single = np.ndim(kept) == 1
    kept = np.atleast_2d(np.asarray(kept, dtype=bool))
    cell, keys = cell_ids(units)
    per_weight = "input" in units.columns
    masks = {}
    for c, key in enumerate(keys):
        rows = np.flatnonzero(cell == c)
        unit = units["unit"].to_numpy()[rows]
        shape = [int(unit.max()) + 1]
        flat = unit
        if per_weight:
            inputs = units["input"].to_numpy()[rows]
            shape.append(int(inputs.max()) + 1)
            flat = unit * shape[1] + inputs
        size = int(np.prod(shape))
        if widths is not None and shape[0] != widths[key] or len(rows) != size:
            raise ValueError(f"layer {key[0]} {key[1]}: the table lists {len(rows)} of its rows")
        mask = np.zeros((len(kept), size), dtype=bool)
        mask[:, flat] = kept[:, rows]
        mask = torch.from_numpy(mask.reshape(len(kept), *shape))
        masks[key] = mask[0] if single else mask
    return masks


def keep_masks(selected: pd.DataFrame) -> dict[tuple[int, str], torch.Tensor]:
    """Per (layer, module): a boolean tensor, True where kept: over units (units,), or over
    weights (units, inputs) when `selected` has an `input` column."""
    return stacked_masks(selected, selected["kept"].to_numpy(dtype=bool))


def kept_counts(selected: pd.DataFrame) -> list[dict]:
    """Per (layer, module): how many neurons it has and how many were kept."""
    counts = selected.groupby(["layer", "module"], sort=False)["kept"].agg(["size", "sum"])
    return [
        {"layer": int(layer), "module": str(module), "n_neurons": int(n), "n_kept": int(k)}
        for (layer, module), (n, k) in counts.iterrows()
    ]
