"""Pure-numpy readers for the full data sets: MNIST-format IDX files and CIFAR-10 batches.

Every problem with a file (missing, unreadable, truncated, corrupt, of another format) raises
:class:`rvepfl.errors.DataError` with a one-line message that names the file, what is wrong and
how to fix it; no other exception type escapes for malformed input.

CIFAR-10's "python version" batches are Python pickles. They are never unpickled here: a small
interpreter walks the opcode stream with :func:`pickletools.genops` (which only parses) and
builds inert values from a whitelist of opcodes and of the few globals the format needs. Nothing
named in the file is imported or called. Accepted variants:

* the original files (Python 2 ``cPickle``, binary protocol; keys and strings are ``str``, the
  pixels a ``BINSTRING``, the array made by ``numpy.core.multiarray._reconstruct``);
* batches re-saved by Python 3 with protocol 2 (``bytes`` become ``_codecs.encode(s, 'latin1')``),
  with protocol 3 or 4 (``BINBYTES``), or with protocol 5 (``numpy._core.numeric._frombuffer``
  with an in-band buffer), from numpy 1.x (``numpy.core``) or 2.x (``numpy._core``);
* protocols 0 and 1 too, as long as only the opcodes and globals below appear.

Rejected: any other global (``os.system``, ``builtins.eval``, ...), out-of-band buffers, object
or non-uint8 arrays, any key other than ``batch_label``, ``labels``, ``data``, ``filenames``,
labels outside 0..9, a pixel array that is not (N, 3072) with N labels, and trailing bytes.
"""

from __future__ import annotations

import gzip
import math
import pickletools
import warnings
import zlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from rvepfl.errors import DataError, short_repr

__all__ = [
    "CIFAR10_TEST_BATCH",
    "CIFAR10_TRAIN_BATCHES",
    "IDX_FILES",
    "parse_cifar_batch",
    "parse_idx",
    "read_cifar10",
    "read_cifar_batch",
    "read_idx",
    "read_idx_dataset",
]

# --------------------------------------------------------------------------------------------
# IDX
# --------------------------------------------------------------------------------------------

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


def _read_bytes(path: Path) -> bytes:
    """Read a whole file, turning any I/O failure into a :class:`DataError`."""
    try:
        return path.read_bytes()
    except FileNotFoundError:
        raise DataError(f"{path}: file not found; check the path or download the data") from None
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise DataError(
            f"{path}: cannot read the file ({reason}); check it is a readable file"
        ) from None


def _is_file(path: Path) -> bool:
    """``path.is_file()``; a directory that cannot be read raises :class:`DataError`."""
    try:
        return path.is_file()
    except OSError as exc:
        raise _unreadable_dir(path.parent, exc) from None


def _is_dir(path: Path) -> bool:
    """``path.is_dir()``; a parent directory that cannot be read raises :class:`DataError`."""
    try:
        return path.is_dir()
    except OSError as exc:
        raise _unreadable_dir(path.parent, exc) from None


def _unreadable_dir(directory: Path, exc: OSError) -> DataError:
    reason = exc.strerror or type(exc).__name__
    return DataError(
        f"{directory}: cannot read the directory ({reason}); check that it is a directory you "
        "may read (e.g. chmod u+rx)"
    )


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
    return parse_idx(_read_bytes(path), str(path))


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
            if _is_file(candidate):
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
    if not _is_dir(data_dir):
        raise DataError(f"{data_dir}: data directory not found; check the path")
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


# --------------------------------------------------------------------------------------------
# CIFAR-10 (safe reading of the pickled "python version" batches)
# --------------------------------------------------------------------------------------------

CIFAR10_TRAIN_BATCHES: tuple[str, ...] = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR10_TEST_BATCH = "test_batch"
_CIFAR_SUBDIRS: tuple[str, ...] = ("cifar-10-batches-py", "cifar10", "cifar10/cifar-10-batches-py")
_CIFAR_SIDE = 32
_CIFAR_ROW = 3 * _CIFAR_SIDE * _CIFAR_SIDE  # 1024 R, then 1024 G, then 1024 B
_CIFAR_KEYS = frozenset({"batch_label", "labels", "data", "filenames"})
_CIFAR_FIX = "re-download or re-extract cifar-10-python.tar.gz"

