"""The privacy-utility frontier's report: its table, its plot and its verdict, from in-memory data.

Each :class:`FrontierPoint` is a method at one value of its privacy knob (or a fixed point) on
one data set, with per-seed samples of its accuracy and of each attack's success; each
:class:`Panel` is one attack. Every statistic is a mean over seeds with a 95 % interval from the
paired, hierarchical bootstrap of :mod:`rvepfl.experiments.stats`, and one :class:`SeedDraw`
serves the whole frontier, so differences between methods are paired by seed.

:func:`write_frontier` writes, atomically, into one directory and for every data set at once:

- ``frontier.csv``: one row per point, every data set's rows in one file (the ``dataset`` column
  tells them apart; the columns depend only on the panels): ``dataset, method, knob, value,
  seeds`` (space separated), ``accuracy_mean, accuracy_low, accuracy_high`` (percent), then per
  panel ``<key>_mean, <key>_low, <key>_high`` (percent for 0/1 successes, the AUC itself for
  membership panels), then ``note``; a panel the point exposes no surface to is empty and named
  in ``note``;
- ``frontier_verdict.csv``: one row per comparison (see :func:`compare_at_equal_success`);
- ``frontier.md``: per data set, a table with every cell ``mean [low, high]``, then the verdict
  in words; at the end, how the numbers were computed;
- ``frontier_<dataset>.png``: per data set, one panel per attack, x = attack success, y =
  accuracy, a line per swept method through its points in knob order, 95 % interval bars on
  both axes, each point labelled with its knob value, fixed points as markers, chance marked on
  AUC panels.

**The verdict.** For each panel, each point of the reference method (every value of its sweep)
and each swept method in ``against``: the reference's accuracy minus the other method's accuracy
at the same attack success. The other method's accuracy at success x is its *upper envelope*:
its points are sorted by success; a point that is less accurate than some point that leaks no
more (dominated) is dropped, since nobody would set the knob there; the envelope runs linearly
between the remaining points and stays flat at the most accurate one beyond it. This reads
"at protection at least as good as the reference's, the best accuracy the other method reaches",
the fair form of "at equal protection, who is more accurate", whatever the knob's order; a plain
interpolation through a non-monotone curve would let a badly chosen grid value pull the other
method down. Linear between points is achievable in expectation by alternating the two settings.

- *compared*: the reference's success lies within the other curve's range of success;
- *not reachable*: the reference's success is below every point of the other curve: that method
  never gets as private in this sweep; no number;
- *outside*: the reference's success is above every point of the other curve (it leaks more than
  the other's least private point): compared with the other's most accurate point, which leaks
  less, so the delta is an upper bound on the reference's advantage (a less private setting of
  the other method, not measured, could be more accurate);
- a method with one point (or whose knob is None) is a fixed point, not a curve, and is not
  interpolated; a method with no surface to the attack, or the reference without one, is said so.

The delta's interval repeats the whole computation (envelope and interpolation) in every
bootstrap replicate, with the seeds paired; the position (compared, not reachable, outside) is
decided on the point estimates, and the share of replicates in which the reference's success fell
outside the other curve's range is reported: there the envelope is clamped at its end, which
favours the other method when the reference is more private than the other's most private point.
A delta whose interval excludes 0 reads "more accurate" or "less accurate", otherwise "no
significant difference"; the intervals are per comparison, not simultaneous.

>>> from rvepfl.experiments.stats import MeanSample
>>> rng = np.random.default_rng(0)
>>> def point(method, value, acc, success):
...     return FrontierPoint("toy", method, None if value is None else "k", value, (0,),
...                          (MeanSample(rng.normal(acc, 0.01, 20)),),
...                          {"mi": (MeanSample((rng.random(50) < success).astype(float)),)})
>>> pts = [point("nbafl", 1.0, 0.60, 0.1), point("nbafl", 10.0, 0.90, 0.8), point("rvepfl", 0.1, 0.85, 0.2)]
>>> [c] = compare_at_equal_success(estimate_points(pts, [Panel("mi", "MI", "recognised (%)")], SeedDraw(1, boot=200)),
...                                [Panel("mi", "MI", "recognised (%)")], against=("nbafl",))
>>> c.status, c.reading
('compared', 'more accurate')
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rvepfl.experiments.stats import (
    AucSample,
    Interval,
    SeedDraw,
    SeedSample,
    bootstrap,
    derived,
)
from rvepfl.figures import agg_figure, save_png
from rvepfl.io import atomic_write_text, write_csv

__all__ = [
    "AGAINST",
    "COMPARED",
    "DISPLAY",
    "NOT_REACHABLE",
    "NO_SURFACE",
    "OTHER_NO_SURFACE",
    "OUTSIDE",
    "SINGLE_POINT",
    "STATUSES",
    "VERDICT_COLUMNS",
    "Comparison",
    "FrontierPoint",
    "Panel",
    "PointEstimate",
    "compare_at_equal_success",
    "envelope_accuracy",
    "estimate_points",
    "frontier_columns",
    "frontier_markdown",
    "frontier_plot",
    "frontier_rows",
    "verdict_rows",
    "write_frontier",
]

AGAINST = ("nbafl", "dp-fedavg", "dp-sgd", "rvepfl+nbafl")
"""The swept methods the reference is compared with by default."""

DISPLAY = {"rvepfl": "RVE-PFL", "nbafl": "NbAFL", "dp-fedavg": "DP-FedAvg", "dp-sgd": "DP-SGD",
           "rvepfl+nbafl": "RVE-PFL+NbAFL", "fedavg": "FedAvg", "fedper": "FedPer", "fedrep": "FedRep",
           "ditto": "Ditto"}

COMPARED, OUTSIDE, NOT_REACHABLE = "compared", "outside", "not reachable"
NO_SURFACE, OTHER_NO_SURFACE, SINGLE_POINT = "no surface", "other has no surface", "single point"
STATUSES = (COMPARED, OUTSIDE, NOT_REACHABLE, NO_SURFACE, OTHER_NO_SURFACE, SINGLE_POINT)

VERDICT_COLUMNS = ["dataset", "panel", "reference", "knob", "value", "other", "status", "reference_success",
                   "delta_mean", "delta_low", "delta_high", "reading", "outside_share", "sentence"]
"""The columns of ``frontier_verdict.csv`` (delta: accuracy points, reference minus other)."""

_SAFE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.+-]*$")


def _display(method: str) -> str:
    return DISPLAY.get(method, method)


# -- the data ------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Panel:
    """One attack of the frontier, as a panel of the plot and columns of the table.

    ``key`` names the attack in :attr:`FrontierPoint.attacks` and the csv columns.
    """

    key: str
    title: str
    success_label: str


@dataclass(frozen=True)
class FrontierPoint:
    """A method at one value of its privacy knob on one data set, measured over seeds.

    Parameters
    ----------
    knob
        The swept config key (e.g. ``"nbafl.epsilon"``); None for a fixed point (``value`` None too).
    accuracy
        Per seed (in the order of ``seeds``): a sample of the clients' final test accuracies (fractions).
    attacks
        Panel key -> per seed: a :class:`MeanSample` of 0/1 successes or an :class:`AucSample` of
        membership scores; None: the method exposes no surface to that attack. Keys that no panel
        names are left out of the report.
    """

    dataset: str
    method: str
    knob: str | None
    value: float | None
    seeds: tuple[int, ...]
    accuracy: tuple[SeedSample, ...]
    attacks: Mapping[str, tuple[SeedSample, ...] | None]

    def __post_init__(self) -> None:
        if (self.knob is None) != (self.value is None):
            raise ValueError(f"Expected `knob` and `value` both None (a fixed point) or both set, got "
                             f"{self.knob!r} and {self.value!r} ({self.method} on {self.dataset})")
        if not self.seeds:
            raise ValueError(f"Expected at least one seed, got none ({self.method} on {self.dataset})")
        if len(self.accuracy) != len(self.seeds):
            raise ValueError(f"Expected one accuracy sample per seed ({len(self.seeds)}), got {len(self.accuracy)} "
                             f"({self.label} on {self.dataset})")
        for key, samples in self.attacks.items():
            if samples is not None and len(samples) != len(self.seeds):
                raise ValueError(f"Expected one `{key}` sample per seed ({len(self.seeds)}), got {len(samples)} "
                                 f"({self.label} on {self.dataset})")

    @property
    def label(self) -> str:
        """The method and its knob value, e.g. ``NbAFL (epsilon = 10)``; the method alone for a fixed point."""
        return _display(self.method) if self.knob is None else f"{_display(self.method)} ({self.setting})"

    @property
    def setting(self) -> str:
        """The knob's last name and its value, e.g. ``epsilon = 10``; empty for a fixed point."""
        return "" if self.knob is None else f"{self.knob.rsplit('.', 1)[-1]} = {self.value:g}"

    @property
    def cell(self) -> str:
        """The point's key for the bootstrap streams: ``dataset/method/knob=value``."""
        return f"{self.dataset}/{self.method}/{self.knob}={self.value!r}"


