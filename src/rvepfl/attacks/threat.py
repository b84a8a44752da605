"""Threat models: what an attacker of a finished run observes, kept apart from the ground truth.

Four threat models, each an explicit object (:data:`THREAT_MODELS`):

- ``gradient`` -- an honest-but-curious server. It sent the shared model to a client and sees
  the gradient that client computes on one batch of its training data (one local step of
  learning rate ``train.lr``), *as the method exposes it on the wire*:

  - ``rvepfl``: the gradient of the classifier only; the classifier's input is the encoder's
    sample z, so the attacker reconstructs z and is scored against x;
  - ``fedavg``: the gradient of the whole classifier on raw images;
  - ``nbafl``: the upload is the clipped parameter vector plus N(0, sigma_u^2) noise, so the
    server's view of the step is ``(theta - (clip(theta - lr * g) + noise)) / lr``;
  - ``dp-fedavg`` (central DP): the server sees each client's clipped update before it adds
    its noise to the aggregate, so the view is ``-clip(-lr * g, C) / lr``;
  - ``dp-sgd``: the client's privatised gradient, per-sample gradients clipped to
    ``max_grad_norm``, summed, plus N(0, (sigma * max_grad_norm)^2), divided by the batch size;
  - ``fedper`` and ``fedrep`` keep the classifier's head private, so the shared part has no
    path from input to logits: a gradient attack needs one, and these methods are attacked
    through ``released``/``stolen`` models only (a clear error says so).

  Whatever the method, the attacker is given the batch size and the shared model's weights,
  and the model is evaluated without dropout (the attacker's best case).
- ``update`` -- the same server, which sees a client's *whole round* instead: the upload after
  all its local steps, as the method puts it on the wire. :meth:`Target.observe_update`
  produces it by running the method's own ``local_train`` and ``upload`` from the round's
  global state (and the client's private state) on ``B`` of the client's images, with
  ``train.batch_size = B`` and ``train.local_epochs = S``: S local steps, each on all B images
  (dropout on, the encoder sampling z, DP-SGD's clipping and noise, as in training). The server
  reads the shared update ``theta_after - theta_before`` off the upload (NbAFL: the clipped,
  noised parameters minus what it sent; DP-FedAvg: the clipped update itself, before the
  server's noise) and, knowing B, S and ``train.lr``, treats ``-update / (lr * S)`` as the
  mean gradient over the B images (the FedSGD view of a multi-step update) and attacks it with
  the gradient attacks. The methods train with Adam, whose step is normalised per coordinate,
  so this view is a gradient's direction, roughly sign by sign, rather than its size: the
  cosine of Inverting Gradients suits it, DLG's squared distance does not. FedPer and FedRep
  have no such surface either.
- ``released`` -- the global shared model of a round is public (for RVE-PFL: the classifier,
  whose input space is z, not x).
- ``stolen`` -- one client's full personal model (for RVE-PFL: its private encoder followed by
  the classifier) is in the attacker's hands: the strongest case.

:class:`Target` opens a run directory read-only: it rebuilds the run's data and partition from
its ``config.toml`` (refusing if they differ from the saved partition) and loads the saved
safetensors checkpoints. Victims' images go to :class:`GroundTruth`, which only the scoring
reads.
"""

from __future__ import annotations

import copy
import dataclasses
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rvepfl.attacks.gradient import GradientObservation, observed_gradient
from rvepfl.attacks.scores import to_pixels
from rvepfl.config import Config, load_config
from rvepfl.data.datasets import NORMALISATION, load_dataset, subset_indices
from rvepfl.errors import CheckpointError, ConfigError, NoAttackSurface
from rvepfl.fl.simulation import GLOBAL_KIND, Federation, check_partition, prepare
from rvepfl.fl.store import load_client_state
from rvepfl.io import load_tensors
from rvepfl.methods import ClientData, RoundContext, get_method
from rvepfl.privacy import add_gaussian_noise, clip_by_l2
from rvepfl.rundir import RunDir
from rvepfl.seeding import derive_seed, numpy_rng, seed_torch, torch_generator

