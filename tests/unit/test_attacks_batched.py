"""Inverting Gradients on many observations as one optimisation: the same reconstructions and
scores as one observation at a time, through the algorithm, the matcher and ``UploadAttack``.

Tolerances (measured on this repository's bundled MNIST digits, one CPU thread, torch 2.13): the
batched kernels sum in another order than the unbatched ones, so the two agree to float
rounding, not bit for bit. In the tests below the reconstructions differ by at most 1.4e-6 in
[0, 1] pixels (the Classifier, 12 iterations; 0 with sign steps), the losses by 2.4e-7, the
PSNRs by 0 dB and the SSIMs by 1e-8; the tests allow 1e-5 in pixels, 1e-6 in losses, 1e-3 dB and
1e-5 in SSIM. (Over longer runs the rounding grows slowly: 4e-6 in pixels after 30 iterations
on the Classifier, 3e-5 after 100 on the sigmoid LeNet.)
"""

from __future__ import annotations

import json
import math
from types import SimpleNamespace

import pytest
import torch
from torch import nn

from rvepfl.attacks.base import AttackSettings
from rvepfl.attacks.inverting import InvertingGradients, inverting_gradients, inverting_gradients_batched
from rvepfl.attacks.lenet import SigmoidLeNet
from rvepfl.attacks.observation import (
    BatchedMatcher,
    GradientMatcher,
    GradientObservation,
    batched_support,
    observed_gradient,
)
from rvepfl.attacks.scores import image_scores, to_pixels
from rvepfl.attacks.threat import GroundTruth
from rvepfl.errors import RvepflError
from rvepfl.io import read_csv_rows
from tests.helpers.gradient_attacks import Fragile, observe, pixels

pytestmark = pytest.mark.usefixtures("one_thread")  # tests/unit/conftest.py: one torch thread

PIXEL_ATOL = 1e-5  # measured: at most 1.4e-6
LOSS_ATOL = 1e-6  # measured: at most 2.4e-7


def _observations(model: nn.Module, x: torch.Tensor, y: torch.Tensor, count: int, batch: int) -> list:
    return [observe(model, x[i * batch:(i + 1) * batch], y[i * batch:(i + 1) * batch]) for i in range(count)]


def _assert_same(one: list, many: list, truth: list[torch.Tensor]) -> None:
    """Batched results equal the one-at-a-time ones to float rounding: the kept restart, the
    labels, the iterations, the losses, the pixels and the evaluator-free scores."""
    assert len(one) == len(many)
    for a, b, t in zip(one, many, truth):
        assert b.labels.tolist() == a.labels.tolist() and b.iterations == a.iterations
        assert len(b.restart_losses) == len(a.restart_losses)
        assert min(range(len(a.restart_losses)), key=a.restart_losses.__getitem__) == \
            min(range(len(b.restart_losses)), key=b.restart_losses.__getitem__)  # the same kept restart
        assert b.restart_losses == pytest.approx(a.restart_losses, abs=LOSS_ATOL)
        assert b.loss_history == pytest.approx(a.loss_history, abs=LOSS_ATOL)
        pa, pb = pixels(a.inputs), pixels(b.inputs)
        assert torch.allclose(pa, pb, rtol=0, atol=PIXEL_ATOL), (pa - pb).abs().max()
        sa, sb = image_scores(pa, pixels(t)), image_scores(pb, pixels(t))
        assert torch.allclose(sa["psnr"], sb["psnr"], rtol=0, atol=1e-3)
        assert torch.allclose(sa["ssim"], sb["ssim"], rtol=0, atol=1e-5)


# -- 1. the algorithm: batched equals one at a time ---------------------------------------------
def test_batched_inverting_gradients_equals_one_at_a_time_on_the_classifier(mnist, classifier):
    x, y = mnist
    obs = _observations(classifier, x, y, 4, 1)
    seeds = [11, 12, 13, 14]
    one = [inverting_gradients(o, iterations=12, restarts=2, seed=s) for o, s in zip(obs, seeds)]
    seen = []
    many = inverting_gradients_batched(obs, iterations=12, restarts=2, seeds=seeds,
                                       progress=lambda done, total: seen.append((done, total)))
    _assert_same(one, many, [x[i:i + 1] for i in range(4)])
    assert seen[0] == (8, 96) and seen[-1] == (96, 96) and len(seen) == 12  # 4 observations x 2 restarts
    assert all(torch.isfinite(r.inputs).all() for r in many)


