"""Confidence intervals for a frontier: a hierarchical, paired bootstrap over seeds, then units.

A measured quantity of one *cell* (a method at one knob value, on one data set: its accuracy, or
one attack's success) comes as one :class:`SeedSample` per seed: the units measured in that seed
(clients' final accuracies, attacked classes or images scored 0/1, member and non-member
scores). Its point estimate is the mean over seeds of each seed's statistic on all its units.

Its bootstrap replicate ``b`` draws the seeds with replacement, by the row ``b`` of a
:class:`SeedDraw` that every cell of a frontier shares, then resamples the units within each
drawn seed (a stream of its own per cell and seed), and averages the drawn seeds' statistics.
Because the seeds are drawn alike in every cell, a difference between two cells computed
replicate by replicate (:func:`derived`) is paired by seed: what one seed shifts in both cells
cancels. The interval is the 2.5th to 97.5th percentile of the replicates.

What the interval covers, honestly:

- within a seed, the sampling of units (which images or classes were attacked, which clients'
  accuracies, which members and non-members were scored); this part is sound once a seed has a
  few tens of units;
- between seeds (the partition, initialisation and training noise), only coarsely: with 3 seeds
  a replicate picks one of 10 multisets of seeds, so the seed level adds a lumpy, too narrow
  spread (a bootstrap over n values underestimates their variance by the factor (n - 1) / n,
  2/3 for 3 seeds), and it cannot see a seed effect that the three seeds did not happen to show;
- resampling both levels counts the within-seed spread about twice (once through the spread of
  the seeds' statistics, which contains it, and once by the within-seed resampling), which widens
  the interval and partly offsets the point above.

Read them as approximate 95 % intervals for the mean over these seeds' setups; more seeds make
the seed level trustworthy. With one seed only the units are resampled. The intervals are
per quantity, not simultaneous: among many of them, some will miss by chance.

Everything is deterministic: the same samples, cell keys and draw give the same numbers.

>>> draw = SeedDraw(2, boot=500)
>>> iv = bootstrap([MeanSample(np.array([0.0, 1.0] * 50)), MeanSample(np.array([1.0] * 100))], draw, "demo")
>>> iv.mean, iv.low < 0.75 < iv.high, iv.replicates.shape
(0.75, True, (500,))
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, runtime_checkable

import numpy as np

from rvepfl.attacks.mia import auc_of

__all__ = [
    "AucSample",
    "Interval",
    "MeanSample",
    "SeedDraw",
    "SeedSample",
    "bootstrap",
    "derived",
    "roc_auc",
]

LOW, HIGH = 2.5, 97.5
"""The percentiles of the replicates that bound a 95 % interval."""


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

    >>> s = MeanSample(np.array([1.0, 0.0, 1.0, 1.0]))
    >>> s.statistic()
    0.75
    >>> r = s.resample(np.random.default_rng(0), 3)
    >>> r.shape, bool(((r >= 0) & (r <= 1)).all())
    ((3,), True)
    """

    values: np.ndarray

    def __post_init__(self) -> None:
        object.__setattr__(self, "values", _checked("values", self.values))

    def statistic(self) -> float:
        return float(self.values.mean())

    def resample(self, rng: np.random.Generator, size: int) -> np.ndarray:
        n = self.values.size
        return self.values[rng.integers(0, n, size=(size, n))].mean(axis=1)


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

    A resample draws the members and the non-members with replacement, each side apart, so both
    keep their sizes.

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


# -- the bootstrap -------------------------------------------------------------------------------
@dataclass(frozen=True)
class SeedDraw:
    """The seeds drawn in each bootstrap replicate, shared by every cell of a frontier.

    ``indices[b]`` are the positions (in a cell's tuple of seeds) drawn with replacement in
    replicate ``b``; with one seed, always that seed.

    >>> SeedDraw(3, boot=4, seed=1).indices.shape
    (4, 3)
    >>> bool((SeedDraw(1, boot=5).indices == 0).all())
    True
    """

    n_seeds: int
    boot: int = 2000
    seed: int = 0
    indices: np.ndarray = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self.n_seeds < 1:
            raise ValueError(f"Expected `n_seeds` >= 1, got {self.n_seeds}")
        if self.boot < 2:
            raise ValueError(f"Expected `boot` >= 2 replicates, got {self.boot}")
        indices = _stream(self.seed, "seeds", self.n_seeds).integers(0, self.n_seeds, size=(self.boot, self.n_seeds))
        indices.setflags(write=False)
        object.__setattr__(self, "indices", indices)


