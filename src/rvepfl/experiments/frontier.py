"""The privacy-utility frontier: ``rvepfl frontier --config configs/frontier-quick.toml``.

A frontier file is an audit file (:mod:`rvepfl.experiments.spec`) with one ``[sweep.<method>]``
table per method whose privacy knob is swept, and an optional ``[frontier]`` table::

    [sweep.nbafl]
    key = "nbafl.epsilon"          # any config key the method uses, never data settings
    values = [5.0, 20.0, 60.0]     # each value is a point: a run per seed

    [frontier]
    reference = "rvepfl"           # whose points the verdict compares (default rvepfl, if it runs;
                                   # else the first swept method)
    against = ["nbafl"]            # the swept methods it is compared with (default: every other)
    prune = true                   # keep only what the attacks need of a finished run (default)
    runs_at_once = 1               # runs side by side, each in its own process (default 1)

Every method without a sweep table is a fixed point. A run of a sweep point is named
``<dataset>-<method>-<point>-seed<k>`` (``mnist-nbafl-epsilon20-seed0``); every point of every
method trains on the same clients for a given data set and seed, as in a compare.

The runs are taken one at a time: trained (or resumed, or skipped when complete), attacked by
every job of ``[audit]``, then pruned: an RVE-PFL client's state is its 79 MB encoder, so with
``prune`` only the audit's victim client's saved states are kept once a run and its attacks are
complete (the other clients' states serve only a resume, which a finished run no longer needs).
The peak disk use so far, measured after each run's training and attacks, before its pruning, is
recorded in ``frontier.json`` with the time the frontier took. A stopped frontier continues where it stopped
when run again: finished runs and attacks are not redone.

With ``runs_at_once = N`` (N >= 2), N runs are taken at a time, each trained, attacked, measured
and pruned in its own process (:mod:`rvepfl.experiments.run_pool`), which keeps the cores busy
where one run at a time leaves them waiting; the frontier's files are the same. ``frontier.json``
then records the wall time from the first run to the last, not the sum of the runs' own times.

Given a Ray cluster's address, every run is instead a task on the cluster that trains, attacks,
measures and prunes it with the same functions (:mod:`rvepfl.experiments.ray_fanout`); the output
directory must then be on a filesystem every node shares, and the frontier's files are the same.

Then :mod:`rvepfl.experiments.frontier_report` writes ``frontier.csv``, ``frontier.md`` and
``frontier_<dataset>.png``: every point's accuracy and attack success, each a mean over seeds with
its 95 % interval (Student's t over seeds; shares also exact), and the verdict.
"""

from __future__ import annotations

import csv
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np

from rvepfl.attacks.common import read_summary
from rvepfl.attacks.registry import attack
from rvepfl.config import apply_overrides, config_hash, read_toml_file
from rvepfl.errors import CheckpointError, ConfigError
from rvepfl.experiments.attack_pool import attack_pool
from rvepfl.experiments.frontier_rounds import PointCurve, plateau_lines, write_rounds
from rvepfl.experiments.results import read_curve
from rvepfl.experiments.runner import Log, RunDone, checked_runs, run_on_node, train_and_attack
from rvepfl.experiments.spec import (
    AttackJob,
    RunSpec,
    Suite,
    default_out,
    suite_from_dict,
)
from rvepfl.fl.server import Progress
from rvepfl.io import atomic_write_text, remove_temp_files, write_json
from rvepfl.progress import Eta, format_duration, time_left
from rvepfl.rundir import RunDir

if TYPE_CHECKING:
    from rvepfl.experiments.ray_fanout import RunTask

__all__ = ["FrontierPlan", "FrontierReport", "Sweep", "frontier_from_dict", "load_frontier", "prune_run",
           "run_frontier"]

_FRONTIER_KEYS = ("reference", "against", "prune", "runs_at_once")
_SWEEP_KEYS = ("key", "values")
_RESERVED_KNOBS = ("name", "method", "seed", "threads", "workers", "device", "tensorboard")


