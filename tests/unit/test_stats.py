"""The frontier's intervals: t over seeds, the paired jackknife, exact shares, one seed, exact AUC, bad input.

Their coverage, simulated, is in ``test_stats_coverage.py``.
"""

from __future__ import annotations

import itertools

import numpy as np
import pytest
from scipy import stats as scipy_stats

from rvepfl.experiments.stats import (
    AucSample,
    Interval,
    MeanSample,
    SeedDraw,
    cell_interval,
    clopper_pearson,
    derived,
    roc_auc,
    t_quantile,
)


def bernoulli(n: int, ones: int, seed: int) -> np.ndarray:
    values = np.array([1.0] * ones + [0.0] * (n - ones))
    return np.random.default_rng(seed).permutation(values)


def pairwise_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """The definition: P(member > non-member) + P(tie) / 2, over every pair."""
    return float(np.mean([1.0 if p > q else 0.5 if p == q else 0.0 for p, q in itertools.product(pos, neg)]))


def seeds_of(values, units: int = 4) -> list[MeanSample]:
    """One sample per seed whose units all equal that seed's value: the seed's statistic is exact."""
    return [MeanSample(np.full(units, v)) for v in values]


# -- t over seeds --------------------------------------------------------------------------------
def test_a_cell_over_seeds_is_students_t_on_the_seeds_statistics():
    rng = np.random.default_rng(0)
    samples = [MeanSample(rng.normal(mu, 0.05, 12)) for mu in (0.55, 0.62, 0.70, 0.66)]
    stats = np.array([s.statistic() for s in samples])
    iv = cell_interval(samples, SeedDraw(4), "cell")
    low, high = scipy_stats.t.interval(0.95, 3, loc=stats.mean(), scale=scipy_stats.sem(stats))
    assert (iv.mean, iv.low, iv.high) == pytest.approx((stats.mean(), low, high), abs=1e-12)
    assert not iv.within_seed_only and iv.leave_one_out == pytest.approx((stats.sum() - stats) / 3)


def test_t_quantile_golden_values():
    assert [round(t_quantile(df), 3) for df in (1, 2, 4, 9)] == [12.706, 4.303, 2.776, 2.262]


def test_the_seed_level_is_not_understated_as_the_bootstrap_did():
    # seeds 10 points apart, units exact within a seed: the interval is t_2 * sd / sqrt(3) wide on each side
    iv = cell_interval(seeds_of((0.40, 0.50, 0.60)), SeedDraw(3), "spread")
    assert iv.half_width == pytest.approx(4.303 * 0.1 / np.sqrt(3), abs=1e-3)


def test_a_mean_of_fractions_is_held_within_0_and_1():
    iv = cell_interval(seeds_of((0.90, 0.99, 0.97)), SeedDraw(3), "high")
    assert iv.high == 1.0 and iv.low < iv.mean < 1.0
    unbounded = cell_interval(seeds_of((0.90, 1.5, 0.97)), SeedDraw(3), "not fractions")
    assert unbounded.high > 1.0


# -- pairing: the jackknife ----------------------------------------------------------------------
def test_a_constant_shift_per_seed_gives_a_zero_width_paired_difference():
    base = (0.55, 0.70, 0.90)  # seeds differ a lot; the shift is the same in every seed
    draw = SeedDraw(3)
    a = cell_interval(seeds_of(base), draw, "a")
    b = cell_interval(seeds_of([v + 0.05 for v in base]), draw, "b")
    diff = derived(lambda x, y: y - x, a, b)
    assert (diff.mean, diff.low, diff.high) == pytest.approx((0.05, 0.05, 0.05))
    assert a.high - a.low > 0.2  # each alone is wide: the pairing is what cancels


def test_a_paired_difference_is_the_paired_t_interval():
    # Per-seed differences 19.55, 34.0, 48.45 points: mean 34.0, paired t-test p = 0.055, interval
    # [-1.9, 69.9]. The percentile bootstrap over these 3 seeds called it significant.
    ref = np.array([60.0, 71.0, 80.0])
    other = ref - np.array([19.55, 34.0, 48.45])
    draw = SeedDraw(3)
    a = cell_interval(seeds_of(ref), draw, "ref")
    b = cell_interval(seeds_of(other), draw, "other")
    diff = derived(lambda x, y: x - y, a, b)
    test = scipy_stats.ttest_rel(ref, other)
    low, high = test.confidence_interval(0.95)
    assert round(test.pvalue, 3) == 0.055
    assert (diff.mean, diff.low, diff.high) == pytest.approx((34.0, low, high), abs=1e-9)
    assert (round(diff.low, 1), round(diff.high, 1)) == (-1.9, 69.9) and diff.contains(0.0)


