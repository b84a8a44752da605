"""Run a suite: train every run, attack every run when the suite is an audit, write the results.

Each run is a normal run directory ``<out>/runs/<dataset>-<method>-seed<k>/``. A finished run
(its ``state/progress.json`` says the last round is complete and its config hash is the suite
file's) is skipped, an interrupted one resumes from its last complete round, and a directory that
holds a run of another configuration is refused before anything trains. Then ``<out>`` receives
the accuracy table (:mod:`rvepfl.experiments.tables`), the accuracy plots
(:mod:`rvepfl.experiments.plots`) and ``compare.toml``, a copy of the suite file.

An audit then runs every attack job on every run, in order: each writes into that run's
``attacks/<attack>-<threat>/`` and is skipped when complete with the same settings, resumed when
interrupted. A method/threat pair that has no attack surface (FedPer and FedRep keep a private
head, so they have neither a gradient surface nor a released model that classifies) is listed as
such; any other error (a corrupt checkpoint, say) stops the audit. Evaluators are cached in
``<out>/evaluators/`` and shared by runs with the same held-out images. Last come the attack
table, the privacy-utility plots and ``audit.toml``, the same copy of the suite file. The attacks
run with one torch thread unless the run config's ``threads`` asks for more
(:func:`rvepfl.perf.attack_threads`: torch's default slows an attack by an order of magnitude when
another process shares the cores); the process's thread count is restored after each.

Given a Ray cluster's address (``ray_address``), every run is instead one Ray task that trains it
and then attacks it (:func:`train_and_attack`, the step the frontier's loop takes too), and the
tables are written from what the tasks return, as here: :mod:`rvepfl.experiments.ray_fanout`.

This module is the only one of the package's experiments that calls the training engine.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from rvepfl.attacks.registry import attack
from rvepfl.attacks.runner import attack_state, run_attack
from rvepfl.attacks.threat import Target
from rvepfl.config import Config, published_warnings
from rvepfl.errors import CheckpointError, NoAttackSurface
from rvepfl.experiments.attack_pool import AttackPool, attack_pool
from rvepfl.experiments.plots import accuracy_plot, privacy_utility_plot
from rvepfl.experiments.results import (
    AccuracyCell,
    AttackCell,
    ScoreTable,
    accuracy_cells,
    attack_cells,
    attack_row,
    no_surface_row,
    read_curve,
    read_scores,
)
from rvepfl.experiments.spec import AttackJob, AuditPlan, RunSpec, Suite, default_out
from rvepfl.experiments.tables import write_accuracy_table, write_attack_table
from rvepfl.fl.client import prepare
from rvepfl.fl.lifecycle import RunStart, open_run
from rvepfl.fl.server import Progress
from rvepfl.fl.simulation import begin_run, train
from rvepfl.io import atomic_write_text, remove_temp_files
from rvepfl.perf import attack_threads
from rvepfl.progress import Eta, time_left
from rvepfl.rundir import RunDir
from rvepfl.tensorboard import check_tensorboard

if TYPE_CHECKING:
    from rvepfl.experiments.ray_fanout import RunTask

__all__ = ["RunDone", "SuiteReport", "run_on_node", "run_suite", "train_and_attack"]

Log = Callable[[str], None]


@dataclass
class SuiteReport:
    """What :func:`run_suite` did and wrote."""

    out: Path
    statuses: dict[str, str]
    """Run label -> ``trained``, ``resumed`` or ``skipped``."""
    curves: dict[str, list[float]]
    """Run label -> mean client test accuracy per round."""
    cells: list[AccuracyCell]
    markdown: str
    """``table.md``."""
    plots: list[Path]
    """``accuracy_<dataset>.png``, one per data set."""
    attack_rows: list[dict[str, Any]] = field(default_factory=list)
    """An audit's ``audit.csv`` rows: one per run and job."""
    attack_cells: list[AttackCell] = field(default_factory=list)
    audit_markdown: str = ""
    """An audit's ``audit.md``."""
    audit_plots: list[Path] = field(default_factory=list)
    """An audit's ``privacy_utility_<dataset>.png``, one per data set."""


