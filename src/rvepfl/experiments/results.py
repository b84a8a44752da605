"""What a suite produced, as its tables and plots read it: estimates, cells and rows.

A *cell* is one point of the suite's grid summarised over its repeats: an
:class:`AccuracyCell` is a method on a data set over its seeds, an :class:`AttackCell` adds an
attack job and pools the attacked images of every seed. Each statistic of a cell is an
:class:`Estimate`, which keeps the repeated values, so what a table shows of them (mean, sample
standard deviation, later an interval) is computed from the values in one place. A *row* is one
run and one attack job, a line of ``audit.csv``.

The functions here read run directories and attack outputs; they train and attack nothing.
"""

from __future__ import annotations

import csv
import math
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rvepfl.attacks.registry import attack
from rvepfl.config import Config
from rvepfl.errors import CheckpointError
from rvepfl.experiments.spec import AttackJob, RunSpec, Suite
from rvepfl.rundir import MetricsLog, RunDir

__all__ = [
    "AccuracyCell",
    "AttackCell",
    "Estimate",
    "ScoreTable",
    "accuracy_cells",
    "attack_cells",
    "attack_row",
    "no_surface_row",
    "read_curve",
    "read_scores",
]

ScoreTable = list[dict[str, str]]
"""The rows of attack ``scores.csv`` files, as read (one per attacked image, or per class for model inversion)."""


@dataclass(frozen=True)
class Estimate:
    """Repeated measurements of one quantity (one per seed, or per attacked image) and their statistics.

    >>> e = Estimate((0.5, 0.7, float("nan")))
    >>> e.n, e.finite().n, round(e.finite().mean, 6), round(e.finite().std, 6)
    (3, 2, 0.6, 0.141421)
    >>> Estimate((0.5,)).std is None
    True
    """

    values: tuple[float, ...]

    @property
    def n(self) -> int:
        """The number of values."""
        return len(self.values)

    @property
    def mean(self) -> float:
        """The mean of the values (nan, with numpy's warning, when there are none)."""
        return float(np.mean(self.values))

    @property
    def std(self) -> float | None:
        """Sample standard deviation (ddof = 1); None with fewer than two values."""
        return float(np.std(self.values, ddof=1)) if self.n >= 2 else None

    def finite(self) -> Estimate:
        """The finite values only (an attack's score can be infinite or nan)."""
        return Estimate(tuple(v for v in self.values if math.isfinite(v)))

    def scaled(self, factor: float) -> Estimate:
        """Every value times ``factor`` (e.g. 100 for percent)."""
        return Estimate(tuple(v * factor for v in self.values))


@dataclass(frozen=True)
class AccuracyCell:
    """A method on a data set: its final accuracy for each seed (fractions in [0, 1])."""

    dataset: str
    method: str
    seeds: tuple[int, ...]
    acc: Estimate
    """The final-round mean client test accuracy of each seed, in the order of ``seeds``."""

    @property
    def key(self) -> tuple[str, str]:
        """``(dataset, method)``."""
        return self.dataset, self.method


@dataclass(frozen=True)
class AttackCell:
    """An attack job on a method and data set: its per-image scores, every seed's images pooled.

    A cell with no images (``available`` False) is a method that exposes no surface to the job.
    """

    dataset: str
    method: str
    job: AttackJob
    images: int
    psnr: Estimate
    """PSNR (dB) of each reconstruction; model inversion: against the nearest real image of its class."""
    ssim: Estimate
    """SSIM of each reconstruction, scored as the PSNR is."""
    evaluator: Estimate
    """1 or 0 per reconstruction: whether the evaluator labels it as its true class; none without an evaluator."""
    membership: dict[str, Estimate] | None = None
    """mia only: per seed, ``auc_lira``, ``auc_loss`` and ``tpr_at_1pct_fpr_lira`` (its psnr, ssim and
    evaluator are empty)."""

    @property
    def key(self) -> tuple[str, str, AttackJob]:
        """``(dataset, method, job)``."""
        return self.dataset, self.method, self.job

    @property
    def available(self) -> bool:
        """Whether the job ran on this method (False: no attack surface)."""
        return self.images > 0


