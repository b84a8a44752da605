"""Readers of IDX files and CIFAR-10 batches, on small files in the exact real formats."""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rvepfl.data import readers
from rvepfl.data.readers import (
    parse_cifar_batch,
    parse_idx,
    read_cifar10,
    read_cifar_batch,
    read_idx,
    read_idx_dataset,
)
from rvepfl.errors import DataError
from tests.helpers.cifar_format import VARIANTS, images_to_rows, py2_batch_bytes, write_cifar_batch

# --------------------------------------------------------------------------------------------
# helpers
# --------------------------------------------------------------------------------------------

_CODES = {
    np.dtype(np.uint8): 0x08,
    np.dtype(np.int8): 0x09,
    np.dtype(np.int16): 0x0B,
    np.dtype(np.int32): 0x0C,
    np.dtype(np.float32): 0x0D,
    np.dtype(np.float64): 0x0E,
}


def idx_bytes(array: np.ndarray) -> bytes:
    """The IDX encoding of ``array``: magic, big-endian dims, big-endian payload."""
    header = bytes([0, 0, _CODES[array.dtype], array.ndim]) + struct.pack(
        f">{array.ndim}I", *array.shape
    )
    return header + array.astype(array.dtype.newbyteorder(">")).tobytes()


def write_idx(path: Path, array: np.ndarray, *, gz: bool = False) -> Path:
    data = idx_bytes(array)
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    return path


def random_split(rng: np.random.Generator, n: int) -> tuple[np.ndarray, np.ndarray]:
    return rng.integers(0, 256, (n, 28, 28), dtype=np.uint8), rng.integers(0, 10, n, dtype=np.uint8)


def write_idx_dataset(directory: Path, *, gz: bool = False, seed: int = 0) -> dict[str, np.ndarray]:
    """The four standard IDX files (6 train, 4 test images) in ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    arrays: dict[str, np.ndarray] = {}
    arrays["train_x"], arrays["train_y"] = random_split(rng, 6)
    arrays["test_x"], arrays["test_y"] = random_split(rng, 4)
    suffix = ".gz" if gz else ""
    for key, base in (
        ("train_x", "train-images-idx3-ubyte"),
        ("train_y", "train-labels-idx1-ubyte"),
        ("test_x", "t10k-images-idx3-ubyte"),
        ("test_y", "t10k-labels-idx1-ubyte"),
    ):
        write_idx(directory / f"{base}{suffix}", arrays[key], gz=gz)
    return arrays


def cifar_images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def batch_bytes(n: int = 3, seed: int = 0, variant: str = "py2", tmp: Path | None = None) -> bytes:
    """Bytes of a valid batch of ``n`` images."""
    images = cifar_images(n, seed)
    labels = [int(v) for v in np.arange(n) % 10]
    if variant == "py2":
        names = [f"img_{i}.png".encode() for i in range(n)]
        return py2_batch_bytes(images_to_rows(images), labels, names, b"training batch 1 of 5")
    assert tmp is not None
    return write_cifar_batch(
        tmp / f"batch_{variant}", images_to_rows(images), labels, variant=variant
    ).read_bytes()


class _Evil:
    """Pickles as a call of ``os.system`` (never executed by the reader)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return os.system, (self.command,)


# --------------------------------------------------------------------------------------------
# IDX
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("gz", [False, True])
def test_read_idx_round_trip(tmp_path: Path, gz: bool) -> None:
    images = np.random.default_rng(1).integers(0, 256, (5, 28, 28), dtype=np.uint8)
    out = read_idx(write_idx(tmp_path / "train-images-idx3-ubyte", images, gz=gz))
    assert out.dtype == np.uint8 and out.shape == (5, 28, 28)
    np.testing.assert_array_equal(out, images)
    assert out.flags.writeable


def test_gzip_is_detected_by_content_not_name(tmp_path: Path) -> None:
    labels = np.arange(10, dtype=np.uint8)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "labels.gz", labels)), labels)
    np.testing.assert_array_equal(read_idx(write_idx(tmp_path / "labels", labels, gz=True)), labels)


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
def test_read_idx_all_type_codes(tmp_path: Path, dtype: type) -> None:
    array = (np.arange(24).reshape(2, 3, 4) - 7).astype(dtype)
    out = read_idx(write_idx(tmp_path / "x.idx", array))
    np.testing.assert_array_equal(out, array)
    assert out.dtype == np.dtype(dtype) and out.dtype.isnative


