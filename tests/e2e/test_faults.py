"""Client faults: clients that raise, die or hang are left out of their round when `[faults]`
allows it, recorded in metrics/client_failures.csv, and otherwise stop the run resumable."""

from __future__ import annotations

import csv
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from rvepfl.errors import RoundFailedError
from rvepfl.fl import client as client_side
from rvepfl.fl import simulation
from rvepfl.fl.client import ClientFailure, Federation, prepare
from rvepfl.fl.simulation import initialise, train
from rvepfl.rundir import PUBLISHED_CSVS, RunDir
from tests.helpers.methods import tiny_cfg

pytestmark = pytest.mark.slow  # the slow tier: `python -m pytest -m "not slow"` leaves it out

FAULTY = Path(__file__).resolve().parents[1] / "helpers" / "faulty"
TINY = ["--method", "fedavg", "--subset", "300", "--clients", "3", "--rounds", "3", "--local-epochs", "1",
        "--batch-size", "32", "--threads", "1", "--quiet"]


def _rows(run: Path, name: str) -> list[dict[str, str]]:
    with open(run / "metrics" / name, newline="") as fh:
        return list(csv.DictReader(fh))


def _csvs(run: Path) -> dict[str, str]:
    return {name: (run / "metrics" / name).read_text() for name in PUBLISHED_CSVS}


def _inject(monkeypatch: pytest.MonkeyPatch, faults: dict[tuple[int, int], str]) -> None:
    """Make train_client raise for the (round, client) pairs in ``faults`` (in this process)."""
    original = client_side.train_client

    def faulty(fed, model, store, initial_private, global_state, round_, client, *args):
        if (round_, client) in faults:
            raise ValueError(f"injected fault of client {client} in round {round_}")
        return original(fed, model, store, initial_private, global_state, round_, client, *args)

    monkeypatch.setattr(client_side, "train_client", faulty)


def _new_run(path: Path, **overrides) -> tuple[Federation, RunDir]:
    fed = prepare(tiny_cfg("fedavg", **{"data.num_clients": 3, "train.checkpoint_every": 1, **overrides}))
    run = RunDir(path)
    initialise(fed, run)
    return fed, run


@pytest.fixture(scope="module")
def reference(tmp_path_factory) -> Path:
    """The tiny three-client run with no fault."""
    path = tmp_path_factory.mktemp("faults") / "reference"
    fed, run = _new_run(path)
    train(fed, run)
    return path


def test_a_client_that_raises_is_left_out_and_recorded(tmp_path, monkeypatch, reference):
    _inject(monkeypatch, {(2, 1): "raise"})
    fed, run = _new_run(tmp_path / "run", **{"faults.min_clients": 2})
    summary = train(fed, run)
    assert summary["status"] == "complete"
    failures = _rows(run.path, "client_failures.csv")
    assert [(f["Round#"], f["client#"], f["Failure"]) for f in failures] == [("2", "1", "error")]
    assert failures[0]["Message"].startswith("ValueError: injected fault of client 1 in round 2 (at test_faults.py:")
    assert [r["Clients"] for r in _rows(run.path, "round_timing.csv")] == ["3", "2"]
    assert [r["client#"] for r in _rows(run.path, "client_testing.csv") if r["Round#"] == "2"] == ["0", "2"]
    # Round 1 had no fault, so it equals the reference; round 2 averaged two clients, not three.
    assert _rows(run.path, "epoch_testing.csv")[0] == _rows(reference, "epoch_testing.csv")[0]
    assert _rows(run.path, "epoch_testing.csv")[1] != _rows(reference, "epoch_testing.csv")[1]
    # The failed client keeps its round-1 state: its round-2 state was discarded.
    after_1 = load_file(run.round_dir(1) / "clients" / "0001.safetensors")
    after_2 = load_file(run.round_dir(2) / "clients" / "0001.safetensors")
    assert after_1.keys() == after_2.keys() and all(torch.equal(after_1[k], after_2[k]) for k in after_1)


def test_the_global_state_is_the_mean_of_the_clients_that_finished(tmp_path, monkeypatch):
    """Client 1 fails in round 1: the new global state is the mean of clients 0 and 2's uploads,
    which a run that only has those two clients' uploads reproduces."""
    uploads = []
    original = simulation.InProcess.run_round

    def recording(self, *args, **kwargs):
        for client, result, seconds in original(self, *args, **kwargs):
            if not isinstance(result, ClientFailure):
                uploads.append(result.upload.state)
            yield client, result, seconds

    monkeypatch.setattr(simulation.InProcess, "run_round", recording)
    _inject(monkeypatch, {(1, 1): "raise"})
    fed, run = _new_run(tmp_path / "run", **{"faults.min_clients": 1, "train.rounds": 1})
    train(fed, run)
    assert len(uploads) == 2
    saved = load_file(run.global_checkpoint(1))
    for key, value in saved.items():
        expected = ((uploads[0][key].double() + uploads[1][key].double()) / 2).float()
        assert torch.allclose(value, expected, rtol=0, atol=1e-7), key


