"""Secure aggregation on Flower: one round of Flower's SecAgg+ protocol inside rvepfl's server loop.

The cryptography is Flower's: the ServerApp runs Flower's ``SecAggPlusWorkflow`` stage by stage
and every ClientApp wraps its ``train`` in Flower's ``secaggplus_mod``
(:mod:`rvepfl.flower.client`). The workflow was written for Flower's legacy strategies, so
:func:`secure_round` hands it what it expects of one: a strategy whose ``configure_fit`` returns
each client's instructions (the global state and rvepfl's request) and whose ``aggregate_fit``
receives the unmasked mean, and a grid whose ``send_and_receive`` goes through rvepfl's own
exchange (:meth:`rvepfl.flower.server.FlowerServer._exchange`: replies recorded in
``flower/received.json``, dead nodes and ``faults.client_timeout`` found as in every round).

A round runs the protocol's four stages: setup (public keys), share keys (encrypted shares of
each client's secrets to its neighbours), collect masked vectors (each client trains, then sends
its weighted, quantised, masked upload with its metrics) and unmask (shares that remove the
masks). A client that fails after the share-keys stage is a dropout: its masks are removed with
its neighbours' shares, and the round completes while every client keeps at least the
reconstruction threshold of live neighbours; otherwise the protocol stops and the round fails
(the run resumes from the round before).

What the server can still check (everything else it never sees):

- each reply's metrics, step count and claimed sample count, as in every round
  (:func:`rvepfl.fl.validation.check_outcome`); a reply it refuses after the client's masked
  upload entered the sum fails the round, since one upload cannot be taken out of the sum;
- that the upload came masked: the reply's ``fitres.parameters`` holds no array;
- the aggregate: one array per shared entry, with the global state's shape, every value finite;
- the number of contributors (the clients whose masked upload is in the sum), against
  ``faults.min_clients``;
- the protocol's own checks (stage order, share counts against the threshold, every public key
  distinct, every share from the neighbour it names).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict
from flwr.common import FitIns, ndarrays_to_parameters, parameters_to_ndarrays
from flwr.common.secure_aggregation.secaggplus_constants import RECORD_KEY_CONFIGS, Key, Stage
from flwr.server.compat.legacy_context import LegacyContext
from flwr.server.workflow import SecAggPlusWorkflow
from flwr.server.workflow.constant import MAIN_CONFIGS_RECORD, MAIN_PARAMS_RECORD
from flwr.server.workflow.constant import Key as WorkflowKey

from rvepfl.engine_config import RunConfig
from rvepfl.errors import RoundFailedError
from rvepfl.fl.secure_aggregation import max_weight, round_shares
from rvepfl.methods import Method, RoundContext, Upload


class Exchange(Protocol):
    """Push messages (node -> message) and collect the replies: (replies, failures) by node, a
    failure being (kind, seconds, message) (:meth:`rvepfl.flower.server.FlowerServer._exchange`)."""

    def __call__(self, messages: dict[int, Message], timeout: float, kind: str, round_: int,
                 clients: Mapping[int, int | None]) -> tuple[dict[int, Message], dict[int, tuple[str, float, str]]]: ...

__all__ = ["Exchange", "ProtocolMean", "SecureRound", "secure_round", "workflow"]


@dataclass
class SecureRound:
    """What one round of the protocol left: each client's reply to the collect stage (by node),
    the failures of the clients that dropped out, and the mean the server unmasked (None: the
    protocol stopped)."""

    replies: dict[int, Message] = field(default_factory=dict)
    failures: dict[int, tuple[str, float, str]] = field(default_factory=dict)
    mean: list[np.ndarray] | None = None

    @property
    def contributors(self) -> set[int]:
        """The nodes whose masked upload is in the sum: those that answered the collect stage."""
        return set(self.replies)


class _Proxy:
    """What the workflow reads of a legacy ClientProxy: its node id."""

    def __init__(self, node_id: int) -> None:
        self.node_id = node_id


class _Nodes:
    """What the workflow reads of a legacy ClientManager: how many nodes take part."""

    def __init__(self, count: int) -> None:
        self.count = count

    def num_available(self) -> int:
        return self.count


class _Strategy:
    """The legacy strategy the workflow drives: this round's instructions out, the mean in."""

    def __init__(self, instructions: list[tuple[_Proxy, FitIns]], result: SecureRound) -> None:
        self.instructions, self.result = instructions, result

    def configure_fit(self, server_round: int, parameters: Any, client_manager: Any) -> list[tuple[_Proxy, FitIns]]:
        return self.instructions

    def aggregate_fit(self, server_round: int, results: list[tuple[_Proxy, Any]],
                      failures: list[Any]) -> tuple[None, dict[str, Any]]:
        if results:  # every result carries the same unmasked mean
            self.result.mean = parameters_to_ndarrays(results[0][1].parameters)
        return None, {}  # the server loop, not the workflow, commits the round


class _StageGrid:
    """The grid the workflow sends through: rvepfl's exchange, one call per stage."""

    def __init__(self, exchange: Exchange, timeout: float, round_: int, clients: Mapping[int, int | None],
                 result: SecureRound) -> None:
        self.exchange, self.timeout, self.round, self.clients, self.result = exchange, timeout, round_, clients, result

    def send_and_receive(self, messages: Iterable[Message], *, timeout: float | None = None) -> list[Message]:
        by_node = {m.metadata.dst_node_id: m for m in messages}
        if not by_node:
            return []
        stage = str(next(iter(by_node.values())).content.config_records[RECORD_KEY_CONFIGS][Key.STAGE])
        replies, failures = self.exchange(by_node, self.timeout, f"secagg-{stage}", self.round, self.clients)
        for node, failure in failures.items():
            self.result.failures.setdefault(node, (failure[0], failure[1], f"{stage} stage: {failure[2]}"))
        if stage == Stage.COLLECT_MASKED_VECTORS:
            self.result.replies = dict(replies)
        return list(replies.values())


