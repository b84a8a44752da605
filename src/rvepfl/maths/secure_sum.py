"""The arithmetic of secure aggregation (SecAgg+), without its cryptography.

Under SecAgg+ (Bell et al., CCS 2020, as Flower implements it) a client does not send its
state ``x`` (a list of float arrays) but integers: its aggregation weight ``w`` quantised against
the largest weight ``W`` a client can claim, ``q = round(w / W * Q)``, followed by each value
scaled by ``q / Q``, clipped to ``[-c, c]``, shifted by ``c`` and stochastically rounded onto
``Q / (2c)`` steps (:func:`encode`). It adds masks to these integers that cancel in the sum
modulo ``M``, so the server learns only the sum of the clients' integers
(:func:`sum_encoded`), from which it recovers the weighted mean ``sum(w_i x_i) / sum(w_i)``
(:func:`decode`). With ``Q = 2**22`` and ``c = 8`` one step is about 3.8e-6.

The masks change nothing in the sum, so the same numbers come from the integers summed in the
clear: the in-process engine does exactly that (:class:`QuantisedMean`), and the Flower engine
runs Flower's protocol, whose client rounds draw their stochastic rounding from NumPy's global
generator, seeded by rvepfl's ClientApp from (seed, round, client) just before the protocol
quantises (:func:`rvepfl.fl.secure_aggregation.rounding_seed`, :mod:`rvepfl.flower.client`).
``tests/unit/test_secure_sum.py`` checks :func:`encode` and :func:`decode` against Flower's own
functions, bit for bit.

>>> import numpy as np
>>> q = Quantisation()
>>> a = encode([np.array([0.5, -1.0], dtype=np.float32)], 1, 1.0, q, np.random.RandomState(0))
>>> b = encode([np.array([0.25, 1.0], dtype=np.float32)], 1, 1.0, q, np.random.RandomState(1))
>>> mean = decode(sum_encoded([a, b], q), 2, q)
>>> [round(float(v), 5) for v in mean[0]]
[0.375, 0.0]
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch

__all__ = ["Quantisation", "QuantisedMean", "decode", "encode", "sum_encoded", "total_weight"]


@dataclass(frozen=True)
class Quantisation:
    """The protocol's number format: clipping range ``c``, quantisation range ``Q`` and modulus
    ``M`` (``secure_aggregation.clipping_range``, ``quantization_range``, ``modulus_range``)."""

    clipping_range: float = 8.0
    quantization_range: int = 2**22
    modulus_range: int = 2**32


def encode(arrays: Sequence[np.ndarray], weight: int, max_weight: float, q: Quantisation,
           rng: np.random.RandomState) -> list[np.ndarray]:
    """One client's integers: its quantised weight (a one-element array) followed by each array
    scaled by that weight, clipped, shifted and stochastically rounded, drawing one uniform number
    per value from ``rng`` in array order."""
    q_weight = round(weight / max_weight * q.quantization_range)
    scale = q_weight / q.quantization_range
    steps = q.quantization_range / (2 * q.clipping_range)
    out: list[np.ndarray] = [np.array([q_weight])]
    for arr in arrays:
        value = (np.clip(arr * scale, -q.clipping_range, q.clipping_range) + q.clipping_range) * steps
        up = np.ceil(value).astype(np.int32)
        draws = rng.rand(*up.shape)
        down = draws < up - value  # round down with probability up - value: unbiased
        if up.ndim == 0:
            up = up - 1 if down else up
        else:
            up[down] -= 1
        out.append(up)
    return out


def sum_encoded(encoded: Iterable[Sequence[np.ndarray]], q: Quantisation) -> list[np.ndarray]:
    """The clients' integers summed modulo ``M``: what the server unmasks."""
    total: list[np.ndarray] | None = None
    for one in encoded:
        if total is None:
            total = [a.astype(np.int64) for a in one]
        else:
            total = [t + a for t, a in zip(total, one, strict=True)]
    if total is None:
        raise ValueError("Expected at least one client's integers, got none")
    return [t & (q.modulus_range - 1) for t in total]


def decode(summed: Sequence[np.ndarray], num_clients: int, q: Quantisation) -> list[np.ndarray]:
    """The weighted mean (float64 arrays) from the sum of ``num_clients`` clients' integers."""
    total_weight = summed[0][0]
    if total_weight <= 0:
        raise ValueError(f"Expected a positive sum of quantised weights, got {total_weight}")
    scale = q.quantization_range / total_weight
    step = (2 * q.clipping_range) / q.quantization_range
    offset = -(num_clients - 1) * q.clipping_range
    out = []
    for arr in summed[1:]:
        value = arr.astype(float) * step - q.clipping_range
        value += offset
        value *= scale
        out.append(value)
    return out


def total_weight(weights: Iterable[int], max_weight: float, q: Quantisation) -> int:
    """The sum of the quantised weights the server should unmask for clients claiming ``weights``."""
    return sum(round(w / max_weight * q.quantization_range) for w in weights)


class QuantisedMean:
    """The mean the server of a securely aggregated round learns, computed in the clear: each
    client's state encoded (:func:`encode`, its rounding drawn from a generator seeded with the
    client's rounding seed), the integers summed (:func:`sum_encoded`) and decoded
    (:func:`decode`). The states' keys are encoded in sorted order, as rvepfl's clients put them
    on the wire; the mean has the first state's order, as :class:`RunningMean`'s.

    >>> mean = QuantisedMean(Quantisation(), max_weight=1.0)
    >>> mean.add({"w": torch.tensor([0.5])}, 1, seed=0)
    >>> mean.add({"w": torch.tensor([0.25])}, 1, seed=1)
    >>> round(float(mean.result()["w"]), 5), len(mean)
    (0.375, 2)
    """

    def __init__(self, q: Quantisation, *, max_weight: float) -> None:
        self.q, self.max_weight = q, max_weight
        self._sum: list[np.ndarray] | None = None
        self._keys: list[str] = []
        self._like: dict[str, torch.Tensor] = {}
        self._count = 0

    def __len__(self) -> int:
        return self._count

    def add(self, state: dict[str, torch.Tensor], weight: int, *, seed: int) -> None:
        """Add a client's state with its aggregation weight (a whole number from 1 to the largest
        weight) and the seed (below 2**32) of its stochastic rounding."""
        if not self._keys:
            self._keys = sorted(state)
            self._like = dict(state)  # its order and dtypes
        arrays = [state[k].detach().to("cpu").numpy() for k in self._keys]
        rng = np.random.RandomState(seed)
        encoded = encode(arrays, weight, self.max_weight, self.q, rng)
        self._sum = sum_encoded([encoded] if self._sum is None else [self._sum, encoded], self.q)
        self._count += 1

    def result(self) -> dict[str, torch.Tensor]:
        """The weighted mean of the states added, each entry in its state's dtype."""
        if self._sum is None:
            raise ValueError("Expected at least one state to average, got none")
        mean = dict(zip(self._keys, decode(self._sum, self._count, self.q), strict=True))
        return {k: torch.from_numpy(mean[k]).to(ref.dtype) for k, ref in self._like.items()}
