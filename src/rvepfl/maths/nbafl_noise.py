r"""Noise levels of NbAFL (Wei et al., "Federated Learning with Differential Privacy: Algorithms
and Performance Analysis", IEEE TIFS 15, 2020; arXiv 1911.00222).

Symbols as in the paper: :math:`\epsilon, \delta` the privacy budget, :math:`C` the clipping
threshold of each client's *parameters*, :math:`m` the smallest local training set,
:math:`N` the number of clients, :math:`K` the clients scheduled per round, :math:`T` the
number of aggregations (rounds) and :math:`L` the number of exposures of a client's local
parameters (uploads it makes).

- Gaussian mechanism constant: :math:`c = \sqrt{2\ln(1.25/\delta)}`.
- Uplink sensitivity: :math:`\Delta s_U = 2C/m`.
- Uplink noise (each client, every upload): :math:`\sigma_U = c L \Delta s_U / \epsilon`.
- Downlink noise (the server, after aggregating), all :math:`N` clients every round:
  :math:`\sigma_D = 2cC\sqrt{T^2 - L^2 N} / (m N \epsilon)` if :math:`T > L\sqrt{N}`, else 0.
- Downlink noise with :math:`K`-random scheduling (:math:`K < N`):
  :math:`\sigma_D = 2cC\sqrt{T^2/b^2 - L^2 K} / (m K \epsilon)` if :math:`T > \epsilon/\gamma`,
  else 0, with :math:`b = -\frac{T}{\epsilon}\ln(1 - \frac{N}{K} + \frac{N}{K}e^{-\epsilon/T})`
  and :math:`\gamma = -\ln(1 - \frac{K}{N} + \frac{K}{N}e^{-\epsilon/(L\sqrt{K})})`.

The condition :math:`T > \epsilon/\gamma` is equivalent to :math:`T^2/b^2 > L^2 K` *and* to the
logarithm in :math:`b` having a positive argument, so whenever the formula for
:math:`\sigma_D` is used, :math:`b` is defined and the square root is of a positive number;
:func:`downlink_sigma` still checks both and says why it returns 0.

With all clients every round, :math:`L = T` (a client uploads once per round) makes the
uplink noise alone enough for the downlink (:math:`T \le T\sqrt{N}`), so :math:`\sigma_D = 0`.

>>> round(gaussian_constant(0.01), 6)
3.107511
>>> round(uplink_sigma(epsilon=60.0, delta=0.01, clip_norm=20.0, min_samples=900, exposures=10), 6)
0.023019
>>> downlink_sigma(epsilon=60.0, delta=0.01, clip_norm=20.0, min_samples=900, num_clients=10,
...                rounds=10, exposures=10).sigma
0.0
"""

from __future__ import annotations

import math
from dataclasses import dataclass

__all__ = [
    "Downlink",
    "NbaflNoise",
    "downlink_sigma",
    "gaussian_constant",
    "nbafl_noise",
    "uplink_sensitivity",
    "uplink_sigma",
]


_COVERED = "the uplink noise already covers the downlink"


def _positive(name: str, value: float) -> float:
    if not (isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value) and value > 0):
        raise ValueError(f"Expected `{name}` > 0, got {value!r}")
    return float(value)


def _count(name: str, value: int) -> int:
    if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
        raise ValueError(f"Expected `{name}` to be an integer >= 1, got {value!r}")
    return value


def gaussian_constant(delta: float) -> float:
    r"""The Gaussian mechanism's :math:`c = \sqrt{2\ln(1.25/\delta)}`."""
    if not (isinstance(delta, (int, float)) and 0 < delta < 1):
        raise ValueError(f"Expected `delta` in (0, 1), got {delta!r}")
    return math.sqrt(2.0 * math.log(1.25 / delta))


def uplink_sensitivity(clip_norm: float, min_samples: int) -> float:
    r""":math:`\Delta s_U = 2C/m`: how far one sample can move a client's clipped parameters."""
    return 2.0 * _positive("clip_norm", clip_norm) / _count("min_samples", min_samples)


def uplink_sigma(*, epsilon: float, delta: float, clip_norm: float, min_samples: int, exposures: int) -> float:
    r""":math:`\sigma_U = c L \Delta s_U / \epsilon`, the std of each client's upload noise."""
    eps = _positive("epsilon", epsilon)
    L = _count("exposures", exposures)
    return gaussian_constant(delta) * L * uplink_sensitivity(clip_norm, min_samples) / eps


@dataclass(frozen=True)
class Downlink:
    """The server's noise std and why it is what it is."""

    sigma: float
    reason: str
    b: float | None = None
    """K-random scheduling only: the paper's b (None when its logarithm is undefined)."""
    gamma: float | None = None
    """K-random scheduling only: the paper's gamma."""


