"""The Flower ServerApp's round loop over an in-process Grid (the real deployment is in
tests/e2e/test_flower.py): the same run directory as the in-process engine, nothing private
received, and the fault policy of ``[faults]``."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.helpers.flower import InProcessGrid, need_flwr

need_flwr()

from rvepfl.config import Config, apply_overrides  # noqa: E402
from rvepfl.errors import ConfigError, RoundFailedError  # noqa: E402
from rvepfl.fl.client import prepare  # noqa: E402
from rvepfl.fl.simulation import initialise, train  # noqa: E402
from rvepfl.flower.appconfig import run_config, split_run_config  # noqa: E402
from rvepfl.flower.server import FlowerServer  # noqa: E402
from rvepfl.rundir import CSV_HEADERS, PUBLISHED_CSVS, RunDir  # noqa: E402
from tests.helpers.methods import tiny_cfg  # noqa: E402
from tests.unit.test_tensorboard import scalars  # noqa: E402


def _grid(cfg: Config, tmp_path: Path, **kw) -> InProcessGrid:
    nodes = {100 + i: {"partition-id": i, "num-partitions": cfg.data.num_clients,
                       "state-dir": str(tmp_path / f"node{i}")} for i in range(cfg.data.num_clients)}
    grid = InProcessGrid(nodes, **kw)
    grid.run_config = run_config(cfg, out=str(tmp_path / "run"))
    return grid


def _flower(cfg: Config, tmp_path: Path, **kw) -> tuple[dict, InProcessGrid]:
    grid = _grid(cfg, tmp_path, **kw)
    server = FlowerServer(grid, cfg, RunDir(tmp_path / "run"), wait_nodes=5, log=lambda line: None, poll=0)
    return server.run_federation(), grid


def _csvs(run: Path) -> dict[str, str]:
    return {name: (run / "metrics" / name).read_text() for name in PUBLISHED_CSVS}


@pytest.mark.parametrize("method", [pytest.param("rvepfl", marks=pytest.mark.slow), "dp-sgd"])
def test_flower_server_writes_the_in_process_run(tmp_path, method):
    cfg = tiny_cfg(method, **{"data.subset": 200, "tensorboard": True})
    summary, grid = _flower(cfg, tmp_path)
    fed = prepare(cfg)
    initialise(fed, RunDir(tmp_path / "ref"))
    ref = train(fed, RunDir(tmp_path / "ref"))
    # Same process, one thread, lossless transport: identical CSVs, partition and global states.
    assert _csvs(tmp_path / "run") == _csvs(tmp_path / "ref")
    for name in ("partition.json", "partition.npz", "config.toml"):
        assert (tmp_path / "run" / name).read_bytes() == (tmp_path / "ref" / name).read_bytes(), name
    ours, theirs = (load_file(str(tmp_path / d / "checkpoints/round_0002/global.safetensors")) for d in ("run", "ref"))
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)
    assert summary["final"] == ref["final"] and summary["method_details"] == ref["method_details"]
    assert summary["engine"] == "flower" and summary["status"] == "complete"
    # The same TensorBoard events, timings aside (DP-SGD's: each client's epsilon too).
    events = [{tag: points for tag, points in scalars(tmp_path / d / "tensorboard").items()
               if not tag.endswith("seconds")} for d in ("run", "ref")]
    assert events[0] == events[1] and "round/test_acc" in events[0]
    assert method != "dp-sgd" or "client_1/privacy_epsilon" in events[0]
    # The server received the method's shared entries and nothing else.
    received = json.loads((tmp_path / "run" / "flower" / "received.json").read_text())
    shared = set(fed.method.shared_state(fed.method.build_model()))
    trains = [e for e in received if e["type"] == "train"]
    assert len(trains) == 4
    for entry in trains:
        assert set(entry["records"]["upload"]["arrays"]) == shared
        assert not any(k.startswith("encoder.") for r in entry["records"].values() for k in r.get("arrays", {}))
    # The private state stayed in each node's store.
    key = json.loads((tmp_path / "run" / "flower" / "run.json").read_text())["run_key"]
    assert (tmp_path / "node1" / key / "export" / "round_0002" / "0001.safetensors").is_file()


def test_a_client_that_fails_is_left_out_when_min_clients_allows(tmp_path):
    cfg = tiny_cfg("fedavg", **{"data.subset": 200, "data.num_clients": 3, "faults.min_clients": 1})
    bad = {101: "raise", 102: "die"}

    def fault(node, msg):  # node 101 raises in round 2; node 102 dies in round 2
        return bad.get(node) if msg.metadata.group_id == "2" else None

    summary, _ = _flower(cfg, tmp_path, fault=fault)
    rows = (tmp_path / "run/metrics/client_failures.csv").read_text().splitlines()
    assert rows[0] == ",".join(CSV_HEADERS["client_failures.csv"])
    assert [r.split(",")[:3] for r in rows[1:]] == [["2", "1", "error"], ["2", "2", "died"]]
    assert "injected failure on node 101" in rows[1]
    timing = (tmp_path / "run/metrics/round_timing.csv").read_text().splitlines()
    assert timing[2].split(",")[-1] == "1"  # one client finished round 2
    assert summary["status"] == "complete" and summary["client_failures"] == 2


def test_below_min_clients_the_round_fails_and_the_run_resumes(tmp_path):
    cfg = tiny_cfg("fedavg", **{"data.subset": 200, "faults.client_timeout": 0.5})
    with pytest.raises(RoundFailedError, match=r"Round 2: client 1 failed \(timeout: no reply within "
                                               r"faults.client_timeout = 0.5 s\); set faults.min_clients"):
        _flower(cfg, tmp_path,
                fault=lambda node, msg: "silent" if node == 101 and msg.metadata.group_id == "2" else None)
    assert RunDir(tmp_path / "run").read_progress()["completed_round"] == 1
    summary, _ = _flower(cfg, tmp_path)  # the node is back: round 2 again
    assert summary["status"] == "complete" and summary["rounds_completed"] == 2
    fed = prepare(apply_overrides(cfg, {"faults.client_timeout": 0.0}))  # no limit for the reference
    initialise(fed, RunDir(tmp_path / "ref"))
    train(fed, RunDir(tmp_path / "ref"))
    assert _csvs(tmp_path / "run") == _csvs(tmp_path / "ref")


def test_missing_nodes_and_bad_run_config_give_one_line_errors(tmp_path):
    cfg = tiny_cfg("fedavg")
    grid = _grid(cfg, tmp_path)
    grid.alive.discard(101)
    with pytest.raises(ConfigError, match=r"Only 1 of 2 clients' SuperNodes answered .*missing partition-id 1"):
        FlowerServer(grid, cfg, RunDir(tmp_path / "run"), wait_nodes=0.2, log=lambda _: None, poll=0).run_federation()
    flat = run_config(cfg, out="x")
    with pytest.raises(ConfigError, match="Expected `train.rounds` >= 1, got 0"):
        split_run_config({**flat, "train.rounds": 0})
    with pytest.raises(ConfigError, match="Unknown run-config key `server.port`"):
        split_run_config({**flat, "server.port": 1})
    assert split_run_config(run_config(apply_overrides(cfg, {"train.rounds": 5}), out="x"))[0].train.rounds == 5