def run_suite(
    suite: Suite,
    out: str | Path | None = None,
    *,
    progress: Callable[[str], Progress] | None = None,
    log: Log | None = None,
    status: Log | None = None,
    ray_address: str | None = None,
) -> SuiteReport:
    """Train (or resume, or skip) every run of ``suite`` under ``out``, attack each when the
    suite is an audit, and write the tables and plots.

    Parameters
    ----------
    suite
        From :func:`rvepfl.experiments.spec.load_suite`.
    out
        The output directory (default :func:`rvepfl.experiments.spec.default_out`).
    progress
        ``progress(prefix)`` gives the engine's progress receiver for one run (``prefix`` is
        e.g. ``"[3/28] mnist nbafl seed 1"``).
    log
        Receives one line per run and per attack job (with the time left in the training, or in
        the attacks), and the attacks' own lines.
    status
        Receives in-progress lines of the attacks (iterations done, time left), every second or
        two: :meth:`rvepfl.progress.ProgressStream.status`.
    ray_address
        A Ray cluster's address (``auto``, ``host:port``): every run is a task on the cluster,
        trained and attacked there, ``out`` on a filesystem that every node shares; ``progress``
        and ``status`` are then unused (:mod:`rvepfl.experiments.ray_fanout`). None: this machine.

    Returns
    -------
    SuiteReport

    Raises
    ------
    CheckpointError
        Before anything trains, if a run directory holds something else than this suite's run;
        later, if a run's files are damaged.
    ConfigError
        Before anything trains, if Ray is not installed, no cluster answers at ``ray_address``
        or its nodes do not see ``out``.
    """
    out = Path(out) if out is not None else default_out(suite)
    say = log or (lambda line: None)
    remove_temp_files(out)  # uncommitted writes of a stopped suite
    done: dict[str, RunDone] | None = None  # what the Ray tasks did: their runs trained and attacked
    if ray_address is None:
        statuses, curves = _train(suite, out, progress, say)
    else:
        done = _fan_out(suite, out, ray_address, say)
        statuses = {r.label: done[r.label].status for r in suite.runs}
        curves = {r.label: done[r.label].curve for r in suite.runs}
    cells = accuracy_cells(suite, {label: curve[-1] for label, curve in curves.items()})
    out.mkdir(parents=True, exist_ok=True)
    markdown = write_accuracy_table(out, suite, cells)
    if suite.source:
        atomic_write_text(out / "compare.toml", suite.source)
    plots = [accuracy_plot(out / f"accuracy_{d}.png", suite, d, curves) for d in suite.datasets]
    report = SuiteReport(out, statuses, curves, cells, markdown, plots)
    if suite.audit is None:
        return report

    if done is None:
        rows, scores = _attack(suite, suite.audit, out, curves, say, status)
    else:
        rows, scores = [], {}
        for r in suite.runs:
            for job, row, table, _timed in done[r.label].attacks:
                _gather(r, job, row, table, rows, scores)
    report.attack_rows = rows
    report.attack_cells = attack_cells(suite, scores)
    report.audit_markdown = write_attack_table(out, suite, cells, rows, report.attack_cells)
    if suite.source:
        atomic_write_text(out / "audit.toml", suite.source)
    report.audit_plots = [privacy_utility_plot(out / f"privacy_utility_{d}.png", suite, d, cells, report.attack_cells)
                          for d in suite.datasets]
    return report


# -- training ------------------------------------------------------------------------------------
def checked_runs(suite: Suite, out: Path) -> tuple[list[tuple[RunSpec, RunDir]], dict[str, RunStart]]:
    """Every run of ``suite`` with its directory under ``out``, and where each one stands (its
    status ``new``, ``resume`` or ``complete``, its config hash) by label; raises before anything
    is written if a directory holds another configuration's run or its TensorBoard events cannot be
    written."""
    plan = [(r, RunDir(out / "runs" / r.label)) for r in suite.runs]
    states = {r.label: _state(run, r.cfg) for r, run in plan}
    for r, run in plan:
        check_tensorboard(r.cfg, run.path)
    return plan, states


