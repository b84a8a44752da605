"""Membership inference: metrics on hand-computed cases, the two attacks' scores, reference
models, and the controls (an overfit model leaks membership; a model that saw neither set does not)."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

from rvepfl.attacks.mia import (
    balanced_accuracy,
    lira_offline,
    load_or_train_reference,
    logit_confidence,
    loss_scores,
    membership_metrics,
    model_logits,
    reference_digest,
    roc_auc,
    roc_curve,
    tpr_at_fpr,
    train_reference,
)
from rvepfl.attacks.runner import AttackSettings
from rvepfl.data.datasets import load_dataset, to_tensor


# -- metrics ---------------------------------------------------------------------------------
def test_roc_curve_has_one_point_per_distinct_score():
    fpr, tpr, thresholds = roc_curve([0.9, 0.8, 0.7, 0.6, 0.55, 0.5], [1, 1, 0, 1, 0, 0])
    assert fpr.tolist() == [0, 0, 0, 1 / 3, 1 / 3, 2 / 3, 1]
    assert tpr.tolist() == [0, 1 / 3, 2 / 3, 2 / 3, 1, 1, 1]
    assert thresholds.tolist() == [math.inf, 0.9, 0.8, 0.7, 0.6, 0.55, 0.5]


def test_auc_by_hand_and_ties_count_half():
    # 3 members x 3 non-members = 9 pairs; the member at 0.6 loses to the non-member at 0.7: 8/9.
    assert roc_auc([0.9, 0.8, 0.7, 0.6, 0.55, 0.5], [1, 1, 0, 1, 0, 0]) == pytest.approx(8 / 9)
    assert roc_auc([1, 1, 1, 1], [1, 0, 1, 0]) == 0.5  # every pair tied
    assert roc_auc([2, 1, 1, 0], [1, 1, 0, 0]) == pytest.approx(0.875)  # 3 wins and a tie of 4 pairs
    assert roc_auc([0, 1], [1, 0]) == 0.0
    assert roc_auc(torch.tensor([0.2, 0.1]), torch.tensor([True, False])) == 1.0


def test_auc_is_the_mann_whitney_statistic():
    rng = np.random.default_rng(0)
    scores = rng.integers(0, 6, size=60).astype(float)  # many ties
    members = rng.integers(0, 2, size=60)
    pos, neg = scores[members == 1], scores[members == 0]
    pairs = (pos[:, None] > neg[None, :]).sum() + 0.5 * (pos[:, None] == neg[None, :]).sum()
    assert roc_auc(scores, members) == pytest.approx(pairs / (len(pos) * len(neg)))


def test_tpr_at_fpr_takes_the_best_threshold_within_the_budget():
    scores, members = [0.9, 0.8, 0.7, 0.6, 0.55, 0.5], [1, 1, 0, 1, 0, 0]
    assert tpr_at_fpr(scores, members, 0.0) == pytest.approx(2 / 3)
    assert tpr_at_fpr(scores, members, 0.3) == pytest.approx(2 / 3)  # below 1/3: still no false positive
    assert tpr_at_fpr(scores, members, 1 / 3) == 1.0
    assert tpr_at_fpr(scores, members, 1.0) == 1.0
    # 100 non-members: 1 % FPR allows exactly one false positive; 0.1 % allows none.
    s = np.r_[np.arange(100.0), 50.5, 200.0]  # members at 50.5 and 200; the top non-member is 99
    m = np.r_[np.zeros(100), 1, 1]
    assert tpr_at_fpr(s, m, 0.001) == 0.5
    assert tpr_at_fpr(s, m, 0.01) == 0.5
    assert tpr_at_fpr(s, m, 0.48) == 0.5 and tpr_at_fpr(s, m, 0.49) == 1.0  # 49 non-members above 50.5
    with pytest.raises(ValueError, match="fpr"):
        tpr_at_fpr(s, m, 1.5)


def test_balanced_accuracy_is_the_best_thresholds():
    assert balanced_accuracy([0.9, 0.8, 0.7, 0.6, 0.55, 0.5], [1, 1, 0, 1, 0, 0]) == pytest.approx(
        (1 + 2 / 3) / 2)  # threshold 0.6: all members, 2 of 3 non-members rejected
    assert balanced_accuracy([0, 1], [1, 0]) == 0.5  # the threshold that calls nobody a member


def test_membership_metrics_keys_and_bad_input():
    m = membership_metrics([3, 2, 1, 0], [1, 0, 1, 0])
    assert m == {"auc": 0.75, "tpr_at_0.1pct_fpr": 0.5, "tpr_at_1pct_fpr": 0.5, "balanced_accuracy": 0.75,
                 "n_members": 2, "n_nonmembers": 2}
    with pytest.raises(ValueError, match="both members and non-members"):
        roc_auc([1, 2], [1, 1])
    with pytest.raises(ValueError, match="NaN"):
        roc_auc([1, float("nan")], [1, 0])
    with pytest.raises(ValueError, match="equal length"):
        roc_auc([1, 2, 3], [1, 0])
    with pytest.raises(ValueError, match="0 .non-member. and 1"):
        roc_auc([1, 2], [2, 0])


# -- scores ----------------------------------------------------------------------------------
def test_loss_and_logit_confidence():
    logits = torch.tensor([[2.0, 0.5, -1.0], [0.0, 3.0, 1.0]])
    labels = torch.tensor([0, 2])
    p = torch.softmax(logits.double(), 1)[[0, 1], labels]
    torch.testing.assert_close(loss_scores(logits, labels), p.log())
    torch.testing.assert_close(logit_confidence(logits, labels), (p / (1 - p)).log())
    # A confident, right prediction: p_y rounds to 1 in float32, phi stays finite and exact.
    assert logit_confidence(torch.tensor([[100.0, 0.0]]), torch.tensor([0])).item() == 100.0
    assert logit_confidence(torch.tensor([[0.0, 100.0]]), torch.tensor([0])).item() == -100.0


def test_lira_offline_global_and_per_image_variance():
    refs = np.array([[0.0, 10.0], [2.0, 10.0], [1.0, 10.0]])  # image 0 varies (var 1), image 1 does not
    out = lira_offline([1.0, 11.0], refs)
    assert out.mean.tolist() == [1.0, 10.0]
    assert out.std.tolist() == pytest.approx([math.sqrt(0.5)] * 2)  # the mean of the variances 1 and 0
    assert out.scores[0] == pytest.approx(math.log(2))  # at the mean: p-value 1/2
    per = lira_offline([1.0, 11.0], refs, variance="per-image")
    assert per.std[0] == 1.0 and per.std[1] == 1e-6  # the floor
    assert per.scores[1] > 1e3 and np.isfinite(per.scores).all()  # far above: large, not infinite
    with pytest.raises(ValueError, match="at least 2 reference models"):
        lira_offline([1.0], [[1.0]])
    with pytest.raises(ValueError, match="Unknown `variance`"):
        lira_offline([1.0], [[1.0], [2.0]], variance="pooled")
    with pytest.raises(ValueError, match=r"\(K, N\)"):
        lira_offline([1.0, 2.0], [[1.0], [2.0]])


# -- reference models ------------------------------------------------------------------------
def mlp() -> nn.Module:
    return nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 32), nn.ReLU(), nn.Linear(32, 10))


@pytest.fixture(scope="module")
def digits() -> tuple[torch.Tensor, torch.Tensor]:
    """1,400 bundled MNIST training digits, normalised as the clients' are."""
    d = load_dataset("mnist")
    return to_tensor(d.train_x[:1400], "mnist"), torch.from_numpy(d.train_y[:1400]).long()