def test_batched_inverting_gradients_equals_one_at_a_time_with_batches_and_sign_steps(mnist, lenet):
    x, y = mnist
    obs = _observations(lenet, x, y, 4, 2)  # batches of 2: the labels inferred per observation
    one = [inverting_gradients(o, iterations=15, restarts=2, seed=s, signed=True, tv_weight=1e-2)
           for s, o in enumerate(obs)]
    many = inverting_gradients_batched(obs, iterations=15, restarts=2, seeds=list(range(4)), signed=True,
                                       tv_weight=1e-2)
    _assert_same(one, many, [x[2 * i:2 * i + 2] for i in range(4)])


def test_the_default_seeds_are_zero_and_one_observation_is_a_batch_of_one(mnist, lenet):
    x, y = mnist
    obs = observe(lenet, x[:1], y[:1])
    (batched,) = inverting_gradients_batched([obs], iterations=10)
    _assert_same([inverting_gradients(obs, iterations=10, seed=0)], [batched], [x[:1]])


def test_each_observation_diverges_alone_as_it_does_one_at_a_time():
    # Measured at lr 3: the six observations stop after 50, 5, 6, 4, 4 and 4 finite iterations,
    # batched or not; the others go on while one has stopped.
    model = Fragile()
    g = torch.Generator().manual_seed(1)
    obs = [GradientObservation(model, observed_gradient(model, torch.randn(1, 1, 2, 2, generator=g),
                                                        torch.tensor([i % 3])), 1, (1, 2, 2), 3)
           for i in range(6)]
    one = [inverting_gradients(o, iterations=50, lr=3.0, restarts=2, seed=s) for s, o in enumerate(obs)]
    many = inverting_gradients_batched(obs, iterations=50, lr=3.0, restarts=2, seeds=list(range(6)))
    assert [r.iterations for r in many] == [r.iterations for r in one]
    assert len({r.iterations for r in many}) > 1 and max(r.iterations for r in many) == 50
    for a, b in zip(one, many):
        assert torch.isfinite(b.inputs).all() and b.inputs.abs().max() < 10
        assert len(b.loss_history) == b.iterations and all(math.isfinite(v) for v in b.loss_history)
        # a tiny, ill-conditioned problem: rounding grows faster than on images
        assert b.restart_losses == pytest.approx(a.restart_losses, abs=1e-3)


