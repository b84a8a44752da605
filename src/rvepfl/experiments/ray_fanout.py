"""The runs of an audit or a frontier as tasks on a Ray cluster (``--ray-address``).

Ray is the engine under Flower's simulation; here it only hands out whole runs. The local path
(:func:`rvepfl.experiments.runner.run_suite`, :func:`rvepfl.experiments.frontier.run_frontier`)
stays the default; this module is used only when a cluster address is given, and Ray is an
optional extra (``pip install -e '.[ray]'``), imported only then.

**One task per run.** A task trains its run (or resumes it, or takes it as it is when complete),
runs every attack job of the audit on it one after another, and, for a frontier, measures the disk
and prunes the run: :func:`rvepfl.experiments.runner.train_and_attack` and
:func:`rvepfl.experiments.frontier.prune_run`, the functions the local loop calls, so a run is the
same whichever path takes it. What a task does is the caller's function
(:func:`rvepfl.experiments.runner.run_on_node`, the frontier's ``_run_on_node``), handed to
:meth:`RayCluster.run`: this module knows Ray and the shared directory, not the runs' steps, so it
imports neither the runner nor the frontier. A run is the unit because its attacks read what its
training wrote, and runs share nothing but the data and the attacks' caches (the evaluator, LiRA's
reference models, GMI's prior), which are built once under a file lock
(:func:`rvepfl.io.file_lock`) by whichever task needs them first.

**One CPU per task.** Each task asks Ray for the run config's ``threads`` CPUs (one when it
is 0, torch's default, which would otherwise take every core of the node) and trains in its own
process (``workers = 1``; which process trains a client does not change its numbers, and
``threads`` and ``workers`` are outside the config hash, so the run directory is the same run);
its attacks run on the same threads (:func:`rvepfl.perf.attack_threads`). A node with C CPUs
runs C runs at once; ``[audit] workers`` is not used: the runs side by side fill the cores that
the attack pool fills on one machine. A run whose config says ``device = "cuda"`` asks for a GPU
as well; ``auto`` trains on the CPU, as Ray hides the GPUs from tasks that did not ask for one.

**A shared output directory.** Every task reads and writes under the output directory, so on a
real cluster it must be on a filesystem that every node mounts at the same path (NFS, say). The
driver checks that before anything trains: it writes a token file into the directory and has a
task on every node with a CPU read it back, and refuses in one line if a node does not see it
(or runs another rvepfl or torch, whose numbers would differ). Each run's task checks the token
again, for a node that joins later. Paths are made absolute first: a task does not run in the
driver's working directory.

**The driver** submits every run at once (Ray queues what the cluster cannot run yet, in the
suite's order) and takes the results as they come: it shows each task's lines (training, final
accuracy, one per attack job) and one line per finished run with the time left, records the
frontier's peak disk use, then writes ``frontier.json``, ``audit.csv``, the tables and the plots
exactly as the local path does; those are read from the run directories, or built from what the
tasks return, in the suite's order, so ``frontier.csv`` is byte for byte the local pool's.
The engine's per-round progress and the attacks' in-progress lines are not shown.

**A dead worker.** Ray runs a task again when its worker process dies (killed, out of memory,
its node lost), up to :data:`RETRIES` times, and the project's own resume makes that cheap: a
run directory continues after its last complete round, and finished attacks are skipped. A
task's own error (a damaged checkpoint, say) is not retried: it stops the command, one line for
a user error as on one machine, and the runs still going are cancelled; run the same command
again to continue. A driver stopped with Ctrl-C cancels its tasks the same way.
"""

from __future__ import annotations

import logging
import secrets
import socket
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, TypeVar

from rvepfl.errors import ConfigError, RvepflError
from rvepfl.experiments.spec import AuditPlan, RunSpec
from rvepfl.io import atomic_write_text

__all__ = ["RETRIES", "RayCluster", "RayTaskFailed", "RunTask", "check_address", "ray_cluster"]

T = TypeVar("T")

RETRIES = 3
"""How many times Ray runs a task again after its worker process died (Ray's default)."""
CONNECT_TIMEOUT = 5.0
"""Seconds to wait for a TCP connection to the cluster's address before calling it unreachable
(Ray's own connection retries for minutes, ignoring Ctrl-C)."""
CHECK_TIMEOUT = 300.0
"""Seconds the nodes have to answer the shared-directory check (a fresh worker imports Ray and
rvepfl first)."""
_EXTRA = "pip install -e '.[ray]'"


class RayTaskFailed(RvepflError):
    """A run's Ray task failed for a reason of Ray's (its worker died more often than it is
    retried, its node was lost): the run resumes when the same command runs again."""


