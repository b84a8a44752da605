"""The frontier's intervals cover what they claim: simulated frontiers with known truth.

Each simulated data set is a frontier measured over ``n`` seeds, with both levels of variation
present: a seed effect (shared by every cell of that seed, as the partition and initialisation
are, plus a part of each cell's own) and the units within a seed (clients' accuracies, attacked
images scored 0/1). The nominal 95 % interval must cover the truth at least 93 % of the time for
a cell's mean, a paired difference, the verdict's delta at equal attack success (through the real
envelope and :func:`compare_at_equal_success`) and shares near 0 and 1. The percentile bootstrap
over 3 seeds this module replaced is shown to under-cover, so the simulation can see a miss.

``python -m pytest tests/unit/test_stats_coverage.py -s`` prints every coverage it measures.
"""

from __future__ import annotations

import numpy as np
import pytest

from rvepfl.experiments.frontier_report import (
    COMPARED,
    FrontierPoint,
    Panel,
    compare_at_equal_success,
    estimate_points,
)
from rvepfl.experiments.stats import MeanSample, SeedDraw, cell_interval, derived

TARGET = 0.93
REGIMES = {  # (sd of the seed effect shared by every cell, sd of each cell's own seed effect, sd of a unit)
    "seeds dominate": (0.06, 0.04, 0.02),
    "units dominate": (0.005, 0.005, 0.15),
    "both": (0.04, 0.03, 0.12),
}
UNITS = 10  # clients (or images) per seed
CASES = [(regime, n) for regime in REGIMES for n in (3, 5)]
RUNS = 1000  # simulated data sets per case


def report(what: str, covered: np.ndarray) -> float:
    share = float(np.mean(covered))
    print(f"coverage {what}: {100 * share:.1f} % of {covered.size}")
    return share


def accuracy_units(rng: np.random.Generator, means: np.ndarray, regime: str, n: int) -> np.ndarray:
    """Units (cells, seeds, UNITS) around each cell's true mean, with a shared and an own seed effect."""
    shared_sd, own_sd, unit_sd = REGIMES[regime]
    shared = rng.normal(0.0, shared_sd, (1, n, 1))
    own = rng.normal(0.0, own_sd, (means.size, n, 1))
    return means[:, None, None] + shared + own + rng.normal(0.0, unit_sd, (means.size, n, UNITS))


# -- a cell's mean and a paired difference -------------------------------------------------------
@pytest.mark.parametrize(("regime", "n"), [*CASES, *((regime, 10) for regime in REGIMES)])
def test_a_cells_mean_and_a_paired_difference_are_covered(regime, n):
    rng = np.random.default_rng([1, n, list(REGIMES).index(regime)])
    truth = np.array([0.70, 0.64])
    draw = SeedDraw(n)
    mean_hit, diff_hit = np.empty(RUNS, bool), np.empty(RUNS, bool)
    for k in range(mean_hit.size):
        units = accuracy_units(rng, truth, regime, n)
        a = cell_interval([MeanSample(u) for u in units[0]], draw, "a")
        b = cell_interval([MeanSample(u) for u in units[1]], draw, "b")
        mean_hit[k] = a.contains(truth[0])
        diff_hit[k] = derived(lambda x, y: x - y, a, b).contains(truth[0] - truth[1])
    assert report(f"{regime}, {n} seeds: a cell's mean", mean_hit) >= TARGET
    assert report(f"{regime}, {n} seeds: a paired difference", diff_hit) >= TARGET


# -- the verdict's delta -------------------------------------------------------------------------
MI = Panel("mi", "MI", "images recognised (%)")
CURVE = ((1.0, 0.10, 0.50), (2.0, 0.50, 0.80), (3.0, 0.90, 0.85))  # (knob, success, accuracy): concave
REFERENCE = (0.30, 0.62)  # NbAFL's hull at 0.30 is 0.50 + 0.75 * 0.20 = 0.65: the true delta is -3 points
IMAGES = 30  # attacked images per seed


