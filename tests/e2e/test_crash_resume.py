"""Crash and resume: `rvepfl train`, `compare` and `audit` killed with SIGKILL at exact points.

Each case runs the command under :mod:`tests.helpers.crash`, which kills the process at one point
of its work (inside local training, between clients, or midway through writing a given file,
leaving that file's temporary file half written). Then, before resuming, no file of the run may
be truncated or half written (only the atomic writer's uncommitted ``.<name>.*.tmp`` files may
be); after the resume, none of those is left and every CSV, checkpoint and client state equals
an uninterrupted run's. The runs are FedPer: a client store of private states, like RVE-PFL's
encoders, at a fraction of the cost. The resumes run in this process (the same `rvepfl.cli.main`
as the command) to keep the file fast.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib  # type: ignore[no-redef]

from rvepfl.cli import main
from rvepfl.config import config_hash, load_config
from rvepfl.io import is_temp_file, read_metadata
from rvepfl.rundir import CSV_HEADERS
from tests.helpers.processes import run_until_crash
from tests.helpers.suites import finished_suite, toml_text

pytestmark = pytest.mark.slow  # the slow tier: `python -m pytest -m "not slow"` leaves it out

TINY = ["--method", "fedper", "--subset", "200", "--clients", "2", "--rounds", "2", "--local-epochs", "1",
        "--batch-size", "32", "--threads", "1"]


# -- checks ----------------------------------------------------------------------------------------
def check_files(root: Path) -> list[Path]:
    """Open every file under ``root`` as what its name says it is; return the temporary files (the
    only ones allowed to be partial). A truncated or half-written file fails here."""
    temps = []
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        if is_temp_file(path):
            temps.append(path)
        elif path.suffix == ".csv":
            with open(path, newline="", encoding="utf-8") as fh:
                rows = list(csv.reader(fh))
            assert rows, f"{path} is empty"
            if path.parent.name == "metrics":
                assert rows[0] == CSV_HEADERS[path.name], path
            assert all(len(row) == len(rows[0]) for row in rows), f"{path} has a short row"
        elif path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
        elif path.suffix == ".safetensors":
            load_file(path)
        elif path.suffix == ".toml":
            tomllib.loads(path.read_text(encoding="utf-8"))
        elif path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as npz:
                for key in npz.files:
                    npz[key]
        elif path.suffix == ".png":
            data = path.read_bytes()
            assert data.startswith(b"\x89PNG\r\n\x1a\n") and data.endswith(b"IEND\xaeB`\x82"), f"{path} is cut"
        elif path.suffix == ".md":
            assert path.read_text(encoding="utf-8").endswith("do not edit by hand.\n"), f"{path} is cut"
        else:
            raise AssertionError(f"unexpected file {path}: add a check for its kind")
    return temps


def read_rows(path: Path) -> list[list[str]]:
    with open(path, newline="", encoding="utf-8") as fh:
        return list(csv.reader(fh))


def assert_same_run(run: Path, ref: Path) -> None:
    """Every CSV, checkpoint and client state of ``run`` equals ``ref``'s (times aside)."""
    files = {p.relative_to(run) for p in run.rglob("*") if p.is_file() and "attacks" not in p.parts}
    assert files == {p.relative_to(ref) for p in ref.rglob("*") if p.is_file() and "attacks" not in p.parts}
    for name in CSV_HEADERS:
        got, want = read_rows(run / "metrics" / name), read_rows(ref / "metrics" / name)
        if name == "round_timing.csv":  # seconds differ; rounds and clients may not
            got, want = [[r[0], r[-1]] for r in got], [[r[0], r[-1]] for r in want]
        assert got == want, name
    tensors = sorted(p for p in files if p.suffix == ".safetensors")
    assert any("clients" in p.parts and "checkpoints" in p.parts for p in tensors), "no exported client state"
    for rel in tensors:
        got, want = load_file(run / rel), load_file(ref / rel)
        assert got.keys() == want.keys(), rel
        assert all(torch.equal(got[k], want[k]) for k in want), rel
        assert read_metadata(run / rel) == read_metadata(ref / rel), rel
    assert config_hash(load_config(run / "config.toml")) == config_hash(load_config(ref / "config.toml"))
    assert (run / "partition.npz").read_bytes() == (ref / "partition.npz").read_bytes()
    progress, ref_progress = (json.loads((d / "state/progress.json").read_text()) for d in (run, ref))
    assert progress["completed_round"] == ref_progress["completed_round"]
    assert progress["federation_steps"] == ref_progress["federation_steps"]
    summary, ref_summary = (json.loads((d / "summary.json").read_text()) for d in (run, ref))
    for key in ("status", "rounds_completed", "final", "accuracy_per_round", "method_details", "config_hash"):
        assert summary[key] == ref_summary[key], key