# -- reading runs --------------------------------------------------------------------------------
def read_curve(run: RunDir, cfg: Config) -> list[float]:
    """Mean client test accuracy per round (rounds 1..R) of a complete run.

    Raises
    ------
    CheckpointError
        If ``metrics/epoch_testing.csv`` lacks a round.
    """
    rows = MetricsLog.read(run.metrics, cfg.train.rounds).round_means("test")
    if [int(r[0]) for r in rows] != list(range(1, cfg.train.rounds + 1)):
        raise CheckpointError(f"{run.metrics / 'epoch_testing.csv'} lacks rounds of a run marked complete")
    return [float(r[2]) for r in rows]


def accuracy_cells(suite: Suite, final_acc: Mapping[str, float]) -> list[AccuracyCell]:
    """One cell per data set and method (in that order), from each run's final accuracy by run label."""
    cells = []
    for dataset in suite.datasets:
        for method in suite.methods:
            runs = [r for r in suite.runs if r.dataset == dataset and r.method == method]
            cells.append(AccuracyCell(dataset, method, tuple(r.seed for r in runs),
                                      Estimate(tuple(final_acc[r.label] for r in runs))))
    return cells


# -- reading attacks -----------------------------------------------------------------------------
def read_scores(path: Path) -> ScoreTable:
    """The rows of an attack's ``scores.csv``."""
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh))


def attack_row(run: RunSpec, accuracy: float, job: AttackJob, summary: Mapping[str, Any]) -> dict[str, Any]:
    """The ``audit.csv`` row of a job that ran: the attack's own summary of its scores
    (:meth:`rvepfl.attacks.base.Attack.audit_scores`: the mean of each score and the evaluator's
    share; membership inference: each attack's ROC AUC, TPR at 0.1 % and 1 % FPR and balanced accuracy)."""
    return {"dataset": run.dataset, "method": run.method, "seed": run.seed, "accuracy": accuracy,
            "attack": job.attack, "threat": job.threat, "images": summary["rows"],
            **attack(job.attack).audit_scores(dict(summary)), "note": ""}


def no_surface_row(run: RunSpec, accuracy: float, job: AttackJob, reason: str) -> dict[str, Any]:
    """The ``audit.csv`` row of a job the method exposes no surface to; ``reason`` is the note."""
    return {"dataset": run.dataset, "method": run.method, "seed": run.seed, "accuracy": accuracy,
            "attack": job.attack, "threat": job.threat, "images": 0, "note": reason}


def _column(table: ScoreTable, key: str) -> Estimate:
    return Estimate(tuple(float(row[key]) for row in table if row.get(key, "") != ""))


def _membership(table: ScoreTable) -> dict[str, Estimate]:
    """Per seed (the rows' ``seed``), the ROC AUC of the LiRA and loss scores and LiRA's TPR at 1 % FPR."""
    from rvepfl.attacks.mia import roc_auc, tpr_at_fpr

    out: dict[str, list[float]] = {"auc_lira": [], "auc_loss": [], "tpr_at_1pct_fpr_lira": []}
    for seed in dict.fromkeys(row["seed"] for row in table):
        rows = [row for row in table if row["seed"] == seed]
        member = np.array([int(row["member"]) for row in rows]) == 1
        lira = np.array([float(row["lira_score"]) for row in rows])
        out["auc_lira"].append(roc_auc(lira, member))
        out["auc_loss"].append(roc_auc(np.array([float(row["loss_score"]) for row in rows]), member))
        out["tpr_at_1pct_fpr_lira"].append(tpr_at_fpr(lira, member, 0.01))
    return {k: Estimate(tuple(v)) for k, v in out.items()}


def attack_cells(suite: Suite, scores: Mapping[tuple[str, str, AttackJob], ScoreTable]) -> list[AttackCell]:
    """One cell per data set, method and job (in that order), from the pooled ``scores.csv`` rows
    of every seed (each row with its run's ``seed``); a key missing from ``scores`` gives a cell
    without images."""
    cells = []
    for dataset in suite.datasets:
        for method in suite.methods:
            for job in suite.jobs():
                table = scores.get((dataset, method, job), [])
                chosen = attack(job.attack)
                if chosen.membership:
                    empty = Estimate(())
                    cells.append(AttackCell(dataset, method, job, len(table), empty, empty, empty,
                                            _membership(table) if table else None))
                    continue
                cells.append(AttackCell(dataset, method, job, len(table), _column(table, chosen.scores_psnr),
                                        _column(table, chosen.scores_ssim), _column(table, "evaluator_correct")))
    return cells
