"""The tables of a suite, each as CSV (every number, full precision) and Markdown (to read).

Every suite writes the accuracy table into its output directory, atomically:

- ``table.csv``: ``dataset, method, seeds, mean_acc, std_acc, acc_seed<k>...``: ``seeds`` is the
  number of seeds; accuracies are fractions in [0, 1] (final-round mean client test accuracy, the
  ``ACC`` column of ``metrics/epoch_testing.csv``); ``std_acc`` is the sample standard deviation
  (ddof = 1), empty with a single seed;
- ``table.md``: one row per method, one column per data set, cells ``mean ± std`` in percent,
  and the margin of RVE-PFL over NbAFL per data set where both ran.

An audit also writes the attack table:

- ``audit.csv``: one row per run and attack job: dataset, method, seed, accuracy (final mean
  client test accuracy), attack, threat, images, and the mean of each score over that run's
  images; a job the method exposes no surface to has 0 images and the reason in ``note``;
- ``audit.md``: per data set, accuracy beside each job's PSNR, SSIM and evaluator accuracy,
  mean ± std over the images of every seed pooled; ``n/a`` where the method has no surface.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from rvepfl.attacks.registry import attack
from rvepfl.config import Config
from rvepfl.experiments.results import AccuracyCell, AttackCell, Estimate
from rvepfl.experiments.spec import Suite
from rvepfl.io import atomic_write_text, write_csv

__all__ = ["accuracy_markdown", "attack_markdown", "plus_minus", "write_accuracy_table", "write_attack_table"]

_DISPLAY = {"rvepfl": "RVE-PFL", "nbafl": "NbAFL"}
_AUDIT_ORDER = ["dataset", "method", "seed", "accuracy", "attack", "threat", "images"]
"""The first columns of ``audit.csv``; the score columns follow in alphabetical order."""


def plus_minus(estimate: Estimate, *, scale: float = 1.0, digits: int = 1) -> str:
    """``mean ± std`` of an estimate, ``mean`` alone for one value, ``–`` for none.

    ``scale`` multiplies the mean and the standard deviation; :meth:`Estimate.scaled` multiplies
    the values before they are averaged. The two can differ in the last bit, and so in the last
    digit shown: ``table.md`` scales its statistics, ``audit.md`` its values.

    >>> plus_minus(Estimate((0.90, 0.92)), scale=100)
    '91.0 ± 1.4'
    >>> plus_minus(Estimate((1.0,)), digits=3), plus_minus(Estimate(()))
    ('1.000', '–')
    """
    if estimate.n == 0:
        return "–"
    text = f"{scale * estimate.mean:.{digits}f}"
    std = estimate.std
    return text if std is None else f"{text} ± {scale * std:.{digits}f}"


def _markdown_table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """A Markdown table's lines: the first column left-aligned, the others right-aligned."""
    lines = ["| " + " | ".join(header) + " |", "| --- | " + " | ".join("---:" for _ in header[1:]) + " |"]
    return lines + ["| " + " | ".join(row) + " |" for row in rows]


# -- accuracy ------------------------------------------------------------------------------------
def write_accuracy_table(out: Path, suite: Suite, cells: Sequence[AccuracyCell]) -> str:
    """Write ``table.csv`` and ``table.md`` into ``out``; return the Markdown."""
    header = ["dataset", "method", "seeds", "mean_acc", "std_acc", *(f"acc_seed{s}" for s in suite.seeds)]
    rows = [[c.dataset, c.method, len(c.seeds), c.acc.mean, "" if c.acc.std is None else c.acc.std, *c.acc.values]
            for c in cells]
    write_csv(out / "table.csv", header, rows)
    markdown = accuracy_markdown(suite, cells)
    atomic_write_text(out / "table.md", markdown)
    return markdown


def _setup(cfg: Config) -> str:
    d, t = cfg.data, cfg.train
    images = f"{d.subset} images" if d.subset else "all images"
    return (f"{d.num_clients} clients, {images} ({d.split} split, {d.partition} partition), rounds {t.rounds}, "
            f"local epochs {t.local_epochs}, batch {t.batch_size}")


def accuracy_markdown(suite: Suite, cells: Sequence[AccuracyCell]) -> str:
    """The accuracy table: one row per method, one column per data set, then the margins.

    Parameters
    ----------
    suite
        Its name, lists, setups and per-method overrides make the title and the notes.
    cells
        One per data set and method of ``suite``.
    """
    by = {c.key: c for c in cells}
    lines = [f"# {suite.name}{' (smoke)' if suite.smoke else ''}: final mean client test accuracy (%)", ""]
    lines += _markdown_table(["method", *suite.datasets],
                             [[m, *(plus_minus(by[(d, m)].acc, scale=100) for d in suite.datasets)]
                              for m in suite.methods])
    lines.append("")
    seeds = ", ".join(str(s) for s in suite.seeds)
    std = ("mean ± sample standard deviation (ddof = 1) over seeds " + seeds if len(suite.seeds) >= 2
           else f"seed {seeds} (one seed: no standard deviation)")
    lines.append(
        f"Each cell: the final-round mean client test accuracy (`ACC` of `metrics/epoch_testing.csv`), {std}. "
        "For a given data set and seed every method ran on the same clients (same partition).")
    for dataset in suite.datasets:
        lines.append(f"Setup ({dataset}): {_setup(suite.setups[dataset])}.")
    for method, values in suite.method_overrides.items():
        settings = ", ".join(f"`{k} = {json.dumps(v)}`" for k, v in values.items())
        lines.append(f"Overridden for {method}: {settings}.")
    if "rvepfl" in suite.methods and "nbafl" in suite.methods:
        lines.append("")
        for dataset in suite.datasets:
            margin = 100 * (by[(dataset, "rvepfl")].acc.mean - by[(dataset, "nbafl")].acc.mean)
            lines.append(f"{dataset}: {_DISPLAY['rvepfl']} margin over {_DISPLAY['nbafl']}: {margin:+.1f} points")
    lines.append("")
    lines.append("Generated by `rvepfl compare`; do not edit by hand.")
    return "\n".join(lines) + "\n"


