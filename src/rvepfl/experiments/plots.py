"""The figures of a run and of a suite, drawn from their results alone and written atomically as PNG.

- ``RUN/accuracy.png`` (every ``rvepfl train`` and Flower run): the run's mean client test
  accuracy and its general accuracy per round, from its metrics CSVs;
- ``accuracy_<dataset>.png`` (every suite): mean client test accuracy per round of every method,
  the mean over seeds with the seeds' range shaded;
- ``privacy_utility_<dataset>.png`` (an audit): per attack job, each method's accuracy against
  the evaluator's accuracy on its reconstructions (lower = less leaked), or their PSNR where the
  run has no evaluator.

matplotlib is imported when a figure is drawn, not with this module.
"""

from __future__ import annotations

import io
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from rvepfl.experiments.results import AccuracyCell, AttackCell
from rvepfl.experiments.spec import Suite
from rvepfl.config import load_config
from rvepfl.io import atomic_write_bytes
from rvepfl.rundir import MetricsLog, RunDir

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["accuracy_plot", "privacy_utility_plot", "run_accuracy_plot"]


def _figure(width: float, height: float) -> Figure:
    """A figure drawn without a GUI backend (and without pyplot's global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: Path, dpi: int) -> Path:
    """Lay ``fig`` out tightly and write it to ``path`` as PNG, atomically."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    atomic_write_bytes(path, buf.getvalue())
    return path


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
    fig = _figure(7.0, 4.5)
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
    return _save(fig, path, dpi=120)


def run_accuracy_plot(run_dir: str | Path) -> Path:
    """Write ``RUN/accuracy.png``: a run's accuracy per complete round, from its metrics CSVs.

    Two curves: the mean client test accuracy after local training (``epoch_testing.csv``, what
    ``rvepfl train`` reports) and the general accuracy, the same test sets before local training
    (``general_test_epochs.csv``). Reads the run, writes nothing else.

    Returns
    -------
    Path
        The PNG's path.
    """
    run = RunDir(run_dir)
    log = MetricsLog.read(run.metrics, int(run.read_progress()["completed_round"]))
    cfg = load_config(run.config)
    fig = _figure(7.0, 4.5)
    ax = fig.add_subplot()
    for kind, label in (("test", "mean client test accuracy (after local training)"),
                        ("general", "general accuracy (before local training)")):
        rows = log.round_means(kind)  # Round#, loss, ACC, ...
        ax.plot([r[0] for r in rows], [100 * r[2] for r in rows], marker="o", markersize=3, label=label)
    ax.set_title(f"{run.path.name}: {cfg.method} on {cfg.data.dataset}, {cfg.data.num_clients} clients, "
                 f"seed {cfg.seed}", fontsize=10)
    ax.set_xlabel("round")
    ax.set_ylabel("accuracy (%)")
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8)
    rounds = len(log.round_means("test"))
    if 0 < rounds <= 20:
        ax.set_xticks(range(1, rounds + 1))
    return _save(fig, run.path / "accuracy.png", dpi=120)


def privacy_utility_plot(path: Path, suite: Suite, dataset: str, accuracy: Sequence[AccuracyCell],
                         cells: Sequence[AttackCell]) -> Path:
    """One panel per attack job: each method's accuracy (x) against what the attack recovers (y).

    y is the evaluator's accuracy on the reconstructions in percent, or their mean PSNR where no
    evaluator labelled them; a method without a surface to the job is left out of its panel.

    Returns
    -------
    Path
        ``path``.
    """
    acc = {c.key: c for c in accuracy}
    attacked = {c.key: c for c in cells}
    jobs = suite.jobs()
    fig = _figure(3.6 * len(jobs), 3.6)
    for i, job in enumerate(jobs):
        ax = fig.add_subplot(1, len(jobs), i + 1)
        for method in suite.methods:
            cell = attacked[(dataset, method, job)]
            if not cell.available:
                continue
            if not cell.evaluator.n:
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
    return _save(fig, path, dpi=110)