@dataclass(frozen=True)
class PointEstimate:
    """A point's intervals: accuracy in percent; per panel key, success on the panel's scale (None: no surface)."""

    point: FrontierPoint
    accuracy: Interval
    success: Mapping[str, Interval | None]


@dataclass(frozen=True)
class _Scale:
    """How a panel shows success: a factor on the statistic, the digits, the chance level if any."""

    factor: float
    digits: int
    chance: float | None

    def text(self, value: float) -> str:
        return f"{value:.{self.digits}f}" + (" %" if self.factor == 100.0 else "")


def _scales(points: Sequence[FrontierPoint], panels: Sequence[Panel]) -> dict[str, _Scale]:
    """Per panel: AUC (as is, chance 0.5) when every sample is an :class:`AucSample`, else percent."""
    out = {}
    for panel in panels:
        samples = [s for p in points for s in (p.attacks.get(panel.key) or ())]
        auc = [isinstance(s, AucSample) for s in samples]
        if any(auc) and not all(auc):
            raise ValueError(f"Expected panel {panel.key!r} to hold AucSample only or none, got a mix")
        out[panel.key] = _Scale(1.0, 3, 0.5) if samples and all(auc) else _Scale(100.0, 1, None)
    return out


def _ordered(points: Sequence[FrontierPoint]) -> list[FrontierPoint]:
    """Data sets and methods in order of first appearance; within a method, by knob value."""
    datasets = list(dict.fromkeys(p.dataset for p in points))
    methods = list(dict.fromkeys(p.method for p in points))
    return sorted(points, key=lambda p: (datasets.index(p.dataset), methods.index(p.method),
                                         -np.inf if p.value is None else p.value))


