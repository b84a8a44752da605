"""Opt-in download of the full data sets, for machines with internet access.

Nothing is downloaded at import time. :func:`download` fetches each file into a temporary file
next to its destination, checks its MD5 (and SHA-256 where a published one exists), and only
then renames it into place, so an interrupted or corrupted download never leaves a file that
looks complete. Files already present with the right checksum are not fetched again.

Checksum sources
----------------
* MNIST: MD5s of the four ``.gz`` files as published with torchvision's ``MNIST`` data set
  (``torchvision/datasets/mnist.py``), fetched from the ossci-datasets S3 mirror it uses.
* Fashion-MNIST: MD5s from Zalando's README (the same values as torchvision's
  ``FashionMNIST``); SHA-256s and sizes from TensorFlow Datasets'
  ``url_checksums/fashion_mnist.txt`` for the same URLs.
* CIFAR-10: MD5 ``c58f3010...`` of ``cifar-10-python.tar.gz`` as published with torchvision's
  ``CIFAR10`` and many download scripts.
"""

from __future__ import annotations

import hashlib
import http.client
import os
import shutil
import tarfile
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import IO, Any
from urllib.request import urlopen

from rvepfl.errors import DataError
from rvepfl.io import create_temp_file

__all__ = ["DATASETS", "Resource", "download"]

_CHUNK = 1 << 20
_NOT_CIFAR = "it is not the real CIFAR-10 archive"
_TIMEOUT_S = 60.0


@dataclass(frozen=True)
class Resource:
    """One file to download: where from, its name on disk, and its published checksums."""

    url: str
    filename: str
    md5: str
    sha256: str | None = None
    size: int | None = None


_MNIST_URL = "https://ossci-datasets.s3.amazonaws.com/mnist/"
_FMNIST_URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
_CIFAR_URL = "https://www.cs.toronto.edu/~kriz/"
CIFAR10_ARCHIVE = "cifar-10-python.tar.gz"
CIFAR10_DIR = "cifar-10-batches-py"

#: What :func:`download` fetches for each data set.
DATASETS: dict[str, tuple[Resource, ...]] = {
    "mnist": tuple(
        Resource(_MNIST_URL + name, name, md5)
        for name, md5 in (
            ("train-images-idx3-ubyte.gz", "f68b3c2dcbeaaa9fbdd348bbdeb94873"),
            ("train-labels-idx1-ubyte.gz", "d53e105ee54ea40749a09fcbcd1e9432"),
            ("t10k-images-idx3-ubyte.gz", "9fb629c4189551a2d022fa330f9573f3"),
            ("t10k-labels-idx1-ubyte.gz", "ec29112dd5afa0611ce80d1b7f02629c"),
        )
    ),
    "fmnist": tuple(
        Resource(_FMNIST_URL + name, name, md5, sha256, size)
        for name, md5, sha256, size in (
            (
                "train-images-idx3-ubyte.gz",
                "8d4fb7e6c68d591d4c3dfef9ec88bf0d",
                "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
                26421880,
            ),
            (
                "train-labels-idx1-ubyte.gz",
                "25c81989df183df01b3e8a0aad5dffbe",
                "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
                29515,
            ),
            (
                "t10k-images-idx3-ubyte.gz",
                "bef4ecab320f06d8554ea6380940ec79",
                "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
                4422102,
            ),
            (
                "t10k-labels-idx1-ubyte.gz",
                "bb300cfdad3c16e7a12a480ee83cd310",
                "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
                5148,
            ),
        )
    ),
    "cifar10": (
        Resource(_CIFAR_URL + CIFAR10_ARCHIVE, CIFAR10_ARCHIVE, "c58f30108f718f92721af3b95e74349a"),
    ),
}
_CIFAR_BATCHES = (*(f"data_batch_{i}" for i in range(1, 6)), "test_batch")


