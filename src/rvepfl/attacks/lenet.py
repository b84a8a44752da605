"""The DLG paper's sigmoid LeNet (:class:`SigmoidLeNet`), the positive control of the gradient attacks.

It lives here rather than under ``tests/`` because ``benchmarks/attacks.py`` also measures DLG's
iterations per second on it (the DLG paper's setting).
"""

from __future__ import annotations

import torch
from torch import nn

from rvepfl.attacks.observation import check_int
from rvepfl.seeding import torch_generator

__all__ = ["SigmoidLeNet"]


class SigmoidLeNet(nn.Module):
    """The DLG paper's small LeNet: three 5x5 convolutions (12 channels, strides 2, 2, 1, 'same'
    padding) with sigmoid activations, then one linear layer; weights and biases drawn from
    U(-0.5, 0.5) as in the DLG code.

    Sigmoids are smooth and the model tiny, so an undefended batch of one is recovered almost
    exactly: the positive control of the gradient attacks.

    Parameters
    ----------
    channels, image_size, num_classes
        Input (channels x image_size x image_size) and number of classes.
    seed
        Seed of the initialisation (``torch_generator(seed, "init")``).
    """

    def __init__(self, channels: int = 1, image_size: int = 28, num_classes: int = 10, *, seed: int = 0) -> None:
        super().__init__()
        check_int("channels", channels, 1)
        check_int("image_size", image_size, 1)
        check_int("num_classes", num_classes, 2)
        side = image_size
        for _ in range(2):
            side = (side + 1) // 2  # stride 2 with padding 2 on a 5x5 kernel: ceil(side / 2)
        self.body = nn.Sequential(
            nn.Conv2d(channels, 12, 5, stride=2, padding=2),
            nn.Sigmoid(),
            nn.Conv2d(12, 12, 5, stride=2, padding=2),
            nn.Sigmoid(),
            nn.Conv2d(12, 12, 5, stride=1, padding=2),
            nn.Sigmoid(),
        )
        self.fc = nn.Linear(12 * side * side, num_classes)
        generator = torch_generator(seed, "init")
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.rand(p.shape, generator=generator) - 0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(self.body(x).flatten(1))
