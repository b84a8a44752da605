"""Atomic file writes and safe checkpoint I/O.

Every result file is written to a temporary file in the same directory, flushed to disk and then
renamed over its final name, so a reader (or a resumed run) sees either the old file or the new
one, never a truncated one. Checkpoints are safetensors: loading one never runs code.

A written file gets the permissions a plain ``open()`` would give it (0o666 less the umask, e.g.
0644 under umask 022), not :func:`tempfile.mkstemp`'s 0600: the temporary file is created with
mode 0o666 and the kernel applies the umask, so the umask is never read (reading it means
setting it, which races with other threads).
"""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import re
import secrets
from collections.abc import Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

from rvepfl.errors import CheckpointError, short_repr

__all__ = [
    "atomic_write_bytes",
    "atomic_write_text",
    "create_temp_file",
    "file_lock",
    "flush_to_disk",
    "is_temp_file",
    "remove_temp_files",
    "read_csv_rows",
    "load_tensors",
    "save_tensors",
    "write_csv",
    "write_json",
]


_CREATE_FLAGS = os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_BINARY", 0)


def create_temp_file(path: str | Path, *, suffix: str = ".tmp", mode: int = 0o666) -> tuple[int, Path]:
    """Create a new file ``.<name>.<random><suffix>`` next to ``path`` and open it for writing.

    Like :func:`tempfile.mkstemp` (a fresh name, created exclusively, never through a symlink),
    but the file gets ``mode`` less the process's umask, as ``open()`` gives a new file, where
    mkstemp always gives 0600. Returns the open descriptor and the file's path.
    """
    path = Path(path)
    for _ in range(100):
        name = path.parent / f".{path.name}.{secrets.token_hex(4)}{suffix}"
        try:
            return os.open(name, _CREATE_FLAGS, mode), name
        except FileExistsError:
            continue
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(path.parent))  # pragma: no cover


def _tmp_path(path: Path) -> Path:
    """A new, empty temporary file next to ``path`` (for writers that open files by name)."""
    fd, name = create_temp_file(path)
    os.close(fd)
    return name


def _fsync_dir(directory: Path) -> None:
    try:
        fd = os.open(directory, os.O_RDONLY)
    except OSError:  # pragma: no cover - some file systems refuse to open directories
        return
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _replace(tmp: Path, path: Path, durable: bool = True) -> None:
    """Commit a fully written temporary file: flush it to disk, rename it over ``path``, and
    flush the directory so that the rename survives a power loss too. With ``durable`` False only
    the rename: readers never see a partial file, and :func:`flush_to_disk` must follow before
    anything that relies on the file surviving a power loss is written."""
    if durable:
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
    os.replace(tmp, path)
    if durable:
        _fsync_dir(path.parent)


def flush_to_disk(path: str | Path) -> None:
    """Flush a file written with ``durable=False`` (its data and its name) to disk."""
    path = Path(path)
    with open(path, "rb") as fh:
        os.fsync(fh.fileno())
    _fsync_dir(path.parent)


# safetensors' save_file (0.8) writes through a temporary file of its own in the target's
# directory, ``.tmp`` and six random letters or digits, renamed over our temporary file when done:
# a process killed inside save_file leaves it behind (as large as the tensors).
_SAFETENSORS_TEMP = re.compile(r"\.tmp[A-Za-z0-9]{6}")


def is_temp_file(path: str | Path) -> bool:
    """Whether ``path`` is named as the temporary file of a write that has not been committed:
    this module's (and the client store's) ``.<name>.<random>.tmp``, or safetensors' own
    ``.tmpXXXXXX`` (see :func:`save_tensors`)."""
    name = Path(path).name
    return (name.startswith(".") and name.endswith(".tmp")) or _SAFETENSORS_TEMP.fullmatch(name) is not None


def remove_temp_files(directory: str | Path) -> list[Path]:
    """Remove the temporary files a stopped process left anywhere under ``directory`` (their
    final files are intact: a write is committed by renaming its temporary file); return them.

    Call it only where no other process is writing: a temporary file in use would vanish.
    """
    removed: list[Path] = []
    root = Path(directory)
    if not root.is_dir():
        return removed
    for path in sorted(root.rglob(".*")):  # one walk over the hidden names; both kinds are among them
        if is_temp_file(path) and path.is_file() and not path.is_symlink():
            path.unlink(missing_ok=True)
            removed.append(path)
    return removed


