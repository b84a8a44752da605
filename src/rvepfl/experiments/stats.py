"""Confidence intervals for a frontier: Student's t over seeds, a leave-one-seed-out jackknife for
what is derived from cells, exact binomial bounds for shares.

A measured quantity of one *cell* (a method at one knob value, on one data set: its accuracy, or
one attack's success) comes as one :class:`SeedSample` per seed: the units measured in that seed
(clients' final accuracies, attacked classes or images scored 0/1, member and non-member
scores). Its point estimate is the mean over seeds of each seed's statistic on all its units.

**The seed is the replication unit.** Each seed repeats the whole experiment (partition,
initialisation, training noise, the attack's draws), so the seeds' statistics ``y_1 .. y_n`` are
independent and identically distributed, and the variance of each already holds both levels:
``var(y_i) = var(seed effect) + var(units) / m``. Their sample variance estimates exactly that,
with no model of how it splits, so :func:`cell_interval` gives, with ``n >= 2`` seeds:

- the mean, and Student's t interval ``mean +- t_{n-1} sd / sqrt(n)``: exact when the seeds'
  statistics are normal, and close for a mean of many units;
- for a *share* (every unit 0 or 1: classes or images recognised), the hull of that interval and
  the exact Clopper-Pearson interval of the counts pooled over seeds, clipped to [0, 1]. The t
  interval alone collapses where every seed agrees (0 of 6 images in every seed gives [0, 0]);
  the exact one does not (0 of 6 gives [0, 45.9 %], 6 of 6 [54.1 %, 100 %]); the t interval
  keeps what pooling ignores, seed-to-seed spread;
- a ROC AUC (:class:`AucSample`) and a mean of fractions (clients' accuracies) clipped to [0, 1].

Why not a bootstrap over seeds (what this module did before): a percentile bootstrap over ``n``
values draws from their empirical spread, whose variance is ``(n - 1) / n`` of the sample's,
and takes normal quantiles where ``t_{n-1}`` is needed (4.30 for 3 seeds against 1.96); with 3
seeds its nominal 95 % interval covers about 75 % of the time when seeds dominate the variance.
Resampling units within seeds as well does not repair it (it counts the within-seed spread twice
and the seed level still once too little).

**Derived quantities** (:func:`derived`: a difference of two cells, the verdict's accuracy gap
through an envelope and an interpolation): every :class:`Interval` carries its *leave-one-seed-out*
estimates (the estimate recomputed without seed ``i``, for every ``i``), and ``derived`` applies
the function to them as to the estimates. The jackknife standard error
``sqrt((n - 1) / n * sum_i (theta_(i) - mean theta_(.))^2)`` with ``t_{n-1}`` gives the interval.
Every cell of a frontier has the same seeds in the same order, so seed ``i`` is left out of every
cell at once: the comparison is *paired* by seed, and what a seed does to both methods cancels.
For a linear function (a difference of means) this is exactly the paired t interval; for a smooth
one it is its delta-method form. A share's exact widening is not carried into derived
quantities (the report flags wide success intervals a verdict rests on instead).

**One seed** has no seed-level spread to estimate. Then the units within that seed are resampled
(a percentile bootstrap of :attr:`SeedDraw.boot` replicates, a share also hulled with its exact
interval) and ``derived`` works replicate by replicate: such intervals are *within-seed only*
(:attr:`Interval.within_seed_only`) and say nothing of how another seed would move the numbers.

Coverage, simulated in ``tests/unit/test_stats_coverage.py`` (``python -m pytest
tests/unit/test_stats_coverage.py -s`` prints it): at least 93 % for a cell's mean, a paired
difference, the verdict's gap and shares near 0 and 1, with 3 and 5 seeds, whether the seed or
the units dominate the variance. The intervals are per quantity, not simultaneous: among many of
them, some will miss by chance.

Everything is deterministic: the same samples, cell keys and draw give the same numbers.

>>> draw = SeedDraw(3)
>>> iv = cell_interval([MeanSample(np.full(4, v)) for v in (0.70, 0.74, 0.78)], draw, "demo")
>>> round(iv.mean, 6), round(iv.low, 4), round(iv.high, 4), iv.leave_one_out.shape
(0.74, 0.6406, 0.8394, (3,))
>>> nothing = cell_interval([MeanSample(np.zeros(2))] * 3, draw, "shares")  # 0 of 6 images
>>> nothing.mean, nothing.low, round(nothing.high, 3)
(0.0, 0.0, 0.459)
"""

