"""The server's round loop, written once for every engine.

:func:`run_rounds` runs (or continues) a federation in a run directory: it checks that the
directory holds a run of this config (resume), then for every remaining round samples the
clients, plans their learning-rate clocks, hands the round to a :class:`Dispatcher`, aggregates
the uploads one at a time as they arrive (the method's own aggregation, in client order), books
each client's metrics and failures (:class:`RoundBook`, against ``faults.min_clients``), and
commits the round: CSVs and checkpoints first, the progress marker last, then the summary. A run
stopped at any point resumes from its last complete round and gives the same numbers.

The engines differ only in how they reach a client, their dispatcher:

- :class:`rvepfl.fl.simulation.InProcess`: every client in the engine's process, or in worker
  processes side by side;
- :class:`rvepfl.flower.server.FlowerDispatcher`: each client on its Flower SuperNode.

The client's side of a round is :mod:`rvepfl.fl.client`, which imports nothing of this module.
"""

from __future__ import annotations

import io
import itertools
import platform
import subprocess
import time
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch

import rvepfl
from rvepfl.config import Config, dumps_config, published_warnings
from rvepfl.data import Partition
from rvepfl.errors import CheckpointError, RoundFailedError
from rvepfl.fl.client import ClientFailure, ClientOutcome, initial_model
from rvepfl.fl.secure_aggregation import describe as describe_secure_aggregation
from rvepfl.fl.validation import check_outcome
from rvepfl.io import atomic_write_bytes, atomic_write_text, load_tensors, save_tensors, write_json
from rvepfl.methods import Method, RoundContext, Upload
from rvepfl.methods.base import SecureMean
from rvepfl.perf import tune_allocator
from rvepfl.rundir import MetricsLog, RunDir
from rvepfl.seeding import numpy_rng

__all__ = ["GLOBAL_KIND", "Dispatcher", "Progress", "RoundBook", "ServerSetup", "check_partition", "round_clients",
           "round_clocks", "run_rounds", "save_global_state", "start_global_state", "write_run_start"]

GLOBAL_KIND = "rvepfl-global-state"
"""The ``format`` metadata of the global-state checkpoints (``checkpoints/round_*/global.safetensors``)."""

Result = tuple[int, ClientOutcome | ClientFailure, float]
"""What a dispatcher yields for each client of a round: (client, outcome or failure, seconds)."""


class Progress(Protocol):
    """Receives progress events from the server loop (the CLI prints them)."""

    def round_start(self, round_: int, rounds: int, clients: list[int]) -> None: ...
    def client_done(self, round_: int, index: int, count: int, client: int,
                    metrics: dict[str, dict[str, float]], seconds: float) -> None: ...
    def client_failed(self, round_: int, index: int, count: int, client: int, failure: ClientFailure) -> None: ...
    def round_done(self, round_: int, means: dict[str, dict[str, float]], seconds: float) -> None: ...


class _Silent:
    def round_start(self, *args: Any) -> None: ...
    def client_done(self, *args: Any) -> None: ...
    def client_failed(self, *args: Any) -> None: ...
    def round_done(self, *args: Any) -> None: ...


@dataclass(frozen=True)
class ServerSetup:
    """What the server knows of a federation: the config, the method (its aggregation) and the
    partition (indices only; the server never reads images)."""

    cfg: Config
    method: Method
    partition: Partition


class Dispatcher(Protocol):
    """How the server loop reaches the clients of a round; one per engine."""

    def start(self, done: int, log: MetricsLog) -> None:
        """Before the first round: the run's last complete round and its metrics so far."""

    def run_round(self, round_: int, clients: list[int], clocks: list[int | None], committed: int,
                  global_state: dict[str, torch.Tensor], export: bool) -> Iterator[Result]:
        """Train ``clients`` in ``round_`` from ``global_state``; yield one result per client,
        in client order, as soon as it is known. ``clocks`` holds each client's learning-rate
        clock (None: its own steps), ``committed`` the last committed round, ``export`` whether
        the round's private states are kept as checkpoints."""

    def reject(self, round_: int, client: int) -> None:
        """The server refused ``client``'s outcome of ``round_`` (once the round's results are all
        in): whatever the dispatcher keeps of that client's round must not count."""

    def commit(self, round_: int, export: bool, run: RunDir) -> None:
        """Write what the round adds to the run directory, before its progress marker (after
        making everything the round keeps durable)."""

    def committed(self, round_: int, clients: list[int], failures: list[ClientFailure]) -> None:
        """After the progress marker: the round counts."""

    def details(self) -> dict[str, Any]:
        """The summary's engine fields (``engine``, ``device``, ``workers``, ``threads``...)."""

    def secure_mean(self, method: Method) -> SecureMean:
        """Under ``[secure_aggregation]``: how the server learns the mean of a round's uploads
        (:mod:`rvepfl.fl.secure_aggregation`); when it is ``masked``, the uploads the dispatcher
        yields carry no state (the server saw only the protocol's sum)."""


