"""`--ray-address`: the runs of a frontier and of an audit as tasks on a Ray cluster.

The cluster is two nodes of one CPU each on this machine (a head and one more node, started with
``ray start --block`` and stopped at the end, their processes and temporary directory with them).
The frontier and the audit run there and on this machine alone, and their tables must be the
same byte for byte. On the cluster, the first attempt of one frontier run's task kills its own
worker process after the run's first round (a hook the nodes load from ``sitecustomize``): Ray
runs the task again, the run resumes after that round, and the frontier still equals the local one.

Skipped without Ray (the ``ray`` extra); ``.ci/run`` exports ``RVEPFL_REQUIRE_RAY=1``, where a
missing Ray fails these tests instead.
"""

from __future__ import annotations

import importlib.util
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from rvepfl.cli import main
from rvepfl.errors import ConfigError
from tests.helpers.suites import frontier_text, toml_text

ROOT = Path(__file__).resolve().parents[2]
KILLED_RUN = "mnist-nbafl-epsilon1-seed0"
"""The frontier run whose task's first attempt kills its worker."""

ENV_KILL = "RVEPFL_TEST_RAY_KILL"
HOOK = '''"""Loaded by every Python process of the test's Ray nodes: in a Ray worker, the first training
of run LABEL (no MARK file yet) writes MARK and kills its worker process once its first round is
committed. RVEPFL_TEST_RAY_KILL = "LABEL|MARK"."""
import os

_spec = os.environ.get("RVEPFL_TEST_RAY_KILL", "")
with open("/proc/self/cmdline", "rb") as _fh:
    _worker = b"default_worker.py" in _fh.read()
if _spec and _worker:
    _label, _mark = _spec.split("|", 1)
    import rvepfl.experiments.runner as _runner

    _train = _runner.train

    class _DieAfterFirstRound:
        def round_start(self, *args): pass
        def client_done(self, *args): pass
        def client_failed(self, *args): pass

        def round_done(self, round_, *args):
            with open(_mark, "w") as fh:
                fh.write(f"pid {os.getpid()} after round {round_}\\n")
            os._exit(1)

    def _train_once(fed, run, progress=None, **opened):
        if run.path.name != _label or os.path.exists(_mark):
            return _train(fed, run, progress, **opened)
        return _train(fed, run, _DieAfterFirstRound(), **opened)

    _runner.train = _train_once
'''


RAY_ENV = {"OMP_NUM_THREADS": "1", "RAY_USAGE_STATS_ENABLED": "0", "RAY_AUTH_MODE": "disabled"}
"""The nodes' and the driver's: no token authentication on this loopback cluster, even where a
~/.ray/auth_token would turn it on for the head alone (Ray 2.60), which its second node would fail."""


def _need_ray() -> None:
    if importlib.util.find_spec("ray") is None:
        if os.environ.get("RVEPFL_REQUIRE_RAY") == "1":
            pytest.fail("ray is not installed but RVEPFL_REQUIRE_RAY=1: pip install -e '.[ray]'", pytrace=False)
        pytest.skip("ray is not installed (the ray extra: pip install -e '.[ray]')")


