"""Fuzzing: whatever reaches a parser of user input, it loads it or refuses it with one line.

Every parser of user input is fed random input and mutations of valid input (truncated at random
points, bytes flipped in headers, values swapped for others of any type): IDX files, raw and
gzip-compressed; CIFAR-10 python batches; TOML config files and the dicts they parse to; compare
and audit files; safetensors checkpoints. The property is the same everywhere: the call returns a
value, or it raises the project's error for that input (:class:`~rvepfl.errors.DataError`,
:class:`~rvepfl.errors.ConfigError`, :class:`~rvepfl.errors.CheckpointError`) with a one-line
message. Any other exception is a bug. The inputs that found bugs are pinned with ``@example``.
"""

from __future__ import annotations

import dataclasses
import gzip
import pickle
import struct
import tomllib
import typing
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal, get_args, get_origin

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, event, example, given, settings
from hypothesis import strategies as st

from rvepfl.config import (
    Config,
    apply_overrides,
    config_from_dict,
    config_hash,
    dumps_config,
    load_config,
    used_sections,
)
from rvepfl.data import cifar, idx
from rvepfl.errors import CheckpointError, ConfigError, DataError, RvepflError
from rvepfl.experiments.spec import suite_from_dict
from rvepfl.io import load_tensors, read_csv_rows, read_metadata, save_tensors
from tests.helpers.cifar_format import VARIANTS, images_to_rows, write_cifar_batch
from tests.helpers.idx_format import idx_bytes

ROOT = Path(__file__).resolve().parents[2]