def test_train_reference_is_seeded_and_leaves_the_global_generator_alone(digits):
    x, y = digits[0][:40], digits[1][:40]
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    a = train_reference(mlp, x, y, epochs=2, lr=1e-2, batch_size=16, seed=5)
    assert torch.equal(torch.random.get_rng_state(), before)
    b = train_reference(mlp, x, y, epochs=2, lr=1e-2, batch_size=16, seed=5)
    c = train_reference(mlp, x, y, epochs=2, lr=1e-2, batch_size=16, seed=6)
    assert not a.training
    assert all(torch.equal(a.state_dict()[k], b.state_dict()[k]) for k in a.state_dict())
    assert not torch.equal(a.state_dict()["1.weight"], c.state_dict()["1.weight"])


def test_reference_models_are_cached_by_what_determines_them(digits, tmp_path):
    x, y = digits[0][:20], digits[1][:20]
    kw = {"dataset": "mnist", "epochs": 1, "lr": 1e-2, "batch_size": 8, "seed": 1, "cache": tmp_path}
    first, path, cached = load_or_train_reference(mlp, x, y, **kw)
    assert not cached and path.parent == tmp_path and path.name.startswith("mia-reference-mnist-")
    again, path2, cached2 = load_or_train_reference(mlp, x, y, **kw)
    assert cached2 and path2 == path
    assert all(torch.equal(first.state_dict()[k], again.state_dict()[k]) for k in first.state_dict())
    base = reference_digest(mlp(), x, y, dataset="mnist", epochs=1, lr=1e-2, batch_size=8, seed=1)
    assert path.name == f"mia-reference-mnist-{base}.safetensors"
    assert base != reference_digest(mlp(), x, y, dataset="mnist", epochs=2, lr=1e-2, batch_size=8, seed=1)
    assert base != reference_digest(mlp(), x, y, dataset="mnist", epochs=1, lr=1e-2, batch_size=8, seed=2)
    assert base != reference_digest(mlp(), x.flip(0), y.flip(0), dataset="mnist", epochs=1, lr=1e-2,
                                    batch_size=8, seed=1)
    wider = nn.Sequential(nn.Flatten(), nn.Linear(28 * 28, 33), nn.ReLU(), nn.Linear(33, 10))
    assert base != reference_digest(wider, x, y, dataset="mnist", epochs=1, lr=1e-2, batch_size=8, seed=1)


