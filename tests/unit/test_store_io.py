import os

import pytest
import torch

from rvepfl.errors import CheckpointError
from rvepfl.fl.store import ClientStore
from rvepfl.io import atomic_write_text, load_tensors, read_csv_rows, save_tensors, write_csv

REF = {"enc.w": torch.zeros(2, 3)}


def test_store_returns_the_newest_committed_state(tmp_path):
    store = ClientStore(tmp_path, config_hash="h")
    assert store.get(0, 5, REF) is None
    store.put(0, 1, {"enc.w": torch.ones(2, 3)}, steps=4)
    store.put(0, 2, {"enc.w": 2 * torch.ones(2, 3)}, steps=8)
    state, steps = store.get(0, 1, REF)  # round 2 not committed yet
    assert steps == 4 and state["enc.w"].eq(1).all()
    state, steps = store.get(0, 2, REF)
    assert steps == 8 and state["enc.w"].eq(2).all()


def test_prune_drops_uncommitted_and_superseded_files(tmp_path):
    store = ClientStore(tmp_path, config_hash="h")
    for r in (1, 2, 3):
        store.put(0, r, {"enc.w": torch.full((2, 3), float(r))}, steps=r)
    store.put(1, 1, {"enc.w": torch.zeros(2, 3)}, steps=1)
    store.prune(2)
    names = sorted(p.name for p in tmp_path.iterdir())
    assert names == ["0000-r0002.safetensors", "0001-r0001.safetensors"]


def test_export_links_states_into_a_checkpoint(tmp_path):
    store = ClientStore(tmp_path / "s", config_hash="h")
    store.put(3, 1, {"enc.w": torch.ones(2, 3)}, steps=1)
    store.export(1, range(5), tmp_path / "ckpt")
    assert [p.name for p in (tmp_path / "ckpt").iterdir()] == ["0003.safetensors"]
    store.prune(1)
    loaded = load_tensors(tmp_path / "ckpt" / "0003.safetensors")
    assert loaded["enc.w"].eq(1).all()


def test_state_of_another_shape_is_refused(tmp_path):
    store = ClientStore(tmp_path, config_hash="h")
    store.put(0, 1, {"enc.w": torch.ones(4)}, steps=1)
    with pytest.raises(CheckpointError, match="shape"):
        store.get(0, 1, REF)


def test_corrupt_and_foreign_files_are_checkpoint_errors(tmp_path):
    bad = tmp_path / "bad.safetensors"
    bad.write_bytes(b"\x80\x04 this is a pickle, not a safetensors file")
    with pytest.raises(CheckpointError, match="Not a valid safetensors"):
        load_tensors(bad)
    other = tmp_path / "other.safetensors"
    save_tensors(other, REF, {"format": "something-else"})
    with pytest.raises(CheckpointError, match="not an rvepfl rvepfl-client-state checkpoint"):
        load_tensors(other, kind="rvepfl-client-state")
    with pytest.raises(CheckpointError, match="not found"):
        load_tensors(tmp_path / "missing.safetensors")


def test_atomic_write_leaves_old_file_and_no_temp_on_failure(tmp_path, monkeypatch):
    path = tmp_path / "f.txt"
    atomic_write_text(path, "old")

    def boom(*args):
        raise OSError("disk full")

    monkeypatch.setattr(os, "replace", boom)
    with pytest.raises(OSError):
        atomic_write_text(path, "new")
    assert path.read_text() == "old"
    assert [p.name for p in tmp_path.iterdir()] == ["f.txt"]


def test_csv_round_trip_keeps_full_precision(tmp_path):
    value = 0.1 + 0.2
    write_csv(tmp_path / "x.csv", ["a", "b"], [[1, value]])
    header, rows = read_csv_rows(tmp_path / "x.csv")
    assert header == ["a", "b"] and float(rows[0][1]) == value


def test_save_tensors_writes_what_the_safetensors_library_reads(tmp_path):
    """Every dtype, 0-d and empty tensors, a non-contiguous view: the library loads the same
    tensors and metadata, each tensor's data starts at a multiple of its element size, and the
    header is padded to 8 bytes as the format asks."""
    import json
    import struct

    from safetensors import safe_open
    from safetensors.torch import load_file

    g = torch.Generator().manual_seed(0)
    tensors = {
        "f32": torch.randn(3, 5, generator=g), "f64": torch.randn(7, generator=g, dtype=torch.float64),
        "f16": torch.randn(3, generator=g).half(), "bf16": torch.randn(5, generator=g).bfloat16(),
        "i64": torch.tensor(12345678901, dtype=torch.int64), "i32": torch.arange(3, dtype=torch.int32),
        "i16": torch.arange(-2, 3, dtype=torch.int16), "i8": torch.tensor([-7], dtype=torch.int8),
        "u8": torch.arange(250, 256, dtype=torch.uint8), "bool": torch.tensor([True, False, True]),
        "empty": torch.zeros(0, 4), "view": torch.arange(12.0).view(3, 4).t(),
    }
    path = tmp_path / "t.safetensors"
    save_tensors(path, tensors, {"format": "x", "note": "é"})
    loaded = load_file(str(path))
    assert loaded.keys() == tensors.keys()
    for name, t in tensors.items():
        assert loaded[name].dtype == t.dtype and torch.equal(loaded[name], t), name
    with safe_open(str(path), framework="pt") as fh:
        assert fh.metadata() == {"format": "x", "note": "é"}
    raw = path.read_bytes()
    (size,) = struct.unpack("<Q", raw[:8])
    assert size % 8 == 0
    header = json.loads(raw[8 : 8 + size])
    for name, t in tensors.items():
        start, end = header[name]["data_offsets"]
        assert start % t.element_size() == 0 and end - start == t.numel() * t.element_size()
    assert max(v["data_offsets"][1] for k, v in header.items() if k != "__metadata__") == len(raw) - 8 - size


