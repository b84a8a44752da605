"""A local federation on 127.0.0.1: one SuperLink and N SuperNodes as separate processes.

For trying the Flower path on one machine (``rvepfl flower-local``) and for the tests. Every
process is started in its own process group (``start_new_session``), so that what it starts
(Flower's ``flower-superexec`` and the ServerApp/ClientApp processes) is stopped with it:
:meth:`LocalFederation.stop` sends SIGTERM to each group, then SIGKILL to any that is left, by
process-group id. Ports are free ports picked on loopback; ``FLWR_HOME`` is a directory of the
federation's own, holding the Flower configuration file with the connection ``rvepfl-local``.

Without ``tls`` every process runs with ``--insecure``, which is acceptable only because every
socket is bound to 127.0.0.1. With ``tls`` the SuperLink serves with a certificate signed by a
fresh self-signed CA (:mod:`rvepfl.flower.tls`) and the SuperNodes and ``flwr`` verify it. With
``auth`` (which needs ``tls``) the SuperLink accepts only registered SuperNodes
(``--enable-supernode-auth``): every node gets a fresh EC key pair, and the public key of each
node not listed in ``unregistered`` is registered with ``flwr supernode register`` before the
nodes start; a node that is not registered is refused by the SuperLink.

Flower's environment: ``FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION=1`` (the apps are in this
installed package; letting Flower ``uv sync`` the app's dependencies pulled a multi-GB CUDA
torch), ``FLWR_TELEMETRY_ENABLED=0`` and ``FLWR_DISABLE_UPDATE_CHECK=1``.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from rvepfl.errors import ConfigError
from rvepfl.flower.tls import Certificates, make_certificates, make_node_key

__all__ = ["CONNECTION", "LocalFederation", "flower_env", "free_port"]

CONNECTION = "rvepfl-local"


def free_port() -> int:
    """A TCP port on 127.0.0.1 that is free now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def flower_env(flwr_home: Path) -> dict[str, str]:
    """The environment of every Flower process: this interpreter's scripts first on PATH."""
    env = dict(os.environ)
    bin_dir = str(Path(sys.executable).parent)
    env.update(
        PATH=bin_dir + os.pathsep + env.get("PATH", ""),
        FLWR_HOME=str(flwr_home),
        FLWR_DISABLE_RUNTIME_DEPENDENCY_INSTALLATION="1",
        FLWR_TELEMETRY_ENABLED="0",
        FLWR_DISABLE_UPDATE_CHECK="1",
        OMP_NUM_THREADS=env.get("OMP_NUM_THREADS", "1"),
        PYTHONUNBUFFERED="1",
    )
    return env


def _tool(name: str) -> str:
    path = Path(sys.executable).parent / name
    found = str(path) if path.exists() else shutil.which(name)
    if not found:
        raise ConfigError(f"`{name}` not found: install Flower with pip install -e '.[flower]'")
    return found


