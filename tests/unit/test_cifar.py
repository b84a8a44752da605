"""The CIFAR-10 batch reader (:mod:`rvepfl.data.cifar`): the pixel layout, the batch's structure
and the layouts of the data directory, on small batches in the exact real formats."""

from __future__ import annotations

import pickle
import struct
from pathlib import Path

import numpy as np
import pytest

from rvepfl.data.cifar import (
    CIFAR10_TEST_BATCH,
    CIFAR10_TRAIN_BATCHES,
    parse_cifar_batch,
    read_cifar10,
    read_cifar_batch,
)
from rvepfl.errors import DataError
from tests.helpers.cifar_format import (
    VARIANTS,
    batch_bytes,
    cifar_images,
    cifar_rows,
    images_to_rows,
    py2_batch_bytes,
    write_cifar_batch,
)


@pytest.mark.parametrize("variant", VARIANTS)
def test_cifar_batch_round_trip(tmp_path: Path, variant: str) -> None:
    images = cifar_images(4, seed=3)
    labels = [9, 0, 5, 5]
    path = write_cifar_batch(
        tmp_path / "data_batch_1", images_to_rows(images), labels, variant=variant
    )
    x, y = read_cifar_batch(path)
    assert x.dtype == np.uint8 and x.shape == (4, 32, 32, 3) and x.flags.c_contiguous
    assert y.dtype == np.int64
    np.testing.assert_array_equal(x, images)
    np.testing.assert_array_equal(y, labels)


def test_cifar_py2_layout_uses_binstring() -> None:
    blob = batch_bytes(2)
    assert blob.startswith(b"\x80\x02}q\x01(U\x0bbatch_label")
    assert b"cnumpy.core.multiarray\n_reconstruct\n" in blob
    assert b"T" + struct.pack("<i", 2 * 3072) in blob  # BINSTRING with the pixel bytes


def test_cifar_row_layout_is_planar_rgb() -> None:
    rows = np.zeros((1, 3072), dtype=np.uint8)
    rows[0, :1024] = np.arange(1024) % 256  # R plane, row-major 32x32
    rows[0, 1024:2048] = 7  # G
    rows[0, 2048:] = 9  # B
    images, _ = parse_cifar_batch(py2_batch_bytes(rows, [3], [b"a.png"], b"x"))
    assert (
        images[0, 0, 1, 0] == 1
        and images[0, 1, 0, 0] == 32
        and images[0, 7, 31, 0] == (7 * 32 + 31) % 256
    )
    assert (images[0, :, :, 1] == 7).all() and (images[0, :, :, 2] == 9).all()


def test_cifar_fortran_ordered_array(tmp_path: Path) -> None:
    images = cifar_images(3, seed=5)
    rows = np.asfortranarray(images_to_rows(images))
    blob = pickle.dumps({b"data": rows, b"labels": [1, 2, 3]}, protocol=2)
    np.testing.assert_array_equal(parse_cifar_batch(blob)[0], images)
    blob5 = pickle.dumps({"data": rows, "labels": [1, 2, 3]}, protocol=5)
    np.testing.assert_array_equal(parse_cifar_batch(blob5)[0], images)


def _write_cifar_dir(directory: Path, variant: str = "py2") -> tuple[np.ndarray, np.ndarray]:
    directory.mkdir(parents=True, exist_ok=True)
    all_images, all_labels = [], []
    for i, name in enumerate([*CIFAR10_TRAIN_BATCHES, CIFAR10_TEST_BATCH]):
        images = cifar_images(2, seed=i)
        labels = [i % 10, (i + 3) % 10]
        write_cifar_batch(directory / name, images_to_rows(images), labels, variant=variant)
        all_images.append(images)
        all_labels.append(labels)
    return np.concatenate(all_images), np.concatenate(all_labels)


