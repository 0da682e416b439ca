"""kneurons.analysis.stats against hand-computed cases and brute-force enumeration."""

import itertools
import math
import warnings
from fractions import Fraction

import numpy as np
import pytest
from scipy import stats as sps

from kneurons.analysis.stats import (
    bootstrap_ci,
    bootstrap_means,
    effective_masks,
    fisher_combined,
    fisher_floor,
    holm,
    hypergeom_pmf,
    mean_interval,
    paired_test,
    percentile_interval,
    permutation_p,
    pooled_enrichment_p,
    rotary_partner,
)

# --- bootstrap -------------------------------------------------------------------------------


def test_bootstrap_interval_by_hand():
    values = [0, 1, 1, 0]
    resamples = [[0, 0, 0, 0], [0, 3, 1, 3], [0, 1, 2, 3], [1, 2, 1, 0], [1, 1, 2, 2]]
    means = bootstrap_means(values, resamples)
    assert means.tolist() == [0, 0.25, 0.5, 0.75, 1]
    # 5 sorted means: the 25% quantile sits at position 0.25 * 4 = 1, the 5% at 0.2
    assert percentile_interval(means, level=0.5) == (0.25, 0.75)
    assert percentile_interval(means, level=0.9) == pytest.approx((0.05, 0.95))


def test_bootstrap_ci_is_seeded_and_uses_its_resamples():
    values = np.random.default_rng(5).normal(size=30)  # continuous: seeds give other ends
    assert bootstrap_ci(values, seed=3) == bootstrap_ci(values, seed=3)
    assert bootstrap_ci(values, seed=3) != bootstrap_ci(values, seed=4)
    indices = np.random.default_rng(3).integers(0, 30, size=(500, 30))
    expected = percentile_interval(bootstrap_means(values, indices), 0.9)
    assert bootstrap_ci(values, n_boot=500, seed=3, level=0.9) == expected


def test_bootstrap_ci_of_a_proportion_is_near_the_normal_interval():
    values = np.repeat([0, 1], 200)  # p = 0.5, standard error 0.025
    low, high = bootstrap_ci(values, n_boot=4000)
    assert low == pytest.approx(0.5 - 1.96 * 0.025, abs=0.01)
    assert high == pytest.approx(0.5 + 1.96 * 0.025, abs=0.01)
    assert bootstrap_ci([1, 1, 1]) == (1.0, 1.0)
    with pytest.raises(ValueError, match="non-empty"):
        bootstrap_ci([])


# --- t interval and paired test --------------------------------------------------------------


def t_quantile_df2(q):  # closed form of Student's t quantile with 2 degrees of freedom
    return (2 * q - 1) / math.sqrt(2 * q * (1 - q))


def test_mean_interval_by_hand():
    # [1, 2, 3]: mean 2, sd 1, standard error 1 / sqrt(3)
    half = t_quantile_df2(0.975) / math.sqrt(3)
    assert t_quantile_df2(0.975) == pytest.approx(4.302652729911275)
    assert mean_interval([1, 2, 3]) == pytest.approx((2, 2 - half, 2 + half))
    # df = 1 is Cauchy: quantile tan(pi (q - 1/2)); [0, 2]: sd sqrt(2), standard error 1
    half = math.tan(math.pi * 0.45)
    assert mean_interval([0, 2], level=0.9) == pytest.approx((1, 1 - half, 1 + half))
    mean, low, high = mean_interval([5.0])
    assert mean == 5.0 and math.isnan(low) and math.isnan(high)


def test_paired_test_by_hand():
    result = paired_test([1, 2, 3])
    t = 2 / (1 / math.sqrt(3))
    p = 1 - t / math.sqrt(2 + t**2)  # two-sided tail of t with 2 degrees of freedom
    assert result["t"] == pytest.approx(t)
    assert result["p"] == pytest.approx(p)
    assert result["n"] == 3
    assert (result["mean"], result["ci_low"], result["ci_high"]) == mean_interval([1, 2, 3])


def test_paired_test_reaches_small_p_with_five_seeds():
    # five consistent differences: every sign-flip test stops at 2 / 2**5 = 0.0625
    assert paired_test([1.0, 1.1, 0.9, 1.05, 0.95])["p"] < 0.01