@dataclass
class LocalFederation:
    """SuperLink + ``num_nodes`` SuperNodes on loopback; use as a context manager.

    Node ``i`` plays client (partition-id) ``i`` of ``num_nodes`` and keeps its private state in
    ``workdir/nodes/node-i``.
    """

    workdir: Path
    num_nodes: int
    tls: bool = False
    threads: int = 1
    log: Callable[[str], None] = lambda line: None
    auth: bool = False
    unregistered: frozenset[int] = frozenset()
    """Nodes started with a key the SuperLink is not told about (with ``auth``; for tests)."""
    node_env: dict[str, str] = field(default_factory=dict)
    """Extra environment of the SuperNodes (and so of their ClientApps; for tests)."""
    procs: dict[str, subprocess.Popen] = field(default_factory=dict)
    port: int = 0
    certs: Certificates | None = None

    @property
    def flwr_home(self) -> Path:
        return self.workdir / "flwr-home"

    @property
    def logs(self) -> Path:
        return self.workdir / "logs"

    def node_dir(self, i: int) -> Path:
        return self.workdir / "nodes" / f"node-{i}"

    def _spawn(self, name: str, args: list[str], extra_env: dict[str, str] | None = None) -> subprocess.Popen:
        self.logs.mkdir(parents=True, exist_ok=True)
        env = {**flower_env(self.flwr_home), **(extra_env or {})}
        with open(self.logs / f"{name}.log", "ab") as out:
            proc = subprocess.Popen(args, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                    env=env, cwd=self.workdir, start_new_session=True)
        self.procs[name] = proc
        return proc

    def _security(self, server: bool) -> list[str]:
        if not self.tls:
            return ["--insecure"]
        assert self.certs is not None
        if server:
            return ["--ssl-ca-certfile", str(self.certs.ca_cert), "--ssl-certfile", str(self.certs.server_cert),
                    "--ssl-keyfile", str(self.certs.server_key)]
        return ["--root-certificates", str(self.certs.ca_cert)]

    def write_connection(self) -> None:
        """The Flower configuration file (``FLWR_HOME/config.toml``) with ``rvepfl-local``."""
        self.flwr_home.mkdir(parents=True, exist_ok=True)
        lines = ["[superlink]", f'default = "{CONNECTION}"', "", f"[superlink.{CONNECTION}]",
                 f'address = "127.0.0.1:{self.port}"']
        if self.tls:
            assert self.certs is not None
            lines.append(f'root-certificates = "{self.certs.ca_cert}"')
        else:
            lines.append("insecure = true")
        (self.flwr_home / "config.toml").write_text("\n".join(lines) + "\n", encoding="utf-8")

    def start(self, timeout: float = 60.0) -> None:
        """Start the SuperLink, wait until it accepts connections, then start the SuperNodes
        (with ``auth``: register their keys first)."""
        if self.auth and not self.tls:
            raise ConfigError("SuperNode authentication needs TLS: use --tls with --auth")
        self.workdir.mkdir(parents=True, exist_ok=True)
        if self.tls:
            self.certs = make_certificates(self.workdir / "certs")
        self.port = free_port()
        health = free_port()
        self.write_connection()
        self._spawn("superlink", [
            _tool("flower-superlink"), *self._security(True), "--host", "127.0.0.1", "--port", str(self.port),
            "--health-server-address", f"127.0.0.1:{health}", "--disable-runtime-dependency-installation",
            *(["--enable-supernode-auth"] if self.auth else []),
        ])
        self._wait_healthy(health, timeout)
        self.log(f"SuperLink on 127.0.0.1:{self.port} (pid {self.procs['superlink'].pid})"
                 f"{' with TLS' if self.tls else ', --insecure on loopback'}"
                 f"{', SuperNode authentication on' if self.auth else ''}")
        if self.auth:
            for i in range(self.num_nodes):
                key = make_node_key(self.node_dir(i) / "auth")
                if i not in self.unregistered:
                    self.register(key.public_key)
        for i in range(self.num_nodes):
            self.start_node(i)

    def register(self, public_key: Path) -> None:
        """``flwr supernode register PUBLIC_KEY rvepfl-local``: the SuperLink accepts that node."""
        done = subprocess.run([_tool("flwr"), "supernode", "register", str(public_key), CONNECTION],
                              capture_output=True, text=True, env=flower_env(self.flwr_home), cwd=self.workdir,
                              stdin=subprocess.DEVNULL, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"flwr supernode register {public_key} failed ({done.returncode}): "
                               f"{(done.stdout + done.stderr).strip()[-500:]}")
        self.log(f"registered {public_key}")

    def start_node(self, i: int) -> subprocess.Popen:
        """Start (or restart) SuperNode ``i``."""
        self.node_dir(i).mkdir(parents=True, exist_ok=True)
        config = (f"partition-id={i} num-partitions={self.num_nodes} threads={self.threads} "
                  f"state-dir=\"{self.node_dir(i)}\"")
        auth = ["--auth-supernode-private-key", str(self.node_dir(i) / "auth" / "node.key")] if self.auth else []
        proc = self._spawn(f"supernode-{i}", [
            _tool("flower-supernode"), *self._security(False), "--superlink", f"127.0.0.1:{self.port}",
            "--host", "127.0.0.1", "--port", str(free_port()), "--node-config", config, *auth,
        ], self.node_env)
        self.log(f"SuperNode {i} (pid {proc.pid}): partition-id={i}, state in {self.node_dir(i)}")
        return proc

    def _wait_healthy(self, port: int, timeout: float) -> None:
        """Wait for the SuperLink's gRPC health service to answer SERVING."""
        import grpc
        from grpc_health.v1 import health_pb2, health_pb2_grpc

        deadline = time.monotonic() + timeout
        proc = self.procs["superlink"]
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"The SuperLink exited with status {proc.returncode}: see {self.logs / 'superlink.log'}")
            try:
                with grpc.insecure_channel(f"127.0.0.1:{port}") as channel:
                    reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest(), timeout=2)
                if reply.status == health_pb2.HealthCheckResponse.SERVING:
                    return
            except grpc.RpcError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"The SuperLink did not become healthy within {timeout:g} s: see "
                                   f"{self.logs / 'superlink.log'}")
            time.sleep(0.3)

    def run_app(self, app_dir: Path, *, stream: Callable[[str], None] | None = None,
                timeout: float | None = None) -> int:
        """``flwr run APP rvepfl-local --stream``; each output line goes to ``stream``; returns the
        exit status (the process runs in its own group too, and is stopped with the rest)."""
        proc = subprocess.Popen([_tool("flwr"), "run", str(app_dir), CONNECTION, "--stream"],
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                                env=flower_env(self.flwr_home), cwd=self.workdir, start_new_session=True, text=True,
                                errors="replace")
        self.procs["flwr-run"] = proc
        deadline = None if timeout is None else time.monotonic() + timeout
        assert proc.stdout is not None
        for line in proc.stdout:
            if stream is not None:
                stream(line.rstrip("\n"))
            if deadline is not None and time.monotonic() > deadline:
                break
        try:
            return proc.wait(timeout=None if deadline is None else max(1.0, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            raise RuntimeError(f"flwr run did not finish within {timeout:g} s") from None

    def kill(self, name: str, sig: int = signal.SIGKILL) -> None:
        """Send ``sig`` to process ``name``'s whole group (e.g. kill a SuperNode and its apps)."""
        proc = self.procs[name]
        try:
            os.killpg(proc.pid, sig)
        except ProcessLookupError:
            pass

    def stop(self, grace: float = 10.0) -> None:
        """SIGTERM every process group, wait up to ``grace`` seconds, SIGKILL what is left."""
        for name in reversed(list(self.procs)):
            self.kill(name, signal.SIGTERM)
        deadline = time.monotonic() + grace
        for proc in self.procs.values():
            try:
                proc.wait(timeout=max(0.1, deadline - time.monotonic()))
            except subprocess.TimeoutExpired:
                pass
        for name, proc in self.procs.items():
            self.kill(name, signal.SIGKILL)  # the group: children that outlived their leader too
            try:
                proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                pass

    def __enter__(self) -> LocalFederation:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
