"""DP-FedAvg with central differential privacy (McMahan et al., ICLR 2018), fixed clipping.

As Flower's ``DifferentialPrivacyServerSideFixedClipping`` does it:

- **client**: uploads its model update (trained shared state minus the global state it
  received), clipped to L2 norm at most ``dp_fedavg.clip_norm`` (all tensors as one vector);
- **server**: averages the K clipped updates with equal weights (``train.aggregation`` is
  ignored: the noise is calibrated to an unweighted mean), adds N(0, s^2) noise with
  s = noise_multiplier * clip_norm / K to every coordinate (the ``noise`` stream of
  (round, -1)), and adds the result to the global state.

Epsilon (at ``dp_fedavg.delta``) comes from Opacus's RDP accountant: one sampled Gaussian step
per round with sample rate K / N. As in Flower and TensorFlow Federated, the engine's
fixed-size draw of K clients is accounted as Poisson sampling with that rate (exact when every
client takes part in every round). Epsilon depends only on the round number, so a resumed run
reports the same value.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from typing import Any

import torch
from torch import nn

from rvepfl.config import Config
from rvepfl.fl.aggregate import RunningMean
from rvepfl.methods.base import DataSpec, RoundContext, Upload
from rvepfl.methods.fedavg import FedAvg
from rvepfl.methods.nbafl import SERVER
from rvepfl.privacy import add_gaussian_noise, clip_by_l2, rdp_epsilon
from rvepfl.seeding import torch_generator

__all__ = ["DpFedAvg"]


def _finite(eps: float) -> float | None:
    return eps if math.isfinite(eps) else None


class DpFedAvg(FedAvg):
    name = "dp-fedavg"
    description = "DP-FedAvg: clipped updates, server Gaussian noise, RDP accounting (McMahan et al., 2018)"
    uploads_update = True

    def __init__(self, cfg: Config, spec: DataSpec) -> None:
        super().__init__(cfg, spec)
        self.num_clients = cfg.data.num_clients
        self.per_round = cfg.clients_per_round
        self.sample_rate = self.per_round / self.num_clients
        self._rounds_accounted = 0
        self._epsilon = 0.0

    def epsilon(self, rounds: int) -> float:
        """Epsilon after ``rounds`` rounds (Opacus RDP accountant; inf without noise)."""
        d = self.cfg.dp_fedavg
        return rdp_epsilon(noise_multiplier=d.noise_multiplier, sample_rate=self.sample_rate, steps=rounds,
                           delta=d.delta)

    def upload(
        self, model: nn.Module, ctx: RoundContext, num_samples: int, received: dict[str, torch.Tensor]
    ) -> Upload:
        trained = super().upload(model, ctx, num_samples, received).state
        update = {k: v - received[k].to(v.dtype) for k, v in trained.items()}
        clipped, norm = clip_by_l2(update, self.cfg.dp_fedavg.clip_norm)
        assert ctx.client is not None
        return Upload(client=ctx.client, num_samples=num_samples, state=clipped, info={"update_norm": norm})

    def aggregate(
        self, uploads: Iterable[Upload], global_state: dict[str, torch.Tensor], ctx: RoundContext
    ) -> dict[str, torch.Tensor]:
        d = self.cfg.dp_fedavg
        running = RunningMean(float(len(ctx.clients)) if ctx.clients else None)
        for sent in uploads:
            running.add(sent.state)
        mean_update = running.result()
        std = d.noise_multiplier * d.clip_norm / len(running)
        noisy = add_gaussian_noise(mean_update, std, torch_generator(ctx.seed, "noise", ctx.round, SERVER))
        new = {k: (v.double() + noisy[k].double()).to(v.dtype) for k, v in global_state.items()}
        self._rounds_accounted = ctx.round
        self._epsilon = self.epsilon(ctx.round)
        return new

    def summary(self) -> dict[str, Any]:
        d = self.cfg.dp_fedavg
        details: dict[str, Any] = {
            "noise_multiplier": d.noise_multiplier,
            "clip_norm": d.clip_norm,
            "delta": d.delta,
            "N": self.num_clients,
            "K": self.per_round,
            "sample_rate": self.sample_rate,
            "noise_std": d.noise_multiplier * d.clip_norm / self.per_round,
            "accountant": "opacus RDP (sampled Gaussian, one step per round)",
            "rounds_accounted": self._rounds_accounted,
            "epsilon": _finite(self._epsilon),
            "epsilon_after_all_rounds": _finite(self.epsilon(self.cfg.train.rounds)),
        }
        if d.noise_multiplier == 0:
            details["note"] = "noise_multiplier = 0: no privacy guarantee (epsilon is infinite)"
        return details
