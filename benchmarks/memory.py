"""Memory benchmark: peak RSS of an RVE-PFL run as the number of clients grows.

Each run trains the MNIST-size model (a 19.7 M-parameter encoder per client, 79 MB) for two
rounds in a fresh process, with every client's encoder in the disk-backed store, and reports its
peak resident set size (``VmHWM`` of /proc/self/status on Linux: the high-water mark of the
process's own memory since it started; ``ru_maxrss`` is not used because Linux carries the
parent's resident size over a fork and exec into it, so a child of a large benchmark process
would report the parent's size). The second round loads every encoder back from the store.
The runs use a 3,000-image subset of the bundled MNIST so the 150-client run stays short; the
memory a client costs comes from the model, not from its images. ``rss_growth_150_vs_10`` is the
150-client peak over the 10-client peak (target: within 10 %, i.e. <= 1.10). The runs train
every client in the engine's own process (``workers = 1``), whose peak is then the run's.

The store needs disk: 79 MB per client per round kept (about 24 GB at the peak of the 150-client
run, in a temporary directory removed afterwards).
"""

from __future__ import annotations

import json
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

__all__ = ["CLIENT_COUNTS", "memory_benchmark"]

CLIENT_COUNTS = (10, 50, 150)
_SUBSET = 3000
_BYTES_PER_CLIENT_ROUND = 79 * 2**20


def _peak_rss_kib() -> float:
    """This process's peak resident set size in KiB: VmHWM where /proc has it, else ru_maxrss."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return float(line.split()[1])  # "VmHWM:   123456 kB"
    except OSError:
        pass
    scale = 1 / 1024 if sys.platform == "darwin" else 1  # bytes on macOS, KiB on Linux
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * scale


def _child(clients: int, threads: int, directory: str) -> None:
    """Train ``clients`` clients for two rounds in ``directory``; print peak RSS and seconds as JSON."""
    from benchmarks.training import quick_config
    from rvepfl.fl.client import prepare
    from rvepfl.fl.simulation import initialise, train
    from rvepfl.rundir import RunDir

    cfg = quick_config(batch_size=64, rounds=2, threads=threads, workers=1,
                       **{"data.num_clients": clients, "data.subset": _SUBSET})
    fed = prepare(cfg)
    run = RunDir(Path(directory) / "run")
    initialise(fed, run)
    started = time.perf_counter()
    train(fed, run)
    seconds = time.perf_counter() - started
    peak_kib = _peak_rss_kib()
    print(json.dumps({"clients": clients, "peak_rss_mib": peak_kib / 1024, "seconds": seconds}))


def memory_benchmark(threads: int = 0, log: Any = print) -> dict[str, Any]:
    """Peak RSS of a two-round run with 10, 50 and 150 clients, each in a fresh process."""
    runs = []
    for clients in CLIENT_COUNTS:
        with tempfile.TemporaryDirectory(prefix="rvepfl-bench-mem-") as tmp:
            free = shutil.disk_usage(tmp).free
            need = 2 * clients * _BYTES_PER_CLIENT_ROUND
            if free < need * 1.1:
                raise RuntimeError(f"the {clients}-client memory run needs about {need / 2**30:.1f} GiB of free "
                                   f"disk in {tempfile.gettempdir()}, {free / 2**30:.1f} GiB is free: set TMPDIR "
                                   "to a larger disk")
            log(f"  {clients} clients, 2 rounds ...")
            done = subprocess.run([sys.executable, "-m", "benchmarks.memory", "--child", str(clients),
                                   str(threads), tmp], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"the {clients}-client memory run failed: {done.stderr.strip()[-500:]}")
        runs.append(json.loads(done.stdout.strip().splitlines()[-1]))
        log(f"    peak RSS {runs[-1]['peak_rss_mib']:.0f} MiB ({runs[-1]['seconds']:.0f} s)")
    peak = {r["clients"]: r["peak_rss_mib"] for r in runs}
    return {
        "subset_images": _SUBSET,
        "runs": runs,
        "rss_growth_50_vs_10": peak[50] / peak[10],
        "rss_growth_150_vs_10": peak[150] / peak[10],
    }


if __name__ == "__main__":
    if len(sys.argv) == 5 and sys.argv[1] == "--child":
        _child(int(sys.argv[2]), int(sys.argv[3]), sys.argv[4])
    else:
        print("internal module: run `python -m benchmarks`", file=sys.stderr)
        sys.exit(2)