@dataclass(frozen=True)
class Sweep:
    """A method's swept config key and its values, in the file's order."""

    method: str
    key: str
    values: tuple[float, ...]


@dataclass(frozen=True)
class FrontierPlan:
    """A validated frontier file: its runs and attacks (an audit suite whose swept methods have
    a run per point and seed), the sweeps, and whom the verdict compares."""

    suite: Suite
    sweeps: dict[str, Sweep]
    reference: str
    against: tuple[str, ...]
    prune: bool = True
    runs_at_once: int = 1
    """Runs taken at a time on this machine, each in its own process (1: one at a time, its
    attacks in the attack pool)."""


# -- loading -------------------------------------------------------------------------------------
def _sweep(method: str, table: Any, runs: tuple[RunSpec, ...]) -> Sweep:
    where = f"sweep.{method}"
    if not isinstance(table, dict):
        raise ConfigError(f"Expected `{where}` to be a table [{where}] with `key` and `values`, got {table!r}")
    for k in table:
        if k not in _SWEEP_KEYS:
            raise ConfigError(f"Unknown key `{where}.{k}`: allowed: {', '.join(_SWEEP_KEYS)}")
    key, values = table.get("key"), table.get("values")
    if not isinstance(key, str) or not key:
        raise ConfigError(f"Expected `{where}.key` to be a config key such as \"nbafl.epsilon\", got {key!r}")
    if key.split(".")[0] == "data" or key in _RESERVED_KNOBS:
        raise ConfigError(f"`{where}.key` = {key!r} cannot be swept: every point must train on the same clients "
                          "with the same engine; sweep a method's privacy setting (e.g. nbafl.epsilon)")
    if not isinstance(values, list) or not values:
        raise ConfigError(f"Expected `{where}.values` to be a non-empty list of numbers, got {values!r}")
    if not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in values):
        raise ConfigError(f"Expected `{where}.values` to be numbers, got {values!r}")
    if len(set(values)) != len(values):
        raise ConfigError(f"Expected `{where}.values` without repeats, got {values!r}")
    first = next(r for r in runs if r.method == method)
    hashes = set()
    for v in values:
        try:
            cfg = apply_overrides(first.cfg, {key: v})
        except ConfigError as exc:
            raise ConfigError(f"`{where}`: {exc}") from None
        hashes.add(config_hash(cfg))
    if len(hashes) < len(values):
        raise ConfigError(f"`{where}.key` = {key!r} does not change {method}'s runs (the method does not use it): "
                          f"sweep a key of a section {method} uses (`rvepfl methods` lists them)")
    return Sweep(method, key, tuple(float(v) for v in values))


