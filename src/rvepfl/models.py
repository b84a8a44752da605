"""The RVE-PFL model: a private variational encoder and a shared classifier.

The architecture follows the published code exactly (docs/deviations.md lists where this project
departs from that code; the model is not among them): the encoder maps an image x of shape
(C, H, W) to a sample z of the *same* shape, and the classifier reads z as if it were an image.
Only the classifier is ever shared with the server.

Speed (measured by ``python -m benchmarks``, see BENCHMARKS.md): the convolutions run on
channels-last activations, where oneDNN's CPU kernels and max-pooling are faster, while every
parameter, state dict and checkpoint keeps PyTorch's usual (contiguous) layout; the encoder's
conv output is turned back to the usual layout before the dense layer reads it in (C, H, W)
order, and ReLU follows max-pooling (relu(maxpool(h)) equals maxpool(relu(h)) exactly, values and
gradients, on a quarter of the elements); BENCHMARKS.md has what that gained. The channels-last
convolutions sum in another order, so results differ from the plain layout in the last bits (the
same seed still gives the same numbers).

>>> import torch
>>> model = PersonalModel(channels=1, image_size=28, num_classes=10)
>>> model(torch.zeros(2, 1, 28, 28)).shape
torch.Size([2, 10])
>>> sum(p.numel() for p in model.encoder.parameters())
19698080
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from rvepfl.errors import ConfigError

__all__ = ["Classifier", "Encoder", "PersonalModel", "glorot_init", "kl_divergence"]


def glorot_init(module: nn.Module) -> None:
    """Initialise every conv and linear layer as Keras does: Glorot-uniform weights, zero biases.

    This matters: with PyTorch's default initialisation the same model learns far slower.
    """
    for layer in module.modules():
        if isinstance(layer, (nn.Conv2d, nn.Linear)):
            nn.init.xavier_uniform_(layer.weight)
            if layer.bias is not None:
                nn.init.zeros_(layer.bias)


def _channels_last(h: torch.Tensor) -> torch.Tensor:
    """``h`` in channels-last layout, so that the next convolution (and the ones after it) run
    channels-last. The first convolution's output needs it: with a one-channel input the layouts
    coincide and the convolution keeps the usual one."""
    return h.contiguous(memory_format=torch.channels_last)


def _check_shape(channels: int, image_size: int, minimum: int) -> None:
    if channels not in (1, 3):
        raise ConfigError(f"Expected `channels` to be 1 or 3, got {channels}")
    if image_size < minimum:
        raise ConfigError(f"Expected `image_size` >= {minimum}, got {image_size}")


class Encoder(nn.Module):
    """Private variational encoder: x (C, H, W) -> (z, mu, logvar), each of shape (C, H, W).

    conv 3x3 C->32 (valid) + ReLU, conv 3x3 32->64 (valid) + ReLU, flatten, linear -> 512 (no
    activation), dropout 0.25, two linear heads 512 -> C*H*W for mu and log sigma^2.
    """

    def __init__(self, channels: int, image_size: int, *, hidden: int = 512) -> None:
        super().__init__()
        _check_shape(channels, image_size, minimum=5)
        self.channels = channels
        self.image_size = image_size
        dim = channels * image_size * image_size
        side = image_size - 4
        self.conv1 = nn.Conv2d(channels, 32, 3)
        self.conv2 = nn.Conv2d(32, 64, 3)
        self.dense = nn.Linear(64 * side * side, hidden)
        self.dropout = nn.Dropout(0.25)
        self.mu = nn.Linear(hidden, dim)
        self.logvar = nn.Linear(hidden, dim)
        glorot_init(self)

    def forward(
        self, x: torch.Tensor, *, sample: bool = True
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        h = F.relu_(_channels_last(self.conv1(x)))
        h = F.relu_(self.conv2(h).contiguous())  # (C, H, W) order for the dense layer
        h = self.dropout(self.dense(h.flatten(1)))
        mu = self.mu(h)
        logvar = self.logvar(h)
        if sample:
            z = mu + torch.exp(0.5 * logvar) * torch.randn_like(mu)
        else:
            z = mu
        shape = (-1, self.channels, self.image_size, self.image_size)
        return z.view(shape), mu, logvar


class Classifier(nn.Module):
    """Shared classifier: an image-shaped input (C, H, W) -> class logits.

    conv 3x3 C->32 (same) + ReLU, max-pool 2, conv 3x3 32->64 (same) + ReLU, max-pool 2, flatten,
    linear -> 256 + ReLU, dropout 0.25, linear -> classes. Softmax is left to the loss.
    """

    def __init__(self, channels: int, image_size: int, num_classes: int) -> None:
        super().__init__()
        _check_shape(channels, image_size, minimum=4)
        if num_classes < 2:
            raise ConfigError(f"Expected `num_classes` >= 2, got {num_classes}")
        side = image_size // 4
        self.conv1 = nn.Conv2d(channels, 32, 3, padding=1)
        self.conv2 = nn.Conv2d(32, 64, 3, padding=1)
        self.dense = nn.Linear(64 * side * side, 256)
        self.dropout = nn.Dropout(0.25)
        self.out = nn.Linear(256, num_classes)
        glorot_init(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu_(F.max_pool2d(_channels_last(self.conv1(x)), 2))
        h = F.relu_(F.max_pool2d(self.conv2(h), 2))
        h = self.dropout(F.relu(self.dense(h.flatten(1))))
        return self.out(h)


class PersonalModel(nn.Module):
    """A client's model: its private encoder followed by the shared classifier.

    Parameters
    ----------
    channels, image_size, num_classes
        Input shape (channels x image_size x image_size) and number of classes.
    sample_at_eval
        Sample z in evaluation mode too (the published behaviour); if False, use z = mu.
    """

    def __init__(
        self, channels: int, image_size: int, num_classes: int, *, sample_at_eval: bool = True
    ) -> None:
        super().__init__()
        self.encoder = Encoder(channels, image_size)
        self.classifier = Classifier(channels, image_size, num_classes)
        self.sample_at_eval = sample_at_eval

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z, _, _ = self.encoder(x, sample=self.training or self.sample_at_eval)
        return self.classifier(z)


def kl_divergence(mu: torch.Tensor, logvar: torch.Tensor) -> torch.Tensor:
    """KL(N(mu, sigma^2) || N(0, I)), summed over dimensions and averaged over the batch.

    >>> kl_divergence(torch.zeros(3, 4), torch.zeros(3, 4)).item()
    0.0
    """
    per_sample = -0.5 * torch.sum(1 + logvar - mu.pow(2) - logvar.exp(), dim=1)
    return per_sample.mean()