def workflow(cfg: RunConfig, max_weight: float, num_clients: int) -> SecAggPlusWorkflow:
    """Flower's workflow with the run's settings for a round of ``num_clients`` clients, each
    weight at most ``max_weight``."""
    s = cfg.secure_aggregation
    shares, threshold = round_shares(cfg, num_clients)
    # Flower reads a float as a fraction of the round's clients (or of the shares): 1.0 is all.
    return SecAggPlusWorkflow(
        num_shares=1.0 if shares == num_clients else shares,
        reconstruction_threshold=1.0 if threshold == shares else threshold,
        max_weight=max_weight, clipping_range=s.clipping_range, quantization_range=s.quantization_range,
        modulus_range=s.modulus_range, timeout=None)


def secure_round(exchange: Exchange, cfg: RunConfig, max_weight: float, round_: int,
                 requests: dict[int, dict[str, Any]], global_state: Mapping[str, torch.Tensor]) -> SecureRound:
    """Run the protocol for one round through ``exchange``: ``requests`` maps each node to
    rvepfl's request values (its client's included)."""
    keys = sorted(global_state)
    parameters = ndarrays_to_parameters([global_state[k].detach().cpu().numpy() for k in keys])
    result = SecureRound()
    instructions = [(_Proxy(node), FitIns(parameters, dict(values))) for node, values in requests.items()]
    context = LegacyContext(Context(run_id=0, node_id=0, node_config={}, state=RecordDict(), run_config={}),
                            strategy=_Strategy(instructions, result),  # type: ignore[arg-type]  # legacy duck type
                            client_manager=_Nodes(len(requests)))  # type: ignore[arg-type]
    context.state.config_records[MAIN_CONFIGS_RECORD] = ConfigRecord({WorkflowKey.CURRENT_ROUND: round_})
    context.state.array_records[MAIN_PARAMS_RECORD] = ArrayRecord()
    clients: dict[int, int | None] = {node: int(values["client"]) for node, values in requests.items()}
    grid = _StageGrid(exchange, cfg.faults.client_timeout, round_, clients, result)
    workflow(cfg, max_weight, len(requests))(grid, context)  # type: ignore[arg-type]  # the grid's one call
    return result


class ProtocolMean:
    """The Flower server's :attr:`~rvepfl.methods.base.Method.secure_mean`: the mean the protocol
    unmasked in the round (:meth:`set_round`), checked against the uploads the server accepted."""

    masked = True
    """The uploads the dispatcher yields carry no state: the server saw only the protocol's sum."""

    def __init__(self, method: Method) -> None:
        self.max_weight = max_weight(method)
        self.round: SecureRound | None = None
        self.nodes: dict[int, int] = {}  # client -> node of the round
        self.like: dict[str, torch.Tensor] = {}  # the global state's entries: shapes and dtypes
        with torch.random.fork_rng():  # the order of the shared entries, as the clients upload them
            self.order = list(method.shared_state(method.build_model()))

    def set_round(self, result: SecureRound, nodes: dict[int, int], global_state: Mapping[str, torch.Tensor]) -> None:
        """The round the protocol just ran: its result, each client's node, the global state it
        started from."""
        self.round, self.nodes = result, nodes
        self.like = dict(global_state)

    def __call__(self, uploads: Iterable[Upload], method: Method, ctx: RoundContext) -> dict[str, torch.Tensor]:
        accepted = {sent.client for sent in uploads}  # each checked by the server loop on its way here
        result = self.round
        assert result is not None and result.mean is not None, "the protocol's round runs before its uploads"
        summed = {c for c, node in self.nodes.items() if node in result.contributors}
        if summed != accepted:
            refused = sorted(summed - accepted)
            raise RoundFailedError(
                f"Round {ctx.round}: the server refused client(s) {', '.join(map(str, refused))} after their masked "
                "uploads entered the sum (see metrics/client_failures.csv), and secure aggregation cannot take one "
                "upload out of a sum: the round fails and the run stays at the round before it")
        return self._checked(result.mean, ctx.round)

    def _checked(self, mean: list[np.ndarray], round_: int) -> dict[str, torch.Tensor]:
        """The unmasked arrays (in sorted key order) as a state in the clients' upload order
        (as the in-process engine's mean has it), each checked against the global state."""
        keys = sorted(self.like)
        if len(mean) != len(keys) or sorted(self.order) != keys:
            raise RoundFailedError(f"Round {round_}: the unmasked aggregate has {len(mean)} arrays, the shared state "
                                   f"{len(keys)} entries")
        by_key = dict(zip(keys, mean, strict=True))
        out = {}
        for key in self.order:
            ref, arr = self.like[key], by_key[key]
            if tuple(arr.shape) != tuple(ref.shape) or not np.isfinite(arr).all():
                raise RoundFailedError(f"Round {round_}: the unmasked aggregate's `{key}` has shape "
                                       f"{tuple(arr.shape)} or non-finite values (the shared state's shape is "
                                       f"{tuple(ref.shape)})")
            out[key] = torch.from_numpy(np.array(arr, copy=True)).to(ref.dtype)
        return out
