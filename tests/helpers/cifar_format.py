"""Write CIFAR-10 "python version" batches in the real on-disk formats, for tests.

Writing pickles is harmless (only *reading* one can execute code), so this helper may use the
``pickle`` module; the package itself never does.

Variants
--------
``"py2"`` (default)
    The layout of the original files, written by Python 2 ``cPickle`` with protocol 2: a dict
    with ``str`` keys (``SHORT_BINSTRING``), labels as a list of ints, filenames as ``str``,
    and the pixels as ``numpy.core.multiarray._reconstruct(numpy.ndarray, (0,), 'b')`` whose
    BUILD state is ``(1, (N, 3072), dtype('u1'), False, <BINSTRING payload>)``. The stream is
    assembled opcode by opcode because Python 3 cannot emit Python 2 ``str`` objects; memo
    indices start at 1, as in ``cPickle``.
``"pickle2"`` .. ``"pickle5"``
    What ``pickle.dump`` of Python 3 and this numpy produce for a batch re-saved with that
    protocol (bytes keys and filenames, as a Python 3 unpickler with ``encoding="bytes"`` returns them):
    protocol 2 turns bytes into ``_codecs.encode(str, 'latin1')``, protocols 3-4 use
    ``BINBYTES``, protocol 5 uses ``numpy._core.numeric._frombuffer`` with an in-band buffer.
"""

from __future__ import annotations

import pickle
import struct
from collections.abc import Sequence
from pathlib import Path

import numpy as np

__all__ = [
    "VARIANTS",
    "batch_bytes",
    "cifar_images",
    "cifar_rows",
    "images_to_rows",
    "py2_batch_bytes",
    "write_cifar_batch",
]

VARIANTS = ("py2", "pickle2", "pickle3", "pickle4", "pickle5")
_ROW = 3 * 32 * 32


def images_to_rows(images: np.ndarray) -> np.ndarray:
    """uint8 (N, 32, 32, 3) -> the file's (N, 3072) rows: 1024 R, then 1024 G, then 1024 B."""
    return np.ascontiguousarray(images.transpose(0, 3, 1, 2).reshape(len(images), _ROW))


class _Py2Writer:
    """Emit protocol-2 opcodes the way Python 2's cPickle does for this structure."""

    def __init__(self) -> None:
        self.out = bytearray(b"\x80\x02")  # PROTO 2
        self.next_memo = 1

    def put(self) -> None:
        if self.next_memo < 256:
            self.out += b"q" + bytes([self.next_memo])  # BINPUT
        else:
            self.out += b"r" + struct.pack("<I", self.next_memo)  # LONG_BINPUT
        self.next_memo += 1

    def string(self, value: bytes) -> None:
        if len(value) < 256:
            self.out += b"U" + bytes([len(value)]) + value  # SHORT_BINSTRING
        else:
            self.out += b"T" + struct.pack("<i", len(value)) + value  # BINSTRING
        self.put()

    def integer(self, value: int) -> None:
        if 0 <= value < 256:
            self.out += b"K" + bytes([value])  # BININT1
        elif 0 <= value < 65536:
            self.out += b"M" + struct.pack("<H", value)  # BININT2
        else:
            self.out += b"J" + struct.pack("<i", value)  # BININT

    def global_(self, module: str, name: str) -> None:
        self.out += b"c" + f"{module}\n{name}\n".encode("ascii")  # GLOBAL
        self.put()

    def list_of(self, items: Sequence[object]) -> None:
        self.out += b"]"  # EMPTY_LIST
        self.put()
        for start in range(0, len(items), 1000):  # cPickle batches APPENDS by 1000
            self.out += b"("  # MARK
            for item in items[start : start + 1000]:
                if isinstance(item, bytes):
                    self.string(item)
                else:
                    self.integer(int(item))  # type: ignore[call-overload]
            self.out += b"e"  # APPENDS

    def uint8_dtype(self) -> None:
        self.global_("numpy", "dtype")
        self.string(b"u1")
        self.integer(0)
        self.integer(1)
        self.out += b"\x87"  # TUPLE3
        self.put()
        self.out += b"R"  # REDUCE
        self.put()
        self.out += b"("  # MARK: (3, '|', None, None, None, -1, -1, 0)
        self.integer(3)
        self.string(b"|")
        self.out += b"NNN"
        self.integer(-1)
        self.integer(-1)
        self.integer(0)
        self.out += b"t"  # TUPLE
        self.put()
        self.out += b"b"  # BUILD

    def array(self, rows: np.ndarray) -> None:
        self.global_("numpy.core.multiarray", "_reconstruct")
        self.global_("numpy", "ndarray")
        self.integer(0)
        self.out += b"\x85"  # TUPLE1
        self.put()
        self.string(b"b")
        self.out += b"\x87"  # TUPLE3
        self.put()
        self.out += b"R"  # REDUCE
        self.put()
        self.out += b"("  # MARK: (1, shape, dtype, is_fortran, raw)
        self.integer(1)
        for dim in rows.shape:
            self.integer(dim)
        self.out += b"\x86"  # TUPLE2
        self.put()
        self.uint8_dtype()
        self.out += b"\x89"  # NEWFALSE
        self.string(rows.tobytes())  # BINSTRING for any real batch (>= 256 bytes)
        self.out += b"t"  # TUPLE
        self.put()
        self.out += b"b"  # BUILD


