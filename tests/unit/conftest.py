"""Fixtures of the gradient-attack tests (tests/unit/test_attacks_{observation,dlg,inverting,batched}.py):
real bundled MNIST digits and the two victim models; their helpers are in
tests/helpers/gradient_attacks.py.

``one_thread`` runs a module's tests on one torch thread (those modules and test_attacks_gmi.py
ask for it with ``pytestmark = pytest.mark.usefixtures("one_thread")``). The other fixtures are module-scoped:
each module that asks for one builds its own, as when they were imported into each module.
"""

from __future__ import annotations

import pytest
import torch

from rvepfl.attacks.lenet import SigmoidLeNet
from rvepfl.data.datasets import load_dataset, to_tensor
from rvepfl.models import Classifier
from rvepfl.seeding import seed_torch


@pytest.fixture(scope="module")
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
