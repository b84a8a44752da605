"""Gradient-inversion attacks: reconstruct a client's training batch from the gradient it uploads.

An honest-but-curious server sends a model to a client and sees the gradient of the client's
loss on one batch (:class:`GradientObservation`). The attacks below search for an input whose
gradient, through the same model, matches the observed one:

- :func:`dlg` -- *Deep Leakage from Gradients* (Zhu, Liu and Han, NeurIPS 2019): a dummy input
  and a dummy soft label (the softmax of a free logit tensor), optimised together by L-BFGS on
  the squared L2 distance between the dummy and the observed gradients, summed over layers;
- :func:`idlg` -- *improved DLG* (Zhao, Mopuri and Bilen, arXiv:2001.02610, 2020): the label is
  read off the last layer's gradient (:func:`infer_labels`), then DLG optimises the input only;
- :func:`inverting_gradients` -- *Inverting Gradients* (Geiping, Bauermeister, Droege and
  Moeller, NeurIPS 2020): one minus the cosine similarity of the two gradients (over all layers
  at once) plus a total-variation prior, minimised by Adam with a step-decayed learning rate,
  the input clamped to its known range, and several random restarts.

The attacks read only the observation (the model's weights, the gradient, the batch size, the
input shape and range); the ground truth reaches only the scoring. They work on a copy of the
observed model in evaluation mode, so the model itself is never changed, and draw every random
number from ``torch_generator(seed, "attack", restart)``: the same seed gives the same result.
:class:`SigmoidLeNet` is the small sigmoid LeNet of the DLG paper, used as the positive control.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TypeVar

import torch
from torch import nn
from torch.nn import functional as F

from rvepfl.errors import RvepflError
from rvepfl.methods.wire import observed_gradient, parameter_gradients
from rvepfl.seeding import torch_generator

__all__ = [
    "ATTACKS",
    "GradientObservation",
    "Reconstruction",
    "SigmoidLeNet",
    "dlg",
    "idlg",
    "infer_labels",
    "inverting_gradients",
    "observed_gradient",
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
        _check_int("batch_size", self.batch_size, 1)
        shape = tuple(self.input_shape)
        if len(shape) != 3 or not all(isinstance(s, int) and s >= 1 for s in shape):
            raise RvepflError(f"Expected `input_shape` to be three positive ints (C, H, W), got {self.input_shape!r}")
        object.__setattr__(self, "input_shape", shape)
        _check_int("num_classes", self.num_classes, 2)
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
def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise RvepflError(f"Expected `{name}` to be an int >= {minimum}, got {value!r}")
    return value


def _check_positive(name: str, value: object, *, allow_zero: bool = False) -> float:
    ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    if not ok or value < 0 or (value == 0 and not allow_zero):
        relation = ">= 0" if allow_zero else "> 0"
        raise RvepflError(f"Expected `{name}` to be a finite number {relation}, got {value!r}")
    return float(value)


def _check_observation(obs: object) -> GradientObservation:
    if not isinstance(obs, GradientObservation):
        raise TypeError(f"Expected `obs` to be a GradientObservation, got {type(obs).__name__}")
    return obs


def _check_labels(labels: object, obs: GradientObservation) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor):
        labels = torch.as_tensor(labels)
    if labels.shape != (obs.batch_size,) or labels.is_floating_point() or labels.dtype == torch.bool:
        raise RvepflError(
            f"Expected `labels` to be integers of shape ({obs.batch_size},) (the batch size), "
            f"got {labels.dtype} of shape {tuple(labels.shape)}"
        )
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= obs.num_classes):
        raise RvepflError(f"Expected `labels` in [0, {obs.num_classes - 1}], got {labels.tolist()}")
    return labels.long()


# -- shared machinery ---------------------------------------------------------------------------
class _Matcher:
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


def _total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation: mean absolute difference of neighbours, across and down."""
    across = (x[..., :, 1:] - x[..., :, :-1]).abs().mean() if x.shape[-1] > 1 else x.new_zeros(())
    down = (x[..., 1:, :] - x[..., :-1, :]).abs().mean() if x.shape[-2] > 1 else x.new_zeros(())
    return across + down


