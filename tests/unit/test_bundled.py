"""The bundled MNIST and Fashion-MNIST subsets: their shapes, hashes and class counts."""

from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np
import pytest

from rvepfl import data

_BUNDLED = Path(data.__file__).parent / "bundled"
#: SHA-256 of the arrays' bytes, as printed by scripts/build_bundled_data.py and in DATA.md.
_BUNDLED_SHA256 = {
    "mnist": (
        "01a649acf97bc53c9bbc1a378d3087f5a8f67ccf25746dab384bcbe11feed658",
        "e72996c710bf1af21bb8a23cdd1d782224270379d3bccd54d66aa2c07de97e75",
    ),
    "fmnist": (
        "857c04d4948c7ff211982d677824f8d8d94d1e53cdf2da37fe772251fca8c621",
        "b65d8a23de3fd807fbe56ef2f3d29073db63e830dae3ba1dc0cdaf7b3a54cc73",
    ),
}
_MNIST_COUNTS = [1001, 1127, 991, 1032, 980, 863, 1014, 1070, 944, 978]


def _load_bundled(name: str) -> tuple[np.ndarray, np.ndarray]:
    with np.load(_BUNDLED / f"{name}.npz", allow_pickle=False) as npz:
        assert sorted(npz.files) == ["images", "labels"]
        return npz["images"], npz["labels"]


@pytest.mark.parametrize("name", ["mnist", "fmnist"])
def test_bundled_subset_shape_and_hash(name: str) -> None:
    images, labels = _load_bundled(name)
    assert images.dtype == np.uint8 and images.shape == (10_000, 28, 28)
    assert labels.dtype == np.uint8 and labels.shape == (10_000,)
    assert 0 < images.mean() < 255 and images.max() == 255
    assert (
        hashlib.sha256(images.tobytes()).hexdigest(),
        hashlib.sha256(labels.tobytes()).hexdigest(),
    ) == _BUNDLED_SHA256[name]


def test_bundled_mnist_class_counts() -> None:
    _, labels = _load_bundled("mnist")
    assert np.bincount(labels, minlength=10).tolist() == _MNIST_COUNTS
    assert 9_000 <= len(labels) <= 11_000


def test_bundled_fmnist_is_stratified() -> None:
    _, labels = _load_bundled("fmnist")
    assert np.bincount(labels, minlength=10).tolist() == [1000] * 10
