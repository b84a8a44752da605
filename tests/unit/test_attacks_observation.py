"""The observation contract and what every gradient attack shares, on real bundled MNIST digits:
the client's gradient, determinism, the observed model left untouched, restarts, NaN, validation.

Measured on this repository's bundled MNIST subset, one CPU thread, torch 2.13.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from rvepfl.attacks.dlg import dlg, idlg, infer_labels
from rvepfl.attacks.inverting import inverting_gradients
from rvepfl.attacks.lenet import SigmoidLeNet
from rvepfl.attacks.observation import GradientObservation, observed_gradient
from rvepfl.attacks.registry import attacks
from rvepfl.attacks.upload import UploadAttack
from rvepfl.errors import RvepflError
from rvepfl.models import Classifier
from rvepfl.seeding import torch_generator
from tests.helpers.gradient_attacks import SHAPE, Fragile, observe

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/unit/conftest.py: one torch thread


ATTACKS = {name: a.algorithm for name, a in attacks().items() if isinstance(a, UploadAttack)}


# -- 1. determinism, the model untouched, the client's gradient ---------------------------------
@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_same_seed_same_reconstruction(mnist, lenet, name):
    x, y = mnist
    obs = observe(lenet, x[:1], y[:1])
    a, b = ATTACKS[name](obs, iterations=15, seed=3), ATTACKS[name](obs, iterations=15, seed=3)
    c = ATTACKS[name](obs, iterations=15, seed=4)
    assert torch.equal(a.inputs, b.inputs) and a.loss_history == b.loss_history
    assert torch.equal(a.labels, b.labels)
    assert not torch.equal(a.inputs, c.inputs)


def test_attacks_leave_the_observed_model_untouched(mnist):
    x, y = mnist
    model = SigmoidLeNet(1, 28, 10, seed=1)
    obs = observe(model, x[:1], y[:1])
    model.train()
    model.fc.bias.requires_grad_(False)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    for attack in ATTACKS.values():
        attack(obs, iterations=5, seed=0)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())
    assert model.training and all(m.training for m in model.modules())
    assert not model.fc.bias.requires_grad and model.fc.weight.requires_grad
    assert all(p.grad is None for p in model.parameters())


def test_observed_gradient_restores_modes_and_matches_autograd(mnist, classifier):
    x, y = mnist
    model = Classifier(1, 28, 10)
    model.train()
    model.dense.weight.requires_grad_(False)
    grads = observed_gradient(model, x[:2], y[:2])
    assert model.training and not model.dense.weight.requires_grad
    assert all(p.grad is None for p in model.parameters())
    model.eval()
    model.dense.weight.requires_grad_(True)
    model.zero_grad()
    nn.functional.cross_entropy(model(x[:2]), y[:2]).backward()
    assert all(torch.allclose(g, p.grad) for g, p in zip(grads, model.parameters()))


# -- 2. NaN and validation ----------------------------------------------------------------------
def test_attacks_stop_at_nan_and_return_the_best_finite_iterate():
    model = Fragile()
    obs = GradientObservation(model, observed_gradient(model, torch.ones(1, 1, 2, 2), torch.tensor([1])),
                              1, (1, 2, 2), 3)

    def l2(x: torch.Tensor) -> float:
        grads = observed_gradient(model, x, torch.tensor([1]))
        return sum(((g - t) ** 2).sum() for g, t in zip(grads, obs.gradients)).item()

    # measured: DLG at lr 1 runs 18 finite iterations, iDLG and IG at lr 3 one and five
    for attack, lr in ((dlg, 1.0), (idlg, 3.0), (inverting_gradients, 3.0)):
        result = attack(obs, iterations=50, lr=lr, seed=0)
        assert torch.isfinite(result.inputs).all() and result.inputs.abs().max() < 10
        assert 0 < result.iterations < 50 and len(result.loss_history) == result.iterations
        assert all(math.isfinite(v) for v in result.loss_history)
    # iDLG keeps the best iterate it evaluated, the random start included
    result = idlg(obs, iterations=50, lr=3.0, seed=0)
    start = torch.randn((1, 1, 2, 2), generator=torch_generator(0, "attack", 0))
    assert l2(result.inputs) == pytest.approx(min(l2(start), *result.loss_history), rel=1e-5)
    assert torch.isfinite(dlg(obs, iterations=5, lr=1e6).inputs).all()  # NaN at once: the start


def test_arguments_are_validated(mnist, lenet):
    x, y = mnist
    obs = observe(lenet, x[:1], y[:1])
    grads = obs.gradients
    for attack in ATTACKS.values():
        with pytest.raises(RvepflError, match="`iterations`.*got 0"):
            attack(obs, iterations=0)
        with pytest.raises(RvepflError, match="`lr`.*got -1.0"):
            attack(obs, lr=-1.0)
        with pytest.raises(TypeError, match="GradientObservation"):
            attack(grads)
        for bad in (0, -1, 1.5, True):
            with pytest.raises(RvepflError, match=f"`restarts` to be an int >= 1, got {bad!r}"):
                attack(obs, restarts=bad)
    with pytest.raises(RvepflError, match="`tv_weight`.*got -0.1"):
        inverting_gradients(obs, tv_weight=-0.1)
    with pytest.raises(RvepflError, match=r"`labels`.*shape \(1,\)"):
        inverting_gradients(obs, labels=torch.tensor([1, 2]))
    with pytest.raises(RvepflError, match=r"`labels` in \[0, 9\]"):
        inverting_gradients(obs, labels=torch.tensor([10]))
    with pytest.raises(RvepflError, match="one tensor per model parameter \\(8\\), got 7"):
        GradientObservation(lenet, grads[:-1], 1, SHAPE, 10)
    with pytest.raises(RvepflError, match=r"`gradients\[7\]` of shape \(10,\)"):
        GradientObservation(lenet, (*grads[:-1], torch.zeros(11)), 1, SHAPE, 10)
    with pytest.raises(RvepflError, match="`gradients\\[0\\]` to be finite"):
        GradientObservation(lenet, (grads[0] * math.nan, *grads[1:]), 1, SHAPE, 10)
    with pytest.raises(RvepflError, match="`batch_size`.*got 0"):
        GradientObservation(lenet, grads, 0, SHAPE, 10)
    with pytest.raises(RvepflError, match="`input_shape`"):
        GradientObservation(lenet, grads, 1, (28, 28), 10)
    with pytest.raises(RvepflError, match="`bounds`"):
        GradientObservation(lenet, grads, 1, SHAPE, 10, (1.0, 0.0))
    with pytest.raises(RvepflError, match="no nn.Linear layer with 7 outputs"):
        infer_labels(GradientObservation(lenet, grads, 1, SHAPE, 7))
    with pytest.raises(RvepflError, match="`y`"):
        observed_gradient(lenet, x[:2], y[:3])