@dataclass(frozen=True)
class RunTask:
    """One run for a task: ``r`` with the ``audit`` jobs to run on it (None: train only) and the
    prefix of its lines; a frontier's run is then pruned to the states of the clients ``prune``
    names (:func:`rvepfl.experiments.frontier.prune_run`'s ``keep_clients``; None: not pruned)."""

    r: RunSpec
    audit: AuditPlan | None
    prefix: str
    prune: tuple[int, ...] | None = None


# -- connecting ----------------------------------------------------------------------------------
def _import_ray() -> Any:
    try:
        import ray
    except ImportError:
        raise ConfigError(f"--ray-address needs Ray, which is not installed: {_EXTRA}") from None
    return ray


def check_address(address: str) -> str:
    """Check, without connecting or writing anything, that Ray is installed and that something
    answers at ``address``: ``auto`` (the cluster that ``ray start`` began on this machine, or
    ``RAY_ADDRESS``), ``HOST:PORT`` (the head node's) or ``ray://HOST:PORT`` (Ray Client).
    Returns the address to connect to. (No ``local``: a Ray that ``ray.init`` starts for itself
    leaves a token in ``~/.ray`` that turns on token authentication for later clusters, and the
    local pool is this machine's path anyway.)

    Raises
    ------
    ConfigError
        One line: Ray missing, no cluster found for ``auto``, a malformed address, nothing
        listening there.
    """
    _import_ray()
    expected = (f"--ray-address: expected auto or the head node's HOST:PORT (e.g. 10.0.0.1:6379; on this machine "
                f"alone, leave the option out), got {address!r}")
    resolved: str | None  # None: Ray could not read the address
    if address.startswith("ray://"):
        resolved, shown = address, address[len("ray://"):]
    else:
        from ray._private.services import canonicalize_bootstrap_address

        try:
            resolved = canonicalize_bootstrap_address(address)
        except ConnectionError:
            raise ConfigError(f"--ray-address {address}: no Ray cluster runs on this machine (none started with "
                              "`ray start`, no RAY_ADDRESS): start one with `ray start --head`, or give the head "
                              "node's HOST:PORT") from None
        except ValueError:
            resolved = None
        if resolved is None:  # malformed, or "local"
            raise ConfigError(expected)
        shown = resolved
    host, _, port = shown.rpartition(":")
    if not host or not port.isdigit():
        raise ConfigError(expected)
    try:
        socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT).close()
    except OSError as exc:
        reason = exc.strerror or type(exc).__name__
        raise ConfigError(f"--ray-address {address}: no Ray cluster answers there ({reason}); start one with "
                          "`ray start --head`, or give the address it printed") from None
    return resolved


@contextmanager
def ray_cluster(address: str, out: Path) -> Iterator[RayCluster]:
    """Connected to the cluster at ``address`` (see :func:`check_address`), with ``out``
    created and checked to be seen by every node; disconnected at the end, its token file
    removed, and every task still running cancelled if the block ends with an exception.

    Raises
    ------
    ConfigError
        As :func:`check_address`; or a node does not see ``out`` or runs another rvepfl or torch.
    """
    resolved = check_address(address)
    ray = _import_ray()
    try:
        ray.init(address=resolved, log_to_driver=False, logging_level=logging.WARNING)
    except (ConnectionError, RuntimeError) as exc:  # not a Ray head there, or another Ray version
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise ConfigError(f"--ray-address {address}: cannot join a Ray cluster there ({first})") from None
    try:
        out = Path(out).resolve()
        out.mkdir(parents=True, exist_ok=True)
        token = secrets.token_hex(16)
        token_path = out / f".ray-check-{token[:12]}.tmp"  # a temporary file's name: the next run removes a stray one
        atomic_write_text(token_path, token)
        try:
            cluster = RayCluster(ray, address, out, token_path, token)
            cluster.check_nodes()
            yield cluster
        finally:
            token_path.unlink(missing_ok=True)
    finally:
        ray.shutdown()


# -- on the nodes --------------------------------------------------------------------------------
def _versions() -> tuple[str, str]:
    import torch

    from rvepfl import __version__

    return __version__, torch.__version__


def _node_check(token_path: str) -> tuple[str, str | None, tuple[str, str]]:
    """On a node: its host name, the token file's text (None: not there) and its versions."""
    try:
        seen: str | None = Path(token_path).read_text(encoding="utf-8")
    except OSError:
        seen = None
    return socket.gethostname(), seen, _versions()


def _not_shared(where: str, out: Path) -> ConfigError:
    return ConfigError(f"the Ray node {where} does not see {out}: the output directory must be on a filesystem "
                       "that every node mounts at the same path (NFS, say): give such a directory with --out")


