"""The in-process engine: a federation on this machine, its clients trained in this process or in
worker processes side by side.

:func:`train` runs the server loop (:func:`rvepfl.fl.server.run_rounds`) with the
:class:`InProcess` dispatcher. Each client's private state lives in a disk-backed store
(:class:`~rvepfl.fl.store.ClientStore`), so memory stays flat as clients grow; a worker only
writes and renames a client's state file, and the engine flushes it to disk from a thread while
the other clients train, then waits for every flush before the round is committed.

Clients that fail (raise, lose their worker process, pass ``faults.client_timeout``) are left out
of their round when ``faults.min_clients`` allows it and recorded in metrics/client_failures.csv;
otherwise the round fails and nothing of it is kept.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch

from rvepfl.config import Config, config_hash
from rvepfl.errors import CheckpointError
from rvepfl.fl import client as client_side
from rvepfl.fl.client import (
    ClientFailure,
    Federation,
    describe_exception,
    initial_model,
    partition_summary,
)
from rvepfl.fl.lifecycle import RunStart
from rvepfl.fl.secure_aggregation import ClearSecureMean
from rvepfl.fl.server import Progress, Result, ServerSetup, check_partition, run_rounds, write_run_start
from rvepfl.fl.store import ClientStore
from rvepfl.fl.workers import ClientPool, ClientTask
from rvepfl.io import load_tensors, save_tensors, write_json
from rvepfl.methods import Method
from rvepfl.methods.base import SecureMean
from rvepfl.perf import tune_allocator
from rvepfl.rundir import MetricsLog, RunDir
from rvepfl.shared_adam import initial_carrier
from rvepfl.tensorboard import tensorboard_events

__all__ = ["InProcess", "begin_run", "initialise", "resolve_workers", "train"]

_CARRIER_KIND = "rvepfl-published-shared-optimiser"


def initialise(fed: Federation, run: RunDir, start: RunStart | None = None) -> None:
    """Create a new run directory's config, partition and empty progress marker (``start``: the
    run as :func:`rvepfl.fl.lifecycle.open_run` found it; without it, the config hash is computed
    here)."""
    chash = start.config_hash if start is not None else config_hash(fed.cfg)
    d = fed.dataset
    summary = partition_summary(dataset=d.name, source=d.source, num_train=len(d.train_y), num_test=len(d.test_y),
                                partition=fed.partition, label_counts=fed.label_counts())
    write_run_start(run, fed.cfg, summary, fed.partition, chash)


def begin_run(fed: Federation, start: RunStart) -> None:
    """Begin the run ``start`` opened (:func:`rvepfl.fl.lifecycle.open_run`) with ``fed``: a new
    one's first files (once the temporary files of a stopped creation are gone), or, to resume, the
    check that ``fed``'s partition is the one the run saved."""
    if start.status == "new":
        start.run.remove_temp_files()
        initialise(fed, start.run, start)
    else:
        check_partition(fed.partition, start.run)


def keep_precision(fed: Federation, run: RunDir) -> None:
    """Record the precision a run trains in (``state/precision.json``), or check that a resumed
    run resolves to the one it started with: ``train.precision = "auto"`` may resolve to another
    on other hardware, and a run is not continued in a precision it did not start with."""
    path = run.state / "precision.json"
    now = fed.method.precision
    if not path.is_file() or not run.progress.is_file() or run.read_progress()["completed_round"] == 0:
        write_json(path, now.summary())  # nothing trained yet: the run takes this precision
        return
    try:
        before = json.loads(path.read_text(encoding="utf-8"))["ran"]
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise CheckpointError(f"Cannot read {path}: {exc}") from None
    if before != now.name:
        raise CheckpointError(
            f"{run.path} trained in precision {before}, but train.precision = {now.requested!r} resolves to "
            f"{now.name} here ({now.reason}): resume it where it resolves to {before}")