def test_paired_test_without_variance_decides_explicitly():
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        positive, zero, negative = (
            paired_test([0.5] * 5),
            paired_test([0.0] * 5),
            paired_test([-2] * 3),
        )
    assert (positive["p"], positive["t"]) == (0.0, math.inf)
    assert (zero["p"], zero["t"]) == (1.0, 0.0)
    assert (negative["p"], negative["t"]) == (0.0, -math.inf)
    assert (positive["ci_low"], positive["ci_high"]) == (0.5, 0.5)
    single = paired_test([0.3])
    assert math.isnan(single["p"]) and math.isnan(single["t"]) and single["mean"] == 0.3


# --- Holm ------------------------------------------------------------------------------------


def test_holm_by_hand():
    # sorted: 0.005 x 4 = 0.02, 0.01 x 3 = 0.03, 0.03 x 2 = 0.06, 0.04 x 1 = 0.04 -> 0.06
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.6]).tolist() == [1.0, 1.0]  # 0.5 x 2 = 1, capped
    assert holm([0.02, 0.02]).tolist() == [0.04, 0.04]
    assert holm([]).shape == (0,)


def test_holm_ignores_nan():
    adjusted = holm([0.01, math.nan, 0.04])  # two tests: 0.01 x 2, 0.04 x 1
    assert adjusted[[0, 2]] == pytest.approx([0.02, 0.04]) and math.isnan(adjusted[1])
    assert np.isnan(holm([math.nan, math.nan])).all()


# --- permutation p-values and their combination ------------------------------------------------


def test_permutation_p_by_hand():
    draws = [0.1, 0.2, 0.3, 0.3, 0.5]
    assert permutation_p(0.6, draws) == pytest.approx(1 / 6)  # above all 5: the floor 1/(1+n)
    assert permutation_p(0.3, draws) == pytest.approx(4 / 6)  # ties count: 0.3, 0.3, 0.5
    assert permutation_p(0.0, draws) == 1.0
    assert permutation_p(0.15, draws, "less") == pytest.approx(2 / 6)  # 0.1
    assert permutation_p(0.5, [0.5] * 99) == 1.0
    assert permutation_p(0.9, np.linspace(0, 0.5, 99)) == pytest.approx(0.01)  # 99 draws
    assert math.isnan(permutation_p(0.5, []))
    assert permutation_p(0.5, [math.nan, 0.6]) == pytest.approx(2 / 2)  # the NaN draw is no draw
    with pytest.raises(ValueError, match="alternative"):
        permutation_p(0.5, draws, "two-sided")


def test_permutation_p_is_valid_under_the_null():
    # the observed value is one more draw of the same distribution: P(p <= a) <= a for every a
    rng = np.random.default_rng(3)
    ps = np.array([permutation_p(rng.random(), rng.random(19)) for _ in range(20_000)])
    for a in (0.05, 0.1, 0.25, 0.5):
        assert (ps <= a).mean() <= a + 0.01
    assert (ps <= 0.05).mean() == pytest.approx(0.05, abs=0.006)  # exact at multiples of 1/20


def test_fisher_combination_on_a_known_vector():
    # X = -2 (ln 0.01 + ln 0.2 + ln 0.5) = 13.82; chi-squared with 6 df: sf = 0.03177
    x = -2 * (math.log(0.01) + math.log(0.2) + math.log(0.5))
    assert x == pytest.approx(13.8155, abs=1e-4)
    expected = math.exp(-x / 2) * (1 + x / 2 + (x / 2) ** 2 / 2)  # chi2(6) survival, closed form
    assert fisher_combined([0.01, 0.2, 0.5]) == pytest.approx(expected)
    assert expected == pytest.approx(0.03177, abs=1e-5)
    assert fisher_combined([0.01, math.nan, 0.2, 0.5]) == pytest.approx(expected)
    assert fisher_combined([1.0, 1.0]) == pytest.approx(1.0)
    assert math.isnan(fisher_combined([]))


def test_fisher_floor_says_what_the_draws_can_reach():
    assert fisher_floor(99, 1) == pytest.approx(0.01)  # one seed: the permutation floor
    assert fisher_floor(99, 1, 18) == pytest.approx(0.18)  # Holm over 18 rows: not < 0.05
    assert fisher_floor(359, 1, 18) == pytest.approx(0.05)  # one seed needs 359 draws
    assert fisher_floor(19, 5, 18) == pytest.approx(18 * fisher_combined([0.05] * 5))
    assert fisher_floor(19, 5, 18) < 0.05 < fisher_floor(3, 5, 18)
    assert fisher_floor(3, 1, 10) == 1.0


# --- enrichment ------------------------------------------------------------------------------


