"""Reader of MNIST-format IDX files, and of the four files of MNIST and Fashion-MNIST.

An IDX file is a 4-byte magic (``00 00``, a type code, the number of dimensions), one big-endian
``uint32`` size per dimension, then the payload in row-major order; the MNIST files are often
gzip-compressed, which is recognised from the content, not the name. :func:`parse_idx` decodes
bytes, :func:`read_idx` a file, and :func:`read_idx_dataset` finds and checks the four files of a
data set (:data:`IDX_FILES`): (N, 28, 28) uint8 images and as many labels in 0..9 per split.

Every problem with a file (missing, unreadable, truncated, corrupt, of another format) raises
:class:`rvepfl.errors.DataError` with a one-line message that names the file, what is wrong and
how to fix it; no other exception type escapes for malformed input.

>>> parse_idx(bytes([0, 0, 0x08, 1, 0, 0, 0, 3, 7, 8, 9]))
array([7, 8, 9], dtype=uint8)
>>> parse_idx(b"GIF89a", "img.idx")
Traceback (most recent call last):
...
rvepfl.errors.DataError: img.idx: not an IDX file: magic bytes 47 49 46 38 should start with 00 00; point the reader at MNIST-format IDX files
"""  # noqa: E501 - the doctest's expected error is one line

from __future__ import annotations

import gzip
import math
import zlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from rvepfl.data.files import is_file, read_bytes, require_dir
from rvepfl.errors import DataError

__all__ = ["IDX_FILES", "parse_idx", "read_idx", "read_idx_dataset"]

#: IDX type code -> numpy dtype of the payload (all multi-byte types are big-endian).
_IDX_DTYPES: dict[int, np.dtype[Any]] = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}
_GZIP_MAGIC = b"\x1f\x8b"
_REFETCH = "re-download or re-extract it"

#: The four files of an IDX data set, keyed by role, without the optional ``.gz``.
IDX_FILES: dict[str, str] = {
    "train_images": "train-images-idx3-ubyte",
    "train_labels": "train-labels-idx1-ubyte",
    "test_images": "t10k-images-idx3-ubyte",
    "test_labels": "t10k-labels-idx1-ubyte",
}

#: Sub-directories of ``data_dir`` searched for each IDX data set, besides ``data_dir`` itself.
_IDX_SUBDIRS: dict[str, tuple[str, ...]] = {
    "mnist": ("mnist", "MNIST"),
    "fmnist": ("fmnist", "fashion-mnist", "fashion_mnist", "FashionMNIST"),
}
_IMAGE_SIZE = 28
_NUM_CLASSES = 10
#: More dimensions than any array library here supports (numpy 1.x allows 32).
_IDX_MAX_DIMS = 32
_MAX_ARRAY_BYTES = np.iinfo(np.intp).max


def _gunzip(data: bytes, source: str) -> bytes:
    """Decompress gzip ``data``; any corruption raises :class:`DataError`."""
    try:
        return gzip.decompress(data)
    except (OSError, EOFError, zlib.error, ValueError) as exc:
        detail = str(exc) or type(exc).__name__
        raise DataError(f"{source}: corrupt gzip data ({detail}); {_REFETCH}") from None


