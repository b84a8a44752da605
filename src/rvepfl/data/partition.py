"""Partitions of a data set into clients, each with a fixed train and test split.

All indices point into the *pool*: the data set's train images followed by its test images.
``combined`` mode (as published) partitions the whole pool and each client keeps a fixed share of
its part as its own test split; ``standard`` mode partitions the train images and shares the test
images out so that each client's test labels follow its train labels. Every split is fixed for the
whole run (the published code re-drew the test split each round, leaking test images into
training).

>>> import numpy as np
>>> labels = np.repeat(np.arange(10), 20)
>>> parts = partition_indices(labels, 4, "iid", np.random.default_rng(0))
>>> [len(p) for p in parts]
[50, 50, 50, 50]
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from rvepfl.errors import ConfigError

__all__ = ["ClientSplit", "Partition", "make_partition", "partition_indices"]

_DIRICHLET_DRAWS = 100


@dataclass(frozen=True)
class ClientSplit:
    """Indices (into the pool) of one client's train and test samples."""

    train: np.ndarray
    test: np.ndarray


@dataclass(frozen=True)
class Partition:
    clients: tuple[ClientSplit, ...]
    num_unused: int

    def label_counts(self, labels: np.ndarray, num_classes: int) -> list[dict[str, list[int]]]:
        """Per client, the count of each class in its train and test splits."""
        return [
            {
                "train": np.bincount(labels[c.train], minlength=num_classes).tolist(),
                "test": np.bincount(labels[c.test], minlength=num_classes).tolist(),
            }
            for c in self.clients
        ]

    def to_arrays(self) -> dict[str, np.ndarray]:
        """Flat arrays for saving: concatenated indices and per-client lengths."""
        return {
            "train_indices": np.concatenate([c.train for c in self.clients]).astype(np.int64),
            "train_sizes": np.array([len(c.train) for c in self.clients], dtype=np.int64),
            "test_indices": np.concatenate([c.test for c in self.clients]).astype(np.int64),
            "test_sizes": np.array([len(c.test) for c in self.clients], dtype=np.int64),
        }


def _need(cond: bool, message: str) -> None:
    if not cond:
        raise ConfigError(message)


def partition_indices(
    labels: np.ndarray,
    num_clients: int,
    scheme: str,
    rng: np.random.Generator,
    *,
    shards_per_client: int = 2,
    alpha: float = 0.5,
    min_size: int = 2,
) -> list[np.ndarray]:
    """Split ``range(len(labels))`` into ``num_clients`` disjoint index arrays.

    ``iid``: equal random shards (the remainder is left unused, as published); ``shards``:
    label-sorted shards, ``shards_per_client`` per client; ``dirichlet``: per class, client shares
    drawn from Dirichlet(``alpha``), redrawn until every client has ``min_size`` samples.
    """
    n = len(labels)
    if scheme == "iid":
        size = n // num_clients
        _need(size >= min_size, f"Expected `data.num_clients` <= {n // min_size} for {n} samples "
              f"(each client needs {min_size}), got {num_clients}")
        order = rng.permutation(n)
        return [np.sort(order[i * size : (i + 1) * size]) for i in range(num_clients)]
    if scheme == "shards":
        num_shards = num_clients * shards_per_client
        size = n // num_shards
        _need(size * shards_per_client >= min_size,
              f"Expected `data.num_clients` * `data.shards_per_client` <= {n * shards_per_client // min_size} "
              f"for {n} samples, got {num_clients} * {shards_per_client}")
        shuffled = rng.permutation(n)
        by_label = shuffled[np.argsort(labels[shuffled], kind="stable")]
        shards = rng.permutation(num_shards)
        return [
            np.sort(np.concatenate([by_label[s * size : (s + 1) * size]
                                    for s in shards[i * shards_per_client : (i + 1) * shards_per_client]]))
            for i in range(num_clients)
        ]
    if scheme == "dirichlet":
        _need(n >= num_clients * min_size, f"Expected `data.num_clients` <= {n // min_size} for {n} "
              f"samples, got {num_clients}")
        classes = np.unique(labels)
        for _ in range(_DIRICHLET_DRAWS):
            parts: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
            for c in classes:
                idx = rng.permutation(np.flatnonzero(labels == c))
                shares = rng.dirichlet(np.full(num_clients, alpha))
                cuts = (np.cumsum(shares)[:-1] * len(idx)).astype(np.int64)
                for k, piece in enumerate(np.split(idx, cuts)):
                    parts[k].append(piece)
            result = [np.sort(np.concatenate(p)) for p in parts]
            if min(len(r) for r in result) >= min_size:
                return result
        raise ConfigError(
            f"Dirichlet partition with alpha={alpha} left a client with fewer than {min_size} samples "
            f"in {_DIRICHLET_DRAWS} draws: raise `data.dirichlet_alpha` or lower `data.num_clients`"
        )
    raise ConfigError(f"Unknown partition {scheme!r}: choose one of iid, shards, dirichlet")