def brute_force_distribution(n_type, n_kept, n_total):
    """{k: probability} over every selection of n_kept of n_total units (type: the first)."""
    selections = list(itertools.combinations(range(n_total), n_kept))
    counts = {}
    for selection in selections:
        k = sum(unit < n_type for unit in selection)
        counts[k] = counts.get(k, 0) + 1
    return {k: Fraction(c, len(selections)) for k, c in counts.items()}


def brute_force_p(distribution, k, alternative):
    if alternative == "greater":
        return float(sum(p for x, p in distribution.items() if x >= k))
    if alternative == "less":
        return float(sum(p for x, p in distribution.items() if x <= k))
    return float(sum(p for p in distribution.values() if p <= distribution.get(k, 0)))


def sum_distribution(first, second):
    """{k1 + k2: probability} of independent pairs, enumerated pair by pair."""
    total = {}
    for (k1, p1), (k2, p2) in itertools.product(first.items(), second.items()):
        total[k1 + k2] = total.get(k1 + k2, 0) + p1 * p2
    return total


@pytest.mark.parametrize("alternative", ["greater", "less", "two-sided"])
def test_one_seed_enrichment_p_equals_enumeration(alternative):
    distribution = brute_force_distribution(3, 4, 8)  # 70 selections
    for k in range(4):
        expected = brute_force_p(distribution, k, alternative)
        assert pooled_enrichment_p([k], [3], [4], [8], alternative) == pytest.approx(
            expected, rel=1e-12
        )


@pytest.mark.parametrize("alternative", ["greater", "less", "two-sided"])
def test_pooled_enrichment_p_equals_enumeration_of_pairs(alternative):
    first, second = brute_force_distribution(3, 4, 8), brute_force_distribution(4, 3, 6)
    pairs = sum_distribution(first, second)  # 70 x 20 pairs of selections
    for k1, k2 in itertools.product(first, second):
        expected = brute_force_p(pairs, k1 + k2, alternative)
        pooled = pooled_enrichment_p([k1, k2], [3, 4], [4, 3], [8, 6], alternative)
        assert pooled == pytest.approx(expected, rel=1e-12)


def test_enrichment_at_model_scale():
    # 650M-like: 33 layers, q_proj 1280 of 7 x 1280 + 5120 units per layer, 10% kept
    n_type, n_total = 33 * 1280, 33 * (5 * 1280 + 5120)
    n_kept = n_total // 10
    offset, pmf = hypergeom_pmf(n_type, n_kept, n_total)
    assert pmf.sum() == pytest.approx(1, abs=1e-15)
    assert len(pmf) < 10_000  # the underflowed tails are dropped
    far = 4224 + 400  # about 7 standard deviations above the mean
    single = pooled_enrichment_p([far], [n_type], [n_kept], [n_total])
    assert single == pytest.approx(sps.hypergeom.sf(far - 1, n_total, n_type, n_kept), rel=1e-9)
    assert 0 < single < 1e-10
    pooled = pooled_enrichment_p([far] * 5, [n_type] * 5, [n_kept] * 5, [n_total] * 5)
    assert 0 < pooled < single
    assert pooled_enrichment_p([0], [n_type], [n_kept], [n_total]) == 1.0


def test_enrichment_rejects_impossible_counts():
    with pytest.raises(ValueError, match="impossible"):
        pooled_enrichment_p([4], [3], [4], [8])
    with pytest.raises(ValueError, match="n_total"):
        pooled_enrichment_p([1], [9], [4], [8])
    with pytest.raises(ValueError, match="alternative"):
        pooled_enrichment_p([1], [3], [4], [8], "both")
    with pytest.raises(ValueError, match="same"):
        pooled_enrichment_p([1, 2], [3], [4], [8])


# --- effective units -------------------------------------------------------------------------

EMBED, HEADS, FFN = 8, 2, 16  # head_dim 4: rotary pairs (0, 2) and (1, 3) within a head


def units(n, kept=()):
    mask = np.zeros(n, bool)
    mask[list(kept)] = True
    return mask


def test_rotary_partner():
    assert rotary_partner(np.arange(8), 4).tolist() == [2, 3, 0, 1, 6, 7, 4, 5]


def test_no_out_proj_leaves_no_attention_unit():
    keep = {(0, m): np.ones(EMBED, bool) for m in ("q_proj", "k_proj", "v_proj")}
    keep[(0, "out_proj")] = units(EMBED)
    effective = effective_masks(keep, 1, EMBED, HEADS, FFN)
    assert not any(mask.any() for mask in effective.values())