_Run = TypeVar("_Run")


def _best_restart(restarts: int, run: Callable[[int], tuple[float, _Run]]) -> tuple[_Run, list[float]]:
    """Call ``run(r)`` for r = 0 .. restarts - 1, each returning (loss, result); keep the result
    with the lowest finite loss (the earliest on a tie, restart 0 when none is finite) and
    return it with every restart's loss.

    >>> _best_restart(3, lambda r: ([2.0, 1.0, 1.0][r], r))
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


# -- label inference ----------------------------------------------------------------------------
def _last_layer_gradients(obs: GradientObservation) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The observed gradients of the last linear layer producing ``num_classes`` outputs."""
    index = {id(p): i for i, p in enumerate(obs.model.parameters())}
    layers = [m for m in obs.model.modules() if isinstance(m, nn.Linear) and m.out_features == obs.num_classes]
    if not layers:
        raise RvepflError(
            f"Cannot infer labels: the model has no nn.Linear layer with {obs.num_classes} outputs (`num_classes`)"
        )
    layer = layers[-1]
    weight = obs.gradients[index[id(layer.weight)]]
    bias = obs.gradients[index[id(layer.bias)]] if layer.bias is not None else None
    return weight.detach(), None if bias is None else bias.detach()


def infer_labels(obs: GradientObservation) -> torch.Tensor:
    """Read the batch's labels off the gradient of the model's last linear layer.

    For cross-entropy, the last layer's bias gradient is ``mean_b (softmax_b - onehot(y_b))``
    and its weight gradient's row ``c`` is ``mean_b (softmax_bc - [y_b = c]) h_b`` for the
    features ``h_b`` entering the layer.

    - **Batch 1** (iDLG, exact): only the true class has a negative bias gradient, and, when the
      features are non-negative (after a ReLU or a sigmoid), a negative weight-row sum. The
      label is the argmin of the bias gradient, or of the weight gradient's row sums when the
      layer has no bias, as in iDLG's code.
    - **Batch B > 1** (a heuristic): the B most negative entries of the bias gradient (or of the
      weight-row sums). This recovers B *distinct* labels when the model is not yet confident
      (an early round: a present class ``c`` is negative when ``n_c / B`` exceeds its mean
      predicted probability). It can never return a label twice, so a batch with a repeated
      label gets a class it does not hold instead; and a trained, confident model can push a
      present class positive.

    Parameters
    ----------
    obs
        The observation; its model must end in an ``nn.Linear`` with ``num_classes`` outputs.

    Returns
    -------
    torch.Tensor
        (batch_size,) int64 labels on the CPU, in ascending order for B > 1 (order is not
        recoverable from a batch-mean gradient).
    """
    obs = _check_observation(obs)
    weight, bias = _last_layer_gradients(obs)
    scores = bias if bias is not None else weight.sum(dim=-1)
    scores = scores.detach().double().cpu()
    if obs.batch_size == 1:
        return scores.argmin().reshape(1).long()
    if obs.batch_size > obs.num_classes:
        raise RvepflError(
            f"Cannot infer {obs.batch_size} labels (`batch_size`) from {obs.num_classes} classes: "
            "the bias-gradient heuristic returns distinct labels; pass `labels` instead"
        )
    order = torch.argsort(scores, stable=True)
    return order[: obs.batch_size].sort().values.long()