def test_a_smooth_derived_quantity_gets_the_jackknife_standard_error():
    draw = SeedDraw(5)
    values = np.array([0.2, 0.3, 0.25, 0.4, 0.35])
    a = cell_interval(seeds_of(values), draw, "a")
    ratio = derived(lambda x: x / (1 - x), a)
    loo = (values.sum() - values) / 4
    theta = loo / (1 - loo)
    se = np.sqrt(4 / 5 * np.sum((theta - theta.mean()) ** 2))
    m = values.mean() / (1 - values.mean())
    assert (ratio.mean, ratio.low, ratio.high) == pytest.approx((m, m - t_quantile(4) * se, m + t_quantile(4) * se))


def test_intervals_scale_clip_and_widen():
    iv = Interval.from_leave_one_out(0.5, np.array([0.4, 0.5, 0.6]))
    pct = iv.scaled(100.0)
    assert (pct.mean, pct.low, pct.high) == pytest.approx((50.0, 100 * iv.low, 100 * iv.high))
    assert pct.replicates == pytest.approx([40.0, 50.0, 60.0])
    assert iv.clipped(0.3, 0.6).high == 0.6 and iv.widened(0.0, 0.1).low == 0.0


# -- shares --------------------------------------------------------------------------------------
@pytest.mark.parametrize(("k", "n"), [(0, 6), (6, 6), (3, 30), (17, 40), (1, 1)])
def test_clopper_pearson_matches_scipys_exact_binomial_interval(k, n):
    want = scipy_stats.binomtest(k, n).proportion_ci(0.95, method="exact")
    assert clopper_pearson(k, n) == pytest.approx((want.low, want.high), abs=1e-12)


def test_a_share_of_nothing_or_everything_is_not_a_point():
    draw = SeedDraw(3)
    none = cell_interval([MeanSample(np.zeros(2))] * 3, draw, "0 of 6")
    assert (none.mean, none.low) == (0.0, 0.0) and round(none.high, 3) == 0.459
    every = cell_interval([MeanSample(np.ones(2))] * 3, draw, "6 of 6")
    assert (every.mean, every.high) == (1.0, 1.0) and round(every.low, 3) == 0.541
    fedavg = cell_interval([MeanSample(np.ones(10))] * 3, draw, "30 of 30")  # FedAvg's "100 [100, 100]"
    assert round(fedavg.low, 3) == 0.884


def test_clients_attacked_on_the_same_classes_count_once_in_the_exact_bound():
    # 4 clients x 10 classes, every one recognised, in 3 seeds: FedAvg's clients hold one model, so
    # the 120 rows are 30 independent results at most; the bound counts 30, not 120
    draw = SeedDraw(3)
    clustered = cell_interval([MeanSample(np.ones(40), clusters=4)] * 3, draw, "stolen, 4 clients")
    assert clustered.low == pytest.approx(clopper_pearson(30, 30)[0]) and round(clustered.low, 3) == 0.884
    naive = cell_interval([MeanSample(np.ones(40))] * 3, draw, "stolen, as if independent")
    assert naive.low == pytest.approx(clopper_pearson(120, 120)[0]) and naive.low > clustered.low
    with pytest.raises(ValueError, match="positive divisor of the 40 units"):
        MeanSample(np.ones(40), clusters=3)


def test_a_share_spread_over_seeds_keeps_the_t_interval():
    draw = SeedDraw(3)
    samples = [MeanSample(bernoulli(10, k, s)) for s, k in enumerate((1, 5, 9))]
    iv = cell_interval(samples, draw, "spread")
    exact = clopper_pearson(15, 30)
    assert iv.low == 0.0 and iv.high == 1.0  # t over (0.1, 0.5, 0.9) reaches past both ends: clipped
    assert iv.low < exact[0] and iv.high > exact[1]


def test_counts_are_only_for_zero_one_units():
    assert MeanSample(np.array([0.0, 1.0, 1.0])).counts() == (2.0, 3.0)
    assert MeanSample(np.array([0.0, 0.5])).counts() is None
    mixed = cell_interval([MeanSample(np.zeros(2)), MeanSample(np.array([0.0, 0.5])), MeanSample(np.zeros(2))],
                          SeedDraw(3), "mixed")
    stats = np.array([0.0, 0.25, 0.0])  # not every seed a share: the t interval only
    assert mixed.high == pytest.approx(stats.mean() + t_quantile(2) * scipy_stats.sem(stats))


# -- one seed: within that seed only -------------------------------------------------------------
def test_one_seed_of_100_bernoulli_gives_the_binomial_interval():
    iv = cell_interval([MeanSample(bernoulli(100, 50, 0))], SeedDraw(1, boot=2000), "coin")
    assert iv.mean == 0.5 and iv.within_seed_only and iv.basis == "units"
    half = (iv.high - iv.low) / 2
    assert 0.09 < half < 0.12  # 1.96 * sqrt(0.25 / 100) = 0.098; the exact interval is [0.398, 0.602]
    assert abs((iv.low + iv.high) / 2 - 0.5) < 0.02


def test_one_seed_constant_units_give_a_zero_width_interval_and_no_leave_one_out():
    iv = cell_interval([MeanSample(np.full(7, 0.3))], SeedDraw(1, boot=50), "flat")
    assert (iv.mean, iv.low, iv.high) == pytest.approx((0.3, 0.3, 0.3))
    with pytest.raises(ValueError, match="within-seed one"):
        _ = iv.leave_one_out