def test_q_unit_needs_its_k_unit_or_the_rotary_partner():
    keep = {(0, "q_proj"): units(EMBED, [0, 1, 3]), (0, "k_proj"): units(EMBED, [0, 2, 5])}
    effective = effective_masks(keep, 1, EMBED, HEADS, FFN)
    # q 0: k 0 kept; q 1: neither k 1 nor its partner k 3; q 3: k 3 no, partner k 1 no
    assert np.flatnonzero(effective[(0, "q_proj")]).tolist() == [0]
    # k 0: q 0; k 2: q 2 no, partner q 0 yes; k 5: q 5 no, partner q 7 no
    assert np.flatnonzero(effective[(0, "k_proj")]).tolist() == [0, 2]


def test_q_and_k_need_a_v_unit_in_their_head():
    keep = {(1, m): np.ones(EMBED, bool) for m in ("q_proj", "k_proj")}
    keep[(1, "v_proj")] = units(EMBED, [6])  # head 1 only
    effective = effective_masks(keep, 2, EMBED, HEADS, FFN)
    for module in ("q_proj", "k_proj"):
        assert effective[(1, module)].tolist() == [False] * 4 + [True] * 4
    assert effective[(1, "v_proj")].tolist() == units(EMBED, [6]).tolist()


def test_fc1_needs_fc2_and_absent_modules_are_intact():
    keep = {(0, "fc1"): np.ones(FFN, bool), (0, "fc2"): units(EMBED)}
    keep[(1, "fc1")] = units(FFN, [2, 5])  # layer 1's fc2 absent: intact
    keep[(1, "out_proj")] = units(EMBED, [1])
    effective = effective_masks(keep, 2, EMBED, HEADS, FFN)
    assert not effective[(0, "fc1")].any() and not effective[(0, "fc2")].any()
    assert effective[(1, "fc1")].tolist() == keep[(1, "fc1")].tolist()
    assert effective[(1, "out_proj")].tolist() == keep[(1, "out_proj")].tolist()
    assert list(effective) == list(keep)


def test_per_weight_masks():
    out_proj = np.ones((EMBED, EMBED), bool)
    out_proj[:, 4:] = False  # nothing reads head 1's output
    fc2 = np.ones((EMBED, FFN), bool)
    fc2[:, 10:] = False  # nothing reads fc1 units 10..15
    k_proj = np.ones((EMBED, EMBED), bool)
    k_proj[[1, 3]] = False  # k 1 and its partner keep only their biases
    keep = {(0, "out_proj"): out_proj, (0, "fc2"): fc2, (0, "k_proj"): k_proj}
    keep |= {(0, m): np.ones(shape, bool) for m, shape in [("v_proj", (8, 8)), ("q_proj", (8, 8))]}
    keep[(0, "fc1")] = np.ones((FFN, EMBED), bool)
    effective = effective_masks(keep, 1, EMBED, HEADS, FFN)
    assert all(effective[key].shape == mask.shape for key, mask in keep.items())
    assert (effective[(0, "v_proj")] == (np.arange(EMBED)[:, None] < 4)).all()
    assert (effective[(0, "q_proj")] == (np.arange(EMBED)[:, None] < 4)).all()  # q 1: k biases
    assert (effective[(0, "k_proj")] == (k_proj & (np.arange(EMBED)[:, None] < 4))).all()
    assert (effective[(0, "fc1")] == (np.arange(FFN)[:, None] < 10)).all()
    assert (effective[(0, "out_proj")] == out_proj).all() and (effective[(0, "fc2")] == fc2).all()

    # a head whose v units keep no weight outputs their biases, the same at every position
    v_proj = np.ones((EMBED, EMBED), bool)
    v_proj[:4] = False
    effective = effective_masks(
        {(0, "v_proj"): v_proj, (0, "q_proj"): np.ones((8, 8), bool)}, 1, EMBED, HEADS, FFN
    )
    assert (effective[(0, "q_proj")] == (np.arange(EMBED)[:, None] >= 4)).all()


def test_effective_masks_check_sizes():
    with pytest.raises(ValueError, match="units"):
        effective_masks({(0, "fc1"): np.ones(EMBED, bool)}, 1, EMBED, HEADS, FFN)
    with pytest.raises(ValueError, match="unknown"):
        effective_masks({(3, "fc1"): np.ones(FFN, bool)}, 1, EMBED, HEADS, FFN)
