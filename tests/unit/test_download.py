"""Opt-in downloads, with the network replaced by local bytes (nothing is fetched in tests)."""

from __future__ import annotations

import gzip
import hashlib
import http.client
import io
import re
import tarfile
import urllib.error
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from rvepfl.data import download as dl
from rvepfl.data.cifar import read_cifar10
from rvepfl.data.idx import IDX_FILES, read_idx_dataset
from rvepfl.errors import DataError
from tests.helpers.cifar_format import images_to_rows, py2_batch_bytes


class FakeNetwork:
    """Serves fixed bytes per URL in place of ``urlopen`` and records what was asked."""

    def __init__(self, files: dict[str, bytes]) -> None:
        self.files = files
        self.requests: list[str] = []

    def __call__(self, url: str) -> io.BytesIO:
        self.requests.append(url)
        if url not in self.files:
            raise urllib.error.URLError("Name or service not known")
        return io.BytesIO(self.files[url])


@pytest.fixture(autouse=True)
def no_network(monkeypatch: pytest.MonkeyPatch) -> None:
    """Any unexpected attempt to reach the network fails the test."""

    def refuse(url: str) -> io.BytesIO:
        raise AssertionError(f"test tried to download {url}")

    monkeypatch.setattr(dl, "_open_url", refuse)


def serve(monkeypatch: pytest.MonkeyPatch, files: dict[str, bytes]) -> FakeNetwork:
    network = FakeNetwork(files)
    monkeypatch.setattr(dl, "_open_url", network)
    return network


def resource_for(url: str, data: bytes, *, with_sha256: bool = True) -> dl.Resource:
    return dl.Resource(
        url=url,
        filename=url.rsplit("/", 1)[1],
        md5=hashlib.md5(data).hexdigest(),
        sha256=hashlib.sha256(data).hexdigest() if with_sha256 else None,
        size=len(data) if with_sha256 else None,
    )


def idx_gz(array: np.ndarray) -> bytes:
    header = bytes([0, 0, 8, array.ndim]) + b"".join(d.to_bytes(4, "big") for d in array.shape)
    return gzip.compress(header + array.tobytes(), mtime=0)


def fake_idx_dataset(monkeypatch: pytest.MonkeyPatch, name: str = "mnist") -> dict[str, bytes]:
    """Replace ``name``'s resources by small IDX files; return url -> bytes."""
    rng = np.random.default_rng(0)
    arrays = {
        "train-images-idx3-ubyte": rng.integers(0, 256, (3, 28, 28), dtype=np.uint8),
        "train-labels-idx1-ubyte": np.array([1, 2, 3], dtype=np.uint8),
        "t10k-images-idx3-ubyte": rng.integers(0, 256, (2, 28, 28), dtype=np.uint8),
        "t10k-labels-idx1-ubyte": np.array([4, 5], dtype=np.uint8),
    }
    files = {f"https://example.invalid/{base}.gz": idx_gz(a) for base, a in arrays.items()}
    resources = tuple(
        resource_for(url, data, with_sha256=i % 2 == 0)
        for i, (url, data) in enumerate(files.items())
    )
    monkeypatch.setitem(dl.DATASETS, name, resources)
    return files


def leftovers(directory: Path) -> list[str]:
    return sorted(p.name for p in directory.rglob("*.part"))


# --------------------------------------------------------------------------------------------


def test_published_resources_are_well_formed() -> None:
    expected_names = sorted(f"{base}.gz" for base in IDX_FILES.values())
    for name in ("mnist", "fmnist"):
        assert sorted(r.filename for r in dl.DATASETS[name]) == expected_names
    for resources in dl.DATASETS.values():
        for r in resources:
            assert r.url.endswith("/" + r.filename)
            assert r.url.startswith(
                ("https://", "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/")
            )
            assert re.fullmatch(r"[0-9a-f]{32}", r.md5)
            assert r.sha256 is None or re.fullmatch(r"[0-9a-f]{64}", r.sha256)
    assert dl.DATASETS["cifar10"][0].md5 == "c58f30108f718f92721af3b95e74349a"


