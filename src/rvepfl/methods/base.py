"""The method interface: a model split into private and shared parts, and the hooks of a round.

A method is one small class. The engines (in-process, worker processes, Flower) call only these
hooks and never know which method runs; a method never knows which engine runs it. A privacy
mechanism (:mod:`rvepfl.mechanisms`) overrides some of the same hooks and is composed with any
method it can wrap (``rvepfl+nbafl``; see :mod:`rvepfl.registry`).

Hooks, in the order a round calls them:

1. :meth:`Method.build_model` once: the full client model (private and shared parts).
2. :meth:`Method.is_shared`: which state entries travel to and from the server.
3. :meth:`Method.local_train` per client: local optimisation. Its parts are hooks too: the
   objective (:meth:`Method.loss`), the optimiser and the module the loss is computed with
   (:meth:`Method.local_optimiser`), the batches (:meth:`Method.local_batches`), so that a
   mechanism such as DP-SGD changes the optimiser and the sampler without copying the loop.
4. :meth:`Method.upload` per client: what the client sends (the shared entries by default).
5. :meth:`Method.aggregate` on the server: the new global shared state (a mean by default), from
   the uploads of the clients that finished the round, handed over one at a time as they arrive;
   it hands each upload to :meth:`Method.receive` first (where a mechanism reads what a client
   reported, such as DP-SGD's accounting).

What an attacker sees on the wire comes from the same class: :meth:`Method.shared_path` (the
shared module and its input), :meth:`Method.wire_gradient` (one local step as uploaded) and
:meth:`Method.uploaded_update` (a whole round's update read off an upload).

A method declares what it is in :attr:`Method.contract` (a :class:`Contract`): whether it trains
with the standard loop, keeps part of its model private, aggregates by the mean and uploads its
state or an update. Which mechanisms can wrap it is decided by that declaration alone
(:meth:`rvepfl.mechanisms.base.Mechanism.refusal`), and a composition's own contract is what its
mechanism makes of the method's; ``tests/unit/test_contract.py`` checks every declaration against
what the class does.

A method's settings are its own frozen dataclass ``Params``, read from the config section
``section`` (see :mod:`rvepfl.params`) through :meth:`Method.settings`, typed; the config hash
covers only the sections of the method and mechanisms a run uses.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol, TypeVar

import torch
from torch import nn
from torch.nn import functional as F

from rvepfl.maths import RunningMean, clip_by_l2, median_state, trimmed_mean_state
from rvepfl.precision import FLOAT32, Precision
from rvepfl.seeding import torch_generator
from rvepfl.shared_adam import load_carrier, store_carrier
from rvepfl.wire import SharedPath, observed_gradient

if TYPE_CHECKING:
    from rvepfl.engine_config import RunConfig

__all__ = ["ClientData", "Contract", "DataSpec", "Loss", "Method", "RoundContext", "SecureMean", "SharedPath", "Upload"]

P = TypeVar("P")

Loss = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]
"""An objective on one batch: (module, images, labels) -> scalar loss."""


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


@dataclass(frozen=True)
class Contract:
    """What a method (or a composition) declares of itself; a mechanism wraps it or refuses by
    these fields alone (:class:`rvepfl.mechanisms.base.Mechanism`).

    >>> Contract()
    Contract(loop='standard', private=False, server='mean', uploads='state', upload='plain')
    """

    loop: Literal["standard", "phased", "privatised"] = "standard"
    """How local training runs. ``standard``: :meth:`Method.local_train`'s loop, every parameter
    for ``train.local_epochs`` epochs through :meth:`Method.train_epochs` (the method may change
    the objective, :meth:`Method.loss`); ``phased``: phases of its own (FedRep's head then body,
    Ditto's two models); ``privatised``: the standard loop with a mechanism's optimiser and
    sampler (DP-SGD)."""
    private: bool = False
    """Whether part of the model never leaves the client (:meth:`Method.is_shared` is false for
    some state entry of the built model)."""
    server: Literal["mean", "own"] = "mean"
    """How the server aggregates. ``mean``: :meth:`Method.aggregate`, the rule
    ``train.aggregation`` names; ``own``: a rule of its own (a mechanism's noise included)."""
    uploads: Literal["state", "update"] = "state"
    """What :meth:`Method.upload` sends: the trained shared state, or the update (trained minus
    received shared state)."""
    upload: Literal["plain", "transformed"] = "plain"
    """Whether the upload is what training left (``plain``) or already clipped or noised by a
    mechanism (``transformed``): the wire then reads through that transform."""


class SecureMean(Protocol):
    """How the server of a securely aggregated round learns the mean of its uploads
    (:meth:`Method.mean_of`): ``(uploads, method, ctx) -> mean state``."""

    masked: bool
    """Whether the uploads reach the server masked, without a state (the protocol's sum is all it
    holds), rather than in the clear."""

    def __call__(self, uploads: Iterable[Upload], method: Method, ctx: RoundContext) -> dict[str, torch.Tensor]: ...


@dataclass
class Upload:
    """What one client sends to the server after a round."""

    client: int
    num_samples: int
    state: dict[str, torch.Tensor]
    info: dict[str, Any] = field(default_factory=dict)


class Method(ABC):
    """Base class of federated methods; subclasses override only what differs.

    Class attributes
    ----------------
    name
        The registry name (``rvepfl methods``).
    description
        One line for ``rvepfl methods``.
    rank
        Position in listings (lower first).
    Params, section
        The method's settings dataclass and the config section it is read from (None: none);
        read them with :meth:`settings`.
    contract
        What the method declares of itself (:class:`Contract`); a composition's is what its
        mechanisms make of it. ``tests/unit/test_contract.py`` checks it against the class.
    bf16_parity
        Whether this class's bf16-mixed accuracy has been measured to match float32's
        (``python -m benchmarks.parity``): only then does ``train.precision = "auto"`` choose
        bf16-mixed for it. Read off the class itself, not inherited; a composition has it when its
        mechanism was measured on its method
        (:attr:`~rvepfl.mechanisms.base.Mechanism.bf16_parity_on`).
    """

    name: ClassVar[str]
    description: ClassVar[str]
    rank: ClassVar[int] = 100
    Params: ClassVar[type | None] = None
    section: ClassVar[str | None] = None
    contract: ClassVar[Contract] = Contract()
    mechanisms: ClassVar[tuple[str, ...]] = ()
    bf16_parity: ClassVar[bool] = False

    def __init__(self, cfg: RunConfig, spec: DataSpec) -> None:
        self.cfg = cfg
        """The run's :class:`rvepfl.config.Config`: the engine's keys and sections, and this class's
        own sections by name (``self.cfg.model``; see :meth:`sections`)."""
        self.spec = spec
        self.precision: Precision = FLOAT32
        """The number format of local training (:mod:`rvepfl.precision`); the engine sets it from
        ``train.precision`` and the device."""
        self.secure_mean: SecureMean | None = None
        """Under secure aggregation, how the server learns the mean of a round's uploads (the engine
        sets it: :mod:`rvepfl.fl.secure_aggregation`); None: it reads each upload."""
        self.carried_optimiser: dict[str, torch.Tensor] | None = None
        """With ``train.optimiser = "published-shared"``, the Adam state the previous client's
        training left (:mod:`rvepfl.shared_adam`); the engine sets and saves it."""

    def settings(self, params: type[P]) -> P:
        """This run's values of the settings dataclass ``params``, typed: the config section that
        this class, or a class it is made of, reads ``params`` from.

        >>> from rvepfl.config import Config
        >>> from rvepfl.registry import method_class
        >>> from rvepfl.mechanisms.nbafl import NbaflParams
        >>> method = method_class("rvepfl+nbafl")(Config(method="rvepfl+nbafl"), DataSpec(1, 28, 10, (9,) * 10))
        >>> method.settings(NbaflParams).epsilon
        60.0
        """
        for section, cls in type(self).sections().items():
            if cls is params:
                value = getattr(self.cfg, section)
                if not isinstance(value, params):
                    raise TypeError(f"Expected the config section [{section}] to hold {params.__name__}, "
                                    f"got {type(value).__name__}")
                return value
        raise TypeError(f"{type(self).__name__} reads no section of {params.__name__}")

    @property
    def uploads_update(self) -> bool:
        """Whether :meth:`upload` sends an update rather than the state (:attr:`contract`)."""
        return self.contract.uploads == "update"

    @classmethod
    def sections(cls) -> dict[str, type]:
        """The config sections this class reads: its own and those of the classes it is made of
        (a mechanism composed with a method reads both)."""
        out: dict[str, type] = {}
        for klass in reversed(cls.__mro__):
            params, section = vars(klass).get("Params"), vars(klass).get("section")
            if params is not None and section:
                out[section] = params
        return out

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

    # -- client: local training ------------------------------------------------------------------
    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Training objective on one batch (default: cross-entropy)."""
        return F.cross_entropy(model(x), y)

    def local_train(self, model: nn.Module, data: ClientData, ctx: RoundContext, step: int) -> int:
        """Train ``model`` in place on the client's train split; return the decay clock after it.

        The published loop over every parameter for ``train.local_epochs`` epochs
        (:meth:`train_epochs`); ``step`` is the learning-rate decay clock the engine passes
        (``train.lr_decay_clock``).
        """
        model.train()
        generator = self.batch_generator(ctx)
        return self.train_epochs(model, data, list(model.parameters()), self.cfg.train.local_epochs,
                                 generator, step, ctx)

    def batches_per_epoch(self, num_samples: int) -> int:
        """The batches :meth:`local_batches` gives per epoch on ``num_samples`` training images."""
        return math.ceil(num_samples / self.cfg.train.batch_size)

    def planned_steps(self, num_samples: int) -> int:
        """The local steps :meth:`local_train` takes on ``num_samples`` training images.

        The engine needs it to run clients side by side (``workers`` > 1) when the
        learning-rate decay clock counts every client's steps: each client's clock is then known
        before the clients before it have finished. It checks the count after every client.
        """
        return self.cfg.train.local_epochs * self.batches_per_epoch(num_samples)

    def batch_generator(self, ctx: RoundContext) -> torch.Generator:
        """The generator that orders this round's local batches of client ``ctx.client``."""
        assert ctx.client is not None
        return torch_generator(ctx.seed, "train", ctx.round, ctx.client, 1)

    def local_batches(self, num_samples: int, epochs: int, generator: torch.Generator,
                      device: torch.device) -> Iterator[torch.Tensor]:
        """The index batches of ``epochs`` local epochs: one permutation per epoch from
        ``generator``, cut into ``train.batch_size`` batches (the last may be smaller)."""
        size = self.cfg.train.batch_size
        for _ in range(epochs):
            order = torch.randperm(num_samples, generator=generator)
            for start in range(0, num_samples, size):
                yield order[start : start + size]

    @contextmanager
    def local_optimiser(self, model: nn.Module, params: Sequence[nn.Parameter], data: ClientData,
                        ctx: RoundContext) -> Iterator[tuple[nn.Module, torch.optim.Optimizer]]:
        """The module the loss is computed with and the optimiser that steps ``params``, for one
        phase of local training: ``model`` itself and a fresh Adam; with ``train.optimiser =
        "published-shared"``, an Adam that starts from the state the previous client left and
        leaves its own for the next (the published code's one Adam for all clients and rounds)."""
        t = self.cfg.train
        optimizer = torch.optim.Adam(params, lr=t.lr, eps=t.adam_eps, fused=True)
        carrier = self.carried_optimiser if t.optimiser == "published-shared" else None
        if carrier is not None:
            load_carrier(optimizer, model, params, carrier)
        yield model, optimizer
        if carrier is not None:
            store_carrier(optimizer, model, params, carrier)

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
        ctx: RoundContext,
        loss: Loss | None = None,
    ) -> int:
        """Run ``epochs`` epochs over ``params`` only; return the new step count.

        Parameters not in ``params`` are frozen for the duration (no gradient is computed for
        them) and restored to their previous ``requires_grad`` afterwards. The batches come from
        :meth:`local_batches`, the optimiser from :meth:`local_optimiser`, the objective is
        ``loss`` (default :meth:`loss`); the learning rate decays with the step counter ``step``
        (see ``train.lr_decay_clock``), which keeps counting across calls.
        """
        if epochs <= 0:
            return step
        objective = loss or self.loss
        precision = self.precision
        scaler = precision.grad_scaler()  # loss scaling for 16-mixed; a pass-through otherwise
        chosen = {id(p) for p in params}
        frozen = [p for p in model.parameters() if id(p) not in chosen and p.requires_grad]
        for p in frozen:
            p.requires_grad_(False)
        try:
            with self.local_optimiser(model, params, data, ctx) as (module, optimizer):
                for batch in self.local_batches(len(data.train_y), epochs, generator, data.train_x.device):
                    self.set_learning_rate(optimizer, step)
                    optimizer.zero_grad(set_to_none=True)
                    with precision.autocast():
                        value = objective(module, data.train_x[batch], data.train_y[batch])
                    if scaler.is_enabled():
                        scaler.scale(value).backward()
                        scaler.step(optimizer)
                        scaler.update()
                    else:
                        value.backward()
                        optimizer.step()
                    step += 1
        finally:
            for p in frozen:
                p.requires_grad_(True)
        return step

    # -- client: upload --------------------------------------------------------------------------
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

    # -- server ----------------------------------------------------------------------------------
    def aggregate(
        self, uploads: Iterable[Upload], global_state: dict[str, torch.Tensor], ctx: RoundContext
    ) -> dict[str, torch.Tensor]:
        """The new global shared state from the round's uploads, by ``train.aggregation``: the plain
        mean (published), the sample-weighted mean, the coordinate-wise median or trimmed mean;
        each client's update first bounded to ``train.max_update_norm`` when that is set.

        ``uploads`` may be a one-pass iterator that yields each upload as its client finishes (the
        engine's streaming): iterate it once. The means keep a running result rather than the
        uploads, so the server's memory stays flat as clients grow; the median and trimmed mean
        need every upload of the round at once. It holds at least one upload; clients that failed
        the round are not in it.
        """
        t = self.cfg.train
        uploads = (self.receive(sent) for sent in uploads)
        if t.max_update_norm is not None:
            uploads = (self._bounded(sent, global_state, t.max_update_norm) for sent in uploads)
        if t.aggregation == "median":
            return median_state([sent.state for sent in uploads])
        if t.aggregation == "trimmed-mean":
            return trimmed_mean_state([sent.state for sent in uploads], t.trim_fraction)
        return self.mean_of(uploads, ctx)

    def mean_of(self, uploads: Iterable[Upload], ctx: RoundContext) -> dict[str, torch.Tensor]:
        """The mean of the uploads' states weighted by :meth:`aggregation_weight`, as the server
        learns it: a :class:`RunningMean` of the uploads; under secure aggregation
        (:attr:`secure_mean`) what the protocol reveals, the quantised mean of the uploads it
        never sees one by one. ``uploads`` is iterated once, to its end."""
        if self.secure_mean is not None:
            return self.secure_mean(uploads, self, ctx)
        running = RunningMean(self.expected_weight(ctx))
        for sent in uploads:
            running.add(sent.state, float(self.aggregation_weight(sent.num_samples)))
        return running.result()

    def aggregation_weight(self, num_samples: int) -> int:
        """The weight of an upload from a client with ``num_samples`` training images in the
        server's mean: that number with ``train.aggregation = "weighted"``, else 1. A client
        under secure aggregation sends it, masked, with its upload."""
        return num_samples if self.cfg.train.aggregation == "weighted" else 1

    def receive(self, sent: Upload) -> Upload:
        """The server's first look at each upload, before it is aggregated: a rule that replaces
        :meth:`aggregate` calls it too. Default: the upload as it came."""
        return sent

    def _bounded(self, sent: Upload, global_state: dict[str, torch.Tensor], bound: float) -> Upload:
        """``sent`` with its update (upload minus ``global_state``, or the upload itself when the
        method uploads updates) scaled down to L2 norm ``bound`` if it is longer."""
        if self.uploads_update:
            clipped, _ = clip_by_l2(sent.state, bound)
            return Upload(sent.client, sent.num_samples, clipped, sent.info)
        update = {k: v.double() - global_state[k].double() for k, v in sent.state.items()}
        clipped, norm = clip_by_l2(update, bound)
        if norm <= bound:
            return sent
        state = {k: (global_state[k].double() + clipped[k]).to(v.dtype) for k, v in sent.state.items()}
        return Upload(sent.client, sent.num_samples, state, sent.info)

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

    # -- the wire, as an attacker sees it ---------------------------------------------------------
    def shared_path(self, model: nn.Module) -> SharedPath | None:
        """The shared module as a path from a client's input to the logits, or None when the
        shared part is not a whole path (a private head): then no gradient attack and no released
        model that classifies. Default: the whole model on images, when every entry is shared."""
        if all(self.is_shared(k) for k in model.state_dict()):
            return SharedPath(model, lambda x: x, reads_images=True)
        return None

    def wire_gradient(self, module: nn.Module, inputs: torch.Tensor, labels: torch.Tensor,
                      generator: torch.Generator) -> dict[str, torch.Tensor]:
        """What the server sees of one local step of ``module`` (the shared path's module) on
        (``inputs``, ``labels``), read as a gradient, in float64, by parameter name.

        Default: the gradient itself (no dropout; :func:`observed_gradient`). A mechanism that
        clips or noises what is uploaded transforms it the same way, drawing from ``generator``.
        """
        names = [k for k, _ in module.named_parameters()]
        return {k: g.double() for k, g in zip(names, observed_gradient(module, inputs, labels))}

    def uploaded_update(self, upload: dict[str, torch.Tensor], received: dict[str, torch.Tensor],
                        keys: Sequence[str]) -> dict[str, torch.Tensor]:
        """The shared update (new minus received) of ``keys`` as the server reads it off an
        upload, in float64."""
        if self.uploads_update:
            return {k: upload[k].double() for k in keys}
        return {k: upload[k].double() - received[k].double() for k in keys}