def _open_url(url: str) -> IO[bytes]:
    """Open ``url`` for reading (the one place that touches the network; tests replace it)."""
    response: IO[bytes] = urlopen(url, timeout=_TIMEOUT_S)  # only the fixed URLs of DATASETS
    return response


@dataclass
class _Digests:
    """Running MD5 and SHA-256 of a stream, and its length."""

    md5: Any  # hashlib objects; their class is private
    sha256: Any
    size: int = 0

    @classmethod
    def new(cls) -> _Digests:
        return cls(hashlib.md5(usedforsecurity=False), hashlib.sha256())

    def update(self, chunk: bytes) -> None:
        self.md5.update(chunk)
        self.sha256.update(chunk)
        self.size += len(chunk)


def _mismatch(resource: Resource, digests: _Digests) -> str | None:
    """Why ``digests`` do not match ``resource``'s published checksums, or ``None``."""
    if resource.size is not None and digests.size != resource.size:
        return f"size {digests.size} bytes, expected {resource.size}"
    if digests.md5.hexdigest() != resource.md5:
        return f"MD5 {digests.md5.hexdigest()}, expected {resource.md5}"
    if resource.sha256 is not None and digests.sha256.hexdigest() != resource.sha256:
        return f"SHA-256 {digests.sha256.hexdigest()}, expected {resource.sha256}"
    return None


def _file_matches(path: Path, resource: Resource) -> bool:
    """Whether ``path`` exists and has ``resource``'s checksums."""
    if not path.is_file():
        return False
    digests = _Digests.new()
    try:
        with path.open("rb") as handle:
            while chunk := handle.read(_CHUNK):
                digests.update(chunk)
    except OSError:
        return False
    return _mismatch(resource, digests) is None


@contextmanager
def _temp_file(dest_dir: Path, name: str) -> Iterator[tuple[IO[bytes], Path]]:
    """A temporary file in ``dest_dir``, removed unless the caller renamed it away."""
    try:
        fd, path = create_temp_file(dest_dir / name, suffix=".part")  # open()'s mode, not mkstemp's 0600
    except OSError as exc:
        raise DataError(
            f"{dest_dir}: cannot write there ({exc.strerror}); choose another directory"
        ) from None
    try:
        with os.fdopen(fd, "wb") as handle:
            yield handle, path
    finally:
        path.unlink(missing_ok=True)


def _network_error(url: str, exc: BaseException) -> DataError:
    """A one-line :class:`DataError` for a failed download."""
    reason = getattr(exc, "reason", None) or str(exc) or type(exc).__name__
    reason = " ".join(str(reason).split())  # one line, whatever the exception said
    return DataError(
        f"cannot download {url} ({reason}); check the internet connection, or fetch the file "
        "by hand into the data directory"
    )


_NETWORK_ERRORS = (OSError, http.client.HTTPException, ValueError)


def _copy_stream(url: str, handle: IO[bytes], digests: _Digests) -> None:
    """Copy the body of ``url`` into ``handle``; network or disk failures raise DataError."""
    try:
        response = _open_url(url)
    except _NETWORK_ERRORS as exc:
        raise _network_error(url, exc) from None
    with response:
        while True:
            try:
                chunk = response.read(_CHUNK)
            except _NETWORK_ERRORS as exc:
                raise _network_error(url, exc) from None
            if not chunk:
                return
            digests.update(chunk)
            try:
                handle.write(chunk)
            except OSError as exc:
                reason = exc.strerror or exc
                raise DataError(
                    f"cannot save the download of {url} ({reason}); free some disk space"
                ) from None


def _fetch(resource: Resource, dest_dir: Path) -> Path:
    """Download ``resource`` into ``dest_dir``, verified, atomically; return its path."""
    target = dest_dir / resource.filename
    digests = _Digests.new()
    with _temp_file(dest_dir, resource.filename) as (handle, tmp):
        _copy_stream(resource.url, handle, digests)
        handle.close()
        problem = _mismatch(resource, digests)
        if problem is not None:
            raise DataError(
                f"checksum mismatch for {resource.url}: {problem}; the download is corrupt or the "
                "file changed upstream, try again later"
            )
        os.replace(tmp, target)
    return target