def test_wrong_magic(tmp_path: Path) -> None:
    path = tmp_path / "train-images-idx3-ubyte"
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(100))
    with pytest.raises(
        DataError, match=r"train-images-idx3-ubyte: not an IDX file: magic bytes 89 50 4e 47"
    ):
        read_idx(path)


def test_unknown_type_code() -> None:
    with pytest.raises(DataError, match=r"unknown IDX type code 0x07"):
        parse_idx(bytes([0, 0, 0x07, 1, 0, 0, 0, 1, 5]), "f")


def test_zero_dimensions() -> None:
    with pytest.raises(DataError, match="0 dimensions"):
        parse_idx(bytes([0, 0, 0x08, 0]), "f")


@pytest.mark.parametrize("data", [b"", b"\x00\x00\x08"])
def test_shorter_than_magic(data: bytes) -> None:
    with pytest.raises(DataError, match="shorter than the 4-byte magic"):
        parse_idx(data, "f")


def test_truncated_header() -> None:
    with pytest.raises(
        DataError, match=r"truncated IDX header: 3 dimensions need 16 bytes, found 10"
    ):
        parse_idx(bytes([0, 0, 0x08, 3]) + bytes(6), "f")


def test_truncated_payload_message(tmp_path: Path) -> None:
    path = tmp_path / "mnist" / "train-images-idx3-ubyte"
    path.parent.mkdir()
    path.write_bytes(bytes([0, 0, 8, 3]) + struct.pack(">3I", 60000, 28, 28) + bytes(1000))
    expected = (
        f"{path}: truncated IDX file: header says 47040000 bytes of data, found 1000; "
        "re-download or re-extract it"
    )
    with pytest.raises(DataError) as info:
        read_idx(path)
    assert str(info.value) == expected


def test_trailing_bytes(tmp_path: Path) -> None:
    path = tmp_path / "labels"
    path.write_bytes(idx_bytes(np.arange(5, dtype=np.uint8)) + b"junk")
    with pytest.raises(DataError, match="4 trailing bytes after the 5 bytes"):
        read_idx(path)


@pytest.mark.parametrize(
    "mangle",
    [
        lambda gz: gz[: len(gz) // 2],  # truncated stream
        lambda gz: gz[:10] + bytes(b ^ 0xFF for b in gz[10:30]) + gz[30:],  # corrupt deflate data
        lambda gz: gz[:-8] + b"\x00" * 8,  # wrong CRC and length
        lambda gz: b"\x1f\x8b" + b"not really gzip",
    ],
)
def test_corrupt_gzip(tmp_path: Path, mangle: object) -> None:
    data = gzip.compress(idx_bytes(np.arange(200, dtype=np.uint8)), mtime=0)
    path = tmp_path / "labels.gz"
    path.write_bytes(mangle(data))  # type: ignore[operator]
    with pytest.raises(
        DataError, match=r"labels\.gz: (corrupt gzip data|truncated IDX|not an IDX)"
    ):
        read_idx(path)


def test_missing_and_unreadable_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="nope: file not found"):
        read_idx(tmp_path / "nope")
    with pytest.raises(DataError, match="cannot read the file"):
        read_idx(tmp_path)


@pytest.mark.parametrize(
    ("name", "layout", "gz"),
    [
        ("mnist", "", False),
        ("mnist", "mnist", True),
        ("mnist", "MNIST/raw", True),
        ("fmnist", "", True),
        ("fmnist", "fmnist", False),
        ("fmnist", "fashion-mnist", True),
        ("fmnist", "FashionMNIST/raw", False),
    ],
)
def test_read_idx_dataset_layouts(tmp_path: Path, name: str, layout: str, gz: bool) -> None:
    arrays = write_idx_dataset(tmp_path / layout if layout else tmp_path, gz=gz)
    train_x, train_y, test_x, test_y = read_idx_dataset(tmp_path, name)
    assert train_x.shape == (6, 28, 28, 1) and test_x.shape == (4, 28, 28, 1)
    assert train_x.dtype == np.uint8 and train_y.dtype == np.int64 and test_y.dtype == np.int64
    np.testing.assert_array_equal(train_x[..., 0], arrays["train_x"])
    np.testing.assert_array_equal(test_x[..., 0], arrays["test_x"])
    np.testing.assert_array_equal(train_y, arrays["train_y"])
    np.testing.assert_array_equal(test_y, arrays["test_y"])


