"""MI-Face: the positive control on a trained classifier, equivalence with a one-class-at-a-time
reference of IBM ART's loop, the stopping rules, determinism, and that the model is untouched."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from rvepfl.attacks.evaluator import train_evaluator
from rvepfl.attacks.miface import MiFaceResult, mi_face
from rvepfl.attacks.scores import to_pixels
from rvepfl.data.datasets import NORMALISATION, load_dataset, to_tensor
from rvepfl.models import Classifier, PersonalModel
from rvepfl.seeding import seed_torch, torch_generator

MEAN, STD = NORMALISATION["mnist"][0][0], NORMALISATION["mnist"][1][0]
PIXEL_BOUNDS = ((0.0 - MEAN) / STD, (1.0 - MEAN) / STD)


@pytest.fixture(autouse=True, scope="module")
def _one_thread():
    """One intra-op thread: on a shared 2-core machine more threads oversubscribe and stall."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _built(seed: int, build):
    """Build a module with seeded weights, leaving torch's global generator as it was."""
    with torch.random.fork_rng(devices=[]):
        seed_torch(seed, "init")
        return build()


# -- the positive control ------------------------------------------------------------------------
@pytest.fixture(scope="module")
def mnist_victim_and_evaluator():
    """An undefended Classifier trained briefly on 2,000 bundled MNIST training images (about 89 %
    test accuracy), and an evaluator trained on the bundled test split, which the victim never saw."""
    data = load_dataset("mnist")
    x, y = to_tensor(data.train_x[:2000], "mnist"), torch.from_numpy(data.train_y[:2000])
    victim = _built(0, lambda: Classifier(1, 28, 10))
    victim.eval()  # no dropout: training draws nothing from the global generator
    optimiser = torch.optim.Adam(victim.parameters(), lr=1e-3)
    order = torch.randperm(len(y), generator=torch_generator(0, "sampling"))
    for i in range(0, len(y), 64):
        idx = order[i: i + 64]
        loss = F.cross_entropy(victim(x[idx]), y[idx])
        optimiser.zero_grad()
        loss.backward()
        optimiser.step()
    victim.zero_grad(set_to_none=True)
    test_x = torch.from_numpy(data.test_x).permute(0, 3, 1, 2).float() / 255.0
    evaluator = train_evaluator(test_x, torch.from_numpy(data.test_y), num_classes=10, seed=0)
    return victim, evaluator


def test_positive_control_undefended_classifier_is_inverted(mnist_victim_and_evaluator):
    victim, evaluator = mnist_victim_and_evaluator
    assert evaluator.accuracy >= 0.93  # measured 0.965 on its 286 held-out images
    result = mi_face(victim, 10, (1, 28, 28), max_iter=100, learning_rate=1.0, bounds=PIXEL_BOUNDS)
    assert result.images.shape == (10, 1, 28, 28) and result.classes.tolist() == list(range(10))
    assert bool((result.confidences >= 0.9).all())  # measured 0.93 - 0.98
    labels = evaluator.predict(to_pixels(result.images, "mnist"))
    correct = int((labels == result.classes).sum())
    # Measured: 9 of 10 (class 6 is labelled 5); a model that leaked nothing would give ~1.
    assert correct >= 6, f"evaluator labels {labels.tolist()}"


def test_deterministic_on_a_trained_classifier(mnist_victim_and_evaluator):
    victim, _ = mnist_victim_and_evaluator
    a = mi_face(victim, 10, (1, 28, 28), max_iter=15, learning_rate=1.0, bounds=PIXEL_BOUNDS)
    b = mi_face(victim, 10, (1, 28, 28), max_iter=15, learning_rate=1.0, bounds=PIXEL_BOUNDS)
    assert torch.equal(a.images, b.images) and torch.equal(a.confidences, b.confidences)
    assert torch.equal(a.iterations, b.iterations)


