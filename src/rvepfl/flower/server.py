"""The ServerApp: rounds over Flower's Grid, writing the in-process engine's run directory.

The server never reads data. It first asks every SuperNode for its facts (``query``): the
partition id it plays, its split's indices and label counts, the data set's shape and a
fingerprint of the whole partition, which must agree across nodes (each node computed the
partition from the same seed, :func:`rvepfl.data.make_partition`, as the in-process engine
does). From these it builds the method (:class:`~rvepfl.methods.DataSpec` needs only shapes and
training-set sizes) and writes ``config.toml``, ``partition.json`` and ``partition.npz`` exactly as
the in-process engine does (:func:`rvepfl.fl.server.write_run_start`).

The rounds are the server loop every engine runs (:func:`rvepfl.fl.server.run_rounds`), with
:class:`FlowerServer` as its dispatcher: the same client sampling, the decay clock of each client
planned from the clients before it, the method's own aggregation over the uploads in client
order, and the same commit order (CSVs, global checkpoint, progress marker, summary).
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
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common.constant import ErrorCode
from flwr.serverapp import Grid, ServerApp

from rvepfl.config import Config, config_hash
from rvepfl.data.partition import ClientSplit, Partition
from rvepfl.errors import CheckpointError, ConfigError, RoundFailedError, RvepflError
from rvepfl.fl.client import ClientFailure, ClientOutcome, describe_exception, partition_summary
from rvepfl.fl.lifecycle import RunStart, open_run
from rvepfl.fl.secure_aggregation import round_shares
from rvepfl.fl.server import Result, ServerSetup, check_partition, run_rounds, write_run_start
from rvepfl.flower.appconfig import split_run_config
from rvepfl.flower.client import state_from_record
from rvepfl.flower.secagg import ProtocolMean, secure_round
from rvepfl.io import write_json
from rvepfl.methods import DataSpec, Method, Upload
from rvepfl.methods.base import SecureMean
from rvepfl.progress import ProgressPrinter
from rvepfl.registry import build_method
from rvepfl.rundir import MetricsLog, RunDir
from rvepfl.tensorboard import tensorboard_events

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


def _reason_line(text: str | None) -> str:
    """The last non-empty line of an error reason (a traceback's exception line), shortened."""
    lines = [line.strip() for line in (text or "").splitlines() if line.strip()]
    line = lines[-1] if lines else "no reason given"
    return line if len(line) <= 300 else line[:297] + "..."


class FlowerServer:
    """Runs (or continues) one federation in ``run`` over ``grid``: finds the clients' nodes, then
    runs the server loop (:func:`rvepfl.fl.server.run_rounds`) as its dispatcher.

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
        self.chash = config_hash(cfg)  # the run's, computed once: the nodes' queries carry it
        self.nodes: dict[int, int] = {}  # client -> node id
        self.facts: dict[int, dict[str, Any]] = {}  # client -> its node's facts
        self.asked: set[int] = set()  # node ids asked for facts
        self.received: list[dict[str, Any]] = []
        self.run_key = ""
        self.last_good: dict[int, int] = {}  # client -> its last committed round
        self.protocol: ProtocolMean | None = None  # under secure aggregation

    # -- messages ------------------------------------------------------------------------------
    def _request(self, **values: Any) -> ConfigRecord:
        return ConfigRecord({"config-hash": self.chash, **values})

    def _round_request(self, round_: int, client: int, clock: int | None, export: bool) -> dict[str, Any]:
        """What a node needs to run ``client``'s round: the round, the client's last committed
        round, its decay clock (-1: its own steps), the run key and whether to export its state."""
        return {"config-hash": self.chash, "round": round_, "committed": self.last_good[client],
                "clock": -1 if clock is None else clock, "run-key": self.run_key, "export": export}

    def _record(self, round_: int, kind: str, client: int | None, node: int, reply: Message) -> None:
        entry: dict[str, Any] = {"round": round_, "type": kind, "client": client, "node": node}
        if reply.has_error():
            entry["error"] = {"code": reply.error.code, "reason": _reason_line(reply.error.reason)}
        else:
            entry["records"] = describe_content(reply.content)
        self.received.append(entry)

    def _exchange(self, messages: dict[int, Message], timeout: float, kind: str, round_: int,
                  clients: Mapping[int, int | None]) -> tuple[dict[int, Message], dict[int, tuple[str, float, str]]]:
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
                                      _reason_line(reply.error.reason))
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
            facts: dict[str, Any] = dict(reply.content["facts"])  # checked as they are read
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

    def setup(self) -> ServerSetup:
        """The server's view of the federation, from its nodes' facts: config, partition and method
        (the method needs only the data's shapes and the training-set sizes)."""
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
        return ServerSetup(self.cfg, build_method(self.cfg, spec), partition)

    def _partition_summary(self, partition: Partition) -> dict[str, Any]:
        f0 = self.facts[0]
        counts = [{"train": list(self.facts[c]["train-label-counts"]), "test": list(self.facts[c]["test-label-counts"])}
                  for c in range(self.cfg.data.num_clients)]
        return partition_summary(dataset=f0["dataset"], source=f0["source"], num_train=int(f0["num-train-images"]),
                                 num_test=int(f0["num-test-images"]), partition=partition, label_counts=counts)

    # -- the run -------------------------------------------------------------------------------
    def _start(self, setup: ServerSetup) -> RunStart:
        """Initialise a new run directory or check a stopped one; set the run key; return where the
        run stands (:func:`rvepfl.fl.lifecycle.open_run`)."""
        run = self.run
        key_file = run.path / "flower" / "run.json"
        # (rvepfl flower-local keeps its app, logs and node directories in <run>/flower.)
        start = open_run(run, self.cfg, chash=self.chash,
                         fresh=lambda run: not run.path.exists() or all(p.name == "flower" for p in run.path.iterdir()),
                         not_a_run=lambda run: ConfigError(
                             f"Run directory {run.path} exists and is not an rvepfl run: choose another server.out"))
        if start.status != "new":
            check_partition(setup.partition, run)
            try:
                self.run_key = str(json.loads(key_file.read_text(encoding="utf-8"))["run_key"])
            except (OSError, ValueError, KeyError) as exc:
                raise CheckpointError(f"Cannot read {key_file}: {exc}") from None
            received = run.path / "flower" / "received.json"
            if received.exists():
                self.received = [e for e in json.loads(received.read_text(encoding="utf-8"))
                                 if e["round"] <= start.done]
            self.log(f"continuing {run.path} after round {start.done}/{self.cfg.train.rounds}")
            return start
        write_run_start(run, self.cfg, self._partition_summary(setup.partition), setup.partition, start.config_hash)
        self.run_key = secrets.token_hex(8)
        write_json(key_file, {"run_key": self.run_key, "engine": "flower"})
        return start

    def run_federation(self) -> dict[str, Any]:
        """Discover the nodes, then run every remaining round; return the summary."""
        self.discover()
        setup = self.setup()
        with tensorboard_events(self.cfg, self.run, self.progress, setup.method.summary) as progress:
            start = self._start(setup)
            return run_rounds(self.run, setup, self, progress, chash=start.config_hash,
                              resume=f"start the run again with the same server.out ({self.run.path}) to continue")

    # -- the server loop's dispatcher ------------------------------------------------------------
    def start(self, done: int, log: MetricsLog) -> None:
        """Each client's last committed round, from the run's metrics (a failed client's node
        must go on from the private state of its last round that counted)."""
        self.last_good = {c: 0 for c in range(self.cfg.data.num_clients)}
        for row in log.rows["client_testing.csv"]:
            self.last_good[int(row[0])] = max(self.last_good[int(row[0])], int(row[1]))

    def run_round(self, round_: int, clients: list[int], clocks: list[int | None], committed: int,
                  global_state: dict[str, torch.Tensor], export: bool) -> Iterator[Result]:
        """Send the round to the clients' nodes, wait for every reply (or failure), then yield
        the results in client order."""
        if any(self.nodes[c] not in set(self.grid.get_node_ids()) for c in clients):
            self._ask_new_nodes(min(60.0, self.wait_nodes))  # a restarted node takes its client back
        if self.protocol is not None:
            yield from self._secure_round(round_, clients, clocks, global_state, export)
            return
        global_record = ArrayRecord({k: v.contiguous() for k, v in global_state.items()})
        messages = {}
        for c, clock in zip(clients, clocks):
            request = ConfigRecord(self._round_request(round_, c, clock, export))
            messages[self.nodes[c]] = Message(RecordDict({"global": global_record, "request": request}),
                                              dst_node_id=self.nodes[c], message_type="train", group_id=str(round_))
        by_node = {self.nodes[c]: c for c in clients}
        replies, failures = self._exchange(messages, self.cfg.faults.client_timeout, "train", round_, by_node)
        for c in clients:  # client order, as the in-process engine aggregates
            node = self.nodes[c]
            if node in failures:
                kind, seconds, message = failures[node]
                yield c, ClientFailure(c, kind, seconds, message), seconds
            else:
                reply = replies.pop(node)
                try:
                    outcome = self._outcome(reply, c)
                except Exception as exc:  # noqa: BLE001 - a reply an untrusted node shaped as it liked
                    yield c, ClientFailure(c, "rejected", 0.0, f"malformed reply: {describe_exception(exc)}"), 0.0
                    continue
                yield c, outcome, outcome.train_seconds + outcome.eval_seconds

    def _secure_round(self, round_: int, clients: list[int], clocks: list[int | None],
                      global_state: dict[str, torch.Tensor], export: bool) -> Iterator[Result]:
        """The round under secure aggregation (:mod:`rvepfl.flower.secagg`): Flower's SecAgg+
        protocol first, then each client's result in client order, its upload without a state
        (the mean the protocol unmasked goes to the method through :class:`ProtocolMean`)."""
        assert self.protocol is not None
        requests = {self.nodes[c]: {**self._round_request(round_, c, clock, export), "client": c}
                    for c, clock in zip(clients, clocks)}
        result = secure_round(self._exchange, self.cfg, self.protocol.max_weight, round_, requests, global_state)
        if result.mean is None:
            failed = "; ".join(f"client {c} ({result.failures[self.nodes[c]][0]}: {result.failures[self.nodes[c]][2]})"
                               for c in clients if self.nodes[c] in result.failures) or "no client failed"
            shares, threshold = round_shares(self.cfg, len(clients))
            raise RoundFailedError(
                f"Round {round_}: secure aggregation stopped: a client kept fewer than the reconstruction threshold "
                f"({threshold} of {shares} shares) of live neighbours ({failed}). The run stays at round "
                f"{round_ - 1}: start it again with the same server.out ({self.run.path}) to continue")
        self.protocol.set_round(result, {c: self.nodes[c] for c in clients}, global_state)
        for c in clients:
            node = self.nodes[c]
            reply = result.replies.get(node)
            if reply is None:
                kind, seconds, message = result.failures.get(node, ("died", 0.0, "no masked upload"))
                yield c, ClientFailure(c, kind, seconds, message), seconds
                continue
            try:
                outcome = self._outcome(reply, c, masked=True)
            except Exception as exc:  # noqa: BLE001 - a reply an untrusted node shaped as it liked
                yield c, ClientFailure(c, "rejected", 0.0, f"malformed reply: {describe_exception(exc)}"), 0.0
                continue
            yield c, outcome, outcome.train_seconds + outcome.eval_seconds

    def secure_mean(self, method: Method) -> SecureMean:
        """Flower's SecAgg+ protocol: the server holds only the mean it unmasks."""
        self.protocol = ProtocolMean(method)
        return self.protocol

    def reject(self, round_: int, client: int) -> None:
        """Nothing to undo here: a client whose outcome was refused keeps, on its node, the private
        state of its last round that counted (the next request names that round)."""

    def commit(self, round_: int, export: bool, run: RunDir) -> None:
        write_json(run.path / "flower" / "received.json", self.received)

    def committed(self, round_: int, clients: list[int], failures: list[ClientFailure]) -> None:
        failed = {f.client for f in failures}
        self.last_good.update({c: round_ for c in clients if c not in failed})

    def details(self) -> dict[str, Any]:
        return {"engine": "flower", "device": "cpu", "threads": None, "workers": len(self.nodes),
                "nodes": {str(c): n for c, n in sorted(self.nodes.items())},
                "precision": {"requested": self.cfg.train.precision, "ran": None,
                              "reason": "each client node resolves train.precision on its own device"}}

    def _outcome(self, reply: Message, client: int, *, masked: bool = False) -> ClientOutcome:
        """The outcome a node's reply describes; ``masked``: a reply to the protocol's collect
        stage, whose upload the server cannot read (its ``fitres.parameters`` must be empty)."""
        content: Mapping[str, Any] = reply.content  # as the node shaped it: a bad value raises below
        if masked:
            if len(content["fitres.parameters"]):
                raise RuntimeError("its upload arrived in the clear under secure aggregation")
            state: dict[str, torch.Tensor] = {}
        else:
            state = state_from_record(content["upload"])
        info = dict(content["upload-info"])
        if int(info["client"]) != client:
            raise RuntimeError(f"The node of client {client} answered for client {info['client']}")
        metrics: Mapping[str, Any] = content["metrics"]
        per_kind: dict[str, dict[str, float]] = {"general": {}, "train": {}, "test": {}}
        for key, value in metrics.items():
            kind, _, name = key.partition(".")
            if kind in per_kind:
                per_kind[kind][name] = float(value)
        upload = Upload(client=client, num_samples=int(info["num-samples"]), state=state,
                        info=json.loads(str(info["info-json"])))
        return ClientOutcome(upload, per_kind, int(metrics["steps"]), float(metrics["train-seconds"]),
                             float(metrics["eval-seconds"]))


def _status_file(out: Path) -> Path:
    return out / "flower" / "status.json"


@app.main()
def main(grid: Grid, context: Context) -> None:
    """The ServerApp's entry point: the run config is our config plus ``server.*``."""
    import logging

    from flwr.common.logger import log as flwr_log

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
        from rvepfl.figures import run_accuracy_plot

        log(f"accuracy plot: {run_accuracy_plot(out)}")
        write_json(_status_file(out), {"status": "complete"})
    except RvepflError as exc:
        flwr_log(logging.ERROR, "error: %s", exc)
        if out is not None and (out.exists() or isinstance(exc, RoundFailedError)):
            write_json(_status_file(out), {"status": "failed", "error": str(exc)})
        raise
