"""The client's side of a round: the federation a client builds, and one client's round.

Everything here runs where a client runs (the engine's process, a worker process, a Flower
SuperNode) and imports nothing of the server (:mod:`rvepfl.fl.server`). One round, as published:
the client takes the latest global shared state into its personal model (its private state
stays), is evaluated on its test split before training ("general test"), trains, is evaluated
on its train and test splits, and uploads.
"""

from __future__ import annotations

import time
import traceback
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F

from rvepfl.config import Config
from rvepfl.data import (
    Dataset,
    Partition,
    load_dataset,
    make_partition,
    subset_dataset,
    to_tensor,
)
from rvepfl.errors import ConfigError
from rvepfl.fl.store import ClientStore
from rvepfl.methods import ClientData, DataSpec, Method, RoundContext, Upload
from rvepfl.metrics import classification_metrics
from rvepfl.precision import FLOAT32, Precision
from rvepfl.precision import resolve as resolve_precision
from rvepfl.registry import build_method
from rvepfl.seeding import numpy_rng, seed_torch

__all__ = ["ClientFailure", "ClientOutcome", "Federation", "describe_exception", "evaluate", "initial_model",
           "partition_summary", "prepare", "resolve_device", "train_client"]


@dataclass
class Federation:
    """Everything a client (or the in-process engine) needs, loaded and validated before anything
    is written: the config, the data set, the partition, the method, the pooled images."""

    cfg: Config
    dataset: Dataset
    partition: Partition
    method: Method
    pool_x: torch.Tensor
    pool_y: torch.Tensor
    device: torch.device

    def client_data(self, client: int, round_: int | None = None) -> ClientData:
        """The client's train and test images: its fixed split, or with ``data.test_split =
        "published-leaky"`` and a ``round_``, that round's re-draw of its split (as published:
        same sizes, a seeded permutation of the client's pooled images per round and client)."""
        split = self.partition.clients[client]
        train_idx, test_idx = split.train, split.test
        if round_ is not None and self.cfg.data.test_split == "published-leaky":
            pooled = numpy_rng(self.cfg.seed, "published-split", round_, client).permutation(
                np.concatenate([train_idx, test_idx]))
            test_idx, train_idx = np.sort(pooled[: len(test_idx)]), np.sort(pooled[len(test_idx):])
        train = torch.from_numpy(train_idx).to(self.device)
        test = torch.from_numpy(test_idx).to(self.device)
        return ClientData(self.pool_x[train], self.pool_y[train], self.pool_x[test], self.pool_y[test])

    def label_counts(self) -> list[dict[str, list[int]]]:
        """Each client's label counts of its train and test splits."""
        return self.partition.label_counts(self.pool_y.cpu().numpy(), self.dataset.num_classes)


@dataclass
class ClientOutcome:
    """What one client's round gives the server: its upload, its metrics (``general``, ``train``,
    ``test``), its local steps and its seconds of training and evaluation."""

    upload: Upload
    metrics: dict[str, dict[str, float]]
    steps: int
    train_seconds: float
    eval_seconds: float


@dataclass(frozen=True)
class ClientFailure:
    """A client left out of a round: how it failed (``error``: it raised; ``died``: its process or
    node died; ``timeout``: it passed ``faults.client_timeout``), after how many seconds, a
    one-line message, and (``error``) the exception itself."""

    client: int
    kind: str
    seconds: float
    message: str
    exception: BaseException | None = field(default=None, repr=False, compare=False)


def describe_exception(exc: BaseException) -> str:
    """One line naming an exception and where it was raised (``ValueError: bad (at file.py:12 in f)``)."""
    text = " ".join(str(exc).split()) or "(no message)"
    if len(text) > 300:
        text = text[:297] + "..."
    frames = traceback.extract_tb(exc.__traceback__) if exc.__traceback__ is not None else []
    where = f" (at {Path(frames[-1].filename).name}:{frames[-1].lineno} in {frames[-1].name})" if frames else ""
    return f"{type(exc).__name__}: {text}{where}"


def resolve_device(name: str) -> torch.device:
    """The torch device for ``cpu``, ``cuda`` or ``auto``; no silent fallback from ``cuda``."""
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError('Expected a CUDA device for `device = "cuda"`, but torch sees none: use "cpu" or "auto"')
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def prepare(cfg: Config) -> Federation:
    """Load the data, partition it and build the method; raises user errors, writes nothing."""
    d = cfg.data
    dataset = load_dataset(d.dataset, d.data_dir or None, download=d.download)
    if d.subset:
        dataset = subset_dataset(dataset, d.subset, numpy_rng(cfg.seed, "partition", 1))
    partition = make_partition(
        dataset.train_y,
        dataset.test_y,
        num_clients=d.num_clients,
        scheme=d.partition,
        split=d.split,
        test_fraction=d.test_fraction,
        rng=numpy_rng(cfg.seed, "partition"),
        shards_per_client=d.shards_per_client,
        alpha=d.dirichlet_alpha,
        num_classes=dataset.num_classes,
    )
    device = resolve_device(cfg.device)
    spec = DataSpec(dataset.channels, dataset.image_size, dataset.num_classes,
                    tuple(len(c.train) for c in partition.clients))
    method = build_method(cfg, spec)
    method.precision = resolve_precision(cfg.train.precision, device,
                                         parity=vars(type(method)).get("bf16_parity", False), method=cfg.method)
    pool_x = to_tensor(np.concatenate([dataset.train_x, dataset.test_x]), dataset.name).to(device)
    pool_y = torch.from_numpy(np.concatenate([dataset.train_y, dataset.test_y])).long().to(device)
    return Federation(cfg, dataset, partition, method, pool_x, pool_y, device)


