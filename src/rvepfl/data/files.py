"""File access for the data readers, with every failure turned into a one-line :class:`DataError`.

The IDX reader (:mod:`rvepfl.data.idx`) and the CIFAR-10 reader (:mod:`rvepfl.data.cifar`) look
for their files and read them only through these functions, so a missing file, an unreadable
file and a directory that cannot be listed are reported the same way by both: a message that names
the path, says what is wrong and how to fix it, and never an :class:`OSError`.

>>> from pathlib import Path
>>> is_file(Path("/no/such/dir/file"))
False
>>> read_bytes(Path("/no/such/file"))
Traceback (most recent call last):
...
rvepfl.errors.DataError: /no/such/file: file not found; check the path or download the data
"""

from __future__ import annotations

from pathlib import Path

from rvepfl.errors import DataError

__all__ = ["is_dir", "is_file", "read_bytes", "require_dir"]


def read_bytes(path: Path) -> bytes:
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


def is_file(path: Path) -> bool:
    """``path.is_file()``; a directory that cannot be read raises :class:`DataError`."""
    try:
        return path.is_file()
    except OSError as exc:
        raise _unreadable_dir(path.parent, exc) from None


def is_dir(path: Path) -> bool:
    """``path.is_dir()``; a parent directory that cannot be read raises :class:`DataError`."""
    try:
        return path.is_dir()
    except OSError as exc:
        raise _unreadable_dir(path.parent, exc) from None


def require_dir(data_dir: Path) -> None:
    """Raise :class:`DataError` unless ``data_dir`` is a directory (the readers' first check)."""
    if not is_dir(data_dir):
        raise DataError(f"{data_dir}: data directory not found; check the path")


def _unreadable_dir(directory: Path, exc: OSError) -> DataError:
    reason = exc.strerror or type(exc).__name__
    return DataError(
        f"{directory}: cannot read the directory ({reason}); check that it is a directory you "
        "may read (e.g. chmod u+rx)"
    )
