import math

import pytest
import torch

from rvepfl.errors import ConfigError
from rvepfl.models import Classifier, Encoder, PersonalModel, kl_divergence


@pytest.mark.parametrize("channels, size", [(1, 28), (3, 32), (1, 8)])
def test_shapes(channels, size):
    model = PersonalModel(channels, size, 10)
    x = torch.randn(3, channels, size, size)
    z, mu, logvar = model.encoder(x)
    assert z.shape == x.shape and mu.shape == (3, channels * size * size) == logvar.shape
    assert model(x).shape == (3, 10)
    assert Classifier(channels, size, 10)(x).shape == (3, 10)


def test_encoder_matches_the_published_layer_sizes():
    enc = Encoder(1, 28)
    assert enc.dense.in_features == 64 * 24 * 24 and enc.dense.out_features == 512
    assert enc.mu.out_features == 784 == enc.logvar.out_features
    assert sum(p.numel() for p in enc.parameters()) == 19_698_080
    clf = Classifier(3, 32, 10)
    assert clf.dense.in_features == 64 * 8 * 8 and clf.dense.out_features == 256


def test_glorot_uniform_init_and_zero_biases():
    enc = Encoder(1, 28)
    limit = math.sqrt(6 / (36864 + 512))
    assert enc.dense.weight.abs().max() <= limit
    assert enc.dense.weight.std().item() == pytest.approx(limit / math.sqrt(3), rel=0.01)
    assert all(layer.bias.abs().sum() == 0 for layer in (enc.conv1, enc.conv2, enc.dense, enc.mu))


def test_sampling_at_eval_is_an_option():
    torch.manual_seed(0)
    x = torch.randn(2, 1, 28, 28)
    sampled = PersonalModel(1, 28, 10).eval()
    assert not torch.equal(sampled(x), sampled(x))
    fixed = PersonalModel(1, 28, 10, sample_at_eval=False).eval()
    assert torch.equal(fixed(x), fixed(x))


def test_kl_golden_value():
    mu = torch.tensor([[1.0, 0.0]])
    logvar = torch.tensor([[0.0, math.log(2.0)]])
    # 0.5 * (mu^2 + var - 1 - log var) summed: 0.5 * (1) + 0.5 * (2 - 1 - log 2)
    assert kl_divergence(mu, logvar).item() == pytest.approx(0.5 + 0.5 * (1 - math.log(2)))


def test_bad_shapes_are_config_errors():
    with pytest.raises(ConfigError, match="channels"):
        Encoder(2, 28)
    with pytest.raises(ConfigError, match="num_classes"):
        Classifier(1, 28, 1)


def _plain_layout_forward(model: PersonalModel, x: torch.Tensor) -> torch.Tensor:
    """The published layer order in PyTorch's usual layout: relu before max-pooling, no
    channels-last conversions."""
    from torch.nn import functional as F

    enc, clf = model.encoder, model.classifier
    h = F.relu(enc.conv2(F.relu(enc.conv1(x))))
    mu = enc.mu(enc.dense(h.flatten(1)))
    z = mu.view(x.shape)
    h = F.max_pool2d(F.relu(clf.conv1(z)), 2)
    h = F.max_pool2d(F.relu(clf.conv2(h)), 2)
    return clf.out(F.relu(clf.dense(h.flatten(1))))


@pytest.mark.parametrize("channels, size", [(1, 28), (3, 32)])
def test_the_fast_layout_computes_the_published_model(channels, size):
    """The channels-last convolutions and relu-after-pooling give the published model's outputs
    and gradients (against the plain layout in float64, to float32 rounding), and leave every
    parameter and gradient in the usual layout (checkpoints and uploads rely on it)."""
    torch.manual_seed(0)
    model = PersonalModel(channels, size, 10, sample_at_eval=False).eval()  # z = mu, no dropout
    x = torch.randn(5, channels, size, size)
    fast = model(x)
    fast.square().sum().backward()
    assert all(v.is_contiguous() for v in model.state_dict().values())
    grads = {n: p.grad for n, p in model.named_parameters() if p.grad is not None}
    assert len(grads) == 16  # every layer but the unused logvar head (z = mu here)
    assert all(g.is_contiguous() for g in grads.values())

    exact = PersonalModel(channels, size, 10, sample_at_eval=False).eval().double()
    exact.load_state_dict({k: v.double() for k, v in model.state_dict().items()})
    reference = _plain_layout_forward(exact, x.double())
    reference.square().sum().backward()
    torch.testing.assert_close(fast.double(), reference, rtol=1e-5, atol=1e-6)
    for name, p in exact.named_parameters():
        if name in grads:  # relative to the gradient's size: summed in another order
            error = (grads[name].double() - p.grad).norm() / p.grad.norm()
            assert error < 1e-5, (name, error.item())
