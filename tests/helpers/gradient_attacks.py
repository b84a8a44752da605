"""Shared by the gradient-attack tests (tests/unit/test_attacks_{observation,dlg,inverting}.py):
real bundled MNIST digits, the two victim models, and the PSNR they are scored with.

The thresholds in those tests were measured on this repository's bundled MNIST subset, one CPU
thread, torch 2.13 (train images by index; numbers in the comments are the measured values).
The fixtures are imported by name into each test module (``one_thread`` is autouse there).
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from rvepfl.attacks.lenet import SigmoidLeNet
from rvepfl.attacks.observation import GradientObservation, observed_gradient
from rvepfl.data.datasets import NORMALISATION, load_dataset, to_tensor
from rvepfl.models import Classifier
from rvepfl.seeding import seed_torch

MEAN, STD = NORMALISATION["mnist"][0][0], NORMALISATION["mnist"][1][0]
BOUNDS = ((0 - MEAN) / STD, (1 - MEAN) / STD)  # normalised pixel range
SHAPE = (1, 28, 28)


@pytest.fixture(scope="module", autouse=True)
def one_thread():
    # The attacks are many tiny sequential kernels: one thread is faster (and far steadier on a
    # shared 2-core machine) than two, and makes the runs bit-reproducible.
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def mnist():
    ds = load_dataset("mnist")
    x = to_tensor(ds.train_x[:40], "mnist")
    y = torch.as_tensor(ds.train_y[:40]).long()
    return x, y


@pytest.fixture(scope="module")
def lenet():
    return SigmoidLeNet(1, 28, 10, seed=0)


@pytest.fixture(scope="module")
def classifier():
    with torch.random.fork_rng():  # Classifier draws its Glorot init from the global RNG
        seed_torch(0, "init")
        model = Classifier(1, 28, 10)
    return model.eval()


def pixels(x: torch.Tensor) -> torch.Tensor:
    return (x * STD + MEAN).clamp(0.0, 1.0)


def psnr(a: torch.Tensor, b: torch.Tensor) -> float:
    """PSNR in dB of two normalised MNIST batches, in [0, 1] pixel space."""
    mse = ((pixels(a) - pixels(b)) ** 2).mean().item()
    return math.inf if mse == 0 else 10 * math.log10(1 / mse)


def observe(model: nn.Module, x: torch.Tensor, y: torch.Tensor, bounds=BOUNDS) -> GradientObservation:
    return GradientObservation(model, observed_gradient(model, x, y), len(y), SHAPE, 10, bounds)
