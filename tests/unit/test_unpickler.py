"""The restricted pickle interpreter (:mod:`rvepfl.data.unpickler`): the pickle protocols and
variants it reads, the globals and opcodes it refuses without running anything, and malformed,
truncated and mutated streams, which it refuses with a :class:`DataError`."""

from __future__ import annotations

import contextlib
import pickle
import struct
from pathlib import Path

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from rvepfl.data.cifar import parse_cifar_batch, read_cifar_batch
from rvepfl.data.unpickler import InertArray, as_text, interpret
from rvepfl.errors import DataError
from tests.helpers.cifar_format import batch_bytes, cifar_images, cifar_rows, images_to_rows


class _Evil:
    """Pickles as a call of ``os.system`` (never executed by the reader)."""

    def __init__(self, command: str) -> None:
        self.command = command

    def __reduce__(self) -> tuple[object, tuple[str]]:
        import os

        return os.system, (self.command,)


def test_interpret_builds_inert_values_and_raises_the_callers_error() -> None:
    rows = cifar_rows(2)
    value = interpret(pickle.dumps({b"labels": [1, 2], "data": rows}, protocol=2), DataError)
    assert isinstance(value, dict) and value[b"labels"] == [1, 2]
    array = value["data"]
    assert isinstance(array, InertArray) and array.shape == (2, 3072) and not array.fortran
    assert array.raw == rows.tobytes()
    assert as_text(b"caf\xe9") == "caf\u00e9" and as_text("x") == "x" and as_text(1) is None

    def fail(what: str) -> DataError:
        return DataError(f"stream: {what}!")

    with pytest.raises(DataError) as info:
        interpret(b"\x80\x02cos\nsystem\n.", fail)
    assert str(info.value) == (
        "stream: refusing pickle global 'os.system': a CIFAR-10 batch only names numpy's array "
        "constructors (the file may be malicious, or not a CIFAR-10 batch)!"
    )


@pytest.mark.parametrize("protocol", [0, 1])
def test_cifar_text_and_old_binary_protocols(protocol: int) -> None:
    images = cifar_images(2, seed=7)
    batch = {"data": images_to_rows(images), "labels": [3, 4], "filenames": ["a", "b"]}
    x, y = parse_cifar_batch(pickle.dumps(batch, protocol=protocol))
    np.testing.assert_array_equal(x, images)
    assert y.tolist() == [3, 4]


def test_cifar_empty_batch_from_python3() -> None:
    blob = pickle.dumps({b"data": np.zeros((0, 3072), np.uint8), b"labels": []}, protocol=2)
    images, labels = parse_cifar_batch(blob)
    assert images.shape == (0, 32, 32, 3) and labels.shape == (0,)


def test_foreign_global_is_rejected_without_executing(tmp_path: Path) -> None:
    marker = tmp_path / "pwned"
    command = f"touch {marker}"
    evil = {b"data": _Evil(command), b"labels": [1]}
    for protocol in (0, 1, 2, 4, 5):
        with pytest.raises(DataError, match=r"refusing pickle global '(os|posix|nt)\.system'"):
            parse_cifar_batch(pickle.dumps(evil, protocol=protocol), "evil")
    # Hidden in an otherwise valid batch, after the pixel data.
    rows = images_to_rows(cifar_images(1))
    hidden = {b"batch_label": b"x", b"labels": [1], b"data": rows, b"filenames": [_Evil(command)]}
    path = tmp_path / "data_batch_1"
    path.write_bytes(pickle.dumps(hidden, protocol=2))
    with pytest.raises(DataError, match=r"data_batch_1: refusing pickle global"):
        read_cifar_batch(path)
    assert not marker.exists()


def test_builtin_eval_via_stack_global_is_rejected() -> None:
    blob = b"\x80\x04\x8c\x08builtins\x8c\x04eval\x93\x8c\x0b1/0 or None\x85R."
    with pytest.raises(DataError, match=r"refusing pickle global 'builtins\.eval'"):
        parse_cifar_batch(blob)


@pytest.mark.parametrize("cut", [0, 1, 2, 20, 150, 3000, -300, -2, -1])
def test_truncated_batch(cut: int) -> None:
    blob = batch_bytes(3)
    with pytest.raises(DataError, match=r"<bytes>: corrupt or truncated pickle stream"):
        parse_cifar_batch(blob[:cut])


def test_trailing_bytes_after_batch() -> None:
    with pytest.raises(DataError, match="5 trailing bytes after the pickle"):
        parse_cifar_batch(batch_bytes(2) + b"extra")


def test_array_payload_shorter_than_shape() -> None:
    blob = bytearray(batch_bytes(2))
    start = blob.index(b"T" + struct.pack("<i", 2 * 3072))
    blob[start + 1 : start + 5] = struct.pack("<i", 3072)  # BINSTRING now holds 3072 bytes ...
    del blob[start + 5 + 3072 : start + 5 + 6144]  # ... so the (2, 3072) shape does not match
    with pytest.raises(DataError, match=r"shape \(2, 3072\) needs 6144 bytes, found 3072"):
        parse_cifar_batch(bytes(blob))


@pytest.mark.parametrize(
    ("blob", "message"),
    [
        (b"\x80\x02K\x01K\x02.", "unbalanced stack at STOP"),
        (b"\x80\x02(K\x01.", "unbalanced stack at STOP"),
        (b"\x80\x02h\x05.", "memo entry 5 is missing"),
        (b"\x80\x02\x85.", "stack underflow"),
        (b"\x80\x02K\x01K\x02a.", "APPEND to a non-list"),
        (b"\x80\x02K\x01(K\x02u.", "SETITEMS on a non-dict"),
        (b"\x80\x02}(K\x01u.", "odd number of dict items"),
        (b"\x80\x02K\x01)R.", "REDUCE needs a global and a tuple"),
        (b"\x80\x02K\x01K\x02b.", "BUILD on an unexpected object"),
        (b"\x80\x020.", "opcode POP"),
    ],
)
def test_malformed_streams(blob: bytes, message: str) -> None:
    with pytest.raises(DataError, match=message):
        parse_cifar_batch(blob)


@settings(max_examples=300, deadline=None, derandomize=True)
@given(st.binary(max_size=200))
def test_parse_cifar_random_bytes_loads_or_raises_data_error(data: bytes) -> None:
    with contextlib.suppress(DataError):
        parse_cifar_batch(b"\x80\x02" + data)


_VALID_BATCHES = {
    "py2": batch_bytes(1),
    "pickle5": pickle.dumps({b"data": cifar_rows(1), b"labels": [4]}, protocol=5),
}


@settings(
    max_examples=400, deadline=None, derandomize=True, suppress_health_check=[HealthCheck.too_slow]
)
@given(
    variant=st.sampled_from(sorted(_VALID_BATCHES)),
    edits=st.lists(st.tuples(st.integers(0, 10**6), st.integers(0, 255)), min_size=1, max_size=4),
    cut=st.one_of(st.none(), st.integers(0, 10**6)),
)
def test_parse_cifar_mutated_batch_loads_or_raises_data_error(
    variant: str, edits: list[tuple[int, int]], cut: int | None
) -> None:
    blob = bytearray(_VALID_BATCHES[variant])
    for position, value in edits:
        blob[position % len(blob)] = value
    if cut is not None:
        del blob[cut % len(blob) :]
    try:
        images, labels = parse_cifar_batch(bytes(blob))
    except DataError:
        return
    assert images.shape == (len(labels), 32, 32, 3) and images.dtype == np.uint8