def _state(run: RunDir, cfg: Config) -> RunStart:
    """Where ``run`` stands (new when empty, or stopped while being created: nothing trained
    yet); raises if the directory holds something else."""
    return open_run(
        run, cfg,
        not_a_run=lambda run: CheckpointError(
            f"{run.path} exists but is not an rvepfl run directory (no state/progress.json): "
            "remove it, or give another --out"),
        another=lambda run, recorded, chash: CheckpointError(
            f"{run.path} holds a run of another configuration (hash {recorded}, the compare file "
            f"now gives {chash}): remove it, or give another --out"))


def _train(suite: Suite, out: Path, progress: Callable[[str], Progress] | None,
           say: Log) -> tuple[dict[str, str], dict[str, list[float]]]:
    """Train, resume or skip every run; its status and accuracy curve by run label. Every run
    directory is checked before anything trains, so a conflicting one fails fast.

    The time left is estimated in rounds, from the rounds trained here: a skipped run's rounds
    and a resumed run's earlier rounds count as done, not in the pace."""
    count = len(suite.runs)
    plan, states = checked_runs(suite, out)
    eta = Eta(sum(r.cfg.train.rounds for r in suite.runs))

    def left(finished: int) -> str:
        estimate = eta.left() if finished < count else None
        runs = f"{finished} of {count} runs done"
        return runs if estimate is None else f"{runs}, {time_left(estimate, ' in the training')}"

    statuses: dict[str, str] = {}
    curves: dict[str, list[float]] = {}
    for finished, (r, run) in enumerate(plan, start=1):
        prefix = f"[{r.index}/{count}] {r.title}"
        state = states[r.label]
        rounds = r.cfg.train.rounds
        if state.status == "complete":
            eta.skip(rounds)
            say(f"{prefix}: complete, skipped ({run.path}); {left(finished)}")
            statuses[r.label] = "skipped"
        else:
            estimate = eta.left()
            ahead = "" if estimate is None else f" ({time_left(estimate, ' in the training')})"
            statuses[r.label], done, seconds = train_run(r, state, prefix, progress, say, ahead)
            eta.skip(done)
            eta.advance(rounds - done)
            acc = read_curve(run, r.cfg)[-1]
            say(f"{prefix}: final mean client test acc {100 * acc:.2f} % ({seconds:.0f} s); {left(finished)}")
        curves[r.label] = read_curve(run, r.cfg)
    return statuses, curves


def train_run(r: RunSpec, start: RunStart, prefix: str, progress: Callable[[str], Progress] | None,
              say: Log, ahead: str = "") -> tuple[str, int, float]:
    """Train (status new) or resume (status resume) one run of a suite, opened as ``start``, to its
    last round.

    Returns its status (``trained`` or ``resumed``), the rounds it had done before, and the
    seconds it took here; ``ahead`` is appended to its first line (the time left, say)."""
    started = time.perf_counter()
    run = start.run
    fed = prepare(r.cfg)
    begin_run(fed, start)
    if start.status == "resume":
        say(f"{prefix}: resuming {run.path} after round {start.done}/{r.cfg.train.rounds}{ahead}")
        status = "resumed"
    else:
        say(f"{prefix}: training -> {run.path}{ahead}")
        status = "trained"
    for line in published_warnings(r.cfg):
        say(f"{prefix}: WARNING: {line}")
    train(fed, run, progress(prefix) if progress else None, start=start)
    del fed
    return status, start.done, time.perf_counter() - started


# -- attacking -----------------------------------------------------------------------------------
def _attack(suite: Suite, plan: AuditPlan, out: Path, curves: dict[str, list[float]],
            say: Log, status: Log | None) -> tuple[list[dict[str, Any]], dict[tuple[str, str, AttackJob], ScoreTable]]:
    """Run every job on every run (complete ones are skipped by the attack itself); the
    ``audit.csv`` rows, and the per-image scores of each data set, method and job, seeds pooled.

    The time left is estimated in attacks, from those run here: complete and resumed attacks,
    and jobs without an attack surface, count as done, not in the pace."""
    rows: list[dict[str, Any]] = []
    scores: dict[tuple[str, str, AttackJob], ScoreTable] = {}
    count = len(suite.runs) * len(plan.jobs())
    eta = Eta(count)

    def left() -> str:
        estimate = eta.left() if eta.done < count else None
        done = f"{int(eta.done)} of {count} attacks done"
        return done if estimate is None else f"{done}, {time_left(estimate, ' in the attacks')}"

    with attack_pool(plan.workers) as pool:
        for r in suite.runs:
            for job, row, table, timed in attack_run(r, plan, out, curves[r.label][-1], say, status, pool):
                if timed:
                    eta.advance(1)
                else:  # skipped, resumed, or without a surface: its time here is not an attack's
                    eta.skip(1)
                _gather(r, job, row, table, rows, scores)
                prefix = f"[{r.label}] {job.attack} ({job.threat})"
                if table is None:
                    say(f"{prefix}: no attack surface ({row['note']}); {left()}")
                else:
                    say(f"{prefix}: done ({row['images']} rows); {left()}")
    return rows, scores