def write_run_start(run: RunDir, cfg: Config, partition_summary: dict[str, Any], partition: Partition,
                    chash: str) -> None:
    """Write a new run directory's config.toml, partition.json, partition.npz and progress marker
    (round 0, with ``cfg``'s config hash ``chash``)."""
    run.path.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run.config, dumps_config(cfg))
    write_json(run.path / "partition.json", partition_summary)
    buf = io.BytesIO()
    np.savez_compressed(buf, **partition.to_arrays())  # type: ignore[arg-type]  # numpy's stub: arrays by name
    atomic_write_bytes(run.path / "partition.npz", buf.getvalue())
    run.write_progress(0, chash)


def check_partition(partition: Partition, run: RunDir) -> None:
    """Refuse to resume if ``partition`` differs from the run's saved partition."""
    path = run.path / "partition.npz"
    try:
        with np.load(path, allow_pickle=False) as saved:
            same = all(np.array_equal(saved[k], v) for k, v in partition.to_arrays().items())
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"Cannot read {path}: {exc}") from None
    if not same:
        raise CheckpointError(
            f"The data or partition differ from those saved in {path}: resume with the same data set and data directory"
        )


def round_clients(cfg: Config, round_: int) -> list[int]:
    """The clients that take part in round ``round_``: all of them, or a draw of
    ``clients_per_round`` from the round's ``sampling`` stream, in client order."""
    n, k = cfg.data.num_clients, cfg.clients_per_round
    if k == n:
        return list(range(n))
    return sorted(numpy_rng(cfg.seed, "sampling", round_).choice(n, k, replace=False).tolist())


def round_clocks(method: Method, partition: Partition, clients: list[int],
                 federation_steps: int) -> tuple[list[int], list[int]]:
    """(planned local steps of each client, decay clock at each client's start plus the clock
    after the round). Each client's clock counts the planned steps of the clients before it,
    whether they finish or not, so one client's failure changes no other client's training."""
    planned = [method.planned_steps(len(partition.clients[c].train)) for c in clients]
    return planned, list(itertools.accumulate(planned, initial=federation_steps))


def save_global_state(run: RunDir, round_: int, state: dict[str, torch.Tensor], chash: str) -> None:
    """The global shared state after round ``round_`` (0: the initial one), as a checkpoint."""
    save_tensors(run.global_checkpoint(round_), state,
                 {"format": GLOBAL_KIND, "round": str(round_), "config_hash": chash})


def start_global_state(run: RunDir, done: int, initial_shared: dict[str, torch.Tensor],
                       chash: str) -> dict[str, torch.Tensor]:
    """The global state a run continues from after round ``done``: the initial one (saved as
    round 0) for a new run, else the checkpoint of round ``done``."""
    if done == 0:
        state = {k: v.clone() for k, v in initial_shared.items()}
        save_global_state(run, 0, state, chash)
        return state
    return load_tensors(run.global_checkpoint(done), expected=initial_shared, kind=GLOBAL_KIND)