def test_without_tolerance_the_clients_error_stops_the_run_and_it_resumes(tmp_path, monkeypatch, reference):
    _inject(monkeypatch, {(2, 1): "raise"})
    fed, run = _new_run(tmp_path / "run")
    with pytest.raises(ValueError, match="injected fault of client 1 in round 2"):
        train(fed, run)
    assert run.read_progress()["completed_round"] == 1
    monkeypatch.undo()
    train(prepare(fed.cfg), run)
    assert _csvs(run.path) == _csvs(reference)


def test_below_min_clients_the_round_fails_with_one_line_and_the_run_resumes(tmp_path, monkeypatch, reference):
    _inject(monkeypatch, {(2, 0): "raise", (2, 2): "raise"})
    fed, run = _new_run(tmp_path / "run", **{"faults.min_clients": 2})
    with pytest.raises(RoundFailedError) as info:
        train(fed, run)
    message = str(info.value)
    assert "\n" not in message
    assert message.startswith("Round 2: 2 of 3 clients failed, so fewer than faults.min_clients = 2 can finish it")
    assert f"--resume {run.path}" in message
    assert run.read_progress()["completed_round"] == 1
    assert not (run.path / "checkpoints" / "round_0002").exists()
    monkeypatch.undo()
    train(prepare(fed.cfg), run)
    assert _csvs(run.path) == _csvs(reference)
    assert len(_rows(run.path, "client_failures.csv")) == 0


def _cli(args: list[str], faults: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {**os.environ, "PYTHONPATH": os.pathsep.join([str(FAULTY), os.environ.get("PYTHONPATH", "")]),
               "RVEPFL_TEST_FAULTS": faults, **env}
    return subprocess.run([sys.executable, "-m", "rvepfl", *args], capture_output=True, text=True,
                          timeout=600, env=environ)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses SIGKILL and /proc")
def test_workers_that_die_or_hang_are_replaced_and_the_run_completes(tmp_path):
    """Round 2: client 0's worker kills itself and client 2's worker hangs past the time limit.
    Both are left out; fresh workers take round 3, which all three clients finish."""
    out = tmp_path / "run"
    result = _cli(["train", *TINY, "--workers", "2", "--set", "faults.min_clients=1",
                   "--set", "faults.client_timeout=10", "--out", str(out)], "2:0:die,2:2:hang")
    assert result.returncode == 0, result.stderr
    failures = _rows(out, "client_failures.csv")
    assert [(f["Round#"], f["client#"], f["Failure"]) for f in failures] == [("2", "0", "died"), ("2", "2", "timeout")]
    assert "killed by signal 9" in failures[0]["Message"]
    assert "past faults.client_timeout = 10 s" in failures[1]["Message"]
    assert 10 <= float(failures[1]["Seconds"]) < 60
    assert [r["Clients"] for r in _rows(out, "round_timing.csv")] == ["3", "1", "3"]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["workers"] == 2
    assert not list(out.rglob("*.tmp"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="uses SIGKILL")
def test_a_dead_worker_without_tolerance_is_a_one_line_error_and_resumes(tmp_path):
    out = tmp_path / "run"
    result = _cli(["train", *TINY, "--workers", "2", "--out", str(out)], "2:1:die")
    assert result.returncode == 3, result.stderr
    last = result.stderr.strip().splitlines()[-1]
    assert last.startswith("error: Round 2: client 1 failed (died: its worker process died (killed by signal 9")
    assert "Traceback" not in result.stderr
    assert json.loads((out / "state" / "progress.json").read_text())["completed_round"] == 1
    resumed = _cli(["train", "--resume", str(out), "--quiet"], "")
    assert resumed.returncode == 0, resumed.stderr
    assert [r["Clients"] for r in _rows(out, "round_timing.csv")] == ["3", "3", "3"]


def test_the_keys_a_resume_may_change_are_outside_the_config_hash():
    from rvepfl.cli import RESUMABLE_KEYS
    from rvepfl.config import Config, apply_overrides, config_hash

    base = Config()
    changed = {"threads": 3, "workers": 2, "device": "cpu", "tensorboard": True, "train.eval_batch_size": 7,
               "faults.min_clients": 1, "faults.client_timeout": 9.5}
    assert set(changed) == RESUMABLE_KEYS
    for key, value in changed.items():
        assert config_hash(apply_overrides(base, {key: value})) == config_hash(base), key
    assert config_hash(apply_overrides(base, {"train.rounds": 3})) != config_hash(base)


def test_resume_may_lower_min_clients_and_records_it_in_config_toml(tmp_path, monkeypatch):
    _inject(monkeypatch, {(2, 0): "raise"})
    fed, run = _new_run(tmp_path / "run")
    with pytest.raises(ValueError, match="injected fault"):
        train(fed, run)
    from rvepfl.cli import main

    assert main(["train", "--resume", str(run.path), "--set", "faults.min_clients=2", "--quiet"]) == 0
    assert "min_clients = 2" in (run.path / "config.toml").read_text()
    assert [(f["Round#"], f["client#"]) for f in _rows(run.path, "client_failures.csv")] == [("2", "0")]