# -- 2. the matcher -------------------------------------------------------------------------------
class _Varied(nn.Module):
    """Every kind of layer the matcher handles: strided, dilated and 'same' convolutions, a
    bias-free one, a layer's output changed in place, a linear layer on a sequence (extra dims)
    and one without a bias."""

    def __init__(self) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(2, 4, 3, stride=2, padding=1)
        self.conv2 = nn.Conv2d(4, 4, 3, padding="same", dilation=2, bias=False)
        self.conv3 = nn.Conv2d(4, 3, (1, 3), padding="valid")
        self.seq = nn.Linear(2, 5)  # on (N, 3 x 4, 2): 12 positions per image
        self.out = nn.Linear(60, 6, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.tanh(self.conv1(x))
        h = torch.relu(self.conv2(h).add_(h))  # a layer's output changed in place
        h = torch.sigmoid(self.conv3(h))  # (N, 3, 4, 2)
        h = torch.tanh(self.seq(h.reshape(len(h), 12, 2)))
        return self.out(h.flatten(1))


@pytest.mark.parametrize("batch", [1, 3])
def test_the_batched_matcher_gives_each_row_its_own_distance_and_input_gradient(batch):
    torch.manual_seed(0)
    model = _Varied().eval()
    g = torch.Generator().manual_seed(0)
    obs = [GradientObservation(model, observed_gradient(model, torch.randn(batch, 2, 8, 8, generator=g),
                                                        torch.randint(6, (batch,), generator=g)), batch, (2, 8, 8), 6)
           for _ in range(3)]
    matcher = BatchedMatcher(obs, restarts=2)
    assert batched_support(model) is None and matcher.check() is None and matcher.rows == 6
    x = torch.randn(6, batch, 2, 8, 8, generator=g, requires_grad=True)
    labels = torch.randint(6, (6, batch), generator=g)
    cos = matcher.cosine(x, labels, create_graph=True)
    (grad,) = torch.autograd.grad(cos.sum(), [x])
    for row in range(6):
        single = GradientMatcher(obs[row // 2])
        xr = x[row].detach().clone().requires_grad_(True)
        ref = single.cosine(single.gradient(xr, labels[row], create_graph=True))
        (ref_grad,) = torch.autograd.grad(ref, [xr])
        assert float(cos[row].detach()) == pytest.approx(float(ref.detach()), abs=1e-6)
        assert torch.allclose(grad[row], ref_grad, rtol=1e-4, atol=1e-6 * float(ref_grad.abs().max()))


class _Twice(nn.Module):
    """A linear layer run twice in one forward pass: its gradient is the sum of two terms."""

    input_shape = (1, 2, 2)

    def __init__(self) -> None:
        super().__init__()
        self.fc = nn.Linear(4, 4)
        self.out = nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.tanh(self.fc(torch.tanh(self.fc(x.flatten(1))))))


class _Normalised(nn.Module):
    """A batch-norm layer (eval mode) with its own weight and bias."""

    input_shape = (1, 4, 4)

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 2, 3)
        self.norm = nn.BatchNorm2d(2)
        self.out = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(torch.relu(self.norm(self.conv(x))).flatten(1))


@pytest.mark.parametrize(("model", "reason"), [
    (_Normalised, "parameter `norm.weight` is not the weight or bias of an nn.Linear or nn.Conv2d"),
    (_Twice, "layer `fc` runs more than once in a forward pass"),
])
def test_a_model_the_matcher_cannot_take_is_attacked_one_at_a_time(model, reason):
    torch.manual_seed(0)
    net = model().eval()
    g = torch.Generator().manual_seed(0)
    obs = [GradientObservation(net, observed_gradient(net, torch.randn(1, *net.input_shape, generator=g),
                                                      torch.tensor([i])), 1, net.input_shape, 3)
           for i in range(3)]
    assert BatchedMatcher(obs, 2).check() == reason
    with pytest.warns(UserWarning, match=f"attacks these 3 observations one at a time: {reason}"):
        many = inverting_gradients_batched(obs, iterations=5, restarts=2, seeds=[3, 4, 5])
    one = [inverting_gradients(o, iterations=5, restarts=2, seed=s) for o, s in zip(obs, [3, 4, 5])]
    for a, b in zip(one, many):  # exactly the same: it is the same code
        assert torch.equal(a.inputs, b.inputs) and a.restart_losses == b.restart_losses


def test_batched_arguments_are_validated(mnist, lenet, classifier):
    x, y = mnist
    obs = _observations(lenet, x, y, 2, 1)
    with pytest.raises(RvepflError, match="at least one observation"):
        inverting_gradients_batched([])
    with pytest.raises(RvepflError, match=r"`seeds` to be 2 ints.*got \[1\]"):
        inverting_gradients_batched(obs, seeds=[1])
    with pytest.raises(RvepflError, match="`labels` to hold 2 tensors"):
        inverting_gradients_batched(obs, labels=[torch.tensor([1])])
    with pytest.raises(RvepflError, match="one model, got observation 1 of another"):
        inverting_gradients_batched([obs[0], observe(SigmoidLeNet(1, 28, 10, seed=1), x[1:2], y[1:2])])
    with pytest.raises(RvepflError, match="observation 0's `bounds`"):
        inverting_gradients_batched([obs[0], observe(lenet, x[1:2], y[1:2], bounds=None)])
    with pytest.raises(RvepflError, match=r"\(batch size, input shape, classes\)"):
        inverting_gradients_batched([obs[0], observe(lenet, x[1:3], y[1:3])])
    with pytest.raises(RvepflError, match="`iterations`.*got 0"):
        inverting_gradients_batched(obs, iterations=0)
    with pytest.raises(TypeError, match="GradientObservation"):
        inverting_gradients_batched([obs[0].gradients])
    # a copy of the model with the same weights is the same model
    copy = SigmoidLeNet(1, 28, 10, seed=0)
    assert len(inverting_gradients_batched([obs[0], observe(copy, x[1:2], y[1:2])], iterations=2)) == 2


# -- 3. through UploadAttack ----------------------------------------------------------------------
class _Victim:
    """What ``UploadAttack.run`` reads of a Target: a client whose training images are the
    bundled digits, and the gradient the server sees of a fixed model on them."""

    dataset = "mnist"

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, path) -> None:
        self.model, self.x, self.y = model, x, y
        self.run = SimpleNamespace(path=path)
        self.method = SimpleNamespace(name="fedavg")

    def client_batch(self, client: int, size: int, draw: int, seed: int):
        idx = [(draw * size + i) % len(self.y) for i in range(size)]
        x = self.x[idx]
        return x, GroundTruth(to_pixels(x.clone(), "mnist"), self.y[idx], tuple(idx))

    def observe_gradient(self, round_: int, client: int, x: torch.Tensor, y: torch.Tensor, seed: int, draw: int):
        return observe(self.model, x, y)


class _OneAtATime(InvertingGradients):
    batched_algorithm = None