__all__ = ["THREAT_MODELS", "GroundTruth", "Target", "ThreatModel"]


@dataclass(frozen=True)
class ThreatModel:
    """What an attacker observes, in words (written into every attack summary)."""

    name: str
    observes: str


THREAT_MODELS: dict[str, ThreatModel] = {
    "gradient": ThreatModel(
        "gradient",
        "honest-but-curious server: the shared model it sent and one client's gradient on one batch, "
        "as the method puts it on the wire (noised or clipped for the DP methods), and the batch size",
    ),
    "update": ThreatModel(
        "update",
        "honest-but-curious server: the shared model it sent and one client's whole-round upload (every local "
        "step on one batch), as the method puts it on the wire, with the batch size, the number of local steps and "
        "the learning rate; attacked as the mean gradient -update / (lr * steps)",
    ),
    "released": ThreatModel("released", "the global shared model after a round (for RVE-PFL: the classifier, input z)"),
    "stolen": ThreatModel("stolen", "one client's full personal model (for RVE-PFL: its private encoder and the classifier)"),
}


@dataclass(frozen=True)
class GroundTruth:
    """The victims' data, for scoring only: images in [0, 1] pixel space and their labels."""

    pixels: torch.Tensor
    labels: torch.Tensor
    indices: tuple[int, ...]
    """Positions in the client's training split."""


def _pixel_bounds(dataset: str) -> tuple[float, float]:
    mean, std = NORMALISATION[dataset]
    return min((0.0 - m) / s for m, s in zip(mean, std)), max((1.0 - m) / s for m, s in zip(mean, std))


