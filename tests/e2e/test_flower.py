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

from rvepfl.config import Config, apply_overrides, dumps_config  # noqa: E402
from rvepfl.fl.client import prepare  # noqa: E402
from rvepfl.fl.simulation import initialise, train  # noqa: E402
from rvepfl.flower.appconfig import write_app  # noqa: E402
from rvepfl.flower.local import LocalFederation  # noqa: E402
from rvepfl.rundir import CSV_HEADERS, PUBLISHED_CSVS, RunDir  # noqa: E402
from tests.helpers import adversary  # noqa: E402
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


REPO = Path(__file__).resolve().parents[2]


def _adversary_env(spec: str) -> dict[str, str]:
    """The SuperNodes' environment that makes client ``CLIENT`` of ``spec`` (``CLIENT:KIND``) send
    corrupted uploads (tests/helpers/adversary.py, loaded by tests/helpers/faulty's sitecustomize
    into every process the node starts, its ClientApps included)."""
    path = [str(REPO / "tests/helpers/faulty"), str(REPO), os.environ.get("PYTHONPATH", "")]
    return {"PYTHONPATH": os.pathsep.join(path), "RVEPFL_TEST_ADVERSARY": spec}


def _deploy(cfg: Config, work: Path, *, during=None, node_env: dict[str, str] | None = None) -> tuple[int, list[str]]:
    """Run ``cfg`` on a local federation in ``work``; ``during(fed)`` runs in a thread meanwhile;
    ``node_env``: what the SuperNodes' environment adds."""
    app = write_app(work / "app", cfg, out=work / "run")
    lines: list[str] = []
    fed = LocalFederation(work / "fed", cfg.data.num_clients, node_env=node_env or {})
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


def _flower_local(tmp_path: Path, cfg_text: str, *extra: str,
                  env: dict[str, str] | None = None) -> tuple[Path, str, str]:
    """``rvepfl flower-local`` on a config file holding ``cfg_text``; (run directory, stdout, stderr)."""
    cfg_file = tmp_path / "tiny.toml"
    cfg_file.write_text(cfg_text)
    run = tmp_path / "run"
    proc = subprocess.Popen([sys.executable, "-m", "rvepfl", "flower-local", "--config", str(cfg_file),
                             "--out", str(run), *extra], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True, env={**os.environ, **(env or {})})
    try:
        out, err = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, 9)
            proc.wait()
    assert proc.returncode == 0, err[-3000:]
    assert not _processes_naming(tmp_path), "processes outlived rvepfl flower-local"
    return run, out, err


