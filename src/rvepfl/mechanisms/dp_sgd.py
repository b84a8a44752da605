"""Local DP-SGD through Opacus (Abadi et al., CCS 2016) on every client.

A mechanism on any method that trains every parameter with the standard local loop and shares
every parameter (the name ``dp-sgd`` alone is DP-SGD on FedAvg; a method with private parameters
would pay DP-SGD's noise on parameters that never leave the client). It swaps two hooks of that
loop and keeps the rest: the optimiser (:meth:`DpSgd.local_optimiser`: Opacus's ``GradSampleModule``
around the model and its ``DPOptimizer`` around the method's Adam, so every step clips each sample's
gradient to ``dp_sgd.max_grad_norm`` and adds Gaussian noise of std ``dp_sgd.noise_multiplier *
max_grad_norm`` to their sum) and the batches (:meth:`DpSgd.local_batches`: Poisson samples, each of
the client's n training images in a batch with probability q = min(1, batch_size / n), int(1 / q)
batches per epoch, Opacus's ``UniformWithReplacementSampler``). The learning rate still decays as
the method's does (any optimiser of the privatised gradients keeps the guarantee). The Poisson draws
come from the ``train`` stream of (round, client), the noise from the ``noise`` stream of (round,
client). Opacus's hooks and attributes are removed after each phase of local training, so the
model's ``state_dict`` is unchanged.

Each client's epsilon (at ``dp_sgd.delta``) covers all the rounds it has trained in: Opacus's
RDP analysis of (q, noise multiplier, the client's total DP steps). The total is the client's
own step count, which the engine keeps and passes in ``RoundContext.client_steps`` (the decay
clock it passes as ``step`` may count other clients' steps too). The client reports it with its
upload (``Upload.info``) and the server keeps the reports for the summary, so the accounting is
the same whether a client trains in the server's process or in a worker; after a resume, a
client appears in the summary again once it has trained.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from rvepfl.maths import add_gaussian_noise, clip_by_l2, rdp_epsilon
from rvepfl.mechanisms.base import Mechanism, Need
from rvepfl.methods.base import ClientData, DataSpec, RoundContext, Upload
from rvepfl.params import need
from rvepfl.seeding import derive_seed

if TYPE_CHECKING:
    from rvepfl.engine_config import RunConfig

__all__ = ["DpSgd", "DpSgdParams", "poisson_plan"]


def poisson_plan(num_samples: int, batch_size: int) -> tuple[float, int]:
    """(sample rate q, batches per epoch) of Poisson sampling with expected batch ``batch_size``.

    >>> poisson_plan(900, 256)
    (0.28444444444444444, 3)
    >>> poisson_plan(100, 256)
    (1.0, 1)
    """
    if num_samples < 1:
        raise ValueError(f"Expected `num_samples` >= 1, got {num_samples}")
    if batch_size < 1:
        raise ValueError(f"Expected `batch_size` >= 1, got {batch_size}")
    q = min(1.0, batch_size / num_samples)
    return q, int(1 / q)


@dataclass(frozen=True)
class DpSgdParams:
    noise_multiplier: float = 1.0
    """Noise std / max_grad_norm of per-sample-gradient DP-SGD (Opacus)."""
    max_grad_norm: float = 1.0
    """Per-sample gradient clipping bound."""
    delta: float = 1e-5
    """delta for each client's reported epsilon (Opacus RDP accountant over all its steps)."""

    def check(self, section: str) -> None:
        need(self.noise_multiplier >= 0, f"{section}.noise_multiplier", self.noise_multiplier, ">= 0")
        need(self.max_grad_norm > 0, f"{section}.max_grad_norm", self.max_grad_norm, "> 0")
        need(0 < self.delta < 1, f"{section}.delta", self.delta, "in (0, 1)")