class Target:
    """A finished (or partly finished) run directory, opened for attacks.

    Parameters
    ----------
    path
        The run directory ``rvepfl train`` wrote.
    """

    def __init__(self, path: str | Path) -> None:
        self.run = RunDir(path)
        if not self.run.path.is_dir():
            raise CheckpointError(f"Run directory not found: {self.run.path} (pass the --out directory of `rvepfl train`)")
        progress = self.run.read_progress()
        self.completed_round = int(progress["completed_round"])
        if self.completed_round < 1:
            raise CheckpointError(f"{self.run.path} has no complete round yet: train it first (`rvepfl train --resume {self.run.path}`)")
        try:
            self.cfg: Config = load_config(self.run.config)
        except ConfigError as exc:
            raise CheckpointError(f"{self.run.config}: {exc}") from None
        self.fed: Federation = prepare(self.cfg)
        check_partition(self.fed, self.run)
        self.method = self.fed.method
        self.dataset = self.fed.dataset.name
        self.num_classes = self.fed.dataset.num_classes
        self.input_shape = (self.fed.dataset.channels, self.fed.dataset.image_size, self.fed.dataset.image_size)
        self._private = bool(self.method.private_state(self.method.build_model()))
        self._heldout: tuple[torch.Tensor, torch.Tensor] | None = None
        self._model: tuple[tuple[int, int | None], nn.Module] | None = None

    # -- checkpoints ---------------------------------------------------------------------------
    def client_rounds(self) -> list[int]:
        """Rounds whose clients' private states were saved (checkpoint rounds and the last)."""
        rounds = []
        for r in range(1, self.completed_round + 1):
            if (self.run.round_dir(r) / "clients").is_dir():
                rounds.append(r)
        return rounds

    def default_round(self) -> int:
        """The last round with every state the attacks need."""
        if self.has_private_state():
            rounds = self.client_rounds()
            if not rounds:
                raise CheckpointError(f"{self.run.path} has no saved client states (checkpoints/round_*/clients)")
            return rounds[-1]
        return self.completed_round

    def has_private_state(self) -> bool:
        """Whether the method keeps per-client state (then only rounds with saved clients serve)."""
        return self._private

    def check_round(self, round_: int | None) -> int:
        r = self.default_round() if round_ is None else round_
        if not 1 <= r <= self.completed_round:
            raise ConfigError(f"Expected --round between 1 and {self.completed_round} (the run's complete rounds), got {r}")
        if self.has_private_state() and r not in self.client_rounds():
            have = ", ".join(map(str, self.client_rounds())) or "none"
            raise ConfigError(
                f"Round {r} has no saved client states (rounds with them: {have}); pick one of those, "
                "or train with train.checkpoint_every to save more"
            )
        return r

    def check_client(self, client: int) -> int:
        n = self.cfg.data.num_clients
        if not 0 <= client < n:
            raise ConfigError(f"Expected --client between 0 and {n - 1}, got {client}")
        return client

    def model(self, round_: int, client: int | None) -> nn.Module:
        """The method's full model with the global state of ``round_`` and, when ``client`` is
        given, that client's private state of the same round; in eval mode, on the CPU.

        The last model built is kept and returned again for the same (round, client): attacks
        read it and never change it.
        """
        if self._model is not None and self._model[0] == (round_, client):
            return self._model[1]
        seed_torch(self.cfg.seed, "init")
        model = self.method.build_model()
        shared = self.method.shared_state(model)
        state = load_tensors(self.run.global_checkpoint(round_), expected=shared, kind=GLOBAL_KIND)
        private = self.method.private_state(model)
        if client is not None and private:
            path = self.run.round_dir(round_) / "clients" / f"{client:04d}.safetensors"
            if not path.is_file():
                raise ConfigError(f"Client {client} has no saved state at round {round_} ({path}): it has not trained yet; pick another --client")
            state = {**state, **load_client_state(path, private)[0]}
        model.load_state_dict({**model.state_dict(), **state})
        self._model = ((round_, client), model.eval())
        return model

    # -- the shared part's forward path --------------------------------------------------------
    def shared_path(self, model: nn.Module) -> tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
        """The shared module the server knows, and the client's map from x to its input.

        Every entry shared: the model itself on raw images. RVE-PFL: the classifier, fed with
        the encoder's sample z. A method that keeps part of the path to the logits private has
        no gradient attack surface here.
        """
        keys = list(model.state_dict())
        if all(self.method.is_shared(k) for k in keys):
            return model, lambda x: x
        classifier = getattr(model, "classifier", None)
        encoder = getattr(model, "encoder", None)
        if classifier is not None and encoder is not None and all(
            self.method.is_shared(k) == k.startswith("classifier.") for k in keys
        ):
            return classifier, lambda x: encoder(x, sample=True)[0]
        raise NoAttackSurface(
            f"Method {self.method.name} keeps part of the path from input to logits private, so a "
            "gradient attack has no complete shared model to invert: attack it with miface "
            "(--threat-model released or stolen)"
        )

    # -- data ------------------------------------------------------------------------------------
    def client_batch(self, client: int, size: int, draw: int, seed: int) -> tuple[torch.Tensor, GroundTruth]:
        """``size`` training images of ``client`` (normalised, CPU) drawn for attack number ``draw``."""
        data = self.fed.client_data(client)
        n = len(data.train_y)
        if not 1 <= size <= n:
            raise ConfigError(f"Expected --batch-size between 1 and {n} (client {client}'s training images), got {size}")
        rng = numpy_rng(seed, "attack", client, draw)
        idx = np.sort(rng.choice(n, size=size, replace=False))
        x = data.train_x[torch.from_numpy(idx).to(data.train_x.device)].cpu()
        y = data.train_y[torch.from_numpy(idx).to(data.train_y.device)].cpu()
        return x, GroundTruth(to_pixels(x.clone(), self.dataset), y, tuple(int(i) for i in idx))

    def heldout(self) -> tuple[torch.Tensor, torch.Tensor]:
        """Images of the run's data set that no client has, as [0, 1] pixels, and their labels.

        With ``data.subset`` that is every image outside the subset; otherwise the images the
        partition left unused. May be empty. Computed once per target.
        """
        if self._heldout is None:
            self._heldout = self._find_heldout()
        return self._heldout

    def _find_heldout(self) -> tuple[torch.Tensor, torch.Tensor]:
        d = self.cfg.data
        full = load_dataset(d.dataset, d.data_dir or None)
        n_train, n_test = len(full.train_y), len(full.test_y)
        if d.subset:
            tr, te = subset_indices(full, d.subset, numpy_rng(self.cfg.seed, "partition", 1))
            pool = np.concatenate([tr, te + n_train])
        else:
            pool = np.arange(n_train + n_test)
        used = np.zeros(n_train + n_test, dtype=bool)
        for split in self.fed.partition.clients:
            used[pool[split.train]] = True
            used[pool[split.test]] = True
        images = np.concatenate([full.train_x, full.test_x])[~used]
        labels = np.concatenate([full.train_y, full.test_y])[~used]
        x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
        return x.contiguous(), torch.from_numpy(labels).long()

    # -- the gradient threat model ----------------------------------------------------------------
    _PLAIN_GRADIENT = ("rvepfl", "fedavg")
    _DEFENDED_GRADIENT = ("nbafl", "dp-fedavg", "dp-sgd")

    def gradient_surface(self, round_: int, client: int) -> tuple[nn.Module, Callable[[torch.Tensor], torch.Tensor]]:
        """The shared module the server sees a gradient of, and the client's map from x to its
        input; raises a one-line error for a method without a gradient surface."""
        shared, to_input = self.shared_path(self.model(round_, client))
        if self.method.name not in self._PLAIN_GRADIENT + self._DEFENDED_GRADIENT:
            raise NoAttackSurface(f"No gradient threat model for method {self.method.name}: attack it with miface")
        return shared, to_input

    def observe_gradient(self, round_: int, client: int, x: torch.Tensor, y: torch.Tensor,
                         seed: int, draw: int) -> GradientObservation:
        """What the server sees of ``client``'s step on (x, y), starting from round ``round_``'s state."""
        shared, to_input = self.gradient_surface(round_, client)
        names = [k for k, _ in shared.named_parameters()]
        seed_torch(seed, "attack", round_, client, draw)  # the encoder's sample z
        with torch.no_grad():
            inputs = to_input(x)
        generator = torch_generator(seed, "attack", round_, client, draw, 1)
        name = self.method.name
        if name == "dp-sgd":
            grads = self._dp_sgd_gradient(shared, names, inputs, y, generator)
        else:
            grads = {k: g.double() for k, g in zip(names, observed_gradient(shared, inputs, y))}
            lr = self.cfg.train.lr
            if name == "nbafl":
                noise = self.method.noise
                theta = {k: p.detach().double() for k, p in shared.named_parameters()}
                stepped = {k: theta[k] - lr * grads[k] for k in names}
                clipped, _ = clip_by_l2(stepped, noise.C)
                upload = add_gaussian_noise(clipped, noise.sigma_u, generator)
                grads = {k: (theta[k] - upload[k]) / lr for k in names}
            elif name == "dp-fedavg":
                clipped, _ = clip_by_l2({k: -lr * g for k, g in grads.items()}, self.cfg.dp_fedavg.clip_norm)
                grads = {k: -v / lr for k, v in clipped.items()}
        return self._observation(round_, client, shared, [grads[k] for k in names], len(y))

    def _observation(self, round_: int, client: int, shared: nn.Module, gradients: list[torch.Tensor],
                     batch_size: int) -> GradientObservation:
        """What the attacker is handed: the shared module, one gradient per parameter, the batch
        size, and the input range when the shared module reads raw images."""
        bounds = _pixel_bounds(self.dataset) if shared is self.model(round_, client) else None
        return GradientObservation(
            model=shared,
            gradients=tuple(g.float() for g in gradients),
            batch_size=batch_size,
            input_shape=self.input_shape,
            num_classes=self.num_classes,
            bounds=bounds,
        )

    def _dp_sgd_gradient(self, model: nn.Module, names: list[str], x: torch.Tensor, y: torch.Tensor,
                         generator: torch.Generator) -> dict[str, torch.Tensor]:
        d = self.cfg.dp_sgd
        total = {k: torch.zeros_like(p, dtype=torch.float64) for k, p in model.named_parameters()}
        for i in range(len(y)):
            g = observed_gradient(model, x[i : i + 1], y[i : i + 1])
            clipped, _ = clip_by_l2({k: v.double() for k, v in zip(names, g)}, d.max_grad_norm)
            for k in total:
                total[k] += clipped[k]
        noisy = add_gaussian_noise(total, d.noise_multiplier * d.max_grad_norm, generator)
        return {k: v / len(y) for k, v in noisy.items()}

    # -- the update threat model ----------------------------------------------------------------
    def observe_update(self, round_: int, client: int, x: torch.Tensor, y: torch.Tensor, *,
                       local_steps: int, seed: int, draw: int) -> GradientObservation:
        """What the server sees of ``client``'s whole round on (x, y), as the mean gradient.

        The method's own ``local_train`` runs from round ``round_``'s global state (and the
        client's private state of that round) for ``local_steps`` steps, each on all of (x, y):
        the run's method rebuilt with ``train.batch_size = len(y)`` and ``train.local_epochs =
        local_steps``, its local batches and noise drawn from streams of this attack's ``seed``
        and ``draw``, its learning-rate decay clock starting at 0. Its ``upload`` gives the
        shared update as it goes on the wire; the observation's gradients are
        ``-update / (train.lr * local_steps)``.

        Raises
        ------
        ConfigError
            For a method without a gradient surface (FedPer, FedRep), or ``local_steps`` < 1.
        """
        if isinstance(local_steps, bool) or not isinstance(local_steps, int) or local_steps < 1:
            raise ConfigError(f"Expected --local-steps >= 1, got {local_steps!r}")
        shared, _ = self.gradient_surface(round_, client)
        received_model = self.model(round_, client)
        full_name = {id(p): k for k, p in received_model.named_parameters()}
        keys = [full_name[id(p)] for p in shared.parameters()]
        t = self.cfg.train
        cfg = dataclasses.replace(self.cfg, train=dataclasses.replace(t, batch_size=len(y), local_epochs=local_steps))
        method = get_method(self.method.name)(cfg, self.method.spec)
        model = copy.deepcopy(received_model)
        received = {k: v.detach().to("cpu", copy=True) for k, v in method.shared_state(model).items()}
        ctx = RoundContext(round=round_, client=client, seed=derive_seed(seed, "attack", round_, client, draw, 2))
        seed_torch(seed, "attack", round_, client, draw)  # dropout masks and the encoder's samples of z
        steps = method.local_train(model, ClientData(x, y, x[:0], y[:0]), ctx, 0)
        if steps != local_steps:  # each local step must cover the whole batch
            raise RuntimeError(f"{method.name}'s local round took {steps} steps on one batch, expected {local_steps}")
        upload = method.upload(model, ctx, len(y), received).state
        if self.method.uploads_update:
            update = {k: upload[k].double() for k in keys}
        else:
            update = {k: upload[k].double() - received[k].double() for k in keys}
        scale = t.lr * local_steps
        return self._observation(round_, client, shared, [-update[k] / scale for k in keys], len(y))

    # -- the model-inversion threat models ---------------------------------------------------------
    def inversion_model(self, threat: str, round_: int, client: int) -> tuple[nn.Module, tuple[float, float] | None]:
        """The model MI-Face inverts under ``threat``, and the known range of its input."""
        if threat == "stolen":
            return self.model(round_, client), _pixel_bounds(self.dataset)
        model = self.model(round_, None)
        if all(self.method.is_shared(k) for k in model.state_dict()):
            return model, _pixel_bounds(self.dataset)
        classifier = getattr(model, "classifier", None)
        if classifier is not None and all(
            self.method.is_shared(k) == k.startswith("classifier.") for k in model.state_dict()
        ):
            return classifier, None
        raise NoAttackSurface(
            f"Method {self.method.name}'s released shared part cannot classify on its own (its head is "
            "private): use --threat-model stolen"
        )