from __future__ import annotations

import functools
import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np
from scipy import special as _special
from scipy import stats as _scipy_stats

from rvepfl.attacks.mia import auc_of

__all__ = [
    "LEVEL",
    "AucSample",
    "Interval",
    "MeanSample",
    "SeedDraw",
    "SeedSample",
    "cell_interval",
    "clopper_pearson",
    "derived",
    "roc_auc",
    "t_quantile",
]

LEVEL = 0.95
"""The confidence level of every interval."""

SEEDS, UNITS = "seeds", "units"
"""What an :class:`Interval`'s spread comes from: the seeds (t, jackknife) or one seed's units (bootstrap)."""


def _stream(seed: int, *keys: str | int) -> np.random.Generator:
    """A generator keyed by ``seed`` and ``keys`` through SHA-256, stable across runs and machines.

    Not :func:`rvepfl.seeding.numpy_rng`: its streams are a closed list of the training's sources
    of randomness, and a cell is keyed by a string, not integers.
    """
    text = ":".join([str(int(seed)), "bootstrap", *(str(k) for k in keys)])
    return np.random.default_rng(int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little"))


def _checked(name: str, values: np.ndarray) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim != 1 or array.size == 0:
        raise ValueError(f"Expected `{name}` a non-empty 1-D array, got shape {array.shape}")
    if np.isnan(array).any():
        raise ValueError(f"Expected `{name}` without nan, got {int(np.isnan(array).sum())} nan of {array.size}")
    array = array.copy()
    array.setflags(write=False)
    return array


# -- the distributions ---------------------------------------------------------------------------
@functools.lru_cache(maxsize=64)
def t_quantile(df: int) -> float:
    """The two-sided 95 % quantile of Student's t with ``df`` degrees of freedom.

    >>> round(t_quantile(2), 3), round(t_quantile(9), 3)
    (4.303, 2.262)
    """
    if df < 1:
        raise ValueError(f"Expected `df` >= 1, got {df}")
    return float(_scipy_stats.t.ppf(0.5 + LEVEL / 2, df))


@functools.lru_cache(maxsize=4096)
def clopper_pearson(successes: float, trials: float) -> tuple[float, float]:
    """The exact (Clopper-Pearson) 95 % interval of a binomial proportion (the beta quantiles,
    defined for fractional counts too, as an effective count gives).

    It inverts two one-sided binomial tests, so it covers the true proportion at least 95 % of the
    time whatever it is, 0 and 1 included: no success in ``trials`` still bounds it above by
    ``1 - 0.025 ** (1 / trials)``.

    >>> [round(v, 4) for v in clopper_pearson(0, 6)], [round(v, 4) for v in clopper_pearson(6, 6)]
    ([0.0, 0.4593], [0.5407, 1.0])
    >>> [round(v, 4) for v in clopper_pearson(5, 10)]
    [0.1871, 0.8129]
    """
    if trials < 1 or not 0 <= successes <= trials:
        raise ValueError(f"Expected 0 <= `successes` <= `trials` and `trials` >= 1, got {successes} of {trials}")
    alpha = 1.0 - LEVEL
    # the beta quantiles, through the inverse of the regularised incomplete beta function
    low = 0.0 if successes == 0 else float(_special.betaincinv(successes, trials - successes + 1, alpha / 2))
    high = 1.0 if successes == trials else float(_special.betaincinv(successes + 1, trials - successes, 1 - alpha / 2))
    return low, high


# -- per-seed samples ----------------------------------------------------------------------------
@runtime_checkable
class SeedSample(Protocol):
    """The units one seed measured for one cell, and a statistic of them."""

    def statistic(self) -> float:
        """The statistic on every unit."""
        ...

    def resample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        """The statistic on ``size`` resamples of the units (drawn from ``rng``), shape (size,)."""
        ...


@dataclass(frozen=True, eq=False)
class MeanSample:
    """Units whose mean is the statistic: clients' accuracies, or 0/1 success per class or image.

    A sample whose every unit is exactly 0 or 1 is a *share* (:meth:`counts`); a cell of shares
    gets the exact binomial bound too. (Clients' accuracies are never all exactly 0 or 1 in
    practice; were they, the cell would be read as a share, which only widens its interval.)

    >>> s = MeanSample(np.array([1.0, 0.0, 1.0, 1.0]))
    >>> s.statistic(), s.counts()
    (0.75, (3.0, 4.0))
    >>> r = s.resample(np.random.default_rng(0), 3)
    >>> r.shape, bool(((r >= 0) & (r <= 1)).all()), MeanSample(np.array([0.5, 1.0])).counts()
    ((3,), True, None)
    """

    values: np.ndarray
    clusters: int = 1
    """The groups the units come in whose results may move together: the clients of a stolen-model
    attack, each attacked on the same classes, whose models share a classifier (FedAvg's are one
    and the same model). The exact bound then counts one group's worth of units (the units over
    ``clusters``), the count that holds however alike the groups are; the t interval over seeds
    needs no such count (each seed's statistic already carries what its groups share)."""

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", _checked("values", self.values))
        if not isinstance(self.clusters, int) or self.clusters < 1 or self.values.size % self.clusters:
            raise ValueError(f"Expected `clusters` a positive divisor of the {self.values.size} units, "
                             f"got {self.clusters!r}")

    def statistic(self) -> float:
        return float(self.values.mean())

    def resample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        n = self.values.size
        return self.values[rng.integers(0, n, size=(size, n))].mean(axis=1)

    def counts(self) -> tuple[float, float] | None:
        """``(successes, units)`` when every unit is 0 or 1, else None; over :attr:`clusters` groups,
        one group's worth (both divided by ``clusters``, so the successes may be fractional).

        >>> MeanSample(np.array([1.0, 1.0, 1.0, 0.0] * 2), clusters=2).counts()
        (3.0, 4.0)
        """
        if not ((self.values == 0.0) | (self.values == 1.0)).all():
            return None
        return float(self.values.sum()) / self.clusters, float(self.values.size) / self.clusters


def roc_auc(members: np.ndarray, nonmembers: np.ndarray) -> float:
    """ROC AUC of membership scores (higher = more likely a member), exact, through ranks.

    The Mann-Whitney form: the chance that a random member outscores a random non-member, a tie
    counting half. Pooled scores get average ranks, R is the members' rank sum, and
    AUC = (R - m (m + 1) / 2) / (m n) for m members and n non-members.

    >>> roc_auc(np.array([3.0, 4.0]), np.array([1.0, 2.0]))
    1.0
    >>> roc_auc(np.array([1.0, 3.0]), np.array([2.0, 2.0]))
    0.5
    >>> roc_auc(np.array([2.0]), np.array([2.0, 1.0]))
    0.75
    """
    return auc_of(_checked("members", members), _checked("nonmembers", nonmembers))


@dataclass(frozen=True, eq=False)
class AucSample:
    """Membership scores of one seed; the statistic is their ROC AUC (see :func:`roc_auc`).

    A resample (used with one seed only) draws the members and the non-members with replacement,
    each side apart, so both keep their sizes.

    >>> s = AucSample(np.array([0.9, 0.8, 0.3]), np.array([0.1, 0.4]))
    >>> round(s.statistic(), 6)
    0.833333
    >>> s.resample(np.random.default_rng(0), 4).shape
    (4,)
    """

    members: np.ndarray
    nonmembers: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "members", _checked("members", self.members))
        object.__setattr__(self, "nonmembers", _checked("nonmembers", self.nonmembers))

    def statistic(self) -> float:
        return roc_auc(self.members, self.nonmembers)

    def resample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        # The pairwise count of roc_auc over the drawn scores, from counts alone: with the
        # non-members sorted, a member whose score has `lo` non-members strictly below it and `hi`
        # at or below beats the drawn non-members of sorted index < lo, and ties those in [lo, hi).
        m, n = self.members.size, self.nonmembers.size
        neg = np.sort(self.nonmembers)
        lo = np.searchsorted(neg, self.members, side="left")
        hi = np.searchsorted(neg, self.members, side="right")
        pos_draw = rng.integers(0, m, size=(size, m))
        neg_draw = rng.integers(0, n, size=(size, n))  # indices into the sorted scores
        rows = (n + 1) * np.arange(size)[:, None]
        at_lo = np.bincount((lo[pos_draw] + rows).ravel(), minlength=size * (n + 1)).reshape(size, n + 1)
        at_hi = np.bincount((hi[pos_draw] + rows).ravel(), minlength=size * (n + 1)).reshape(size, n + 1)
        drawn = np.bincount((neg_draw + n * np.arange(size)[:, None]).ravel(), minlength=size * n).reshape(size, n)
        below = np.concatenate([np.zeros((size, 1), dtype=np.int64), np.cumsum(drawn, axis=1)], axis=1)
        return ((at_lo + at_hi) * below).sum(axis=1) / (2.0 * m * n)