# -- DLG and iDLG -------------------------------------------------------------------------------
def _lbfgs(
    matcher: _Matcher, x: torch.Tensor, label_logits: torch.Tensor | None, labels: torch.Tensor | None,
    *, iterations: int, lr: float,
) -> tuple[float, tuple[torch.Tensor, torch.Tensor, list[float], int]]:
    """L-BFGS on the L2 gradient distance from ``x`` (and, for DLG, soft labels from
    ``label_logits``); return the lowest distance seen and (its iterate, the labels, the loss
    history, the iterations done). NaN iterates are never kept."""
    x = x.clone().requires_grad_(True)
    variables = [x] if label_logits is None else [x, label_logits.clone().requires_grad_(True)]
    # One inner iteration per step(): the iterates are those of one long L-BFGS run (the state
    # carries over between calls), and each step evaluates the loss exactly once, so every
    # iterate can be checked for NaN and the best one kept.
    optimiser = torch.optim.LBFGS(variables, lr=lr, max_iter=1, history_size=100)
    losses: list[float] = []
    best: tuple[float, list[torch.Tensor]] = (math.inf, [v.detach().clone() for v in variables])

    def evaluate(*, create_graph: bool) -> torch.Tensor:
        target = labels if len(variables) == 1 else F.softmax(variables[1], dim=-1)
        loss = matcher.l2(matcher.gradient(variables[0], target, create_graph=create_graph))
        value = float(loss.detach())
        losses.append(value)
        nonlocal best
        if math.isfinite(value) and value < best[0]:
            best = (value, [v.detach().clone() for v in variables])
        return loss

    def closure() -> torch.Tensor:
        loss = evaluate(create_graph=True)
        grads = torch.autograd.grad(loss, variables)
        for v, g in zip(variables, grads):
            v.grad = g
        return loss.detach()

    for _ in range(iterations):
        optimiser.step(closure)
        if not math.isfinite(losses[-1]):  # diverged: every later iterate is NaN too
            break
    else:
        evaluate(create_graph=False)  # the loss of the last iterate
    history = losses[1:]  # history[i]: the loss after i + 1 iterations
    while history and not math.isfinite(history[-1]):
        history.pop()
    found = best[1]
    final_labels = labels if len(found) == 1 else found[1].argmax(dim=-1)
    return best[0], (found[0], final_labels, history, len(history))


def _check_common(obs: object, iterations: object, lr: object, restarts: object) -> GradientObservation:
    obs = _check_observation(obs)
    _check_int("iterations", iterations, 1)
    _check_positive("lr", lr)
    _check_int("restarts", restarts, 1)
    return obs


def dlg(obs: GradientObservation, *, iterations: int = 300, lr: float = 1.0, restarts: int = 1,
        seed: int = 0) -> Reconstruction:
    """Deep Leakage from Gradients (Zhu et al. 2019).

    A dummy input (standard normal) and a dummy label (the softmax of a standard-normal logit
    tensor) are optimised together by L-BFGS to minimise the squared L2 distance between their
    gradient and the observed one, summed over all layers. Each restart starts from new dummies;
    the restart whose best gradient distance is lowest is kept (the attacker's choice, made from
    the observation alone).

    Parameters
    ----------
    obs
        What the server observed.
    iterations
        L-BFGS iterations per restart, each one evaluation of the gradient distance. (The DLG
        reference code calls ``LBFGS.step`` 300 times with PyTorch's default of up to 20 inner
        iterations each; here every iteration counts.)
    lr
        L-BFGS learning rate (1 in the paper).
    restarts
        Independent random starts (>= 1).
    seed
        Seed of the ``attack`` random stream (restart ``r`` draws its dummy input and label from
        ``torch_generator(seed, "attack", r)``).

    Returns
    -------
    Reconstruction
        The iterate with the lowest gradient distance seen in the kept restart; if L-BFGS
        diverges to NaN, that restart stops and offers its best finite iterate. ``labels`` is
        the argmax of the dummy soft label.
    """
    obs = _check_common(obs, iterations, lr, restarts)
    start = time.perf_counter()
    matcher = _Matcher(obs)

    def run(restart: int) -> tuple[float, tuple[torch.Tensor, torch.Tensor, list[float], int]]:
        generator = torch_generator(seed, "attack", restart)
        x0 = matcher.random_input(generator)
        logits = torch.randn((obs.batch_size, obs.num_classes), generator=generator)
        return _lbfgs(matcher, x0, logits.to(matcher.device, matcher.dtype), None, iterations=iterations, lr=lr)

    (x, labels, history, done), losses = _best_restart(restarts, run)
    return Reconstruction(x.detach(), labels.detach().long().cpu(), history, done, time.perf_counter() - start,
                          losses)


