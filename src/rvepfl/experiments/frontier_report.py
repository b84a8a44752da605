"""The privacy-utility frontier's report: its table, its plot and its verdict, from in-memory data.

Each :class:`FrontierPoint` is a method at one value of its privacy knob (or a fixed point) on
one data set, with per-seed samples of its accuracy and of each attack's success; each
:class:`Panel` is one attack. Every statistic is a mean over seeds with a 95 % interval from
:mod:`rvepfl.experiments.stats`: Student's t over the seeds (the seed is the replication unit),
a share of 0/1 units also bounded by its exact binomial interval, and, with one seed only, a
within-seed bootstrap that the report labels as such. One :class:`SeedDraw` serves the whole
frontier: every cell has the same seeds in the same order, so differences between methods are
paired by seed.

:func:`write_frontier` writes, atomically, into one directory and for every data set at once:

- ``frontier.csv``: one row per point, every data set's rows in one file (the ``dataset`` column
  tells them apart; the columns depend only on the panels): ``dataset, method, knob, value,
  seeds`` (space separated), ``accuracy_mean, accuracy_low, accuracy_high`` (percent), then per
  panel ``<key>_mean, <key>_low, <key>_high`` (percent for 0/1 successes, the AUC itself for
  membership panels), then ``note``; a panel the point exposes no surface to is empty and named
  in ``note``;
- ``frontier_verdict.csv``: one row per comparison (see :func:`compare_at_equal_success` and
  :data:`VERDICT_COLUMNS`);
- ``frontier.md``: per data set, a table with every cell ``mean [low, high]``, then the verdict
  in words; at the end, how the numbers were computed;
- ``frontier_<dataset>.png``: per data set, one panel per attack, x = attack success, y =
  accuracy, a line per swept method through its points in knob order, 95 % interval bars on
  both axes, each point labelled with its knob value, fixed points as markers, chance marked on
  AUC panels.

**The verdict.** For each panel, each point of the reference method (every value of its sweep)
and each swept method in ``against``: the reference's accuracy minus the other method's accuracy
at the same attack success. The other method's accuracy at success x is its *upper concave
hull* (:func:`envelope_accuracy`): the best accuracy it reaches leaking no more than x, where
alternating two of its settings (across rounds or deployments) counts as reaching any point on
the chord between them: a mixture of two mechanisms has the mixture's average accuracy and
average attack success. So the envelope is the least concave majorant of its points in
(success, accuracy), flat beyond its most accurate point; a dominated point (less accurate than
one that leaks no more) and a point below the chord of its neighbours are never on it. This reads
"at protection at least as good as the reference's, the best accuracy the other method can
reach", the fair form of "at equal protection, who is more accurate", whatever the knob's order
and grid.

- *compared*: the reference's success lies within the other curve's range of success;
- *not reachable*: the reference's success is below every point of the other curve: that method
  never gets as private in this sweep; no number;
- *outside*: the reference's success is above every point of the other curve (it leaks more than
  the other's least private point): compared with the other's most accurate point, which leaks
  less, so the delta is an upper bound on the reference's advantage (a less private setting of
  the other method, not measured, could be more accurate);
- a method with one point (or whose knob is None) is a fixed point, not a curve, and is not
  interpolated; a method with no surface to the attack, or the reference without one, is said so.

The delta's interval repeats the whole computation (envelope and interpolation) on every
leave-one-seed-out estimate, seed by seed in every cell at once (paired), and takes the
jackknife standard error with t over seeds (:func:`rvepfl.experiments.stats.derived`). The
position (compared, not reachable, outside) is decided on the point estimates; where the
reference's success interval reaches across the end of the other curve's range that decides it,
the position is *uncertain* (below the range the envelope is held at its end, which favours the
other method). A delta whose interval excludes 0 reads "more accurate" or "less accurate",
otherwise "no significant difference"; the intervals are per comparison, not simultaneous.

Each comparison also says whether it is *powered*: its interval's half-width is at most
:data:`HALF_WIDTH_TARGET` (10 accuracy points); if not, "more seeds needed". The attack-success
cells a verdict rests on (the reference's, and the other method's points that give its envelope
there) are flagged when their half-width exceeds 10 points (0.10 of AUC).

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
    cell_interval,
    derived,
    t_quantile,
)
from rvepfl.figures import agg_figure, save_png
from rvepfl.io import atomic_write_text, write_csv

__all__ = [
    "AGAINST",
    "COMPARED",
    "DISPLAY",
    "HALF_WIDTH_TARGET",
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
                   "delta_mean", "delta_low", "delta_high", "half_width", "powered", "reading",
                   "position_uncertain", "wide_success", "sentence"]
"""The columns of ``frontier_verdict.csv``: delta in accuracy points (reference minus other), its
interval's ``half_width`` and whether that is at most :data:`HALF_WIDTH_TARGET` (``powered``; empty
without a delta), ``position_uncertain`` (see :class:`Comparison`), ``wide_success`` (the
attack-success cells the verdict rests on whose interval is wider than +-10 points, ``; ``
separated)."""

HALF_WIDTH_TARGET = 10.0
"""The half-width, in accuracy points, at or below which a verdict's interval is precise enough to act on;
attack-success cells are held to the same 10 points (0.10 of AUC)."""

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
        """The point's key for the within-seed bootstrap's streams (one seed): ``dataset/method/knob=value``."""
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
            raise ValueError(f"Expected every point on {p.dataset} to have the same seeds (the intervals pair them), "
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
        accuracy = cell_interval(p.accuracy, draw, p.cell + "/accuracy").scaled(100.0)
        success: dict[str, Interval | None] = {}
        for panel in panels:
            samples = p.attacks[panel.key]
            success[panel.key] = (None if samples is None else
                                  cell_interval(samples, draw, f"{p.cell}/{panel.key}")
                                  .scaled(scales[panel.key].factor))
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
def _candidates(s: np.ndarray, a: np.ndarray, x: np.ndarray) -> np.ndarray:
    """What each way of reaching success at most ``x`` gives, shape (..., K + K * K), -inf where infeasible.

    The first K: point k alone (feasible when ``s_k <= x``). Then pair (i, j) at position
    ``K + i * K + j``: the mixture of i and j whose success is exactly ``x`` (feasible when
    ``s_i <= x < s_j``), whose accuracy is the chord's value at ``x``. A linear programme over
    mixtures with one constraint has an optimum on at most two points, so the best of these is
    the upper concave hull at ``x``.
    """
    k = s.shape[-1]
    single = np.where(s <= x[..., None], a, -np.inf)
    si, sj = s[..., :, None], s[..., None, :]
    ai, aj = a[..., :, None], a[..., None, :]
    xx = x[..., None, None]
    ok = (si <= xx) & (xx < sj)
    chord = ai + (aj - ai) * (xx - si) / np.where(ok, sj - si, 1.0)
    pair = np.where(ok, chord, -np.inf)
    return np.concatenate([single, pair.reshape(*pair.shape[:-2], k * k)], -1)


def _checked_curve(success: np.ndarray, accuracy: np.ndarray, at: np.ndarray | float):
    s, a = np.asarray(success, dtype=np.float64), np.asarray(accuracy, dtype=np.float64)
    x = np.asarray(at, dtype=np.float64)
    if s.shape != a.shape or s.ndim == 0 or s.shape[-1] == 0 or s.shape[:-1] != x.shape:
        raise ValueError(f"Expected `success` and `accuracy` of shape (..., K >= 1) and `at` of shape (...), "
                         f"got {s.shape}, {a.shape} and {x.shape}")
    return s, a, x


def envelope_accuracy(success: np.ndarray, accuracy: np.ndarray, at: np.ndarray | float) -> np.ndarray:
    """A curve's upper concave hull at success ``at``: the best accuracy it reaches leaking no more.

    Any mixture of the curve's settings is reachable (alternate them across rounds or
    deployments: the mixture's accuracy and attack success are the averages), so this is the
    least concave majorant of the points (last axis) in (success, accuracy), flat beyond the most
    accurate point. A point less accurate than one that leaks no more, or below the chord of two
    others, is never on it. Before the most private point it is clamped at that point's accuracy
    (the most accurate one, at a tie; the caller tells "not reachable" apart). Leading axes
    (replicates) are computed row by row.

    >>> s, a = np.array([10.0, 40.0, 20.0, 30.0]), np.array([50.0, 80.0, 70.0, 60.0])
    >>> [float(envelope_accuracy(s, a, x)) for x in (5.0, 15.0, 25.0, 30.0, 50.0)]
    [50.0, 60.0, 72.5, 75.0, 80.0]
    >>> # (20, 55) is not dominated, but below the chord from (10, 50) to (30, 80): mixing those gives 65
    >>> float(envelope_accuracy(np.array([10.0, 20.0, 30.0]), np.array([50.0, 55.0, 80.0]), 20.0))
    65.0
    """
    s, a, x = _checked_curve(success, accuracy, at)
    best = _candidates(s, a, x).max(-1)
    private = s == s.min(-1, keepdims=True)
    clamp = np.where(private, a, -np.inf).max(-1)
    return np.where(np.isfinite(best), best, clamp)


def _support(success: np.ndarray, accuracy: np.ndarray, at: float) -> tuple[int, ...]:
    """The indices of the points that give :func:`envelope_accuracy` at ``at`` (1-D, point estimates).

    >>> _support(np.array([10.0, 20.0, 30.0]), np.array([50.0, 55.0, 80.0]), 20.0)
    (0, 2)
    >>> _support(np.array([10.0, 20.0, 30.0]), np.array([50.0, 55.0, 80.0]), 40.0)
    (2,)
    """
    s, a, x = _checked_curve(success, accuracy, at)
    values = _candidates(s, a, x)
    k = s.size
    if not np.isfinite(values).any():  # before the most private point: clamped at it
        private = np.flatnonzero(s == s.min())
        return (int(private[np.argmax(a[private])]),)
    best = int(np.argmax(values))  # a point alone comes first, so a tie with a chord's end is that point
    return (best,) if best < k else divmod(best - k, k)


@dataclass(frozen=True)
class Comparison:
    """The reference at one knob value against one other method, on one panel of one data set.

    ``delta`` is in accuracy points (reference minus the other's envelope at the reference's
    success); None unless ``status`` is ``compared`` or ``outside``. ``reading``: ``more
    accurate``, ``less accurate`` or ``no significant difference`` (the delta's interval excludes
    0 or not); empty without a delta. ``position_uncertain``: the reference's success interval
    reaches across the end of the other curve's range that decides the status (compared: below
    its most private or above its least private point; not reachable: up to its most private
    point; outside: down to its least private point); None where there is no curve (``no
    surface``, ``other has no surface``, ``single point``). ``wide_success``: the attack-success
    cells the comparison rests on (the reference's; the other's points that give its envelope
    there) whose interval is wider than +-10 points (0.10 of AUC), each as ``label mean [low, high]``.
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
    position_uncertain: bool | None
    wide_success: tuple[str, ...]
    sentence: str

    @property
    def half_width(self) -> float | None:
        """Half the width of the delta's interval, in accuracy points; None without a delta."""
        return None if self.delta is None else self.delta.half_width

    @property
    def powered(self) -> bool | None:
        """Whether the delta's interval is at most +-:data:`HALF_WIDTH_TARGET` points; None without a delta."""
        return None if self.delta is None else self.delta.half_width <= HALF_WIDTH_TARGET


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
    delta, uncertain = None, None
    wide: tuple[str, ...] = ()
    if success is None:
        status = NO_SURFACE
    elif not curve:
        status = OTHER_NO_SURFACE
    elif len(curve) < 2 or any(e.point.knob is None for e in curve):
        status = SINGLE_POINT
    else:
        s: list[Interval] = [e.success[panel.key] for e in curve]  # type: ignore[misc]  # curve: those with one
        a = [e.accuracy for e in curve]
        means = np.array([iv.mean for iv in s])
        lowest, highest = float(means.min()), float(means.max())
        status = NOT_REACHABLE if x < lowest else OUTSIDE if x > highest else COMPARED  # type: ignore[operator]  # x: a float here
        uncertain = {NOT_REACHABLE: success.high >= lowest, OUTSIDE: success.low <= highest,
                     COMPARED: success.low < lowest or success.high > highest}[status]
        if status == NOT_REACHABLE:
            used = [int(np.argmin(means))]
        else:
            used = list(_support(means, np.array([iv.mean for iv in a]), x))  # type: ignore[arg-type]
            k = len(curve)

            def gap(acc, at, *rest):
                return acc - envelope_accuracy(np.stack(rest[:k], -1), np.stack(rest[k:], -1), at)

            # a difference of two accuracies lies within +-100 points, whatever the interval says
            delta = derived(gap, ref.accuracy, success, *s, *a).clipped(-100.0, 100.0)
        rests = [(ref.point, success), *((curve[i].point, s[i]) for i in used)]
        wide = tuple(f"{p.label} {scale.text(iv.mean)} [{iv.low:.{scale.digits}f}, {iv.high:.{scale.digits}f}]"
                     for p, iv in rests
                     if iv.half_width > HALF_WIDTH_TARGET / 100.0 * scale.factor)
    p = ref.point
    return Comparison(p.dataset, panel.key, p.method, p.knob, p.value, other, status, x, delta,
                      "" if delta is None else _reading(delta), uncertain, wide,
                      _sentence(status, p, other, panel, scale, x, curve, delta))