def _gather(r: RunSpec, job: AttackJob, row: dict[str, Any], table: ScoreTable | None, rows: list[dict[str, Any]],
            scores: dict[tuple[str, str, AttackJob], ScoreTable]) -> None:
    """Add one job's ``audit.csv`` row to ``rows`` and its per-image scores (if it had a surface)
    to those of its data set, method and job, each row tagged with the run's seed."""
    rows.append(row)
    if table is not None:
        scores.setdefault((r.dataset, r.method, job), []).extend(
            {**line, "seed": r.seed} for line in table)  # type: ignore[dict-item]  # the pooled rows: an int seed


def attack_run(r: RunSpec, plan: AuditPlan, out: Path, acc: float, say: Log, status: Log | None,
               pool: AttackPool | None = None) -> Iterator[tuple[AttackJob, dict[str, Any], ScoreTable | None, bool]]:
    """Run every job of ``plan`` on run ``r`` (in ``out/runs/<label>``; complete ones are skipped
    by the attack itself): one after another, or side by side in ``pool``'s processes.

    Yields, after each job and in the plan's order, the job, its ``audit.csv`` row, its
    ``scores.csv`` rows (None: the method exposes no surface to it: the row's ``note`` says why)
    and whether it ran here from the start (True) rather than being skipped or resumed. With a
    pool, the lines of the jobs running side by side come as they are logged, interleaved."""
    run_dir = out / "runs" / r.label
    target = Target(run_dir)
    threads = r.cfg.threads or None  # one thread unless the run config asks for more (its 0 is training's)
    cache = out / "evaluators"
    queue: list[tuple[AttackJob, Any, str]] = []  # (job, settings or the no-surface row, its state)
    for job in plan.jobs():
        chosen = attack(job.attack)
        settings = chosen.resolve(target, plan.request(job))
        try:  # open what the job attacks
            chosen.open(target, settings, cache)
        except NoAttackSurface as exc:
            queue.append((job, no_surface_row(r, acc, job, str(exc)), "none"))
            continue
        queue.append((job, settings, attack_state(run_dir / "attacks" / job.key, settings)))
    def prefix_of(job: AttackJob) -> str:
        return f"[{r.label}] {job.attack} ({job.threat})"

    futures = {job: pool.submit(run_dir, settings, run_dir / "attacks" / job.key, cache, threads, prefix_of(job),
                                live=status is not None)
               for job, settings, state in queue if pool is not None and state not in ("none", "complete")}
    for job, settings, state in queue:
        if state == "none":
            yield job, settings, None, False
            continue
        prefix = prefix_of(job)
        dest = run_dir / "attacks" / job.key
        if job in futures:
            summary = pool.result(futures[job], prefix, say, status)  # type: ignore[union-attr]  # futures: a pool
        else:
            with attack_threads(threads):
                summary = run_attack(target, settings, dest, lambda line, p=prefix: say(f"{p}: {line}"),  # type: ignore[misc]  # a lambda with a default
                                     evaluator_cache=cache,
                                     status=None if status is None else (lambda line, p=prefix: status(f"{p}: {line}")))  # type: ignore[misc]  # a lambda with a default
        yield job, attack_row(r, acc, job, summary), read_scores(dest / "scores.csv"), state == "new"


