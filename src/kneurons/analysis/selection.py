"""Keep the global top fraction of scored neurons; count what survives per (layer, module)."""

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


def select(scores: pd.DataFrame, retention: float, normalize: str = "none") -> pd.DataFrame:
    """`scores` with a boolean `kept` column: the top round(retention * N) rows overall (units,
    or weights when `scores` has an `input` column).

    Ties are broken by (layer, module order, unit, input), so the selection is deterministic.
    """
    if not 0 < retention <= 1:
        raise ValueError(f"retention {retention} is outside (0, 1]")
    n_keep = int(round(retention * len(scores)))
    module_order = scores["module"].map({m: i for i, m in enumerate(MODULES)}).to_numpy()
    ranked = ranking_scores(scores, normalize)
    # lexsort: last key is primary; ascending, so negate the score
    keys = [scores["unit"].to_numpy(), module_order, scores["layer"].to_numpy(), -ranked]
    if "input" in scores.columns:
        keys.insert(0, scores["input"].to_numpy())
    order = np.lexsort(keys)
    kept = np.zeros(len(scores), dtype=bool)
    kept[order[:n_keep]] = True
    return scores.assign(kept=kept)


def keep_masks(selected: pd.DataFrame) -> dict[tuple[int, str], torch.Tensor]:
    """Per (layer, module): a boolean tensor, True where kept: over units (units,), or over
    weights (units, inputs) when `selected` has an `input` column."""
    masks = {}
    per_weight = "input" in selected.columns
    for (layer, module), group in selected.groupby(["layer", "module"], sort=False):
        index = [torch.tensor(group["unit"].to_numpy())]
        shape = [int(group["unit"].max()) + 1]
        if per_weight:
            index.append(torch.tensor(group["input"].to_numpy()))
            shape.append(int(group["input"].max()) + 1)
        mask = torch.zeros(shape, dtype=torch.bool)
        mask[tuple(index)] = torch.tensor(group["kept"].to_numpy())
        masks[(int(layer), str(module))] = mask
    return masks


def kept_counts(selected: pd.DataFrame) -> list[dict]:
    """Per (layer, module): how many neurons it has and how many were kept."""
    counts = selected.groupby(["layer", "module"], sort=False)["kept"].agg(["size", "sum"])
    return [
        {"layer": int(layer), "module": str(module), "n_neurons": int(n), "n_kept": int(k)}
        for (layer, module), (n, k) in counts.iterrows()
    ]
