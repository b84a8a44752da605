"""Clients trained side by side in worker processes (``workers`` > 1) give the same run."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from rvepfl.config import apply_overrides
from rvepfl.fl.client import prepare
from rvepfl.fl.simulation import initialise, train
from rvepfl.methods import RoundContext
from rvepfl.methods.base import DataSpec
from rvepfl.registry import available_methods, method_class
from rvepfl.rundir import PUBLISHED_CSVS, RunDir
from tests.helpers.methods import random_data, tiny_cfg
from tests.helpers.processes import kill_at_line

pytestmark = pytest.mark.slow  # the slow tier: `python -m pytest -m "not slow"` leaves it out



def _csvs(run: Path) -> dict[str, str]:
    return {name: (run / "metrics" / name).read_text() for name in PUBLISHED_CSVS}


def _train(cfg, path: Path) -> dict:
    fed = prepare(cfg)
    run = RunDir(path)
    initialise(fed, run)
    return train(fed, run)


@pytest.mark.parametrize("method", ["fedrep", "dp-sgd"])
def test_two_workers_give_the_same_csvs_as_one_process(tmp_path, method):
    # One thread in every process: the same arithmetic, so the CSVs must be identical, with the
    # federation-wide decay clock (each worker's clock comes from the planned steps) and DP-SGD's
    # accounting (reported with the upload) included.
    one = _train(tiny_cfg(method, **{"data.num_clients": 3}), tmp_path / "one")
    two = _train(tiny_cfg(method, workers=2, **{"data.num_clients": 3}), tmp_path / "two")
    assert _csvs(tmp_path / "one") == _csvs(tmp_path / "two")
    assert one["method_details"] == two["method_details"]
    assert two["workers"] == 2 and two["threads"] == 1
    for c in range(3):
        assert (tmp_path / "two" / f"checkpoints/round_0002/clients/{c:04d}.safetensors").is_file()


def test_two_workers_with_the_client_clock_and_client_sampling(tmp_path):
    overrides = {"data.num_clients": 4, "train.client_fraction": 0.5, "train.lr_decay_clock": "client"}
    _train(tiny_cfg("fedper", **overrides), tmp_path / "one")
    _train(tiny_cfg("fedper", workers=2, **overrides), tmp_path / "two")
    assert _csvs(tmp_path / "one") == _csvs(tmp_path / "two")


@pytest.mark.parametrize("method", sorted(available_methods()))
def test_planned_steps_match_local_train(method):
    for n, batch in ((50, 16), (64, 16), (7, 32)):
        cfg = apply_overrides(tiny_cfg(method), {"train.batch_size": batch, "personal.head_epochs": 2})
        m = method_class(method)(cfg, DataSpec(1, 8, 10, (n, n)))
        steps = m.local_train(m.build_model(), random_data(n, 2), RoundContext(1, 0, 0), 100) - 100
        assert steps == m.planned_steps(n), (method, n, batch)


def _children(pid: int) -> list[int]:
    out = subprocess.run(["pgrep", "-P", str(pid)], capture_output=True, text=True, check=False).stdout
    return [int(p) for p in out.split()]


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    stat = Path(f"/proc/{pid}/stat")
    return not (stat.exists() and stat.read_text().split(") ")[-1].startswith("Z"))


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="workers die with the engine on Linux")
def test_kill_with_workers_leaves_no_worker_and_resumes_to_the_same_csvs(tmp_path):
    tiny = ["--method", "fedavg", "--subset", "300", "--clients", "4", "--rounds", "2", "--local-epochs", "1",
            "--batch-size", "32", "--threads", "1"]
    reference = subprocess.run([sys.executable, "-m", "rvepfl", "train", *tiny, "--quiet", "--out",
                                str(tmp_path / "ref")], capture_output=True, text=True, timeout=300)
    assert reference.returncode == 0, reference.stderr
    out = tmp_path / "killed"
    workers: list[int] = []
    status = kill_at_line([sys.executable, "-m", "rvepfl", "train", *tiny, "--workers", "2", "--out", str(out)],
                          "round 2/2, client 0 (1 of 4)", lambda pid: workers.extend(_children(pid)))
    assert status == -signal.SIGKILL
    assert workers, "the engine had no worker processes"
    deadline = time.monotonic() + 20
    while any(_alive(p) for p in workers) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not any(_alive(p) for p in workers), "a worker outlived the engine"
    resumed = subprocess.run([sys.executable, "-m", "rvepfl", "train", "--resume", str(out), "--quiet"],
                             capture_output=True, text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    assert _csvs(out) == _csvs(tmp_path / "ref")
    assert not list(out.rglob("*.tmp"))