def _ensure(resource: Resource, dest_dir: Path) -> Path:
    """``resource`` in ``dest_dir``: kept when already there and verified, else downloaded."""
    target = dest_dir / resource.filename
    return target if _file_matches(target, resource) else _fetch(resource, dest_dir)


def _safe_member(member: tarfile.TarInfo, archive: Path) -> PurePosixPath | None:
    """The member's relative path if it is a regular file to extract, ``None`` for a directory."""
    name = PurePosixPath(member.name)
    if not name.parts or name.is_absolute() or ".." in name.parts or "\\" in member.name:
        raise DataError(f"{archive}: unsafe path {member.name!r} in the archive; {_NOT_CIFAR}")
    if member.isdir():
        return None
    if not member.isfile():
        raise DataError(f"{archive}: {member.name!r} is a link or special file; {_NOT_CIFAR}")
    return name


def _extract(archive: Path, dest_dir: Path) -> None:
    """Extract the regular files of ``archive`` under ``dest_dir``, refusing unsafe members."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            for member in tar:
                relative = _safe_member(member, archive)
                if relative is None:
                    continue
                source = tar.extractfile(member)
                if source is None:  # pragma: no cover - isfile() members always have data
                    continue
                _write_atomically(source, dest_dir.joinpath(*relative.parts))
    except (tarfile.TarError, EOFError, zlib.error) as exc:
        raise DataError(
            f"{archive}: corrupt archive ({exc}); delete it and download again"
        ) from None
    except OSError as exc:
        raise DataError(
            f"{archive}: cannot extract ({exc.strerror or exc}); check disk space and permissions"
        ) from None


def _write_atomically(source: IO[bytes], target: Path) -> None:
    """Copy ``source`` to ``target`` through a temporary file and a rename."""
    target.parent.mkdir(parents=True, exist_ok=True)
    with _temp_file(target.parent, target.name) as (handle, tmp):
        shutil.copyfileobj(source, handle, _CHUNK)
        handle.close()
        os.replace(tmp, target)


def download(name: str, dest_dir: str | Path) -> Path:
    """Download a full data set into ``dest_dir`` (needs internet; never called implicitly).

    MNIST and Fashion-MNIST: the four IDX ``.gz`` files are written in ``dest_dir``.
    CIFAR-10: ``cifar-10-python.tar.gz`` is written in ``dest_dir`` and extracted there, giving
    ``dest_dir/cifar-10-batches-py``. Files already present and verified are not fetched again;
    for CIFAR-10, nothing is fetched if the six extracted batches are already there.

    Parameters
    ----------
    name
        ``"mnist"``, ``"fmnist"`` or ``"cifar10"``.
    dest_dir
        Destination directory, created if needed.

    Returns
    -------
    pathlib.Path
        ``dest_dir``, which the readers in :mod:`rvepfl.data.idx` and :mod:`rvepfl.data.cifar`
        accept as is.

    Raises
    ------
    DataError
        Unknown name, network failure, checksum mismatch, unsafe or corrupt archive, or a
        destination that cannot be written.
    """
    if name not in DATASETS:
        raise DataError(f"cannot download {name!r}: choose one of {', '.join(DATASETS)}")
    dest = Path(dest_dir)
    try:
        dest.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise DataError(
            f"{dest}: cannot create the directory ({exc.strerror}); choose another one"
        ) from None
    if name == "cifar10":
        batches = dest / CIFAR10_DIR
        if not all((batches / b).is_file() for b in _CIFAR_BATCHES):
            _extract(_ensure(DATASETS[name][0], dest), dest)
        return dest
    for resource in DATASETS[name]:
        _ensure(resource, dest)
    return dest
