"""Client worker processes: a round's clients trained side by side, and stopped when they fail.

Clients of one round are independent given the global state they start from, so the engine
can hand them to worker processes. Each worker builds the run's federation once (the same data,
partition, method and initial model as the engine's, from the same config), then for every task
loads the client's private state from the disk-backed store, runs the client's round exactly as
the engine's own process would (:func:`rvepfl.fl.client.train_client`), saves the new
private state to the store and sends back only the upload and the metrics. Every random draw of
a client's round is seeded by (seed, round, client), so which process runs it does not matter;
only floating-point rounding may differ when the thread count does.

On a CPU this uses the cores better than one process with several intra-op threads (BENCHMARKS.md
has the measured rates).

The pool gives each worker one client at a time, so it knows which client a worker holds. That
is what makes client faults survivable (``[faults]`` in the config): a client that raises is
reported with its error; a worker that dies (out of memory, killed) is reported as the client it
held and replaced by a fresh one; a client past ``faults.client_timeout`` has its worker killed
and replaced. The engine decides whether the round can do without it.

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
import traceback
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass
from multiprocessing.connection import Connection, wait
from pathlib import Path
from typing import Any

import torch

from rvepfl.config import Config
from rvepfl.errors import RvepflError
from rvepfl.fl.client import ClientFailure, describe_exception

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


def _initialise(cfg: Config, run_path: str, threads: int, chash: str) -> None:
    from rvepfl.fl.client import initial_model, prepare
    from rvepfl.fl.store import ClientStore
    from rvepfl.perf import tune_allocator
    from rvepfl.rundir import RunDir

    tune_allocator()
    torch.set_num_threads(threads)
    fed = prepare(cfg)
    model, initial_private, _ = initial_model(fed.method, cfg.seed, fed.device)
    # The engine flushes each saved state to disk itself while this worker trains the next client.
    store = ClientStore(RunDir(run_path).state / "clients", config_hash=chash, deferred_flush=True)
    _worker.update(fed=fed, model=model, initial_private=initial_private, store=store)


def _send_error(conn: Connection, kind: str, exc: BaseException, seconds: float) -> None:
    """Send ``exc`` back; an exception that cannot be pickled travels as its description only."""
    exc.add_note(f"Raised in a client worker process:\n{''.join(traceback.format_exception(exc))}")
    try:
        conn.send((kind, describe_exception(exc), seconds, exc))
    except Exception:  # noqa: BLE001 - an unpicklable exception
        conn.send((kind, describe_exception(exc), seconds, None))


def _main(conn: Connection, cfg: Config, run_path: str, threads: int, chash: str, parent: int) -> None:
    """A worker: build the federation, say ready, then run one task at a time until told to stop."""
    _die_with_parent()
    if os.getppid() != parent:  # the engine died before this worker asked to die with it
        os._exit(1)
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the engine's to handle
    try:
        _initialise(cfg, run_path, threads, chash)
    except Exception as exc:  # noqa: BLE001 - reported to the engine, which stops the run
        _send_error(conn, "init-error", exc, 0.0)
        return
    conn.send(("ready",))
    from rvepfl.fl import client as client_side

    w = _worker
    while True:
        try:
            task = conn.recv()
        except EOFError:
            return
        if task is None:
            return
        started = time.perf_counter()
        try:
            outcome = client_side.train_client(w["fed"], w["model"], w["store"], w["initial_private"],
                                               task.global_state, task.round, task.client, task.committed, task.clock)
        except Exception as exc:  # noqa: BLE001 - a client fault: the engine decides what it means
            _send_error(conn, "error", exc, time.perf_counter() - started)
            continue
        conn.send(("ok", outcome, time.perf_counter() - started))


class _Worker:
    """One worker process, its end of the pipe, and the task it holds."""

    def __init__(self, context: Any, cfg: Config, run_path: Path, threads: int, chash: str) -> None:
        self.conn, child = context.Pipe()
        self.process = context.Process(target=_main, args=(child, cfg, str(run_path), threads, chash, os.getpid()),
                                       daemon=True, name="rvepfl-client-worker")
        self.process.start()
        child.close()
        self.ready = False
        self.task: tuple[int, ClientTask] | None = None
        self.started = 0.0

    def kill(self) -> None:
        if self.process.is_alive():
            self.process.kill()
        self.process.join()
        self.conn.close()


class ClientPool:
    """``workers`` processes that train clients for the run in ``run_path``.

    Parameters
    ----------
    cfg
        The run's config (each worker rebuilds the federation from it).
    run_path
        The run directory (the workers read and write its client store).
    workers
        Number of processes (>= 1).
    threads
        Torch intra-op threads of each worker (>= 1).
    chash
        The run's config hash (the client store records it).
    """

    def __init__(self, cfg: Config, run_path: Path, workers: int, threads: int, chash: str) -> None:
        self._spawn = lambda: _Worker(multiprocessing.get_context("spawn"), cfg, run_path, threads, chash)
        self._workers = [self._spawn() for _ in range(workers)]

    def run(self, tasks: list[ClientTask], timeout: float = 0.0) -> Iterator[tuple[int, Any, float]]:
        """Run ``tasks``; yield (task index, outcome or :class:`~rvepfl.fl.client.ClientFailure`,
        seconds) as each ends.

        ``timeout`` (seconds, 0: none) bounds each task from the moment a worker takes it; a
        worker past it is killed. A dead or killed worker is replaced before it takes the next
        task. A worker that cannot start (its federation fails to build) raises its error.
        """
        self._workers = [w if w.process.is_alive() else self._spawn()
                         for w in self._workers]
        try:
            yield from self._run(deque(enumerate(tasks)), timeout)
        finally:  # stopped early (the round failed): no worker may go on with a task of it
            for w in self._workers:
                if w.task is not None:
                    w.kill()
                    w.task = None

    def _run(self, pending: deque[tuple[int, ClientTask]], timeout: float) -> Iterator[tuple[int, Any, float]]:
        busy = 0
        while pending or busy:
            for w in self._workers:
                if w.ready and w.task is None and pending:
                    w.task, w.started = pending.popleft(), time.monotonic()
                    w.conn.send(w.task[1])
                    busy += 1
            deadlines = [w.started + timeout - time.monotonic() for w in self._workers if w.task and timeout]
            ready = wait([w.conn for w in self._workers] + [w.process.sentinel for w in self._workers],
                         timeout=max(0.0, min(deadlines)) if deadlines else None)
            for i, w in enumerate(self._workers):
                message = None
                if w.conn in ready or w.process.sentinel in ready:
                    try:
                        message = w.conn.recv() if w.conn.poll() else None
                    except (EOFError, OSError):
                        message = None
                held = w.task
                if message is not None and message[0] == "ready":
                    w.ready = True
                elif message is not None and message[0] == "init-error":
                    raise message[3] if message[3] is not None else RvepflError(
                        f"A client worker could not start: {message[1]}")
                elif message is not None and held is not None:
                    w.task, busy = None, busy - 1
                    if message[0] == "ok":
                        yield held[0], message[1], message[2]
                    else:
                        yield held[0], ClientFailure(held[1].client, "error", message[2], message[1],
                                                     message[3]), message[2]
                elif w.process.sentinel in ready and not w.process.is_alive():
                    code = w.process.exitcode
                    seconds = time.monotonic() - w.started
                    w.kill()
                    self._workers[i] = self._spawn()
                    if held is not None:
                        busy -= 1
                        how = f"killed by signal {-code}" if code is not None and code < 0 else f"exit code {code}"
                        yield held[0], ClientFailure(held[1].client, "died", seconds,
                                                     f"its worker process died ({how}; out of memory?)"), seconds
                    elif not w.ready:
                        raise RvepflError(f"A client worker process died while starting ({code}): "
                                          "see the messages above")
                elif held is not None and timeout and time.monotonic() - w.started >= timeout:
                    seconds = time.monotonic() - w.started
                    w.kill()
                    self._workers[i] = self._spawn()
                    busy -= 1
                    yield held[0], ClientFailure(held[1].client, "timeout", seconds, f"stopped after {seconds:.1f} s, "
                                                 f"past faults.client_timeout = {timeout:g} s"), seconds

    def close(self) -> None:
        """Stop the workers: idle ones are asked to exit, busy ones are killed."""
        for w in self._workers:
            if w.task is None and w.process.is_alive():
                try:
                    w.conn.send(None)
                except OSError:
                    pass
        for w in self._workers:
            w.process.join(timeout=5 if w.task is None else 0)
            w.kill()
