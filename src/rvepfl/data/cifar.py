r"""Reader of CIFAR-10's "python version" batches, five for training and ``test_batch``.

Each batch is a pickled dict: ``data``, a uint8 (N, 3072) array whose rows hold an image's 1024
red, then 1024 green, then 1024 blue pixels (32x32, row-major); ``labels``, a list of N ints in
0..9; and optionally ``batch_label`` (a string) and ``filenames`` (N strings). Keys and strings
may be ``str`` or ``bytes``, as Python 2 wrote them or Python 3 re-saved them.

The batches are never unpickled: :func:`rvepfl.data.unpickler.interpret` turns the stream into
inert values (see that module for the accepted pickle variants and what it refuses), and this
module then checks the batch's exact structure: no key other than those four, labels in 0..9, a
pixel array of shape (N, 3072) for N labels. :func:`parse_cifar_batch` decodes bytes,
:func:`read_cifar_batch` a file and :func:`read_cifar10` finds and reads all six batches.

Every problem raises :class:`rvepfl.errors.DataError` with a one-line message that names the
file, what is wrong and how to fix it; no other exception type escapes for malformed input.

>>> parse_cifar_batch(b"\x80\x02K\x07.", "data_batch_1")
Traceback (most recent call last):
...
rvepfl.errors.DataError: data_batch_1: the pickle holds a int, not a CIFAR batch dict; re-download or re-extract cifar-10-python.tar.gz
"""  # noqa: E501 - the doctest's expected error is one line

from __future__ import annotations

from pathlib import Path

import numpy as np

from rvepfl.data.files import is_file, read_bytes, require_dir
from rvepfl.data.unpickler import Fail, InertArray, as_text, interpret
from rvepfl.errors import DataError, short_repr

__all__ = [
    "CIFAR10_TEST_BATCH",
    "CIFAR10_TRAIN_BATCHES",
    "parse_cifar_batch",
    "read_cifar10",
    "read_cifar_batch",
]

CIFAR10_TRAIN_BATCHES: tuple[str, ...] = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_BATCH = "test_batch"
_CIFAR_SUBDIRS: tuple[str, ...] = ("cifar-10-batches-py", "cifar10", "cifar10/cifar-10-batches-py")
_CIFAR_SIDE = 32
_CIFAR_ROW = 3 * _CIFAR_SIDE * _CIFAR_SIDE  # 1024 R, then 1024 G, then 1024 B
_CIFAR_KEYS = frozenset({"batch_label", "labels", "data", "filenames"})
_CIFAR_FIX = "re-download or re-extract cifar-10-python.tar.gz"
_NUM_CLASSES = 10


def _batch_error(source: str) -> Fail:
    """The ``fail`` of one batch: a :class:`DataError` naming ``source`` and the fix."""

    def fail(what: str) -> DataError:
        return DataError(f"{source}: {what}; {_CIFAR_FIX}")

    return fail


def _cifar_fields(obj: object, fail: Fail) -> dict[str, object]:
    """The batch dict with text keys, checked against the allowed key set."""
    if not isinstance(obj, dict):
        raise fail(f"the pickle holds a {type(obj).__name__}, not a CIFAR batch dict")
    fields: dict[str, object] = {}
    for key, value in obj.items():
        text = as_text(key)
        if text not in _CIFAR_KEYS or text in fields:
            shown = repr(key)[:60]
            raise fail(
                f"unexpected key {shown} (a CIFAR-10 batch has {', '.join(sorted(_CIFAR_KEYS))})"
            )
        fields[text] = value
    for needed in ("data", "labels"):
        if needed not in fields:
            raise fail(f"the batch has no {needed!r} entry")
    return fields


def _cifar_labels(value: object, fail: Fail) -> np.ndarray:
    """The ``labels`` list as int64, each in 0..9."""
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise fail("'labels' is not a list of integers")
    bad = [v for v in value if not 0 <= v < _NUM_CLASSES]
    if bad:
        raise fail(f"label {short_repr(bad[0])} is outside 0..{_NUM_CLASSES - 1}")
    return np.asarray(value, dtype=np.int64).reshape(-1)