_RECONSTRUCT = "_reconstruct"
_FROMBUFFER = "_frombuffer"
_NDARRAY = "ndarray"
_DTYPE = "dtype"
_ENCODE = "encode"
_BYTES = "bytes"
#: The only globals a CIFAR batch may name: (module, name) -> role.
_ALLOWED_GLOBALS: dict[tuple[str, str], str] = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy.core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy._core.numeric", "_frombuffer"): _FROMBUFFER,
    ("numpy", "ndarray"): _NDARRAY,
    ("numpy", "dtype"): _DTYPE,
    ("_codecs", "encode"): _ENCODE,
    ("__builtin__", "bytes"): _BYTES,  # Python 3 writes b"" as bytes() under protocol 2
    ("builtins", "bytes"): _BYTES,
}


@dataclass(frozen=True)
class _Global:
    """An allowed global named by the stream; never imported."""

    role: str
    qualname: str


@dataclass
class _Dtype:
    """A ``numpy.dtype(spec, ...)`` the stream would build, with its optional BUILD state."""

    spec: str
    built: bool = False


@dataclass
class _Array:
    """A numpy array the stream would build: its shape, order and raw bytes once known."""

    shape: tuple[int, ...] | None = None
    dtype: _Dtype | None = None
    fortran: bool = False
    raw: bytes | None = None


