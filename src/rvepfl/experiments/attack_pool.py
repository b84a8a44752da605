"""The attacks of one run side by side, in worker processes (``[audit] workers``).

An audit or a frontier attacks each run with several independent jobs (MI-Face on two threat
models, Inverting Gradients, membership inference on two). Each job runs on one thread by
default (:func:`rvepfl.perf.attack_threads`), so on a machine with more cores than that the
others sit idle while a run is attacked. :class:`AttackPool` hands a run's jobs to ``workers``
processes, each running one job at a time on the run config's attack threads.

Which process runs a job does not change its numbers: every attack seeds itself from its
settings, and a process with the same thread count does the same arithmetic. The caches the jobs
share (the evaluator, LiRA's reference models) are built under a file lock
(:func:`rvepfl.io.file_lock`), so the first job that needs one builds it and the others read it;
only which job's summary says "trained" rather than "read from the cache" depends on timing.

What a job logs reaches the parent as it is logged, through one queue that every worker writes
to: its lines and its in-progress lines are shown while the parent waits for a job, so the jobs
that run side by side interleave their lines, each line naming its job.

Workers run in fresh interpreters (``spawn``), ignore Ctrl-C (the parent's to handle) and, on
Linux, die with the parent, so a frontier stopped with ``kill -9`` leaves nothing writing into
its directory; a stopped job resumes or restarts as any attack does.

On a Ray cluster (``--ray-address``) there is no pool: each run is a task that attacks in its own
process, and the runs side by side fill the cores (:mod:`rvepfl.experiments.ray_fanout`).
"""

from __future__ import annotations

import multiprocessing
import os
import signal
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

from rvepfl.attacks.runner import AttackSettings
from rvepfl.errors import RvepflError

__all__ = ["AttackPool", "AttackWorkerDied", "attack_pool", "kill_workers", "start_worker"]


class AttackWorkerDied(RvepflError):
    """An attack worker process died (killed, out of memory) before its job finished."""


Log = Callable[[str], None]

_targets: dict[str, Any] = {}
_lines: Any = None  # in a worker: the pool's queue of ("line" or "status", text)


def start_worker(parent: int) -> None:
    """A pool worker's start (this pool's and :mod:`rvepfl.experiments.run_pool`'s): die with
    ``parent`` (on Linux; exit at once if it is already gone), leave Ctrl-C to it, tune the
    allocator."""
    from rvepfl.fl.workers import _die_with_parent
    from rvepfl.perf import tune_allocator

    _die_with_parent()
    if os.getppid() != parent:  # the parent died before this worker asked to die with it
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    tune_allocator()


def kill_workers(executor: ProcessPoolExecutor) -> None:
    """Kill ``executor``'s live processes without waiting for their jobs (they resume or restart
    on the next invocation)."""
    for process in list(getattr(executor, "_processes", {}).values()):
        if process.is_alive():
            process.kill()


def _initialise(parent: int, lines: Any) -> None:
    global _lines
    _lines = lines
    start_worker(parent)


def _attack(run_dir: str, settings: AttackSettings, dest: str, cache: str, threads: int | None,
            prefix: str, live: bool) -> dict[str, Any]:
    """One job in a worker: the attack's summary. Its lines (and, if ``live``, its in-progress
    lines), ``prefix`` first, go to the pool's queue as they come; a put writes to the pipe
    before it returns, so they are all there before the summary."""
    from rvepfl.attacks.runner import run_attack
    from rvepfl.attacks.threat import Target
    from rvepfl.perf import attack_threads

    if run_dir not in _targets:  # the jobs of one run share its data and models
        _targets.clear()
        _targets[run_dir] = Target(run_dir)
    with attack_threads(threads):
        return run_attack(_targets[run_dir], settings, Path(dest),
                          lambda line: _lines.put(("line", f"{prefix}: {line}")),
                          evaluator_cache=Path(cache),
                          status=(lambda line: _lines.put(("status", f"{prefix}: {line}"))) if live else None)


class AttackPool:
    """``workers`` attack processes; use as a context manager (the processes stop at its end, and
    are killed if it ends with an exception, Ctrl-C included)."""

    def __init__(self, workers: int) -> None:
        if workers < 2:
            raise ValueError(f"Expected at least 2 attack workers, got {workers}")
        self.workers = workers
        context = multiprocessing.get_context("spawn")
        self._lines = context.SimpleQueue()
        self._executor = ProcessPoolExecutor(max_workers=workers, mp_context=context,
                                             initializer=_initialise, initargs=(os.getpid(), self._lines))

    def submit(self, run_dir: Path, settings: AttackSettings, dest: Path, cache: Path,
               threads: int | None, prefix: str, *, live: bool = False) -> Future:
        """Queue one job; its future gives the attack's summary. Its lines start with ``prefix``;
        ``live``: it sends in-progress lines too."""
        return self._executor.submit(_attack, str(run_dir), settings, str(dest), str(cache), threads, prefix, live)

    def result(self, future: Future, what: str, say: Log, status: Log | None = None) -> dict[str, Any]:
        """The job's summary, once it ends. Meanwhile the lines of every job (this one's and those
        running beside it) go to ``say`` and their in-progress lines to ``status``, as they come.
        A job's own error is raised as it is, a dead worker as :class:`AttackWorkerDied` naming
        the job."""
        while True:
            ended = future.done()  # read first: an ended job's lines are all in the queue by now
            while not self._lines.empty():
                kind, text = self._lines.get()
                if kind == "line":
                    say(text)
                elif status is not None:
                    status(text)
            if ended:
                break
            wait([future], timeout=0.2)
        try:
            return future.result()
        except BrokenProcessPool:
            raise AttackWorkerDied(f"{what}: the attack worker process died (out of memory or killed); run the "
                                   "same command again to resume, or set `audit.workers = 1`") from None

    def close(self, *, kill: bool = False) -> None:
        if kill:  # do not wait for running jobs: they resume or restart on the next invocation
            kill_workers(self._executor)
        self._executor.shutdown(wait=True, cancel_futures=True)
        self._lines.close()

    def __enter__(self) -> AttackPool:
        return self

    def __exit__(self, exc_type: Any, *_: Any) -> None:
        self.close(kill=exc_type is not None)


def attack_pool(workers: int) -> AbstractContextManager[AttackPool | None]:
    """An :class:`AttackPool` of ``workers`` processes, or None (jobs run in-process) for 1."""
    return AttackPool(workers) if workers > 1 else nullcontext()
