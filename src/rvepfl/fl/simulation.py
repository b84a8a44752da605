"""The in-process engine: every client of a federation trained in turn in this process.

One round, as published (DESIGN.md section 1): each participating client takes the latest
global shared state into its personal model (its private state stays), is evaluated on its test
split before training ("general test"), trains, is evaluated on its train and test splits, and
uploads; the server aggregates the uploads into the new global state, one upload at a time as
each client finishes (so memory does not grow with the clients of a round). After every round the
CSVs, the global checkpoint and the progress marker are written atomically, in that order, so a
run stopped at any point resumes from its last complete round and gives the same numbers.

Clients that fail (raise, lose their worker process, pass ``faults.client_timeout``) are left out
of their round when ``faults.min_clients`` allows it and recorded in metrics/client_failures.csv;
otherwise the round fails and nothing of it is kept.
"""

from __future__ import annotations

import io
import itertools
import os
import platform
import subprocess
import time
from collections.abc import Iterable, Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

import rvepfl
from rvepfl.config import Config, config_hash, dumps_config
from rvepfl.data import Dataset, Partition, load_dataset, make_partition, subset_dataset, to_tensor
from rvepfl.errors import CheckpointError, ConfigError, RoundFailedError
from rvepfl.fl.store import ClientStore
from rvepfl.fl.workers import ClientPool, ClientTask, TaskFailure, describe_exception
from rvepfl.io import atomic_write_bytes, atomic_write_text, load_tensors, save_tensors, write_json
from rvepfl.methods import ClientData, DataSpec, Method, RoundContext, Upload, get_method
from rvepfl.metrics import classification_metrics
from rvepfl.perf import tune_allocator
from rvepfl.rundir import ClientFailure, MetricsLog, RunDir
from rvepfl.seeding import numpy_rng, seed_torch

__all__ = ["GLOBAL_KIND", "ClientOutcome", "Federation", "Progress", "RoundBook", "evaluate", "prepare", "round_clients",
           "round_clocks", "save_global_state", "start_global_state", "train"]

GLOBAL_KIND = "rvepfl-global-state"
"""The ``format`` metadata of the global-state checkpoints (``checkpoints/round_*/global.safetensors``)."""


class Progress(Protocol):
    """Receives progress events from the engine (the CLI prints them)."""

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


@dataclass
class Federation:
    """Everything a run needs, loaded and validated before anything is written."""

    cfg: Config
    dataset: Dataset
    partition: Partition
    method: Method
    pool_x: torch.Tensor
    pool_y: torch.Tensor
    device: torch.device

    def client_data(self, client: int) -> ClientData:
        split = self.partition.clients[client]
        train = torch.from_numpy(split.train).to(self.device)
        test = torch.from_numpy(split.test).to(self.device)
        return ClientData(self.pool_x[train], self.pool_y[train], self.pool_x[test], self.pool_y[test])