def _validate(points: Sequence[FrontierPoint], panels: Sequence[Panel], draw: SeedDraw) -> None:
    if not points:
        raise ValueError("Expected at least one frontier point, got none")
    keys = [p.key for p in panels]
    if len(set(keys)) != len(keys):
        raise ValueError(f"Expected distinct panel keys, got {keys}")
    seen: dict[tuple[str, str, float | None], FrontierPoint] = {}
    seeds: dict[str, tuple[int, ...]] = {}
    for p in points:
        if not _SAFE_NAME.match(p.dataset):
            raise ValueError(f"Expected a data set name of letters, digits and ._+- (it names a file), "
                             f"got {p.dataset!r}")
        if (p.dataset, p.method, p.value) in seen:
            raise ValueError(f"Expected one point per data set, method and value, got {p.label} on {p.dataset} twice")
        seen[(p.dataset, p.method, p.value)] = p
        if seeds.setdefault(p.dataset, p.seeds) != p.seeds:
            raise ValueError(f"Expected every point on {p.dataset} to have the same seeds (the bootstrap pairs them), "
                             f"got {seeds[p.dataset]} and {p.seeds} ({p.label})")
        if len(p.seeds) != draw.n_seeds:
            raise ValueError(f"Expected {draw.n_seeds} seeds per point (as the SeedDraw), got {len(p.seeds)} "
                             f"({p.label} on {p.dataset})")
        missing = [k for k in keys if k not in p.attacks]
        if missing:
            raise ValueError(f"Expected every panel in `attacks` ({p.label} on {p.dataset} lacks {missing}); "
                             "give None for an attack the method exposes no surface to")


def estimate_points(points: Sequence[FrontierPoint], panels: Sequence[Panel], draw: SeedDraw) -> list[PointEstimate]:
    """The intervals of every point (ordered by data set, method and knob value), from one seed draw.

    Raises
    ------
    ValueError
        If there are no points, two points share a data set, method and value, the points of a
        data set differ in seeds, their number of seeds is not the draw's, or a point lacks a panel.
    """
    _validate(points, panels, draw)
    scales = _scales(points, panels)
    out = []
    for p in _ordered(points):
        accuracy = derived(lambda a: 100.0 * a, bootstrap(p.accuracy, draw, p.cell + "/accuracy"))
        success: dict[str, Interval | None] = {}
        for panel in panels:
            samples = p.attacks[panel.key]
            factor = scales[panel.key].factor
            success[panel.key] = (None if samples is None else
                                  derived(lambda s, f=factor: f * s, bootstrap(samples, draw, f"{p.cell}/{panel.key}")))
        out.append(PointEstimate(p, accuracy, success))
    return out


