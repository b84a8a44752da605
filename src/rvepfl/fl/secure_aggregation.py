"""Secure aggregation in the engines: what the server of a round learns when it may not read one
upload (``[secure_aggregation]``).

The method's server step is unchanged: it still takes the mean of the round's uploads
(:meth:`rvepfl.methods.base.Method.mean_of`) and does with it what it always does (DP-FedAvg adds
its noise to it, NbAFL its downlink noise); only the way the mean is learnt changes, through the
method's :attr:`~rvepfl.methods.base.Method.secure_mean`:

- in-process (:class:`ClearSecureMean`): the protocol's quantisation computed in the clear
  (:class:`rvepfl.maths.secure_sum.QuantisedMean`), which gives the numbers the protocol gives,
  its masks cancelling in the sum;
- on Flower (:class:`rvepfl.flower.secagg.ProtocolMean`): Flower's SecAgg+ protocol, whose
  unmasked sum is the only thing the server holds.

Which methods can: those whose server takes a mean (``train.aggregation`` "mean" or "weighted",
no ``train.max_update_norm``; :func:`rvepfl.config` refuses the rest in one line).
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import torch

from rvepfl.engine_config import RunConfig
from rvepfl.maths.secure_sum import Quantisation, QuantisedMean
from rvepfl.methods import Method, RoundContext, Upload
from rvepfl.seeding import derive_seed

__all__ = ["ClearSecureMean", "describe", "max_weight", "quantisation", "round_shares", "rounding_seed"]


def rounding_seed(seed: int, round_: int, client: int) -> int:
    """The seed (below 2**32, as NumPy's legacy generator takes it) of ``client``'s stochastic
    rounding in ``round_``: the ``secure-aggregation`` stream of (round, client)."""
    return derive_seed(seed, "secure-aggregation", round_, client) % 2**32


def quantisation(cfg: RunConfig) -> Quantisation:
    """The protocol's number format from ``[secure_aggregation]``."""
    s = cfg.secure_aggregation
    return Quantisation(clipping_range=s.clipping_range, quantization_range=s.quantization_range,
                        modulus_range=s.modulus_range)


def max_weight(method: Method) -> float:
    """The largest aggregation weight any client of the run can claim (the protocol scales every
    weight by it): the largest training split with ``train.aggregation = "weighted"``, else 1."""
    sizes = method.spec.client_train_sizes
    return float(max((method.aggregation_weight(n) for n in sizes), default=1))


def round_shares(cfg: RunConfig, num_clients: int) -> tuple[int, int]:
    """(shares, reconstruction threshold) of a round of ``num_clients`` clients: the configured
    values, 0 meaning every client and more than half of the shares (at least 2)."""
    s = cfg.secure_aggregation
    shares = min(s.num_shares or num_clients, num_clients)
    threshold = s.reconstruction_threshold or max(2, shares // 2 + 1)
    return shares, min(threshold, shares)


def describe(cfg: RunConfig, method: Method, masked: bool) -> dict[str, Any]:
    """The summary's ``secure_aggregation`` entry: how the server learnt each round's mean."""
    s = cfg.secure_aggregation
    shares, threshold = round_shares(cfg, cfg.clients_per_round)
    return {
        "how": ("Flower's SecAgg+ protocol: the server held only the masked uploads and the mean it unmasked"
                if masked else "the protocol's quantisation in the clear (in-process: the numbers SecAgg+ gives)"),
        "shares": shares, "reconstruction_threshold": threshold,
        "dropouts_tolerated_per_neighbourhood": shares - threshold,
        "clipping_range": s.clipping_range, "quantization_range": s.quantization_range,
        "modulus_range": s.modulus_range, "max_weight": max_weight(method),
        "quantisation_step": 2 * s.clipping_range / s.quantization_range,
    }


class ClearSecureMean:
    """The in-process engine's :attr:`~rvepfl.methods.base.Method.secure_mean`: every upload
    quantised as its client would quantise it under the protocol, then summed and decoded."""

    masked = False
    """The uploads reach this server in the clear (it quantises them itself)."""

    def __init__(self, cfg: RunConfig, method: Method) -> None:
        self.q = quantisation(cfg)
        self.max_weight = max_weight(method)

    def __call__(self, uploads: Iterable[Upload], method: Method, ctx: RoundContext) -> dict[str, torch.Tensor]:
        mean = QuantisedMean(self.q, max_weight=self.max_weight)
        for sent in uploads:
            mean.add(sent.state, method.aggregation_weight(sent.num_samples),
                     seed=rounding_seed(ctx.seed, ctx.round, sent.client))
        return mean.result()
