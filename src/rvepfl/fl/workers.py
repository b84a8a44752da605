"""Client worker processes: a round's clients trained side by side (``workers`` > 1).

Clients of one round are independent given the global state they start from, so the engine
can hand them to a pool of worker processes. Each worker builds the run's federation once (the
same data, partition, method and initial model as the engine's, from the same config), then
for every task loads the client's private state from the disk-backed store, runs the client's
round exactly as the engine's own process would (:func:`rvepfl.fl.simulation.train_client`),
saves the new private state to the store and sends back only the upload and the metrics. Every
random draw of a client's round is seeded by (seed, round, client), so which process runs it
does not matter; only floating-point rounding may differ when the thread count does.

On a CPU this uses the cores better than one process with several intra-op threads: measured on
the 2-core development machine, two single-threaded processes trained the MNIST model at about
1.25 times the images per second of one process with two threads (see BENCHMARKS.md).

Workers run in fresh interpreters (``spawn``) and, on Linux, are killed with the engine's
process, so a run stopped with ``kill -9`` leaves no worker writing into its store.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import multiprocessing
import os
import signal
import sys
import time
from concurrent.futures import Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from rvepfl.config import Config

__all__ = ["ClientPool", "ClientTask"]


@dataclass(frozen=True)
class ClientTask:
    """One client's round: what a worker needs besides the federation it built at start-up."""

    round: int
    client: int
    committed: int
    """The last committed round: the client's private state is its newest of a round <= this."""
    clock: int | None
    """The learning-rate decay clock at the client's start (None: the client's own steps)."""
    global_state: dict[str, torch.Tensor]


_worker: dict[str, Any] = {}


def _die_with_parent() -> None:
    """Ask Linux to SIGKILL this process when its parent dies (a no-op elsewhere)."""
    if not sys.platform.startswith("linux"):
        return
    path = ctypes.util.find_library("c")
    if not path:
        return
    try:
        libc = ctypes.CDLL(path, use_errno=True)
        libc.prctl(1, signal.SIGKILL, 0, 0, 0)  # PR_SET_PDEATHSIG
    except (OSError, AttributeError):
        pass


def _initialise(cfg: Config, run_path: str, threads: int, parent: int) -> None:
    _die_with_parent()
    if os.getppid() != parent:  # the engine died before this worker asked to die with it
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the engine's to handle
    from rvepfl.config import config_hash
    from rvepfl.fl.simulation import initial_model, prepare
    from rvepfl.fl.store import ClientStore
    from rvepfl.perf import tune_allocator

    tune_allocator()
    torch.set_num_threads(threads)
    fed = prepare(cfg)
    model, initial_private, _ = initial_model(fed)
    store = ClientStore(Path(run_path) / "state" / "clients", config_hash=config_hash(cfg))
    _worker.update(fed=fed, model=model, initial_private=initial_private, store=store)


def _run(task: ClientTask) -> tuple[Any, float]:
    from rvepfl.fl.simulation import train_client

    started = time.perf_counter()
    w = _worker
    outcome = train_client(w["fed"], w["model"], w["store"], w["initial_private"], task.global_state,
                           task.round, task.client, task.committed, task.clock)
    return outcome, time.perf_counter() - started


class ClientPool:
    """``workers`` processes that train clients for the run in ``run_path``.

    Parameters
    ----------
    cfg
        The run's config (each worker rebuilds the federation from it).
    run_path
        The run directory (the workers read and write its client store).
    workers
        Number of processes (>= 2).
    threads
        Torch intra-op threads of each worker (>= 1).
    """

    def __init__(self, cfg: Config, run_path: Path, workers: int, threads: int) -> None:
        self._executor = ProcessPoolExecutor(
            max_workers=workers,
            mp_context=multiprocessing.get_context("spawn"),
            initializer=_initialise,
            initargs=(cfg, str(run_path), threads, os.getpid()),
        )

    def submit(self, task: ClientTask) -> Future[tuple[Any, float]]:
        """Queue one client's round; the future holds (its outcome, seconds in the worker)."""
        return self._executor.submit(_run, task)

    @staticmethod
    def result(future: Future[tuple[Any, float]], client: int) -> tuple[Any, float]:
        """The future's result; a worker that died becomes a one-line RuntimeError."""
        try:
            return future.result()
        except BrokenProcessPool:
            raise RuntimeError(f"A client worker process died while training client {client} "
                               "(out of memory? killed?): resume the run with `rvepfl train --resume`") from None

    def close(self) -> None:
        """Stop the workers (queued tasks are cancelled)."""
        self._executor.shutdown(wait=True, cancel_futures=True)
