"""DLG and iDLG: reconstruct a client's batch by matching its gradient in squared L2, with L-BFGS.

- :func:`dlg` -- *Deep Leakage from Gradients* (Zhu, Liu and Han, NeurIPS 2019): a dummy input
  and a dummy soft label (the softmax of a free logit tensor), optimised together by L-BFGS on
  the squared L2 distance between the dummy and the observed gradients, summed over layers;
- :func:`idlg` -- *improved DLG* (Zhao, Mopuri and Bilen, arXiv:2001.02610, 2020): the label is
  read off the last layer's gradient (:func:`infer_labels`), then DLG optimises the input only.

Both take a :class:`~rvepfl.attacks.observation.GradientObservation` and return a
:class:`~rvepfl.attacks.observation.Reconstruction`; restart ``r`` draws its dummies from
``torch_generator(seed, "attack", r)``, so the same seed gives the same result.
:func:`infer_labels` also serves Inverting Gradients (:mod:`rvepfl.attacks.inverting`).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch
from torch import nn
from torch.nn import functional as F

from rvepfl.attacks.observation import (
    GradientMatcher,
    GradientObservation,
    Reconstruction,
    best_restart,
    check_attack_arguments,
    check_observation,
    restart_progress,
)
from rvepfl.attacks.upload import UploadAttack
from rvepfl.errors import RvepflError
from rvepfl.seeding import torch_generator

__all__ = ["Dlg", "IDlg", "dlg", "idlg", "infer_labels"]


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
    obs = check_observation(obs)
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
    matcher: GradientMatcher, x: torch.Tensor, label_logits: torch.Tensor | None, labels: torch.Tensor | None,
    *, iterations: int, lr: float, on_step: Callable[[int], None] | None = None,
) -> tuple[float, tuple[torch.Tensor, torch.Tensor, list[float], int]]:
    """L-BFGS on the L2 gradient distance from ``x`` (and, for DLG, soft labels from
    ``label_logits``); return the lowest distance seen and (its iterate, the labels, the loss
    history, the iterations done). NaN iterates are never kept. ``on_step(i)`` is told after
    iteration ``i`` (from 1)."""
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
        # labels is None only with label_logits (two variables)
        loss = matcher.l2(matcher.gradient(variables[0], target, create_graph=create_graph))  # type: ignore[arg-type]
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

    for i in range(iterations):
        optimiser.step(closure)
        if on_step is not None:
            on_step(i + 1)
        if not math.isfinite(losses[-1]):  # diverged: every later iterate is NaN too
            break
    else:
        evaluate(create_graph=False)  # the loss of the last iterate
    history = losses[1:]  # history[i]: the loss after i + 1 iterations
    while history and not math.isfinite(history[-1]):
        history.pop()
    found = best[1]
    final_labels = labels if len(found) == 1 else found[1].argmax(dim=-1)
    return best[0], (found[0], final_labels, history, len(history))  # type: ignore[return-value]  # as above


def dlg(obs: GradientObservation, *, iterations: int = 300, lr: float = 1.0, restarts: int = 1,
        seed: int = 0, progress: Callable[[int, int], None] | None = None) -> Reconstruction:
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
    progress
        Told ``(iterations done, iterations in all)``, counted over the restarts, after every
        iteration; it only observes (the result is the same without it).

    Returns
    -------
    Reconstruction
        The iterate with the lowest gradient distance seen in the kept restart; if L-BFGS
        diverges to NaN, that restart stops and offers its best finite iterate. ``labels`` is
        the argmax of the dummy soft label.
    """
    obs = check_attack_arguments(obs, iterations, lr, restarts)
    start = time.perf_counter()
    matcher = GradientMatcher(obs)

    def run(restart: int) -> tuple[float, tuple[torch.Tensor, torch.Tensor, list[float], int]]:
        generator = torch_generator(seed, "attack", restart)
        x0 = matcher.random_input(generator)
        logits = torch.randn((obs.batch_size, obs.num_classes), generator=generator)
        return _lbfgs(matcher, x0, logits.to(matcher.device, matcher.dtype), None, iterations=iterations, lr=lr,
                      on_step=restart_progress(progress, restart, iterations, restarts))

    (x, labels, history, done), losses = best_restart(restarts, run)
    return Reconstruction(x.detach(), labels.detach().long().cpu(), history, done, time.perf_counter() - start,
                          losses)


def idlg(obs: GradientObservation, *, iterations: int = 300, lr: float = 1.0, restarts: int = 1,
         seed: int = 0, progress: Callable[[int, int], None] | None = None) -> Reconstruction:
    """Improved DLG (Zhao et al. 2020): infer the labels, then run DLG on the input only.

    The labels come from :func:`infer_labels` (exact for a batch of one); the dummy input of
    each restart is drawn as in :func:`dlg`, so both start from the same inputs for the same
    seed.

    Parameters
    ----------
    obs, iterations, lr, restarts, seed, progress
        As for :func:`dlg`.

    Returns
    -------
    Reconstruction
        The iterate with the lowest gradient distance seen in the kept restart; ``labels`` are
        the inferred labels.
    """
    obs = check_attack_arguments(obs, iterations, lr, restarts)
    start = time.perf_counter()
    labels = infer_labels(obs)
    matcher = GradientMatcher(obs)
    device_labels = labels.to(matcher.device)

    def run(restart: int) -> tuple[float, tuple[torch.Tensor, torch.Tensor, list[float], int]]:
        x0 = matcher.random_input(torch_generator(seed, "attack", restart))
        return _lbfgs(matcher, x0, None, device_labels, iterations=iterations, lr=lr,
                      on_step=restart_progress(progress, restart, iterations, restarts))

    (x, _, history, done), losses = best_restart(restarts, run)
    return Reconstruction(x.detach(), labels, history, done, time.perf_counter() - start, losses)


# -- the attacks, as ``rvepfl attack dlg`` and ``rvepfl attack idlg`` run them ---------------------
class Dlg(UploadAttack):
    """``rvepfl attack dlg``: :func:`dlg` on each observed upload."""

    name = "dlg"
    label = "DLG"
    description = "dummy input and soft label, L-BFGS on the squared gradient distance (Zhu et al., NeurIPS 2019)"
    rank = 10
    default_iterations = 300
    algorithm = staticmethod(dlg)


class IDlg(UploadAttack):
    """``rvepfl attack idlg``: :func:`idlg` on each observed upload of a single image."""

    name = "idlg"
    label = "iDLG"
    description = "the label read from the last layer's gradient, then DLG on the input (Zhao et al., 2020)"
    rank = 20
    default_iterations = 300
    needs_single_image = True
    algorithm = staticmethod(idlg)
