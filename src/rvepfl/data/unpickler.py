r"""A restricted pickle interpreter: reads the pickles of CIFAR-10 batches without unpickling them.

CIFAR-10's "python version" batches are Python pickles, and :func:`pickle.load` of a tampered
file runs any code the file names. This module never unpickles: :func:`interpret` walks the opcode
stream with :func:`pickletools.genops` (which only parses) and a small stack machine builds inert
values from a whitelist of opcodes and of the few globals the format needs. Nothing named in the
stream is imported or called. The values it builds are dicts, lists, tuples, ``str``, ``bytes``,
ints, bools, ``None``, and :class:`InertArray` for a numpy uint8 array (its shape, memory order and
raw bytes; making the numpy array is left to the caller).

Accepted variants:

* the original files (Python 2 ``cPickle``, binary protocol; keys and strings are ``str``, the
  pixels a ``BINSTRING``, the array made by ``numpy.core.multiarray._reconstruct``);
* batches re-saved by Python 3 with protocol 2 (``bytes`` become ``_codecs.encode(s, 'latin1')``),
  with protocol 3 or 4 (``BINBYTES``), or with protocol 5 (``numpy._core.numeric._frombuffer``
  with an in-band buffer), from numpy 1.x (``numpy.core``) or 2.x (``numpy._core``);
* protocols 0 and 1 too, as long as only the opcodes and globals allowed here appear.

Rejected, through the caller's ``fail``: any other global (``os.system``, ``builtins.eval``, ...),
any other opcode (out-of-band buffers, floats, sets, ...), object or non-uint8 arrays, an array
whose payload does not fill its shape, a malformed or truncated stream, and trailing bytes. The
whitelist is exactly what CIFAR-10 batches need, and the messages say so; the checks of the
batch's structure (its keys, labels and pixel shape) are :mod:`rvepfl.data.cifar`'s.

>>> from rvepfl.errors import DataError
>>> interpret(b"\x80\x02}q\x00X\x06\x00\x00\x00labelsq\x01]q\x02(K\x01K\x02es.", DataError)
{'labels': [1, 2]}
>>> interpret(b"\x80\x02cos\nsystem\nX\x02\x00\x00\x00id\x85R.", DataError)
Traceback (most recent call last):
...
rvepfl.errors.DataError: refusing pickle global 'os.system': a CIFAR-10 batch only names numpy's array constructors (the file may be malicious, or not a CIFAR-10 batch)
"""  # noqa: E501 - the doctest's expected error is one line

from __future__ import annotations

import pickletools
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

from rvepfl.errors import DataError, short_repr

__all__ = ["Fail", "InertArray", "as_text", "interpret"]

#: Turns what is wrong with the stream into the error to raise; the caller adds the file's name
#: and the fix to the message.
Fail = Callable[[str], DataError]

_RECONSTRUCT = "_reconstruct"
_FROMBUFFER = "_frombuffer"
_NDARRAY = "ndarray"
_DTYPE = "dtype"
_ENCODE = "encode"
_BYTES = "bytes"
#: The only globals a stream may name: (module, name) -> role.
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
class InertArray:
    """A numpy array the stream would build: its shape, order and raw bytes once known."""

    shape: tuple[int, ...] | None = None
    dtype: _Dtype | None = None
    fortran: bool = False
    raw: bytes | None = None


def interpret(data: bytes, fail: Fail) -> object:
    """Run the pickle ``data`` on the restricted machine and return the value it describes.

    Parameters
    ----------
    data
        A whole pickle stream, ending at its STOP opcode.
    fail
        Called with what is wrong with the stream; the error it returns is raised.

    Returns
    -------
    object
        An inert value: dicts, lists, tuples, ``str``, ``bytes``, ints, bools, ``None`` and
        :class:`InertArray`; also placeholders for an allowed global or dtype met outside an array.

    Raises
    ------
    DataError
        ``fail``'s error: the stream is truncated or corrupt, names a forbidden global, uses a
        forbidden opcode, builds an array that is not a plain uint8 array, or has trailing bytes.
    """
    return _Machine(fail).run(data)


class _Machine:
    """A restricted pickle machine that builds inert values and executes nothing."""

    def __init__(self, fail: Fail) -> None:
        self.fail = fail
        self.stack: list[object] = []
        self.marks: list[int] = []
        self.memo: dict[int, object] = {}
        self.handlers: dict[str, Callable[[Any], None]] = self._handlers()

    # -- helpers ---------------------------------------------------------------------------
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


def _opcodes(data: bytes, fail: Fail) -> Iterator[tuple[str, Any, int]]:
    """Yield ``(name, arg, pos)`` of each opcode; parsing problems become :class:`DataError`."""
    ops = pickletools.genops(data)
    while True:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # e.g. invalid escapes in protocol-0 strings
                opcode, arg, pos = next(ops)
        except StopIteration:
            return
        except Exception as exc:  # noqa: BLE001 - genops only parses; anything it raises means bad bytes
            raise fail(f"corrupt or truncated pickle stream ({str(exc)[:120]})") from None
        yield opcode.name, arg, int(pos or 0)


def as_text(value: object) -> str | None:
    """A str, or bytes read as latin-1; ``None`` for anything else."""
    if isinstance(value, bytes):
        return value.decode("latin-1")
    return value if isinstance(value, str) else None


def _reduce(func: _Global, args: tuple[object, ...], fail: Fail) -> object:
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
    if func.role == _DTYPE and len(args) == 3 and as_text(args[0]) == "u1":
        return _Dtype("u1")
    if func.role == _RECONSTRUCT and _is_reconstruct_args(args):
        return InertArray()
    if func.role == _FROMBUFFER and len(args) == 4:
        buffer, dtype, shape, order = args
        if isinstance(buffer, bytes) and as_text(order) in ("C", "F"):
            return _complete_array(InertArray(), shape, dtype, as_text(order) == "F", buffer, fail)
    raise fail(f"unexpected call of {func.qualname} (only uint8 pixel arrays are accepted)")


def _is_reconstruct_args(args: tuple[object, ...]) -> bool:
    """``(numpy.ndarray, (0,), b'b')``: numpy's empty-array template."""
    return (
        len(args) == 3
        and isinstance(args[0], _Global)
        and args[0].role == _NDARRAY
        and args[1] == (0,)
        and as_text(args[2]) == "b"
    )


def _build(target: object, state: object, fail: Fail) -> None:
    """Apply a BUILD state to a dtype or array under construction."""
    if isinstance(target, _Dtype) and not target.built:
        _check_dtype_state(state, fail)
        target.built = True
    elif isinstance(target, InertArray) and target.raw is None:
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


def _check_dtype_state(state: object, fail: Fail) -> None:
    """A plain dtype's state: ``(version, endian, None, None, None, -1, -1, 0[, metadata])``."""
    message = "unexpected numpy dtype state (only plain uint8 is accepted)"
    if (
        not isinstance(state, tuple)
        or len(state) < 2
        or as_text(state[1]) not in ("|", "<", ">", "=")
    ):
        raise fail(message)
    if len(state) >= 8 and any(item is not None for item in state[2:5]):  # subarray, fields
        raise fail(message)


def _complete_array(
    target: InertArray,
    shape: object,
    dtype: object,
    fortran: bool,
    raw: bytes,
    fail: Fail,
) -> InertArray:
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