# -- controls --------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def references(digits) -> list[nn.Module]:
    """Four reference models, each on its own 50 digits from 400..1399 (never 0..399)."""
    x, y = digits
    rng = np.random.default_rng(0)
    out = []
    for k in range(4):
        pick = torch.from_numpy(400 + rng.choice(1000, size=50, replace=False))
        out.append(train_reference(mlp, x[pick], y[pick], epochs=40, lr=1e-2, batch_size=16, seed=10 + k))
    return out


def attack(model: nn.Module, references: list[nn.Module], x: torch.Tensor, y: torch.Tensor,
           member: torch.Tensor) -> dict[str, dict[str, float | int]]:
    logits = model_logits(model, x, seed=0)
    phi_refs = np.stack([logit_confidence(model_logits(r, x, seed=0), y).numpy() for r in references])
    lira = lira_offline(logit_confidence(logits, y).numpy(), phi_refs)
    return {"loss": membership_metrics(loss_scores(logits, y), member),
            "lira": membership_metrics(lira.scores, member)}


def test_positive_control_an_overfit_model_leaks_membership(digits, references):
    """Trained 40 epochs on 50 digits (0..49), the model fits them far better than 50 it never
    saw (200..249): both attacks tell them apart."""
    x, y = digits
    target = train_reference(mlp, x[:50], y[:50], epochs=40, lr=1e-2, batch_size=16, seed=0)
    idx = torch.cat([torch.arange(50), torch.arange(200, 250)])
    member = torch.arange(100) < 50
    m = attack(target, references, x[idx], y[idx], member)
    assert m["loss"]["auc"] > 0.75 and m["lira"]["auc"] > 0.75, m
    assert m["loss"]["balanced_accuracy"] > 0.7 and m["lira"]["balanced_accuracy"] > 0.7, m


def test_negative_control_a_model_that_saw_neither_set_is_at_chance(digits, references):
    """A model trained on other digits (1,000..1,049, never 0..399): 'members' 0..199 and
    'non-members' 200..399 look the same to it."""
    x, y = digits
    target = train_reference(mlp, x[1000:1050], y[1000:1050], epochs=40, lr=1e-2, batch_size=16, seed=0)
    member = torch.arange(400) < 200
    m = attack(target, references, x[:400], y[:400], member)
    assert abs(m["loss"]["auc"] - 0.5) < 0.1 and abs(m["lira"]["auc"] - 0.5) < 0.1, m


# -- settings --------------------------------------------------------------------------------
def test_the_digests_of_the_attacks_before_mia_are_unchanged():
    """Computed before mia's `references` field existed: complete attacks are still recognised."""
    assert AttackSettings("dlg", "gradient", 2, 0, 1, 4, 300, 0).digest() == "b4506b7184103ccf"
    assert AttackSettings("miface", "released", 5, 0, 1, 10, 1000, 0, 1, 0, 3000).digest() == "50f4f8cae663a550"
    assert AttackSettings("ig", "update", 5, 1, 2, 8, 500, 3, 2, 2, 5000).digest() == "f25696eaef5c9c10"
    mia = AttackSettings("mia", "released", 5, 0, 1, 540, 0, 0, evaluator_images=0, references=4)
    assert mia.digest() != AttackSettings("mia", "released", 5, 0, 1, 540, 0, 0, evaluator_images=0,
                                          references=8).digest()
