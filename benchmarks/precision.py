"""bf16-mixed against float32: the quick round side by side, and the matrix-product rates.

- ``bf16_matmul_gflops`` and ``matmul_gflops_fp32``: the best rate of a square matrix product
  under ``torch.autocast("cpu", dtype=torch.bfloat16)`` (float32 inputs, as training sees them)
  and in float32, in this process.
- On hardware with native bfloat16 (:func:`rvepfl.precision.native_bf16`): the engine's quick
  round (:func:`benchmarks.training.quick_config`: 10 clients, 2 local epochs, batch 256, its
  second round) with ``train.precision = "32"`` and then ``"bf16-mixed"``:
  ``bf16_round_speedup`` (the float32 round's seconds over the bf16 round's; target >= 2.5x),
  ``round_seconds_quick_bf16`` (target <= 15 s) and ``bf16_round_matmul_fraction`` (the bf16
  round's FLOP rate over the bf16 matrix-product rate).
- Without it, bfloat16 is emulated and a bf16 round would take many times the float32 one, so the
  round is not run: one client's local training steps (batch 256) are timed in both precisions
  instead, ``bf16_step_speedup`` (below 1: a slowdown), and the result says why.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path
from typing import Any

import torch

from benchmarks.training import (
    flops_per_image,
    matmul_gflops,
    quick_config,
    round_timing,
)
from rvepfl.fl.client import prepare
from rvepfl.fl.simulation import initialise, train
from rvepfl.precision import cpu_bf16_flags, native_bf16
from rvepfl.rundir import RunDir
from rvepfl.seeding import seed_torch

__all__ = ["precision_benchmark"]


def _round(precision: str, workers: int) -> tuple[float, float, int]:
    """(the quick round's seconds, its training and evaluation GFLOP, its workers) in ``precision``."""
    cfg = quick_config(workers=workers, **{"train.precision": precision})
    fed = prepare(cfg)
    flops, eval_flops = flops_per_image(fed)
    samples = sum(len(c.train) for c in fed.partition.clients) * cfg.train.local_epochs
    evaluated = sum(len(c.train) + 2 * len(c.test) for c in fed.partition.clients)
    with tempfile.TemporaryDirectory(prefix="rvepfl-bench-") as tmp:
        run = RunDir(Path(tmp) / "run")
        initialise(fed, run)
        train(fed, run)
        seconds = round_timing(run)[-1][0]
    return seconds, (flops * samples + eval_flops * evaluated) / 1e9, workers


def _steps(precision: str, steps: int = 2, batch: int = 256) -> float:
    """The mean seconds of ``steps`` local training steps (batch ``batch``) of one quick-round
    client in ``precision``, after one warm-up step."""
    fed = prepare(quick_config(workers=1, **{"train.precision": precision, "train.batch_size": batch}))
    data = fed.client_data(0)
    seed_torch(0, "init")
    model = fed.method.build_model()
    model.train()
    x, y = data.train_x[:batch], data.train_y[:batch]
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-3, fused=True)
    times = []
    for i in range(steps + 1):
        started = time.perf_counter()
        optimizer.zero_grad(set_to_none=True)
        with fed.method.precision.autocast():
            loss = fed.method.loss(model, x, y)
        loss.backward()
        optimizer.step()
        if i:
            times.append(time.perf_counter() - started)
    return sum(times) / len(times)


def precision_benchmark(workers: int = 0, log: Any = print) -> dict[str, Any]:
    """The figures of the module docstring."""
    native, evidence = native_bf16(torch.device("cpu"))
    out: dict[str, Any] = {"native_bf16": native, "evidence": evidence, "cpu_bf16_flags": list(cpu_bf16_flags())}
    log(f"  {evidence}; matrix-product rates ...")
    out["matmul_gflops_fp32"] = matmul_gflops(2048, 3)
    out["bf16_matmul_gflops"] = matmul_gflops(2048 if native else 1024, 3 if native else 1, bf16=True)
    if native:
        log("  the quick round in float32 ...")
        s32, gflop, used = _round("32", workers)
        log(f"    {s32:.1f} s; in bf16-mixed ...")
        s16, _, _ = _round("bf16-mixed", workers)
        log(f"    {s16:.1f} s")
        out.update({"round_seconds_quick_fp32": s32, "round_seconds_quick_bf16": s16, "workers": used,
                    "round_gflop": gflop, "bf16_round_speedup": s32 / s16,
                    "bf16_round_matmul_fraction": gflop / s16 / out["bf16_matmul_gflops"]})
        return out
    log("  no native bfloat16: one client's training steps (batch 256) in float32 and in bf16-mixed ...")
    t32, t16 = _steps("32"), _steps("bf16-mixed")
    log(f"    {t32:.2f} s and {t16:.2f} s a step")
    out.update({"step_seconds_fp32": t32, "step_seconds_bf16": t16, "bf16_step_speedup": t32 / t16,
                "bf16_round_speedup": None,
                "why": f"{evidence}: bfloat16 is emulated, so the bf16 round was not run (its steps take "
                       f"{t16 / t32:.1f}x the float32 ones)"})
    return out