def verdict_rows(comparisons: Sequence[Comparison]) -> list[list[Any]]:
    """The rows of ``frontier_verdict.csv`` (columns :data:`VERDICT_COLUMNS`)."""
    return [[c.dataset, c.panel, c.reference, c.knob, c.value, c.other, c.status, c.reference_success,
             *((None, None, None) if c.delta is None else (c.delta.mean, c.delta.low, c.delta.high)),
             c.half_width, c.powered, c.reading, c.position_uncertain, "; ".join(c.wide_success), c.sentence]
            for c in comparisons]


def _power_note(c: Comparison) -> str:
    """Whether the comparison's interval is within +-10 accuracy points, and if not why.

    >>> from rvepfl.experiments.stats import Interval
    >>> def cmp(status, delta=None):
    ...     return Comparison("d", "p", "rvepfl", "k", 0.0, "nbafl", status, 0.1, delta, "", None, (), "")
    >>> _power_note(cmp(COMPARED, Interval(-5.0, -19.0, 9.0, np.zeros(3))))
    'interval ±14.0 points: more seeds needed'
    >>> _power_note(cmp(COMPARED, Interval(5.0, 1.0, 9.0, np.zeros(3)))), _power_note(cmp(NOT_REACHABLE))
    ('interval ±4.0 points, within ±10', 'no interval: not reachable')
    """
    if c.delta is None:
        return f"no interval: {c.status}"
    within = " (within one seed only)" if c.delta.within_seed_only else ""
    if c.powered:
        return f"interval ±{c.delta.half_width:.1f} points{within}, within ±{HALF_WIDTH_TARGET:g}"
    return f"interval ±{c.delta.half_width:.1f} points{within}: more seeds needed"


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
  that attack. A membership AUC at chance means that this LiRA, calibrated on reference models
  trained centrally (not federated, without the mechanism's noise or the victim's encoder),
  fails; not that membership does not leak.
{intervals}
- Verdict: the reference's accuracy minus the other method's *upper concave hull* at the
  reference's attack success: the best accuracy the other method reaches leaking no more, where
  alternating two of its settings reaches any point on the chord between them (a mixture's
  accuracy and attack success are the averages); flat beyond its most accurate point, and
  dominated points and points below a chord never count. "Not reachable": the other method
  never gets as private as the reference. "Leaks more than every point": the reference is
  compared with the other's most accurate point, which leaks less, so the delta is an upper
  bound. Where the reference's success interval reaches across the end of the other's range that
  decides this (below its most private point the curve is held at its end), it is said.
