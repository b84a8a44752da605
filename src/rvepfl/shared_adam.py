"""The published code's one optimiser for every client: Adam state that passes from client to client.

The published code kept one Keras Adam for the whole federation, so the moments and step counts a
client's training left behind were where the next client's training started, round after round.
``train.optimiser = "published-shared"`` reproduces it (to measure what it adds; it is not a
federation: one client's optimiser state reaches the next). The state is a *carrier*: a flat dict
of tensors with, per parameter name, ``NAME/step``, ``NAME/exp_avg`` and ``NAME/exp_avg_sq``. A
step of 0 with zero moments is exactly a fresh Adam's state, so the carrier starts as zeros.

>>> from torch import nn
>>> carrier = initial_carrier(nn.Linear(2, 1))
>>> sorted(carrier)[:3]
['bias/exp_avg', 'bias/exp_avg_sq', 'bias/step']
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

__all__ = ["initial_carrier", "load_carrier", "store_carrier"]

_PARTS = ("step", "exp_avg", "exp_avg_sq")


def initial_carrier(model: nn.Module) -> dict[str, torch.Tensor]:
    """A fresh Adam's state for every parameter of ``model``, on the CPU."""
    out: dict[str, torch.Tensor] = {}
    for name, p in model.named_parameters():
        out[f"{name}/step"] = torch.zeros((), dtype=torch.float32)
        out[f"{name}/exp_avg"] = torch.zeros(p.shape, dtype=p.dtype)
        out[f"{name}/exp_avg_sq"] = torch.zeros(p.shape, dtype=p.dtype)
    return out


def _names(model: nn.Module) -> dict[int, str]:
    return {id(p): name for name, p in model.named_parameters()}


def load_carrier(optimizer: torch.optim.Adam, model: nn.Module, params: Sequence[nn.Parameter],
                 carrier: dict[str, torch.Tensor]) -> None:
    """Give ``optimizer`` (a new Adam over ``params``, parameters of ``model``) the carried state
    of each parameter that has taken a step; the others start fresh, as they would anyway."""
    names = _names(model)
    for p in params:
        name = names[id(p)]
        step = carrier[f"{name}/step"]
        if float(step) == 0.0:
            continue
        # torch's Adam keeps its step as a float32 tensor: on the parameter's device when fused.
        fused = bool(optimizer.param_groups[0].get("fused"))
        optimizer.state[p] = {
            "step": step.clone().to(p.device if fused else "cpu"),
            "exp_avg": carrier[f"{name}/exp_avg"].to(p.device, copy=True),
            "exp_avg_sq": carrier[f"{name}/exp_avg_sq"].to(p.device, copy=True),
        }


def store_carrier(optimizer: torch.optim.Adam, model: nn.Module, params: Sequence[nn.Parameter],
                  carrier: dict[str, torch.Tensor]) -> None:
    """Copy ``optimizer``'s state of ``params`` back into ``carrier`` (in place), for the next client."""
    names = _names(model)
    for p in params:
        state = optimizer.state.get(p)
        if not state:
            continue
        name = names[id(p)]
        for part in _PARTS:
            key = f"{name}/{part}"
            carrier[key] = state[part].detach().to("cpu", copy=True).reshape(carrier[key].shape)
