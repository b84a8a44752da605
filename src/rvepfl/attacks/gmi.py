"""Generative model inversion (GMI): invert a classifier through a GAN prior of public images.

Zhang, Jia, Pei, Wang, Li and Song, "The Secret Revealer: Generative Model-Inversion Attacks
Against Deep Neural Networks", CVPR 2020 (arXiv:1911.07135). Where MI-Face (:mod:`.miface`)
descends on the pixels, which finds faint adversarial strokes, GMI searches the latent space of
a generator trained on public images of the same domain (images the victim never saw), so every
candidate looks like an image of that domain, and the victim's classifier only has to pick
*which* such image is most like its class.

**The prior** (:func:`train_prior`, :class:`Prior`) is a small DCGAN (Radford, Metz and Chintala,
"Unsupervised Representation Learning with Deep Convolutional Generative Adversarial Networks",
ICLR 2016), trained with the non-saturating loss of Goodfellow et al. (NeurIPS 2014). GMI trains
a WGAN-GP; a DCGAN learns recognisable digits in far fewer steps on a CPU, which is why it is
used here, and the realism term below is the same term in the DCGAN's own (non-saturating)
form. For images of H x W pixels (H and W divisible by 4):

- generator: w (latent_dim) -> linear -> (2 width, H/4, W/4) -> batch norm, ReLU ->
  transposed conv 4x4 stride 2 -> (width, H/2, W/2) -> batch norm, ReLU -> transposed conv
  4x4 stride 2 -> (C, H, W) -> sigmoid, so pixels lie in [0, 1];
- discriminator: conv 4x4 stride 2 (width) -> leaky ReLU -> conv 4x4 stride 2 (2 width) ->
  leaky ReLU -> linear -> one logit (no batch norm, so it scores every image on its own).

Both use Adam with DCGAN's betas (0.5, 0.999), at a learning rate of 5e-4 rather than DCGAN's
2e-4: in the 1,500 steps of the default, it gave clearer digits (on 4,000 MNIST images).

**The search** (:func:`gmi_search`) follows GMI's second stage. For each target class ``c`` and
each of ``restarts`` starts w_0 ~ N(0, I) it minimises

    L(w) = -log softmax(model(to_input(G(w))))[c] + prior_weight * softplus(-D(G(w)))

over w by Adam, clamping w to [-clamp, clamp] after every step (GMI clamps its latent to
[-1, 1]; its uniform latent lives there, a Gaussian one mostly within [-3, 3]). The first term is
GMI's identity loss, the second its prior loss ("realism": -log sigmoid(D), the non-saturating
form of GMI's -D). Every class and restart is one row of one batch, one forward and backward
pass per iteration; rows do not interact (the generator and the discriminator run in evaluation
mode, and the loss is a sum over rows), so a class's result does not depend on which other
classes are attacked. Per class the restart of lowest identity loss is kept. With
``victim=False`` the identity term is off: the search only makes the prior's samples more
realistic and picks by realism, the control "what the prior gives without the victim".

>>> import torch
>>> from torch import nn
>>> pixels = torch.rand(32, 1, 8, 8, generator=torch.Generator().manual_seed(0))
>>> prior = train_prior(pixels, seed=0, steps=3, batch_size=8, latent_dim=4, width=4)
>>> model = nn.Sequential(nn.Flatten(), nn.Linear(64, 3))
>>> result = gmi_search(model, prior, 3, to_input=lambda x: x, restarts=2, iterations=5, seed=0)
>>> result.images.shape, result.all_images.shape, result.classes.tolist()
(torch.Size([3, 1, 8, 8]), torch.Size([3, 2, 1, 8, 8]), [0, 1, 2])
>>> bool(((result.images >= 0) & (result.images <= 1)).all())
True
"""

from __future__ import annotations

import copy
import hashlib
import json
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from rvepfl.attacks.base import AttackRequest, AttackSettings, Log, evaluator_images
from rvepfl.attacks.common import Tracker
from rvepfl.attacks.inversion import Inversion, InversionAttack, pooled_share
from rvepfl.attacks.threat import Target
from rvepfl.data.datasets import NORMALISATION
from rvepfl.errors import CheckpointError, ConfigError
from rvepfl.io import file_lock, load_tensors, read_metadata, save_tensors
from rvepfl.params import need
from rvepfl.seeding import derive_seed, numpy_rng, torch_generator

__all__ = ["MIN_PRIOR_IMAGES", "Gmi", "GmiParams", "GmiResult", "Prior", "PriorDiscriminator", "PriorGenerator",
           "gmi_search", "prior_path", "prior_source", "train_prior"]