# -- equivalence with ART's loop, one class at a time --------------------------------------------
def _reference(model, target, x0, *, max_iter, window_length, threshold, learning_rate, bounds, stopping):
    """IBM ART's MIFace loop for one class (batch_size=1), on a model returning logits."""
    x, window, i = x0.clone(), [math.inf] * window_length, 0
    p = None
    while i < max_iter:
        xg = x.clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(torch.softmax(model(xg[None]), 1)[0, target], xg)
        x = x + learning_rate * grad
        if bounds is not None:
            x = x.clamp(*bounds)
        with torch.no_grad():
            p = torch.softmax(model(x[None]), 1)[0, target].item()
        cost = 1.0 - p
        stuck = cost >= max(window)
        stop = (stuck or p >= threshold) if stopping == "paper" else not (cost <= threshold or stuck)
        window[i % window_length] = cost
        i += 1
        if stop:
            break
    return x, i


def _linear_model() -> nn.Module:
    """float64 logits = W x + b over 4 inputs, with one strong, one weak and one middling class."""
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3)).double()
    with torch.no_grad():
        model[1].weight.copy_(torch.tensor([[3.0, 2.0, -1.0, 0.5], [0.3, -0.2, 0.1, 0.2], [-1.0, 1.0, 1.0, -1.0]]))
        model[1].bias.copy_(torch.tensor([0.0, 0.5, 0.2]))
    return model.eval()


# Steps taken by classes 0, 1, 2: paper 0.95: 4, 120, 9; paper 0.999: 120, 120, 58 (stuck);
# art 0.99: 120 each; art 0.45: 120, 1, 1 (ART stops a class whose cost after one step is > 0.45).
@pytest.mark.parametrize("stopping, threshold", [("paper", 0.95), ("paper", 0.999), ("art", 0.99), ("art", 0.45)])
def test_batched_classes_match_art_loop_one_class_at_a_time(stopping, threshold):
    model = _linear_model()
    settings = dict(max_iter=120, window_length=5, threshold=threshold, learning_rate=0.5, bounds=(-1.0, 1.0))
    result = mi_face(model, 3, (1, 2, 2), stopping=stopping, **settings)
    for k in range(3):
        x, steps = _reference(model, k, torch.zeros(1, 2, 2, dtype=torch.float64), stopping=stopping, **settings)
        assert int(result.iterations[k]) == steps
        torch.testing.assert_close(result.images[k], x, rtol=0, atol=1e-12)
    with torch.no_grad():
        p = torch.softmax(model(result.images), 1)[torch.arange(3), result.classes]
    torch.testing.assert_close(result.confidences, p)


def test_classes_stop_at_different_steps_in_one_batch():
    # Classes 0 and 2 reach 95 % confidence (after 4 and 9 steps); class 1 cannot inside the
    # bounds and runs on to max_iter while its cost keeps falling.
    result = mi_face(_linear_model(), 3, (1, 2, 2), max_iter=120, window_length=5, threshold=0.95,
                     learning_rate=0.5, bounds=(-1.0, 1.0))
    steps = result.iterations.tolist()
    assert steps[0] < steps[2] < steps[1] == 120, steps
    assert result.confidences[0] >= 0.95 and result.confidences[2] >= 0.95 and result.confidences[1] < 0.95


def test_matches_ibm_art_when_installed():
    """ART's own MIFace (skipped without ART): one class at a time, ours is bit-identical."""
    np = pytest.importorskip("numpy")
    pytest.importorskip("art")
    from art.attacks.inference.model_inversion import MIFace
    from art.estimators.classification import PyTorchClassifier

    model = _built(3, lambda: Classifier(1, 8, 3)).eval()
    init = torch.rand(3, 1, 8, 8, generator=torch_generator(3, "attack")) - 0.5
    # threshold 0.665: ART runs class 0 (cost 0.661 after one step) to max_iter and stops the
    # others (costs 0.665, 0.669) after one step; our steps are [40, 1, 1] too.
    settings = dict(max_iter=40, window_length=10, threshold=0.665, learning_rate=1.0)
    classifier = PyTorchClassifier(nn.Sequential(model, nn.Softmax(dim=1)), loss=nn.CrossEntropyLoss(),
                                   input_shape=(1, 8, 8), nb_classes=3, clip_values=(-1.0, 1.0))
    expected = torch.from_numpy(MIFace(classifier, verbose=False, **settings).infer(init.numpy(), y=np.arange(3)))
    model.zero_grad(set_to_none=True)  # ART's gradient call fills the parameters' .grad
    batched = mi_face(model, 3, (1, 8, 8), init=init, bounds=(-1.0, 1.0), stopping="art", **settings)
    for k in range(3):
        alone = mi_face(model, 3, (1, 8, 8), classes=[k], init=init[k], bounds=(-1.0, 1.0), stopping="art",
                        **settings)
        assert torch.equal(alone.images[0], expected[k])
    assert batched.iterations.tolist() == [40, 1, 1]
    torch.testing.assert_close(batched.images, expected, rtol=0, atol=1e-4)  # batched float rounding only