def test_read_idx_dataset_mixed_compression(tmp_path: Path) -> None:
    arrays = write_idx_dataset(tmp_path, gz=True)
    (tmp_path / "t10k-labels-idx1-ubyte.gz").unlink()
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", arrays["test_y"])
    np.testing.assert_array_equal(read_idx_dataset(tmp_path, "mnist")[3], arrays["test_y"])


def test_label_image_count_mismatch(tmp_path: Path) -> None:
    write_idx_dataset(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(5, dtype=np.uint8))
    with pytest.raises(
        DataError,
        match=r"train-labels-idx1-ubyte: 5 labels for 6 images in train-images-idx3-ubyte",
    ):
        read_idx_dataset(tmp_path, "mnist")


def test_labels_out_of_range(tmp_path: Path) -> None:
    write_idx_dataset(tmp_path)
    write_idx(tmp_path / "t10k-labels-idx1-ubyte", np.array([0, 1, 12, 3], dtype=np.uint8))
    with pytest.raises(DataError, match=r"t10k-labels-idx1-ubyte: label 12 is outside 0\.\.9"):
        read_idx_dataset(tmp_path, "mnist")


@pytest.mark.parametrize(
    "images",
    [
        np.zeros((6, 32, 32), dtype=np.uint8),
        np.zeros((6, 28, 28), dtype=np.int32),
        np.zeros((6, 784), dtype=np.uint8),
    ],
)
def test_images_of_wrong_shape_or_type(tmp_path: Path, images: np.ndarray) -> None:
    write_idx_dataset(tmp_path)
    write_idx(tmp_path / "train-images-idx3-ubyte", images)
    with pytest.raises(DataError, match=r"expected uint8 images of shape \(N, 28, 28\)"):
        read_idx_dataset(tmp_path, "mnist")


def test_labels_of_wrong_type(tmp_path: Path) -> None:
    write_idx_dataset(tmp_path)
    write_idx(tmp_path / "train-labels-idx1-ubyte", np.zeros(6, dtype=np.int16))
    with pytest.raises(DataError, match="expected a 1-D uint8 label array"):
        read_idx_dataset(tmp_path, "mnist")


def test_missing_dataset_files(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="data directory not found"):
        read_idx_dataset(tmp_path / "absent", "mnist")
    write_idx_dataset(tmp_path / "mnist")
    (tmp_path / "mnist" / "t10k-images-idx3-ubyte").unlink()
    with pytest.raises(
        DataError,
        match=r"no complete mnist IDX data set found: looked for train-images-idx3-ubyte\[\.gz\]",
    ) as info:
        read_idx_dataset(tmp_path, "mnist")
    message = str(info.value)
    assert "t10k-images-idx3-ubyte[.gz]" in message and str(tmp_path / "MNIST" / "raw") in message
    with pytest.raises(DataError, match="no complete fmnist"):
        read_idx_dataset(tmp_path, "fmnist")  # MNIST files are not taken for Fashion-MNIST


def test_unknown_idx_dataset_name(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="no IDX data set named 'kmnist'"):
        read_idx_dataset(tmp_path, "kmnist")


def test_corrupt_file_in_dataset(tmp_path: Path) -> None:
    write_idx_dataset(tmp_path, gz=True)
    path = tmp_path / "train-images-idx3-ubyte.gz"
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(DataError, match=r"train-images-idx3-ubyte\.gz: corrupt gzip data"):
        read_idx_dataset(tmp_path, "mnist")


_HEADERS = st.sampled_from(
    [b"", b"\x00\x00\x08\x01", b"\x00\x00\x08\x03", b"\x00\x00\x0e\x02", b"\x00\x00\x0b\x01"]
)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(header=_HEADERS, body=st.binary(max_size=64), gz=st.booleans())
def test_parse_idx_any_bytes_loads_or_raises_data_error(
    header: bytes, body: bytes, gz: bool
) -> None:
    data = header + body
    if gz:
        data = gzip.compress(data, mtime=0)[: 10 + len(body)]  # often truncated
    try:
        out = parse_idx(data, "fuzz")
    except DataError:
        return
    assert isinstance(out, np.ndarray)