@pytest.mark.parametrize("layout", ["", "cifar-10-batches-py", "cifar10/cifar-10-batches-py"])
def test_read_cifar10(tmp_path: Path, layout: str) -> None:
    images, labels = _write_cifar_dir(tmp_path / layout if layout else tmp_path)
    train_x, train_y, test_x, test_y = read_cifar10(tmp_path)
    assert train_x.shape == (10, 32, 32, 3) and test_x.shape == (2, 32, 32, 3)
    assert train_y.dtype == np.int64 and test_y.dtype == np.int64
    np.testing.assert_array_equal(train_x, images[:10])
    np.testing.assert_array_equal(test_x, images[10:])
    np.testing.assert_array_equal(train_y, labels[:10])
    np.testing.assert_array_equal(test_y, labels[10:])


def test_read_cifar10_missing(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data directory not found"):
        read_cifar10(tmp_path / "absent")
    _write_cifar_dir(tmp_path / "cifar-10-batches-py")
    (tmp_path / "cifar-10-batches-py" / "test_batch").unlink()
    with pytest.raises(
        DataError, match=r"no CIFAR-10 python batches found: looked for data_batch_1, .*test_batch"
    ):
        read_cifar10(tmp_path)


def test_read_cifar10_corrupt_batch(tmp_path: Path) -> None:
    _write_cifar_dir(tmp_path)
    path = tmp_path / "data_batch_3"
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=r"data_batch_3: corrupt or truncated pickle stream"):
        read_cifar10(tmp_path)


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        ([1, 2, 3], "holds a list, not a CIFAR batch dict"),
        ({b"data": cifar_rows(2)}, "no 'labels' entry"),
        ({b"labels": [1]}, "no 'data' entry"),
        (
            {b"data": cifar_rows(2), b"labels": [1, 2], b"fine_labels": [1, 2]},
            "unexpected key b'fine_labels'",
        ),
        (
            {b"data": cifar_rows(2), "data": cifar_rows(2), b"labels": [1, 2]},
            "unexpected key 'data'",
        ),
        ({b"data": cifar_rows(2), b"labels": [1, 10]}, r"label 10 is outside 0\.\.9"),
        ({b"data": cifar_rows(2), b"labels": [1, -1]}, r"label -1 is outside 0\.\.9"),
        ({b"data": cifar_rows(2), b"labels": [1, True]}, "'labels' is not a list of integers"),
        ({b"data": cifar_rows(2), b"labels": (1, 2)}, "'labels' is not a list of integers"),
        (
            {b"data": cifar_rows(2), b"labels": [1, 2, 3]},
            r"'data' has shape \(2, 3072\), expected \(3, 3072\)",
        ),
        (
            {b"data": cifar_rows(2).reshape(2, 3, 32, 32), b"labels": [1, 2]},
            r"'data' has shape \(2, 3, 32, 32\)",
        ),
        (
            {b"data": cifar_rows(2).astype(np.float32), b"labels": [1, 2]},
            "unexpected call of numpy.dtype",
        ),
        (
            {b"data": cifar_rows(2).astype(np.int64), b"labels": [1, 2]},
            "unexpected call of numpy.dtype",
        ),
        (
            {b"data": np.array([b"x", 1], dtype=object), b"labels": [1, 2]},
            "unexpected call of numpy.dtype",
        ),
        ({b"data": b"\x00" * 6144, b"labels": [1, 2]}, "'data' is not a numpy uint8 array"),
        (
            {b"data": cifar_rows(2), b"labels": [1, 2], b"filenames": [b"a"]},
            "'filenames' is not a list of 2 strings",
        ),
        (
            {b"data": cifar_rows(2), b"labels": [1, 2], b"batch_label": 5},
            "'batch_label' is not a string",
        ),
        (
            {b"data": cifar_rows(1), b"labels": [1], b"filenames": {b"a"}},
            r"opcode EMPTY_SET at byte|global '__builtin__\.set'",
        ),
        ({b"data": cifar_rows(1), b"labels": [1.0]}, "opcode BINFLOAT at byte"),
        ({(1,): cifar_rows(1), b"labels": [1]}, "unexpected dict key of type tuple"),
    ],
)
@pytest.mark.parametrize("protocol", [2, 5])
def test_wrong_structure_is_rejected(batch: object, message: str, protocol: int) -> None:
    with pytest.raises(DataError, match=message):
        parse_cifar_batch(pickle.dumps(batch, protocol=protocol), "b")

