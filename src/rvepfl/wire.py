"""What crosses the wire, as the server sees it: the shared module's path and one step's gradient.

A method says which part of its model the server holds (:class:`SharedPath`: the shared module
and how a client turns an image into that module's input) and what the server sees of one local
step (:meth:`rvepfl.methods.base.Method.wire_gradient`, built on :func:`observed_gradient`). The
attacks (``rvepfl.attacks``) receive exactly that and never ask which method produced it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from rvepfl.errors import RvepflError

__all__ = ["SharedPath", "evaluating", "observed_gradient", "parameter_gradients"]


@dataclass(frozen=True)
class SharedPath:
    """The shared module the server holds, as a path from a client's input to the logits.

    Attributes
    ----------
    module
        The shared module (the server knows its weights; its gradient or update is uploaded).
    to_input
        The client's map from an image x to the module's input (the identity when the module
        reads images; a private encoder's sample z otherwise).
    reads_images
        Whether the module's input is the image itself (then its range is known to an attacker).
    """

    module: nn.Module
    to_input: Callable[[torch.Tensor], torch.Tensor]
    reads_images: bool


@contextmanager
def evaluating(model: nn.Module) -> Iterator[list[nn.Parameter]]:
    """Put ``model`` in eval mode with every parameter requiring grad; restore both on exit."""
    modes = [(m, m.training) for m in model.modules()]
    params = list(model.parameters())
    flags = [p.requires_grad for p in params]
    try:
        model.eval()
        for p in params:
            p.requires_grad_(True)
        yield params
    finally:
        for p, flag in zip(params, flags):
            p.requires_grad_(flag)
        for m, mode in modes:
            m.training = mode


def parameter_gradients(
    loss: torch.Tensor, params: Sequence[torch.Tensor], *, create_graph: bool
) -> tuple[torch.Tensor, ...]:
    """d(loss)/d(param) for each of ``params`` (zeros for a parameter the loss does not use)."""
    grads = torch.autograd.grad(loss, params, create_graph=create_graph, allow_unused=True)
    return tuple(torch.zeros_like(p) if g is None else g for g, p in zip(grads, params))


def observed_gradient(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, ...]:
    """The gradient a client uploads: d(mean cross-entropy of ``model(x)`` vs ``y``)/d(parameter).

    The model is evaluated in eval mode (no dropout), the attacker's best case; its modes and
    ``requires_grad`` flags are restored afterwards, and no ``.grad`` is written.

    Parameters
    ----------
    model
        The shared model.
    x
        (B, C, H, W) batch in the model's input space.
    y
        (B,) integer labels.

    Returns
    -------
    tuple of torch.Tensor
        One detached gradient per entry of ``model.parameters()``, in that order.
    """
    if not isinstance(x, torch.Tensor) or x.ndim != 4 or not x.is_floating_point():
        got = f"{x.dtype} of shape {tuple(x.shape)}" if isinstance(x, torch.Tensor) else type(x).__name__
        raise RvepflError(f"Expected `x` to be a float (B, C, H, W) tensor, got {got}")
    y = torch.as_tensor(y)
    if y.shape != (len(x),) or y.is_floating_point() or y.dtype == torch.bool:
        raise RvepflError(f"Expected `y` to be integers of shape ({len(x)},), got {y.dtype} of shape {tuple(y.shape)}")
    with evaluating(model) as params:
        loss = F.cross_entropy(model(x), y.long().to(x.device))
        grads = parameter_gradients(loss, params, create_graph=False)
    return tuple(g.detach() for g in grads)
