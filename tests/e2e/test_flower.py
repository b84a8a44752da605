"""The methods on Flower's Deployment Engine: a real SuperLink and SuperNodes as separate
processes on 127.0.0.1 (random free ports, a temporary FLWR_HOME, every process in its own
process group and stopped by group id in teardown). A deployment takes about a minute on 2
cores. Without flwr these tests skip; ``.ci/run`` installs it and makes a missing flwr a failure.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from tests.helpers.flower import need_flwr

need_flwr()

from rvepfl.config import Config  # noqa: E402
from rvepfl.fl.client import prepare  # noqa: E402
from rvepfl.fl.simulation import initialise, train  # noqa: E402
from rvepfl.flower.appconfig import write_app  # noqa: E402
from rvepfl.flower.local import LocalFederation  # noqa: E402
from rvepfl.rundir import CSV_HEADERS, PUBLISHED_CSVS, RunDir  # noqa: E402
from tests.helpers.methods import tiny_cfg  # noqa: E402

pytestmark = pytest.mark.slow  # the slow tier: `python -m pytest -m "not slow"` leaves it out



def _gone(pgid: int) -> bool:
    """Whether no live process is left in process group ``pgid`` (zombies that the machine's
    init has not reaped yet do not count: they run nothing)."""
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                stat = (proc / "stat").read_text()
            except OSError:
                continue
            fields = stat[stat.rindex(")") + 2:].split()  # state, ppid, pgrp, ...
            if int(fields[2]) == pgid and fields[0] != "Z":
                return False
    return True


def _processes_naming(path: Path) -> list[str]:
    """Command lines of live processes that name ``path`` (what a deployment left behind)."""
    found = []
    for proc in Path("/proc").iterdir():
        if proc.name.isdigit():
            try:
                cmd = (proc / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if str(path) in cmd and int(proc.name) != os.getpid():
                found.append(cmd)
    return found


def _deploy(cfg: Config, work: Path, *, during=None) -> tuple[int, list[str]]:
    """Run ``cfg`` on a local federation in ``work``; ``during(fed)`` runs in a thread meanwhile."""
    app = write_app(work / "app", cfg, out=work / "run")
    lines: list[str] = []
    fed = LocalFederation(work / "fed", cfg.data.num_clients)
    try:
        fed.start()
        if during is not None:
            threading.Thread(target=during, args=(fed,), daemon=True).start()
        code = fed.run_app(app, stream=lines.append, timeout=400)
    finally:
        fed.stop()
        groups = [p.pid for p in fed.procs.values()]
        assert groups and all(_gone(g) for g in groups), "a process group outlived the federation"
    return code, lines


def _csvs(run: Path) -> dict[str, str]:
    return {name: (run / "metrics" / name).read_text() for name in PUBLISHED_CSVS}


def test_two_rounds_of_rvepfl_on_two_supernodes_match_the_in_process_engine(tmp_path):
    cfg = tiny_cfg("rvepfl", **{"data.subset": 200})
    started = time.monotonic()
    code, lines = _deploy(cfg, tmp_path)
    seconds = time.monotonic() - started
    assert code == 0, "\n".join(lines[-20:])
    run = tmp_path / "run"
    assert json.loads((run / "flower/status.json").read_text()) == {"status": "complete"}
    for name, header in CSV_HEADERS.items():
        rows = (run / "metrics" / name).read_text().splitlines()
        assert rows[0] == ",".join(header)
    assert len((run / "metrics/client_testing.csv").read_text().splitlines()) == 1 + 2 * 2
    summary = json.loads((run / "summary.json").read_text())
    assert summary["engine"] == "flower" and summary["rounds_completed"] == 2
    # What the server received: the classifier of each client in each round, no encoder tensor.
    received = json.loads((run / "flower/received.json").read_text())
    uploads = [e["records"]["upload"]["arrays"] for e in received if e["type"] == "train"]
    assert len(uploads) == 4
    for arrays in uploads:
        assert arrays and all(k.startswith("classifier.") for k in arrays)
    every_key = [k for e in received for r in e.get("records", {}).values() for k in r.get("arrays", {})]
    assert not [k for k in every_key if k.startswith("encoder.")]
    # The encoders stayed on the nodes, on disk.
    key = json.loads((run / "flower/run.json").read_text())["run_key"]
    for i in range(2):
        assert list((tmp_path / f"fed/nodes/node-{i}" / key).glob("*-r0002.safetensors"))
    # The same config and seed through the in-process engine: the same partition and metrics.
    # One torch thread in every process and float32 arrays / float64 metrics sent as raw bytes:
    # the arithmetic is the same, so the files must be byte-identical (tolerance 0).
    fed = prepare(cfg)
    initialise(fed, RunDir(tmp_path / "ref"))
    train(fed, RunDir(tmp_path / "ref"))
    assert (run / "partition.npz").read_bytes() == (tmp_path / "ref/partition.npz").read_bytes()
    assert _csvs(run) == _csvs(tmp_path / "ref")
    print(f"2 rounds of RVE-PFL on a loopback deployment: {seconds:.0f} s")


def test_a_supernode_killed_mid_round_is_recorded_and_the_run_completes(tmp_path):
    cfg = tiny_cfg("fedavg", **{"data.subset": 200, "faults.min_clients": 1, "faults.client_timeout": 120})
    progress = tmp_path / "run/state/progress.json"
    killed: list[float] = []

    def kill_node_1_in_round_2(fed: LocalFederation) -> None:
        while not (progress.exists() and json.loads(progress.read_text())["completed_round"] == 1):
            time.sleep(0.1)
        fed.kill("supernode-1")  # SIGKILL to its process group: the node and its apps die
        killed.append(time.monotonic())

    code, lines = _deploy(cfg, tmp_path, during=kill_node_1_in_round_2)
    assert code == 0 and killed, "\n".join(lines[-20:])
    run = tmp_path / "run"
    rows = [r.split(",") for r in (run / "metrics/client_failures.csv").read_text().splitlines()[1:]]
    # The SuperLink reports the node unavailable once it misses its heartbeats (about 50 s here),
    # before faults.client_timeout.
    assert [r[:3] for r in rows] == [["2", "1", "died"]] and "Node Unavailable" in rows[0][4]
    timing = (run / "metrics/round_timing.csv").read_text().splitlines()
    assert [t.split(",")[-1] for t in timing[1:]] == ["2", "1"]
    assert json.loads((run / "summary.json").read_text())["status"] == "complete"


def test_tls_and_supernode_authentication_on_loopback_through_the_cli(tmp_path):
    """``--auth``: TLS, and a SuperLink that accepts only the nodes whose keys were registered
    (both are, so both take part)."""
    cfg_file = tmp_path / "tiny.toml"
    cfg_file.write_text('method = "fedavg"\nthreads = 1\nworkers = 1\ndevice = "cpu"\n'
                        "[data]\nsubset = 200\nnum_clients = 2\n[train]\nrounds = 1\nlocal_epochs = 1\nbatch_size = 32\n")
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "rvepfl", "flower-local", "--config", str(cfg_file),
                             "--out", str(run), "--auth"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    assert "finished in" in out and "Mean client test metrics" in out
    logs = run / "flower/local/logs"
    assert "Uvicorn running on https://127.0.0.1:" in (logs / "superlink.log").read_text()
    assert "SuperNode authentication on" in err and err.count("registered ") == 2
    for i in range(2):
        cmd = (logs / f"supernode-{i}.log").read_text()
        assert "SuperNode ID" in cmd
    assert "--insecure" not in err
    assert json.loads((run / "summary.json").read_text())["status"] == "complete"
    assert not _processes_naming(tmp_path), "processes outlived rvepfl flower-local"


REPO = Path(__file__).resolve().parents[2]


def test_an_unregistered_supernode_is_refused_and_a_misbehaving_clientapp_is_rejected(tmp_path):
    """A SuperLink with SuperNode authentication, and two nodes: node 1's key is not registered,
    so the SuperLink refuses it and the run says that client 1's node never answered. Once its key
    is registered it takes part, but its ClientApp sends a NaN in its upload
    (tests/helpers/adversary.py, loaded in the nodes' processes): the ServerApp rejects that
    upload, records why, and the round completes with client 0 alone."""
    cfg = tiny_cfg("fedavg", **{"data.subset": 200, "train.rounds": 1, "faults.min_clients": 1})
    site = str(REPO / "tests/helpers/faulty")  # its sitecustomize loads the adversary
    env = {"PYTHONPATH": os.pathsep.join([site, str(REPO), os.environ.get("PYTHONPATH", "")]),
           "RVEPFL_TEST_ADVERSARY": "1:nan"}
    fed = LocalFederation(tmp_path / "fed", 2, tls=True, auth=True, unregistered=frozenset({1}), node_env=env)
    lines: list[str] = []
    try:
        fed.start()
        code = fed.run_app(write_app(tmp_path / "app1", cfg, out=tmp_path / "refused", wait_nodes=10),
                           stream=lines.append, timeout=300)
        # The ServerApp says so in the streamed log (flwr run itself exits 0) and creates nothing.
        said = [line for line in lines if "error: Only 1 of 2 clients' SuperNodes answered" in line]
        assert said and "server.wait_nodes = 10 s (missing partition-id 1)" in said[0], "\n".join(lines[-30:])
        assert not (tmp_path / "refused").exists()
        refused = (fed.logs / "supernode-1.log").read_text()
        assert "Failed to activate SuperNode" in refused, refused[-2000:]
        assert "No SuperNode found with the given public key" in (fed.logs / "superlink.log").read_text()

        fed.register(fed.node_dir(1) / "auth" / "node.pub")
        fed.kill("supernode-1")
        fed.start_node(1)
        lines.clear()
        code = fed.run_app(write_app(tmp_path / "app2", cfg, out=tmp_path / "run", wait_nodes=60),
                           stream=lines.append, timeout=300)
        assert code == 0, "\n".join(lines[-30:])
    finally:
        fed.stop()
    run = tmp_path / "run"
    assert json.loads((run / "summary.json").read_text())["status"] == "complete"
    failures = (run / "metrics/client_failures.csv").read_text().splitlines()[1:]
    assert len(failures) == 1 and failures[0].startswith("1,1,rejected,"), failures
    assert "upload refused: `" in failures[0] and "holds 1 NaN or infinite value" in failures[0]
    assert [t.split(",")[-1] for t in (run / "metrics/round_timing.csv").read_text().splitlines()[1:]] == ["1"]
