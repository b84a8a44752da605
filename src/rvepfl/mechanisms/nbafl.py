"""NbAFL: noising before model aggregation (Wei et al., IEEE TIFS 2020; arXiv 1911.00222).

A mechanism on any method's shared state (the name ``nbafl`` alone is NbAFL on FedAvg's
classifier, as in the paper's experiments; ``rvepfl+nbafl`` puts it on RVE-PFL's classifier):

- **client**: after local training, the whole shared state, as one vector, is clipped to L2 norm
  at most C (``w / max(1, ||w|| / C)``) and N(0, sigma_u^2) noise is added to every coordinate
  before the upload;
- **server**: after aggregating, N(0, sigma_d^2) noise is added to the aggregate when the
  uplink noise alone does not cover the downlink.

The noise levels come from :func:`rvepfl.maths.nbafl_noise.nbafl_noise` (formulas and their
conditions are there). L, the number of exposures of a client's parameters, is
``nbafl.exposures``; 0 means L = T, the number of rounds: a client uploads at most once per
round, so T is the most exposures it can have (exact with all clients every round; an upper
bound under K-random scheduling). Client noise comes from the ``noise`` stream of (round, client),
server noise from that of (round, :data:`~rvepfl.seeding.SERVER`).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from rvepfl.errors import ConfigError
from rvepfl.maths import add_gaussian_noise, clip_by_l2, nbafl_noise
from rvepfl.mechanisms.base import Mechanism, Need
from rvepfl.methods.base import DataSpec, RoundContext, Upload
from rvepfl.params import need
from rvepfl.seeding import SERVER, torch_generator

if TYPE_CHECKING:
    from rvepfl.engine_config import RunConfig

__all__ = ["NbAfl", "NbaflParams"]


@dataclass(frozen=True)
class NbaflParams:
    epsilon: float = 60.0
    """Privacy budget epsilon of NbAFL (Wei et al., TIFS 2020; 60 as in the paper's experiments)."""
    delta: float = 0.01
    """Privacy parameter delta of NbAFL (0.01 as in the paper's experiments)."""
    clip_norm: float = 20.0
    """Clipping threshold C of each client's parameters (the whole shared state as one vector, L2 norm)."""
    exposures: int = 0
    """L: uploads of each client's parameters the noise is calibrated for (0: L = train.rounds, one
    per round); sigma_u = c * L * dS_u / epsilon as in the NbAFL paper's Theorem 1, so 1 gives the
    per-upload sigma_u = c * dS_u / epsilon."""

    def check(self, section: str) -> None:
        need(self.epsilon > 0, f"{section}.epsilon", self.epsilon, "> 0")
        need(0 < self.delta < 1, f"{section}.delta", self.delta, "in (0, 1)")
        need(self.clip_norm > 0, f"{section}.clip_norm", self.clip_norm, "> 0")
        need(self.exposures >= 0, f"{section}.exposures", self.exposures, ">= 0")


class NbAfl(Mechanism):
    name = "nbafl"
    description = "NbAFL: clipped, noised parameters before aggregation, server noise (Wei et al., TIFS 2020)"
    rank = 0
    Params = NbaflParams
    section = "nbafl"
    # bf16-mixed measured against float32: BENCHMARKS.md, "Mixed precision" (on fedavg: the raw
    # figures in ../shared/measurements/bf16-parity-2026-12-06/; on rvepfl: 2026-12-07).
    bf16_parity_on = ("fedavg", "rvepfl")

    hooks = frozenset({"upload", "aggregate", "wire_gradient"})
    needs = (Need("uploads", ("state",),
                  "it clips and noises the uploaded parameters, and this method uploads an update"),)
    gives = {"server": "own", "upload": "transformed"}

    def __init__(self, cfg: RunConfig, spec: DataSpec) -> None:
        super().__init__(cfg, spec)
        nb = self.settings(NbaflParams)
        sizes = spec.client_train_sizes
        if len(sizes) != cfg.data.num_clients:
            raise ConfigError(
                f"NbAFL needs every client's training-set size: expected {cfg.data.num_clients}, got {len(sizes)}"
            )
        if min(sizes) < 1:
            raise ConfigError("NbAFL needs every client to have at least one training sample; the smallest has 0")
        self.nbafl_exposures_default = nb.exposures == 0
        self.nbafl_noise = nbafl_noise(
            epsilon=nb.epsilon,
            delta=nb.delta,
            clip_norm=nb.clip_norm,
            min_samples=min(sizes),
            num_clients=cfg.data.num_clients,
            rounds=cfg.train.rounds,
            exposures=nb.exposures or cfg.train.rounds,
            clients_per_round=cfg.clients_per_round,
        )

    def upload(
        self, model: nn.Module, ctx: RoundContext, num_samples: int, received: dict[str, torch.Tensor]
    ) -> Upload:
        plain = super().upload(model, ctx, num_samples, received)
        clipped, norm = clip_by_l2(plain.state, self.nbafl_noise.C)
        assert ctx.client is not None
        generator = torch_generator(ctx.seed, "noise", ctx.round, ctx.client)
        noisy = add_gaussian_noise(clipped, self.nbafl_noise.sigma_u, generator)
        return Upload(client=plain.client, num_samples=num_samples, state=noisy,
                      info={**plain.info, "norm_before_clip": norm})

    def aggregate(
        self, uploads: Iterable[Upload], global_state: dict[str, torch.Tensor], ctx: RoundContext
    ) -> dict[str, torch.Tensor]:
        aggregate = super().aggregate(uploads, global_state, ctx)
        if self.nbafl_noise.sigma_d == 0:
            return aggregate
        server = torch_generator(ctx.seed, "noise", ctx.round, SERVER)
        return add_gaussian_noise(aggregate, self.nbafl_noise.sigma_d, server)

    def mechanism_summary(self) -> dict[str, Any]:
        details: dict[str, Any] = self.nbafl_noise.as_dict()
        details["L_source"] = ("nbafl.exposures = 0: L = T, one upload per round" if self.nbafl_exposures_default
                               else "nbafl.exposures")
        details["clipped"] = "the whole shared state (parameters, not updates) as one vector"
        if self.cfg.train.aggregation == "weighted":
            details["note"] = ("the downlink formula assumes equal aggregation weights (p_i = 1/N); "
                               "train.aggregation = weighted departs from it")
        return details

    def wire_gradient(self, module: nn.Module, inputs: torch.Tensor, labels: torch.Tensor,
                      generator: torch.Generator) -> dict[str, torch.Tensor]:
        """The upload after one step of ``train.lr``, clipped and noised, read back as a gradient:
        ``(theta - (clip(theta - lr * g) + noise)) / lr``."""
        grads = super().wire_gradient(module, inputs, labels, generator)
        lr = self.cfg.train.lr
        theta = {k: p.detach().double() for k, p in module.named_parameters()}
        stepped = {k: theta[k] - lr * grads[k] for k in grads}
        clipped, _ = clip_by_l2(stepped, self.nbafl_noise.C)
        upload = add_gaussian_noise(clipped, self.nbafl_noise.sigma_u, generator)
        return {k: (theta[k] - upload[k]) / lr for k in grads}