def frontier_from_dict(values: dict[str, Any], *, smoke: bool = False, source: str = "",
                       default_name: str = "frontier") -> FrontierPlan:
    """Validate a parsed frontier file (see the module docstring) and build every run's config.

    Raises
    ------
    ConfigError
        With a one-line message naming the first bad key or value.
    """
    values = dict(values)
    sweeps_table = values.pop("sweep", {})
    frontier = values.pop("frontier", {})
    if not isinstance(sweeps_table, dict):
        raise ConfigError(f"Expected `sweep` to be tables [sweep.<method>], got {sweeps_table!r}")
    if not isinstance(frontier, dict):
        raise ConfigError(f"Expected `frontier` to be a table [frontier], got {frontier!r}")
    for k in frontier:
        if k not in _FRONTIER_KEYS:
            raise ConfigError(f"Unknown frontier key `frontier.{k}`: allowed: {', '.join(_FRONTIER_KEYS)}")
    suite = suite_from_dict(values, audit=True, smoke=smoke, source=source, default_name=default_name)
    for method in sweeps_table:
        if method not in suite.methods:
            raise ConfigError(f"`[sweep.{method}]` names no entry of `methods` ({', '.join(suite.methods)})")
    sweeps = {m: _sweep(m, t, suite.runs) for m, t in sweeps_table.items()}
    if not sweeps:
        raise ConfigError("A frontier needs at least one [sweep.<method>] table (key and values)")

    runs: list[RunSpec] = []
    for r in suite.runs:
        sweep = sweeps.get(r.method)
        if sweep is None:
            runs.append(replace(r, index=len(runs) + 1))
            continue
        for v in sweep.values:
            cfg = apply_overrides(r.cfg, {sweep.key: v})
            point = replace(r, index=len(runs) + 1, cfg=cfg, knob=sweep.key, value=v)
            runs.append(replace(point, cfg=replace(cfg, name=point.label)))

    reference = frontier.get("reference", "rvepfl" if "rvepfl" in suite.methods else next(iter(sweeps)))
    if not isinstance(reference, str) or reference not in suite.methods:
        raise ConfigError(f"Expected `frontier.reference` to name an entry of `methods` ({', '.join(suite.methods)}), "
                          f"got {reference!r}")
    default_against = [m for m in sweeps if m != reference]
    against = frontier.get("against", default_against)
    if not isinstance(against, list) or not all(isinstance(a, str) for a in against):
        raise ConfigError(f"Expected `frontier.against` to be a list of swept method names, got {against!r}")
    for a in against:
        if a not in sweeps or a == reference:
            raise ConfigError(f"Expected `frontier.against` to name swept methods other than the reference "
                              f"({', '.join(m for m in sweeps if m != reference) or 'none'}), got {a!r}")
    prune = frontier.get("prune", True)
    if not isinstance(prune, bool):
        raise ConfigError(f"Expected `frontier.prune` to be true or false, got {prune!r}")
    at_once = frontier.get("runs_at_once", 1)
    if not isinstance(at_once, int) or isinstance(at_once, bool) or at_once < 1:
        raise ConfigError(f"Expected `frontier.runs_at_once` to be an integer >= 1 (runs side by side, each in its "
                          f"own process; at most the cores), got {at_once!r}")
    return FrontierPlan(replace(suite, runs=tuple(runs)), sweeps, reference, tuple(against), prune, at_once)


def load_frontier(path: str | Path, *, smoke: bool = False) -> FrontierPlan:
    """Load and validate a frontier file; errors are one line that starts with the path."""
    path = Path(path)
    text, values = read_toml_file(path, "frontier file")
    try:
        return frontier_from_dict(values, smoke=smoke, source=text, default_name=path.stem)
    except ConfigError as exc:
        raise ConfigError(f"{path}: {exc}") from None


# -- disk ----------------------------------------------------------------------------------------
def disk_use(path: Path) -> int:
    """Bytes the files under ``path`` occupy on disk, each hard-linked file counted once."""
    seen: set[tuple[int, int]] = set()
    total = 0
    for root, _dirs, files in os.walk(path):
        for name in files:
            try:
                st = os.lstat(os.path.join(root, name))
            except OSError:
                continue
            if (st.st_dev, st.st_ino) in seen:
                continue
            seen.add((st.st_dev, st.st_ino))
            total += st.st_blocks * 512
    return total


def prune_run(run: RunDir, keep_clients: tuple[int, ...]) -> int:
    """Delete every saved client state of a finished run but those of ``keep_clients``: the
    client store (``state/clients/``) and the checkpoints' ``clients/`` files. Returns the files
    deleted.

    What stays serves every attack on the kept clients (the audit's victim, and every client a
    stolen-model job attacks: :meth:`~rvepfl.experiments.spec.AuditPlan.kept_clients`) and the
    run's tables; a resume of the finished run is not needed. Idempotent.
    """
    keep = {f"{c:04d}" for c in keep_clients}  # a file is <client>.safetensors or <client>-r<round>.safetensors
    deleted = 0
    places = [run.path / "state" / "clients", *sorted((run.path / "checkpoints").glob("round_*/clients"))]
    for folder in places:
        if not folder.is_dir():
            continue
        for f in folder.iterdir():
            if f.suffix == ".safetensors" and f.name.partition(".")[0].partition("-")[0] not in keep:
                f.unlink()
                deleted += 1
    return deleted


