"""The figures of a suite, drawn from its results alone and written atomically as PNG with the
helpers of :mod:`rvepfl.figures` (which also draws a single run's ``accuracy.png``):

- ``accuracy_<dataset>.png`` (every suite): mean client test accuracy per round of every method,
  the mean over seeds with the seeds' range shaded;
- ``privacy_utility_<dataset>.png`` (an audit): per attack job, each method's accuracy against
  the evaluator's accuracy on its reconstructions (lower = less leaked), or their PSNR where the
  run has no evaluator.

matplotlib is imported when a figure is drawn, not with this module.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np

from rvepfl.experiments.results import AccuracyCell, AttackCell
from rvepfl.experiments.spec import Suite
from rvepfl.figures import agg_figure, save_png

__all__ = ["accuracy_plot", "privacy_utility_plot"]


def accuracy_plot(path: Path, suite: Suite, dataset: str, curves: Mapping[str, Sequence[float]]) -> Path:
    """Mean client test accuracy per round, per method: the mean over seeds, the range shaded.

    Parameters
    ----------
    path
        The PNG to write.
    suite
        Its runs on ``dataset`` are drawn.
    dataset
        One of ``suite.datasets``.
    curves
        Run label -> accuracy (a fraction) per round, rounds 1..R.

    Returns
    -------
    Path
        ``path``.
    """
    fig = agg_figure(7.0, 4.5)
    ax = fig.add_subplot()
    for method in suite.methods:
        series = [curves[r.label] for r in suite.runs if r.dataset == dataset and r.method == method]
        length = min(len(s) for s in series)
        acc = 100 * np.array([s[:length] for s in series])
        rounds = np.arange(1, length + 1)
        (line,) = ax.plot(rounds, acc.mean(0), marker="o", markersize=3, label=method)
        if len(series) > 1:
            ax.fill_between(rounds, acc.min(0), acc.max(0), color=line.get_color(), alpha=0.2, linewidth=0)
    seeds = ", ".join(str(s) for s in suite.seeds)
    band = "; band: range over seeds" if len(suite.seeds) > 1 else ""
    ax.set_title(f"{suite.name}: {dataset} (mean over seeds {seeds}{band})", fontsize=10)
    ax.set_xlabel("round")
    ax.set_ylabel("mean client test accuracy (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    max_round = max(len(c) for c in curves.values())
    if max_round <= 20:
        ax.set_xticks(range(1, max_round + 1))
    return save_png(fig, path, dpi=120)


def privacy_utility_plot(path: Path, suite: Suite, dataset: str, accuracy: Sequence[AccuracyCell],
                         cells: Sequence[AttackCell]) -> Path:
    """One panel per attack job: each method's accuracy (x) against what the attack recovers (y).

    y is the evaluator's accuracy on the reconstructions in percent, or their mean PSNR where no
    evaluator labelled them (mia: the ROC AUC of LiRA, mean over seeds); a method without a surface
    to the job is left out of its panel.

    Returns
    -------
    Path
        ``path``.
    """
    acc = {c.key: c for c in accuracy}
    attacked = {c.key: c for c in cells}
    jobs = suite.jobs()
    fig = agg_figure(3.6 * len(jobs), 3.6)
    for i, job in enumerate(jobs):
        ax = fig.add_subplot(1, len(jobs), i + 1)
        for method in suite.methods:
            cell = attacked[(dataset, method, job)]
            if not cell.available:
                continue
            if cell.membership is not None:
                y, ylabel = cell.membership["auc_lira"].mean, "membership inference ROC AUC (LiRA)"
            elif not cell.evaluator.n:
                y, ylabel = cell.psnr.mean, "PSNR (dB)"
            else:
                y, ylabel = 100.0 * cell.evaluator.mean, "evaluator accuracy on reconstructions (%)"
            x = 100.0 * acc[(dataset, method)].acc.mean
            ax.scatter([x], [y], s=30)
            ax.annotate(method, (x, y), fontsize=7, xytext=(3, 3), textcoords="offset points")
            ax.set_ylabel(ylabel, fontsize=8)
        ax.set_xlabel("mean client test accuracy (%)", fontsize=8)
        ax.set_title(job.title, fontsize=9)
        ax.grid(True, alpha=0.3)
    fig.suptitle(f"{suite.name} / {dataset}: utility (right) vs leakage (up)", fontsize=9)
    return save_png(fig, path, dpi=110)