def _cores() -> int:
    """The CPUs this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def resolve_workers(cfg: Config, device: torch.device) -> tuple[int, int]:
    """(worker processes, intra-op threads of each) for ``cfg`` on ``device``.

    ``workers = 0`` means one worker per group of ``threads`` CPUs this process may use (one per
    CPU when ``threads = 0``), at most one per client of a round, and 1 on a GPU. Each worker
    gets ``threads`` threads, or the CPUs shared among the workers.
    """
    workers = cfg.workers
    if workers == 0 and cfg.train.optimiser == "published-shared":
        workers = 1  # one optimiser passes from client to client: they train one after another
    if workers == 0:
        workers = 1 if device.type != "cpu" else _cores() // max(1, cfg.threads)
        workers = max(1, min(workers, cfg.clients_per_round))
    threads = cfg.threads or max(1, _cores() // workers)
    return workers, threads


class InProcess:
    """The in-process engine's dispatcher: clients trained one after another in this process, or
    (``workers`` > 1, or a ``faults.client_timeout`` to enforce) in a pool of worker processes."""

    def __init__(self, fed: Federation, run: RunDir, chash: str) -> None:
        cfg = fed.cfg
        self.fed, self.run = fed, run
        self.workers, self.threads = resolve_workers(cfg, fed.device)
        self.model, self.initial_private, _ = initial_model(fed.method, cfg.seed, fed.device)
        self.store = ClientStore(run.state / "clients", config_hash=chash, deferred_flush=True)
        self.pool: ClientPool | None = None
        self.flusher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rvepfl-flush")

    def start(self, done: int, log: MetricsLog) -> None:
        self.store.prune(done)
        if self.fed.cfg.train.optimiser == "published-shared":
            self.fed.method.carried_optimiser = self._carrier(done)
        # A client past its time limit can only be stopped in a process of its own.
        if (self.workers > 1 or self.fed.cfg.faults.client_timeout > 0) and done < self.fed.cfg.train.rounds:
            self.pool = ClientPool(self.fed.cfg, self.run.path, self.workers, self.threads, self.store.config_hash)

    def run_round(self, round_: int, clients: list[int], clocks: list[int | None], committed: int,
                  global_state: dict[str, torch.Tensor], export: bool) -> Iterator[Result]:
        """Each client's result in client order; a failed client's state of this round is
        dropped from the store, a finished one's is flushed to disk while the others train (the
        generator ends once every flush is done)."""
        flushes: list[Future[None]] = []
        trained = self._pooled if self.pool is not None else self._here
        for client, result, seconds in trained(round_, clients, clocks, committed, global_state):
            if isinstance(result, ClientFailure):
                self.store.discard(client, round_)
            else:
                flushes.append(self.flusher.submit(self.store.flush, client, round_))
            yield client, result, seconds
        for flushed in flushes:  # every state the round commits is on disk before the commit
            flushed.result()
        if self.fed.method.carried_optimiser is not None:
            meta = {"format": _CARRIER_KIND, "round": str(round_), "config_hash": self.store.config_hash}
            save_tensors(self._carrier_path(round_), self.fed.method.carried_optimiser, meta)

    def _carrier_path(self, round_: int) -> Path:
        return self.run.state / "optimiser" / f"r{round_:04d}.safetensors"

    def _carrier(self, done: int) -> dict[str, torch.Tensor]:
        """The published shared optimiser's state after round ``done`` (fresh before round 1)."""
        fresh = initial_carrier(self.model)
        if done == 0:
            return fresh
        return load_tensors(self._carrier_path(done), expected=fresh, kind=_CARRIER_KIND)

    def _here(self, round_: int, clients: list[int], clocks: list[int | None], committed: int,
              global_state: dict[str, torch.Tensor]) -> Iterator[Result]:
        """Each client in this process on the engine's model, in turn; one that raises becomes a
        failure of kind ``error``."""
        for client, clock in zip(clients, clocks):
            started = time.perf_counter()
            try:
                outcome = client_side.train_client(self.fed, self.model, self.store, self.initial_private,
                                                   global_state, round_, client, committed, clock)
            except Exception as exc:  # noqa: BLE001 - a client fault: the round decides what it means
                seconds = time.perf_counter() - started
                yield client, ClientFailure(client, "error", seconds, describe_exception(exc), exc), seconds
                continue
            yield client, outcome, time.perf_counter() - started

    def _pooled(self, round_: int, clients: list[int], clocks: list[int | None], committed: int,
                global_state: dict[str, torch.Tensor]) -> Iterator[Result]:
        """Every client queued to the pool at once; results passed on in client order, so the
        aggregation's sum is always the same."""
        assert self.pool is not None
        tasks = [ClientTask(round_, c, committed, clock, global_state) for c, clock in zip(clients, clocks)]
        arrived: dict[int, tuple[Any, float]] = {}
        next_index = 0
        for index, result, seconds in self.pool.run(tasks, self.fed.cfg.faults.client_timeout):
            arrived[index] = (result, seconds)
            while next_index in arrived:
                result, seconds = arrived.pop(next_index)
                yield clients[next_index], result, seconds
                next_index += 1

    def reject(self, round_: int, client: int) -> None:
        """The client's new private state of the round does not count: it keeps its last one."""
        self.store.discard(client, round_)

    def commit(self, round_: int, export: bool, run: RunDir) -> None:
        if export:
            self.store.export(round_, range(self.fed.cfg.data.num_clients), run.round_dir(round_) / "clients")

    def committed(self, round_: int, clients: list[int], failures: list[ClientFailure]) -> None:
        self.store.prune(round_)
        for path in self._carrier_path(round_).parent.glob("r*.safetensors"):
            if path.name != self._carrier_path(round_).name:
                path.unlink(missing_ok=True)

    def details(self) -> dict[str, Any]:
        return {"engine": "in-process", "device": str(self.fed.device),
                "threads": torch.get_num_threads() if self.workers == 1 else self.threads,
                "workers": self.workers, "precision": self.fed.method.precision.summary()}

    def secure_mean(self, method: Method) -> SecureMean:
        """The protocol's quantisation in the clear: the numbers a Flower deployment with secure
        aggregation gives (the in-process server is trusted with every upload anyway)."""
        return ClearSecureMean(self.fed.cfg, method)

    def close(self) -> None:
        self.flusher.shutdown(wait=True, cancel_futures=True)
        if self.pool is not None:
            self.pool.close()


def train(fed: Federation, run: RunDir, progress: Progress | None = None, *,
          start: RunStart | None = None) -> dict[str, Any]:
    """Run (or continue) the federation in ``run``; return the summary written to summary.json.
    With ``tensorboard = true`` the progress events also go to ``run``'s TensorBoard events.
    ``start``: the run as :func:`rvepfl.fl.lifecycle.open_run` found it (without it, the config
    hash is computed here)."""
    chash = start.config_hash if start is not None else config_hash(fed.cfg)
    run.remove_temp_files()  # uncommitted writes of a stopped run
    keep_precision(fed, run)
    tune_allocator()
    if fed.cfg.threads:
        torch.set_num_threads(fed.cfg.threads)
    with tensorboard_events(fed.cfg, run, progress, fed.method.summary) as listener:
        dispatcher = InProcess(fed, run, chash)
        try:
            return run_rounds(run, ServerSetup(fed.cfg, fed.method, fed.partition), dispatcher, listener, chash=chash,
                              resume=f"resume with `rvepfl train --resume {run.path}`")
        finally:
            dispatcher.close()
