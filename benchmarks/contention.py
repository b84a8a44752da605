"""Contention benchmark: how much an attack slows down when another process shares the cores.

- ``contended_attack_slowdown``: the attack's seconds with a competing process running over its
  seconds alone, both with `rvepfl attack`'s default threads (one:
  :func:`rvepfl.perf.attack_threads`). Target: <= 2.5x on 2 cores.
- ``contended_attack_slowdown_torch_threads``: the same with ``--threads 0``, torch's default of
  one thread per core, and OpenMP's own wait policy (``RVEPFL_PASSIVE_OPENMP=0``): the command as
  it was before the change for issue #16, for context: what the change bought.
- ``contended_attack_slowdown_torch_threads_passive``: ``--threads 0`` as the command runs it now,
  with OpenMP's idle threads asleep (:func:`rvepfl.perf.passive_openmp`), for context.

The attack is `rvepfl attack ig` (Inverting Gradients, 200 Adam steps on one image, the gradient
threat model) on a small FedAvg run trained here (bundled MNIST, 300 images, 2 clients, 1 round),
each time in a fresh process, as a user runs it. Its seconds are the attack's own
(``summary.json``'s ``seconds``: the observation made, attacked and scored, the time the issue
gave per observation, without the process's start and the loading of the run and the evaluator);
the command's wall time is kept beside them. An untimed first
attack trains the evaluator, which the timed ones then read from the run's cache.

The competitor is a separate process doing 2-thread float32 matrix products (1024 x 1024) in a
loop: started, and its first product done, before the attack, stopped after it; its products per
second are kept too. Every child runs without the benchmark's ``OMP_NUM_THREADS``,
``MKL_NUM_THREADS``, ``OMP_WAIT_POLICY``, ``GOMP_SPINCOUNT`` and ``RVEPFL_PASSIVE_OPENMP``, so that
each setting is the command's, whatever the benchmark's own environment says. The part is sized
for about 2-3 minutes on an idle 2-core machine, most of it the contended attack of the old
default and the start of each command (a few seconds of imports).
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import rvepfl

__all__ = ["COMPETITOR_THREADS", "child_env", "contention_benchmark"]

COMPETITOR_THREADS = 2
_ITERATIONS = 200
_MATRIX = 1024
_TRAIN = ["--method", "fedavg", "--subset", "300", "--clients", "2", "--rounds", "1", "--local-epochs", "1",
          "--batch-size", "32", "--workers", "1", "--threads", "1", "--quiet"]
_SETTINGS: tuple[tuple[str, list[str], dict[str, str]], ...] = (
    ("default", [], {}),
    ("torch_threads", ["--threads", "0"], {"RVEPFL_PASSIVE_OPENMP": "0"}),
    ("torch_threads_passive", ["--threads", "0"], {}),
)
"""The attack's settings (name, options, environment): the command's default; torch's default
threads with OpenMP's own wait policy (the command before issue #16); and ``--threads 0`` now."""
_UNSET = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY", "GOMP_SPINCOUNT", "RVEPFL_PASSIVE_OPENMP")


def child_env(environ: dict[str, str] | None = None) -> dict[str, str]:
    """The environment of the part's processes: ``environ`` (default ``os.environ``) without the
    variables that set threads or OpenMP's wait policy, with this checkout's ``rvepfl`` and
    ``benchmarks`` first on the path."""
    env = {k: v for k, v in (os.environ if environ is None else environ).items() if k not in _UNSET}
    paths = [str(Path(rvepfl.__file__).resolve().parents[1]), str(Path(__file__).resolve().parents[1]),
             *env.get("PYTHONPATH", "").split(os.pathsep)]
    env["PYTHONPATH"] = os.pathsep.join(p for p in dict.fromkeys(paths) if p)
    return env