# -- the table -----------------------------------------------------------------------------------
def frontier_columns(panels: Sequence[Panel]) -> list[str]:
    """The columns of ``frontier.csv`` for these panels.

    >>> frontier_columns([Panel("mia", "MIA", "ROC AUC")])[5:]
    ['accuracy_mean', 'accuracy_low', 'accuracy_high', 'mia_mean', 'mia_low', 'mia_high', 'note']
    """
    return ["dataset", "method", "knob", "value", "seeds", "accuracy_mean", "accuracy_low", "accuracy_high",
            *(f"{p.key}_{s}" for p in panels for s in ("mean", "low", "high")), "note"]


def _rows(estimates: Sequence[PointEstimate], panels: Sequence[Panel]) -> list[dict[str, Any]]:
    rows = []
    for e in estimates:
        p = e.point
        row: dict[str, Any] = {"dataset": p.dataset, "method": p.method, "knob": p.knob, "value": p.value,
                               "seeds": " ".join(str(s) for s in p.seeds), "accuracy_mean": e.accuracy.mean,
                               "accuracy_low": e.accuracy.low, "accuracy_high": e.accuracy.high}
        for panel in panels:
            iv = e.success[panel.key]
            for stat in ("mean", "low", "high"):
                row[f"{panel.key}_{stat}"] = None if iv is None else getattr(iv, stat)
        none = [panel.key for panel in panels if e.success[panel.key] is None]
        row["note"] = f"no surface: {', '.join(none)}" if none else ""
        rows.append(row)
    return rows


def frontier_rows(points: Sequence[FrontierPoint], panels: Sequence[Panel], draw: SeedDraw) -> list[dict[str, Any]]:
    """One row per point, keyed by :func:`frontier_columns`: accuracy in percent, each panel's
    success (percent, or the AUC), None where the point has no surface (named in ``note``)."""
    return _rows(estimate_points(points, panels, draw), panels)


# -- the verdict ---------------------------------------------------------------------------------
def envelope_accuracy(success: np.ndarray, accuracy: np.ndarray, at: np.ndarray | float) -> np.ndarray:
    """A curve's upper envelope at success ``at``: the best accuracy it reaches leaking no more.

    The points (last axis) are sorted by success; a point less accurate than one that leaks no
    more is dropped; between the others the envelope is linear, beyond the least private one it
    stays flat at its accuracy, and before the most private one it is clamped at that point's
    accuracy (the caller tells "not reachable" apart). Leading axes (bootstrap replicates) are
    computed row by row.

    >>> s, a = np.array([10.0, 40.0, 20.0, 30.0]), np.array([50.0, 80.0, 70.0, 60.0])
    >>> [float(envelope_accuracy(s, a, x)) for x in (5.0, 15.0, 25.0, 30.0, 50.0)]
    [50.0, 60.0, 72.5, 75.0, 80.0]
    """
    s, a = np.asarray(success, dtype=np.float64), np.asarray(accuracy, dtype=np.float64)
    x = np.asarray(at, dtype=np.float64)
    if s.shape != a.shape or s.shape[-1] == 0 or s.shape[:-1] != x.shape:
        raise ValueError(f"Expected `success` and `accuracy` of shape (..., K >= 1) and `at` of shape (...), "
                         f"got {s.shape}, {a.shape} and {x.shape}")
    order = np.lexsort((-a, s), axis=-1)  # by success; at equal success the more accurate first
    s, a = np.take_along_axis(s, order, -1), np.take_along_axis(a, order, -1)
    before = np.concatenate([np.full(a.shape[:-1] + (1,), -np.inf), np.maximum.accumulate(a, -1)[..., :-1]], -1)
    kept = a > before
    index = np.arange(s.shape[-1])
    prev = np.where(kept & (s <= x[..., None]), index, -1).max(-1)
    nxt = np.where(kept & (s > x[..., None]), index, s.shape[-1]).min(-1)
    p, n = np.maximum(prev, 0), np.minimum(nxt, s.shape[-1] - 1)
    sp, ap = np.take_along_axis(s, p[..., None], -1)[..., 0], np.take_along_axis(a, p[..., None], -1)[..., 0]
    sn, an = np.take_along_axis(s, n[..., None], -1)[..., 0], np.take_along_axis(a, n[..., None], -1)[..., 0]
    inside = (prev >= 0) & (nxt < s.shape[-1])
    slope = np.where(inside, (an - ap) / np.where(inside, sn - sp, 1.0), 0.0)
    return np.where(prev < 0, a[..., 0], ap + slope * (x - sp))