def skipped_run(label: str) -> str:
    """The line `compare` and `audit` print for a finished run they skip (labels ``mnist-<method>-seed<k>``)."""
    dataset, method, seed = label.split("-")
    return f"{dataset} {method} seed {seed.removeprefix('seed')}: complete, skipped"


def snapshot(root: Path) -> dict[str, tuple[int, int]]:
    """(inode, mtime) of every committed file under ``root``: a file rewritten gets a new inode."""
    return {str(p.relative_to(root)): (p.stat().st_ino, p.stat().st_mtime_ns)
            for p in sorted(root.rglob("*")) if p.is_file() and not is_temp_file(p)}


# -- rvepfl train ----------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("train") / "ref"
    assert main(["train", *TINY, "--workers", "1", "--quiet", "--out", str(out)]) == 0
    return out


# (case id, workers, point, whether a half-written temporary file is left). Writes per round, in
# order: the eight CSVs, the global checkpoint, the clients' export (last round), progress.json,
# summary.json; progress.json is written once more when the run is created.
TRAIN_CASES = [
    ("inside-local-training", 1, {"at": "step", "round": 2, "client": 1, "step": 2}, False),
    ("inside-local-training-in-a-worker", 2, {"at": "step", "round": 2, "client": 1, "step": 2}, False),
    ("between-clients", 1, {"at": "client_done", "round": 2, "index": 0}, False),
    ("writing-a-csv", 1, {"at": "write", "file": "metrics/client_testing.csv", "occurrence": 2}, True),
    ("writing-the-global-checkpoint", 1, {"at": "write", "file": "round_0002/global.safetensors"}, True),
    ("writing-a-client-store-file", 1, {"at": "write", "file": "clients/0001-r0002.safetensors"}, True),
    ("writing-progress-json", 1, {"at": "write", "file": "state/progress.json", "occurrence": 3}, True),
    ("writing-summary-json", 1, {"at": "write", "file": "killed/summary.json", "occurrence": 2}, True),
    ("writing-progress-json-at-creation", 1, {"at": "write", "file": "state/progress.json"}, True),
]


@pytest.mark.parametrize(("workers", "point", "half_written"), [c[1:] for c in TRAIN_CASES],
                         ids=[c[0] for c in TRAIN_CASES])
def test_train_killed_then_resumed_equals_an_uninterrupted_run(reference, tmp_path, workers, point, half_written):
    out = tmp_path / "killed"
    where, _ = run_until_crash(["train", *TINY, "--workers", str(workers), "--out", str(out)], point,
                            tmp_path / "mark")
    temps = check_files(out)
    if half_written:
        name = Path(point["file"]).name
        assert [t for t in temps if t.name.startswith(f".{name}.")], f"no half-written temporary file ({where})"
    assert main(["train", "--resume", str(out), "--quiet"]) == 0
    assert check_files(out) == [], "the resume left temporary files"
    assert_same_run(out, reference)


# -- rvepfl compare --------------------------------------------------------------------------------
COMPARE = toml_text(["fedavg", "fedper"], [0], rounds=2, name="crash")
# The first step of a run: round 1, client 0, step 1; its second occurrence is in the second run.
SECOND_RUN_TRAINS = {"at": "step", "round": 1, "client": 0, "step": 1, "occurrence": 2}


@pytest.fixture(scope="module")
def compare_reference(tmp_path_factory) -> Path:
    return finished_suite(tmp_path_factory.mktemp("compare"), "compare", COMPARE)


