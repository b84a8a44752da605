"""DP-FedAvg with central differential privacy (McMahan et al., ICLR 2018), fixed clipping.

A mechanism on any method whose server takes the mean of the uploads, as Flower's
``DifferentialPrivacyServerSideFixedClipping`` wraps any strategy (the name ``dp-fedavg`` alone
is the mechanism on FedAvg):

- **client**: uploads its model update (trained shared state minus the global state it
  received), clipped to L2 norm at most ``dp_fedavg.clip_norm`` (all tensors as one vector);
- **server**: averages the K clipped updates with equal weights (``train.aggregation`` is
  ignored: the noise is calibrated to an unweighted mean; under secure aggregation the server
  learns that mean from the protocol and adds its noise to it, as the paper's trusted server
  does: the noise protects the released model, not the uploads), adds N(0, s^2) noise with
  s = noise_multiplier * clip_norm / K to every coordinate (the ``noise`` stream of
  (round, :data:`~rvepfl.seeding.SERVER`)), and adds the result to the global state.

Epsilon (at ``dp_fedavg.delta``) comes from Opacus's RDP accountant: one sampled Gaussian step
per round with sample rate K / N. As in Flower and TensorFlow Federated, the engine's
fixed-size draw of K clients is accounted as Poisson sampling with that rate (exact when every
client takes part in every round). Epsilon depends only on the round number, so a resumed run
reports the same value.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from rvepfl.errors import ConfigError
from rvepfl.maths import add_gaussian_noise, clip_by_l2, rdp_epsilon
from rvepfl.mechanisms.base import Mechanism, Need
from rvepfl.methods.base import DataSpec, RoundContext, Upload
from rvepfl.params import need
from rvepfl.seeding import SERVER, torch_generator

if TYPE_CHECKING:
    from rvepfl.engine_config import RunConfig

__all__ = ["DpFedAvg", "DpFedAvgParams"]


def _finite(eps: float) -> float | None:
    return eps if math.isfinite(eps) else None


@dataclass(frozen=True)
class DpFedAvgParams:
    noise_multiplier: float = 1.0
    """Server noise std / clip_norm (central DP, Gaussian mechanism on the summed clipped updates)."""
    clip_norm: float = 1.0
    """L2 bound of each client's model update (all tensors as one vector)."""
    delta: float = 1e-5
    """delta for the reported epsilon (Opacus RDP accountant, one step per round)."""

    def check(self, section: str) -> None:
        need(self.noise_multiplier >= 0, f"{section}.noise_multiplier", self.noise_multiplier, ">= 0")
        need(self.clip_norm > 0, f"{section}.clip_norm", self.clip_norm, "> 0")
        need(0 < self.delta < 1, f"{section}.delta", self.delta, "in (0, 1)")