@dataclass(frozen=True)
class Comparison:
    """The reference at one knob value against one other method, on one panel of one data set.

    ``delta`` is in accuracy points (reference minus the other's envelope at the reference's
    success); None unless ``status`` is ``compared`` or ``outside``. ``outside_share`` is the share
    of bootstrap replicates in which the reference's success fell outside the other curve's range
    (None where there is no curve: ``no surface``, ``other has no surface``, ``single point``).
    ``reading``: ``more accurate``, ``less accurate`` or ``no significant difference`` (the
    delta's interval excludes 0 or not); empty without a delta.
    """

    dataset: str
    panel: str
    reference: str
    knob: str | None
    value: float | None
    other: str
    status: str
    reference_success: float | None
    delta: Interval | None
    reading: str
    outside_share: float | None
    sentence: str


def _reading(delta: Interval) -> str:
    if delta.low > 0:
        return "more accurate"
    if delta.high < 0:
        return "less accurate"
    return "no significant difference"


def _amount(delta: Interval, them: str) -> str:
    """How much more or less accurate, with the interval of that amount."""
    reading = _reading(delta)
    if reading == "more accurate":
        return f"{delta.mean:.1f} points [{delta.low:.1f}, {delta.high:.1f}] more accurate than {them}"
    if reading == "less accurate":
        return f"{-delta.mean:.1f} points [{-delta.high:.1f}, {-delta.low:.1f}] less accurate than {them}"
    return (f"not significantly different from {them} ({delta.mean:+.1f} points [{delta.low:.1f}, "
            f"{delta.high:.1f}]: the interval contains 0)")


def _sentence(status: str, ref: FrontierPoint, other: str, panel: Panel, scale: _Scale,
              x: float | None, curve: Sequence[PointEstimate], delta: Interval | None) -> str:
    who, them, attack = ref.label, _display(other), panel.title
    if status == NO_SURFACE:
        return f"{_display(ref.method)} exposes no surface to {attack}: nothing to compare."
    if status == OTHER_NO_SURFACE:
        return f"{them} exposes no surface to {attack}: no curve to compare {who} with."
    if status == SINGLE_POINT:
        return f"{them} has a single point on {attack}: a fixed point, not a curve; no interpolation."
    assert x is not None
    succ = [e.success[panel.key].mean for e in curve]  # type: ignore[union-attr]
    if status == NOT_REACHABLE:
        return (f"{them} never gets as private as {who} against {attack} ({scale.text(x)} against {them}'s "
                f"lowest {scale.text(min(succ))}): not reachable.")
    assert delta is not None
    if status == OUTSIDE:
        best = max(curve, key=lambda e: e.accuracy.mean).point
        return (f"{who} leaks more than every {them} point against {attack} ({scale.text(x)} against {them}'s "
                f"highest {scale.text(max(succ))}): against {best.label}, which leaks less, it is "
                f"{_amount(delta, them)}; "
                f"an upper bound on its advantage at equal success, since a less private {them} setting was "
                "not measured.")
    return f"{who} is {_amount(delta, them)} at equal {attack} success ({scale.text(x)})."


def compare_at_equal_success(estimates: Sequence[PointEstimate], panels: Sequence[Panel], *,
                             reference: str = "rvepfl", against: Sequence[str] = AGAINST) -> list[Comparison]:
    """The verdict: for each data set, panel, reference point and method of ``against`` present
    on that data set, the reference's accuracy minus the other's at equal attack success.

    See the module's docstring for the definition; ``estimates`` come from one
    :func:`estimate_points` (one seed draw, so the replicates are paired).
    """
    scales = _scales([e.point for e in estimates], panels)
    out = []
    for dataset in dict.fromkeys(e.point.dataset for e in estimates):
        here = [e for e in estimates if e.point.dataset == dataset]
        refs = [e for e in here if e.point.method == reference]
        for panel in panels:
            scale = scales[panel.key]
            for other in against:
                points = [e for e in here if e.point.method == other]
                if not points or other == reference:
                    continue
                curve = [e for e in points if e.success[panel.key] is not None]
                for ref in refs:
                    out.append(_compare(ref, other, points, curve, panel, scale))
    return out