def downlink_sigma(
    *,
    epsilon: float,
    delta: float,
    clip_norm: float,
    min_samples: int,
    num_clients: int,
    rounds: int,
    exposures: int,
    clients_per_round: int | None = None,
) -> Downlink:
    r"""The std :math:`\sigma_D` of the noise the server adds to the aggregate, with the reason.

    ``clients_per_round`` = K; ``None`` or ``num_clients`` means every client every round.
    """
    eps = _positive("epsilon", epsilon)
    C = _positive("clip_norm", clip_norm)
    c = gaussian_constant(delta)
    m = _count("min_samples", min_samples)
    N = _count("num_clients", num_clients)
    T = _count("rounds", rounds)
    L = _count("exposures", exposures)
    K = N if clients_per_round is None else _count("clients_per_round", clients_per_round)
    if K > N:
        raise ValueError(f"Expected `clients_per_round` <= num_clients ({N}), got {K}")
    if K == N:
        threshold = L * math.sqrt(N)
        if not T > threshold:
            return Downlink(0.0, f"T = {T} <= L*sqrt(N) = {threshold:.6g}: {_COVERED}")
        sigma = 2.0 * c * C * math.sqrt(T * T - L * L * N) / (m * N * eps)
        return Downlink(sigma, f"T = {T} > L*sqrt(N) = {threshold:.6g}")
    q = K / N
    gamma = -math.log(1.0 - q + q * math.exp(-eps / (L * math.sqrt(K))))
    arg = 1.0 - N / K + (N / K) * math.exp(-eps / T)
    b = -(T / eps) * math.log(arg) if arg > 0 else None
    if not T > eps / gamma:
        why = "" if b is not None else f"; b is undefined (log of {arg:.6g} <= 0)"
        return Downlink(0.0, f"T = {T} <= epsilon/gamma = {eps / gamma:.6g}: {_COVERED}{why}", b, gamma)
    if b is None or b <= 0:  # pragma: no cover - excluded analytically by T > epsilon/gamma
        raise ValueError(f"NbAFL's b is undefined for N={N}, K={K}, T={T}, epsilon={eps} (log of {arg!r})")
    inner = T * T / (b * b) - L * L * K
    if inner <= 0:  # only by rounding, at the boundary T = epsilon/gamma
        return Downlink(0.0, f"T^2/b^2 - L^2*K = {inner:.3g} <= 0 (at the boundary T = epsilon/gamma)", b, gamma)
    sigma = 2.0 * c * C * math.sqrt(inner) / (m * K * eps)
    return Downlink(sigma, f"T = {T} > epsilon/gamma = {eps / gamma:.6g}", b, gamma)


@dataclass(frozen=True)
class NbaflNoise:
    """Every quantity of NbAFL's noise calibration, named as in the paper."""

    epsilon: float
    delta: float
    C: float
    m: int
    N: int
    K: int
    T: int
    L: int
    c: float
    sensitivity_u: float
    sigma_u: float
    downlink: Downlink

    @property
    def sigma_d(self) -> float:
        return self.downlink.sigma

    def as_dict(self) -> dict[str, float | int | str | None]:
        return {
            "epsilon": self.epsilon, "delta": self.delta, "C": self.C, "m": self.m, "N": self.N,
            "K": self.K, "T": self.T, "L": self.L, "c": self.c, "sensitivity_u": self.sensitivity_u,
            "sigma_u": self.sigma_u, "sigma_d": self.sigma_d, "downlink": self.downlink.reason,
            "scheduling": "all clients every round" if self.K == self.N else "K-random",
            "b": self.downlink.b, "gamma": self.downlink.gamma,
        }


def nbafl_noise(
    *,
    epsilon: float,
    delta: float,
    clip_norm: float,
    min_samples: int,
    num_clients: int,
    rounds: int,
    exposures: int,
    clients_per_round: int | None = None,
) -> NbaflNoise:
    """Both noise levels of NbAFL and the quantities they come from."""
    K = num_clients if clients_per_round is None else clients_per_round
    down = downlink_sigma(epsilon=epsilon, delta=delta, clip_norm=clip_norm, min_samples=min_samples,
                          num_clients=num_clients, rounds=rounds, exposures=exposures, clients_per_round=K)
    return NbaflNoise(
        epsilon=float(epsilon), delta=float(delta), C=float(clip_norm), m=min_samples, N=num_clients, K=K,
        T=rounds, L=exposures, c=gaussian_constant(delta),
        sensitivity_u=uplink_sensitivity(clip_norm, min_samples),
        sigma_u=uplink_sigma(epsilon=epsilon, delta=delta, clip_norm=clip_norm, min_samples=min_samples,
                             exposures=exposures),
        downlink=down,
    )
