"""An independent evaluator classifier: it labels reconstructions to give *attack accuracy*.

The evaluator is trained centrally on images no victim saw, with an architecture unlike the
victims' (three 3x3 conv blocks with batch norm and an adaptive average pool, where the victims'
classifier has two conv layers, no batch norm and a dense layer), so that a reconstruction it
labels correctly looks like its class to a model other than the one it was extracted from.

It reads [0, 1] pixels (N, C, H, W) and standardises each image by its own mean and standard
deviation (over all its pixels and channels), so callers never need a data set's normalisation
and the evaluator judges shape, not brightness or contrast. That matters for MI-Face: its images
are faint strokes on a mean-grey start, which an evaluator normalised with the data set's
statistics labels as one and the same class (BENCHMARKS.md, "Figures measured once", has the
comparison on bundled MNIST).

All its randomness (the held-out split, the initial weights, the batch order) comes from named
sub-streams of the ``attack`` stream of ``seed``, never from torch's global generator; the same
seed, data and thread count give the same weights. It saves to and loads from one safetensors
file.

>>> import torch
>>> g = torch.Generator().manual_seed(0)
>>> x = torch.rand(40, 1, 8, 8, generator=g)
>>> y = (x[:, :, :4].mean(dim=(1, 2, 3)) > x[:, :, 4:].mean(dim=(1, 2, 3))).long()  # top brighter
>>> evaluator = train_evaluator(x, y, num_classes=2, epochs=1, batch_size=8)
>>> evaluator.predict(x).shape, evaluator.num_test
(torch.Size([40]), 8)
"""

from __future__ import annotations

import math
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from rvepfl.errors import CheckpointError
from rvepfl.io import load_tensors, read_metadata, save_tensors
from rvepfl.seeding import torch_generator

__all__ = ["Evaluator", "EvaluatorNet", "train_evaluator"]

_KIND = "rvepfl-evaluator"
# Keys of the evaluator's sub-streams within the "attack" stream of its seed.
_SPLIT, _INIT, _ORDER = 9100, 9101, 9102
_POOL = 3  # the last feature map is average-pooled to 3 x 3 before the linear layer
_STD_FLOOR = 1e-3  # added to each image's standard deviation ([0, 1] units): a flat image -> 0


