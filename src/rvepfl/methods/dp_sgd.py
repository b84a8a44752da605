"""Local DP-SGD through Opacus (Abadi et al., CCS 2016) on every client, uploads as in FedAvg.

Each client trains its copy of the classifier with per-sample gradient clipping
(``dp_sgd.max_grad_norm``) and Gaussian noise (std ``dp_sgd.noise_multiplier *
max_grad_norm``) on the summed clipped gradients, via Opacus's ``GradSampleModule`` and
``DPOptimizer``. Batches are Poisson samples: each of the client's n training images is in a
batch with probability q = min(1, batch_size / n), with int(1 / q) batches per epoch (Opacus's
``UniformWithReplacementSampler``) for ``train.local_epochs`` epochs. The optimiser is the same
Adam with inverse-time decay as FedAvg's (any optimiser of the privatised gradients keeps the
guarantee). The Poisson draws come from the ``train`` stream of (round, client), the noise from
the ``noise`` stream of (round, client).

The engine's model object is wrapped only for the duration of :meth:`DpSgd.local_train`; the
hooks and attributes Opacus adds are removed afterwards, so its ``state_dict`` is unchanged.

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
from collections.abc import Iterable, Iterator
from typing import Any

import torch
from torch import nn

from rvepfl.config import Config
from rvepfl.methods.base import ClientData, DataSpec, RoundContext, Upload
from rvepfl.methods.fedavg import FedAvg
from rvepfl.privacy import rdp_epsilon
from rvepfl.seeding import derive_seed, torch_generator

__all__ = ["DpSgd", "poisson_plan"]


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


class DpSgd(FedAvg):
    name = "dp-sgd"
    description = "Local DP-SGD via Opacus on each client, FedAvg aggregation (Abadi et al., 2016)"

    def __init__(self, cfg: Config, spec: DataSpec) -> None:
        super().__init__(cfg, spec)
        self._pending: dict[int, dict[str, Any]] = {}  # client side: the last round's accounting
        self._clients: dict[int, dict[str, Any]] = {}  # server side: what the clients reported

    def planned_steps(self, num_samples: int) -> int:
        _, per_epoch = poisson_plan(num_samples, self.cfg.train.batch_size)
        return self.cfg.train.local_epochs * per_epoch

    def local_train(self, model: nn.Module, data: ClientData, ctx: RoundContext, step: int) -> int:
        from opacus import GradSampleModule  # imported here: importing Opacus takes seconds
        from opacus.optimizers import DPOptimizer
        from opacus.utils.uniform_sampler import UniformWithReplacementSampler

        assert ctx.client is not None
        t, d = self.cfg.train, self.cfg.dp_sgd
        n = len(data.train_y)
        q, per_epoch = poisson_plan(n, t.batch_size)
        device = data.train_x.device
        noise = torch.Generator(device=device).manual_seed(derive_seed(ctx.seed, "noise", ctx.round, ctx.client))
        sampler = UniformWithReplacementSampler(
            num_samples=n, sample_rate=q, steps=per_epoch,
            generator=torch_generator(ctx.seed, "train", ctx.round, ctx.client, 1),
        )
        model.train()
        clock = step
        optimizer = torch.optim.Adam(model.parameters(), lr=t.lr, eps=t.adam_eps, fused=True)
        wrapped = GradSampleModule(model, batch_first=True, loss_reduction="mean", strict=True)
        try:
            dp_optimizer = DPOptimizer(
                optimizer, noise_multiplier=d.noise_multiplier, max_grad_norm=d.max_grad_norm,
                expected_batch_size=max(1, int(n * q)), loss_reduction="mean", generator=noise,
                secure_mode=False,
            )
            with warnings.catch_warnings():
                # Opacus's backward hooks fire on module outputs because the images need no grad.
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                for _ in range(t.local_epochs):
                    for indices in sampler:
                        batch = torch.as_tensor(indices, dtype=torch.long, device=device)
                        self.set_learning_rate(dp_optimizer, step)
                        dp_optimizer.zero_grad(set_to_none=True)
                        # An empty Poisson batch still takes a (noise-only) step, as accounted.
                        self.loss(wrapped, data.train_x[batch], data.train_y[batch]).backward()
                        dp_optimizer.step()
                        step += 1
        finally:
            wrapped._close()  # removes Opacus's hooks and per-parameter attributes
            for p in model.parameters():
                p.grad = None
        own_steps = ctx.client_steps + (step - clock)  # the decay clock may count other clients' steps
        self._pending[ctx.client] = {
            "client": ctx.client,
            "sample_rate": q,
            "steps": own_steps,
            "epsilon": rdp_epsilon(noise_multiplier=d.noise_multiplier, sample_rate=q, steps=own_steps, delta=d.delta),
        }
        return step

    def upload(
        self, model: nn.Module, ctx: RoundContext, num_samples: int, received: dict[str, torch.Tensor]
    ) -> Upload:
        """FedAvg's upload, with the client's accounting (its epsilon so far) as ``info``."""
        sent = super().upload(model, ctx, num_samples, received)
        assert ctx.client is not None
        if ctx.client in self._pending:
            sent.info["dp_sgd"] = self._pending.pop(ctx.client)
        return sent

    def aggregate(
        self, uploads: Iterable[Upload], global_state: dict[str, torch.Tensor], ctx: RoundContext
    ) -> dict[str, torch.Tensor]:
        """FedAvg's mean; the server records each client's reported epsilon for the summary."""

        def recorded() -> Iterator[Upload]:
            for sent in uploads:
                if "dp_sgd" in sent.info:
                    self._clients[sent.client] = sent.info["dp_sgd"]
                yield sent

        return super().aggregate(recorded(), global_state, ctx)

    def summary(self) -> dict[str, Any]:
        d = self.cfg.dp_sgd
        clients = [self._clients[c] for c in sorted(self._clients)]
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