def test_deferred_flush_leaves_the_fsync_to_flush(tmp_path, monkeypatch):
    """A store with deferred_flush writes each state whole (renamed into place) without waiting
    for the disk; flush() then syncs that file and its directory. The default store syncs both
    in put()."""
    synced = []
    real_fsync = os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else fd)
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    deferred = ClientStore(tmp_path / "d", config_hash="h", deferred_flush=True)
    deferred.put(3, 1, {"enc.w": torch.ones(2, 3)}, steps=2)
    assert synced == []
    state, steps = deferred.get(3, 1, REF)
    assert steps == 2 and state["enc.w"].eq(1).all()
    deferred.flush(3, 1)
    assert len(synced) == 2
    if os.path.exists("/proc/self/fd"):
        assert synced == [str(deferred._path(3, 1)), str(tmp_path / "d")]
    synced.clear()
    ClientStore(tmp_path / "s", config_hash="h").put(3, 1, {"enc.w": torch.ones(2, 3)}, steps=2)
    assert len(synced) == 2  # the temporary file before its rename, then the directory


@pytest.mark.skipif(os.name != "posix", reason="POSIX file modes")
@pytest.mark.parametrize("umask, expected", [(0o022, 0o644), (0o077, 0o600)])
def test_written_files_get_the_mode_open_gives_them(tmp_path, umask, expected):
    """0o666 less the umask, as a plain open() gives (not mkstemp's 0600); a key stays 0600."""
    from rvepfl.data.download import _temp_file
    from rvepfl.io import atomic_write_bytes, write_json

    old = os.umask(umask)
    try:
        write_csv(tmp_path / "a.csv", ["x"], [[1.0]])
        write_json(tmp_path / "a.json", {"x": 1})
        save_tensors(tmp_path / "a.safetensors", REF, {"format": "t"})
        ClientStore(tmp_path / "store", config_hash="h").put(0, 1, REF, steps=1)
        with _temp_file(tmp_path, "download") as (_, part):  # a download before its rename
            part_mode = os.stat(part).st_mode & 0o777
        atomic_write_bytes(tmp_path / "key", b"secret", mode=0o600)
    finally:
        os.umask(old)
    for name in ("a.csv", "a.json", "a.safetensors", "store/0000-r0001.safetensors"):
        assert os.stat(tmp_path / name).st_mode & 0o777 == expected, name
    assert part_mode == expected
    assert os.stat(tmp_path / "key").st_mode & 0o777 == 0o600


_KILLED_WHILE_SAVING = """
import os, signal, sys, threading, time
import torch
from rvepfl.io import save_tensors

directory = sys.argv[1]

def kill_once_a_file_grows():  # mid-write: some file in the directory holds 1 MB, not yet 100
    while not any(os.path.getsize(os.path.join(directory, n)) > 2**20 for n in os.listdir(directory)):
        time.sleep(0.0005)
    os.kill(os.getpid(), signal.SIGKILL)

threading.Thread(target=kill_once_a_file_grows, daemon=True).start()
save_tensors(os.path.join(directory, "encoder.safetensors"), {"w": torch.ones(25_000_000)}, {"format": "test"})
"""


@pytest.mark.slow  # a 100 MB write in a fresh interpreter
@pytest.mark.skipif(not hasattr(os, "kill") or os.name != "posix", reason="uses SIGKILL")
def test_a_process_killed_while_saving_leaves_only_what_a_resume_removes(tmp_path):
    """Killed in the middle of writing a safetensors file, a process leaves only temporary files,
    which a resume removes: ours, and the ``.tmpXXXXXX`` of safetensors' own ``save_file``."""
    import signal
    import subprocess
    import sys

    from rvepfl.io import is_temp_file, remove_temp_files

    done = subprocess.run([sys.executable, "-c", _KILLED_WHILE_SAVING, str(tmp_path)], capture_output=True,
                          text=True, timeout=120, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert done.returncode == -signal.SIGKILL, done.stderr
    left = list(tmp_path.iterdir())
    assert left and all(is_temp_file(p) for p in left), left
    assert sorted(remove_temp_files(tmp_path)) == sorted(left) and not list(tmp_path.iterdir())


def test_temporary_file_names_are_ours_and_safetensors_only(tmp_path):
    from rvepfl.io import is_temp_file, remove_temp_files

    temps = [".client.safetensors.1a2b3c4d.tmp", ".tmpXw7ljY", ".tmp0a9Z1b"]
    kept = ["global.safetensors", ".tmpXw7ljYZ", ".tmp_w7lj", "tmpXw7ljY", ".tmpnotes.txt", "results.tmp"]
    for name in temps + kept:
        (tmp_path / "round_0001").mkdir(exist_ok=True)
        (tmp_path / "round_0001" / name).write_bytes(b"x")
    assert [n for n in temps + kept if is_temp_file(n)] == temps
    assert sorted(p.name for p in remove_temp_files(tmp_path)) == sorted(temps)
    assert sorted(p.name for p in (tmp_path / "round_0001").iterdir()) == sorted(kept)