class EvaluatorNet(nn.Module):
    """[0, 1] pixels (N, C, H, W) -> logits.

    Standardise each image (its own mean and standard deviation), then three blocks of conv 3x3
    (same, no bias) + batch norm + ReLU, the first two followed by max-pool 2; average-pool to
    3 x 3, flatten, linear. Works for any image of at least 4 x 4 pixels.
    """

    def __init__(self, channels: int, num_classes: int, *, width: int = 32) -> None:
        super().__init__()
        self.channels = channels
        self.num_classes = num_classes
        self.width = width
        widths = (channels, width, 2 * width, 4 * width)
        self.convs = nn.ModuleList(nn.Conv2d(a, b, 3, padding=1, bias=False) for a, b in zip(widths, widths[1:]))
        self.norms = nn.ModuleList(nn.BatchNorm2d(b) for b in widths[1:])
        self.out = nn.Linear(widths[-1] * _POOL * _POOL, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mean = x.mean(dim=(1, 2, 3), keepdim=True)
        std = x.std(dim=(1, 2, 3), keepdim=True, correction=0)
        h = (x - mean) / (std + _STD_FLOOR)
        for i, (conv, norm) in enumerate(zip(self.convs, self.norms)):
            h = F.relu(norm(conv(h)))
            if i < 2:
                h = F.max_pool2d(h, 2)
        return self.out(F.adaptive_avg_pool2d(h, _POOL).flatten(1))


def _build(channels: int, num_classes: int, width: int, generator: torch.Generator | None) -> EvaluatorNet:
    """A network built without touching torch's global generator (weights from ``generator``,
    or left for a state dict to fill when it is None)."""
    with torch.device("meta"):
        net = EvaluatorNet(channels, num_classes, width=width)
    net = net.to_empty(device="cpu")
    for module in net.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.reset_parameters()
        elif isinstance(module, nn.Conv2d) and generator is not None:
            nn.init.kaiming_normal_(module.weight, nonlinearity="relu", generator=generator)
        elif isinstance(module, nn.Linear) and generator is not None:
            nn.init.xavier_uniform_(module.weight, generator=generator)
            nn.init.zeros_(module.bias)
    return net


def _check_images(name: str, images: torch.Tensor, shape: tuple[int, ...] | None = None) -> None:
    if not isinstance(images, torch.Tensor):
        raise TypeError(f"Expected `{name}` to be a torch.Tensor, got {type(images).__name__}")
    if images.ndim != 4 or not images.is_floating_point():
        raise ValueError(f"Expected `{name}` to be float (N, C, H, W), got {images.dtype} of shape "
                         f"{tuple(images.shape)}")
    if shape is not None and tuple(images.shape[1:]) != shape:
        raise ValueError(f"Expected `{name}` of shape (N, {', '.join(map(str, shape))}), got {tuple(images.shape)}")
    if images.numel() and not bool(((images >= 0) & (images <= 1)).all()):
        raise ValueError(f"Expected `{name}` in [0, 1] pixel space, got values in "
                         f"[{images.min().item():.4g}, {images.max().item():.4g}]")


class Evaluator:
    """A trained :class:`EvaluatorNet` and its own held-out test accuracy.

    Attributes
    ----------
    network
        The network (kept in evaluation mode).
    accuracy
        Accuracy on the held-out part of its training data (a fraction).
    num_train, num_test
        Images it was trained and tested on.
    input_shape
        (C, H, W) of the images it labels.
    """

    def __init__(self, network: EvaluatorNet, *, accuracy: float, num_train: int, num_test: int,
                 input_shape: tuple[int, int, int]) -> None:
        self.network = network.eval()
        self.accuracy = float(accuracy)
        self.num_train = int(num_train)
        self.num_test = int(num_test)
        self.input_shape = tuple(int(s) for s in input_shape)

    @property
    def num_classes(self) -> int:
        return self.network.num_classes

    def __repr__(self) -> str:
        return (f"Evaluator(input_shape={self.input_shape}, num_classes={self.num_classes}, "
                f"accuracy={self.accuracy:.4f}, num_train={self.num_train}, num_test={self.num_test})")

    def logits(self, images_01: torch.Tensor, *, batch_size: int = 1024) -> torch.Tensor:
        """Logits (N, num_classes) of [0, 1] pixel images (N, C, H, W)."""
        _check_images("images_01", images_01, self.input_shape)
        self.network.eval()
        with torch.no_grad():
            parts = [self.network(images_01[i: i + batch_size].float().cpu())
                     for i in range(0, len(images_01), batch_size)]
        return torch.cat(parts) if parts else torch.zeros(0, self.num_classes)

    def predict(self, images_01: torch.Tensor, *, batch_size: int = 1024) -> torch.Tensor:
        """Labels (N,) int64 of [0, 1] pixel images (N, C, H, W)."""
        return self.logits(images_01, batch_size=batch_size).argmax(dim=1)

    def save(self, path: str | Path) -> None:
        """Write the weights and the settings needed to rebuild it to a safetensors file."""
        c, h, w = self.input_shape
        meta = {
            "format": _KIND, "channels": str(c), "image_height": str(h), "image_width": str(w),
            "num_classes": str(self.num_classes), "net_width": str(self.network.width),
            "accuracy": repr(self.accuracy), "num_train": str(self.num_train), "num_test": str(self.num_test),
        }
        save_tensors(path, self.network.state_dict(), meta)

    @classmethod
    def load(cls, path: str | Path) -> Evaluator:
        """Read an evaluator written by :meth:`save` (raises CheckpointError if it is not one)."""
        meta = read_metadata(path)
        if meta.get("format") != _KIND:
            raise CheckpointError(f"{path} is not an rvepfl {_KIND} checkpoint (format={meta.get('format')!r})")
        try:
            c, h, w = int(meta["channels"]), int(meta["image_height"]), int(meta["image_width"])
            net = _build(c, int(meta["num_classes"]), int(meta["net_width"]), None)
            accuracy, num_train, num_test = float(meta["accuracy"]), int(meta["num_train"]), int(meta["num_test"])
        except (KeyError, ValueError) as exc:
            raise CheckpointError(f"{path}: incomplete evaluator metadata ({exc})") from None
        tensors = load_tensors(path, expected=net.state_dict(), kind=_KIND)
        net.load_state_dict(tensors)
        return cls(net, accuracy=accuracy, num_train=num_train, num_test=num_test, input_shape=(c, h, w))


def train_evaluator(
    images_01: torch.Tensor,
    labels: torch.Tensor,
    *,
    num_classes: int,
    epochs: int = 3,
    batch_size: int = 64,
    learning_rate: float = 1e-2,
    width: int = 32,
    seed: int = 0,
    test_fraction: float = 0.2,
) -> Evaluator:
    """Train an evaluator centrally on [0, 1] pixel images and test it on a held-out share.

    Parameters
    ----------
    images_01
        (N, C, H, W) float images in [0, 1]; at least 4 x 4 pixels.
    labels
        (N,) integer labels in [0, num_classes).
    num_classes
        Number of classes (>= 2).
    epochs, batch_size, learning_rate
        Adam with a one-cycle schedule peaking at ``learning_rate``, over shuffled mini-batches
        drawn from in-memory tensors (no DataLoader). What the defaults reach on bundled MNIST,
        and how fast, is in BENCHMARKS.md ("Figures measured once").
    width
        Channels of the first conv block (then 2x and 4x).
    seed
        Master seed of the split, the initial weights and the batch order (the ``attack`` stream).
    test_fraction
        Share of the images held out (a random split), in (0, 1); both parts must be non-empty.

    Returns
    -------
    Evaluator
        The trained evaluator; ``accuracy`` is its accuracy on the held-out share.
    """
    _check_images("images_01", images_01)
    if not isinstance(labels, torch.Tensor) or labels.shape != (len(images_01),):
        raise ValueError(f"Expected `labels` of shape ({len(images_01)},), got "
                         f"{tuple(labels.shape) if isinstance(labels, torch.Tensor) else type(labels).__name__}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise ValueError(f"Expected integer `labels`, got {labels.dtype}")
    if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
        raise ValueError(f"Expected `num_classes` >= 2, got {num_classes!r}")
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
        raise ValueError(f"Expected `labels` in [0, {num_classes}), got [{int(labels.min())}, {int(labels.max())}]")
    for name, value in (("epochs", epochs), ("batch_size", batch_size), ("width", width)):
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ValueError(f"Expected `{name}` >= 1, got {value!r}")
    if not (math.isfinite(learning_rate) and learning_rate > 0):
        raise ValueError(f"Expected `learning_rate` > 0, got {learning_rate!r}")
    if not 0 < test_fraction < 1:
        raise ValueError(f"Expected `test_fraction` in (0, 1), got {test_fraction!r}")
    if min(images_01.shape[2:]) < 4:
        raise ValueError(f"Expected images of at least 4 x 4 pixels, got {tuple(images_01.shape[2:])}")
    n = len(labels)
    n_test = round(n * test_fraction)
    if n_test < 1 or n_test >= n:
        raise ValueError(f"Expected `images_01` large enough for a non-empty train and test split at "
                         f"test_fraction={test_fraction}, got {n} images")

    x = images_01.detach().float().cpu()
    y = labels.detach().long().cpu()
    order = torch.randperm(n, generator=torch_generator(seed, "attack", _SPLIT))
    test, train = order[:n_test], order[n_test:]
    x_train, y_train = x[train], y[train]

    net = _build(x.shape[1], num_classes, width, torch_generator(seed, "attack", _INIT))
    optimiser = torch.optim.Adam(net.parameters(), lr=learning_rate)
    shuffle = torch_generator(seed, "attack", _ORDER)
    steps = epochs * math.ceil(len(train) / batch_size)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(optimiser, max_lr=learning_rate, total_steps=steps)
    net.train()
    for _ in range(epochs):
        perm = torch.randperm(len(train), generator=shuffle)
        for i in range(0, len(train), batch_size):
            idx = perm[i: i + batch_size]
            if len(idx) < 2:  # batch norm needs two images
                continue
            loss = F.cross_entropy(net(x_train[idx]), y_train[idx])
            optimiser.zero_grad(set_to_none=True)
            loss.backward()
            optimiser.step()
            scheduler.step()
    net.eval()
    evaluator = Evaluator(net, accuracy=0.0, num_train=len(train), num_test=n_test,
                          input_shape=tuple(x.shape[1:]))  # type: ignore[arg-type]
    evaluator.accuracy = float((evaluator.predict(x[test]) == y[test]).double().mean())
    return evaluator
