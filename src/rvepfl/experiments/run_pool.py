"""Whole runs side by side on one machine, each in its own process (``[frontier] runs_at_once``).

A frontier takes its runs one at a time by default: a run trains on ``workers`` processes, then
its attack jobs share the attack pool (:mod:`rvepfl.experiments.attack_pool`). The cores then sit
idle wherever one process waits: between a round's clients and the server's step, and at the end
of a run's attacks, when the last long job runs alone. With ``runs_at_once = N`` the frontier
instead hands N runs at a time to N processes, as a Ray cluster hands runs to its CPUs
(:mod:`rvepfl.experiments.ray_fanout`): each process trains its run in itself (``workers = 1``),
runs its attacks one after another on the run's threads, measures the disk and prunes it, with
the very function a Ray task calls. Which process trains a client, and how many processes train
it, does not change its numbers (``threads`` and ``workers`` are outside the config hash), so a
frontier's files are the same, byte for byte, whichever way its runs were taken.

Each run's lines come when the run ends (the engine's per-round progress and the attacks'
in-progress lines are not shown). Processes start fresh (``spawn``), ignore Ctrl-C (the parent's
to handle) and, on Linux, die with the parent: a frontier stopped with Ctrl-C or ``kill -9``
leaves nothing writing into its directory, and its runs resume when the command runs again. A
process that dies (out of memory, killed) stops the command with one line saying so.
"""

from __future__ import annotations

import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING, TypeVar

from rvepfl.errors import RvepflError
from rvepfl.experiments.attack_pool import kill_workers, start_worker

if TYPE_CHECKING:
    from rvepfl.experiments.ray_fanout import RunTask

__all__ = ["RunWorkerDied", "runs_side_by_side"]

T = TypeVar("T")


class RunWorkerDied(RvepflError):
    """A run's process died (killed, out of memory) before the run finished."""


def _in_process(function: Callable[[RunTask, Path], T], task: RunTask, out: str) -> T:
    """In a run's process: ``function(task, out)`` with the run trained in this process
    (``workers = 1``) on the run config's threads (1 for 0, torch's default, which would take
    every core), as on a Ray node."""
    cfg = task.r.cfg
    threads = cfg.threads or 1
    return function(replace(task, r=replace(task.r, cfg=replace(cfg, threads=threads, workers=1))), Path(out))


def runs_side_by_side(function: Callable[[RunTask, Path], T], tasks: Sequence[RunTask], out: Path,
                      processes: int) -> Iterator[tuple[RunTask, T]]:
    """``function(task, out)`` for every task, ``processes`` at a time in their own processes
    (``function`` a module-level function, sent by name), taken in ``tasks``' order; yield each
    task with its result as it finishes. A task's error is raised as it is; a process that died
    as :class:`RunWorkerDied` naming its run. When this ends early (an error, Ctrl-C) the runs
    still going are killed: they resume when the command runs again."""
    if processes < 2:
        raise ValueError(f"Expected at least 2 processes, got {processes}")
    context = multiprocessing.get_context("spawn")
    executor = ProcessPoolExecutor(max_workers=processes, mp_context=context, initializer=start_worker,
                                   initargs=(os.getpid(),))
    pending: dict[Future[T], RunTask] = {executor.submit(_in_process, function, task, str(out)): task
                                         for task in tasks}
    clean = False
    try:
        while pending:
            done, _ = wait(pending, timeout=1.0, return_when=FIRST_COMPLETED)  # a timeout: Ctrl-C gets through
            for future in [f for f in pending if f in done]:  # in the order submitted
                task = pending.pop(future)
                try:
                    result = future.result()
                except BrokenProcessPool:
                    raise RunWorkerDied(f"{task.prefix}: a run's process died (out of memory or killed); run the "
                                        "same command again to resume, or set `frontier.runs_at_once = 1`") from None
                yield task, result
        clean = True
    finally:
        if not clean:  # do not wait for the runs still going: they resume on the next invocation
            kill_workers(executor)
        executor.shutdown(wait=True, cancel_futures=True)
