"""Paper-scale RVE-PFL: one round's time and training images per second, on any device.

The paper's MNIST setting (configs/paper.toml): the 70,000 MNIST images pooled, 150 clients, IID,
10 local epochs, batch 256, every client every round. The full MNIST is not shipped with the
project, so this benchmark writes the bundled 10,000 digits, repeated seven times, as the four
IDX files of a full MNIST (60,000 + 10,000 images) into a temporary directory and reads them
through the normal data path (``data.data_dir``). Every client then holds the paper's 466 or 467
images (420 or so to train on), and a round does the paper's arithmetic, memory traffic and
store I/O: pixel values do not change a round's time, so the figure holds for the real data set.

``python -m benchmarks --only paper --device cuda`` measures it on a GPU (the engine trains the
clients one after another there); the engine's second round is measured, as in
:mod:`benchmarks.training` (the first has no stored encoders to load). On a CPU a full round is
about 130 TFLOP of training (some 20 minutes on 2 cores): ``--paper-clients N`` trains only N of
the 150 clients a round (``train.client_fraction``), each with its full paper-size data, which
gives the per-client time and the images per second but not the full round's time.
"""

from __future__ import annotations

import struct
import tempfile
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from benchmarks.training import round_timing
from rvepfl.config import apply_overrides, load_config
from rvepfl.data.datasets import load_dataset
from rvepfl.fl.client import prepare
from rvepfl.fl.server import round_clients
from rvepfl.fl.simulation import initialise, resolve_workers, train
from rvepfl.rundir import RunDir

__all__ = ["PAPER_CLIENTS", "paper_benchmark", "write_tiled_mnist"]

PAPER_CLIENTS = 150
_TRAIN, _TEST = 60_000, 10_000


def _write_idx(path: Path, array: np.ndarray) -> None:
    """One IDX file: the magic (uint8 payload, ndim), each dimension as big-endian uint32, data."""
    array = np.ascontiguousarray(array, dtype=np.uint8)
    header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape)
    path.write_bytes(header + array.tobytes())


def write_tiled_mnist(directory: Path) -> Path:
    """The bundled digits, repeated to 70,000, as MNIST's four IDX files in ``directory``."""
    bundled = load_dataset("mnist", None)
    images = np.concatenate([bundled.train_x, bundled.test_x])[..., 0]  # (N, 28, 28)
    labels = np.concatenate([bundled.train_y, bundled.test_y]).astype(np.uint8)
    reps = -(-(_TRAIN + _TEST) // len(labels))
    images = np.tile(images, (reps, 1, 1))[: _TRAIN + _TEST]
    labels = np.tile(labels, reps)[: _TRAIN + _TEST]
    directory.mkdir(parents=True, exist_ok=True)
    _write_idx(directory / "train-images-idx3-ubyte", images[:_TRAIN])
    _write_idx(directory / "train-labels-idx1-ubyte", labels[:_TRAIN])
    _write_idx(directory / "t10k-images-idx3-ubyte", images[_TRAIN:])
    _write_idx(directory / "t10k-labels-idx1-ubyte", labels[_TRAIN:])
    return directory


def _device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    return f"{device.type} ({torch.get_num_threads()} torch threads)"


def paper_benchmark(device: str = "auto", clients: int = PAPER_CLIENTS, *, local_epochs: int = 10,
                    precision: str = "32", log: Any = print) -> dict[str, Any]:
    """Train two paper-scale rounds of RVE-PFL on ``device`` and return the second's figures.

    ``clients`` (1..150) of the 150 clients train each round; ``local_epochs`` other than the
    paper's 10 is for checking this code quickly; ``precision`` is ``train.precision``.
    """
    if not 1 <= clients <= PAPER_CLIENTS:
        raise ValueError(f"expected 1 <= clients <= {PAPER_CLIENTS}, got {clients}")
    with tempfile.TemporaryDirectory(prefix="rvepfl-paper-") as tmp:
        log("  writing a 70,000-image MNIST from the bundled digits ...")
        data_dir = write_tiled_mnist(Path(tmp) / "mnist")
        cfg = apply_overrides(load_config(None), {
            "method": "rvepfl", "device": device, "data.dataset": "mnist", "data.data_dir": str(data_dir),
            "data.split": "combined", "data.partition": "iid", "data.num_clients": PAPER_CLIENTS,
            "train.local_epochs": local_epochs, "train.batch_size": 256, "train.rounds": 2,
            "train.client_fraction": clients / PAPER_CLIENTS, "train.precision": precision,
        })
        fed = prepare(cfg)
        trained = round_clients(cfg, 2)
        images = sum(len(fed.partition.clients[c].train) for c in trained) * local_epochs
        log(f"  two rounds of {len(trained)} client(s) on {fed.device} ({images:,} training images a round) ...")
        if fed.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(fed.device)
        run = RunDir(Path(tmp) / "run")
        initialise(fed, run)
        started = time.perf_counter()
        train(fed, run)
        total = time.perf_counter() - started
        seconds, train_s, eval_s = round_timing(run)[-1]
        sizes = [len(fed.partition.clients[c].train) for c in range(PAPER_CLIENTS)]
        return {
            "device": _device_name(fed.device),
            "precision": fed.method.precision.summary(),
            "setting": {"clients": PAPER_CLIENTS, "clients_trained": len(trained), "local_epochs": local_epochs,
                        "batch_size": 256, "images": _TRAIN + _TEST,
                        "train_images_per_client": [min(sizes), max(sizes)],
                        "workers": resolve_workers(cfg, fed.device)[0]},
            "paper_round_seconds": seconds if len(trained) == PAPER_CLIENTS else None,
            "paper_images_per_second": images / seconds,
            "round_seconds": seconds,
            "round_train_seconds": train_s,
            "round_eval_seconds": eval_s,
            "seconds_per_client": seconds / len(trained),
            "images_trained": images,
            "both_rounds_seconds": total,
            "peak_gpu_memory_gib": (torch.cuda.max_memory_allocated(fed.device) / 2**30
                                    if fed.device.type == "cuda" else None),
        }