class DpSgd(Mechanism):
    name = "dp-sgd"
    description = "Local DP-SGD via Opacus on each client (Abadi et al., 2016)"
    rank = 20
    Params = DpSgdParams
    section = "dp_sgd"

    hooks = frozenset({"batches_per_epoch", "local_batches", "local_optimiser", "local_train", "upload", "receive",
                       "wire_gradient"})
    needs = (
        Need("loop", ("standard",),
             "it privatises the standard local loop over every parameter, and this method trains in phases of its own"),
        Need("private", (False,),
             "it clips and noises every parameter's gradient, and this method keeps part of its model private, where "
             "noise buys no privacy: protect its shared part with nbafl or dp-fedavg"),
        Need("upload", ("plain",),
             "its per-sample clipping and noise come before any transform of the upload: name it first after the "
             "method (METHOD+dp-sgd+MECHANISM)"),
    )
    gives = {"loop": "privatised"}

    def __init__(self, cfg: RunConfig, spec: DataSpec) -> None:
        super().__init__(cfg, spec)
        self.dp_sgd_pending: dict[int, dict[str, Any]] = {}  # client side: the last round's accounting
        self.dp_sgd_clients: dict[int, dict[str, Any]] = {}  # server side: what the clients reported

    # -- the local loop's hooks ------------------------------------------------------------------
    def batches_per_epoch(self, num_samples: int) -> int:
        return poisson_plan(num_samples, self.cfg.train.batch_size)[1]

    def local_batches(self, num_samples: int, epochs: int, generator: torch.Generator,
                      device: torch.device) -> Iterator[torch.Tensor]:
        """Poisson batches (an empty one still takes a noise-only step, as accounted)."""
        from opacus.utils.uniform_sampler import UniformWithReplacementSampler

        q, per_epoch = poisson_plan(num_samples, self.cfg.train.batch_size)
        sampler = UniformWithReplacementSampler(num_samples=num_samples, sample_rate=q, steps=per_epoch,
                                                generator=generator)
        for _ in range(epochs):
            for indices in sampler:
                yield torch.as_tensor(indices, dtype=torch.long, device=device)

    @contextmanager
    def local_optimiser(self, model: nn.Module, params: Sequence[nn.Parameter], data: ClientData,
                        ctx: RoundContext) -> Iterator[tuple[nn.Module, torch.optim.Optimizer]]:
        """The method's optimiser wrapped in Opacus's ``DPOptimizer``, and the model in its
        ``GradSampleModule`` (removed again on exit)."""
        from opacus import GradSampleModule  # imported here: importing Opacus takes seconds
        from opacus.optimizers import DPOptimizer

        assert ctx.client is not None
        d = self.settings(DpSgdParams)
        n = len(data.train_y)
        q, _ = poisson_plan(n, self.cfg.train.batch_size)
        device = data.train_x.device
        noise = torch.Generator(device=device).manual_seed(derive_seed(ctx.seed, "noise", ctx.round, ctx.client))
        with super().local_optimiser(model, params, data, ctx) as (module, optimizer):
            wrapped = GradSampleModule(module, batch_first=True, loss_reduction="mean", strict=True)
            try:
                dp_optimizer = DPOptimizer(
                    optimizer, noise_multiplier=d.noise_multiplier, max_grad_norm=d.max_grad_norm,
                    expected_batch_size=max(1, int(n * q)), loss_reduction="mean", generator=noise,
                    secure_mode=False,
                )
                with warnings.catch_warnings():
                    # Opacus's backward hooks fire on module outputs because the images need no grad.
                    warnings.filterwarnings("ignore", message="Full backward hook is firing")
                    yield wrapped, dp_optimizer
            finally:
                wrapped._close()  # removes Opacus's hooks and per-parameter attributes
                for p in module.parameters():
                    p.grad = None

    def local_train(self, model: nn.Module, data: ClientData, ctx: RoundContext, step: int) -> int:
        """The method's local training through the hooks above, then this round's accounting."""
        assert ctx.client is not None
        d = self.settings(DpSgdParams)
        after = super().local_train(model, data, ctx, step)
        q, _ = poisson_plan(len(data.train_y), self.cfg.train.batch_size)
        own_steps = ctx.client_steps + (after - step)  # the decay clock may count other clients' steps
        self.dp_sgd_pending[ctx.client] = {
            "client": ctx.client,
            "sample_rate": q,
            "steps": own_steps,
            "epsilon": rdp_epsilon(noise_multiplier=d.noise_multiplier, sample_rate=q, steps=own_steps, delta=d.delta),
        }
        return after

    # -- upload and server -----------------------------------------------------------------------
    def upload(
        self, model: nn.Module, ctx: RoundContext, num_samples: int, received: dict[str, torch.Tensor]
    ) -> Upload:
        """The method's upload, with the client's accounting (its epsilon so far) as ``info``."""
        sent = super().upload(model, ctx, num_samples, received)
        assert ctx.client is not None
        if ctx.client in self.dp_sgd_pending:
            sent.info["dp_sgd"] = self.dp_sgd_pending.pop(ctx.client)
        return sent

    def receive(self, sent: Upload) -> Upload:
        """The wrapped server's look at the upload; the server records the client's reported epsilon."""
        sent = super().receive(sent)
        if "dp_sgd" in sent.info:
            self.dp_sgd_clients[sent.client] = sent.info["dp_sgd"]
        return sent

    def mechanism_summary(self) -> dict[str, Any]:
        d = self.settings(DpSgdParams)
        clients = [self.dp_sgd_clients[c] for c in sorted(self.dp_sgd_clients)]
        eps = [c["epsilon"] for c in clients]
        finite = all(math.isfinite(e) for e in eps)
        details: dict[str, Any] = {
            "noise_multiplier": d.noise_multiplier,
            "max_grad_norm": d.max_grad_norm,
            "delta": d.delta,
            "accountant": "opacus RDP (Poisson-sampled Gaussian, per client over all its steps)",
            "clients_accounted": len(clients),
            "epsilon_max": (max(eps) if finite else None) if eps else 0.0,
            "epsilon_mean": (sum(eps) / len(eps) if finite else None) if eps else 0.0,
            "clients": [{**c, "epsilon": c["epsilon"] if math.isfinite(c["epsilon"]) else None} for c in clients],
        }
        if d.noise_multiplier == 0:
            details["note"] = "noise_multiplier = 0: no privacy guarantee (epsilon is infinite)"
        return details

    # -- the wire ----------------------------------------------------------------------------------
    def wire_gradient(self, module: nn.Module, inputs: torch.Tensor, labels: torch.Tensor,
                      generator: torch.Generator) -> dict[str, torch.Tensor]:
        """The client's privatised gradient: each sample's gradient (as the method exposes it)
        clipped to ``max_grad_norm``, summed, plus N(0, (sigma * max_grad_norm)^2), over the batch."""
        d = self.settings(DpSgdParams)
        total: dict[str, torch.Tensor] = {}
        for i in range(len(labels)):
            one = super().wire_gradient(module, inputs[i : i + 1], labels[i : i + 1], generator)
            clipped, _ = clip_by_l2(one, d.max_grad_norm)
            for k, v in clipped.items():
                total[k] = total[k] + v if k in total else torch.zeros_like(v) + v
        noisy = add_gaussian_noise(total, d.noise_multiplier * d.max_grad_norm, generator)
        return {k: v / len(labels) for k, v in noisy.items()}