def _compare(ref: PointEstimate, other: str, points: Sequence[PointEstimate], curve: Sequence[PointEstimate],
             panel: Panel, scale: _Scale) -> Comparison:
    success = ref.success[panel.key]
    x = None if success is None else success.mean
    delta, share = None, None
    if success is None:
        status = NO_SURFACE
    elif not curve:
        status = OTHER_NO_SURFACE
    elif len(curve) < 2 or any(e.point.knob is None for e in curve):
        status = SINGLE_POINT
    else:
        s = [e.success[panel.key] for e in curve]
        a = [e.accuracy for e in curve]
        means = [iv.mean for iv in s]  # type: ignore[union-attr]
        status = NOT_REACHABLE if x < min(means) else OUTSIDE if x > max(means) else COMPARED
        if status != NOT_REACHABLE:
            k = len(curve)

            def gap(acc, at, *rest):
                return acc - envelope_accuracy(np.stack(rest[:k], -1), np.stack(rest[k:], -1), at)

            delta = derived(gap, ref.accuracy, success, *s, *a)  # type: ignore[arg-type]
        reps = np.stack([iv.replicates for iv in s], -1)  # type: ignore[union-attr]
        share = float(np.mean((success.replicates < reps.min(-1)) | (success.replicates > reps.max(-1))))
    p = ref.point
    return Comparison(p.dataset, panel.key, p.method, p.knob, p.value, other, status, x, delta,
                      "" if delta is None else _reading(delta), share,
                      _sentence(status, p, other, panel, scale, x, curve, delta))


def verdict_rows(comparisons: Sequence[Comparison]) -> list[list[Any]]:
    """The rows of ``frontier_verdict.csv`` (columns :data:`VERDICT_COLUMNS`)."""
    return [[c.dataset, c.panel, c.reference, c.knob, c.value, c.other, c.status, c.reference_success,
             *((None, None, None) if c.delta is None else (c.delta.mean, c.delta.low, c.delta.high)),
             c.reading, c.outside_share, c.sentence] for c in comparisons]


# -- Markdown ------------------------------------------------------------------------------------
def _cell(iv: Interval | None, digits: int) -> str:
    return "n/a" if iv is None else f"{iv.mean:.{digits}f} [{iv.low:.{digits}f}, {iv.high:.{digits}f}]"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "| --- | --- | " + " | ".join("---:" for _ in header[2:]) + " |"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


_HOW = """\
## How the numbers were computed

- Each cell: the mean over seeds of each seed's statistic [95 % interval]. Accuracy: the mean of
  the clients' final test accuracies, in percent. Attack success: the share of attacked classes
  or images the attack got right, in percent, or for membership inference the ROC AUC of its
  scores (members against non-members; 0.5 is chance). n/a: the method exposes no surface to
  that attack.
- Intervals: a hierarchical bootstrap of {boot} replicates: the seeds drawn with replacement
  (the same draw for every cell, so differences are paired by seed), then the units within each
  drawn seed; the 2.5th and 97.5th percentiles.
  {seeds}
  Read them as approximate, and per cell, not simultaneous.
- Verdict: the reference's accuracy minus the other method's *upper envelope* at the
  reference's attack success: the other's points sorted by success, those less accurate than
  a point that leaks no more dropped, linear between the rest and flat beyond its most accurate
  one; the same computation in every bootstrap replicate gives the interval. "Not reachable":
  the other method never gets as private as the reference. "Leaks more than every point": the
  reference is compared with the other's most accurate point, which leaks less, so the delta
  is an upper bound. Where more than 5 % of the replicates put the reference outside the
  other's range (there the curve is held at its end), and where a "not reachable" is within
  reach in more than 5 % of them, the share is given.
"""