class _Machine:
    """A restricted pickle machine that builds inert values and executes nothing."""

    def __init__(self, source: str) -> None:
        self.source = source
        self.stack: list[object] = []
        self.marks: list[int] = []
        self.memo: dict[int, object] = {}
        self.handlers: dict[str, Callable[[Any], None]] = self._handlers()

    # -- helpers ---------------------------------------------------------------------------
    def fail(self, what: str) -> DataError:
        """A :class:`DataError` about this batch."""
        return DataError(f"{self.source}: {what}; {_CIFAR_FIX}")

    def fence(self) -> int:
        """Lowest stack index the current mark level may pop."""
        return self.marks[-1] if self.marks else 0

    def pop(self, count: int = 1) -> list[object]:
        """Pop ``count`` items (not below the current mark)."""
        if len(self.stack) - self.fence() < count:
            raise self.fail("corrupt pickle stream (stack underflow)")
        items = self.stack[len(self.stack) - count :]
        del self.stack[len(self.stack) - count :]
        return items

    def pop_mark(self) -> list[object]:
        """Pop every item above the topmost mark, and the mark."""
        if not self.marks:
            raise self.fail("corrupt pickle stream (no MARK)")
        start = self.marks.pop()
        items = self.stack[start:]
        del self.stack[start:]
        return items

    def top(self) -> object:
        """The top item (not below the current mark)."""
        if len(self.stack) <= self.fence():
            raise self.fail("corrupt pickle stream (stack underflow)")
        return self.stack[-1]

    # -- opcode handlers -------------------------------------------------------------------
    def _handlers(self) -> dict[str, Callable[[Any], None]]:
        push = self.stack.append
        table: dict[str, Callable[[Any], None]] = {
            "PROTO": self._proto,
            "FRAME": lambda arg: None,
            "MARK": lambda arg: self.marks.append(len(self.stack)),
            "NONE": lambda arg: push(None),
            "NEWTRUE": lambda arg: push(True),
            "NEWFALSE": lambda arg: push(False),
            "EMPTY_DICT": lambda arg: push({}),
            "EMPTY_LIST": lambda arg: push([]),
            "EMPTY_TUPLE": lambda arg: push(()),
            "TUPLE1": lambda arg: push(tuple(self.pop(1))),
            "TUPLE2": lambda arg: push(tuple(self.pop(2))),
            "TUPLE3": lambda arg: push(tuple(self.pop(3))),
            "TUPLE": lambda arg: push(tuple(self.pop_mark())),
            "LIST": lambda arg: push(self.pop_mark()),
            "DICT": self._dict,
            "APPEND": self._append,
            "APPENDS": self._appends,
            "SETITEM": self._setitem,
            "SETITEMS": self._setitems,
            "GLOBAL": self._global,
            "STACK_GLOBAL": self._stack_global,
            "REDUCE": self._reduce,
            "BUILD": self._build,
            "MEMOIZE": lambda arg: self._put(len(self.memo)),
        }
        for name in ("INT", "BININT", "BININT1", "BININT2", "LONG", "LONG1", "LONG4"):
            table[name] = push
        for name in ("STRING", "BINSTRING", "SHORT_BINSTRING"):  # Python 2 str: bytes
            table[name] = self._py2_string
        for name in ("BINBYTES", "SHORT_BINBYTES", "BINBYTES8", "BYTEARRAY8"):
            table[name] = lambda arg: push(bytes(arg))
        for name in ("UNICODE", "BINUNICODE", "SHORT_BINUNICODE", "BINUNICODE8"):
            table[name] = push
        for name in ("PUT", "BINPUT", "LONG_BINPUT"):
            table[name] = self._put
        for name in ("GET", "BINGET", "LONG_BINGET"):
            table[name] = self._get
        return table

    def _proto(self, arg: int) -> None:
        if not 0 <= arg <= 5:
            raise self.fail(f"unsupported pickle protocol {arg}")

    def _py2_string(self, arg: str) -> None:
        # pickletools decodes Python 2 strings as latin-1; re-encoding gives the exact bytes.
        self.stack.append(arg.encode("latin-1"))

    def _list_top(self) -> list[object]:
        target = self.top()
        if not isinstance(target, list):
            raise self.fail("corrupt pickle stream (APPEND to a non-list)")
        return target

    def _append(self, arg: None) -> None:
        items = self.pop(1)
        self._list_top().extend(items)

    def _appends(self, arg: None) -> None:
        items = self.pop_mark()
        self._list_top().extend(items)

    def _dict_below(self, depth: int) -> dict[object, object]:
        if len(self.stack) - self.fence() < depth + 1:
            raise self.fail("corrupt pickle stream (stack underflow)")
        target = self.stack[-depth - 1]
        if not isinstance(target, dict):
            raise self.fail("corrupt pickle stream (SETITEM on a non-dict)")
        return target

    def _dict(self, arg: None) -> None:
        items = self.pop_mark()
        target: dict[object, object] = {}
        self._set_items(target, items)
        self.stack.append(target)

    def _setitem(self, arg: None) -> None:
        target = self._dict_below(2)
        self._set_items(target, self.pop(2))

    def _setitems(self, arg: None) -> None:
        items = self.pop_mark()
        target = self.top()
        if not isinstance(target, dict):
            raise self.fail("corrupt pickle stream (SETITEMS on a non-dict)")
        self._set_items(target, items)

    def _set_items(self, target: dict[object, object], items: list[object]) -> None:
        if len(items) % 2:
            raise self.fail("corrupt pickle stream (odd number of dict items)")
        for key, value in zip(items[::2], items[1::2], strict=True):
            if not isinstance(key, (str, bytes)):
                raise self.fail(f"unexpected dict key of type {type(key).__name__}")
            target[key] = value

    def _global(self, arg: str) -> None:
        module, _, name = arg.partition(" ")
        self.stack.append(self._allowed(module, name))

    def _stack_global(self, arg: None) -> None:
        module, name = self.pop(2)
        if not isinstance(module, str) or not isinstance(name, str):
            raise self.fail("corrupt pickle stream (STACK_GLOBAL needs two strings)")
        self.stack.append(self._allowed(module, name))

    def _allowed(self, module: str, name: str) -> _Global:
        role = _ALLOWED_GLOBALS.get((module, name))
        if role is None:
            shown = f"{module}.{name}"[:80]
            raise self.fail(
                f"refusing pickle global {shown!r}: a CIFAR-10 batch only names numpy's array "
                "constructors (the file may be malicious, or not a CIFAR-10 batch)"
            )
        return _Global(role, f"{module}.{name}")

    def _reduce(self, arg: None) -> None:
        func, args = self.pop(2)
        if not isinstance(func, _Global) or not isinstance(args, tuple):
            raise self.fail("corrupt pickle stream (REDUCE needs a global and a tuple)")
        self.stack.append(_reduce(func, args, self.fail))

    def _build(self, arg: None) -> None:
        (state,) = self.pop(1)
        _build(self.top(), state, self.fail)

    def _put(self, index: int) -> None:
        self.memo[index] = self.top()

    def _get(self, index: int) -> None:
        if index not in self.memo:
            raise self.fail(f"corrupt pickle stream (memo entry {index} is missing)")
        self.stack.append(self.memo[index])

    # -- driver ----------------------------------------------------------------------------
    def run(self, data: bytes) -> object:
        """Interpret ``data`` up to STOP and return the single value left on the stack."""
        for name, arg, pos in _opcodes(data, self.fail):
            if name == "STOP":
                if pos + 1 != len(data):
                    raise self.fail(f"{len(data) - pos - 1} trailing bytes after the pickle")
                if self.marks or len(self.stack) != 1:
                    raise self.fail("corrupt pickle stream (unbalanced stack at STOP)")
                return self.stack[0]
            handler = self.handlers.get(name)
            if handler is None:
                raise self.fail(
                    f"pickle opcode {name} at byte {pos} is not allowed in a CIFAR batch"
                )
            handler(arg)
        raise self.fail("corrupt pickle stream (no STOP opcode)")  # pragma: no cover - genops