# -- restarts ------------------------------------------------------------------------------------
def test_one_restart_is_the_attack_without_restarts():
    model = _linear_model()
    settings = dict(max_iter=120, window_length=5, threshold=0.95, learning_rate=0.5, bounds=(-1.0, 1.0))
    today = mi_face(model, 3, (1, 2, 2), **settings)
    one = mi_face(model, 3, (1, 2, 2), restarts=1, seed=4, **settings)
    assert torch.equal(one.images, today.images) and torch.equal(one.confidences, today.confidences)
    assert torch.equal(one.iterations, today.iterations) and one.restart.tolist() == [0, 0, 0]
    # and the ART loop's numbers, as before restarts existed
    for k in range(3):
        x, steps = _reference(model, k, torch.zeros(1, 2, 2, dtype=torch.float64), stopping="paper", **settings)
        assert int(one.iterations[k]) == steps
        torch.testing.assert_close(one.images[k], x, rtol=0, atol=1e-12)


@pytest.mark.parametrize("bounds", [(-1.0, 1.0), None])
def test_batched_restarts_are_each_restart_alone_and_the_best_kept(bounds):
    from rvepfl.attacks.miface import _random_starts

    model = _linear_model()
    settings = dict(max_iter=60, window_length=5, threshold=0.999, learning_rate=0.5, bounds=bounds)
    restarts, seed = 4, 7
    batched = mi_face(model, 3, (1, 2, 2), restarts=restarts, seed=seed, **settings)
    starts = _random_starts(seed, [0, 1, 2], restarts, (1, 2, 2), bounds)
    assert starts.shape == (3, restarts - 1, 1, 2, 2)
    if bounds is not None:
        assert bool(((starts >= bounds[0]) & (starts <= bounds[1])).all())
    chosen = []
    for k in range(3):
        alone = [mi_face(model, 3, (1, 2, 2), classes=[k], init=torch.zeros(1, 2, 2) if j == 0 else starts[k, j - 1],
                         **settings) for j in range(restarts)]
        confidences = torch.cat([a.confidences for a in alone])
        best = int(confidences.argmax())
        chosen.append(best)
        assert int(batched.restart[k]) == best
        torch.testing.assert_close(batched.images[k], alone[best].images[0], rtol=0, atol=1e-12)
        assert int(batched.iterations[k]) == int(alone[best].iterations[0])
        assert float(batched.confidences[k]) == pytest.approx(float(confidences.max()), abs=1e-12)
        assert float(batched.confidences[k]) >= float(alone[0].confidences[0]) - 1e-12  # no worse than one start
    # the starts are seeded: another seed, other starts (and the same seed, the same result)
    again = mi_face(model, 3, (1, 2, 2), restarts=restarts, seed=seed, **settings)
    assert torch.equal(again.images, batched.images)
    assert not torch.equal(_random_starts(seed + 1, [0, 1, 2], restarts, (1, 2, 2), bounds), starts)


def test_a_restart_start_depends_on_its_class_and_number_only():
    from rvepfl.attacks.miface import _random_starts

    every = _random_starts(3, [0, 1, 2], 3, (1, 2, 2), (-1.0, 1.0))
    some = _random_starts(3, [2, 0], 3, (1, 2, 2), (-1.0, 1.0))
    assert torch.equal(some[0], every[2]) and torch.equal(some[1], every[0])


