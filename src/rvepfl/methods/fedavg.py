"""FedAvg: the shared classifier alone, on raw images, fully averaged by the server."""

from __future__ import annotations

from torch import nn

from rvepfl.methods.base import Method
from rvepfl.models import Classifier

__all__ = ["FedAvg"]


class FedAvg(Method):
    name = "fedavg"
    description = "FedAvg: the classifier alone on raw images, averaged (McMahan et al., 2017)"
    rank = 10
    # bf16-mixed measured against float32: BENCHMARKS.md, "Mixed precision" (the raw figures in
    # ../shared/measurements/bf16-parity-2026-12-06/).
    bf16_parity = True

    def build_model(self) -> nn.Module:
        return Classifier(self.spec.channels, self.spec.image_size, self.spec.num_classes)