def atomic_write_bytes(path: str | Path, data: bytes, *, mode: int = 0o666) -> None:
    """Write ``data`` to ``path`` atomically (temporary file, fsync, rename); the file gets
    ``mode`` less the umask (the default: what ``open()`` gives; 0o600 for a private key)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = create_temp_file(path, mode=mode)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(data)
        _replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


@contextmanager
def file_lock(path: str | Path) -> Iterator[None]:
    """Hold an exclusive lock on ``path`` + ``.lock`` (created if missing) while the block runs.

    For a cache file several processes may build at once (an evaluator, a LiRA reference model,
    when ``[audit] workers`` runs a run's attacks side by side): the first builds it under the lock,
    the others wait and then find it built. The lock is released when the block ends or its process
    dies, and the lock file is removed as the block ends, so nothing is left beside the cache. A
    process that opens the name after that removal locks a new file at once; it can only do so
    once the block that built the file has ended, so it finds the file built (or, if that build
    failed, builds it itself, perhaps beside a waiter: a duplicate build, never a wrong file, as
    the file itself is written atomically). Where ``fcntl`` is missing (Windows) the block runs
    unlocked, with the same worst case.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - not on Linux or macOS
        yield
        return
    lock = Path(path).with_name(Path(path).name + ".lock")
    lock.parent.mkdir(parents=True, exist_ok=True)
    with open(lock, "a+b") as fh:
        fcntl.flock(fh.fileno(), fcntl.LOCK_EX)
        try:
            yield
        finally:
            lock.unlink(missing_ok=True)
            fcntl.flock(fh.fileno(), fcntl.LOCK_UN)


def atomic_write_text(path: str | Path, text: str) -> None:
    atomic_write_bytes(path, text.encode("utf-8"))


def write_json(path: str | Path, value: Any) -> None:
    atomic_write_text(path, json.dumps(value, indent=2, sort_keys=False) + "\n")


def write_csv(path: str | Path, header: Sequence[str], rows: Iterable[Sequence[Any]]) -> None:
    """Write a CSV atomically; floats are written with full precision (``repr``)."""
    buf = io.StringIO()
    writer = csv.writer(buf, lineterminator="\n")
    writer.writerow(header)
    for row in rows:
        writer.writerow([repr(v) if isinstance(v, float) else v for v in row])
    atomic_write_text(path, buf.getvalue())


def read_csv_rows(path: str | Path) -> tuple[list[str], list[list[str]]]:
    """Header and rows of a CSV written by :func:`write_csv`; a file that cannot be read as
    CSV text raises :class:`CheckpointError`."""
    try:
        with open(path, newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
    except FileNotFoundError:
        raise CheckpointError(f"Missing {path}: the run directory is incomplete") from None
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        raise CheckpointError(
            f"Cannot read {path} as CSV text ({_one_line(exc)}): the file is damaged; restore it"
        ) from None
    if not rows:
        raise CheckpointError(f"Empty CSV file: {path}")
    return rows[0], rows[1:]


def save_tensors(path: str | Path, tensors: Mapping[str, torch.Tensor], metadata: Mapping[str, str], *,
                 durable: bool = True) -> None:
    """Save tensors as safetensors, atomically, with string metadata; ``durable=False`` leaves the
    flush to disk to a later :func:`flush_to_disk` (see :func:`_replace`).

    A process killed inside safetensors' ``save_file`` leaves that library's ``.tmpXXXXXX`` file
    as well as ours; :func:`remove_temp_files` removes both. (Serialising in memory and writing
    the bytes through :func:`atomic_write_bytes` would leave only ours, but is slower: BENCHMARKS.md,
    "Figures measured once".)"""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _tmp_path(path)
    try:
        mode = tmp.stat().st_mode & 0o777  # open()'s mode: 0o666 less the umask, applied by the kernel
        contiguous = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
        save_file(contiguous, str(tmp), metadata=dict(metadata))
        if tmp.stat().st_mode & 0o777 != mode:  # safetensors (0.8) renames a 0600 file of its own over tmp
            tmp.chmod(mode)
        _replace(tmp, path, durable)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def _one_line(exc: Exception) -> str:
    """The text of a library's exception on one line (safetensors' can span several)."""
    return " ".join(str(exc).split()) or type(exc).__name__


def read_metadata(path: str | Path) -> dict[str, str]:
    """The metadata of a safetensors file (raises CheckpointError if it is not one)."""
    from safetensors import safe_open

    try:
        with safe_open(str(path), framework="pt") as fh:
            return dict(fh.metadata() or {})
    except FileNotFoundError:
        raise CheckpointError(f"Checkpoint not found: {path}") from None
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"Not a valid safetensors checkpoint: {path} ({_one_line(exc)}); the file is damaged or of "
            "another format: restore it, or train the run again"
        ) from None


def load_tensors(
    path: str | Path,
    *,
    expected: Mapping[str, torch.Tensor] | None = None,
    kind: str | None = None,
) -> dict[str, torch.Tensor]:
    """Load a safetensors file; optionally check its ``format`` metadata and keys/shapes.

    Raises :class:`CheckpointError` with a one-line message if the file is missing, is not a
    safetensors file, is of another kind, or does not fit the model.
    """
    meta = read_metadata(path)
    if kind is not None and meta.get("format") != kind:
        raise CheckpointError(
            f"{path} is not an rvepfl {kind} checkpoint (format={short_repr(meta.get('format'))}): "
            "a file of another kind; restore the right one, or train the run again"
        )
    try:
        tensors = load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(
            f"Corrupt checkpoint {path}: {_one_line(exc)}; restore it, or train the run again"
        ) from None
    if expected is not None:
        missing = sorted(set(expected) - set(tensors))
        extra = sorted(set(tensors) - set(expected))
        if missing or extra:
            raise CheckpointError(
                f"{path} does not fit the model: missing {missing[:3]}, unexpected {extra[:3]}"
            )
        for key, ref in expected.items():
            if tensors[key].shape != ref.shape or tensors[key].dtype != ref.dtype:
                raise CheckpointError(
                    f"{path}: `{key}` has shape {tuple(tensors[key].shape)} {tensors[key].dtype}, "
                    f"the model expects {tuple(ref.shape)} {ref.dtype}"
                )
    return tensors
