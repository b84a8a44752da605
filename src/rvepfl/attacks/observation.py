"""What a gradient-inversion attack sees and returns, and the machinery every such attack shares.

An honest-but-curious server sends a model to a client and sees the gradient of the client's
loss on one batch (:class:`GradientObservation`); an attack searches for an input whose
gradient, through the same model, matches the observed one, and returns a
:class:`Reconstruction`. :func:`observed_gradient` computes the gradient a client uploads.

The attacks (:mod:`rvepfl.attacks.dlg`, :mod:`rvepfl.attacks.inverting`) read only the
observation (the model's weights, the gradient, the batch size, the input shape and range); the
ground truth reaches only the scoring. They share what this module also holds:

- :class:`GradientMatcher`: a copy of the observed model in evaluation mode (so the model itself
  is never changed), the seeded random initial guess, the dummy input's gradient, and the two
  gradient distances (DLG's squared L2, Inverting Gradients' one minus cosine);
- :func:`best_restart`: runs the random restarts and keeps the one with the lowest gradient
  loss (the attacker's choice, made from the observation alone);
- the argument checks (:func:`check_attack_arguments` and the helpers it uses).

Every random number is drawn from ``torch_generator(seed, "attack", restart)``: the same seed
gives the same result.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import torch
from torch import nn
from torch.nn import functional as F

from rvepfl.errors import RvepflError
from rvepfl.methods.wire import observed_gradient, parameter_gradients

__all__ = [
    "GradientMatcher",
    "GradientObservation",
    "Reconstruction",
    "best_restart",
    "check_attack_arguments",
    "check_int",
    "check_observation",
    "check_positive",
    "observed_gradient",
    "restart_progress",
]

_COSINE_EPS = 1e-12  # keeps 1 - cos defined when a gradient is exactly zero


# -- what the attacker sees, and what it returns -------------------------------------------------
@dataclass(frozen=True)
class GradientObservation:
    """What an honest-but-curious server sees of one upload: the shared model it sent and the gradient.

    Attributes
    ----------
    model
        The shared model as the client received it (the attacker knows its weights).
    gradients
        d(mean cross-entropy over the batch)/d(parameter), one tensor per entry of
        ``model.parameters()``, in that order and of those shapes.
    batch_size
        Number of examples in the client's batch (>= 1).
    input_shape
        (C, H, W) of the model's input.
    num_classes
        Number of classes of the model's output (>= 2).
    bounds
        Known (low, high) range of the model's input (e.g. normalised pixels), or None when the
        attacker does not know it (a private encoder's sample z).

    Raises
    ------
    RvepflError
        If a field is out of range, or the gradients do not match the model's parameters in
        number or shape, or are not finite.
    """

    model: nn.Module
    gradients: tuple[torch.Tensor, ...]
    batch_size: int
    input_shape: tuple[int, int, int]
    num_classes: int
    bounds: tuple[float, float] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.model, nn.Module):
            raise RvepflError(f"Expected `model` to be a torch.nn.Module, got {type(self.model).__name__}")
        object.__setattr__(self, "gradients", tuple(self.gradients))
        params = list(self.model.parameters())
        if not params:
            raise RvepflError("Expected `model` to have parameters: there is no gradient to invert")
        if len(self.gradients) != len(params):
            raise RvepflError(
                f"Expected `gradients` to hold one tensor per model parameter ({len(params)}), "
                f"got {len(self.gradients)}"
            )
        for i, (g, p) in enumerate(zip(self.gradients, params)):
            if not isinstance(g, torch.Tensor) or g.shape != p.shape:
                got = tuple(g.shape) if isinstance(g, torch.Tensor) else type(g).__name__
                raise RvepflError(f"Expected `gradients[{i}]` of shape {tuple(p.shape)} (the parameter's), got {got}")
            if not bool(torch.isfinite(g).all()):
                raise RvepflError(f"Expected `gradients[{i}]` to be finite, got NaN or infinite values")
        check_int("batch_size", self.batch_size, 1)
        shape = tuple(self.input_shape)
        if len(shape) != 3 or not all(isinstance(s, int) and s >= 1 for s in shape):
            raise RvepflError(f"Expected `input_shape` to be three positive ints (C, H, W), got {self.input_shape!r}")
        object.__setattr__(self, "input_shape", shape)
        check_int("num_classes", self.num_classes, 2)
        if self.bounds is not None:
            low, high = (float(b) for b in self.bounds)
            if not (math.isfinite(low) and math.isfinite(high) and low < high):
                raise RvepflError(f"Expected `bounds` to be finite (low, high) with low < high, got {self.bounds!r}")
            object.__setattr__(self, "bounds", (low, high))


@dataclass
class Reconstruction:
    """The outcome of a gradient-inversion attack.

    Attributes
    ----------
    inputs
        (B, C, H, W) reconstructed batch in the model's input space (detached).
    labels
        (B,) int64 labels the attack used (given or inferred) or recovered (DLG: the argmax of
        its soft labels).
    loss_history
        Gradient-matching loss after each iteration of the kept restart; shorter than
        ``iterations`` requested if the attack stopped early.
    iterations
        Iterations the kept run performed.
    seconds
        Wall-clock time of the whole attack (all restarts).
    restart_losses
        Gradient-matching loss of the iterate each restart returned, in restart order (not finite
        for a restart that never had a finite one); the kept restart's is the lowest finite one.
    """

    inputs: torch.Tensor
    labels: torch.Tensor
    loss_history: list[float] = field(default_factory=list)
    iterations: int = 0
    seconds: float = 0.0
    restart_losses: list[float] = field(default_factory=list)


# -- validation ---------------------------------------------------------------------------------
def check_int(name: str, value: object, minimum: int) -> int:
    """``value`` if it is an int (not a bool) >= ``minimum``; else a one-line :class:`RvepflError`.

    >>> check_int("restarts", 2, 1)
    2
    """
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise RvepflError(f"Expected `{name}` to be an int >= {minimum}, got {value!r}")
    return value


def check_positive(name: str, value: object, *, allow_zero: bool = False) -> float:
    """``value`` as a float if it is a finite number > 0 (>= 0 with ``allow_zero``); else a
    one-line :class:`RvepflError`."""
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        relation = ">= 0" if allow_zero else "> 0"
        raise RvepflError(f"Expected `{name}` to be a finite number {relation}, got {value!r}")
    return float(value)


def check_observation(obs: object) -> GradientObservation:
    """``obs`` if it is a :class:`GradientObservation`; else a :class:`TypeError`."""
    if not isinstance(obs, GradientObservation):
        raise TypeError(f"Expected `obs` to be a GradientObservation, got {type(obs).__name__}")
    return obs


def check_attack_arguments(obs: object, iterations: object, lr: object, restarts: object) -> GradientObservation:
    """Check the arguments every gradient attack takes; return the observation."""
    obs = check_observation(obs)
    check_int("iterations", iterations, 1)
    check_positive("lr", lr)
    check_int("restarts", restarts, 1)
    return obs


# -- the client's gradient ------------------------------------------------------------------------
class GradientMatcher:
    """The observed model (a private copy, in eval mode) and the gradient to match."""

    def __init__(self, obs: GradientObservation) -> None:
        self.obs = obs
        self.model = copy.deepcopy(obs.model).eval()
        self.params = list(self.model.parameters())
        for p in self.params:
            p.requires_grad_(True)
            p.grad = None
        first = self.params[0] if self.params else None
        self.device = first.device if first is not None else torch.device("cpu")
        self.dtype = first.dtype if first is not None else torch.get_default_dtype()
        self.target = [g.detach().to(p.device, p.dtype) for g, p in zip(obs.gradients, self.params)]
        self.target_norm = torch.sqrt(sum((t * t).sum() for t in self.target))

    def random_input(self, generator: torch.Generator) -> torch.Tensor:
        """A standard-normal (B, C, H, W) initial guess drawn from ``generator``."""
        x = torch.randn((self.obs.batch_size, *self.obs.input_shape), generator=generator)
        return x.to(self.device, self.dtype)

    def gradient(self, x: torch.Tensor, labels: torch.Tensor, *, create_graph: bool) -> tuple[torch.Tensor, ...]:
        """The model's gradient at ``x``: hard labels (B,) int64, or soft labels (B, K) probabilities."""
        logits = self.model(x)
        if labels.is_floating_point():
            loss = torch.sum(-labels * F.log_softmax(logits, dim=-1), dim=-1).mean()
        else:
            loss = F.cross_entropy(logits, labels)
        return parameter_gradients(loss, self.params, create_graph=create_graph)

    def l2(self, grads: Sequence[torch.Tensor]) -> torch.Tensor:
        """DLG's distance: squared L2 norm of the gradient difference, summed over layers."""
        return sum(((g - t) ** 2).sum() for g, t in zip(grads, self.target))

    def cosine(self, grads: Sequence[torch.Tensor]) -> torch.Tensor:
        """Inverting Gradients' distance: 1 - cosine similarity of the whole gradients."""
        dot = sum((g * t).sum() for g, t in zip(grads, self.target))
        norm = torch.sqrt(sum((g * g).sum() for g in grads))
        return 1 - dot / (norm * self.target_norm + _COSINE_EPS)


_Run = TypeVar("_Run")


def best_restart(restarts: int, run: Callable[[int], tuple[float, _Run]]) -> tuple[_Run, list[float]]:
    """Call ``run(r)`` for r = 0 .. restarts - 1, each returning (loss, result); keep the result
    with the lowest finite loss (the earliest on a tie, restart 0 when none is finite) and
    return it with every restart's loss.

    >>> best_restart(3, lambda r: ([2.0, 1.0, 1.0][r], r))
    (1, [2.0, 1.0, 1.0])
    """
    best: tuple[float, _Run] | None = None
    losses: list[float] = []
    for restart in range(restarts):
        loss, result = run(restart)
        losses.append(loss)
        if best is None or (math.isfinite(loss) and not loss >= best[0]):
            best = (loss, result)
    assert best is not None
    return best[1], losses


def restart_progress(progress: Callable[[int, int], None] | None, restart: int, iterations: int,
                     restarts: int) -> Callable[[int], None] | None:
    """Iteration ``i`` of restart ``restart`` told as ``progress(iterations done, iterations in
    all)`` over every restart (the gradient attacks' ``progress``); None without ``progress``.

    >>> seen = []
    >>> restart_progress(lambda done, total: seen.append((done, total)), 1, 10, 3)(4)
    >>> seen
    [(14, 30)]
    """
    if progress is None:
        return None
    return lambda i: progress(restart * iterations + i, restarts * iterations)
