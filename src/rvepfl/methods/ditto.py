"""Ditto (Li, Hu, Beirami and Smith, "Ditto: Fair and Robust Federated Learning Through
Personalization", ICML 2021): a global model averaged as in FedAvg, and a personal model per
client pulled towards it.

Each client holds two classifiers of the same architecture, on raw images: the global model w,
shared and averaged by the server, and its personal model v, which never leaves it (both start
from the same initial weights). In a round the client

1. trains w, from the global state w_t it received, for ``train.local_epochs`` epochs on its
   cross-entropy (the upload, exactly FedAvg's local update);
2. trains v for ``ditto.personal_epochs`` epochs on its cross-entropy plus the proximal term
   ``lam / 2 * ||v - w_t||^2`` (the squared L2 distance over every parameter), which pulls the
   personal model towards the global state of the round;

and is evaluated with its personal model. Both phases draw their batch orders from the same
stream of the round and client, each has a fresh Adam, and the learning-rate decay counts the
steps of both. ``lam = 0`` gives purely local personal models; a large ``lam`` keeps them at the
global model.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import partial

import torch
from torch import nn
from torch.nn import functional as F

from rvepfl.methods.base import ClientData, Contract, Method, RoundContext, SharedPath
from rvepfl.models import Classifier
from rvepfl.params import need

__all__ = ["Ditto", "DittoModel", "DittoParams"]

SHARED_PREFIX = "global_model."
"""State entries of the global model (shared); every other entry is the personal model's."""


@dataclass(frozen=True)
class DittoParams:
    lam: float = 0.1
    """Ditto's lambda: weight of the proximal term lam/2 * ||v - w_t||^2 that pulls the personal
    model v towards the round's global state w_t (0: purely local personal models)."""
    personal_epochs: int = 0
    """Local epochs of the personal model after the global model's (0: as many as train.local_epochs)."""

    def check(self, section: str) -> None:
        need(self.lam >= 0, f"{section}.lam", self.lam, ">= 0")
        need(self.personal_epochs >= 0, f"{section}.personal_epochs", self.personal_epochs,
             ">= 0 (0: train.local_epochs)")


class DittoModel(nn.Module):
    """The global model and a personal model of the same architecture; predictions are the
    personal model's."""

    def __init__(self, channels: int, image_size: int, num_classes: int) -> None:
        super().__init__()
        self.global_model = Classifier(channels, image_size, num_classes)
        self.personal = Classifier(channels, image_size, num_classes)
        self.personal.load_state_dict(self.global_model.state_dict())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.personal(x)


def _global_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    return F.cross_entropy(model.global_model(x), y)  # type: ignore[operator]  # a submodule


def _personal_loss(model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, lam: float,
                   anchor: dict[str, torch.Tensor]) -> torch.Tensor:
    loss = F.cross_entropy(model.personal(x), y)  # type: ignore[operator]  # a submodule
    if lam > 0:
        personal: nn.Module = model.personal  # type: ignore[assignment]  # a submodule
        distance = sum((p - anchor[k]).pow(2).sum() for k, p in personal.named_parameters())
        loss = loss + 0.5 * lam * distance
    return loss


class Ditto(Method):
    name = "ditto"
    description = "Ditto: global model averaged, personal model with a proximal pull to it (Li et al., ICML 2021)"
    rank = 40
    Params = DittoParams
    section = "ditto"
    contract = Contract(loop="phased", private=True)

    def build_model(self) -> nn.Module:
        return DittoModel(self.spec.channels, self.spec.image_size, self.spec.num_classes)

    def is_shared(self, key: str) -> bool:
        return key.startswith(SHARED_PREFIX)

    def personal_epochs(self) -> int:
        d = self.settings(DittoParams)
        return d.personal_epochs or self.cfg.train.local_epochs

    def planned_steps(self, num_samples: int) -> int:
        return (self.cfg.train.local_epochs + self.personal_epochs()) * self.batches_per_epoch(num_samples)

    def local_train(self, model: nn.Module, data: ClientData, ctx: RoundContext, step: int) -> int:
        """The global model's epochs (the upload), then the personal model's, pulled towards the
        global state the client received."""
        assert isinstance(model, DittoModel)
        model.train()
        received = {k: p.detach().clone() for k, p in model.global_model.named_parameters()}
        generator = self.batch_generator(ctx)
        step = self.train_epochs(model, data, list(model.global_model.parameters()), self.cfg.train.local_epochs,
                                 generator, step, ctx, loss=_global_loss)
        d = self.settings(DittoParams)
        personal = partial(_personal_loss, lam=d.lam, anchor=received)
        return self.train_epochs(model, data, list(model.personal.parameters()), self.personal_epochs(),
                                 generator, step, ctx, loss=personal)

    def shared_path(self, model: nn.Module) -> SharedPath:
        """The global model, on images (what the client uploads and the server releases)."""
        assert isinstance(model, DittoModel)
        return SharedPath(model.global_model, lambda x: x, reads_images=True)
