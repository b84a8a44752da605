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
- :class:`BatchedMatcher`: Inverting Gradients' distance for many dummy batches at once (several
  observations of one model, several restarts each), every row against its own observation,
  for models built of ``nn.Linear`` and ``nn.Conv2d`` layers (:func:`batched_support`);
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
from typing import Any, TypeVar

import torch
from torch import nn
from torch.nn import functional as F

from rvepfl.errors import RvepflError
from rvepfl.wire import observed_gradient, parameter_gradients

__all__ = [
    "BatchedMatcher",
    "GradientMatcher",
    "GradientObservation",
    "Reconstruction",
    "batched_support",
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


def check_positive(name: str, value: Any, *, allow_zero: bool = False) -> float:
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
        self.target_norm = torch.sqrt(sum((t * t).sum() for t in self.target))  # type: ignore[arg-type]  # a sum of tensors is a tensor

    def random_input(self, generator: torch.Generator) -> torch.Tensor:
        """A standard-normal (B, C, H, W) initial guess drawn from ``generator``."""
        return _random_input(self.obs, generator, self.device, self.dtype)

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
        return sum(((g - t) ** 2).sum() for g, t in zip(grads, self.target))  # type: ignore[return-value]  # a tensor

    def cosine(self, grads: Sequence[torch.Tensor]) -> torch.Tensor:
        """Inverting Gradients' distance: 1 - cosine similarity of the whole gradients."""
        dot = sum((g * t).sum() for g, t in zip(grads, self.target))
        norm = torch.sqrt(sum((g * g).sum() for g in grads))  # type: ignore[arg-type]  # a sum of tensors is a tensor
        return 1 - dot / (norm * self.target_norm + _COSINE_EPS)


def _random_input(obs: GradientObservation, generator: torch.Generator, device: torch.device,
                  dtype: torch.dtype) -> torch.Tensor:
    x = torch.randn((obs.batch_size, *obs.input_shape), generator=generator)
    return x.to(device, dtype)


# -- many gradients at once ---------------------------------------------------------------------
class _Unbatchable(RvepflError):
    """A model :class:`BatchedMatcher` cannot take (found while it runs the model)."""


def _conv_padding(conv: nn.Conv2d) -> tuple[int, ...] | None:
    """``conv``'s padding as ints, or None when it pads one side more than the other."""
    if not isinstance(conv.padding, str):
        return tuple(conv.padding)
    if conv.padding == "valid":
        return (0, 0)
    totals = [d * (k - 1) for d, k in zip(conv.dilation, conv.kernel_size)]  # "same", at stride 1
    return None if any(t % 2 for t in totals) else tuple(t // 2 for t in totals)


def batched_support(model: nn.Module) -> str | None:
    """Why :class:`BatchedMatcher` cannot take ``model``, from its structure; None when it can.

    It can when every parameter is the weight or bias of exactly one ``nn.Linear`` or
    ``nn.Conv2d`` (ungrouped, zero padding, the same on both sides); activations, pooling,
    dropout and parameter-free layers in between are free. :meth:`BatchedMatcher.check` then
    checks the rest on the model itself.

    >>> batched_support(nn.Sequential(nn.Conv2d(1, 2, 3), nn.ReLU(), nn.Flatten(), nn.Linear(18, 3))) is None
    True
    >>> batched_support(nn.Sequential(nn.Linear(4, 4), nn.LayerNorm(4)))
    'parameter `1.weight` is not the weight or bias of an nn.Linear or nn.Conv2d'
    """
    owned: set[int] = set()
    for name, layer in model.named_modules():
        if type(layer) not in (nn.Linear, nn.Conv2d):
            continue
        if isinstance(layer, nn.Conv2d):
            if layer.groups != 1:
                return f"layer `{name}` is a grouped convolution (groups = {layer.groups})"
            if layer.padding_mode != "zeros":
                return f"layer `{name}` pads with {layer.padding_mode!r}, not zeros"
            if _conv_padding(layer) is None:
                return f"layer `{name}` pads one side more than the other (padding 'same' with an even kernel)"
        for p in (layer.weight, layer.bias):
            if p is None:
                continue
            if id(p) in owned:
                return f"layer `{name}` shares a parameter with another layer"
            owned.add(id(p))
    for name, p in model.named_parameters():
        if id(p) not in owned:
            return f"parameter `{name}` is not the weight or bias of an nn.Linear or nn.Conv2d"
    return None


def _same_weights(a: nn.Module, b: nn.Module) -> bool:
    if a is b:
        return True
    sa, sb = a.state_dict(), b.state_dict()
    return type(a) is type(b) and sa.keys() == sb.keys() and all(
        sa[k].shape == sb[k].shape and sa[k].dtype == sb[k].dtype and torch.equal(sa[k], sb[k].to(sa[k].device))
        for k in sa)


class BatchedMatcher:
    """Inverting Gradients' distance (one minus the cosine of the whole gradients) for many dummy
    batches at once: ``restarts`` rows for each of several observations of one model.

    Row ``i`` of a stacked input (rows, B, C, H, W) is a dummy batch for observation ``i //
    restarts``; :meth:`cosine` gives each row's ``1 - cos`` against its own observation's gradient,
    the value :meth:`GradientMatcher.cosine` gives for that row alone (up to float rounding), and
    each row's value depends on that row only, so the gradient of their sum with respect to a row
    is that row's own.

    How: one forward pass of every row's images through a private copy of the model (eval mode),
    the loss summed over the rows (each row's cross-entropy a mean over its B images), and
    autograd's gradient of that sum at the output of every ``nn.Linear`` and ``nn.Conv2d``: an
    image's own, as images do not interact in eval mode. With each layer's input that gives every
    row's parameter-gradient statistics, its dot product with the observed gradient and its squared
    norm: a convolution's per-row weight gradient is formed (unfolded input times output gradient,
    a batched matmul); a linear layer's never is (its dot product is the output gradient times the
    observed weight gradient times the input, its squared norm the product of the inputs' and the
    output gradients' Gram matrices, the "ghost norm" of fast per-example gradient clipping), which saves the
    dense layers' largest tensors. Everything stays in autograd's graph, so the input gradient of
    the distance follows.

    Models whose parameters all belong to ``nn.Linear`` and ``nn.Conv2d`` layers qualify
    (:func:`batched_support`; the project's :class:`~rvepfl.models.Classifier` and
    :class:`~rvepfl.attacks.lenet.SigmoidLeNet` do); :meth:`check` confirms it on the model
    itself, against autograd, before the matcher is trusted. ``torch.func.vmap`` over
    :class:`GradientMatcher` would take any model, but it cannot run the Classifier's
    channels-last layout hints, and in a development check on a CPU its per-row gradients of the
    dense layer ran slower than one observation at a time.

    Parameters
    ----------
    observations
        Observations of one model (the same module, or modules of one type with equal weights),
        of one batch size, input shape and number of classes.
    restarts
        Rows per observation (>= 1).

    Raises
    ------
    RvepflError
        If the observations are not of one model, batch size, input shape and class count.
    """

    def __init__(self, observations: Sequence[GradientObservation], restarts: int) -> None:
        observations = [check_observation(obs) for obs in observations]
        if not observations:
            raise RvepflError("Expected at least one observation, got none")
        self.restarts = check_int("restarts", restarts, 1)
        first = observations[0]
        for i, obs in enumerate(observations[1:], 1):
            shape, first_shape = (obs.batch_size, obs.input_shape, obs.num_classes), \
                (first.batch_size, first.input_shape, first.num_classes)
            if shape != first_shape:
                raise RvepflError(f"Expected every observation to have observation 0's (batch size, input shape, "
                                  f"classes) {first_shape}, got {shape} for observation {i}")
            if not _same_weights(obs.model, first.model):
                raise RvepflError(f"Expected observations of one model, got observation {i} of another "
                                  "(a different type or weights)")
        self.observations = observations
        self.model = copy.deepcopy(first.model).eval()
        params = list(self.model.parameters())
        for p in params:
            p.requires_grad_(False)  # only the input's gradient is ever asked for
            p.grad = None
        self.device, self.dtype = params[0].device, params[0].dtype
        targets = [[g.detach().to(p.device, p.dtype) for g, p in zip(obs.gradients, params)] for obs in observations]
        # as GradientMatcher sums them, so that each observation's norm is the same number
        self.target_norm = torch.stack([torch.sqrt(sum((t * t).sum() for t in target)) for target in targets])  # type: ignore[arg-type]  # a sum of tensors
        self._row_norm = self.target_norm.repeat_interleave(self.restarts)
        index = {id(p): i for i, p in enumerate(params)}
        self._layers: dict[nn.Module, tuple[str, torch.Tensor, torch.Tensor | None]] = {}
        for name, layer in self.model.named_modules():
            if type(layer) not in (nn.Linear, nn.Conv2d):
                continue
            weight = torch.stack([t[index[id(layer.weight)]] for t in targets])
            bias = None if layer.bias is None else torch.stack([t[index[id(layer.bias)]] for t in targets])
            self._layers[layer] = (name, weight.reshape(len(targets), weight.shape[1], -1), bias)
            layer.register_forward_hook(self._record)
        self._seen: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] | None = None

    @property
    def rows(self) -> int:
        """Rows of a stacked input: observations x restarts."""
        return len(self.observations) * self.restarts

    def random_input(self, generator: torch.Generator) -> torch.Tensor:
        """A standard-normal (B, C, H, W) initial guess drawn from ``generator`` (as
        :meth:`GradientMatcher.random_input` draws it)."""
        return _random_input(self.observations[0], generator, self.device, self.dtype)

    def _record(self, layer: nn.Module, inputs: tuple[torch.Tensor, ...], output: torch.Tensor) -> torch.Tensor:
        if self._seen is not None:
            self._seen.append((layer, inputs[0], output))
        return output.clone()  # the layer's output as recorded, even if the model changes it in place

    def _statistics(self, x: torch.Tensor, labels: torch.Tensor, *,
                    create_graph: bool) -> tuple[torch.Tensor, torch.Tensor]:
        """Every row's (dot product with its observed gradient, squared norm) of its parameter gradient."""
        rows, batch = x.shape[0], x.shape[1]
        if not x.requires_grad:
            x = x.detach().requires_grad_(True)
        self._seen = []
        try:
            logits = self.model(x.reshape(rows * batch, *x.shape[2:]))
        finally:
            seen, self._seen = self._seen, None
        counts: dict[nn.Module, int] = {}
        for layer, _, _ in seen:
            counts[layer] = counts.get(layer, 0) + 1
            if counts[layer] > 1:
                raise _Unbatchable(f"layer `{self._layers[layer][0]}` runs more than once in a forward pass")
        for layer, _, z in seen:
            if not z.requires_grad:
                raise _Unbatchable(f"layer `{self._layers[layer][0]}` does not depend on the input")
        loss = F.cross_entropy(logits, labels.reshape(-1), reduction="none").view(rows, batch).mean(1).sum()
        deltas = torch.autograd.grad(loss, [z for _, _, z in seen], create_graph=create_graph, allow_unused=True)
        groups = len(self.observations)
        dot, sq = x.new_zeros(rows), x.new_zeros(rows)
        for (layer, a, _), delta in zip(seen, deltas):
            if delta is None:  # an output the loss does not use: a zero gradient, as parameter_gradients has it
                continue
            _, weight, bias = self._layers[layer]
            if isinstance(layer, nn.Linear):
                a = a.reshape(rows, -1, a.shape[-1])  # (rows, q, in): q = B x any extra dims
                delta = delta.reshape(rows, -1, delta.shape[-1])  # (rows, q, out)
                projected = torch.bmm(delta.reshape(groups, -1, delta.shape[-1]), weight).reshape(a.shape)
                dot = dot + (projected * a).sum((1, 2))
                q, fan = a.shape[1], a.shape[2] + delta.shape[2]
                if q == 1:
                    sq = sq + delta.square().sum((1, 2)) * a.square().sum((1, 2))
                elif q * fan <= a.shape[2] * delta.shape[2]:  # the Gram matrices are the smaller
                    sq = sq + (torch.bmm(delta, delta.mT) * torch.bmm(a, a.mT)).sum((1, 2))
                else:
                    sq = sq + torch.bmm(delta.mT, a).square().sum((1, 2))
                per_bias = delta.sum(1)
            else:
                # an nn.Conv2d (only those and nn.Linear are recorded) with int padding (batched_support)
                patches = F.unfold(a, layer.kernel_size, layer.dilation, _conv_padding(layer), layer.stride)  # type: ignore[arg-type]
                k, p, out = patches.shape[1], patches.shape[2], delta.shape[1]
                delta = delta.reshape(rows, batch, out, p)
                grad = torch.bmm(delta.transpose(1, 2).reshape(rows, out, batch * p),
                                 patches.reshape(rows, batch, k, p).transpose(2, 3).reshape(rows, batch * p, k))
                per_row = grad.reshape(groups, self.restarts, -1) * weight.reshape(groups, 1, -1)
                dot = dot + per_row.sum(-1).reshape(rows)
                sq = sq + grad.square().sum((1, 2))
                per_bias = delta.sum((1, 3))
            if bias is not None:
                dot = dot + (per_bias.reshape(groups, self.restarts, -1) * bias.unsqueeze(1)).sum(-1).reshape(rows)
                sq = sq + per_bias.square().sum(-1)
        return dot, sq

    def cosine(self, x: torch.Tensor, labels: torch.Tensor, *, create_graph: bool) -> torch.Tensor:
        """Each row's ``1 - cos(its gradient, its observation's gradient)``, shape (rows,).

        Parameters
        ----------
        x
            (rows, B, C, H, W) dummy batches, observation-major (row ``d * restarts + r``:
            observation ``d``'s restart ``r``).
        labels
            (rows, B) int64 hard labels.
        create_graph
            Keep the graph, so that the result can be differentiated with respect to ``x``.
        """
        dot, sq = self._statistics(x, labels, create_graph=create_graph)
        return 1 - dot / (torch.sqrt(sq) * self._row_norm + _COSINE_EPS)

    def check(self) -> str | None:
        """Why this matcher's distances would not be the model's own; None when they are.

        :func:`batched_support` on the model, then a probe: a seeded random input in every row,
        and the first and last rows' gradient statistics compared with autograd's on the model
        run on that row alone (:class:`GradientMatcher`), which catches what the structure
        cannot show (a layer run twice, a parameter used outside its layer, images that
        interact).
        """
        reason = batched_support(self.model)
        if reason is not None:
            return reason
        first = self.observations[0]
        generator = torch.Generator().manual_seed(0)
        x = torch.randn((self.rows, first.batch_size, *first.input_shape), generator=generator)
        labels = torch.randint(first.num_classes, (self.rows, first.batch_size), generator=generator)
        x, labels = x.to(self.device, self.dtype), labels.to(self.device)
        try:
            dot, sq = (v.detach() for v in self._statistics(x, labels, create_graph=False))
        except _Unbatchable as exc:
            return str(exc)
        for row in sorted({0, self.rows - 1}):
            reference = GradientMatcher(self.observations[row // self.restarts])
            grads = reference.gradient(x[row], labels[row], create_graph=False)
            ref_dot = float(sum((g * t).sum() for g, t in zip(grads, reference.target)))
            ref_sq = float(sum((g * g).sum() for g in grads))
            scale = math.sqrt(ref_sq) * float(reference.target_norm)
            if not (math.isclose(float(dot[row]), ref_dot, rel_tol=1e-4, abs_tol=1e-4 * scale + 1e-30)
                    and math.isclose(float(sq[row]), ref_sq, rel_tol=1e-4, abs_tol=1e-30)):
                return ("its per-row gradients differ from autograd's on the model (a parameter used outside its "
                        "layer, or images that interact in eval mode)")
        return None


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