def partition_summary(*, dataset: str, source: str, num_train: int, num_test: int, partition: Partition,
                      label_counts: list[dict[str, list[int]]]) -> dict[str, Any]:
    """What ``partition.json`` holds: the data set, and each client's split sizes and label counts
    (the in-process engine computes them from the data, the Flower server from its nodes' facts)."""
    return {
        "dataset": dataset,
        "source": source,
        "pool": "train images followed by test images",
        "num_train_images": int(num_train),
        "num_test_images": int(num_test),
        "num_unused": partition.num_unused,
        "clients": [
            {"client": i, "train": len(c.train), "test": len(c.test), "label_counts": label_counts[i]}
            for i, c in enumerate(partition.clients)
        ],
    }


@torch.inference_mode()
def evaluate(model: nn.Module, x: torch.Tensor, y: torch.Tensor, num_classes: int,
             batch_size: int = 1024, precision: Precision = FLOAT32) -> dict[str, float]:
    """Mean cross-entropy, accuracy and macro precision/recall/F1 of ``model`` on (x, y), its
    forward pass under ``precision`` (the loss and metrics in float32)."""
    model.eval()
    total_loss = 0.0
    preds = []
    for start in range(0, len(y), batch_size):
        with precision.autocast():
            logits = model(x[start : start + batch_size])
        logits = logits.float()
        total_loss += F.cross_entropy(logits, y[start : start + batch_size], reduction="sum").item()
        preds.append(logits.argmax(1))
    metrics = classification_metrics(torch.cat(preds), y, num_classes)
    return {"loss": total_loss / max(1, len(y)), **metrics}


def initial_model(method: Method, seed: int, device: torch.device | str = "cpu"
                  ) -> tuple[nn.Module, dict[str, torch.Tensor], dict[str, torch.Tensor]]:
    """The method's model as every client starts it (built under the run's ``init`` seed, on the
    CPU, then moved to ``device``), with copies of its initial private and shared state on the CPU."""
    seed_torch(seed, "init")
    model = method.build_model().to(device)
    initial_private = {k: v.detach().cpu().clone() for k, v in method.private_state(model).items()}
    initial_shared = {k: v.detach().cpu() for k, v in method.shared_state(model).items()}
    return model, initial_private, initial_shared


def client_round(fed: Federation, model: nn.Module, ctx: RoundContext, clock: int,
                 received: dict[str, torch.Tensor]) -> ClientOutcome:
    """One client's round on ``model`` (already holding its private state and the global state):
    general test, local training, evaluation on its train and test splits, upload."""
    assert ctx.client is not None
    t, method, num_classes = fed.cfg.train, fed.method, fed.dataset.num_classes
    data = fed.client_data(ctx.client, ctx.round)
    seed_torch(ctx.seed, "train", ctx.round, ctx.client, 0)  # dropout and z-sampling
    e0 = time.perf_counter()
    p = method.precision
    general = evaluate(model, data.test_x, data.test_y, num_classes, t.eval_batch_size, p)
    e1 = time.perf_counter()
    steps = method.local_train(model, data, ctx, clock) - clock
    e2 = time.perf_counter()
    m_train = evaluate(model, data.train_x, data.train_y, num_classes, t.eval_batch_size, p)
    m_test = evaluate(model, data.test_x, data.test_y, num_classes, t.eval_batch_size, p)
    e3 = time.perf_counter()
    return ClientOutcome(
        upload=method.upload(model, ctx, len(data.train_y), received),
        metrics={"general": general, "train": m_train, "test": m_test},
        steps=steps,
        train_seconds=e2 - e1,
        eval_seconds=(e1 - e0) + (e3 - e2),
    )


def train_client(fed: Federation, model: nn.Module, store: ClientStore, initial_private: dict[str, torch.Tensor],
                 global_state: dict[str, torch.Tensor], round_: int, client: int, committed: int,
                 clock: int | None) -> ClientOutcome:
    """One client's round on ``model``: its private state after round ``committed`` (or the
    initial one) and the global state loaded, :func:`client_round` with the decay clock at
    ``clock`` (None: the client's own step count), and its new private state saved to the store
    as round ``round_`` (uncommitted until the server writes its progress marker)."""
    stored = store.get(client, committed, initial_private)
    private, steps = stored if stored is not None else (initial_private, 0)
    model.load_state_dict({**private, **global_state})
    del private, stored
    ctx = RoundContext(round=round_, client=client, seed=fed.cfg.seed, client_steps=steps)
    outcome = client_round(fed, model, ctx, steps if clock is None else clock, global_state)
    store.put(client, round_, fed.method.private_state(model), steps + outcome.steps)
    return outcome