_KIND = "rvepfl-gmi-prior"
# Keys of GMI's sub-streams within the "attack" stream of its seed.
_INIT, _ORDER, _LATENT, _START, _MODEL = 9400, 9401, 9402, 9403, 9404
_SLOPE = 0.2  # leaky ReLU slope of the discriminator (DCGAN's)
_BETAS = (0.5, 0.999)  # Adam's betas for the GAN (DCGAN's)


class PriorGenerator(nn.Module):
    """Latent w (N, latent_dim) -> [0, 1] pixels (N, C, H, W); H and W divisible by 4."""

    def __init__(self, latent_dim: int, image_shape: tuple[int, int, int], width: int) -> None:
        super().__init__()
        c, h, w = image_shape
        self.latent_dim, self.image_shape, self.width = latent_dim, (c, h, w), width
        self.fc = nn.Linear(latent_dim, 2 * width * (h // 4) * (w // 4), bias=False)
        self.norm0 = nn.BatchNorm2d(2 * width)
        self.up1 = nn.ConvTranspose2d(2 * width, width, 4, stride=2, padding=1, bias=False)
        self.norm1 = nn.BatchNorm2d(width)
        self.up2 = nn.ConvTranspose2d(width, c, 4, stride=2, padding=1)

    def forward(self, latent: torch.Tensor) -> torch.Tensor:
        _, h, w = self.image_shape
        x = self.fc(latent).view(len(latent), 2 * self.width, h // 4, w // 4)
        x = F.relu(self.norm0(x))
        x = F.relu(self.norm1(self.up1(x)))
        return torch.sigmoid(self.up2(x))


class PriorDiscriminator(nn.Module):
    """[0, 1] pixels (N, C, H, W) -> one realism logit per image (N,)."""

    def __init__(self, image_shape: tuple[int, int, int], width: int) -> None:
        super().__init__()
        c, h, w = image_shape
        self.image_shape, self.width = (c, h, w), width
        self.conv1 = nn.Conv2d(c, width, 4, stride=2, padding=1)
        self.conv2 = nn.Conv2d(width, 2 * width, 4, stride=2, padding=1)
        self.out = nn.Linear(2 * width * (h // 4) * (w // 4), 1)

    def forward(self, pixels: torch.Tensor) -> torch.Tensor:
        x = F.leaky_relu(self.conv1(2 * pixels - 1), _SLOPE)  # centre the pixels on 0
        x = F.leaky_relu(self.conv2(x), _SLOPE)
        return self.out(x.flatten(1)).squeeze(1)


def _build(latent_dim: int, image_shape: tuple[int, int, int], width: int,
           generator: torch.Generator | None) -> tuple[PriorGenerator, PriorDiscriminator]:
    """The two networks, built without touching torch's global generator: weights ~ N(0, 0.02)
    (DCGAN's initialisation) from ``generator``, or left for a state dict when it is None."""
    with torch.device("meta"):
        nets: tuple[nn.Module, ...] = (PriorGenerator(latent_dim, image_shape, width),
                                       PriorDiscriminator(image_shape, width))
    nets = tuple(net.to_empty(device="cpu") for net in nets)
    for net in nets:
        for module in net.modules():
            if isinstance(module, nn.BatchNorm2d):
                module.reset_parameters()
                if generator is not None:
                    nn.init.normal_(module.weight, 1.0, 0.02, generator=generator)
            elif isinstance(module, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)) and generator is not None:
                nn.init.normal_(module.weight, 0.0, 0.02, generator=generator)
                if module.bias is not None:
                    nn.init.zeros_(module.bias)
    return nets  # type: ignore[return-value]


def _check_int(name: str, value: object, minimum: int) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise TypeError(f"Expected `{name}` to be an integer, got {type(value).__name__}")
    if value < minimum:
        raise ValueError(f"Expected `{name}` >= {minimum}, got {value!r}")
    return value


def _check_float(name: str, value: object, *, positive: bool) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"Expected `{name}` to be a number, got {type(value).__name__}")
    value = float(value)
    if not math.isfinite(value) or value < 0 or (positive and value == 0):
        raise ValueError(f"Expected `{name}` {'>' if positive else '>='} 0, got {value!r}")
    return value


class Prior:
    """A trained image prior: a generator, its discriminator and how they were trained.

    Attributes
    ----------
    generator
        :class:`PriorGenerator`, latent (N, latent_dim) -> [0, 1] pixels (kept in evaluation mode).
    discriminator
        :class:`PriorDiscriminator`, pixels -> realism logits (kept in evaluation mode).
    latent_dim
        Size of the latent w.
    image_shape
        (C, H, W) of the images it generates.
    num_images
        Images it was trained on.
    steps
        Training steps (one discriminator and one generator update each).
    """

    def __init__(self, generator: PriorGenerator, discriminator: PriorDiscriminator, *, num_images: int,
                 steps: int) -> None:
        if tuple(generator.image_shape) != tuple(discriminator.image_shape):
            raise ValueError(f"Expected the generator's and discriminator's image shapes to agree, got "
                             f"{generator.image_shape} and {discriminator.image_shape}")
        self.generator = generator.eval()
        self.discriminator = discriminator.eval()
        self.latent_dim = int(generator.latent_dim)
        self.image_shape = tuple(int(s) for s in generator.image_shape)
        self.num_images = int(num_images)
        self.steps = int(steps)

    def __repr__(self) -> str:
        return (f"Prior(image_shape={self.image_shape}, latent_dim={self.latent_dim}, "
                f"width={self.generator.width}, num_images={self.num_images}, steps={self.steps})")

    def sample(self, n: int, generator: torch.Generator) -> torch.Tensor:
        """``n`` images (n, C, H, W) in [0, 1] from latents w ~ N(0, I) drawn from ``generator``."""
        _check_int("n", n, 0)
        if not isinstance(generator, torch.Generator):
            raise TypeError(f"Expected `generator` to be a torch.Generator, got {type(generator).__name__}")
        latent = torch.randn(n, self.latent_dim, generator=generator, device=generator.device)
        device = next(self.generator.parameters()).device
        self.generator.eval()
        with torch.no_grad():
            return self.generator(latent.to(device)).cpu()

    def save(self, path: str | Path) -> None:
        """Write both networks and the settings needed to rebuild them to a safetensors file."""
        c, h, w = self.image_shape
        meta = {
            "format": _KIND, "channels": str(c), "image_height": str(h), "image_width": str(w),
            "latent_dim": str(self.latent_dim), "net_width": str(self.generator.width),
            "num_images": str(self.num_images), "steps": str(self.steps),
        }
        tensors = {f"generator.{k}": v for k, v in self.generator.state_dict().items()}
        tensors.update({f"discriminator.{k}": v for k, v in self.discriminator.state_dict().items()})
        save_tensors(path, tensors, meta)

    @classmethod
    def load(cls, path: str | Path) -> Prior:
        """Read a prior written by :meth:`save` (raises CheckpointError if it is not one)."""
        if not Path(path).is_file():
            raise CheckpointError(f"GMI prior not found: {path}; train one with train_prior")
        try:
            meta = read_metadata(path)
        except CheckpointError as exc:
            raise CheckpointError(f"{_reason(exc)}; delete it to retrain the prior") from None
        if meta.get("format") != _KIND:
            raise CheckpointError(f"{path} is not a GMI prior ({_KIND}) file (format={meta.get('format')!r}): "
                                  "delete it to retrain the prior")
        try:
            c, h, w = int(meta["channels"]), int(meta["image_height"]), int(meta["image_width"])
            latent_dim, width = int(meta["latent_dim"]), int(meta["net_width"])
            num_images, steps = int(meta["num_images"]), int(meta["steps"])
            if min(c, latent_dim, width) < 1 or h < 4 or w < 4 or h % 4 or w % 4:
                raise ValueError(f"impossible sizes {(c, h, w)}, latent_dim={latent_dim}, width={width}")
        except (KeyError, ValueError) as exc:
            raise CheckpointError(f"{path}: incomplete GMI prior metadata ({exc}); delete it to retrain the "
                                  "prior") from None
        gen, disc = _build(latent_dim, (c, h, w), width, None)
        expected = {f"generator.{k}": v for k, v in gen.state_dict().items()}
        expected.update({f"discriminator.{k}": v for k, v in disc.state_dict().items()})
        try:
            tensors = load_tensors(path, kind=_KIND)
        except CheckpointError as exc:
            raise CheckpointError(f"{_reason(exc)}; delete it to retrain the prior") from None
        for key, ref in expected.items():
            got = tensors.get(key)
            if got is None or got.shape != ref.shape or got.dtype != ref.dtype:
                found = "missing" if got is None else f"{tuple(got.shape)} {got.dtype}"
                raise CheckpointError(f"{path}: `{key}` is {found}, its metadata asks for {tuple(ref.shape)} "
                                      f"{ref.dtype}; delete it to retrain the prior")
        if set(tensors) != set(expected):
            raise CheckpointError(f"{path}: unexpected tensors {sorted(set(tensors) - set(expected))[:3]} in a "
                                  "GMI prior; delete it to retrain the prior")
        gen.load_state_dict({k[len("generator."):]: v for k, v in tensors.items() if k.startswith("generator.")})
        disc.load_state_dict({k[len("discriminator."):]: v for k, v in tensors.items()
                              if k.startswith("discriminator.")})
        for net in (gen, disc):
            if not all(bool(torch.isfinite(t).all()) for t in net.state_dict().values() if t.is_floating_point()):
                raise CheckpointError(f"{path}: the GMI prior holds NaN or infinite weights; delete it to "
                                      "retrain the prior")
        return cls(gen, disc, num_images=num_images, steps=steps)


def _reason(exc: CheckpointError) -> str:
    """The message of :mod:`rvepfl.io`'s error without its advice for run checkpoints."""
    return str(exc).rsplit("; restore it", 1)[0].rsplit(": restore it", 1)[0]


def _check_pixels(pixels: object) -> torch.Tensor:
    if not isinstance(pixels, torch.Tensor):
        raise TypeError(f"Expected `pixels` to be a torch.Tensor, got {type(pixels).__name__}")
    if pixels.ndim != 4 or not pixels.is_floating_point():
        raise ValueError(f"Expected `pixels` to be float (N, C, H, W), got {pixels.dtype} of shape "
                         f"{tuple(pixels.shape)}")
    _, c, h, w = pixels.shape
    if c < 1 or h < 4 or w < 4 or h % 4 or w % 4:
        raise ValueError(f"Expected images whose height and width are multiples of 4 (>= 4), got {(c, h, w)}")
    if len(pixels) < 2:
        raise ValueError(f"Expected `pixels` to hold at least 2 images, got {len(pixels)}")
    if not bool(((pixels >= 0) & (pixels <= 1)).all()):
        raise ValueError(f"Expected `pixels` in [0, 1], got values in [{pixels.min().item():.4g}, "
                         f"{pixels.max().item():.4g}]")
    return pixels


def train_prior(
    pixels: torch.Tensor,
    *,
    seed: int,
    steps: int = 1500,
    batch_size: int = 64,
    latent_dim: int = 32,
    width: int = 32,
    lr: float = 5e-4,
    progress: Callable[[int, int], None] | None = None,
) -> Prior:
    """Train GMI's image prior, a small DCGAN (module doc), on public [0, 1] images.

    Parameters
    ----------
    pixels
        (N, C, H, W) float images in [0, 1], N >= 2, H and W multiples of 4: images of the
        victim's domain that the victim (and any evaluator of the attack) never saw.
    seed
        Master seed of the initial weights, the batch order and the generator's latents (the
        ``attack`` stream); the same seed, images and thread count give the same prior.
    steps
        Training steps, each one discriminator and one generator update on a batch. The
        defaults train on 4,000 MNIST digits in about a minute on one CPU thread and give
        digit-like samples.
    batch_size
        Real images per step (as many generated); batches walk through seeded permutations.
    latent_dim
        Size of the latent w.
    width
        Channels of the generator's last hidden layer and the discriminator's first (then 2x).
    lr
        Adam's learning rate for both networks (betas (0.5, 0.999), as DCGAN's).
    progress
        Told ``(steps done, steps)`` after every step; it only observes.

    Returns
    -------
    Prior
        The trained generator and discriminator, in evaluation mode, on the CPU.
    """
    x = _check_pixels(pixels).detach().float().cpu()
    _check_int("seed", seed, 0)
    _check_int("steps", steps, 1)
    _check_int("batch_size", batch_size, 1)
    _check_int("latent_dim", latent_dim, 1)
    _check_int("width", width, 1)
    lr = _check_float("lr", lr, positive=True)
    if progress is not None and not callable(progress):
        raise TypeError(f"Expected `progress` to be callable, got {type(progress).__name__}")
    batch_size = min(batch_size, len(x))
    if batch_size < 2:
        raise ValueError(f"Expected `batch_size` >= 2 (batch norm needs two images), got {batch_size}")

    gen, disc = _build(latent_dim, tuple(x.shape[1:]), width,  # type: ignore[arg-type]  # x: (N, C, H, W)
                       torch_generator(seed, "attack", _INIT))
    opt_g = torch.optim.Adam(gen.parameters(), lr=lr, betas=_BETAS)
    opt_d = torch.optim.Adam(disc.parameters(), lr=lr, betas=_BETAS)
    order, latents = torch_generator(seed, "attack", _ORDER), torch_generator(seed, "attack", _LATENT)
    ones, zeros = torch.ones(batch_size), torch.zeros(batch_size)
    perm, at = torch.randperm(len(x), generator=order), 0
    gen.train()
    disc.train()
    for step in range(steps):
        if at + batch_size > len(x):  # a fresh permutation; the tail of the old one is dropped
            perm, at = torch.randperm(len(x), generator=order), 0
        real = x[perm[at: at + batch_size]]
        at += batch_size
        fake = gen(torch.randn(batch_size, latent_dim, generator=latents))
        # The discriminator: real -> 1, generated -> 0.
        loss_d = (F.binary_cross_entropy_with_logits(disc(real), ones)
                  + F.binary_cross_entropy_with_logits(disc(fake.detach()), zeros))
        opt_d.zero_grad(set_to_none=True)
        loss_d.backward()
        opt_d.step()
        # The generator, non-saturating: make the discriminator say 1 for its images.
        loss_g = F.binary_cross_entropy_with_logits(disc(fake), ones)
        opt_g.zero_grad(set_to_none=True)
        loss_g.backward()
        opt_g.step()
        if progress is not None:
            progress(step + 1, steps)
    for net in (gen, disc):
        for p in net.parameters():
            p.grad = None
    return Prior(gen, disc, num_images=len(x), steps=steps)


@dataclass(frozen=True)
class GmiResult:
    """The outcome of :func:`gmi_search`, one row per attacked class.

    Attributes
    ----------
    images
        (K, C, H, W) the chosen image of each class (its restart of lowest identity loss; with
        ``victim=False`` of lowest realism loss), [0, 1] pixels, on the CPU.
    all_images
        (K, R, C, H, W) the final image of every restart, [0, 1] pixels, on the CPU.
    classes
        (K,) int64 target class of each row.
    confidences
        (K,) the model's softmax probability of the class at the chosen image.
    identity_loss
        (K,) -log of that probability (the identity loss at the chosen image).
    seconds
        Wall-clock time of the whole search.
    """

    images: torch.Tensor
    all_images: torch.Tensor
    classes: torch.Tensor
    confidences: torch.Tensor
    identity_loss: torch.Tensor
    seconds: float


def _check_classes(classes: int | Sequence[int] | torch.Tensor) -> torch.Tensor:
    if isinstance(classes, int) and not isinstance(classes, bool):
        if classes < 1:
            raise ValueError(f"Expected `classes` >= 1 when it is a number of classes, got {classes}")
        return torch.arange(classes)
    try:
        out = torch.as_tensor(classes)
    except (TypeError, ValueError, RuntimeError):
        raise ValueError(f"Expected `classes` to be a number of classes or a 1-D sequence of integers, got "
                         f"{classes!r}") from None
    if out.ndim != 1 or out.numel() == 0 or out.dtype.is_floating_point or out.dtype.is_complex \
            or out.dtype == torch.bool:
        raise ValueError(f"Expected `classes` to be a number of classes or a non-empty 1-D sequence of integers, "
                         f"got {classes!r}")
    if bool((out < 0).any()):
        raise ValueError(f"Expected `classes` >= 0, got {out.tolist()}")
    return out.long()


def _on(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` itself if it lives on ``device``, else an evaluation-mode copy there."""
    if next(module.parameters()).device == device:
        return module
    return copy.deepcopy(module).to(device).eval()


def gmi_search(
    model: nn.Module,
    prior: Prior,
    classes: int | Sequence[int] | torch.Tensor,
    *,
    to_input: Callable[[torch.Tensor], torch.Tensor],
    seed: int,
    restarts: int = 5,
    iterations: int = 300,
    lr: float = 0.05,
    prior_weight: float = 0.1,
    clamp: float = 3.0,
    victim: bool = True,
    progress: Callable[[int, int], None] | None = None,
) -> GmiResult:
    """Search the prior's latent space for the images ``model`` finds most like each class.

    Parameters
    ----------
    model
        Any module mapping model inputs (N, C, H, W) to (N, num_classes) logits. It is run in
        evaluation mode and its modes are restored on return; its parameters, gradients and
        ``requires_grad`` flags are left untouched. Randomness inside it (a personal model that
        samples z in evaluation mode) comes from torch's global generator seeded from ``seed``
        inside a fork, so the caller's global generator is left as it was.
    prior
        The image prior (:func:`train_prior`); it is used in evaluation mode and not changed.
    classes
        The classes to invert, one image each (a 1-D sequence of integers), or their number K
        for all of ``0 .. K - 1``.
    to_input
        Maps [0, 1] pixels (N, C, H, W) to the model's input (e.g. normalisation with the data
        set's mean and standard deviation); must be differentiable.
    seed
        Master seed: the start of class ``c``'s restart ``r`` is w ~ N(0, I) from the named
        stream ``("attack", 9403, c, r)``, so it depends neither on the other classes nor on
        the order of ``classes``.
    restarts
        Starts per class (GMI: 5); the one of lowest identity loss is kept.
    iterations
        Adam steps on the latents.
    lr
        Adam's learning rate on the latents.
    prior_weight
        Weight of the realism term softplus(-D(G(w))) against the identity loss (GMI's lambda,
        which weighs the identity loss instead: prior_weight = 1 / lambda).
    clamp
        Every latent coordinate is clamped to [-clamp, clamp] after each step.
    victim
        False: the identity term is off (only realism), the control "the prior's samples
        without the victim"; the model only scores the chosen images then.
    progress
        Told ``(iterations done, iterations)`` after every step; it only observes.

    Returns
    -------
    GmiResult
        Per class: the chosen image, all restarts' images, confidence and identity loss.
    """
    started = time.perf_counter()
    if not isinstance(model, nn.Module):
        raise TypeError(f"Expected `model` to be a torch.nn.Module, got {type(model).__name__}")
    if not isinstance(prior, Prior):
        raise TypeError(f"Expected `prior` to be a Prior, got {type(prior).__name__}")
    if not callable(to_input):
        raise TypeError(f"Expected `to_input` to be callable, got {type(to_input).__name__}")
    targets = _check_classes(classes)
    _check_int("seed", seed, 0)
    _check_int("restarts", restarts, 1)
    _check_int("iterations", iterations, 1)
    lr = _check_float("lr", lr, positive=True)
    prior_weight = _check_float("prior_weight", prior_weight, positive=False)
    clamp = _check_float("clamp", clamp, positive=True)
    if not isinstance(victim, bool):
        raise TypeError(f"Expected `victim` to be a bool, got {type(victim).__name__}")
    if progress is not None and not callable(progress):
        raise TypeError(f"Expected `progress` to be callable, got {type(progress).__name__}")

    reference = next(iter(model.parameters()), None)
    device = reference.device if reference is not None else torch.device("cpu")
    gen, disc = _on(prior.generator, device), _on(prior.discriminator, device)
    k, r = len(targets), restarts
    starts = [torch.randn(prior.latent_dim, generator=torch_generator(seed, "attack", _START, int(c), j))
              for c in targets.tolist() for j in range(r)]
    latent = torch.stack(starts).clamp_(-clamp, clamp).to(device).requires_grad_(True)
    rows = targets.to(device).repeat_interleave(r)  # row i*r + j: class i, restart j

    modes = {module: module.training for module in (*model.modules(), *gen.modules(), *disc.modules())}
    model.eval()
    gen.eval()
    disc.eval()
    try:
        forked = [device] if device.type == "cuda" else []
        with torch.random.fork_rng(devices=forked):
            torch.manual_seed(derive_seed(seed, "attack", _MODEL))
            optimiser = torch.optim.Adam([latent], lr=lr)
            for i in range(iterations):
                images = gen(latent)
                loss = prior_weight * F.softplus(-disc(images)).sum()
                if victim:
                    loss = loss + _identity(model, to_input(images), rows).sum()
                (latent.grad,) = torch.autograd.grad(loss, latent)
                optimiser.step()
                with torch.no_grad():
                    latent.clamp_(-clamp, clamp)
                if progress is not None:
                    progress(i + 1, iterations)
            with torch.no_grad():
                images = gen(latent)
                identity = _identity(model, to_input(images), rows).view(k, r)
                realism = F.softplus(-disc(images)).view(k, r)
    finally:
        for module, training in modes.items():
            module.training = training
    best = (identity if victim else realism).argmin(dim=1)
    all_images = images.detach().float().cpu().view(k, r, *prior.image_shape)
    chosen_loss = identity.gather(1, best[:, None]).squeeze(1).float().cpu()
    return GmiResult(
        images=all_images[torch.arange(k), best.cpu()].clone(),
        all_images=all_images,
        classes=targets.clone(),
        confidences=torch.exp(-chosen_loss),
        identity_loss=chosen_loss,
        seconds=time.perf_counter() - started,
    )


def _identity(model: nn.Module, inputs: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """Per row: -log softmax(model(inputs))[class of the row]."""
    logits = model(inputs)
    if logits.ndim != 2 or len(logits) != len(inputs):
        raise ValueError(f"Expected `model` to return logits of shape ({len(inputs)}, K), got "
                         f"{tuple(logits.shape)}")
    if int(rows.max()) >= logits.shape[1]:
        raise ValueError(f"Expected `classes` < {logits.shape[1]} (the model's classes), got {int(rows.max())}")
    return F.cross_entropy(logits.float(), rows, reduction="none")


# -- the attack, as ``rvepfl attack gmi`` runs it ---------------------------------------------------
MIN_PRIOR_IMAGES = 500
"""The fewest images the prior is trained on."""
_POOL = 9410  # the prior's draw of images within the "attack" stream of the run's seed (training uses 9400-9402)


@dataclass(frozen=True)
class GmiParams:
    """GMI's own settings (``--param KEY=VALUE``, ``[audit.params.gmi]``)."""

    prior_images: int = 5000
    """The most images the prior trains on: a seeded draw of those no client has and the evaluator
    was not trained on (in a run that used every image: of the clients other than the victim)."""
    prior_steps: int = 1500
    """The prior's training steps (a batch of real and one of generated images each)."""
    prior_batch: int = 64
    """Images in each of the prior's training batches."""
    latent_dim: int = 32
    """Dimension of the prior's latent space, the space the attack searches."""
    prior_width: int = 32
    """Channels of the generator's last hidden layer and the discriminator's first (then twice as many)."""
    prior_lr: float = 5e-4
    """Adam's learning rate in the prior's training (both networks)."""
    lr: float = 0.05
    """Adam's learning rate in the latent search."""
    prior_weight: float = 0.1
    """Weight of the prior's realism term, softplus(-D(G(w))), against the victim's identity loss."""

    def check(self, section: str) -> None:
        for key in ("prior_images", "prior_steps", "prior_batch", "latent_dim", "prior_width"):
            value = getattr(self, key)
            need(value >= 1, f"{section}.{key}", value, ">= 1")
        need(self.prior_images >= MIN_PRIOR_IMAGES, f"{section}.prior_images", self.prior_images,
             f">= {MIN_PRIOR_IMAGES}")
        need(math.isfinite(self.prior_lr) and self.prior_lr > 0, f"{section}.prior_lr", self.prior_lr, "> 0")
        need(math.isfinite(self.lr) and self.lr > 0, f"{section}.lr", self.lr, "> 0")
        need(math.isfinite(self.prior_weight) and self.prior_weight >= 0, f"{section}.prior_weight",
             self.prior_weight, ">= 0")


def prior_source(target: Target, settings: AttackSettings) -> tuple[torch.Tensor, str]:
    """The images the prior trains on, [0, 1] pixels, and where they come from in words: up to
    ``prior_images`` (a seeded draw) of the images the evaluator draws from (those no client has;
    in a run that used every image, those of the clients other than the victim) less the
    evaluator's own. A one-line :class:`ConfigError` when fewer than :data:`MIN_PRIOR_IMAGES` are left."""
    drawn = evaluator_images(target, settings.evaluator_images, victim=settings.client)
    if isinstance(drawn, str):
        kept = len(target.heldout()[1])
        others = len(target.images_without(settings.client)[1])
        raise ConfigError(f"gmi trains its image prior on images no client has (in a run that used every image: of "
                          f"the clients other than client {settings.client}) and the evaluator was not trained on; "
                          f"this run kept {kept} images out and the other clients hold {others}, too few even for "
                          f"the evaluator: train with data.subset to keep images out")
    x, _, source, _, pick = drawn
    rest = np.setdiff1d(np.arange(len(x)), pick.numpy())
    if len(rest) < MIN_PRIOR_IMAGES:
        raise ConfigError(f"gmi trains its image prior on at least {MIN_PRIOR_IMAGES} images that the evaluator was "
                          f"not trained on, and {len(rest)} of the {len(x)} {source} are left once the evaluator's "
                          f"{len(pick)} are taken: lower --evaluator-images, or train with a smaller data.subset")
    p: GmiParams = settings.params
    n = min(len(rest), p.prior_images)
    rest = np.sort(rest[numpy_rng(target.cfg.seed, "attack", _POOL, n).permutation(len(rest))[:n]])
    return x[torch.from_numpy(rest)], f"{n} {source} that the evaluator was not trained on"


def prior_path(target: Target, settings: AttackSettings, pixels: torch.Tensor, cache: Path) -> Path:
    """Where the prior of these images and settings is cached: one file per data set, pool and
    recipe, shared by every attack that would train the same prior."""
    p: GmiParams = settings.params
    recipe = json.dumps({"seed": target.cfg.seed, "steps": p.prior_steps, "batch": p.prior_batch,
                         "latent_dim": p.latent_dim, "width": p.prior_width, "lr": p.prior_lr}, sort_keys=True)
    digest = hashlib.sha256(pixels.numpy().tobytes() + recipe.encode()).hexdigest()[:12]
    return cache / f"gmi-prior-{target.dataset}-{len(pixels)}-{digest}.safetensors"


class Gmi(InversionAttack):
    """``rvepfl attack gmi``: :func:`gmi_search` through an image prior trained on public images."""

    name = "gmi"
    label = "GMI"
    description = ("search of a GAN prior's latent space (trained on images no client has and the evaluator never "
                   "saw) for the images the victim labels as each class, realism term and restarts (Zhang et al., "
                   "CVPR 2020)")
    rank = 50
    default_iterations = 300
    default_restarts = 5
    Params = GmiParams
    smoke = {"prior_steps": 5}
    own_columns = ("confidence", "identity_loss", "prior_only_correct")
    _last_control: ClassVar[tuple[Any, Any]] = (None, None)
    """The last control search and its key (the prior, seed and search settings), in this process."""

    def resolve(self, target: Target, request: AttackRequest) -> AttackSettings:
        settings = super().resolve(target, request)
        for client in settings.victims:  # enough images for the prior, or a one-line error
            prior_source(target, self.client_settings(target, settings, client))
        return settings

    def open(self, target: Target, settings: AttackSettings, cache: Path | None = None) -> None:
        for client in settings.victims:
            s = self.client_settings(target, settings, client)
            target.image_model(s.threat, s.round, s.client)
            path = prior_path(target, s, prior_source(target, s)[0], cache or target.run.path / "attacks")
            if path.is_file():
                Prior.load(path)  # a damaged cache fails here, before anything is written

    def audit_scores(self, summary: dict[str, Any]) -> dict[str, Any]:
        return {**super().audit_scores(summary), "prior_only_accuracy": summary.get("prior_only_accuracy")}

    def pooled_extra(self, summaries: list[dict[str, Any]], rows: list[dict[str, Any]]) -> dict[str, Any]:
        """The priors and the attacker's model in words (each different one once), and the
        control's share over every client's classes."""
        return {"prior": "; ".join(dict.fromkeys(s["prior"] for s in summaries)),
                "attacker_model": "; ".join(dict.fromkeys(s["attacker_model"] for s in summaries)),
                "prior_only_accuracy": pooled_share([r["prior_only_correct"] for r in rows])}

    def _prior(self, target: Target, s: AttackSettings, cache: Path, log: Log,
               progress: Callable[[int, int], None]) -> tuple[Prior, str]:
        pixels, words = prior_source(target, s)
        path = prior_path(target, s, pixels, cache)
        p: GmiParams = s.params
        with file_lock(path):  # another attack process may be training the same one
            if path.is_file():
                return Prior.load(path), f"{path.name}: trained on {words}"
            log(f"gmi: training the image prior on {words} ({p.prior_steps} steps)")
            prior = train_prior(pixels, seed=target.cfg.seed, steps=p.prior_steps, batch_size=p.prior_batch,
                                latent_dim=p.latent_dim, width=p.prior_width, lr=p.prior_lr, progress=progress)
            path.parent.mkdir(parents=True, exist_ok=True)
            prior.save(path)
        return prior, f"{path.name}: trained on {words}"

    def inverted_model(self, target: Target, settings: AttackSettings) -> nn.Module:
        return target.image_model(settings.threat, settings.round, settings.client)

    def inversion_key(self, target: Target, settings: AttackSettings, evaluator_note: str,
                      cache: Path) -> tuple[Any, ...]:
        prior = prior_path(target, settings, prior_source(target, settings)[0], cache)
        return (*super().inversion_key(target, settings, evaluator_note, cache), prior.name)

    def invert(self, target: Target, settings: AttackSettings, log: Log, status: Log | None, *,
               evaluator: Any | None, cache: Path) -> Inversion:
        s, p = settings, settings.params
        started = time.perf_counter()
        tracker = Tracker(p.prior_steps + 2 * s.iterations, status)
        prior, note = self._prior(target, s, cache, log, tracker.progress(0, lambda done, total: (
            f"gmi: prior step {done}/{total}")))
        model = target.image_model(s.threat, s.round, s.client)
        mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in NORMALISATION[target.dataset])
        k = target.num_classes
        log(f"gmi: {k} classes x {s.restarts} restarts, {s.iterations} iterations ({s.threat} model)")
        searches: dict[bool, GmiResult] = {}
        # The control does not read the model (realism alone picks its images), so a job over several
        # clients' models searches it once: the last control is kept for the next client's call.
        control_key = (note, s.seed, s.restarts, s.iterations, p.lr, p.prior_weight, k)
        for i, victim in enumerate((True, False)):  # the attack, then the control without the victim's term
            if not victim and Gmi._last_control[0] == control_key:
                searches[victim] = Gmi._last_control[1]
                continue
            head = "gmi" if victim else "gmi (control, no victim)"
            searches[victim] = gmi_search(
                model, prior, k, to_input=lambda x: (x - mean) / std, seed=s.seed, restarts=s.restarts,
                iterations=s.iterations, lr=p.lr, prior_weight=p.prior_weight, victim=victim,
                progress=tracker.progress(p.prior_steps + i * s.iterations,
                                          lambda done, total, h=head: f"{h}: iteration {done}/{total}"))  # type: ignore[misc]  # a lambda with a default
        Gmi._last_control = (control_key, searches[False])
        result, control = searches[True], searches[False]
        classes = result.classes
        if evaluator is None:
            prior_only: list[Any] = [""] * k
            prior_share = None
        else:
            labels = evaluator.predict(control.all_images.flatten(0, 1)).view(k, -1)
            hits = (labels == classes[:, None]).double().mean(1)
            prior_only = [float(v) for v in hits]
            prior_share = float(hits.mean())
        return Inversion(result.images, classes,
                         {"confidence": [float(v) for v in result.confidences],
                          "identity_loss": [float(v) for v in result.identity_loss],
                          "prior_only_correct": prior_only},
                         time.perf_counter() - started,
                         extra={"prior": note, "attacker_model": target.image_model_words(s.threat, s.round),
                                "prior_only_accuracy": prior_share})