def test_one_seed_derived_works_replicate_by_replicate_from_streams_of_each_cell():
    draw = SeedDraw(1, boot=300)
    sample = [MeanSample(bernoulli(40, 20, 0))]
    a, again, b = (cell_interval(sample, draw, key) for key in ("cell", "cell", "other cell"))
    assert np.array_equal(a.replicates, again.replicates)
    assert not np.array_equal(a.replicates, b.replicates)
    diff = derived(lambda x, y: x - y, a, b)
    assert diff.within_seed_only and diff.mean == 0.0 and diff.low < 0 < diff.high
    assert (diff.low, diff.high) == tuple(np.percentile(a.replicates - b.replicates, [2.5, 97.5]))


def test_over_seeds_the_cell_key_changes_nothing():
    samples = [MeanSample(bernoulli(40, k, s)) for s, k in enumerate((18, 20, 25))]
    one, two = cell_interval(samples, SeedDraw(3), "a"), cell_interval(samples, SeedDraw(3, seed=9), "b")
    assert (one.mean, one.low, one.high) == (two.mean, two.low, two.high)


# -- AUC -----------------------------------------------------------------------------------------
@pytest.mark.parametrize(("members", "nonmembers", "auc"), [
    ([3, 4], [1, 2], 1.0),
    ([1, 2], [3, 4], 0.0),
    ([1, 3], [2, 2], 0.5),
    ([2], [2, 1], 0.75),
    ([5, 5, 5], [5, 5], 0.5),
    ([0.9, 0.8, 0.3], [0.1, 0.4], 5 / 6),
])
def test_auc_on_hand_cases(members, nonmembers, auc):
    assert roc_auc(np.array(members, float), np.array(nonmembers, float)) == pytest.approx(auc, abs=1e-12)


def test_auc_matches_the_pairwise_definition_with_ties():
    rng = np.random.default_rng(3)
    pos, neg = rng.integers(0, 6, 40).astype(float), rng.integers(0, 5, 30).astype(float)
    assert roc_auc(pos, neg) == pytest.approx(pairwise_auc(pos, neg), abs=1e-12)


def test_auc_resample_is_the_auc_of_each_side_resampled():
    rng = np.random.default_rng(1)
    sample = AucSample(rng.integers(0, 8, 25).astype(float), rng.integers(0, 6, 15).astype(float))
    got = sample.resample(np.random.default_rng(7), 20)
    replay = np.random.default_rng(7)
    pos = replay.integers(0, 25, (20, 25))
    neg = replay.integers(0, 15, (20, 15))
    sorted_neg = np.sort(sample.nonmembers)
    want = [roc_auc(sample.members[pos[b]], sorted_neg[neg[b]]) for b in range(20)]
    assert got == pytest.approx(want, abs=1e-12)


def test_auc_interval_of_separated_scores_sits_above_chance_and_within_1():
    rng = np.random.default_rng(0)
    samples = [AucSample(rng.normal(1.0, 1.0, 200), rng.normal(0.0, 1.0, 200)) for _ in range(3)]
    iv = cell_interval(samples, SeedDraw(3), "mia")
    assert 0.5 < iv.low < iv.mean < iv.high < 1.0  # Phi(1 / sqrt 2) = 0.76
    perfect = cell_interval([AucSample(np.array([2.0, 3.0]), np.array([0.0, v])) for v in (0.0, 1.0, 2.5)],
                            SeedDraw(3), "near 1")
    assert perfect.high == 1.0 and perfect.low < perfect.mean


# -- bad input -----------------------------------------------------------------------------------
def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="Expected 3 samples"):
        cell_interval([MeanSample(np.ones(3))], SeedDraw(3), "x")
    with pytest.raises(ValueError, match="without nan"):
        MeanSample(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="non-empty 1-D"):
        AucSample(np.array([]), np.ones(2))
    with pytest.raises(ValueError, match="`n_seeds` >= 1"):
        SeedDraw(0)
    with pytest.raises(ValueError, match="`boot` >= 2"):
        SeedDraw(1, boot=1)
    with pytest.raises(ValueError, match="successes"):
        clopper_pearson(7, 6)
    with pytest.raises(ValueError, match="`factor` > 0"):
        Interval.from_leave_one_out(0.0, np.zeros(3)).scaled(-1.0)
    three, four = Interval.from_leave_one_out(0.0, np.zeros(3)), Interval.from_leave_one_out(0.0, np.zeros(4))
    with pytest.raises(ValueError, match="same number of replicates"):
        derived(lambda x, y: x - y, three, four)
    within = Interval.from_bootstrap(0.0, np.zeros(3))
    with pytest.raises(ValueError, match="one basis"):
        derived(lambda x, y: x - y, three, within)
    with pytest.raises(ValueError, match="at least one"):
        derived(lambda: 0.0)