# -- one run, trained and attacked ---------------------------------------------------------------
@dataclass
class RunDone:
    """What :func:`train_and_attack` did to one run."""

    label: str
    status: str
    """``trained``, ``resumed`` or ``skipped`` (complete when found)."""
    curve: list[float]
    """Mean client test accuracy per round."""
    attacks: list[tuple[AttackJob, dict[str, Any], ScoreTable | None, bool]]
    """What :func:`attack_run` yielded for each job, in the plan's order (none without a plan)."""
    seconds: float
    """Wall time of the training and the attacks."""


def train_and_attack(r: RunSpec, start: RunStart, plan: AuditPlan | None, out: Path, prefix: str,
                     progress: Callable[[str], Progress] | None, say: Log, status: Log | None = None,
                     pool: AttackPool | None = None) -> RunDone:
    """Train run ``r`` (opened as ``start``: status new), resume it (resume) or take it as it is
    (complete), then
    run every job of ``plan`` on it (none when None): the step a frontier takes for each run, and
    a Ray task for a run of an audit or a frontier (:mod:`rvepfl.experiments.ray_fanout`).

    ``say`` receives the training's lines, its final accuracy and one line per attack job;
    ``progress``, ``status`` and ``pool`` are as in :func:`run_suite` and :func:`attack_run`."""
    started = time.perf_counter()
    run = start.run
    if start.status == "complete":
        result = "skipped"
        say(f"{prefix}: complete, skipped ({run.path})")
    else:
        result, _, seconds = train_run(r, start, prefix, progress, say)
        say(f"{prefix}: final mean client test acc {100 * read_curve(run, r.cfg)[-1]:.2f} % ({seconds:.0f} s)")
    curve = read_curve(run, r.cfg)
    attacks = []
    if plan is not None:
        for job, row, table, timed in attack_run(r, plan, out, curve[-1], say, status, pool):
            what = "no attack surface" if table is None else f"done ({row['images']} rows)"
            say(f"[{r.label}] {job.attack} ({job.threat}): {what}")
            attacks.append((job, row, table, timed))
    return RunDone(r.label, result, curve, attacks, time.perf_counter() - started)


def run_on_node(task: RunTask, out: Path) -> tuple[RunDone, list[str]]:
    """A Ray task's work (:meth:`rvepfl.experiments.ray_fanout.RayCluster.run`): train and attack
    ``task``'s run under ``out`` on this node, from the state its directory is in (a task run
    again after its worker died resumes); what it did, and its lines."""
    run = RunDir(out / "runs" / task.r.label)
    lines: list[str] = []
    done = train_and_attack(task.r, _state(run, task.r.cfg), task.audit, out, task.prefix, None, lines.append)
    return done, lines


def _fan_out(suite: Suite, out: Path, address: str, say: Log) -> dict[str, RunDone]:
    """Every run of ``suite`` trained and attacked by a task on the Ray cluster at ``address``
    (:mod:`rvepfl.experiments.ray_fanout`); what each did, by label. Every run directory is
    checked before anything trains. Each task's lines come when it ends, then one line for the
    run with the time left (in runs, from the pace of those done here; a run found complete and
    attacked is not in the pace)."""
    from rvepfl.experiments.ray_fanout import RunTask, ray_cluster

    plan, _states = checked_runs(suite, out)  # the tasks find each state again: a retried one may have trained
    count = len(plan)
    eta = Eta(count)
    what = "trained and attacked" if suite.audit is not None else "trained"
    done: dict[str, RunDone] = {}
    with ray_cluster(address, out) as cluster:
        say(f"ray: {count} runs as tasks on {cluster.describe()}")
        tasks = [RunTask(r, suite.audit, f"[{r.index}/{count}] {r.title}") for r, _run in plan]
        for finished, (task, (step, lines)) in enumerate(cluster.run(run_on_node, tasks), start=1):
            for line in lines:
                say(line)
            if step.status != "skipped" or any(timed for *_, timed in step.attacks):
                eta.advance(1)
            else:
                eta.skip(1)
            estimate = eta.left() if finished < count else None
            runs = f"{finished} of {count} runs {what}"
            say(f"{task.prefix}: {what}; {runs if estimate is None else f'{runs}, {time_left(estimate)}'}")
            done[step.label] = step
    return done