# --------------------------------------------------------------------------------------------
# CIFAR-10
# --------------------------------------------------------------------------------------------


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


@pytest.mark.parametrize("protocol", [0, 1])
def test_cifar_text_and_old_binary_protocols(protocol: int) -> None:
    images = cifar_images(2, seed=7)
    batch = {"data": images_to_rows(images), "labels": [3, 4], "filenames": ["a", "b"]}
    x, y = parse_cifar_batch(pickle.dumps(batch, protocol=protocol))
    np.testing.assert_array_equal(x, images)
    assert y.tolist() == [3, 4]


def test_cifar_empty_batch_from_python3() -> None:
    blob = pickle.dumps({b"data": np.zeros((0, 3072), np.uint8), b"labels": []}, protocol=2)
    images, labels = parse_cifar_batch(blob)
    assert images.shape == (0, 32, 32, 3) and labels.shape == (0,)


def _write_cifar_dir(directory: Path, variant: str = "py2") -> tuple[np.ndarray, np.ndarray]:
    directory.mkdir(parents=True, exist_ok=True)
    all_images, all_labels = [], []
    for i, name in enumerate([*readers.CIFAR10_TRAIN_BATCHES, readers.CIFAR10_TEST_BATCH]):
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


def test_foreign_global_is_rejected_without_executing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    command = f"touch {marker}"
    evil = {b"data": _Evil(command), b"labels": [1]}
    for protocol in (0, 1, 2, 4, 5):
        with pytest.raises(DataError, match=r"refusing pickle global '(os|posix|nt)\.system'"):
            parse_cifar_batch(pickle.dumps(evil, protocol=protocol), "evil")
    # Hidden in an otherwise valid batch, after the pixel data.
    rows = images_to_rows(cifar_images(1))
    hidden = {b"batch_label": b"x", b"labels": [1], b"data": rows, b"filenames": [_Evil(command)]}
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(hidden, protocol=2))
    with pytest.raises(DataError, match=r"data_batch_1: refusing pickle global"):
        read_cifar_batch(path)
    assert not marker.exists()


def test_builtin_eval_via_stack_global_is_rejected() -> None:
    blob = b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93\x8c\x0b1/0 or None\x85R."
    with pytest.raises(DataError, match=r"refusing pickle global 'builtins\.eval'"):
        parse_cifar_batch(blob)


@pytest.mark.parametrize("cut", [0, 1, 2, 20, 150, 3000, -300, -2, -1])
def test_truncated_batch(cut: int) -> None:
    blob = batch_bytes(3)
    with pytest.raises(DataError, match=r"<bytes>: corrupt or truncated pickle stream"):
        parse_cifar_batch(blob[:cut])


def test_trailing_bytes_after_batch() -> None:
    with pytest.raises(DataError, match="5 trailing bytes after the pickle"):
        parse_cifar_batch(batch_bytes(2) + b"extra")


def _rows(n: int) -> np.ndarray:
    return images_to_rows(cifar_images(n))