def resolve_device(name: str) -> torch.device:
    """The torch device for ``cpu``, ``cuda`` or ``auto``; no silent fallback from ``cuda``."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError('Expected a CUDA device for `device = "cuda"`, but torch sees none: use "cpu" or "auto"')
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def prepare(cfg: Config) -> Federation:
    """Load the data, partition it and build the method; raises user errors, writes nothing."""
    d = cfg.data
    dataset = load_dataset(d.dataset, d.data_dir or None, download=d.download)
    if d.subset:
        dataset = subset_dataset(dataset, d.subset, numpy_rng(cfg.seed, "partition", 1))
    partition = make_partition(
        dataset.train_y,
        dataset.test_y,
        num_clients=d.num_clients,
        scheme=d.partition,
        split=d.split,
        test_fraction=d.test_fraction,
        rng=numpy_rng(cfg.seed, "partition"),
        shards_per_client=d.shards_per_client,
        alpha=d.dirichlet_alpha,
        num_classes=dataset.num_classes,
    )
    device = resolve_device(cfg.device)
    pool_x = to_tensor(np.concatenate([dataset.train_x, dataset.test_x]), dataset.name).to(device)
    pool_y = torch.from_numpy(np.concatenate([dataset.train_y, dataset.test_y])).long().to(device)
    spec = DataSpec(dataset.channels, dataset.image_size, dataset.num_classes,
                    tuple(len(c.train) for c in partition.clients))
    method = get_method(cfg.method)(cfg, spec)
    return Federation(cfg, dataset, partition, method, pool_x, pool_y, device)


@torch.inference_mode()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int,
             batch_size: int = 1024) -> dict[str, float]:
    """Mean cross-entropy, accuracy and macro precision/recall/F1 of ``model`` on (x, y)."""
    model.eval()
    total_loss = 0.0
    preds = []
    for start in range(0, len(y), batch_size):
        logits = model(x[start : start + batch_size])
        total_loss += F.cross_entropy(logits, y[start : start + batch_size], reduction="sum").item()
        preds.append(logits.argmax(1))
    metrics = classification_metrics(torch.cat(preds), y, num_classes)
    return {"loss": total_loss / max(1, len(y)), **metrics}


def _versions() -> dict[str, str]:
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


def _partition_summary(fed: Federation) -> dict[str, Any]:
    labels = fed.pool_y.cpu().numpy()
    counts = fed.partition.label_counts(labels, fed.dataset.num_classes)
    return {
        "dataset": fed.dataset.name,
        "source": fed.dataset.source,
        "pool": "train images followed by test images",
        "num_train_images": int(len(fed.dataset.train_y)),
        "num_test_images": int(len(fed.dataset.test_y)),
        "num_unused": fed.partition.num_unused,
        "clients": [
            {"client": i, "train": len(c.train), "test": len(c.test), "label_counts": counts[i]}
            for i, c in enumerate(fed.partition.clients)
        ],
    }


def initialise(fed: Federation, run: RunDir) -> None:
    """Create a new run directory's config, partition and empty progress marker."""
    write_run_start(run, fed.cfg, _partition_summary(fed), fed.partition)


def write_run_start(run: RunDir, cfg: Config, partition_summary: dict[str, Any], partition: Partition) -> None:
    """Write a new run directory's config.toml, partition.json, partition.npz and progress marker
    (round 0); shared by the in-process engine and the Flower server."""
    run.path.mkdir(parents=True, exist_ok=True)
    atomic_write_text(run.config, dumps_config(cfg))
    write_json(run.path / "partition.json", partition_summary)
    buf = io.BytesIO()
    np.savez_compressed(buf, **partition.to_arrays())
    atomic_write_bytes(run.path / "partition.npz", buf.getvalue())
    run.write_progress(0, config_hash(cfg))


def check_partition(fed: Federation, run: RunDir) -> None:
    """Refuse to resume if the data or partition differ from the run's saved partition."""
    path = run.path / "partition.npz"
    try:
        with np.load(path, allow_pickle=False) as saved:
            same = all(np.array_equal(saved[k], v) for k, v in fed.partition.to_arrays().items())
    except (OSError, ValueError, KeyError) as exc:
        raise CheckpointError(f"Cannot read {path}: {exc}") from None
    if not same:
        raise CheckpointError(
            f"The data or partition differ from those saved in {path}: resume with the same data set and data directory"
        )


@dataclass
class ClientOutcome:
    """What one client's round gives the server: its upload, its metrics (``general``, ``train``,
    ``test``), its local steps and its seconds of training and evaluation."""

    upload: Upload
    metrics: dict[str, dict[str, float]]
    steps: int
    train_seconds: float
    eval_seconds: float


def _client_round(fed: Federation, model: nn.Module, ctx: RoundContext, clock: int,
                  received: dict[str, torch.Tensor]) -> ClientOutcome:
    """One client's round on ``model`` (already holding its private state and the global state):
    general test, local training, evaluation on its train and test splits, upload."""
    assert ctx.client is not None
    t, method, num_classes = fed.cfg.train, fed.method, fed.dataset.num_classes
    data = fed.client_data(ctx.client)
    seed_torch(ctx.seed, "train", ctx.round, ctx.client, 0)  # dropout and z-sampling
    e0 = time.perf_counter()
    general = evaluate(model, data.test_x, data.test_y, num_classes, t.eval_batch_size)
    e1 = time.perf_counter()
    steps = method.local_train(model, data, ctx, clock) - clock
    e2 = time.perf_counter()
    m_train = evaluate(model, data.train_x, data.train_y, num_classes, t.eval_batch_size)
    m_test = evaluate(model, data.test_x, data.test_y, num_classes, t.eval_batch_size)
    e3 = time.perf_counter()
    return ClientOutcome(
        upload=method.upload(model, ctx, len(data.train_y), received),
        metrics={"general": general, "train": m_train, "test": m_test},
        steps=steps,
        train_seconds=e2 - e1,
        eval_seconds=(e1 - e0) + (e3 - e2),
    )