# -- running -------------------------------------------------------------------------------------
@dataclass
class FrontierReport:
    """What :func:`run_frontier` did and wrote."""

    out: Path
    statuses: dict[str, str]
    """Run label -> ``trained``, ``resumed`` or ``skipped``."""
    files: list[Path]
    markdown: str
    seconds: float
    """Wall time of this invocation."""
    peak_disk: int
    """Peak disk use (bytes) of ``out`` seen so far, over every invocation."""


def _final_client_accuracies(run: RunDir, rounds: int) -> np.ndarray:
    """Each client's test accuracy after the last round (``metrics/client_testing.csv``)."""
    path = run.metrics / "client_testing.csv"
    with open(path, newline="") as fh:
        rows = [row for row in csv.DictReader(fh) if int(row["Round#"]) == rounds]
    if not rows:
        raise CheckpointError(f"{path} has no row of round {rounds}: the run is not complete")
    return np.array([float(row["ACC"]) for row in rows])


def run_frontier(plan: FrontierPlan, out: str | Path | None = None, *,
                 progress: Callable[[str], Progress] | None = None, log: Log | None = None,
                 status: Log | None = None, ray_address: str | None = None) -> FrontierReport:
    """Train, attack and prune every run of ``plan`` one at a time under ``out`` (or side by side
    as tasks on a Ray cluster), then write the frontier's tables, plots and verdict.

    Parameters
    ----------
    plan
        From :func:`load_frontier`.
    out
        The output directory (default ``runs/<name>``).
    progress, log, status
        As in :func:`rvepfl.experiments.runner.run_suite`: the engine's progress per run, one
        line per run and attack (with the time left in the frontier), the attacks' in-progress
        lines.
    ray_address
        A Ray cluster's address (``auto``, ``host:port``): every run is a task on the cluster,
        ``out`` on a filesystem that every node shares; ``progress`` and ``status`` are then
        unused (:mod:`rvepfl.experiments.ray_fanout`). None: one run at a time on this machine.

    Raises
    ------
    CheckpointError
        Before anything trains, if a run directory holds something else than this frontier's run.
    ConfigError
        Before anything trains, if Ray is not installed, no cluster answers at ``ray_address``
        or its nodes do not see ``out``.
    """
    suite = plan.suite
    assert suite.audit is not None
    out = Path(out) if out is not None else default_out(suite)
    say = log or (lambda line: None)
    started = time.perf_counter()
    remove_temp_files(out)
    count = len(suite.runs)
    dirs, states = checked_runs(suite, out)
    if ray_address is not None:
        from rvepfl.experiments.ray_fanout import check_address, ray_cluster

        check_address(ray_address)  # Ray installed and a cluster there, before anything is written
    out.mkdir(parents=True, exist_ok=True)
    record_path = out / "frontier.json"
    record = read_summary(record_path)
    peak = int(record.get("peak_disk_bytes", 0))
    attacked = set(record.get("attacked", []))
    eta = Eta(count)

    def left(done: int) -> str:
        estimate = eta.left() if done < count else None
        runs = f"{done} of {count} runs trained and attacked"
        return runs if estimate is None else f"{runs}, {time_left(estimate, ' in the frontier')}"

    def finished(done: int, r: RunSpec, seconds: float) -> None:
        """Record run ``r`` as attacked: the ``done``-th to finish here, in ``seconds``."""
        nonlocal record
        fresh = statuses[r.label] != "skipped" or r.label not in attacked
        attacked.add(r.label)
        # a run found complete and attacked adds nothing: the record is the time of the work itself
        record = {"peak_disk_bytes": peak, "attacked": sorted(attacked),
                  "seconds": float(record.get("seconds", 0.0)) + (seconds if fresh else 0.0)}
        write_json(record_path, record)
        if fresh:
            eta.advance(1)
        else:
            eta.skip(1)
        say(f"[{r.index}/{count}] {r.title}: trained and attacked; {left(done)}; disk peak {peak / 2**30:.2f} GiB")

    statuses: dict[str, str] = {}
    jobs = suite.audit.jobs()
    local = dirs

    def side_by_side(results: Iterator[tuple[RunTask, tuple[RunDone, list[str], int]]]) -> None:
        """Take the runs' results as they come from processes or tasks side by side: each run's
        time is the wall time since the previous one finished (their own times overlap)."""
        nonlocal peak
        last = time.perf_counter()
        for done, (task, (step, lines, disk)) in enumerate(results, start=1):
            for line in lines:
                say(line)
            statuses[task.r.label] = step.status
            peak = max(peak, disk)
            now = time.perf_counter()
            finished(done, task.r, now - last)
            last = now

    def tasks() -> list[RunTask]:
        from rvepfl.experiments.ray_fanout import RunTask

        audit = suite.audit
        assert audit is not None
        return [RunTask(r, audit, f"[{r.index}/{count}] {r.title}",
                        prune=audit.kept_clients(r.cfg.data.num_clients) if plan.prune else None)
                for r in suite.runs]

    if ray_address is not None:  # every run a task on the cluster: none is left for the loop below
        local = []
        with ray_cluster(ray_address, out) as cluster:
            say(f"ray: {count} runs as tasks on {cluster.describe()}")
            side_by_side(cluster.run(_run_on_node, tasks()))
    elif plan.runs_at_once > 1:  # runs side by side in processes here: none is left for the loop below
        from rvepfl.experiments.run_pool import runs_side_by_side

        local = []
        say(f"{count} runs, {plan.runs_at_once} at a time, each in its own process")
        side_by_side(runs_side_by_side(_run_on_node, tasks(), out, plan.runs_at_once))
    with attack_pool(suite.audit.workers if local else 1) as pool:
        for done, (r, run) in enumerate(local, start=1):
            prefix = f"[{r.index}/{count}] {r.title}"
            t0 = time.perf_counter()
            statuses[r.label] = train_and_attack(r, states[r.label], suite.audit, out, prefix, progress, say,
                                                 status, pool).status
            peak = max(peak, disk_use(out))  # the run trained and attacked, before its pruning
            if plan.prune:
                prune_run(run, suite.audit.kept_clients(r.cfg.data.num_clients))
            finished(done, r, time.perf_counter() - t0)
    statuses = {r.label: statuses[r.label] for r in suite.runs}  # the plan's order (Ray's runs end in any)

    from rvepfl.experiments.frontier_report import write_frontier
    from rvepfl.experiments.stats import SeedDraw

    points = frontier_points(plan, out)
    draw = SeedDraw(len(suite.seeds), seed=suite.audit.seed)
    files = write_frontier(out, points, panels(jobs), draw, reference=plan.reference, against=plan.against)
    curves = frontier_curves(plan, out)
    files += write_rounds(out, curves, name=suite.name)
    if suite.source:
        atomic_write_text(out / "frontier.toml", suite.source)
    markdown = (out / "frontier.md").read_text(encoding="utf-8")
    markdown += ("\n## Training curves\n\nEach point's mean client test accuracy (mean over seeds) after its last "
                 "round, and what its last two rounds added: a converged point adds little "
                 "(`frontier_rounds.csv`, `frontier_rounds_<dataset>.png`).\n\n"
                 + "\n".join(plateau_lines(curves)) + "\n")
    atomic_write_text(out / "frontier.md", markdown)
    seconds = time.perf_counter() - started
    say(f"frontier: {format_duration(float(record.get('seconds', seconds)))} of training and attacks in all; "
        f"peak disk use {peak / 2**30:.2f} GiB")
    return FrontierReport(out, statuses, files, markdown, seconds, peak)