def frontier_markdown(estimates: Sequence[PointEstimate], panels: Sequence[Panel], comparisons: Sequence[Comparison],
                      draw: SeedDraw, *, reference: str = "rvepfl", against: Sequence[str] = AGAINST) -> str:
    """``frontier.md``: per data set a table (cells ``mean [low, high]``) and the verdict in words."""
    scales = _scales([e.point for e in estimates], panels)
    lines = ["# Privacy-utility frontier", ""]
    for dataset in dict.fromkeys(e.point.dataset for e in estimates):
        here = [e for e in estimates if e.point.dataset == dataset]
        seeds = ", ".join(str(s) for s in here[0].point.seeds)
        lines += [f"## {dataset}", "", f"Seeds {seeds}; mean over seeds [95 % bootstrap interval].", ""]
        header = ["method", "setting", "accuracy (%)", *(f"{p.title}: {p.success_label}" for p in panels)]
        lines += _table(header, [[_display(e.point.method), e.point.setting or "fixed", _cell(e.accuracy, 1),
                                  *(_cell(e.success[p.key], scales[p.key].digits) for p in panels)] for e in here])
        lines += ["", f"### Verdict: {_display(reference)} against the swept methods at equal attack success", ""]
        methods = {e.point.method for e in here}
        if reference not in methods:
            lines += [f"{_display(reference)} is not in this frontier: no verdict.", ""]
            continue
        absent = [_display(m) for m in against if m not in methods and m != reference]
        if absent:
            lines += [f"Not in this frontier: {', '.join(absent)}.", ""]
        if not any(m in methods and m != reference for m in against):
            why = "`frontier.against` is empty" if not against else "none of `frontier.against` ran"
            lines += [f"No swept method to compare {_display(reference)} with ({why}): no verdict.", ""]
            continue
        for panel in panels:
            mine = [c for c in comparisons if c.dataset == dataset and c.panel == panel.key]
            lines.append(f"**{panel.title}** ({panel.success_label})")
            lines.append("")
            if mine and all(c.status == NO_SURFACE for c in mine):
                lines += [f"- {mine[0].sentence}", ""]
                continue
            for c in mine:
                lines.append(f"- {c.sentence}{_share(c)}")
            for other in dict.fromkeys(c.other for c in mine):
                lines.append(f"- Against {_display(other)}: {_summary([c for c in mine if c.other == other])}.")
            lines.append("")
    lines += [_HOW.format(boot=draw.boot, seeds=_seed_note(draw.n_seeds)),
              "Generated by `rvepfl.experiments.frontier_report`; do not edit by hand."]
    return "\n".join(lines) + "\n"


def _seed_note(n: int) -> str:
    """What the seed level of the bootstrap is worth with ``n`` seeds."""
    if n == 1:
        return ("With one seed only the units are resampled: the intervals say nothing of how another seed would "
                "move the numbers.")
    return (f"With {n} seeds the seed level is coarse (a bootstrap over {n} values understates their variance "
            f"by the factor {n - 1}/{n} and can only recombine the seeds it has); resampling the units within "
            "seeds as well widens the interval again.")


def _share(c: Comparison) -> str:
    """How often the bootstrap disagrees with the position the point estimates gave, if worth saying."""
    if c.outside_share is None:
        return ""
    if c.status == NOT_REACHABLE and c.outside_share < 0.95:
        return f" (In {100 * (1 - c.outside_share):.0f} % of the bootstrap replicates it is within reach.)"
    if c.status == COMPARED and c.outside_share > 0.05:
        return (f" (In {100 * c.outside_share:.0f} % of the bootstrap replicates it falls outside "
                f"{_display(c.other)}'s range, where the curve is held at its end.)")
    return ""


def _summary(comparisons: Sequence[Comparison]) -> str:
    """How a panel falls against one method, counted over the reference's points."""
    counts: dict[str, int] = {}
    for c in comparisons:
        key = c.reading or c.status
        counts[key] = counts.get(key, 0) + 1
    n = len(comparisons)
    return ", ".join(f"{label} at {k} of {n} points" for label, k in counts.items())


# -- the plot ------------------------------------------------------------------------------------
_MARKERS = ("s", "^", "D", "v", "P", "X", "*", "h")


def _bars(ivs: Sequence[Interval]) -> np.ndarray:
    """Errorbar lengths (2, n), never negative (an estimate can sit just outside its interval)."""
    return np.array([[max(iv.mean - iv.low, 0.0) for iv in ivs], [max(iv.high - iv.mean, 0.0) for iv in ivs]])