def initial_model(fed: Federation) -> tuple[nn.Module, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The method's model as every client starts it (built under the run's ``init`` seed), with
    copies of its initial private and shared state on the CPU."""
    seed_torch(fed.cfg.seed, "init")
    model = fed.method.build_model().to(fed.device)
    initial_private = {k: v.detach().cpu().clone() for k, v in fed.method.private_state(model).items()}
    initial_shared = {k: v.detach().cpu() for k, v in fed.method.shared_state(model).items()}
    return model, initial_private, initial_shared


def train_client(fed: Federation, model: nn.Module, store: ClientStore, initial_private: dict[str, torch.Tensor],
                 global_state: dict[str, torch.Tensor], round_: int, client: int, committed: int,
                 clock: int | None) -> ClientOutcome:
    """One client's round on ``model``: its private state after round ``committed`` (or the
    initial one) and the global state loaded, :func:`_client_round` with the decay clock at
    ``clock`` (None: the client's own step count), and its new private state saved to the store
    as round ``round_`` (uncommitted until the engine writes the progress marker)."""
    stored = store.get(client, committed, initial_private)
    private, steps = stored if stored is not None else (initial_private, 0)
    model.load_state_dict({**private, **global_state})
    del private, stored
    ctx = RoundContext(round=round_, client=client, seed=fed.cfg.seed, client_steps=steps)
    outcome = _client_round(fed, model, ctx, steps if clock is None else clock, global_state)
    store.put(client, round_, fed.method.private_state(model), steps + outcome.steps)
    return outcome


def _round_outcomes(fed: Federation, pool: ClientPool | None, model: nn.Module, store: ClientStore,
                    initial_private: dict[str, torch.Tensor], global_state: dict[str, torch.Tensor], round_: int,
                    clients: list[int], committed: int,
                    starts: list[int]) -> Iterator[tuple[int, ClientOutcome | TaskFailure, float]]:
    """Train ``clients`` for round ``round_``; yield (client, outcome or failure, seconds) in client
    order. ``starts`` holds each client's decay clock when the clock counts every client's steps.

    Without a pool, each client trains in this process on ``model`` in turn; a client that
    raises becomes a failure of kind ``error``. With one, all are queued at once and the pool
    also reports workers that died or ran past ``faults.client_timeout``.
    """
    per_federation = fed.cfg.train.lr_decay_clock == "federation"
    if pool is None:
        for client, start in zip(clients, starts):
            started = time.perf_counter()
            try:
                outcome = train_client(fed, model, store, initial_private, global_state, round_, client, committed,
                                       start if per_federation else None)
            except Exception as exc:  # noqa: BLE001 - a client fault: the round decides what it means
                seconds = time.perf_counter() - started
                yield client, TaskFailure("error", describe_exception(exc), seconds, exc), seconds
                continue
            yield client, outcome, time.perf_counter() - started
        return
    tasks = [ClientTask(round_, c, committed, start if per_federation else None, global_state)
             for c, start in zip(clients, starts)]
    arrived: dict[int, tuple[ClientOutcome | TaskFailure, float]] = {}
    next_index = 0
    for index, result, seconds in pool.run(tasks, fed.cfg.faults.client_timeout):
        arrived[index] = (result, seconds)
        while next_index in arrived:  # client order, so the aggregation's sum is always the same
            result, seconds = arrived.pop(next_index)
            yield clients[next_index], result, seconds
            next_index += 1


def _flushing(outcomes: Iterable[tuple[int, ClientOutcome | TaskFailure, float]], store: ClientStore, round_: int,
              flusher: ThreadPoolExecutor, flushes: list[Future[None]]
              ) -> Iterator[tuple[int, ClientOutcome | TaskFailure, float]]:
    """Pass ``outcomes`` on, handing each finished client's new private state to ``flusher`` to be
    flushed to disk (appended to ``flushes``) while the other clients train."""
    for client, result, seconds in outcomes:
        if not isinstance(result, TaskFailure):
            flushes.append(flusher.submit(store.flush, client, round_))
        yield client, result, seconds


def round_clients(cfg: Config, round_: int) -> list[int]:
    """The clients that take part in round ``round_``: all of them, or a draw of
    ``clients_per_round`` from the round's ``sampling`` stream, in client order."""
    n, k = cfg.data.num_clients, cfg.clients_per_round
    if k == n:
        return list(range(n))
    return sorted(numpy_rng(cfg.seed, "sampling", round_).choice(n, k, replace=False).tolist())


def round_clocks(fed: Federation, clients: list[int], federation_steps: int) -> tuple[list[int], list[int]]:
    """(planned local steps of each client, decay clock at each client's start plus the clock
    after the round). Each client's clock counts the planned steps of the clients before it,
    whether they finish or not, so one client's failure changes no other client's training."""
    planned = [fed.method.planned_steps(len(fed.partition.clients[c].train)) for c in clients]
    return planned, list(itertools.accumulate(planned, initial=federation_steps))


def save_global_state(run: RunDir, round_: int, state: dict[str, torch.Tensor], chash: str) -> None:
    """The global shared state after round ``round_`` (0: the initial one), as a checkpoint."""
    save_tensors(run.global_checkpoint(round_), state, {"format": GLOBAL_KIND, "round": str(round_), "config_hash": chash})


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

    def __init__(self, fed: Federation, round_: int, clients: list[int], progress: Progress, resume: str) -> None:
        self.fed, self.round, self.clients, self.progress, self.resume = fed, round_, clients, progress, resume
        faults = fed.cfg.faults
        self.required = faults.min_clients or len(clients)
        self.results: dict[str, list[tuple[int, dict[str, float]]]] = {"train": [], "test": [], "general": []}
        self.failures: list[ClientFailure] = []
        self.finished = 0
        self.train_s = self.eval_s = 0.0

    def uploads(self, outcomes: Iterable[tuple[int, ClientOutcome | TaskFailure, float]], planned: list[int],
                store: ClientStore | None) -> Iterator[Upload]:
        """The uploads of the clients that finish, one at a time (the method aggregates them as
        they come), from (client, outcome or failure, seconds) in client order; failures are
        recorded (and their private state of this round dropped from ``store``), and the round
        stops as soon as it cannot reach ``faults.min_clients``."""
        count = len(self.clients)
        for i, (client, result, seconds) in enumerate(outcomes):
            if isinstance(result, TaskFailure):
                if store is not None:
                    store.discard(client, self.round)
                failure = ClientFailure(client, result.kind, round(seconds, 3), result.message)
                self.failures.append(failure)
                self.progress.client_failed(self.round, i, count, client, failure)
                if count - len(self.failures) < self.required:
                    self._fail(failure, result)
                continue
            if result.steps != planned[i]:
                raise RuntimeError(f"{self.fed.method.name} planned {planned[i]} local steps for client {client} and "
                                   f"took {result.steps}: its planned_steps() is wrong")
            self.finished += 1
            self.train_s += result.train_seconds
            self.eval_s += result.eval_seconds
            for kind, metrics in result.metrics.items():
                self.results[kind].append((client, metrics))
            self.progress.client_done(self.round, i, count, client, result.metrics, seconds)
            yield result.upload

    def _fail(self, last: ClientFailure, result: TaskFailure) -> None:
        if self.fed.cfg.faults.min_clients == 0:
            if result.exception is not None:  # no tolerance configured: the client's own error
                raise result.exception
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
            raise RuntimeError(f"{self.fed.method.name}.aggregate() stopped before the last upload of round "
                               f"{self.round}: it must iterate over all of them")


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
    if workers == 0:
        workers = 1 if device.type != "cpu" else _cores() // max(1, cfg.threads)
        workers = max(1, min(workers, cfg.clients_per_round))
    threads = cfg.threads or max(1, _cores() // workers)
    return workers, threads


def train(fed: Federation, run: RunDir, progress: Progress | None = None) -> dict[str, Any]:
    """Run (or continue) the federation in ``run``; return the summary written to summary.json."""
    progress = progress or _Silent()
    cfg, method = fed.cfg, fed.method
    t = cfg.train
    chash = config_hash(cfg)
    state = run.read_progress()
    if state["config_hash"] != chash:
        raise CheckpointError(f"{run.path} belongs to another configuration (hash {state['config_hash']}, this one {chash})")
    run.remove_temp_files()  # uncommitted writes of a stopped run
    done = int(state["completed_round"])
    elapsed_before = float(state.get("elapsed_seconds", 0.0))
    federation_steps = int(state.get("federation_steps", 0))

    tune_allocator()
    if cfg.threads:
        torch.set_num_threads(cfg.threads)
    model, initial_private, initial_shared = initial_model(fed)
    global_state = start_global_state(run, done, initial_shared, chash)
    store = ClientStore(run.state / "clients", config_hash=chash, deferred_flush=True)
    store.prune(done)
    log = MetricsLog.read(run.metrics, done)
    num_clients = cfg.data.num_clients
    sizes = {"shared": sum(v.numel() for v in global_state.values()),
             "private_per_client": sum(v.numel() for v in initial_private.values())}
    summary: dict[str, Any] = {}
    workers, worker_threads = resolve_workers(cfg, fed.device)
    # A client past its time limit can only be stopped in a process of its own.
    use_pool = (workers > 1 or cfg.faults.client_timeout > 0) and done < t.rounds
    pool = ClientPool(cfg, run.path, workers, worker_threads) if use_pool else None
    flusher = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rvepfl-flush")
    try:
        for r in range(done + 1, t.rounds + 1):
            round_start = time.perf_counter()
            clients = round_clients(cfg, r)
            progress.round_start(r, t.rounds, clients)
            planned, starts = round_clocks(fed, clients, federation_steps)
            this_round = RoundBook(fed, r, clients, progress, f"resume with `rvepfl train --resume {run.path}`")
            flushes: list[Future[None]] = []
            outcomes = _flushing(_round_outcomes(fed, pool, model, store, initial_private, global_state, r, clients,
                                                 done, starts[:-1]), store, r, flusher, flushes)
            global_state = method.aggregate(this_round.uploads(outcomes, planned, store), global_state,
                                            RoundContext(round=r, client=None, seed=cfg.seed, clients=tuple(clients)))
            this_round.check_complete()
            for flushed in flushes:  # every state the round commits is on disk before the commit
                flushed.result()
            federation_steps = starts[-1]
            seconds = time.perf_counter() - round_start
            timing = (seconds, this_round.train_s, this_round.eval_s, this_round.finished)
            means = log.add_round(r, this_round.results, timing, this_round.failures)
            # Commit order: CSVs and checkpoints first, the progress marker last.
            log.write(run.metrics)
            save_global_state(run, r, global_state, chash)
            if r == t.rounds or (t.checkpoint_every and r % t.checkpoint_every == 0):
                store.export(r, range(num_clients), run.round_dir(r) / "clients")
            elapsed_before += seconds
            run.write_progress(r, chash, elapsed_seconds=elapsed_before, federation_steps=federation_steps)
            done = r
            store.prune(done)
            summary = _summary(fed, log, elapsed_before, sizes, status="complete" if r == t.rounds else "running")
            write_json(run.summary, summary)
            progress.round_done(r, means, seconds)
    finally:
        flusher.shutdown(wait=True, cancel_futures=True)
        if pool is not None:
            pool.close()
    if not summary:
        summary = _summary(fed, log, elapsed_before, sizes, status="complete")
        write_json(run.summary, summary)
    return summary


def _summary(fed: Federation, log: MetricsLog, elapsed: float, sizes: dict[str, int], *,
             status: str) -> dict[str, Any]:
    cfg = fed.cfg
    workers, threads = resolve_workers(cfg, fed.device)

    def last(kind: str) -> dict[str, float]:
        rows = log.epoch_rows(kind)
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
        "config_hash": config_hash(cfg),
        "rounds_completed": len(timing),
        "final": {"test": last("test"), "train": last("train"), "general": last("general")},
        "accuracy_per_round": [row[2] for row in log.epoch_rows("test")],
        "parameters": sizes,
        "seconds": {"total": elapsed, "mean_round": float(np.mean([r[1] for r in timing])) if timing else 0.0},
        "device": str(fed.device),
        "threads": torch.get_num_threads() if workers == 1 else threads,
        "workers": workers,
        "allocator_tuned": tune_allocator(),
        "method_details": fed.method.summary(),
        "versions": _versions(),
    }
