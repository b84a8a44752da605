"""The ServerApp: rounds over Flower's Grid, writing the in-process engine's run directory.

The server never reads data. It first asks every SuperNode for its facts (``query``): the
partition id it plays, its split's indices and label counts, the data set's shape and a
fingerprint of the whole partition, which must agree across nodes (each node computed the
partition from the same seed, :func:`rvepfl.data.make_partition`, as the in-process engine
does). From these it builds the method (:class:`~rvepfl.methods.DataSpec` needs only shapes and
training-set sizes) and writes ``config.toml``, ``partition.json`` and ``partition.npz`` exactly as
:func:`rvepfl.fl.simulation.initialise` does.

Each round then follows the in-process engine (:func:`rvepfl.fl.simulation.train`): the same
client sampling, the decay clock of each client planned from the clients before it (as with
worker processes), the method's own :meth:`~rvepfl.methods.Method.aggregate` over the uploads in
client order, and the same commit order (CSVs, global checkpoint, progress marker, summary).
What the server received is recorded in ``flower/received.json``: for every reply, every record
with its keys, and for arrays their dtypes and shapes, so anyone can check that no private entry
(RVE-PFL's encoder) ever arrived.

Fault tolerance follows ``[faults]``: a client fails when its reply is an error (the ClientApp
raised: ``error``), when its node or ClientApp died (Flower's NODE_UNAVAILABLE /
CLIENT_APP_CRASHED replies, or its node left the SuperLink's list of nodes: ``died``), or when no
reply came within ``faults.client_timeout`` seconds of sending (``timeout``). Failed clients are
left out of the round's aggregation and recorded in ``metrics/client_failures.csv``; with fewer
than ``faults.min_clients`` finished (0: all of them) the round fails with a one-line error before
anything of it is committed, and the run continues from the round before when started again. A
failed client's private state stays as it was after its last committed round: each request names
that round, and the node reads (and prunes to) it.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid, ServerApp

from rvepfl.config import Config, config_hash
from rvepfl.data.partition import ClientSplit, Partition
from rvepfl.errors import CheckpointError, ConfigError, RoundFailedError, RvepflError
from rvepfl.fl.simulation import (
    ClientOutcome, Federation, RoundBook, _summary, check_partition, initial_model, round_clients, round_clocks,
    save_global_state, start_global_state, write_run_start,
)
from rvepfl.fl.workers import TaskFailure
from rvepfl.flower.appconfig import split_run_config
from rvepfl.flower.client import state_from_record
from rvepfl.io import write_json
from rvepfl.methods import DataSpec, RoundContext, Upload, get_method
from rvepfl.progress import ProgressPrinter
from rvepfl.rundir import MetricsLog, RunDir

__all__ = ["FlowerServer", "app", "describe_content"]

app = ServerApp()

_ERROR_KINDS = {
    ErrorCode.NODE_UNAVAILABLE: "died",
    ErrorCode.CLIENT_APP_CRASHED: "died",
    ErrorCode.REPLY_MESSAGE_UNAVAILABLE: "died",
    ErrorCode.MESSAGE_UNAVAILABLE: "died",
}


def describe_content(content: RecordDict) -> dict[str, Any]:
    """Every record of a message's content: arrays with dtype and shape, other records' keys."""
    out: dict[str, Any] = {}
    for name, record in content.items():
        if isinstance(record, ArrayRecord):
            out[name] = {"type": "ArrayRecord", "bytes": record.count_bytes(),
                         "arrays": {k: {"dtype": a.dtype, "shape": list(a.shape)} for k, a in record.items()}}
        else:
            out[name] = {"type": type(record).__name__, "keys": sorted(record.keys())}
    return out


def _first_line(text: str | None) -> str:
    """The last non-empty line of an error reason (a traceback's exception line), shortened."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    line = lines[-1] if lines else "no reason given"
    return line if len(line) <= 300 else line[:297] + "..."


class FlowerServer:
    """Runs (or continues) one federation in ``run`` over ``grid``.

    Parameters
    ----------
    grid
        Flower's Grid of the run (any object with ``get_node_ids``, ``push_messages`` and
        ``pull_messages``).
    cfg
        The validated config (from the run config).
    run
        The run directory on this machine.
    wait_nodes
        Seconds to wait for every client's SuperNode to connect and answer.
    log
        Receives progress lines.
    poll
        Seconds between pulls for replies.
    """

    def __init__(self, grid: Grid, cfg: Config, run: RunDir, *, wait_nodes: float,
                 log: Callable[[str], None] = print, poll: float = 0.2) -> None:
        self.grid, self.cfg, self.run, self.log = grid, cfg, run, log
        self.progress = ProgressPrinter(log)
        self.wait_nodes, self.poll = wait_nodes, poll
        self.chash = config_hash(cfg)
        self.nodes: dict[int, int] = {}  # client -> node id
        self.facts: dict[int, dict[str, Any]] = {}  # client -> its node's facts
        self.asked: set[int] = set()  # node ids asked for facts
        self.received: list[dict[str, Any]] = []

    # -- messages ------------------------------------------------------------------------------
    def _request(self, **values: Any) -> ConfigRecord:
        return ConfigRecord({"config-hash": self.chash, **values})

    def _record(self, round_: int, kind: str, client: int | None, node: int, reply: Message) -> None:
        entry: dict[str, Any] = {"round": round_, "type": kind, "client": client, "node": node}
        if reply.has_error():
            entry["error"] = {"code": reply.error.code, "reason": _first_line(reply.error.reason)}
        else:
            entry["records"] = describe_content(reply.content)
        self.received.append(entry)

    def _exchange(self, messages: dict[int, Message], timeout: float, kind: str, round_: int,
                  clients: dict[int, int | None]) -> tuple[dict[int, Message], dict[int, tuple[str, float, str]]]:
        """Push ``messages`` (node -> message) and collect replies until all arrive, a node dies
        or ``timeout`` seconds pass (0: no limit); (replies, failures) by node, a failure being
        (kind, seconds, message)."""
        started = time.monotonic()
        ids = list(self.grid.push_messages(messages.values()))
        pending = dict(zip(ids, messages))  # message id -> node
        replies: dict[int, Message] = {}
        failures: dict[int, tuple[str, float, str]] = {}
        while pending:
            for reply in self.grid.pull_messages(list(pending)):
                node = pending.pop(reply.metadata.reply_to_message_id, None)
                if node is None:
                    continue
                seconds = time.monotonic() - started
                self._record(round_, kind, clients.get(node), node, reply)
                if reply.has_error():
                    failures[node] = (_ERROR_KINDS.get(reply.error.code, "error"), seconds,
                                      _first_line(reply.error.reason))
                else:
                    replies[node] = reply
            if not pending:
                break
            elapsed = time.monotonic() - started
            alive = set(self.grid.get_node_ids())
            for mid, node in list(pending.items()):
                if node not in alive:
                    del pending[mid]
                    failures[node] = ("died", elapsed, f"node {node} left the federation (no heartbeat)")
                elif timeout and elapsed > timeout:
                    del pending[mid]
                    failures[node] = ("timeout", elapsed, f"no reply within faults.client_timeout = {timeout:g} s")
            time.sleep(self.poll)
        return replies, failures

    # -- nodes ---------------------------------------------------------------------------------
    def _ask_new_nodes(self, timeout: float) -> list[str]:
        """Ask nodes not asked before for their facts; map their clients; return error lines."""
        new = [n for n in self.grid.get_node_ids() if n not in self.asked]
        if not new:
            return []
        self.asked.update(new)
        messages = {n: Message(RecordDict({"request": self._request()}), dst_node_id=n, message_type="query",
                               group_id="0") for n in new}
        replies, failures = self._exchange(messages, timeout, "query", 0, {})
        errors = [f"node {n}: {msg}" for n, (_, _, msg) in failures.items()]
        alive = set(self.grid.get_node_ids())
        for node, reply in replies.items():
            facts = dict(reply.content["facts"])
            client = int(facts["partition-id"])
            if facts["config-hash"] != self.chash:
                errors.append(f"node {node}: config hash {facts['config-hash']}, the server's {self.chash}")
                continue
            if self.facts and facts["fingerprint"] != next(iter(self.facts.values()))["fingerprint"]:
                raise ConfigError(f"Node {node} (partition-id {client}) computed another partition than the "
                                  "other nodes: every node needs the same data set and rvepfl version")
            old = self.nodes.get(client)
            if old is not None and old != node and old in alive:
                raise ConfigError(f"Two SuperNodes ({old} and {node}) were started with partition-id={client}")
            self.nodes[client] = node
            self.facts[client] = facts
        return errors

    def discover(self) -> None:
        """Wait (up to ``wait_nodes`` seconds) until every client's node has answered."""
        n = self.cfg.data.num_clients
        deadline = time.monotonic() + self.wait_nodes
        errors: list[str] = []
        self.log(f"waiting for {n} SuperNodes (partition-id 0..{n - 1})")
        while len(self.nodes) < n:
            if time.monotonic() > deadline:
                missing = sorted(set(range(n)) - set(self.nodes))
                hint = f"; node errors: {'; '.join(errors[:3])}" if errors else ""
                raise ConfigError(f"Only {len(self.nodes)} of {n} clients' SuperNodes answered within "
                                  f"server.wait_nodes = {self.wait_nodes:g} s (missing partition-id "
                                  f"{', '.join(map(str, missing[:10]))}){hint}")
            errors += self._ask_new_nodes(max(1.0, deadline - time.monotonic()))
            time.sleep(self.poll)
        self.log(f"{n} SuperNodes: " + ", ".join(f"client {c} on node {self.nodes[c]}" for c in sorted(self.nodes)))

    def _federation(self) -> Federation:
        """The server's federation: config, partition and method, and no data (only the fields
        that :func:`initial_model`, :func:`check_partition` and the summary read)."""
        n = self.cfg.data.num_clients
        facts = [self.facts[c] for c in range(n)]
        partition = Partition(
            clients=tuple(ClientSplit(np.asarray(f["train-indices"], dtype=np.int64),
                                      np.asarray(f["test-indices"], dtype=np.int64)) for f in facts),
            num_unused=int(facts[0]["num-unused"]),
        )
        f0 = facts[0]
        spec = DataSpec(int(f0["channels"]), int(f0["image-size"]), int(f0["num-classes"]),
                        tuple(len(c.train) for c in partition.clients))
        method = get_method(self.cfg.method)(self.cfg, spec)
        return Federation(self.cfg, None, partition, method, None, None, torch.device("cpu"))  # type: ignore[arg-type]

    def _partition_summary(self) -> dict[str, Any]:
        f0 = self.facts[0]
        return {
            "dataset": f0["dataset"],
            "source": f0["source"],
            "pool": "train images followed by test images",
            "num_train_images": int(f0["num-train-images"]),
            "num_test_images": int(f0["num-test-images"]),
            "num_unused": int(f0["num-unused"]),
            "clients": [
                {"client": c, "train": len(self.facts[c]["train-indices"]), "test": len(self.facts[c]["test-indices"]),
                 "label_counts": {"train": list(self.facts[c]["train-label-counts"]),
                                  "test": list(self.facts[c]["test-label-counts"])}}
                for c in range(self.cfg.data.num_clients)
            ],
        }

    # -- the run -------------------------------------------------------------------------------
    def _start(self, fed: Federation) -> str:
        """Initialise a new run directory or check a stopped one; return the run key."""
        run = self.run
        key_file = run.path / "flower" / "run.json"
        if run.progress.exists():
            state = run.read_progress()
            if state["config_hash"] != self.chash:
                raise CheckpointError(f"{run.path} belongs to another configuration (hash {state['config_hash']}, "
                                      f"this one {self.chash})")
            check_partition(fed, run)
            try:
                run_key = str(json.loads(key_file.read_text(encoding="utf-8"))["run_key"])
            except (OSError, ValueError, KeyError) as exc:
                raise CheckpointError(f"Cannot read {key_file}: {exc}") from None
            received = run.path / "flower" / "received.json"
            if received.exists():
                done = int(state["completed_round"])
                self.received = [e for e in json.loads(received.read_text(encoding="utf-8")) if e["round"] <= done]
            self.log(f"continuing {run.path} after round {state['completed_round']}/{self.cfg.train.rounds}")
            return run_key
        if run.path.exists() and any(p.name != "flower" for p in run.path.iterdir()):
            # (rvepfl flower-local keeps its app, logs and node directories in <run>/flower.)
            raise ConfigError(f"Run directory {run.path} exists and is not an rvepfl run: choose another server.out")
        write_run_start(run, self.cfg, self._partition_summary(), fed.partition)
        run_key = secrets.token_hex(8)
        write_json(key_file, {"run_key": run_key, "engine": "flower"})
        return run_key

    def run_federation(self) -> dict[str, Any]:
        """Discover the nodes, then run every remaining round; return the summary."""
        self.discover()
        fed = self._federation()
        cfg, method, run, t = self.cfg, fed.method, self.run, self.cfg.train
        run_key = self._start(fed)
        state = run.read_progress()
        done = int(state["completed_round"])
        elapsed = float(state.get("elapsed_seconds", 0.0))
        federation_steps = int(state.get("federation_steps", 0))
        per_federation = t.lr_decay_clock == "federation"
        _, initial_private, initial_shared = initial_model(fed)
        global_state = start_global_state(run, done, initial_shared, self.chash)
        log = MetricsLog.read(run.metrics, done)
        last_good = {c: 0 for c in range(cfg.data.num_clients)}  # each client's last committed round
        for row in log.rows["client_testing.csv"]:
            last_good[int(row[0])] = max(last_good[int(row[0])], int(row[1]))
        sizes = {"shared": sum(v.numel() for v in global_state.values()),
                 "private_per_client": sum(v.numel() for v in initial_private.values())}
        del initial_private
        summary: dict[str, Any] = {}
        for r in range(done + 1, t.rounds + 1):
            round_start = time.perf_counter()
            clients = round_clients(cfg, r)
            self.progress.round_start(r, t.rounds, clients)
            if any(self.nodes[c] not in set(self.grid.get_node_ids()) for c in clients):
                self._ask_new_nodes(min(60.0, self.wait_nodes))  # a restarted node takes its client back
            planned, starts = round_clocks(fed, clients, federation_steps)
            export = r == t.rounds or bool(t.checkpoint_every and r % t.checkpoint_every == 0)
            global_record = ArrayRecord({k: v.contiguous() for k, v in global_state.items()})
            messages = {}
            for c, start in zip(clients, starts[:-1]):
                request = self._request(round=r, committed=last_good[c], clock=start if per_federation else -1,
                                        **{"run-key": run_key, "export": export})
                messages[self.nodes[c]] = Message(RecordDict({"global": global_record, "request": request}),
                                                  dst_node_id=self.nodes[c], message_type="train", group_id=str(r))
            by_node = {self.nodes[c]: c for c in clients}
            replies, node_failures = self._exchange(messages, cfg.faults.client_timeout, "train", r, by_node)

            def outcomes() -> Iterator[tuple[int, ClientOutcome | TaskFailure, float]]:
                for c in clients:  # client order, as the in-process engine aggregates
                    node = self.nodes[c]
                    if node in node_failures:
                        kind, secs, message = node_failures[node]
                        yield c, TaskFailure(kind, message, secs), secs
                    else:
                        outcome = self._outcome(replies.pop(node), c)
                        yield c, outcome, outcome.train_seconds + outcome.eval_seconds

            book = RoundBook(fed, r, clients, self.progress,
                             f"start the run again with the same server.out ({run.path}) to continue")
            global_state = method.aggregate(book.uploads(outcomes(), planned, store=None), global_state,
                                            RoundContext(round=r, client=None, seed=cfg.seed, clients=tuple(clients)))
            book.check_complete()
            federation_steps = starts[-1]
            seconds = time.perf_counter() - round_start
            means = log.add_round(r, book.results, (seconds, book.train_s, book.eval_s, book.finished), book.failures)
            # Commit order, as in the in-process engine: CSVs and checkpoints first, progress last.
            log.write(run.metrics)
            save_global_state(run, r, global_state, self.chash)
            write_json(run.path / "flower" / "received.json", self.received)
            elapsed += seconds
            run.write_progress(r, self.chash, elapsed_seconds=elapsed, federation_steps=federation_steps)
            failed = {f.client for f in book.failures}
            last_good.update({c: r for c in clients if c not in failed})
            summary = self._summary(fed, log, elapsed, sizes, status="complete" if r == t.rounds else "running")
            write_json(run.summary, summary)
            self.progress.round_done(r, means, seconds)
        if not summary:
            summary = self._summary(fed, log, elapsed, sizes, status="complete")
            write_json(run.summary, summary)
        return summary

    def _outcome(self, reply: Message, client: int) -> ClientOutcome:
        content = reply.content
        state = state_from_record(content["upload"])
        info = dict(content["upload-info"])
        if int(info["client"]) != client:
            raise RuntimeError(f"The node of client {client} answered for client {info['client']}")
        metrics: MetricRecord = content["metrics"]
        per_kind: dict[str, dict[str, float]] = {"general": {}, "train": {}, "test": {}}
        for key, value in metrics.items():
            kind, _, name = key.partition(".")
            if kind in per_kind:
                per_kind[kind][name] = float(value)
        upload = Upload(client=client, num_samples=int(info["num-samples"]), state=state,
                        info=json.loads(str(info["info-json"])))
        return ClientOutcome(upload, per_kind, int(metrics["steps"]), float(metrics["train-seconds"]),
                        float(metrics["eval-seconds"]))

    def _summary(self, fed: Federation, log: MetricsLog, elapsed: float, sizes: dict[str, int], *,
                 status: str) -> dict[str, Any]:
        summary = _summary(fed, log, elapsed, sizes, status=status)
        summary.update(engine="flower", workers=len(self.nodes), threads=None,
                       nodes={str(c): n for c, n in sorted(self.nodes.items())},
                       client_failures=len(log.rows["client_failures.csv"]))
        return summary


def _status_file(out: Path) -> Path:
    return out / "flower" / "status.json"


@app.main()
def main(grid: Grid, context: Context) -> None:
    """The ServerApp's entry point: the run config is our config plus ``server.*``."""
    from flwr.common.logger import log as flwr_log
    import logging

    def log(line: str) -> None:
        flwr_log(logging.INFO, "%s", line)

    out: Path | None = None
    try:
        cfg, server = split_run_config(dict(context.run_config))
        if not server["out"]:
            raise ConfigError("Set `server.out` (the run directory on the server's machine) in the run config")
        out = Path(server["out"])
        if cfg.threads:
            torch.set_num_threads(cfg.threads)
        FlowerServer(grid, cfg, RunDir(out), wait_nodes=float(server["wait_nodes"]), log=log).run_federation()
        write_json(_status_file(out), {"status": "complete"})
    except RvepflError as exc:
        flwr_log(logging.ERROR, "error: %s", exc)
        if out is not None and (out.exists() or isinstance(exc, RoundFailedError)):
            write_json(_status_file(out), {"status": "failed", "error": str(exc)})
        raise
