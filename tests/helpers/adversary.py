"""A malicious client, for tests and scripts/malicious_clients.py: one client of a federation
sends a corrupted upload instead of its honest one.

The kinds (the robust-aggregation literature's standard attacks, and what a careless or hostile
node could send):

- ``nan``: one value of its upload is NaN;
- ``shape``: one entry has an extra row;
- ``encoder``: it adds its private entries (a private encoder's, for RVE-PFL; for a method without
  private state, an entry named as one) to the upload;
- ``scale``: its update (upload minus the global state it received) multiplied by 10,000;
- ``flip``: its update sign-flipped.

:func:`install` wraps :func:`rvepfl.fl.client.train_client` in this process, so the named client
misbehaves in every round, wherever that function runs: the engine's process, a worker process
(spawned workers import it again when ``RVEPFL_TEST_ADVERSARY`` is set and the directory
``tests/helpers/faulty`` and the repository root are on ``PYTHONPATH``: its ``sitecustomize``
calls :func:`install_from_env`), or a Flower node. Test and experiment code only: nothing in ``src/`` knows of it.
"""

from __future__ import annotations

import dataclasses
import os

import torch

ENV = "RVEPFL_TEST_ADVERSARY"
"""``CLIENT:KIND``, e.g. ``3:scale``."""
KINDS = ("nan", "shape", "encoder", "scale", "flip")
SCALE = 1e4


def corrupt(state: dict[str, torch.Tensor], kind: str, received: dict[str, torch.Tensor],
            private: dict[str, torch.Tensor], uploads_update: bool) -> dict[str, torch.Tensor]:
    """The ``kind`` corruption of an honest upload ``state`` (see the module docstring)."""
    state = {k: v.clone() for k, v in state.items()}
    first = next(iter(state))
    if kind == "nan":
        state[first].view(-1)[0] = float("nan")
    elif kind == "shape":
        value = state[first]
        state[first] = torch.cat([value, value[:1]]) if value.ndim else value.reshape(1)
    elif kind == "encoder":
        state.update(private or {"encoder.conv1.weight": torch.zeros(32, 1, 3, 3)})
    elif kind in ("scale", "flip"):
        factor = SCALE if kind == "scale" else -1.0
        for k, v in state.items():
            update = v.double() if uploads_update else v.double() - received[k].double()
            base = torch.zeros_like(update) if uploads_update else received[k].double()
            state[k] = (base + factor * update).to(v.dtype)
    else:
        raise ValueError(f"Unknown adversary kind {kind!r}: choose one of {', '.join(KINDS)}")
    return state


def install(client: int, kind: str) -> None:
    """Make ``client`` send the ``kind`` corruption of its upload in every round, in this process."""
    import rvepfl.fl.client as client_side

    if kind not in KINDS:
        raise ValueError(f"Unknown adversary kind {kind!r}: choose one of {', '.join(KINDS)}")
    honest = getattr(client_side.train_client, "honest", client_side.train_client)

    def train_client(fed, model, store, initial_private, global_state, round_, client_id, *args):
        outcome = honest(fed, model, store, initial_private, global_state, round_, client_id, *args)
        if client_id != client:
            return outcome
        private = {k: v.detach().cpu().clone() for k, v in fed.method.private_state(model).items()}
        state = corrupt(outcome.upload.state, kind, global_state, private, fed.method.uploads_update)
        return dataclasses.replace(outcome, upload=dataclasses.replace(outcome.upload, state=state))

    train_client.honest = honest  # type: ignore[attr-defined]
    client_side.train_client = train_client


def install_from_env() -> None:
    """:func:`install` as ``RVEPFL_TEST_ADVERSARY`` says (nothing when it is unset)."""
    spec = os.environ.get(ENV, "")
    if spec:
        client, _, kind = spec.partition(":")
        install(int(client), kind)