class DpFedAvg(Mechanism):
    name = "dp-fedavg"
    description = "DP-FedAvg: clipped updates, server Gaussian noise, RDP accounting (McMahan et al., 2018)"
    rank = 10
    Params = DpFedAvgParams
    section = "dp_fedavg"
    # bf16-mixed measured against float32 on fedavg: BENCHMARKS.md, "Mixed precision" (2026-12-07).
    bf16_parity_on = ("fedavg",)
    hooks = frozenset({"upload", "aggregate", "aggregation_weight", "expected_weight", "wire_gradient"})
    needs = (
        Need("uploads", ("state",), "this method already uploads an update"),
        Need("server", ("mean",),
             "its server replaces the mean of the uploads, and this method aggregates in a way of its own"),
    )
    gives = {"uploads": "update", "server": "own", "upload": "transformed"}

    def __init__(self, cfg: RunConfig, spec: DataSpec) -> None:
        super().__init__(cfg, spec)
        t = cfg.train
        if t.aggregation in ("median", "trimmed-mean") or t.max_update_norm is not None:
            raise ConfigError(
                f"{cfg.method}'s server takes the noised mean of the clipped updates (dp_fedavg.clip_norm bounds "
                "each one): use train.aggregation = \"mean\" and no train.max_update_norm with it")
        self.dp_fedavg_sample_rate = cfg.clients_per_round / cfg.data.num_clients
        self.dp_fedavg_rounds_accounted = 0
        self.dp_fedavg_epsilon = 0.0

    def epsilon(self, rounds: int) -> float:
        """Epsilon after ``rounds`` rounds (Opacus RDP accountant; inf without noise)."""
        d = self.settings(DpFedAvgParams)
        return rdp_epsilon(noise_multiplier=d.noise_multiplier, sample_rate=self.dp_fedavg_sample_rate, steps=rounds,
                           delta=d.delta)

    def upload(
        self, model: nn.Module, ctx: RoundContext, num_samples: int, received: dict[str, torch.Tensor]
    ) -> Upload:
        trained = super().upload(model, ctx, num_samples, received)
        update = {k: v - received[k].to(v.dtype) for k, v in trained.state.items()}
        d = self.settings(DpFedAvgParams)
        clipped, norm = clip_by_l2(update, d.clip_norm)
        assert ctx.client is not None
        return Upload(client=ctx.client, num_samples=num_samples, state=clipped,
                      info={**trained.info, "update_norm": norm})

    def aggregate(
        self, uploads: Iterable[Upload], global_state: dict[str, torch.Tensor], ctx: RoundContext
    ) -> dict[str, torch.Tensor]:
        d = self.settings(DpFedAvgParams)
        finished = 0

        def received() -> Iterator[Upload]:
            nonlocal finished
            for sent in uploads:
                finished += 1
                yield self.receive(sent)

        mean_update = self.mean_of(received(), ctx)
        std = d.noise_multiplier * d.clip_norm / finished
        noisy = add_gaussian_noise(mean_update, std, torch_generator(ctx.seed, "noise", ctx.round, SERVER))
        new = {k: (v.double() + noisy[k].double()).to(v.dtype) for k, v in global_state.items()}
        self.dp_fedavg_rounds_accounted = ctx.round
        self.dp_fedavg_epsilon = self.epsilon(ctx.round)
        return new

    def aggregation_weight(self, num_samples: int) -> int:
        """1: the noise is calibrated to the unweighted mean of the clipped updates."""
        return 1

    def expected_weight(self, ctx: RoundContext) -> float | None:
        return float(len(ctx.clients)) if ctx.clients else None

    def mechanism_summary(self) -> dict[str, Any]:
        d = self.settings(DpFedAvgParams)
        details: dict[str, Any] = {
            "noise_multiplier": d.noise_multiplier,
            "clip_norm": d.clip_norm,
            "delta": d.delta,
            "N": self.cfg.data.num_clients,
            "K": self.cfg.clients_per_round,
            "sample_rate": self.dp_fedavg_sample_rate,
            "noise_std": d.noise_multiplier * d.clip_norm / self.cfg.clients_per_round,
            "accountant": "opacus RDP (sampled Gaussian, one step per round)",
            "rounds_accounted": self.dp_fedavg_rounds_accounted,
            "epsilon": _finite(self.dp_fedavg_epsilon),
            "epsilon_after_all_rounds": _finite(self.epsilon(self.cfg.train.rounds)),
        }
        if d.noise_multiplier == 0:
            details["note"] = "noise_multiplier = 0: no privacy guarantee (epsilon is infinite)"
        return details

    def wire_gradient(self, module: nn.Module, inputs: torch.Tensor, labels: torch.Tensor,
                      generator: torch.Generator) -> dict[str, torch.Tensor]:
        """The server sees each client's clipped update before it adds its noise to the
        aggregate: ``-clip(-lr * g, C) / lr``."""
        grads = super().wire_gradient(module, inputs, labels, generator)
        lr = self.cfg.train.lr
        d = self.settings(DpFedAvgParams)
        clipped, _ = clip_by_l2({k: -lr * g for k, g in grads.items()}, d.clip_norm)
        return {k: -v / lr for k, v in clipped.items()}
