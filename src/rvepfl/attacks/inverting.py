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

:func:`inverting_gradients_batched` runs the same algorithm on several observations of one model
(each with its own seed) and all their restarts as one optimisation, every row of a stacked input
its own problem (:class:`~rvepfl.attacks.observation.BatchedMatcher`): each observation's result
is the one :func:`inverting_gradients` gives it alone, up to float rounding. ``rvepfl attack ig``
attacks its observations that way, in chunks (:class:`InvertingGradients`), under threat models
``gradient``, ``update`` and ``aggregate`` (the mean of several clients' updates).
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Sequence

import torch

from rvepfl.attacks.dlg import infer_labels
from rvepfl.attacks.observation import (
    BatchedMatcher,
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

__all__ = ["InvertingGradients", "inverting_gradients", "inverting_gradients_batched"]


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


def _row_total_variation(x: torch.Tensor) -> torch.Tensor:
    """:func:`_total_variation` of each row of ``x`` (rows, B, C, H, W): shape (rows,)."""
    dims = tuple(range(1, x.dim()))
    zero = x.new_zeros(len(x))
    across = (x[..., :, 1:] - x[..., :, :-1]).abs().mean(dims) if x.shape[-1] > 1 else zero
    down = (x[..., 1:, :] - x[..., :-1, :]).abs().mean(dims) if x.shape[-2] > 1 else zero
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


def _ig_rows(
    matcher: BatchedMatcher, x0: torch.Tensor, labels: torch.Tensor, *, iterations: int, lr: float,
    tv_weight: float, signed: bool, bounds: tuple[float, float] | None, on_step: Callable[[int], None] | None = None,
) -> list[tuple[float, tuple[torch.Tensor, list[float], int]]]:
    """:func:`_ig_run` on every row of ``x0`` (rows, B, C, H, W) at once: one Adam on the stacked
    input, the objective the sum of the rows' (each row's gradient its own), so that every row
    follows its own run (Adam, its learning-rate schedule, the clamp and the sign are
    element-wise). A row whose loss or iterate stops being finite is frozen at its last finite
    iterate and leaves the objective, as :func:`_ig_run` stops; the others go on. Returns each
    row's (1 - cos, (iterate, history, iterations done)) as :func:`_ig_run` does; ``on_step(i)``
    is told after joint iteration ``i``."""
    rows = len(x0)
    x = x0.clone()
    if bounds is not None:
        x.clamp_(*bounds)
    x.requires_grad_(True)
    optimiser = torch.optim.Adam([x], lr=lr)
    schedule = torch.optim.lr_scheduler.MultiStepLR(optimiser, milestones=_milestones(iterations), gamma=0.1)
    kept, scores = x.detach().clone(), [math.nan] * rows
    histories: list[list[float]] = [[] for _ in range(rows)]
    alive = torch.ones(rows, dtype=torch.bool, device=x.device)
    row_shape = (rows,) + (1,) * (x.dim() - 1)
    for it in range(iterations + 1):  # the last pass only scores the final iterate
        matching = matcher.cosine(x, labels, create_graph=it < iterations)
        values = matching.detach()
        alive &= torch.isfinite(values) & torch.isfinite(x.detach()).flatten(1).all(1)
        if not bool(alive.any()):
            break  # every row diverged: each keeps its last iterate with a finite loss
        kept = torch.where(alive.view(row_shape), x.detach(), kept)
        for row, value in zip(alive.nonzero().flatten().tolist(), values[alive].tolist()):
            scores[row] = value
            if it:
                histories[row].append(value)  # history[i]: the loss after i + 1 iterations
        if it == iterations:
            break
        objective = matching + tv_weight * _row_total_variation(x) if tv_weight else matching
        (step,) = torch.autograd.grad(objective[alive].sum(), [x])
        x.grad = step.sign() if signed else step
        optimiser.step()
        schedule.step()
        with torch.no_grad():
            if bounds is not None:
                x.clamp_(*bounds)
            x.copy_(torch.where(alive.view(row_shape), x, kept))  # a diverged row stays where it was
        if on_step is not None:
            on_step(it + 1)
    return [(scores[row], (kept[row].clone(), histories[row], len(histories[row]))) for row in range(rows)]


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


def inverting_gradients_batched(
    observations: Sequence[GradientObservation],
    *,
    iterations: int = 2000,
    lr: float = 0.1,
    tv_weight: float = 1e-4,
    restarts: int = 1,
    labels: Sequence[torch.Tensor] | None = None,
    signed: bool = False,
    seeds: Sequence[int] | None = None,
    progress: Callable[[int, int], None] | None = None,
) -> list[Reconstruction]:
    """:func:`inverting_gradients` on several observations of one model, as one optimisation.

    Every restart of every observation is a row of one stacked input, optimised by one Adam
    (element-wise, so each row follows its own run, with the same learning-rate schedule, clamp
    and sign steps), each row's gradient distance computed against its own observation by
    :class:`~rvepfl.attacks.observation.BatchedMatcher` and its total variation over its own
    batch. Observation ``d``'s restart ``r`` starts from ``torch_generator(seeds[d], "attack",
    r)``, as :func:`inverting_gradients` with ``seed=seeds[d]`` draws it; its kept restart is its
    own lowest final loss, and a row that diverges (a loss or an iterate that is not finite)
    stops alone. So each observation's reconstruction is the one :func:`inverting_gradients`
    gives it alone, up to float rounding: the batched kernels sum in another order, and the
    difference grows slowly with the iterations (on bundled MNIST digits and the shared
    Classifier, at most 1.4e-6 in [0, 1] pixels after 12 iterations and 4e-6 after 30; see
    tests/unit/test_attacks_batched.py).

    A model :class:`~rvepfl.attacks.observation.BatchedMatcher` cannot take (a parameter outside
    ``nn.Linear`` and ``nn.Conv2d`` layers, such as a normalisation layer's, or one its probe
    finds it computes wrongly) is attacked one observation at a time by
    :func:`inverting_gradients`, with a warning that says why: the same results, not batched.

    Parameters
    ----------
    observations
        What the server observed: observations of one model (the same module or equal weights)
        with one batch size, input shape, class count and input range.
    iterations, lr, tv_weight, restarts, signed
        As for :func:`inverting_gradients`, the same for every observation.
    labels
        One (batch_size,) label tensor per observation; default: each inferred by
        :func:`~rvepfl.attacks.dlg.infer_labels`.
    seeds
        One seed per observation (default: 0 for each), as ``seed`` of
        :func:`inverting_gradients`.
    progress
        Told ``(iterations done, iterations in all)``, counted over every observation's
        restarts, after every joint iteration; it only observes.

    Returns
    -------
    list of Reconstruction
        One per observation, in order, as :func:`inverting_gradients` returns it; each one's
        ``seconds`` is its share of the whole optimisation's time.
    """
    observations = list(observations)
    if not observations:
        raise RvepflError("Expected at least one observation, got none")
    for obs in observations:
        check_attack_arguments(obs, iterations, lr, restarts)
    tv_weight = check_positive("tv_weight", tv_weight, allow_zero=True)
    count = len(observations)
    seeds = [0] * count if seeds is None else list(seeds)
    if len(seeds) != count or not all(isinstance(s, int) and not isinstance(s, bool) for s in seeds):
        raise RvepflError(f"Expected `seeds` to be {count} ints (one per observation), got {seeds!r}")
    if labels is not None and len(labels) != count:
        raise RvepflError(f"Expected `labels` to hold {count} tensors (one per observation), got {len(labels)}")
    bounds = observations[0].bounds
    for i, obs in enumerate(observations):
        if obs.bounds != bounds:
            raise RvepflError(f"Expected every observation to have observation 0's `bounds` {bounds}, "
                              f"got {obs.bounds} for observation {i}")
    start = time.perf_counter()
    used = [infer_labels(obs) if labels is None else _check_labels(labels[i], obs)
            for i, obs in enumerate(observations)]
    matcher = BatchedMatcher(observations, restarts)
    reason = matcher.check()
    if reason is not None:
        warnings.warn(f"Inverting Gradients attacks these {count} observations one at a time: {reason}", stacklevel=2)
        total = count * restarts * iterations

        def offset(d: int) -> Callable[[int, int], None] | None:
            if progress is None:
                return None
            return lambda done, _: progress(d * restarts * iterations + done, total)

        return [inverting_gradients(obs, iterations=iterations, lr=lr, tv_weight=tv_weight, restarts=restarts,
                                    labels=used[d], signed=signed, seed=seeds[d], progress=offset(d))
                for d, obs in enumerate(observations)]
    x0 = torch.stack([matcher.random_input(torch_generator(seeds[d], "attack", r))
                      for d in range(count) for r in range(restarts)])
    rows = matcher.rows
    row_labels = torch.stack(used).repeat_interleave(restarts, dim=0).to(matcher.device)
    on_step = None if progress is None else (lambda i: progress(i * rows, iterations * rows))
    runs = _ig_rows(matcher, x0, row_labels, iterations=iterations, lr=lr, tv_weight=tv_weight, signed=bool(signed),
                    bounds=bounds, on_step=on_step)
    seconds = (time.perf_counter() - start) / count
    out = []
    for d in range(count):
        (x, history, done), losses = best_restart(restarts, lambda r, d=d: runs[d * restarts + r])  # type: ignore[misc]  # a lambda with a default
        out.append(Reconstruction(x.detach(), used[d].cpu(), history, done, seconds, losses))
    return out


# -- the attack, as ``rvepfl attack ig`` runs it ---------------------------------------------------
class InvertingGradients(UploadAttack):
    """``rvepfl attack ig``: :func:`inverting_gradients` on each observed upload, the observations
    attacked in chunks as one optimisation each (:func:`inverting_gradients_batched`)."""

    name = "ig"
    label = "Inverting Gradients"
    threats = ("gradient", "update", "aggregate")
    """``aggregate`` too: Geiping et al. invert the mean update of a batch, which is what the
    mean of k clients' updates is to a server under secure aggregation (k x batch images), and
    their cosine suits a view whose size the clients' Adam normalises away. DLG's squared
    distance needs the gradient's size (it fails on ``update`` already), and iDLG reads the label
    of a single image, which a sum of several clients' images is not: they keep to ``gradient``
    and ``update``."""
    description = ("1 - cosine similarity of the gradients plus total variation, Adam (Geiping et al., NeurIPS "
                   "2020)")
    rank = 30
    default_iterations = 1000
    algorithm = staticmethod(inverting_gradients)
    batched_algorithm = staticmethod(inverting_gradients_batched)
