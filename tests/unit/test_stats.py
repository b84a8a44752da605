"""The frontier's bootstrap: coverage, pairing by seed, exact AUC, determinism, bad input."""

from __future__ import annotations

import itertools

import numpy as np
import pytest

from rvepfl.experiments.stats import (
    AucSample,
    Interval,
    MeanSample,
    SeedDraw,
    bootstrap,
    derived,
    roc_auc,
)


def bernoulli(n: int, ones: int, seed: int) -> np.ndarray:
    values = np.array([1.0] * ones + [0.0] * (n - ones))
    return np.random.default_rng(seed).permutation(values)


def pairwise_auc(pos: np.ndarray, neg: np.ndarray) -> float:
    """The definition: P(member > non-member) + P(tie) / 2, over every pair."""
    return float(np.mean([1.0 if p > q else 0.5 if p == q else 0.0 for p, q in itertools.product(pos, neg)]))


# -- coverage ------------------------------------------------------------------------------------
def test_one_seed_of_100_bernoulli_gives_the_binomial_interval():
    iv = bootstrap([MeanSample(bernoulli(100, 50, 0))], SeedDraw(1, boot=2000), "coin")
    assert iv.mean == 0.5
    assert iv.contains(0.5)
    half = (iv.high - iv.low) / 2
    assert 0.08 < half < 0.12  # 1.96 * sqrt(0.25 / 100) = 0.098
    assert abs((iv.low + iv.high) / 2 - 0.5) < 0.02


def test_three_seeds_the_estimate_is_the_mean_of_the_seeds_and_lies_inside():
    samples = [MeanSample(bernoulli(60, k, s)) for s, k in enumerate((24, 30, 36))]
    iv = bootstrap(samples, SeedDraw(3, boot=1000), "three")
    assert iv.mean == pytest.approx(np.mean([24 / 60, 30 / 60, 36 / 60]))
    assert iv.low < iv.mean < iv.high
    # wider than the within-seed spread alone: the seeds differ by 10 points
    alone = bootstrap([MeanSample(bernoulli(180, 90, 0))], SeedDraw(1, boot=1000), "pooled")
    assert iv.high - iv.low > alone.high - alone.low


def test_constant_units_in_one_seed_give_a_zero_width_interval():
    iv = bootstrap([MeanSample(np.full(7, 0.3))], SeedDraw(1, boot=50), "flat")
    assert (iv.mean, iv.low, iv.high) == pytest.approx((0.3, 0.3, 0.3))


# -- pairing -------------------------------------------------------------------------------------
def test_a_constant_shift_per_seed_gives_a_zero_width_paired_difference():
    base = (0.55, 0.70, 0.90)  # seeds differ a lot; within a seed every unit is the same
    draw = SeedDraw(3, boot=500)
    a = bootstrap([MeanSample(np.full(20, v)) for v in base], draw, "a")
    b = bootstrap([MeanSample(np.full(20, v + 0.05)) for v in base], draw, "b")
    diff = derived(lambda x, y: y - x, a, b)
    assert (diff.mean, diff.low, diff.high) == pytest.approx((0.05, 0.05, 0.05))
    assert a.high - a.low > 0.2  # each alone is wide: the pairing is what cancels
    unpaired = bootstrap([MeanSample(np.full(20, v + 0.05)) for v in base], SeedDraw(3, boot=500, seed=1), "b")
    assert np.ptp(unpaired.replicates - a.replicates) > 0.2


def test_cells_resample_units_from_streams_of_their_own():
    draw = SeedDraw(2, boot=300)
    samples = [MeanSample(bernoulli(40, 20, 0)), MeanSample(bernoulli(40, 25, 1))]
    again = bootstrap(samples, draw, "cell")
    assert np.array_equal(bootstrap(samples, draw, "cell").replicates, again.replicates)
    assert not np.array_equal(bootstrap(samples, draw, "other cell").replicates, again.replicates)


def test_seed_draw_is_deterministic_and_handles_one_seed():
    assert np.array_equal(SeedDraw(3, boot=10, seed=4).indices, SeedDraw(3, boot=10, seed=4).indices)
    assert not np.array_equal(SeedDraw(3, boot=10, seed=4).indices, SeedDraw(3, boot=10, seed=5).indices)
    assert not SeedDraw(3).indices.flags.writeable
    draw = SeedDraw(3, boot=4000)
    assert np.bincount(draw.indices.ravel()) / draw.indices.size == pytest.approx([1 / 3] * 3, abs=0.01)


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


def test_auc_interval_of_separated_scores_sits_above_chance():
    rng = np.random.default_rng(0)
    samples = [AucSample(rng.normal(1.0, 1.0, 200), rng.normal(0.0, 1.0, 200)) for _ in range(3)]
    iv = bootstrap(samples, SeedDraw(3, boot=500), "mia")
    assert 0.5 < iv.low < iv.mean < iv.high < 1.0  # Phi(1 / sqrt 2) = 0.76


# -- bad input -----------------------------------------------------------------------------------
def test_bad_input_is_refused():
    with pytest.raises(ValueError, match="Expected 3 samples"):
        bootstrap([MeanSample(np.ones(3))], SeedDraw(3, boot=10), "x")
    with pytest.raises(ValueError, match="without nan"):
        MeanSample(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="non-empty 1-D"):
        AucSample(np.array([]), np.ones(2))
    with pytest.raises(ValueError, match="`n_seeds` >= 1"):
        SeedDraw(0)
    one, other = Interval.from_replicates(0.0, np.zeros(5)), Interval.from_replicates(0.0, np.zeros(6))
    with pytest.raises(ValueError, match="same number of replicates"):
        derived(lambda x, y: x - y, one, other)
