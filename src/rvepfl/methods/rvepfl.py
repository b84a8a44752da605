"""RVE-PFL: a private variational encoder per client, a shared classifier averaged by the server.

Its settings are the ``[model]`` section (:class:`ModelParams`). The server holds the classifier,
whose input is the encoder's sample z, not the image: what crosses the wire (a gradient, an
update, the released classifier) lives in z's space.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from rvepfl.methods.base import Contract, Method, SharedPath
from rvepfl.models import PersonalModel, kl_divergence
from rvepfl.params import need

__all__ = ["ModelParams", "RvePfl"]


@dataclass(frozen=True)
class ModelParams:
    kl_weight: float = 0.0
    """Weight beta of the KL term of the encoder's loss (0 as published)."""
    sample_at_eval: bool = True
    """Sample z at evaluation too (published); false: use z = mu."""

    def check(self, section: str) -> None:
        need(self.kl_weight >= 0, f"{section}.kl_weight", self.kl_weight, ">= 0")


class RvePfl(Method):
    name = "rvepfl"
    description = "RVE-PFL: private variational encoder, shared classifier (Issa et al., TIFS 2024)"
    rank = 0
    Params = ModelParams
    section = "model"
    contract = Contract(private=True)
    # bf16-mixed measured against float32: BENCHMARKS.md, "Mixed precision" (the raw figures in
    # ../shared/measurements/bf16-parity-2026-12-06/).
    bf16_parity = True

    def build_model(self) -> nn.Module:
        params = self.settings(ModelParams)
        return PersonalModel(
            self.spec.channels,
            self.spec.image_size,
            self.spec.num_classes,
            sample_at_eval=params.sample_at_eval,
        )

    def is_shared(self, key: str) -> bool:
        return key.startswith("classifier.")

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """Cross-entropy of the classifier on z (plus beta times the encoder's KL term). ``model``
        is the personal model, or a wrapper that passes its attributes through (Opacus's)."""
        z, mu, logvar = model.encoder(x, sample=True)  # type: ignore[operator]  # a submodule
        loss = F.cross_entropy(model.classifier(z), y)  # type: ignore[operator]  # a submodule
        params = self.settings(ModelParams)
        beta = params.kl_weight
        if beta > 0:
            loss = loss + beta * kl_divergence(mu, logvar)
        return loss

    def shared_path(self, model: nn.Module) -> SharedPath:
        """The classifier, fed with the encoder's sample z of the image (sampled, as in training)."""
        assert isinstance(model, PersonalModel)
        encoder = model.encoder
        return SharedPath(model.classifier, lambda x: encoder(x, sample=True)[0], reads_images=False)
