"""Figures drawn with matplotlib's Agg backend (no GUI, no pyplot state) and written atomically as
PNG, and the figure of one run: ``RUN/accuracy.png``, which ``rvepfl train`` and the Flower
ServerApp write at the end of a run. The suites' figures (:mod:`rvepfl.experiments.plots`) are
drawn with the same two helpers.

Kept apart from :mod:`rvepfl.experiments` so that a run's plot imports no attack code (torchmetrics
and scipy take seconds to import); matplotlib is imported when a figure is drawn, not with this
module.
"""

from __future__ import annotations

import io
from pathlib import Path
from typing import TYPE_CHECKING

from rvepfl.config import load_config
from rvepfl.io import atomic_write_bytes
from rvepfl.rundir import MetricsLog, RunDir

if TYPE_CHECKING:
    from matplotlib.figure import Figure

__all__ = ["agg_figure", "run_accuracy_plot", "save_png"]


def agg_figure(width: float, height: float) -> Figure:
    """A figure drawn without a GUI backend (and without pyplot's global state)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height))
    FigureCanvasAgg(fig)
    return fig


def save_png(fig: Figure, path: Path, dpi: int) -> Path:
    """Lay ``fig`` out tightly and write it to ``path`` as PNG, atomically."""
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=dpi)
    atomic_write_bytes(path, buf.getvalue())
    return path


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
    fig = agg_figure(7.0, 4.5)
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
    return save_png(fig, run.path / "accuracy.png", dpi=120)