def idlg(obs: GradientObservation, *, iterations: int = 300, lr: float = 1.0, restarts: int = 1,
         seed: int = 0) -> Reconstruction:
    """Improved DLG (Zhao et al. 2020): infer the labels, then run DLG on the input only.

    The labels come from :func:`infer_labels` (exact for a batch of one); the dummy input of
    each restart is drawn as in :func:`dlg`, so both start from the same inputs for the same
    seed.

    Parameters
    ----------
    obs, iterations, lr, restarts, seed
        As for :func:`dlg`.

    Returns
    -------
    Reconstruction
        The iterate with the lowest gradient distance seen in the kept restart; ``labels`` are
        the inferred labels.
    """
    obs = _check_common(obs, iterations, lr, restarts)
    start = time.perf_counter()
    labels = infer_labels(obs)
    matcher = _Matcher(obs)
    device_labels = labels.to(matcher.device)

    def run(restart: int) -> tuple[float, tuple[torch.Tensor, torch.Tensor, list[float], int]]:
        x0 = matcher.random_input(torch_generator(seed, "attack", restart))
        return _lbfgs(matcher, x0, None, device_labels, iterations=iterations, lr=lr)

    (x, _, history, done), losses = _best_restart(restarts, run)
    return Reconstruction(x.detach(), labels, history, done, time.perf_counter() - start, losses)


# -- Inverting Gradients ------------------------------------------------------------------------
def _milestones(iterations: int) -> list[int]:
    # Geiping et al.'s step decay: lr x 0.1 after 3/8, 5/8 and 7/8 of the iterations.
    return sorted({max(1, round(iterations * f)) for f in (3 / 8, 5 / 8, 7 / 8)})


def _ig_run(
    matcher: _Matcher, x0: torch.Tensor, labels: torch.Tensor, *, iterations: int, lr: float,
    tv_weight: float, signed: bool, bounds: tuple[float, float] | None,
) -> tuple[float, tuple[torch.Tensor, list[float], int]]:
    """Adam on 1 - cos + TV from ``x0``; return the final finite iterate's 1 - cos and (that
    iterate, the loss history, the iterations done)."""
    x = x0.clone()
    if bounds is not None:
        x.clamp_(*bounds)
    x.requires_grad_(True)
    optimiser = torch.optim.Adam([x], lr=lr)
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimiser, milestones=_milestones(iterations), gamma=0.1)
    kept, score, history = x.detach().clone(), math.nan, []
    for it in range(iterations + 1):  # the last pass only scores the final iterate
        matching = matcher.cosine(matcher.gradient(x, labels, create_graph=it < iterations))
        value = float(matching.detach())
        if not (math.isfinite(value) and bool(torch.isfinite(x).all())):
            break  # diverged: keep the last iterate with a finite loss
        kept, score = x.detach().clone(), value
        if it:
            history.append(value)  # history[i]: the loss after i + 1 iterations
        if it == iterations:
            break
        objective = matching + tv_weight * _total_variation(x) if tv_weight else matching
        (step,) = torch.autograd.grad(objective, [x])
        x.grad = step.sign() if signed else step
        optimiser.step()
        schedule.step()
        if bounds is not None:
            with torch.no_grad():
                x.clamp_(*bounds)
    return score, (kept, history, len(history))


