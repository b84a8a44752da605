"""Pure aggregation maths over model states (dicts of tensors).

>>> import torch
>>> a, b = {"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([3.0, 6.0])}
>>> mean_state([a, b])["w"].tolist()
[2.0, 4.0]
>>> mean_state([a, b], weights=[3, 1])["w"].tolist()
[1.5, 3.0]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

__all__ = ["mean_state"]


def mean_state(
    states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float] | None = None
) -> dict[str, torch.Tensor]:
    """Element-wise (weighted) mean of states with identical keys and shapes.

    The sum runs in float64 and is cast back, so the result does not depend on how large the
    weights are and hardly on the order of the states.
    """
    if not states:
        raise ValueError("Expected at least one state to average, got none")
    keys = list(states[0].keys())
    for i, s in enumerate(states[1:], start=1):
        if list(s.keys()) != keys:
            raise ValueError(f"State {i} has keys {sorted(s)} but state 0 has {sorted(keys)}")
    if weights is None:
        weights = [1.0] * len(states)
    if len(weights) != len(states):
        raise ValueError(f"Expected {len(states)} weights, got {len(weights)}")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"Expected non-negative weights with a positive sum, got {list(weights)}")
    total = float(sum(weights))
    out: dict[str, torch.Tensor] = {}
    for key in keys:
        ref = states[0][key]
        acc = torch.zeros(ref.shape, dtype=torch.float64)
        for s, w in zip(states, weights):
            if s[key].shape != ref.shape:
                raise ValueError(f"`{key}` has shape {tuple(s[key].shape)} in one state and {tuple(ref.shape)} in another")
            acc.add_(s[key].double(), alpha=float(w) / total)
        out[key] = acc.to(ref.dtype)
    return out
