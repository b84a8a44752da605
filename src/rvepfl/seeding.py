"""Named, independent random streams derived from one master seed.

Every source of randomness has its own stream, keyed by a name and integers (round, client), so
that a stream's numbers do not depend on what ran before it. That is what makes a resumed run
give exactly the numbers of an uninterrupted one.

>>> derive_seed(0, "train", 1, 2) == derive_seed(0, "train", 1, 2)
True
>>> derive_seed(0, "train", 1, 2) != derive_seed(0, "train", 2, 1)
True
"""

from __future__ import annotations

import hashlib

import numpy as np
import torch

__all__ = ["SERVER", "STREAMS", "derive_seed", "numpy_rng", "torch_generator", "seed_torch"]

STREAMS = ("partition", "init", "sampling", "train", "noise", "attack", "published-split", "secure-aggregation")

SERVER = -1
"""The server's key in a per-party stream such as ``noise`` (clients are 0, 1, ...): the server's
noise of round r comes from ``("noise", r, SERVER)``."""


def derive_seed(seed: int, stream: str, *keys: int) -> int:
    """A 63-bit seed for ``stream`` and ``keys``, derived from the master ``seed``."""
    if stream not in STREAMS:
        raise ValueError(f"Unknown random stream {stream!r}: choose one of {', '.join(STREAMS)}")
    text = ":".join([str(seed), stream, *(str(int(k)) for k in keys)])
    return int.from_bytes(hashlib.sha256(text.encode()).digest()[:8], "little") >> 1


def numpy_rng(seed: int, stream: str, *keys: int) -> np.random.Generator:
    """A NumPy generator for the named stream."""
    return np.random.default_rng(derive_seed(seed, stream, *keys))


def torch_generator(seed: int, stream: str, *keys: int) -> torch.Generator:
    """A torch CPU generator for the named stream."""
    return torch.Generator().manual_seed(derive_seed(seed, stream, *keys))


def seed_torch(seed: int, stream: str, *keys: int) -> None:
    """Seed torch's global generator (used by dropout and sampling inside modules)."""
    torch.manual_seed(derive_seed(seed, stream, *keys))