def _run_on_node(task: RunTask, out: Path) -> tuple[RunDone, list[str], int]:
    """A frontier's Ray task (:meth:`rvepfl.experiments.ray_fanout.RayCluster.run`): train and
    attack the run (:func:`rvepfl.experiments.runner.run_on_node`), measure the disk under
    ``out`` before pruning it, then prune it as ``task.prune`` says; what it did, its lines and
    the bytes measured."""
    done, lines = run_on_node(task, out)
    disk = disk_use(out)
    if task.prune is not None:
        prune_run(RunDir(out / "runs" / task.r.label), task.prune)
    return done, lines, disk


# -- what the report reads -----------------------------------------------------------------------
def panels(jobs: tuple[AttackJob, ...]):
    """One frontier panel per attack job, in the audit's order."""
    from rvepfl.experiments.frontier_report import Panel

    return tuple(Panel(job.key, attack(job.attack).panel_title(job.threat), attack(job.attack).success_label)
                 for job in jobs)


def _job_sample(job: AttackJob, scores_csv: Path):
    from rvepfl.experiments.stats import AucSample, MeanSample

    with open(scores_csv, newline="") as fh:
        rows = list(csv.DictReader(fh))
    if attack(job.attack).membership:
        member = np.array([int(r["member"]) for r in rows]) == 1
        score = np.array([float(r["lira_score"]) for r in rows])
        return AucSample(score[member], score[~member])
    correct = [r["evaluator_correct"] for r in rows]
    if any(c == "" for c in correct):
        raise CheckpointError(f"{scores_csv} has reconstructions without the evaluator's label: the frontier scores "
                              "attacks by the evaluator; keep images out of every client with data.subset")
    # A stolen-model job attacks each client's model on the same classes: the clients are groups
    # whose results may move together, which the exact bound must not count as independent units.
    clients = {r.get("client", "") for r in rows}
    return MeanSample(np.array([float(c) for c in correct]), clusters=len(clients))