def parse_idx(data: bytes, source: str = "<bytes>") -> np.ndarray:
    """Decode the bytes of an IDX file, raw or gzip-compressed.

    Parameters
    ----------
    data
        The file's bytes. Gzip is recognised by its magic bytes ``1f 8b``, not by a file name.
    source
        Name of the file, used in error messages.

    Returns
    -------
    numpy.ndarray
        A writable array of the shape the header declares, in native byte order (uint8 for the
        type code 0x08 that MNIST and Fashion-MNIST use).

    Raises
    ------
    DataError
        Bad magic bytes, unknown type code, no dimensions, a truncated header or payload,
        trailing bytes, or corrupt gzip data.
    """
    if data[:2] == _GZIP_MAGIC:
        data = _gunzip(data, source)
    dtype, shape, offset = _idx_header(data, source)
    expected = int(np.prod(shape, dtype=object)) * dtype.itemsize
    found = len(data) - offset
    if found < expected:
        raise DataError(
            f"{source}: truncated IDX file: header says {expected} bytes of data, found {found}; "
            f"{_REFETCH}"
        )
    if found > expected:
        raise DataError(
            f"{source}: IDX file has {found - expected} trailing bytes after the {expected} bytes "
            f"of data its header declares; {_REFETCH}"
        )
    flat = np.frombuffer(data, dtype=dtype, offset=offset, count=expected // dtype.itemsize)
    return flat.reshape(shape).astype(dtype.newbyteorder("="), copy=True)


def _idx_header(data: bytes, source: str) -> tuple[np.dtype[Any], tuple[int, ...], int]:
    """Validate an IDX header; return the payload dtype, the shape and the payload offset."""
    if len(data) < 4:
        raise DataError(
            f"{source}: not an IDX file: {len(data)} bytes, shorter than the 4-byte magic; "
            f"{_REFETCH}"
        )
    zero1, zero2, code, ndim = data[:4]
    if zero1 or zero2:
        raise DataError(
            f"{source}: not an IDX file: magic bytes {data[:4].hex(' ')} should start with 00 00; "
            "point the reader at MNIST-format IDX files"
        )
    if code not in _IDX_DTYPES:
        known = ", ".join(f"0x{c:02X}" for c in _IDX_DTYPES)
        raise DataError(
            f"{source}: unknown IDX type code 0x{code:02X} (known: {known}); {_REFETCH}"
        )
    if ndim == 0:
        raise DataError(f"{source}: IDX header declares 0 dimensions; {_REFETCH}")
    if ndim > _IDX_MAX_DIMS:
        raise DataError(
            f"{source}: IDX header declares {ndim} dimensions, more than the {_IDX_MAX_DIMS} an "
            f"array can have; {_REFETCH}"
        )
    offset = 4 + 4 * ndim
    if len(data) < offset:
        raise DataError(
            f"{source}: truncated IDX header: {ndim} dimensions need {offset} bytes, "
            f"found {len(data)}; {_REFETCH}"
        )
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    dtype = _IDX_DTYPES[code]
    if math.prod(d for d in shape if d) * dtype.itemsize > _MAX_ARRAY_BYTES:
        raise DataError(
            f"{source}: IDX header declares shape {shape}, too large for any array; {_REFETCH}"
        )
    return dtype, shape, offset


def read_idx(path: str | Path) -> np.ndarray:
    """Read an MNIST-format IDX file (raw or gzip-compressed).

    Parameters
    ----------
    path
        The file. Gzip is detected from its content, so the name need not end in ``.gz``.

    Returns
    -------
    numpy.ndarray
        The decoded array; see :func:`parse_idx`.

    Raises
    ------
    DataError
        The file is missing, unreadable or not a well-formed IDX file.
    """
    path = Path(path)
    return parse_idx(read_bytes(path), str(path))


def _idx_search_dirs(data_dir: Path, name: str) -> list[Path]:
    """Directories that may hold the IDX files of ``name``, most specific layouts last."""
    dirs = [data_dir]
    for sub in _IDX_SUBDIRS[name]:
        dirs += [data_dir / sub, data_dir / sub / "raw"]
    return dirs


def _find_idx_files(directory: Path) -> dict[str, Path] | None:
    """The four IDX files in ``directory`` (raw preferred over ``.gz``), or ``None``."""
    found: dict[str, Path] = {}
    for role, base in IDX_FILES.items():
        for candidate in (directory / base, directory / f"{base}.gz"):
            if is_file(candidate):
                found[role] = candidate
                break
        else:
            return None
    return found


def _check_idx_split(images: np.ndarray, labels: np.ndarray, files: Sequence[Path]) -> None:
    """Check one split: (N, 28, 28) uint8 images, N uint8 labels in 0..9."""
    img_file, lbl_file = files
    size = _IMAGE_SIZE
    if images.dtype != np.uint8 or images.ndim != 3 or images.shape[1:] != (size, size):
        raise DataError(
            f"{img_file}: expected uint8 images of shape (N, {size}, {size}), "
            f"got {images.dtype} {images.shape}; is this an MNIST-format images file?"
        )
    if labels.dtype != np.uint8 or labels.ndim != 1:
        raise DataError(
            f"{lbl_file}: expected a 1-D uint8 label array, got {labels.dtype} {labels.shape}; "
            "is this an MNIST-format labels file?"
        )
    if len(labels) != len(images):
        raise DataError(
            f"{lbl_file}: {len(labels)} labels for {len(images)} images in {img_file.name}; "
            "the files belong to different data sets or one is damaged"
        )
    if labels.size and int(labels.max()) >= _NUM_CLASSES:
        raise DataError(
            f"{lbl_file}: label {int(labels.max())} is outside 0..{_NUM_CLASSES - 1}; "
            "is this a 10-class MNIST-format labels file?"
        )


def read_idx_dataset(
    data_dir: str | Path, name: str
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read the four IDX files of MNIST or Fashion-MNIST.

    The files ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``,
    ``t10k-images-idx3-ubyte`` and ``t10k-labels-idx1-ubyte`` (each raw or with ``.gz``) are
    looked for, all four in one directory, in ``data_dir``, then ``data_dir/<alias>`` and
    ``data_dir/<alias>/raw``, where the aliases are ``mnist``/``MNIST`` for ``mnist`` and
    ``fmnist``/``fashion-mnist``/``fashion_mnist``/``FashionMNIST`` for ``fmnist``.

    Parameters
    ----------
    data_dir
        Directory holding the files (or one of the layouts above).
    name
        ``"mnist"`` or ``"fmnist"``.

    Returns
    -------
    tuple of numpy.ndarray
        ``(train_x, train_y, test_x, test_y)``: images uint8 (N, 28, 28, 1), labels int64 (N,).

    Raises
    ------
    DataError
        Unknown name, missing directory or files, malformed files, image/label count mismatch,
        images not 28x28 uint8, or labels outside 0..9.
    """
    if name not in _IDX_SUBDIRS:
        raise DataError(f"no IDX data set named {name!r}; choose one of {', '.join(_IDX_SUBDIRS)}")
    data_dir = Path(data_dir)
    require_dir(data_dir)
    dirs = _idx_search_dirs(data_dir, name)
    for directory in dirs:
        files = _find_idx_files(directory)
        if files is not None:
            return _read_idx_files(files)
    wanted = ", ".join(f"{base}[.gz]" for base in IDX_FILES.values())
    where = ", ".join(str(d) for d in dirs)
    raise DataError(
        f"{data_dir}: no complete {name} IDX data set found: looked for {wanted} "
        f"together in {where}; download the four files there"
    )


def _read_idx_files(
    files: dict[str, Path],
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read and check the four located IDX files."""
    out: list[np.ndarray] = []
    for split in ("train", "test"):
        img_file, lbl_file = files[f"{split}_images"], files[f"{split}_labels"]
        images, labels = read_idx(img_file), read_idx(lbl_file)
        _check_idx_split(images, labels, (img_file, lbl_file))
        out += [images[..., None], labels.astype(np.int64)]
    train_x, train_y, test_x, test_y = out
    return train_x, train_y, test_x, test_y
