"""The frontier's training curves: is every point trained to its plateau?

A frontier compares converged models only if every method has stopped improving, so the report
shows each point's mean client test accuracy per round, over its seeds:

- ``frontier_rounds.csv``: one row per (data set, method, knob value, round): ``dataset, method,
  knob, value, round, accuracy_mean`` (percent, mean over seeds), ``accuracy_min,
  accuracy_max`` (the range over seeds), ``gain`` (the mean's change from the round before, in
  points; empty in round 1) and ``per_seed`` (space separated, in the order of ``seeds``);
- ``frontier_rounds_<dataset>.png``: one line per point, the mean over seeds, the range shaded;
- :func:`plateau_lines`: for the markdown report, each point's last accuracy and the gains of its
  last two rounds, so "the last two rounds add less than a point" can be read off.

Written atomically, from the run directories alone; everything else of the report is in
:mod:`rvepfl.experiments.frontier_report`.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rvepfl.figures import agg_figure, save_png
from rvepfl.io import write_csv

__all__ = ["ROUNDS_COLUMNS", "PointCurve", "plateau_lines", "rounds_plot", "write_rounds"]

ROUNDS_COLUMNS = ["dataset", "method", "knob", "value", "round", "accuracy_mean", "accuracy_min", "accuracy_max",
                  "gain", "per_seed"]


@dataclass(frozen=True)
class PointCurve:
    """A frontier point's accuracy per round (fractions), one row per seed (in ``seeds``' order).

    >>> c = PointCurve("mnist", "rvepfl", "model.kl_weight", 0.0, (0, 1), ((0.5, 0.8, 0.9), (0.6, 0.8, 0.91)))
    >>> [round(float(v), 2) for v in c.mean()], round(c.gains()[-1], 2)
    ([55.0, 80.0, 90.5], 10.5)
    """

    dataset: str
    method: str
    knob: str | None
    value: float | None
    seeds: tuple[int, ...]
    curves: tuple[tuple[float, ...], ...]

    def __post_init__(self) -> None:
        lengths = {len(c) for c in self.curves}
        if len(self.curves) != len(self.seeds) or len(lengths) != 1 or 0 in lengths:
            raise ValueError(f"Expected one non-empty curve of one length per seed ({len(self.seeds)}), got lengths "
                             f"{[len(c) for c in self.curves]} ({self.method} on {self.dataset})")

    def percent(self) -> np.ndarray:
        """(seeds, rounds) accuracies in percent."""
        return 100 * np.asarray(self.curves, dtype=np.float64)

    def mean(self) -> np.ndarray:
        """The mean over seeds per round, in percent."""
        return self.percent().mean(axis=0)

    def gains(self) -> list[float]:
        """The mean's change from each round to the next, in points (one fewer than the rounds)."""
        return [float(v) for v in np.diff(self.mean())]

    @property
    def label(self) -> str:
        if self.knob is None:
            return self.method
        return f"{self.method} ({self.knob.rsplit('.', 1)[-1]} = {self.value:g})"


def _rows(curves: Sequence[PointCurve]) -> list[list[object]]:
    rows: list[list[object]] = []
    for c in curves:
        pct, mean = c.percent(), c.mean()
        for r in range(pct.shape[1]):
            gain = "" if r == 0 else f"{mean[r] - mean[r - 1]:.4f}"
            rows.append([c.dataset, c.method, c.knob or "", "" if c.value is None else repr(c.value), r + 1,
                         f"{mean[r]:.4f}", f"{pct[:, r].min():.4f}", f"{pct[:, r].max():.4f}", gain,
                         " ".join(f"{v:.4f}" for v in pct[:, r])])
    return rows


def rounds_plot(path: Path, dataset: str, curves: Sequence[PointCurve], title: str) -> Path:
    """Mean client test accuracy per round of every point of ``dataset``: the mean over seeds, the
    range over seeds shaded; one colour per method (in the order the methods first come), one line
    style and marker per setting of it."""
    fig = agg_figure(8.0, 5.0)
    ax = fig.add_subplot()
    rounds = 0
    colours: dict[str, str] = {}
    settings: dict[str, int] = {}
    for c in curves:
        if c.dataset != dataset:
            continue
        pct = c.percent()
        x = np.arange(1, pct.shape[1] + 1)
        rounds = max(rounds, pct.shape[1])
        colour = colours.setdefault(c.method, f"C{len(colours) % 10}")
        k = settings[c.method] = settings.get(c.method, -1) + 1
        (line,) = ax.plot(x, pct.mean(0), color=colour, linestyle=("-", "--", ":", "-.")[k % 4],
                          marker="osD^v"[k % 5], markersize=3, label=c.label)
        if pct.shape[0] > 1:
            ax.fill_between(x, pct.min(0), pct.max(0), color=line.get_color(), alpha=0.15, linewidth=0)
    ax.set_title(title, fontsize=10)
    ax.set_xlabel("round")
    ax.set_ylabel("mean client test accuracy (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=7, ncol=2)
    if 0 < rounds <= 20:
        ax.set_xticks(range(1, rounds + 1))
    return save_png(fig, path, dpi=120)


def plateau_lines(curves: Sequence[PointCurve]) -> list[str]:
    """One markdown line per point: its final mean accuracy, and the gains of its last two rounds.

    >>> c = PointCurve("mnist", "fedavg", None, None, (0,), ((0.5, 0.8, 0.9),))
    >>> plateau_lines([c])
    ['- mnist fedavg: 90.0 % after round 3; the last two rounds: +30.0, +10.0 points']
    """
    lines = []
    for c in curves:
        mean, gains = c.mean(), c.gains()
        last = ", ".join(f"{g:+.1f}" for g in gains[-2:])
        tail = f"; the last two rounds: {last} points" if gains else ""
        lines.append(f"- {c.dataset} {c.label}: {mean[-1]:.1f} % after round {len(mean)}{tail}")
    return lines


def write_rounds(out: Path, curves: Sequence[PointCurve], *, name: str) -> list[Path]:
    """Write ``frontier_rounds.csv`` and one ``frontier_rounds_<dataset>.png`` per data set under
    ``out``; return the paths."""
    path = out / "frontier_rounds.csv"
    write_csv(path, ROUNDS_COLUMNS, _rows(curves))
    files = [path]
    for dataset in dict.fromkeys(c.dataset for c in curves):
        seeds = ", ".join(str(s) for s in curves[0].seeds)
        files.append(rounds_plot(out / f"frontier_rounds_{dataset}.png", dataset, curves,
                                 f"{name}: {dataset}, mean client test accuracy per round (mean over seeds "
                                 f"{seeds}; band: their range)"))
    return files
