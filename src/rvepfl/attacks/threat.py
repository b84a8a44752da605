"""Threat models: what an attacker of a finished run observes, kept apart from the ground truth.

Five threat models, each an explicit object (:data:`THREAT_MODELS`). What the attacker observes
under each is produced by the run's method itself (its hooks in
:class:`rvepfl.methods.base.Method`, and those of the privacy mechanism wrapping it), so this
module names no method:

- ``gradient`` -- an honest-but-curious server. It sent the shared model to a client and sees
  what that client uploads after one local step (learning rate ``train.lr``) on one batch of
  its training data, read as a gradient: :meth:`~rvepfl.methods.base.Method.wire_gradient` of
  the method's shared module (:meth:`~rvepfl.methods.base.Method.shared_path`). A plain method
  gives the gradient itself; a privacy mechanism transforms it as it transforms the upload
  (parameters clipped and noised after the step; an update clipped, as a central server sees it
  before it adds its noise; per-sample gradients clipped and noised). A method whose shared module reads a private
  encoder's sample z instead of the image is attacked in z's space and scored against x. A method
  whose shared part is not a whole path from input to logits (a private head) has no gradient
  surface: :class:`~rvepfl.errors.NoAttackSurface`. The attacker is given the batch size and the
  shared model's weights, and the model is evaluated without dropout (the attacker's best case).
- ``update`` -- the same server, which sees a client's *whole round* instead: the upload after
  all its local steps, as the method puts it on the wire. :meth:`Target.observe_update`
  produces it by running the method's own ``local_train`` and ``upload`` from the round's
  global state (and the client's private state) on ``B`` of the client's images, with
  ``train.batch_size = B`` and ``train.local_epochs = S``: S local steps, each on all B images
  (dropout on, every random draw of training, a mechanism's clipping and noise, as in training).
  The server reads the shared update off the upload
  (:meth:`~rvepfl.methods.base.Method.uploaded_update`) and, knowing B, S and ``train.lr``,
  treats ``-update / (lr * S)`` as the mean gradient over the B images (the FedSGD view of a
  multi-step update) and attacks it with the gradient attacks. The methods train with Adam, whose
  step is normalised per coordinate, so this view is a gradient's direction, roughly sign by
  sign, rather than its size: the cosine of Inverting Gradients suits it, DLG's squared distance
  does not.
- ``aggregate`` -- the same server under secure aggregation (SecAgg+): it never sees one
  client's upload, only the mean of the round's uploads. :meth:`Target.observe_aggregate`
  produces, for each of k clients (:meth:`Target.sum_clients`: the attacked client and the next
  k - 1 clients of the round, in the round's client order, wrapping around), its ``update`` view
  on B of its own images (the same local round, the same seeds), and averages their shared
  updates as the server's mean does: equal weights, or, with ``train.aggregation =
  "weighted"``, each client's training-split size (a run aggregated by a median or a trimmed
  mean gets the plain mean, the only aggregate secure aggregation could give it). The attacker
  reads ``-mean_update / (lr * S)`` as the mean gradient over the k * B images and inverts it
  with k * B dummy images. k = 1 is the ``update`` view, number for number. The view is the mean
  in the clear: the protocol's quantisation (a step of about 4e-6) is left out. It is computed
  for any finished run, with or without secure aggregation.
- ``released`` -- the global shared model of a round is public: the shared path's module (in z's
  space when it reads a private encoder's sample).
- ``stolen`` -- one client's full personal model (private and shared parts) is in the
  attacker's hands: the strongest case.

A run trained with secure aggregation (``secure_aggregation.enabled`` in its config) has no
``gradient`` or ``update`` surface: the server never saw one client's upload, and
:meth:`Target.check_per_client_view` raises :class:`~rvepfl.errors.NoAttackSurface` saying so.

:class:`Target` opens a run directory read-only: it rebuilds the run's data and partition from
its ``config.toml`` (refusing if they differ from the saved partition) and loads the saved
safetensors checkpoints. Victims' images go to :class:`GroundTruth`, which only the scoring
reads.
"""

from __future__ import annotations

import copy
import dataclasses
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch import nn

from rvepfl.attacks.observation import GradientObservation
from rvepfl.attacks.scores import to_pixels
from rvepfl.config import Config, load_config
from rvepfl.data.datasets import NORMALISATION, load_dataset, subset_indices
from rvepfl.errors import CheckpointError, ConfigError, NoAttackSurface
from rvepfl.fl.client import Federation, prepare
from rvepfl.fl.server import GLOBAL_KIND, check_partition, round_clients
from rvepfl.fl.store import load_client_state
from rvepfl.io import load_tensors
from rvepfl.methods import ClientData, RoundContext, SharedPath
from rvepfl.registry import build_method
from rvepfl.rundir import RunDir
from rvepfl.seeding import derive_seed, numpy_rng, seed_torch, torch_generator