@pytest.mark.parametrize(("regime", "n"), CASES)
def test_the_verdicts_delta_at_equal_success_is_covered(regime, n):
    rng = np.random.default_rng([2, n, list(REGIMES).index(regime)])
    seeds = tuple(range(n))
    cells = [(m, v, s, a) for m, v, s, a in [("nbafl", *c) for c in CURVE] + [("rvepfl", 0.0, *REFERENCE)]]
    accuracy = np.array([a for *_, a in cells])
    success = np.array([s for _, _, s, _ in cells])
    draw = SeedDraw(n)
    hits, compared = [], 0
    for _ in range(RUNS):
        units = accuracy_units(rng, accuracy, regime, n)
        p = np.clip(success[:, None] + rng.normal(0.0, 0.03, (success.size, n)), 0.0, 1.0)  # seed-level too
        shown = (rng.random((success.size, n, IMAGES)) < p[..., None]).astype(float)
        points = [FrontierPoint("sim", m, "k", v, seeds, tuple(MeanSample(u) for u in units[i]),
                                {MI.key: tuple(MeanSample(u) for u in shown[i])})
                  for i, (m, v, _, _) in enumerate(cells)]
        [c] = compare_at_equal_success(estimate_points(points, [MI], draw), [MI], against=("nbafl",))
        if c.status == COMPARED:
            compared += 1
            hits.append(c.delta.contains(-3.0))
    assert compared >= 0.99 * RUNS  # the reference is well inside NbAFL's range
    assert report(f"{regime}, {n} seeds: the verdict's delta", np.array(hits)) >= TARGET


# -- shares --------------------------------------------------------------------------------------
@pytest.mark.parametrize("p", [0.02, 0.3, 0.98])
@pytest.mark.parametrize(("units", "n", "spread"), [(6, 3, 0.0), (10, 3, 0.1), (10, 5, 0.1), (30, 3, 0.05)])
def test_shares_are_covered_near_0_and_1(p, units, n, spread):
    """Each seed's chance of success drawn around ``p`` (a beta with that mean and sd ``spread``)."""
    rng = np.random.default_rng([3, units, n, int(1000 * p), int(100 * spread)])
    draw = SeedDraw(n)
    if spread:
        concentration = p * (1 - p) / spread**2 - 1
        chance = rng.beta(p * concentration, (1 - p) * concentration, (RUNS, n))
    else:
        chance = np.full((RUNS, n), p)
    shown = (rng.random((RUNS, n, units)) < chance[..., None]).astype(float)
    hits = np.array([cell_interval([MeanSample(u) for u in data], draw, "share").contains(p) for data in shown])
    assert report(f"share p = {p}, {units} units a seed, {n} seeds, seed sd {spread}", hits) >= TARGET


# -- the positive control: the old interval ------------------------------------------------------
def old_percentile_bootstrap(rng: np.random.Generator, units: np.ndarray, boot: int = 400) -> tuple[float, float]:
    """The interval this module gave before: seeds drawn with replacement, then units within each drawn seed."""
    n, m = units.shape
    seeds = rng.integers(0, n, (boot, n))
    picks = rng.integers(0, m, (boot, n, m))
    replicates = units[seeds[..., None], picks].mean(axis=(1, 2))
    low, high = np.percentile(replicates, [2.5, 97.5])
    return float(low), float(high)


def test_the_old_percentile_bootstrap_over_3_seeds_under_covers():
    rng = np.random.default_rng(4)
    truth = np.array([0.70])
    old, new = np.empty(RUNS, bool), np.empty(RUNS, bool)
    for k in range(old.size):
        units = accuracy_units(rng, truth, "seeds dominate", 3)[0]
        low, high = old_percentile_bootstrap(rng, units)
        old[k] = low <= truth[0] <= high
        new[k] = cell_interval([MeanSample(u) for u in units], SeedDraw(3), "cell").contains(truth[0])
    assert report("seeds dominate, 3 seeds: the old percentile bootstrap", old) < 0.85
    assert report("seeds dominate, 3 seeds: t over seeds, the same data", new) >= TARGET