- Each verdict line says whether its interval is within ±{target:g} accuracy points (precise
  enough to act on) or "more seeds needed", and names the attack-success cells it rests on (the
  reference's; the other's points that give the envelope there) whose interval is wider than
  ±{target:g} points (0.10 of AUC).
"""

_INTERVALS_SEEDS = """\
- Intervals: the seed is the replication unit, so a cell's interval is Student's t over its
  {n} seeds' statistics ({df} degrees of freedom): the spread of the seeds' statistics holds the
  seed-to-seed and the within-seed variation alike, and with few seeds only t's wide quantile
  ({t:.2f} here, against 1.96) covers 95 % (a percentile bootstrap over 3 seeds covered about
  72 % in simulation where seeds dominate). A share of 0/1 units (classes or images recognised) is also bounded by the exact
  (Clopper-Pearson) interval of its counts pooled over seeds, so 0 of 6 reads [0.0, 45.9 %],
  not [0, 0]; shares, accuracies and AUCs are held within [0, 1]. A difference, the verdict's
  delta included (envelope and interpolation), is recomputed leaving out each seed in every
  cell at once (every cell has the same seeds: paired by seed) and gets that jackknife's
  standard error with t: for a plain difference, the paired t interval. Simulated coverage of
  the nominal 95 %: at least 93 % with 3 and 5 seeds (`python -m pytest
  tests/unit/test_stats_coverage.py -s`). Per quantity, not simultaneous."""  # noqa: E501 - written as it is

_INTERVALS_ONE_SEED = """\
- Intervals: **within one seed only.** With one seed there is no seed-to-seed spread to
  measure: the intervals resample that seed's units (a bootstrap of {boot} replicates, the
  2.5th to 97.5th percentile; a share also bounded by its exact Clopper-Pearson interval) and
  say nothing of how another seed would move the numbers. Run more seeds for intervals over
  seeds. Per quantity, not simultaneous."""


def frontier_markdown(estimates: Sequence[PointEstimate], panels: Sequence[Panel], comparisons: Sequence[Comparison],
                      draw: SeedDraw, *, reference: str = "rvepfl", against: Sequence[str] = AGAINST) -> str:
    """``frontier.md``: per data set a table (cells ``mean [low, high]``) and the verdict in words."""
    scales = _scales([e.point for e in estimates], panels)
    lines = ["# Privacy-utility frontier", ""]
    for dataset in dict.fromkeys(e.point.dataset for e in estimates):
        here = [e for e in estimates if e.point.dataset == dataset]
        seeds = ", ".join(str(s) for s in here[0].point.seeds)
        what = ("Seed {}; [95 % interval, within this one seed only]" if draw.within_seed_only else
                "Seeds {}; mean over seeds [95 % interval: Student's t over seeds; shares also exact]").format(seeds)
        lines += [f"## {dataset}", "", f"{what}.", ""]
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
                lines.append(f"- {_verdict_line(c, scales[panel.key])}")
            for other in dict.fromkeys(c.other for c in mine):
                lines.append(f"- Against {_display(other)}: {_summary([c for c in mine if c.other == other])}.")
            lines.append("")
    intervals = (_INTERVALS_ONE_SEED.format(boot=draw.boot) if draw.within_seed_only else
                 _INTERVALS_SEEDS.format(n=draw.n_seeds, df=draw.n_seeds - 1, t=t_quantile(draw.n_seeds - 1)))
    lines += [_HOW.format(intervals=intervals, target=HALF_WIDTH_TARGET),
              "Generated by `rvepfl.experiments.frontier_report`; do not edit by hand."]
    return "\n".join(lines) + "\n"


def _verdict_line(c: Comparison, scale: _Scale) -> str:
    """A comparison's sentence, then its position's doubt, its precision and the wide success cells it rests on."""
    if c.status in (NO_SURFACE, OTHER_NO_SURFACE, SINGLE_POINT):
        return c.sentence
    note = _power_note(c)
    text = f"{c.sentence}{_position(c)} {note[0].upper()}{note[1:]}."
    if c.wide_success:
        text += (f" Attack-success intervals wider than ±{HALF_WIDTH_TARGET:g} points under it: "
                 f"{'; '.join(c.wide_success)}.")
    return text


def _position(c: Comparison) -> str:
    """Where the reference's success interval puts the status in doubt, if it does."""
    if not c.position_uncertain:
        return ""
    them = _display(c.other)
    if c.status == NOT_REACHABLE:
        return f" (Its success interval reaches {them}'s most private point: it may be within reach.)"
    if c.status == OUTSIDE:
        return f" (Its success interval reaches down to {them}'s least private point.)"
    return f" (Its success interval reaches outside {them}'s measured range, where the curve is held at its end.)"


def _summary(comparisons: Sequence[Comparison]) -> str:
    """How a panel falls against one method, counted over the reference's points."""
    counts: dict[str, int] = {}
    for c in comparisons:
        key = c.reading or c.status
        counts[key] = counts.get(key, 0) + 1
    n = len(comparisons)
    powered = sum(bool(c.powered) for c in comparisons)
    return (", ".join(f"{label} at {k} of {n} points" for label, k in counts.items())
            + f"; {powered} of {n} within ±{HALF_WIDTH_TARGET:g} points")


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
            xs: list[Interval] = [e.success[panel.key] for e in shown]  # type: ignore[misc]  # shown: not None
            ys = [e.accuracy for e in shown]
            style = {"marker": "o", "linestyle": "-"} if swept else {"marker": _MARKERS[j % len(_MARKERS)],
                                                                    "linestyle": "none", "markersize": 7}
            label = _display(method) + (f" ({shown[0].point.knob.rsplit('.', 1)[-1]})" if swept else "")  # type: ignore[union-attr]  # swept: a knob
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
    fig.suptitle(f"{dataset}: privacy-utility frontier (mean over seeds {seeds}; bars: 95 % intervals)",
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

