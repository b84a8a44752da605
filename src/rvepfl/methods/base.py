"""The method interface: what a client keeps, trains and uploads, and how the server combines.

A method is one small class. The engine (in-process or Flower) calls only these hooks and never
knows which method runs; a method never knows which engine runs it.

Hooks, in the order a round calls them:

1. :meth:`Method.build_model` once: the full client model (private and shared parts).
2. :meth:`Method.is_shared`: which state entries travel to and from the server.
3. :meth:`Method.local_train` per client: local optimisation (Adam by default).
4. :meth:`Method.upload` per client: what the client sends (the shared entries by default).
5. :meth:`Method.aggregate` on the server: the new global shared state (a mean by default), from
   the uploads of the clients that finished the round, handed over one at a time as they arrive.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn import functional as F

from rvepfl.config import Config
from rvepfl.fl.aggregate import RunningMean
from rvepfl.seeding import torch_generator

__all__ = ["ClientData", "DataSpec", "Method", "RoundContext", "Upload"]


@dataclass(frozen=True)
class DataSpec:
    """What a method needs to know of the data to build its model."""

    channels: int
    image_size: int
    num_classes: int
    client_train_sizes: tuple[int, ...] = ()
    """Each client's number of training samples (index = client id)."""


@dataclass(frozen=True)
class ClientData:
    """One client's normalised images (N, C, H, W) and labels."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor


@dataclass(frozen=True)
class RoundContext:
    """Where a hook is called: round (1-based), client id (None on the server), master seed."""

    round: int
    client: int | None
    seed: int
    client_steps: int = 0
    """The client's own local steps before this round (the decay clock may count others too)."""
    clients: tuple[int, ...] = ()
    """On the server: the clients asked to take part in the round (those that finish it may be
    fewer; see ``[faults]``); empty when unknown."""


@dataclass
class Upload:
    """What one client sends to the server after a round."""

    client: int
    num_samples: int
    state: dict[str, torch.Tensor]
    info: dict[str, Any] = field(default_factory=dict)


