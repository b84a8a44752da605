"""Inverting Gradients: reconstruct a client's batch by matching its gradient's direction.

*Inverting Gradients* (Geiping, Bauermeister, Droege and Moeller, NeurIPS 2020) minimises one
minus the cosine similarity of the dummy and the observed gradients (over all layers at once)
plus a total-variation prior, by Adam with a step-decayed learning rate, the input clamped to
its known range, and several random restarts (:func:`inverting_gradients`).

It takes a :class:`~rvepfl.attacks.observation.GradientObservation` and returns a
:class:`~rvepfl.attacks.observation.Reconstruction`; unless given, the labels are read off the
last layer's gradient as iDLG does (:func:`rvepfl.attacks.dlg.infer_labels`). Restart ``r``
draws its start from ``torch_generator(seed, "attack", r)``, so the same seed gives the same
result.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable

import torch

from rvepfl.attacks.dlg import infer_labels
from rvepfl.attacks.observation import (
    GradientMatcher,
    GradientObservation,
    Reconstruction,
    best_restart,
    check_attack_arguments,
    check_positive,
    restart_progress,
)
from rvepfl.attacks.upload import UploadAttack
from rvepfl.errors import RvepflError
from rvepfl.seeding import torch_generator

__all__ = ["InvertingGradients", "inverting_gradients"]


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


def _total_variation(x: torch.Tensor) -> torch.Tensor:
    """Anisotropic total variation: mean absolute difference of neighbours, across and down."""
    across = (x[..., :, 1:] - x[..., :, :-1]).abs().mean() if x.shape[-1] > 1 else x.new_zeros(())
    down = (x[..., 1:, :] - x[..., :-1, :]).abs().mean() if x.shape[-2] > 1 else x.new_zeros(())
    return across + down


def _milestones(iterations: int) -> list[int]:
    # Geiping et al.'s step decay: lr x 0.1 after 3/8, 5/8 and 7/8 of the iterations.
    return sorted({max(1, round(iterations * f)) for f in (3 / 8, 5 / 8, 7 / 8)})


def _ig_run(
    matcher: GradientMatcher, x0: torch.Tensor, labels: torch.Tensor, *, iterations: int, lr: float,
    tv_weight: float, signed: bool, bounds: tuple[float, float] | None, on_step: Callable[[int], None] | None = None,
) -> tuple[float, tuple[torch.Tensor, list[float], int]]:
    """Adam on 1 - cos + TV from ``x0``; return the final finite iterate's 1 - cos and (that
    iterate, the loss history, the iterations done). ``on_step(i)`` is told after iteration ``i``
    (from 1)."""
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
        if on_step is not None:
            on_step(it + 1)
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
    progress: Callable[[int, int], None] | None = None,
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
        (batch_size,) labels to use; default: :func:`~rvepfl.attacks.dlg.infer_labels`.
    signed
        Step on the sign of the input's gradient, as the paper's experiments do.
    seed
        Seed of the ``attack`` random stream (restart ``r`` draws from
        ``torch_generator(seed, "attack", r)``).
    progress
        Told ``(iterations done, iterations in all)``, counted over the restarts, after every
        iteration; it only observes (the result is the same without it).

    Returns
    -------
    Reconstruction
        The final iterate of the kept restart (the last finite one if the loss became NaN);
        ``loss_history`` holds that restart's ``1 - cos`` after each iteration.
    """
    obs = check_attack_arguments(obs, iterations, lr, restarts)
    tv_weight = check_positive("tv_weight", tv_weight, allow_zero=True)
    start = time.perf_counter()
    labels = infer_labels(obs) if labels is None else _check_labels(labels, obs)
    matcher = GradientMatcher(obs)
    device_labels = labels.to(matcher.device)

    def run(restart: int) -> tuple[float, tuple[torch.Tensor, list[float], int]]:
        x0 = matcher.random_input(torch_generator(seed, "attack", restart))
        return _ig_run(matcher, x0, device_labels, iterations=iterations, lr=lr, tv_weight=tv_weight,
                       signed=bool(signed), bounds=obs.bounds,
                       on_step=restart_progress(progress, restart, iterations, restarts))

    (x, history, done), losses = best_restart(restarts, run)
    return Reconstruction(x.detach(), labels.cpu(), history, done, time.perf_counter() - start, losses)


# -- the attack, as ``rvepfl attack ig`` runs it ---------------------------------------------------
class InvertingGradients(UploadAttack):
    """``rvepfl attack ig``: :func:`inverting_gradients` on each observed upload."""

    name = "ig"
    label = "Inverting Gradients"
    description = ("1 - cosine similarity of the gradients plus total variation, Adam (Geiping et al., NeurIPS "
                   "2020)")
    rank = 30
    default_iterations = 1000
    algorithm = staticmethod(inverting_gradients)