def test_the_attack_takes_restarts_and_its_default_is_one():
    from rvepfl.attacks.registry import attack

    assert attack("miface").default_restarts == 1


# -- stopping rules ------------------------------------------------------------------------------
class _Constant(nn.Module):
    """Logits that do not depend on the input: the gradient is zero, the descent is stuck."""

    def __init__(self, logits: list[float]) -> None:
        super().__init__()
        self.register_buffer("logits", torch.tensor(logits))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.logits.expand(len(x), -1) + 0.0 * x.flatten(1).sum(1, keepdim=True)


def test_threshold_stops_early():
    loose = mi_face(_linear_model(), 3, (1, 2, 2), classes=[0], max_iter=1000, threshold=0.9, learning_rate=0.1)
    tight = mi_face(_linear_model(), 3, (1, 2, 2), classes=[0], max_iter=1000, threshold=0.999, learning_rate=0.1)
    assert 0 < loose.iterations.item() < tight.iterations.item() < 1000
    assert 0.9 <= loose.confidences.item() < 0.999 <= tight.confidences.item()


def test_window_stops_a_stuck_class_after_window_plus_one_steps():
    result = mi_face(_Constant([0.0, 1.0, 2.0]), 3, (1, 4, 4), max_iter=1000, window_length=7, threshold=0.99)
    # The first stuck test needs 7 earlier costs: step 8 is the first that can stop.
    assert result.iterations.tolist() == [8, 8, 8]
    assert torch.equal(result.images, torch.zeros(3, 1, 4, 4))


def test_max_iter_is_respected():
    model = _linear_model()
    result = mi_face(model, 3, (1, 2, 2), max_iter=7, window_length=100, threshold=1.0, learning_rate=1e-3)
    assert result.iterations.tolist() == [7, 7, 7]
    start = mi_face(model, 3, (1, 2, 2), max_iter=0)
    assert start.iterations.tolist() == [0, 0, 0] and torch.equal(start.images, torch.zeros(3, 1, 2, 2))
    with torch.no_grad():
        p0 = torch.softmax(model(start.images), 1).diagonal()
    torch.testing.assert_close(start.confidences, p0)


def test_art_rule_is_arts_inverted_test():
    model = _Constant([0.0, 1.0, 2.0])  # confidences 0.09, 0.24, 0.67: costs 0.91, 0.76, 0.33
    # ART goes on while cost <= threshold: with threshold 0.5 only class 2 runs on (to max_iter;
    # once the window fills, a stuck class keeps running too); the others stop after one step.
    art = mi_face(model, 3, (1, 4, 4), max_iter=50, window_length=7, threshold=0.5, stopping="art")
    assert art.iterations.tolist() == [1, 1, 50]
    paper = mi_face(model, 3, (1, 4, 4), max_iter=50, window_length=7, threshold=0.5, stopping="paper")
    assert paper.iterations.tolist() == [8, 8, 1]  # class 2 is 67 % >= 50 % confident at once


def test_init_and_subset_of_classes():
    model = _linear_model()
    init = torch.full((1, 2, 2), 0.25, dtype=torch.float64)
    one = mi_face(model, 3, (1, 2, 2), classes=[2, 0], init=init, max_iter=3, learning_rate=0.1)
    per_row = mi_face(model, 3, (1, 2, 2), classes=torch.tensor([2, 0]), init=init.expand(2, 1, 2, 2), max_iter=3,
                      learning_rate=0.1)
    assert one.classes.tolist() == [2, 0] and torch.equal(one.images, per_row.images)
    assert isinstance(one, MiFaceResult) and one.seconds >= 0
    assert torch.equal(init, torch.full((1, 2, 2), 0.25, dtype=torch.float64))  # the caller's init is not changed