def _opcodes(data: bytes, fail: Callable[[str], DataError]) -> Iterator[tuple[str, Any, int]]:
    """Yield ``(name, arg, pos)`` of each opcode; parsing problems become :class:`DataError`."""
    ops = pickletools.genops(data)
    while True:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. invalid escapes in protocol-0 strings
                opcode, arg, pos = next(ops)
        except StopIteration:
            return
        except Exception as exc:  # genops only parses; anything it raises means bad bytes
            raise fail(f"corrupt or truncated pickle stream ({str(exc)[:120]})") from None
        yield opcode.name, arg, int(pos or 0)


def _text(value: object) -> str | None:
    """A str, or bytes read as latin-1; ``None`` for anything else."""
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return value if isinstance(value, str) else None


def _reduce(func: _Global, args: tuple[object, ...], fail: Callable[[str], DataError]) -> object:
    """The inert result of calling an allowed global with ``args``."""
    if func.role == _ENCODE:
        if len(args) == 2 and isinstance(args[0], str) and args[1] in ("latin1", "latin-1"):
            try:
                return args[0].encode("latin-1")
            except UnicodeEncodeError:
                pass
        raise fail("unexpected _codecs.encode arguments")
    if func.role == _BYTES and args == ():
        return b""
    if func.role == _DTYPE and len(args) == 3 and _text(args[0]) == "u1":
        return _Dtype("u1")
    if func.role == _RECONSTRUCT and _is_reconstruct_args(args):
        return _Array()
    if func.role == _FROMBUFFER and len(args) == 4:
        buffer, dtype, shape, order = args
        if isinstance(buffer, bytes) and _text(order) in ("C", "F"):
            return _complete_array(_Array(), shape, dtype, _text(order) == "F", buffer, fail)
    raise fail(f"unexpected call of {func.qualname} (only uint8 pixel arrays are accepted)")


def _is_reconstruct_args(args: tuple[object, ...]) -> bool:
    """``(numpy.ndarray, (0,), b'b')``: numpy's empty-array template."""
    return (
        len(args) == 3
        and isinstance(args[0], _Global)
        and args[0].role == _NDARRAY
        and args[1] == (0,)
        and _text(args[2]) == "b"
    )


def _build(target: object, state: object, fail: Callable[[str], DataError]) -> None:
    """Apply a BUILD state to a dtype or array under construction."""
    if isinstance(target, _Dtype) and not target.built:
        _check_dtype_state(state, fail)
        target.built = True
    elif isinstance(target, _Array) and target.raw is None:
        if not isinstance(state, tuple) or len(state) not in (4, 5):
            raise fail("unexpected numpy array state")
        if len(state) == 5 and state[0] != 1:
            raise fail(f"unsupported numpy array state version {short_repr(state[0])}")
        shape, dtype, fortran, raw = state[-4:]
        if not isinstance(fortran, (bool, int)) or not isinstance(raw, bytes):
            raise fail("the pixel array is not a plain byte buffer (object arrays are refused)")
        _complete_array(target, shape, dtype, bool(fortran), raw, fail)
    else:
        raise fail("corrupt pickle stream (BUILD on an unexpected object)")