def inverting_gradients(
    obs: GradientObservation,
    *,
    iterations: int = 2000,
    lr: float = 0.1,
    tv_weight: float = 1e-4,
    restarts: int = 1,
    labels: torch.Tensor | None = None,
    signed: bool = False,
    seed: int = 0,
) -> Reconstruction:
    """Inverting Gradients (Geiping et al. 2020).

    Minimises ``1 - cos(dummy gradient, observed gradient) + tv_weight * TV(x)`` over the
    input by Adam, the cosine taken over all layers at once and TV the mean absolute difference
    of neighbouring pixels. The learning rate drops tenfold after 3/8, 5/8 and 7/8 of the
    iterations; after every step the input is clamped to ``obs.bounds`` when they are known.
    Each restart starts from a new standard-normal input; the restart whose final gradient loss
    (``1 - cos``, without TV) is lowest is kept.

    Parameters
    ----------
    obs
        What the server observed.
    iterations
        Adam steps per restart.
    lr
        Adam's initial learning rate (0.1 in the paper).
    tv_weight
        Weight of the total-variation prior (>= 0).
    restarts
        Independent random starts (>= 1).
    labels
        (batch_size,) labels to use; default: :func:`infer_labels`.
    signed
        Step on the sign of the input's gradient, as the paper's experiments do.
    seed
        Seed of the ``attack`` random stream (restart ``r`` draws from
        ``torch_generator(seed, "attack", r)``).

    Returns
    -------
    Reconstruction
        The final iterate of the kept restart (the last finite one if the loss became NaN);
        ``loss_history`` holds that restart's ``1 - cos`` after each iteration.
    """
    obs = _check_common(obs, iterations, lr, restarts)
    tv_weight = _check_positive("tv_weight", tv_weight, allow_zero=True)
    start = time.perf_counter()
    labels = infer_labels(obs) if labels is None else _check_labels(labels, obs)
    matcher = _Matcher(obs)
    device_labels = labels.to(matcher.device)

    def run(restart: int) -> tuple[float, tuple[torch.Tensor, list[float], int]]:
        x0 = matcher.random_input(torch_generator(seed, "attack", restart))
        return _ig_run(matcher, x0, device_labels, iterations=iterations, lr=lr, tv_weight=tv_weight,
                       signed=bool(signed), bounds=obs.bounds)

    (x, history, done), losses = _best_restart(restarts, run)
    return Reconstruction(x.detach(), labels.cpu(), history, done, time.perf_counter() - start, losses)


# -- the positive-control model -----------------------------------------------------------------
class SigmoidLeNet(nn.Module):
    """The DLG paper's small LeNet: three 5x5 convolutions (12 channels, strides 2, 2, 1, 'same'
    padding) with sigmoid activations, then one linear layer; weights and biases drawn from
    U(-0.5, 0.5) as in the DLG code.

    Sigmoids are smooth and the model tiny, so an undefended batch of one is recovered almost
    exactly: the positive control of the gradient attacks.

    Parameters
    ----------
    channels, image_size, num_classes
        Input (channels x image_size x image_size) and number of classes.
    seed
        Seed of the initialisation (``torch_generator(seed, "init")``).
    """

    def __init__(self, channels: int = 1, image_size: int = 28, num_classes: int = 10, *, seed: int = 0) -> None:
        super().__init__()
        _check_int("channels", channels, 1)
        _check_int("image_size", image_size, 1)
        _check_int("num_classes", num_classes, 2)
        side = image_size
        for _ in range(2):
            side = (side + 1) // 2  # stride 2 with padding 2 on a 5x5 kernel: ceil(side / 2)
        self.body = nn.Sequential(
            nn.Conv2d(channels, 12, 5, stride=2, padding=2),
            nn.Sigmoid(),
            nn.Conv2d(12, 12, 5, stride=2, padding=2),
            nn.Sigmoid(),
            nn.Conv2d(12, 12, 5, stride=1, padding=2),
            nn.Sigmoid(),
        )
        self.fc = nn.Linear(12 * side * side, num_classes)
        generator = torch_generator(seed, "init")
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.rand(p.shape, generator=generator) - 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).flatten(1))


#: The gradient attacks by name (the CLI's ``rvepfl attack NAME``).
ATTACKS: dict[str, Callable[..., Reconstruction]] = {"dlg": dlg, "idlg": idlg, "ig": inverting_gradients}