# -- the model is left as it was -----------------------------------------------------------------
class _WithBatchNorm(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(1, 4, 3, padding=1)
        self.norm = nn.BatchNorm2d(4)
        self.drop = nn.Dropout(0.5)
        self.out = nn.Linear(4 * 16, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.drop(F.relu(self.norm(self.conv(x)))).flatten(1))


def test_model_is_untouched_and_run_in_eval_mode():
    model = _built(1, _WithBatchNorm)
    model.train()
    model.conv.weight.requires_grad_(False)
    with torch.no_grad():
        model.norm.running_mean.uniform_(-0.5, 0.5, generator=torch_generator(1, "init"))
    before = {k: v.clone() for k, v in model.state_dict().items()}
    flags = [p.requires_grad for p in model.parameters()]
    rng = torch.get_rng_state()

    together = mi_face(model, 3, (1, 4, 4), max_iter=20, learning_rate=0.5)
    alone = [mi_face(model, 3, (1, 4, 4), classes=[k], max_iter=20, learning_rate=0.5) for k in range(3)]

    # Evaluation mode: no batch statistics (rows independent) and no dropout draws.
    for k in range(3):
        torch.testing.assert_close(together.images[k], alone[k].images[0])
    assert torch.equal(torch.get_rng_state(), rng)
    after = model.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)  # running stats included
    assert [p.requires_grad for p in model.parameters()] == flags
    assert all(p.grad is None for p in model.parameters())
    assert model.training and model.norm.training and model.drop.training


def test_personal_model_with_seed_is_reproducible_and_leaves_global_rng():
    model = _built(2, lambda: PersonalModel(1, 8, 3))  # samples z at evaluation too
    # Not zeros: at x = 0 the encoder's ReLUs (zero biases) pass no gradient.
    init = torch.rand(1, 8, 8, generator=torch_generator(2, "attack"))
    rng = torch.get_rng_state()
    a = mi_face(model, 3, (1, 8, 8), max_iter=3, learning_rate=0.1, init=init, seed=5)
    b = mi_face(model, 3, (1, 8, 8), max_iter=3, learning_rate=0.1, init=init, seed=5)
    c = mi_face(model, 3, (1, 8, 8), max_iter=3, learning_rate=0.1, init=init, seed=6)
    assert torch.equal(torch.get_rng_state(), rng)
    assert torch.equal(a.images, b.images) and not torch.equal(a.images, c.images)
    assert model.training


# -- argument validation -------------------------------------------------------------------------
@pytest.mark.parametrize("kwargs, match", [
    ({"num_classes": 1}, "num_classes"),
    ({"input_shape": (1, 2)}, "input_shape"),
    ({"max_iter": -1}, "max_iter"),
    ({"max_iter": 2.5}, "max_iter"),
    ({"window_length": 0}, "window_length"),
    ({"threshold": 0.0}, "threshold"),
    ({"threshold": 1.5}, "threshold"),
    ({"threshold": -0.1, "stopping": "art"}, "threshold"),
    ({"learning_rate": 0.0}, "learning_rate"),
    ({"learning_rate": math.nan}, "learning_rate"),
    ({"bounds": (1.0, -1.0)}, "bounds"),
    ({"classes": [3]}, "classes"),
    ({"classes": []}, "classes"),
    ({"classes": [0.5]}, "classes"),
    ({"init": torch.zeros(2, 1, 3, 3)}, "init"),
    ({"init": torch.full((1, 2, 2), math.nan)}, "init"),
    ({"stopping": "ibm"}, "stopping"),
    ({"restarts": 0}, "restarts"),
    ({"restarts": 2}, "seed"),
])
def test_bad_arguments_name_the_argument(kwargs, match):
    args = {"num_classes": 3, "input_shape": (1, 2, 2), **kwargs}
    with pytest.raises(ValueError, match=match):
        mi_face(_linear_model(), args.pop("num_classes"), args.pop("input_shape"), **args)


def test_model_output_must_match_num_classes():
    with pytest.raises(ValueError, match=r"`model` to return logits of shape \(4, 4\) .* got \(4, 3\)"):
        mi_face(_linear_model(), 4, (1, 2, 2))


def test_model_must_be_a_module():
    with pytest.raises(TypeError, match="model"):
        mi_face(lambda x: x, 3, (1, 2, 2))  # type: ignore[arg-type]