def test_download_idx_success(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    files = fake_idx_dataset(monkeypatch)
    network = serve(monkeypatch, files)
    dest = tmp_path / "data" / "mnist"
    assert dl.download("mnist", dest) == dest
    assert sorted(network.requests) == sorted(files)
    for url, data in files.items():
        assert (dest / url.rsplit("/", 1)[1]).read_bytes() == data
    assert leftovers(dest) == []
    train_x, _, _, test_y = read_idx_dataset(dest, "mnist")
    assert train_x.shape == (3, 28, 28, 1) and test_y.tolist() == [4, 5]


def test_download_skips_verified_files_and_replaces_corrupt_ones(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    files = fake_idx_dataset(monkeypatch, "fmnist")
    serve(monkeypatch, files)
    dl.download("fmnist", tmp_path)
    damaged = tmp_path / "t10k-labels-idx1-ubyte.gz"
    damaged.write_bytes(b"garbage")
    network = serve(monkeypatch, files)
    dl.download("fmnist", tmp_path)
    assert network.requests == ["https://example.invalid/t10k-labels-idx1-ubyte.gz"]
    assert damaged.read_bytes() == files[network.requests[0]]


@pytest.mark.parametrize("with_sha256", [True, False])
def test_checksum_mismatch(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, with_sha256: bool
) -> None:
    url = "https://example.invalid/train-images-idx3-ubyte.gz"
    monkeypatch.setitem(
        dl.DATASETS, "mnist", (resource_for(url, b"the real bytes", with_sha256=with_sha256),)
    )
    serve(monkeypatch, {url: b"tampered bytes"})
    with pytest.raises(DataError, match=rf"checksum mismatch for {re.escape(url)}: (MD5|size)"):
        dl.download("mnist", tmp_path)
    assert not (tmp_path / "train-images-idx3-ubyte.gz").exists()
    assert leftovers(tmp_path) == []


def test_sha256_mismatch_with_matching_md5(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    url = "https://example.invalid/x.gz"
    data = b"payload"
    resource = dl.Resource(url, "x.gz", hashlib.md5(data).hexdigest(), "0" * 64, len(data))
    monkeypatch.setitem(dl.DATASETS, "mnist", (resource,))
    serve(monkeypatch, {url: data})
    with pytest.raises(DataError, match=r"checksum mismatch .*: SHA-256"):
        dl.download("mnist", tmp_path)
    assert list(tmp_path.iterdir()) == []


class _BrokenResponse(io.BytesIO):
    def read(self, size: int | None = -1) -> bytes:
        raise http.client.IncompleteRead(b"partial")


@pytest.mark.parametrize(
    "opener",
    [
        lambda url: (_ for _ in ()).throw(
            urllib.error.URLError("[Errno -3] Temporary failure in name resolution")
        ),
        lambda url: (_ for _ in ()).throw(TimeoutError("timed out")),
        lambda url: (_ for _ in ()).throw(urllib.error.HTTPError(url, 404, "Not Found", {}, None)),  # type: ignore[arg-type]
        lambda url: _BrokenResponse(b""),
        lambda url: (_ for _ in ()).throw(ConnectionResetError(104, "Connection reset by peer")),
    ],
)
def test_network_failure_is_one_line_data_error(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, opener: Callable[[str], io.BytesIO]
) -> None:
    fake_idx_dataset(monkeypatch)
    monkeypatch.setattr(dl, "_open_url", opener)
    with pytest.raises(
        DataError, match=r"^cannot download https://example\.invalid/\S+ \(.+\); check the internet"
    ) as info:
        dl.download("mnist", tmp_path)
    assert "\n" not in str(info.value)
    assert leftovers(tmp_path) == [] and list(tmp_path.iterdir()) == []


def test_unknown_dataset(tmp_path: Path) -> None:
    with pytest.raises(
        DataError, match="cannot download 'svhn': choose one of mnist, fmnist, cifar10"
    ):
        dl.download("svhn", tmp_path)


def test_unwritable_destination(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DataError, match="cannot create the directory"):
        dl.download("mnist", blocker / "sub")


# -- CIFAR-10 ---------------------------------------------------------------------------------


def _tar_gz(members: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        for info, data in members:
            if data is not None:
                info.size = len(data)
            tar.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def _cifar_archive() -> bytes:
    members: list[tuple[tarfile.TarInfo, bytes | None]] = []
    directory = tarfile.TarInfo("cifar-10-batches-py")
    directory.type = tarfile.DIRTYPE
    members.append((directory, None))
    for i, name in enumerate([*(f"data_batch_{k}" for k in range(1, 6)), "test_batch"]):
        images = np.full((2, 32, 32, 3), i, dtype=np.uint8)
        blob = py2_batch_bytes(images_to_rows(images), [i, 9 - i], [b"a.png", b"b.png"], b"batch")
        members.append((tarfile.TarInfo(f"cifar-10-batches-py/{name}"), blob))
    members.append((tarfile.TarInfo("cifar-10-batches-py/readme.html"), b"<html></html>"))
    return _tar_gz(members)


def _serve_cifar(monkeypatch: pytest.MonkeyPatch, archive: bytes) -> FakeNetwork:
    url = "https://example.invalid/cifar-10-python.tar.gz"
    monkeypatch.setitem(dl.DATASETS, "cifar10", (resource_for(url, archive, with_sha256=False),))
    return serve(monkeypatch, {url: archive})


def test_download_cifar10_success(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    network = _serve_cifar(monkeypatch, _cifar_archive())
    assert dl.download("cifar10", tmp_path) == tmp_path
    assert (tmp_path / "cifar-10-python.tar.gz").is_file()
    assert (tmp_path / "cifar-10-batches-py" / "readme.html").read_bytes() == b"<html></html>"
    assert leftovers(tmp_path) == []
    train_x, _, _, test_y = read_cifar10(tmp_path)
    assert train_x.shape == (10, 32, 32, 3) and test_y.tolist() == [5, 4]
    dl.download("cifar10", tmp_path)  # already extracted: nothing fetched again
    assert len(network.requests) == 1


def test_cifar_checksum_mismatch(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    url = "https://example.invalid/cifar-10-python.tar.gz"
    monkeypatch.setitem(
        dl.DATASETS, "cifar10", (resource_for(url, b"expected", with_sha256=False),)
    )
    serve(monkeypatch, {url: _cifar_archive()})
    with pytest.raises(DataError, match=r"checksum mismatch .*MD5"):
        dl.download("cifar10", tmp_path)
    assert list(tmp_path.iterdir()) == []


def _link(name: str, target: str, kind: bytes) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    info.linkname = target
    return info


@pytest.mark.parametrize(
    ("member", "message"),
    [
        ((tarfile.TarInfo("../evil"), b"x"), "unsafe path '../evil'"),
        ((tarfile.TarInfo("cifar-10-batches-py/../../evil"), b"x"), "unsafe path"),
        ((tarfile.TarInfo("/tmp/evil"), b"x"), "unsafe path '/tmp/evil'"),
        (
            (_link("cifar-10-batches-py/link", "/etc/passwd", tarfile.SYMTYPE), None),
            "is a link or special file",
        ),
        (
            (_link("cifar-10-batches-py/hard", "/etc/passwd", tarfile.LNKTYPE), None),
            "is a link or special file",
        ),
    ],
)
def test_unsafe_archive_is_rejected(
    monkeypatch: pytest.MonkeyPatch,
    tmp_path: Path,
    member: tuple[tarfile.TarInfo, bytes | None],
    message: str,
) -> None:
    dest = tmp_path / "dest"
    _serve_cifar(monkeypatch, _tar_gz([member]))
    with pytest.raises(DataError, match=message):
        dl.download("cifar10", dest)
    assert not (tmp_path / "evil").exists()
    assert not (dest / "cifar-10-batches-py" / "link").exists()


def test_corrupt_archive(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    _serve_cifar(monkeypatch, gzip.compress(b"not a tar archive" * 100, mtime=0))
    with pytest.raises(DataError, match=r"cifar-10-python\.tar\.gz: corrupt archive"):
        dl.download("cifar10", tmp_path)
