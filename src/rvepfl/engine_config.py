"""The engine's part of the configuration: the keys and sections every run has, whatever its method.

:class:`EngineConfig` holds the top-level keys and the engine's sections (:class:`DataConfig`,
:class:`TrainConfig`, :class:`FaultsConfig`, :class:`SecureAggregationConfig`). :mod:`rvepfl.config` makes the whole run
configuration, :class:`rvepfl.config.Config`, from it plus one section per method or mechanism
with settings, and loads, validates and hashes it; import these classes from there (it exports
them too). They live here, below the registry, methods and mechanisms, so that those can name
the config's type without importing :mod:`rvepfl.config`, which imports them. This module imports
nothing of rvepfl's but the precision names.

>>> EngineConfig().train.batch_size, EngineConfig().clients_per_round
(64, 10)
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from rvepfl.precision import PrecisionName

__all__ = ["DataConfig", "EngineConfig", "FaultsConfig", "RunConfig", "SecureAggregationConfig", "TrainConfig"]

DatasetName = Literal["mnist", "fmnist", "cifar10"]
PartitionName = Literal["iid", "shards", "dirichlet"]
SplitMode = Literal["combined", "standard"]
Aggregation = Literal["mean", "weighted", "median", "trimmed-mean"]
DeviceName = Literal["auto", "cpu", "cuda"]
DecayClock = Literal["federation", "client"]
TestSplit = Literal["fixed", "published-leaky"]
OptimiserScope = Literal["per-client", "published-shared"]


@dataclass(frozen=True)
class DataConfig:
    dataset: DatasetName = "mnist"
    """Data set: mnist, fmnist (Fashion-MNIST) or cifar10."""
    data_dir: str = ""
    """Directory with the full data set's files (IDX or CIFAR-10 batches); empty = bundled subset."""
    download: bool = False
    """Download the full data set into data_dir if it is missing (needs internet)."""
    split: SplitMode = "combined"
    """combined: train+test pooled, each client keeps test_fraction as its own test split (published);
    standard: the train set is partitioned, the test set is shared out to match each client's labels."""
    test_fraction: float = 0.1
    """Share of each client's data kept as its fixed test split (split = combined)."""
    partition: PartitionName = "iid"
    """iid (equal random shards), shards (label-sorted, shards_per_client each) or dirichlet."""
    num_clients: int = 10
    """Number of clients."""
    subset: int = 0
    """Use only this many images, a seeded stratified draw from the data set (0: all of them)."""
    shards_per_client: int = 2
    """Label-sorted shards per client (partition = shards)."""
    dirichlet_alpha: float = 0.5
    """Concentration of the per-class Dirichlet split (partition = dirichlet); smaller = more skewed."""
    test_split: TestSplit = "fixed"
    """fixed: each client's test split is drawn once and kept for the whole run (an honest test);
    published-leaky: as the published code did, each client's images are re-split every round (a
    seeded draw here), so a round tests on images the client trained on in earlier rounds; its
    accuracy is not a test accuracy. Only for reproducing the published figures."""


@dataclass(frozen=True)
class TrainConfig:
    rounds: int = 7
    """Communication rounds."""
    local_epochs: int = 2
    """Local epochs per client per round."""
    batch_size: int = 64
    """Local mini-batch size."""
    lr: float = 1e-3
    """Adam learning rate."""
    adam_eps: float = 1e-7
    """Adam epsilon (Keras's default, as published)."""
    lr_decay: float = 1e-3
    """Inverse-time decay: lr / (1 + lr_decay * step); 0 = off. What `step` counts: see lr_decay_clock."""
    lr_decay_clock: DecayClock = "federation"
    """federation: every local step of every client so far, in round and client order (the published
    schedule, whose one optimiser served all clients); client: this client's own steps only."""
    client_fraction: float = 1.0
    """Share of clients that take part in each round (at least one)."""
    aggregation: Aggregation = "mean"
    """mean: plain mean over clients (published); weighted: weighted by local sample count; median:
    coordinate-wise median; trimmed-mean: coordinate-wise mean without the trim_fraction largest and
    smallest values (median and trimmed-mean resist a few malicious clients, and hold every upload
    of a round in memory)."""
    trim_fraction: float = 0.2
    """trimmed-mean: the share of the values cut off at each end of every coordinate (in [0, 0.5))."""
    max_update_norm: float | None = None
    """L2 bound on each client's update (its upload minus the global state, all tensors as one
    vector), applied by the server before aggregating (> 0); leave it out for no bound."""
    optimiser: OptimiserScope = "per-client"
    """per-client: a fresh Adam for each client's local training in each round; published-shared:
    as the published code did, one Adam whose moments and step counts (per parameter, by name)
    pass from each client to the next and from round to round, an information flow between
    clients that a real federation does not have. Only for reproducing the published figures;
    clients then train one after another in one process (workers = 1)."""
    checkpoint_every: int = 0
    """Save every client's private state every N rounds (0: only at the end); global states are saved every round."""
    eval_batch_size: int = 1024
    """Batch size for evaluation (no effect on results)."""
    precision: PrecisionName = "auto"
    """Number format of training and evaluation: "32" (float32); "bf16-mixed" (bfloat16 autocast
    for the forward pass and loss, float32 weights, optimiser, uploads, aggregation, noise and
    checkpoints; fast only on a CPU with AMX-BF16 or AVX512-BF16 or a GPU with bfloat16 tensor
    cores, emulated and slower elsewhere); "16-mixed" (float16 with loss scaling, CUDA only);
    "auto": bf16-mixed where the hardware has native bfloat16 and the method's parity with
    float32 is measured, else 32. The run's summary.json records what ran and why (`precision`)."""