FUZZ = settings(derandomize=True, deadline=None, max_examples=150,
                suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
FEW = settings(FUZZ, max_examples=40)


def outcome(error: type[RvepflError], call: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    """``call(*args)``'s value, or None when it raised ``error`` with a one-line message; any
    other exception propagates and fails the test."""
    try:
        value = call(*args, **kwargs)
    except error as exc:
        message = str(exc)
        assert message and "\n" not in message and "\r" not in message, repr(message)
        event(f"{call.__name__}: refused")
        return None
    event(f"{call.__name__}: loaded")
    return value


@pytest.fixture(scope="module")
def scratch(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One directory for every example of a test (hypothesis reruns the test body, not fixtures)."""
    return tmp_path_factory.mktemp("fuzz")


def mutate(blob: bytes, flips: list[tuple[int, int]], cut: int | None,
           region: tuple[int, int] | None = None) -> bytes:
    """``blob`` with bytes set at ``flips`` (positions taken modulo ``region``, default the whole
    blob) and then cut at ``cut`` (modulo its length)."""
    out = bytearray(blob)
    start, stop = region or (0, len(out))
    stop = min(stop, len(out))
    for position, value in flips:
        if stop > start:
            out[start + position % (stop - start)] = value
    if cut is not None and out:
        del out[cut % (len(out) + 1):]
    return bytes(out)


FLIPS = st.lists(st.tuples(st.integers(0, 2**20), st.integers(0, 255)), max_size=4)
CUTS = st.one_of(st.none(), st.integers(0, 2**20))

# --------------------------------------------------------------------------------------------
# IDX
# --------------------------------------------------------------------------------------------

_IDX_CODES = (0x08, 0x09, 0x0B, 0x0C, 0x0D, 0x0E)
_RNG = np.random.default_rng(0)
_VALID_IDX = {
    "images": idx_bytes(_RNG.integers(0, 256, (3, 28, 28), dtype=np.uint8)),
    "labels": idx_bytes(np.arange(3, dtype=np.uint8)),
}


@st.composite
def idx_streams(draw: st.DrawFn) -> bytes:
    """IDX-shaped bytes: a plausible or odd header (any type code, 0-255 dimensions, sizes up to
    2**32 - 1), then a payload of the declared size, or of any size."""
    zeros = draw(st.sampled_from([b"\x00\x00", b"\x00\x01", b"\x1f\x8b"]))
    code = draw(st.sampled_from([*_IDX_CODES, 0x00, 0x07, 0xFF]))
    ndim = draw(st.one_of(st.integers(0, 4), st.integers(5, 255)))
    dim = st.one_of(st.integers(0, 4), st.just(2**32 - 1), st.integers(0, 2**32 - 1))
    dims = draw(st.lists(dim, max_size=min(ndim, 6)))
    dims += [draw(st.sampled_from([0, 1]))] * (ndim - len(dims))
    header = zeros + bytes([code, ndim]) + struct.pack(f">{len(dims)}I", *dims)
    header = header[: draw(st.integers(0, len(header)))] if draw(st.booleans()) else header
    size = int(np.prod(dims, dtype=object)) * {0x0B: 2, 0x0C: 4, 0x0D: 4, 0x0E: 8}.get(code, 1)
    if size <= 4096 and draw(st.booleans()):
        payload = draw(st.binary(min_size=size, max_size=size))
    else:
        payload = draw(st.binary(max_size=64))
    return header + payload


def check_idx(out: np.ndarray | None) -> None:
    if out is not None:
        assert isinstance(out, np.ndarray) and out.dtype.isnative and out.flags.writeable


@FUZZ
@given(data=st.binary(max_size=256), gz=st.booleans())
def test_any_bytes_as_an_idx_file(scratch: Path, data: bytes, gz: bool) -> None:
    path = scratch / ("any-idx3-ubyte.gz" if gz else "any-idx3-ubyte")
    path.write_bytes(gzip.compress(data, mtime=0) if gz else data)
    check_idx(outcome(DataError, idx.read_idx, path))


@settings(FUZZ, max_examples=300)
@given(data=idx_streams(), gz=st.booleans())
@example(data=bytes([0, 0, 8, 65]) + struct.pack(">65I", *[1] * 65) + b"x", gz=False)  # 65 dims
@example(data=bytes([0, 0, 8, 3]) + struct.pack(">3I", 0, 2**32 - 1, 2**32 - 1), gz=False)
def test_idx_headers_of_any_shape(data: bytes, gz: bool) -> None:
    check_idx(outcome(DataError, idx.parse_idx, gzip.compress(data, mtime=0) if gz else data, "fuzz"))


@FUZZ
@given(kind=st.sampled_from(sorted(_VALID_IDX)), flips=FLIPS, cut=CUTS,
       gz=st.sampled_from(["raw", "gzip", "damaged gzip"]), gz_flips=FLIPS, gz_cut=CUTS)
def test_valid_idx_files_mutated(kind: str, flips: list[tuple[int, int]], cut: int | None, gz: str,
                                 gz_flips: list[tuple[int, int]], gz_cut: int | None) -> None:
    blob = mutate(_VALID_IDX[kind], flips, cut, region=(0, 16))  # the magic and the dimensions
    if gz != "raw":
        blob = gzip.compress(blob, mtime=0)
        if gz == "damaged gzip":
            blob = mutate(blob, gz_flips, gz_cut)
    out = outcome(DataError, idx.parse_idx, blob, kind)
    check_idx(out)
    if out is not None and blob == _VALID_IDX[kind]:
        assert out.shape == ((3, 28, 28) if kind == "images" else (3,))


@FEW
@given(role=st.sampled_from(sorted(idx.IDX_FILES)), flips=FLIPS, cut=CUTS, gz=st.booleans())
def test_idx_data_set_with_one_damaged_file(scratch: Path, role: str, flips: list[tuple[int, int]],
                                            cut: int | None, gz: bool) -> None:
    directory = scratch / "idx-set"
    directory.mkdir(exist_ok=True)
    for path in directory.iterdir():
        path.unlink()
    for name, base in idx.IDX_FILES.items():
        blob = _VALID_IDX["images" if "images" in name else "labels"]
        if name == role:
            blob = mutate(blob, flips, cut, region=(0, 16))
        (directory / (base + (".gz" if gz else ""))).write_bytes(gzip.compress(blob, mtime=0) if gz else blob)
    out = outcome(DataError, idx.read_idx_dataset, directory, "mnist")
    if out is not None:
        train_x, train_y, test_x, test_y = out
        assert train_x.shape[1:] == (28, 28, 1) and len(train_x) == len(train_y)
        assert len(test_x) == len(test_y) and train_y.max(initial=0) < 10


# --------------------------------------------------------------------------------------------
# CIFAR-10 python batches
# --------------------------------------------------------------------------------------------

_ROWS = images_to_rows(_RNG.integers(0, 256, (2, 32, 32, 3), dtype=np.uint8))


def _valid_batches(directory: Path) -> dict[str, bytes]:
    batches = {v: write_cifar_batch(directory / v, _ROWS, [3, 7], variant=v).read_bytes() for v in VARIANTS}
    plain = {b"data": _ROWS, b"labels": [3, 7]}
    batches.update({f"protocol{p}": pickle.dumps(plain, protocol=p) for p in (0, 1)})
    return batches


@pytest.fixture(scope="module")
def cifar_batches(scratch: Path) -> dict[str, bytes]:
    return _valid_batches(scratch)


def check_cifar(out: tuple[np.ndarray, np.ndarray] | None) -> None:
    if out is not None:
        images, labels = out
        assert images.shape == (len(labels), 32, 32, 3) and images.dtype == np.uint8
        assert labels.dtype == np.int64 and all(0 <= v < 10 for v in labels)


@FUZZ
@given(prefix=st.sampled_from([b"", b"(", b"}", b"\x80\x01", b"\x80\x02", b"\x80\x03", b"\x80\x04",
                               b"\x80\x05", b"\x80\x05\x95"]),
       data=st.binary(max_size=200))
def test_any_bytes_as_a_cifar_batch(prefix: bytes, data: bytes) -> None:
    check_cifar(outcome(DataError, cifar.parse_cifar_batch, prefix + data, "fuzz"))


@settings(FUZZ, max_examples=300)
@given(variant=st.sampled_from([*VARIANTS, "protocol0", "protocol1"]), flips=FLIPS, cut=CUTS,
       splice=st.one_of(st.none(), st.tuples(st.integers(0, 2**20), st.integers(1, 40))))
def test_valid_cifar_batches_mutated(cifar_batches: dict[str, bytes], variant: str,
                                     flips: list[tuple[int, int]], cut: int | None,
                                     splice: tuple[int, int] | None) -> None:
    blob = cifar_batches[variant]
    pixels = blob.find(_ROWS.tobytes()[:64])
    structure = bytes(blob[:pixels]) + bytes(blob[pixels + _ROWS.size:])  # without the pixels
    if pixels < 0:  # protocol 0 writes the pixels escaped: mutate anywhere
        structure, pixels = blob, len(blob)
    # Flip and splice only opcodes and arguments, so the parser's deeper checks are reached.
    changed = mutate(structure, flips, None)
    if splice is not None:
        start = splice[0] % (len(changed) + 1)
        changed = changed[:start] + changed[start:start + splice[1]] * 2 + changed[start + splice[1]:]
    if pixels < len(blob):
        changed = changed[:pixels] + _ROWS.tobytes() + changed[pixels:]
    check_cifar(outcome(DataError, cifar.parse_cifar_batch, mutate(changed, [], cut), variant))


_HUGE = 10**5000  # more digits than Python will print (int_max_str_digits)
_HUGE_INTS = st.sampled_from([1, -1]).map(lambda sign: sign * _HUGE)  # hypothesis cannot repr them
_PLAIN = st.one_of(
    st.none(), st.booleans(), st.integers(-300, 300), st.integers(), _HUGE_INTS,
    st.floats(allow_nan=True), st.text(max_size=8), st.binary(max_size=8),
    st.sampled_from([b"u1", "latin1", b"b", "C", "F", (0,), (2, 3072), (1, 3072)]),
    st.tuples(st.just(0), _HUGE_INTS),
)
_PICKLABLE = st.recursive(
    _PLAIN,
    lambda inner: st.one_of(st.lists(inner, max_size=4), st.tuples(inner, inner),
                            st.dictionaries(st.sampled_from([b"data", b"labels", "filenames", "batch_label", "x"]),
                                            inner, max_size=4)),
    max_leaves=12,
)


@FUZZ
@given(value=_PICKLABLE, protocol=st.integers(0, 5))
@example(value={b"labels": [_HUGE], b"data": b""}, protocol=2)  # the label's message
@example(value={b"labels": [], b"data": np.zeros((0, 0), np.uint8)}, protocol=2)
@example(value={b"labels": [1], b"data": np.zeros((1, 3072), np.uint8)}, protocol=5)
def test_pickles_of_any_value_as_a_cifar_batch(value: object, protocol: int) -> None:
    try:
        blob = pickle.dumps(value, protocol=protocol)
    except ValueError:  # protocols 0 and 1 write ints as decimal text, which Python limits
        return
    check_cifar(outcome(DataError, cifar.parse_cifar_batch, blob, "fuzz"))


class _ForgedArray:
    """Pickles as numpy does an array (``_reconstruct``, then BUILD with ``state``), whatever
    ``state`` holds."""

    def __init__(self, state: tuple[Any, ...]) -> None:
        self.state = state

    def __reduce__(self) -> tuple[Any, ...]:
        return np.ndarray.__reduce__(np.zeros(0, np.uint8))[:2] + (self.state,)


@pytest.mark.parametrize(
    ("state", "message"),
    [
        ((_HUGE, (1, 3072), np.dtype("u1"), False, bytes(3072)),
         r"unsupported numpy array state version <int of 16610 bits>"),
        ((1, (0, _HUGE), np.dtype("u1"), False, b""), r"'data' has shape \(0, <int of 16610 bits>\)"),
    ],
)
def test_huge_integers_in_a_batch_are_named_not_printed(state: tuple[Any, ...], message: str) -> None:
    """Python refuses to print an int of more than 4300 digits; the reader must not try."""
    blob = pickle.dumps({b"labels": [], b"data": _ForgedArray(state)}, protocol=2)
    with pytest.raises(DataError, match=message) as info:
        cifar.parse_cifar_batch(blob)
    assert "\n" not in str(info.value)


@FEW
@given(name=st.sampled_from([*cifar.CIFAR10_TRAIN_BATCHES, cifar.CIFAR10_TEST_BATCH]), flips=FLIPS, cut=CUTS)
def test_cifar_directory_with_one_damaged_batch(scratch: Path, cifar_batches: dict[str, bytes], name: str,
                                                flips: list[tuple[int, int]], cut: int | None) -> None:
    directory = scratch / "cifar-10-batches-py"
    directory.mkdir(exist_ok=True)
    for batch in (*cifar.CIFAR10_TRAIN_BATCHES, cifar.CIFAR10_TEST_BATCH):
        blob = cifar_batches["py2"]
        (directory / batch).write_bytes(mutate(blob, flips, cut, region=(0, 64)) if batch == name else blob)
    out = outcome(DataError, cifar.read_cifar10, scratch)
    if out is not None:
        assert len(out[0]) == len(out[1]) and len(out[2]) == len(out[3])
    check_cifar(outcome(DataError, cifar.read_cifar_batch, directory / name))


# --------------------------------------------------------------------------------------------
# TOML configs
# --------------------------------------------------------------------------------------------

_QUICK = (ROOT / "configs" / "quick.toml").read_bytes()
_SECTIONS: dict[str, dict[str, Any]] = {
    f.name: typing.get_type_hints(f.default_factory) for f in dataclasses.fields(Config)  # type: ignore[misc]
    if dataclasses.is_dataclass(f.default_factory)
}
_TOP: dict[str, Any] = {k: v for k, v in typing.get_type_hints(Config).items() if k not in _SECTIONS}

_TOML_SCALARS = st.one_of(
    st.booleans(),
    st.integers(-3, 3),
    st.integers(-(2**63), 2**63 - 1),  # TOML's integers
    st.integers(-(2**70), 2**70),  # what a Python dict may hold besides
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=10),
    st.sampled_from(["", ".", "..", "../x", "/tmp/x", "a\x00b", "a\nb", "x" * 300, "mnist", "rvepfl"]),
    st.dates(), st.times(), st.datetimes(),
)
_TOML_VALUES = st.recursive(
    _TOML_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=6,
)


def _typed(tp: Any) -> st.SearchStrategy[Any]:
    """Values of a config field's own type, near its limits, or of any other TOML type."""
    if get_origin(tp) is Literal:
        own: st.SearchStrategy[Any] = st.sampled_from(get_args(tp))
    elif tp is bool:
        own = st.booleans()
    elif tp is int:
        own = st.one_of(st.integers(-2, 3), st.integers(-(2**64), 2**64))
    elif tp is float:
        own = st.one_of(st.floats(-0.5, 1.5), st.floats(allow_nan=True, allow_infinity=True))
    else:
        own = st.one_of(st.text(max_size=10), st.sampled_from(["quick", "../x", "a\x00b", "x" * 300]))
    return st.one_of(own, own, _TOML_VALUES)


@st.composite
def config_dicts(draw: st.DrawFn) -> dict[str, Any]:
    """Dicts as TOML parses them: known keys (and misspelt ones) with values of any type."""
    out: dict[str, Any] = {}
    for key in draw(st.lists(st.sampled_from([*_TOP, *_SECTIONS, "bogus"]), max_size=5, unique=True)):
        if key in _SECTIONS and draw(st.integers(0, 4)):
            hints = _SECTIONS[key]
            keys = draw(st.lists(st.sampled_from([*hints, "lcoal_epochs"]), max_size=4, unique=True))
            out[key] = {k: draw(_typed(hints.get(k, str))) for k in keys}
        else:
            out[key] = draw(_typed(_TOP.get(key, str)))
    return out


def check_config(cfg: Config | None) -> None:
    """An accepted config is written as TOML and read back unchanged (``config.toml`` and
    ``--resume`` rely on it): everything it writes, which is every setting of the run (the
    sections of methods the run does not use are left out, and come back as their defaults)."""
    if cfg is not None:
        assert isinstance(cfg, Config)
        back = config_from_dict(tomllib.loads(dumps_config(cfg)))
        assert dumps_config(back) == dumps_config(cfg) and config_hash(back) == config_hash(cfg)
        assert all(getattr(back, f) == getattr(cfg, f) for f in ("data", "train", "faults", *used_sections(cfg)))


@settings(FUZZ, max_examples=300)
@given(values=config_dicts())
@example(values={"threads": 2**31})  # torch.set_num_threads overflowed after the run started
@example(values={"train": {"lr": float("inf")}})
@example(values={"name": "a\x00b"})  # os.mkdir: embedded null byte
@example(values={"seed": 2**64})
def test_config_from_any_dict(values: dict[str, Any]) -> None:
    check_config(outcome(ConfigError, config_from_dict, values))


@FUZZ
@given(overrides=st.dictionaries(
    st.one_of(st.sampled_from([*_TOP, *(f"{s}.{k}" for s, h in _SECTIONS.items() for k in h)]),
              st.sampled_from(["train", "train.rounds.x", "x.y", "", ".", "train."]), st.text(max_size=8)),
    _TOML_VALUES, max_size=3))
def test_overrides_of_any_key_and_value(overrides: dict[str, Any]) -> None:
    check_config(outcome(ConfigError, apply_overrides, Config(), overrides))


@FUZZ
@given(data=st.binary(max_size=300))
@example(data=b"seed = " + b"9" * 5000)  # ValueError from int() inside tomllib
@example(data=b"a = " + b"[" * 5000 + b"]" * 5000)  # RecursionError inside tomllib
@example(data=b"a = " + b"{b = " * 3000 + b"1" + b"}" * 3000)
@example(data=b"\xff\xfe[train]")
def test_any_bytes_as_a_config_file(scratch: Path, data: bytes) -> None:
    path = scratch / "any.toml"
    path.write_bytes(data)
    check_config(outcome(ConfigError, load_config, path))


@FUZZ
@given(flips=st.lists(st.tuples(st.integers(0, 2**20), st.sampled_from(b'=[]."\'#\n\\ 0aZ\x00\xff')), max_size=3),
       cut=CUTS)
def test_quick_toml_mutated(scratch: Path, flips: list[tuple[int, int]], cut: int | None) -> None:
    path = scratch / "mutated.toml"
    path.write_bytes(mutate(_QUICK, flips, cut))
    check_config(outcome(ConfigError, load_config, path))


@FUZZ
@given(values=config_dicts())
def test_config_files_of_any_values(scratch: Path, values: dict[str, Any]) -> None:
    import tomli_w

    try:
        text = tomli_w.dumps(values)
    except (TypeError, ValueError):  # e.g. a list of mixed tables and values: not writable as TOML
        return
    path = scratch / "values.toml"
    path.write_text(text, encoding="utf-8")
    check_config(outcome(ConfigError, load_config, path))


# --------------------------------------------------------------------------------------------
# compare and audit files
# --------------------------------------------------------------------------------------------

_COMPARE = {"name": "tiny", "methods": ["fedavg", "nbafl"], "datasets": ["mnist"], "seeds": [0],
            "base": {"threads": 1, "data": {"subset": 200, "num_clients": 2}, "train": {"rounds": 1}}}
_AUDIT = {"attacks": ["ig", "miface"], "client": 0, "images": 2, "batch_size": 1,
          "iterations": {"ig": 3}, "restarts": {"ig": 2}}


@st.composite
def compare_dicts(draw: st.DrawFn, audit: bool) -> dict[str, Any]:
    """A valid compare (or audit) file with a few entries replaced by anything."""
    values: dict[str, Any] = {**_COMPARE, "base": dict(_COMPARE["base"])}
    if audit:
        values["audit"] = dict(_AUDIT)
    tops = ["name", "methods", "datasets", "seeds", "base", "dataset_overrides", "overrides", "bogus"]
    for key in draw(st.lists(st.sampled_from(tops), max_size=3, unique=True)):
        values[key] = draw(st.one_of(_TOML_VALUES, config_dicts(), st.dictionaries(
            st.sampled_from(["fedavg", "nbafl", "mnist", "cifar10", "x"]), config_dicts(), max_size=2)))
    if audit:
        keys = ["attacks", "miface_threats", "update_attacks", "local_steps", "client", "images", "batch_size",
                "evaluator_images", "seed", "iterations", "restarts", "bogus"]
        for key in draw(st.lists(st.sampled_from(keys), max_size=3, unique=True)):
            values["audit"][key] = draw(st.one_of(_TOML_VALUES, st.sampled_from(
                [["ig"], ["dlg", "ig"], ["released"], {"ig-update": 2}, {"miface": 0}, 3, 0])))
    return values


@FUZZ
@given(values=compare_dicts(audit=False))
def test_compare_files_of_any_values(values: dict[str, Any]) -> None:
    spec = outcome(ConfigError, suite_from_dict, values)
    if spec is not None:
        assert all("/" not in r.label and r.label not in (".", "..") for r in spec.runs)


@FEW
@given(values=compare_dicts(audit=True))
def test_audit_files_of_any_values(values: dict[str, Any]) -> None:
    outcome(ConfigError, suite_from_dict, values, audit=True)


# --------------------------------------------------------------------------------------------
# safetensors checkpoints
# --------------------------------------------------------------------------------------------

_TENSORS = {"w": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.zeros(3, dtype=torch.int64)}
_KIND = "rvepfl-global-state"


@pytest.fixture(scope="module")
def checkpoint(scratch: Path) -> bytes:
    path = scratch / "valid.safetensors"
    save_tensors(path, _TENSORS, {"format": _KIND, "round": "1"})
    return path.read_bytes()


def check_checkpoint(path: Path) -> None:
    meta = outcome(CheckpointError, read_metadata, path)
    tensors = outcome(CheckpointError, load_tensors, path, expected=_TENSORS, kind=_KIND)
    if tensors is not None:
        assert meta is not None and meta["format"] == _KIND
        assert {k: (v.shape, v.dtype) for k, v in tensors.items()} == {
            k: (v.shape, v.dtype) for k, v in _TENSORS.items()}


@FUZZ
@given(data=st.binary(max_size=200))
@example(data=struct.pack("<Q", 2**63) + b"{}")
@example(data=struct.pack("<Q", 2) + b"{}")
def test_any_bytes_as_a_checkpoint(scratch: Path, data: bytes) -> None:
    path = scratch / "any.safetensors"
    path.write_bytes(data)
    check_checkpoint(path)


@settings(FUZZ, max_examples=200)
@given(flips=FLIPS, cut=CUTS, in_header=st.booleans())
def test_valid_checkpoint_mutated(scratch: Path, checkpoint: bytes, flips: list[tuple[int, int]],
                                  cut: int | None, in_header: bool) -> None:
    header_end = 8 + struct.unpack("<Q", checkpoint[:8])[0]
    path = scratch / "mutated.safetensors"
    path.write_bytes(mutate(checkpoint, flips, cut, region=(0, header_end) if in_header else None))
    check_checkpoint(path)


@FEW
@given(header=st.dictionaries(
    st.sampled_from(["w", "b", "__metadata__", "x"]),
    st.one_of(_TOML_VALUES, st.fixed_dictionaries({
        "dtype": st.sampled_from(["F32", "I64", "F16", "BOOL", "XX", ""]),
        "shape": st.lists(st.integers(-1, 2**40), max_size=3),
        "data_offsets": st.lists(st.integers(-1, 2**40), max_size=3)})),
    max_size=3), body=st.binary(max_size=64))
def test_checkpoint_headers_of_any_json(scratch: Path, header: dict[str, Any], body: bytes) -> None:
    import json

    text = json.dumps(header, default=str).encode()
    path = scratch / "json.safetensors"
    path.write_bytes(struct.pack("<Q", len(text)) + text + body)
    check_checkpoint(path)


@FUZZ
@given(data=st.binary(max_size=200), header=st.sampled_from([b"", b"Round#,Seconds\n", b'"a\n']))
@example(data=b"\xff\xfe", header=b"")  # UnicodeDecodeError from `rvepfl show`
def test_any_bytes_as_a_metrics_csv(scratch: Path, data: bytes, header: bytes) -> None:
    path = scratch / "epoch_testing.csv"
    path.write_bytes(header + data)
    out = outcome(CheckpointError, read_csv_rows, path)
    if out is not None:
        assert isinstance(out[0], list) and all(isinstance(row, list) for row in out[1])