# -- attacks -------------------------------------------------------------------------------------
def write_attack_table(out: Path, suite: Suite, accuracy: Sequence[AccuracyCell],
                       rows: Sequence[dict[str, Any]], cells: Sequence[AttackCell]) -> str:
    """Write ``audit.csv`` (from ``rows``) and ``audit.md`` (from the cells) into ``out``; return the Markdown.

    Parameters
    ----------
    rows
        One per run and job (see :func:`rvepfl.experiments.results.attack_row`); the columns are
        every key of any row.
    """
    columns = sorted({k for row in rows for k in row},
                     key=lambda k: (_AUDIT_ORDER.index(k) if k in _AUDIT_ORDER else 99, k))
    write_csv(out / "audit.csv", columns, [[_csv_value(row.get(c)) for c in columns] for row in rows])
    markdown = attack_markdown(suite, accuracy, cells)
    atomic_write_text(out / "audit.md", markdown)
    return markdown


def _csv_value(value: Any) -> Any:
    """A value of ``audit.csv``: empty for a column the row lacks or a score that is None."""
    return "" if value is None else value


def attack_markdown(suite: Suite, accuracy: Sequence[AccuracyCell], cells: Sequence[AttackCell]) -> str:
    """The attack table: per data set, one row per method, its accuracy, then per job the PSNR,
    SSIM and evaluator accuracy of its reconstructions (``n/a`` where it exposes no surface).

    Raises
    ------
    ValueError
        If ``suite`` has no audit.
    """
    plan = suite.audit
    if plan is None:
        raise ValueError(f"Expected a suite loaded as an audit, got {suite.name!r} without an [audit] table")
    acc = {c.key: c for c in accuracy}
    attacked = {c.key: c for c in cells}
    jobs = suite.jobs()
    lines = [f"# {suite.name}: accuracy and what each attack recovers", ""]
    for dataset in suite.datasets:
        lines += [f"## {dataset}", ""]
        header = ["method", "accuracy (%)"]
        for job in jobs:
            header += attack(job.attack).table_header(job.title)
        rows = []
        for method in suite.methods:
            row = [method, plus_minus(acc[(dataset, method)].acc.finite().scaled(100.0))]
            for job in jobs:
                cell = attacked[(dataset, method, job)]
                if not cell.available:
                    row += ["n/a", "n/a", "n/a"]
                    continue
                if cell.membership is not None:
                    m = cell.membership
                    row += [plus_minus(m["auc_lira"], digits=3), plus_minus(m["auc_loss"], digits=3),
                            plus_minus(m["tpr_at_1pct_fpr_lira"].scaled(100.0), digits=1)]
                    continue
                row += [plus_minus(cell.psnr.finite()), plus_minus(cell.ssim.finite(), digits=3),
                        plus_minus(cell.evaluator.finite().scaled(100.0), digits=0)]
            rows.append(row)
        lines += _markdown_table(header, rows)
        lines.append("")
    lines += [
        ("Accuracy: final-round mean client test accuracy, mean ± std over seeds "
         f"{', '.join(map(str, suite.seeds))}. Attack cells: mean ± std over every attacked image "
         "(attacks on an upload) or class (model inversion: one image per class) of every seed, in [0, 1] pixel "
         "space; model inversion is scored against the nearest real training image of its class. Evaluator acc: "
         "share of reconstructions an independent classifier, trained on images no client has, labels as the "
         "true class (chance is 10 %). mia: ROC AUC of membership inference (0.5 is chance) and its true-positive "
         "rate at 1 % "
         "false positives, mean ± std over seeds (members: the victim's training images; non-members: as many "
         "images no client has). n/a: the method exposes no such attack surface (see audit.csv's note)."),
        f"Victim client {plan.client}; {plan.images} images per gradient attack, batch {plan.batch_size}.",
    ]
    if plan.update_attacks:
        steps = "each run's train.local_epochs" if plan.local_steps is None else str(plan.local_steps)
        lines.append(
            f"(update): the attack sees the client's whole local round on each batch ({steps} local steps, "
            "the method's own training and upload) as the mean gradient -update / (lr * steps).")
    lines += [
        "",
        "Generated by `rvepfl audit`; do not edit by hand.",
    ]
    return "\n".join(lines) + "\n"