@dataclass(frozen=True)
class FaultsConfig:
    min_clients: int = 0
    """The fewest clients of a round that must finish it for the round to count (0: every client of
    the round; one failure stops the run). A client fails when it raises, its process dies, it
    passes ``client_timeout`` or the server refuses its upload (kind ``rejected``); failed clients
    are left out of the round's aggregation and recorded in metrics/client_failures.csv. With fewer
    than this many finished, the round fails with an error and the run resumes from the round before
    it. Not part of the config hash: a resumed run may change it."""
    client_timeout: float = 0.0
    """Seconds a client may take for one round, training and evaluation (0: no limit); clients then
    train in worker processes, which are killed and replaced when they run past it."""


@dataclass(frozen=True)
class SecureAggregationConfig:
    enabled: bool = False
    """Secure aggregation (SecAgg+, Bell et al., CCS 2020): the server learns only the weighted
    mean of a round's uploads, never one upload. On Flower, Flower's own protocol
    (``SecAggPlusWorkflow`` and ``secaggplus_mod``); the in-process engine applies the same
    quantisation without the masks, which cancel in the sum, so both give the same numbers. Only
    for methods whose server takes a mean (train.aggregation = "mean" or "weighted", no
    train.max_update_norm). The attacks then find no per-client surface for the server
    (threat models `gradient`, `update`); `aggregate` measures what the mean of k uploads leaks."""
    num_shares: int = 0
    """Shares each client's secrets are split into, one per neighbour, itself included (0: every
    client of the round, SecAgg's complete graph; else at least 3 and odd, SecAgg+'s sparse
    graph)."""
    reconstruction_threshold: int = 0
    """Shares that rebuild a secret, at least 2 and at most num_shares (0: more than half of the
    shares). A round completes while every client keeps this many live neighbours: the
    clients that may drop out of a round are the shares minus this threshold."""
    clipping_range: float = 8.0
    """Each uploaded value, times its client's weight over the largest weight, is clipped to
    [-clipping_range, clipping_range] before it is quantised."""
    quantization_range: int = 4194304
    """Integers each value is quantised to (2**22: a step of 2 * clipping_range / 2**22, about
    3.8e-6 with the defaults, with unbiased stochastic rounding)."""
    modulus_range: int = 4294967296
    """The modulus of the masked sums (2**32, a power of 2 above quantization_range *
    clients a round, so that the sum never wraps)."""


@dataclass(frozen=True)
class EngineConfig:
    """The settings every run has, whatever its method: the top-level keys and the engine's
    sections. :class:`Config` adds one section per method and mechanism with settings."""

    name: str = "quick"
    """Name of the configuration; the default run directory is runs/<name>-<time>."""
    method: str = "rvepfl"
    """Federated method: a method, a mechanism alone (on FedAvg) or METHOD+MECHANISM[+MECHANISM...]
    (see `rvepfl methods`)."""
    seed: int = 0
    """Master seed; every source of randomness derives from it."""
    threads: int = 0
    """Torch CPU threads (0: torch's default); with ``workers`` > 1, the threads of each worker
    (0: torch's default divided among the workers). The attacks that audit, compare and frontier
    run on a run use this many threads, one when it is 0 (an attack with torch's default threads
    slows down by an order of magnitude when another process shares the cores)."""
    workers: int = 0
    """Client processes that train a round's clients side by side (1: every client in the
    engine's process, one after another; 0: one per core torch would use, at most one per client
    of a round, and 1 on a GPU). On a CPU, several single-threaded workers use the cores better
    than one process with several threads (BENCHMARKS.md); seeds do not depend on it: the numbers
    differ from a one-worker run only by floating-point rounding (none when every process has one
    thread)."""
    device: DeviceName = "auto"
    """cpu, cuda, or auto (cuda when available, else cpu); the device used is in summary.json."""
    tensorboard: bool = False
    """Write each round's and each client's metrics, seconds and privacy figures as TensorBoard
    events in <run>/tensorboard/ (`tensorboard --logdir runs`); needs `pip install
    'rvepfl[tensorboard]'`. Not part of the config hash: a resumed run may turn it on or off."""
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    faults: FaultsConfig = field(default_factory=FaultsConfig)
    secure_aggregation: SecureAggregationConfig = field(default_factory=SecureAggregationConfig)

    @property
    def clients_per_round(self) -> int:
        """K: the clients that take part in each round (at least one)."""
        return max(1, round(self.train.client_fraction * self.data.num_clients))


if TYPE_CHECKING:
    class RunConfig(EngineConfig):
        """What a type checker knows of :class:`rvepfl.config.Config`: :class:`EngineConfig`. The
        sections of methods and mechanisms, which that class adds as fields when it is made at
        import time, are read typed through :meth:`rvepfl.methods.base.Method.settings` (or by
        name with ``getattr``, untyped, where the section is a variable)."""
else:  # at run time, the class every Config is made from
    RunConfig = EngineConfig