def _attack(attack: InvertingGradients, victim: _Victim, out, images: int, restarts: int = 2) -> list[str]:
    settings = AttackSettings("ig", "gradient", 1, 0, batch_size=1, images=images, iterations=12, seed=0,
                              restarts=restarts, evaluator_images=300)
    lines: list[str] = []
    attack.run(victim, settings, out, lines.append)
    return lines


@pytest.fixture()
def no_evaluator(monkeypatch):
    monkeypatch.setattr(InvertingGradients, "evaluator_unless_done", lambda self, *args: (None, None, ""))


def _scores(out) -> tuple[list[str], list[list[str]]]:
    return read_csv_rows(out / "scores.csv")


def test_upload_attack_scores_batched_as_one_at_a_time(mnist, lenet, tmp_path, no_evaluator):
    x, y = mnist
    victim = _Victim(lenet, x[:8], y[:8], tmp_path)
    lines = _attack(InvertingGradients(), victim, tmp_path / "batched", images=5)
    assert any(line.startswith("ig: observations 1-5/5 (batch 1): PSNR") for line in lines)
    lines = _attack(_OneAtATime(), victim, tmp_path / "single", images=5)
    heads = [line.split(":")[1] for line in lines if "PSNR" in line]
    assert heads == [f" observation {i}/5 (batch 1)" for i in range(1, 6)]  # one at a time, as before
    header, batched = _scores(tmp_path / "batched")
    _, single = _scores(tmp_path / "single")
    assert len(batched) == len(single) == 5
    col = {k: i for i, k in enumerate(header)}
    for b, s in zip(batched, single):
        for k in ("image", "draw", "round", "client", "label", "attack_label", "evaluator_label", "evaluator_correct"):
            assert b[col[k]] == s[col[k]]
        assert float(b[col["psnr"]]) == pytest.approx(float(s[col["psnr"]]), abs=1e-3)
        assert float(b[col["ssim"]]) == pytest.approx(float(s[col["ssim"]]), abs=1e-5)
        assert float(b[col["mse"]]) == pytest.approx(float(s[col["mse"]]), rel=1e-3)
    summary = json.loads((tmp_path / "batched" / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["rows"] == 5


def test_an_interrupted_batched_attack_resumes_after_its_last_chunk(mnist, lenet, tmp_path, no_evaluator,
                                                                   monkeypatch):
    # Chunks of 2 observations: 0-1, 2-3, 4. Stopped in the second, the attack resumes at 2, and
    # its chunks are the uninterrupted attack's: the same scores, digit for digit.
    x, y = mnist
    victim = _Victim(lenet, x[:8], y[:8], tmp_path)
    monkeypatch.setattr(InvertingGradients, "chunk_observations", 2)
    calls = []
    real = InvertingGradients.batched_algorithm

    def flaky(observations, **kwargs):
        calls.append(len(observations))
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(observations, **kwargs)

    monkeypatch.setattr(InvertingGradients, "batched_algorithm", staticmethod(flaky))
    with pytest.raises(KeyboardInterrupt):
        _attack(InvertingGradients(), victim, tmp_path / "resumed", images=5, restarts=1)
    summary = json.loads((tmp_path / "resumed" / "summary.json").read_text())
    assert summary["status"] == "running" and summary["draws_done"] == 2 and summary["rows"] == 2
    lines = _attack(InvertingGradients(), victim, tmp_path / "resumed", images=5, restarts=1)
    assert lines[0] == "resuming after 2/5 observations"
    assert calls == [2, 2, 2, 1]  # the chunks after the resume: observations 2-3, then 4
    monkeypatch.setattr(InvertingGradients, "batched_algorithm", staticmethod(real))
    _attack(InvertingGradients(), victim, tmp_path / "fresh", images=5, restarts=1)
    header, resumed = _scores(tmp_path / "resumed")
    _, fresh = _scores(tmp_path / "fresh")
    keep = [header.index(k) for k in ("image", "draw", "label", "mse", "psnr", "ssim")]
    assert [[r[i] for i in keep] for r in resumed] == [[r[i] for i in keep] for r in fresh]


def test_dlg_and_idlg_have_no_batched_form():
    from rvepfl.attacks.dlg import Dlg, IDlg

    settings = AttackSettings("dlg", "gradient", 1, 0, batch_size=1, images=20, iterations=3, seed=0)
    assert Dlg.batched_algorithm is None and IDlg.batched_algorithm is None
    assert Dlg().chunk_size(settings) == 1 and InvertingGradients().chunk_size(settings) == 16
    assert InvertingGradients.batched_algorithm is inverting_gradients_batched