def test_rvepfl_with_tls_node_authentication_and_a_misbehaving_clientapp_matches_the_in_process_engine(
        tmp_path, monkeypatch):
    """``rvepfl flower-local --auth``: TLS with a fresh self-signed CA, and a SuperLink that
    accepts only the nodes whose keys it registered (both are, so both take part). Client 1's
    ClientApp sends a NaN in its upload every round (tests/helpers/adversary.py, loaded into the
    deployment's processes): the ServerApp refuses it, records why, and each round counts with
    client 0. The same config, seed and adversary through the in-process engine give the same
    numbers, byte for byte."""
    cfg = tiny_cfg("rvepfl", **{"data.subset": 200, "faults.min_clients": 1})
    started = time.monotonic()
    run, out, err = _flower_local(tmp_path, dumps_config(cfg), "--auth", env=_adversary_env("1:nan"))
    seconds = time.monotonic() - started
    assert "finished in" in out and "Mean client test metrics" in out
    logs = run / "flower/local/logs"
    assert "Uvicorn running on https://127.0.0.1:" in (logs / "superlink.log").read_text()
    assert "SuperNode authentication on" in err and err.count("registered ") == 2 and "--insecure" not in err
    assert json.loads((run / "flower/status.json").read_text()) == {"status": "complete"}
    assert (run / "accuracy.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and f"accuracy plot: {run}" in out
    for name, header in CSV_HEADERS.items():
        assert (run / "metrics" / name).read_text().splitlines()[0] == ",".join(header)
    summary = json.loads((run / "summary.json").read_text())
    assert summary["engine"] == "flower" and summary["rounds_completed"] == 2 and summary["status"] == "complete"
    failures = [r.split(",", 4) for r in (run / "metrics/client_failures.csv").read_text().splitlines()[1:]]
    assert [f[:3] for f in failures] == [["1", "1", "rejected"], ["2", "1", "rejected"]], failures
    assert all(f[4].startswith("upload refused: `") and f[4].endswith("holds 1 NaN or infinite value")
               for f in failures)
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
    assert list((run / "flower/local/nodes/node-0" / key).glob("*-r0002.safetensors"))
    # The in-process engine with the same adversary: the same partition, metrics and failures.
    # One torch thread in every process and float32 arrays / float64 metrics sent as raw bytes:
    # the arithmetic is the same, so the files must be byte-identical (tolerance 0).
    import rvepfl.fl.client as client_side

    monkeypatch.setattr(client_side, "train_client", client_side.train_client)
    adversary.install(1, "nan")
    fed = prepare(cfg)
    initialise(fed, RunDir(tmp_path / "ref"))
    train(fed, RunDir(tmp_path / "ref"))
    assert (run / "partition.npz").read_bytes() == (tmp_path / "ref/partition.npz").read_bytes()
    assert _csvs(run) == _csvs(tmp_path / "ref")
    assert [f[:3] for f in failures] == [r.split(",")[:3] for r in
                                         (tmp_path / "ref/metrics/client_failures.csv").read_text().splitlines()[1:]]
    print(f"2 rounds of RVE-PFL on a loopback deployment with TLS and node authentication: {seconds:.0f} s")


def test_a_supernode_killed_mid_round_is_recorded_and_the_run_completes(tmp_path):
    cfg = tiny_cfg("fedavg", **{"data.subset": 200, "faults.min_clients": 1, "faults.client_timeout": 120})
    progress = tmp_path / "run/state/progress.json"
    killed: list[float] = []

    def kill_node_1_in_round_2(fed: LocalFederation) -> None:
        while not (progress.exists() and json.loads(progress.read_text())["completed_round"] == 1):
            time.sleep(0.1)
        fed.kill("supernode-1")  # SIGKILL to its process group: the node and its apps die
        killed.append(time.monotonic())

    # The nodes beat every 10 s instead of 30 s (the least the SuperLink accepts): the same path,
    # found in about 20 s instead of 60 s.
    heartbeat = {"PYTHONPATH": os.pathsep.join([str(REPO / "tests/helpers/faulty"), os.environ.get("PYTHONPATH", "")]),
                 "RVEPFL_TEST_HEARTBEAT": "10"}
    code, lines = _deploy(cfg, tmp_path, during=kill_node_1_in_round_2, node_env=heartbeat)
    assert code == 0 and killed, "\n".join(lines[-20:])
    run = tmp_path / "run"
    rows = [r.split(",") for r in (run / "metrics/client_failures.csv").read_text().splitlines()[1:]]
    # The node misses its heartbeats (about 20 s), before faults.client_timeout. Which of two
    # ways says so first is a race: the SuperLink answers the pending message with a "Node
    # Unavailable" error, or the ServerApp's own poll finds the node gone from the federation.
    assert [r[:3] for r in rows] == [["2", "1", "died"]], rows
    assert "Node Unavailable" in rows[0][4] or "left the federation (no heartbeat)" in rows[0][4], rows
    assert float(rows[0][3]) < 40, rows  # with flwr's 30 s beat, 40 to 60 s after the kill
    timing = (run / "metrics/round_timing.csv").read_text().splitlines()
    assert [t.split(",")[-1] for t in timing[1:]] == ["2", "1"]
    assert json.loads((run / "summary.json").read_text())["status"] == "complete"


def test_an_unregistered_supernode_is_refused_and_the_run_says_so(tmp_path):
    """A SuperLink with SuperNode authentication and two nodes, of which only node 0's key is
    registered: the SuperLink refuses node 1, and the ServerApp stops with one line saying that
    client 1's node never answered, creating nothing. (Registered nodes taking part: the
    ``--auth`` deployment above.)"""
    cfg = tiny_cfg("fedavg", **{"data.subset": 200, "train.rounds": 1})
    fed = LocalFederation(tmp_path / "fed", 2, tls=True, auth=True, unregistered=frozenset({1}))
    lines: list[str] = []
    try:
        fed.start()
        code = fed.run_app(write_app(tmp_path / "app", cfg, out=tmp_path / "run", wait_nodes=10),
                           stream=lines.append, timeout=300)
    finally:
        fed.stop()
    # The ServerApp says so in the streamed log (flwr run itself exits 0) and creates nothing.
    said = [line for line in lines if "error: Only 1 of 2 clients' SuperNodes answered" in line]
    assert code == 0 and said, "\n".join(lines[-30:])
    assert "server.wait_nodes = 10 s (missing partition-id 1)" in said[0]
    assert not (tmp_path / "run").exists()
    assert "Failed to activate SuperNode" in (fed.logs / "supernode-1.log").read_text()
    assert "No SuperNode found with the given public key" in (fed.logs / "superlink.log").read_text()
    assert "SuperNode ID" in (fed.logs / "supernode-0.log").read_text() or \
        "Activated node_id" in (fed.logs / "superlink.log").read_text()


def _in_process_with_a_failure(cfg: Config, run: Path, failing: tuple[int, int], monkeypatch) -> None:
    """The in-process engine with client ``failing[1]`` raising in round ``failing[0]``."""
    import rvepfl.fl.client as client_side

    real = client_side.train_client

    def train_client(fed, model, store, initial_private, global_state, round_, client, *args):
        if (round_, client) == failing:
            raise ValueError("injected")
        return real(fed, model, store, initial_private, global_state, round_, client, *args)

    monkeypatch.setattr(client_side, "train_client", train_client)
    fed = prepare(cfg)
    initialise(fed, RunDir(run))
    train(fed, RunDir(run))


def test_fedavg_under_secure_aggregation_on_loopback_gives_the_in_process_numbers_and_the_server_no_upload(tmp_path):
    """Flower's SecAgg+ between real processes: the server holds only the masked integers and the
    mean it unmasks, and the run's numbers are the in-process engine's with the same quantisation
    (the masks cancel; each client's stochastic rounding is seeded from (seed, round, client))."""
    cfg = tiny_cfg("fedavg", **{"data.num_clients": 3, "data.subset": 150, "secure_aggregation.enabled": True})
    code, lines = _deploy(cfg, tmp_path)
    assert code == 0, "\n".join(lines[-20:])
    run = tmp_path / "run"
    fed = prepare(cfg)
    initialise(fed, RunDir(tmp_path / "ref"))
    train(fed, RunDir(tmp_path / "ref"))
    assert _csvs(run) == _csvs(tmp_path / "ref")
    received = json.loads((run / "flower/received.json").read_text())
    stages = [e["type"] for e in received if e["type"] != "query"]
    assert stages == [f"secagg-{s}" for s in ("setup", "share_keys", "collect_masked_vectors", "unmask")
                      for _ in range(3)] * 2
    arrays = [r["arrays"] for e in received for r in e.get("records", {}).values() if r["type"] == "ArrayRecord"]
    assert arrays and all(a == {} for a in arrays)  # not one array reached the server


def test_rvepfl_under_secure_aggregation_completes_a_round_whose_supernode_was_killed_mid_round(
        tmp_path, monkeypatch):
    """Client 1's SuperNode is SIGKILLed while its ClientApp trains in round 2, after it shared its
    keys: once the node misses its heartbeats, the server unmasks the sum of the other two with
    the shares of client 1's neighbours (two of three shares are the default threshold), records
    the failure, and the round is the in-process engine's round without client 1, byte for byte."""
    cfg = tiny_cfg("rvepfl", **{"data.num_clients": 3, "data.subset": 150, "secure_aggregation.enabled": True,
                                "faults.min_clients": 2, "faults.client_timeout": 120})
    mark = tmp_path / "client-1-hangs"
    env = {"PYTHONPATH": os.pathsep.join([str(REPO / "tests/helpers/faulty"), os.environ.get("PYTHONPATH", "")]),
           "RVEPFL_TEST_FAULTS": "2:1:hang", "RVEPFL_TEST_HANG_MARK": str(mark), "RVEPFL_TEST_HEARTBEAT": "10"}
    killed: list[float] = []

    def kill_node_1_while_it_trains(fed: LocalFederation) -> None:
        while not mark.exists():
            time.sleep(0.1)
        fed.kill("supernode-1")  # SIGKILL to its process group: the node and its ClientApp
        killed.append(time.monotonic())

    code, lines = _deploy(cfg, tmp_path, during=kill_node_1_while_it_trains, node_env=env)
    assert code == 0 and killed, "\n".join(lines[-20:])
    run = tmp_path / "run"
    rows = [r.split(",", 4) for r in (run / "metrics/client_failures.csv").read_text().splitlines()[1:]]
    assert [r[:3] for r in rows] == [["2", "1", "died"]], rows
    assert rows[0][4].startswith("collect_masked_vectors stage"), rows
    assert [t.split(",")[-1] for t in (run / "metrics/round_timing.csv").read_text().splitlines()[1:]] == ["3", "2"]
    # (no client_timeout in-process, where it would train the clients in worker processes that
    # the failure patched here does not reach; it is outside the config hash)
    _in_process_with_a_failure(apply_overrides(cfg, {"faults.client_timeout": 0}), tmp_path / "ref", (2, 1),
                               monkeypatch)
    assert _csvs(run) == _csvs(tmp_path / "ref")