def py2_batch_bytes(
    rows: np.ndarray, labels: Sequence[int], filenames: Sequence[bytes], batch_label: bytes
) -> bytes:
    """The bytes of a batch as Python 2 cPickle (protocol 2) wrote the original files."""
    w = _Py2Writer()
    w.out += b"}"  # EMPTY_DICT
    w.put()
    w.out += b"("  # MARK; key order of the original files
    w.string(b"batch_label")
    w.string(batch_label)
    w.string(b"labels")
    w.list_of([int(v) for v in labels])
    w.string(b"data")
    w.array(rows)
    w.string(b"filenames")
    w.list_of(list(filenames))
    w.out += b"u"  # SETITEMS
    w.out += b"."  # STOP
    return bytes(w.out)


def write_cifar_batch(
    path: str | Path,
    data: np.ndarray,
    labels: Sequence[int],
    filenames: Sequence[str] | None = None,
    batch_label: str = "training batch 1 of 5",
    *,
    variant: str = "py2",
) -> Path:
    """Write a CIFAR-10 batch file in the real format.

    Parameters
    ----------
    path
        File to write.
    data
        uint8 rows (N, 3072) as stored in the file (see :func:`images_to_rows`).
    labels
        N class indices.
    filenames
        N image file names; default ``img_00000.png`` and so on.
    batch_label
        The batch's description string.
    variant
        One of :data:`VARIANTS` (see the module docstring).

    Returns
    -------
    pathlib.Path
        ``path``.
    """
    rows = np.ascontiguousarray(data, dtype=np.uint8)
    if rows.ndim != 2:
        raise ValueError(f"data must be 2-D (N, 3072), got shape {rows.shape}")
    names = (
        list(filenames) if filenames is not None else [f"img_{i:05d}.png" for i in range(len(rows))]
    )
    encoded = [n.encode("latin-1") for n in names]
    if variant == "py2":
        blob = py2_batch_bytes(rows, labels, encoded, batch_label.encode("latin-1"))
    elif variant in VARIANTS:
        batch = {
            b"batch_label": batch_label.encode("latin-1"),
            b"labels": [int(v) for v in labels],
            b"data": rows,
            b"filenames": encoded,
        }
        blob = pickle.dumps(batch, protocol=int(variant[-1]))
    else:
        raise ValueError(f"unknown variant {variant!r}; choose one of {VARIANTS}")
    path = Path(path)
    path.write_bytes(blob)
    return path


def cifar_images(n: int, seed: int = 0) -> np.ndarray:
    """``n`` random uint8 images (N, 32, 32, 3)."""
    return np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), dtype=np.uint8)


def cifar_rows(n: int) -> np.ndarray:
    """The file's (N, 3072) rows of ``n`` random images."""
    return images_to_rows(cifar_images(n))


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
