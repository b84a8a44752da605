"""RVE-PFL: a private variational encoder per client, a shared classifier averaged by the server."""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from rvepfl.methods.base import Method
from rvepfl.models import PersonalModel, kl_divergence


class RvePfl(Method):
    name = "rvepfl"
    description = "RVE-PFL: private variational encoder, shared classifier (Issa et al., TIFS 2024)"

    def build_model(self) -> nn.Module:
        return PersonalModel(
            self.spec.channels,
            self.spec.image_size,
            self.spec.num_classes,
            sample_at_eval=self.cfg.model.sample_at_eval,
        )

    def is_shared(self, key: str) -> bool:
        return key.startswith("classifier.")

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        assert isinstance(model, PersonalModel)
        z, mu, logvar = model.encoder(x, sample=True)
        loss = F.cross_entropy(model.classifier(z), y)
        beta = self.cfg.model.kl_weight
        if beta > 0:
            loss = loss + beta * kl_divergence(mu, logvar)
        return loss