def frontier_plot(path: Path, dataset: str, estimates: Sequence[PointEstimate], panels: Sequence[Panel]) -> Path:
    """``frontier_<dataset>.png``: one panel per attack, accuracy (y) against success (x).

    A swept method (a knob, at least two points with a surface) is a line through its points in
    knob order; a fixed point is a marker; bars are 95 % intervals on both axes; each point is
    labelled with its knob value; AUC panels mark chance (0.5). Methods without a surface to a
    panel are named in its corner.

    Returns
    -------
    Path
        ``path``.
    """
    here = [e for e in estimates if e.point.dataset == dataset]
    if not here:
        raise ValueError(f"Expected points on {dataset!r}, got none")
    scales = _scales([e.point for e in here], panels)
    methods = list(dict.fromkeys(e.point.method for e in here))
    fig = agg_figure(4.4 * max(len(panels), 1), 4.4)
    for i, panel in enumerate(panels):
        ax = fig.add_subplot(1, len(panels), i + 1)
        blind = []
        for j, method in enumerate(methods):
            mine = [e for e in here if e.point.method == method]
            shown = [e for e in mine if e.success[panel.key] is not None]
            if not shown:
                blind.append(_display(method))
                continue
            swept = len(shown) >= 2 and all(e.point.knob is not None for e in shown)
            xs = [e.success[panel.key] for e in shown]
            ys = [e.accuracy for e in shown]
            style = {"marker": "o", "linestyle": "-"} if swept else {"marker": _MARKERS[j % len(_MARKERS)],
                                                                    "linestyle": "none", "markersize": 7}
            label = _display(method) + (f" ({shown[0].point.knob.rsplit('.', 1)[-1]})" if swept else "")
            ax.errorbar([iv.mean for iv in xs], [iv.mean for iv in ys], xerr=_bars(xs), yerr=_bars(ys),
                        color=f"C{j % 10}", capsize=2, elinewidth=0.8, markersize=style.pop("markersize", 4),
                        label=label, **style)
            for e, xv, yv in zip(shown, xs, ys):
                if e.point.value is not None:
                    ax.annotate(f"{e.point.value:g}", (xv.mean, yv.mean), fontsize=6, xytext=(3, 3),
                                textcoords="offset points", color=f"C{j % 10}")
        chance = scales[panel.key].chance
        if chance is not None:
            ax.axvline(chance, color="grey", linestyle=":", linewidth=1, label="chance")
        if blind:
            ax.text(0.99, 0.01, "no surface: " + ", ".join(blind), transform=ax.transAxes, ha="right",
                    va="bottom", fontsize=6, color="grey")
        ax.set_title(panel.title, fontsize=9)
        ax.set_xlabel(f"{panel.success_label} (left: more private)", fontsize=8)
        ax.set_ylabel("mean client test accuracy (%)", fontsize=8)
        ax.grid(True, alpha=0.3)
        if ax.get_legend_handles_labels()[0]:
            ax.legend(fontsize=6)
    seeds = ", ".join(str(s) for s in here[0].point.seeds)
    fig.suptitle(f"{dataset}: privacy-utility frontier (mean over seeds {seeds}; bars: 95 % bootstrap intervals)",
                 fontsize=9)
    return save_png(fig, path, dpi=110)


# -- writing -------------------------------------------------------------------------------------
def write_frontier(out: Path, points: Sequence[FrontierPoint], panels: Sequence[Panel], draw: SeedDraw, *,
                   reference: str = "rvepfl", against: Sequence[str] = AGAINST) -> list[Path]:
    """Write ``frontier.csv``, ``frontier_verdict.csv``, ``frontier.md`` and a
    ``frontier_<dataset>.png`` per data set into ``out``, atomically, for every data set of ``points``.

    Returns
    -------
    list[Path]
        The files written, in that order (the PNGs in data-set order).
    """
    estimates = estimate_points(points, panels, draw)
    comparisons = compare_at_equal_success(estimates, panels, reference=reference, against=against)
    columns = frontier_columns(panels)
    table = out / "frontier.csv"
    write_csv(table, columns, [[_csv(row[c]) for c in columns] for row in _rows(estimates, panels)])
    verdict = out / "frontier_verdict.csv"
    write_csv(verdict, VERDICT_COLUMNS, [[_csv(v) for v in row] for row in verdict_rows(comparisons)])
    markdown = out / "frontier.md"
    atomic_write_text(markdown, frontier_markdown(estimates, panels, comparisons, draw,
                                                  reference=reference, against=against))
    pngs = [frontier_plot(out / f"frontier_{d}.png", d, estimates, panels)
            for d in dict.fromkeys(e.point.dataset for e in estimates)]
    return [table, verdict, markdown, *pngs]


def _csv(value: Any) -> Any:
    """A csv value: empty for None."""
    return "" if value is None else value

