"""Small configs and random client data for the method tests."""

from __future__ import annotations

import torch

from rvepfl.config import Config, apply_overrides
from rvepfl.methods.base import ClientData


def tiny_cfg(method: str, **overrides) -> Config:
    """A two-client, two-round config of ``method`` on 300 bundled images, one CPU thread, in
    the test's process (tests/e2e/test_workers.py covers worker processes)."""
    return apply_overrides(Config(), {
        "method": method, "data.subset": 300, "data.num_clients": 2, "train.rounds": 2,
        "train.local_epochs": 1, "train.batch_size": 32, "threads": 1, "workers": 1, "device": "cpu", **overrides})


def random_data(n: int, n_test: int) -> ClientData:
    """Seeded random 1x8x8 images and labels: ``n`` to train on, ``n_test`` to test on."""
    g = torch.Generator().manual_seed(0)
    return ClientData(torch.randn(n, 1, 8, 8, generator=g), torch.randint(0, 10, (n,), generator=g),
                      torch.randn(n_test, 1, 8, 8, generator=g), torch.randint(0, 10, (n_test,), generator=g))