def _on_node(function: Callable[[RunTask, Path], T], task: RunTask, out: str, token_path: str, token: str) -> T:
    """On a node: check that it sees the shared directory, then ``function(task, out)`` with the
    run's config on this task's CPUs (its ``threads``, 1 for 0) in this process (``workers = 1``)."""
    root = Path(out)
    try:
        seen = Path(token_path).read_text(encoding="utf-8")
    except OSError:
        seen = None
    if seen != token:
        raise _not_shared(socket.gethostname(), root)
    cfg = task.r.cfg
    return function(replace(task, r=replace(task.r, cfg=replace(cfg, threads=cfg.threads or 1, workers=1))), root)


# -- the driver ----------------------------------------------------------------------------------
class RayCluster:
    """A connected cluster whose nodes see ``out``: made by :func:`ray_cluster`."""

    def __init__(self, ray: Any, address: str, out: Path, token_path: Path, token: str) -> None:
        self._ray = ray
        self.address = address
        self.out = out
        self._token_path = token_path
        self._token = token

    def check_nodes(self) -> None:
        """Every alive node with a CPU reads the token file and gives its versions; raises
        ConfigError naming the first that does not see it or runs other versions."""
        ray = self._ray
        from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

        nodes = [n for n in ray.nodes() if n.get("Alive") and n.get("Resources", {}).get("CPU", 0) >= 1]
        if not nodes:
            raise ConfigError(f"--ray-address {self.address}: the cluster has no node with a CPU to run on")
        probe = ray.remote(_node_check)
        refs = [probe.options(num_cpus=0, scheduling_strategy=NodeAffinitySchedulingStrategy(n["NodeID"], soft=False))
                .remote(str(self._token_path)) for n in nodes]
        try:
            answers = ray.get(refs, timeout=CHECK_TIMEOUT)
        except ray.exceptions.GetTimeoutError:
            raise ConfigError(f"--ray-address {self.address}: not every node answered within {CHECK_TIMEOUT:.0f} s "
                              "(`ray status` shows the nodes)") from None
        except ray.exceptions.RayError as exc:  # e.g. rvepfl not importable there
            first = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise ConfigError(f"--ray-address {self.address}: a node cannot run rvepfl ({first}): install the same "
                              "rvepfl and torch on every node") from None
        here = _versions()
        for node, (host, seen, versions) in zip(nodes, answers):
            where = f"{node.get('NodeManagerAddress', '?')} ({host})"
            if seen != self._token:
                raise _not_shared(where, self.out)
            if versions != here:
                raise ConfigError(f"the Ray node {where} runs rvepfl {versions[0]} with torch {versions[1]}, this "
                                  f"machine rvepfl {here[0]} with torch {here[1]}: install the same on every node "
                                  "(the numbers may differ otherwise)")

    def describe(self) -> str:
        """``2 nodes (16 CPUs) at ADDRESS``: the alive nodes and their CPUs."""
        alive = [n for n in self._ray.nodes() if n.get("Alive")]
        cpus = int(sum(n.get("Resources", {}).get("CPU", 0) for n in alive))
        return f"{len(alive)} node{'' if len(alive) == 1 else 's'} ({cpus} CPUs) at {self.address}"

    def run(self, function: Callable[[RunTask, Path], T], tasks: Sequence[RunTask]) -> Iterator[tuple[RunTask, T]]:
        """Submit ``function(task, out)`` for every task (``function`` a module-level function of
        rvepfl: Ray sends it by name), then yield each task with its result as it finishes. A
        task's user error (:class:`rvepfl.errors.RvepflError`) is raised as it is, any other error
        of the task as Ray's; a task Ray gave up on as :class:`RayTaskFailed`. The tasks still
        pending when this ends early (an error, Ctrl-C) are cancelled."""
        ray = self._ray
        remote = ray.remote(_on_node)
        by_ref = {}
        for task in tasks:
            cfg = task.r.cfg
            options: dict[str, Any] = {"num_cpus": cfg.threads or 1, "max_retries": RETRIES,
                                       "name": f"rvepfl {task.r.label}"}
            if cfg.device.startswith("cuda"):
                options["num_gpus"] = 1
            ref = remote.options(**options).remote(function, task, str(self.out), str(self._token_path), self._token)
            by_ref[ref] = task
        pending = list(by_ref)
        try:
            while pending:
                ready, pending = ray.wait(pending, num_returns=1, timeout=1.0)  # a timeout: Ctrl-C gets through
                for ref in ready:
                    yield by_ref[ref], self._result(ref, by_ref[ref])
        finally:
            for ref in pending:  # a run stopped here resumes when the command runs again
                ray.cancel(ref, force=True)

    def _result(self, ref: Any, task: RunTask) -> Any:
        ray = self._ray
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            cause = getattr(exc, "cause", None)
            if isinstance(cause, RvepflError):
                raise cause from None
            raise
        except ray.exceptions.RayError as exc:
            raise RayTaskFailed(f"{task.prefix}: Ray gave up on its task ({type(exc).__name__}, after {RETRIES} "
                                "retries); the run resumes when the same command runs again") from None