@dataclass(frozen=True)
class Interval:
    """A point estimate, its 95 % bootstrap interval and the replicates it came from.

    ``mean`` is the estimate on the full data (not the replicates' mean), so it can sit off the
    interval's centre, and with a skewed or lumpy bootstrap (few seeds, a statistic at 0 or 1)
    even just outside it.
    """

    mean: float
    low: float
    high: float
    replicates: np.ndarray = field(repr=False, compare=False)

    @classmethod
    def from_replicates(cls, mean: float, replicates: np.ndarray) -> Interval:
        """The interval of ``replicates`` (2.5th and 97.5th percentiles) around ``mean``."""
        reps = np.asarray(replicates, dtype=np.float64)
        if reps.ndim != 1 or reps.size < 2:
            raise ValueError(f"Expected `replicates` a 1-D array of at least 2 values, got shape {reps.shape}")
        low, high = np.percentile(reps, [LOW, HIGH])
        reps = reps.copy()
        reps.setflags(write=False)
        return cls(float(mean), float(low), float(high), reps)

    def contains(self, value: float) -> bool:
        """Whether ``low <= value <= high``."""
        return self.low <= value <= self.high


def bootstrap(samples: Sequence[SeedSample], draw: SeedDraw, cell: str) -> Interval:
    """The interval of a cell: one sample per seed, seeds drawn by ``draw``, units by ``cell``'s streams.

    Parameters
    ----------
    samples
        One per seed, in the order every cell of the frontier uses (``draw`` pairs positions).
    draw
        Shared by every cell whose differences will be taken.
    cell
        A key naming the cell (e.g. ``"mnist/nbafl/nbafl.epsilon=10.0/miface-released"``); the
        within-seed resampling of seed ``i`` comes from a stream keyed by ``draw.seed``, ``cell``
        and ``i``, so cells resample independently of one another and of their order.

    Raises
    ------
    ValueError
        If the number of samples is not ``draw.n_seeds``.
    """
    if len(samples) != draw.n_seeds:
        raise ValueError(f"Expected {draw.n_seeds} samples (one per seed, as `draw`), got {len(samples)} for {cell!r}")
    point = float(np.mean([s.statistic() for s in samples]))
    per_seed = np.empty(draw.indices.shape)
    for i, sample in enumerate(samples):
        picked = draw.indices == i
        count = int(picked.sum())
        if count:
            per_seed[picked] = sample.resample(_stream(draw.seed, "cell", cell, i), count)
    return Interval.from_replicates(point, per_seed.mean(axis=1))


def derived(f: Callable[..., np.ndarray | float], *intervals: Interval) -> Interval:
    """The interval of ``f`` of some intervals, applied to their estimates and replicate by replicate.

    ``f`` must work element-wise on NumPy arrays (it gets scalars for the estimate, the
    replicates' arrays for the rest). Intervals from one :class:`SeedDraw` are paired by seed, so
    e.g. a difference between two methods cancels what a seed does to both.

    >>> draw = SeedDraw(3, boot=200)
    >>> a = bootstrap([MeanSample(np.full(5, v)) for v in (0.2, 0.5, 0.8)], draw, "a")
    >>> b = bootstrap([MeanSample(np.full(5, v + 0.1)) for v in (0.2, 0.5, 0.8)], draw, "b")
    >>> d = derived(lambda x, y: y - x, a, b)
    >>> round(d.mean, 9), round(d.low, 9), round(d.high, 9)
    (0.1, 0.1, 0.1)
    """
    if not intervals:
        raise ValueError("Expected at least one interval")
    sizes = {iv.replicates.shape for iv in intervals}
    if len(sizes) != 1:
        raise ValueError(f"Expected intervals with the same number of replicates, got shapes {sorted(sizes)}")
    mean = float(f(*(np.float64(iv.mean) for iv in intervals)))
    replicates = np.broadcast_to(np.asarray(f(*(iv.replicates for iv in intervals)), dtype=np.float64),
                                 intervals[0].replicates.shape)
    return Interval.from_replicates(mean, replicates)