# -- the intervals -------------------------------------------------------------------------------
@dataclass(frozen=True)
class SeedDraw:
    """How a frontier's intervals use its seeds; one is shared by every cell of a frontier.

    ``n_seeds``: every cell has that many samples, one per seed, in the same order (position
    ``i`` is the same seed in every cell; that pairs differences by seed). With one seed, the
    units are resampled instead: ``boot`` replicates from streams keyed by ``seed`` and the cell.

    >>> SeedDraw(3).within_seed_only, SeedDraw(1, boot=5).within_seed_only
    (False, True)
    """

    n_seeds: int
    boot: int = 2000
    seed: int = 0

    def __post_init__(self) -> None:
        if self.n_seeds < 1:
            raise ValueError(f"Expected `n_seeds` >= 1, got {self.n_seeds}")
        if self.boot < 2:
            raise ValueError(f"Expected `boot` >= 2 replicates, got {self.boot}")

    @property
    def within_seed_only(self) -> bool:
        """One seed: no seed-level spread, the intervals resample that seed's units."""
        return self.n_seeds == 1


@dataclass(frozen=True)
class Interval:
    """A point estimate and its 95 % interval, with what :func:`derived` needs to carry it on.

    ``basis`` is ``"seeds"`` (``replicates`` are the leave-one-seed-out estimates, one per seed;
    the interval comes from t over seeds) or ``"units"`` (one seed: ``replicates`` are within-seed
    bootstrap replicates; the interval is their 2.5th to 97.5th percentile, and ``mean``, the
    estimate on all units, can sit off its centre or even just outside it).
    """

    mean: float
    low: float
    high: float
    replicates: np.ndarray = field(repr=False, compare=False)
    basis: str = SEEDS

    def __post_init__(self) -> None:
        if self.basis not in (SEEDS, UNITS):
            raise ValueError(f"Expected `basis` one of {SEEDS!r}, {UNITS!r}, got {self.basis!r}")
        reps = np.asarray(self.replicates, dtype=np.float64)
        if reps.ndim != 1 or reps.size < 2:
            raise ValueError(f"Expected `replicates` a 1-D array of at least 2 values, got shape {reps.shape}")
        reps = reps.copy()
        reps.setflags(write=False)
        object.__setattr__(self, "replicates", reps)

    @classmethod
    def from_leave_one_out(cls, mean: float, leave_one_out: np.ndarray) -> Interval:
        """``mean +- t_{n-1}`` times the jackknife standard error of the ``n`` leave-one-seed-out estimates.

        >>> iv = Interval.from_leave_one_out(2.0, np.array([2.5, 2.0, 1.5]))  # seeds 1, 2, 3
        >>> round(iv.low, 4), round(iv.high, 4), round(iv.half_width, 4)
        (-0.4841, 4.4841, 2.4841)
        """
        loo = np.asarray(leave_one_out, dtype=np.float64)
        n = loo.size
        if loo.ndim != 1 or n < 2:
            raise ValueError(f"Expected `leave_one_out` a 1-D array of at least 2 values, got shape {loo.shape}")
        se = float(np.sqrt((n - 1) / n * np.sum((loo - loo.mean()) ** 2)))
        half = t_quantile(n - 1) * se
        return cls(float(mean), float(mean) - half, float(mean) + half, loo, SEEDS)

    @classmethod
    def from_bootstrap(cls, mean: float, replicates: np.ndarray) -> Interval:
        """The 2.5th and 97.5th percentiles of within-seed bootstrap ``replicates``, around ``mean``."""
        reps = np.asarray(replicates, dtype=np.float64)
        if reps.ndim != 1 or reps.size < 2:
            raise ValueError(f"Expected `replicates` a 1-D array of at least 2 values, got shape {reps.shape}")
        low, high = np.percentile(reps, [50 * (1 - LEVEL), 50 * (1 + LEVEL)])
        return cls(float(mean), float(low), float(high), reps, UNITS)

    @property
    def within_seed_only(self) -> bool:
        """Whether the interval comes from one seed's units alone (no seed-to-seed spread in it)."""
        return self.basis == UNITS

    @property
    def leave_one_out(self) -> np.ndarray:
        """The leave-one-seed-out estimates (``basis`` ``"seeds"`` only)."""
        if self.basis != SEEDS:
            raise ValueError("Expected an interval over seeds, got a within-seed one (one seed)")
        return self.replicates

    @property
    def half_width(self) -> float:
        """Half the interval's width, ``(high - low) / 2``."""
        return (self.high - self.low) / 2

    def contains(self, value: float) -> bool:
        """Whether ``low <= value <= high``."""
        return self.low <= value <= self.high

    def scaled(self, factor: float) -> Interval:
        """The same interval in other units (e.g. percent): every number times ``factor`` > 0.

        >>> Interval(0.5, 0.25, 1.0, np.array([0.4, 0.6])).scaled(100).high
        100.0
        """
        if not factor > 0:
            raise ValueError(f"Expected `factor` > 0, got {factor}")
        return Interval(self.mean * factor, self.low * factor, self.high * factor, self.replicates * factor,
                        self.basis)

    def widened(self, low: float, high: float) -> Interval:
        """The hull of this interval and ``[low, high]``."""
        return Interval(self.mean, min(self.low, low), max(self.high, high), self.replicates, self.basis)

    def clipped(self, low: float, high: float) -> Interval:
        """The interval's ends held within ``[low, high]``."""
        return Interval(self.mean, min(max(self.low, low), high), max(min(self.high, high), low), self.replicates,
                        self.basis)