def _cifar_images(value: object, count: int, fail: Fail) -> np.ndarray:
    """The ``data`` array as uint8 (N, 32, 32, 3)."""
    if not isinstance(value, InertArray) or value.raw is None or value.shape is None:
        raise fail("'data' is not a numpy uint8 array")
    if value.shape != (count, _CIFAR_ROW):
        raise fail(
            f"'data' has shape {short_repr(value.shape)}, expected ({count}, {_CIFAR_ROW}) "
            f"for {count} labels"
        )
    rows = np.frombuffer(value.raw, dtype=np.uint8).reshape(
        value.shape, order="F" if value.fortran else "C"
    )
    planes = rows.reshape(count, 3, _CIFAR_SIDE, _CIFAR_SIDE)
    return np.ascontiguousarray(planes.transpose(0, 2, 3, 1))


def _check_cifar_extras(
    fields: dict[str, object], count: int, fail: Fail
) -> None:
    """``batch_label`` must be text; ``filenames`` a list of ``count`` texts."""
    if "batch_label" in fields and as_text(fields["batch_label"]) is None:
        raise fail("'batch_label' is not a string")
    if "filenames" in fields:
        names = fields["filenames"]
        if (
            not isinstance(names, list)
            or len(names) != count
            or any(as_text(n) is None for n in names)
        ):
            raise fail(f"'filenames' is not a list of {count} strings")


def parse_cifar_batch(data: bytes, source: str = "<bytes>") -> tuple[np.ndarray, np.ndarray]:
    """Decode one CIFAR-10 python batch without unpickling it.

    Parameters
    ----------
    data
        The batch file's bytes (a pickle; :mod:`rvepfl.data.unpickler` lists the accepted variants).
    source
        Name of the file, used in error messages.

    Returns
    -------
    tuple of numpy.ndarray
        Images uint8 (N, 32, 32, 3) and labels int64 (N,).

    Raises
    ------
    DataError
        The stream is truncated or corrupt, names a forbidden global, uses a forbidden opcode,
        or does not have the exact structure of a CIFAR-10 batch.
    """
    fail = _batch_error(source)
    fields = _cifar_fields(interpret(data, fail), fail)
    labels = _cifar_labels(fields["labels"], fail)
    images = _cifar_images(fields["data"], len(labels), fail)
    _check_cifar_extras(fields, len(labels), fail)
    return images, labels


def read_cifar_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 python batch file; see :func:`parse_cifar_batch`."""
    path = Path(path)
    return parse_cifar_batch(read_bytes(path), str(path))


def _find_cifar_dir(data_dir: Path) -> Path | None:
    """The first of ``data_dir`` and its usual sub-directories holding all six batches."""
    names = (*CIFAR10_TRAIN_BATCHES, CIFAR10_TEST_BATCH)
    for directory in (data_dir, *(data_dir / sub for sub in _CIFAR_SUBDIRS)):
        if all(is_file(directory / n) for n in names):
            return directory
    return None


def read_cifar10(data_dir: str | Path) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Read CIFAR-10's python batches (``data_batch_1`` .. ``data_batch_5``, ``test_batch``).

    The six files are looked for together in ``data_dir``, ``data_dir/cifar-10-batches-py``,
    ``data_dir/cifar10`` and ``data_dir/cifar10/cifar-10-batches-py``.

    Parameters
    ----------
    data_dir
        Directory holding the batches (or one of the layouts above).

    Returns
    -------
    tuple of numpy.ndarray
        ``(train_x, train_y, test_x, test_y)``: images uint8 (N, 32, 32, 3) in RGB order,
        labels int64; 50,000 and 10,000 images for the real data set.

    Raises
    ------
    DataError
        Missing directory or files, or any batch that is not a well-formed CIFAR-10 batch.
    """
    data_dir = Path(data_dir)
    require_dir(data_dir)
    directory = _find_cifar_dir(data_dir)
    if directory is None:
        wanted = ", ".join((*CIFAR10_TRAIN_BATCHES, CIFAR10_TEST_BATCH))
        where = ", ".join(str(d) for d in (data_dir, *(data_dir / s for s in _CIFAR_SUBDIRS)))
        raise DataError(
            f"{data_dir}: no CIFAR-10 python batches found: looked for {wanted} together in "
            f"{where}; extract cifar-10-python.tar.gz there"
        )
    train = [read_cifar_batch(directory / name) for name in CIFAR10_TRAIN_BATCHES]
    test_x, test_y = read_cifar_batch(directory / CIFAR10_TEST_BATCH)
    train_x = np.concatenate([x for x, _ in train])
    train_y = np.concatenate([y for _, y in train])
    return train_x, train_y, test_x, test_y