def _rvepfl(args: Sequence[str], env: dict[str, str]) -> float:
    """Run ``rvepfl ARGS`` in a fresh process; its wall seconds. Raises RuntimeError if it fails."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "rvepfl", *args], env=env, capture_output=True, text=True,
                          check=False)
    seconds = time.perf_counter() - started
    if done.returncode != 0:
        raise RuntimeError(f"`rvepfl {' '.join(args)}` failed: {done.stderr.strip()[-500:]}")
    return seconds


def _compete(threads: int = COMPETITOR_THREADS, size: int = _MATRIX) -> None:
    """The competitor (in its own process): ``threads``-thread float32 matrix products until
    SIGTERM; prints ``ready`` after the first, and at the end its products and seconds as JSON."""
    import torch

    torch.set_num_threads(threads)
    stop: list[bool] = []
    signal.signal(signal.SIGTERM, lambda signum, frame: stop.append(True))
    a, b = torch.randn(size, size), torch.randn(size, size)
    a @ b
    print("ready", flush=True)
    started, products = time.perf_counter(), 0
    while not stop:
        a @ b
        products += 1
    print(json.dumps({"products": products, "seconds": time.perf_counter() - started,
                      "threads": torch.get_num_threads(), "size": size}), flush=True)


@contextmanager
def _competitor(env: dict[str, str]) -> Iterator[dict[str, Any]]:
    """A running competitor process for the block; the dict it yields receives its products,
    seconds and products per second once the block is over and the process stopped."""
    proc = subprocess.Popen([sys.executable, "-m", "benchmarks.contention", "--compete"], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    result: dict[str, Any] = {}
    try:
        assert proc.stdout is not None
        if proc.stdout.readline().strip() != "ready":
            raise RuntimeError(f"the competing process did not start: {proc.stderr.read().strip()[-500:]}")
        yield result
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
        try:
            out, _ = proc.communicate(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            out, _ = proc.communicate()
    last = out.strip().splitlines()[-1] if out.strip() else ""
    if last.startswith("{"):
        result.update(json.loads(last))
        result["products_per_second"] = result["products"] / result["seconds"]


def _attack(run: Path, dest: Path, threads: Sequence[str], iterations: int, env: dict[str, str],
            contended: bool, extra: dict[str, str] | None = None) -> dict[str, Any]:
    """One `rvepfl attack ig` on ``run`` into ``dest`` (environment ``env`` updated with ``extra``),
    alone or beside a competitor (environment ``env``): the attack's seconds (summary.json's), the
    command's wall seconds and the competitor's figures."""
    args = ["attack", "ig", "--run", str(run), "--images", "1", "--iterations", str(iterations),
            "--evaluator-images", "100", "--out", str(dest), "--quiet", *threads]
    competitor: dict[str, Any] = {}
    if contended:
        with _competitor(env) as competitor:
            wall = _rvepfl(args, {**env, **(extra or {})})
    else:
        wall = _rvepfl(args, {**env, **(extra or {})})
    summary = json.loads((dest / "summary.json").read_text(encoding="utf-8"))
    out: dict[str, Any] = {"seconds": float(summary["seconds"]), "wall_seconds": wall}
    if contended:
        out["competitor"] = competitor
    return out


def contention_benchmark(*, iterations: int = _ITERATIONS, log: Any = print) -> dict[str, Any]:
    """The attack alone and beside a 2-thread competitor in each of :data:`_SETTINGS`; the
    slowdowns and every raw timing."""
    env = child_env()
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    out: dict[str, Any] = {"attack": f"rvepfl attack ig, 1 image, {iterations} iterations",
                           "competitor": f"{COMPETITOR_THREADS}-thread {_MATRIX} x {_MATRIX} float32 matrix products",
                           "cores": cores}
    with tempfile.TemporaryDirectory(prefix="rvepfl-bench-contention-") as tmp:
        run = Path(tmp) / "run"
        log("  training a small FedAvg run ...")
        _rvepfl(["train", *_TRAIN, "--out", str(run)], env)
        log("  a first attack (trains the evaluator; not timed) ...")
        _attack(run, Path(tmp) / "warm-up", [], iterations, env, contended=False)
        for name, threads, extra in _SETTINGS:
            flag = " ".join([*threads, *(f"{k}={v}" for k, v in extra.items())]) or "the default threads"
            timings: dict[str, Any] = {}
            for contended in (False, True):
                where = "beside the competitor" if contended else "alone"
                log(f"  attack with {flag}, {where} ...")
                key = "contended" if contended else "alone"
                timings[key] = _attack(run, Path(tmp) / f"{name}-{key}", threads, iterations, env, contended, extra)
                log(f"    {timings[key]['seconds']:.1f} s ({timings[key]['wall_seconds']:.1f} s the command)")
            timings["slowdown"] = timings["contended"]["seconds"] / timings["alone"]["seconds"]
            out[name] = {"options": threads, "environment": extra, **timings}
    for name, _, _ in _SETTINGS:
        key = "contended_attack_slowdown" + ("" if name == "default" else f"_{name}")
        out[key] = out[name]["slowdown"]
    return out


if __name__ == "__main__":
    if sys.argv[1:] == ["--compete"]:
        _compete()
    else:
        print("internal module: run `python -m benchmarks --only contention`", file=sys.stderr)
        sys.exit(2)