class RoundBook:
    """One round's bookkeeping, the same for every engine: the finished clients' metrics and
    timings, and the failures, checked against ``faults.min_clients`` as they come.

    ``resume`` says how to continue the run after the round failed (e.g. "resume with `rvepfl
    train --resume DIR`")."""

    def __init__(self, cfg: Config, method: Method, round_: int, clients: list[int], progress: Progress,
                 resume: str, *, masked: bool = False) -> None:
        self.cfg, self.method, self.round, self.clients = cfg, method, round_, clients
        self.masked = masked
        self.progress, self.resume = progress, resume
        self.required = cfg.faults.min_clients or len(clients)
        self.results: dict[str, list[tuple[int, dict[str, float]]]] = {"train": [], "test": [], "general": []}
        self.failures: list[ClientFailure] = []
        self.finished = 0
        self.train_s = self.eval_s = 0.0

    def uploads(self, results: Iterable[Result], planned: list[int], expected: dict[str, torch.Tensor],
                sizes: Sequence[int | None]) -> Iterator[Upload]:
        """The uploads of the clients that finish, one at a time (the method aggregates them as
        they come), from the dispatcher's results in client order. Each outcome is checked first
        (:func:`rvepfl.fl.validation.check_outcome` against the global state ``expected``, the
        client's training-split size in ``sizes`` and its ``planned`` steps): one that is refused
        becomes a failure of kind ``rejected``. Failures are recorded, and the round stops as soon
        as it cannot reach ``faults.min_clients``."""
        count = len(self.clients)
        for i, (client, result, seconds) in enumerate(results):
            if not isinstance(result, ClientFailure):
                why = check_outcome(result, client=client, expected=None if self.masked else expected,
                                    max_samples=sizes[i], planned_steps=planned[i])
                if why is not None:
                    result = ClientFailure(client, "rejected", seconds, f"upload refused: {why}")
            if isinstance(result, ClientFailure):
                self.failures.append(result)
                self.progress.client_failed(self.round, i, count, client, result)
                if count - len(self.failures) < self.required:
                    self._fail(result)
                continue
            self.finished += 1
            self.train_s += result.train_seconds
            self.eval_s += result.eval_seconds
            for kind, metrics in result.metrics.items():
                self.results[kind].append((client, metrics))
            self.progress.client_done(self.round, i, count, client, result.metrics, seconds)
            yield result.upload

    def _fail(self, last: ClientFailure) -> None:
        if self.cfg.faults.min_clients == 0:
            if last.exception is not None:  # no tolerance configured: the client's own error
                raise last.exception
            raise RoundFailedError(
                f"Round {self.round}: client {last.client} failed ({last.kind}: {last.message}); set "
                f"faults.min_clients to let a round go on without failed clients, then {self.resume}")
        failed = "; ".join(f"client {f.client} ({f.kind}: {f.message})" for f in self.failures)
        raise RoundFailedError(
            f"Round {self.round}: {len(self.failures)} of {len(self.clients)} clients failed, so fewer than "
            f"faults.min_clients = {self.required} can finish it: {failed}. The run stays at round "
            f"{self.round - 1}: {self.resume} (faults.min_clients may be lowered)")

    def check_complete(self) -> None:
        """The method's aggregate took every upload (a method must consume all of them)."""
        if self.finished + len(self.failures) != len(self.clients):
            raise RuntimeError(f"{self.method.name}.aggregate() stopped before the last upload of round "
                               f"{self.round}: it must iterate over all of them")