class Method(ABC):
    """Base class of federated methods; subclasses override only what differs."""

    name: ClassVar[str]
    description: ClassVar[str]
    uploads_update: ClassVar[bool] = False
    """Whether :meth:`upload` sends the update (new minus received shared state) rather than the
    new shared state itself."""

    def __init__(self, cfg: Config, spec: DataSpec) -> None:
        self.cfg = cfg
        self.spec = spec

    # -- model ---------------------------------------------------------------------------------
    @abstractmethod
    def build_model(self) -> nn.Module:
        """The full client model; called once under the run's init seed."""

    def is_shared(self, key: str) -> bool:
        """Whether state entry ``key`` is sent to the server (default: every entry)."""
        return True

    def shared_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {k: v for k, v in model.state_dict().items() if self.is_shared(k)}

    def private_state(self, model: nn.Module) -> dict[str, torch.Tensor]:
        return {k: v for k, v in model.state_dict().items() if not self.is_shared(k)}

    # -- client --------------------------------------------------------------------------------
    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Training objective on one batch (default: cross-entropy)."""
        return F.cross_entropy(model(x), y)

    def local_train(self, model: nn.Module, data: ClientData, ctx: RoundContext, step: int) -> int:
        """Train ``model`` in place on the client's train split; return the client's new step count.

        A fresh Adam optimiser per client per round (the published code shared one across all
        clients and rounds); the learning rate decays with the step counter the engine passes
        (``train.lr_decay_clock``): ``lr / (1 + lr_decay * step)``. Batches are reshuffled every epoch from the
        ``train`` random stream of this round and client.
        """
        model.train()
        generator = self.batch_generator(ctx)
        return self.train_epochs(model, data, list(model.parameters()), self.cfg.train.local_epochs,
                                 generator, step)

    def planned_steps(self, num_samples: int) -> int:
        """The local steps :meth:`local_train` takes on ``num_samples`` training images.

        The engine needs it to run clients side by side (``workers`` > 1) when the
        learning-rate decay clock counts every client's steps: each client's clock is then known
        before the clients before it have finished. It checks the count after every client.
        """
        t = self.cfg.train
        return t.local_epochs * math.ceil(num_samples / t.batch_size)

    def batch_generator(self, ctx: RoundContext) -> torch.Generator:
        """The generator that orders this round's local batches of client ``ctx.client``."""
        assert ctx.client is not None
        return torch_generator(ctx.seed, "train", ctx.round, ctx.client, 1)

    def set_learning_rate(self, optimizer: torch.optim.Optimizer, step: int) -> None:
        """The published inverse-time decay at ``step``: ``lr / (1 + lr_decay * step)``."""
        t = self.cfg.train
        for group in optimizer.param_groups:
            group["lr"] = t.lr / (1.0 + t.lr_decay * step)

    def train_epochs(
        self,
        model: nn.Module,
        data: ClientData,
        params: Sequence[nn.Parameter],
        epochs: int,
        generator: torch.Generator,
        step: int,
    ) -> int:
        """Run ``epochs`` epochs of a fresh Adam over ``params`` only; return the new step count.

        Parameters not in ``params`` are frozen for the duration (no gradient is computed for
        them) and restored to their previous ``requires_grad`` afterwards. Each epoch draws one
        permutation of the train split from ``generator``; the learning rate decays with the step
        counter ``step`` (see ``train.lr_decay_clock``), which keeps counting across calls.
        """
        if epochs <= 0:
            return step
        t = self.cfg.train
        chosen = {id(p) for p in params}
        frozen = [p for p in model.parameters() if id(p) not in chosen and p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        try:
            optimizer = torch.optim.Adam(params, lr=t.lr, eps=t.adam_eps, fused=True)
            n = len(data.train_y)
            for _ in range(epochs):
                order = torch.randperm(n, generator=generator)
                for start in range(0, n, t.batch_size):
                    batch = order[start : start + t.batch_size]
                    self.set_learning_rate(optimizer, step)
                    optimizer.zero_grad(set_to_none=True)
                    self.loss(model, data.train_x[batch], data.train_y[batch]).backward()
                    optimizer.step()
                    step += 1
        finally:
            for p in frozen:
                p.requires_grad_(True)
        return step

    def upload(
        self, model: nn.Module, ctx: RoundContext, num_samples: int, received: dict[str, torch.Tensor]
    ) -> Upload:
        """What the client sends (default: a copy of its shared entries).

        ``received`` is the global shared state the client started the round from (on the CPU),
        for methods that upload an update rather than the weights.
        """
        assert ctx.client is not None
        state = {k: v.detach().to("cpu", copy=True) for k, v in self.shared_state(model).items()}
        return Upload(client=ctx.client, num_samples=num_samples, state=state)

    # -- server --------------------------------------------------------------------------------
    def aggregate(
        self, uploads: Iterable[Upload], global_state: dict[str, torch.Tensor], ctx: RoundContext
    ) -> dict[str, torch.Tensor]:
        """The new global shared state: the plain mean (published) or sample-weighted mean.

        ``uploads`` may be a one-pass iterator that yields each upload as its client finishes (the
        engine's streaming): iterate it once, and keep a running result rather than the uploads,
        so the server's memory stays flat as clients grow. It holds at least one upload; clients
        that failed the round are not in it.
        """
        weighted = self.cfg.train.aggregation == "weighted"
        running = RunningMean(self.expected_weight(ctx))
        for sent in uploads:
            running.add(sent.state, float(sent.num_samples) if weighted else 1.0)
        return running.result()

    def expected_weight(self, ctx: RoundContext) -> float | None:
        """The sum of the aggregation weights of the round's clients (``ctx.clients``), if all of
        them finish; None when the server does not know them (see :class:`RunningMean`)."""
        if not ctx.clients:
            return None
        if self.cfg.train.aggregation == "weighted":
            sizes = self.spec.client_train_sizes
            return float(sum(sizes[c] for c in ctx.clients)) if sizes else None
        return float(len(ctx.clients))

    def summary(self) -> dict[str, Any]:
        """Method-specific facts for summary.json (noise levels, budgets...)."""
        return {}
