"""Data sets: the bundled subsets, full data sets from the user's files, and normalisation.

``mnist``, ``fmnist`` and ``cifar10`` mean exactly those data sets (the published code's
``fmnist`` silently loaded MNIST). With no data directory, the bundled real subsets are used:
about 10,000 MNIST digits and a stratified 10,000-image Fashion-MNIST subset (see DATA.md).
"""

from __future__ import annotations

from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import numpy as np
import torch

from rvepfl.errors import DataError

__all__ = ["Dataset", "NORMALISATION", "load_dataset", "subset_dataset", "subset_indices", "to_tensor"]

#: Per-channel (mean, std) used to normalise pixels in [0, 1], as in the published code.
NORMALISATION: dict[str, tuple[tuple[float, ...], tuple[float, ...]]] = {
    "mnist": ((0.1307,), (0.3081,)),
    "fmnist": ((0.1307,), (0.3081,)),
    "cifar10": ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
}
BUNDLED = ("mnist", "fmnist")
#: Share of a bundled subset held out as its test set when ``split = "standard"``.
BUNDLED_TEST_FRACTION = 1 / 7
_BUNDLED_SPLIT_SEED = 20240226  # fixed: the held-out set must not change with the run's seed


@dataclass(frozen=True)
class Dataset:
    """Images as uint8 (N, H, W, C) and int64 labels, with the official train/test split."""

    name: str
    train_x: np.ndarray
    train_y: np.ndarray
    test_x: np.ndarray
    test_y: np.ndarray
    source: str
    num_classes: int = 10

    @property
    def channels(self) -> int:
        return int(self.train_x.shape[3])

    @property
    def image_size(self) -> int:
        return int(self.train_x.shape[1])


def _load_bundled(name: str) -> Dataset:
    path = resources.files("rvepfl.data") / "bundled" / f"{name}.npz"
    with resources.as_file(path) as file, np.load(file, allow_pickle=False) as npz:
        images = np.asarray(npz["images"], dtype=np.uint8)
        labels = np.asarray(npz["labels"], dtype=np.int64)
    images = images[..., None] if images.ndim == 3 else images
    # A fixed, stratified hold-out: bundled subsets have no official test split of their own.
    rng = np.random.default_rng(_BUNDLED_SPLIT_SEED)
    test = np.zeros(len(labels), dtype=bool)
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        test[idx[: round(len(idx) * BUNDLED_TEST_FRACTION)]] = True
    return Dataset(
        name=name,
        train_x=images[~test],
        train_y=labels[~test],
        test_x=images[test],
        test_y=labels[test],
        source=f"bundled {name} subset ({len(labels)} images, see DATA.md)",
    )


def load_dataset(name: str, data_dir: str | Path | None = None, *, download: bool = False) -> Dataset:
    """Load ``name`` from ``data_dir`` (IDX files or CIFAR-10 batches) or the bundled subset.

    Parameters
    ----------
    name
        ``mnist``, ``fmnist`` or ``cifar10``.
    data_dir
        Directory with the full data set's files; ``None`` or empty: the bundled subset.
    download
        Download the files into ``data_dir`` first if they are missing (needs internet).
    """
    if name not in NORMALISATION:
        raise DataError(f"Unknown dataset {name!r}: choose one of {', '.join(NORMALISATION)}")
    if not data_dir:
        if name not in BUNDLED:
            raise DataError(
                f"No bundled subset of {name}: pass --data-dir with the CIFAR-10 python batches "
                "(cifar-10-batches-py), or add --download on a machine with internet"
            )
        return _load_bundled(name)
    from rvepfl.data import cifar, idx

    root = Path(data_dir)
    if download:
        from rvepfl.data.download import download as fetch

        fetch(name, root)
    try:
        found = root.is_dir()
    except (OSError, ValueError) as exc:  # e.g. a name longer than the file system allows, a NUL byte
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise DataError(f"{root}: cannot use this path as the data directory ({reason}); check --data-dir") from None
    if not found:
        raise DataError(f"Data directory not found: {root} (check --data-dir, or add --download)")
    if name == "cifar10":
        train_x, train_y, test_x, test_y = cifar.read_cifar10(root)
    else:
        train_x, train_y, test_x, test_y = idx.read_idx_dataset(root, name)
    return Dataset(name, train_x, train_y, test_x, test_y, source=f"{name} from {root}")


def subset_indices(dataset: Dataset, size: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """The sorted train and test indices of a stratified random subset of ``size`` images, split
    between train and test in the data set's own proportion (see :func:`subset_dataset`)."""
    total = len(dataset.train_y) + len(dataset.test_y)
    if size > total:
        raise DataError(f"Expected `data.subset` <= {total} (the images in {dataset.source}), got {size}")

    def draw(labels: np.ndarray, count: int) -> np.ndarray:
        picked = []
        classes, counts = np.unique(labels, return_counts=True)
        exact = counts / counts.sum() * count
        per_class = np.floor(exact).astype(np.int64)
        per_class[np.argsort(-(exact - per_class), kind="stable")[: count - per_class.sum()]] += 1
        for c, k in zip(classes, per_class):
            picked.append(rng.permutation(np.flatnonzero(labels == c))[:k])
        return np.sort(np.concatenate(picked))

    n_test = round(size * len(dataset.test_y) / total)
    train = draw(dataset.train_y, size - n_test)
    test = draw(dataset.test_y, n_test) if n_test else np.zeros(0, np.int64)
    return train, test


def subset_dataset(dataset: Dataset, size: int, rng: np.random.Generator) -> Dataset:
    """A stratified random subset of ``size`` images, split between train and test in the data
    set's own proportion."""
    train, test = subset_indices(dataset, size, rng)
    return Dataset(
        name=dataset.name,
        train_x=dataset.train_x[train],
        train_y=dataset.train_y[train],
        test_x=dataset.test_x[test],
        test_y=dataset.test_y[test],
        source=f"{size}-image subset of {dataset.source}",
        num_classes=dataset.num_classes,
    )


def to_tensor(images: np.ndarray, name: str) -> torch.Tensor:
    """uint8 (N, H, W, C) -> normalised float32 (N, C, H, W)."""
    mean, std = NORMALISATION[name]
    x = torch.from_numpy(np.ascontiguousarray(images)).permute(0, 3, 1, 2).float().div_(255.0)
    m = torch.tensor(mean).view(1, -1, 1, 1)
    s = torch.tensor(std).view(1, -1, 1, 1)
    return x.sub_(m).div_(s).contiguous()
