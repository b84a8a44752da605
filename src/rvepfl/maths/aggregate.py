"""Pure aggregation maths over model states (dicts of tensors).

>>> import torch
>>> a, b = {"w": torch.tensor([1.0, 2.0])}, {"w": torch.tensor([3.0, 6.0])}
>>> mean_state([a, b])["w"].tolist()
[2.0, 4.0]
>>> mean_state([a, b], weights=[3, 1])["w"].tolist()
[1.5, 3.0]
>>> running = RunningMean()
>>> running.add(a); running.add(b, weight=3.0)
>>> running.result()["w"].tolist()
[2.5, 5.0]
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch

__all__ = ["RunningMean", "mean_state", "median_state", "trimmed_mean_state"]


class RunningMean:
    """Element-wise weighted mean of states with identical keys and shapes, added one at a time.

    Only the float64 running sum is held, never the states themselves, so the server's memory
    does not grow with the number of clients of a round (the engine aggregates each upload as it
    arrives). The sum runs in float64 and is cast back to each entry's dtype at the end, so the
    result does not depend on how large the weights are and hardly on the order of the states.

    ``expected_total`` is the sum of the weights the server expects (it knows which clients it
    asked): each state is then added as ``weight / expected_total`` times itself, so when every
    expected state arrives the result is bit-identical to :func:`mean_state` over all of them. If
    some never arrive (failed clients), the sum is rescaled to the weights that did.
    """

    def __init__(self, expected_total: float | None = None) -> None:
        if expected_total is not None and not expected_total > 0:
            raise ValueError(f"Expected a positive expected_total, got {expected_total}")
        self._expected = expected_total
        self._sum: dict[str, torch.Tensor] = {}
        self._dtypes: dict[str, torch.dtype] = {}
        self._weights: list[float] = []

    def __len__(self) -> int:
        """The number of states added."""
        return len(self._weights)

    def add(self, state: Mapping[str, torch.Tensor], weight: float = 1.0) -> None:
        """Add ``state`` with a non-negative ``weight``."""
        if weight < 0:
            raise ValueError(f"Expected non-negative weights with a positive sum, got {[*self._weights, weight]}")
        if not self._weights:
            self._sum = {k: torch.zeros(v.shape, dtype=torch.float64) for k, v in state.items()}
            self._dtypes = {k: v.dtype for k, v in state.items()}
        elif list(state.keys()) != list(self._sum.keys()):
            raise ValueError(f"State {len(self._weights)} has keys {sorted(state)} but state 0 has {sorted(self._sum)}")
        for key, value in state.items():
            acc = self._sum[key]
            if value.shape != acc.shape:
                raise ValueError(
                    f"`{key}` has shape {tuple(value.shape)} in one state and {tuple(acc.shape)} in another")
            scale = float(weight) / self._expected if self._expected is not None else float(weight)
            acc.add_(value.detach().to("cpu", torch.float64), alpha=scale)
        self._weights.append(float(weight))

    def result(self) -> dict[str, torch.Tensor]:
        """The weighted mean of the states added so far."""
        if not self._weights:
            raise ValueError("Expected at least one state to average, got none")
        total = sum(self._weights)
        if total <= 0:
            raise ValueError(f"Expected non-negative weights with a positive sum, got {self._weights}")
        if self._expected is None:
            return {k: (acc / total).to(self._dtypes[k]) for k, acc in self._sum.items()}
        if total == self._expected:
            return {k: acc.to(self._dtypes[k]) for k, acc in self._sum.items()}
        return {k: (acc * (self._expected / total)).to(self._dtypes[k]) for k, acc in self._sum.items()}


def mean_state(
    states: Sequence[Mapping[str, torch.Tensor]], weights: Sequence[float] | None = None
) -> dict[str, torch.Tensor]:
    """Element-wise (weighted) mean of states with identical keys and shapes (see :class:`RunningMean`)."""
    if not states:
        raise ValueError("Expected at least one state to average, got none")
    if weights is None:
        weights = [1.0] * len(states)
    if len(weights) != len(states):
        raise ValueError(f"Expected {len(states)} weights, got {len(weights)}")
    if any(w < 0 for w in weights) or sum(weights) <= 0:
        raise ValueError(f"Expected non-negative weights with a positive sum, got {list(weights)}")
    running = RunningMean(expected_total=float(sum(weights)))
    for state, weight in zip(states, weights):
        running.add(state, weight)
    return running.result()


def _stacked(states: Sequence[Mapping[str, torch.Tensor]], key: str) -> torch.Tensor:
    return torch.stack([s[key].detach().to("cpu", torch.float64) for s in states])


def _check_states(states: Sequence[Mapping[str, torch.Tensor]]) -> None:
    if not states:
        raise ValueError("Expected at least one state to aggregate, got none")
    keys = list(states[0])
    for i, state in enumerate(states[1:], start=1):
        if list(state) != keys:
            raise ValueError(f"State {i} has keys {sorted(state)} but state 0 has {sorted(keys)}")
        for key in keys:
            if state[key].shape != states[0][key].shape:
                raise ValueError(f"`{key}` has shape {tuple(state[key].shape)} in one state and "
                                 f"{tuple(states[0][key].shape)} in another")


def _middle_mean(states: Sequence[Mapping[str, torch.Tensor]], cut: int) -> dict[str, torch.Tensor]:
    """For every coordinate, the mean of the values left when the ``cut`` largest and ``cut``
    smallest of the states' values are dropped; in float64, cast back to each entry's dtype."""
    _check_states(states)
    n = len(states)
    out = {}
    for key, ref in states[0].items():
        kept = _stacked(states, key).sort(dim=0).values[cut : n - cut]
        out[key] = kept.mean(dim=0).to(ref.dtype)
    return out


def median_state(states: Sequence[Mapping[str, torch.Tensor]]) -> dict[str, torch.Tensor]:
    """Coordinate-wise median of states with identical keys and shapes; with an even number of
    states, the mean of the two middle values (as NumPy's median). Computed in float64, cast
    back to each entry's dtype.

    >>> import torch
    >>> states = [{"w": torch.tensor([1.0, -5.0])}, {"w": torch.tensor([2.0, 0.0])},
    ...           {"w": torch.tensor([1e4, 1.0])}]
    >>> median_state(states)["w"].tolist()
    [2.0, 0.0]
    >>> median_state(states[:2])["w"].tolist()
    [1.5, -2.5]
    """
    return _middle_mean(states, (len(states) - 1) // 2)  # the middle value, or the middle two


def trimmed_mean_state(states: Sequence[Mapping[str, torch.Tensor]], fraction: float) -> dict[str, torch.Tensor]:
    """Coordinate-wise trimmed mean: for every coordinate, the ``floor(fraction * n)`` largest and
    as many smallest of the n values are dropped and the rest averaged. ``fraction`` is in
    [0, 0.5); at least one value must remain. Computed in float64, cast back.

    >>> import torch
    >>> states = [{"w": torch.tensor([v])} for v in (1.0, 2.0, 3.0, 4.0, 1e4)]
    >>> trimmed_mean_state(states, 0.2)["w"].tolist()  # drops 1.0 and 1e4
    [3.0]
    >>> trimmed_mean_state(states, 0.0)["w"].tolist() == mean_state(states)["w"].tolist()
    True
    """
    if not 0 <= fraction < 0.5:
        raise ValueError(f"Expected `fraction` in [0, 0.5), got {fraction!r}")
    return _middle_mean(states, int(fraction * len(states)))
