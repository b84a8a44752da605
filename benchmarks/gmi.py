"""GMI's costs: training its image prior, and one attack once the prior exists.

- ``gmi_prior_seconds``: :func:`rvepfl.attacks.gmi.train_prior` with the attack's defaults
  (:class:`rvepfl.attacks.gmi.GmiParams`) on 4,000 bundled MNIST digits, at the benchmark's
  thread count (target: at most 10 minutes on 2 cores); ``gmi_prior_seconds_one_thread`` the
  same on one thread, as ``rvepfl attack`` runs by default.
- ``gmi_attack_seconds``: what ``rvepfl attack gmi`` spends after the prior: the search for 10
  classes x every restart (the defaults: 5 restarts, 300 iterations) and the same search without
  the victim's term (the control), on the shared classifier (target: at most 60 s); on one
  thread, the attack's default.
"""

from __future__ import annotations

import time
from typing import Any

import torch

from rvepfl.attacks.gmi import Gmi, GmiParams, gmi_search, train_prior
from rvepfl.data.datasets import NORMALISATION, load_dataset
from rvepfl.models import Classifier
from rvepfl.seeding import seed_torch

__all__ = ["gmi_benchmark"]


def _train(pixels: torch.Tensor, p: GmiParams) -> float:
    t0 = time.perf_counter()
    train_prior(pixels, seed=0, steps=p.prior_steps, batch_size=p.prior_batch, latent_dim=p.latent_dim,
                width=p.prior_width, lr=p.prior_lr)
    return time.perf_counter() - t0


def gmi_benchmark(*, threads: int, log: Any = print) -> dict[str, Any]:
    """The prior's training time (at ``threads`` and at one thread) and one attack's time."""
    p = GmiParams()
    data = load_dataset("mnist")
    pixels = torch.from_numpy(data.train_x[:4000]).permute(0, 3, 1, 2).float().div(255.0).contiguous()
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads)
        log(f"  the prior, {p.prior_steps} steps on {len(pixels)} digits, {threads} threads ...")
        prior_seconds = _train(pixels, p)
        torch.set_num_threads(1)
        log(f"  the prior, {p.prior_steps} steps, 1 thread ...")
        prior_one = _train(pixels, p)
        prior = train_prior(pixels[:256], seed=0, steps=2, batch_size=p.prior_batch, latent_dim=p.latent_dim,
                            width=p.prior_width)  # the search's cost does not depend on the prior's training
        seed_torch(0, "init")
        model = Classifier(1, 28, 10).eval()
        mean, std = (torch.tensor(v).view(1, -1, 1, 1) for v in NORMALISATION["mnist"])
        log(f"  the attack: 10 classes x {Gmi.default_restarts} restarts x {Gmi.default_iterations} iterations, "
            "and the control, 1 thread ...")
        t0 = time.perf_counter()
        for victim in (True, False):
            gmi_search(model, prior, 10, to_input=lambda x: (x - mean) / std, seed=0, restarts=Gmi.default_restarts,
                       iterations=Gmi.default_iterations, lr=p.lr, prior_weight=p.prior_weight, victim=victim)
        attack_seconds = time.perf_counter() - t0
    finally:
        torch.set_num_threads(before)
    return {"threads": threads, "prior_images": len(pixels), "prior_steps": p.prior_steps,
            "gmi_prior_seconds": prior_seconds, "gmi_prior_seconds_one_thread": prior_one,
            "gmi_attack_seconds": attack_seconds}