def _share_counts(samples: Sequence[SeedSample]) -> tuple[float, float] | None:
    """The counts pooled over seeds when every seed's sample is a share, else None."""
    counts = [s.counts() if isinstance(s, MeanSample) else None for s in samples]
    if any(c is None for c in counts):
        return None
    return sum(c[0] for c in counts), sum(c[1] for c in counts)  # type: ignore[index, misc]  # no None left


def _in_unit_range(samples: Sequence[SeedSample]) -> bool:
    """Whether the statistic is a probability or a mean of fractions, so lies in [0, 1]."""
    return all(isinstance(s, AucSample) or (isinstance(s, MeanSample) and bool(
        ((s.values >= 0) & (s.values <= 1)).all())) for s in samples)


def cell_interval(samples: Sequence[SeedSample], draw: SeedDraw, cell: str) -> Interval:
    """The 95 % interval of a cell: one sample per seed, in the order every cell of the frontier uses.

    With ``n >= 2`` seeds, Student's t over the seeds' statistics (``n - 1`` degrees of freedom);
    with one seed, a percentile bootstrap of its units. A share (every unit 0 or 1) takes the hull
    of that and the exact interval of its counts pooled over seeds; a share, an AUC and a mean of
    fractions are clipped to [0, 1]. See the module's docstring for why.

    Parameters
    ----------
    samples
        One per seed, in the order every cell of the frontier uses (that pairs differences).
    draw
        Shared by every cell whose differences will be taken.
    cell
        A key naming the cell (e.g. ``"mnist/nbafl/nbafl.epsilon=10.0/miface-released"``); with one
        seed, its bootstrap comes from a stream keyed by ``draw.seed`` and ``cell``, so cells
        resample independently of one another and of their order.

    Raises
    ------
    ValueError
        If the number of samples is not ``draw.n_seeds``.

    >>> iv = cell_interval([MeanSample(np.ones(6))] * 3, SeedDraw(3), "every image")  # 18 of 18
    >>> iv.mean, round(iv.low, 3), iv.high
    (1.0, 0.815, 1.0)
    """
    if len(samples) != draw.n_seeds:
        raise ValueError(f"Expected {draw.n_seeds} samples (one per seed, as `draw`), got {len(samples)} for {cell!r}")
    per_seed = np.array([s.statistic() for s in samples])
    point = float(per_seed.mean())
    if draw.within_seed_only:
        interval = Interval.from_bootstrap(point, samples[0].resample(_stream(draw.seed, "cell", cell, 0), draw.boot))
    else:
        n = per_seed.size
        interval = Interval.from_leave_one_out(point, (per_seed.sum() - per_seed) / (n - 1))
    counts = _share_counts(samples)
    if counts is not None:
        interval = interval.widened(*clopper_pearson(*counts))
    return interval.clipped(0.0, 1.0) if _in_unit_range(samples) else interval