@pytest.mark.parametrize(
    ("batch", "message"),
    [
        ([1, 2, 3], "holds a list, not a CIFAR batch dict"),
        ({b"data": _rows(2)}, "no 'labels' entry"),
        ({b"labels": [1]}, "no 'data' entry"),
        (
            {b"data": _rows(2), b"labels": [1, 2], b"fine_labels": [1, 2]},
            "unexpected key b'fine_labels'",
        ),
        ({b"data": _rows(2), "data": _rows(2), b"labels": [1, 2]}, "unexpected key 'data'"),
        ({b"data": _rows(2), b"labels": [1, 10]}, r"label 10 is outside 0\.\.9"),
        ({b"data": _rows(2), b"labels": [1, -1]}, r"label -1 is outside 0\.\.9"),
        ({b"data": _rows(2), b"labels": [1, True]}, "'labels' is not a list of integers"),
        ({b"data": _rows(2), b"labels": (1, 2)}, "'labels' is not a list of integers"),
        (
            {b"data": _rows(2), b"labels": [1, 2, 3]},
            r"'data' has shape \(2, 3072\), expected \(3, 3072\)",
        ),
        (
            {b"data": _rows(2).reshape(2, 3, 32, 32), b"labels": [1, 2]},
            r"'data' has shape \(2, 3, 32, 32\)",
        ),
        (
            {b"data": _rows(2).astype(np.float32), b"labels": [1, 2]},
            "unexpected call of numpy.dtype",
        ),
        ({b"data": _rows(2).astype(np.int64), b"labels": [1, 2]}, "unexpected call of numpy.dtype"),
        (
            {b"data": np.array([b"x", 1], dtype=object), b"labels": [1, 2]},
            "unexpected call of numpy.dtype",
        ),
        ({b"data": b"\x00" * 6144, b"labels": [1, 2]}, "'data' is not a numpy uint8 array"),
        (
            {b"data": _rows(2), b"labels": [1, 2], b"filenames": [b"a"]},
            "'filenames' is not a list of 2 strings",
        ),
        (
            {b"data": _rows(2), b"labels": [1, 2], b"batch_label": 5},
            "'batch_label' is not a string",
        ),
        (
            {b"data": _rows(1), b"labels": [1], b"filenames": {b"a"}},
            r"opcode EMPTY_SET at byte|global '__builtin__\.set'",
        ),
        ({b"data": _rows(1), b"labels": [1.0]}, "opcode BINFLOAT at byte"),
        ({(1,): _rows(1), b"labels": [1]}, "unexpected dict key of type tuple"),
    ],
)
@pytest.mark.parametrize("protocol", [2, 5])
def test_wrong_structure_is_rejected(batch: object, message: str, protocol: int) -> None:
    with pytest.raises(DataError, match=message):
        parse_cifar_batch(pickle.dumps(batch, protocol=protocol), "b")


def test_array_payload_shorter_than_shape() -> None:
    blob = bytearray(batch_bytes(2))
    start = blob.index(b"T" + struct.pack("<i", 2 * 3072))
    blob[start + 1 : start + 5] = struct.pack("<i", 3072)  # BINSTRING now holds 3072 bytes ...
    del blob[start + 5 + 3072 : start + 5 + 6144]  # ... so the (2, 3072) shape does not match
    with pytest.raises(DataError, match=r"shape \(2, 3072\) needs 6144 bytes, found 3072"):
        parse_cifar_batch(bytes(blob))


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"\x80\x02K\x01K\x02.", "unbalanced stack at STOP"),
        (b"\x80\x02(K\x01.", "unbalanced stack at STOP"),
        (b"\x80\x02h\x05.", "memo entry 5 is missing"),
        (b"\x80\x02\x85.", "stack underflow"),
        (b"\x80\x02K\x01K\x02a.", "APPEND to a non-list"),
        (b"\x80\x02K\x01(K\x02u.", "SETITEMS on a non-dict"),
        (b"\x80\x02}(K\x01u.", "odd number of dict items"),
        (b"\x80\x02K\x01)R.", "REDUCE needs a global and a tuple"),
        (b"\x80\x02K\x01K\x02b.", "BUILD on an unexpected object"),
        (b"\x80\x020.", "opcode POP"),
    ],
)
def test_malformed_streams(blob: bytes, message: str) -> None:
    with pytest.raises(DataError, match=message):
        parse_cifar_batch(blob)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.binary(max_size=200))
def test_parse_cifar_random_bytes_loads_or_raises_data_error(data: bytes) -> None:
    with contextlib.suppress(DataError):
        parse_cifar_batch(b"\x80\x02" + data)


_VALID_BATCHES = {
    "py2": batch_bytes(1),
    "pickle5": pickle.dumps({b"data": _rows(1), b"labels": [4]}, protocol=5),
}


@settings(
    max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    variant=st.sampled_from(sorted(_VALID_BATCHES)),
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4),
    cut=st.one_of(st.none(), st.integers(0, 10**6)),
)
def test_parse_cifar_mutated_batch_loads_or_raises_data_error(
    variant: str, edits: list[tuple[int, int]], cut: int | None
) -> None:
    blob = bytearray(_VALID_BATCHES[variant])
    for position, value in edits:
        blob[position % len(blob)] = value
    if cut is not None:
        del blob[cut % len(blob) :]
    try:
        images, labels = parse_cifar_batch(bytes(blob))
    except DataError:
        return
    assert images.shape == (len(labels), 32, 32, 3) and images.dtype == np.uint8


# --------------------------------------------------------------------------------------------
# bundled subsets
# --------------------------------------------------------------------------------------------

_BUNDLED = Path(readers.__file__).parent / "bundled"
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
