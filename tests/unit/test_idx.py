"""The IDX reader (:mod:`rvepfl.data.idx`), on small files in the exact MNIST format."""

from __future__ import annotations

import gzip
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rvepfl.data.idx import parse_idx, read_idx, read_idx_dataset
from rvepfl.errors import DataError

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
