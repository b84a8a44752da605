"""Training benchmarks: FL overhead, compute efficiency, the quick round, the allocator's effect.

Every figure is a ratio of two timings taken side by side in one process (absolute times vary
between machines):

- ``fl_overhead_ratio``: one RVE-PFL round of the in-process engine (every client's private
  state loaded from and saved to the disk-backed store, local epochs, upload, aggregation,
  checkpoint) over one plain centralised loop that trains the same model on the same samples
  with the same batch size, epochs and optimiser. The round's evaluation (the published CSVs:
  each client is tested before and after training) is left out of the ratio because the plain
  loop has none (with worker processes, whose evaluations overlap, its wall time is taken as
  the evaluation seconds over the number of workers); ``fl_overhead_ratio_with_eval`` keeps it
  in.
- ``flop_rate_fraction``: the FLOP rate the engine achieves in that round, over the rate of a
  large float32 matrix product measured in the same run. The round's FLOPs are those of its
  training (forward and backward of the loss on every image of every local epoch) and of its
  evaluation (a forward pass on each client's test split before and after training and on its
  train split), counted by ``torch.utils.flop_counter``; its time is the round's wall time, so
  everything else the round does (store I/O, aggregation, checkpoints) counts against it, and
  the figure holds whether the clients train one after another or in worker processes.
- ``round_seconds_quick``: the wall time of that round, evaluation included, in the setting of
  the published code's timing (10 clients, IID, 2 local epochs, batch 256, bundled MNIST).
- ``allocator_speedup``: one client's local epoch (900 images, batch 64) with glibc's default
  allocator thresholds over the same epoch with :func:`rvepfl.perf.tune_allocator`, each in a
  fresh process.

The engine's second round is the one measured: the first has no stored private state to load.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch.utils.flop_counter import FlopCounterMode

from rvepfl.config import Config, apply_overrides, load_config
from rvepfl.fl.client import Federation, prepare
from rvepfl.fl.simulation import initialise, resolve_workers, train
from rvepfl.methods import ClientData, RoundContext
from rvepfl.perf import tune_allocator
from rvepfl.rundir import RunDir
from rvepfl.seeding import seed_torch, torch_generator

__all__ = ["allocator_speedup", "matmul_gflops", "quick_config", "round_timing", "training_benchmark"]


def quick_config(*, batch_size: int = 256, rounds: int = 2, **overrides: Any) -> Config:
    """The quick setting of the published code's timing: 10 clients, IID, 2 local epochs."""
    values = {"train.batch_size": batch_size, "train.rounds": rounds, "train.local_epochs": 2,
              "data.num_clients": 10, "data.partition": "iid", "method": "rvepfl", "device": "cpu",
              **overrides}
    return apply_overrides(load_config(None), values)


def matmul_gflops(size: int = 4096, repeats: int = 5, *, bf16: bool = False) -> float:
    """The best rate (GFLOP/s) of a ``size`` x ``size`` float32 matrix product in this process,
    under bfloat16 autocast when ``bf16`` (as mixed-precision training sees its products)."""
    a = torch.randn(size, size)
    b = torch.randn(size, size)
    with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
        a @ b  # warm-up
        best = float("inf")
        for _ in range(repeats):
            started = time.perf_counter()
            a @ b
            best = min(best, time.perf_counter() - started)
    return 2 * size**3 / best / 1e9


def flops_per_image(fed: Federation) -> tuple[float, float]:
    """(forward plus backward FLOPs of the method's training loss, forward FLOPs of an
    evaluation), per image, counted by ``torch.utils.flop_counter``."""
    seed_torch(0, "init")
    model = fed.method.build_model()
    model.train()
    data = fed.client_data(0)
    x, y = data.train_x[:8], data.train_y[:8]
    with FlopCounterMode(display=False) as counter:
        fed.method.loss(model, x, y).backward()
    train = counter.get_total_flops() / len(y)
    model.eval()
    with torch.no_grad(), FlopCounterMode(display=False) as counter:
        model(x)
    return train, counter.get_total_flops() / len(y)


def plain_loop_seconds(fed: Federation) -> float:
    """Train the method's model once over every client's train split pooled together, with the
    round's batch size, epochs and optimiser (fused Adam, decayed learning rate): the work of one
    round without federation."""
    cfg = fed.cfg
    seed_torch(cfg.seed, "init")
    model = fed.method.build_model().to(fed.device)
    parts = [fed.client_data(c) for c in range(cfg.data.num_clients)]
    x = torch.cat([p.train_x for p in parts])
    y = torch.cat([p.train_y for p in parts])
    model.train()
    generator = torch_generator(cfg.seed, "train", 0)
    started = time.perf_counter()
    pooled = ClientData(x, y, x[:0], y[:0])
    ctx = RoundContext(round=0, client=0, seed=cfg.seed)
    fed.method.train_epochs(model, pooled, list(model.parameters()), cfg.train.local_epochs, generator, 0, ctx)
    return time.perf_counter() - started