__all__ = ["SECURE_AGGREGATION_REASON", "THREAT_MODELS", "GroundTruth", "Target", "ThreatModel"]


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
    "released": ThreatModel("released", "the global shared model after a round (its input is a private "
                                        "encoder's sample z where the method has one)"),
    "stolen": ThreatModel("stolen", "one client's full personal model, private and shared parts"),
    "aggregate": ThreatModel(
        "aggregate",
        "honest-but-curious server under secure aggregation: the shared model it sent and the mean of k clients' "
        "whole-round uploads (each as in update; weighted by training-split size where train.aggregation is "
        "weighted), with k, the batch size, the number of local steps and the learning rate; attacked as the mean "
        "gradient over the k x batch images, -mean_update / (lr * steps)",
    ),
}
"""Every threat model, by name (``aggregate`` last, so that the older ones keep their order in
messages)."""

SECURE_AGGREGATION_REASON = (
    "this run used secure aggregation (secure_aggregation.enabled): the server never sees one client's upload, only "
    "the round's aggregate: use --threat-model aggregate")
"""Why ``gradient`` and ``update`` have no surface on a run trained with secure aggregation."""


@dataclass(frozen=True)
class GroundTruth:
    """The victims' data, for scoring only: images in [0, 1] pixel space and their labels."""

    pixels: torch.Tensor
    labels: torch.Tensor
    indices: tuple[int, ...]
    """Positions in the client's training split."""


