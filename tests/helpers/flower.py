"""Flower in tests: skip without flwr (a failure where CI requires it), and an in-process Grid.

``.ci/run`` exports ``RVEPFL_REQUIRE_FLOWER=1``: there a missing flwr fails the Flower tests
instead of skipping them.
"""

from __future__ import annotations

import copy
import os
import traceback
import uuid
from collections.abc import Callable, Iterable
from typing import Any

import pytest


def need_flwr() -> None:
    """Skip the calling module without flwr, or fail where ``RVEPFL_REQUIRE_FLOWER=1``."""
    try:
        import flwr  # noqa: F401
    except ImportError:
        if os.environ.get("RVEPFL_REQUIRE_FLOWER") == "1":
            pytest.fail("flwr is not installed but RVEPFL_REQUIRE_FLOWER=1: pip install -e '.[flower]'",
                        pytrace=False)
        pytest.skip("flwr is not installed (pip install -e '.[flower]')", allow_module_level=True)


class InProcessGrid:
    """A Flower Grid whose nodes run :mod:`rvepfl.flower.client`'s ClientApp in this process (its
    mods included: Flower's ``secaggplus_mod`` under secure aggregation), each node with a
    Context of its own that lasts across messages, as on a SuperNode.

    ``node_configs`` maps node id -> node config. ``fault(node, message)`` may return
    ``"raise"`` (the ClientApp raises: an error reply), ``"die"`` (the node vanishes: no reply,
    and it leaves ``get_node_ids``) or ``"silent"`` (no reply; the node stays listed).
    """

    def __init__(self, node_configs: dict[int, dict[str, Any]],
                 fault: Callable[[int, Any], str | None] = lambda node, msg: None) -> None:
        from flwr.supercore.task_identity import TaskIdentity

        # What Flower sets in a ServerApp's process; Message() reads it.
        TaskIdentity.run_id, TaskIdentity.node_id, TaskIdentity.task_id = 1, 0, 1
        self.node_configs = node_configs
        self.alive = set(node_configs)
        self.fault = fault
        self.replies: dict[str, Any] = {}
        self.sent: list[Any] = []
        self.contexts: dict[int, Any] = {}

    def get_node_ids(self) -> Iterable[int]:
        return sorted(self.alive)

    def push_messages(self, messages: Iterable[Any]) -> list[str]:
        from flwr.app import Context, Error, Message, RecordDict
        from flwr.common.constant import ErrorCode

        from rvepfl.flower.client import app

        ids = []
        for msg in messages:
            msg.metadata.__dict__["_message_id"] = str(uuid.uuid4())
            ids.append(msg.metadata.message_id)
            self.sent.append(msg)
            node = msg.metadata.dst_node_id
            what = self.fault(node, msg) if node in self.alive else "die"
            if what in ("die", "silent"):
                if what == "die":
                    self.alive.discard(node)
                continue
            if node not in self.contexts:
                self.contexts[node] = Context(run_id=1, node_id=node, node_config=self.node_configs[node],
                                              state=RecordDict(), run_config=self.run_config)
            try:
                if what == "raise":
                    raise RuntimeError(f"injected failure on node {node}")
                # A copy, as a node receives it off the wire: Flower's secaggplus_mod consumes
                # its message's records, which one stage shares among all its messages.
                reply = app(copy.deepcopy(msg), self.contexts[node])
            except Exception as exc:  # noqa: BLE001 - what Flower does with a ClientApp's exception
                reply = Message(Error(ErrorCode.CLIENT_APP_RAISED_EXCEPTION,
                                      "".join(traceback.format_exception(exc))), reply_to=msg)
            self.replies[msg.metadata.message_id] = reply
        return ids

    def pull_messages(self, message_ids: Iterable[str]) -> list[Any]:
        return [self.replies.pop(i) for i in list(message_ids) if i in self.replies]

    run_config: dict[str, Any] = {}
