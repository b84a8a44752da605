"""Inverting Gradients' throughput: one observation at a time against batched.

``rvepfl attack ig`` attacks its observations in chunks, each chunk as one optimisation
(:func:`rvepfl.attacks.inverting.inverting_gradients_batched`); before, each observation was its
own Python loop of Adam steps on a one-image input. This part times both on the same
observations: ``images`` bundled MNIST digits at batch 1 (default 10), each observed through the
shared Classifier of configs/frontier-quick.toml's runs (the LeNet-style CNN that FedAvg trains
and RVE-PFL shares) in its seeded initial state, ``iterations`` Adam steps (default 200) and
``restarts`` restarts (default 1), at the benchmark's thread count.

- ``ig_images_per_second_one_at_a_time``: images reconstructed per second by
  :func:`~rvepfl.attacks.inverting.inverting_gradients`, one observation after another;
- ``ig_images_per_second_batched``: the same observations in one
  :func:`~rvepfl.attacks.inverting.inverting_gradients_batched` call;
- ``ig_batched_speedup``: the second over the first;
- ``max_pixel_difference``: the largest difference between the two's reconstructions, in [0, 1]
  pixels (float rounding: the batched kernels sum in another order), a check that both did the
  same work.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from rvepfl.attacks.inverting import inverting_gradients, inverting_gradients_batched
from rvepfl.attacks.observation import GradientObservation, observed_gradient
from rvepfl.attacks.scores import to_pixels
from rvepfl.data.datasets import NORMALISATION, load_dataset, to_tensor
from rvepfl.models import Classifier
from rvepfl.seeding import seed_torch

__all__ = ["ig_batched_benchmark"]


def _observations(images: int) -> list[GradientObservation]:
    data = load_dataset("mnist")
    x = to_tensor(data.train_x[:images], "mnist")
    y = torch.from_numpy(data.train_y[:images]).long()
    seed_torch(0, "init")
    model = Classifier(1, 28, 10).eval()
    (mean,), (std,) = NORMALISATION["mnist"]
    bounds = ((0 - mean) / std, (1 - mean) / std)  # what an attacker knows of a model that reads images
    return [GradientObservation(model, observed_gradient(model, x[i:i + 1], y[i:i + 1]), 1, (1, 28, 28), 10, bounds)
            for i in range(images)]


def ig_batched_benchmark(*, threads: int, images: int = 10, iterations: int = 200, restarts: int = 1,
                         log: Any = print) -> dict[str, Any]:
    """Images reconstructed per second by Inverting Gradients, one at a time and batched."""
    observations = _observations(images)
    seeds = list(range(images))
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        inverting_gradients(observations[0], iterations=2, restarts=restarts)  # warm-up
        inverting_gradients_batched(observations[:2], iterations=2, restarts=restarts)
        log(f"  one at a time: {images} images x {restarts} restarts x {iterations} iterations, {threads} threads ...")
        t0 = time.perf_counter()
        one = [inverting_gradients(obs, iterations=iterations, restarts=restarts, seed=seed)
               for obs, seed in zip(observations, seeds)]
        one_seconds = time.perf_counter() - t0
        log(f"  batched: the same {images} images as one optimisation ...")
        t0 = time.perf_counter()
        many = inverting_gradients_batched(observations, iterations=iterations, restarts=restarts, seeds=seeds)
        batched_seconds = time.perf_counter() - t0
    finally:
        torch.set_num_threads(before)
    difference = max(float((to_pixels(a.inputs, "mnist") - to_pixels(b.inputs, "mnist")).abs().max())
                     for a, b in zip(one, many))
    return {"threads": threads, "images": images, "batch_size": 1, "iterations": iterations, "restarts": restarts,
            "model": "Classifier (the shared CNN of configs/frontier-quick.toml's runs), seeded initial weights",
            "one_at_a_time_seconds": one_seconds, "batched_seconds": batched_seconds,
            "ig_images_per_second_one_at_a_time": images / one_seconds,
            "ig_images_per_second_batched": images / batched_seconds,
            "ig_batched_speedup": one_seconds / batched_seconds,
            "max_pixel_difference": difference}