def versions() -> dict[str, str]:
    """The versions a run records: rvepfl (and its git commit), Python, torch, numpy, platform."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(rvepfl.__file__).parent, capture_output=True,
            text=True, timeout=5, check=False,
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "rvepfl": rvepfl.__version__,
        "git_commit": commit or "unknown",
        "python": platform.python_version(),
        "torch": torch.__version__,
        "numpy": np.__version__,
        "platform": platform.platform(),
    }


def _summary(setup: ServerSetup, chash: str, dispatcher: Dispatcher, log: MetricsLog, elapsed: float,
             sizes: dict[str, int], *, status: str) -> dict[str, Any]:
    cfg = setup.cfg

    def last(kind: str) -> dict[str, float]:
        rows = log.round_means(kind)
        if not rows:
            return {}
        row = rows[-1]
        return {"round": row[0], "loss": row[1], "acc": row[2], "precision": row[3], "recall": row[4], "f1": row[5]}

    timing = log.rows["round_timing.csv"]
    return {
        "status": status,
        "method": cfg.method,
        "dataset": cfg.data.dataset,
        "seed": cfg.seed,
        "config_hash": chash,
        **({"published_defects": warnings} if (warnings := published_warnings(cfg)) else {}),
        "rounds_completed": len(timing),
        "final": {"test": last("test"), "train": last("train"), "general": last("general")},
        "accuracy_per_round": [row[2] for row in log.round_means("test")],
        "parameters": sizes,
        "seconds": {"total": elapsed, "mean_round": float(np.mean([r[1] for r in timing])) if timing else 0.0},
        **dispatcher.details(),
        "client_failures": len(log.rows["client_failures.csv"]),
        "allocator_tuned": tune_allocator(),
        "method_details": setup.method.summary(),
        **({"secure_aggregation": describe_secure_aggregation(cfg, setup.method, setup.method.secure_mean.masked)}
           if setup.method.secure_mean is not None else {}),
        "versions": versions(),
    }


def run_rounds(run: RunDir, setup: ServerSetup, dispatcher: Dispatcher, progress: Progress | None = None, *,
               chash: str, resume: str) -> dict[str, Any]:
    """Run (or continue) the federation of ``setup`` in ``run`` through ``dispatcher``; return the
    summary written to summary.json.

    Parameters
    ----------
    run
        A run directory started by :func:`write_run_start` (possibly with rounds done).
    setup
        The config, method and partition.
    dispatcher
        How the engine reaches each round's clients.
    progress
        Receives the progress events (default: none).
    chash
        The config's hash (:attr:`rvepfl.fl.lifecycle.RunStart.config_hash`).
    resume
        How to continue the run after a round failed, for the error message.
    """
    progress = progress or _Silent()
    cfg, method, t = setup.cfg, setup.method, setup.cfg.train
    state = run.check_config(cfg, chash)
    done = int(state["completed_round"])
    elapsed = float(state.get("elapsed_seconds", 0.0))
    federation_steps = int(state.get("federation_steps", 0))

    _, initial_private, initial_shared = initial_model(method, cfg.seed)
    global_state = start_global_state(run, done, initial_shared, chash)
    sizes = {"shared": sum(v.numel() for v in global_state.values()),
             "private_per_client": sum(v.numel() for v in initial_private.values())}
    del initial_private
    log = MetricsLog.read(run.metrics, done)
    dispatcher.start(done, log)
    secure = dispatcher.secure_mean(method) if cfg.secure_aggregation.enabled else None
    method.secure_mean = secure
    masked = secure is not None and secure.masked
    summary: dict[str, Any] = {}
    per_federation = t.lr_decay_clock == "federation"
    for r in range(done + 1, t.rounds + 1):
        round_start = time.perf_counter()
        clients = round_clients(cfg, r)
        progress.round_start(r, t.rounds, clients)
        planned, starts = round_clocks(method, setup.partition, clients, federation_steps)
        export = r == t.rounds or bool(t.checkpoint_every and r % t.checkpoint_every == 0)
        book = RoundBook(cfg, method, r, clients, progress, resume, masked=masked)
        clocks = [s if per_federation else None for s in starts[:-1]]
        results = dispatcher.run_round(r, clients, clocks, done, global_state, export)
        split_sizes = [len(setup.partition.clients[c].train) for c in clients]
        global_state = method.aggregate(book.uploads(results, planned, global_state, split_sizes), global_state,
                                        RoundContext(round=r, client=None, seed=cfg.seed, clients=tuple(clients)))
        book.check_complete()
        for failure in book.failures:
            if failure.kind == "rejected":
                dispatcher.reject(r, failure.client)
        federation_steps = starts[-1]
        seconds = time.perf_counter() - round_start
        means = log.add_round(r, book.results, (seconds, book.train_s, book.eval_s, book.finished), book.failures)
        # Commit order: CSVs and checkpoints first, the progress marker last.
        log.write(run.metrics)
        save_global_state(run, r, global_state, chash)
        dispatcher.commit(r, export, run)
        elapsed += seconds
        run.write_progress(r, chash, elapsed_seconds=elapsed, federation_steps=federation_steps)
        done = r
        dispatcher.committed(r, clients, book.failures)
        summary = _summary(setup, chash, dispatcher, log, elapsed, sizes,
                           status="complete" if r == t.rounds else "running")
        write_json(run.summary, summary)
        progress.round_done(r, means, seconds)
    if not summary:
        summary = _summary(setup, chash, dispatcher, log, elapsed, sizes, status="complete")
        write_json(run.summary, summary)
    return summary
