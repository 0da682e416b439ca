"""Statistics for the summary, without torch: bootstrap and Student-t intervals, the paired
t-test across seeds, Holm's correction, the hypergeometric null of module-type enrichment and
the kept units that can still reach the model's output."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
from scipy import stats as sps

from kneurons.model.units import MODULE_TYPES

ALTERNATIVES = ("greater", "less", "two-sided")
# --- intervals and tests ---------------------------------------------------------------------


def bootstrap_means(values: Sequence[float], resample_indices: np.ndarray) -> np.ndarray:
    """The mean of `values` over each row of `resample_indices` (n_boot, n): one bootstrap
    replicate of the mean per row."""
    return np.asarray(values, dtype=float)[np.asarray(resample_indices)].mean(axis=1)


def percentile_interval(samples: Sequence[float], level: float = 0.95) -> tuple[float, float]:
    """The central `level` interval of `samples`: its (1 - level) / 2 and (1 + level) / 2
    quantiles, interpolating linearly between order statistics (numpy's default)."""
    tail = 100 * (1 - level) / 2
    low, high = np.percentile(np.asarray(samples, dtype=float), [tail, 100 - tail])
    return float(low), float(high)


def resample_indices(n: int, n_boot: int, seed: int) -> np.ndarray:
    """(n_boot, n): `n_boot` resamples of n elements with replacement, drawn from
    `numpy.random.default_rng(seed)`."""
    return np.random.default_rng(seed).integers(0, n, size=(n_boot, n))


def _resampled(values: np.ndarray, indices: np.ndarray, reduce) -> np.ndarray:
    """reduce(values[:, indices]) over the last axis, (models, n_boot), a few models at a time
    (the gathered block is models x n_boot x n)."""
    step = max(1, (1 << 24) // max(1, indices.size))
    return np.concatenate(
        [reduce(values[m : m + step, indices]) for m in range(0, len(values), step)]
    ).reshape(len(values), len(indices))


def bootstrap_cis(
    values: np.ndarray, n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> np.ndarray:
    """(models, 2): the percentile bootstrap interval of the mean of each row of `values`
    (models, n), e.g. per-sequence 0/1 correctness of many models: `n_boot` resamples of the
    n columns with replacement (the same resamples for every row, drawn from
    `numpy.random.default_rng(seed)`), so the same inputs give the same intervals."""
    values = np.asarray(values, dtype=float)
    if values.ndim != 2 or values.shape[1] == 0:
        raise ValueError(f"need a non-empty (models, n) sample, got shape {values.shape}")
    indices = resample_indices(values.shape[1], n_boot, seed)
    means = _resampled(values, indices, lambda block: block.mean(axis=-1))
    return _percentile_rows(means, level)


def bootstrap_ci(
    values: Sequence[float], n_boot: int = 2000, seed: int = 0, level: float = 0.95
) -> tuple[float, float]:
    """Percentile bootstrap interval of the mean of a 1-D sample (`bootstrap_cis` of one row)."""
    values = np.asarray(values, dtype=float)
    if values.ndim != 1 or len(values) == 0:
        raise ValueError(f"need a non-empty 1-D sample, got shape {values.shape}")
    low, high = bootstrap_cis(values[None], n_boot, seed, level)[0]
    return float(low), float(high)


def bootstrap_balanced_cis(
    correct: np.ndarray,
    labels: Sequence[int],
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> np.ndarray:
    """(models, 2): percentile bootstrap intervals of balanced accuracy (the mean over classes
    of the per-class share correct) of each row of `correct` (models, n), resampling sequences
    as `bootstrap_cis` does (same seed, same resamples); a class absent from a resample is left
    out of that replicate's mean."""
    correct = np.asarray(correct, dtype=float)
    labels = np.asarray(labels)
    indices = resample_indices(correct.shape[1], n_boot, seed)
    per_class = []
    for label in np.unique(labels):
        member = (labels == label)[indices]  # (n_boot, n)
        n_member = member.sum(axis=1)
        hits = _resampled(correct, indices, lambda block, member=member: (block * member).sum(-1))
        with np.errstate(invalid="ignore", divide="ignore"):
            per_class.append(np.where(n_member > 0, hits / n_member, np.nan))
    return _percentile_rows(np.nanmean(np.stack(per_class), axis=0), level)


def bootstrap_balanced_ci(
    correct: Sequence[float],
    labels: Sequence[int],
    n_boot: int = 2000,
    seed: int = 0,
    level: float = 0.95,
) -> tuple[float, float]:
    """Percentile bootstrap interval of balanced accuracy of one model's per-sequence
    correctness (`bootstrap_balanced_cis` of one row)."""
    correct = np.asarray(correct, dtype=float)
    low, high = bootstrap_balanced_cis(correct[None], labels, n_boot, seed, level)[0]
    return float(low), float(high)


def _percentile_rows(samples: np.ndarray, level: float) -> np.ndarray:
    return np.array([percentile_interval(row, level) for row in samples]).reshape(-1, 2)


def mean_interval(values: Sequence[float], level: float = 0.95) -> tuple[float, float, float]:
    """(mean, low, high): the Student-t interval of the mean (e.g. across seeds). One value
    has no spread to estimate: (value, nan, nan)."""
    values = np.asarray(values, dtype=float)
    if values.ndim != 1 or len(values) == 0:
        raise ValueError(f"need a non-empty 1-D sample, got shape {values.shape}")
    mean = float(values.mean())
    n = len(values)
    if n == 1:
        return mean, math.nan, math.nan
    half_width = sps.t.ppf((1 + level) / 2, n - 1) * values.std(ddof=1) / math.sqrt(n)
    return mean, float(mean - half_width), float(mean + half_width)


def paired_test(differences: Sequence[float], level: float = 0.95) -> dict[str, float]:
    """Two-sided one-sample t-test of per-seed differences against 0 (scipy's ttest_1samp)
    and their Student-t interval: {mean, ci_low, ci_high, t, p, n}.

    Why a t-test: with 5 seeds a sign-flip permutation test or Wilcoxon's signed-rank test
    cannot go below p = 2 / 2**5 = 0.0625, however consistent the differences; the t-test can
    reach p < 0.01. It assumes the per-seed differences are roughly normal.
    All-equal differences have no variance (scipy would warn and give nan): p = 0 when they
    are not 0 (t = +-inf), else p = 1 (t = 0). Fewer than 2 differences: t = p = nan.
    """
    differences = np.asarray(differences, dtype=float)
    mean, low, high = mean_interval(differences, level)
    n = len(differences)
    if n < 2:
        t, p = math.nan, math.nan
    elif np.all(differences == differences[0]):
        t = math.copysign(math.inf, mean) if mean != 0 else 0.0
        p = 0.0 if mean != 0 else 1.0
    else:
        result = sps.ttest_1samp(differences, 0.0)
        t, p = float(result.statistic), float(result.pvalue)
    return {"mean": mean, "ci_low": low, "ci_high": high, "t": t, "p": p, "n": n}


def permutation_p(observed: float, draws: Sequence[float], alternative: str = "greater") -> float:
    """Monte Carlo permutation p-value of `observed` among `draws` of the same statistic under
    the null (here: random selections of the same model): (1 + #{draws at least as extreme}) /
    (1 + n). Exact (P(p <= a) <= a under exchangeability) however few the draws; ties count as
    extreme. `alternative`: greater (draws >= observed) or less (draws <= observed). The
    smallest value it can give is 1 / (1 + n): 99 draws reach 0.01. No draws: nan."""
    draws = np.asarray(draws, dtype=float)
    draws = draws[~np.isnan(draws)]
    if math.isnan(observed) or len(draws) == 0:
        return math.nan
    if alternative == "greater":
        extreme = int((draws >= observed).sum())
    elif alternative == "less":
        extreme = int((draws <= observed).sum())
    else:
        raise ValueError(f"alternative must be 'greater' or 'less', got {alternative!r}")
    return (1 + extreme) / (1 + len(draws))


def fisher_combined(pvalues: Sequence[float]) -> float:
    """Fisher's combination of independent p-values (one per fine-tuned model): X = -2 sum
    ln p is chi-squared with 2k degrees of freedom under the global null that no model shows
    the effect. Valid, and conservative, for the discrete permutation p-values above (each is
    super-uniform). NaN entries are dropped; none left: nan."""
    p = np.asarray(pvalues, dtype=float)
    p = p[~np.isnan(p)]
    if len(p) == 0:
        return math.nan
    return float(sps.combine_pvalues(p, method="fisher").pvalue)


def fisher_floor(n_draws: int, n_seeds: int, n_tests: int = 1) -> float:
    """The smallest Holm-adjusted p the per-model test can give: every one of `n_seeds` seeds
    at the permutation floor 1 / (1 + `n_draws`), Fisher-combined, times the `n_tests` rows of
    its Holm family (capped at 1). Above the test level, no effect can be found."""
    return min(1.0, fisher_combined([1 / (1 + n_draws)] * n_seeds) * n_tests)


def holm(pvalues: Sequence[float]) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values, in the input's order: the i-th smallest of m is
    multiplied by m - i + 1 (i from 1), made non-decreasing in that order and capped at 1.
    NaN entries are not tests: they do not count in m and stay NaN."""
    pvalues = np.asarray(pvalues, dtype=float)
    adjusted = np.full(pvalues.shape, math.nan)
    tested = ~np.isnan(pvalues)
    p = pvalues[tested]
    order = np.argsort(p, kind="stable")
    m = len(p)
    stepped = np.maximum.accumulate(p[order] * (m - np.arange(m)))
    ranked = np.empty(m)
    ranked[order] = np.minimum(stepped, 1.0)
    adjusted[tested] = ranked
    return adjusted


# --- enrichment under random selection ---------------------------------------------------------


def hypergeom_pmf(n_type: int, n_kept: int, n_total: int) -> tuple[int, np.ndarray]:
    """(offset, pmf): P(k = offset + i) = pmf[i] for k, the units of a type with `n_type` of
    `n_total` units that a uniformly random selection of `n_kept` units keeps. Only the
    entries that do not underflow to 0 are kept, so far tails cost nothing to convolve; they
    are renormalised to sum to 1 (scipy's pmf is accurate to ~1e-11 at 10^5 units), so a tail
    holding all the mass is 1."""
    if not 0 <= n_type <= n_total or not 0 <= n_kept <= n_total:
        raise ValueError(f"need 0 <= n_type, n_kept <= n_total; got {n_type}, {n_kept}, {n_total}")
    support = np.arange(max(0, n_kept - (n_total - n_type)), min(n_type, n_kept) + 1)
    pmf = sps.hypergeom.pmf(support, n_total, n_type, n_kept)
    nonzero = np.flatnonzero(pmf)
    pmf = pmf[nonzero[0] : nonzero[-1] + 1]
    return int(support[nonzero[0]]), pmf / pmf.sum()


def tail_p(offset: int, pmf: np.ndarray, k: int, alternative: str = "greater") -> float:
    """P(K >= k) ("greater"), P(K <= k) ("less") or, "two-sided", the probability of every
    outcome no more likely than k (Fisher's exact test's rule, with its 1e-7 relative
    tolerance for ties), for K distributed as `pmf` from `offset` (see hypergeom_pmf)."""
    if alternative not in ALTERNATIVES:
        raise ValueError(f"unknown alternative {alternative!r}; expected {', '.join(ALTERNATIVES)}")
    i = k - offset
    if (alternative == "greater" and i <= 0) or (alternative == "less" and i >= len(pmf) - 1):
        return 1.0  # the whole support, without the sum's rounding
    if alternative == "greater":
        p = pmf[i:].sum()
    elif alternative == "less":
        p = pmf[: max(i + 1, 0)].sum()
    else:
        observed = pmf[i] if 0 <= i < len(pmf) else 0.0
        p = pmf[pmf <= observed * (1 + 1e-7)].sum()
    return float(min(p, 1.0))  # rounding can push a sum of all terms past 1


def pooled_enrichment_p(
    ks: Sequence[int],
    n_types: Sequence[int],
    n_kepts: Sequence[int],
    n_totals: Sequence[int],
    alternative: str = "greater",
) -> float:
    """Exact p-value of the sum of `ks` over seeds (one entry per seed), each k an independent
    hypergeometric: keeping k of the n_type units of a module type when n_kept of n_total units
    are kept, against a uniformly random selection of the same size ("greater": enrichment,
    "less": depletion). One p per method, ratio and module type. The pmf of
    the sum is the convolution of the seeds' pmfs, computed directly (sums of non-negative
    terms keep tiny tail probabilities accurate, which an FFT would not)."""
    if not len(ks) == len(n_types) == len(n_kepts) == len(n_totals) > 0:
        raise ValueError("need the same non-zero number of ks, n_types, n_kepts and n_totals")
    offset, pmf = 0, np.ones(1)
    for k, n_type, n_kept, n_total in zip(ks, n_types, n_kepts, n_totals, strict=True):
        if not 0 <= k <= min(n_type, n_kept):
            raise ValueError(f"k = {k} is impossible with n_type = {n_type}, n_kept = {n_kept}")
        seed_offset, seed_pmf = hypergeom_pmf(n_type, n_kept, n_total)
        offset, pmf = offset + seed_offset, np.convolve(pmf, seed_pmf)
    return tail_p(offset, pmf, int(sum(ks)), alternative)


# --- units that can reach the output -----------------------------------------------------------


def rotary_partner(units: np.ndarray, head_dim: int) -> np.ndarray:
    """The unit each q/k unit is rotated with by ESM-2's rotary embedding: dimension d of a
    head pairs with d + head_dim / 2 (fair-esm's rotate_half)."""
    half = head_dim // 2
    return units - units % head_dim + (units % head_dim + half) % head_dim


def effective_masks(
    keep: Mapping[tuple[int, str], np.ndarray],
    num_layers: int,
    embed_dim: int,
    heads: int,
    ffn_dim: int,
    *,
    models: bool = False,
) -> dict[tuple[int, str], np.ndarray]:
    """The kept units (or weights) of `keep` that can still change the model's output.

    `keep` maps (layer, module) to a boolean mask over the module's output units (units,) or
    its weights (units, inputs); a module not in `keep` is intact. With `models`, every mask
    has a leading axis of models, (models, units) or (models, units, inputs), each model
    judged on its own. out_proj and fc2 units write
    to the residual stream, so all of them count. An fc1 unit counts if an fc2 unit reads it;
    a v unit if an out_proj unit reads it. A head's attention pattern (its q and k) matters
    only if it mixes something that varies (a v unit with input weights) and is read by
    out_proj. The attention logit is sum_d q'_d k'_d after the rotary embedding, which mixes
    unit d of a head with its partner d + head_dim / 2, so a q unit also needs its k unit or
    the partner's to be non-zero, and k the same with q. At unit level an ablated unit outputs
    0 and "reads" means kept; per weight (ESM-2's Linears have biases, which pruning keeps) a
    unit outputs its bias when none of its weights are kept: never 0, constant over positions,
    and fc1 unit j (v unit j) is read only through a kept weight of input column j of fc2
    (out_proj). Returns the masks of `keep`, same keys and shapes: kept AND effective.
    """
    keep = {key: np.asarray(mask, dtype=bool) for key, mask in keep.items()}
    if not models:
        keep = {key: mask[None] for key, mask in keep.items()}
    head_dim = embed_dim // heads
    widths = {"embed": embed_dim, "ffn": ffn_dim}
    units = {m.name: widths[m.width] for m in MODULE_TYPES}
    n_models = {mask.shape[0] for mask in keep.values()}
    if len(n_models) > 1:
        raise ValueError(f"masks for different numbers of models: {sorted(n_models)}")
    n_models = n_models.pop() if n_models else 1
    for (layer, module), mask in keep.items():
        if not 0 <= layer < num_layers or module not in units:
            raise ValueError(f"unknown unit group ({layer}, {module!r})")
        if mask.ndim not in (2, 3) or mask.shape[1] != units[module]:
            raise ValueError(f"({layer}, {module}): {mask.shape[1]} units, not {units[module]}")

    def mask_of(layer, module):
        return keep.get((layer, module), np.ones((n_models, units[module]), bool))

    def nonzero(mask):  # per unit: the output is not identically 0
        return mask if mask.ndim == 2 else np.ones(mask.shape[:2], bool)

    def varying(mask):  # per unit: the output depends on the input
        return mask if mask.ndim == 2 else mask.any(axis=2)

    def read_columns(mask, n_inputs):  # per input: some kept unit reads it
        if mask.ndim == 2:
            return np.repeat(mask.any(axis=1, keepdims=True), n_inputs, axis=1)
        return mask.any(axis=1)

    def layer_matters(layer):  # per module of `layer`: which units can change the output
        masks = {module: mask_of(layer, module) for module in units}
        v_read = read_columns(masks["out_proj"], embed_dim)
        head_matters = (varying(masks["v_proj"]) & v_read).reshape(n_models, heads, head_dim)
        head_matters = head_matters.any(axis=2)
        index = np.arange(embed_dim)
        partner, head_of = rotary_partner(index, head_dim), index // head_dim
        matters = {}
        for m in MODULE_TYPES:  # the reach rules of model.units
            kind, _, other = m.reach.partition(":")
            if kind == "residual":
                matters[m.name] = np.ones((n_models, units[m.name]), bool)
            elif kind == "read_by":
                matters[m.name] = read_columns(masks[other], units[m.name])
            elif kind == "logit":
                other_nonzero = nonzero(masks[other])
                matters[m.name] = head_matters[:, head_of] & (
                    other_nonzero | other_nonzero[:, partner]
                )
            else:
                raise ValueError(f"{m.name}: unknown reach rule {m.reach!r}")
        return matters

    matters = {layer: layer_matters(layer) for layer in {layer for layer, _ in keep}}
    effective = {}
    for (layer, module), mask in keep.items():
        unit_matters = matters[layer][module]  # per weight: the weight's unit decides
        both = mask & unit_matters.reshape(*unit_matters.shape, *[1] * (mask.ndim - 2))
        effective[(layer, module)] = both if models else both[0]
    return effective