def frontier_curves(plan: FrontierPlan, out: Path) -> list[PointCurve]:
    """Every (data set, method, point) of the frontier with its runs' accuracy per round, one
    curve per seed, read from the run directories under ``out``."""
    groups: dict[tuple[str, str, str | None, float | None], list[RunSpec]] = {}
    for r in plan.suite.runs:
        groups.setdefault((r.dataset, r.method, r.knob, r.value), []).append(r)
    return [PointCurve(dataset, method, knob, value, tuple(r.seed for r in runs),
                       tuple(tuple(read_curve(RunDir(out / "runs" / r.label), r.cfg)) for r in runs))
            for (dataset, method, knob, value), runs in groups.items()]


def frontier_points(plan: FrontierPlan, out: Path) -> list:
    """Every (data set, method, point) of the frontier with its per-seed samples, read from the
    run directories under ``out``."""
    from rvepfl.experiments.frontier_report import FrontierPoint
    from rvepfl.experiments.stats import MeanSample

    suite = plan.suite
    assert suite.audit is not None
    groups: dict[tuple[str, str, str | None, float | None], list[RunSpec]] = {}
    for r in suite.runs:
        groups.setdefault((r.dataset, r.method, r.knob, r.value), []).append(r)
    points = []
    for (dataset, method, knob, value), runs in groups.items():
        accuracy = tuple(MeanSample(_final_client_accuracies(RunDir(out / "runs" / r.label), r.cfg.train.rounds))
                         for r in runs)
        attacks: dict[str, Any] = {}
        for job in suite.audit.jobs():
            samples = []
            for r in runs:
                scores = out / "runs" / r.label / "attacks" / job.key / "scores.csv"
                samples.append(_job_sample(job, scores) if scores.is_file() else None)
            if all(s is None for s in samples):
                attacks[job.key] = None
            elif any(s is None for s in samples):
                raise CheckpointError(f"{job.key} ran on some seeds of {dataset} {method} and not others: "
                                      "run the frontier again to complete it")
            else:
                attacks[job.key] = tuple(samples)
        points.append(FrontierPoint(dataset, method, knob, value, tuple(r.seed for r in runs), accuracy, attacks))
    return points