def _check_dtype_state(state: object, fail: Callable[[str], DataError]) -> None:
    """A plain dtype's state: ``(version, endian, None, None, None, -1, -1, 0[, metadata])``."""
    message = "unexpected numpy dtype state (only plain uint8 is accepted)"
    if (
        not isinstance(state, tuple)
        or len(state) < 2
        or _text(state[1]) not in ("|", "<", ">", "=")
    ):
        raise fail(message)
    if len(state) >= 8 and any(item is not None for item in state[2:5]):  # subarray, fields
        raise fail(message)


def _complete_array(
    target: _Array,
    shape: object,
    dtype: object,
    fortran: bool,
    raw: bytes,
    fail: Callable[[str], DataError],
) -> _Array:
    """Fill ``target`` after checking shape, dtype and the payload length."""
    if not isinstance(dtype, _Dtype):
        raise fail("the pixel array's dtype is not uint8")
    if not isinstance(shape, tuple) or not all(
        isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape
    ):
        raise fail("the pixel array has an invalid shape")
    size = 1
    for d in shape:
        size *= d
    if size != len(raw):
        raise fail(
            f"the pixel array's shape {short_repr(shape)} needs {short_repr(size)} bytes, found {len(raw)}"
        )
    target.shape, target.dtype, target.fortran, target.raw = shape, dtype, fortran, raw
    return target


def _cifar_fields(obj: object, fail: Callable[[str], DataError]) -> dict[str, object]:
    """The batch dict with text keys, checked against the allowed key set."""
    if not isinstance(obj, dict):
        raise fail(f"the pickle holds a {type(obj).__name__}, not a CIFAR batch dict")
    fields: dict[str, object] = {}
    for key, value in obj.items():
        text = _text(key)
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


def _cifar_labels(value: object, fail: Callable[[str], DataError]) -> np.ndarray:
    """The ``labels`` list as int64, each in 0..9."""
    if not isinstance(value, list) or not all(
        isinstance(v, int) and not isinstance(v, bool) for v in value
    ):
        raise fail("'labels' is not a list of integers")
    bad = [v for v in value if not 0 <= v < _NUM_CLASSES]
    if bad:
        raise fail(f"label {short_repr(bad[0])} is outside 0..{_NUM_CLASSES - 1}")
    return np.asarray(value, dtype=np.int64).reshape(-1)


def _cifar_images(value: object, count: int, fail: Callable[[str], DataError]) -> np.ndarray:
    """The ``data`` array as uint8 (N, 32, 32, 3)."""
    if not isinstance(value, _Array) or value.raw is None or value.shape is None:
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
    fields: dict[str, object], count: int, fail: Callable[[str], DataError]
) -> None:
    """``batch_label`` must be text; ``filenames`` a list of ``count`` texts."""
    if "batch_label" in fields and _text(fields["batch_label"]) is None:
        raise fail("'batch_label' is not a string")
    if "filenames" in fields:
        names = fields["filenames"]
        if (
            not isinstance(names, list)
            or len(names) != count
            or any(_text(n) is None for n in names)
        ):
            raise fail(f"'filenames' is not a list of {count} strings")


def parse_cifar_batch(data: bytes, source: str = "<bytes>") -> tuple[np.ndarray, np.ndarray]:
    """Decode one CIFAR-10 python batch without unpickling it.

    Parameters
    ----------
    data
        The batch file's bytes (a pickle; see the module docstring for the accepted variants).
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
    machine = _Machine(source)
    fields = _cifar_fields(machine.run(data), machine.fail)
    labels = _cifar_labels(fields["labels"], machine.fail)
    images = _cifar_images(fields["data"], len(labels), machine.fail)
    _check_cifar_extras(fields, len(labels), machine.fail)
    return images, labels


def read_cifar_batch(path: str | Path) -> tuple[np.ndarray, np.ndarray]:
    """Read one CIFAR-10 python batch file; see :func:`parse_cifar_batch`."""
    path = Path(path)
    return parse_cifar_batch(_read_bytes(path), str(path))


def _find_cifar_dir(data_dir: Path) -> Path | None:
    """The first of ``data_dir`` and its usual sub-directories holding all six batches."""
    names = (*CIFAR10_TRAIN_BATCHES, CIFAR10_TEST_BATCH)
    for directory in (data_dir, *(data_dir / sub for sub in _CIFAR_SUBDIRS)):
        if all(_is_file(directory / n) for n in names):
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
    if not _is_dir(data_dir):
        raise DataError(f"{data_dir}: data directory not found; check the path")
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
