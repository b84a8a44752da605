"""Shared by the gradient-attack tests (tests/unit/test_attacks_{observation,dlg,inverting}.py):
the pixel range, the observation of a batch, and the PSNR the reconstructions are scored with.

The thresholds in those tests were measured on this repository's bundled MNIST subset, one CPU
thread, torch 2.13 (train images by index; numbers in the comments are the measured values).
Their fixtures (the digits, the two victim models, one torch thread) are in tests/unit/conftest.py.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from rvepfl.attacks.observation import GradientObservation, observed_gradient
from rvepfl.data.datasets import NORMALISATION
from rvepfl.seeding import torch_generator

MEAN, STD = NORMALISATION["mnist"][0][0], NORMALISATION["mnist"][1][0]
BOUNDS = ((0 - MEAN) / STD, (1 - MEAN) / STD)  # normalised pixel range
SHAPE = (1, 28, 28)


def pixels(x: torch.Tensor) -> torch.Tensor:
    return (x * STD + MEAN).clamp(0.0, 1.0)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two normalised MNIST batches, in [0, 1] pixel space."""
    mse = ((pixels(a) - pixels(b)) ** 2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def observe(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bounds=BOUNDS) -> GradientObservation:
    return GradientObservation(model, observed_gradient(model, x, y), len(y), SHAPE, 10, bounds)


class Fragile(nn.Module):
    """A linear model that turns NaN once its input leaves [-10, 10]: an attack at a large step
    diverges on it."""

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 3)
        g = torch_generator(0, "init")
        with torch.no_grad():
            for p in self.parameters():
                p.copy_(torch.randn(p.shape, generator=g))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        return self.fc(torch.where(x.abs() < 10, x, torch.full_like(x, math.nan)))