def rerun(args: list[str], point: dict | None, out: Path, finished: dict[str, list[str]], mark: Path,
          capsys: pytest.CaptureFixture[str]) -> None:
    """Run ``args`` again, killed at ``point`` (None: to the end, in this process); check that the
    runs in ``finished`` (label -> those of its attack directories that were finished too) were
    skipped, not redone, and that no file is half written."""
    before = {label: snapshot(out / "runs" / label) for label in finished}
    evaluators = snapshot(out / "evaluators") if (out / "evaluators").exists() else {}
    if point is None:
        capsys.readouterr()
        assert main(args) == 0
        log = capsys.readouterr().err
        assert check_files(out) == [], "temporary files left"
    else:
        _, log = run_until_crash(args, point, mark)
        check_files(out)
    for label, jobs in finished.items():
        assert skipped_run(label) in log, log
        after = snapshot(out / "runs" / label)
        kept = {k: v for k, v in before[label].items() if not k.startswith("attacks/") or k.split("/")[1] in jobs}
        assert {k: after.get(k) for k in kept} == kept, f"{label} was redone"
        for job in jobs:
            attack, threat = job.split("-")
            assert f"[{label}] {attack} ({threat}): {attack}: complete with these settings, skipped" in log, log
    if evaluators:
        assert snapshot(out / "evaluators") == evaluators, "the evaluator was trained again"


def test_compare_killed_twice_then_rerun_redoes_nothing_finished(compare_reference, tmp_path, capsys):
    (tmp_path / "c.toml").write_text(COMPARE)
    out = tmp_path / "out"
    args = ["compare", "--config", str(tmp_path / "c.toml"), "--out", str(out), "--quiet"]
    run_until_crash(args, SECOND_RUN_TRAINS, tmp_path / "mark")
    check_files(out)
    # Rerun: the first run is skipped, the second resumes; killed again while the table is written.
    rerun(args, {"at": "write", "file": "table.md"}, out, {"mnist-fedavg-seed0": []}, tmp_path / "mark", capsys)
    # Rerun to the end: both runs skipped.
    rerun(args, None, out, {"mnist-fedavg-seed0": [], "mnist-fedper-seed0": []}, tmp_path / "mark", capsys)
    assert check_files(out) == []
    for name in ("table.csv", "table.md"):
        assert (out / name).read_text() == (compare_reference / name).read_text()
    for label in ("mnist-fedavg-seed0", "mnist-fedper-seed0"):
        assert_same_run(out / "runs" / label, compare_reference / "runs" / label)


# -- rvepfl audit ----------------------------------------------------------------------------------
AUDIT = toml_text(["fedavg", "fedper"], [0], rounds=1, name="crash-audit") + """
[audit]
attacks = ["idlg", "miface"]
miface_threats = ["stolen"]
images = 2
evaluator_images = 500
[audit.iterations]
idlg = 2
miface = 3
"""


@pytest.fixture(scope="module")
def audit_reference(tmp_path_factory) -> Path:
    return finished_suite(tmp_path_factory.mktemp("audit"), "audit", AUDIT)


def test_audit_killed_twice_then_rerun_redoes_nothing_finished(audit_reference, tmp_path, capsys):
    (tmp_path / "a.toml").write_text(AUDIT)
    out = tmp_path / "out"
    args = ["audit", "--config", str(tmp_path / "a.toml"), "--out", str(out), "--quiet"]
    run_until_crash(args, SECOND_RUN_TRAINS, tmp_path / "mark")
    check_files(out)
    # Rerun: the first run is skipped, the second resumes; the attacks begin (jobs in order:
    # fedavg's idlg and miface, fedper's idlg (no surface) and miface), killed inside the second
    # MI-Face, fedper's.
    second_miface = {"at": "call", "function": "rvepfl.attacks.miface:mi_face", "occurrence": 2}
    rerun(args, second_miface, out, {"mnist-fedavg-seed0": []}, tmp_path / "mark", capsys)
    # Rerun to the end: both runs and fedavg's attacks skipped, the evaluator reused.
    rerun(args, None, out, {"mnist-fedavg-seed0": ["idlg-gradient", "miface-stolen"], "mnist-fedper-seed0": []},
          tmp_path / "mark", capsys)
    assert check_files(out) == []
    for name in ("audit.csv", "audit.md"):
        assert (out / name).read_text() == (audit_reference / name).read_text()
    for label in ("mnist-fedavg-seed0", "mnist-fedper-seed0"):
        assert_same_run(out / "runs" / label, audit_reference / "runs" / label)
