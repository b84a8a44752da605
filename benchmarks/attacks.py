"""Attack benchmarks: gradient-inversion iterations per second, and MI-Face against IBM ART.

- ``dlg_iterations_per_second``: DLG (L-BFGS, soft labels) on the DLG paper's setting, an
  undefended sigmoid LeNet and one bundled MNIST digit.
- ``ig_iterations_per_second``: Inverting Gradients (Adam, cosine distance + total variation)
  on the shared RVE-PFL/FedAvg classifier, one digit, one restart.
- ``miface_speedup_vs_art``: :mod:`benchmarks.miface_art` (IBM ART's MIFace and ours on the same
  model, iterations and classes), when ART is installed (``pip install -e '.[bench]'``).
"""

from __future__ import annotations

from typing import Any

import torch

from benchmarks import miface_art
from rvepfl.attacks.dlg import dlg
from rvepfl.attacks.inverting import inverting_gradients
from rvepfl.attacks.lenet import SigmoidLeNet
from rvepfl.attacks.observation import GradientObservation, observed_gradient
from rvepfl.data.datasets import load_dataset, to_tensor
from rvepfl.models import Classifier
from rvepfl.seeding import seed_torch

__all__ = ["attack_benchmark"]

_SHAPE = (1, 28, 28)


def _digit() -> tuple[torch.Tensor, torch.Tensor]:
    data = load_dataset("mnist")
    return to_tensor(data.train_x[:1], "mnist"), torch.from_numpy(data.train_y[:1]).long()


def _rate(attack: Any, obs: GradientObservation, iterations: int, **kwargs: Any) -> dict[str, Any]:
    attack(obs, iterations=2, **kwargs)  # warm-up
    result = attack(obs, iterations=iterations, **kwargs)
    return {"iterations": result.iterations, "seconds": result.seconds,
            "iterations_per_second": result.iterations / result.seconds}


def attack_benchmark(*, threads: int = 2, miface_repeats: int = 2, log: Any = print) -> dict[str, Any]:
    """DLG and Inverting Gradients iteration rates, and the MI-Face comparison with ART."""
    torch.set_num_threads(threads)
    x, y = _digit()
    lenet = SigmoidLeNet(1, 28, 10, seed=0)
    log("  DLG, 100 iterations ...")
    dlg_rate = _rate(dlg, GradientObservation(lenet, observed_gradient(lenet, x, y), 1, _SHAPE, 10), 100)
    seed_torch(0, "init")
    classifier = Classifier(1, 28, 10)
    obs = GradientObservation(classifier, observed_gradient(classifier, x, y), 1, _SHAPE, 10)
    log("  Inverting Gradients, 300 iterations ...")
    ig_rate = _rate(inverting_gradients, obs, 300)
    out: dict[str, Any] = {"threads": torch.get_num_threads(), "dlg": dlg_rate, "ig": ig_rate,
                           "dlg_iterations_per_second": dlg_rate["iterations_per_second"],
                           "ig_iterations_per_second": ig_rate["iterations_per_second"]}
    if miface_art.art_available():
        log("  MI-Face: ours against IBM ART (1000 iterations, 10 classes) ...")
        result = miface_art.run(miface_art.default_args(threads=threads, repeats=miface_repeats),
                                log=lambda line: log(f"    {line}"))
        out["miface"] = result
        out["miface_speedup_vs_art"] = result["miface_speedup_vs_art"]
    else:
        out["miface_speedup_vs_art"] = None
        out["miface_skipped"] = "IBM ART is not installed: pip install -e '.[bench]'"
    return out