@dataclass(frozen=True)
class Cluster:
    address: str
    mark: Path
    """Written by the hook when it killed a worker."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _wait(condition, what: str, procs: list[subprocess.Popen], timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        for p in procs:
            if p.poll() is not None:
                raise RuntimeError(f"{what}: `{' '.join(map(str, p.args))}` exited with {p.returncode}")
        if time.monotonic() > deadline:
            raise RuntimeError(f"{what}: not within {timeout:.0f} s")
        time.sleep(0.5)


def _stop(procs: list[subprocess.Popen]) -> None:
    """SIGTERM each `ray start --block` (it stops the Ray processes it started), then SIGKILL
    what is left of its process group."""
    for p in reversed(procs):
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    for p in reversed(procs):
        try:
            p.wait(timeout=60)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(p.pid, signal.SIGKILL)  # its own group (start_new_session): Ray's processes only
        except ProcessLookupError:
            pass


@pytest.fixture(scope="module")
def cluster() -> Iterator[Cluster]:
    """A head and one more node on loopback, one CPU each, with the kill hook loaded."""
    _need_ray()
    temp = Path(tempfile.mkdtemp(prefix="rvr", dir="/tmp"))  # short: Ray's socket paths must fit in 107 bytes
    hook = temp / "hook"
    hook.mkdir()
    (hook / "sitecustomize.py").write_text(HOOK)
    mark = temp / "killed"
    ray = str(Path(sys.executable).with_name("ray"))
    env = {**os.environ, **RAY_ENV, ENV_KILL: f"{KILLED_RUN}|{mark}",
           "PYTHONPATH": os.pathsep.join(p for p in (str(hook), os.environ.get("PYTHONPATH", "")) if p)}
    port = _free_port()
    common = ["--num-cpus=1", "--node-ip-address=127.0.0.1", "--object-store-memory=100000000",
              "--disable-usage-stats", "--block", f"--temp-dir={temp / 'ray'}"]
    procs: list[subprocess.Popen] = []

    def start(args: list[str], log: str) -> None:
        with open(temp / log, "w") as fh:
            procs.append(subprocess.Popen([ray, "start", *args, *common], stdout=fh, stderr=subprocess.STDOUT, env=env,
                                          start_new_session=True))

    def listening() -> bool:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            return True
        except OSError:
            return False

    try:
        start(["--head", f"--port={port}", "--include-dashboard=false"], "head.log")
        _wait(listening, "the Ray head", procs)
        start([f"--address=127.0.0.1:{port}"], "node.log")
        _wait(lambda: "Ray runtime started" in (temp / "node.log").read_text(), "the second Ray node", procs)
        yield Cluster(f"127.0.0.1:{port}", mark)
    finally:
        _stop(procs)
        shutil.rmtree(temp, ignore_errors=True)


def _ray_cli(args: list[str]) -> subprocess.CompletedProcess:
    """``rvepfl ARGS`` in a fresh process (the driver: Ray stays out of the test process)."""
    env = {**os.environ, **RAY_ENV,
           "PYTHONPATH": os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)}
    return subprocess.run([sys.executable, "-m", "rvepfl", *args], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=900)


FRONTIER = frontier_text([0], rounds=2, name="ray-frontier")


@pytest.mark.slow
def test_a_frontier_on_ray_is_the_local_one_byte_for_byte_and_a_killed_worker_is_redone(cluster, tmp_path, capsys):
    config = tmp_path / "frontier.toml"
    config.write_text(FRONTIER)
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    assert main(["frontier", "--config", str(config), "--out", str(local), "--quiet"]) == 0
    capsys.readouterr()
    done = _ray_cli(["frontier", "--config", str(config), "--out", str(on_ray), "--quiet",
                     "--ray-address", cluster.address])
    assert done.returncode == 0, done.stderr[-4000:]
    err = done.stderr
    assert "ray: 3 runs as tasks on 2 nodes (2 CPUs)" in err
    assert cluster.mark.read_text().endswith("after round 1\n")  # the first attempt died after round 1 ...
    assert f"resuming {on_ray.resolve() / 'runs' / KILLED_RUN} after round 1/2" in err  # ... the retry resumed
    assert "3 of 3 runs trained and attacked" in err
    for name in ("frontier.csv", "frontier_verdict.csv"):
        assert (on_ray / name).read_bytes() == (local / name).read_bytes(), name
    for run in sorted((local / "runs").iterdir()):  # pruned alike: the same client states kept
        kept = sorted(p.name for p in (run / "state" / "clients").iterdir())
        assert sorted(p.name for p in (on_ray / "runs" / run.name / "state" / "clients").iterdir()) == kept
    assert not list(on_ray.glob(".ray-check-*"))  # the shared-directory token is removed


AUDIT = toml_text(["fedavg", "fedper"], [0], name="ray-audit") + """[audit]
attacks = ["miface"]
miface_threats = ["released", "stolen"]
evaluator_images = 300
[audit.iterations]
miface = 3
"""


@pytest.mark.slow
def test_an_audit_on_ray_is_the_local_one_byte_for_byte(cluster, tmp_path, capsys):
    config = tmp_path / "audit.toml"
    config.write_text(AUDIT)
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    assert main(["audit", "--config", str(config), "--out", str(local), "--quiet"]) == 0
    capsys.readouterr()
    done = _ray_cli(["audit", "--config", str(config), "--out", str(on_ray), "--quiet",
                     "--ray-address", cluster.address])
    assert done.returncode == 0, done.stderr[-4000:]
    assert "2 of 2 runs trained and attacked" in done.stderr
    for name in ("table.csv", "audit.csv"):
        assert (on_ray / name).read_bytes() == (local / name).read_bytes(), name
    # fedper keeps its head private: its released model has no surface, the same row on Ray
    assert "no attack surface" in done.stderr


def _went_on(task, out):
    raise AssertionError("the task went on without seeing the driver's token file")


def test_a_task_on_a_node_that_does_not_see_the_output_directory_refuses_in_one_line(tmp_path):
    from rvepfl.experiments.frontier import load_frontier
    from rvepfl.experiments.ray_fanout import RunTask, _on_node

    config = tmp_path / "frontier.toml"
    config.write_text(FRONTIER)
    plan = load_frontier(config)
    task = RunTask(plan.suite.runs[0], plan.suite.audit, "[1/3]")
    with pytest.raises(ConfigError, match=r"^the Ray node \S+ does not see .*: the output directory must be on a "
                                          r"filesystem that every node mounts at the same path"):
        _on_node(_went_on, task, str(tmp_path / "out"), str(tmp_path / "out" / ".ray-check-x.tmp"), "token")
    assert not (tmp_path / "out").exists()  # refused before anything was written