def _pixels(images: np.ndarray) -> torch.Tensor:
    """uint8 images (N, H, W, C) as float [0, 1] pixels (N, C, H, W)."""
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    return x.contiguous()


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
            raise CheckpointError(
                f"Run directory not found: {self.run.path} (pass the --out directory of `rvepfl train`)")
        progress = self.run.read_progress()
        self.completed_round = int(progress["completed_round"])
        if self.completed_round < 1:
            raise CheckpointError(
                f"{self.run.path} has no complete round yet: train it first (`rvepfl train --resume {self.run.path}`)")
        try:
            self.cfg: Config = load_config(self.run.config)
        except ConfigError as exc:
            raise CheckpointError(f"{self.run.config}: {exc}") from None
        self.fed: Federation = prepare(self.cfg)
        check_partition(self.fed.partition, self.run)
        self.method = self.fed.method
        self.dataset = self.fed.dataset.name
        self.num_classes = self.fed.dataset.num_classes
        self.input_shape = (self.fed.dataset.channels, self.fed.dataset.image_size, self.fed.dataset.image_size)
        self._private = bool(self.method.private_state(self.method.build_model()))
        self._heldout: tuple[torch.Tensor, torch.Tensor] | None = None
        self._models: OrderedDict[tuple[int, int | None], nn.Module] = OrderedDict()
        self.models_kept = 1
        """How many of the models :meth:`model` built it keeps, the most recently used (the
        ``aggregate`` view raises it to its clients, whose models it uses draw after draw)."""

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
            raise ConfigError(
                f"Expected --round between 1 and {self.completed_round} (the run's complete rounds), got {r}")
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

        The last :attr:`models_kept` models built are kept and returned again for the same (round,
        client): attacks read them and never change them. Building one draws from no random
        stream an attack uses (it seeds its own), so a kept model gives the same numbers as a
        rebuilt one.
        """
        key = (round_, client)
        if key in self._models:
            self._models.move_to_end(key)
            return self._models[key]
        seed_torch(self.cfg.seed, "init")
        model = self.method.build_model()
        shared = self.method.shared_state(model)
        state = load_tensors(self.run.global_checkpoint(round_), expected=shared, kind=GLOBAL_KIND)
        private = self.method.private_state(model)
        if client is not None and private:
            path = self.run.round_dir(round_) / "clients" / f"{client:04d}.safetensors"
            if not path.is_file():
                raise ConfigError(f"Client {client} has no saved state at round {round_} ({path}): "
                                  "it has not trained yet; pick another --client")
            state = {**state, **load_client_state(path, private)[0]}
        model.load_state_dict({**model.state_dict(), **state})
        self._models[key] = model.eval()
        while len(self._models) > max(1, self.models_kept):
            self._models.popitem(last=False)
        return model

    # -- the shared part's forward path --------------------------------------------------------
    def shared_path(self, model: nn.Module) -> SharedPath:
        """The shared module the server knows and the client's map from x to its input (the
        method's :meth:`~rvepfl.methods.base.Method.shared_path`); raises
        :class:`NoAttackSurface` when the shared part is not a whole path to the logits."""
        path = self.method.shared_path(model)
        if path is None:
            raise NoAttackSurface(
                f"Method {self.method.name} keeps part of the path from input to logits private, so a "
                "gradient attack has no complete shared model to invert: attack it with miface "
                "(--threat-model released or stolen)"
            )
        return path

    # -- data ------------------------------------------------------------------------------------
    def client_batch(self, client: int, size: int, draw: int, seed: int) -> tuple[torch.Tensor, GroundTruth]:
        """``size`` training images of ``client`` (normalised, CPU) drawn for attack number ``draw``."""
        data = self.fed.client_data(client)
        n = len(data.train_y)
        if not 1 <= size <= n:
            raise ConfigError(
                f"Expected --batch-size between 1 and {n} (client {client}'s training images), got {size}")
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
        return _pixels(images), torch.from_numpy(labels).long()

    def images_without(self, client: int | tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor]:
        """The images of every client but ``client`` (their training and test splits), as [0, 1]
        pixels, and their labels, in pool order: none of them is ``client``'s (``client`` may be
        several clients: then none of them is any of theirs).

        What the evaluator trains on when the run left too few images out (the README's main run
        uses every image): an attack on ``client`` reconstructs that client's images, which the
        evaluator then never saw.
        """
        excluded = {self.check_client(c) for c in ((client,) if isinstance(client, int) else client)}
        clients = self.fed.partition.clients
        victim = np.concatenate([np.concatenate([clients[c].train, clients[c].test]) for c in sorted(excluded)])
        others = np.concatenate([np.concatenate([c.train, c.test]) for i, c in enumerate(clients) if i not in excluded])
        idx = np.setdiff1d(others, victim)  # sorted; a partition's clients never share an image anyway
        d = self.fed.dataset
        images = np.concatenate([d.train_x, d.test_x])[idx]
        labels = np.concatenate([d.train_y, d.test_y])[idx]
        return _pixels(images), torch.from_numpy(labels).long()

    # -- the gradient threat model ----------------------------------------------------------------
    def secure_aggregation(self) -> bool:
        """Whether the run was trained with secure aggregation (its config's
        ``secure_aggregation.enabled``): then the server saw only each round's aggregate."""
        return self.cfg.secure_aggregation.enabled

    def check_per_client_view(self) -> None:
        """Raise :class:`NoAttackSurface` when the server never saw one client's upload (the run
        used secure aggregation): ``gradient`` and ``update`` then have nothing to observe."""
        if self.secure_aggregation():
            raise NoAttackSurface(SECURE_AGGREGATION_REASON)

    def gradient_surface(self, round_: int, client: int) -> SharedPath:
        """The shared path whose gradient the server sees; raises :class:`NoAttackSurface` for a
        method without one."""
        return self.shared_path(self.model(round_, client))

    def observe_gradient(self, round_: int, client: int, x: torch.Tensor, y: torch.Tensor,
                         seed: int, draw: int) -> GradientObservation:
        """What the server sees of ``client``'s step on (x, y), starting from round ``round_``'s
        state: the method's :meth:`~rvepfl.methods.base.Method.wire_gradient`. Raises
        :class:`NoAttackSurface` on a run with secure aggregation (:meth:`check_per_client_view`)."""
        self.check_per_client_view()
        path = self.gradient_surface(round_, client)
        names = [k for k, _ in path.module.named_parameters()]
        seed_torch(seed, "attack", round_, client, draw)  # the encoder's sample z
        with torch.no_grad():
            inputs = path.to_input(x)
        generator = torch_generator(seed, "attack", round_, client, draw, 1)
        grads = self.method.wire_gradient(path.module, inputs, y, generator)
        return self._observation(path, [grads[k] for k in names], len(y))

    def _observation(self, path: SharedPath, gradients: list[torch.Tensor], batch_size: int) -> GradientObservation:
        """What the attacker is handed: the shared module, one gradient per parameter, the batch
        size, and the input range when the shared module reads raw images."""
        return GradientObservation(
            model=path.module,
            gradients=tuple(g.float() for g in gradients),
            batch_size=batch_size,
            input_shape=self.input_shape,
            num_classes=self.num_classes,
            bounds=_pixel_bounds(self.dataset) if path.reads_images else None,
        )

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
        NoAttackSurface
            For a method without a gradient surface (a private head), and for a run with secure
            aggregation (:meth:`check_per_client_view`).
        ConfigError
            For ``local_steps`` < 1.
        """
        self.check_per_client_view()
        path, keys, update = self._update_view(round_, client, x, y, local_steps=local_steps, seed=seed, draw=draw)
        scale = self.cfg.train.lr * local_steps
        return self._observation(path, [-update[k] / scale for k in keys], len(y))

    def _update_view(self, round_: int, client: int, x: torch.Tensor, y: torch.Tensor, *, local_steps: int,
                     seed: int, draw: int) -> tuple[SharedPath, list[str], dict[str, torch.Tensor]]:
        """``client``'s shared update (float64, by full parameter name) of its round on (x, y),
        as :meth:`observe_update` describes it, with the shared path and its parameters' names."""
        if isinstance(local_steps, bool) or not isinstance(local_steps, int) or local_steps < 1:
            raise ConfigError(f"Expected --local-steps >= 1, got {local_steps!r}")
        path = self.gradient_surface(round_, client)
        received_model = self.model(round_, client)
        full_name = {id(p): k for k, p in received_model.named_parameters()}
        keys = [full_name[id(p)] for p in path.module.parameters()]
        t = self.cfg.train
        cfg = dataclasses.replace(self.cfg, train=dataclasses.replace(t, batch_size=len(y), local_epochs=local_steps))
        method = build_method(cfg, self.method.spec)
        model = copy.deepcopy(received_model)
        received = {k: v.detach().to("cpu", copy=True) for k, v in method.shared_state(model).items()}
        ctx = RoundContext(round=round_, client=client, seed=derive_seed(seed, "attack", round_, client, draw, 2))
        seed_torch(seed, "attack", round_, client, draw)  # dropout masks and the encoder's samples of z
        steps = method.local_train(model, ClientData(x, y, x[:0], y[:0]), ctx, 0)
        planned = method.planned_steps(len(y))  # local_steps on the shared part, plus any private phase
        if steps != planned:  # each local step must cover the whole batch
            raise RuntimeError(f"{method.name}'s local round took {steps} steps on one batch, expected {planned}")
        update = method.uploaded_update(method.upload(model, ctx, len(y), received).state, received, keys)
        return path, keys, update

    # -- the aggregate threat model ---------------------------------------------------------------
    def sum_clients(self, round_: int, client: int, count: int) -> tuple[int, ...]:
        """The ``count`` clients whose uploads the ``aggregate`` view of ``client`` in round
        ``round_`` averages: ``client`` and the ``count - 1`` clients after it among the round's
        clients (:func:`~rvepfl.fl.server.round_clients`, in client order, wrapping around).

        Raises
        ------
        ConfigError
            When ``client`` took no part in the round, or ``count`` is not between 1 and the
            round's clients.
        """
        clients = round_clients(self.cfg, round_)
        if isinstance(count, bool) or not isinstance(count, int) or not 1 <= count <= len(clients):
            raise ConfigError(f"Expected --clients-in-sum between 1 and {len(clients)} (the clients of round "
                              f"{round_}), got {count!r}")
        if client not in clients:
            raise ConfigError(f"Client {client} took no part in round {round_} (its clients: "
                              f"{', '.join(map(str, clients))}): pick one of those as --client")
        first = clients.index(client)
        return tuple(clients[(first + i) % len(clients)] for i in range(count))

    def sum_weights(self, clients: tuple[int, ...]) -> list[float]:
        """Each client's weight in the round's mean, the weights summing to 1: the method's
        :meth:`~rvepfl.methods.base.Method.aggregation_weight` of its training split (equal, or,
        with ``train.aggregation = "weighted"``, in proportion to its training-split size), as
        the server's mean weighs each upload."""
        sizes = [float(self.method.aggregation_weight(len(self.fed.partition.clients[c].train))) for c in clients]
        total = sum(sizes)
        return [size / total for size in sizes]

    def observe_aggregate(self, round_: int, batches: list[tuple[int, torch.Tensor, torch.Tensor]], *,
                          local_steps: int, seed: int, draw: int) -> GradientObservation:
        """What the server sees of a round under secure aggregation: the mean of the shared
        updates of the clients in ``batches`` ((client, x, y) each, the attacked client first),
        read as the mean gradient over all their images.

        Each client's update is the one :meth:`observe_update` computes for it on its (x, y),
        with the same seeds; they are averaged with :meth:`sum_weights` (in float64, each
        update times its weight, summed in the given order); the observation's gradients are
        ``-mean / (train.lr * local_steps)`` and its batch is every client's images, in order.
        One client gives exactly :meth:`observe_update`'s observation. The quantisation of
        secure aggregation is left out (the mean in the clear).

        Raises
        ------
        NoAttackSurface
            For a method without a gradient surface (a private head).
        ConfigError
            For ``local_steps`` < 1, or clients of unequal batch sizes.
        """
        if not batches:
            raise ConfigError("Expected at least one client in the aggregate, got none")
        sizes = {len(y) for _, _, y in batches}
        if len(sizes) != 1:
            raise ConfigError(f"Expected every client of the aggregate to give as many images, got {sorted(sizes)}")
        weights = self.sum_weights(tuple(c for c, _, _ in batches))
        self.models_kept = max(self.models_kept, len(batches))  # each client's model, kept for the next draw
        mean: dict[str, torch.Tensor] = {}
        path: SharedPath | None = None
        keys: list[str] = []
        for (client, x, y), weight in zip(batches, weights):
            view, names, update = self._update_view(round_, client, x, y, local_steps=local_steps, seed=seed,
                                                    draw=draw)
            if path is None:
                path, keys = view, names  # the attacked client's: the shared module is the same global one
            for k in keys:
                mean[k] = weight * update[k] if k not in mean else mean[k] + weight * update[k]
        assert path is not None
        scale = self.cfg.train.lr * local_steps
        return self._observation(path, [-mean[k] / scale for k in keys], sum(len(y) for _, _, y in batches))

    # -- the model-inversion threat models ---------------------------------------------------------
    def inversion_model(self, threat: str, round_: int, client: int) -> tuple[nn.Module, tuple[float, float] | None]:
        """The model MI-Face inverts under ``threat``, and the known range of its input."""
        if threat == "stolen":
            return self.model(round_, client), _pixel_bounds(self.dataset)
        path = self.method.shared_path(self.model(round_, None))
        if path is None:
            raise NoAttackSurface(
                f"Method {self.method.name}'s released shared part cannot classify on its own (its head is "
                "private): use --threat-model stolen"
            )
        return path.module, (_pixel_bounds(self.dataset) if path.reads_images else None)

    # -- a model from images to logits (membership inference, generative inversion) -------------
    def image_model(self, threat: str, round_: int, client: int) -> nn.Module:
        """The model an attacker that works in image space (membership inference, a generative
        model inversion) queries under ``threat``: a module from normalised images x to logits,
        in eval mode.

        ``stolen``: ``client``'s full personal model. ``released``: the global shared model of
        ``round_``. Where that reads a private encoder's sample z instead of the image,
        the attacker lacks the victim's encoder; its best public stand-in for the map from x to
        z is the encoder every client started from, the one :meth:`model` builds under the run's
        ``init`` seed before any training (it is what :meth:`model` holds for ``client=None``,
        whose private state is never loaded). A released shared part that cannot classify on its
        own (a private head) raises :class:`NoAttackSurface`.
        """
        if threat == "stolen":
            return self.model(round_, client)
        if threat != "released":
            raise ConfigError(
                f"An image-space attack queries a model: use --threat-model released or stolen, got {threat}")
        path = self.method.shared_path(self.model(round_, None))
        if path is None:
            raise NoAttackSurface(
                f"Method {self.method.name}'s released shared part cannot classify on its own (its head is "
                "private): use --threat-model stolen"
            )
        return path.module if path.reads_images else _ThroughStandIn(path)


    def image_model_words(self, threat: str, round_: int) -> str:
        """What :meth:`image_model` gives under ``threat``, in words (for an attack's summary)."""
        if threat == "stolen":
            return "the victim client's full personal model (private and shared parts), images in, logits out"
        path = self.method.shared_path(self.model(round_, None))
        if path is not None and not path.reads_images:
            return ("the released shared model, fed with the encoder every client started from (the run's initial "
                    "encoder, before any training): the attacker lacks the victim's private encoder, and that is its "
                    "best public stand-in for the map from x to z")
        return "the released global shared model, images in, logits out"


class _ThroughStandIn(nn.Module):
    """A shared path's module fed by its map from x to the module's input: with the initial
    encoder's ``to_input`` (see :meth:`Target.image_model`), x -> z -> logits."""

    def __init__(self, path: SharedPath) -> None:
        super().__init__()
        self.module = path.module
        self._to_input = path.to_input

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.module(self._to_input(x))