def derived(f: Callable[..., np.ndarray | float], *intervals: Interval) -> Interval:
    """The interval of ``f`` of some intervals: ``f`` of their estimates, and of their replicates
    for the spread.

    Over seeds (``n >= 2``), ``f`` is applied to the leave-one-seed-out estimates (seed ``i`` left
    out of every input at once: paired by seed) and the interval is ``f(estimates) +- t_{n-1}``
    times their jackknife standard error; for a difference of cells it is the paired t interval.
    Within one seed, ``f`` is applied to the bootstrap replicates and the interval is their
    percentiles. ``f`` must work element-wise on NumPy arrays (it gets scalars for the estimate,
    the replicates' arrays for the rest).

    Raises
    ------
    ValueError
        Without intervals, or if they differ in basis or in number of replicates (seeds).

    >>> draw = SeedDraw(3)
    >>> a = cell_interval([MeanSample(np.full(5, v)) for v in (0.4, 0.5, 0.6)], draw, "a")
    >>> b = cell_interval([MeanSample(np.full(5, v + 0.1)) for v in (0.4, 0.5, 0.6)], draw, "b")
    >>> d = derived(lambda x, y: y - x, a, b)  # each seed 0.1 higher in b: no doubt left
    >>> round(d.mean, 9), round(d.low, 9), round(d.high, 9), round(a.half_width, 3)
    (0.1, 0.1, 0.1, 0.248)
    """
    if not intervals:
        raise ValueError("Expected at least one interval")
    bases = {iv.basis for iv in intervals}
    if len(bases) != 1:
        raise ValueError(
            f"Expected intervals of one basis (all over seeds or all within one seed), got {sorted(bases)}")
    sizes = {iv.replicates.shape for iv in intervals}
    if len(sizes) != 1:
        raise ValueError(f"Expected intervals with the same number of replicates, got shapes {sorted(sizes)}")
    mean = float(f(*(np.float64(iv.mean) for iv in intervals)))
    replicates = np.broadcast_to(np.asarray(f(*(iv.replicates for iv in intervals)), dtype=np.float64),
                                 intervals[0].replicates.shape)
    if bases == {UNITS}:
        return Interval.from_bootstrap(mean, replicates)
    return Interval.from_leave_one_out(mean, replicates)