def training_benchmark(threads: int = 0, workers: int = 0, log: Any = print) -> dict[str, Any]:
    """Run the quick round and the plain loop side by side; return the figures (see module doc).

    ``workers`` is the config key (0: one worker process per CPU, the default); the plain loop
    always runs in this process with ``threads`` (or torch's default) threads.
    """
    tune_allocator()
    if threads:
        torch.set_num_threads(threads)
    cfg = quick_config(threads=threads, workers=workers)
    fed = prepare(cfg)
    workers, worker_threads = resolve_workers(cfg, fed.device)
    flops, eval_flops = flops_per_image(fed)
    samples = sum(len(c.train) for c in fed.partition.clients) * cfg.train.local_epochs
    evaluated = sum(len(c.train) + 2 * len(c.test) for c in fed.partition.clients)  # test before and after
    log("  plain centralised loop ...")
    plain = [plain_loop_seconds(fed)]
    log(f"    {plain[0]:.1f} s; the engine's rounds 1-2 (10 clients, {workers} worker(s)) ...")
    with tempfile.TemporaryDirectory(prefix="rvepfl-bench-") as tmp:
        run = RunDir(Path(tmp) / "run")
        initialise(fed, run)
        train(fed, run)
        rows = round_timing(run)
    log("  plain centralised loop again ...")
    plain.append(plain_loop_seconds(fed))
    log("  matrix product rate ...")
    gflops = matmul_gflops()
    seconds, train_s, eval_s = rows[-1]
    plain_s = sum(plain) / len(plain)
    achieved = (flops * samples + eval_flops * evaluated) / seconds / 1e9
    return {
        "setting": {"clients": cfg.data.num_clients, "partition": cfg.data.partition,
                    "local_epochs": cfg.train.local_epochs, "batch_size": cfg.train.batch_size,
                    "samples_per_round": samples, "threads": torch.get_num_threads(), "workers": workers,
                    "worker_threads": worker_threads,
                    "round_measured": len(rows)},
        "round_seconds_quick": seconds,
        "round_train_seconds": train_s,
        "round_eval_seconds": eval_s,
        "plain_loop_seconds": plain,
        "fl_overhead_ratio": (seconds - eval_s / workers) / plain_s,
        "fl_overhead_ratio_with_eval": seconds / plain_s,
        "training_mflop_per_image": flops / 1e6,
        "evaluation_mflop_per_image": eval_flops / 1e6,
        "images_trained": samples,
        "images_evaluated": evaluated,
        "achieved_round_gflops": achieved,
        "matmul_gflops": gflops,
        "flop_rate_fraction": achieved / gflops,
        "plain_loop_flop_rate_fraction": flops * samples / plain_s / 1e9 / gflops,
    }


def round_timing(run: RunDir) -> list[tuple[float, float, float]]:
    """(seconds, train seconds, eval seconds) of each round in ``run``'s round_timing.csv."""
    lines = (run.metrics / "round_timing.csv").read_text(encoding="utf-8").splitlines()[1:]
    return [tuple(float(v) for v in line.split(",")[1:4]) for line in lines]  # type: ignore[misc]


# -- allocator: one local epoch in a fresh process -------------------------------------------------
def _epoch_child(threads: int) -> None:
    """Print the best of three local epochs (one client, batch 64) as JSON."""
    tuned = tune_allocator()
    if threads:
        torch.set_num_threads(threads)
    fed = prepare(quick_config(batch_size=64, workers=1, **{"train.local_epochs": 1}))
    data = fed.client_data(0)
    seed_torch(0, "init")
    model = fed.method.build_model()
    times = []
    for epoch in range(4):  # the first is a warm-up
        ctx = RoundContext(round=epoch + 1, client=0, seed=0)
        started = time.perf_counter()
        fed.method.local_train(model, data, ctx, 0)
        times.append(time.perf_counter() - started)
    print(json.dumps({"tuned": tuned, "epoch_seconds": times[1:], "images": len(data.train_y)}))


def allocator_speedup(threads: int = 0) -> dict[str, Any]:
    """One local epoch with glibc's default thresholds over one with ours, in fresh processes."""
    out: dict[str, Any] = {}
    for name, flag in (("default", "0"), ("tuned", "1")):
        env = {**os.environ, "RVEPFL_TUNE_ALLOCATOR": flag}
        done = subprocess.run([sys.executable, "-m", "benchmarks.training", "--epoch-child", str(threads)],
                              env=env, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"the allocator benchmark's child failed: {done.stderr.strip()[-500:]}")
        out[name] = json.loads(done.stdout.strip().splitlines()[-1])
    if not out["tuned"]["tuned"]:
        return {"allocator_speedup": None, "reason": "glibc's mallopt is not available here", **out}
    best = {k: min(v["epoch_seconds"]) for k, v in out.items()}
    return {"allocator_speedup": best["default"] / best["tuned"], **out}


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--epoch-child":
        _epoch_child(int(sys.argv[2]))
    else:
        print("internal module: run `python -m benchmarks`", file=sys.stderr)
        sys.exit(2)