def _split_local(idx: np.ndarray, fraction: float, rng: np.random.Generator) -> ClientSplit:
    shuffled = rng.permutation(idx)
    n_test = max(1, round(len(idx) * fraction))
    return ClientSplit(train=np.sort(shuffled[n_test:]), test=np.sort(shuffled[:n_test]))


def _share_test(
    test_labels: np.ndarray, offset: int, train_counts: np.ndarray, rng: np.random.Generator
) -> list[np.ndarray]:
    """Share test indices out per class, in proportion to each client's train count of the class."""
    num_clients = train_counts.shape[0]
    out: list[list[np.ndarray]] = [[] for _ in range(num_clients)]
    for c in range(train_counts.shape[1]):
        idx = rng.permutation(np.flatnonzero(test_labels == c)) + offset
        weights = train_counts[:, c].astype(np.float64)
        if len(idx) == 0 or weights.sum() == 0:
            continue
        exact = weights / weights.sum() * len(idx)
        counts = np.floor(exact).astype(np.int64)
        leftover = len(idx) - counts.sum()
        counts[np.argsort(-(exact - counts), kind="stable")[:leftover]] += 1
        for k, piece in enumerate(np.split(idx, np.cumsum(counts)[:-1])):
            out[k].append(piece)
    return [np.sort(np.concatenate(p)) if p else np.zeros(0, np.int64) for p in out]


def make_partition(
    train_y: np.ndarray,
    test_y: np.ndarray,
    *,
    num_clients: int,
    scheme: str,
    split: str,
    test_fraction: float,
    rng: np.random.Generator,
    shards_per_client: int = 2,
    alpha: float = 0.5,
    num_classes: int = 10,
) -> Partition:
    """Client splits over the pool ``concat(train, test)``; see the module docstring."""
    kwargs: dict[str, Any] = dict(shards_per_client=shards_per_client, alpha=alpha)
    if split == "combined":
        pool = np.concatenate([train_y, test_y])
        parts = partition_indices(pool, num_clients, scheme, rng, **kwargs)
        clients = tuple(_split_local(p, test_fraction, rng) for p in parts)
        used = sum(len(p) for p in parts)
        return Partition(clients, num_unused=len(pool) - used)
    if split == "standard":
        parts = partition_indices(train_y, num_clients, scheme, rng, min_size=1, **kwargs)
        counts = np.stack([np.bincount(train_y[p], minlength=num_classes) for p in parts])
        tests = _share_test(test_y, len(train_y), counts, rng)
        empty = [k for k, t in enumerate(tests) if len(t) == 0]
        if empty:
            raise ConfigError(f"Client {empty[0]} got no test samples in split=standard: use fewer "
                              "clients or `data.split = \"combined\"`")
        clients = tuple(ClientSplit(train=p, test=t) for p, t in zip(parts, tests))
        used = sum(len(p) for p in parts) + sum(len(t) for t in tests)
        return Partition(clients, num_unused=len(train_y) + len(test_y) - used)
    raise ConfigError(f"Unknown split mode {split!r}: choose one of combined, standard")
