"""MI-Face (Fredrikson et al. 2015): invert a classifier into one image per class.

For each target class ``c`` the attack starts from an input ``x_0`` and descends on the cost
``1 - p(c | x)`` (``p`` = softmax of the model's logits) by plain gradient steps on the input:

    x_{i+1} = clip(x_i + learning_rate * grad_x p(c | x_i), bounds)

This is IBM ART's ``MIFace`` (art/attacks/inference/model_inversion/mi_face.py, checked against
ART 1.20.1) with the same update and the same default start, applied to a model whose output is
``p`` (in ART: a ``PyTorchClassifier`` around ``nn.Sequential(model, nn.Softmax(dim=1))``):

- the gradient is used as it is: not normalised, not signed, no momentum;
- the default start is ``x_0 = 0`` in the model's input space (ART: ``np.zeros``), which for a
  model fed normalised images is the data set's mean pixel, not a black image;
- ``bounds`` clips every iterate, as ART's ``clip_values`` do; ART applies none by default;
- the result is the last iterate, as in ART (the paper's Algorithm 1 returns the iterate of
  lowest cost; with small steps the two barely differ).

**The stopping rule.** The paper stops class ``c`` at the first iterate whose cost is no better
than the worst of the previous ``window_length`` costs (the descent is stuck), or whose cost is
at most a threshold. ``stopping="paper"`` (the default) does exactly that, with the threshold
read as a *confidence*: class ``c`` stops once ``p(c | x) >= threshold`` (cost <= 1 -
threshold), so ART's default ``threshold = 0.99`` means "99 % confident". ART's code assigns the
paper's stopping test to its ``active`` flag instead: a class runs on while ``1 - p <=
threshold`` or while its cost is no better than the worst of its window, and stops otherwise. So
with ART's defaults a class still below 1 % confidence after its first step stops there, and one
above 1 % runs on, however confident it gets, until ``max_iter`` (or until its confidence falls
below 1 % again). ``stopping="art"`` reproduces that rule exactly (for ART's default
``batch_size=1``, under which a stopped class stays stopped), so results can be compared with
ART's one for one (``benchmarks/miface_art.py``).

Unlike ART, which inverts one class at a time with two forward passes (one to predict, one to
differentiate) per step through numpy, every class still running shares one batched forward and
backward pass per step, in torch. Classes do not interact, as long as the model treats the rows
of a batch independently (true in evaluation mode, which is used).

**Restarts** (not in ART or the paper; GMI's idea, :func:`rvepfl.attacks.gmi.gmi_search`):
``restarts = R`` descends from R starts per class, every class x restart one row of the same
batch (row ``k * R + j``: class k, restart j), and keeps per class the restart of the best
objective, the highest final confidence p(c | x) (the first such restart on a tie). Restart 0
starts where a single descent does (``init``, default zeros), so ``restarts=1`` is exactly the
attack without restarts; restart ``j >= 1`` of class ``c`` starts from its own draw of the named
stream ``("attack", 9500, c, j)`` of ``seed``: uniform within ``bounds``, or N(0, I) without them
(the prior of a variational encoder's z, where a released classifier reads z). A restart's start
depends neither on the other classes nor on the other restarts, so the batched search gives
what each restart would give alone (for a model that draws no randomness per row; a personal
model that samples z draws it for the whole batch).

>>> import torch
>>> from torch import nn
>>> model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
>>> result = mi_face(model, 3, (1, 2, 2), max_iter=50, threshold=0.9, learning_rate=1.0)
>>> result.images.shape, result.classes.tolist()
(torch.Size([3, 1, 2, 2]), [0, 1, 2])
>>> bool((result.iterations <= 50).all())
True
>>> best = mi_face(model, 3, (1, 2, 2), max_iter=50, threshold=0.9, learning_rate=1.0, restarts=4, seed=0)
>>> best.images.shape, best.restart.shape
(torch.Size([3, 1, 2, 2]), torch.Size([3]))
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import nn

from rvepfl.attacks.common import Tracker
from rvepfl.attacks.inversion import Inversion, InversionAttack
from rvepfl.attacks.scores import to_pixels
from rvepfl.seeding import derive_seed, torch_generator

__all__ = ["MiFace", "MiFaceResult", "STOPPING_RULES", "mi_face"]

#: ``paper``: stop at confidence >= threshold or when stuck; ``art``: IBM ART's literal rule.
STOPPING_RULES = ("paper", "art")
_START = 9500  # MI-Face's random starts within the "attack" stream of its seed


@dataclass(frozen=True)
class MiFaceResult:
    """The outcome of :func:`mi_face`, one row per attacked class.

    Attributes
    ----------
    images
        (K, C, H, W) inverted inputs, in the model's input space (detached, on the model's device).
    classes
        (K,) int64 target class of each image.
    iterations
        (K,) int64 gradient steps taken for each class (0 <= iterations <= max_iter).
    confidences
        (K,) final softmax probability of each target class at its image.
    seconds
        Wall-clock time of the whole attack.
    restart
        (K,) int64 the restart each image comes from (the one of highest final confidence;
        all 0 without restarts).
    """

    images: torch.Tensor
    classes: torch.Tensor
    iterations: torch.Tensor
    confidences: torch.Tensor
    seconds: float
    restart: torch.Tensor


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ValueError(f"Expected `{name}` to be an integer >= {minimum}, got {value!r}")
    return value


def _check_classes(classes: Sequence[int] | torch.Tensor | None, num_classes: int) -> torch.Tensor:
    if classes is None:
        return torch.arange(num_classes)
    out = torch.as_tensor(classes)
    if out.ndim != 1 or out.numel() == 0 or out.dtype.is_floating_point or out.dtype == torch.bool:
        raise ValueError(f"Expected `classes` to be a non-empty 1-D sequence of integers, got {classes!r}")
    if bool(((out < 0) | (out >= num_classes)).any()):
        raise ValueError(f"Expected `classes` in [0, {num_classes}), got {out.tolist()}")
    return out.long()


def _check_settings(
    stopping: str, threshold: float, learning_rate: float, bounds: tuple[float, float] | None
) -> None:
    if stopping not in STOPPING_RULES:
        raise ValueError(f"Unknown `stopping` {stopping!r}: choose one of {', '.join(STOPPING_RULES)}")
    if stopping == "paper" and not 0.0 < threshold <= 1.0:  # a confidence
        raise ValueError(f"Expected `threshold` in (0, 1] with stopping='paper', got {threshold!r}")
    if stopping == "art" and not threshold >= 0.0:  # a bound on the cost, as in ART
        raise ValueError(f"Expected `threshold` >= 0 with stopping='art', got {threshold!r}")
    if not (math.isfinite(learning_rate) and learning_rate > 0):
        raise ValueError(f"Expected `learning_rate` > 0, got {learning_rate!r}")
    if bounds is not None:
        if len(bounds) != 2 or not (math.isfinite(bounds[0]) and math.isfinite(bounds[1])) or bounds[0] >= bounds[1]:
            raise ValueError(f"Expected `bounds` = (low, high) with low < high, got {bounds!r}")


def _start(
    init: torch.Tensor | None, shape: tuple[int, ...], rows: int, device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    if init is None:
        return torch.zeros((rows, *shape), device=device, dtype=dtype)
    if not isinstance(init, torch.Tensor):
        raise TypeError(f"Expected `init` to be a torch.Tensor, got {type(init).__name__}")
    if tuple(init.shape) == shape:
        init = init.unsqueeze(0).expand(rows, *shape)
    if tuple(init.shape) != (rows, *shape):
        raise ValueError(f"Expected `init` of shape {shape} or {(rows, *shape)}, got {tuple(init.shape)}")
    if not bool(torch.isfinite(init).all()):
        raise ValueError("Expected a finite `init`, got NaN or infinite values")
    return init.detach().to(device=device, dtype=dtype).clone()


def _random_starts(seed: int, classes: list[int], restarts: int, shape: tuple[int, ...],
                   bounds: tuple[float, float] | None) -> torch.Tensor:
    """(K, restarts - 1, *shape) starts of restarts 1 .. restarts - 1, each from its own stream
    (float32, CPU): uniform within ``bounds``, or N(0, I) without them."""
    starts = []
    for c in classes:
        for j in range(1, restarts):
            generator = torch_generator(seed, "attack", _START, c, j)
            if bounds is None:
                starts.append(torch.randn(shape, generator=generator))
            else:
                starts.append(torch.rand(shape, generator=generator) * (bounds[1] - bounds[0]) + bounds[0])
    return torch.stack(starts).view(len(classes), restarts - 1, *shape)


def _confidence(
    model: nn.Module, x: torch.Tensor, targets: torch.Tensor, num_classes: int, *, grad: bool
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """p(target | x) per row and, with ``grad``, its gradient with respect to ``x``."""
    x = x.detach().requires_grad_(grad)
    with torch.set_grad_enabled(grad):
        logits = model(x)
        if logits.shape != (len(x), num_classes):
            raise ValueError(f"Expected `model` to return logits of shape ({len(x)}, {num_classes}) for "
                             f"{len(x)} inputs, got {tuple(logits.shape)}")
        p = torch.softmax(logits, dim=1).gather(1, targets[:, None]).squeeze(1)
        if not grad:
            return p, None
        (g,) = torch.autograd.grad(p.sum(), x)
    return p.detach(), g


def mi_face(
    model: nn.Module,
    num_classes: int,
    input_shape: Sequence[int],
    *,
    classes: Sequence[int] | torch.Tensor | None = None,
    max_iter: int = 10000,
    window_length: int = 100,
    threshold: float = 0.99,
    learning_rate: float = 0.1,
    init: torch.Tensor | None = None,
    bounds: tuple[float, float] | None = None,
    stopping: str = "paper",
    seed: int | None = None,
    restarts: int = 1,
    progress: Callable[[int, int], None] | None = None,
) -> MiFaceResult:
    """Invert ``model`` into one input per class, all classes in one batch (see the module doc).

    Parameters
    ----------
    model
        Any module mapping (N, C, H, W) inputs to (N, num_classes) logits: a released
        :class:`~rvepfl.models.Classifier`, or a stolen :class:`~rvepfl.models.PersonalModel`
        (which samples z in evaluation mode unless built with ``sample_at_eval=False``; that
        choice is the caller's). It is run in evaluation mode, and its modes are restored on
        return; its parameters, gradients and ``requires_grad`` flags are left untouched.
    num_classes
        Number of classes the model outputs.
    input_shape
        (C, H, W) of one input.
    classes
        The classes to invert (default: all, ``0 .. num_classes - 1``); one image each.
    max_iter
        Most gradient steps per class (ART's default 10000); 0 returns the start.
    window_length
        Stop a class whose cost is no lower than the highest of its previous ``window_length``
        costs, so never before step ``window_length + 1`` on this account (ART's default 100).
    threshold
        ``stopping="paper"``: stop a class once its confidence p(c | x) >= ``threshold``, in
        (0, 1]. ``stopping="art"``: a bound on the cost, used as ART uses it (module doc).
    learning_rate
        Step size on the raw gradient of p(c | x) (ART's default 0.1).
    init
        Start, (C, H, W) for every class or (K, C, H, W) per class; default zeros, as ART. With
        restarts, the start of restart 0.
    bounds
        (low, high) to clip every iterate to, in model input space (ART's ``clip_values``);
        default none, as ART.
    stopping
        ``"paper"`` (default) or ``"art"``; see :data:`STOPPING_RULES` and the module doc.
    seed
        If given, any randomness inside the model (a PersonalModel's sampled z) is drawn from
        torch's global generator seeded from ``derive_seed(seed, "attack")`` inside a fork, so
        the caller's global generator is left as it was. ``None``: the model draws from the
        global generator as it stands. MI-Face itself uses no randomness but the random starts
        of restarts beyond the first, drawn from ``seed`` too (module doc).
    restarts
        Starts per class (>= 1; more than 1 needs ``seed``); per class, the restart of highest
        final confidence is kept (module doc). All classes x restarts run in one batch.
    progress
        Told ``(steps done, max_iter)`` after every step (of the classes still running); it
        only observes (the result is the same without it).

    Returns
    -------
    MiFaceResult
        Per class, the chosen restart's image in model input space, steps taken and final
        confidence; the seconds; the chosen restarts.
    """
    started = time.perf_counter()
    if not isinstance(model, nn.Module):
        raise TypeError(f"Expected `model` to be a torch.nn.Module, got {type(model).__name__}")
    _check_int("num_classes", num_classes, 2)
    shape = tuple(int(s) for s in input_shape)
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"Expected `input_shape` = (C, H, W) of positive sizes, got {tuple(input_shape)}")
    _check_int("max_iter", max_iter, 0)
    _check_int("window_length", window_length, 1)
    threshold, learning_rate = float(threshold), float(learning_rate)
    _check_settings(stopping, threshold, learning_rate, bounds)
    targets = _check_classes(classes, num_classes)
    _check_int("restarts", restarts, 1)
    if restarts > 1 and (isinstance(seed, bool) or not isinstance(seed, int)):
        raise ValueError(f"Expected `seed` to be an integer with restarts > 1 (it draws their starts), got {seed!r}")

    reference = next(iter(model.parameters()), None)
    device = reference.device if reference is not None else torch.device("cpu")
    dtype = reference.dtype if reference is not None and reference.is_floating_point() else torch.float32
    k = len(targets)
    x = _start(init, shape, k, device, dtype)
    if restarts > 1:  # row k * restarts + j: class k, restart j (restart 0 from `init`)
        # seed is an int with restarts > 1 (checked above)
        others = _random_starts(seed, targets.tolist(), restarts, shape, bounds).to(  # type: ignore[arg-type]
            device=device, dtype=dtype)
        x = torch.cat([x.unsqueeze(1), others], dim=1).flatten(0, 1).contiguous()
    rows = targets.to(device).repeat_interleave(restarts)

    modes = {module: module.training for module in model.modules()}
    model.eval()
    try:
        forked = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=forked, enabled=seed is not None):
            if seed is not None:
                torch.manual_seed(derive_seed(seed, "attack"))
            iterations, confidences = _descend(
                model, x, rows, num_classes, max_iter=max_iter, window_length=window_length, threshold=threshold,
                learning_rate=learning_rate, bounds=bounds, stopping=stopping, progress=progress,
            )
    finally:
        for module, training in modes.items():
            module.training = training
    if restarts == 1:
        best = torch.zeros(k, dtype=torch.int64)
        images = x
    else:  # the restart of highest final confidence (argmax: the first on a tie)
        best = confidences.view(k, restarts).argmax(dim=1)
        pick = torch.arange(k) * restarts + best
        images = x.index_select(0, pick.to(device))
        iterations, confidences = iterations[pick], confidences[pick]
    return MiFaceResult(
        images=images,
        classes=targets.cpu(),
        iterations=iterations,
        confidences=confidences,
        seconds=time.perf_counter() - started,
        restart=best,
    )


def _descend(
    model: nn.Module,
    x: torch.Tensor,
    targets: torch.Tensor,
    num_classes: int,
    *,
    max_iter: int,
    window_length: int,
    threshold: float,
    learning_rate: float,
    bounds: tuple[float, float] | None,
    stopping: str,
    progress: Callable[[int, int], None] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the descent on ``x`` in place; return (steps taken, final confidences) per row.

    One forward/backward pass per step, on the rows still running: the pass that scores step i
    (the stopping test) also gives the gradient for step i + 1.
    """
    rows, device = len(targets), x.device
    iterations = torch.zeros(rows, dtype=torch.int64, device=device)
    running = torch.arange(rows, device=device)
    p, g = _confidence(model, x, targets, num_classes, grad=max_iter > 0)
    confidences = p.clone()
    # Costs are kept in the model's dtype, as ART keeps them in float32.
    window = torch.full((rows, window_length), math.inf, dtype=p.dtype, device=device)
    for i in range(max_iter):
        step = x.index_select(0, running) + learning_rate * g  # type: ignore[operator]  # max_iter > 0: a gradient
        if bounds is not None:
            step.clamp_(bounds[0], bounds[1])
        x.index_copy_(0, running, step)
        iterations.index_add_(0, running, torch.ones_like(running))
        # Score the new iterates; unless this is the last step, keep the gradient for the next.
        p, g = _confidence(model, step, targets.index_select(0, running), num_classes, grad=i + 1 < max_iter)
        confidences.index_copy_(0, running, p)
        cost = 1.0 - p
        stuck = cost >= window.index_select(0, running).amax(dim=1)
        if stopping == "paper":
            stop = stuck | (p >= threshold)
        else:  # ART: `active = (cost <= threshold) + (cost >= max(window))`, i.e. go on if either
            stop = ~((cost <= threshold) | stuck)
        window[running, i % window_length] = cost
        if progress is not None:
            progress(i + 1, max_iter)
        if bool(stop.any()):
            keep = ~stop
            running, g = running[keep], (g[keep] if g is not None else None)
            if len(running) == 0:
                break
    return iterations.cpu(), confidences.detach().cpu()


# -- the attack, as ``rvepfl attack miface`` runs it -----------------------------------------------
class MiFace(InversionAttack):
    """``rvepfl attack miface``: :func:`mi_face` on the model of the threat model, in the model's
    own input space (a released classifier that reads a private encoder's sample z is inverted in
    z's space, and the result scored against x)."""

    name = "miface"
    label = "MI-Face"
    description = ("per-class descent on the input to raise p(class), IBM ART's MIFace parameters, every class and "
                   "restart in one batch (Fredrikson et al., CCS 2015)")
    rank = 40
    default_iterations = 1000
    default_restarts = 1
    own_columns = ("iterations", "confidence")

    def open(self, target, settings, cache=None) -> None:
        for client in settings.victims:
            target.inversion_model(settings.threat, settings.round, client)

    def inverted_model(self, target, settings):
        return target.inversion_model(settings.threat, settings.round, settings.client)[0]

    def inversion_key(self, target, settings, evaluator_note, cache):
        bounds = target.inversion_model(settings.threat, settings.round, settings.client)[1]
        return (*super().inversion_key(target, settings, evaluator_note, cache), bounds)

    def invert(self, target, settings, log, status, *, evaluator, cache) -> Inversion:
        s = settings
        model, bounds = target.inversion_model(s.threat, s.round, s.client)
        restarts = f" x {s.restarts} restarts" if s.restarts > 1 else ""
        log(f"miface: {target.num_classes} classes{restarts}, up to {s.iterations} iterations ({s.threat} model)")
        # Classes stop early, so the time left is an upper bound.
        progress = Tracker(s.iterations, status).progress(
            0, lambda done, total: f"miface: iteration {done} of up to {total}")
        # The seed also drives a private encoder's sampled z.
        result = mi_face(model, target.num_classes, target.input_shape, max_iter=s.iterations, bounds=bounds,
                         seed=s.seed, restarts=s.restarts, progress=progress)
        pixels = to_pixels(result.images.detach().float().cpu(), target.dataset)
        return Inversion(pixels, torch.as_tensor(result.classes),
                         {"iterations": [int(v) for v in result.iterations],
                          "confidence": [float(v) for v in result.confidences]}, float(result.seconds))
