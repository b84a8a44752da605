"""Pure differential-privacy noise over model states (dicts of tensors): L2 norm, clipping, Gaussian noise.

A state is treated as *one* vector, the concatenation of all its tensors: clipping bounds the L2
norm of that vector, and noise is drawn independently for every coordinate. Noise always comes
from an explicit :class:`torch.Generator` (a named stream of :mod:`rvepfl.seeding`), never from a
global random number generator.

>>> import torch
>>> state = {"w": torch.tensor([3.0, 0.0]), "b": torch.tensor([4.0])}
>>> clipped, norm = clip_by_l2(state, 1.0)
>>> norm, clipped["w"].tolist(), clipped["b"].tolist()
(5.0, [0.6000000238418579, 0.0], [0.800000011920929])
>>> noisy = add_gaussian_noise(state, 0.0, torch.Generator().manual_seed(0))
>>> torch.equal(noisy["w"], state["w"])
True
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch

__all__ = ["add_gaussian_noise", "clip_by_l2", "l2_norm"]


def _check_floating(state: Mapping[str, torch.Tensor]) -> None:
    if not state:
        raise ValueError("Expected a state with at least one tensor, got an empty one")
    for key, value in state.items():
        if not isinstance(value, torch.Tensor):
            raise TypeError(f"Expected `{key}` to be a torch.Tensor, got {type(value).__name__}")
        if not value.is_floating_point():
            raise ValueError(f"Expected floating-point tensors, got `{key}` of dtype {value.dtype}")


def l2_norm(state: Mapping[str, torch.Tensor]) -> float:
    """L2 norm of the concatenation of all tensors of ``state`` (summed in float64).

    >>> l2_norm({"a": torch.tensor([3.0]), "b": torch.tensor([[4.0]])})
    5.0
    """
    _check_floating(state)
    total = sum(float(v.detach().double().pow(2).sum()) for v in state.values())
    return math.sqrt(total)


def clip_by_l2(
    state: Mapping[str, torch.Tensor], clip_norm: float
) -> tuple[dict[str, torch.Tensor], float]:
    """Scale ``state`` so that its L2 norm (all tensors as one vector) is at most ``clip_norm``.

    Returns the clipped copy, ``w / max(1, ||w|| / clip_norm)``, and the norm before clipping.
    A state already inside the ball is returned unchanged (as a copy). Dtypes and devices are
    kept.
    """
    if not (isinstance(clip_norm, (int, float)) and math.isfinite(clip_norm) and clip_norm > 0):
        raise ValueError(f"Expected `clip_norm` > 0, got {clip_norm!r}")
    norm = l2_norm(state)
    scale = 1.0 / max(1.0, norm / clip_norm)
    if scale == 1.0:
        return {k: v.detach().clone() for k, v in state.items()}, norm
    return {k: (v.detach().double() * scale).to(v.dtype) for k, v in state.items()}, norm


def add_gaussian_noise(
    state: Mapping[str, torch.Tensor], std: float, generator: torch.Generator
) -> dict[str, torch.Tensor]:
    """A copy of ``state`` with independent N(0, std^2) noise added to every coordinate.

    The noise is drawn from ``generator`` on the generator's device, tensor by tensor in the
    state's key order, so the same generator seed gives the same noise. ``std = 0`` adds nothing
    and draws nothing.
    """
    if not (isinstance(std, (int, float)) and math.isfinite(std) and std >= 0):
        raise ValueError(f"Expected `std` >= 0, got {std!r}")
    if not isinstance(generator, torch.Generator):
        raise TypeError(f"Expected `generator` to be a torch.Generator, got {type(generator).__name__}")
    _check_floating(state)
    if std == 0:
        return {k: v.detach().clone() for k, v in state.items()}
    out: dict[str, torch.Tensor] = {}
    for key, value in state.items():
        dtype = value.dtype if value.dtype in (torch.float32, torch.float64) else torch.float32
        noise = torch.randn(value.shape, generator=generator, dtype=dtype, device=generator.device)
        out[key] = (value.detach() + (noise * std).to(device=value.device, dtype=value.dtype))
    return out
